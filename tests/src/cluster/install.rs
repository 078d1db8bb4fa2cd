//! pod-reloaded installed on the real control plane as a user installs it: the project's
//! own `manifests/` rendered by kubectl's kustomize and applied with strict field
//! validation, the webhook configuration's `clientConfig` pointed at the webhook binary
//! on 127.0.0.1 (`url` + `caBundle`, as envtest does), and the webhook running with a
//! real token of its own ServiceAccount, so its RBAC applies to it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use pod_reloaded_contract as contract;
use serde_json::{json, Value};

use super::api::Api;
use super::control_plane::{control_plane, kubeconfig, spawn_for_process_life, KubeconfigUser};
use crate::process::{binary, free_port};
use crate::webhook::{generate_certificates_for, http_get};
use crate::workspace_root;

/// The image the webhook injects (never pulled: the kubelet runs the sidecar binary).
pub const SIDECAR_IMAGE: &str = "pod-reloaded/sidecar:test";

pub struct Installed {
    /// The webhook process, `None` while a test keeps it stopped.
    webhook_pid: Mutex<Option<u32>>,
    webhook_args: Vec<std::ffi::OsString>,
    webhook_kubeconfig: PathBuf,
    /// Where the ConfigMap `pod-reloaded-trust` is "mounted" (`mount_trust_configmap`).
    trust_file: PathBuf,
    pub webhook_port: u16,
    pub metrics_port: u16,
    pub webhook_log: PathBuf,
    /// The objects applied (after the `clientConfig` rewrite).
    pub objects: Vec<Value>,
    /// What `kubectl apply` printed on stderr (warnings would be there).
    pub apply_stderr: String,
    pub ca_pem: String,
}

static INSTALLED: OnceLock<Result<Installed, String>> = OnceLock::new();

/// The receiver every notification of the installed webhook goes to
/// (`receiver::process_receivers`).
pub const NOTIFY_RECEIVER: &str = "e2e";

/// pod-reloaded installed on this process's control plane (once).
pub fn installed() -> &'static Installed {
    match INSTALLED.get_or_init(|| {
        // The install talks to the API server from a runtime of its own, on a thread of
        // its own: it outlives any one test's runtime.
        crate::process::block_on_own_thread(install())
            .and_then(|installed| installed.map_err(|e| format!("{e:#}")))
    }) {
        Ok(installed) => installed,
        Err(error) => panic!(
            "pod-reloaded could not be installed: {error}\n{}",
            control_plane().logs()
        ),
    }
}

/// The kustomize base rendered by the built kubectl, as objects.
pub fn rendered_manifests() -> anyhow::Result<Vec<Value>> {
    let manifests = workspace_root().join("manifests");
    let text = control_plane()
        .kubectl(&["kustomize", &manifests.to_string_lossy()])
        .map_err(anyhow::Error::msg)?;
    yaml_documents(&text)
}

pub fn yaml_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize as _;
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document)?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

async fn install() -> anyhow::Result<Installed> {
    let plane = control_plane();
    let dir = plane.dir.join("install");
    std::fs::create_dir_all(&dir)?;
    let certs = generate_certificates_for(&dir.join("certs"), &["127.0.0.1"]);
    let ca_pem = std::fs::read_to_string(&certs.ca)?;
    let webhook_port = free_port();
    let metrics_port = free_port();

    let mut objects = rendered_manifests()?;
    let url = format!(
        "https://127.0.0.1:{webhook_port}{}",
        contract::WEBHOOK_MUTATE_PATH
    );
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&ca_pem);
    for object in &mut objects {
        if object["kind"] == "MutatingWebhookConfiguration" {
            for webhook in object["webhooks"].as_array_mut().into_iter().flatten() {
                webhook["clientConfig"] = json!({"url": url, "caBundle": ca_bundle});
            }
        }
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let file = dir.join("install.json");
    std::fs::write(&file, list.to_string())?;
    let output = Command::new(plane.bin.join("kubectl"))
        .arg("--kubeconfig")
        .arg(&plane.admin_kubeconfig)
        .args(["apply", "--validate=strict", "-f"])
        .arg(&file)
        .output()?;
    let apply_stderr = String::from_utf8_lossy(&output.stderr).to_string();
    anyhow::ensure!(
        output.status.success(),
        "kubectl apply of manifests/ failed: {apply_stderr}"
    );

    // The webhook as its own ServiceAccount.
    let admin = Api::admin(plane);
    let token = admin
        .service_account_token(contract::WEBHOOK_NAMESPACE, contract::WEBHOOK_SERVICE, None)
        .await?;
    let webhook_kubeconfig = dir.join("webhook.kubeconfig");
    std::fs::write(
        &webhook_kubeconfig,
        kubeconfig(&plane.url, &plane.ca_pem, KubeconfigUser::Token(&token)),
    )?;
    // Notifications of every namespace to one HTTPS receiver of the test process, in
    // pod-reloaded's JSON (`NOTIFY_RECEIVER`).
    let notify_dir = dir.join("notify");
    std::fs::create_dir_all(notify_dir.join("secrets"))?;
    let receivers = crate::receiver::process_receivers();
    std::fs::write(
        notify_dir.join("notify.yaml"),
        format!("receivers:\n  {NOTIFY_RECEIVER}: {{type: webhook, urlKey: url, namespaceSelector: {{}}}}\n"),
    )?;
    std::fs::write(
        notify_dir.join("secrets").join("url"),
        receivers.url(NOTIFY_RECEIVER),
    )?;
    std::fs::write(notify_dir.join("ca.pem"), &receivers.ca_pem)?;
    let webhook_args: Vec<std::ffi::OsString> = vec![
        "--listen".into(),
        format!("127.0.0.1:{webhook_port}").into(),
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics_port}").into(),
        "--tls-cert-file".into(),
        certs.cert.clone().into(),
        "--tls-key-file".into(),
        certs.key.clone().into(),
        "--sidecar-image".into(),
        SIDECAR_IMAGE.into(),
        "--trust-policy-file".into(),
        dir.join("trust").join("policies.yaml").into(),
        "--notify-config".into(),
        notify_dir.join("notify.yaml").into(),
        "--notify-secrets-dir".into(),
        notify_dir.join("secrets").into(),
        "--notify-ca-file".into(),
        notify_dir.join("ca.pem").into(),
        "--notify-retry-delays".into(),
        "500ms,1s".into(),
    ];
    let webhook_log = dir.join("webhook.log");
    let installed = Installed {
        webhook_pid: Mutex::new(None),
        webhook_args,
        webhook_kubeconfig,
        trust_file: dir.join("trust").join("policies.yaml"),
        webhook_port,
        metrics_port,
        webhook_log,
        objects,
        apply_stderr,
        ca_pem,
    };
    installed.start_webhook().await?;
    let deadline = Instant::now() + Duration::from_secs(30);

    // The API server calls webhooks once its informer has the configuration: wait until
    // a dry-run pod in an opted-in namespace comes back with the webhook's warning.
    let probe = "pod-reloaded-install-probe";
    admin
        .create(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": probe,
                "labels": {contract::INJECT_LABEL: contract::INJECT_ENABLED}}}),
        )
        .await?;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "app", "image": "nginx:latest"}]}});
    loop {
        let answer = admin
            .request(
                reqwest::Method::POST,
                &format!("/api/v1/namespaces/{probe}/pods?dryRun=All"),
                "application/json",
                Some(&pod),
            )
            .await?;
        if answer.warnings.iter().any(|w| w.contains("pod-reloaded")) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the API server never called the webhook (last answer {:?})",
            answer
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("pod-reloaded installed: manifests/ applied, webhook on 127.0.0.1:{webhook_port}");
    Ok(installed)
}

impl Installed {
    /// Starts the webhook binary (as its ServiceAccount) and waits for `/readyz`.
    pub async fn start_webhook(&self) -> anyhow::Result<()> {
        let mut command = Command::new(binary("pod-reloaded-webhook"));
        command
            .args(&self.webhook_args)
            .env_clear()
            .env("KUBECONFIG", &self.webhook_kubeconfig);
        let pid = spawn_for_process_life(command, &self.webhook_log).map_err(anyhow::Error::msg)?;
        *self.webhook_pid.lock().unwrap_or_else(|p| p.into_inner()) = Some(pid);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(self.metrics_port, "/readyz"), Ok((200, _))) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the webhook did not become ready:\n{}",
                self.webhook_output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Kills the webhook (an outage: the API server finds nothing on its port).
    pub fn stop_webhook(&self) -> anyhow::Result<()> {
        let pid = self
            .webhook_pid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let pid = pid.ok_or_else(|| anyhow::anyhow!("the webhook is not running"))?;
        let status = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.webhook_port)).is_ok() {
            anyhow::ensure!(Instant::now() < deadline, "the webhook still listens");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// What the kubelet does for the webhook's optional ConfigMap volume
    /// `pod-reloaded-trust`: its `policies.yaml` written where the webhook reads it
    /// (replaced by a rename, as a volume update is), or removed with the ConfigMap.
    pub async fn mount_trust_configmap(&self) -> anyhow::Result<()> {
        let admin = Api::admin(control_plane());
        let path = format!(
            "/api/v1/namespaces/{}/configmaps/{}",
            contract::WEBHOOK_NAMESPACE,
            contract::TRUST_CONFIGMAP
        );
        let dir = self
            .trust_file
            .parent()
            .ok_or_else(|| anyhow::anyhow!("no directory"))?;
        std::fs::create_dir_all(dir)?;
        match admin.get(&path).await? {
            Some(config_map) => {
                let text = config_map["data"]["policies.yaml"].as_str().unwrap_or("");
                let staged = dir.join(".policies.yaml.new");
                std::fs::write(&staged, text)?;
                std::fs::rename(&staged, &self.trust_file)?;
            }
            None => {
                let _ = std::fs::remove_file(&self.trust_file);
            }
        }
        Ok(())
    }

    pub fn webhook_output(&self) -> String {
        std::fs::read_to_string(&self.webhook_log).unwrap_or_default()
    }
}
