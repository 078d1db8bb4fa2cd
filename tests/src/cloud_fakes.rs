//! The cloud providers' identity endpoints, played on 127.0.0.1: AWS STS
//! (`AssumeRoleWithWebIdentity`), ECR (`GetAuthorizationToken`, SigV4-signed), IMDSv2, the
//! GCE metadata server and Entra ID's token endpoint. ACR's `/oauth2/exchange` is played
//! by the fault proxy in front of the registry. Each checks what a real one checks that
//! matters here (the identity presented) and counts its calls.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::json;

/// The projected token IRSA mounts, as the fake STS expects it.
pub const WEB_IDENTITY_TOKEN: &str = "irsa-projected-token";
/// What STS and IMDS hand out.
pub const ACCESS_KEY: &str = "ASIAFAKEKEY";
pub const ECR_PASSWORD: &str = "ecr-password";
pub const GCP_TOKEN: &str = "gcp-access-token";
pub const FEDERATED_TOKEN: &str = "aks-federated-token";
pub const ENTRA_TOKEN: &str = "entra-access-token";
pub const ACR_REFRESH_TOKEN: &str = "acr-refresh-token";

#[derive(Default)]
struct FakeState {
    calls: BTreeMap<String, usize>,
    ecr_lifetime_seconds: u64,
}

#[derive(Clone)]
pub struct CloudFakes {
    state: Arc<Mutex<FakeState>>,
    pub address: SocketAddr,
}

impl CloudFakes {
    /// Starts the fakes; ECR tokens live `ecr_lifetime`.
    pub async fn start(ecr_lifetime: Duration) -> Self {
        let state = Arc::new(Mutex::new(FakeState {
            ecr_lifetime_seconds: ecr_lifetime.as_secs(),
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the cloud fakes");
        let address = listener.local_addr().expect("address");
        let app = Router::new().fallback(handle).with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { state, address }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Calls to one fake endpoint: `sts`, `ecr`, `imds`, `gce`, `entra`.
    pub fn calls(&self, endpoint: &str) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls
            .get(endpoint)
            .copied()
            .unwrap_or(0)
    }
}

fn count(state: &Arc<Mutex<FakeState>>, endpoint: &str) {
    *state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .calls
        .entry(endpoint.to_string())
        .or_default() += 1;
}

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.replace("%2F", "/").replace("%3A", ":").replace('+', " "))
    })
}

async fn handle(
    State(state): State<Arc<Mutex<FakeState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let body = String::from_utf8_lossy(&body).to_string();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let denied = |why: &str| (StatusCode::FORBIDDEN, why.to_string()).into_response();
    if path == "/sts/" && method == Method::POST {
        count(&state, "sts");
        if form_value(&body, "Action").as_deref() != Some("AssumeRoleWithWebIdentity")
            || form_value(&body, "WebIdentityToken").as_deref() != Some(WEB_IDENTITY_TOKEN)
        {
            return denied("<Error><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error>");
        }
        return format!(
            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
             <AccessKeyId>{ACCESS_KEY}</AccessKeyId><SecretAccessKey>fake-secret</SecretAccessKey>\
             <SessionToken>fake-session</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration>\
             </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
        )
        .into_response();
    }
    if path == "/ecr/" && method == Method::POST {
        count(&state, "ecr");
        let signed = header("authorization")
            .starts_with(&format!("AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/"))
            && header("authorization").contains("/ecr/aws4_request");
        if !signed
            || header("x-amz-target")
                != "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken"
            || header("x-amz-security-token") != "fake-session"
        {
            return denied("{\"__type\":\"AccessDeniedException\"}");
        }
        let lifetime = state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ecr_lifetime_seconds;
        let expires = jiff::Timestamp::now().as_second() + lifetime as i64;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{ECR_PASSWORD}"));
        return axum::Json(json!({"authorizationData": [{
            "authorizationToken": token, "expiresAt": expires as f64, "proxyEndpoint": "https://ecr"
        }]}))
        .into_response();
    }
    if let Some(rest) = path.strip_prefix("/imds/latest/") {
        count(&state, "imds");
        if rest == "api/token" && method == Method::PUT {
            return "imds-session".into_response();
        }
        if header("x-aws-ec2-metadata-token") != "imds-session" {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        return match rest {
            "meta-data/iam/security-credentials/" => "node-role".into_response(),
            "meta-data/iam/security-credentials/node-role" => axum::Json(json!({
                "AccessKeyId": ACCESS_KEY, "SecretAccessKey": "fake-secret", "Token": "fake-session",
                "Expiration": "2099-01-01T00:00:00Z"
            }))
            .into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        };
    }
    if path == "/computeMetadata/v1/instance/service-accounts/default/token" {
        count(&state, "gce");
        if header("metadata-flavor") != "Google" {
            return denied("missing Metadata-Flavor");
        }
        return axum::Json(
            json!({"access_token": GCP_TOKEN, "expires_in": 3599, "token_type": "Bearer"}),
        )
        .into_response();
    }
    if path.starts_with("/entra/") && path.ends_with("/oauth2/v2.0/token") {
        count(&state, "entra");
        if form_value(&body, "client_assertion").as_deref() != Some(FEDERATED_TOKEN)
            || form_value(&body, "grant_type").as_deref() != Some("client_credentials")
        {
            return (StatusCode::UNAUTHORIZED, "{\"error\":\"invalid_client\"}").into_response();
        }
        return axum::Json(
            json!({"access_token": ENTRA_TOKEN, "expires_in": 3600, "token_type": "Bearer"}),
        )
        .into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}
