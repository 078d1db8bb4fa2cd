//! The Helm chart: it lints strictly, renders with its defaults exactly the objects of the
//! kustomize base (the two are kept in sync by this test), renders what non-default values
//! ask for, and its schema refuses bad values. helm 3.17 from `.tools/bin` (make test
//! installs it: tests/install-tools.py).

use std::collections::BTreeMap;
use std::process::Command;

use pod_reloaded_contract as contract;
use pod_reloaded_tests::workspace_root;
use serde::Deserialize;
use serde_yaml::Value;

fn tool(name: &str) -> Command {
    Command::new(workspace_root().join(".tools/bin").join(name))
}

fn chart() -> std::path::PathBuf {
    workspace_root().join("charts/pod-reloaded")
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// `helm template` with `--set` values (and the external certificate's CA bundle, the one
/// value the defaults need); `Err` with helm's message when it refuses.
fn template(values: &[&str]) -> Result<Vec<Value>, String> {
    let mut all = vec![EXTERNAL_CA];
    all.extend_from_slice(values);
    template_exactly(&all)
}

/// `helm template` with exactly these `--set` values.
fn template_exactly(values: &[&str]) -> Result<Vec<Value>, String> {
    let mut command = tool("helm");
    command
        .arg("template")
        .arg("pod-reloaded")
        .arg(chart())
        .args(["--namespace", pod_reloaded_contract::WEBHOOK_NAMESPACE]);
    for value in values {
        command.arg("--set").arg(value);
    }
    let output = command.output().expect("helm is in .tools/bin");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).to_string());
    }
    Ok(documents(&String::from_utf8_lossy(&output.stdout)))
}

fn by_identity(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter()
        .map(|doc| {
            let id = format!(
                "{} {}/{}",
                doc["kind"].as_str().unwrap_or(""),
                doc["metadata"]["namespace"].as_str().unwrap_or(""),
                doc["metadata"]["name"].as_str().unwrap_or("")
            );
            (id, doc)
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_chart_lints_strictly_and_carries_the_workspace_version() {
    let output = tool("helm")
        .args(["lint", "--strict", "--set", EXTERNAL_CA])
        .arg(chart())
        .output()
        .expect("helm");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let metadata: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        metadata["version"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        metadata["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let policy = std::fs::read_to_string(chart().join("files/policy.yaml")).unwrap();
    assert_eq!(
        policy,
        std::fs::read_to_string(workspace_root().join("manifests/policy.yaml")).unwrap(),
        "the chart's policy is the one python3 manifests/policy.py writes"
    );
}

/// The one value the defaults need: the CA of the Secret an external source provides.
const EXTERNAL_CA: &str = "certificate.caBundle=Q0EK";

#[test]
fn with_its_defaults_the_chart_renders_the_kustomize_base() {
    // Without a CA bundle an external certificate cannot be trusted: the render says so.
    let refused = template_exactly(&[]).expect_err("an external source without a CA bundle");
    assert!(refused.contains("certificate.caBundle"), "{refused}");
    let mut chart = by_identity(template(&[]).expect("defaults render"));
    // The base leaves the CA bundle to an overlay (`make deploy`): compared without it.
    for object in chart.values_mut() {
        if object["kind"] == "MutatingWebhookConfiguration" {
            for webhook in object["webhooks"].as_sequence_mut().into_iter().flatten() {
                let client = &mut webhook["clientConfig"];
                assert_eq!(client["caBundle"], "Q0EK");
                client.as_mapping_mut().map(|m| m.remove("caBundle"));
            }
        }
    }
    let output = tool("kubectl")
        .arg("kustomize")
        .arg(workspace_root().join("manifests"))
        .output()
        .expect("kubectl");
    assert!(output.status.success());
    let mut base = by_identity(documents(&String::from_utf8_lossy(&output.stdout)));
    // The chart installs into the release's namespace, which Helm makes
    // (`--create-namespace`): it has no Namespace object of its own.
    let namespace = format!("Namespace /{}", pod_reloaded_contract::WEBHOOK_NAMESPACE);
    assert!(
        base.remove(&namespace).is_some(),
        "the base makes {namespace}"
    );
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (id, object) in &base {
        assert_eq!(
            &chart[id], object,
            "{id} differs between the chart and manifests/"
        );
    }
}

#[test]
fn non_default_values_reach_the_objects() {
    let docs = template(&[
        "image.webhook=registry.example.com/team/webhook",
        "image.sidecar=registry.example.com/team/sidecar",
        "image.tag=1.2.3",
        "replicas=3",
        "priorityClassName=system-cluster-critical",
        "config.sidecar-mode=native",
        "config.sidecar-cpu-limit=200m",
        "config.sidecar-metrics-port=9102",
        "certificate.source=generate",
        "serviceMonitor.enabled=true",
        "networkPolicy.enabled=false",
        "policy.enabled=false",
    ])
    .expect("renders");
    let deployment = find(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.com/team/webhook:1.2.3"
    );
    let env: BTreeMap<String, String> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(
        env["POD_RELOADED_SIDECAR_IMAGE"],
        "registry.example.com/team/sidecar:1.2.3"
    );
    assert_eq!(env["POD_RELOADED_SIDECAR_MODE"], "native");
    assert_eq!(env["POD_RELOADED_SIDECAR_CPU_LIMIT"], "200m");
    assert_eq!(env["POD_RELOADED_SIDECAR_METRICS_PORT"], "9102");
    // A generated certificate: its CA is the bundle of both webhook entries.
    let secret = find(&docs, "Secret");
    let configuration = find(&docs, "MutatingWebhookConfiguration");
    for webhook in configuration["webhooks"].as_sequence().unwrap() {
        assert_eq!(
            webhook["clientConfig"]["caBundle"],
            secret["data"]["ca.crt"]
        );
    }
    assert!(docs.iter().any(|d| d["kind"] == "ServiceMonitor"));
    assert!(!docs.iter().any(|d| d["kind"] == "NetworkPolicy"));
    assert!(!docs
        .iter()
        .any(|d| d["kind"] == "ValidatingAdmissionPolicy"));

    let cert_manager = template(&["certificate.source=certManager"]).expect("renders");
    assert_eq!(
        find(&cert_manager, "Certificate")["spec"]["secretName"],
        "pod-reloaded-webhook-tls"
    );
    assert_eq!(
        find(&cert_manager, "MutatingWebhookConfiguration")["metadata"]["annotations"]
            ["cert-manager.io/inject-ca-from"],
        "pod-reloaded/pod-reloaded-webhook"
    );
}

#[test]
fn the_values_schema_refuses_bad_values() {
    for (value, said) in [
        ("config.sidecar-mode=sideways", "sidecar-mode"),
        ("replicas=0", "replicas"),
        ("certificate.source=vault", "source"),
        ("config.sidecar-cpu-limit=banana", "sidecar-cpu-limit"),
        ("surprise=1", "surprise"),
    ] {
        let error = template(&[value]).expect_err(value);
        assert!(error.contains(said), "{value}: {error}");
    }
}

/// Reads `doc` as the API's type for its kind and writes it back: a field of the wrong
/// type fails to read, and one the API does not know (a typo) is lost on the way, so the
/// two differ. Custom resources (cert-manager, Prometheus Operator) are left out.
fn schema_problem(doc: &Value) -> Option<String> {
    use k8s_openapi::api::{admissionregistration, apps, core, networking, policy, rbac};
    fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
        doc: &Value,
    ) -> Option<String> {
        let json: serde_json::Value = serde_json::to_value(doc).ok()?;
        match serde_json::from_value::<T>(json.clone()) {
            Err(error) => Some(format!("does not read as its type: {error}")),
            Ok(typed) => {
                let back = serde_json::to_value(&typed).ok()?;
                (back != json).then(|| {
                    format!("has fields its type does not know:\n{json:#}\nread as\n{back:#}")
                })
            }
        }
    }
    match doc["kind"].as_str()? {
        "Namespace" => round_trip::<core::v1::Namespace>(doc),
        "ServiceAccount" => round_trip::<core::v1::ServiceAccount>(doc),
        "Service" => round_trip::<core::v1::Service>(doc),
        "Secret" => round_trip::<core::v1::Secret>(doc),
        "Deployment" => round_trip::<apps::v1::Deployment>(doc),
        "PodDisruptionBudget" => round_trip::<policy::v1::PodDisruptionBudget>(doc),
        "ClusterRole" => round_trip::<rbac::v1::ClusterRole>(doc),
        "ClusterRoleBinding" => round_trip::<rbac::v1::ClusterRoleBinding>(doc),
        "Role" => round_trip::<rbac::v1::Role>(doc),
        "RoleBinding" => round_trip::<rbac::v1::RoleBinding>(doc),
        "ConfigMap" => round_trip::<core::v1::ConfigMap>(doc),
        "NetworkPolicy" => round_trip::<networking::v1::NetworkPolicy>(doc),
        "MutatingWebhookConfiguration" => {
            round_trip::<admissionregistration::v1::MutatingWebhookConfiguration>(doc)
        }
        "ValidatingAdmissionPolicy" => {
            round_trip::<admissionregistration::v1::ValidatingAdmissionPolicy>(doc)
        }
        "ValidatingAdmissionPolicyBinding" => {
            round_trip::<admissionregistration::v1::ValidatingAdmissionPolicyBinding>(doc)
        }
        "ServiceMonitor" | "Certificate" | "Issuer" => None,
        other => Some(format!("unexpected kind {other}")),
    }
}

#[test]
fn rendered_objects_are_what_the_api_types_accept() {
    let renders = [
        template(&[]).expect("defaults"),
        template(&[
            "certificate.source=generate",
            "priorityClassName=high",
            "config.sidecar-mode=native",
            "serviceMonitor.enabled=true",
        ])
        .expect("non-default"),
    ];
    for docs in renders {
        for doc in &docs {
            if let Some(problem) = schema_problem(doc) {
                panic!(
                    "{} {}: {problem}",
                    doc["kind"].as_str().unwrap_or(""),
                    doc["metadata"]["name"].as_str().unwrap_or("")
                );
            }
        }
    }
}

/// Flags the chart sets itself: not `config` keys (a second env entry of the same name).
const CHART_OWNED_FLAGS: [&str; 9] = [
    "trust-policy-file",
    "notify-config",
    "notify-secrets-dir",
    "listen",
    "metrics-listen",
    "tls-cert-file",
    "tls-key-file",
    "webhook-namespace",
    "sidecar-image",
];

/// The webhook's own verdict on `--flag=value` pairs: accepted when it gets as far as
/// reading its (missing) TLS files.
fn webhook_accepts(settings: &[(&str, &str)]) -> bool {
    let output = Command::new(pod_reloaded_tests::process::binary("pod-reloaded-webhook"))
        .env_clear()
        .args(
            settings
                .iter()
                .map(|(flag, value)| format!("--{flag}={value}")),
        )
        .args(["--tls-cert-file", "/nonexistent/tls.crt"])
        .output()
        .expect("the webhook runs");
    assert_eq!(output.status.code(), Some(2), "{settings:?}");
    String::from_utf8_lossy(&output.stderr).contains("/nonexistent/tls.crt")
}

#[test]
fn the_config_keys_are_the_webhook_flags_and_values_get_one_verdict() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap())
            .unwrap();
    let config = &schema["properties"]["config"];
    assert_eq!(
        config["additionalProperties"], false,
        "unknown keys are refused"
    );
    let keys: std::collections::BTreeSet<String> = config["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let help = Command::new(pod_reloaded_tests::process::binary("pod-reloaded-webhook"))
        .arg("--help")
        .output()
        .unwrap();
    let flags: std::collections::BTreeSet<String> = String::from_utf8_lossy(&help.stdout)
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .filter_map(|rest| rest.split([' ', '=', '<']).next())
        .filter(|flag| !["help", "version"].contains(flag))
        .filter(|flag| !CHART_OWNED_FLAGS.contains(flag))
        .map(str::to_string)
        .collect();
    assert_eq!(keys, flags, "config keys and webhook flags");
    for owned in CHART_OWNED_FLAGS {
        assert!(
            template(&[&format!("config.{owned}=x")]).is_err(),
            "config.{owned}"
        );
    }

    // One verdict through both doors, for single values, bounds and the rules between two
    // keys (with the webhook's defaults for the key not set).
    let single = |key, value| vec![(key, value)];
    for settings in [
        single("sidecar-memory-request", "64Ki"),
        single("sidecar-cpu-limit", "2e3"),
        single("sidecar-cpu-limit", "1e-4"),
        single("sidecar-memory-request", "10ki"),
        single("sidecar-cpu-request", "1.2.3"),
        single("sidecar-cpu-request", "-5m"),
        single("sidecar-memory-request", "64Mi"),
        single("sidecar-memory-limit", "3Mi"),
        single("sidecar-memory-limit", "4Mi"),
        vec![
            ("sidecar-memory-request", "64Mi"),
            ("sidecar-memory-limit", "128Mi"),
        ],
        vec![("sidecar-cpu-request", "1"), ("sidecar-cpu-limit", "999m")],
        vec![("sidecar-cpu-request", "1"), ("sidecar-cpu-limit", "1000m")],
        single("sidecar-mode", "sideways"),
        single("sidecar-mode", "native"),
        single("log-format", "text"),
        single("log-format", "xml"),
        single("sidecar-ca-configmap", "Bad_Name!"),
        single("sidecar-ca-configmap", "registry-cas"),
        single("excluded-namespaces", "team-a,team-b"),
        single("excluded-namespaces", "Team_A"),
        single("tls-reload-interval", "10s"),
        single("tls-reload-interval", "0s"),
        single("tls-reload-interval", "50ms"),
        single("default-interval", "0s"),
        single("default-interval", "1.5s"),
        single("default-interval", "1h 30m"),
        single("default-interval", "5min"),
        single("default-interval", "25h"),
        single("default-poll", "replica"),
        single("default-poll", "pod"),
        single("api-timeout", "4s"),
        single("api-timeout", "4.5s"),
        single("shutdown-delay", "0s"),
        single("shutdown-delay", "9999999h"),
        single("sidecar-registry-timeout", "11m"),
        single("sidecar-insecure-registries", "registry.local:5000"),
        single("sidecar-insecure-registries", "http://foo/bar baz"),
    ] {
        // `--set` splits at commas unless they are escaped.
        let values: Vec<String> = settings
            .iter()
            .map(|(key, value)| format!("config.{key}={}", value.replace(',', "\\,")))
            .collect();
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let chart = template(&values);
        assert_eq!(
            chart.is_ok(),
            webhook_accepts(&settings),
            "{settings:?}: the chart and the webhook disagree ({chart:?})"
        );
    }
    // The chart's default format is JSON; config.log-format replaces it.
    let docs = template(&["config.log-format=text"]).unwrap();
    let container = &find(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["args"].as_sequence().is_none_or(|a| a.is_empty()),
        "{container:?}"
    );
    assert!(container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "POD_RELOADED_LOG_FORMAT" && e["value"] == "text"));
}

#[test]
fn trust_policies_in_the_values_become_the_file_the_webhook_reads() {
    let key = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEKPBvz4jSNa5R2m9Wia+41ZsToRK\nVh94HI1bxDk5ilh+WAp3akcYsuIVlc0mwBL2O3dFNqk4pEEyUs2jkUkM7g==\n-----END PUBLIC KEY-----\n";
    let policies = serde_json::json!({
        "release": {"keys": [key], "transparencyLog": "optional"},
        "ci": {"keyless": [{"issuer": "https://token.actions.githubusercontent.com",
                            "subjectRegExp": "^https://github\\.com/acme/.+$"}]},
    });
    let docs = template_with_json(&[
        ("trust.policies", policies.to_string().as_str()),
        ("config.default-verify-policy", "\"release\""),
    ])
    .expect("renders");
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == contract::TRUST_CONFIGMAP)
        .expect("the ConfigMap pod-reloaded-trust");
    let file = config_map["data"]["policies.yaml"]
        .as_str()
        .expect("policies.yaml");
    let parsed = contract::trust::TrustPolicies::parse(file).expect("the webhook reads it");
    assert_eq!(parsed.policies.len(), 2);
    assert_eq!(
        parsed.get("release").unwrap().policy.keys,
        vec![key.to_string()]
    );
    let deployment = find(&docs, "Deployment");
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let value_of = |name: &str| {
        env.as_sequence()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .map(str::to_string)
    };
    assert_eq!(
        value_of("POD_RELOADED_TRUST_POLICY_FILE").as_deref(),
        Some("/etc/pod-reloaded/trust/policies.yaml")
    );
    assert_eq!(
        value_of("POD_RELOADED_DEFAULT_VERIFY_POLICY").as_deref(),
        Some("release")
    );

    // A default naming no policy fails the render, as it would stop the webhook.
    let refused = template_with_json(&[
        ("trust.policies", policies.to_string().as_str()),
        ("config.default-verify-policy", "\"nightly\""),
    ])
    .expect_err("an unknown default");
    assert!(
        refused.contains("no such policy in trust.policies"),
        "{refused}"
    );
    // Without policies in the values the chart makes no ConfigMap (bring your own).
    let docs = template(&[]).expect("renders");
    assert!(!docs
        .iter()
        .any(|d| d["metadata"]["name"] == contract::TRUST_CONFIGMAP));
}

#[test]
fn notification_receivers_in_the_values_become_the_config_the_webhook_reads() {
    let receivers = serde_json::json!({
        "ops": {"type": "slack", "urlKey": "ops-slack-url", "events": ["rollout-failed"],
                "namespaceSelector": {"matchLabels": {"team": "shop"}}},
        "audit": {"type": "webhook", "urlKey": "audit-url", "hmacKey": "audit-hmac",
                  "namespaceSelector": {}},
    });
    let docs = template_with_json(&[("notify.receivers", receivers.to_string().as_str())])
        .expect("renders");
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == contract::NOTIFY_CONFIGMAP)
        .expect("the ConfigMap pod-reloaded-notify");
    let file = config_map["data"]["notify.yaml"]
        .as_str()
        .expect("notify.yaml");
    let parsed = contract::notify::NotifyConfig::parse(file).expect("the webhook reads it");
    assert_eq!(parsed.receivers.len(), 2);
    assert_eq!(
        parsed.receivers["audit"].hmac_key.as_deref(),
        Some("audit-hmac")
    );
    // Without receivers in the values, no ConfigMap (bring your own, or none).
    assert!(!template(&[])
        .expect("renders")
        .iter()
        .any(|d| d["metadata"]["name"] == contract::NOTIFY_CONFIGMAP));
}

/// `helm template` with `--set-json` values (and the external CA bundle).
fn template_with_json(values: &[(&str, &str)]) -> Result<Vec<Value>, String> {
    let mut command = tool("helm");
    command
        .arg("template")
        .arg("pod-reloaded")
        .arg(chart())
        .args(["--namespace", pod_reloaded_contract::WEBHOOK_NAMESPACE])
        .args(["--set", EXTERNAL_CA]);
    for (key, json) in values {
        command.arg("--set-json").arg(format!("{key}={json}"));
    }
    let output = command.output().expect("helm is in .tools/bin");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).to_string());
    }
    Ok(documents(&String::from_utf8_lossy(&output.stdout)))
}
