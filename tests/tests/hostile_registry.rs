//! The registry client against a hostile registry (`pod_reloaded_tests::hostile`): every
//! answer it cannot verify is an error (never a digest, so never a restart), and the
//! server's own request log shows that credentials never went over plain HTTP or to a host
//! other than the registry and its HTTPS token realm.

use std::sync::Arc;
use std::time::Duration;

use pod_reloaded_sidecar::platform::Platform;
use pod_reloaded_sidecar::registry::credentials::Credentials;
use pod_reloaded_sidecar::registry::manifest::{ManifestKind, OCI_INDEX, OCI_MANIFEST};
use pod_reloaded_sidecar::registry::{RegistryClient, RegistryError, Repository, MAX_REDIRECTS};
use pod_reloaded_tests::hostile::{answer, Answer, HostileRegistry, Seen};
use pod_reloaded_tests::pki::TestCa;
use pod_reloaded_tests::registry::{docker_config_json, sha256_digest};
use serde_json::json;

const USER: &str = "puller";
const PASSWORD: &str = "s3cret";

fn basic() -> String {
    use base64::Engine as _;
    let raw = format!("{USER}:{PASSWORD}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A valid OCI image manifest and its digest.
fn manifest() -> (Vec<u8>, String) {
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", "c".repeat(64)),
            "size": 2
        },
        "layers": []
    })
    .to_string()
    .into_bytes();
    let digest = sha256_digest(&body);
    (body, digest)
}

fn repository(base_url: &str, name: &str) -> Repository {
    let host = base_url.split_once("://").unwrap().1.to_string();
    Repository {
        base_url: base_url.to_string(),
        host: host.clone(),
        registry: host,
        name: name.to_string(),
    }
}

/// A client trusting `ca`, with the pull secret for `host` when given.
fn client(ca: &TestCa, credentials_for: Option<&str>) -> RegistryClient {
    let mut credentials = Credentials::default();
    if let Some(host) = credentials_for {
        let config = docker_config_json(host, USER, PASSWORD).to_string();
        assert!(credentials.add_config(config.as_bytes()).is_empty());
    }
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10));
    RegistryClient::new(http, credentials, Platform::parse("linux/amd64").unwrap()).unwrap()
}

fn unexpected(result: Result<impl std::fmt::Debug, RegistryError>) -> String {
    match result {
        Err(error @ RegistryError::Unexpected { .. }) => error.to_string(),
        other => panic!("expected an answer not understood, got {other:?}"),
    }
}

fn with_credentials(log: &[Seen]) -> Vec<Seen> {
    log.iter()
        .filter(|s| s.authorization.is_some())
        .cloned()
        .collect()
}

/// Manifests whose bytes or headers cannot be verified: one repository per case.
fn unverifiable(seen: &Seen, _: &HostileRegistry) -> Answer {
    let (body, digest) = manifest();
    let other = format!("sha256:{}", "d".repeat(64));
    let repo = seen.target.split('/').nth(2).unwrap_or("");
    let head = seen.method == "HEAD";
    let ct = ("content-type", OCI_MANIFEST);
    match (repo, head) {
        // HEAD without a digest, so the GET's body decides.
        ("garbage", true) | ("not-a-manifest", true) | ("other-digest", true) => {
            answer(200, &[ct], "")
        }
        ("garbage", false) => answer(200, &[ct], vec![0xff, 0xfe, 0x00, 0x7b]),
        ("not-a-manifest", false) => answer(200, &[ct], r#"{"hello": "world"}"#),
        ("other-digest", false) => answer(200, &[ct, ("docker-content-digest", &other)], body),
        ("two-digests", _) => answer(
            200,
            &[
                ct,
                ("docker-content-digest", &digest),
                ("docker-content-digest", &other),
            ],
            "",
        ),
        ("same-digest-twice", _) => answer(
            200,
            &[
                ct,
                ("docker-content-digest", &digest),
                ("docker-content-digest", &digest),
            ],
            "",
        ),
        ("two-content-types", _) => answer(
            200,
            &[
                ct,
                ("content-type", OCI_INDEX),
                ("docker-content-digest", &digest),
            ],
            "",
        ),
        ("types-disagree", true) => answer(200, &[], ""),
        ("types-disagree", false) => answer(200, &[("content-type", OCI_INDEX)], body),
        ("unknown-type", true) => answer(200, &[], ""),
        ("unknown-type", false) => answer(200, &[("content-type", "text/html")], body),
        ("verified", true) => answer(200, &[ct], ""),
        ("verified", false) => answer(200, &[ct, ("docker-content-digest", &digest)], body),
        _ => answer(404, &[], ""),
    }
}

#[tokio::test]
async fn an_answer_that_cannot_be_verified_is_an_error_never_a_digest() {
    let ca = TestCa::new("hostile test CA");
    let server = HostileRegistry::start("127.0.0.1", &ca, unverifiable).await;
    let checker = client(&ca, None);
    let repo = |name| repository(&server.https_url(), name);

    for (name, reason) in [
        ("garbage", "not a JSON object"),
        ("not-a-manifest", "does not parse"),
        ("other-digest", "Docker-Content-Digest names"),
        ("two-digests", "two docker-content-digest headers disagree"),
        ("two-content-types", "two content-type headers disagree"),
        ("types-disagree", "disagree"),
        ("unknown-type", "unknown manifest media type"),
    ] {
        let error = unexpected(checker.resolve_tag(&repo(name), "latest").await);
        assert!(error.contains(reason), "{name}: {error}");
    }

    let (_, digest) = manifest();
    let same = checker
        .resolve_tag(&repo("same-digest-twice"), "latest")
        .await
        .unwrap();
    assert_eq!(
        same.digest, digest,
        "a repeated header with one value is one value"
    );
    let verified = checker
        .resolve_tag(&repo("verified"), "latest")
        .await
        .unwrap();
    assert_eq!(
        (verified.digest, verified.kind),
        (digest, ManifestKind::Manifest)
    );
}

#[tokio::test]
async fn https_redirected_to_plain_http_on_the_same_port_is_refused_with_nothing_sent_in_clear() {
    let ca = TestCa::new("hostile test CA");
    let (_, digest) = manifest();
    let server = HostileRegistry::start("127.0.0.1", &ca, move |seen, server| {
        match (seen.scheme.as_str(), &seen.authorization) {
            ("https", None) => answer(401, &[("www-authenticate", r#"Basic realm="r""#)], ""),
            // The downgrade: same host, same port, plain HTTP.
            ("https", Some(_)) => {
                let location = format!("{}{}", server.http_url(), seen.target);
                answer(307, &[("location", &location)], "")
            }
            _ => answer(
                200,
                &[
                    ("content-type", OCI_MANIFEST),
                    ("docker-content-digest", &digest),
                ],
                "",
            ),
        }
    })
    .await;
    let host = server.address.to_string();
    let checker = client(&ca, Some(&host));
    let error = unexpected(
        checker
            .resolve_tag(&repository(&server.https_url(), "app"), "latest")
            .await,
    );
    assert!(
        error.contains("refusing the redirect from https"),
        "{error}"
    );
    let log = server.log();
    assert!(
        log.iter().all(|s| s.scheme == "https"),
        "nothing may go over plain HTTP: {log:?}"
    );
    assert_eq!(with_credentials(&log).len(), 1, "{log:?}");
}

#[tokio::test]
async fn a_redirect_to_another_https_host_is_followed_without_credentials() {
    let ca = TestCa::new("hostile test CA");
    let (body, digest) = manifest();
    let cdn = HostileRegistry::start("127.0.0.2", &ca, move |_, _| {
        answer(200, &[("content-type", OCI_MANIFEST)], body.clone())
    })
    .await;
    let cdn_url = cdn.https_url();
    let registry = HostileRegistry::start("127.0.0.1", &ca, move |seen, _| {
        match (seen.method.as_str(), &seen.authorization) {
            (_, None) => answer(401, &[("www-authenticate", r#"Basic realm="r""#)], ""),
            // No digest on the HEAD: the GET goes on to the CDN.
            ("HEAD", Some(_)) => answer(200, &[("content-type", OCI_MANIFEST)], ""),
            (_, Some(_)) => {
                let location = format!("{cdn_url}/blobs/manifest");
                answer(307, &[("location", &location)], "")
            }
        }
    })
    .await;
    let host = registry.address.to_string();
    let checker = client(&ca, Some(&host));
    let remote = checker
        .resolve_tag(&repository(&registry.https_url(), "app"), "latest")
        .await
        .unwrap();
    assert_eq!(remote.digest, digest);
    let cdn_log = cdn.log();
    assert_eq!(cdn_log.len(), 1, "{cdn_log:?}");
    assert_eq!(
        cdn_log[0].authorization, None,
        "the CDN gets no credentials"
    );
    assert!(with_credentials(&registry.log())
        .iter()
        .all(|s| s.authorization.as_deref() == Some(basic().as_str())));
}

#[tokio::test]
async fn redirects_are_bounded() {
    let ca = TestCa::new("hostile test CA");
    let server = HostileRegistry::start("127.0.0.1", &ca, |seen, _| {
        let next = format!("{}x", seen.target);
        answer(302, &[("location", &next)], "")
    })
    .await;
    let checker = client(&ca, None);
    let error = unexpected(
        checker
            .resolve_tag(&repository(&server.https_url(), "loop"), "latest")
            .await,
    );
    assert!(error.contains("redirects"), "{error}");
    assert_eq!(server.log().len(), MAX_REDIRECTS + 1);
}

/// A plain-HTTP registry (as configured) whose challenge names `realm` (with `{token}`
/// replaced by the token server's address); the token server logs what it got.
async fn challenge_to(
    ca: &TestCa,
    token_ip: &str,
    realm: impl Fn(&HostileRegistry) -> String + Send + Sync + 'static,
) -> (HostileRegistry, HostileRegistry, Result<(), RegistryError>) {
    let token_server = HostileRegistry::start(token_ip, ca, |_, _| {
        answer(200, &[], r#"{"token": "t0k3n", "expires_in": 300}"#)
    })
    .await;
    let (_, digest) = manifest();
    let realm = Arc::new(realm(&token_server));
    let registry = HostileRegistry::start("127.0.0.1", ca, move |seen, _| {
        if seen.authorization.as_deref() == Some("Bearer t0k3n") {
            return answer(
                200,
                &[
                    ("content-type", OCI_MANIFEST),
                    ("docker-content-digest", &digest),
                ],
                "",
            );
        }
        let challenge = format!(r#"Bearer realm="{realm}",service="registry""#);
        answer(401, &[("www-authenticate", &challenge)], "")
    })
    .await;
    let host = registry.address.to_string();
    let checker = client(ca, Some(&host));
    let result = checker
        .resolve_tag(&repository(&registry.http_url(), "app"), "latest")
        .await
        .map(drop);
    (registry, token_server, result)
}

#[tokio::test]
async fn a_realm_that_parses_as_two_hosts_gets_nothing() {
    // In the header, `\\` is an escaped backslash: the realm holds one. To a reader that
    // splits at the last `@`, it is on the registry's own host; the URL parser the client
    // connects with reads `\` as `/`: host 127.0.0.2. Unescaped the other way (`\@` is
    // `@`), the same text is a realm with userinfo: refused too.
    for escape in ["\\\\", "\\"] {
        let ca = TestCa::new("hostile test CA");
        let (registry, token_server, result) = challenge_to(&ca, "127.0.0.2", move |token| {
            format!("http://{}{escape}@127.0.0.1:5000/token", token.address)
        })
        .await;
        assert!(
            matches!(result, Err(RegistryError::Unauthorized { .. })),
            "{escape}: {result:?}"
        );
        assert_eq!(token_server.log(), vec![], "no request to the other host");
        assert!(with_credentials(&registry.log()).is_empty());
    }
}

#[tokio::test]
async fn a_plain_http_realm_on_another_host_gets_nothing() {
    let ca = TestCa::new("hostile test CA");
    let (_, token_server, result) = challenge_to(&ca, "127.0.0.2", |token| {
        format!("{}/token", token.http_url())
    })
    .await;
    assert!(
        matches!(result, Err(RegistryError::Unauthorized { .. })),
        "{result:?}"
    );
    assert_eq!(token_server.log(), vec![]);
}

#[tokio::test]
async fn an_https_realm_on_another_host_gets_the_credentials_and_only_over_https() {
    let ca = TestCa::new("hostile test CA");
    let (registry, token_server, result) = challenge_to(&ca, "127.0.0.2", |token| {
        format!("{}/token", token.https_url())
    })
    .await;
    result.unwrap();
    let log = token_server.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].scheme, "https");
    assert_eq!(log[0].authorization.as_deref(), Some(basic().as_str()));
    assert!(log[0].target.contains("service=registry"), "{log:?}");
    assert!(registry
        .log()
        .iter()
        .all(|s| s.authorization.as_deref() != Some(basic().as_str())));
}

#[tokio::test]
async fn an_https_realm_redirecting_to_plain_http_is_refused() {
    let ca = TestCa::new("hostile test CA");
    let token_server = HostileRegistry::start("127.0.0.2", &ca, |seen, server| {
        if seen.scheme == "https" {
            let location = format!("{}{}", server.http_url(), seen.target);
            answer(307, &[("location", &location)], "")
        } else {
            answer(200, &[], r#"{"token": "t0k3n"}"#)
        }
    })
    .await;
    let realm = format!("{}/token", token_server.https_url());
    let registry = HostileRegistry::start("127.0.0.1", &ca, move |_, _| {
        let challenge = format!(r#"Bearer realm="{realm}""#);
        answer(401, &[("www-authenticate", &challenge)], "")
    })
    .await;
    let host = registry.address.to_string();
    let checker = client(&ca, Some(&host));
    let error = unexpected(
        checker
            .resolve_tag(&repository(&registry.https_url(), "app"), "latest")
            .await,
    );
    assert!(error.contains("refusing the redirect"), "{error}");
    assert!(token_server.log().iter().all(|s| s.scheme == "https"));
}

#[tokio::test]
async fn challenges_that_disagree_on_the_realm_are_not_answered() {
    let ca = TestCa::new("hostile test CA");
    let token_server = HostileRegistry::start("127.0.0.2", &ca, |_, _| {
        answer(200, &[], r#"{"token": "t0k3n"}"#)
    })
    .await;
    let (one, two) = (
        format!(r#"Bearer realm="{}/a""#, token_server.https_url()),
        format!(r#"Bearer realm="{}/b""#, token_server.https_url()),
    );
    let registry = HostileRegistry::start("127.0.0.1", &ca, move |_, _| {
        answer(
            401,
            &[("www-authenticate", &one), ("www-authenticate", &two)],
            "",
        )
    })
    .await;
    let host = registry.address.to_string();
    let checker = client(&ca, Some(&host));
    let result = checker
        .resolve_tag(&repository(&registry.https_url(), "app"), "latest")
        .await;
    match result {
        Err(RegistryError::Unauthorized { reason, .. }) => {
            assert!(reason.contains("disagree"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(token_server.log(), vec![]);
}
