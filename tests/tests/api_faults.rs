//! The sidecar against a real API server that misbehaves: `fault_proxy` in front of the
//! real kube-apiserver answers one request with an error, slowly, or breaks it off. One
//! round (`--once`) then fails with one clear line, within a bound, with no restart and
//! no panic; healthy again, the same change is acted on.

use std::process::Command;
use std::time::{Duration, Instant};

use pod_reloaded_contract as contract;
use pod_reloaded_tests::cluster::control_plane::{kubeconfig, KubeconfigUser};
use pod_reloaded_tests::cluster::{
    control_plane, wait_for, KubeletOptions, TestNamespace, ROLLOUT_DEADLINE,
};
use pod_reloaded_tests::fault_proxy::{FaultProxy, RequestFault};
use pod_reloaded_tests::process::Running;
use pod_reloaded_tests::registry::{Registry, RegistryOptions};
use pod_reloaded_tests::workloads::command_from_pod;
use serde_json::json;

const PLATFORMS: [(&str, &str); 2] = [("linux", "amd64"), ("linux", "arm64")];

async fn run_once(mut command: Command) -> (i32, String) {
    command.arg("--once").arg("--api-timeout").arg("1s");
    let mut running = Running::spawn(command);
    let status = tokio::task::block_in_place(|| running.wait_for_exit(Duration::from_secs(30)))
        .expect("--once finishes");
    (status.code().unwrap_or(-1), running.output())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_api_server_never_causes_a_restart_or_a_panic() {
    let registry = Registry::start(RegistryOptions::default()).await;
    let ns = TestNamespace::new(
        "faults",
        json!({contract::INJECT_LABEL: contract::INJECT_ENABLED}),
        KubeletOptions {
            no_sidecars: true,
            ..KubeletOptions::default()
        },
    )
    .await
    .unwrap();
    let v1 = registry
        .push_index("faults/app", "latest", "f1", &PLATFORMS, false)
        .await;
    let image = format!("{}/faults/app:latest", registry.host());
    ns.create(
        "deployments",
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}, "annotations": {
                    contract::ANNOTATION_REGISTRY_URL: registry.base_url}},
                    "spec": {"containers": [{"name": "app", "image": image}]}}}}),
    )
    .await
    .unwrap();
    wait_for("the pod runs", ROLLOUT_DEADLINE, || async {
        Ok(ns
            .live_pods()
            .await?
            .iter()
            .any(|p| !p["status"]["containerStatuses"].is_null()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", ns.diagnostics()));
    let pod = ns.live_pods().await.unwrap().remove(0);
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
    registry
        .push_index("faults/app", "latest", "f2", &PLATFORMS, false)
        .await;
    assert_ne!(
        v1.digest,
        registry.stored_tag_digest("faults/app", "latest")
    );

    // The sidecar's API server is the proxy (plain HTTP on 127.0.0.1), with the pod's token.
    let plane = control_plane();
    let ca = reqwest::Certificate::from_pem(plane.ca_pem.as_bytes()).unwrap();
    let upstream = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let proxy = FaultProxy::start_with_client(&plane.url, None, upstream).await;
    let token = ns
        .api
        .service_account_token(
            &ns.name,
            contract::CHECKER_SERVICE_ACCOUNT,
            Some((&pod_name, pod["metadata"]["uid"].as_str().unwrap())),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kubeconfig");
    std::fs::write(
        &config,
        kubeconfig(
            &proxy.base_url(),
            &plane.ca_pem,
            KubeconfigUser::Token(&token),
        ),
    )
    .unwrap();
    let command = || {
        command_from_pod(
            &config,
            &pod,
            &[("IMAGE_CHECKER_PLATFORM", "linux/amd64".to_string())],
        )
    };

    let pod_path = ns.path("pods", &pod_name);
    let workload = ns.path("deployments", "web");
    let cases = [
        (
            "GET",
            &pod_path,
            RequestFault::Status(500),
            "cannot read our pod",
        ),
        (
            "GET",
            &pod_path,
            RequestFault::Status(403),
            "cannot read our pod",
        ),
        ("GET", &pod_path, RequestFault::Reset, "cannot read our pod"),
        (
            "GET",
            &pod_path,
            RequestFault::Slow(Duration::from_secs(5)),
            "cannot read our pod",
        ),
        (
            "GET",
            &workload,
            RequestFault::Status(500),
            "restart failed",
        ),
        (
            "PATCH",
            &workload,
            RequestFault::Status(500),
            "restart failed",
        ),
        (
            "PATCH",
            &workload,
            RequestFault::Status(403),
            "restart failed",
        ),
        ("PATCH", &workload, RequestFault::Reset, "restart failed"),
    ];
    let restarted_for = || async {
        ns.get("deployments", "web").await.unwrap()["spec"]["template"]["metadata"]["annotations"]
            [contract::ANNOTATION_RESTARTED_FOR]
            .clone()
    };
    for (method, path, fault, said) in cases {
        proxy.set_request_fault(method, path, fault.clone());
        proxy.clear_requests();
        let started = Instant::now();
        let (code, output) = run_once(command()).await;
        assert_eq!(
            code, 1,
            "{method} {path} {fault:?}: an error, not a panic\n{output}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{fault:?}: bounded: {:?}",
            started.elapsed()
        );
        let lines: Vec<&str> = output.lines().filter(|l| l.contains(said)).collect();
        assert_eq!(lines.len(), 1, "{fault:?}: one clear line\n{output}");
        // A reset PATCH may have reached the API server before the answer broke: the
        // restart then happened, and what matters is that the sidecar said it failed.
        if fault != RequestFault::Reset || method != "PATCH" {
            assert!(
                restarted_for().await.is_null(),
                "{method} {path} {fault:?}: no restart\n{output}"
            );
        }
        let attempts = proxy.count(method, path);
        assert!(attempts <= 1, "{fault:?}: {attempts} attempts in one round");
    }
    // Healthy again: the change is acted on.
    proxy.clear_request_faults();
    let (code, output) = run_once(command()).await;
    assert_eq!(code, 0, "{output}");
    let digest = registry.stored_tag_digest("faults/app", "latest");
    assert_eq!(
        restarted_for().await,
        json!(format!("app={digest}")),
        "{output}"
    );
}
