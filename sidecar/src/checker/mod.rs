//! One round of the checker: observe the pod, ask the registry, compare, decide, act.
//! `restart` decides and acts on a change; `follow` follows the rollout a restart started.
//!
//! The pod is read at start and then only when it matters: when the registry's answer
//! differs from what the pod was last seen running, while a container has not started,
//! and every `POD_REFRESH_ROUNDS` rounds as a safety net. An unchanged round costs one
//! `HEAD` per watched tag and no API request.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use pod_reloaded_contract::image::{RunningDigest, WatchedImage};
use tracing::{info, warn};

use crate::cluster::{Cluster, Owner};
use crate::compare::{Comparison, Need, Verdict};
use crate::config::Config;
use crate::decide::Change;
use crate::effects::{Effects, LogLine, Metric};
use crate::metrics::{CheckResult, Metrics};
use crate::observe::{self, ContainerState};
use crate::registry::credentials::Credentials;
use crate::registry::{RegistryClient, RegistryError, Repository};
use crate::signature::{self, SignaturePolicy, SignatureVerdict};
use pod_reloaded_contract::owner::WorkloadRef;
use pod_reloaded_contract::pod_settings::PodSettings;
use pod_reloaded_contract::settings::{self, Poll};
use std::time::Duration;

mod follow;
mod restart;

/// Rounds between two reads of an unchanged pod (a safety net: the pod's spec and status
/// of a running container do not change without a restart).
pub const POD_REFRESH_ROUNDS: u32 = 10;

pub use crate::effects::RoundOutcome;

/// Signature verdicts kept (a few digests a tag moved through); forgotten all at once
/// beyond, and judged again if seen again.
const MAX_REMEMBERED_VERDICTS: usize = 32;

/// The verdict for one (remote digest, running digest) pair, so an unchanged round costs
/// one HEAD even when the first verdict needed the manifest.
#[derive(Clone, PartialEq, Eq)]
struct KnownVerdict {
    remote_digest: String,
    running: RunningDigest,
    verdict: Verdict,
}

/// What the registry said about one container, compared with what it runs.
struct Checked {
    remote_digest: String,
    verdict: Verdict,
}

pub struct Checker {
    config: Config,
    registry: RegistryClient,
    cluster: Cluster,
    pub metrics: Arc<Metrics>,
    /// Our pod as last read, and the rounds since.
    pod: Option<Pod>,
    rounds_since_pod_read: u32,
    known_verdicts: HashMap<String, KnownVerdict>,
    /// The workload that owns our pod once looked up (it does not change); `Some(None)`
    /// when nothing can be restarted for it.
    workload: Option<Option<WorkloadRef>>,
    /// This pod's ReplicaSet was reused for an earlier revision (read with the owner).
    from_earlier_revision: bool,
    /// True while a rollout pod-reloaded started on our workload is followed: the
    /// workload is read each round until its outcome is recorded.
    following: bool,
    /// Warnings already logged (pinned images, unrestartable owner, ...), not repeated.
    warned: HashSet<String>,
    /// Our pod's settings, read from its annotations with the pod.
    settings: PodSettings,
    /// The workload's desired replicas, read with the pod: they share its checks.
    replicas: u32,
    /// The pod's trust policy, when it has one (or why it cannot be used: then no change
    /// is acted on).
    signature_policy: Option<Result<SignaturePolicy, String>>,
    /// Verdicts on new digests, so a quarantined digest is not verified every round.
    signature_verdicts: HashMap<String, SignatureVerdict>,
    /// When each digest was first seen without any signature.
    unsigned_since: HashMap<String, std::time::Instant>,
}

impl Checker {
    pub fn new(
        config: Config,
        registry: RegistryClient,
        cluster: Cluster,
        metrics: Arc<Metrics>,
    ) -> Self {
        let signature_policy = config.verify_policy.as_ref().map(|named| {
            let policy = SignaturePolicy::new(named);
            match &policy {
                Ok(_) => info!(policy = named.name, "new digests are restarted to only when their cosign signature satisfies this trust policy"),
                Err(error) => warn!(policy = named.name, error, "the trust policy cannot be used: no change will be acted on"),
            }
            policy
        });
        Self {
            signature_policy,
            config,
            registry,
            cluster,
            metrics,
            pod: None,
            rounds_since_pod_read: 0,
            known_verdicts: HashMap::new(),
            workload: None,
            from_earlier_revision: false,
            following: false,
            warned: HashSet::new(),
            settings: PodSettings::default(),
            replicas: 1,
            signature_verdicts: HashMap::new(),
            unsigned_since: HashMap::new(),
        }
    }

    /// True the first time `key` is warned about.
    fn not_yet_warned(&mut self, key: String) -> bool {
        self.warned.insert(key)
    }

    /// Carries out what a decision says about `workload`: its log lines and Events (those
    /// said once, once), its metric, and whether to follow the rollout.
    async fn execute(&mut self, workload: &WorkloadRef, effects: Effects) {
        for said in effects.said {
            if let Some(key) = said.once {
                if !self.not_yet_warned(key) {
                    continue;
                }
            }
            log(workload, &said.log);
            for event in said.events {
                let images = self.images_of(event.to.as_deref());
                self.cluster.event(workload, &event, &images).await;
            }
        }
        match effects.metric {
            Some(Metric::Restart) => self.metrics.restart(),
            Some(Metric::Rollout(result)) => self.metrics.rollout(result),
            None => {}
        }
        if let Some(follow) = effects.follow {
            self.following = follow;
        }
    }

    /// `<container>=<image>[,...]` of the containers a digest record names, from our pod.
    fn images_of(&self, digests: Option<&str>) -> String {
        let (Some(digests), Some(pod)) = (digests, &self.pod) else {
            return String::new();
        };
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or(&[]);
        pod_reloaded_contract::record::DigestRecord::parse(digests)
            .iter()
            .filter_map(|(name, _)| {
                let container = containers.iter().find(|c| c.name == name)?;
                Some(format!("{name}={}", container.image.as_deref()?))
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Reads our pod; `None` (logged) when the API does not answer.
    async fn read_pod(&mut self) -> Option<Pod> {
        match self.cluster.read_pod().await {
            Ok(pod) => {
                if let Some(annotations) = &pod.metadata.annotations {
                    self.settings = PodSettings::lenient(annotations);
                }
                self.pod = Some(pod.clone());
                self.rounds_since_pod_read = 0;
                Some(pod)
            }
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "round failed: cannot read our pod"
                );
                None
            }
        }
    }

    pub async fn round(&mut self) -> RoundOutcome {
        let cached = match &self.pod {
            Some(pod) if self.rounds_since_pod_read < POD_REFRESH_ROUNDS => {
                self.rounds_since_pod_read += 1;
                Some(pod.clone())
            }
            _ => None,
        };
        let fresh = cached.is_none();
        let pod = match cached {
            Some(pod) => pod,
            None => match self.read_pod().await {
                Some(pod) => pod,
                None => return RoundOutcome::Failed { retry_after: None },
            },
        };

        if self.following || follow::restarted_recently(&pod, self.settings.rollout_timeout) {
            self.follow_rollout(&pod).await;
        }

        // The workload names the update-available metric; looked up once.
        let workload = self.workload(&pod).await;
        let workload_name = workload
            .as_ref()
            .map(|w| w.name.clone())
            .unwrap_or_default();

        let mut changes = Vec::new();
        let mut images = HashMap::new();
        let mut failed = false;
        let mut waiting = false;
        let mut retry_after = None;
        for observation in observe::observe(&pod, &self.config.watch_containers) {
            let container = observation.container;
            match observation.state {
                ContainerState::Running { image, running } => {
                    let checked = self.check(&container, &image, &running).await;
                    if let Ok(checked) = &checked {
                        self.metrics.update_available(
                            self.cluster.namespace(),
                            &workload_name,
                            &container,
                            checked.verdict == Verdict::Changed,
                        );
                    }
                    match checked {
                        Ok(Checked {
                            verdict: Verdict::Changed,
                            remote_digest,
                        }) => {
                            images.insert(container.clone(), image.clone());
                            changes.push(Change {
                                signature: None,
                                container,
                                digest: remote_digest,
                                running: match running {
                                    RunningDigest::Manifest(digest) => Some(digest),
                                    RunningDigest::Config(_) => None,
                                },
                            })
                        }
                        Ok(_) => {}
                        Err(error) => {
                            retry_after = retry_after.max(error.retry_after());
                            failed = true;
                        }
                    }
                }
                ContainerState::NotRunningYet { image } => {
                    info!(container, image = %image, decision = "waiting", "container has not started yet; checking next round");
                    waiting = true;
                }
                ContainerState::Pinned { image, digest } => {
                    if self.not_yet_warned(format!("pinned:{container}")) {
                        info!(
                            container,
                            image, digest, "image is pinned by digest: nothing to watch"
                        );
                    }
                }
                ContainerState::Missing => {
                    if self.not_yet_warned(format!("missing:{container}")) {
                        warn!(
                            container,
                            "the pod has no such container; check {}",
                            pod_reloaded_contract::ENV_WATCH_CONTAINER
                        );
                    }
                    self.metrics.check(CheckResult::Error);
                    failed = true;
                }
                ContainerState::Unreadable { problem } => {
                    warn!(
                        container,
                        problem,
                        decision = "error",
                        "cannot watch this container"
                    );
                    self.metrics.check(CheckResult::Error);
                    failed = true;
                }
            }
        }
        if waiting {
            // Look at the pod again next round, to see the container start.
            self.pod = None;
        }
        if changes.is_empty() {
            // With the pod, the replica count (a round with a change reads the workload
            // anyway, and takes the count from there).
            if fresh && self.config.poll == Poll::Workload {
                if let Some(workload) = &workload {
                    self.read_replicas(workload).await;
                }
            }
            return if failed {
                RoundOutcome::Failed { retry_after }
            } else if waiting {
                RoundOutcome::Waiting
            } else {
                RoundOutcome::UpToDate
            };
        }
        if !fresh {
            // The registry's answer differs from what the pod was last seen running:
            // read the pod again before acting on it.
            let Some(current) = self.read_pod().await else {
                return RoundOutcome::Failed { retry_after: None };
            };
            if running_digests(&current) != running_digests(&pod) {
                info!("the pod changed since it was last read; deciding next round");
                return RoundOutcome::UpToDate;
            }
        }
        if let Err(outcome) = self.verify_signatures(&mut changes, &images).await {
            return outcome;
        }
        // A change seen for one container is acted on even if another container's check
        // failed: the failure means "unknown" for that container only.
        self.restart_for(&pod, &changes).await
    }

    /// The trust policy's verdict on each change's digest, fetched only for a digest not
    /// judged before. A registry error fails the round (retried with backoff): it never
    /// quarantines. Rollbacks need no check: they return to what was running.
    async fn verify_signatures(
        &mut self,
        changes: &mut [Change],
        images: &HashMap<String, WatchedImage>,
    ) -> Result<(), RoundOutcome> {
        let policy = match &self.signature_policy {
            None => return Ok(()),
            Some(Ok(policy)) => policy,
            Some(Err(error)) => {
                warn!(
                    error,
                    decision = "error",
                    "the trust policy cannot be used; not acting on the change"
                );
                return Err(RoundOutcome::Failed { retry_after: None });
            }
        };
        for change in changes.iter_mut() {
            if let Some(verdict) = self.signature_verdicts.get(&change.digest) {
                change.signature = Some(verdict.clone());
                continue;
            }
            // Every change comes with its image; without one, nothing is verified, so
            // nothing is restarted.
            let Some(image) = images.get(&change.container) else {
                return Err(RoundOutcome::Failed { retry_after: None });
            };
            let repository = self.repository(image);
            let found = match signature::fetch::find(&self.registry, &repository, &change.digest)
                .await
            {
                Ok(found) => found,
                Err(error) => {
                    warn!(container = change.container, digest = change.digest, %error, decision = "error", "cannot fetch the new digest's signatures; trying again later");
                    self.metrics.signature_check("error");
                    return Err(RoundOutcome::Failed {
                        retry_after: error.retry_after(),
                    });
                }
            };
            let mut verdict = policy.verify(&change.digest, &found);
            if let SignatureVerdict::Unsigned { reason } = &verdict {
                // Signing usually follows the push: wait for a signature, asking again
                // each round (not remembered), up to the policy's `waitForSignature`.
                let since = *self
                    .unsigned_since
                    .entry(change.digest.clone())
                    .or_insert_with(std::time::Instant::now);
                if since.elapsed() >= policy.signature_wait {
                    verdict = SignatureVerdict::Rejected {
                        reason: format!(
                            "{reason}, {} after it was first seen",
                            humantime::format_duration(std::time::Duration::from_secs(
                                since.elapsed().as_secs()
                            ))
                        ),
                    };
                } else {
                    if self.warned.insert(format!("unsigned:{}", change.digest)) {
                        info!(container = change.container, digest = change.digest, policy = policy.name, wait = %humantime::format_duration(policy.signature_wait), "no signature yet; waiting for one before restarting or quarantining");
                    }
                    self.metrics.signature_check("unsigned");
                    change.signature = Some(verdict);
                    continue;
                }
            }
            match &verdict {
                SignatureVerdict::Verified { signer } => {
                    info!(
                        container = change.container,
                        digest = change.digest,
                        policy = policy.name,
                        signer,
                        "signature verified"
                    );
                    self.metrics.signature_check("verified");
                }
                SignatureVerdict::Unsigned { .. } => {}
                SignatureVerdict::Rejected { reason } => {
                    warn!(
                        container = change.container,
                        digest = change.digest,
                        policy = policy.name,
                        reason,
                        "signature rejected"
                    );
                    self.metrics.signature_check("rejected");
                }
            }
            if self.signature_verdicts.len() >= MAX_REMEMBERED_VERDICTS {
                self.signature_verdicts.clear();
            }
            self.signature_verdicts
                .insert(change.digest.clone(), verdict.clone());
            change.signature = Some(verdict);
        }
        Ok(())
    }

    /// How long until the next round after one that came to `outcome`: the interval,
    /// stretched over the workload's replicas when they share its checks, except while a
    /// rollout is followed (its end is seen within an interval) or a container has not
    /// started (it is looked at again within the interval).
    pub fn poll_period(&self, outcome: &RoundOutcome) -> Duration {
        if self.following || *outcome == RoundOutcome::Waiting {
            return self.config.interval;
        }
        settings::poll_period(self.config.interval, self.replicas, self.config.poll)
    }

    /// Reads the workload's replica count (kept as it was when it cannot be read).
    async fn read_replicas(&mut self, workload: &WorkloadRef) {
        let replicas = match self.cluster.desired_replicas(workload).await {
            Ok(Some(replicas)) => replicas,
            Ok(None) => 1,
            Err(error) => {
                warn!(%workload, error = format!("{error:#}"), "cannot read the replica count; keeping the last one");
                return;
            }
        };
        self.set_replicas(workload, replicas);
    }

    /// The workload's replica count as last read.
    fn set_replicas(&mut self, workload: &WorkloadRef, replicas: u32) {
        if self.config.poll == Poll::Workload && replicas != self.replicas {
            self.replicas = replicas;
            info!(%workload, replicas, period = %humantime::format_duration(settings::poll_period(self.config.interval, replicas, self.config.poll)), "the replicas share the workload's checks: polling at interval × replicas");
        }
    }

    /// Ask the registry, then compare: the only network step of a check.
    async fn check(
        &mut self,
        container: &str,
        image: &WatchedImage,
        running: &RunningDigest,
    ) -> Result<Checked, RegistryError> {
        let outcome = self.ask_and_compare(container, image, running).await;
        match &outcome {
            Ok(checked) => {
                let (decision, result) = match checked.verdict {
                    Verdict::UpToDate => ("up-to-date", CheckResult::UpToDate),
                    Verdict::Changed => ("changed", CheckResult::Changed),
                    Verdict::Equivalent => ("equivalent", CheckResult::Equivalent),
                };
                info!(container, image = %image, running = running.digest(), remote = checked.remote_digest, decision, "checked");
                self.metrics.check(result);
            }
            Err(error) => {
                if matches!(error, RegistryError::Unauthorized { .. }) {
                    self.reload_credentials();
                }
                warn!(container, image = %image, running = running.digest(), remote = "", %error, decision = "error", "checked");
                self.metrics.check(CheckResult::Error);
            }
        }
        outcome
    }

    async fn ask_and_compare(
        &mut self,
        container: &str,
        image: &WatchedImage,
        running: &RunningDigest,
    ) -> Result<Checked, RegistryError> {
        let repository = self.repository(image);
        let remote = self.registry.resolve_tag(&repository, &image.tag).await?;
        if let Some(known) = self.known_verdicts.get(container) {
            if known.remote_digest == remote.digest && &known.running == running {
                return Ok(Checked {
                    remote_digest: remote.digest,
                    verdict: known.verdict,
                });
            }
        }
        let mut comparison = Comparison::new(running, &remote);
        let verdict = loop {
            match comparison.need().clone() {
                Need::Verdict(verdict) => break verdict,
                Need::Details { want_config } => {
                    let details = self
                        .registry
                        .inspect(&repository, &remote, want_config)
                        .await?;
                    comparison
                        .details(&details)
                        .map_err(|reason| RegistryError::Unexpected {
                            url: repository.base_url.clone(),
                            reason,
                        })?;
                }
                Need::RunningPlatformManifest { digest } => {
                    let manifest = match self
                        .registry
                        .platform_manifest_of(&repository, &digest)
                        .await
                    {
                        Ok(manifest) => manifest,
                        // The running manifest is gone from the registry: a change.
                        Err(RegistryError::NotFound { .. }) => None,
                        Err(error) => return Err(error),
                    };
                    comparison.running_platform_manifest(manifest.as_deref());
                }
            }
        };
        self.known_verdicts.insert(
            container.to_string(),
            KnownVerdict {
                remote_digest: remote.digest.clone(),
                running: running.clone(),
                verdict,
            },
        );
        Ok(Checked {
            remote_digest: remote.digest,
            verdict,
        })
    }

    /// Where to ask about `watched`: the override for its registry, if any, else the
    /// registry itself (plain HTTP when listed as insecure).
    fn repository(&self, watched: &WatchedImage) -> Repository {
        let redirect = self
            .config
            .registry_url
            .as_ref()
            .and_then(|o| o.for_registry(&watched.registry));
        let (base_url, host) = match redirect {
            Some(url) => (url.base.clone(), url.host.clone()),
            None => {
                let insecure = self
                    .config
                    .insecure_registries
                    .iter()
                    .any(|h| h.trim().eq_ignore_ascii_case(&watched.registry));
                let scheme = if insecure { "http" } else { "https" };
                (
                    format!("{scheme}://{}", watched.registry),
                    watched.registry.clone(),
                )
            }
        };
        Repository {
            base_url,
            host,
            registry: watched.registry.clone(),
            name: watched.repository.clone(),
        }
    }

    fn reload_credentials(&self) {
        if let Some(dir) = &self.config.pull_secrets_dir {
            let (credentials, problems) = Credentials::load(dir);
            for problem in problems {
                warn!(problem, "pull secret not usable");
            }
            self.registry.set_credentials(credentials);
        }
    }

    /// The workload that owns our pod, looked up once (an API error is tried again next
    /// time; "nothing to restart" is remembered).
    async fn workload(&mut self, pod: &Pod) -> Option<WorkloadRef> {
        if let Some(known) = &self.workload {
            return known.clone();
        }
        match self.cluster.owner(pod).await {
            Ok(Owner::Restartable {
                workload,
                from_earlier_revision,
            }) => {
                self.workload = Some(Some(workload.clone()));
                self.from_earlier_revision = from_earlier_revision;
                Some(workload)
            }
            Ok(Owner::NotRestartable(why)) => {
                warn!(%why, "nothing can be restarted for this pod");
                self.workload = Some(None);
                None
            }
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "cannot find the workload that owns this pod"
                );
                None
            }
        }
    }
}

/// The `imageID`s of a pod's containers, to tell whether it changed between two reads.
fn running_digests(pod: &Pod) -> Vec<(String, String)> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|s| (s.name.clone(), s.image_id.clone()))
        .collect()
}

/// One log line of a decision, with the fields it carries.
fn log(workload: &WorkloadRef, line: &LogLine) {
    let fields = &line.fields;
    macro_rules! emit {
        ($level:ident) => {
            $level!(
                %workload,
                decision = line.decision,
                changes = fields.changes.as_deref(),
                restarted_for = fields.restarted_for.as_deref(),
                rolled_from = fields.rolled_from.as_deref(),
                rolled_to = fields.rolled_to.as_deref(),
                left = fields.left.as_deref(),
                quarantined = fields.quarantined.as_deref(),
                reason = fields.reason.as_deref(),
                restarted_at = fields.restarted_at.as_deref(),
                took = fields.took.as_deref(),
                "{}",
                line.message
            )
        };
    }
    if line.warn {
        emit!(warn);
    } else {
        emit!(info);
    }
}
