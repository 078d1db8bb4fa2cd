//! Registry authentication, behind one door (`Authenticator`: the header for a
//! repository, the answer to a challenge, forget): pull secrets and cloud logins, the
//! `WWW-Authenticate` challenge, the token answer, the cache of what to send up front,
//! and where credentials may be sent at all. The protocol (`RegistryClient`) only asks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::GetAll;
use reqwest::header::HeaderValue;
use reqwest::{Method, StatusCode, Url};

use super::cloud::{CloudLogin, Provider};
use super::credentials::{Credential, Credentials};
use super::{check_status, follow, parse_url, read_limited, unexpected, RegistryError, Repository};

/// Who the sidecar is to each registry: the mounted pull secrets, the pod's cloud identity,
/// and, per repository, the authorization to send up front (so steady rounds make no 401
/// round trip).
pub struct Authenticator {
    /// For token requests (it follows redirects only by `follow`'s rule).
    http: reqwest::Client,
    credentials: Mutex<Credentials>,
    cache: Mutex<HashMap<Repository, CachedAuth>>,
    /// Logins to cloud registries with the pod's identity (`--cloud-auth auto`).
    cloud: Option<CloudLogin>,
}

impl Authenticator {
    pub fn new(http: reqwest::Client, credentials: Credentials) -> Self {
        Self {
            http,
            credentials: Mutex::new(credentials),
            cache: Mutex::new(HashMap::new()),
            cloud: None,
        }
    }

    pub fn with_cloud_login(mut self, cloud: CloudLogin) -> Self {
        self.cloud = Some(cloud);
        self
    }

    pub fn set_credentials(&self, credentials: Credentials) {
        if let Ok(mut current) = self.credentials.lock() {
            *current = credentials;
        }
    }

    /// Credentials for `repository`, in the order to try them: the matching pull secrets'
    /// (most specific key first, as the kubelet tries them), else the cloud provider's
    /// identity for a host that belongs to one, else none (anonymous).
    pub async fn credentials(
        &self,
        repository: &Repository,
    ) -> Result<Vec<Credential>, RegistryError> {
        let from_secrets: Vec<Credential> = self
            .credentials
            .lock()
            .map(|c| {
                c.all_for_image(&repository.host, &repository.name)
                    .into_iter()
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if !from_secrets.is_empty() {
            return Ok(from_secrets);
        }
        let Some(cloud) = &self.cloud else {
            return Ok(Vec::new());
        };
        cloud
            .credential(&repository.registry, &repository.base_url)
            .await
            .map(|credential| credential.into_iter().collect())
            .map_err(|error| RegistryError::Unauthorized {
                url: repository.base_url.clone(),
                reason: error.to_string(),
            })
    }

    /// Drops what is cached for `repository` (its credentials were refused).
    pub fn forget(&self, repository: &Repository) {
        if let Ok(mut auth) = self.cache.lock() {
            auth.remove(repository);
        }
        if let Some(cloud) = &self.cloud {
            cloud.forget(&repository.registry);
        }
    }

    /// The Authorization header to send up front; renews an expired token first.
    pub async fn header(&self, repository: &Repository) -> Result<Option<String>, RegistryError> {
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|a| a.get(repository).cloned());
        match cached {
            None => Ok(None),
            // A cloud login expires: ask it again (cached there until shortly before).
            Some(CachedAuth::Basic(_))
                if self.cloud.is_some() && Provider::for_host(&repository.registry).is_some() =>
            {
                let credentials = self.credentials(repository).await?;
                Ok(credentials.first().map(basic_header))
            }
            Some(CachedAuth::Basic(header)) => Ok(Some(header)),
            Some(CachedAuth::Bearer {
                header, renew_at, ..
            }) if Instant::now() < renew_at => Ok(Some(header)),
            Some(CachedAuth::Bearer {
                challenge,
                credential,
                ..
            }) => {
                // Renewed with the credential that worked, while it is still offered (a
                // cloud login's is replaced by a fresh one).
                let offered = self.credentials(repository).await?;
                let credential = match credential {
                    Some(worked) if offered.contains(&worked) => Some(worked),
                    _ => offered.into_iter().next(),
                };
                self.answer(repository, &challenge, credential)
                    .await
                    .map(Some)
            }
        }
    }

    /// Answers a challenge with `credential` and caches the result for the repository.
    pub async fn answer(
        &self,
        repository: &Repository,
        challenge: &Challenge,
        credential: Option<Credential>,
    ) -> Result<String, RegistryError> {
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
                let realm_url = parse_url(realm)?;
                let registry_url = parse_url(&repository.base_url)?;
                if credential.is_some() && !may_send_credentials(&registry_url, &realm_url) {
                    return Err(RegistryError::Unauthorized {
                        url: repository.base_url.clone(),
                        reason: format!(
                            "not sending the pull secret's credentials for {} to token realm {realm}: credentials go only over HTTPS, or to a registry configured as plain HTTP on its own host",
                            repository.host
                        ),
                    });
                }
                let scope = scope
                    .clone()
                    .unwrap_or_else(|| format!("repository:{}:pull", repository.name));
                let (token, lifetime) = self
                    .fetch_token(realm_url, service.as_deref(), &scope, credential.as_ref())
                    .await?;
                CachedAuth::bearer(
                    &token,
                    lifetime,
                    challenge.clone(),
                    credential.clone(),
                    Instant::now(),
                )
            }
        };
        let header = cached.header().to_string();
        if let Ok(mut auth) = self.cache.lock() {
            auth.insert(repository.clone(), cached);
        }
        Ok(header)
    }

    /// The token from `realm`, checked by `may_send_credentials` on this same URL.
    async fn fetch_token(
        &self,
        mut realm: Url,
        service: Option<&str>,
        scope: &str,
        credential: Option<&Credential>,
    ) -> Result<(String, Duration), RegistryError> {
        realm.query_pairs_mut().append_pair("scope", scope);
        if let Some(service) = service {
            realm.query_pairs_mut().append_pair("service", service);
        }
        let text = realm.to_string();
        let authorization = credential.map(basic_header);
        let response = follow(
            &self.http,
            Method::GET,
            realm,
            None,
            authorization.as_deref(),
        )
        .await?;
        if matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(RegistryError::Unauthorized {
                url: text,
                reason: format!("token server answered HTTP {}", response.status().as_u16()),
            });
        }
        let response = check_status(Method::GET, &text, response)?;
        let body = read_limited(&text, response).await?;
        TokenResponse::parse(&body).map_err(|reason| unexpected(&text, reason))
    }
}

/// Token lifetime when the token server does not say (distribution spec default).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Longest a token is trusted, whatever `expires_in` says (a huge value must not overflow
/// the clock, and a day-old token is worth renewing anyway).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Tokens are renewed this long before they expire, so none expires in flight.
const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(5);

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

/// The challenge to answer among a 401's `WWW-Authenticate` headers: Bearer when one is
/// offered, else Basic. Bearer challenges that name different realms, services or scopes
/// are an answer we do not understand.
pub fn challenge_of(headers: GetAll<'_, HeaderValue>) -> Result<Challenge, String> {
    let mut chosen: Option<Challenge> = None;
    for raw in headers {
        let text = raw.to_str().unwrap_or("");
        let Some(challenge) = parse_challenge(text) else {
            continue;
        };
        match (&chosen, &challenge) {
            (Some(first @ Challenge::Bearer { .. }), Challenge::Bearer { .. })
                if *first != challenge =>
            {
                return Err(format!(
                    "two Bearer challenges disagree: {first:?} and {challenge:?}"
                ));
            }
            (Some(Challenge::Bearer { .. }), _) => {}
            _ => chosen = Some(challenge),
        }
    }
    chosen.ok_or_else(|| "no supported WWW-Authenticate challenge".to_string())
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`; a parameter given
/// twice with different values makes the challenge unreadable (`None`).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, mut values) = parse_parameters(header)?;
    match scheme.as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: values.remove("realm")?,
            service: values.remove("service"),
            scope: values.remove("scope"),
        }),
        _ => None,
    }
}

/// A challenge's scheme (lowercase) and parameters (names lowercase): `name=token` or
/// `name="quoted string"`, where a backslash takes the next character as it is (RFC 9110
/// quoted-pair; `\"` is a quote inside the value), as distribution and containerd read it.
pub fn parse_parameters(header: &str) -> Option<(String, HashMap<String, String>)> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
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
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.push(chars.next()?.1),
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end? + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        if values.get(&key).is_some_and(|first| *first != value) {
            return None;
        }
        values.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_ascii_lowercase(), values))
}

/// What to send up front for one repository.
#[derive(Clone)]
pub enum CachedAuth {
    Basic(String),
    Bearer {
        header: String,
        renew_at: Instant,
        challenge: Challenge,
        /// What the token was fetched with, to renew it the same way.
        credential: Option<Credential>,
    },
}

impl CachedAuth {
    pub fn bearer(
        token: &str,
        lifetime: Duration,
        challenge: Challenge,
        credential: Option<Credential>,
        now: Instant,
    ) -> Self {
        let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
        Self::Bearer {
            header: format!("Bearer {token}"),
            renew_at: now + lifetime.saturating_sub(TOKEN_RENEW_MARGIN),
            challenge,
            credential,
        }
    }

    pub fn header(&self) -> &str {
        match self {
            Self::Basic(header) | Self::Bearer { header, .. } => header,
        }
    }
}

/// The token server's answer.
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and how long it lives; `Err` when the answer carries no token.
    pub fn parse(body: &[u8]) -> Result<(String, Duration), String> {
        let parsed: Self = serde_json::from_slice(body)
            .map_err(|e| format!("token response does not parse: {e}"))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or("token response has no token")?;
        let lifetime = parsed.expires_in.map_or(DEFAULT_TOKEN_LIFETIME, |s| {
            Duration::from_secs(s).min(MAX_TOKEN_LIFETIME)
        });
        Ok((token, lifetime))
    }
}

pub fn basic_header(credential: &Credential) -> String {
    use base64::Engine as _;
    let raw = format!("{}:{}", credential.username, credential.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// May credentials for the registry at `registry` be sent to `target` (a token realm its
/// challenge named)? Decided on the URLs exactly as the client connects to them. Over
/// HTTPS, yes (Docker Hub's realm is another host by design). Over plain HTTP only when the
/// registry itself was configured as plain HTTP, and only to the registry's own host: a
/// challenge must not be able to pull secrets off the pod in clear text or to a third host.
/// Redirects never carry credentials to another scheme, host or port (`RegistryClient`).
pub fn may_send_credentials(registry: &Url, target: &Url) -> bool {
    // A realm with userinfo names other credentials of its own: not ours to answer.
    if !target.username().is_empty() || target.password().is_some() {
        return false;
    }
    match (target.scheme(), registry.scheme()) {
        ("https", _) => target.host().is_some(),
        ("http", "http") => target.host().is_some() && target.host() == registry.host(),
        _ => false,
    }
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
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://a/token",realm="https://b/token""#),
            None,
            "one realm, said twice differently"
        );
    }

    #[test]
    fn huge_token_lifetimes_are_capped_not_overflowed() {
        let (token, lifetime) =
            TokenResponse::parse(br#"{"token": "t", "expires_in": 18446744073709551615}"#).unwrap();
        assert_eq!(token, "t");
        assert_eq!(lifetime, MAX_TOKEN_LIFETIME);
        let cached = CachedAuth::bearer("t", lifetime, Challenge::Basic, None, Instant::now());
        assert_eq!(cached.header(), "Bearer t");
        assert_eq!(
            TokenResponse::parse(br#"{"access_token": "a"}"#).unwrap(),
            ("a".to_string(), DEFAULT_TOKEN_LIFETIME)
        );
        assert!(TokenResponse::parse(br#"{"token": ""}"#).is_err());
        assert!(TokenResponse::parse(b"<html>").is_err());
    }

    #[test]
    fn credentials_go_only_over_https_or_to_the_plain_http_registry_itself() {
        fn may_send_credentials(registry: &str, target: &str) -> bool {
            match (Url::parse(registry), Url::parse(target)) {
                (Ok(registry), Ok(target)) => super::may_send_credentials(&registry, &target),
                _ => false,
            }
        }
        assert!(may_send_credentials(
            "https://registry-1.docker.io",
            "https://auth.docker.io/token"
        ));
        assert!(may_send_credentials(
            "https://r.example.com",
            "https://r.example.com:8443/token"
        ));
        assert!(!may_send_credentials(
            "https://r.example.com",
            "http://r.example.com/token"
        ));
        assert!(may_send_credentials(
            "http://127.0.0.1:5000",
            "http://127.0.0.1:5001/token"
        ));
        assert!(!may_send_credentials(
            "http://127.0.0.1:5000",
            "http://evil.example.com/token"
        ));
        assert!(!may_send_credentials(
            "http://10.0.0.1:5000",
            "http://user@10.0.0.2/token"
        ));
        assert!(!may_send_credentials(
            "https://r.example.com",
            "ftp://r.example.com/token"
        ));
        assert!(!may_send_credentials("https://r.example.com", "not a url"));
        // The host the connection will use, whatever the text looks like: `\` is `/`
        // to the URL parser, so this realm is 127.0.0.2, not the registry's 127.0.0.1.
        assert!(!may_send_credentials(
            "http://127.0.0.1:5000",
            "http://127.0.0.2:5000\\@127.0.0.1:5001/token"
        ));
        assert!(!may_send_credentials(
            "http://127.0.0.1:5000",
            "http://u@127.0.0.1:5001/token"
        ));
        assert!(!may_send_credentials(
            "http://127.0.0.1:5000",
            "http://127.0.0.1.evil.example.com/token"
        ));
    }
}
