//! The whole loop, with every real part: a registry on 127.0.0.1, the webhook over TLS,
//! the sidecar, and the fake API server standing in for the cluster. `make demo` prints
//! it as a timeline; the end-to-end test runs it and asserts on the summary.
//!
//! Every check fails the scenario with a reason (`anyhow::bail!`), so the demo exits
//! non-zero saying what went wrong.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use pod_reloaded_contract as contract;
use serde_json::{json, Value};

use crate::fake_apiserver::{object_path, FakeApiServer};
use crate::process::Running;
use crate::registry::{Registry, RegistryOptions};
use crate::webhook::{generate_certificates, response_patch, warnings, Webhook};
use crate::workloads::command_from_pod;

const NAMESPACE: &str = "demo";
const DEPLOYMENT: &str = "app";
const CONTAINER: &str = "app";
const REPOSITORY: &str = "demo/app";
const PLATFORMS: [(&str, &str); 2] = [("linux", "amd64"), ("linux", "arm64")];
const INTERVAL: Duration = Duration::from_secs(1);

/// What the scenario observed, for the test to assert on.
#[derive(Debug, Default)]
pub struct Summary {
    /// Time from the push to the restart patch reaching the Deployment.
    pub restart_latency: Duration,
    /// Successful Deployment patches after the first push, and after the replica push.
    pub patches_after_change: usize,
    pub patches_with_replicas: usize,
    pub normal_events: usize,
    pub warning_events: usize,
    /// Template patches in the bad-image act: the restart to it, the rollback, and the
    /// restart to the next good push.
    pub patches_with_bad_image: usize,
    pub rollbacks: usize,
    /// The env the webhook gave the sidecar (name=value, fieldRefs as name=fieldRef:path).
    pub sidecar_env: Vec<String>,
    pub total: Duration,
}

/// Prints (or collects) the timeline.
pub struct Timeline<'a> {
    started: Instant,
    sink: &'a mut dyn FnMut(String),
}

impl Timeline<'_> {
    fn say(&mut self, message: impl Into<String>) {
        let at = self.started.elapsed().as_secs_f64();
        (self.sink)(format!("[{at:6.2}s] {}", message.into()));
    }
}

/// Short, so the demo's bad-image act takes seconds.
const ROLLOUT_TIMEOUT: &str = "3s";

fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

struct World {
    api: FakeApiServer,
    registry: Registry,
    webhook: Webhook,
    image: String,
    _certs_dir: tempfile::TempDir,
}

impl World {
    fn deployment_path(&self) -> String {
        format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{DEPLOYMENT}")
    }

    /// Restart patches applied (patches of the template; the rollout's outcome is
    /// recorded on the metadata only).
    fn successful_patches(&self) -> usize {
        self.api
            .requests_to("PATCH", &self.deployment_path())
            .iter()
            .filter(|r| r.status == 200 && r.body.pointer("/spec/template").is_some())
            .count()
    }

    /// What the Deployment controller reports once every pod runs the new template.
    fn rollout_completes(&self) -> anyhow::Result<()> {
        self.rollout_status(1)
    }

    /// What the Deployment controller reports while the new pods crash-loop.
    fn rollout_stalls(&self) -> anyhow::Result<()> {
        self.rollout_status(0)
    }

    fn rollout_status(&self, ready: u32) -> anyhow::Result<()> {
        let mut deployment = self
            .api
            .get(&self.deployment_path())
            .context("no Deployment")?;
        deployment["status"] = json!({
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": 2 - ready, "updatedReplicas": 1, "readyReplicas": ready, "availableReplicas": ready
        });
        self.api.put(deployment);
        Ok(())
    }

    /// Sets a template annotation, as `kubectl patch` would (the next ReplicaSet's pods
    /// carry it).
    fn annotate_template(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let mut deployment = self
            .api
            .get(&self.deployment_path())
            .context("no Deployment")?;
        deployment["spec"]["template"]["metadata"]["annotations"][key] = json!(value);
        self.api.put(deployment);
        Ok(())
    }

    async fn until(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while !check(self) {
            if Instant::now() > deadline {
                bail!("{what}: not within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }

    fn rollout_record(&self) -> String {
        self.api
            .get(&self.deployment_path())
            .and_then(|d| {
                d["metadata"]["annotations"][contract::ANNOTATION_ROLLOUT]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        self.api
            .list(&format!("/api/v1/namespaces/{NAMESPACE}/events/"))
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    fn template(&self) -> anyhow::Result<Value> {
        let deployment = self
            .api
            .get(&self.deployment_path())
            .context("the Deployment is gone")?;
        Ok(deployment["spec"]["template"].clone())
    }

    fn image_id(&self, digest: &str) -> String {
        format!("{}/{REPOSITORY}@{digest}", self.registry.host())
    }

    /// A ReplicaSet for the Deployment's current template, as the Deployment controller
    /// makes one.
    fn replica_set(&self, hash: &str) -> anyhow::Result<Value> {
        let deployment = self
            .api
            .get(&self.deployment_path())
            .context("no Deployment")?;
        let mut template = deployment["spec"]["template"].clone();
        template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        Ok(self.api.put(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": format!("{DEPLOYMENT}-{hash}"), "namespace": NAMESPACE,
                "labels": template["metadata"]["labels"],
                "ownerReferences": [owner_reference(&deployment)]
            },
            "spec": {"replicas": 1, "template": template}
        })))
    }

    /// A pod as the ReplicaSet controller and the ServiceAccount admission plugin leave
    /// it, sent through the webhook; returns the patched pod with the warnings.
    async fn admit(&self, replica_set: &Value) -> anyhow::Result<(Value, Vec<String>)> {
        let template = &replica_set["spec"]["template"];
        let mut spec = template["spec"].clone();
        let token_volume = "kube-api-access-7xq2d";
        spec["serviceAccountName"] = json!("default");
        spec["serviceAccount"] = json!("default");
        spec["volumes"] = json!([{"name": token_volume, "projected": {"sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
        ]}}]);
        for container in spec["containers"].as_array_mut().into_iter().flatten() {
            container["volumeMounts"] = json!([{
                "name": token_volume, "readOnly": true,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"
            }]);
            container["imagePullPolicy"] = json!("IfNotPresent");
        }
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": format!("{}-", replica_set["metadata"]["name"].as_str().unwrap_or("")),
                "namespace": NAMESPACE,
                "creationTimestamp": null,
                "labels": template["metadata"]["labels"],
                "annotations": template["metadata"]["annotations"],
                "ownerReferences": [owner_reference(replica_set)]
            },
            "spec": spec
        });
        let review = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": format!("{:032x}", rand::random::<u128>()),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": NAMESPACE,
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "oldObject": null,
                "dryRun": false,
                "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
            }
        });
        let certs_ca = self._certs_dir.path().join("ca.crt");
        let response = self
            .webhook
            .client(&certs_ca)
            .post(self.webhook.url(contract::WEBHOOK_MUTATE_PATH))
            .json(&review)
            .send()
            .await
            .context("posting the AdmissionReview")?;
        ensure!(
            response.status().is_success(),
            "webhook answered HTTP {}",
            response.status()
        );
        let answer: Value = response
            .json()
            .await
            .context("webhook answer is not JSON")?;
        ensure!(
            answer["response"]["uid"] == review["request"]["uid"],
            "webhook answered another uid"
        );
        let patch = response_patch(&answer)
            .with_context(|| format!("webhook did not inject: {:?}", warnings(&answer)))?;
        let mut patched = review["request"]["object"].clone();
        json_patch::patch(&mut patched, &patch).context("the webhook's patch does not apply")?;
        Ok((patched, warnings(&answer)))
    }

    /// Stores a patched pod as running `digest` (what the kubelet reports) and starts its
    /// sidecar with exactly the env the patch gave it.
    fn run_pod(
        &self,
        mut pod: Value,
        name: &str,
        digest: &str,
        created: &str,
    ) -> anyhow::Result<(Value, Running)> {
        pod["metadata"]["name"] = json!(name);
        pod["metadata"]["creationTimestamp"] = json!(created);
        pod["status"] = json!({"phase": "Running", "containerStatuses": [{
            "name": CONTAINER, "ready": true, "restartCount": 0,
            "image": self.image, "imageID": self.image_id(digest)
        }]});
        let stored = self.api.put(pod);
        ensure!(
            object_path(&stored).ends_with(name),
            "pod stored under an unexpected path"
        );
        let sidecar = Running::spawn(command_from_pod(self.api.kubeconfig_path(), &stored, &[]));
        Ok((stored, sidecar))
    }

    /// API requests the sidecar of pod `name` made for its pod.
    fn pod_reads(&self, name: &str) -> usize {
        self.api
            .requests_to(
                "GET",
                &format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}"),
            )
            .len()
    }

    /// Waits until `sidecar` has done `rounds` more rounds (its `checked` log lines:
    /// an unchanged round reads nothing from the API, so the log is what counts).
    async fn rounds(&self, sidecar: &Running, rounds: usize) -> anyhow::Result<()> {
        let checked = || sidecar.output().matches(": checked ").count();
        let target = checked() + rounds;
        let deadline = Instant::now() + INTERVAL * (rounds as u32) * 3 + Duration::from_secs(5);
        while checked() < target {
            if Instant::now() > deadline {
                bail!("the sidecar stopped doing rounds:\n{}", sidecar.output());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

fn owner_reference(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"], "kind": owner["kind"],
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true
    })
}

fn env_summary(pod: &Value) -> Vec<String> {
    let sidecar = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == contract::SIDECAR_CONTAINER_NAME);
    sidecar
        .and_then(|c| c["env"].as_array())
        .into_iter()
        .flatten()
        .map(
            |e| match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(v), _) => format!("{}={v}", e["name"].as_str().unwrap_or("")),
                (_, Value::String(p)) => {
                    format!("{}=fieldRef:{p}", e["name"].as_str().unwrap_or(""))
                }
                _ => format!("{}=?", e["name"].as_str().unwrap_or("")),
            },
        )
        .collect()
}

/// Runs the scenario, telling `sink` what happens.
pub async fn run(sink: &mut dyn FnMut(String)) -> anyhow::Result<Summary> {
    let mut timeline = Timeline {
        started: Instant::now(),
        sink,
    };
    let mut summary = Summary::default();

    // 1. Registry with a multi-arch image; the opted-in namespace and the Deployment.
    let registry = Registry::start(RegistryOptions::default()).await;
    let v1 = registry
        .push_index(REPOSITORY, "latest", "v1", &PLATFORMS, false)
        .await;
    let image = format!("{}/{REPOSITORY}:latest", registry.host());
    timeline.say(format!(
        "registry on {} serves {image} -> {} (OCI index, amd64+arm64)",
        registry.base_url,
        short(&v1.digest)
    ));
    let api = FakeApiServer::start().await?;
    api.put(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {contract::INJECT_LABEL: contract::INJECT_ENABLED}}}));
    api.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": DEPLOYMENT}},
            "template": {
                "metadata": {"labels": {"app": DEPLOYMENT}, "annotations": {
                    contract::ANNOTATION_INTERVAL: "1s",
                    contract::ANNOTATION_REGISTRY_URL: registry.base_url
                }},
                "spec": {"containers": [{"name": CONTAINER, "image": image}]}
            }
        }
    }));
    timeline.say(format!(
        "namespace {NAMESPACE} labelled {}={}; Deployment {DEPLOYMENT} runs {image}",
        contract::INJECT_LABEL,
        contract::INJECT_ENABLED
    ));

    // 2. The webhook injects the pod the ReplicaSet controller creates.
    let certs_dir = tempfile::tempdir()?;
    let certs = generate_certificates(certs_dir.path());
    let webhook = Webhook::start(
        &certs,
        Some(&api),
        &["--sidecar-image", "pod-reloaded/sidecar:demo"],
    )
    .await;
    let world = World {
        api,
        registry,
        webhook,
        image,
        _certs_dir: certs_dir,
    };
    let first_rs = world.replica_set("6b8f7d9c5")?;
    let (patched, said) = world.admit(&first_rs).await?;
    summary.sidecar_env = env_summary(&patched);
    timeline.say(format!(
        "webhook injected {} with env [{}]",
        contract::SIDECAR_CONTAINER_NAME,
        summary.sidecar_env.join(", ")
    ));
    for warning in said {
        timeline.say(format!("webhook warning: {warning}"));
    }
    ensure!(
        patched["spec"]["serviceAccountName"] == contract::CHECKER_SERVICE_ACCOUNT,
        "pod not switched to the checker ServiceAccount"
    );
    let binding = format!(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/rolebindings/{}",
        contract::checker_role_binding_name(contract::CHECKER_SERVICE_ACCOUNT)
    );
    ensure!(
        world.api.get(&binding).is_some(),
        "the webhook did not create the RoleBinding"
    );
    timeline.say(format!(
        "webhook created ServiceAccount and RoleBinding {}/{}",
        NAMESPACE,
        contract::CHECKER_SERVICE_ACCOUNT
    ));

    // 3. The pod runs the digest the registry serves; its sidecar starts.
    let (_, first_sidecar) = world.run_pod(
        patched,
        "app-6b8f7d9c5-a1",
        &v1.digest,
        "2026-11-24T00:00:00Z",
    )?;
    timeline.say(format!(
        "pod app-6b8f7d9c5-a1 runs {}; sidecar started (interval 1s)",
        short(&v1.digest)
    ));

    // 4. Rounds without a change, then a push.
    world.rounds(&first_sidecar, 3).await?;
    ensure!(
        world.successful_patches() == 0,
        "patched although nothing changed"
    );
    let reads = world.pod_reads("app-6b8f7d9c5-a1");
    ensure!(
        reads == 1,
        "{reads} reads of the pod in 3 unchanged rounds: only the one at start was expected"
    );
    timeline.say("3 rounds: up to date, no patch, 1 API read (at start)");
    let v2 = world
        .registry
        .push_index(REPOSITORY, "latest", "v2", &PLATFORMS, false)
        .await;
    let pushed_at = Instant::now();
    timeline.say(format!(
        "pushed a new image: latest -> {}",
        short(&v2.digest)
    ));
    while world.successful_patches() == 0 {
        if pushed_at.elapsed() > INTERVAL + Duration::from_secs(2) {
            bail!(
                "no restart patch within interval + 2s of the push:\n{}",
                first_sidecar.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    summary.restart_latency = pushed_at.elapsed();
    let template = world.template()?;
    let annotations = &template["metadata"]["annotations"];
    let restarted_for = annotations[contract::ANNOTATION_RESTARTED_FOR]
        .as_str()
        .unwrap_or("");
    ensure!(
        restarted_for == format!("{CONTAINER}={}", v2.digest),
        "restarted-for is {restarted_for:?}"
    );
    let restarted_at = annotations[contract::ANNOTATION_RESTARTED_AT]
        .as_str()
        .unwrap_or("")
        .to_string();
    ensure!(!restarted_at.is_empty(), "no restartedAt annotation");
    timeline.say(format!(
        "restart patch after {:.2}s: restartedAt={restarted_at}, restarted-for={CONTAINER}={}",
        summary.restart_latency.as_secs_f64(),
        short(&v2.digest)
    ));
    world.rounds(&first_sidecar, 2).await?;
    summary.patches_after_change = world.successful_patches();
    ensure!(
        summary.patches_after_change == 1,
        "{} patches for one change",
        summary.patches_after_change
    );
    ensure!(
        world.events("Normal").len() == 1,
        "expected one Normal Event"
    );
    timeline.say(format!(
        "Event Normal {}: {}",
        world.events("Normal")[0]["reason"].as_str().unwrap_or(""),
        world.events("Normal")[0]["message"].as_str().unwrap_or("")
    ));

    // 5. The rollout: the old pod goes, a new one runs the new digest.
    drop(first_sidecar);
    world.api.delete(&format!(
        "/api/v1/namespaces/{NAMESPACE}/pods/app-6b8f7d9c5-a1"
    ));
    let second_rs = world.replica_set("7c9a8e0d6")?;
    let (patched, _) = world.admit(&second_rs).await?;
    let (_, new_sidecar) = world.run_pod(
        patched.clone(),
        "app-7c9a8e0d6-b1",
        &v2.digest,
        &crate::world::now(),
    )?;
    let pinned = patched["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or("")
        .to_string();
    ensure!(
        pinned.ends_with(&format!("@{}", v2.digest)),
        "the new pod is not pinned to the restart's digest: {pinned}"
    );
    timeline.say(format!(
        "webhook pinned the new pod to exactly what the restart rolled out: {}",
        pinned.replace(&v2.digest, short(&v2.digest))
    ));
    world.rollout_completes()?;
    world.rounds(&new_sidecar, 3).await?;
    ensure!(
        world.successful_patches() == 1,
        "patched again after the rollout"
    );
    ensure!(
        world.rollout_record().starts_with("succeeded "),
        "rollout not recorded as succeeded: {:?}",
        world.rollout_record()
    );
    let succeeded = world
        .events("Normal")
        .into_iter()
        .find(|e| e["reason"] == "RolloutSucceeded")
        .context("no RolloutSucceeded Event")?;
    timeline.say(format!(
        "rollout: pod app-7c9a8e0d6-b1 runs {}; its sidecar saw the Deployment done: Event Normal RolloutSucceeded: {}",
        short(&v2.digest),
        succeeded["message"].as_str().unwrap_or("")
    ));
    drop(new_sidecar);

    // A new pod whose pull did not take: still the old digest under restarted-for new.
    tokio::time::sleep(Duration::from_millis(1100)).await; // created after restartedAt (1s precision)
    let (_, stuck_sidecar) = world.run_pod(
        patched,
        "app-7c9a8e0d6-b2",
        &v1.digest,
        &crate::world::now(),
    )?;
    world.rounds(&stuck_sidecar, 3).await?;
    ensure!(
        world.successful_patches() == 1,
        "loop guard failed: patched again"
    );
    summary.warning_events = world.events("Warning").len();
    ensure!(
        summary.warning_events == 1,
        "expected one Warning Event, got {}",
        summary.warning_events
    );
    timeline.say(format!(
        "pod app-7c9a8e0d6-b2 still runs {} after the restart: no patch (loop guard), Event Warning: {}",
        short(&v1.digest),
        world.events("Warning")[0]["message"].as_str().unwrap_or("")
    ));
    drop(stuck_sidecar);

    // 6. Three replicas see the same change: exactly one patch.
    world.annotate_template(contract::ANNOTATION_ROLLOUT_TIMEOUT, ROLLOUT_TIMEOUT)?;
    let third_rs = world.replica_set("8d0b9f1e7")?;
    let mut sidecars = Vec::new();
    for i in 0..3 {
        let (patched, _) = world.admit(&third_rs).await?;
        let name = format!("app-8d0b9f1e7-c{i}");
        sidecars.push(
            world
                .run_pod(patched, &name, &v2.digest, &crate::world::now())?
                .1,
        );
    }
    world.rounds(&sidecars[0], 2).await?;
    let before = world.successful_patches();
    let v3 = world
        .registry
        .push_index(REPOSITORY, "latest", "v3", &PLATFORMS, false)
        .await;
    timeline.say(format!(
        "3 replicas with sidecars run {}; pushed latest -> {}",
        short(&v2.digest),
        short(&v3.digest)
    ));
    world
        .until("restart to v3", Duration::from_secs(15), |w| {
            w.successful_patches() > before
        })
        .await?;
    // The new pods come up ready (within the rollout timeout).
    world.rollout_completes()?;
    for sidecar in &sidecars {
        world.rounds(sidecar, 3).await?;
    }
    summary.patches_with_replicas = world.successful_patches() - before;
    let conflicts = world
        .api
        .requests_to("PATCH", &world.deployment_path())
        .iter()
        .filter(|r| r.status == 409)
        .count();
    ensure!(
        summary.patches_with_replicas == 1,
        "{} patches from 3 replicas",
        summary.patches_with_replicas
    );
    timeline.say(format!("3 sidecars, 1 patch (restarted-for={CONTAINER}={}), {conflicts} lost the resourceVersion race", short(&v3.digest)));
    ensure!(
        world.events("Warning").len() == summary.warning_events,
        "replicas waiting for the rollout warned"
    );
    world
        .until(
            "v3 rollout recorded as succeeded",
            Duration::from_secs(15),
            |w| w.rollout_record().starts_with("succeeded "),
        )
        .await?;

    // 7. A bad image: its pods crash-loop, the rollout is rolled back once, the digest is
    //    quarantined, and the next good push rolls out.
    let before = world.successful_patches();
    let bad = world
        .registry
        .push_index(REPOSITORY, "latest", "bad", &PLATFORMS, false)
        .await;
    timeline.say(format!(
        "pushed a bad image: latest -> {} (its pods will crash-loop; rollout-timeout {ROLLOUT_TIMEOUT})",
        short(&bad.digest)
    ));
    world
        .until("restart to the bad image", Duration::from_secs(15), |w| {
            w.successful_patches() == before + 1
        })
        .await?;
    world.rollout_stalls()?;
    timeline.say("restart patch; the new pods crash-loop: 0/1 ready");
    world
        .until("rollback", Duration::from_secs(30), |w| {
            w.successful_patches() == before + 2
        })
        .await?;
    let template = world.template()?;
    let rolled_back_to = template["metadata"]["annotations"][contract::ANNOTATION_RESTARTED_FOR]
        .as_str()
        .unwrap_or("")
        .to_string();
    ensure!(
        rolled_back_to == format!("{CONTAINER}={}", v3.digest),
        "rolled back to {rolled_back_to:?}, not to the previous digest"
    );
    let quarantined = world
        .api
        .get(&world.deployment_path())
        .and_then(|d| {
            d["metadata"]["annotations"][contract::ANNOTATION_QUARANTINED]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default();
    ensure!(
        quarantined == format!("{CONTAINER}={}", bad.digest),
        "quarantined is {quarantined:?}"
    );
    // The Event follows the rollback patch: wait for it rather than read it at once.
    let rollout_failed = |w: &World| {
        w.events("Warning")
            .into_iter()
            .find(|e| e["reason"] == "RolloutFailed")
    };
    world
        .until("RolloutFailed Event", Duration::from_secs(15), |w| {
            rollout_failed(w).is_some()
        })
        .await?;
    let failed = rollout_failed(&world).context("no RolloutFailed Event")?;
    timeline.say(format!(
        "Event Warning RolloutFailed: {}",
        failed["message"].as_str().unwrap_or("")
    ));
    timeline.say(format!(
        "rolled back in one patch: restarted-for={CONTAINER}={} (pods pinned to it again); quarantined {CONTAINER}={}",
        short(&v3.digest),
        short(&bad.digest)
    ));
    for sidecar in &sidecars {
        world.rounds(sidecar, 2).await?;
    }
    ensure!(
        world.successful_patches() == before + 2,
        "rolled forward to the quarantined digest"
    );
    timeline.say("2 rounds with the bad image still served: no patch (quarantined)");
    world.rollout_status(1)?;
    let rollouts_succeeded = |w: &World| {
        w.events("Normal")
            .iter()
            .filter(|e| e["reason"] == "RolloutSucceeded")
            .count()
    };
    let succeeded_before = rollouts_succeeded(&world);
    let good = world
        .registry
        .push_index(REPOSITORY, "latest", "good", &PLATFORMS, false)
        .await;
    world
        .until("restart to the good image", Duration::from_secs(15), |w| {
            w.successful_patches() == before + 3
        })
        .await?;
    world.rollout_completes()?;
    // The Event follows the record's patch: wait for both, as for RolloutFailed above.
    world
        .until("good rollout succeeded", Duration::from_secs(15), |w| {
            w.rollout_record().starts_with("succeeded ") && rollouts_succeeded(w) > succeeded_before
        })
        .await?;
    timeline.say(format!(
        "pushed a good image: latest -> {}: one restart, rollout succeeded",
        short(&good.digest)
    ));
    summary.patches_with_bad_image = world.successful_patches() - before;
    summary.rollbacks = world
        .events("Normal")
        .iter()
        .filter(|e| e["reason"] == "RolledBack")
        .count();
    summary.normal_events = world.events("Normal").len();
    summary.warning_events = world.events("Warning").len();
    drop(sidecars);
    summary.total = timeline.started.elapsed();
    timeline.say(format!("done in {:.1}s", summary.total.as_secs_f64()));
    Ok(summary)
}
