//! A real OCI registry (Debian's `docker-registry`, CNCF distribution 2.8) on 127.0.0.1
//! with a temp dir, optionally behind htpasswd Basic auth or TLS, and pushes through its
//! HTTP API: single-platform manifests and multi-arch OCI indexes / Docker manifest lists.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::process::{eventually_async, free_port, Running};
use crate::webhook::{generate_certificates_for, Certificates};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Default)]
pub struct RegistryOptions {
    /// htpasswd Basic auth with this user and password.
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with a certificate from the project's certs command.
    pub tls: bool,
}

pub struct Registry {
    _process: Running,
    dir: tempfile::TempDir,
    pub port: u16,
    pub base_url: String,
    /// The CA that signed the registry's certificate, with `tls`.
    pub ca: Option<PathBuf>,
    client: reqwest::Client,
    credentials: Option<(String, String)>,
}

/// A pushed single-platform image.
#[derive(Clone, Debug)]
pub struct PushedManifest {
    pub digest: String,
    pub config_digest: String,
    pub platform: (String, String),
}

/// A pushed multi-arch image.
#[derive(Clone, Debug)]
pub struct PushedIndex {
    pub digest: String,
    pub manifests: Vec<PushedManifest>,
}

impl Registry {
    pub async fn start(options: RegistryOptions) -> Self {
        let dir = tempfile::tempdir().expect("registry temp dir");
        let port = free_port();
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        let mut ca = None;
        let mut client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(30));
        if options.tls {
            // The certs command's extra names make its certificate valid for 127.0.0.1.
            let certs: Certificates =
                generate_certificates_for(&dir.path().join("certs"), &["127.0.0.1", "localhost"]);
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                certs.cert.display(),
                certs.key.display()
            ));
            let pem = std::fs::read(&certs.ca).expect("CA");
            client = client
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA parses"));
            ca = Some(certs.ca.clone());
        }
        if let Some((user, password)) = &options.basic_auth {
            let hash = bcrypt::hash(password, 5).expect("bcrypt");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let mut command = Command::new("docker-registry");
        command.arg("serve").arg(&config_path);
        let process = Running::spawn(command);
        let scheme = if options.tls { "https" } else { "http" };
        let base_url = format!("{scheme}://127.0.0.1:{port}");
        let registry = Self {
            _process: process,
            dir,
            port,
            base_url,
            ca,
            client: client.build().expect("client"),
            credentials: options.basic_auth,
        };
        let url = format!("{}/v2/", registry.base_url);
        let client = registry.client.clone();
        let up = eventually_async(Duration::from_secs(15), || {
            let client = client.clone();
            let url = url.clone();
            async move { client.get(&url).send().await.is_ok() }
        })
        .await;
        assert!(
            up,
            "docker-registry did not start:\n{}",
            registry._process.output()
        );
        registry
    }

    /// The Basic auth user and password, when the registry has them.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// `host:port` as it appears in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    pub async fn push_blob(&self, repository: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let start = self
            .authorized(
                self.client
                    .post(format!("{}/v2/{repository}/blobs/uploads/", self.base_url)),
            )
            .send()
            .await
            .expect("upload starts");
        assert_eq!(
            start.status().as_u16(),
            202,
            "blob upload start: {}",
            start.status()
        );
        let location = start.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.base_url)
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = self
            .authorized(
                self.client
                    .put(format!("{location}{separator}digest={digest}")),
            )
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .expect("upload completes");
        assert_eq!(put.status().as_u16(), 201, "blob upload: {}", put.status());
        digest
    }

    /// Tags the manifest of `from` as `to` too (same bytes, same blobs).
    pub async fn copy_manifest(&self, repository: &str, from: &str, to: &str) {
        let response = self
            .authorized(self.client.get(format!(
                "{}/v2/{repository}/manifests/{from}",
                self.base_url
            )))
            .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
            .send()
            .await
            .expect("manifest read");
        assert!(
            response.status().is_success(),
            "{from}: {}",
            response.status()
        );
        let media_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or(OCI_MANIFEST)
            .to_string();
        let body = response.bytes().await.expect("manifest body");
        self.push_manifest(repository, to, &media_type, &body).await;
    }

    pub async fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let response = self
            .authorized(self.client.put(format!(
                "{}/v2/{repository}/manifests/{reference}",
                self.base_url
            )))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("manifest push");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(status, 201, "manifest push: {text}");
        sha256_digest(body)
    }

    /// Pushes a single-platform image (`seed` makes it unique) and, with `tag`, tags it.
    pub async fn push_single(
        &self,
        repository: &str,
        tag: Option<&str>,
        seed: &str,
        platform: (&str, &str),
        docker: bool,
    ) -> PushedManifest {
        let (manifest_type, config_type, layer_type) = if docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
        } else {
            (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
        };
        let layer = format!("layer of {seed} {platform:?}").into_bytes();
        let layer_digest = self.push_blob(repository, &layer).await;
        let config = serde_json::to_vec(&json!({
            "architecture": platform.1, "os": platform.0,
            "config": {"Labels": {"seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
        }))
        .unwrap();
        let config_digest = self.push_blob(repository, &config).await;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": layer.len()}]
        }))
        .unwrap();
        let reference = tag
            .map(str::to_string)
            .unwrap_or_else(|| sha256_digest(&manifest));
        let digest = self
            .push_manifest(repository, &reference, manifest_type, &manifest)
            .await;
        PushedManifest {
            digest,
            config_digest,
            platform: (platform.0.to_string(), platform.1.to_string()),
        }
    }

    /// Pushes a multi-arch image for `platforms` under `tag`: an OCI index, or with
    /// `docker` a Docker manifest list.
    pub async fn push_index(
        &self,
        repository: &str,
        tag: &str,
        seed: &str,
        platforms: &[(&str, &str)],
        docker: bool,
    ) -> PushedIndex {
        let mut manifests = Vec::new();
        for platform in platforms {
            manifests.push(
                self.push_single(repository, None, seed, *platform, docker)
                    .await,
            );
        }
        let (index_type, manifest_type) = if docker {
            (DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)
        } else {
            (OCI_INDEX, OCI_MANIFEST)
        };
        let mut entries = Vec::new();
        for pushed in &manifests {
            let size = self.manifest_size(repository, &pushed.digest).await;
            entries.push(json!({
                "mediaType": manifest_type, "digest": pushed.digest, "size": size,
                "platform": {"os": pushed.platform.0, "architecture": pushed.platform.1}
            }));
        }
        let index = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": index_type, "manifests": entries}),
        )
        .unwrap();
        let digest = self
            .push_manifest(repository, tag, index_type, &index)
            .await;
        PushedIndex { digest, manifests }
    }

    /// Pushes an OCI index of `manifests` (already pushed) under `tag`, with an
    /// attestation manifest entry (platform `unknown/unknown`, as BuildKit adds) when
    /// `attestation`.
    pub async fn push_index_of(
        &self,
        repository: &str,
        tag: &str,
        manifests: &[&PushedManifest],
        attestation: bool,
    ) -> PushedIndex {
        let mut entries = Vec::new();
        for pushed in manifests {
            let size = self.manifest_size(repository, &pushed.digest).await;
            entries.push(json!({
                "mediaType": OCI_MANIFEST, "digest": pushed.digest, "size": size,
                "platform": {"os": pushed.platform.0, "architecture": pushed.platform.1}
            }));
        }
        if attestation {
            let statement = self
                .push_single(
                    repository,
                    None,
                    "attestation",
                    ("unknown", "unknown"),
                    false,
                )
                .await;
            let size = self.manifest_size(repository, &statement.digest).await;
            entries.push(json!({
                "mediaType": OCI_MANIFEST, "digest": statement.digest, "size": size,
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": manifests[0].digest}
            }));
        }
        let index = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
        )
        .unwrap();
        let digest = self.push_manifest(repository, tag, OCI_INDEX, &index).await;
        PushedIndex {
            digest,
            manifests: manifests.iter().map(|m| (*m).clone()).collect(),
        }
    }

    async fn manifest_size(&self, repository: &str, digest: &str) -> usize {
        let response = self
            .authorized(self.client.get(format!(
                "{}/v2/{repository}/manifests/{digest}",
                self.base_url
            )))
            .header("accept", format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}"))
            .send()
            .await
            .expect("manifest get");
        response.bytes().await.expect("manifest body").len()
    }

    /// The digest the registry has stored for `repository:tag`, read from its storage
    /// directory (not through the API under test).
    pub fn stored_tag_digest(&self, repository: &str, tag: &str) -> String {
        let link: PathBuf = [
            self.dir.path(),
            Path::new("storage/docker/registry/v2/repositories"),
            Path::new(repository),
            Path::new("_manifests/tags"),
            Path::new(tag),
            Path::new("current/link"),
        ]
        .iter()
        .collect();
        std::fs::read_to_string(&link)
            .unwrap_or_else(|e| panic!("{}: {e}", link.display()))
            .trim()
            .to_string()
    }
}

/// The JSON of a docker config with one registry's credentials.
pub fn docker_config_json(host: &str, user: &str, password: &str) -> Value {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    json!({"auths": {host: {"auth": auth}}})
}
