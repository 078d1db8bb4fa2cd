//! A multi-arch tag whose index moves for another platform's sake is not a change for
//! this pod: the real sidecar against a real registry, GETs counted by the proxy.

use std::time::Duration;

use pod_reloaded_tests::api_server::ApiServer;
use pod_reloaded_tests::fault_proxy::FaultProxy;
use pod_reloaded_tests::process::{eventually, Running};
use pod_reloaded_tests::registry::{Registry, RegistryOptions};
use pod_reloaded_tests::workloads::{deployment, deployment_path, running_pod, sidecar_command};
use serde_json::json;

fn decisions(sidecar: &Running, decision: &str) -> usize {
    sidecar
        .output()
        .matches(&format!("decision=\"{decision}\""))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_this_platforms_image_decides_a_restart() {
    let registry = Registry::start(RegistryOptions::default()).await;
    let repo = "demo/app";
    let amd64 = registry
        .push_single(repo, None, "amd-1", ("linux", "amd64"), false)
        .await;
    let arm64 = registry
        .push_single(repo, None, "arm-1", ("linux", "arm64"), false)
        .await;
    let first = registry
        .push_index_of(repo, "latest", &[&amd64, &arm64], false)
        .await;
    let proxy = FaultProxy::start(&registry.base_url, None).await;
    let image = format!("{}/{repo}:latest", registry.host());
    let api = ApiServer::start().await.unwrap();
    let owner = deployment(&api, "web", &image, json!({}));
    // The pod runs the index it was pinned to, on amd64.
    let image_id = format!("{}/{repo}@{}", registry.host(), first.digest);
    running_pod(
        &api,
        "web-1",
        Some(&owner),
        &image,
        &image_id,
        "2026-11-24T00:00:00Z",
    );
    let sidecar = Running::spawn(sidecar_command(
        &api,
        "web-1",
        "web",
        "1s",
        Some(&proxy.base_url()),
    ));
    let up = eventually(Duration::from_secs(20), || {
        decisions(&sidecar, "up-to-date") >= 1
    })
    .await;
    assert!(up, "{}", sidecar.output());
    let patches = || api.requests_to("PATCH", &deployment_path("web")).len();

    // The arm64 image is rebuilt: the index moves, the amd64 image is the same.
    let arm64_rebuilt = registry
        .push_single(repo, None, "arm-2", ("linux", "arm64"), false)
        .await;
    proxy.clear_requests();
    registry
        .push_index_of(repo, "latest", &[&amd64, &arm64_rebuilt], false)
        .await;
    let seen = eventually(Duration::from_secs(20), || {
        decisions(&sidecar, "equivalent") >= 3
    })
    .await;
    assert!(seen, "{}", sidecar.output());
    assert_eq!(patches(), 0, "no restart for another platform's rebuild");
    assert_eq!(
        proxy.count("GET", "/manifests/"),
        2,
        "two GETs for the move (the new index, the running one), then remembered"
    );

    // An attestation manifest is added: still the same amd64 image.
    proxy.clear_requests();
    registry
        .push_index_of(repo, "latest", &[&amd64, &arm64_rebuilt], true)
        .await;
    let before = decisions(&sidecar, "equivalent");
    let seen = eventually(Duration::from_secs(20), || {
        decisions(&sidecar, "equivalent") >= before + 3
    })
    .await;
    assert!(seen, "{}", sidecar.output());
    assert_eq!(patches(), 0, "no restart for an attestation");
    assert!(proxy.count("GET", "/manifests/") <= 2);

    // The amd64 image itself changes: a restart.
    let amd64_rebuilt = registry
        .push_single(repo, None, "amd-2", ("linux", "amd64"), false)
        .await;
    let changed = registry
        .push_index_of(repo, "latest", &[&amd64_rebuilt, &arm64_rebuilt], false)
        .await;
    let restarted = eventually(Duration::from_secs(20), || patches() == 1).await;
    assert!(restarted, "{}", sidecar.output());
    let patch = &api.requests_to("PATCH", &deployment_path("web"))[0].body;
    assert_eq!(
        patch["spec"]["template"]["metadata"]["annotations"]["pod-reloaded.io/restarted-for"],
        format!("web={}", changed.digest),
        "restarted for the index digest, right on every platform"
    );
}
