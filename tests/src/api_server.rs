//! A real kube-apiserver (with its etcd, no controllers) for one test, behind a recording
//! proxy: the whole-binary tests of the sidecar and the webhook play the controllers
//! themselves (they write a Deployment's status, its ReplicaSet, its pods and their
//! `containerStatuses`) while every request the binaries make is served by the real API
//! server (validation, strategic and JSON merge patches, status subresources, watches,
//! `resourceVersion` preconditions) and recorded by the proxy, which can also answer
//! with faults and provoke a conflict.
//!
//! What the proxy cannot hand through: objects are written as the admin (RBAC is
//! covered by the end-to-end test on the full control plane), and `creationTimestamp` is
//! always the API server's own clock.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use crate::cluster::control_plane::{self, ControlPlane};

/// One request as the proxy passed it on (or answered it with a fault).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    /// The status the client got.
    pub status: u16,
    /// When the proxy answered it.
    pub at: std::time::Instant,
}

impl RecordedRequest {
    pub fn is_write(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD")
    }

    /// A list or a watch of a collection: what a client's informers send at start, not
    /// what one request it handles costs.
    pub fn is_list_or_watch(&self) -> bool {
        self.method == "GET" && is_collection(&self.path)
    }
}

/// A misbehaving API server, for requests of one method under one path prefix.
#[derive(Clone, Debug)]
pub enum ApiFault {
    /// Answers this status with a `Status` body (500, 403, 429, ...).
    Status(u16),
    /// Answers correctly, after this long.
    Slow(Duration),
    /// Starts an answer and breaks the connection in the middle of its body.
    Reset,
}

#[derive(Default)]
struct ProxyState {
    requests: Vec<RecordedRequest>,
    faults: Vec<(String, String, ApiFault)>,
    interfere_on_patch: Vec<String>,
}

struct Shared {
    state: Mutex<ProxyState>,
    upstream: String,
    admin: reqwest::Client,
}

/// Processes of this API server, killed when it is dropped.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Clone)]
pub struct ApiServer {
    shared: Arc<Shared>,
    plane: Arc<ControlPlane>,
    _processes: Arc<Processes>,
    pub address: std::net::SocketAddr,
    pub kubeconfig: PathBuf,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver for this test and the proxy in front of them.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    /// As `start`, with kube-controller-manager too (namespaces that finish deleting,
    /// garbage collection, workload controllers).
    pub async fn start_with_controllers() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(controllers: bool) -> anyhow::Result<Self> {
        let mut children = Vec::new();
        // Started on a thread of its own: it waits with blocking sleeps.
        let plane = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    control_plane::start(controllers, &mut |mut command, log| {
                        let file = std::fs::File::create(log).map_err(|e| e.to_string())?;
                        let stdout = file.try_clone().map_err(|e| e.to_string())?;
                        let child = command
                            .stdin(Stdio::null())
                            .stdout(stdout)
                            .stderr(file)
                            .spawn()
                            .map_err(|e| e.to_string())?;
                        let pid = child.id();
                        children.push(child);
                        Ok(pid)
                    })
                })
                .join()
                .unwrap_or_else(|_| Err("starting the API server panicked".to_string()))
        });
        let processes = Processes(children);
        let plane = plane.map_err(anyhow::Error::msg)?;
        let admin = admin_client(&plane)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(ProxyState::default()),
            upstream: plane.url.clone(),
            admin,
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let kubeconfig = plane.dir.join("proxy.kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{address}\nusers:\n- name: test\n  user:\n    token: through-the-proxy\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\n"
            ),
        )?;
        let server = Self {
            shared,
            plane: Arc::new(plane),
            _processes: Arc::new(processes),
            address,
            kubeconfig,
        };
        Ok(server)
    }

    fn lock(&self) -> MutexGuard<'_, ProxyState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs an admin request on a thread of its own (the tests call these from sync code
    /// inside their runtime).
    fn admin<T: Send>(&self, request: impl Future<Output = T> + Send) -> T {
        match crate::process::block_on_own_thread(request) {
            Ok(answer) => answer,
            Err(error) => panic!("an admin request to the API server: {error}"),
        }
    }

    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.shared.upstream);
        let plane = self.plane.clone();
        let body = body.cloned();
        let content_type = content_type.to_string();
        self.admin(async move {
            let Ok(client) = admin_client(&plane) else {
                return (0, Value::Null);
            };
            let mut request = client
                .request(method, url)
                .header("accept", "application/json");
            if let Some(body) = body {
                request = request
                    .header("content-type", content_type)
                    .body(body.to_string());
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response.json().await.unwrap_or(Value::Null);
                    (status, body)
                }
                Err(_) => (0, Value::Null),
            }
        })
    }

    /// Writes `object` as a controller or a person would (creating or replacing it, its
    /// namespace created first, its `status` written through the status subresource);
    /// returns the stored copy.
    pub fn put(&self, mut object: Value) -> Value {
        let path = object_path(&object);
        if let Some(namespace) = object["metadata"]["namespace"].as_str() {
            if object["kind"] != "Namespace" {
                self.ensure_namespace(namespace);
            }
        }
        let status = object.as_object_mut().and_then(|o| o.remove("status"));
        for field in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
        ] {
            if let Some(metadata) = object["metadata"].as_object_mut() {
                metadata.remove(field);
            }
        }
        if object["kind"] == "Rollout" {
            self.ensure_rollout_crd();
        }
        let (code, existing) = self.send(reqwest::Method::GET, &path, "", None);
        let exists = code == 200;
        if exists {
            object["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"].clone();
        }
        let collection = path
            .rsplit_once('/')
            .map_or(path.as_str(), |(c, _)| c)
            .to_string();
        // The ServiceAccount admission plugin reads accounts from its cache: a namespace's
        // new `default` account takes a moment to be seen there.
        let mut attempts = 0;
        let (code, stored) = loop {
            let (code, stored) = if exists {
                self.send(
                    reqwest::Method::PUT,
                    &path,
                    "application/json",
                    Some(&object),
                )
            } else {
                self.send(
                    reqwest::Method::POST,
                    &collection,
                    "application/json",
                    Some(&object),
                )
            };
            let waiting_for_account = code == 403
                && stored["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("error looking up service account"));
            attempts += 1;
            if !waiting_for_account || attempts > 30 {
                break (code, stored);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            (200..300).contains(&code),
            "the API server refused {path}: HTTP {code}: {}",
            stored["message"]
        );
        if let Some(status) = status {
            let mut with_status = stored;
            with_status["status"] = status;
            let (code, answer) = self.send(
                reqwest::Method::PUT,
                &format!("{path}/status"),
                "application/json",
                Some(&with_status),
            );
            assert!(
                (200..300).contains(&code),
                "the API server refused the status of {path}: HTTP {code}: {}",
                answer["message"]
            );
        }
        self.get(&path).unwrap_or(Value::Null)
    }

    /// Creates `namespace` (and its `default` account) unless it exists.
    pub fn ensure_namespace(&self, namespace: &str) {
        let path = format!("/api/v1/namespaces/{namespace}");
        if self.send(reqwest::Method::GET, &path, "", None).0 == 200 {
            return;
        }
        let object =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        self.send(
            reqwest::Method::POST,
            "/api/v1/namespaces",
            "application/json",
            Some(&object),
        );
        // What the ServiceAccount controller would make: pods need it to be admitted.
        let account =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
        self.send(
            reqwest::Method::POST,
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts"),
            "application/json",
            Some(&account),
        );
    }

    /// Installs Argo Rollouts' CRD (from the argo-rollouts module, as the end-to-end
    /// test does) the first time a Rollout is written.
    fn ensure_rollout_crd(&self) {
        let crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/rollouts.argoproj.io";
        if self.get(crd).is_none() {
            let path =
                crate::cluster::argo::rollout_crd().expect("the Rollout CRD (make control-plane)");
            let text = std::fs::read_to_string(&path).expect("the Rollout CRD file");
            let object: Value = serde_yaml::from_str(&text).expect("the Rollout CRD is YAML");
            self.send(
                reqwest::Method::POST,
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                "application/json",
                Some(&object),
            );
        }
        for _ in 0..300 {
            let established = self.get(crd).is_some_and(|crd| {
                crd["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
            if established && self.get("/apis/argoproj.io/v1alpha1/rollouts").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the Rollout CRD was not established");
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        let (code, object) = self.send(reqwest::Method::GET, path, "", None);
        (code == 200).then_some(object)
    }

    pub fn delete(&self, path: &str) -> Option<Value> {
        let before = self.get(path)?;
        let (code, _) = self.send(reqwest::Method::DELETE, path, "", None);
        (200..300).contains(&code).then_some(before)
    }

    /// The items of the collection `prefix` names (e.g. a namespace's events).
    pub fn list(&self, prefix: &str) -> Vec<Value> {
        let (_, list) = self.send(reqwest::Method::GET, prefix.trim_end_matches('/'), "", None);
        list["items"].as_array().cloned().unwrap_or_default()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The requests about single objects (reads and writes), lists and watches left out.
    pub fn object_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| !r.is_list_or_watch())
            .collect()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Requests with this method whose path is `path`.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    /// Before the next PATCH of `path` reaches the API server, another writer changes the
    /// object, so a patch carrying the old `resourceVersion` gets a real 409 Conflict.
    pub fn interfere_with_next_patch(&self, path: &str) {
        self.lock().interfere_on_patch.push(path.to_string());
    }

    /// From now on, answers `method` requests under `path_prefix` with `fault`.
    pub fn inject_fault(&self, method: &str, path_prefix: &str, fault: ApiFault) {
        self.lock()
            .faults
            .push((method.to_string(), path_prefix.to_string(), fault));
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }
}

fn admin_client(plane: &ControlPlane) -> anyhow::Result<reqwest::Client> {
    let mut identity = plane.admin.cert_pem.clone();
    identity.push_str(&plane.admin.key_pem);
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(plane.ca_pem.as_bytes())?)
        .identity(reqwest::Identity::from_pem(identity.as_bytes())?)
        .timeout(Duration::from_secs(600))
        .build()?)
}

/// The REST path of an object, from its apiVersion, kind, namespace and name.
pub fn object_path(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let kind = object["kind"].as_str().unwrap_or("");
    let namespace = object["metadata"]["namespace"].as_str();
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    let group_path = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    // Every kind the tests write forms its plural with an `s`.
    let plural = format!("{}s", kind.to_lowercase());
    match namespace {
        Some(ns) if kind != "Namespace" => format!("{group_path}/namespaces/{ns}/{plural}/{name}"),
        _ => format!("{group_path}/{plural}/{name}"),
    }
}

/// `/api/v1/namespaces/<ns>/<plural>`, `/apis/<group>/<version>/namespaces/<ns>/<plural>`,
/// or the same without the namespace: a collection across all namespaces.
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.first() {
        Some(&"api") => &parts[2.min(parts.len())..],
        Some(&"apis") => &parts[3.min(parts.len())..],
        _ => return false,
    };
    matches!(rest.len(), 1) || (rest.len() == 3 && rest[0] == "namespaces")
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()
    });
    (code, axum::Json(body)).into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    let query = uri.query().unwrap_or("").to_string();
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (fault, interfere) = {
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let fault = state
            .faults
            .iter()
            .find(|(m, prefix, _)| *m == method.as_str() && path.starts_with(prefix.as_str()))
            .map(|(_, _, fault)| fault.clone());
        let interfere = method == Method::PATCH
            && match state.interfere_on_patch.iter().position(|p| *p == path) {
                Some(i) => {
                    state.interfere_on_patch.remove(i);
                    true
                }
                None => false,
            };
        (fault, interfere)
    };
    let record = |answered: u16| {
        shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
            .push(RecordedRequest {
                method: method.to_string(),
                path: path.clone(),
                query: query.clone(),
                content_type: content_type.clone(),
                body: parsed.clone(),
                status: answered,
                at: std::time::Instant::now(),
            });
    };
    match fault {
        Some(ApiFault::Status(code)) => {
            record(code);
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return status(
                code,
                "Injected",
                format!("injected fault: HTTP {}", code.as_u16()),
            );
        }
        Some(ApiFault::Reset) => {
            record(0);
            let broken = futures_util::stream::iter([
                Ok::<_, std::io::Error>(Bytes::from_static(b"{\"kind\": \"Pod\", ")),
                Err(std::io::Error::other("injected fault: connection reset")),
            ]);
            return Response::builder()
                .header(axum::http::header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(broken))
                .unwrap_or_default();
        }
        Some(ApiFault::Slow(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    if interfere {
        // Another writer: an annotation of the test's changes the resourceVersion.
        let patch = json!({"metadata": {"annotations": {"test.pod-reloaded.io/interfered": rand::random::<u32>().to_string()}}});
        let _ = shared
            .admin
            .patch(format!("{}{path}", shared.upstream))
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string())
            .send()
            .await;
    }
    let url = format!(
        "{}{}",
        shared.upstream,
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = shared
        .admin
        .request(method.clone(), url)
        .body(body.to_vec());
    for name in ["accept", "content-type"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let upstream = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            record(502);
            return status(StatusCode::BAD_GATEWAY, "BadGateway", error.to_string());
        }
    };
    let code = upstream.status().as_u16();
    record(code);
    let mut response = Response::builder().status(code);
    for name in ["content-type", "warning"] {
        for value in upstream.headers().get_all(name) {
            response = response.header(name, value.clone());
        }
    }
    // Streamed through: watches stay open.
    response
        .body(Body::from_stream(upstream.bytes_stream()))
        .unwrap_or_default()
}
