//! One round of the checker: observe the pod, ask the registry, compare, decide, act.
//!
//! The pod is read at start and then only when it matters: when the registry's answer
//! differs from what the pod was last seen running, while a container has not started,
//! and every `POD_REFRESH_ROUNDS` rounds as a safety net. An unchanged round costs one
//! `HEAD` per watched tag and no API request.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use pod_reloaded_contract::image::{RunningDigest, WatchedImage};
use tracing::{info, warn};

use crate::cluster::{Cluster, Owner, Update};
use crate::compare::{self, Verdict};
use crate::config::Config;
use crate::decide::{self, Change, RestartDecision};
use crate::metrics::{CheckResult, Metrics, RolloutResult};
use crate::observe::{self, ContainerState};
use crate::registry::credentials::Credentials;
use crate::registry::{RegistryClient, RegistryError, Repository};
use crate::rollout::{self, FailureAction, Progress};
use pod_reloaded_contract as contract;
use pod_reloaded_contract::owner::WorkloadRef;
use pod_reloaded_contract::record::{DigestRecord, RolloutRecord, RolloutState};
use pod_reloaded_contract::settings::{self, OnFailure};

/// Rounds between two reads of an unchanged pod (a safety net: the pod's spec and status
/// of a running container do not change without a restart).
pub const POD_REFRESH_ROUNDS: u32 = 10;

#[derive(Debug, PartialEq, Eq)]
pub enum RoundOutcome {
    UpToDate,
    /// A watched container has not started yet (a native sidecar starts first).
    Waiting,
    Restarted,
    /// A change another replica already restarted for (or that did not take).
    AlreadyRestarted,
    /// Something failed; nothing was restarted. `retry_after` is the registry's wish.
    Failed {
        retry_after: Option<Duration>,
    },
}

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
    /// The workload that owns our pod, once looked up (it does not change).
    workload: Option<WorkloadRef>,
    /// True while a rollout pod-reloaded started on our workload is followed: the
    /// workload is read each round until its outcome is recorded.
    following: bool,
    /// Warnings already logged (pinned images, unrestartable owner, ...), not repeated.
    warned: HashSet<String>,
}

impl Checker {
    pub fn new(
        config: Config,
        registry: RegistryClient,
        cluster: Cluster,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            registry,
            cluster,
            metrics,
            pod: None,
            rounds_since_pod_read: 0,
            known_verdicts: HashMap::new(),
            workload: None,
            following: false,
            warned: HashSet::new(),
        }
    }

    /// True the first time `key` is warned about.
    fn not_yet_warned(&mut self, key: String) -> bool {
        self.warned.insert(key)
    }

    /// Reads our pod; `None` (logged) when the API does not answer.
    async fn read_pod(&mut self) -> Option<Pod> {
        match self.cluster.read_pod().await {
            Ok(pod) => {
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

        if self.following || restarted_recently(&pod) {
            self.follow_rollout(&pod).await;
        }

        let mut changes = Vec::new();
        let mut failed = false;
        let mut waiting = false;
        let mut retry_after = None;
        for observation in observe::observe(&pod, &self.config.watch_containers) {
            let container = observation.container;
            match observation.state {
                ContainerState::Running { image, running } => {
                    match self.check(&container, &image, &running).await {
                        Ok(Checked {
                            verdict: Verdict::Changed,
                            remote_digest,
                        }) => changes.push(Change {
                            container,
                            digest: remote_digest,
                            running: match running {
                                RunningDigest::Manifest(digest) => Some(digest),
                                RunningDigest::Config(_) => None,
                            },
                        }),
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
        // A change seen for one container is acted on even if another container's check
        // failed: the failure means "unknown" for that container only.
        self.restart_for(&pod, &changes).await
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
        let verdict = match compare::decide_from_head(running, &remote) {
            Some(verdict) => verdict,
            None => {
                let want_config = matches!(running, RunningDigest::Config(_));
                let details = self
                    .registry
                    .inspect(&repository, &remote, want_config)
                    .await?;
                compare::decide_from_details(running, &remote, &details).map_err(|reason| {
                    RegistryError::Unexpected {
                        url: repository.base_url.clone(),
                        reason,
                    }
                })?
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

    /// The workload that owns our pod, looked up once.
    async fn workload(&mut self, pod: &Pod) -> Option<WorkloadRef> {
        if let Some(workload) = &self.workload {
            return Some(workload.clone());
        }
        match self.cluster.owner(pod).await {
            Ok(Owner::Restartable(workload)) => {
                self.workload = Some(workload.clone());
                Some(workload)
            }
            Ok(Owner::NotRestartable(why)) => {
                if self.not_yet_warned("unrestartable".to_string()) {
                    warn!(%why, "nothing can be restarted for this pod");
                }
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

    /// Decide and act: let `decide` say whether this change is ours to restart for,
    /// patch the workload and record the Event.
    async fn restart_for(&mut self, pod: &Pod, changes: &[Change]) -> RoundOutcome {
        let Some(workload) = self.workload(pod).await else {
            return RoundOutcome::Failed { retry_after: None };
        };
        let pod_created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let now = jiff::Timestamp::now();
        let updated = self
            .cluster
            .update_workload(&workload, |state, version| {
                let decision = decide::decide_restart(state, changes, pod_created);
                match &decision {
                    RestartDecision::Restart(restart) => {
                        Update::Patch(decide::restart_patch(version, now, restart), decision)
                    }
                    RestartDecision::Undone { left } => {
                        let record = state
                            .rollout()
                            .map(|r| r.with_state(RolloutState::Undone))
                            .unwrap_or_else(|| RolloutRecord {
                                state: RolloutState::Undone,
                                restarted_at: decide::restarted_at_text(now),
                                rolled_to: left.clone(),
                            });
                        Update::Patch(
                            decide::quarantine_patch(version, state, left, &record),
                            decision,
                        )
                    }
                    _ => Update::Leave(decision),
                }
            })
            .await;
        let summary = changes
            .iter()
            .map(|c| format!("{}={}", c.container, c.digest))
            .collect::<Vec<_>>()
            .join(",");
        let decision = match updated {
            Ok((decision, true)) => decision,
            Ok((decision, false)) => return self.skipped(&workload, pod, decision, &summary).await,
            Err(error) => {
                warn!(%workload, error = format!("{error:#}"), "restart failed");
                return RoundOutcome::Failed { retry_after: None };
            }
        };
        match decision {
            RestartDecision::Restart(restart) => {
                info!(%workload, restarted_for = %restart.restarted_for, rolled_from = %restart.rolled_from, decision = "restart", "triggered a rolling restart");
                self.metrics.restart();
                self.following = true;
                let mut message = format!(
                    "pod-reloaded restarted {workload}: the watched tag now points to {}",
                    restart.rolled_to
                );
                if !restart.no_rollback_target.is_empty() {
                    message.push_str(&format!(
                        "; no rollback target for {} (the pods ran a bare image ID, not a pullable digest): a failed rollout will halt",
                        restart.no_rollback_target.join(",")
                    ));
                }
                self.cluster
                    .event(&workload, false, "ImageDigestChanged", message)
                    .await;
                RoundOutcome::Restarted
            }
            RestartDecision::Undone { left } => {
                info!(%workload, left = %left, decision = "undone", "the template was rolled back by hand; not rolling forward to what it left");
                self.cluster
                    .event(
                        &workload,
                        false,
                        "RolloutUndone",
                        format!("pod-reloaded saw {workload} rolled back from {left} by hand; quarantined it so it is not rolled out again (until the tag moves, or `kubectl annotate {} {}-`)", workload.kind.name().to_lowercase() + "/" + &workload.name, contract::ANNOTATION_QUARANTINED),
                    )
                    .await;
                RoundOutcome::AlreadyRestarted
            }
            other => self.skipped(&workload, pod, other, &summary).await,
        }
    }

    /// A change that is not restarted for: say why, once where it would repeat.
    async fn skipped(
        &mut self,
        workload: &WorkloadRef,
        pod: &Pod,
        decision: RestartDecision,
        summary: &str,
    ) -> RoundOutcome {
        match decision {
            RestartDecision::AlreadyRestarted {
                pull_did_not_take: true,
            } => {
                if self.not_yet_warned(format!("did-not-take:{summary}")) {
                    warn!(%workload, changes = summary, decision = "skip", "already restarted for this digest, but this new pod still runs the old one (loop guard)");
                    self.cluster
                        .event(
                            workload,
                            true,
                            "ImageDigestUnchangedAfterRestart",
                            format!("pod-reloaded already restarted {workload} for {summary}, but pod {} still runs the old digest; not restarting again (check imagePullPolicy and the registry)", pod.metadata.name.as_deref().unwrap_or("")),
                        )
                        .await;
                }
            }
            RestartDecision::AlreadyRestarted { .. } => {
                info!(%workload, changes = summary, decision = "skip", "another replica already restarted the workload for this digest");
            }
            RestartDecision::Quarantined { digests } => {
                if self.not_yet_warned(format!("quarantined:{digests}")) {
                    warn!(%workload, quarantined = %digests, decision = "skip", "the tag serves a quarantined digest; not restarting (clear it with kubectl annotate ... {}-)", contract::ANNOTATION_QUARANTINED);
                }
            }
            RestartDecision::RolloutInProgress { restarted_at } => {
                if self.not_yet_warned(format!("in-progress:{restarted_at}:{summary}")) {
                    info!(%workload, changes = summary, restarted_at, decision = "wait", "the rollout pod-reloaded started is still in progress; restarting when it ends");
                }
                self.following = true;
            }
            RestartDecision::Restart(_) | RestartDecision::Undone { .. } => {}
        }
        RoundOutcome::AlreadyRestarted
    }

    /// Follows the rollout pod-reloaded started on our workload; the first sidecar to see
    /// it end records the outcome (success, rollback or halt), with the same precondition
    /// as a restart so exactly one does.
    async fn follow_rollout(&mut self, pod: &Pod) {
        let Some(workload) = self.workload(pod).await else {
            self.following = false;
            return;
        };
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let timeout = annotations
            .get(contract::ANNOTATION_ROLLOUT_TIMEOUT)
            .and_then(|t| settings::parse_rollout_timeout(t).ok())
            .unwrap_or(DEFAULT_ROLLOUT_TIMEOUT);
        let on_failure = annotations
            .get(contract::ANNOTATION_ON_FAILURE)
            .and_then(|t| OnFailure::parse(t).ok())
            .unwrap_or(OnFailure::Rollback);
        let now = jiff::Timestamp::now();
        let kind = workload.kind;
        let updated = self
            .cluster
            .update_workload(&workload, |state, version| {
                let Some(record) = state
                    .rollout()
                    .filter(|r| r.state == RolloutState::Progressing)
                else {
                    return Update::Leave(Followed::NothingToFollow);
                };
                if state.rollout_in_template().is_none() {
                    // Rolled back by hand while it was in progress: the undo sticks.
                    let left = record.rolled_to.clone();
                    let patch = decide::quarantine_patch(
                        version,
                        state,
                        &left,
                        &record.with_state(RolloutState::Undone),
                    );
                    return Update::Patch(patch, Followed::Undone(left));
                }
                let Ok(started) = record.restarted_at.parse::<jiff::Timestamp>() else {
                    return Update::Leave(Followed::NothingToFollow);
                };
                match rollout::progress(kind, state, started, timeout, now) {
                    Progress::Pending => Update::Leave(Followed::Pending),
                    Progress::Succeeded => Update::Patch(
                        rollout::success_patch(version, &record),
                        Followed::Succeeded { record, started },
                    ),
                    Progress::Failed { reason } => {
                        match rollout::failure_action(version, state, &record, on_failure, now) {
                            FailureAction::RollBack { patch } => Update::Patch(
                                patch,
                                Followed::RolledBack {
                                    record,
                                    reason,
                                    to: state.rolled_from(),
                                },
                            ),
                            FailureAction::Halt { patch, why } => Update::Patch(
                                patch,
                                Followed::Halted {
                                    record,
                                    reason,
                                    why,
                                },
                            ),
                        }
                    }
                }
            })
            .await;
        let followed = match updated {
            Ok((followed, true)) => followed,
            Ok((Followed::Pending, false)) => {
                self.following = true;
                return;
            }
            Ok((_, false)) => {
                self.following = false;
                return;
            }
            Err(error) => {
                warn!(%workload, error = format!("{error:#}"), "cannot follow the rollout; trying next round");
                self.following = true;
                return;
            }
        };
        self.following = false;
        match followed {
            Followed::Succeeded { record, started } => {
                let took = Duration::try_from(now.duration_since(started)).unwrap_or_default();
                let took = humantime::format_duration(Duration::from_secs(took.as_secs()));
                info!(%workload, rolled_to = %record.rolled_to, %took, decision = "rollout-succeeded", "rollout succeeded");
                self.metrics.rollout(RolloutResult::Succeeded);
                self.cluster
                    .event(
                        &workload,
                        false,
                        "RolloutSucceeded",
                        format!(
                            "pod-reloaded's rollout of {workload} to {} succeeded in {took}",
                            record.rolled_to
                        ),
                    )
                    .await;
            }
            Followed::RolledBack { record, reason, to } => {
                warn!(%workload, rolled_to = %record.rolled_to, reason, decision = "rollback", "rollout failed; rolled back and quarantined");
                self.metrics.rollout(RolloutResult::RolledBack);
                self.cluster
                    .event(
                        &workload,
                        true,
                        "RolloutFailed",
                        format!(
                            "pod-reloaded's rollout of {workload} to {} failed: {reason}",
                            record.rolled_to
                        ),
                    )
                    .await;
                self.cluster
                    .event(
                        &workload,
                        false,
                        "RolledBack",
                        format!(
                            "pod-reloaded rolled {workload} back to {to} and quarantined {}",
                            record.rolled_to
                        ),
                    )
                    .await;
            }
            Followed::Halted {
                record,
                reason,
                why,
            } => {
                warn!(%workload, rolled_to = %record.rolled_to, reason, decision = "halt", "rollout failed; quarantined, not rolled back");
                self.metrics.rollout(RolloutResult::Failed);
                let why = why.map(|w| format!("; {w}")).unwrap_or_default();
                self.cluster
                    .event(&workload, true, "RolloutFailed", format!("pod-reloaded's rollout of {workload} to {} failed: {reason}; quarantined, not rolled back{why}", record.rolled_to))
                    .await;
            }
            Followed::Undone(left) => {
                info!(%workload, left = %left, decision = "undone", "the template was rolled back by hand during the rollout");
            }
            Followed::Pending | Followed::NothingToFollow => {}
        }
    }
}

/// Default of `pod-reloaded.io/rollout-timeout`.
const DEFAULT_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);

/// What following a rollout came to in one round.
enum Followed {
    NothingToFollow,
    Pending,
    Succeeded {
        record: RolloutRecord,
        started: jiff::Timestamp,
    },
    RolledBack {
        record: RolloutRecord,
        reason: String,
        to: DigestRecord,
    },
    Halted {
        record: RolloutRecord,
        reason: String,
        why: Option<String>,
    },
    Undone(DigestRecord),
}

/// True for a pod made by a pod-reloaded restart that may still be rolling out: its
/// template carried `restarted-for`, and its `restartedAt` is within the rollout timeout
/// (and a minute of grace). Such pods' sidecars follow the rollout, so it is followed
/// even when the pod that restarted it is gone.
fn restarted_recently(pod: &Pod) -> bool {
    let Some(annotations) = pod.metadata.annotations.as_ref() else {
        return false;
    };
    if !annotations.contains_key(contract::ANNOTATION_RESTARTED_FOR) {
        return false;
    }
    let Some(restarted_at) = annotations
        .get(contract::ANNOTATION_RESTARTED_AT)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    else {
        return false;
    };
    let timeout = annotations
        .get(contract::ANNOTATION_ROLLOUT_TIMEOUT)
        .and_then(|t| settings::parse_rollout_timeout(t).ok())
        .unwrap_or(DEFAULT_ROLLOUT_TIMEOUT);
    let age = Duration::try_from(jiff::Timestamp::now().duration_since(restarted_at))
        .unwrap_or(Duration::ZERO);
    age <= timeout + Duration::from_secs(60)
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
