//! Decide: restart, skip or warn, given the workload as read, as pure
//! functions; and the patches that carry the decisions out.
//!
//! The template's `pod-reloaded.io/restarted-for` records `<container>=<digest>` entries.
//! A change already recorded is never restarted for again: another replica did it, or the
//! new pods still run the old digest (the loop guard). The workload's metadata carries the
//! last rollout pod-reloaded started (`pod-reloaded.io/rollout`) and the digests never to
//! restart to (`pod-reloaded.io/quarantined`).

use jiff::Timestamp;
use pod_reloaded_contract as contract;
use pod_reloaded_contract::record::{
    timestamp_text, DigestRecord, PendingRecord, RolloutRecord, RolloutState,
};

use crate::effects::{Effects, Event, LogFields, LogLine, Metric, RoundOutcome, Said, Update};
use crate::signature::SignatureVerdict;
use crate::timing::{self, Hold};
use crate::workload::WorkloadPatch;
pub use crate::workload::WorkloadState;
use pod_reloaded_contract::owner::WorkloadRef;
use pod_reloaded_contract::pod_settings::PodSettings;
use serde_json::Value;

/// A watched container whose tag now points to another digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub container: String,
    /// What the tag serves now.
    pub digest: String,
    /// The pullable digest the pod runs (`repo@sha256:` image IDs); `None` for a bare
    /// config digest, which cannot be pulled back.
    pub running: Option<String>,
    /// The trust policy's verdict on `digest`, when the pod has a policy.
    pub signature: Option<SignatureVerdict>,
}

impl Change {
    fn rejected_because(&self) -> Option<&str> {
        match &self.signature {
            Some(SignatureVerdict::Rejected { reason }) => Some(reason),
            _ => None,
        }
    }

    fn awaits_signature(&self) -> bool {
        matches!(self.signature, Some(SignatureVerdict::Unsigned { .. }))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Patch the template.
    Restart(Restart),
    /// Every change is already recorded.
    AlreadyRestarted {
        /// This pod was created after that restart and still runs the old digest: the new
        /// pull did not take (a Warning); otherwise this pod is simply waiting to be
        /// replaced by the rollout another replica started.
        pull_did_not_take: bool,
    },
    /// Every change is to a quarantined digest.
    Quarantined { digests: DigestRecord },
    /// A new digest's signature does not satisfy the pod's trust policy: it is quarantined
    /// (the other changes are decided next round, without it).
    SignatureRejected { rejected: DigestRecord },
    /// A new digest has no signature yet: nothing restarts while it waits for one.
    AwaitingSignature { unsigned: DigestRecord },
    /// The rollout pod-reloaded started last is still in progress: the new change waits.
    RolloutInProgress { restarted_at: String },
    /// A person rolled the template back from the digests pod-reloaded rolled out (e.g.
    /// `kubectl rollout undo`): those are quarantined, so the rollback sticks.
    Undone { left: DigestRecord },
    /// Due, but held by the timing settings. `first_seen` lists the containers whose new
    /// digest is seen for the first time: `pending` records it on the workload.
    Held {
        hold: Hold,
        changes: DigestRecord,
        pending: PendingRecord,
        first_seen: Vec<String>,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub struct Restart {
    /// The template's new `restarted-for`.
    pub restarted_for: DigestRecord,
    /// The new digests only.
    pub rolled_to: DigestRecord,
    /// Where each changed container came from, the rollback target.
    pub rolled_from: DigestRecord,
    /// Changed containers whose previous digest is unknown or not pullable.
    pub no_rollback_target: Vec<String>,
    /// The first sights still pending once this restart is made.
    pub pending: PendingRecord,
}

/// What the deciding pod knows of itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThisPod {
    pub created: Option<Timestamp>,
    /// Its ReplicaSet was made for an earlier revision and reused: the template went back
    /// to one it had before. pod-reloaded's own rollbacks write a new `restartedAt`, so they
    /// never reuse one: a person did (`kubectl rollout undo`). That undo also puts back the
    /// Deployment's annotations of that revision, the rollout record among them, so the
    /// record cannot tell.
    pub from_earlier_revision: bool,
}

/// The decision for `changes` on the workload as read (at `version`), and the patch that
/// carries it out: the restart, the quarantine of what a person rolled back from, or the
/// first sight of a held digest; none for the rest.
pub fn restart_update(
    state: &WorkloadState,
    version: &str,
    changes: &[Change],
    this_pod: ThisPod,
    timing: &PodSettings,
    now: Timestamp,
) -> Update<RestartDecision> {
    let decision = decide_restart(state, changes, this_pod, timing, now);
    match &decision {
        RestartDecision::Restart(restart) => {
            Update::Patch(restart_patch(version, now, restart), decision)
        }
        RestartDecision::Undone { left } => {
            // The record of the rollout undone; after an undo that restored an older
            // record (a Deployment's), a new one for what was left.
            let record = state
                .rollout()
                .filter(|r| r.rolled_to == *left)
                .map(|r| r.with_state(RolloutState::Undone))
                .unwrap_or_else(|| RolloutRecord {
                    state: RolloutState::Undone,
                    restarted_at: timestamp_text(now),
                    rolled_to: left.clone(),
                });
            let patch = WorkloadPatch::new(version)
                .quarantine(state, left, &record)
                .into_json();
            Update::Patch(patch, decision)
        }
        RestartDecision::Held {
            pending,
            first_seen,
            ..
        } if !first_seen.is_empty() => Update::Patch(pending_patch(version, pending), decision),
        RestartDecision::SignatureRejected { rejected } => {
            let patch = WorkloadPatch::new(version)
                .set(
                    contract::ANNOTATION_QUARANTINED,
                    state.quarantined_with(rejected),
                )
                .into_json();
            Update::Patch(patch, decision)
        }
        _ => Update::Leave(decision),
    }
}

/// What a restart decision says and does once carried out, and how the round ended.
/// `pod` is the deciding pod's name. A held decision with `first_seen` was recorded on
/// the workload by this sidecar (exactly one does): it says what the others do not.
pub fn restart_effects(
    workload: &WorkloadRef,
    decision: RestartDecision,
    changes: &[Change],
    pod: &str,
) -> (RoundOutcome, Effects) {
    let changes_seen = changes;
    let summary = changes
        .iter()
        .map(|c| format!("{}={}", c.container, c.digest))
        .collect::<Vec<_>>()
        .join(",");
    let fields = |changes: String| LogFields {
        changes: Some(changes),
        ..LogFields::default()
    };
    match decision {
        RestartDecision::Restart(restart) => {
            let mut message = format!(
                "pod-reloaded restarted {workload}: the watched tag now points to {}",
                restart.rolled_to
            );
            message.push_str(&signed_by(changes, &restart.rolled_to));
            if !restart.no_rollback_target.is_empty() {
                message.push_str(&format!(
                    "; no rollback target for {} (the pods ran a bare image ID, not a pullable digest): a failed rollout will halt",
                    restart.no_rollback_target.join(",")
                ));
            }
            let log = LogLine::info(
                "restart",
                "triggered a rolling restart",
                LogFields {
                    restarted_for: Some(restart.restarted_for.to_string()),
                    rolled_from: Some(restart.rolled_from.to_string()),
                    ..LogFields::default()
                },
            );
            let effects = Effects {
                said: vec![Said::log(log).with_event(
                    Event::normal("ImageDigestChanged", message)
                        .about(&restart.rolled_to, Some(restart.rolled_from.to_string())),
                )],
                metric: Some(Metric::Restart),
                follow: Some(true),
            };
            (RoundOutcome::Restarted, effects)
        }
        RestartDecision::Undone { left } => {
            let message = format!(
                "pod-reloaded saw {workload} rolled back from {left} by hand; quarantined it so it is not rolled out again (until the tag moves, or `kubectl annotate {}/{} {}-`)",
                workload.kind.name().to_lowercase(),
                workload.name,
                contract::ANNOTATION_QUARANTINED
            );
            let log = LogLine::info(
                "undone",
                "the template was rolled back by hand; not rolling forward to what it left",
                LogFields {
                    left: Some(left.to_string()),
                    ..LogFields::default()
                },
            );
            let said = Said::log(log)
                .with_event(Event::normal("RolloutUndone", message).about(&left, None));
            (RoundOutcome::AlreadyRestarted, Effects::saying(said))
        }
        RestartDecision::Held {
            hold,
            changes,
            first_seen,
            ..
        } => {
            let mut said = Vec::new();
            if hold != Hold::Notify {
                // Once per digest and kind of hold: each sidecar says it once, under a
                // name made of both, so of N replicas the API server keeps the first.
                let message = format!(
                    "pod-reloaded holds the restart of {workload} to {changes}: {}",
                    hold.describe()
                );
                let log = LogLine::info("held", "a new image is held", fields(changes.to_string()));
                let name = format!("held-{}-{}", hold.kind(), record_key(&changes));
                said.push(
                    Said::log(log)
                        .with_event(
                            Event::normal("ImageUpdateHeld", message)
                                .about(&changes, None)
                                .named(name),
                        )
                        .once(format!("held-event:{changes}:{}", hold.kind())),
                );
            }
            if hold == Hold::Notify && !first_seen.is_empty() {
                let message = format!(
                    "pod-reloaded: the watched tag of {workload} now points to {changes}{}; not restarting ({}: notify)",
                    signed_by(changes_seen, &changes),
                    contract::ANNOTATION_MODE
                );
                let log = LogLine::info(
                    "notify",
                    "a new image is available; mode notify: not restarting",
                    fields(changes.to_string()),
                );
                said.push(Said::log(log).with_event(
                    Event::normal("ImageUpdateAvailable", message).about(&changes, None),
                ));
            }
            // Why a due restart waits, and until when: once per digest and kind of hold.
            let log = LogLine::info(
                "defer",
                "restart deferred",
                LogFields {
                    changes: Some(changes.to_string()),
                    reason: Some(hold.describe()),
                    ..LogFields::default()
                },
            );
            said.push(Said::log(log).once(format!("held:{changes}:{}", hold.kind())));
            let effects = Effects {
                said,
                ..Effects::default()
            };
            (RoundOutcome::Deferred, effects)
        }
        RestartDecision::AlreadyRestarted {
            pull_did_not_take: true,
        } => {
            let message = format!(
                "pod-reloaded already restarted {workload} for {summary}, but pod {pod} still runs the old digest; not restarting again (check imagePullPolicy and the registry)"
            );
            let log = LogLine::warn(
                "skip",
                "already restarted for this digest, but this new pod still runs the old one (loop guard)",
                fields(summary.clone()),
            );
            let said = Said::log(log)
                .with_event(
                    Event::warning("ImageDigestUnchangedAfterRestart", message)
                        .about(&summary, None),
                )
                .once(format!("did-not-take:{summary}"));
            (RoundOutcome::AlreadyRestarted, Effects::saying(said))
        }
        RestartDecision::AlreadyRestarted {
            pull_did_not_take: false,
        } => {
            let log = LogLine::info(
                "skip",
                "another replica already restarted the workload for this digest",
                fields(summary),
            );
            (
                RoundOutcome::AlreadyRestarted,
                Effects::saying(Said::log(log)),
            )
        }
        RestartDecision::SignatureRejected { rejected } => {
            let mut said = Vec::new();
            for change in changes
                .iter()
                .filter(|c| rejected.get(&c.container) == Some(c.digest.as_str()))
            {
                let reason = change.rejected_because().unwrap_or_default();
                let message = format!(
                    "pod-reloaded did not restart {workload}: {}={} fails its trust policy: {reason}; quarantined it (the next signed push rolls out)",
                    change.container, change.digest
                );
                let log = LogLine::warn(
                    "rejected",
                    "the new digest's signature does not satisfy the trust policy; not restarting",
                    LogFields {
                        quarantined: Some(format!("{}={}", change.container, change.digest)),
                        reason: Some(reason.to_string()),
                        ..LogFields::default()
                    },
                );
                said.push(
                    Said::log(log)
                        .with_event(
                            Event::warning("ImageSignatureRejected", message).about(
                                format!("{}={}", change.container, change.digest),
                                change
                                    .running
                                    .as_ref()
                                    .map(|r| format!("{}={r}", change.container)),
                            ),
                        )
                        .once(format!("rejected:{}", change.digest)),
                );
            }
            let effects = Effects {
                said,
                ..Effects::default()
            };
            (RoundOutcome::AlreadyRestarted, effects)
        }
        RestartDecision::AwaitingSignature { unsigned } => {
            let log = LogLine::info(
                "wait",
                "a new digest has no signature yet; not restarting until it is signed",
                LogFields {
                    changes: Some(unsigned.to_string()),
                    ..LogFields::default()
                },
            );
            let said = Said::log(log).once(format!("awaiting-signature:{unsigned}"));
            (RoundOutcome::Deferred, Effects::saying(said))
        }
        RestartDecision::Quarantined { digests } => {
            let log = LogLine::warn(
                "skip",
                format!("the tag serves a quarantined digest; not restarting (clear it with kubectl annotate ... {}-)", contract::ANNOTATION_QUARANTINED),
                LogFields {
                    quarantined: Some(digests.to_string()),
                    ..LogFields::default()
                },
            );
            let said = Said::log(log).once(format!("quarantined:{digests}"));
            (RoundOutcome::AlreadyRestarted, Effects::saying(said))
        }
        RestartDecision::RolloutInProgress { restarted_at } => {
            let log = LogLine::info(
                "wait",
                "the rollout pod-reloaded started is still in progress; restarting when it ends",
                LogFields {
                    changes: Some(summary.clone()),
                    restarted_at: Some(restarted_at.clone()),
                    ..LogFields::default()
                },
            );
            let effects = Effects {
                said: vec![Said::log(log).once(format!("in-progress:{restarted_at}:{summary}"))],
                follow: Some(true),
                ..Effects::default()
            };
            (RoundOutcome::AlreadyRestarted, effects)
        }
    }
}

/// 16 hex digits of a digest record's SHA-256: a short, stable name part for it.
fn record_key(record: &DigestRecord) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(record.to_string().as_bytes());
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// `; signed by …` for the changes in `to` whose signature was verified: who signed
/// (a key's fingerprint or a certificate's identity).
fn signed_by(changes: &[Change], to: &DigestRecord) -> String {
    let signers: Vec<String> = changes
        .iter()
        .filter(|c| to.get(&c.container) == Some(c.digest.as_str()))
        .filter_map(|c| match &c.signature {
            Some(SignatureVerdict::Verified { signer }) => {
                Some(format!("{} signed by {signer}", c.container))
            }
            _ => None,
        })
        .collect();
    if signers.is_empty() {
        String::new()
    } else {
        format!("; signature verified: {}", signers.join(", "))
    }
}

/// Decides for `changes` (non-empty) given the workload, this pod, its timing settings,
/// and the time.
pub fn decide_restart(
    workload: &WorkloadState,
    changes: &[Change],
    this_pod: ThisPod,
    timing: &PodSettings,
    now: Timestamp,
) -> RestartDecision {
    let record = workload.rollout();
    if this_pod.from_earlier_revision
        && record
            .as_ref()
            .is_none_or(|r| r.state != RolloutState::Undone)
    {
        let restarted_for = workload.restarted_for();
        let quarantined = workload.quarantined();
        let mut left = DigestRecord::default();
        for change in changes {
            let digest = Some(change.digest.as_str());
            if restarted_for.get(&change.container) != digest
                && quarantined.get(&change.container) != digest
            {
                left.insert(&change.container, &change.digest);
            }
        }
        if !left.is_empty() {
            return RestartDecision::Undone { left };
        }
    }
    if let Some(record) = &record {
        let active = matches!(
            record.state,
            RolloutState::Progressing | RolloutState::Succeeded
        );
        if active && workload.rollout_in_template().is_none() {
            return RestartDecision::Undone {
                left: record.rolled_to.clone(),
            };
        }
    }
    let quarantined = workload.quarantined();
    let allowed: Vec<&Change> = changes
        .iter()
        .filter(|c| quarantined.get(&c.container) != Some(c.digest.as_str()))
        .collect();
    if allowed.is_empty() {
        let mut digests = DigestRecord::default();
        for change in changes {
            digests.insert(&change.container, &change.digest);
        }
        return RestartDecision::Quarantined { digests };
    }
    // Before anything else would restart: a digest the trust policy rejects never rolls out.
    let mut rejected = DigestRecord::default();
    for change in allowed.iter().filter(|c| c.rejected_because().is_some()) {
        rejected.insert(&change.container, &change.digest);
    }
    if !rejected.is_empty() {
        return RestartDecision::SignatureRejected { rejected };
    }
    let mut unsigned = DigestRecord::default();
    for change in allowed.iter().filter(|c| c.awaits_signature()) {
        unsigned.insert(&change.container, &change.digest);
    }
    if !unsigned.is_empty() {
        return RestartDecision::AwaitingSignature { unsigned };
    }

    let mut restarted_for = workload.restarted_for();
    let new: Vec<&Change> = allowed
        .into_iter()
        .filter(|c| restarted_for.get(&c.container) != Some(c.digest.as_str()))
        .collect();
    if new.is_empty() {
        let restarted_at = workload
            .template_annotations
            .get(contract::ANNOTATION_RESTARTED_AT)
            .and_then(|t| t.parse::<Timestamp>().ok());
        let pull_did_not_take = match (this_pod.created, restarted_at) {
            // restartedAt has second precision: a pod of that same second predates it.
            (Some(created), Some(restarted)) => created > restarted,
            _ => false,
        };
        return RestartDecision::AlreadyRestarted { pull_did_not_take };
    }
    if let Some(record) = record.filter(|r| r.state == RolloutState::Progressing) {
        return RestartDecision::RolloutInProgress {
            restarted_at: record.restarted_at,
        };
    }
    let due: Vec<(&str, &str)> = new
        .iter()
        .map(|c| (c.container.as_str(), c.digest.as_str()))
        .collect();
    let timed = timing::timed(
        timing,
        &due,
        workload.paused(),
        workload.pending(),
        workload.last_restart(),
        now,
    );
    if let Some(hold) = timed.hold {
        let mut changes = DigestRecord::default();
        for (container, digest) in &due {
            changes.insert(container, digest);
        }
        return RestartDecision::Held {
            hold,
            changes,
            pending: timed.pending,
            first_seen: timed.first_seen,
        };
    }
    let mut pending = timed.pending;
    let mut rolled_to = DigestRecord::default();
    let mut rolled_from = DigestRecord::default();
    let mut no_rollback_target = Vec::new();
    for change in new {
        pending.remove(&change.container);
        // The previous restart's digest is what the pods were pinned to; without one, the
        // digest the pod was pulled by.
        let previous = restarted_for
            .get(&change.container)
            .map(str::to_string)
            .or_else(|| change.running.clone());
        match previous {
            Some(digest) => rolled_from.insert(&change.container, &digest),
            None => no_rollback_target.push(change.container.clone()),
        }
        restarted_for.insert(&change.container, &change.digest);
        rolled_to.insert(&change.container, &change.digest);
    }
    RestartDecision::Restart(Restart {
        restarted_for,
        rolled_to,
        rolled_from,
        no_rollback_target,
        pending,
    })
}

/// The merge patch that rolls the workload and records the rollout on its metadata,
/// guarded by the `resourceVersion` we read so that of N replicas exactly one wins.
pub fn restart_patch(resource_version: &str, restarted_at: Timestamp, restart: &Restart) -> Value {
    let at = timestamp_text(restarted_at);
    let record = RolloutRecord {
        state: RolloutState::Progressing,
        restarted_at: at.clone(),
        rolled_to: restart.rolled_to.clone(),
    };
    WorkloadPatch::new(resource_version)
        .set(contract::ANNOTATION_ROLLOUT, record)
        .set_or_remove(contract::ANNOTATION_PENDING, &restart.pending)
        .set(contract::ANNOTATION_RESTARTED_AT, at)
        .set(contract::ANNOTATION_RESTARTED_FOR, &restart.restarted_for)
        // A stale rolled-from of an earlier restart must not become a rollback target.
        .set_or_remove(contract::ANNOTATION_ROLLED_FROM, &restart.rolled_from)
        .into_json()
}

/// Records first sights of new digests on the workload's metadata (no rollout).
pub fn pending_patch(resource_version: &str, pending: &PendingRecord) -> Value {
    WorkloadPatch::new(resource_version)
        .set(contract::ANNOTATION_PENDING, pending)
        .into_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    use pod_reloaded_test_support::digest;

    fn now() -> Timestamp {
        "2026-11-24T12:00:00Z".parse().unwrap()
    }

    /// The decision with no timing settings, for a pod of unknown age, at `now()`.
    fn decide_now(state: &WorkloadState, changes: &[Change]) -> RestartDecision {
        decide_restart(
            state,
            changes,
            ThisPod::default(),
            &PodSettings::default(),
            now(),
        )
    }

    fn change(container: &str, c: char, running: Option<char>) -> Change {
        Change {
            container: container.into(),
            digest: digest(c),
            running: running.map(digest),
            signature: None,
        }
    }

    fn workload(template: &[(&str, String)], metadata: &[(&str, String)]) -> WorkloadState {
        let map = |pairs: &[(&str, String)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        WorkloadState {
            template_annotations: map(template),
            metadata_annotations: map(metadata),
            ..Default::default()
        }
    }

    fn restart_of(decision: RestartDecision) -> Restart {
        match decision {
            RestartDecision::Restart(restart) => restart,
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn first_change_restarts_and_rolls_from_the_running_digest() {
        let restart = restart_of(decide_now(
            &WorkloadState::default(),
            &[change("web", 'a', Some('0'))],
        ));
        assert_eq!(
            restart.restarted_for.to_string(),
            format!("web={}", digest('a'))
        );
        assert_eq!(
            restart.rolled_from.to_string(),
            format!("web={}", digest('0'))
        );
        assert!(restart.no_rollback_target.is_empty());
    }

    #[test]
    fn a_bare_config_digest_leaves_no_rollback_target() {
        let restart = restart_of(decide_now(
            &WorkloadState::default(),
            &[change("web", 'a', None)],
        ));
        assert!(restart.rolled_from.is_empty());
        assert_eq!(restart.no_rollback_target, vec!["web".to_string()]);
    }

    #[test]
    fn the_previous_restart_is_the_rollback_target() {
        let state = workload(
            &[(
                contract::ANNOTATION_RESTARTED_FOR,
                format!("web={}", digest('p')),
            )],
            &[],
        );
        let restart = restart_of(decide_now(&state, &[change("web", 'a', Some('x'))]));
        assert_eq!(restart.rolled_from.get("web"), Some(digest('p').as_str()));
    }

    #[test]
    fn a_recorded_change_is_not_restarted_again() {
        let state = workload(
            &[
                (
                    contract::ANNOTATION_RESTARTED_FOR,
                    format!("web={}", digest('a')),
                ),
                (
                    contract::ANNOTATION_RESTARTED_AT,
                    "2026-11-24T10:00:00Z".into(),
                ),
            ],
            &[],
        );
        let older: Timestamp = "2026-11-24T09:00:00Z".parse().unwrap();
        let newer: Timestamp = "2026-11-24T10:00:05Z".parse().unwrap();
        assert_eq!(
            decide_restart(
                &state,
                &[change("web", 'a', Some('0'))],
                ThisPod {
                    created: Some(older),
                    ..ThisPod::default()
                },
                &PodSettings::default(),
                now()
            ),
            RestartDecision::AlreadyRestarted {
                pull_did_not_take: false
            }
        );
        assert_eq!(
            decide_restart(
                &state,
                &[change("web", 'a', Some('0'))],
                ThisPod {
                    created: Some(newer),
                    ..ThisPod::default()
                },
                &PodSettings::default(),
                now()
            ),
            RestartDecision::AlreadyRestarted {
                pull_did_not_take: true
            }
        );
    }

    #[test]
    fn a_newer_digest_restarts_again_and_other_entries_are_kept() {
        let state = workload(
            &[(
                contract::ANNOTATION_RESTARTED_FOR,
                format!("web={},sidecar={}", digest('a'), digest('s')),
            )],
            &[],
        );
        let restart = restart_of(decide_now(
            &state,
            &[
                change("web", 'b', Some('a')),
                change("sidecar", 's', Some('s')),
            ],
        ));
        assert_eq!(
            restart.restarted_for.to_string(),
            format!("sidecar={},web={}", digest('s'), digest('b'))
        );
        assert_eq!(
            restart.rolled_to.to_string(),
            format!("web={}", digest('b'))
        );
    }

    #[test]
    fn quarantined_digests_are_never_restarted_to() {
        let state = workload(
            &[],
            &[(
                contract::ANNOTATION_QUARANTINED,
                format!("web={}", digest('q')),
            )],
        );
        assert!(matches!(
            decide_now(&state, &[change("web", 'q', Some('0'))]),
            RestartDecision::Quarantined { .. }
        ));
        // The tag moved on: normal work resumes.
        assert!(matches!(
            decide_now(&state, &[change("web", 'n', Some('0'))]),
            RestartDecision::Restart(_)
        ));
    }

    #[test]
    fn a_rollout_in_progress_holds_new_restarts() {
        let state = workload(
            &[(
                contract::ANNOTATION_RESTARTED_FOR,
                format!("web={}", digest('a')),
            )],
            &[(
                contract::ANNOTATION_ROLLOUT,
                format!("progressing 2026-11-24T10:00:00Z web={}", digest('a')),
            )],
        );
        assert_eq!(
            decide_now(&state, &[change("web", 'b', Some('a'))]),
            RestartDecision::RolloutInProgress {
                restarted_at: "2026-11-24T10:00:00Z".into()
            }
        );
    }

    #[test]
    fn a_template_rolled_back_by_a_person_is_an_undo_not_a_change() {
        // pod-reloaded rolled web to 'a'; a person's `rollout undo` restored the template
        // of before, which records '0'. The tag still serves 'a'.
        for state_text in ["progressing", "succeeded"] {
            let state = workload(
                &[(
                    contract::ANNOTATION_RESTARTED_FOR,
                    format!("web={}", digest('0')),
                )],
                &[(
                    contract::ANNOTATION_ROLLOUT,
                    format!("{state_text} 2026-11-24T10:00:00Z web={}", digest('a')),
                )],
            );
            assert_eq!(
                decide_now(&state, &[change("web", 'a', Some('0'))]),
                RestartDecision::Undone {
                    left: DigestRecord::parse(&format!("web={}", digest('a')))
                }
            );
        }
        // After pod-reloaded's own rollback the template differs too, but that is no undo.
        let rolled_back = workload(
            &[(
                contract::ANNOTATION_RESTARTED_FOR,
                format!("web={}", digest('0')),
            )],
            &[
                (
                    contract::ANNOTATION_ROLLOUT,
                    format!("rolled-back 2026-11-24T10:00:00Z web={}", digest('a')),
                ),
                (
                    contract::ANNOTATION_QUARANTINED,
                    format!("web={}", digest('a')),
                ),
            ],
        );
        assert!(matches!(
            decide_now(&rolled_back, &[change("web", 'a', Some('0'))]),
            RestartDecision::Quarantined { .. }
        ));
    }

    #[test]
    fn a_pod_of_a_reused_replica_set_sees_an_undo_even_when_the_record_was_put_back() {
        // `kubectl rollout undo` of a Deployment restored the template that records '0'
        // and the annotations of that revision: an older record (a rolled-back 'b').
        let state = workload(
            &[(
                contract::ANNOTATION_RESTARTED_FOR,
                format!("web={}", digest('0')),
            )],
            &[
                (
                    contract::ANNOTATION_ROLLOUT,
                    format!("rolled-back 2026-11-24T09:00:00Z web={}", digest('b')),
                ),
                (
                    contract::ANNOTATION_QUARANTINED,
                    format!("web={}", digest('b')),
                ),
            ],
        );
        let reused = ThisPod {
            from_earlier_revision: true,
            ..ThisPod::default()
        };
        let decide = |state: &WorkloadState, pod: ThisPod, to: char| {
            decide_restart(
                state,
                &[change("web", to, Some('0'))],
                pod,
                &PodSettings::default(),
                now(),
            )
        };
        assert_eq!(
            decide(&state, reused, 'a'),
            RestartDecision::Undone {
                left: DigestRecord::parse(&format!("web={}", digest('a')))
            }
        );
        // A pod of a new ReplicaSet has nothing to go by but the record: a restart.
        assert!(matches!(
            decide(&state, ThisPod::default(), 'a'),
            RestartDecision::Restart(_)
        ));
        // Once the undo is recorded, a new digest rolls out again.
        let recorded = workload(
            &[(
                contract::ANNOTATION_RESTARTED_FOR,
                format!("web={}", digest('0')),
            )],
            &[
                (
                    contract::ANNOTATION_ROLLOUT,
                    format!("undone 2026-11-24T12:00:00Z web={}", digest('a')),
                ),
                (
                    contract::ANNOTATION_QUARANTINED,
                    format!("web={}", digest('a')),
                ),
            ],
        );
        assert!(matches!(
            decide(&recorded, reused, 'a'),
            RestartDecision::Quarantined { .. }
        ));
        assert!(matches!(
            decide(&recorded, reused, 'c'),
            RestartDecision::Restart(_)
        ));
    }

    #[test]
    fn the_restart_patch_records_the_rollout_and_its_origin() {
        let at: Timestamp = "2026-11-24T10:00:00.123Z".parse().unwrap();
        let restart = restart_of(decide_now(
            &WorkloadState::default(),
            &[change("web", 'a', Some('0'))],
        ));
        let patch = restart_patch("42", at, &restart);
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        let annotations = &patch["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations[contract::ANNOTATION_RESTARTED_AT],
            "2026-11-24T10:00:00Z"
        );
        assert_eq!(
            annotations[contract::ANNOTATION_RESTARTED_FOR],
            format!("web={}", digest('a'))
        );
        assert_eq!(
            annotations[contract::ANNOTATION_ROLLED_FROM],
            format!("web={}", digest('0'))
        );
        assert_eq!(
            patch["metadata"]["annotations"][contract::ANNOTATION_ROLLOUT],
            format!("progressing 2026-11-24T10:00:00Z web={}", digest('a'))
        );
        let none = restart_of(decide_now(
            &WorkloadState::default(),
            &[change("web", 'a', None)],
        ));
        assert_eq!(
            restart_patch("1", at, &none)["spec"]["template"]["metadata"]["annotations"]
                [contract::ANNOTATION_ROLLED_FROM],
            Value::Null,
            "a stale rolled-from is removed"
        );
    }

    #[test]
    fn a_held_restart_records_the_first_sight_and_the_restart_clears_it() {
        let soak = PodSettings {
            min_age: std::time::Duration::from_secs(3600),
            ..PodSettings::default()
        };
        let RestartDecision::Held {
            hold,
            pending,
            first_seen,
            ..
        } = decide_restart(
            &WorkloadState::default(),
            &[change("web", 'b', Some('a'))],
            ThisPod::default(),
            &soak,
            now(),
        )
        else {
            panic!("held expected")
        };
        assert!(matches!(hold, Hold::Soaking { .. }));
        assert_eq!(first_seen, vec!["web".to_string()]);
        let patch = pending_patch("9", &pending);
        assert_eq!(
            patch["metadata"]["annotations"][contract::ANNOTATION_PENDING],
            format!("web={}@2026-11-24T12:00:00Z", digest('b'))
        );
        // An hour later, from the recorded first sight: the restart, which clears it.
        let state = workload(&[], &[(contract::ANNOTATION_PENDING, pending.to_string())]);
        let later: Timestamp = "2026-11-24T13:00:00Z".parse().unwrap();
        let restart = restart_of(decide_restart(
            &state,
            &[change("web", 'b', Some('a'))],
            ThisPod::default(),
            &soak,
            later,
        ));
        assert!(restart.pending.is_empty());
        assert_eq!(
            restart_patch("10", later, &restart)["metadata"]["annotations"]
                [contract::ANNOTATION_PENDING],
            Value::Null
        );
        // Paused on the workload's metadata: held, whatever the timing.
        let paused = workload(&[], &[(contract::ANNOTATION_PAUSED, "true".into())]);
        assert!(matches!(
            decide_restart(
                &paused,
                &[change("web", 'b', Some('a'))],
                ThisPod::default(),
                &PodSettings::default(),
                later
            ),
            RestartDecision::Held {
                hold: Hold::Paused,
                ..
            }
        ));
    }

    fn web() -> WorkloadRef {
        WorkloadRef {
            kind: pod_reloaded_contract::owner::WorkloadKind::Deployment,
            name: "web".into(),
            uid: "web-uid".into(),
        }
    }

    fn events(effects: &Effects) -> Vec<(&'static str, bool, &str)> {
        effects
            .said
            .iter()
            .flat_map(|said| &said.events)
            .map(|e| (e.reason, e.warning, e.message.as_str()))
            .collect()
    }

    #[test]
    fn a_restart_says_where_the_tag_points_counts_and_starts_following() {
        let changes = [change("app", 'b', None)];
        let decision = decide_now(&WorkloadState::default(), &changes);
        let (round, effects) = restart_effects(&web(), decision, &changes, "web-1");
        assert_eq!(round, RoundOutcome::Restarted);
        assert_eq!(effects.metric, Some(Metric::Restart));
        assert_eq!(effects.follow, Some(true));
        let events = events(&effects);
        assert_eq!(events.len(), 1);
        let (reason, warning, message) = events[0];
        assert_eq!((reason, warning), ("ImageDigestChanged", false));
        assert_eq!(
            message,
            format!(
                "pod-reloaded restarted Deployment/web: the watched tag now points to app={}; no rollback target for app (the pods ran a bare image ID, not a pullable digest): a failed rollout will halt",
                digest('b')
            )
        );
        assert_eq!(effects.said[0].log.decision, "restart");
        assert!(effects.said[0].once.is_none());
    }

    fn signed(mut change: Change, verdict: SignatureVerdict) -> Change {
        change.signature = Some(verdict);
        change
    }

    #[test]
    fn a_rejected_signature_quarantines_the_digest_before_anything_restarts() {
        let rejected = SignatureVerdict::Rejected {
            reason: "no cosign signature found".into(),
        };
        let verified = SignatureVerdict::Verified {
            signer: "key sha256:ab".into(),
        };
        let changes = [
            signed(change("app", 'b', Some('a')), rejected.clone()),
            signed(change("side", 'c', Some('0')), verified),
        ];
        let state = workload(&[], &[]);
        let update = restart_update(
            &state,
            "7",
            &changes,
            ThisPod::default(),
            &PodSettings::default(),
            now(),
        );
        let Update::Patch(patch, decision) = update else {
            panic!("expected a patch");
        };
        assert_eq!(
            patch["metadata"]["annotations"][contract::ANNOTATION_QUARANTINED],
            format!("app={}", digest('b'))
        );
        assert_eq!(patch.get("spec"), None, "nothing rolls: {patch}");
        let (round, effects) = restart_effects(&web(), decision, &changes, "web-1");
        assert_eq!(round, RoundOutcome::AlreadyRestarted);
        let said = events(&effects);
        assert_eq!(said.len(), 1);
        assert_eq!(said[0].0, "ImageSignatureRejected");
        assert!(said[0].1, "a Warning");
        assert!(
            said[0].2.contains("no cosign signature found"),
            "{}",
            said[0].2
        );
        assert_eq!(effects.metric, None);

        // Once quarantined, the verified change rolls out alone; a later signed push too.
        let state = workload(
            &[],
            &[(
                contract::ANNOTATION_QUARANTINED,
                format!("app={}", digest('b')),
            )],
        );
        let RestartDecision::Restart(restart) = decide_now(&state, &changes) else {
            panic!("expected a restart");
        };
        assert_eq!(
            restart.rolled_to.to_string(),
            format!("side={}", digest('c'))
        );
        let decision = decide_now(&state, &changes);
        let (_, effects) = restart_effects(&web(), decision, &changes, "web-1");
        assert!(
            events(&effects)[0]
                .2
                .ends_with("; signature verified: side signed by key sha256:ab"),
            "{}",
            events(&effects)[0].2
        );
        let unsigned_again = [signed(change("app", 'd', Some('a')), rejected)];
        assert!(matches!(
            decide_now(&state, &unsigned_again),
            RestartDecision::SignatureRejected { .. }
        ));
    }

    #[test]
    fn a_digest_without_a_signature_yet_waits_and_nothing_restarts() {
        let unsigned = SignatureVerdict::Unsigned {
            reason: "no cosign signature found".into(),
        };
        let changes = [signed(change("app", 'b', Some('a')), unsigned)];
        let update = restart_update(
            &workload(&[], &[]),
            "7",
            &changes,
            ThisPod::default(),
            &PodSettings::default(),
            now(),
        );
        let Update::Leave(decision) = update else {
            panic!("nothing is patched while it waits");
        };
        let (round, effects) = restart_effects(&web(), decision, &changes, "web-1");
        assert_eq!(round, RoundOutcome::Deferred);
        assert!(events(&effects).is_empty());
        assert!(effects.said[0].once.is_some(), "said once per digest");
    }

    #[test]
    fn an_undo_by_hand_says_how_to_lift_the_quarantine() {
        let left = DigestRecord::parse(&format!("app={}", digest('b')));
        let changes = [change("app", 'b', Some('a'))];
        let decision = RestartDecision::Undone { left };
        let (round, effects) = restart_effects(&web(), decision, &changes, "web-1");
        assert_eq!(round, RoundOutcome::AlreadyRestarted);
        let events = events(&effects);
        assert_eq!(events[0].0, "RolloutUndone");
        assert!(
            events[0]
                .2
                .ends_with("(until the tag moves, or `kubectl annotate deployment/web pod-reloaded.io/quarantined-`)"),
            "{}",
            events[0].2
        );
        assert_eq!(effects.follow, None);
    }

    #[test]
    fn a_held_change_is_announced_by_the_sidecar_that_recorded_it_and_logged_once() {
        let changes = [change("app", 'b', Some('a'))];
        let held = |first_seen: Vec<String>| RestartDecision::Held {
            hold: Hold::Notify,
            changes: DigestRecord::parse(&format!("app={}", digest('b'))),
            pending: PendingRecord::default(),
            first_seen,
        };
        let (round, recorded) =
            restart_effects(&web(), held(vec!["app".into()]), &changes, "web-1");
        assert_eq!(round, RoundOutcome::Deferred);
        assert_eq!(events(&recorded).len(), 1);
        assert_eq!(events(&recorded)[0].0, "ImageUpdateAvailable");
        let (_, seen_before) = restart_effects(&web(), held(Vec::new()), &changes, "web-2");
        assert!(
            events(&seen_before).is_empty(),
            "only the recording sidecar says it"
        );
        let deferred = seen_before.said.last().unwrap();
        assert_eq!(deferred.log.decision, "defer");
        assert_eq!(
            deferred.once.as_deref(),
            Some(format!("held:app={}:notify", digest('b')).as_str())
        );
    }

    #[test]
    fn a_held_update_is_one_event_per_digest_and_kind_of_hold_whatever_the_replicas() {
        let changes = [change("app", 'b', Some('a'))];
        let held = |first_seen: Vec<String>| RestartDecision::Held {
            hold: Hold::Paused,
            changes: DigestRecord::parse(&format!("app={}", digest('b'))),
            pending: PendingRecord::default(),
            first_seen,
        };
        let (_, recorded) = restart_effects(&web(), held(vec!["app".into()]), &changes, "web-1");
        let event = &recorded.said[0].events[0];
        assert_eq!(event.reason, "ImageUpdateHeld");
        assert_eq!(
            event.to.as_deref(),
            Some(format!("app={}", digest('b')).as_str())
        );
        assert!(event.message.contains("paused"), "{}", event.message);
        // Another replica says it under the same name (the API server keeps one), once.
        let (_, seen_before) = restart_effects(&web(), held(Vec::new()), &changes, "web-2");
        assert_eq!(seen_before.said[0].events[0].name, event.name);
        assert!(seen_before.said[0].once.is_some());
        // Another kind of hold of the same digest is another Event.
        let cooling = RestartDecision::Held {
            hold: Hold::CoolingDown { until: now() },
            changes: DigestRecord::parse(&format!("app={}", digest('b'))),
            pending: PendingRecord::default(),
            first_seen: Vec::new(),
        };
        let (_, cooling) = restart_effects(&web(), cooling, &changes, "web-1");
        assert_ne!(cooling.said[0].events[0].name, event.name);
        assert!(event
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("held-paused-")));
    }

    #[test]
    fn a_restart_event_names_where_the_workload_goes_and_comes_from() {
        let changes = [change("app", 'b', Some('a'))];
        let decision = decide_now(&WorkloadState::default(), &changes);
        let (_, effects) = restart_effects(&web(), decision, &changes, "web-1");
        let event = &effects.said[0].events[0];
        assert_eq!(
            event.to.as_deref(),
            Some(format!("app={}", digest('b')).as_str())
        );
        assert_eq!(
            event.from.as_deref(),
            Some(format!("app={}", digest('a')).as_str())
        );
    }

    #[test]
    fn a_pull_that_did_not_take_warns_once_naming_the_pod() {
        let changes = [change("app", 'b', Some('a'))];
        let decision = RestartDecision::AlreadyRestarted {
            pull_did_not_take: true,
        };
        let (round, effects) = restart_effects(&web(), decision, &changes, "web-7f8c");
        assert_eq!(round, RoundOutcome::AlreadyRestarted);
        let events = events(&effects);
        assert_eq!(events[0].0, "ImageDigestUnchangedAfterRestart");
        assert!(events[0].1, "a Warning");
        assert!(events[0]
            .2
            .contains("pod web-7f8c still runs the old digest"));
        assert!(effects.said[0].once.is_some());
        assert!(effects.said[0].log.warn);
    }

    #[test]
    fn a_change_waiting_for_a_rollout_in_progress_follows_it() {
        let changes = [change("app", 'b', Some('a'))];
        let decision = RestartDecision::RolloutInProgress {
            restarted_at: "2026-11-24T11:59:00Z".into(),
        };
        let (round, effects) = restart_effects(&web(), decision, &changes, "web-1");
        assert_eq!(round, RoundOutcome::AlreadyRestarted);
        assert_eq!(effects.follow, Some(true));
        assert!(events(&effects).is_empty());
    }
}
