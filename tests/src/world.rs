//! A world for sidecar scenarios: a real registry with `demo/app:latest`, a real API
//! server (`api_server`, no controllers) with a Deployment `web`, and helpers that play the
//! Deployment controller (pods of the current template, status) and read what the
//! sidecars wrote.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api_server::ApiServer;
use crate::process::{eventually, Running};
use crate::registry::{PushedIndex, Registry, RegistryOptions};
use crate::workloads::{
    deployment, deployment_path, events_prefix, pod_path, running_pod, sidecar_command,
};

pub const PLATFORMS: [(&str, &str); 2] = [("linux", "amd64"), ("linux", "arm64")];
/// Generous: CI machines are shared and slow.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct World {
    pub api: ApiServer,
    pub registry: Registry,
    pub image: String,
    pub first: PushedIndex,
}

impl World {
    /// `demo/app:latest` pushed once and a real API server, nothing in it yet.
    pub async fn empty() -> Self {
        let registry = Registry::start(RegistryOptions::default()).await;
        let first = registry
            .push_index("demo/app", "latest", "v1", &PLATFORMS, false)
            .await;
        let image = format!("{}/demo/app:latest", registry.host());
        let api = ApiServer::start().await.unwrap();
        Self {
            api,
            registry,
            image,
            first,
        }
    }

    /// `demo/app:latest` pushed once, and a Deployment `web` whose template carries
    /// `annotations`, with its ReplicaSet; returns the world and the ReplicaSet.
    pub async fn start(annotations: Value) -> (Self, Value) {
        let world = Self::empty().await;
        let replica_set = deployment(&world.api, "web", &world.image, annotations);
        (world, replica_set)
    }

    /// The API writes so far, as `METHOD path`.
    pub fn writes(&self) -> Vec<String> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| r.is_write())
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// Every Event written so far.
    pub fn all_events(&self) -> Vec<Value> {
        self.api.list(&events_prefix())
    }

    pub fn image_id(&self, digest: &str) -> String {
        format!("{}/demo/app@{digest}", self.registry.host())
    }

    pub async fn push(&self, seed: &str) -> PushedIndex {
        self.registry
            .push_index("demo/app", "latest", seed, &PLATFORMS, false)
            .await
    }

    /// A pod of the Deployment's current template (its annotations copied, as the
    /// ReplicaSet controller does), running `image_id`, with its sidecar started.
    pub fn pod(&self, owner: &Value, name: &str, image_id: &str, ready: bool) -> Running {
        self.add_pod(owner, name, image_id, ready);
        Running::spawn(self.sidecar(name))
    }

    /// The same pod, without starting its sidecar.
    pub fn add_pod(&self, owner: &Value, name: &str, image_id: &str, ready: bool) {
        let template = self.deployment()["spec"]["template"].clone();
        running_pod(&self.api, name, Some(owner), &self.image, image_id, &now());
        let Some(mut pod) = self.api.get(&pod_path(name)) else {
            panic!("pod {name} was not stored");
        };
        pod["metadata"]["annotations"] = template["metadata"]["annotations"].clone();
        pod["metadata"]["labels"] = template["metadata"]["labels"].clone();
        let status = &mut pod["status"]["containerStatuses"][0];
        status["ready"] = json!(ready);
        if !ready {
            status["state"] = json!({"waiting": {"reason": "CrashLoopBackOff"}});
            status["restartCount"] = json!(4);
        }
        self.api.put(pod);
    }

    /// The pod now runs `image_id` (its container was restarted with another image).
    pub fn set_running(&self, name: &str, image_id: &str) {
        let Some(mut pod) = self.api.get(&pod_path(name)) else {
            panic!("no pod {name}");
        };
        pod["status"]["containerStatuses"][0]["imageID"] = json!(image_id);
        self.api.put(pod);
    }

    pub fn sidecar(&self, pod: &str) -> Command {
        sidecar_command(&self.api, pod, "web", "1s", Some(&self.registry.base_url))
    }

    pub fn deployment(&self) -> Value {
        self.api.get(&deployment_path("web")).unwrap()
    }

    /// What the Deployment controller reports: `ready` of `desired` new pods, the old
    /// ones still there while not all are ready.
    pub fn set_status(&self, desired: i64, ready: i64) {
        let mut deployment = self.deployment();
        deployment["spec"]["replicas"] = json!(desired);
        let stored = self.api.put(deployment);
        let mut deployment = stored;
        let total = if ready >= desired {
            desired
        } else {
            desired + 1
        };
        deployment["status"] = json!({
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": total, "updatedReplicas": desired, "readyReplicas": ready
        });
        self.api.put(deployment);
    }

    pub fn template_annotation(&self, key: &str) -> Option<String> {
        self.deployment()["spec"]["template"]["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_string)
    }

    pub fn metadata_annotation(&self, key: &str) -> Option<String> {
        self.deployment()["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_string)
    }

    /// Patches of the template (restarts and rollbacks) that were applied.
    pub fn template_patches(&self) -> Vec<Value> {
        self.api
            .requests_to("PATCH", &deployment_path("web"))
            .into_iter()
            .filter(|r| r.status == 200 && r.body.pointer("/spec/template").is_some())
            .map(|r| r.body)
            .collect()
    }

    /// The Events of `reason` written so far.
    pub fn events(&self, reason: &str) -> Vec<Value> {
        self.all_events()
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .collect()
    }

    pub async fn until(&self, what: &str, mut check: impl FnMut(&Self) -> bool, logs: &[&Running]) {
        let done = eventually(DEADLINE, || check(self)).await;
        let output: Vec<String> = logs.iter().map(|r| r.output()).collect();
        assert!(done, "{what}\n{}", output.join("\n-----\n"));
    }
}

pub fn now() -> String {
    pod_reloaded_contract::record::timestamp_text(jiff::Timestamp::now())
}

pub fn checked_rounds(sidecar: &Running) -> usize {
    sidecar.output().matches(": checked ").count()
}

pub async fn rounds(sidecars: &[&Running], count: usize) {
    let targets: Vec<usize> = sidecars.iter().map(|s| checked_rounds(s) + count).collect();
    let done = eventually(DEADLINE, || {
        sidecars
            .iter()
            .zip(&targets)
            .all(|(s, target)| checked_rounds(s) >= *target)
    })
    .await;
    assert!(done, "sidecars stopped doing rounds");
}
