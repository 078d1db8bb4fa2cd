//! The OCI distribution protocol, as much as the checker needs: `HEAD` a tag's manifest,
//! `GET` a manifest only when the HEAD cannot decide, and authenticate with the
//! `WWW-Authenticate` challenge (Bearer token, anonymous or with credentials; or Basic).
//!
//! Written on reqwest rather than with an OCI client crate: the checker must control
//! exactly which requests go out (one HEAD per tag per round, a token request only when
//! the cached token expired), see `Retry-After`, and validate every digest it is given.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_spec::image::{ImageIndex, ImageManifest};
use pod_reloaded_contract::is_sha256_digest;
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use sha2::{Digest as _, Sha256};

use crate::compare::{ManifestKind, RemoteDetails, RemoteTag, MANIFEST_ACCEPT};
use crate::credentials::{Credential, Credentials};

/// Largest manifest or token body read; real ones are a few KiB.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Token lifetime when the token server does not say (distribution spec default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are renewed this long before they expire, so none expires in flight.
const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(5);

/// Where one repository lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repository {
    /// `https://host[:port]` or `http://host[:port]`, without a trailing slash.
    pub base_url: String,
    /// Host used to look up credentials.
    pub host: String,
    /// Repository path, e.g. `library/nginx`.
    pub name: String,
}

impl Repository {
    fn manifest_url(&self, reference: &str) -> String {
        format!("{}/v2/{}/manifests/{reference}", self.base_url, self.name)
    }
}

/// The platform whose manifest the pod runs (the node's, which is ours).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn current() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    /// `os/arch[/variant]`, e.g. `linux/arm64/v8`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(os), Some(arch), variant, None) if !os.is_empty() && !arch.is_empty() => {
                Ok(Self {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: variant.filter(|v| !v.is_empty()).map(str::to_string),
                })
            }
            _ => Err(format!("{text:?} is not os/arch[/variant]")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{method} {url}: registry answered HTTP {status}")]
    Status {
        method: Method,
        url: String,
        status: u16,
    },
    #[error("{url}: rate limited (HTTP 429){}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        url: String,
        retry_after: Option<Duration>,
    },
    #[error("{url}: unauthorized: {reason}")]
    Unauthorized { url: String, reason: String },
    #[error("{url}: manifest not found (HTTP 404)")]
    NotFound { url: String },
    #[error("{url}: request failed: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url}: answer not understood: {reason}")]
    Unexpected { url: String, reason: String },
}

impl RegistryError {
    /// How long the registry asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn transport(url: &str, error: reqwest::Error) -> RegistryError {
    let reason = if error.is_timeout() {
        "timed out".to_string()
    } else {
        // reqwest's top-level message hides the cause (refused, TLS, ...).
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    };
    RegistryError::Transport {
        url: url.to_string(),
        reason,
    }
}

fn unexpected(url: &str, reason: impl Into<String>) -> RegistryError {
    RegistryError::Unexpected {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut values: HashMap<String, String> = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        values.insert(key, value.to_string());
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: values.remove("realm")?,
            service: values.remove("service"),
            scope: values.remove("scope"),
        }),
        _ => None,
    }
}

#[derive(Clone)]
enum CachedAuth {
    Basic(String),
    Bearer {
        header: String,
        renew_at: Instant,
        challenge: Challenge,
    },
}

/// A registry client shared by all checks of one sidecar.
pub struct RegistryClient {
    http: reqwest::Client,
    credentials: Mutex<Credentials>,
    /// Authorization per repository, so steady rounds send it up front (no 401 round trip).
    auth: Mutex<HashMap<Repository, CachedAuth>>,
    platform: Platform,
}

impl RegistryClient {
    pub fn new(http: reqwest::Client, credentials: Credentials, platform: Platform) -> Self {
        Self {
            http,
            credentials: Mutex::new(credentials),
            auth: Mutex::new(HashMap::new()),
            platform,
        }
    }

    pub fn set_credentials(&self, credentials: Credentials) {
        if let Ok(mut current) = self.credentials.lock() {
            *current = credentials;
        }
    }

    fn credential(&self, host: &str) -> Option<Credential> {
        self.credentials.lock().ok()?.for_host(host).cloned()
    }

    /// What `repository:tag` points to now: one HEAD (a GET only if the registry gives no
    /// digest header).
    pub async fn resolve_tag(
        &self,
        repository: &Repository,
        tag: &str,
    ) -> Result<RemoteTag, RegistryError> {
        let url = repository.manifest_url(tag);
        let response = self.send(repository, Method::HEAD, &url).await?;
        let response = check_status(Method::HEAD, &url, response)?;
        let media_type = header_text(response.headers(), CONTENT_TYPE);
        let digest = match response.headers().get("docker-content-digest") {
            Some(value) => {
                let digest = value.to_str().unwrap_or("").trim().to_string();
                if !is_sha256_digest(&digest) {
                    return Err(unexpected(
                        &url,
                        format!("Docker-Content-Digest {digest:?} is not sha256:<64 hex>"),
                    ));
                }
                digest
            }
            None => {
                // No digest header: the digest is the hash of the manifest bytes.
                let (_, body) = self.get_manifest(repository, tag).await?;
                format!("sha256:{}", hex(&Sha256::digest(&body)))
            }
        };
        let kind = ManifestKind::from_media_type(&media_type).ok_or_else(|| {
            unexpected(&url, format!("unknown manifest media type {media_type:?}"))
        })?;
        Ok(RemoteTag { digest, kind })
    }

    /// Reads the manifest behind `remote`: the manifests an index lists, and, when
    /// `want_config` (the pod reports a bare config digest), the config digest of the
    /// manifest for our platform.
    pub async fn inspect(
        &self,
        repository: &Repository,
        remote: &RemoteTag,
        want_config: bool,
    ) -> Result<RemoteDetails, RegistryError> {
        let (url, body) = self.get_verified(repository, &remote.digest).await?;
        let mut details = RemoteDetails::default();
        let manifest_body = match remote.kind {
            ManifestKind::Manifest => body,
            ManifestKind::Index => {
                let index: ImageIndex = serde_json::from_slice(&body)
                    .map_err(|e| unexpected(&url, format!("index does not parse: {e}")))?;
                details.index_manifests = index
                    .manifests()
                    .iter()
                    .map(|m| m.digest().to_string())
                    .collect();
                if !want_config {
                    return Ok(details);
                }
                let Some(child) = self.platform_manifest(&index) else {
                    return Err(unexpected(
                        &url,
                        format!("index has no manifest for {:?}", self.platform),
                    ));
                };
                self.get_verified(repository, &child).await?.1
            }
        };
        if want_config {
            let manifest: ImageManifest = serde_json::from_slice(&manifest_body)
                .map_err(|e| unexpected(&url, format!("manifest does not parse: {e}")))?;
            details.platform_config = Some(manifest.config().digest().to_string());
        }
        Ok(details)
    }

    fn platform_manifest(&self, index: &ImageIndex) -> Option<String> {
        let wanted = &self.platform;
        let candidates = index.manifests().iter().filter(|m| {
            m.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == wanted.os
                    && p.architecture().to_string() == wanted.architecture
            })
        });
        let mut first = None;
        for manifest in candidates {
            let variant = manifest
                .platform()
                .as_ref()
                .and_then(|p| p.variant().clone());
            if wanted.variant.is_none() || variant == wanted.variant {
                return Some(manifest.digest().to_string());
            }
            first.get_or_insert_with(|| manifest.digest().to_string());
        }
        first
    }

    /// GET a manifest by digest and check that its bytes hash to that digest.
    async fn get_verified(
        &self,
        repository: &Repository,
        digest: &str,
    ) -> Result<(String, Vec<u8>), RegistryError> {
        let (url, body) = self.get_manifest(repository, digest).await?;
        let actual = format!("sha256:{}", hex(&Sha256::digest(&body)));
        if actual != digest {
            return Err(unexpected(
                &url,
                format!("manifest bytes hash to {actual}, not {digest}"),
            ));
        }
        Ok((url, body))
    }

    async fn get_manifest(
        &self,
        repository: &Repository,
        reference: &str,
    ) -> Result<(String, Vec<u8>), RegistryError> {
        let url = repository.manifest_url(reference);
        let response = self.send(repository, Method::GET, &url).await?;
        let response = check_status(Method::GET, &url, response)?;
        let body = read_limited(&url, response).await?;
        Ok((url, body))
    }

    /// Sends with the cached authorization; on a 401, answers the challenge once.
    async fn send(
        &self,
        repository: &Repository,
        method: Method,
        url: &str,
    ) -> Result<Response, RegistryError> {
        let cached = self.cached_authorization(repository).await?;
        let response = self.request(method.clone(), url, cached.as_deref()).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let header = header_text(response.headers(), WWW_AUTHENTICATE);
        let challenge = parse_challenge(&header).ok_or_else(|| RegistryError::Unauthorized {
            url: url.to_string(),
            reason: format!("unsupported challenge {header:?}"),
        })?;
        let authorization = self.answer(repository, &challenge).await?;
        let response = self.request(method, url, Some(&authorization)).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            self.forget(repository);
            return Err(RegistryError::Unauthorized {
                url: url.to_string(),
                reason: "credentials rejected".to_string(),
            });
        }
        Ok(response)
    }

    async fn request(
        &self,
        method: Method,
        url: &str,
        authorization: Option<&str>,
    ) -> Result<Response, RegistryError> {
        let mut request = self
            .http
            .request(method, url)
            .header(ACCEPT, MANIFEST_ACCEPT);
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        request.send().await.map_err(|e| transport(url, e))
    }

    fn forget(&self, repository: &Repository) {
        if let Ok(mut auth) = self.auth.lock() {
            auth.remove(repository);
        }
    }

    /// The Authorization header to send up front; renews an expired token first.
    async fn cached_authorization(
        &self,
        repository: &Repository,
    ) -> Result<Option<String>, RegistryError> {
        let cached = self
            .auth
            .lock()
            .ok()
            .and_then(|a| a.get(repository).cloned());
        match cached {
            None => Ok(None),
            Some(CachedAuth::Basic(header)) => Ok(Some(header)),
            Some(CachedAuth::Bearer {
                header, renew_at, ..
            }) if Instant::now() < renew_at => Ok(Some(header)),
            Some(CachedAuth::Bearer { challenge, .. }) => {
                self.answer(repository, &challenge).await.map(Some)
            }
        }
    }

    /// Answers a challenge and caches the result for the repository.
    async fn answer(
        &self,
        repository: &Repository,
        challenge: &Challenge,
    ) -> Result<String, RegistryError> {
        let credential = self.credential(&repository.host);
        let cached = match challenge {
            Challenge::Basic => {
                let credential = credential.ok_or_else(|| RegistryError::Unauthorized {
                    url: repository.base_url.clone(),
                    reason: format!(
                        "registry wants Basic auth and no pull secret has credentials for {}",
                        repository.host
                    ),
                })?;
                CachedAuth::Basic(basic_header(&credential))
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope
                    .clone()
                    .unwrap_or_else(|| format!("repository:{}:pull", repository.name));
                let (token, lifetime) = self
                    .fetch_token(realm, service.as_deref(), &scope, credential.as_ref())
                    .await?;
                CachedAuth::Bearer {
                    header: format!("Bearer {token}"),
                    renew_at: Instant::now() + lifetime.saturating_sub(TOKEN_RENEW_MARGIN),
                    challenge: challenge.clone(),
                }
            }
        };
        let header = match &cached {
            CachedAuth::Basic(header) | CachedAuth::Bearer { header, .. } => header.clone(),
        };
        if let Ok(mut auth) = self.auth.lock() {
            auth.insert(repository.clone(), cached);
        }
        Ok(header)
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        credential: Option<&Credential>,
    ) -> Result<(String, Duration), RegistryError> {
        let mut query = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm).query(&query);
        if let Some(credential) = credential {
            request = request.header(AUTHORIZATION, basic_header(credential));
        }
        let response = request.send().await.map_err(|e| transport(realm, e))?;
        if matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(RegistryError::Unauthorized {
                url: realm.to_string(),
                reason: format!("token server answered HTTP {}", response.status().as_u16()),
            });
        }
        let response = check_status(Method::GET, realm, response)?;
        let body = read_limited(realm, response).await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| unexpected(realm, format!("token response does not parse: {e}")))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unexpected(realm, "token response has no token"))?;
        let lifetime = parsed
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Ok((token, lifetime))
    }
}

fn basic_header(credential: &Credential) -> String {
    use base64::Engine as _;
    let raw = format!("{}:{}", credential.username, credential.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn header_text(headers: &HeaderMap, name: reqwest::header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn check_status(method: Method, url: &str, response: Response) -> Result<Response, RegistryError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    Err(match status {
        StatusCode::NOT_FOUND => RegistryError::NotFound {
            url: url.to_string(),
        },
        StatusCode::TOO_MANY_REQUESTS => RegistryError::RateLimited {
            url: url.to_string(),
            retry_after: parse_retry_after(&header_text(response.headers(), RETRY_AFTER)),
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized {
            url: url.to_string(),
            reason: format!("HTTP {}", status.as_u16()),
        },
        _ => RegistryError::Status {
            method,
            url: url.to_string(),
            status: status.as_u16(),
        },
    })
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

async fn read_limited(url: &str, mut response: Response) -> Result<Vec<u8>, RegistryError> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_BODY_BYTES as u64)
    {
        return Err(unexpected(url, "body larger than 4 MiB"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| transport(url, e))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(unexpected(url, "body larger than 4 MiB"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="http://127.0.0.1:1/token", scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: None,
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None, "no realm");
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after(""), None);
    }

    #[test]
    fn platforms() {
        assert_eq!(
            Platform::parse("linux/arm64/v8"),
            Ok(Platform {
                os: "linux".into(),
                architecture: "arm64".into(),
                variant: Some("v8".into())
            })
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/amd64/v1/x").is_err());
        assert_eq!(Platform::current().os, "linux");
    }
}
