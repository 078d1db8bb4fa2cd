//! Install, upgrade with a new CA, and uninstall, each followed by a pod created in an
//! opted-in namespace, on a real kube-apiserver of this test's own:
//! - the README's `make deploy` path (the certs command's overlay over `manifests/`, its
//!   `clientConfig` pointed at the webhook binary on 127.0.0.1): the pod is injected after
//!   the install, while the webhook still serves the old certificate under the new CA
//!   bundle, once it serves the new one, and after a second rotation; after `make undeploy`
//!   it is admitted without a sidecar;
//! - `helm install -n pod-reloaded --create-namespace`, `helm upgrade` (the certificate
//!   kept) and `helm uninstall`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use pod_reloaded_contract as contract;
use pod_reloaded_tests::api_server::ApiServer;
use pod_reloaded_tests::cluster::control_plane::binaries_dir;
use pod_reloaded_tests::process::{binary, eventually};
use pod_reloaded_tests::webhook::{tls_client, Certificates, Webhook};
use pod_reloaded_tests::workspace_root;
use serde_json::{json, Value};

const NAMESPACE: &str = "shop";

fn run(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn kubectl(api: &ApiServer) -> Command {
    let bin = binaries_dir().unwrap_or_else(|e| panic!("{e}"));
    let mut command = Command::new(bin.join("kubectl"));
    command.arg("--kubeconfig").arg(api.kubeconfig_path());
    command
}

/// The certs command into `out`, as `make deploy` runs it, with 127.0.0.1 in the serving
/// certificate (the API server calls the webhook there).
fn certs(out: &Path, extra: &[&str]) {
    run(Command::new(binary("pod-reloaded-certs"))
        .arg("--out-dir")
        .arg(out)
        .arg("--manifests-dir")
        .arg(workspace_root().join("manifests"))
        .args(["--dns-name", "127.0.0.1"])
        .args(["--webhook-image", "registry.example/webhook:1.2.3"])
        .args(["--sidecar-image", "registry.example/sidecar:1.2.3"])
        .args(extra));
}

/// The overlay rendered by kubectl's kustomize and applied, its webhooks pointed at
/// 127.0.0.1:`port` with the overlay's own CA bundle.
fn apply_overlay(api: &ApiServer, out: &Path, port: u16) {
    let rendered = run(kubectl(api).arg("kustomize").arg(out));
    let mut objects: Vec<Value> = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&rendered) {
        let object: Value = serde::Deserialize::deserialize(document).expect("YAML");
        if !object.is_null() {
            objects.push(object);
        }
    }
    for object in &mut objects {
        if object["kind"] == "MutatingWebhookConfiguration" {
            for webhook in object["webhooks"].as_array_mut().into_iter().flatten() {
                let ca_bundle = webhook["clientConfig"]["caBundle"].clone();
                assert!(ca_bundle.is_string(), "the overlay sets the CA bundle");
                webhook["clientConfig"] = json!({
                    "url": format!("https://127.0.0.1:{port}{}", contract::WEBHOOK_MUTATE_PATH),
                    "caBundle": ca_bundle,
                });
            }
        }
    }
    let file = out.join("applied.json");
    std::fs::write(
        &file,
        json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string(),
    )
    .unwrap();
    run(kubectl(api)
        .args(["apply", "--validate=strict", "-f"])
        .arg(&file));
}

/// Creates a ReplicaSet's pod in the opted-in namespace; whether it came back with the
/// sidecar. The ReplicaSet exists (the garbage collector deletes pods of a missing owner)
/// and wants none: its controller releases these pods, whose labels it does not select.
fn pod_is_injected(api: &ApiServer, name: &str) -> bool {
    let owner = api.put(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-5d4f8", "namespace": NAMESPACE},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:latest"}]}}}}));
    let pod = api.put(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "released"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-5d4f8", "uid": owner["metadata"]["uid"], "controller": true}]},
        "spec": {"containers": [{"name": "web", "image": "nginx:latest"}]}}));
    let containers = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .chain(pod["spec"]["initContainers"].as_array())
        .flatten();
    let names: Vec<&str> = containers.filter_map(|c| c["name"].as_str()).collect();
    names.contains(&contract::SIDECAR_CONTAINER_NAME)
}

/// Copies the serving certificate and key as a Secret volume would hand them over.
fn mount(from: &Path, to: &Path) {
    for file in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

/// Whether the webhook's port serves a certificate that only `ca` (a PEM file) trusts.
async fn serves_a_certificate_of(port: u16, ca: &Path) -> bool {
    tls_client(ca, port)
        .get(format!(
            "https://{}:{port}/",
            pod_reloaded_tests::webhook::service_name()
        ))
        .send()
        .await
        .is_ok()
}

fn first_certificate(bundle: &Path, into: &Path) -> PathBuf {
    let pem = std::fs::read_to_string(bundle).unwrap();
    let end = "-----END CERTIFICATE-----";
    let first = &pem[..pem.find(end).expect("a certificate") + end.len()];
    std::fs::write(into, format!("{first}\n")).unwrap();
    into.to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_rotate_and_uninstall_each_leave_pods_admitted_as_promised() {
    // With the controllers: `make undeploy` waits for its namespace to be emptied.
    let api = ApiServer::start_with_controllers()
        .await
        .expect("an API server");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mounted = dir.path().join("mounted");
    std::fs::create_dir_all(&mounted).unwrap();
    api.put(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE,
        "labels": {contract::INJECT_LABEL: contract::INJECT_ENABLED}}}),
    );
    api.put(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": NAMESPACE}}));

    // Install.
    certs(&out, &[]);
    mount(&out, &mounted);
    let served = Certificates {
        dir: mounted.clone(),
        ca: mounted.join("ca.crt"),
        cert: mounted.join("tls.crt"),
        key: mounted.join("tls.key"),
    };
    let webhook = Webhook::start(
        &served,
        Some(&api),
        &[
            "--tls-reload-interval",
            "100ms",
            "--sidecar-image",
            "registry.example/sidecar:1.2.3",
        ],
    )
    .await;
    apply_overlay(&api, &out, webhook.port);
    // The API server calls a webhook once its informer has the configuration.
    let mut attempt = 0;
    let injected = eventually(Duration::from_secs(30), || {
        attempt += 1;
        pod_is_injected(&api, &format!("after-install-{attempt}"))
    })
    .await;
    assert!(injected, "no pod injected after the install");

    // Upgrade with a new CA: the bundle is applied first and the webhook's pods pick up
    // the new certificate later. In between, pods are still injected.
    let old_ca = first_certificate(&out.join("ca.crt"), &dir.path().join("old-ca.pem"));
    certs(&out, &["--rotate"]);
    let new_ca = first_certificate(&out.join("ca.crt"), &dir.path().join("new-ca.pem"));
    assert_ne!(
        std::fs::read(&old_ca).unwrap(),
        std::fs::read(&new_ca).unwrap()
    );
    apply_overlay(&api, &out, webhook.port);
    assert!(serves_a_certificate_of(webhook.port, &old_ca).await);
    for step in 0..5 {
        assert!(
            pod_is_injected(&api, &format!("new-bundle-old-certificate-{step}")),
            "a pod skipped injection while the webhook served the old certificate:\n{}",
            webhook.process.output()
        );
    }
    mount(&out, &mounted);
    assert!(
        eventually(Duration::from_secs(30), || {
            pod_reloaded_tests::process::block_on_own_thread(serves_a_certificate_of(
                webhook.port,
                &new_ca,
            ))
            .unwrap_or(false)
        })
        .await,
        "the webhook never served the new certificate"
    );
    for step in 0..5 {
        assert!(
            pod_is_injected(&api, &format!("new-certificate-{step}")),
            "a pod skipped injection once the webhook served the new certificate"
        );
    }
    // A second rotation drops the oldest CA and keeps the one being served.
    certs(&out, &["--rotate"]);
    let bundle = std::fs::read_to_string(out.join("ca.crt")).unwrap();
    assert!(!bundle.contains(std::fs::read_to_string(&old_ca).unwrap().trim()));
    assert!(bundle.contains(std::fs::read_to_string(&new_ca).unwrap().trim()));
    apply_overlay(&api, &out, webhook.port);
    assert!(pod_is_injected(&api, "second-rotation-old-certificate"));

    // Uninstall as the README says: the pods that come next are admitted, uninjected.
    let path = format!(
        "{}:{}",
        binaries_dir().unwrap_or_else(|e| panic!("{e}")).display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(Command::new("make")
        .args(["--no-print-directory", "undeploy"])
        .current_dir(workspace_root())
        .env("PATH", path)
        .env("KUBECONFIG", api.kubeconfig_path()));
    assert!(
        api.get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/pod-reloaded")
            .is_none(),
        "the webhook configuration is still there"
    );
    let mut attempt = 0;
    assert!(
        eventually(Duration::from_secs(30), || {
            attempt += 1;
            !pod_is_injected(&api, &format!("after-uninstall-{attempt}"))
        })
        .await,
        "pods are still injected after the uninstall"
    );
    // Running sidecars keep their account until `make undeploy-accounts`.
    assert!(
        api.get(&format!(
            "/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{}",
            contract::CHECKER_SERVICE_ACCOUNT
        ))
        .is_some(),
        "the uninstall deleted the account running sidecars use"
    );
}

fn helm(api: &ApiServer) -> Command {
    let mut command = Command::new(workspace_root().join(".tools/bin/helm"));
    command
        .arg("--kubeconfig")
        .arg(api.kubeconfig_path())
        .env(
            "HELM_CACHE_HOME",
            api.kubeconfig_path().with_extension("helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            api.kubeconfig_path().with_extension("helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            api.kubeconfig_path().with_extension("helm-data"),
        );
    command
}

fn ca_bundles(api: &ApiServer) -> Vec<Value> {
    let configuration = api
        .get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/pod-reloaded")
        .expect("the webhook configuration");
    configuration["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| w["clientConfig"]["caBundle"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_into_a_namespace_it_creates_upgrades_and_uninstalls() {
    let api = ApiServer::start().await.expect("an API server");
    let chart = workspace_root().join("charts/pod-reloaded");
    let ns = contract::WEBHOOK_NAMESPACE;
    run(helm(&api)
        .args(["install", "pod-reloaded"])
        .arg(&chart)
        .args(["-n", ns, "--create-namespace"])
        .args(["--set", "certificate.source=generate"]));
    assert!(api.get(&format!("/api/v1/namespaces/{ns}")).is_some());
    assert!(api
        .get(&format!(
            "/apis/apps/v1/namespaces/{ns}/deployments/pod-reloaded-webhook"
        ))
        .is_some());
    let secret = api
        .get(&format!(
            "/api/v1/namespaces/{ns}/secrets/pod-reloaded-webhook-tls"
        ))
        .expect("the generated Secret");
    let bundles = ca_bundles(&api);
    assert_eq!(bundles.len(), 2);
    for bundle in &bundles {
        assert_eq!(
            bundle, &secret["data"]["ca.crt"],
            "the CA bundle is the Secret's CA"
        );
    }
    let ca = base64::engine::general_purpose::STANDARD
        .decode(bundles[0].as_str().unwrap_or_default())
        .unwrap();
    assert!(String::from_utf8_lossy(&ca).contains("BEGIN CERTIFICATE"));

    // An upgrade keeps the working certificate.
    run(helm(&api)
        .args(["upgrade", "pod-reloaded"])
        .arg(&chart)
        .args(["-n", ns])
        .args([
            "--set",
            "certificate.source=generate",
            "--set",
            "replicas=3",
        ]));
    let upgraded = api
        .get(&format!(
            "/apis/apps/v1/namespaces/{ns}/deployments/pod-reloaded-webhook"
        ))
        .unwrap();
    assert_eq!(upgraded["spec"]["replicas"], 3);
    assert_eq!(
        ca_bundles(&api),
        bundles,
        "the upgrade changed the CA bundle"
    );
    let kept = api
        .get(&format!(
            "/api/v1/namespaces/{ns}/secrets/pod-reloaded-webhook-tls"
        ))
        .unwrap();
    assert_eq!(kept["data"], secret["data"]);

    // A bad value is refused before anything changes.
    let output = helm(&api)
        .args(["upgrade", "pod-reloaded"])
        .arg(&chart)
        .args(["-n", ns])
        .args(["--set", "certificate.source=generate"])
        .args(["--set", "config.default-interval=0s"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("config.default-interval"));
    assert_eq!(
        api.get(&format!(
            "/apis/apps/v1/namespaces/{ns}/deployments/pod-reloaded-webhook"
        ))
        .unwrap()["metadata"]["generation"],
        upgraded["metadata"]["generation"]
    );

    run(helm(&api).args(["uninstall", "pod-reloaded", "-n", ns]));
    assert!(api
        .get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/pod-reloaded")
        .is_none());
    assert!(api
        .get(&format!(
            "/apis/apps/v1/namespaces/{ns}/deployments/pod-reloaded-webhook"
        ))
        .is_none());
}
