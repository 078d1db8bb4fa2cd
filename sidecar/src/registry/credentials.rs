//! Registry credentials from the pod's mounted pull secrets:
//! `<dir>/<secret>/.dockerconfigjson` (`kubernetes.io/dockerconfigjson`,
//! `{"auths": {key: entry}}`) or `<dir>/<secret>/.dockercfg` (the legacy
//! `kubernetes.io/dockercfg`, `{key: entry}`), each entry `auth` or `username`/`password`.
//!
//! Keys match images as the kubelet matches them: a key is `host[:port][/path]`, with an
//! optional scheme; `*` globs one label of the host (`*.example.com` matches
//! `a.example.com`, not `a.b.example.com`); a port must be the same; a path matches the
//! repository it prefixes (ending at a `/`); a leading `v1/` or `v2/` is an API version,
//! not a path. Every matching credential is offered, the most specific key first, and
//! the registry client tries them in turn, as the kubelet does; `auth` wins over
//! `username`/`password`, and is base64 with or without padding.

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
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// One parsed config key.
#[derive(Clone, Debug)]
struct Key {
    host_labels: Vec<String>,
    port: Option<String>,
    path: String,
}

impl Key {
    fn parse(key: &str) -> Option<Self> {
        let without_scheme = key.split_once("://").map_or(key, |(_, rest)| rest);
        let (authority, path) = without_scheme
            .split_once('/')
            .unwrap_or((without_scheme, ""));
        let (host, port) = split_port(authority);
        let host = canonical_host(host);
        if host.is_empty() {
            return None;
        }
        // A leading `v1/` or `v2/` is the registry API's version, not a repository prefix
        // (`https://index.docker.io/v1/`, `https://quay.io/v1/`): the kubelet drops it.
        let path = path
            .strip_prefix("v1/")
            .or_else(|| path.strip_prefix("v2/"))
            .unwrap_or(path)
            .trim_end_matches('/');
        Some(Self {
            host_labels: host.split('.').map(str::to_string).collect(),
            port: port.map(str::to_string),
            path: path.to_string(),
        })
    }

    fn matches(&self, host: &str, port: Option<&str>, repository: &str) -> bool {
        let labels: Vec<&str> = host.split('.').collect();
        let host_matches = labels.len() == self.host_labels.len()
            && self
                .host_labels
                .iter()
                .zip(&labels)
                .all(|(pattern, label)| glob_matches(pattern, label));
        let path_matches = self.path.is_empty()
            || repository == self.path
            || repository
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        host_matches && self.port.as_deref() == port && path_matches
    }

    /// Longer paths, then hosts without globs, win.
    fn specificity(&self) -> (usize, usize) {
        let literal = self.host_labels.iter().filter(|l| !l.contains('*')).count();
        (self.path.len(), literal)
    }
}

/// `*` matches any run of characters within one label (Go's `path.Match` on a label).
fn glob_matches(pattern: &str, label: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == label,
        Some((prefix, rest)) => {
            let Some(after) = label.strip_prefix(prefix) else {
                return false;
            };
            (0..=after.len()).any(|i| after.is_char_boundary(i) && glob_matches(rest, &after[i..]))
        }
    }
}

fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    }
}

/// Docker Hub answers to several names; all match each other.
fn canonical_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    if pod_reloaded_contract::image::is_docker_hub(&host) {
        "docker.io".to_string()
    } else {
        host
    }
}

/// Credentials of the mounted pull secrets, in the order they were read.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    entries: Vec<(Key, Credential)>,
}

impl Credentials {
    /// Reads every `.dockerconfigjson` and `.dockercfg` one level below `dir`. Unreadable
    /// files and bad entries are reported and skipped: a bad secret must not stop checks of
    /// other registries, nor the good entries of the same secret.
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
        let mut secrets: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        secrets.sort();
        for secret in secrets {
            for (file, legacy) in [(".dockerconfigjson", false), (".dockercfg", true)] {
                let path = secret.join(file);
                if !path.is_file() {
                    continue;
                }
                let added = std::fs::read(&path)
                    .map_err(|e| vec![e.to_string()])
                    .map(|bytes| credentials.add(&bytes, legacy));
                let problems_here = match added {
                    Ok(problems) | Err(problems) => problems,
                };
                problems.extend(
                    problems_here
                        .into_iter()
                        .map(|p| format!("{}: {p}", path.display())),
                );
            }
        }
        (credentials, problems)
    }

    /// Adds a `.dockerconfigjson` body; returns the problems of entries it skipped.
    pub fn add_config(&mut self, json: &[u8]) -> Vec<String> {
        self.add(json, false)
    }

    /// Adds a legacy `.dockercfg` body; returns the problems of entries it skipped.
    pub fn add_legacy_config(&mut self, json: &[u8]) -> Vec<String> {
        self.add(json, true)
    }

    fn add(&mut self, json: &[u8], legacy: bool) -> Vec<String> {
        let auths: serde_json::Map<String, serde_json::Value> = if legacy {
            match serde_json::from_slice(json) {
                Ok(map) => map,
                Err(e) => return vec![format!("not a docker config: {e}")],
            }
        } else {
            #[derive(Deserialize)]
            struct DockerConfig {
                #[serde(default)]
                auths: serde_json::Map<String, serde_json::Value>,
            }
            match serde_json::from_slice::<DockerConfig>(json) {
                Ok(config) => config.auths,
                Err(e) => return vec![format!("not a docker config: {e}")],
            }
        };
        let mut problems = Vec::new();
        for (key, value) in auths {
            match entry_credential(&key, value) {
                Ok((parsed, credential)) => self.entries.push((parsed, credential)),
                Err(problem) => problems.push(problem),
            }
        }
        problems
    }

    /// The credential for an image at `host[:port]` in `repository`: the most specific
    /// matching key; among equals, the first secret read.
    pub fn for_image(&self, host: &str, repository: &str) -> Option<&Credential> {
        self.all_for_image(host, repository).into_iter().next()
    }

    /// Every credential whose key matches, in the order the kubelet tries them when one
    /// is refused: most specific key first; among equals, the first secret read.
    pub fn all_for_image(&self, host: &str, repository: &str) -> Vec<&Credential> {
        let (host, port) = split_port(host);
        let host = canonical_host(host);
        let mut matching: Vec<&(Key, Credential)> = self
            .entries
            .iter()
            .filter(|entry| entry.0.matches(&host, port, repository))
            .collect();
        // A stable sort keeps the order read among equals.
        matching.sort_by_key(|entry| std::cmp::Reverse(entry.0.specificity()));
        let mut credentials: Vec<&Credential> = Vec::new();
        for (_, credential) in matching {
            if !credentials.contains(&credential) {
                credentials.push(credential);
            }
        }
        credentials
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn entry_credential(key: &str, value: serde_json::Value) -> Result<(Key, Credential), String> {
    let parsed = Key::parse(key).ok_or_else(|| format!("auths[{key:?}]: not a registry"))?;
    let entry: AuthEntry =
        serde_json::from_value(value).map_err(|e| format!("auths[{key:?}]: {e}"))?;
    // `auth` wins over `username`/`password` when both are there, as in the kubelet.
    let credential = match (entry.username, entry.password, entry.auth) {
        (_, _, Some(auth)) if !auth.is_empty() => {
            decode_auth(&auth).map_err(|e| format!("auths[{key:?}].auth: {e}"))?
        }
        (Some(username), Some(password), _) if !username.is_empty() => {
            Credential { username, password }
        }
        _ => {
            return Err(format!(
                "auths[{key:?}] has neither auth nor username/password"
            ))
        }
    };
    Ok((parsed, credential))
}

/// Standard base64, padded or not (the newest kubelet accepts both).
const AUTH_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn decode_auth(auth: &str) -> Result<Credential, String> {
    let bytes = AUTH_BASE64
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

    fn user<'a>(credentials: &'a Credentials, host: &str, repository: &str) -> Option<&'a str> {
        credentials
            .for_image(host, repository)
            .map(|c| c.username.as_str())
    }

    #[test]
    fn auth_and_username_password_forms() {
        let mut credentials = Credentials::default();
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let problems = credentials.add_config(
            format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{auth}"}},
                    "registry.example.com:5000": {{"username": "bob", "password": "pw"}},
                    "http://127.0.0.1:5001/v2/": {{"auth": "{auth}", "email": "x@y"}}
                }}}}"#
            )
            .as_bytes(),
        );
        assert!(problems.is_empty(), "{problems:?}");
        let alice = Credential {
            username: "alice".into(),
            password: "s3cr:et".into(),
        };
        assert_eq!(
            credentials.for_image("registry-1.docker.io", "library/nginx"),
            Some(&alice)
        );
        assert_eq!(
            credentials.for_image("registry.hub.docker.com", "a/b"),
            Some(&alice)
        );
        assert_eq!(
            user(&credentials, "registry.example.com:5000", "team/app"),
            Some("bob")
        );
        assert_eq!(
            user(&credentials, "registry.example.com", "team/app"),
            None,
            "port must match"
        );
        assert!(
            !format!("{alice:?}").contains("s3cr"),
            "Debug never shows the password"
        );
    }

    #[test]
    fn keys_match_as_the_kubelet_matches_them() {
        let mut credentials = Credentials::default();
        let problems = credentials.add_config(
            br#"{"auths": {
                "*.example.com": {"username": "glob", "password": "p"},
                "registry.example.com/team": {"username": "team", "password": "p"},
                "registry.example.com/team/special": {"username": "special", "password": "p"},
                "*.*.example.org": {"username": "two", "password": "p"}
            }}"#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            user(&credentials, "registry.example.com", "other/app"),
            Some("glob")
        );
        assert_eq!(
            user(&credentials, "registry.example.com", "team/app"),
            Some("team")
        );
        assert_eq!(
            user(&credentials, "registry.example.com", "team"),
            Some("team")
        );
        assert_eq!(
            user(&credentials, "registry.example.com", "teamx/app"),
            Some("glob"),
            "a path prefix ends at a /"
        );
        assert_eq!(
            user(&credentials, "registry.example.com", "team/special/x"),
            Some("special")
        );
        assert_eq!(
            user(&credentials, "a.b.example.com", "x"),
            None,
            "* is one label"
        );
        assert_eq!(user(&credentials, "example.com", "x"), None);
        assert_eq!(user(&credentials, "a.b.example.org", "x"), Some("two"));
    }

    #[test]
    fn legacy_dockercfg_is_read() {
        let mut credentials = Credentials::default();
        let problems = credentials.add_legacy_config(
            br#"{"legacy.example.com": {"username": "old", "password": "p", "email": "e"}}"#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(user(&credentials, "legacy.example.com", "a"), Some("old"));
    }

    #[test]
    fn a_bad_entry_is_reported_and_the_good_ones_kept() {
        let mut credentials = Credentials::default();
        assert_eq!(credentials.add_config(b"not json").len(), 1);
        let problems = credentials.add_config(
            br#"{"auths": {
                "a.example": {"auth": "!!!"},
                "b.example": {"auth": "bm9jb2xvbg=="},
                "c.example": {},
                "d.example": {"username": "good", "password": "p"}
            }}"#,
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(user(&credentials, "d.example", "x"), Some("good"));
        assert_eq!(user(&credentials, "a.example", "x"), None);
    }

    #[test]
    fn loads_mounted_secrets_of_both_types_and_reports_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("good")).unwrap();
        std::fs::write(
            dir.path().join("good/.dockerconfigjson"),
            br#"{"auths": {"r.example": {"username": "u", "password": "p"}}}"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("legacy")).unwrap();
        std::fs::write(
            dir.path().join("legacy/.dockercfg"),
            br#"{"old.example": {"username": "o", "password": "p"}}"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("bad")).unwrap();
        std::fs::write(dir.path().join("bad/.dockerconfigjson"), b"{").unwrap();
        let (credentials, problems) = Credentials::load(dir.path());
        assert_eq!(user(&credentials, "r.example", "a"), Some("u"));
        assert_eq!(user(&credentials, "old.example", "a"), Some("o"));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("bad"), "{problems:?}");
    }
}
