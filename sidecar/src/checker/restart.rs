//! Decide and act on a change: let `decide` say whether it is ours to restart for, patch
//! the workload (or quarantine what a person rolled back from) and record the Event.

use k8s_openapi::api::core::v1::Pod;
use pod_reloaded_contract as contract;
use pod_reloaded_contract::owner::WorkloadRef;
use pod_reloaded_contract::record::{timestamp_text, DigestRecord, RolloutRecord, RolloutState};
use tracing::{info, warn};

use super::{Checker, RoundOutcome};
use crate::cluster::Update;
use crate::decide::{self, Change, RestartDecision};
use crate::timing::{Hold, Timing};

impl Checker {
    /// Decide and act: let `decide` say whether this change is ours to restart for,
    /// patch the workload and record the Event.
    pub(super) async fn restart_for(&mut self, pod: &Pod, changes: &[Change]) -> RoundOutcome {
        let Some(workload) = self.workload(pod).await else {
            return RoundOutcome::Failed { retry_after: None };
        };
        let this_pod = decide::ThisPod {
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            from_earlier_revision: self.from_earlier_revision,
        };
        let timing =
            Timing::from_annotations(&pod.metadata.annotations.clone().unwrap_or_default());
        let now = jiff::Timestamp::now();
        let updated = self
            .cluster
            .update_workload(&workload, |state, version| {
                let decision = decide::decide_restart(state, changes, this_pod, &timing, now);
                match &decision {
                    RestartDecision::Restart(restart) => {
                        Update::Patch(decide::restart_patch(version, now, restart), decision)
                    }
                    RestartDecision::Undone { left } => {
                        // The record of the rollout undone; after an undo that restored an
                        // older record (a Deployment's), a new one for what was left.
                        let record = state
                            .rollout()
                            .filter(|r| r.rolled_to == *left)
                            .map(|r| r.with_state(RolloutState::Undone))
                            .unwrap_or_else(|| RolloutRecord {
                                state: RolloutState::Undone,
                                restarted_at: timestamp_text(now),
                                rolled_to: left.clone(),
                            });
                        Update::Patch(
                            decide::quarantine_patch(version, state, left, &record),
                            decision,
                        )
                    }
                    RestartDecision::Held {
                        pending,
                        first_seen,
                        ..
                    } if !first_seen.is_empty() => {
                        Update::Patch(decide::pending_patch(version, pending), decision)
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
            RestartDecision::Held { hold, changes, .. } => {
                // We recorded the first sight of these digests: exactly one sidecar does.
                if hold == Hold::Notify {
                    info!(%workload, changes = %changes, decision = "notify", "a new image is available; mode notify: not restarting");
                    self.cluster
                        .event(
                            &workload,
                            false,
                            "ImageUpdateAvailable",
                            format!("pod-reloaded: the watched tag of {workload} now points to {changes}; not restarting ({}: notify)", contract::ANNOTATION_MODE),
                        )
                        .await;
                }
                self.held(&workload, &hold, &changes);
                RoundOutcome::Deferred
            }
            other => self.skipped(&workload, pod, other, &summary).await,
        }
    }

    /// Says once per digest and reason why a due restart waits, and until when.
    fn held(&mut self, workload: &WorkloadRef, hold: &Hold, changes: &DigestRecord) {
        let reason = hold.describe();
        if self.not_yet_warned(format!("held:{changes}:{}", hold.kind())) {
            info!(%workload, changes = %changes, decision = "defer", reason, "restart deferred");
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
            RestartDecision::Held { hold, changes, .. } => {
                self.held(workload, &hold, &changes);
                return RoundOutcome::Deferred;
            }
            RestartDecision::Restart(_) | RestartDecision::Undone { .. } => {}
        }
        RoundOutcome::AlreadyRestarted
    }
}
