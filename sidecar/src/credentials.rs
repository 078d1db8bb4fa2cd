//! Registry credentials from the pod's mounted `kubernetes.io/dockerconfigjson` pull
//! secrets: `<dir>/<secret>/.dockerconfigjson`, each `{"auths": {host: {auth | username,
//! password}}}`.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;

#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}, <redacted>)", self.username)
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Credentials by registry host.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    by_host: HashMap<String, Credential>,
}

/// `https://index.docker.io/v1/` -> `index.docker.io`; `host:5000` stays.
fn host_of(key: &str) -> String {
    let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
    without_scheme
        .split('/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn canonical_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    // Docker Hub answers to several names; its config key is `https://index.docker.io/v1/`.
    if pod_reloaded_contract::image::is_docker_hub(&host) {
        "docker.io".to_string()
    } else {
        host
    }
}

impl Credentials {
    /// Reads every `.dockerconfigjson` one level below `dir`. Unreadable or malformed files
    /// are reported and skipped: a bad secret must not stop checks of other registries.
    pub fn load(dir: &Path) -> (Self, Vec<String>) {
        let mut credentials = Self::default();
        let mut problems = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) => {
                problems.push(format!(
                    "cannot read pull secrets in {}: {error}",
                    dir.display()
                ));
                return (credentials, problems);
            }
        };
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.path().join(".dockerconfigjson"))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            match std::fs::read(&file)
                .map_err(|e| e.to_string())
                .and_then(|bytes| credentials.add_config(&bytes))
            {
                Ok(()) => {}
                Err(error) => problems.push(format!("{}: {error}", file.display())),
            }
        }
        (credentials, problems)
    }

    /// Adds the `auths` of one docker config JSON; the first secret naming a host wins,
    /// as with the kubelet.
    pub fn add_config(&mut self, json: &[u8]) -> Result<(), String> {
        let config: DockerConfig =
            serde_json::from_slice(json).map_err(|e| format!("not a docker config: {e}"))?;
        for (key, entry) in config.auths {
            let credential = match (entry.username, entry.password, entry.auth) {
                (Some(username), Some(password), _) if !username.is_empty() => {
                    Credential { username, password }
                }
                (_, _, Some(auth)) => {
                    decode_auth(&auth).map_err(|e| format!("auths[{key:?}].auth: {e}"))?
                }
                _ => {
                    return Err(format!(
                        "auths[{key:?}] has neither auth nor username/password"
                    ))
                }
            };
            self.by_host
                .entry(canonical_host(&host_of(&key)))
                .or_insert(credential);
        }
        Ok(())
    }

    pub fn for_host(&self, host: &str) -> Option<&Credential> {
        self.by_host.get(&canonical_host(host))
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

fn decode_auth(auth: &str) -> Result<Credential, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let (username, password) = text.split_once(':').ok_or("not user:password")?;
    Ok(Credential {
        username: username.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_and_username_password_forms() {
        let mut credentials = Credentials::default();
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        credentials
            .add_config(
                format!(
                    r#"{{"auths": {{
                        "https://index.docker.io/v1/": {{"auth": "{auth}"}},
                        "registry.example.com:5000": {{"username": "bob", "password": "pw"}},
                        "http://127.0.0.1:5001/v2/": {{"auth": "{auth}", "email": "x@y"}}
                    }}}}"#
                )
                .as_bytes(),
            )
            .unwrap();
        let alice = Credential {
            username: "alice".into(),
            password: "s3cr:et".into(),
        };
        assert_eq!(credentials.for_host("registry-1.docker.io"), Some(&alice));
        assert_eq!(credentials.for_host("docker.io"), Some(&alice));
        assert_eq!(credentials.for_host("127.0.0.1:5001"), Some(&alice));
        assert_eq!(
            credentials
                .for_host("registry.example.com:5000")
                .unwrap()
                .username,
            "bob"
        );
        assert_eq!(credentials.for_host("registry.example.com"), None);
        assert!(
            !format!("{alice:?}").contains("s3cr"),
            "Debug never shows the password"
        );
    }

    #[test]
    fn malformed_configs_are_errors() {
        let mut credentials = Credentials::default();
        assert!(credentials.add_config(b"not json").is_err());
        assert!(credentials
            .add_config(br#"{"auths": {"h": {"auth": "!!!"}}}"#)
            .is_err());
        assert!(credentials
            .add_config(br#"{"auths": {"h": {"auth": "bm9jb2xvbg=="}}}"#)
            .is_err());
        assert!(credentials.add_config(br#"{"auths": {"h": {}}}"#).is_err());
        assert!(credentials.is_empty());
    }

    #[test]
    fn loads_mounted_secrets_and_reports_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("good")).unwrap();
        std::fs::write(
            dir.path().join("good/.dockerconfigjson"),
            br#"{"auths": {"r.example": {"username": "u", "password": "p"}}}"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("bad")).unwrap();
        std::fs::write(dir.path().join("bad/.dockerconfigjson"), b"{").unwrap();
        let (credentials, problems) = Credentials::load(dir.path());
        assert_eq!(credentials.for_host("r.example").unwrap().username, "u");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("bad"), "{problems:?}");
    }
}
