//! The kubelet's part, played by the harness: nothing here runs containers. For the pods
//! the controllers create in one namespace it reports what a node would: phase Running,
//! `containerStatuses[]` with the `imageID` a runtime reports (the digest the registry
//! serves for the pod's image at that moment: by tag, what the tag points to now; pinned,
//! that digest), Ready unless the digest was marked to crash-loop; and it runs the
//! injected sidecar binary as the pod's container, with a kubeconfig holding a real token
//! of the pod's ServiceAccount (TokenRequest, bound to the pod). A pod that goes away has
//! its sidecar killed.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pod_reloaded_contract as contract;
use serde_json::{json, Value};

use super::api::Api;
use super::control_plane::{control_plane, kubeconfig, KubeconfigUser};
use crate::process::Running;
use crate::workloads::command_from_pod;

/// A pod the kubelet runs.
struct PodRun {
    name: String,
    sidecar: Option<Running>,
}

#[derive(Default)]
struct State {
    pods: HashMap<String, PodRun>,
    /// Digests whose containers crash-loop (never Ready).
    crash_looping: HashSet<String>,
    /// Sidecar logs of pods that are gone, kept for failing tests to print.
    gone: Vec<(String, String)>,
    errors: Vec<String>,
}

pub struct Kubelet {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// How the kubelet runs sidecars.
#[derive(Clone, Default)]
pub struct KubeletOptions {
    /// Env added to every sidecar (e.g. `IMAGE_CHECKER_PLATFORM`).
    pub sidecar_env: Vec<(String, String)>,
    /// The test runs the sidecars itself (`--once`, through a proxy, ...).
    pub no_sidecars: bool,
}

impl Kubelet {
    /// Plays the kubelet for the pods of `namespace`, polling every 200 ms.
    pub fn start(namespace: &str, options: KubeletOptions) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let dir = tempfile::tempdir().expect("kubelet dir");
        let worker = Worker {
            namespace: namespace.to_string(),
            api: Api::admin(control_plane()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            state: state.clone(),
            dir: dir.path().to_path_buf(),
            options,
        };
        let task = tokio::spawn(async move {
            loop {
                if let Err(error) = worker.sync().await {
                    let mut state = worker.lock();
                    if state.errors.len() < 20 {
                        state.errors.push(format!("{error:#}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            state,
            task,
            _dir: dir,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Containers of pods that run `digest` crash-loop from now on (a bad image).
    pub fn crash_loop(&self, digest: &str) {
        self.lock().crash_looping.insert(digest.to_string());
    }

    /// The names of the pods it runs.
    pub fn pods(&self) -> Vec<String> {
        self.lock().pods.values().map(|p| p.name.clone()).collect()
    }

    /// Sidecar logs (running pods, then gone ones), for a failing test to print.
    pub fn sidecar_logs(&self) -> String {
        let state = self.lock();
        let mut out = String::new();
        for pod in state.pods.values() {
            if let Some(sidecar) = &pod.sidecar {
                out.push_str(&format!(
                    "---- sidecar of {} ----\n{}\n",
                    pod.name,
                    sidecar.output()
                ));
            }
        }
        for (name, log) in &state.gone {
            out.push_str(&format!("---- sidecar of {name} (pod gone) ----\n{log}\n"));
        }
        if !state.errors.is_empty() {
            out.push_str(&format!(
                "---- kubelet errors ----\n{}\n",
                state.errors.join("\n")
            ));
        }
        out
    }

    /// The concatenated output of every sidecar it ran.
    pub fn sidecar_outputs(&self) -> Vec<(String, String)> {
        let state = self.lock();
        let mut out: Vec<(String, String)> = state
            .pods
            .values()
            .filter_map(|p| p.sidecar.as_ref().map(|s| (p.name.clone(), s.output())))
            .collect();
        out.extend(state.gone.iter().cloned());
        out
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        if std::thread::panicking() {
            eprintln!("{}", self.sidecar_logs());
        }
    }
}

struct Worker {
    namespace: String,
    api: Api,
    http: reqwest::Client,
    state: Arc<Mutex<State>>,
    dir: PathBuf,
    options: KubeletOptions,
}

impl Worker {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn sync(&self) -> anyhow::Result<()> {
        let pods = self
            .api
            .list(&format!("/api/v1/namespaces/{}/pods", self.namespace))
            .await?;
        let present: HashSet<String> = pods
            .iter()
            .filter_map(|p| p["metadata"]["uid"].as_str().map(str::to_string))
            .collect();
        {
            let mut state = self.lock();
            let gone: Vec<String> = state
                .pods
                .keys()
                .filter(|uid| !present.contains(*uid))
                .cloned()
                .collect();
            for uid in gone {
                if let Some(run) = state.pods.remove(&uid) {
                    if let Some(sidecar) = &run.sidecar {
                        let log = sidecar.output();
                        state.gone.push((run.name.clone(), log));
                    }
                }
            }
        }
        for pod in pods {
            let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
            if self.lock().pods.contains_key(&uid)
                || !pod["metadata"]["deletionTimestamp"].is_null()
            {
                continue;
            }
            let run = self.run(&pod).await?;
            self.lock().pods.insert(uid, run);
        }
        Ok(())
    }

    /// Reports the pod running and starts its sidecar.
    async fn run(&self, pod: &Value) -> anyhow::Result<PodRun> {
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        let now = crate::world::now();
        let mut ready = true;
        let statuses = |containers: &Value| {
            let containers = containers.as_array().cloned().unwrap_or_default();
            async move {
                let mut out = Vec::new();
                for container in containers {
                    let image = container["image"].as_str().unwrap_or("").to_string();
                    let image_id = self.image_id(&image).await?;
                    out.push((container["name"].clone(), image, image_id));
                }
                anyhow::Ok(out)
            }
        };
        let containers = statuses(&pod["spec"]["containers"]).await?;
        let init_containers = statuses(&pod["spec"]["initContainers"]).await?;
        let crash_looping = self.lock().crash_looping.clone();
        let mut status_of = |(name, image, image_id): (Value, String, String)| {
            let bad = crash_looping.iter().any(|d| image_id.ends_with(d.as_str()));
            if bad {
                ready = false;
                json!({"name": name, "image": image, "imageID": image_id, "ready": false,
                       "started": false, "restartCount": 3,
                       "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                       "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": now, "finishedAt": now}}})
            } else {
                json!({"name": name, "image": image, "imageID": image_id, "ready": true,
                       "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}})
            }
        };
        let container_statuses: Vec<Value> = containers.into_iter().map(&mut status_of).collect();
        let init_statuses: Vec<Value> = init_containers.into_iter().map(&mut status_of).collect();
        let ready_text = if ready { "True" } else { "False" };
        let mut status = json!({
            "phase": "Running",
            "startTime": now,
            "podIP": "10.244.0.10",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready_text, "lastTransitionTime": now},
                {"type": "Ready", "status": ready_text, "lastTransitionTime": now}
            ],
            "containerStatuses": container_statuses
        });
        if !init_statuses.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses);
        }
        let path = format!("/api/v1/namespaces/{}/pods/{name}/status", self.namespace);
        let stored = self
            .api
            .merge_patch(&path, &json!({"status": status}))
            .await?;
        let sidecar = if has_sidecar(&stored) && !self.options.no_sidecars {
            Some(self.start_sidecar(&stored).await?)
        } else {
            None
        };
        Ok(PodRun { name, sidecar })
    }

    async fn start_sidecar(&self, pod: &Value) -> anyhow::Result<Running> {
        let name = pod["metadata"]["name"].as_str().unwrap_or("");
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
        let account = pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        let token = self
            .api
            .service_account_token(&self.namespace, account, Some((name, uid)))
            .await?;
        let plane = control_plane();
        let path = self.dir.join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            kubeconfig(&plane.url, &plane.ca_pem, KubeconfigUser::Token(&token)),
        )?;
        let extra: Vec<(&str, String)> = self
            .options
            .sidecar_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        Ok(Running::spawn(command_from_pod(&path, pod, &extra)))
    }

    /// What a runtime reports as `imageID` for `image`: `repo@digest`, the digest being
    /// the one pinned, or the one the registry serves for the tag now (images of other
    /// registries get a made-up digest: the sidecar does not watch them).
    async fn image_id(&self, image: &str) -> anyhow::Result<String> {
        let (name, digest) = match image.split_once('@') {
            Some((name, digest)) => (name, Some(digest.to_string())),
            None => (image, None),
        };
        let (repository, tag) = match name.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, tag),
            _ => (name, "latest"),
        };
        if let Some(digest) = digest {
            return Ok(format!("{repository}@{digest}"));
        }
        let Some((host, path)) = repository
            .split_once('/')
            .filter(|(host, _)| host.starts_with("127.0.0.1:"))
        else {
            let made_up = crate::registry::sha256_digest(image.as_bytes());
            return Ok(format!("docker.io/{repository}@{made_up}"));
        };
        let url = format!("http://{host}/v2/{path}/manifests/{tag}");
        let response = self
            .http
            .head(&url)
            .header(
                "accept",
                pod_reloaded_sidecar::registry::manifest::MANIFEST_ACCEPT,
            )
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "{url}: HTTP {}",
            response.status()
        );
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow::anyhow!("{url}: no digest"))?;
        Ok(format!("{repository}@{digest}"))
    }
}

fn has_sidecar(pod: &Value) -> bool {
    ["containers", "initContainers"].iter().any(|list| {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == contract::SIDECAR_CONTAINER_NAME)
    })
}
