//! The whole loop against the real control plane, as a timeline: `make demo` prints it,
//! the `cluster` test asserts on its summary. An opted-in namespace; a 3-replica
//! Deployment whose pods the API server sends to the webhook; a push rolled out once by
//! the real Deployment controller, pinned to its digest; a bad image that hits a real
//! `ProgressDeadlineExceeded` and is rolled back and quarantined; a good push after it; a
//! person's `kubectl rollout undo`, never rolled forward again.
//!
//! Every check fails the story with a reason (`anyhow`), so the demo exits non-zero
//! saying what went wrong.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use pod_reloaded_contract as contract;
use serde_json::{json, Value};

use super::control_plane::control_plane;
use super::install::installed;
use super::namespace::{wait_for, TestNamespace, ROLLOUT_DEADLINE};
use crate::registry::{PushedIndex, Registry, RegistryOptions};

const DEPLOYMENT: &str = "app";
const CONTAINER: &str = "app";
const REPOSITORY: &str = "demo/app";
const PLATFORMS: [(&str, &str); 2] = [("linux", "amd64"), ("linux", "arm64")];
const REPLICAS: usize = 3;
/// The real controller's deadline for the bad image's rollout.
const PROGRESS_DEADLINE_SECONDS: u64 = 8;

/// What the story observed, for the test to assert on.
#[derive(Debug, Default)]
pub struct Summary {
    pub namespace: String,
    /// Time from the first push to the restart patch being in the Deployment.
    pub restart_latency: Duration,
    /// Deployment revisions: after the good push's rollout, after the bad image's
    /// rollback, after the next good push, after the undo and the rounds that followed.
    pub revisions: Vec<i64>,
    /// Sidecars that ran in the first rollout's pods.
    pub first_sidecars: usize,
    /// What `kubectl describe deployment` printed at the end.
    pub describe: String,
    pub rollout_records: Vec<String>,
    /// The env the webhook gave the sidecar (name=value, fieldRefs as name=fieldRef:path).
    pub sidecar_env: Vec<String>,
    /// pod-reloaded's Events at the end, by reason, with their type.
    pub events: std::collections::BTreeMap<String, (String, usize)>,
    pub total: Duration,
}

struct Timeline<'a> {
    started: Instant,
    sink: &'a mut dyn FnMut(String),
}

impl Timeline<'_> {
    fn say(&mut self, message: impl Into<String>) {
        let at = self.started.elapsed().as_secs_f64();
        (self.sink)(format!("[{at:6.2}s] {}", message.into()));
    }
}

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

struct Story {
    ns: TestNamespace,
    registry: Registry,
    image: String,
}

impl Story {
    async fn deployment(&self) -> anyhow::Result<Value> {
        self.ns.get("deployments", DEPLOYMENT).await
    }

    /// The Deployment controller's revision: one more for each new template (a restart, a
    /// rollback, an undo). The generation counts annotation changes too (a Deployment's
    /// metadata annotations are part of what it rolls back), so it cannot count restarts.
    async fn revision(&self) -> anyhow::Result<i64> {
        let deployment = self.deployment().await?;
        let revision = deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
            .as_str()
            .unwrap_or("0");
        Ok(revision.parse().unwrap_or(0))
    }

    async fn annotation(&self, on_template: bool, key: &str) -> anyhow::Result<String> {
        let deployment = self.deployment().await?;
        let annotations = if on_template {
            &deployment["spec"]["template"]["metadata"]["annotations"]
        } else {
            &deployment["metadata"]["annotations"]
        };
        Ok(annotations[key].as_str().unwrap_or("").to_string())
    }

    async fn push(&self, seed: &str) -> PushedIndex {
        self.registry
            .push_index(REPOSITORY, "latest", seed, &PLATFORMS, false)
            .await
    }

    /// Waits until the Deployment's pods all run `digest` and the controller reports the
    /// rollout complete.
    async fn rolled_out(&self, digest: &str) -> anyhow::Result<Vec<Value>> {
        wait_for(
            &format!("rollout to {}", short(digest)),
            ROLLOUT_DEADLINE,
            || async {
                let deployment = self.deployment().await?;
                let status = &deployment["status"];
                let complete = status["observedGeneration"] == deployment["metadata"]["generation"]
                    && status["updatedReplicas"] == REPLICAS
                    && status["availableReplicas"] == REPLICAS
                    && status["replicas"] == REPLICAS;
                if !complete {
                    return Ok(false);
                }
                let pods = self.ns.live_pods().await?;
                Ok(pods.len() == REPLICAS
                    && pods
                        .iter()
                        .all(|p| running_digest(p).as_deref() == Some(digest)))
            },
        )
        .await?;
        self.ns.live_pods().await
    }

    async fn rollout_record_is(&self, state: &str, digest: &str) -> anyhow::Result<()> {
        wait_for(
            &format!("rollout record `{state}` for {}", short(digest)),
            ROLLOUT_DEADLINE,
            || async {
                let record = self.annotation(false, contract::ANNOTATION_ROLLOUT).await?;
                Ok(record.starts_with(&format!("{state} ")) && record.contains(digest))
            },
        )
        .await
    }

    async fn event(&self, reason: &str, count: usize) -> anyhow::Result<Value> {
        wait_for(
            &format!("{count} {reason} Event(s)"),
            ROLLOUT_DEADLINE,
            || async { Ok(self.ns.events(reason).await?.len() >= count) },
        )
        .await?;
        let mut events = self.ns.events(reason).await?;
        events.sort_by_key(|e| e["lastTimestamp"].as_str().unwrap_or("").to_string());
        events.pop().context("no Event")
    }

    /// Waits for `rounds` more checked rounds of every running sidecar (a pod that goes
    /// away meanwhile is not waited for).
    async fn rounds(&self, rounds: usize) -> anyhow::Result<()> {
        let checked = |name: &str| -> usize {
            self.ns
                .kubelet
                .sidecar_outputs()
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, out)| out.matches(": checked ").count())
                .sum()
        };
        let start: Vec<(String, usize)> = self
            .ns
            .kubelet
            .pods()
            .into_iter()
            .map(|name| {
                let count = checked(&name);
                (name, count)
            })
            .collect();
        wait_for(
            &format!("{rounds} rounds of every sidecar"),
            ROLLOUT_DEADLINE,
            || async {
                let running = self.ns.kubelet.pods();
                Ok(start.iter().all(|(name, before)| {
                    !running.contains(name) || checked(name) >= before + rounds
                }))
            },
        )
        .await
    }
}

/// The digest a pod's `app` container runs (from its `imageID`).
fn running_digest(pod: &Value) -> Option<String> {
    pod["status"]["containerStatuses"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == CONTAINER)?["imageID"]
        .as_str()?
        .rsplit_once('@')
        .map(|(_, digest)| digest.to_string())
}

fn sidecar_env(pod: &Value) -> Vec<String> {
    let sidecar = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == contract::SIDECAR_CONTAINER_NAME);
    sidecar
        .and_then(|c| c["env"].as_array())
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["name"].as_str().unwrap_or("");
            match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(v), _) => format!("{name}={v}"),
                (_, Value::String(p)) => format!("{name}=fieldRef:{p}"),
                _ => format!("{name}=?"),
            }
        })
        .collect()
}

fn container_names(pod: &Value) -> Vec<String> {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// Runs the story in namespace `namespace`, telling `sink` what happens.
pub async fn run(namespace: &str, sink: &mut dyn FnMut(String)) -> anyhow::Result<Summary> {
    let mut timeline = Timeline {
        started: Instant::now(),
        sink,
    };
    let mut summary = Summary {
        namespace: namespace.to_string(),
        ..Summary::default()
    };
    let plane = control_plane();
    timeline.say(format!(
        "control plane: kube-apiserver {}, etcd {}, kube-controller-manager {} on {}",
        plane.versions.kubernetes,
        plane.versions.etcd,
        plane.versions.controller_manager,
        plane.url
    ));
    let install = installed();
    timeline.say(format!(
        "installed manifests/ ({} objects, strict field validation); webhook on 127.0.0.1:{} called by the API server",
        install.objects.len(),
        install.webhook_port
    ));

    // 1. The registry, the opted-in namespace, a 3-replica Deployment.
    let registry = Registry::start(RegistryOptions::default()).await;
    let image = format!("{}/{REPOSITORY}:latest", registry.host());
    let ns = TestNamespace::opted_in(namespace).await?;
    let story = Story {
        ns,
        registry,
        image,
    };
    let acted = async {
        let v1 = story.push("v1").await;
        timeline.say(format!(
            "registry on {} serves {} -> {} (OCI index, amd64+arm64)",
            story.registry.base_url,
            story.image,
            short(&v1.digest)
        ));
        story
            .ns
            .create(
                "deployments",
                &json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": DEPLOYMENT},
                    "spec": {
                        "replicas": REPLICAS,
                        "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
                        "selector": {"matchLabels": {"app": DEPLOYMENT}},
                        "template": {
                            "metadata": {"labels": {"app": DEPLOYMENT}, "annotations": {
                                contract::ANNOTATION_INTERVAL: "1s",
                                contract::ANNOTATION_REGISTRY_URL: story.registry.base_url
                            }},
                            "spec": {"containers": [{"name": CONTAINER, "image": story.image}]}
                        }
                    }
                }),
            )
            .await?;
        timeline.say(format!(
            "namespace {namespace} labelled {}={}; Deployment {DEPLOYMENT} ({REPLICAS} replicas) runs {}",
            contract::INJECT_LABEL,
            contract::INJECT_ENABLED,
            story.image
        ));
        let pods = story.rolled_out(&v1.digest).await?;
        for pod in &pods {
            ensure!(
                container_names(pod).contains(&contract::SIDECAR_CONTAINER_NAME.to_string()),
                "pod {} was stored without the sidecar: {:?}",
                pod["metadata"]["name"],
                container_names(pod)
            );
            ensure!(
                pod["spec"]["serviceAccountName"] == contract::CHECKER_SERVICE_ACCOUNT,
                "pod {} runs as {}",
                pod["metadata"]["name"],
                pod["spec"]["serviceAccountName"]
            );
        }
        story
            .ns
            .get("serviceaccounts", contract::CHECKER_SERVICE_ACCOUNT)
            .await
            .context("the webhook did not create the checker's ServiceAccount")?;
        story
            .ns
            .get(
                "rolebindings",
                &contract::checker_role_binding_name(contract::CHECKER_SERVICE_ACCOUNT),
            )
            .await
            .context("the webhook did not create the RoleBinding")?;
        timeline.say(format!(
            "the Deployment controller made {REPLICAS} pods; the API server stored each with {} (account {}); the webhook made its ServiceAccount and RoleBinding",
            contract::SIDECAR_CONTAINER_NAME,
            contract::CHECKER_SERVICE_ACCOUNT
        ));
        // A second admission of a stored pod changes nothing.
        let mut again = pods[0].clone();
        again["metadata"] = json!({
            "generateName": again["metadata"]["generateName"],
            "labels": again["metadata"]["labels"],
            "annotations": again["metadata"]["annotations"],
            "ownerReferences": again["metadata"]["ownerReferences"],
        });
        again.as_object_mut().map(|o| o.remove("status"));
        let admitted = story
            .ns
            .api
            .request(
                reqwest::Method::POST,
                &format!("{}?dryRun=All", story.ns.path("pods", "")),
                "application/json",
                Some(&again),
            )
            .await?
            .ok()?;
        ensure!(
            container_names(&admitted) == container_names(&pods[0])
                && admitted["spec"]["containers"] == pods[0]["spec"]["containers"],
            "a second admission changed the pod: {:?}",
            container_names(&admitted)
        );
        timeline.say("a second admission of a stored pod (dry run): unchanged");
        summary.sidecar_env = sidecar_env(&pods[0]);
        timeline.say(format!(
            "the sidecar's env, as stored: [{}]",
            summary.sidecar_env.join(", ")
        ));

        // 2. Rounds without a change; a push; exactly one restart.
        story.rounds(2).await?;
        ensure!(story.revision().await? == 1, "restarted although nothing changed");
        summary.first_sidecars = story.ns.kubelet.pods().len();
        let v2 = story.push("v2").await;
        let pushed_at = Instant::now();
        timeline.say(format!(
            "{} sidecars up to date for 2 rounds; pushed a new image: latest -> {}",
            summary.first_sidecars,
            short(&v2.digest)
        ));
        let expected = format!("{CONTAINER}={}", v2.digest);
        wait_for("the restart patch", ROLLOUT_DEADLINE, || async {
            Ok(story.annotation(true, contract::ANNOTATION_RESTARTED_FOR).await? == expected)
        })
        .await?;
        summary.restart_latency = pushed_at.elapsed();
        timeline.say(format!(
            "restart patch {:.2}s after the push: restarted-for={CONTAINER}={}",
            summary.restart_latency.as_secs_f64(),
            short(&v2.digest)
        ));
        let pods = story.rolled_out(&v2.digest).await?;
        for pod in &pods {
            let image = pod["spec"]["containers"][0]["image"].as_str().unwrap_or("");
            ensure!(
                image.ends_with(&format!("@{}", v2.digest)),
                "new pod {} is not pinned to the restart's digest: {image}",
                pod["metadata"]["name"]
            );
        }
        let replica_sets = story.ns.list("replicasets").await?.len();
        timeline.say(format!(
            "the Deployment controller rolled out a new ReplicaSet ({replica_sets} in all); every new pod pinned to {}",
            short(&v2.digest)
        ));
        story.rollout_record_is("succeeded", &v2.digest).await?;
        let succeeded = story.event("RolloutSucceeded", 1).await?;
        story.rounds(2).await?;
        summary.revisions.push(story.revision().await?);
        ensure!(
            summary.revisions[0] == 2,
            "revision {} after one change: not exactly one restart patch",
            summary.revisions[0]
        );
        timeline.say(format!(
            "rollout recorded succeeded; Event {}: {}; revision 2: one patch from {} sidecars",
            succeeded["reason"].as_str().unwrap_or(""),
            succeeded["message"].as_str().unwrap_or(""),
            summary.first_sidecars
        ));

        // 3. A bad image: its pods never become ready; the controller's deadline passes.
        let v3_digest = {
            let v3 = story.push("v3-bad").await;
            story.ns.kubelet.crash_loop(&v3.digest);
            v3.digest
        };
        timeline.say(format!(
            "pushed a bad image: latest -> {} (its pods crash-loop; progressDeadlineSeconds {PROGRESS_DEADLINE_SECONDS})",
            short(&v3_digest)
        ));
        let failed = story.event("RolloutFailed", 1).await?;
        timeline.say(format!(
            "Event Warning RolloutFailed: {}",
            failed["message"].as_str().unwrap_or("")
        ));
        let quarantine = format!("{CONTAINER}={v3_digest}");
        wait_for("the quarantine", ROLLOUT_DEADLINE, || async {
            Ok(story
                .annotation(false, contract::ANNOTATION_QUARANTINED)
                .await?
                .contains(&quarantine))
        })
        .await?;
        story.rolled_out(&v2.digest).await?;
        story.rounds(3).await?;
        summary.revisions.push(story.revision().await?);
        ensure!(
            summary.revisions[1] == summary.revisions[0] + 2,
            "revisions {:?}: expected one restart and one rollback for the bad image",
            summary.revisions
        );
        timeline.say(format!(
            "rolled back in one patch: pods run {} again; {} quarantined; 3 rounds with it still served: no patch",
            short(&v2.digest),
            short(&v3_digest)
        ));

        // 4. The next good push rolls out.
        let v4 = story.push("v4").await;
        story.rolled_out(&v4.digest).await?;
        story.rollout_record_is("succeeded", &v4.digest).await?;
        summary.revisions.push(story.revision().await?);
        timeline.say(format!(
            "pushed a good image: latest -> {}: one restart, rollout succeeded",
            short(&v4.digest)
        ));

        // 5. A person undoes it; it is never rolled forward again.
        let undo = plane.kubectl(&["rollout", "undo", &format!("deployment/{DEPLOYMENT}"), "-n", namespace]);
        let undo = undo.map_err(anyhow::Error::msg)?;
        timeline.say(format!("kubectl rollout undo: {}", undo.trim()));
        story.rolled_out(&v2.digest).await?;
        story.rollout_record_is("undone", &v4.digest).await?;
        story.event("RolloutUndone", 1).await?;
        story.rounds(3).await?;
        let after_undo = story.revision().await?;
        story.rounds(2).await?;
        summary.revisions.push(story.revision().await?);
        ensure!(
            summary.revisions[3] == after_undo,
            "rolled forward after a person's undo: revisions {:?}",
            summary.revisions
        );
        timeline.say(format!(
            "recorded undone; pods run {} while the tag serves {}: not rolled forward in 5 rounds",
            short(&v2.digest),
            short(&v4.digest)
        ));

        for event in story.ns.list("events").await? {
            let source = event["source"]["component"].as_str().unwrap_or("");
            let reporter = event["reportingComponent"].as_str().unwrap_or("");
            if !(source.contains("pod-reloaded") || reporter.contains("pod-reloaded")) {
                continue;
            }
            let entry = summary
                .events
                .entry(event["reason"].as_str().unwrap_or("").to_string())
                .or_insert((event["type"].as_str().unwrap_or("").to_string(), 0));
            entry.1 += event["count"].as_u64().unwrap_or(1) as usize;
        }
        summary.rollout_records.push(story.annotation(false, contract::ANNOTATION_ROLLOUT).await?);
        summary.describe = plane
            .kubectl(&["describe", "deployment", DEPLOYMENT, "-n", namespace])
            .map_err(anyhow::Error::msg)?;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = acted {
        anyhow::bail!("{error:#}\n\n{}", story.ns.diagnostics());
    }
    summary.total = timeline.started.elapsed();
    timeline.say(format!("done in {:.1}s", summary.total.as_secs_f64()));
    Ok(summary)
}
