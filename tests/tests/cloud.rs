//! Cloud registries without pull secrets: the real sidecar logs in with the pod's cloud
//! identity (fake provider endpoints on 127.0.0.1) to a real registry that wants exactly
//! those credentials; logins are reused until they expire; every failure is an error with
//! one clear line, never a restart.

use std::process::Command;
use std::time::Duration;

use pod_reloaded_tests::api_server::ApiServer;
use pod_reloaded_tests::cloud_fakes::{self, CloudFakes};
use pod_reloaded_tests::fault_proxy::{BearerAuth, FaultProxy};
use pod_reloaded_tests::process::{eventually, Running};
use pod_reloaded_tests::registry::{Registry, RegistryOptions};
use pod_reloaded_tests::workloads::{deployment, running_pod, sidecar_command};
use serde_json::json;

const ECR_HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const GCR_HOST: &str = "europe-west4-docker.pkg.dev";
const ACR_HOST: &str = "shop.azurecr.io";

struct Cloud {
    api: ApiServer,
    fakes: CloudFakes,
    registry: Registry,
    _proxy: Option<FaultProxy>,
    /// Where the sidecar reaches the "cloud registry".
    url: String,
    host: &'static str,
    _dir: tempfile::TempDir,
}

impl Cloud {
    /// A registry standing in for `host`, wanting `auth`, with `demo/app:latest` pushed
    /// and a pod of a Deployment running it.
    async fn start(
        host: &'static str,
        basic: Option<(&str, &str)>,
        bearer: Option<(&str, &str)>,
        ecr_lifetime: Duration,
    ) -> Self {
        let registry = Registry::start(RegistryOptions {
            basic_auth: basic.map(|(u, p)| (u.to_string(), p.to_string())),
            tls: false,
        })
        .await;
        let pushed = registry
            .push_index("demo/app", "latest", "v1", &[("linux", "amd64")], false)
            .await;
        let proxy = match bearer {
            Some((user, password)) => Some(
                FaultProxy::start(
                    &registry.base_url,
                    Some(BearerAuth {
                        credentials: Some((user.to_string(), password.to_string())),
                        token_lifetime: Duration::from_secs(300),
                    }),
                )
                .await,
            ),
            None => None,
        };
        let url = proxy
            .as_ref()
            .map_or(registry.base_url.clone(), |p| p.base_url());
        let api = ApiServer::start().await.unwrap();
        let image = format!("{host}/demo/app:latest");
        let owner = deployment(&api, "web", &image, json!({}));
        running_pod(
            &api,
            "web-1",
            Some(&owner),
            &image,
            &format!("{host}/demo/app@{}", pushed.digest),
            "2026-11-24T00:00:00Z",
        );
        Self {
            api,
            fakes: CloudFakes::start(ecr_lifetime).await,
            registry,
            _proxy: proxy,
            url,
            host,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The sidecar, told to reach the cloud host at the stand-in registry.
    fn sidecar(&self, env: &[(&str, String)]) -> Command {
        let mut command = sidecar_command(
            &self.api,
            "web-1",
            "web",
            "1s",
            Some(&format!("{}={}", self.host, self.url)),
        );
        // Never the real instance metadata service: only 127.0.0.1.
        command.env("AWS_EC2_METADATA_DISABLED", "true");
        for (name, value) in env {
            command.env(name, value);
        }
        command
    }

    fn file(&self, name: &str, contents: &str) -> String {
        let path = self._dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    }

    fn irsa_env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                self.file("irsa-token", cloud_fakes::WEB_IDENTITY_TOKEN),
            ),
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/pod-reloaded".into(),
            ),
            ("AWS_ENDPOINT_URL_STS", self.fakes.url("/sts")),
            ("AWS_ENDPOINT_URL_ECR", self.fakes.url("/ecr")),
        ]
    }
}

/// One round logs in and finds the pod up to date.
fn checks_up_to_date_once(mut command: Command) {
    let output = command.arg("--once").output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("decision=\"up-to-date\""), "{text}");
}

/// Env vars given to the sidecar.
type Env = Vec<(&'static str, String)>;

fn up_to_date(sidecar: &Running) -> usize {
    sidecar.output().matches("decision=\"up-to-date\"").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_with_irsa_logs_in_once_reuses_it_and_renews_when_it_expires() {
    let cloud = Cloud::start(
        ECR_HOST,
        Some(("AWS", cloud_fakes::ECR_PASSWORD)),
        None,
        Duration::from_secs(4),
    )
    .await;
    let sidecar = Running::spawn(cloud.sidecar(&cloud.irsa_env()));
    let checked = eventually(Duration::from_secs(20), || up_to_date(&sidecar) >= 1).await;
    assert!(checked, "{}", sidecar.output());
    assert_eq!(
        (cloud.fakes.calls("sts"), cloud.fakes.calls("ecr")),
        (1, 1),
        "first round logs in"
    );
    let rounds = eventually(Duration::from_secs(20), || up_to_date(&sidecar) >= 2).await;
    assert!(rounds);
    assert_eq!(
        cloud.fakes.calls("ecr"),
        1,
        "the next round reuses the login"
    );
    // The token lives 4s and is renewed at half its life.
    let renewed = eventually(Duration::from_secs(20), || cloud.fakes.calls("ecr") >= 2).await;
    assert!(renewed, "{}", sidecar.output());
    let after = up_to_date(&sidecar);
    let still = eventually(Duration::from_secs(20), || up_to_date(&sidecar) > after).await;
    assert!(still, "{}", sidecar.output());
    assert!(cloud.api.requests().iter().all(|r| !r.is_write()));
    drop(cloud.registry);
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_with_the_instance_role_through_imdsv2() {
    let cloud = Cloud::start(
        ECR_HOST,
        Some(("AWS", cloud_fakes::ECR_PASSWORD)),
        None,
        Duration::from_secs(3600),
    )
    .await;
    let mut command = cloud.sidecar(&[
        ("AWS_ENDPOINT_URL_ECR", cloud.fakes.url("/ecr")),
        (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            cloud.fakes.url("/imds"),
        ),
    ]);
    command
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .arg("--once");
    let output = command.output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("decision=\"up-to-date\""), "{text}");
    assert_eq!(cloud.fakes.calls("imds"), 3, "token, role, credentials");
    assert_eq!(cloud.fakes.calls("ecr"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn artifact_registry_with_the_metadata_server() {
    let cloud = Cloud::start(
        GCR_HOST,
        None,
        Some(("oauth2accesstoken", cloud_fakes::GCP_TOKEN)),
        Duration::ZERO,
    )
    .await;
    let command = cloud.sidecar(&[("GCE_METADATA_HOST", cloud.fakes.address.to_string())]);
    checks_up_to_date_once(command);
    assert_eq!(cloud.fakes.calls("gce"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn acr_with_workload_identity() {
    let cloud = Cloud::start(
        ACR_HOST,
        None,
        Some((
            "00000000-0000-0000-0000-000000000000",
            cloud_fakes::ACR_REFRESH_TOKEN,
        )),
        Duration::ZERO,
    )
    .await;
    let command = cloud.sidecar(&[
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            cloud.file("federated", cloud_fakes::FEDERATED_TOKEN),
        ),
        (
            "AZURE_CLIENT_ID",
            "11111111-2222-3333-4444-555555555555".into(),
        ),
        ("AZURE_TENANT_ID", "tenant-id".into()),
        ("AZURE_AUTHORITY_HOST", cloud.fakes.url("/entra")),
    ]);
    checks_up_to_date_once(command);
    assert_eq!(cloud.fakes.calls("entra"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_failure_is_one_clear_error_and_never_a_restart() {
    let cloud = Cloud::start(
        ECR_HOST,
        Some(("AWS", cloud_fakes::ECR_PASSWORD)),
        None,
        Duration::from_secs(3600),
    )
    .await;
    let mut wrong_token = cloud.irsa_env();
    wrong_token[0].1 = cloud.file("stale", "someone-elses-token");
    let cases: Vec<(Env, &[&str], &str)> = vec![
        (vec![], &[], "Amazon ECR login failed: no AWS identity"),
        (
            wrong_token,
            &[],
            "STS AssumeRoleWithWebIdentity answered HTTP 403",
        ),
        (cloud.irsa_env(), &["--cloud-auth", "none"], "unauthorized"),
    ];
    for (env, args, said) in cases {
        let sts_before = cloud.fakes.calls("sts");
        let mut command = cloud.sidecar(&env);
        command.args(args).arg("--once");
        let output = command.output().unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{said}: {text}");
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(said)).collect();
        assert_eq!(lines.len(), 1, "{said}: one clear line\n{text}");
        assert!(lines[0].contains("decision=\"error\""), "{}", lines[0]);
        if args.contains(&"none") {
            assert_eq!(
                cloud.fakes.calls("sts"),
                sts_before,
                "--cloud-auth none never logs in"
            );
        }
    }
    assert!(
        cloud.api.requests().iter().all(|r| !r.is_write()),
        "no restart"
    );
}
