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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use super::credentials::Credential;

/// Credentials are renewed this long before they expire (or at half their life).
const RENEW_MARGIN: Duration = Duration::from_secs(300);
/// ACR's user name for a refresh token.
const ACR_NULL_USER: &str = "00000000-0000-0000-0000-000000000000";

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
    pub reason: String,
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} login failed: {}", self.provider, self.reason)
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

type Signature = Hmac<Sha256>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = <Signature as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// AWS credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsKeys {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

/// What SigV4 signs of a request: every header it sends that is signed (names in any
/// case, values trimmed), and the body.
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// Where and when a request is signed: `amz_date` is `YYYYMMDDTHHMMSSZ`.
pub struct SigningScope<'a> {
    pub region: &'a str,
    pub service: &'a str,
    pub amz_date: &'a str,
}

/// The SigV4 `Authorization` header of `request`.
pub fn sigv4_authorization(
    keys: &AwsKeys,
    request: &SignedRequest,
    scope: &SigningScope,
) -> String {
    let SignedRequest {
        method,
        path,
        query,
        headers,
        body,
    } = request;
    let SigningScope {
        region,
        service,
        amz_date,
    } = scope;
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{method}\n{path}\n{query}\n{canonical_headers}\n{signed_headers}\n{}",
        hex(&Sha256::digest(body))
    );
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let key = hmac(format!("AWS4{}", keys.secret_key).as_bytes(), date);
    let key = hmac(&key, region);
    let key = hmac(&key, service);
    let key = hmac(&key, "aws4_request");
    let signature = hex(&hmac(&key, &string_to_sign));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        keys.access_key
    )
}

/// The text between `<tag>` and `</tag>`, for STS's small XML answers.
fn xml_value<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim())
}

fn seconds_until(at: jiff::Timestamp) -> Duration {
    Duration::try_from(at.duration_since(jiff::Timestamp::now())).unwrap_or(Duration::ZERO)
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
        let fail = |reason: String| LoginError {
            provider: provider.name(),
            reason,
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

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> Result<String, String> {
        let response = request.send().await.map_err(|e| format!("{what}: {e}"))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| format!("{what}: {e}"))?;
        if !status.is_success() {
            let detail: String = body.chars().take(200).collect();
            return Err(format!(
                "{what} answered HTTP {}: {detail}",
                status.as_u16()
            ));
        }
        Ok(body)
    }

    fn aws_endpoint(&self, service: &str, default: String) -> String {
        let specific = format!("AWS_ENDPOINT_URL_{}", service.to_ascii_uppercase());
        self.env
            .get(&specific)
            .or_else(|| self.env.get("AWS_ENDPOINT_URL"))
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or(default)
    }

    /// The standard chain: env keys, IRSA web identity, Pod Identity, IMDSv2.
    async fn aws_keys(&self, region: &str, china: bool) -> Result<AwsKeys, String> {
        if let (Some(access_key), Some(secret_key)) = (
            self.env.get("AWS_ACCESS_KEY_ID"),
            self.env.get("AWS_SECRET_ACCESS_KEY"),
        ) {
            return Ok(AwsKeys {
                access_key: access_key.to_string(),
                secret_key: secret_key.to_string(),
                session_token: self.env.get("AWS_SESSION_TOKEN").map(str::to_string),
            });
        }
        if let (Some(token_file), Some(role)) = (
            self.env.get("AWS_WEB_IDENTITY_TOKEN_FILE"),
            self.env.get("AWS_ROLE_ARN"),
        ) {
            let token = std::fs::read_to_string(token_file)
                .map_err(|e| format!("reading AWS_WEB_IDENTITY_TOKEN_FILE {token_file}: {e}"))?;
            let suffix = if china {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            let sts = self.aws_endpoint("sts", format!("https://sts.{region}.{suffix}"));
            let body = self
                .send(
                    self.http.post(format!("{sts}/")).form(&[
                        ("Action", "AssumeRoleWithWebIdentity"),
                        ("Version", "2011-06-15"),
                        ("RoleArn", role),
                        ("RoleSessionName", "pod-reloaded"),
                        ("WebIdentityToken", token.trim()),
                    ]),
                    "STS AssumeRoleWithWebIdentity",
                )
                .await?;
            let field = |tag| {
                xml_value(&body, tag)
                    .map(str::to_string)
                    .ok_or_else(|| format!("STS answer has no {tag}"))
            };
            return Ok(AwsKeys {
                access_key: field("AccessKeyId")?,
                secret_key: field("SecretAccessKey")?,
                session_token: Some(field("SessionToken")?),
            });
        }
        if let Some(uri) = self.env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            let token = match self.env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
                Some(file) => Some(std::fs::read_to_string(file).map_err(|e| {
                    format!("reading AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {file}: {e}")
                })?),
                None => self
                    .env
                    .get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
                    .map(str::to_string),
            };
            let mut request = self.http.get(uri);
            if let Some(token) = token {
                request = request.header("authorization", token.trim());
            }
            let body = self.send(request, "EKS Pod Identity credentials").await?;
            return keys_from_json(&body);
        }
        if self.env.get("AWS_EC2_METADATA_DISABLED") == Some("true") {
            return Err("no AWS identity: no env keys, no IRSA web identity, no Pod Identity, and IMDS is disabled".into());
        }
        let imds = self
            .env
            .get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or("http://169.254.169.254")
            .trim_end_matches('/')
            .to_string();
        let token = self
            .send(
                self.http
                    .put(format!("{imds}/latest/api/token"))
                    .header("x-aws-ec2-metadata-token-ttl-seconds", "21600"),
                "IMDSv2 token",
            )
            .await
            .map_err(|e| format!("no AWS identity (no env keys, IRSA or Pod Identity; {e})"))?;
        let roles = self
            .send(
                self.http
                    .get(format!("{imds}/latest/meta-data/iam/security-credentials/"))
                    .header("x-aws-ec2-metadata-token", &token),
                "IMDSv2 role",
            )
            .await?;
        let role = roles
            .lines()
            .next()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .ok_or("the instance has no IAM role")?;
        let body = self
            .send(
                self.http
                    .get(format!(
                        "{imds}/latest/meta-data/iam/security-credentials/{role}"
                    ))
                    .header("x-aws-ec2-metadata-token", &token),
                "IMDSv2 credentials",
            )
            .await?;
        keys_from_json(&body)
    }

    async fn ecr(&self, region: &str, china: bool) -> Result<(Credential, Duration), String> {
        let keys = self.aws_keys(region, china).await?;
        let suffix = if china {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        let endpoint = self.aws_endpoint("ecr", format!("https://api.ecr.{region}.{suffix}"));
        let host = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let amz_date = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let body = b"{}";
        let target = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
        let content_type = "application/x-amz-json-1.1";
        let mut signed = vec![
            ("content-type", content_type),
            ("host", host.as_str()),
            ("x-amz-date", amz_date.as_str()),
            ("x-amz-target", target),
        ];
        if let Some(token) = &keys.session_token {
            signed.push(("x-amz-security-token", token.as_str()));
        }
        let authorization = sigv4_authorization(
            &keys,
            &SignedRequest {
                method: "POST",
                path: "/",
                query: "",
                headers: &signed,
                body,
            },
            &SigningScope {
                region,
                service: "ecr",
                amz_date: &amz_date,
            },
        );
        let mut request = self
            .http
            .post(format!("{endpoint}/"))
            .header("authorization", authorization)
            .body(body.to_vec());
        for (name, value) in &signed {
            if *name != "host" {
                request = request.header(*name, *value);
            }
        }
        let answer = self.send(request, "ECR GetAuthorizationToken").await?;
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Data {
            authorization_token: String,
            expires_at: f64,
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            authorization_data: Vec<Data>,
        }
        let answer: Answer =
            serde_json::from_str(&answer).map_err(|e| format!("ECR answer does not parse: {e}"))?;
        let data = answer
            .authorization_data
            .into_iter()
            .next()
            .ok_or("ECR answer has no authorization data")?;
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(data.authorization_token.trim())
            .map_err(|e| format!("ECR token is not base64: {e}"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| "ECR token is not UTF-8")?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or("ECR token is not user:password")?;
        let expires = jiff::Timestamp::from_second(data.expires_at as i64)
            .map_err(|e| format!("ECR expiresAt: {e}"))?;
        Ok((
            Credential {
                username: username.to_string(),
                password: password.to_string(),
            },
            seconds_until(expires),
        ))
    }

    async fn google(&self) -> Result<(Credential, Duration), String> {
        let host = self
            .env
            .get("GCE_METADATA_HOST")
            .unwrap_or("metadata.google.internal");
        let body = self
            .send(
                self.http
                    .get(format!(
                        "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
                    ))
                    .header("metadata-flavor", "Google"),
                "the GCE metadata server",
            )
            .await
            .map_err(|e| format!("no Google identity (Workload Identity): {e}"))?;
        let token: OAuthToken = serde_json::from_str(&body)
            .map_err(|e| format!("metadata token does not parse: {e}"))?;
        Ok((
            Credential {
                username: "oauth2accesstoken".to_string(),
                password: token.access_token,
            },
            Duration::from_secs(token.expires_in.unwrap_or(300)),
        ))
    }

    async fn azure(&self, host: &str, base_url: &str) -> Result<(Credential, Duration), String> {
        let (Some(token_file), Some(client), Some(tenant)) = (
            self.env.get("AZURE_FEDERATED_TOKEN_FILE"),
            self.env.get("AZURE_CLIENT_ID"),
            self.env.get("AZURE_TENANT_ID"),
        ) else {
            return Err("no Azure Workload Identity (AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, AZURE_TENANT_ID)".into());
        };
        let assertion = std::fs::read_to_string(token_file)
            .map_err(|e| format!("reading AZURE_FEDERATED_TOKEN_FILE {token_file}: {e}"))?;
        let authority = self
            .env
            .get("AZURE_AUTHORITY_HOST")
            .unwrap_or("https://login.microsoftonline.com/")
            .trim_end_matches('/');
        let body = self
            .send(
                self.http
                    .post(format!("{authority}/{tenant}/oauth2/v2.0/token"))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("client_id", client),
                        ("scope", "https://management.azure.com/.default"),
                        (
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        ),
                        ("client_assertion", assertion.trim()),
                    ]),
                "Entra ID token",
            )
            .await?;
        let entra: OAuthToken = serde_json::from_str(&body)
            .map_err(|e| format!("Entra ID answer does not parse: {e}"))?;
        let service = host.split(':').next().unwrap_or(host);
        let body = self
            .send(
                self.http
                    .post(format!("{base_url}/oauth2/exchange"))
                    .form(&[
                        ("grant_type", "access_token"),
                        ("service", service),
                        ("tenant", tenant),
                        ("access_token", entra.access_token.as_str()),
                    ]),
                "ACR token exchange",
            )
            .await?;
        #[derive(serde::Deserialize)]
        struct Exchange {
            refresh_token: String,
        }
        let exchange: Exchange = serde_json::from_str(&body)
            .map_err(|e| format!("ACR exchange answer does not parse: {e}"))?;
        Ok((
            Credential {
                username: ACR_NULL_USER.to_string(),
                password: exchange.refresh_token,
            },
            Duration::from_secs(entra.expires_in.unwrap_or(3600)),
        ))
    }
}

#[derive(serde::Deserialize)]
struct OAuthToken {
    access_token: String,
    expires_in: Option<u64>,
}

fn keys_from_json(body: &str) -> Result<AwsKeys, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Keys {
        access_key_id: String,
        secret_access_key: String,
        token: Option<String>,
    }
    let keys: Keys =
        serde_json::from_str(body).map_err(|e| format!("AWS credentials do not parse: {e}"))?;
    Ok(AwsKeys {
        access_key: keys.access_key_id,
        secret_key: keys.secret_access_key,
        session_token: keys.token,
    })
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

    #[test]
    fn sigv4_matches_the_aws_documentation_example() {
        // The example of AWS's "Signature Version 4 signing process" documentation
        // (IAM ListUsers, 2015-08-30).
        let keys = AwsKeys {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let authorization = sigv4_authorization(
            &keys,
            &SignedRequest {
                method: "GET",
                path: "/",
                query: "Action=ListUsers&Version=2010-05-08",
                headers: &[
                    (
                        "content-type",
                        "application/x-www-form-urlencoded; charset=utf-8",
                    ),
                    ("host", "iam.amazonaws.com"),
                    ("x-amz-date", "20150830T123600Z"),
                ],
                body: b"",
            },
            &SigningScope {
                region: "us-east-1",
                service: "iam",
                amz_date: "20150830T123600Z",
            },
        );
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn sts_answers_are_read() {
        let xml =
            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
            <AccessKeyId>ASIA1</AccessKeyId><SecretAccessKey>secret</SecretAccessKey>\
            <SessionToken>session</SessionToken><Expiration>2026-11-24T12:00:00Z</Expiration>\
            </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        assert_eq!(xml_value(xml, "AccessKeyId"), Some("ASIA1"));
        assert_eq!(xml_value(xml, "SessionToken"), Some("session"));
        assert_eq!(xml_value(xml, "Missing"), None);
    }
}
