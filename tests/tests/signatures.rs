//! Signed images only, with the real signer: cosign (built from its Go module) signs test
//! images in the real registry, keyed and with certificates from a test Fulcio
//! timestamped by the real Sigstore timestamp authority, in both of cosign's formats. The
//! real sidecar binary verifies them before any restart, against a real API server; for
//! each case, `cosign verify` is asked too and must agree with the sidecar's verdict.

use std::process::Command;
use std::time::Duration;

use pod_reloaded_contract as contract;
use pod_reloaded_contract::trust::{KeylessIdentity, NamedPolicy, TransparencyLog, TrustPolicy};
use pod_reloaded_tests::api_server::ApiServer;
use pod_reloaded_tests::fault_proxy::{FaultProxy, RequestFault};
use pod_reloaded_tests::process::Running;
use pod_reloaded_tests::registry::{docker_config_json, Registry, RegistryOptions};
use pod_reloaded_tests::sigstore::{
    trusted_root, Cosign, CosignTrust, Format, Signer, TestFulcio, Tsa, Validity,
};
use pod_reloaded_tests::workloads::{
    deployment, deployment_path, events_prefix, running_pod, sidecar_command,
};
use pod_reloaded_tests::world::PLATFORMS;
use serde_json::{json, Value};

const EARLY: &str = "2026-11-24T00:00:00Z";
const ISSUER: &str = "https://token.actions.githubusercontent.com";
const RELEASE_IDENTITY: &str =
    "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main";
const RELEASE_SUBJECT: &str =
    r"^https://github\.com/acme/.+/\.github/workflows/release\.ya?ml@refs/heads/main$";

/// A registry, a real API server and cosign.
struct Bench {
    registry: Registry,
    api: ApiServer,
    cosign: Cosign,
    /// Where the sidecar asks (the registry itself, or a proxy in front of it).
    registry_url: String,
    pull_secrets: Option<tempfile::TempDir>,
}

/// What happened to one workload after its tag moved to `new`.
struct Outcome {
    new: String,
    output: String,
    deployment: Value,
    events: Vec<Value>,
}

impl Outcome {
    fn restarted_for(&self) -> Option<&str> {
        self.deployment["spec"]["template"]["metadata"]["annotations"]
            [contract::ANNOTATION_RESTARTED_FOR]
            .as_str()
    }

    fn quarantined(&self) -> Option<&str> {
        self.deployment["metadata"]["annotations"][contract::ANNOTATION_QUARANTINED].as_str()
    }

    fn event(&self, reason: &str) -> Vec<&str> {
        self.events
            .iter()
            .filter(|e| e["reason"] == reason)
            .filter_map(|e| e["message"].as_str())
            .collect()
    }

    /// Rolled out: the template restarted for the new digest, no rejection.
    fn assert_rolled_out(&self, signer: &str) {
        assert_eq!(
            self.restarted_for(),
            Some(format!("web={}", self.new).as_str()),
            "{}",
            self.output
        );
        let restarted = self.event("ImageDigestChanged");
        assert_eq!(restarted.len(), 1, "{}", self.output);
        assert!(
            restarted[0].contains(&format!("signature verified: web signed by {signer}")),
            "{}",
            restarted[0]
        );
        assert!(
            self.event("ImageSignatureRejected").is_empty(),
            "{:?}\n{}",
            self.events,
            self.output
        );
    }

    /// Never started: no restart, the digest quarantined, one Warning saying why.
    fn assert_rejected(&self, because: &str) {
        assert_eq!(self.restarted_for(), None, "{}", self.output);
        assert!(
            self.quarantined()
                .is_some_and(|q| q.contains(&format!("web={}", self.new))),
            "{:?}\n{}",
            self.quarantined(),
            self.output
        );
        let rejected = self.event("ImageSignatureRejected");
        assert_eq!(rejected.len(), 1, "{}", self.output);
        assert!(rejected[0].contains(because), "{}", rejected[0]);
        assert!(self.event("ImageDigestChanged").is_empty());
    }
}

impl Bench {
    async fn start(options: RegistryOptions) -> Self {
        let registry = Registry::start(options).await;
        let registry_url = registry.base_url.clone();
        let pull_secrets = registry.credentials().map(|(user, password)| {
            let dir = tempfile::tempdir().expect("pull secrets dir");
            let secret = dir.path().join("registry");
            std::fs::create_dir(&secret).expect("secret dir");
            let config = docker_config_json(&registry.host(), user, password);
            std::fs::write(secret.join(".dockerconfigjson"), config.to_string())
                .expect("pull secret");
            dir
        });
        Self {
            api: ApiServer::start().await.expect("API server"),
            registry,
            cosign: Cosign::new(),
            registry_url,
            pull_secrets,
        }
    }

    fn image(&self, app: &str) -> String {
        format!("{}/demo/{app}:latest", self.registry.host())
    }

    /// Deployment `app` and its pod `<app>-1` running the tag's first push; then the tag
    /// moves, and `sign` signs the new digest (or not). Returns the new digest.
    async fn moved(&self, app: &str, sign: impl FnOnce(&str)) -> String {
        let repository = format!("demo/{app}");
        let first = self
            .registry
            .push_index(&repository, "latest", "v1", &PLATFORMS, false)
            .await;
        let owner = deployment(&self.api, app, &self.image(app), json!({}));
        running_pod(
            &self.api,
            &format!("{app}-1"),
            Some(&owner),
            &self.image(app),
            &format!("{}/{repository}@{}", self.registry.host(), first.digest),
            EARLY,
        );
        let second = self
            .registry
            .push_index(&repository, "latest", "v2", &PLATFORMS, false)
            .await;
        sign(&second.digest);
        second.digest
    }

    fn sidecar(&self, app: &str, policy: &NamedPolicy) -> Command {
        let mut command = sidecar_command(
            &self.api,
            &format!("{app}-1"),
            "web",
            "1s",
            Some(&self.registry_url),
        );
        command.env(contract::ENV_VERIFY_POLICY, policy.to_json());
        if let Some(dir) = &self.pull_secrets {
            command.env(contract::ENV_PULL_SECRETS_DIR, dir.path());
        }
        command
    }

    /// One round of `app`'s sidecar under `policy`.
    async fn decide(&self, app: &str, new: &str, policy: &NamedPolicy) -> Outcome {
        let output = run_once(self.sidecar(app, policy)).await;
        self.outcome(app, new, output)
    }

    fn outcome(&self, app: &str, new: &str, output: String) -> Outcome {
        let events = self
            .api
            .list(&events_prefix())
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == app)
            .collect();
        Outcome {
            new: new.to_string(),
            output,
            deployment: self.api.get(&deployment_path(app)).expect("deployment"),
            events,
        }
    }

    fn sign(&self, app: &str, digest: &str, signer: &Signer, format: Format, tsa: Option<&Tsa>) {
        self.cosign.sign(
            &self.registry,
            &format!("demo/{app}"),
            digest,
            signer,
            format,
            tsa,
        );
    }

    /// `cosign verify`'s verdict: true when it accepts.
    fn cosign_accepts(&self, app: &str, digest: &str, trust: &CosignTrust) -> bool {
        self.cosign
            .verify(&self.registry, &format!("demo/{app}"), digest, trust)
            .is_ok()
    }
}

async fn run_once(mut command: Command) -> String {
    command.arg("--once");
    let mut running = Running::spawn(command);
    let status = tokio::task::block_in_place(|| running.wait_for_exit(Duration::from_secs(60)))
        .expect("--once finishes");
    let output = running.output();
    assert!(status.code().is_some(), "{output}");
    output
}

fn keyed(name: &str, keys: &[&Signer], transparency_log: TransparencyLog) -> NamedPolicy {
    NamedPolicy {
        name: name.to_string(),
        policy: TrustPolicy {
            keys: keys.iter().map(|s| s.public_pem.clone()).collect(),
            keyless: Vec::new(),
            transparency_log,
            // Quarantined at once: the cases below are about the verdict, not the wait.
            wait_for_signature: Some("0s".to_string()),
            trusted_root: String::new(),
        },
    }
}

fn keyless(subject_reg_exp: &str, trusted_root: &str) -> NamedPolicy {
    NamedPolicy {
        name: "release".to_string(),
        policy: TrustPolicy {
            keys: Vec::new(),
            keyless: vec![KeylessIdentity {
                issuer: ISSUER.to_string(),
                subject_reg_exp: subject_reg_exp.to_string(),
            }],
            transparency_log: TransparencyLog::Optional,
            wait_for_signature: Some("0s".to_string()),
            trusted_root: trusted_root.to_string(),
        },
    }
}

fn fingerprint(signer: &Signer) -> String {
    use sha2::Digest as _;
    let der = contract::trust::public_key_der(&signer.public_pem).expect("a public key");
    format!("key sha256:{}", hex::encode(sha2::Sha256::digest(der)))
}

#[tokio::test(flavor = "multi_thread")]
async fn key_signed_pushes_roll_out_in_both_formats_and_the_rest_never_starts() {
    let bench = Bench::start(RegistryOptions::default()).await;
    let release = bench.cosign.key_pair("release");
    let intruder = bench.cosign.key_pair("intruder");
    let policy = keyed("release", &[&release], TransparencyLog::Optional);
    let trust = CosignTrust::Key(release.public_pem.clone());

    // Signed by the policy's key, in cosign v3's bundle format and in the legacy one.
    for (app, format) in [("bundle", Format::Bundle), ("legacy", Format::Legacy)] {
        let new = bench
            .moved(app, |d| bench.sign(app, d, &release, format, None))
            .await;
        let outcome = bench.decide(app, &new, &policy).await;
        outcome.assert_rolled_out(&fingerprint(&release));
        assert!(bench.cosign_accepts(app, &new, &trust), "{app}");
    }

    // Unsigned: quarantined with one Warning, never restarted; the next round says
    // nothing more. Then a signed push (a signature added later) rolls out.
    let new = bench.moved("unsigned", |_| {}).await;
    let outcome = bench.decide("unsigned", &new, &policy).await;
    outcome.assert_rejected("no cosign signature found");
    assert!(!bench.cosign_accepts("unsigned", &new, &trust));
    let again = bench.decide("unsigned", &new, &policy).await;
    assert_eq!(
        again.event("ImageSignatureRejected").len(),
        1,
        "once per digest"
    );
    assert_eq!(again.restarted_for(), None);
    let signed = bench
        .registry
        .push_index("demo/unsigned", "latest", "v3", &PLATFORMS, false)
        .await;
    bench.sign("unsigned", &signed.digest, &release, Format::Bundle, None);
    let later = bench.decide("unsigned", &signed.digest, &policy).await;
    assert_eq!(
        later.restarted_for(),
        Some(format!("web={}", signed.digest).as_str()),
        "{}",
        later.output
    );
    assert_eq!(later.event("ImageDigestChanged").len(), 1);
    assert_eq!(later.event("ImageSignatureRejected").len(), 1);
    assert!(
        later.quarantined().is_some_and(|q| q.contains(&new)),
        "the rejected digest stays quarantined"
    );

    // Signed by another key, in both formats.
    let new = bench
        .moved("intruder", |d| {
            bench.sign("intruder", d, &intruder, Format::Bundle, None);
            bench.sign("intruder", d, &intruder, Format::Legacy, None);
        })
        .await;
    let outcome = bench.decide("intruder", &new, &policy).await;
    outcome.assert_rejected("not signed by a policy key");
    assert!(!bench.cosign_accepts("intruder", &new, &trust));

    // A payload naming another digest: a real signature of one push, copied to the
    // `.sig` tag of the next.
    let new = bench
        .moved("copied", |d| {
            let _ = d;
        })
        .await;
    let older = bench
        .registry
        .push_index("demo/copied", "older", "v0", &PLATFORMS, false)
        .await;
    bench.sign("copied", &older.digest, &release, Format::Legacy, None);
    bench
        .registry
        .copy_manifest(
            "demo/copied",
            &format!("{}.sig", older.digest.replacen(':', "-", 1)),
            &format!("{}.sig", new.replacen(':', "-", 1)),
        )
        .await;
    let outcome = bench.decide("copied", &new, &policy).await;
    outcome.assert_rejected("digest mismatch");
    assert!(!bench.cosign_accepts("copied", &new, &trust));

    // A policy that requires a transparency-log entry refuses an offline signature.
    // (`cosign verify` would ask the public Rekor, which tests never reach.)
    let new = bench
        .moved("offline", |d| {
            bench.sign("offline", d, &release, Format::Bundle, None)
        })
        .await;
    let required = keyed("release", &[&release], TransparencyLog::Required);
    let outcome = bench.decide("offline", &new, &required).await;
    outcome.assert_rejected("no transparency-log entry, and the policy requires one");

    let metrics_said = outcome.output.contains("signature rejected");
    assert!(metrics_said, "{}", outcome.output);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_signed_pushes_roll_out_only_for_the_policy_identity() {
    let bench = Bench::start(RegistryOptions::default()).await;
    let tsa = Tsa::start().await;
    let fulcio = TestFulcio::new();
    let root = trusted_root(&fulcio, Some(&tsa));
    let policy = keyless(RELEASE_SUBJECT, &root);
    let trust = CosignTrust::Identity {
        trusted_root: root.clone(),
        issuer: ISSUER.to_string(),
        subject_reg_exp: RELEASE_SUBJECT.to_string(),
    };
    let release = bench
        .cosign
        .certified("release", &fulcio, RELEASE_IDENTITY, ISSUER);

    for (app, format) in [("bundle", Format::Bundle), ("legacy", Format::Legacy)] {
        let new = bench
            .moved(app, |d| bench.sign(app, d, &release, format, Some(&tsa)))
            .await;
        let outcome = bench.decide(app, &new, &policy).await;
        outcome.assert_rolled_out(&format!("{RELEASE_IDENTITY} (issuer {ISSUER})"));
        let verdict = bench
            .cosign
            .verify(&bench.registry, &format!("demo/{app}"), &new, &trust);
        assert!(verdict.is_ok(), "{app}: {verdict:?}");
    }

    // Another identity of the same issuer, in both formats.
    let fork = bench.cosign.certified(
        "fork",
        &fulcio,
        "https://github.com/mallory/app/.github/workflows/release.yml@refs/heads/main",
        ISSUER,
    );
    let new = bench
        .moved("fork", |d| {
            bench.sign("fork", d, &fork, Format::Bundle, Some(&tsa));
            bench.sign("fork", d, &fork, Format::Legacy, Some(&tsa));
        })
        .await;
    let outcome = bench.decide("fork", &new, &policy).await;
    outcome.assert_rejected("does not match");
    assert!(!bench.cosign_accepts("fork", &new, &trust));

    // Without a verified signing time (no timestamp, no log entry), as `cosign verify
    // --insecure-ignore-tlog` does, a certificate counts only while it is valid: a fresh
    // one passes, an expired one does not.
    let new = bench
        .moved("untimed", |d| {
            bench.sign("untimed", d, &release, Format::Bundle, None)
        })
        .await;
    let outcome = bench.decide("untimed", &new, &policy).await;
    outcome.assert_rolled_out(&format!("{RELEASE_IDENTITY} (issuer {ISSUER})"));
    assert!(bench.cosign_accepts("untimed", &new, &trust));
    let expired = bench.cosign.certified_for(
        "expired",
        &fulcio,
        RELEASE_IDENTITY,
        ISSUER,
        Validity::Expired,
    );
    let new = bench
        .moved("expired", |d| {
            bench.sign("expired", d, &expired, Format::Bundle, None)
        })
        .await;
    let outcome = bench.decide("expired", &new, &policy).await;
    outcome.assert_rejected("does not chain to the trusted root now");
    assert!(!bench.cosign_accepts("expired", &new, &trust));

    // A certificate from a CA the trusted root does not hold.
    let elsewhere = TestFulcio::new();
    let stranger = bench
        .cosign
        .certified("stranger", &elsewhere, RELEASE_IDENTITY, ISSUER);
    let new = bench
        .moved("stranger", |d| {
            bench.sign("stranger", d, &stranger, Format::Bundle, Some(&tsa))
        })
        .await;
    let outcome = bench.decide("stranger", &new, &policy).await;
    outcome.assert_rejected("no policy identity signed it");
    assert!(!bench.cosign_accepts("stranger", &new, &trust));
}

#[tokio::test(flavor = "multi_thread")]
async fn signatures_behind_a_pull_secret_are_read_with_it() {
    let bench = Bench::start(RegistryOptions {
        basic_auth: Some(("puller".into(), "s3cret".into())),
        tls: false,
    })
    .await;
    let release = bench.cosign.key_pair("release");
    let policy = keyed("release", &[&release], TransparencyLog::Optional);
    for (app, format) in [("bundle", Format::Bundle), ("legacy", Format::Legacy)] {
        let new = bench
            .moved(app, |d| bench.sign(app, d, &release, format, None))
            .await;
        let outcome = bench.decide(app, &new, &policy).await;
        outcome.assert_rolled_out(&fingerprint(&release));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_referrers_api_is_used_where_the_registry_has_it_and_a_registry_error_never_quarantines(
) {
    let mut bench = Bench::start(RegistryOptions::default()).await;
    let proxy = FaultProxy::start(&bench.registry.base_url, None).await;
    proxy.serve_referrers();
    bench.registry_url = proxy.base_url();
    let release = bench.cosign.key_pair("release");
    let policy = keyed("release", &[&release], TransparencyLog::Optional);

    let new = bench
        .moved("app", |d| {
            bench.sign("app", d, &release, Format::Bundle, None)
        })
        .await;
    let fallback_tag = format!("/manifests/{}", new.replacen(':', "-", 1));
    let referrers = format!("/v2/demo/app/referrers/{new}");

    // The registry fails the referrers request: an error, tried again, never a quarantine.
    proxy.set_request_fault("GET", &referrers, RequestFault::Status(500));
    let failed = bench.decide("app", &new, &policy).await;
    assert_eq!(failed.restarted_for(), None, "{}", failed.output);
    assert_eq!(failed.quarantined(), None, "{}", failed.output);
    assert!(failed.events.is_empty(), "{:?}", failed.events);
    assert!(
        failed
            .output
            .contains("cannot fetch the new digest's signatures"),
        "{}",
        failed.output
    );

    proxy.clear_request_faults();
    proxy.clear_requests();
    let outcome = bench.decide("app", &new, &policy).await;
    outcome.assert_rolled_out(&fingerprint(&release));
    assert_eq!(proxy.count("GET", &referrers), 1);
    let fallback_reads = proxy
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&fallback_tag))
        .count();
    assert_eq!(
        fallback_reads, 0,
        "the fallback tag is for registries without the API"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_round_costs_no_signature_request() {
    let mut bench = Bench::start(RegistryOptions::default()).await;
    let proxy = FaultProxy::start(&bench.registry.base_url, None).await;
    bench.registry_url = proxy.base_url();
    let release = bench.cosign.key_pair("release");
    let policy = keyed("release", &[&release], TransparencyLog::Optional);
    let repository = "demo/steady";
    let first = bench
        .registry
        .push_index(repository, "latest", "v1", &PLATFORMS, false)
        .await;
    let owner = deployment(&bench.api, "steady", &bench.image("steady"), json!({}));
    running_pod(
        &bench.api,
        "steady-1",
        Some(&owner),
        &bench.image("steady"),
        &format!("{}/{repository}@{}", bench.registry.host(), first.digest),
        EARLY,
    );
    let output = run_once(bench.sidecar("steady", &policy)).await;
    assert!(output.contains("up-to-date"), "{output}");
    let requests: Vec<String> = proxy
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        requests,
        vec![format!("HEAD /v2/{repository}/manifests/latest")],
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_signed_moments_later_waits_for_its_signature_then_rolls_out() {
    let bench = Bench::start(RegistryOptions::default()).await;
    let release = bench.cosign.key_pair("release");
    let mut policy = keyed("release", &[&release], TransparencyLog::Optional);
    policy.policy.wait_for_signature = None; // the default: 10 minutes

    // The tag moves first, as a pipeline's push does; the signature comes after.
    let new = bench.moved("pipeline", |_| {}).await;
    let waiting = bench.decide("pipeline", &new, &policy).await;
    assert_eq!(waiting.restarted_for(), None, "{}", waiting.output);
    assert_eq!(
        waiting.quarantined(),
        None,
        "not quarantined while it waits"
    );
    assert!(waiting.events.is_empty(), "{:?}", waiting.events);
    assert!(
        waiting.output.contains("no signature yet; waiting for one"),
        "{}",
        waiting.output
    );
    bench.sign("pipeline", &new, &release, Format::Bundle, None);
    let signed = bench.decide("pipeline", &new, &policy).await;
    signed.assert_rolled_out(&fingerprint(&release));

    // One never signed: quarantined once the wait is over (a sidecar that keeps running).
    policy.policy.wait_for_signature = Some("3s".to_string());
    let new = bench.moved("forgotten", |_| {}).await;
    let sidecar = Running::spawn(bench.sidecar("forgotten", &policy));
    let quarantined = pod_reloaded_tests::process::eventually(Duration::from_secs(60), || {
        bench
            .outcome("forgotten", &new, String::new())
            .quarantined()
            .is_some()
    })
    .await;
    assert!(quarantined, "{}", sidecar.output());
    let outcome = bench.outcome("forgotten", &new, sidecar.output());
    outcome.assert_rejected("after it was first seen");
}
