//! Cloud registries without pull secrets: the identity the pod already has (EKS IRSA or
//! Pod Identity, an instance role, GKE or AKS Workload Identity) is exchanged for registry
//! credentials, per provider, and cached until shortly before they expire.
//!
//! Amazon ECR: AWS credentials from the standard chain (static env keys, IRSA web identity
//! through STS, EKS Pod Identity container credentials, IMDSv2), then
//! `ecr:GetAuthorizationToken`, signed with SigV4 (hand-written: the AWS SDK crates would
//! bring a second HTTP stack and several MiB into a sidecar that runs in every pod, for
//! two unsigned-or-simple calls and one signed one). Google Artifact Registry and GCR: an
//! access token from the metadata server. Azure ACR: the federated token, exchanged at
//! Entra ID for an access token, exchanged at the registry for a refresh token. Every
//! endpoint is overridable by the providers' standard variables.

mod aws;
mod azure;
mod google;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::credentials::Credential;

pub use self::aws::{sigv4_authorization, AwsKeys, SignedRequest, SigningScope};

/// Credentials are renewed this long before they expire (or at half their life).
const RENEW_MARGIN: Duration = Duration::from_secs(300);

/// Which provider a registry host belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provider {
    Ecr { region: String, china: bool },
    Google,
    Azure,
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ecr { .. } => "Amazon ECR",
            Self::Google => "Google Artifact Registry",
            Self::Azure => "Azure Container Registry",
        }
    }

    /// `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`, `gcr.io`, `*.gcr.io`,
    /// `*-docker.pkg.dev`, `*.azurecr.io` (and the sovereign `.cn`, `.us`).
    pub fn for_host(host: &str) -> Option<Self> {
        let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        if let [account, "dkr", ecr, region, "amazonaws", "com", rest @ ..] = labels.as_slice() {
            let china = rest == ["cn"];
            if account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && (*ecr == "ecr" || *ecr == "ecr-fips")
                && (rest.is_empty() || china)
            {
                return Some(Self::Ecr {
                    region: region.to_string(),
                    china,
                });
            }
        }
        if host == "gcr.io" || host.ends_with(".gcr.io") || host.ends_with("-docker.pkg.dev") {
            return Some(Self::Google);
        }
        if [".azurecr.io", ".azurecr.cn", ".azurecr.us"]
            .iter()
            .any(|suffix| host.ends_with(suffix))
        {
            return Some(Self::Azure);
        }
        None
    }
}

/// The environment a login reads: the providers' standard variables.
#[derive(Clone, Debug, Default)]
pub struct CloudEnv(HashMap<String, String>);

impl CloudEnv {
    pub fn from_process() -> Self {
        Self(
            std::env::vars()
                .filter(|(k, _)| {
                    k.starts_with("AWS_") || k.starts_with("AZURE_") || k == "GCE_METADATA_HOST"
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Why a login failed: shown in the one log line, with the provider's name.
#[derive(Debug)]
pub struct LoginError {
    pub provider: &'static str,
    pub error: CloudError,
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} login failed: {}", self.provider, self.error)
    }
}

/// What went wrong in one step of a login.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// No identity of that provider in this pod, or none that works.
    #[error("{0}")]
    NoIdentity(String),
    /// An endpoint could not be reached or read.
    #[error("{what}: {error}")]
    Unreachable { what: &'static str, error: String },
    /// An endpoint answered with an error status.
    #[error("{what} answered HTTP {status}: {detail}")]
    Refused {
        what: &'static str,
        status: u16,
        detail: String,
    },
    /// An answer without what it should carry.
    #[error("{what}: {problem}")]
    BadAnswer { what: &'static str, problem: String },
    /// A token or credentials file named by the environment.
    #[error("reading {variable} {path}: {error}")]
    File {
        variable: &'static str,
        path: String,
        error: String,
    },
}

impl CloudError {
    fn bad(what: &'static str, problem: impl std::fmt::Display) -> Self {
        Self::BadAnswer {
            what,
            problem: problem.to_string(),
        }
    }

    /// Reads the file the environment variable `variable` names.
    fn read(variable: &'static str, path: &str) -> Result<String, Self> {
        std::fs::read_to_string(path).map_err(|e| Self::File {
            variable,
            path: path.to_string(),
            error: e.to_string(),
        })
    }
}

#[derive(Clone)]
struct Cached {
    credential: Credential,
    renew_at: Instant,
}

/// Logs in to cloud registries and caches what it got, per registry host.
pub struct CloudLogin {
    http: reqwest::Client,
    env: CloudEnv,
    cache: Mutex<HashMap<String, Cached>>,
}

fn seconds_until(at: jiff::Timestamp) -> Duration {
    Duration::try_from(at.duration_since(jiff::Timestamp::now())).unwrap_or(Duration::ZERO)
}

/// An OAuth token answer (Google's metadata server, Entra ID).
#[derive(serde::Deserialize)]
struct OAuthToken {
    access_token: String,
    expires_in: Option<u64>,
}

impl CloudLogin {
    pub fn new(http: reqwest::Client, env: CloudEnv) -> Self {
        Self {
            http,
            env,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Registry credentials for `host` (the image's registry), reached at `base_url`;
    /// `Ok(None)` when the host belongs to no provider.
    pub async fn credential(
        &self,
        host: &str,
        base_url: &str,
    ) -> Result<Option<Credential>, LoginError> {
        let Some(provider) = Provider::for_host(host) else {
            return Ok(None);
        };
        if let Some(cached) = self.cache.lock().ok().and_then(|c| c.get(host).cloned()) {
            if Instant::now() < cached.renew_at {
                return Ok(Some(cached.credential));
            }
        }
        let fail = |error: CloudError| LoginError {
            provider: provider.name(),
            error,
        };
        let (credential, lifetime) = match &provider {
            Provider::Ecr { region, china } => self.ecr(region, *china).await.map_err(fail)?,
            Provider::Google => self.google().await.map_err(fail)?,
            Provider::Azure => self.azure(host, base_url).await.map_err(fail)?,
        };
        let margin = RENEW_MARGIN.min(lifetime / 2);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                host.to_string(),
                Cached {
                    credential: credential.clone(),
                    renew_at: Instant::now()
                        + lifetime
                            .min(Duration::from_secs(24 * 3600))
                            .saturating_sub(margin),
                },
            );
        }
        Ok(Some(credential))
    }

    /// Forgets a credential the registry refused, so the next round logs in again.
    pub fn forget(&self, host: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(host);
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &'static str,
    ) -> Result<String, CloudError> {
        let unreachable = |e: reqwest::Error| CloudError::Unreachable {
            what,
            error: e.to_string(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let body = response.text().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(CloudError::Refused {
                what,
                status: status.as_u16(),
                detail: body.chars().take(200).collect(),
            });
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_matched_to_their_provider() {
        assert_eq!(
            Provider::for_host("123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
            Some(Provider::Ecr {
                region: "eu-west-1".into(),
                china: false
            })
        );
        assert_eq!(
            Provider::for_host("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com"),
            Some(Provider::Ecr {
                region: "us-east-1".into(),
                china: false
            })
        );
        assert_eq!(
            Provider::for_host("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"),
            Some(Provider::Ecr {
                region: "cn-north-1".into(),
                china: true
            })
        );
        assert_eq!(
            Provider::for_host("12345.dkr.ecr.eu-west-1.amazonaws.com"),
            None
        );
        assert_eq!(Provider::for_host("gcr.io"), Some(Provider::Google));
        assert_eq!(Provider::for_host("eu.gcr.io"), Some(Provider::Google));
        assert_eq!(
            Provider::for_host("europe-west4-docker.pkg.dev"),
            Some(Provider::Google)
        );
        assert_eq!(
            Provider::for_host("myreg.azurecr.io"),
            Some(Provider::Azure)
        );
        assert_eq!(
            Provider::for_host("myreg.azurecr.cn"),
            Some(Provider::Azure)
        );
        assert_eq!(Provider::for_host("registry-1.docker.io"), None);
        assert_eq!(Provider::for_host("ghcr.io"), None);
    }
}
