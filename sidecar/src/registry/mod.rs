//! The OCI distribution protocol, as much as the checker needs: `HEAD` a tag's manifest,
//! `GET` a manifest only when the HEAD cannot decide, redirects by one rule, and one retry
//! of a request the registry answered 401, with what `auth` (pull secrets from
//! `credentials`, cloud logins from `cloud`, tokens) answers its challenge. `manifest`
//! holds the media types and the manifest fields read.
//!
//! Written on reqwest rather than with an OCI client crate: the checker must control
//! exactly which requests go out (one HEAD per tag per round, a token request only when
//! the cached token expired), see `Retry-After`, and validate every digest it is given.

pub mod auth;
pub mod cloud;
pub mod credentials;
pub mod manifest;

use std::time::Duration;

use pod_reloaded_contract::is_sha256_digest;
use reqwest::header::{
    HeaderMap, HeaderName, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode, Url};
use sha2::{Digest as _, Sha256};

use self::auth::{challenge_of, Authenticator};
use self::cloud::CloudLogin;
use self::credentials::{Credential, Credentials};
use self::manifest::{
    Index, Manifest, ManifestKind, MediaTypeOnly, RemoteDetails, RemoteTag, MANIFEST_ACCEPT,
};

/// `Docker-Content-Digest`: the digest a registry says a manifest has.
const CONTENT_DIGEST: &str = "docker-content-digest";
use crate::platform::Platform;

/// Largest manifest or token body read; real ones are a few KiB.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most redirects followed for one request (a registry sends at most one, to a CDN).
pub const MAX_REDIRECTS: usize = 5;
/// Longest `Retry-After` obeyed: a registry asking for more would park the checker for
/// good; it is asked again after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Where one repository lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Repository {
    /// `https://host[:port][/prefix]` or `http://…`, without a trailing slash.
    pub base_url: String,
    /// Host used to look up credentials.
    pub host: String,
    /// The image's registry host (where the image says it comes from, whatever mirror is
    /// asked): it decides which cloud provider, if any, logs in.
    pub registry: String,
    /// Repository path, e.g. `library/nginx`.
    pub name: String,
}

impl Repository {
    fn manifest_url(&self, reference: &str) -> String {
        format!("{}/v2/{}/manifests/{reference}", self.base_url, self.name)
    }
}

/// The HTTP client of every registry and cloud-login request: it follows no redirect by
/// itself, so that `RegistryClient` decides each hop (never from HTTPS to HTTP, and
/// credentials only to the same scheme, host and port).
pub fn http_client(builder: reqwest::ClientBuilder) -> reqwest::Result<reqwest::Client> {
    builder.redirect(reqwest::redirect::Policy::none()).build()
}

/// A manifest whose bytes were checked: they parse as a manifest or index of a media type
/// we know, and hash to `digest` (which the registry's `Docker-Content-Digest`, when it
/// sent one, names too).
struct VerifiedManifest {
    url: String,
    digest: String,
    kind: ManifestKind,
    body: Vec<u8>,
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
        pod_reloaded_bootstrap::error_chain(&error)
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

/// A registry client shared by all checks of one sidecar.
pub struct RegistryClient {
    http: reqwest::Client,
    /// Credentials, cloud logins and what to send up front (`auth`).
    auth: Authenticator,
    platform: Platform,
}

impl RegistryClient {
    /// `http` is built with `http_client` (no automatic redirects); `RegistryClient::http`
    /// hands the built client to the cloud logins.
    pub fn new(
        http: reqwest::ClientBuilder,
        credentials: Credentials,
        platform: Platform,
    ) -> reqwest::Result<Self> {
        let http = http_client(http)?;
        Ok(Self {
            auth: Authenticator::new(http.clone(), credentials),
            http,
            platform,
        })
    }

    /// The HTTP client, for the cloud logins (it follows no redirect).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Logs in to cloud registries (ECR, Artifact Registry/GCR, ACR) with the pod's
    /// identity when no pull secret has credentials for them.
    pub fn with_cloud_login(mut self, cloud: CloudLogin) -> Self {
        self.auth = self.auth.with_cloud_login(cloud);
        self
    }

    pub fn set_credentials(&self, credentials: Credentials) {
        self.auth.set_credentials(credentials);
    }

    /// What `repository:tag` points to now: one HEAD, and a GET only if the HEAD gives no
    /// digest or no media type. A digest from a HEAD is trusted only as `sha256:<64 hex>`;
    /// from a GET, only as the hash of a body that parses as a manifest we know.
    pub async fn resolve_tag(
        &self,
        repository: &Repository,
        tag: &str,
    ) -> Result<RemoteTag, RegistryError> {
        let url = repository.manifest_url(tag);
        let response = self.send(repository, Method::HEAD, &url).await?;
        let response = check_status(Method::HEAD, &url, response)?;
        let headers = response.headers();
        let head_digest = single_header(&url, headers, CONTENT_DIGEST)?
            .map(|digest| checked_digest(&url, &digest))
            .transpose()?;
        let head_kind = single_header(&url, headers, CONTENT_TYPE.as_str())?
            .filter(|media_type| !media_type.is_empty())
            .map(|media_type| known_media_type(&url, &media_type))
            .transpose()?;
        if let (Some(digest), Some(kind)) = (&head_digest, head_kind) {
            return Ok(RemoteTag {
                digest: digest.clone(),
                kind,
            });
        }
        // Some registries and proxies leave these off a HEAD: the GET says the same, and
        // its body is verified before anything is read from it.
        let manifest = self.fetch_manifest(repository, tag).await?;
        if let Some(digest) = head_digest.filter(|d| *d != manifest.digest) {
            return Err(unexpected(
                &url,
                format!(
                    "the HEAD named {digest}, the GET's body hashes to {}",
                    manifest.digest
                ),
            ));
        }
        if let Some(kind) = head_kind.filter(|k| *k != manifest.kind) {
            return Err(unexpected(
                &url,
                format!(
                    "the HEAD said {kind:?}, the GET's body is a {:?}",
                    manifest.kind
                ),
            ));
        }
        Ok(RemoteTag {
            digest: manifest.digest,
            kind: manifest.kind,
        })
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
        let VerifiedManifest {
            url, kind, body, ..
        } = self.get_verified(repository, &remote.digest).await?;
        if kind != remote.kind {
            return Err(unexpected(
                &url,
                format!("the tag was a {:?}, its digest is a {kind:?}", remote.kind),
            ));
        }
        let mut details = RemoteDetails::default();
        let manifest_body = match kind {
            ManifestKind::Manifest => {
                details.platform_manifest = Some(remote.digest.clone());
                body
            }
            ManifestKind::Index => {
                let index: Index = serde_json::from_slice(&body)
                    .map_err(|e| unexpected(&url, format!("index does not parse: {e}")))?;
                details.index_manifests =
                    index.manifests.iter().map(|m| m.digest.clone()).collect();
                details.platform_manifest = index.manifest_for(&self.platform).map(str::to_string);
                if !want_config {
                    return Ok(details);
                }
                let Some(child) = index.manifest_for(&self.platform) else {
                    return Err(unexpected(
                        &url,
                        format!("index has no manifest for {}", self.platform),
                    ));
                };
                let child = checked_digest(&url, child)?;
                let child = self.get_verified(repository, &child).await?;
                if child.kind != ManifestKind::Manifest {
                    return Err(unexpected(&child.url, "an index's child is not a manifest"));
                }
                child.body
            }
        };
        if want_config {
            let manifest: Manifest = serde_json::from_slice(&manifest_body)
                .map_err(|e| unexpected(&url, format!("manifest does not parse: {e}")))?;
            details.platform_config = Some(checked_digest(&url, &manifest.config.digest)?);
        }
        Ok(details)
    }

    /// The manifest for our platform behind `digest`: its child for our platform when it
    /// is an index, the digest itself when it is a single manifest. `None` when an index
    /// has no manifest for our platform. One GET.
    pub async fn platform_manifest_of(
        &self,
        repository: &Repository,
        digest: &str,
    ) -> Result<Option<String>, RegistryError> {
        let VerifiedManifest {
            url, kind, body, ..
        } = self.get_verified(repository, digest).await?;
        if kind == ManifestKind::Manifest {
            return Ok(Some(digest.to_string()));
        }
        let index = serde_json::from_slice::<Index>(&body)
            .map_err(|e| unexpected(&url, format!("index does not parse: {e}")))?;
        index
            .manifest_for(&self.platform)
            .map(|child| checked_digest(&url, child))
            .transpose()
    }

    /// The referrers of `digest` (OCI 1.1): the index the registry answers, verified as
    /// one; `None` when the registry has no referrers API (it answers 404).
    pub async fn referrers(
        &self,
        repository: &Repository,
        digest: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let url = format!(
            "{}/v2/{}/referrers/{digest}",
            repository.base_url, repository.name
        );
        let response = self.send(repository, Method::GET, &url).await?;
        let body = match check_status(Method::GET, &url, response) {
            Ok(response) => read_limited(&url, response).await?,
            Err(RegistryError::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        serde_json::from_slice::<Index>(&body)
            .map_err(|e| unexpected(&url, format!("the referrers index does not parse: {e}")))?;
        Ok(Some(body))
    }

    /// A manifest or index by tag or digest, verified (by digest: its bytes hash to it);
    /// `None` when there is none.
    pub async fn manifest_if_any(
        &self,
        repository: &Repository,
        reference: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let fetched = if reference.starts_with("sha256:") {
            self.get_verified(repository, reference).await
        } else {
            self.fetch_manifest(repository, reference).await
        };
        match fetched {
            Ok(manifest) => Ok(Some(manifest.body)),
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// A blob by digest, whose bytes must hash to it (at most 4 MiB).
    pub async fn blob(
        &self,
        repository: &Repository,
        digest: &str,
    ) -> Result<Vec<u8>, RegistryError> {
        let url = format!(
            "{}/v2/{}/blobs/{}",
            repository.base_url,
            repository.name,
            checked_digest(&repository.base_url, digest)?
        );
        let response = self.send(repository, Method::GET, &url).await?;
        let response = check_status(Method::GET, &url, response)?;
        let body = read_limited(&url, response).await?;
        let actual = format!("sha256:{}", hex(&Sha256::digest(&body)));
        if actual != digest {
            return Err(unexpected(
                &url,
                format!("blob bytes hash to {actual}, not {digest}"),
            ));
        }
        Ok(body)
    }

    /// GET a manifest by digest: verified, and its bytes hash to that digest.
    async fn get_verified(
        &self,
        repository: &Repository,
        digest: &str,
    ) -> Result<VerifiedManifest, RegistryError> {
        let manifest = self.fetch_manifest(repository, digest).await?;
        if manifest.digest != digest {
            return Err(unexpected(
                &manifest.url,
                format!("manifest bytes hash to {}, not {digest}", manifest.digest),
            ));
        }
        Ok(manifest)
    }

    /// GET a manifest by tag or digest and verify it: a `Content-Type` and a declared
    /// `mediaType`, where present, name the same known type; the body parses as that
    /// type; a `Docker-Content-Digest` names the body's own hash.
    async fn fetch_manifest(
        &self,
        repository: &Repository,
        reference: &str,
    ) -> Result<VerifiedManifest, RegistryError> {
        let url = repository.manifest_url(reference);
        let response = self.send(repository, Method::GET, &url).await?;
        let response = check_status(Method::GET, &url, response)?;
        let content_type = single_header(&url, response.headers(), CONTENT_TYPE.as_str())?;
        let named_digest = single_header(&url, response.headers(), CONTENT_DIGEST)?;
        let body = read_limited(&url, response).await?;
        let digest = format!("sha256:{}", hex(&Sha256::digest(&body)));
        if let Some(named) = named_digest {
            if checked_digest(&url, &named)? != digest {
                return Err(unexpected(
                    &url,
                    format!("Docker-Content-Digest names {named}, the body hashes to {digest}"),
                ));
            }
        }
        let declared = serde_json::from_slice::<MediaTypeOnly>(&body)
            .map_err(|e| unexpected(&url, format!("manifest is not a JSON object: {e}")))?
            .media_type;
        let kind = match (content_type.filter(|t| !t.trim().is_empty()), declared) {
            (None, None) => {
                return Err(unexpected(&url, "manifest has no media type"));
            }
            (Some(media_type), None) | (None, Some(media_type)) => {
                known_media_type(&url, &media_type)?
            }
            (Some(header), Some(declared)) => {
                let kind = known_media_type(&url, &declared)?;
                if known_media_type(&url, &header)? != kind {
                    return Err(unexpected(
                        &url,
                        format!("Content-Type {header:?} and the body's mediaType {declared:?} disagree"),
                    ));
                }
                kind
            }
        };
        let parses = match kind {
            ManifestKind::Index => serde_json::from_slice::<Index>(&body).map(drop),
            ManifestKind::Manifest => serde_json::from_slice::<Manifest>(&body).map(drop),
        };
        parses.map_err(|e| unexpected(&url, format!("{kind:?} does not parse: {e}")))?;
        Ok(VerifiedManifest {
            url,
            digest,
            kind,
            body,
        })
    }

    /// Sends with the cached authorization; on a 401, answers the challenge once.
    async fn send(
        &self,
        repository: &Repository,
        method: Method,
        url: &str,
    ) -> Result<Response, RegistryError> {
        let cached = self.auth.header(repository).await?;
        let response = self.request(method.clone(), url, cached.as_deref()).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge =
            challenge_of(response.headers().get_all(WWW_AUTHENTICATE)).map_err(|reason| {
                RegistryError::Unauthorized {
                    url: url.to_string(),
                    reason,
                }
            })?;
        // Each matching credential in turn, as the kubelet tries them; anonymous when none.
        let mut candidates: Vec<Option<Credential>> = self
            .auth
            .credentials(repository)
            .await?
            .into_iter()
            .map(Some)
            .collect();
        if candidates.is_empty() {
            candidates.push(None);
        }
        let mut refused = None;
        for credential in candidates {
            match self.auth.answer(repository, &challenge, credential).await {
                Ok(authorization) => {
                    let response = self
                        .request(method.clone(), url, Some(&authorization))
                        .await?;
                    if response.status() != StatusCode::UNAUTHORIZED {
                        return Ok(response);
                    }
                    refused = Some(RegistryError::Unauthorized {
                        url: url.to_string(),
                        reason: "credentials rejected".to_string(),
                    });
                }
                Err(error @ RegistryError::Unauthorized { .. }) => refused = Some(error),
                Err(error) => return Err(error),
            }
        }
        self.auth.forget(repository);
        Err(refused.unwrap_or_else(|| RegistryError::Unauthorized {
            url: url.to_string(),
            reason: "credentials rejected".to_string(),
        }))
    }

    async fn request(
        &self,
        method: Method,
        url: &str,
        authorization: Option<&str>,
    ) -> Result<Response, RegistryError> {
        let url = parse_url(url)?;
        follow(
            &self.http,
            method,
            url,
            Some(MANIFEST_ACCEPT),
            authorization,
        )
        .await
    }
}

/// Sends, following redirects by this rule: at most `MAX_REDIRECTS` hops, never from
/// HTTPS to anything else, and the `Authorization` only while scheme, host and port
/// stay those of the first URL (a blob CDN gets none).
pub(super) async fn follow(
    http: &reqwest::Client,
    method: Method,
    mut url: Url,
    accept: Option<&str>,
    mut authorization: Option<&str>,
) -> Result<Response, RegistryError> {
    let origin = url.origin();
    for _ in 0..=MAX_REDIRECTS {
        let mut request = http.request(method.clone(), url.clone());
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport(url.as_str(), e))?;
        if !is_redirect(response.status()) {
            return Ok(response);
        }
        let location = single_header(url.as_str(), response.headers(), LOCATION.as_str())?
            .ok_or_else(|| unexpected(url.as_str(), "redirect without a Location"))?;
        let next = url
            .join(&location)
            .map_err(|e| unexpected(url.as_str(), format!("redirect to {location:?}: {e}")))?;
        let downgrade = url.scheme() == "https" && next.scheme() != "https";
        if downgrade || !matches!(next.scheme(), "http" | "https") {
            return Err(unexpected(
                url.as_str(),
                format!("refusing the redirect from {} to {next}", url.scheme()),
            ));
        }
        if next.origin() != origin {
            authorization = None;
        }
        url = next;
    }
    Err(unexpected(
        url.as_str(),
        format!("more than {MAX_REDIRECTS} redirects"),
    ))
}

fn parse_url(url: &str) -> Result<Url, RegistryError> {
    Url::parse(url).map_err(|e| unexpected(url, format!("not a URL: {e}")))
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    )
}

/// A header whose meaning is one value: absent, or present once (or repeated with the
/// same value). Two different values are an answer we do not understand.
fn single_header(
    url: &str,
    headers: &HeaderMap,
    name: &str,
) -> Result<Option<String>, RegistryError> {
    let mut value: Option<String> = None;
    for raw in headers.get_all(name) {
        let text = raw
            .to_str()
            .map_err(|_| unexpected(url, format!("{name} is not text")))?
            .trim()
            .to_string();
        match &value {
            Some(first) if *first != text => {
                return Err(unexpected(
                    url,
                    format!("two {name} headers disagree: {first:?} and {text:?}"),
                ))
            }
            _ => value = Some(text),
        }
    }
    Ok(value)
}

/// The kind of a media type we know; any other is an answer we do not understand.
fn known_media_type(url: &str, media_type: &str) -> Result<ManifestKind, RegistryError> {
    ManifestKind::from_media_type(media_type)
        .ok_or_else(|| unexpected(url, format!("unknown manifest media type {media_type:?}")))
}

fn header_text(headers: &HeaderMap, name: HeaderName) -> String {
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

/// `Retry-After` as seconds or an HTTP date, at most `MAX_RETRY_AFTER`.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
            Duration::try_from(at.duration_since(jiff::Timestamp::now())).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
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

/// A digest the registry named, checked before it is trusted or put in a URL.
fn checked_digest(url: &str, digest: &str) -> Result<String, RegistryError> {
    let digest = digest.trim();
    if is_sha256_digest(digest) {
        Ok(digest.to_string())
    } else {
        Err(unexpected(
            url,
            format!("digest {digest:?} is not sha256:<64 hex>"),
        ))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_retry_after("18446744073709551615"),
            Some(MAX_RETRY_AFTER),
            "capped, never parked for good"
        );
        assert_eq!(parse_retry_after(""), None);
    }
}
