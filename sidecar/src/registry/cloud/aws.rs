//! Amazon ECR: AWS credentials from the standard chain, then `ecr:GetAuthorizationToken`
//! signed with SigV4.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use super::{seconds_until, CloudError, CloudLogin};
use crate::registry::credentials::Credential;
use crate::registry::hex;

type Signature = Hmac<Sha256>;

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = <Signature as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The domain of AWS's endpoints in a partition: China's regions have their own.
fn domain(china: bool) -> &'static str {
    if china {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    }
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

impl CloudLogin {
    fn aws_endpoint(&self, service: &str, default: String) -> String {
        let specific = format!("AWS_ENDPOINT_URL_{}", service.to_ascii_uppercase());
        self.env
            .get(&specific)
            .or_else(|| self.env.get("AWS_ENDPOINT_URL"))
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or(default)
    }

    /// The standard chain: env keys, IRSA web identity, Pod Identity, IMDSv2.
    async fn aws_keys(&self, region: &str, china: bool) -> Result<AwsKeys, CloudError> {
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
            let token = CloudError::read("AWS_WEB_IDENTITY_TOKEN_FILE", token_file)?;
            let sts = self.aws_endpoint("sts", format!("https://sts.{region}.{}", domain(china)));
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
                xml_value(&body, tag).map(str::to_string).ok_or_else(|| {
                    CloudError::bad("STS AssumeRoleWithWebIdentity", format!("no {tag}"))
                })
            };
            return Ok(AwsKeys {
                access_key: field("AccessKeyId")?,
                secret_key: field("SecretAccessKey")?,
                session_token: Some(field("SessionToken")?),
            });
        }
        if let Some(uri) = self.env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            let token = match self.env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
                Some(file) => Some(CloudError::read(
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                    file,
                )?),
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
            return Err(CloudError::NoIdentity("no AWS identity: no env keys, no IRSA web identity, no Pod Identity, and IMDS is disabled".into()));
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
            .map_err(|e| {
                CloudError::NoIdentity(format!(
                    "no AWS identity (no env keys, IRSA or Pod Identity; {e})"
                ))
            })?;
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
            .ok_or_else(|| CloudError::bad("IMDSv2 role", "the instance has no IAM role"))?;
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

    pub(super) async fn ecr(
        &self,
        region: &str,
        china: bool,
    ) -> Result<(Credential, Duration), CloudError> {
        let keys = self.aws_keys(region, china).await?;
        let endpoint =
            self.aws_endpoint("ecr", format!("https://api.ecr.{region}.{}", domain(china)));
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
        const WHAT: &str = "ECR GetAuthorizationToken";
        let answer = self.send(request, WHAT).await?;
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
        let answer: Answer = serde_json::from_str(&answer)
            .map_err(|e| CloudError::bad(WHAT, format!("does not parse: {e}")))?;
        let data = answer
            .authorization_data
            .into_iter()
            .next()
            .ok_or_else(|| CloudError::bad(WHAT, "no authorization data"))?;
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(data.authorization_token.trim())
            .map_err(|e| CloudError::bad(WHAT, format!("the token is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| CloudError::bad(WHAT, "the token is not UTF-8"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| CloudError::bad(WHAT, "the token is not user:password"))?;
        let expires = jiff::Timestamp::from_second(data.expires_at as i64)
            .map_err(|e| CloudError::bad(WHAT, format!("expiresAt: {e}")))?;
        Ok((
            Credential {
                username: username.to_string(),
                password: password.to_string(),
            },
            seconds_until(expires),
        ))
    }
}

fn keys_from_json(body: &str) -> Result<AwsKeys, CloudError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Keys {
        access_key_id: String,
        secret_access_key: String,
        token: Option<String>,
    }
    let keys: Keys = serde_json::from_str(body)
        .map_err(|e| CloudError::bad("AWS credentials", format!("do not parse: {e}")))?;
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
