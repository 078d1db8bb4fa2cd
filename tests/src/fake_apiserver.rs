//! A small in-process Kubernetes API server for whole-binary tests.
//!
//! It keeps objects by path, assigns `uid`, `resourceVersion`, `generation` and
//! `creationTimestamp`,
//! enforces `resourceVersion` preconditions (409 Conflict), answers 409 AlreadyExists on
//! duplicate creates, applies JSON merge patches and JSON patches, and stores owner
//! references as given, and serves watches (`?watch=true`) of any collection, namespaced
//! or cluster-wide, from a `resourceVersion` on. Every request is recorded so tests can
//! assert on exactly what was sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

/// One request as the fake API server received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    /// The status the fake answered with.
    pub status: u16,
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

/// One change of an object, as a watch sends it.
#[derive(Clone, Debug)]
struct Change {
    version: u64,
    kind: &'static str,
    path: String,
    object: Value,
}

#[derive(Default)]
struct Store {
    objects: BTreeMap<String, Value>,
    /// Every change, for watches that start from an older `resourceVersion`.
    changes: Vec<Change>,
    watchers: Vec<tokio::sync::mpsc::UnboundedSender<Change>>,
    requests: Vec<RecordedRequest>,
    next_version: u64,
    /// Paths whose next PATCH is preceded by a concurrent write (to provoke a 409).
    interfere_on_patch: Vec<String>,
    /// Faults answered instead of the real thing: (method, path prefix, fault).
    faults: Vec<(String, String, ApiFault)>,
}

/// A misbehaving API server, for requests of one method under one path prefix.
#[derive(Clone, Debug)]
pub enum ApiFault {
    /// Answers this status with a `Status` body (500, 403, 429, ...).
    Status(u16),
    /// Answers correctly, after this long.
    Slow(std::time::Duration),
    /// Starts an answer and breaks the connection in the middle of its body.
    Reset,
}

impl Store {
    fn bump(&mut self) -> String {
        self.next_version += 1;
        self.next_version.to_string()
    }

    /// Stores `object` at `path` and tells the watches.
    fn insert(&mut self, path: String, object: Value) {
        let kind = if self.objects.contains_key(&path) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.objects.insert(path.clone(), object.clone());
        self.changed(kind, path, object);
    }

    fn remove(&mut self, path: &str) -> Option<Value> {
        let mut object = self.objects.remove(path)?;
        // A deletion is a change with its own resourceVersion, as on a real server.
        let version = self.bump();
        object["metadata"]["resourceVersion"] = json!(version);
        self.changed("DELETED", path.to_string(), object.clone());
        Some(object)
    }

    fn changed(&mut self, kind: &'static str, path: String, object: Value) {
        let change = Change {
            version: self.next_version,
            kind,
            path,
            object,
        };
        self.watchers
            .retain(|watcher| watcher.send(change.clone()).is_ok());
        self.changes.push(change);
    }
}

#[derive(Clone)]
pub struct FakeApiServer {
    store: Arc<Mutex<Store>>,
    pub address: SocketAddr,
    _kubeconfig_dir: Arc<tempfile::TempDir>,
    pub kubeconfig: PathBuf,
}

impl FakeApiServer {
    pub async fn start() -> anyhow::Result<Self> {
        let store = Arc::new(Mutex::new(Store::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let app = Router::new().fallback(handle).with_state(store.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(address))?;
        Ok(Self {
            store,
            address,
            _kubeconfig_dir: Arc::new(dir),
            kubeconfig,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores `object` as the API server would after a create; returns the stored copy.
    pub fn put(&self, mut object: Value) -> Value {
        let path = object_path(&object);
        let mut store = self.lock();
        let version = store.bump();
        let before = store.objects.get(&path).cloned();
        bump_generation(before.as_ref(), &mut object);
        stamp(&mut object, &version);
        store.insert(path, object.clone());
        object
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    pub fn delete(&self, path: &str) -> Option<Value> {
        self.lock().remove(path)
    }

    /// All objects whose path starts with `prefix` (e.g. a namespace's events).
    pub fn list(&self, prefix: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|(path, _)| path.starts_with(prefix))
            .map(|(_, object)| object.clone())
            .collect()
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

    /// Before the next PATCH of `path` is applied, another writer changes the object, so
    /// a patch carrying the old `resourceVersion` gets a real 409 Conflict.
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

fn kubeconfig_yaml(address: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{address}\n\
         users:\n- name: fake\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
         current-context: fake\n"
    )
}

/// `metadata.generation` as the API server keeps it for objects with a spec: 1 at
/// creation, incremented by every write that changes the spec (never by status or
/// metadata changes), so controllers' `observedGeneration` can be compared with it.
fn bump_generation(before: Option<&Value>, after: &mut Value) {
    if after.get("spec").is_none() {
        return;
    }
    let generation = match before {
        None => 1,
        Some(before) => {
            let previous = before["metadata"]["generation"].as_i64().unwrap_or(1);
            if before.get("spec") == after.get("spec") {
                previous
            } else {
                previous + 1
            }
        }
    };
    after["metadata"]["generation"] = json!(generation);
}

fn stamp(object: &mut Value, version: &str) {
    let metadata = &mut object["metadata"];
    metadata["resourceVersion"] = json!(version);
    if metadata.get("uid").and_then(Value::as_str).is_none() {
        metadata["uid"] = json!(format!("uid-{version}"));
    }
    if metadata
        .get("creationTimestamp")
        .and_then(Value::as_str)
        .is_none()
    {
        metadata["creationTimestamp"] = json!("2026-11-24T00:00:00Z");
    }
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
    let plural = format!("{}s", kind.to_lowercase());
    match namespace {
        Some(ns) if kind != "Namespace" => format!("{group_path}/namespaces/{ns}/{plural}/{name}"),
        _ => format!("{group_path}/{plural}/{name}"),
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()
    });
    (code, axum::Json(body)).into_response()
}

async fn handle(
    State(store): State<Arc<Mutex<Store>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let parsed: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(value) => value,
            Err(error) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("body is not JSON: {error}"),
                )
            }
        }
    };
    let fault = store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .faults
        .iter()
        .find(|(m, prefix, _)| *m == method.as_str() && path.starts_with(prefix.as_str()))
        .map(|(_, _, fault)| fault.clone());
    let record = |answered: u16| {
        let mut store = store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        store.requests.push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: uri.query().unwrap_or("").to_string(),
            content_type: content_type.clone(),
            body: parsed.clone(),
            status: answered,
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
                .body(axum::body::Body::from_stream(broken))
                .unwrap_or_default();
        }
        Some(ApiFault::Slow(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
    let mut store = store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    store.requests.push(RecordedRequest {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().unwrap_or("").to_string(),
        content_type: content_type.clone(),
        body: parsed.clone(),
        status: 0,
    });
    let response = match method {
        Method::GET => match store.objects.get(&path) {
            Some(object) => axum::Json(object.clone()).into_response(),
            None if is_collection(&path) && is_watch(uri.query().unwrap_or("")) => {
                watch(&mut store, &path, uri.query().unwrap_or(""))
            }
            None if is_collection(&path) => list(&store, &path, uri.query().unwrap_or("")),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{path} not found"),
            ),
        },
        Method::POST => create(&mut store, &path, parsed),
        Method::PATCH => patch(&mut store, &path, &content_type, parsed),
        Method::PUT => replace(&mut store, &path, parsed),
        Method::DELETE => match store.remove(&path) {
            Some(object) => axum::Json(object).into_response(),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{path} not found"),
            ),
        },
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} not supported"),
        ),
    };
    if let Some(recorded) = store.requests.last_mut() {
        recorded.status = response.status().as_u16();
    }
    response
}

/// `/api/v1/namespaces/<ns>/<plural>`, `/apis/<group>/<version>/namespaces/<ns>/<plural>`,
/// or the same without the namespace: a collection across all namespaces.
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        parts.as_slice(),
        ["api", _, "namespaces", _, _]
            | ["apis", _, _, "namespaces", _, _]
            | ["api", _, _]
            | ["apis", _, _, _]
    )
}

/// Whether the object at `path` belongs to `collection`, namespaced or cluster-wide.
fn in_collection(collection: &str, path: &str) -> bool {
    let Some((parent, _name)) = path.rsplit_once('/') else {
        return false;
    };
    if parent == collection {
        return true;
    }
    // `/apis/g/v/rolebindings` holds `/apis/g/v/namespaces/<ns>/rolebindings/<name>`.
    let Some((group_version, plural)) = collection.rsplit_once('/') else {
        return false;
    };
    parent
        .strip_prefix(group_version)
        .and_then(|rest| rest.strip_prefix("/namespaces/"))
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(namespace, rest)| !namespace.is_empty() && rest == plural)
}

fn is_watch(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair == "watch=true" || pair == "watch=1")
}

fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// A watch: the changes after `resourceVersion` (all of them without one), then each
/// change as it happens, one JSON event per line, until the client goes away.
fn watch(store: &mut Store, collection: &str, query: &str) -> Response {
    let selector = label_selector(query);
    let since: u64 = query_value(query, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let wanted = {
        let collection = collection.to_string();
        move |change: &Change| {
            in_collection(&collection, &change.path) && matches_labels(&change.object, &selector)
        }
    };
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    for change in store.changes.iter().filter(|c| c.version > since) {
        let _ = sender.send(change.clone());
    }
    store.watchers.push(sender);
    let events = futures_util::stream::unfold(receiver, move |mut receiver| {
        let wanted = wanted.clone();
        async move {
            loop {
                let change = receiver.recv().await?;
                if wanted(&change) {
                    let mut line = serde_json::to_vec(&json!({
                        "type": change.kind, "object": change.object
                    }))
                    .unwrap_or_default();
                    line.push(b'\n');
                    return Some((Ok::<_, std::io::Error>(Bytes::from(line)), receiver));
                }
            }
        }
    });
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from_stream(events))
        .unwrap_or_default()
}

/// `labelSelector=k=v[,k=v]`, equality only.
fn label_selector(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("labelSelector="))
        .flat_map(|s| {
            let decoded = s
                .replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/");
            decoded
                .split(',')
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn matches_labels(object: &Value, selector: &[(String, String)]) -> bool {
    selector
        .iter()
        .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

/// A list, filtered by `labelSelector=k=v[,k=v]` as the API server does for equality.
fn list(store: &Store, collection: &str, query: &str) -> Response {
    let selector = label_selector(query);
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|(path, object)| {
            in_collection(collection, path) && matches_labels(object, &selector)
        })
        .map(|(_, object)| object.clone())
        .collect();
    let kind = items
        .first()
        .and_then(|i| i["kind"].as_str())
        .map(|k| format!("{k}List"))
        .unwrap_or_else(|| "List".to_string());
    axum::Json(json!({
        "apiVersion": "v1", "kind": kind,
        "metadata": {"resourceVersion": store.next_version.to_string()},
        "items": items
    }))
    .into_response()
}

fn create(store: &mut Store, collection: &str, mut object: Value) -> Response {
    if !object.is_object() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "create needs an object".into(),
        );
    }
    let name = match object["metadata"]["name"].as_str() {
        Some(name) => name.to_string(),
        None => match object["metadata"]["generateName"].as_str() {
            Some(prefix) => {
                let name = format!("{prefix}{:05}", store.next_version + 1);
                object["metadata"]["name"] = json!(name);
                name
            }
            None => {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name is required".into(),
                )
            }
        },
    };
    let path = format!("{collection}/{name}");
    if store.objects.contains_key(&path) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{path} already exists"),
        );
    }
    if let Some(ns) = namespace_of(collection) {
        object["metadata"]["namespace"] = json!(ns);
    }
    let version = store.bump();
    bump_generation(None, &mut object);
    stamp(&mut object, &version);
    store.insert(path, object.clone());
    (StatusCode::CREATED, axum::Json(object)).into_response()
}

fn namespace_of(collection: &str) -> Option<&str> {
    let mut parts = collection.split('/');
    parts.find(|p| *p == "namespaces")?;
    parts.next()
}

fn precondition_fails(stored: &Value, sent: &Value) -> bool {
    match sent["metadata"]["resourceVersion"].as_str() {
        Some(expected) => stored["metadata"]["resourceVersion"].as_str() != Some(expected),
        None => false,
    }
}

fn conflict(path: &str) -> Response {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!("Operation cannot be fulfilled on {path}: the object has been modified; please apply your changes to the latest version and try again"),
    )
}

fn patch(store: &mut Store, path: &str, content_type: &str, body: Value) -> Response {
    if let Some(index) = store.interfere_on_patch.iter().position(|p| p == path) {
        store.interfere_on_patch.remove(index);
        let version = store.bump();
        if let Some(object) = store.objects.get_mut(path) {
            object["metadata"]["resourceVersion"] = json!(version);
            object["metadata"]["labels"]["concurrent-writer"] = json!(version);
        }
    }
    let Some(stored) = store.objects.get(path).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{path} not found"),
        );
    };
    let mut updated = stored.clone();
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    match media_type {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            if precondition_fails(&stored, &body) {
                return conflict(path);
            }
            json_patch::merge(&mut updated, &body);
        }
        "application/json-patch+json" => {
            let operations: json_patch::Patch = match serde_json::from_value(body) {
                Ok(ops) => ops,
                Err(error) => {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("bad JSON patch: {error}"),
                    )
                }
            };
            if let Err(error) = json_patch::patch(&mut updated, &operations) {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("JSON patch failed: {error}"),
                );
            }
        }
        other => {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("the fake API server does not support patch type {other:?}"),
            )
        }
    }
    let version = store.bump();
    bump_generation(Some(&stored), &mut updated);
    updated["metadata"]["resourceVersion"] = json!(version);
    store.insert(path.to_string(), updated.clone());
    axum::Json(updated).into_response()
}

fn replace(store: &mut Store, path: &str, mut body: Value) -> Response {
    let Some(stored) = store.objects.get(path).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{path} not found"),
        );
    };
    if precondition_fails(&stored, &body) {
        return conflict(path);
    }
    let version = store.bump();
    bump_generation(Some(&stored), &mut body);
    body["metadata"]["resourceVersion"] = json!(version);
    store.insert(path.to_string(), body.clone());
    axum::Json(body).into_response()
}
