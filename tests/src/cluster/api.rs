//! A small REST client of the real API server for the tests, as the admin or as any
//! ServiceAccount (with a token from the TokenRequest API). JSON in, JSON out; every
//! answer keeps its status and the API server's `Warning` headers, which tests assert on.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::control_plane::ControlPlane;

/// The API server's answer to one request.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    /// `Warning` headers (deprecations, unknown fields, ...).
    pub warnings: Vec<String>,
}

impl Answer {
    pub fn ok(self) -> anyhow::Result<Value> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            anyhow::bail!(
                "HTTP {}: {}",
                self.status.as_u16(),
                self.body["message"].as_str().unwrap_or("")
            )
        }
    }
}

/// A client of the control plane, built on the caller's runtime (a reqwest client must
/// not outlive the runtime it was made on; each test makes its own).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// As the admin (`system:masters`).
    pub fn admin(plane: &ControlPlane) -> Self {
        let mut identity = plane.admin.cert_pem.clone();
        identity.push_str(&plane.admin.key_pem);
        let http = builder(plane)
            .identity(reqwest::Identity::from_pem(identity.as_bytes()).expect("admin identity"))
            .build()
            .expect("client builds");
        Self {
            http,
            base: plane.url.clone(),
            token: None,
        }
    }

    /// As the holder of `token` (a ServiceAccount's).
    pub fn with_token(plane: &ControlPlane, token: &str) -> Self {
        Self::with_token_and_agent(plane, token, "pod-reloaded-tests")
    }

    /// As the holder of `token`, with this `User-Agent` (the audit log records it).
    pub fn with_token_and_agent(plane: &ControlPlane, token: &str, agent: &str) -> Self {
        Self {
            http: builder(plane)
                .user_agent(agent)
                .build()
                .expect("client builds"),
            base: plane.url.clone(),
            token: Some(token.to_string()),
        }
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("accept", "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", content_type)
                .body(body.to_string());
        }
        let response = request.send().await?;
        let status = response.status();
        let warnings = response
            .headers()
            .get_all("warning")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let text = response.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer {
            status,
            body,
            warnings,
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let answer = self.request(Method::GET, path, "", None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        answer.ok().map(Some)
    }

    /// The items of a collection.
    pub async fn list(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let list = self
            .get(path)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{path}: not found"))?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Creates `object` in `collection`, with strict field validation.
    pub async fn create(&self, collection: &str, object: &Value) -> anyhow::Result<Value> {
        let path = format!("{collection}?fieldValidation=Strict");
        self.request(Method::POST, &path, "application/json", Some(object))
            .await?
            .ok()
    }

    pub async fn merge_patch(&self, path: &str, patch: &Value) -> anyhow::Result<Value> {
        let path = format!("{path}?fieldValidation=Strict");
        self.request(
            Method::PATCH,
            &path,
            "application/merge-patch+json",
            Some(patch),
        )
        .await?
        .ok()
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        let answer = self.request(Method::DELETE, path, "", None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        answer.ok().map(drop)
    }

    /// A token of ServiceAccount `namespace/name`, bound to a pod when given (as the
    /// kubelet asks for a projected token).
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        bound_pod: Option<(&str, &str)>,
    ) -> anyhow::Result<String> {
        let mut spec = json!({"audiences": [], "expirationSeconds": 3600});
        if let Some((pod, uid)) = bound_pod {
            spec["boundObjectRef"] =
                json!({"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid});
        }
        let request =
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let answer = self
            .request(
                Method::POST,
                &format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"),
                "application/json",
                Some(&request),
            )
            .await?
            .ok()?;
        answer["status"]["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("TokenRequest answered no token"))
    }
}

fn builder(plane: &ControlPlane) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(plane.ca_pem.as_bytes()).expect("CA parses"),
        )
        .timeout(Duration::from_secs(30))
}
