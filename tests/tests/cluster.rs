//! pod-reloaded against a real control plane: kube-apiserver, etcd and
//! kube-controller-manager built from their Go modules (`pod_reloaded_tests::cluster`).

use std::time::Duration;

use pod_reloaded_tests::cluster::{control_plane, Api, Kubelet, KubeletOptions};
use pod_reloaded_tests::process::eventually_async;
use serde_json::json;

#[tokio::test]
async fn smoke() {
    let plane = control_plane();
    let api = Api::admin(plane);
    api.create(
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "smoke"}}),
    )
    .await
    .unwrap();
    let _kubelet = Kubelet::start("smoke", KubeletOptions::default());
    api.create("/apis/apps/v1/namespaces/smoke/deployments", &json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
          "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:latest"}]}}}
    })).await.unwrap();
    let done = eventually_async(Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let d = api
                .get("/apis/apps/v1/namespaces/smoke/deployments/web")
                .await
                .unwrap()
                .unwrap();
            d["status"]["availableReplicas"] == 2
        }
    })
    .await;
    let d = api
        .get("/apis/apps/v1/namespaces/smoke/deployments/web")
        .await
        .unwrap();
    assert!(done, "{d:#?}\n{}", plane.logs());
}
