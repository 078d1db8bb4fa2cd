//! The webhook and the sidecar must agree on every setting: a pod the webhook injects
//! must give the sidecar env it starts with, and a value the sidecar would refuse must
//! not be injected. The same annotation values go through both.

use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use pod_reloaded_contract as contract;
use pod_reloaded_sidecar::config::Config as SidecarConfig;
use pod_reloaded_webhook::inject::{self, Decision, InjectionSettings, SidecarMode};
use serde_json::{json, Value};

fn settings() -> InjectionSettings {
    InjectionSettings::example(SidecarMode::Container)
}

fn pod(image: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "web-", "namespace": "shop", "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u", "controller": true}]
        },
        "spec": {"containers": [{"name": "web", "image": image}]}
    }))
    .expect("a Pod")
}

/// The sidecar's env from the webhook's patch, with downward-API values filled in.
fn injected_env(pod: &Pod) -> Option<Vec<(String, String)>> {
    injected_env_with(pod, &settings())
}

fn injected_env_with(pod: &Pod, settings: &InjectionSettings) -> Option<Vec<(String, String)>> {
    // The webhook reads its part of the same pod, as it does from an admission request.
    let mut value = serde_json::to_value(pod).expect("pod serializes");
    let view: inject::PodView = serde_json::from_value(value.clone()).expect("a pod's view");
    let Decision::Inject(injection) = inject::decide(&view, "shop", settings) else {
        return None;
    };
    json_patch::patch(
        &mut value,
        &injection.patch.operations().expect("a JSON Patch"),
    )
    .expect("patch applies");
    let sidecar = value["spec"]["containers"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["name"] == contract::SIDECAR_CONTAINER_NAME)
        })
        .expect("sidecar injected")
        .clone();
    Some(
        sidecar["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|var| {
                let name = var["name"].as_str().expect("name").to_string();
                let value = var["value"]
                    .as_str()
                    .unwrap_or("from-downward-api")
                    .to_string();
                (name, value)
            })
            .collect(),
    )
}

fn sidecar_accepts(env: &[(String, String)]) -> Result<(), String> {
    let mut args = vec!["pod-reloaded-sidecar".to_string()];
    for (name, value) in env {
        let flag = match name.as_str() {
            contract::ENV_WATCH_CONTAINER => "--watch-containers",
            contract::ENV_INTERVAL => "--interval",
            contract::ENV_REGISTRY_URL => "--registry-url",
            contract::ENV_POD_NAME => "--pod-name",
            contract::ENV_POD_NAMESPACE => "--pod-namespace",
            contract::ENV_PULL_SECRETS_DIR => "--pull-secrets-dir",
            contract::ENV_REGISTRY_CA_DIR => "--registry-ca-dir",
            contract::ENV_INSECURE_REGISTRIES => "--insecure-registries",
            contract::ENV_REGISTRY_TIMEOUT => "--registry-timeout",
            contract::ENV_METRICS_LISTEN => "--metrics-listen",
            contract::ENV_LOG_FORMAT => "--log-format",
            other => return Err(format!("the sidecar has no flag for injected env {other}")),
        };
        args.push(format!("{flag}={value}"));
    }
    let mut config = SidecarConfig::try_parse_from(args).map_err(|e| e.to_string())?;
    config.validate()
}

#[test]
fn the_webhook_injects_exactly_what_the_sidecar_accepts() {
    let cases: Vec<(&str, Value)> = vec![
        ("interval", json!({contract::ANNOTATION_INTERVAL: "30s"})),
        ("interval", json!({contract::ANNOTATION_INTERVAL: "1s"})),
        ("interval", json!({contract::ANNOTATION_INTERVAL: "24h"})),
        ("interval", json!({contract::ANNOTATION_INTERVAL: "500ms"})),
        ("interval", json!({contract::ANNOTATION_INTERVAL: "25h"})),
        (
            "interval",
            json!({contract::ANNOTATION_INTERVAL: "99999999999999999999s"}),
        ),
        ("interval", json!({contract::ANNOTATION_INTERVAL: "soon"})),
        (
            "registry-url",
            json!({contract::ANNOTATION_REGISTRY_URL: "https://artifactory.example.com/api/docker/hub"}),
        ),
        (
            "registry-url",
            json!({contract::ANNOTATION_REGISTRY_URL: "http://127.0.0.1:5000"}),
        ),
        (
            "registry-url",
            json!({contract::ANNOTATION_REGISTRY_URL: "docker.io=https://mirror.example.com,ghcr.io=https://ghcr-mirror.example.com/v"}),
        ),
        (
            "registry-url",
            json!({contract::ANNOTATION_REGISTRY_URL: "registry.example.com"}),
        ),
        (
            "registry-url",
            json!({contract::ANNOTATION_REGISTRY_URL: "https://host/p?q"}),
        ),
        (
            "registry-url",
            json!({contract::ANNOTATION_REGISTRY_URL: "docker.io="}),
        ),
    ];
    let (mut accepted, mut refused) = (0, 0);
    for (what, annotations) in cases {
        let pod = pod("nginx:latest", annotations.clone());
        match injected_env(&pod) {
            Some(env) => {
                sidecar_accepts(&env).unwrap_or_else(|e| {
                    panic!("{what} {annotations}: injected, but the sidecar refuses it: {e}")
                });
                accepted += 1;
            }
            None => {
                // Refused by the webhook: the sidecar must refuse the same value.
                let key = annotations
                    .as_object()
                    .and_then(|a| a.values().next())
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let env = [
                    (contract::ENV_WATCH_CONTAINER.to_string(), "web".to_string()),
                    (contract::ENV_POD_NAME.to_string(), "p".to_string()),
                    (contract::ENV_POD_NAMESPACE.to_string(), "shop".to_string()),
                    (
                        if what == "interval" {
                            contract::ENV_INTERVAL
                        } else {
                            contract::ENV_REGISTRY_URL
                        }
                        .to_string(),
                        key.to_string(),
                    ),
                ];
                assert!(
                    sidecar_accepts(&env).is_err(),
                    "{what} {key:?}: refused by the webhook but accepted by the sidecar"
                );
                refused += 1;
            }
        }
    }
    assert_eq!((accepted, refused), (6, 7));
}

#[test]
fn both_read_image_references_the_same_way() {
    use contract::image::ImageReference;
    let digest = format!("sha256:{}", "a".repeat(64));
    for (image, watched_by_webhook) in [
        ("nginx", true),
        ("registry.hub.docker.com/library/nginx:1", true),
        ("127.0.0.1:5000/demo/app:latest", true),
        (&*format!("nginx@{digest}"), false),
        ("Not A Reference", false),
    ] {
        let injected = injected_env(&pod(image, json!({}))).is_some();
        assert_eq!(injected, watched_by_webhook, "{image}");
        // What the webhook watches, the sidecar can ask the registry about.
        let sidecar_watches = ImageReference::parse(image).is_ok_and(|r| !r.is_pinned());
        assert_eq!(sidecar_watches, watched_by_webhook, "{image}");
    }
}

#[test]
fn the_webhooks_sidecar_flags_give_env_the_sidecar_accepts() {
    use pod_reloaded_webhook::config::Config as WebhookConfig;
    let config = WebhookConfig::try_parse_from([
        "pod-reloaded-webhook",
        "--sidecar-log-format=json",
        "--sidecar-insecure-registries=registry.lan:5000, mirror.lan",
        "--sidecar-registry-timeout=30s",
        "--sidecar-metrics-port=9102",
        "--sidecar-ca-configmap=corporate-ca",
    ])
    .expect("webhook flags");
    let settings = config.injection_settings().expect("valid settings");
    let env = injected_env_with(&pod("nginx:latest", json!({})), &settings).expect("injected");
    for expected in [
        contract::ENV_LOG_FORMAT,
        contract::ENV_INSECURE_REGISTRIES,
        contract::ENV_REGISTRY_TIMEOUT,
        contract::ENV_METRICS_LISTEN,
        contract::ENV_REGISTRY_CA_DIR,
    ] {
        assert!(
            env.iter().any(|(name, _)| name == expected),
            "{expected} not injected"
        );
    }
    sidecar_accepts(&env).expect("the sidecar starts with what the webhook injects");
    // A timeout the sidecar would refuse stops the webhook instead.
    let bad =
        WebhookConfig::try_parse_from(["pod-reloaded-webhook", "--sidecar-registry-timeout=0s"])
            .expect("parses");
    assert!(bad.injection_settings().is_err());
}
