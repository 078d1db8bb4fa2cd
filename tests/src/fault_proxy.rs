//! An HTTP proxy in front of the real registry that injects what the registry cannot
//! produce itself (500, 429 with `Retry-After`, a hang, a bad digest header) and plays a
//! Bearer-token registry with its own token endpoint. It counts every request, so tests
//! and benchmarks measure requests per round from outside the sidecar.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// What the proxy does to manifest requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    Status(u16),
    TooManyRequests {
        retry_after_seconds: u64,
    },
    /// Never answers (the client's timeout must fire).
    Hang,
    /// Replaces `Docker-Content-Digest` with this value.
    DigestHeader(String),
    /// Removes `Docker-Content-Digest` (some registries and proxies do not send it).
    NoDigestHeader,
    /// Removes `Content-Type` from manifest HEAD answers only (GETs keep it).
    NoContentTypeOnHead,
}

/// What the proxy does to requests of one method and exact path (in front of an API
/// server: any request, not only manifests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestFault {
    /// Answers this status with a Kubernetes `Status` body (500, 403, ...).
    Status(u16),
    /// Answers correctly, after this long.
    Slow(Duration),
    /// Starts the upstream answer and breaks the connection in the middle of its body.
    Reset,
}

/// Bearer-token auth played by the proxy.
#[derive(Clone, Debug)]
pub struct BearerAuth {
    /// Required credentials at the token endpoint; `None` means anonymous tokens.
    pub credentials: Option<(String, String)>,
    pub token_lifetime: Duration,
}

#[derive(Clone, Debug)]
pub struct ProxiedRequest {
    pub method: String,
    pub path: String,
    /// The query string (a token request names its scope there).
    pub query: String,
    pub authorization: Option<String>,
    pub at: Instant,
}

struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    fault: Fault,
    request_faults: Vec<(String, String, RequestFault)>,
    bearer: Option<BearerAuth>,
    tokens: HashMap<String, Instant>,
    requests: Vec<ProxiedRequest>,
    address: SocketAddr,
    referrers_api: bool,
}

#[derive(Clone)]
pub struct FaultProxy {
    state: Arc<Mutex<ProxyState>>,
    pub address: SocketAddr,
}

impl FaultProxy {
    pub async fn start(upstream: &str, bearer: Option<BearerAuth>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Self::start_with_client(upstream, bearer, client).await
    }

    /// In front of `upstream`, reached with `client` (e.g. one that trusts a test CA).
    pub async fn start_with_client(
        upstream: &str,
        bearer: Option<BearerAuth>,
        client: reqwest::Client,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let state = Arc::new(Mutex::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            client,
            fault: Fault::None,
            request_faults: Vec::new(),
            bearer,
            tokens: HashMap::new(),
            requests: Vec::new(),
            address,
            referrers_api: false,
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { state, address }
    }

    fn lock(&self) -> MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `host:port` as in image references.
    pub fn host(&self) -> String {
        self.address.to_string()
    }

    pub fn set_fault(&self, fault: Fault) {
        self.lock().fault = fault;
    }

    /// From now on, `method` requests of exactly `path` meet `fault`; replaces any other.
    pub fn set_request_fault(&self, method: &str, path: &str, fault: RequestFault) {
        self.lock().request_faults = vec![(method.to_string(), path.to_string(), fault)];
    }

    pub fn clear_request_faults(&self) {
        self.lock().request_faults.clear();
    }

    /// From now on, answers the OCI 1.1 referrers API, which distribution 2.8 lacks, from
    /// the registry's `sha256-<hex>` fallback tag (where cosign wrote the referrers for a
    /// registry without the API): a registry with the API, as far as a reader can tell.
    pub fn serve_referrers(&self) {
        self.lock().referrers_api = true;
    }

    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .count()
    }
}

async fn handle(
    State(state): State<Arc<Mutex<ProxyState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (upstream, client, fault, bearer, address, request_fault, referrers_api) = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.requests.push(ProxiedRequest {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().unwrap_or_default().to_string(),
            authorization: authorization.clone(),
            at: Instant::now(),
        });
        let request_fault = s
            .request_faults
            .iter()
            .find(|(m, p, _)| *m == method.as_str() && p == uri.path())
            .map(|(_, _, fault)| fault.clone());
        (
            s.upstream.clone(),
            s.client.clone(),
            s.fault.clone(),
            s.bearer.clone(),
            s.address,
            request_fault,
            s.referrers_api,
        )
    };
    match &request_fault {
        Some(RequestFault::Status(code)) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("injected by the test's fault proxy: HTTP {code}"), "code": code});
            return (status, axum::Json(body)).into_response();
        }
        Some(RequestFault::Slow(delay)) => tokio::time::sleep(*delay).await,
        Some(RequestFault::Reset) | None => {}
    }

    if uri.path() == "/token" {
        return token(&state, bearer, authorization.as_deref());
    }
    // Azure ACR's exchange of an Entra ID access token for a registry refresh token.
    if uri.path() == "/oauth2/exchange" {
        let form = String::from_utf8_lossy(&body);
        return if form
            .split('&')
            .any(|p| p == format!("access_token={}", crate::cloud_fakes::ENTRA_TOKEN))
        {
            axum::Json(serde_json::json!({"refresh_token": crate::cloud_fakes::ACR_REFRESH_TOKEN}))
                .into_response()
        } else {
            StatusCode::UNAUTHORIZED.into_response()
        };
    }
    if let Some(bearer) = &bearer {
        let valid = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| {
                let s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.tokens
                    .get(t)
                    .is_some_and(|expires| Instant::now() < *expires)
            });
        if !valid && uri.path().starts_with("/v2/") {
            let _ = bearer;
            let repository = uri
                .path()
                .trim_start_matches("/v2/")
                .split("/manifests/")
                .next()
                .unwrap_or("");
            let challenge = format!(
                "Bearer realm=\"http://{address}/token\",service=\"harness\",scope=\"repository:{repository}:pull\""
            );
            let mut response = (
                StatusCode::UNAUTHORIZED,
                "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
            )
                .into_response();
            response.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_str(&challenge).expect("header"),
            );
            return response;
        }
    }
    if referrers_api && method == Method::GET {
        if let Some((name, digest)) = uri
            .path()
            .trim_start_matches("/v2/")
            .split_once("/referrers/")
        {
            return referrers(
                &client,
                &upstream,
                name,
                digest,
                headers.get("authorization"),
            )
            .await;
        }
    }
    let is_manifest = uri.path().contains("/manifests/");
    let is_head = method == Method::HEAD;
    if is_manifest {
        match &fault {
            Fault::Status(code) => {
                return StatusCode::from_u16(*code)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                    .into_response()
            }
            Fault::TooManyRequests {
                retry_after_seconds,
            } => {
                let mut response = StatusCode::TOO_MANY_REQUESTS.into_response();
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(*retry_after_seconds));
                return response;
            }
            Fault::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return StatusCode::GATEWAY_TIMEOUT.into_response();
            }
            Fault::None
            | Fault::DigestHeader(_)
            | Fault::NoDigestHeader
            | Fault::NoContentTypeOnHead => {}
        }
    }

    let url = format!(
        "{upstream}{}",
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let mut request = client.request(method, &url).body(body.to_vec());
    for name in ["accept", "content-type"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    if bearer.is_none() {
        if let Some(value) = headers.get("authorization") {
            request = request.header("authorization", value);
        }
    }
    let upstream_response = match request.send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = upstream_response.status();
    let mut copied = HeaderMap::new();
    for (name, value) in upstream_response.headers() {
        if matches!(
            name.as_str(),
            "content-type"
                | "docker-content-digest"
                | "www-authenticate"
                | "location"
                | "retry-after"
        ) {
            copied.insert(name.clone(), value.clone());
        }
    }
    match (is_manifest, &fault) {
        (true, Fault::DigestHeader(value)) => {
            copied.insert(
                "docker-content-digest",
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        (true, Fault::NoDigestHeader) => {
            copied.remove("docker-content-digest");
        }
        (true, Fault::NoContentTypeOnHead) if is_head => {
            copied.remove("content-type");
        }
        _ => {}
    }
    let bytes = upstream_response.bytes().await.unwrap_or_default();
    let body = if request_fault == Some(RequestFault::Reset) {
        let half = bytes.slice(..bytes.len() / 2);
        Body::from_stream(futures_util::stream::iter([
            Ok(half),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected by the test's fault proxy",
            )),
        ]))
    } else {
        Body::from(bytes)
    };
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    *response.headers_mut() = copied;
    response
}

fn token(
    state: &Arc<Mutex<ProxyState>>,
    bearer: Option<BearerAuth>,
    authorization: Option<&str>,
) -> Response {
    let Some(bearer) = bearer else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some((user, password)) = &bearer.credentials {
        use base64::Engine as _;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        if authorization != Some(expected.as_str()) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    let token = format!("token-{:016x}", rand::random::<u64>());
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    s.tokens
        .insert(token.clone(), Instant::now() + bearer.token_lifetime);
    axum::Json(serde_json::json!({"token": token, "expires_in": bearer.token_lifetime.as_secs()}))
        .into_response()
}

/// The referrers index of `digest`: the fallback tag's index, or an empty one.
async fn referrers(
    client: &reqwest::Client,
    upstream: &str,
    name: &str,
    digest: &str,
    authorization: Option<&HeaderValue>,
) -> Response {
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let url = format!(
        "{upstream}/v2/{name}/manifests/{}",
        digest.replacen(':', "-", 1)
    );
    let mut request = client.get(&url).header("accept", INDEX);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let body = match request.send().await {
        Ok(r) if r.status().is_success() => r.bytes().await.unwrap_or_default().to_vec(),
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
            serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": []})
                .to_string()
                .into_bytes()
        }
        Ok(r) => {
            return StatusCode::from_u16(r.status().as_u16())
                .unwrap_or(StatusCode::BAD_GATEWAY)
                .into_response()
        }
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    ([("content-type", INDEX)], body).into_response()
}
