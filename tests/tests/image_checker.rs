//! Coming from the hand-deployed image-checker: its users' manifest, with only the image
//! swapped for pod-reloaded's sidecar and `command`/`args` dropped, on the real control
//! plane. The sidecar runs as that manifest runs it: in-cluster configuration (the
//! service account's token, CA and namespace files, `KUBERNETES_SERVICE_HOST`), env
//! `IMAGE_CHECKER_WATCH_CONTAINER` and `HOSTNAME` as the runtime sets it (plus the
//! optional `IMAGE_CHECKER_REGISTRY_URL` in the old form, the registry not being Docker
//! Hub), and only the old Role's permissions. A push restarts the Deployment once; what the
//! old Role lacks (Events) is said once and skipped. Labelling the namespace does not
//! inject a second checker beside it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pod_reloaded_contract as contract;
use pod_reloaded_tests::cluster::install::{installed, SIDECAR_IMAGE};
use pod_reloaded_tests::cluster::{
    control_plane, wait_for, KubeletOptions, TestNamespace, ROLLOUT_DEADLINE,
};
use pod_reloaded_tests::process::{binary, Running};
use pod_reloaded_tests::registry::{Registry, RegistryOptions};
use reqwest::Method;
use serde_json::json;

const PLATFORMS: [(&str, &str); 2] = [("linux", "amd64"), ("linux", "arm64")];
const SERVICE_ACCOUNT_DIR: &str = "/run/secrets/kubernetes.io/serviceaccount";

/// The sidecar as a container runs it: in a mount namespace whose `/run` holds the
/// service account's files where a pod has them, with the env a pod has.
fn in_cluster_sidecar(files: &Path, env: &[(&str, String)]) -> Command {
    let plane = control_plane();
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--map-root-user", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs tmpfs /run && mkdir -p {SERVICE_ACCOUNT_DIR} && cp \"$0\"/* {SERVICE_ACCOUNT_DIR}/ && exec \"$1\""
        ))
        .arg(files)
        .arg(binary("pod-reloaded-sidecar"))
        .env_clear()
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", plane.port.to_string());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_manifest_with_only_the_image_swapped_restarts_on_a_push() {
    installed();
    let registry = Registry::start(RegistryOptions::default()).await;
    let ns = TestNamespace::new("legacy", json!({}), KubeletOptions::default())
        .await
        .unwrap();
    let result = async {
        let v1 = registry.push_index("legacy/app", "latest", "l1", &PLATFORMS, false).await;
        let image = format!("{}/legacy/app:latest", registry.host());
        // The old manifest's account, Role and binding, exactly.
        ns.create("serviceaccounts", &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "image-checker-sa"}})).await?;
        ns.api
            .create(
                &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{}/roles", ns.name),
                &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": "image-checker-role"},
                    "rules": [
                        {"apiGroups": ["apps"], "resources": ["deployments", "replicasets"], "verbs": ["get", "patch", "list", "watch"]},
                        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
                    ]}),
            )
            .await?;
        ns.create("rolebindings", &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "image-checker-rolebinding"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "image-checker-role"},
            "subjects": [{"kind": "ServiceAccount", "name": "image-checker-sa", "namespace": ns.name}]})).await?;
        let registry_url = format!("{}/api/v1/repository/", registry.base_url);
        let template = json!({
            "metadata": {"labels": {"app": "legacy"}},
            "spec": {
                "serviceAccountName": "image-checker-sa",
                "containers": [
                    {"name": "main-container", "image": image, "imagePullPolicy": "Always"},
                    {"name": "image-checker", "image": SIDECAR_IMAGE, "env": [
                        {"name": contract::ENV_WATCH_CONTAINER, "value": "main-container"},
                        {"name": contract::ENV_REGISTRY_URL, "value": registry_url}
                    ]}
                ]
            }
        });
        ns.create("deployments", &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "legacy"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "legacy"}}, "template": template}})).await?;
        wait_for("the pod runs", ROLLOUT_DEADLINE, || async {
            Ok(ns.live_pods().await?.iter().any(|p| !p["status"]["containerStatuses"].is_null()))
        })
        .await?;
        let pod = ns.live_pods().await?.remove(0);
        let pod_name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();

        // The files a pod's service account volume holds, and the container's env.
        let files = tempfile::tempdir()?;
        let token = ns
            .api
            .service_account_token(&ns.name, "image-checker-sa", Some((&pod_name, pod["metadata"]["uid"].as_str().unwrap_or(""))))
            .await?;
        std::fs::write(files.path().join("token"), token)?;
        std::fs::write(files.path().join("ca.crt"), &control_plane().ca_pem)?;
        std::fs::write(files.path().join("namespace"), &ns.name)?;
        let env = [
            ("HOSTNAME", pod_name.clone()),
            (contract::ENV_WATCH_CONTAINER, "main-container".to_string()),
            (contract::ENV_REGISTRY_URL, registry_url.clone()),
        ];
        let sidecar = Running::spawn(in_cluster_sidecar(files.path(), &env));
        let checked = |sidecar: &Running| sidecar.output().matches(": checked ").count();
        wait_for("a first round", ROLLOUT_DEADLINE, || async { Ok(checked(&sidecar) >= 1) }).await
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", sidecar.output()))?;

        let v2 = registry.push_index("legacy/app", "latest", "l2", &PLATFORMS, false).await;
        let expected = format!("main-container={}", v2.digest);
        // The old manifest sets no interval: the default 60s (±10%) passes before the
        // next round sees the push.
        wait_for("the restart", Duration::from_secs(180), || async {
            let deployment = ns.get("deployments", "legacy").await?;
            Ok(deployment["spec"]["template"]["metadata"]["annotations"][contract::ANNOTATION_RESTARTED_FOR] == expected.as_str())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", sidecar.output()))?;
        // The Deployment controller rolls out: the new pod runs the pushed digest.
        wait_for("the new pod runs the push", ROLLOUT_DEADLINE, || async {
            let pods = ns.live_pods().await?;
            Ok(pods.len() == 1
                && pods[0]["status"]["containerStatuses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| s["imageID"].as_str().is_some_and(|id| id.ends_with(&v2.digest))))
        })
        .await?;

        let output = sidecar.output();
        anyhow::ensure!(sidecar_running(&sidecar), "the sidecar exited:\n{output}");
        let deployment = ns.get("deployments", "legacy").await?;
        let revision = &deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"];
        anyhow::ensure!(revision == "2", "revision {revision}: one restart expected\n{output}");
        for said in [
            "POD_NAMESPACE is not set",
            "POD_NAME is not set: found this pod by its hostname",
            "has the old image-checker's form",
        ] {
            anyhow::ensure!(output.contains(said), "no line saying {said:?}:\n{output}");
        }
        let forbidden: Vec<&str> = output.lines().filter(|l| l.contains("forbidden by RBAC: recording Events")).collect();
        anyhow::ensure!(forbidden.len() == 1, "one Warning line for the missing Events permission:\n{output}");
        anyhow::ensure!(ns.list("events").await?.iter().all(|e| e["source"]["component"] != "pod-reloaded"), "an Event was recorded without the permission");
        anyhow::ensure!(v1.digest != v2.digest);

        // Both at once: labelling the namespace does not put a second checker beside it.
        ns.api
            .merge_patch(
                &format!("/api/v1/namespaces/{}", ns.name),
                &json!({"metadata": {"labels": {contract::INJECT_LABEL: contract::INJECT_ENABLED}}}),
            )
            .await?;
        let probe = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "legacy-"},
            "spec": template["spec"]});
        wait_for("the webhook refuses to inject beside the old checker", ROLLOUT_DEADLINE, || async {
            let answer = ns
                .api
                .request(Method::POST, &format!("{}?dryRun=All", ns.path("pods", "")), "application/json", Some(&probe))
                .await?;
            let containers = answer.body["spec"]["containers"].as_array().map_or(0, Vec::len);
            Ok(answer.warnings.iter().any(|w| w.contains("image-checker sidecar pod-reloaded replaces")) && containers == 2)
        })
        .await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        panic!("{error:#}\n{}", ns.diagnostics());
    }
}

/// Still running: no crash loop.
fn sidecar_running(sidecar: &Running) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", sidecar.child.id()))
        .is_ok_and(|stat| !stat.contains(") Z"))
}
