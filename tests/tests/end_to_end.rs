//! pod-reloaded against a real control plane (`pod_reloaded_tests::cluster`):
//! kube-apiserver, etcd and kube-controller-manager built from their Go modules,
//! pod-reloaded installed from `manifests/`, the webhook called by the API server, the
//! sidecars run with real ServiceAccount tokens, the real controllers rolling out.
//!
//! One test runs the scenarios one after another on one control plane, and ends by
//! reading the audit log of all of them: every request of the checker and the webhook was
//! allowed, and every rule of their ClusterRoles was used.

use std::collections::BTreeSet;

use anyhow::{ensure, Context as _};
use pod_reloaded_contract as contract;
use pod_reloaded_tests::cluster::argo::{install_rollout_crd, RolloutController};
use pod_reloaded_tests::cluster::install::{installed, rendered_manifests, NOTIFY_RECEIVER};
use pod_reloaded_tests::cluster::{
    control_plane, story, wait_for, Api, TestNamespace, ROLLOUT_DEADLINE,
};
use pod_reloaded_tests::registry::{Registry, RegistryOptions};
use pod_reloaded_tests::sigstore::{Cosign, Format};
use reqwest::Method;
use serde_json::{json, Value};

const PLATFORMS: [(&str, &str); 2] = [("linux", "amd64"), ("linux", "arm64")];
/// The user agent of requests a test makes with a checker's token on purpose, to be
/// denied: left out of "every request of the checker was allowed".
const PROBE_AGENT: &str = "least-privilege-probe";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_control_plane() {
    if let Err(error) = installed_as_a_user_installs_it().await {
        panic!("install: {error:#}");
    }
    the_story().await;
    if let Err(error) = the_story_told().await {
        panic!("notifications: {error:#}");
    }
    for (name, result) in [
        (
            "StatefulSet and DaemonSet",
            statefulset_and_daemonset().await,
        ),
        ("least privilege", least_privilege().await),
        ("Argo Rollout", argo_rollout().await),
        ("signed images only", signed_images_only().await),
        ("the webhook's grants", webhook_grants().await),
        ("the webhook down and back", webhook_down_and_back().await),
        ("RBAC fits", rbac_fits()),
        // Last: it uninstalls.
        ("make undeploy", undeploy().await),
    ] {
        if let Err(error) = result {
            panic!("{name}: {error:#}");
        }
    }
}

/// Section 3: `manifests/` applied with strict field validation and no warning; each
/// ValidatingAdmissionPolicy type-checked by the API server without a warning; the Helm
/// chart's objects accepted the same way (a server-side dry run).
async fn installed_as_a_user_installs_it() -> anyhow::Result<()> {
    let install = installed();
    ensure!(
        !install.apply_stderr.to_lowercase().contains("warning"),
        "kubectl apply of manifests/ warned: {}",
        install.apply_stderr
    );
    let plane = control_plane();
    let admin = Api::admin(plane);
    let policies: Vec<String> = install
        .objects
        .iter()
        .filter(|o| o["kind"] == "ValidatingAdmissionPolicy")
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    ensure!(policies.len() == 4, "policies: {policies:?}");
    for name in &policies {
        let path =
            format!("/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/{name}");
        wait_for(
            &format!("{name} type-checked"),
            ROLLOUT_DEADLINE,
            || async {
                Ok(admin
                    .get(&path)
                    .await?
                    .is_some_and(|p| !p["status"]["typeChecking"].is_null()))
            },
        )
        .await?;
        let policy = admin.get(&path).await?.unwrap_or_default();
        let warnings = &policy["status"]["typeChecking"]["expressionWarnings"];
        ensure!(
            warnings.as_array().is_none_or(|w| w.is_empty()),
            "{name}: the API server's type check warns: {warnings:#}"
        );
    }

    let helm = pod_reloaded_tests::workspace_root().join(".tools/bin/helm");
    let chart = pod_reloaded_tests::workspace_root().join("charts/pod-reloaded");
    let output = std::process::Command::new(&helm)
        .args(["template", "pod-reloaded"])
        .arg(&chart)
        .args(["--namespace", contract::WEBHOOK_NAMESPACE])
        // A source that needs nothing else: the chart makes the CA and certificate.
        .args(["--set", "certificate.source=generate"])
        .output()
        .with_context(|| format!("{} (make test installs it)", helm.display()))?;
    ensure!(
        output.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered = plane.dir.join("chart.yaml");
    std::fs::write(&rendered, &output.stdout)?;
    let applied = std::process::Command::new(plane.bin.join("kubectl"))
        .arg("--kubeconfig")
        .arg(&plane.admin_kubeconfig)
        .args(["apply", "--dry-run=server", "--validate=strict", "-f"])
        .arg(&rendered)
        .output()?;
    let stderr = String::from_utf8_lossy(&applied.stderr);
    ensure!(
        applied.status.success() && !stderr.to_lowercase().contains("warning"),
        "the chart's objects, applied (server dry run): {stderr}"
    );
    Ok(())
}

/// Scenarios 1-4: injection, one restart, pinning, a real ProgressDeadlineExceeded rolled
/// back, a person's undo kept (`cluster::story`, what `make demo` prints).
async fn the_story() {
    let mut timeline = Vec::new();
    let result = story::run("story", &mut |line| timeline.push(line)).await;
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => panic!("{error}\n{}", timeline.join("\n")),
    };
    println!("{}", timeline.join("\n"));
    assert_eq!(summary.first_sidecars, 3);
    // Revisions of the Deployment: one restart for the push (2); a restart and a rollback
    // for the bad image (4); one restart for the next push (5); the person's undo (6), and
    // nothing after it.
    assert_eq!(summary.revisions, vec![2, 4, 5, 6], "{summary:?}");
    assert!(
        summary.rollout_records[0].starts_with("undone "),
        "{summary:?}"
    );
    let count = |reason: &str| summary.events.get(reason).map_or(0, |(_, n)| *n);
    assert_eq!(count("ImageDigestChanged"), 3, "{:?}", summary.events);
    assert_eq!(count("RolloutSucceeded"), 2, "{:?}", summary.events);
    assert_eq!(count("RolloutFailed"), 1, "{:?}", summary.events);
    assert_eq!(count("RolloutUndone"), 1, "{:?}", summary.events);
    assert_eq!(
        summary.events.get("RolloutFailed").map(|(t, _)| t.as_str()),
        Some("Warning")
    );
    for reason in [
        "ImageDigestChanged",
        "RolloutSucceeded",
        "RolloutFailed",
        "RolloutUndone",
    ] {
        assert!(
            summary.describe.contains(reason),
            "kubectl describe shows no {reason} Event:\n{}",
            summary.describe
        );
    }
    // The sidecar ran with the env the webhook injected.
    for expected in [
        format!("{}=app", contract::ENV_WATCH_CONTAINER),
        format!("{}=1s", contract::ENV_INTERVAL),
        format!("{}=fieldRef:metadata.name", contract::ENV_POD_NAME),
        format!(
            "{}=fieldRef:metadata.namespace",
            contract::ENV_POD_NAMESPACE
        ),
    ] {
        assert!(
            summary.sidecar_env.contains(&expected),
            "{expected} not in {:?}",
            summary.sidecar_env
        );
    }
    assert!(summary
        .sidecar_env
        .iter()
        .any(|e| e.starts_with(contract::ENV_REGISTRY_URL)));
}

fn workload(
    kind: &str,
    name: &str,
    replicas: Option<i64>,
    image: &str,
    registry_url: &str,
) -> Value {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}, "annotations": {
                contract::ANNOTATION_INTERVAL: "1s",
                contract::ANNOTATION_REGISTRY_URL: registry_url
            }},
            "spec": {"containers": [{"name": "app", "image": image}]}
        }
    });
    if let Some(replicas) = replicas {
        spec["replicas"] = json!(replicas);
    }
    if kind == "StatefulSet" {
        spec["serviceName"] = json!(name);
    }
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

fn image_digest(pod: &Value) -> Option<String> {
    let status = pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "app")?;
    Some(status["imageID"].as_str()?.rsplit_once('@')?.1.to_string())
}

/// Waits until every live pod owned (through its controller) by `owner_uid` runs `digest`,
/// `count` of them, and the controller's status says the rollout is done.
async fn settled(
    ns: &TestNamespace,
    resource: &str,
    name: &str,
    count: usize,
    digest: &str,
) -> anyhow::Result<()> {
    wait_for(
        &format!("{resource}/{name}: {count} pods on {digest}"),
        ROLLOUT_DEADLINE,
        || async {
            let object = ns.get(resource, name).await?;
            let status = &object["status"];
            let done = status["observedGeneration"] == object["metadata"]["generation"]
                && match resource {
                    "statefulsets" => {
                        status["updatedReplicas"] == count
                            && status["readyReplicas"] == count
                            && status["currentRevision"] == status["updateRevision"]
                    }
                    _ => {
                        status["updatedNumberScheduled"] == count
                            && status["numberAvailable"] == count
                            && status["desiredNumberScheduled"] == count
                    }
                };
            let uid = object["metadata"]["uid"].clone();
            let pods: Vec<Value> = ns
                .live_pods()
                .await?
                .into_iter()
                .filter(|p| p["metadata"]["ownerReferences"][0]["uid"] == uid)
                .collect();
            Ok(done
                && pods.len() == count
                && pods
                    .iter()
                    .all(|p| image_digest(p).as_deref() == Some(digest)))
        },
    )
    .await
}

/// Issue 26 on the real control plane: every Event the story's three sidecars recorded
/// reached the installed webhook's receiver once, and says so on itself.
async fn the_story_told() -> anyhow::Result<()> {
    let admin = Api::admin(control_plane());
    let receivers = pod_reloaded_tests::receiver::process_receivers();
    let events = admin
        .list("/api/v1/namespaces/story/events")
        .await?
        .into_iter()
        .filter(|e| e["source"]["component"] == "pod-reloaded")
        .collect::<Vec<_>>();
    ensure!(events.len() >= 7, "the story's Events: {}", events.len());
    let mut uids: Vec<String> = events
        .iter()
        .filter_map(|e| e["metadata"]["uid"].as_str().map(str::to_string))
        .collect();
    uids.sort();
    let told = || {
        let mut ids: Vec<String> = receivers
            .accepted(NOTIFY_RECEIVER)
            .iter()
            .map(|r| r.json())
            .filter(|b| b["workload"]["namespace"] == "story")
            .filter_map(|b| b["id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    };
    wait_for(
        "every Event of the story told",
        ROLLOUT_DEADLINE,
        || async { Ok(uids.iter().all(|uid| told().contains(uid))) },
    )
    .await
    .with_context(|| installed().webhook_output())?;
    ensure!(told() == uids, "told {:?}, Events {uids:?}", told());
    wait_for(
        "every Event of the story marked told",
        ROLLOUT_DEADLINE,
        || async {
            Ok(admin
                .list("/api/v1/namespaces/story/events")
                .await?
                .iter()
                .filter(|e| e["source"]["component"] == "pod-reloaded")
                .all(|e| {
                    e["metadata"]["annotations"][contract::ANNOTATION_EVENT_NOTIFIED]
                        == NOTIFY_RECEIVER
                }))
        },
    )
    .await
}

/// Issue 24 on the real control plane: the operator's policy in the ConfigMap
/// `pod-reloaded-trust`, a Deployment that names it; an unsigned push stays out of the
/// cluster entirely (no new ReplicaSet, one Warning, quarantined), the next signed push
/// rolls out with the signer in the Event.
async fn signed_images_only() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOptions::default()).await;
    let cosign = Cosign::new();
    let release = cosign.key_pair("release");
    let ns = TestNamespace::opted_in("signed").await?;
    let admin = Api::admin(control_plane());
    let result = async {
        let policies = json!({"policies": {"release": {
            "keys": [release.public_pem], "transparencyLog": "optional",
            "waitForSignature": "0s"}}});
        admin
            .create(
                &format!(
                    "/api/v1/namespaces/{}/configmaps",
                    contract::WEBHOOK_NAMESPACE
                ),
                &json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": contract::TRUST_CONFIGMAP},
                    "data": {"policies.yaml": serde_yaml::to_string(&policies)?}}),
            )
            .await?;
        installed().mount_trust_configmap().await?;
        // The webhook reloads it (it checks every --tls-reload-interval, 10 s).
        wait_for(
            "the webhook has the trust policy",
            ROLLOUT_DEADLINE,
            || async {
                Ok(installed()
                    .webhook_output()
                    .contains("the trust policy file reloaded"))
            },
        )
        .await?;

        let v1 = registry
            .push_index("signed/app", "latest", "g1", &PLATFORMS, false)
            .await;
        let image = format!("{}/signed/app:latest", registry.host());
        let mut deployment = workload("Deployment", "app", Some(2), &image, &registry.base_url);
        deployment["spec"]["template"]["metadata"]["annotations"][contract::ANNOTATION_VERIFY] =
            json!("release");
        ns.create("deployments", &deployment).await?;
        wait_for("2 pods up", ROLLOUT_DEADLINE, || async {
            Ok(ns.live_pods().await?.len() == 2
                && ns.get("deployments", "app").await?["status"]["readyReplicas"] == 2)
        })
        .await?;
        let revision = |object: &Value| {
            object["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        let before = revision(&ns.get("deployments", "app").await?);

        // Unsigned: one Warning from two sidecars, quarantined, nothing rolls.
        let unsigned = registry
            .push_index("signed/app", "latest", "g2", &PLATFORMS, false)
            .await;
        wait_for("ImageSignatureRejected", ROLLOUT_DEADLINE, || async {
            Ok(!ns.events("ImageSignatureRejected").await?.is_empty())
        })
        .await?;
        let object = ns.get("deployments", "app").await?;
        let quarantined = object["metadata"]["annotations"][contract::ANNOTATION_QUARANTINED]
            .as_str()
            .unwrap_or("");
        ensure!(
            quarantined == format!("app={}", unsigned.digest),
            "quarantined: {quarantined:?}"
        );
        // Rounds of both sidecars with the unsigned digest still served: nothing more.
        let sidecar_rounds = || async {
            Ok::<usize, anyhow::Error>(ns.kubelet.sidecar_logs().matches(": checked ").count())
        };
        let seen = sidecar_rounds().await?;
        wait_for("4 more rounds", ROLLOUT_DEADLINE, || async {
            Ok(sidecar_rounds().await? >= seen + 4)
        })
        .await?;
        let object = ns.get("deployments", "app").await?;
        ensure!(
            revision(&object) == before,
            "a rollout started: {}",
            revision(&object)
        );
        ensure!(
            ns.events("ImageSignatureRejected").await?.len() == 1,
            "one Warning per digest"
        );
        ensure!(ns.events("ImageDigestChanged").await?.is_empty());
        for pod in ns.live_pods().await? {
            ensure!(
                image_digest(&pod).as_deref() == Some(v1.digest.as_str()),
                "a pod left the first digest: {pod}"
            );
        }

        // Signed: rolls out, and the Event says who signed. Signed before the tag moves
        // to it (pushed under another tag first), as a pipeline should: a digest the
        // sidecars see unsigned is quarantined.
        let signed = registry
            .push_index("signed/app", "candidate", "g3", &PLATFORMS, false)
            .await;
        cosign.sign(
            &registry,
            "signed/app",
            &signed.digest,
            &release,
            Format::Bundle,
            None,
        );
        registry
            .copy_manifest("signed/app", "candidate", "latest")
            .await;
        wait_for("2 pods on the signed digest", ROLLOUT_DEADLINE, || async {
            let status = ns.get("deployments", "app").await?["status"].clone();
            let pods = ns.live_pods().await?;
            Ok(status["updatedReplicas"] == 2
                && status["readyReplicas"] == 2
                && status["replicas"] == 2
                && pods.len() == 2
                && pods
                    .iter()
                    .all(|p| image_digest(p).as_deref() == Some(signed.digest.as_str())))
        })
        .await?;
        let restarted = ns.events("ImageDigestChanged").await?;
        ensure!(restarted.len() == 1, "{restarted:?}");
        let message = restarted[0]["message"].as_str().unwrap_or("");
        ensure!(
            message.contains("signature verified: app signed by key sha256:"),
            "{message}"
        );
        Ok(())
    }
    .await;
    let _ = admin
        .delete(&format!(
            "/api/v1/namespaces/{}/configmaps/{}",
            contract::WEBHOOK_NAMESPACE,
            contract::TRUST_CONFIGMAP
        ))
        .await;
    installed().mount_trust_configmap().await?;
    result.with_context(|| ns.diagnostics())
}

/// Scenario 5: a StatefulSet's and a DaemonSet's restarts complete with the real
/// controllers, the new pods pinned, the rollouts recorded succeeded.
async fn statefulset_and_daemonset() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOptions::default()).await;
    let ns = TestNamespace::opted_in("sets").await?;
    let result = async {
        let v1 = registry
            .push_index("sets/app", "latest", "s1", &PLATFORMS, false)
            .await;
        let image = format!("{}/sets/app:latest", registry.host());
        // The DaemonSet controller makes a pod for each node: two nodes, no kubelet. The
        // admission plugin TaintNodesByCondition taints a new node not-ready (which daemon
        // pods do not tolerate for scheduling); its kubelet would report it Ready, and the
        // node lifecycle controller (off here) would then lift the taint: done by hand.
        let admin = Api::admin(control_plane());
        for node in ["node-a", "node-b"] {
            admin
                .create(
                    "/api/v1/nodes",
                    &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node,
                        "labels": {"kubernetes.io/hostname": node, "kubernetes.io/os": "linux"}}}),
                )
                .await?;
            admin
                .merge_patch(
                    &format!("/api/v1/nodes/{node}"),
                    &json!({"spec": {"taints": null}}),
                )
                .await?;
            admin
                .merge_patch(
                    &format!("/api/v1/nodes/{node}/status"),
                    &json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                        "reason": "KubeletReady", "message": "played by the test harness"}]}}),
                )
                .await?;
        }
        ns.create(
            "statefulsets",
            &workload("StatefulSet", "db", Some(2), &image, &registry.base_url),
        )
        .await?;
        ns.create(
            "daemonsets",
            &workload("DaemonSet", "agent", None, &image, &registry.base_url),
        )
        .await?;
        settled(&ns, "statefulsets", "db", 2, &v1.digest).await?;
        settled(&ns, "daemonsets", "agent", 2, &v1.digest).await?;

        let v2 = registry
            .push_index("sets/app", "latest", "s2", &PLATFORMS, false)
            .await;
        for (resource, name) in [("statefulsets", "db"), ("daemonsets", "agent")] {
            settled(&ns, resource, name, 2, &v2.digest).await?;
            let record_is_succeeded = || async {
                let object = ns.get(resource, name).await?;
                let record = object["metadata"]["annotations"][contract::ANNOTATION_ROLLOUT]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                Ok(record.starts_with("succeeded ") && record.contains(&v2.digest))
            };
            wait_for(
                &format!("{resource}/{name} recorded succeeded"),
                ROLLOUT_DEADLINE,
                record_is_succeeded,
            )
            .await?;
            let object = ns.get(resource, name).await?;
            let restarted_for = object["spec"]["template"]["metadata"]["annotations"]
                [contract::ANNOTATION_RESTARTED_FOR]
                .as_str()
                .unwrap_or("");
            ensure!(
                restarted_for == format!("app={}", v2.digest),
                "{resource}/{name}: {restarted_for}"
            );
        }
        for pod in ns.live_pods().await? {
            let image = pod["spec"]["containers"][0]["image"].as_str().unwrap_or("");
            ensure!(
                image.ends_with(&format!("@{}", v2.digest)),
                "pod {} is not pinned: {image}",
                pod["metadata"]["name"]
            );
        }
        let restarts = ns.events("ImageDigestChanged").await?.len();
        ensure!(
            restarts == 2,
            "{restarts} ImageDigestChanged Events for two workloads"
        );
        anyhow::Ok(())
    }
    .await;
    result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", ns.diagnostics()))
}

/// Scenario 10: an Argo Rollout, its CRD the real one (so the restart patch is validated
/// by its schema), its controller played by the harness.
async fn argo_rollout() -> anyhow::Result<()> {
    install_rollout_crd().await?;
    let registry = Registry::start(RegistryOptions::default()).await;
    let ns = TestNamespace::opted_in("argo").await?;
    let result = async {
        let v1 = registry
            .push_index("argo/app", "latest", "a1", &PLATFORMS, false)
            .await;
        let image = format!("{}/argo/app:latest", registry.host());
        let mut rollout = workload("Deployment", "web", Some(2), &image, &registry.base_url);
        rollout["apiVersion"] = json!("argoproj.io/v1alpha1");
        rollout["kind"] = json!("Rollout");
        rollout["spec"]["strategy"] = json!({"canary": {}});
        ns.create("rollouts", &rollout).await?;
        let _controller = RolloutController::start(&ns.name, "web");
        let all_on = |digest: String| {
            let ns = &ns;
            move || {
                let digest = digest.clone();
                async move {
                    let pods = ns.live_pods().await?;
                    Ok(pods.len() == 2
                        && pods
                            .iter()
                            .all(|p| image_digest(p).as_deref() == Some(digest.as_str())))
                }
            }
        };
        wait_for(
            "the Rollout's pods run",
            ROLLOUT_DEADLINE,
            all_on(v1.digest.clone()),
        )
        .await?;
        let v2 = registry
            .push_index("argo/app", "latest", "a2", &PLATFORMS, false)
            .await;
        wait_for(
            "the Rollout's pods run the push",
            ROLLOUT_DEADLINE,
            all_on(v2.digest.clone()),
        )
        .await?;
        wait_for(
            "the Rollout recorded succeeded",
            ROLLOUT_DEADLINE,
            || async {
                let rollout = ns.get("rollouts", "web").await?;
                let record = rollout["metadata"]["annotations"][contract::ANNOTATION_ROLLOUT]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                Ok(record.starts_with("succeeded ") && record.contains(&v2.digest))
            },
        )
        .await?;
        let rollout = ns.get("rollouts", "web").await?;
        let restarted_for = rollout["spec"]["template"]["metadata"]["annotations"]
            [contract::ANNOTATION_RESTARTED_FOR]
            .as_str()
            .unwrap_or("");
        ensure!(
            restarted_for == format!("app={}", v2.digest),
            "restarted-for {restarted_for}"
        );
        anyhow::Ok(())
    }
    .await;
    result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", ns.diagnostics()))
}

/// Scenario 8 (part): the webhook puts back a RoleBinding whose subjects were changed by
/// hand, and makes again one deleted by hand (its watch cache against a real watch).
async fn webhook_grants() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOptions::default()).await;
    let ns = TestNamespace::opted_in("grants").await?;
    let result = async {
        let v1 = registry.push_index("grants/app", "latest", "g1", &PLATFORMS, false).await;
        let image = format!("{}/grants/app:latest", registry.host());
        let binding_name = contract::checker_role_binding_name(contract::CHECKER_SERVICE_ACCOUNT);
        let wanted = json!([{"kind": "ServiceAccount", "name": contract::CHECKER_SERVICE_ACCOUNT, "namespace": ns.name}]);
        ns.create(
            "rolebindings",
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": binding_name, "labels": {contract::MANAGED_BY_LABEL: contract::MANAGED_BY_VALUE}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": contract::CHECKER_CLUSTER_ROLE},
                "subjects": [{"kind": "ServiceAccount", "name": "someone-else", "namespace": ns.name}]}),
        )
        .await?;
        ns.create("deployments", &workload("Deployment", "web", Some(1), &image, &registry.base_url))
            .await?;
        let bound = || async {
            Ok(ns.get("rolebindings", &binding_name).await.ok().map(|b| b["subjects"].clone()) == Some(wanted.clone()))
        };
        wait_for("the binding's subjects put back", ROLLOUT_DEADLINE, bound).await?;
        wait_for("the pod runs", ROLLOUT_DEADLINE, || async {
            Ok(ns.live_pods().await?.iter().any(|p| image_digest(p).as_deref() == Some(v1.digest.as_str())))
        })
        .await?;
        ns.api.delete(&ns.path("rolebindings", &binding_name)).await?;
        ns.api
            .merge_patch(&ns.path("deployments", "web"), &json!({"spec": {"replicas": 2}}))
            .await?;
        wait_for("the deleted binding made again", ROLLOUT_DEADLINE, bound).await?;
        wait_for("both pods run with the sidecar", ROLLOUT_DEADLINE, || async {
            let pods = ns.live_pods().await?;
            Ok(pods.len() == 2 && pods.iter().all(|p| p["spec"]["serviceAccountName"] == contract::CHECKER_SERVICE_ACCOUNT))
        })
        .await?;
        anyhow::Ok(())
    }
    .await;
    result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", ns.diagnostics()))
}

/// Scenario 8: with the webhook down, pods are still created, without the sidecar
/// (`failurePolicy: Ignore`); back up, injection resumes.
async fn webhook_down_and_back() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOptions::default()).await;
    let ns = TestNamespace::opted_in("outage").await?;
    let result = async {
        registry
            .push_index("outage/app", "latest", "o1", &PLATFORMS, false)
            .await;
        let image = format!("{}/outage/app:latest", registry.host());
        ns.create(
            "deployments",
            &workload("Deployment", "web", Some(1), &image, &registry.base_url),
        )
        .await?;
        let with_sidecar = |pod: &Value| {
            pod["spec"]["containers"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["name"] == contract::SIDECAR_CONTAINER_NAME)
            })
        };
        let pods_are = |count: usize, injected: usize| {
            let ns = &ns;
            move || async move {
                let pods = ns.live_pods().await?;
                Ok(pods.len() == count
                    && pods.iter().filter(|p| with_sidecar(p)).count() == injected)
            }
        };
        wait_for("the first pod, injected", ROLLOUT_DEADLINE, pods_are(1, 1)).await?;
        let install = installed();
        install.stop_webhook()?;
        let scale = |replicas: i64| {
            let ns = &ns;
            async move {
                ns.api
                    .merge_patch(
                        &ns.path("deployments", "web"),
                        &json!({"spec": {"replicas": replicas}}),
                    )
                    .await
            }
        };
        scale(2).await?;
        let outage = wait_for(
            "a pod created without the sidecar while the webhook is down",
            ROLLOUT_DEADLINE,
            pods_are(2, 1),
        )
        .await;
        install.start_webhook().await?;
        outage?;
        scale(3).await?;
        wait_for("injection resumed", ROLLOUT_DEADLINE, pods_are(3, 2)).await?;
        anyhow::Ok(())
    }
    .await;
    result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", ns.diagnostics()))
}

/// Scenario 6: with the checker's own token, the API server (the policy) refuses every
/// change but pod-reloaded's annotations; RBAC refuses the rest.
async fn least_privilege() -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOptions::default()).await;
    let ns = TestNamespace::opted_in("privilege").await?;
    let result = async {
        let v1 = registry.push_index("priv/app", "latest", "p1", &PLATFORMS, false).await;
        let image = format!("{}/priv/app:latest", registry.host());
        ns.create("deployments", &workload("Deployment", "web", Some(1), &image, &registry.base_url))
            .await?;
        wait_for("the pod runs", ROLLOUT_DEADLINE, || async {
            Ok(ns.live_pods().await?.iter().any(|p| image_digest(p).as_deref() == Some(v1.digest.as_str())))
        })
        .await?;
        let plane = control_plane();
        let admin = Api::admin(plane);
        let token = admin
            .service_account_token(&ns.name, contract::CHECKER_SERVICE_ACCOUNT, None)
            .await?;
        let checker = Api::with_token_and_agent(plane, &token, PROBE_AGENT);
        let deployment = ns.path("deployments", "web");
        let patch = |body: Value| {
            let checker = checker.clone();
            let deployment = deployment.clone();
            async move {
                checker
                    .request(Method::PATCH, &deployment, "application/merge-patch+json", Some(&body))
                    .await
            }
        };
        let denied = [
            ("the image", json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil/miner:latest"}]}}}})),
            ("the replicas", json!({"spec": {"replicas": 5}})),
            ("another template annotation", json!({"spec": {"template": {"metadata": {"annotations": {"example.com/x": "1"}}}}})),
            ("a label", json!({"metadata": {"labels": {"team": "x"}}})),
            ("another metadata annotation", json!({"metadata": {"annotations": {"example.com/x": "1"}}})),
        ];
        for (what, body) in denied {
            let answer = patch(body).await?;
            ensure!(
                answer.status.is_client_error(),
                "changing {what} with the checker's token was allowed: {answer:?}"
            );
            let message = answer.body["message"].as_str().unwrap_or("");
            ensure!(
                message.contains("pod-reloaded-checker-deployments"),
                "changing {what} was refused, but not by the policy: {message}"
            );
        }
        let allowed = patch(json!({"metadata": {"annotations": {contract::ANNOTATION_PAUSED: "false"}}})).await?;
        ensure!(allowed.status.is_success(), "pod-reloaded's own annotation refused: {allowed:?}");
        // RBAC: nothing in another namespace, no Secrets.
        for path in [
            "/apis/apps/v1/namespaces/story/deployments/app".to_string(),
            format!("/api/v1/namespaces/{}/secrets", ns.name),
        ] {
            let answer = checker.request(Method::GET, &path, "", None).await?;
            ensure!(answer.status == reqwest::StatusCode::FORBIDDEN, "GET {path}: {answer:?}");
        }
        anyhow::Ok(())
    }
    .await;
    result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", ns.diagnostics()))
}

/// Scenario 7: from the audit log of every scenario above, each request of the checkers
/// and of the webhook was allowed, and each rule of their ClusterRoles was used.
fn rbac_fits() -> anyhow::Result<()> {
    let webhook_user = format!(
        "system:serviceaccount:{}:{}",
        contract::WEBHOOK_NAMESPACE,
        contract::WEBHOOK_SERVICE
    );
    let checker_suffix = format!(":{}", contract::CHECKER_SERVICE_ACCOUNT);
    let mut used: BTreeSet<(String, String, String, String)> = BTreeSet::new();
    let mut refused = Vec::new();
    for event in control_plane().audit_events() {
        let user = event["user"]["username"].as_str().unwrap_or("");
        let role = if user == webhook_user {
            "pod-reloaded-webhook"
        } else if user.starts_with("system:serviceaccount:") && user.ends_with(&checker_suffix) {
            "pod-reloaded-checker"
        } else {
            continue;
        };
        if event["userAgent"]
            .as_str()
            .unwrap_or("")
            .starts_with(PROBE_AGENT)
        {
            continue;
        }
        let object = &event["objectRef"];
        let verb = event["verb"].as_str().unwrap_or("").to_string();
        let decision = event["annotations"]["authorization.k8s.io/decision"]
            .as_str()
            .unwrap_or("");
        let resource = match object["subresource"].as_str() {
            Some(sub) => format!("{}/{sub}", object["resource"].as_str().unwrap_or("")),
            None => object["resource"].as_str().unwrap_or("").to_string(),
        };
        let group = object["apiGroup"].as_str().unwrap_or("").to_string();
        // The grants scenario deletes that namespace's binding on purpose: until the
        // webhook makes it again, its running sidecar is refused by design.
        let binding_taken_away = user
            == format!(
                "system:serviceaccount:grants:{}",
                contract::CHECKER_SERVICE_ACCOUNT
            );
        if decision != "allow" && !binding_taken_away {
            refused.push(format!("{user} {verb} {group}/{resource}: {decision}"));
        }
        used.insert((role.to_string(), group, resource, verb));
    }
    ensure!(refused.is_empty(), "requests refused by RBAC: {refused:#?}");

    let mut unused = Vec::new();
    for role in rendered_manifests()?
        .into_iter()
        .filter(|o| o["kind"] == "ClusterRole")
    {
        let name = role["metadata"]["name"].as_str().unwrap_or("").to_string();
        for rule in role["rules"].as_array().into_iter().flatten() {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        // `bind` is no request: the API server checks it when the webhook
                        // creates a RoleBinding to a ClusterRole it does not hold itself.
                        if verb == "bind" {
                            continue;
                        }
                        let key = (name.clone(), group.clone(), resource.clone(), verb.clone());
                        if !used.contains(&key) {
                            unused.push(format!("{name}: {verb} {group}/{resource}"));
                        }
                    }
                }
            }
        }
    }
    let bindings_made = used.iter().any(|(role, group, resource, verb)| {
        role == "pod-reloaded-webhook"
            && group == "rbac.authorization.k8s.io"
            && resource == "rolebindings"
            && verb == "create"
    });
    ensure!(
        bindings_made,
        "the webhook never created a RoleBinding (so `bind` was never exercised)"
    );
    ensure!(
        unused.is_empty(),
        "granted but used by no scenario: {unused:#?}\nused: {used:#?}"
    );
    Ok(())
}

/// `make undeploy` then `make undeploy-accounts`, as the README says, with the built
/// kubectl: the webhook configuration and the install go, the ClusterRole that running
/// sidecars' bindings point to stays until the accounts go.
async fn undeploy() -> anyhow::Result<()> {
    let plane = control_plane();
    let admin = Api::admin(plane);
    let make = |target: &str| {
        let path = format!(
            "{}:{}",
            plane.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = std::process::Command::new("make")
            .arg("--no-print-directory")
            .arg(target)
            .current_dir(pod_reloaded_tests::workspace_root())
            .env("PATH", path)
            .env("KUBECONFIG", &plane.admin_kubeconfig)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "make {target}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        anyhow::Ok(())
    };
    let checker_role = "/apis/rbac.authorization.k8s.io/v1/clusterroles/pod-reloaded-checker";
    let binding = format!(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/grants/rolebindings/{}",
        contract::checker_role_binding_name(contract::CHECKER_SERVICE_ACCOUNT)
    );
    make("undeploy")?;
    let configuration =
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/pod-reloaded";
    ensure!(
        admin.get(configuration).await?.is_none(),
        "the webhook configuration is still there"
    );
    ensure!(
        admin
            .get("/apis/rbac.authorization.k8s.io/v1/clusterroles/pod-reloaded-webhook")
            .await?
            .is_none(),
        "the install is still there"
    );
    ensure!(
        admin.get(checker_role).await?.is_some(),
        "undeploy deleted the ClusterRole running sidecars use"
    );
    ensure!(
        admin.get(&binding).await?.is_some(),
        "undeploy deleted a sidecar's binding"
    );
    make("undeploy-accounts")?;
    ensure!(
        admin.get(checker_role).await?.is_none(),
        "undeploy-accounts left the ClusterRole"
    );
    ensure!(
        admin.get(&binding).await?.is_none(),
        "undeploy-accounts left a binding"
    );
    Ok(())
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}
