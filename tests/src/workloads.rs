//! Workload objects as the controllers make them, written to a real API server with
//! faithful owner references (uids of the stored owners), and the sidecar command built
//! from a pod's sidecar container the way the kubelet would run it.

use std::process::Command;

use pod_reloaded_contract as contract;
use serde_json::{json, Value};

use crate::api_server::ApiServer;
use crate::process::binary;

pub const NAMESPACE: &str = "shop";

fn owner_reference(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true
    })
}

fn template(kind: &str, name: &str, image: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "web", "image": image}]}
            }
        }
    })
}

/// Stores a Deployment and its ReplicaSet; returns the stored ReplicaSet (the pods' owner).
pub fn deployment(api: &ApiServer, name: &str, image: &str, annotations: Value) -> Value {
    let deployment = api.put(template("Deployment", name, image, annotations));
    let mut replica_set = template("ReplicaSet", &format!("{name}-5d9c8b7f6"), image, json!({}));
    replica_set["metadata"]["ownerReferences"] = json!([owner_reference(&deployment)]);
    api.put(replica_set)
}

/// Sets Deployment `name`'s desired replicas, as `kubectl scale` does.
pub fn scale_deployment(api: &ApiServer, name: &str, replicas: usize) {
    let Some(mut stored) = api.get(&deployment_path(name)) else {
        panic!("no Deployment {name}");
    };
    stored["spec"]["replicas"] = json!(replicas);
    api.put(stored);
}

/// Stores a StatefulSet or DaemonSet; returns it (the pods' owner).
pub fn controller(api: &ApiServer, kind: &str, name: &str, image: &str) -> Value {
    api.put(template(kind, name, image, json!({})))
}

pub fn deployment_path(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}")
}

pub fn pod_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}")
}

pub fn events_prefix() -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/events/")
}

/// Stores a running pod owned by `owner` (or bare with `None`) whose container `web` runs
/// `image` at `image_id`.
pub fn running_pod(
    api: &ApiServer,
    name: &str,
    owner: Option<&Value>,
    image: &str,
    image_id: &str,
    created: &str,
) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "creationTimestamp": created},
        "spec": {"containers": [{"name": "web", "image": image}]},
        "status": {"containerStatuses": [{"name": "web", "image": image, "imageID": image_id, "ready": true, "restartCount": 0}]}
    });
    if let Some(owner) = owner {
        pod["metadata"]["ownerReferences"] = json!([owner_reference(owner)]);
    }
    api.put(pod)
}

/// The sidecar binary with the env the webhook injects, for pod `pod_name`.
pub fn sidecar_command(
    api: &ApiServer,
    pod_name: &str,
    watch: &str,
    interval: &str,
    registry_url: Option<&str>,
) -> Command {
    let mut command = Command::new(binary("pod-reloaded-sidecar"));
    command
        .env_clear()
        .env("KUBECONFIG", api.kubeconfig_path())
        .env(contract::ENV_POD_NAME, pod_name)
        .env(contract::ENV_POD_NAMESPACE, NAMESPACE)
        .env(contract::ENV_WATCH_CONTAINER, watch)
        .env(contract::ENV_INTERVAL, interval)
        .env("IMAGE_CHECKER_PLATFORM", "linux/amd64");
    if let Some(url) = registry_url {
        command.env(contract::ENV_REGISTRY_URL, url);
    }
    command
}

/// Runs the sidecar of a pod as the kubelet would: its container's env (downward API
/// `fieldRef`s resolved from the stored pod) and args, nothing set by hand.
pub fn command_from_pod(
    kubeconfig: &std::path::Path,
    pod: &Value,
    extra_env: &[(&str, String)],
) -> Command {
    let containers = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        );
    let sidecar = containers
        .into_iter()
        .find(|c| c["name"] == contract::SIDECAR_CONTAINER_NAME)
        .expect("pod has the injected sidecar");
    let mut command = Command::new(binary("pod-reloaded-sidecar"));
    command.env_clear().env("KUBECONFIG", kubeconfig);
    for var in sidecar["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name");
        let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(value), _) => value.clone(),
            (_, Value::String(path)) => {
                let pointer = format!("/{}", path.replace('.', "/"));
                pod.pointer(&pointer)
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("pod has no {path}"))
                    .to_string()
            }
            other => panic!("unsupported env source {other:?}"),
        };
        command.env(name, value);
    }
    for (name, value) in extra_env {
        command.env(name, value);
    }
    for arg in sidecar["args"].as_array().into_iter().flatten() {
        command.arg(arg.as_str().expect("string arg"));
    }
    command
}
