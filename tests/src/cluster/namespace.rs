//! A namespace of one test on the real control plane, with the kubelet played for it,
//! and the reads tests make of what pod-reloaded did there.

use std::future::Future;
use std::time::{Duration, Instant};

use pod_reloaded_contract as contract;
use serde_json::{json, Value};

use super::api::Api;
use super::control_plane::control_plane;
use super::install::installed;
use super::kubelet::{Kubelet, KubeletOptions};

/// Generous: CI machines are shared and slow, and a rollout takes several controller syncs.
pub const ROLLOUT_DEADLINE: Duration = Duration::from_secs(90);

pub struct TestNamespace {
    pub name: String,
    pub api: Api,
    pub kubelet: Kubelet,
}

impl TestNamespace {
    /// Creates namespace `name` with `labels` (pod-reloaded installed first), waits for
    /// its `default` ServiceAccount, and plays the kubelet for it.
    pub async fn new(name: &str, labels: Value, options: KubeletOptions) -> anyhow::Result<Self> {
        installed();
        let api = Api::admin(control_plane());
        api.create(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels}}),
        )
        .await?;
        let account = format!("/api/v1/namespaces/{name}/serviceaccounts/default");
        wait_for(
            "the namespace's default ServiceAccount",
            Duration::from_secs(30),
            || async { Ok(api.get(&account).await?.is_some()) },
        )
        .await?;
        Ok(Self {
            name: name.to_string(),
            api,
            kubelet: Kubelet::start(name, options),
        })
    }

    /// An opted-in namespace (`pod-reloaded.io/inject=enabled`).
    pub async fn opted_in(name: &str) -> anyhow::Result<Self> {
        Self::new(
            name,
            json!({contract::INJECT_LABEL: contract::INJECT_ENABLED}),
            KubeletOptions {
                sidecar_env: vec![("IMAGE_CHECKER_PLATFORM".into(), "linux/amd64".into())],
                ..KubeletOptions::default()
            },
        )
        .await
    }

    pub fn path(&self, resource: &str, name: &str) -> String {
        let group = match resource {
            "deployments" | "statefulsets" | "daemonsets" | "replicasets" => "apis/apps/v1",
            "rolebindings" => "apis/rbac.authorization.k8s.io/v1",
            "rollouts" => "apis/argoproj.io/v1alpha1",
            _ => "api/v1",
        };
        let namespace = &self.name;
        if name.is_empty() {
            format!("/{group}/namespaces/{namespace}/{resource}")
        } else {
            format!("/{group}/namespaces/{namespace}/{resource}/{name}")
        }
    }

    pub async fn get(&self, resource: &str, name: &str) -> anyhow::Result<Value> {
        self.api
            .get(&self.path(resource, name))
            .await?
            .ok_or_else(|| anyhow::anyhow!("{resource}/{name} not found in {}", self.name))
    }

    pub async fn list(&self, resource: &str) -> anyhow::Result<Vec<Value>> {
        self.api.list(&self.path(resource, "")).await
    }

    pub async fn create(&self, resource: &str, object: &Value) -> anyhow::Result<Value> {
        self.api.create(&self.path(resource, ""), object).await
    }

    /// The Events whose reason is `reason`.
    pub async fn events(&self, reason: &str) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .list("events")
            .await?
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .collect())
    }

    /// The pods that are not being deleted.
    pub async fn live_pods(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .list("pods")
            .await?
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect())
    }

    /// Output of the sidecars, the webhook and the control plane, for a failure message.
    pub fn diagnostics(&self) -> String {
        format!(
            "{}\n---- webhook ----\n{}\n{}",
            self.kubelet.sidecar_logs(),
            tail(&installed().webhook_output(), 30),
            control_plane().logs()
        )
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `check` every 100 ms until it says true, or fails after `limit` saying `what`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + limit;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() > deadline {
            match last_error {
                Some(error) => {
                    anyhow::bail!("{what}: not within {limit:?} (last error: {error:#})")
                }
                None => anyhow::bail!("{what}: not within {limit:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
