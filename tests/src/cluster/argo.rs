//! Argo Rollouts on the real control plane: its `Rollout` CRD from the argo-rollouts Go
//! module (fetched by `tests/control-plane/build.sh`), so every patch of a Rollout is
//! validated by the real schema. The Rollout controller's part is played by the harness
//! (`RolloutController`), in its simplest form: a ReplicaSet per template (named by the
//! template's hash, `rollouts-pod-template-hash`), older ones scaled to zero, and a status
//! that says `Healthy` once every pod of the current one is ready. The ReplicaSet
//! controller, the webhook and the sidecars are the real ones.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::api::Api;
use super::control_plane::{binaries_dir, control_plane};
use super::namespace::wait_for;

/// The Rollout CRD file the build script fetched.
pub fn rollout_crd() -> anyhow::Result<PathBuf> {
    let dir = binaries_dir().map_err(anyhow::Error::msg)?;
    std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("argo-rollouts-") && n.ends_with("-rollout-crd.yaml")
            })
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no Argo Rollouts CRD in {}: run make control-plane",
                dir.display()
            )
        })
}

/// Installs the Rollout CRD (server-side apply: it is too large for a client-side
/// apply's annotation) and waits until it is served.
pub async fn install_rollout_crd() -> anyhow::Result<()> {
    let plane = control_plane();
    let crd = rollout_crd()?;
    plane
        .kubectl(&[
            "apply",
            "--server-side",
            "--validate=strict",
            "-f",
            &crd.to_string_lossy(),
        ])
        .map_err(anyhow::Error::msg)?;
    // Polled rather than `kubectl wait`, which fails while the CRD has no conditions yet.
    let api = Api::admin(plane);
    let crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rollouts.argoproj.io";
    wait_for(
        "the Rollout CRD is established",
        Duration::from_secs(60),
        || async {
            let established = api.get(crd).await?.is_some_and(|crd| {
                crd["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
            Ok(established && api.get("/apis/argoproj.io/v1alpha1/rollouts").await.is_ok())
        },
    )
    .await
}

/// Plays the Argo Rollouts controller for one Rollout.
pub struct RolloutController {
    task: tokio::task::JoinHandle<()>,
}

impl RolloutController {
    pub fn start(namespace: &str, name: &str) -> Self {
        let api = Api::admin(control_plane());
        let (namespace, name) = (namespace.to_string(), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                // A failed sync (a conflict with the sidecar's patch) is tried again.
                let _ = sync(&api, &namespace, &name).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { task }
    }
}

impl Drop for RolloutController {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn template_hash(template: &Value) -> String {
    hex::encode(Sha256::digest(template.to_string().as_bytes()))[..10].to_string()
}

async fn sync(api: &Api, namespace: &str, name: &str) -> anyhow::Result<()> {
    let path = format!("/apis/argoproj.io/v1alpha1/namespaces/{namespace}/rollouts/{name}");
    let Some(rollout) = api.get(&path).await? else {
        return Ok(());
    };
    let replicas = rollout["spec"]["replicas"].as_i64().unwrap_or(1);
    let template = &rollout["spec"]["template"];
    let hash = template_hash(template);
    let uid = rollout["metadata"]["uid"].clone();
    let sets_path = format!("/apis/apps/v1/namespaces/{namespace}/replicasets");
    let owned: Vec<Value> = api
        .list(&sets_path)
        .await?
        .into_iter()
        .filter(|rs| rs["metadata"]["ownerReferences"][0]["uid"] == uid)
        .collect();
    let current = format!("{name}-{hash}");
    if !owned.iter().any(|rs| rs["metadata"]["name"] == current) {
        let mut pod_template = template.clone();
        pod_template["metadata"]["labels"]["rollouts-pod-template-hash"] = json!(hash);
        let mut selector = rollout["spec"]["selector"].clone();
        selector["matchLabels"]["rollouts-pod-template-hash"] = json!(hash);
        api.create(
            &sets_path,
            &json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": current, "labels": pod_template["metadata"]["labels"],
                    "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                        "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
                "spec": {"replicas": replicas, "selector": selector, "template": pod_template}
            }),
        )
        .await?;
    }
    let mut ready_current = 0;
    let mut old_pods = 0;
    for rs in &owned {
        let is_current = rs["metadata"]["name"] == current;
        if !is_current && rs["spec"]["replicas"] != 0 {
            let rs_name = rs["metadata"]["name"].as_str().unwrap_or("");
            api.merge_patch(
                &format!("{sets_path}/{rs_name}"),
                &json!({"spec": {"replicas": 0}}),
            )
            .await?;
        }
        let status_replicas = rs["status"]["replicas"].as_i64().unwrap_or(0);
        if is_current {
            ready_current = rs["status"]["readyReplicas"].as_i64().unwrap_or(0);
        } else {
            old_pods += status_replicas;
        }
    }
    let healthy = ready_current >= replicas && old_pods == 0;
    let status = json!({"status": {
        "observedGeneration": rollout["metadata"]["generation"].as_i64().unwrap_or(0).to_string(),
        "phase": if healthy { "Healthy" } else { "Progressing" },
        "replicas": ready_current + old_pods,
        "updatedReplicas": ready_current,
        "readyReplicas": ready_current,
        "availableReplicas": ready_current,
        "currentPodHash": hash,
        "stableRS": if healthy { json!(hash) } else { rollout["status"]["stableRS"].clone() },
    }});
    api.merge_patch(&format!("{path}/status"), &status).await?;
    Ok(())
}
