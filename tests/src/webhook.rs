//! Running the real webhook binary with certificates from the real `certs/` command, and a
//! client that verifies its certificate against the generated CA.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use crate::api_server::ApiServer;
use crate::process::{binary, eventually, free_port, Running};
use crate::workspace_root;

/// Files written by `pod-reloaded-certs`.
pub struct Certificates {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Runs the project's certs command into `dir`.
pub fn generate_certificates(dir: &Path) -> Certificates {
    generate_certificates_for(dir, &[])
}

/// Runs the certs command with extra names for the serving certificate.
pub fn generate_certificates_for(dir: &Path, extra_names: &[&str]) -> Certificates {
    let mut command = Command::new(binary("pod-reloaded-certs"));
    command
        .arg("--out-dir")
        .arg(dir)
        .arg("--manifests-dir")
        .arg(workspace_root().join("manifests"));
    for name in extra_names {
        command.arg("--dns-name").arg(name);
    }
    let output = command.output().expect("certs command runs");
    assert!(
        output.status.success(),
        "certs command failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Certificates {
        dir: dir.to_path_buf(),
        ca: dir.join("ca.crt"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    }
}

/// The name the serving certificate is for; the client resolves it to 127.0.0.1.
pub fn service_name() -> String {
    pod_reloaded_contract::webhook_service_dns_name()
}

pub struct Webhook {
    pub process: Running,
    pub port: u16,
    pub metrics_port: u16,
}

impl Webhook {
    /// Starts the webhook on free local ports and waits for `/readyz`. With `api: None` it
    /// runs with a KUBECONFIG that does not exist (no API access).
    pub async fn start(certs: &Certificates, api: Option<&ApiServer>, extra_args: &[&str]) -> Self {
        Self::start_binary(&binary("pod-reloaded-webhook"), certs, api, extra_args).await
    }

    /// As `start`, with the webhook binary at `path` (the bench compares builds).
    pub async fn start_binary(
        path: &Path,
        certs: &Certificates,
        api: Option<&ApiServer>,
        extra_args: &[&str],
    ) -> Self {
        let port = free_port();
        let metrics_port = free_port();
        let mut command = Command::new(path);
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--tls-cert-file")
            .arg(&certs.cert)
            .arg("--tls-key-file")
            .arg(&certs.key)
            .args(extra_args)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env(
                "KUBECONFIG",
                match api {
                    Some(api) => api.kubeconfig_path().to_path_buf(),
                    None => certs.dir.join("no-such-kubeconfig"),
                },
            );
        let process = Running::spawn(command);
        let webhook = Self {
            process,
            port,
            metrics_port,
        };
        let ready = eventually(Duration::from_secs(10), || {
            matches!(webhook.get_metrics_port("/readyz"), Ok((200, _)))
        })
        .await;
        assert!(
            ready,
            "webhook did not become ready:\n{}",
            webhook.process.output()
        );
        webhook
    }

    /// GET on the plain-HTTP health/metrics port (blocking, tiny HTTP/1.0 client).
    pub fn get_metrics_port(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.metrics_port, path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", service_name(), self.port)
    }

    /// A new client (so a new TLS handshake) trusting `ca`, resolving the service name to
    /// 127.0.0.1.
    pub fn client(&self, ca: &Path) -> reqwest::Client {
        tls_client(ca, self.port)
    }
}

pub fn tls_client(ca: &Path, port: u16) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("CA file");
    let ca = reqwest::Certificate::from_pem(&pem).expect("CA parses");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .resolve(&service_name(), ([127, 0, 0, 1], port).into())
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client builds")
}

/// Minimal HTTP/1.0 GET to 127.0.0.1 for the plain health port.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}

/// The JSON Patch in an AdmissionReview response: base64 text, as the API server's Go
/// types encode `[]byte`.
pub fn response_patch(review: &Value) -> Option<json_patch::Patch> {
    let text = review["response"]["patch"].as_str()?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

pub fn warnings(review: &Value) -> Vec<String> {
    review["response"]["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads an AdmissionReview fixture from `tests/fixtures/admission/`.
pub fn fixture(name: &str) -> Value {
    let path = workspace_root().join("tests/fixtures/admission").join(name);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).expect("fixture is JSON")
}
