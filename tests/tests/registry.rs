//! The sidecar's registry client against a real registry (distribution 2.8): the digest it
//! reports equals what the registry stored, for single manifests and multi-arch images,
//! with no auth, htpasswd Basic auth, TLS from a test CA, and Bearer tokens.

use std::time::Duration;

use pod_reloaded_sidecar::platform::Platform;
use pod_reloaded_sidecar::registry::credentials::Credentials;
use pod_reloaded_sidecar::registry::manifest::{ManifestKind, RemoteTag};
use pod_reloaded_sidecar::registry::{RegistryClient, RegistryError, Repository};
use pod_reloaded_tests::fault_proxy::{BearerAuth, Fault, FaultProxy};
use pod_reloaded_tests::registry::{docker_config_json, Registry, RegistryOptions};

fn client(
    http: reqwest::ClientBuilder,
    credentials: Credentials,
    platform: &str,
) -> RegistryClient {
    RegistryClient::new(http, credentials, Platform::parse(platform).unwrap()).unwrap()
}

fn plain_http() -> reqwest::ClientBuilder {
    reqwest::Client::builder().timeout(Duration::from_secs(10))
}

fn repository(base_url: &str, name: &str) -> Repository {
    Repository {
        base_url: base_url.to_string(),
        host: base_url.split_once("://").unwrap().1.to_string(),
        registry: base_url.split_once("://").unwrap().1.to_string(),
        name: name.to_string(),
    }
}

fn credentials_for(host: &str, user: &str, password: &str) -> Credentials {
    let mut credentials = Credentials::default();
    let problems = credentials.add_config(
        docker_config_json(host, user, password)
            .to_string()
            .as_bytes(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    credentials
}

#[tokio::test]
async fn digests_match_what_the_registry_stored() {
    let registry = Registry::start(RegistryOptions::default()).await;
    let oci = registry
        .push_single("team/single", Some("oci"), "s1", ("linux", "amd64"), false)
        .await;
    let docker = registry
        .push_single(
            "team/single",
            Some("docker"),
            "s2",
            ("linux", "amd64"),
            true,
        )
        .await;
    let platforms = [("linux", "amd64"), ("linux", "arm64")];
    let index = registry
        .push_index("team/multi", "oci", "m1", &platforms, false)
        .await;
    let list = registry
        .push_index("team/multi", "docker", "m2", &platforms, true)
        .await;

    let amd64 = client(plain_http(), Credentials::default(), "linux/amd64");
    let single = repository(&registry.base_url, "team/single");
    let multi = repository(&registry.base_url, "team/multi");
    for (repo, tag, pushed, kind) in [
        (&single, "oci", &oci.digest, ManifestKind::Manifest),
        (&single, "docker", &docker.digest, ManifestKind::Manifest),
        (&multi, "oci", &index.digest, ManifestKind::Index),
        (&multi, "docker", &list.digest, ManifestKind::Index),
    ] {
        let remote = amd64.resolve_tag(repo, tag).await.unwrap();
        assert_eq!(
            remote.digest,
            registry.stored_tag_digest(&repo.name, tag),
            "{tag}"
        );
        assert_eq!(&remote.digest, pushed);
        assert_eq!(remote.kind, kind);
    }

    // Index inspection: the children, and the config of our platform's manifest.
    let arm64 = client(plain_http(), Credentials::default(), "linux/arm64");
    for pushed in [&index, &list] {
        let remote = RemoteTag {
            digest: pushed.digest.clone(),
            kind: ManifestKind::Index,
        };
        let details = amd64.inspect(&multi, &remote, false).await.unwrap();
        let children: Vec<String> = pushed.manifests.iter().map(|m| m.digest.clone()).collect();
        assert_eq!(details.index_manifests, children);
        assert_eq!(details.platform_config, None, "config not asked for");
        let details = amd64.inspect(&multi, &remote, true).await.unwrap();
        assert_eq!(
            details.platform_config.as_ref(),
            Some(&pushed.manifests[0].config_digest)
        );
        let details = arm64.inspect(&multi, &remote, true).await.unwrap();
        assert_eq!(
            details.platform_config.as_ref(),
            Some(&pushed.manifests[1].config_digest)
        );
    }
    let s390x = client(plain_http(), Credentials::default(), "linux/s390x");
    let remote = RemoteTag {
        digest: index.digest.clone(),
        kind: ManifestKind::Index,
    };
    assert!(matches!(
        s390x.inspect(&multi, &remote, true).await,
        Err(RegistryError::Unexpected { .. })
    ));
    let remote = RemoteTag {
        digest: oci.digest.clone(),
        kind: ManifestKind::Manifest,
    };
    let details = amd64.inspect(&single, &remote, true).await.unwrap();
    assert_eq!(details.platform_config, Some(oci.config_digest.clone()));

    // A missing tag is NotFound, a missing repository too.
    assert!(matches!(
        amd64.resolve_tag(&single, "nope").await,
        Err(RegistryError::NotFound { .. })
    ));
    assert!(matches!(
        amd64
            .resolve_tag(&repository(&registry.base_url, "no/such"), "latest")
            .await,
        Err(RegistryError::NotFound { .. })
    ));
}

#[tokio::test]
async fn basic_auth_with_pull_secret_credentials() {
    let registry = Registry::start(RegistryOptions {
        basic_auth: Some(("puller".into(), "s3cret".into())),
        tls: false,
    })
    .await;
    let pushed = registry
        .push_single("private/app", Some("main"), "b1", ("linux", "amd64"), false)
        .await;
    let repo = repository(&registry.base_url, "private/app");

    let good = client(
        plain_http(),
        credentials_for(&registry.host(), "puller", "s3cret"),
        "linux/amd64",
    );
    assert_eq!(
        good.resolve_tag(&repo, "main").await.unwrap().digest,
        pushed.digest
    );

    let anonymous = client(plain_http(), Credentials::default(), "linux/amd64");
    assert!(matches!(
        anonymous.resolve_tag(&repo, "main").await,
        Err(RegistryError::Unauthorized { .. })
    ));
    let wrong = client(
        plain_http(),
        credentials_for(&registry.host(), "puller", "wrong"),
        "linux/amd64",
    );
    assert!(matches!(
        wrong.resolve_tag(&repo, "main").await,
        Err(RegistryError::Unauthorized { .. })
    ));

    // Two mounted pull secrets for the same registry, the first one's password stale: each
    // matching credential is tried in turn, as the kubelet tries them.
    let secrets = tempfile::tempdir().unwrap();
    for (secret, password) in [("a-stale", "wrong"), ("b-current", "s3cret")] {
        let dir = secrets.path().join(secret);
        std::fs::create_dir(&dir).unwrap();
        let config = docker_config_json(&registry.host(), "puller", password);
        std::fs::write(dir.join(".dockerconfigjson"), config.to_string()).unwrap();
    }
    let (both, problems) = Credentials::load(secrets.path());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(both.all_for_image(&registry.host(), "private/app").len(), 2);
    let second_works = client(plain_http(), both, "linux/amd64");
    assert_eq!(
        second_works
            .resolve_tag(&repo, "main")
            .await
            .unwrap()
            .digest,
        pushed.digest
    );
}

#[tokio::test]
async fn tls_registry_with_a_custom_ca() {
    let registry = Registry::start(RegistryOptions {
        basic_auth: None,
        tls: true,
    })
    .await;
    let pushed = registry
        .push_single("secure/app", Some("v1"), "t1", ("linux", "amd64"), false)
        .await;
    let repo = repository(&registry.base_url, "secure/app");
    assert!(registry.base_url.starts_with("https://"));

    let pem = std::fs::read(registry.ca.as_ref().unwrap()).unwrap();
    let trusting = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    let remote = client(trusting, Credentials::default(), "linux/amd64")
        .resolve_tag(&repo, "v1")
        .await
        .unwrap();
    assert_eq!(remote.digest, pushed.digest);

    let untrusting = reqwest::Client::builder().use_rustls_tls();
    assert!(matches!(
        client(untrusting, Credentials::default(), "linux/amd64")
            .resolve_tag(&repo, "v1")
            .await,
        Err(RegistryError::Transport { .. })
    ));
}

#[tokio::test]
async fn bearer_tokens_are_fetched_once_and_renewed_when_expired() {
    let registry = Registry::start(RegistryOptions::default()).await;
    let pushed = registry
        .push_index("demo/app", "latest", "tok", &[("linux", "amd64")], false)
        .await;

    // Anonymous tokens; a token lives 6s and is renewed 5s early, i.e. after 1s.
    let proxy = FaultProxy::start(
        &registry.base_url,
        Some(BearerAuth {
            credentials: None,
            token_lifetime: Duration::from_secs(6),
        }),
    )
    .await;
    let repo = repository(&proxy.base_url(), "demo/app");
    let anonymous = client(plain_http(), Credentials::default(), "linux/amd64");
    assert_eq!(
        anonymous.resolve_tag(&repo, "latest").await.unwrap().digest,
        pushed.digest
    );
    assert_eq!(proxy.count("GET", "/token"), 1);
    assert_eq!(
        proxy.count("HEAD", "/manifests/"),
        2,
        "challenge, then the authorized HEAD"
    );
    proxy.clear_requests();
    for _ in 0..3 {
        anonymous.resolve_tag(&repo, "latest").await.unwrap();
    }
    assert_eq!(
        proxy.count("HEAD", "/manifests/"),
        3,
        "one HEAD per resolve with a cached token"
    );
    assert_eq!(proxy.count("GET", "/token"), 0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    proxy.clear_requests();
    anonymous.resolve_tag(&repo, "latest").await.unwrap();
    assert_eq!(
        proxy.count("GET", "/token"),
        1,
        "expired token renewed up front"
    );
    assert_eq!(proxy.count("HEAD", "/manifests/"), 1, "no 401 round trip");

    // A token server that wants credentials: the pull secret's are sent.
    let guarded = FaultProxy::start(
        &registry.base_url,
        Some(BearerAuth {
            credentials: Some(("robot".into(), "pw".into())),
            token_lifetime: Duration::from_secs(300),
        }),
    )
    .await;
    let repo = repository(&guarded.base_url(), "demo/app");
    let with_secret = client(
        plain_http(),
        credentials_for(&guarded.host(), "robot", "pw"),
        "linux/amd64",
    );
    assert_eq!(
        with_secret
            .resolve_tag(&repo, "latest")
            .await
            .unwrap()
            .digest,
        pushed.digest
    );
    let wrong = client(
        plain_http(),
        credentials_for(&guarded.host(), "robot", "nope"),
        "linux/amd64",
    );
    assert!(matches!(
        wrong.resolve_tag(&repo, "latest").await,
        Err(RegistryError::Unauthorized { .. })
    ));

    // The same registry reached as `localhost`: its challenge names a plain-HTTP realm on
    // another host (127.0.0.1), so the pull secret is not sent there.
    let port = guarded.host().rsplit_once(':').unwrap().1.to_string();
    let elsewhere = Repository {
        base_url: format!("http://localhost:{port}"),
        host: format!("localhost:{port}"),
        registry: format!("localhost:{port}"),
        name: "demo/app".into(),
    };
    let careful = client(
        plain_http(),
        credentials_for(&elsewhere.host, "robot", "pw"),
        "linux/amd64",
    );
    guarded.clear_requests();
    let error = careful.resolve_tag(&elsewhere, "latest").await.unwrap_err();
    assert!(
        matches!(&error, RegistryError::Unauthorized { reason, .. } if reason.contains("not sending")),
        "{error}"
    );
    assert!(
        guarded
            .requests()
            .iter()
            .all(|r| !r.path.contains("/token")),
        "no token request carried the credentials"
    );
}

#[tokio::test]
async fn bad_answers_are_errors_never_digests() {
    let registry = Registry::start(RegistryOptions::default()).await;
    let pushed = registry
        .push_single("demo/app", Some("latest"), "bad", ("linux", "amd64"), false)
        .await;
    let proxy = FaultProxy::start(&registry.base_url, None).await;
    let repo = repository(&proxy.base_url(), "demo/app");
    let http = reqwest::Client::builder().timeout(Duration::from_millis(500));
    let checker = client(http, Credentials::default(), "linux/amd64");

    proxy.set_fault(Fault::Status(500));
    assert!(matches!(
        checker.resolve_tag(&repo, "latest").await,
        Err(RegistryError::Status { status: 500, .. })
    ));
    proxy.set_fault(Fault::TooManyRequests {
        retry_after_seconds: 7,
    });
    let error = checker.resolve_tag(&repo, "latest").await.unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)), "{error}");
    proxy.set_fault(Fault::Hang);
    assert!(matches!(
        checker.resolve_tag(&repo, "latest").await,
        Err(RegistryError::Transport { .. })
    ));
    for bad in [
        "sha256:1234",
        "md5:abc",
        "",
        &format!("sha256:{}", "G".repeat(64)),
    ] {
        proxy.set_fault(Fault::DigestHeader(bad.to_string()));
        assert!(
            matches!(
                checker.resolve_tag(&repo, "latest").await,
                Err(RegistryError::Unexpected { .. })
            ),
            "{bad:?}"
        );
    }
    // No digest header: one GET, and the digest is the hash of the bytes.
    proxy.set_fault(Fault::NoDigestHeader);
    proxy.clear_requests();
    assert_eq!(
        checker.resolve_tag(&repo, "latest").await.unwrap().digest,
        pushed.digest
    );
    assert_eq!(proxy.count("GET", "/manifests/"), 1);
    // A HEAD without Content-Type is not an error: the GET's answer says what it is.
    proxy.set_fault(Fault::NoContentTypeOnHead);
    proxy.clear_requests();
    assert_eq!(
        checker.resolve_tag(&repo, "latest").await.unwrap(),
        RemoteTag {
            digest: pushed.digest.clone(),
            kind: ManifestKind::Manifest
        }
    );
    assert_eq!(proxy.count("GET", "/manifests/"), 1);
    proxy.set_fault(Fault::None);
    assert_eq!(
        checker.resolve_tag(&repo, "latest").await.unwrap().digest,
        pushed.digest
    );
}
