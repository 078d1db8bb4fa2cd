//! Following a rollout pod-reloaded started on our workload, until one sidecar records
//! how it ended: success, rollback or halt.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use pod_reloaded_contract as contract;
use pod_reloaded_contract::record::{DigestRecord, RolloutRecord, RolloutState};
use tracing::{info, warn};

use super::Checker;
use crate::cluster::Update;
use crate::decide;
use crate::metrics::RolloutResult;
use crate::rollout::{self, FailureAction, Progress, RolloutSettings};

impl Checker {
    /// Follows the rollout pod-reloaded started on our workload; the first sidecar to see
    /// it end records the outcome (success, rollback or halt), with the same precondition
    /// as a restart so exactly one does.
    /// `reason`, and what the rollout's new pods are doing (`2/2 new pods
    /// CrashLoopBackOff`) when the API lists them.
    async fn with_pod_states(
        &self,
        selector: &std::collections::BTreeMap<String, String>,
        record: &RolloutRecord,
        reason: String,
    ) -> String {
        if selector.is_empty() {
            return reason;
        }
        match self.cluster.pods(selector).await {
            Ok(pods) => match rollout::describe_new_pods(&pods, &record.rolled_to) {
                Some(states) => format!("{reason}; {states}"),
                None => reason,
            },
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "cannot list the rollout's pods"
                );
                reason
            }
        }
    }

    pub(super) async fn follow_rollout(&mut self, pod: &Pod) {
        let Some(workload) = self.workload(pod).await else {
            self.following = false;
            return;
        };
        let RolloutSettings {
            timeout,
            on_failure,
        } = RolloutSettings::from_annotations(
            &pod.metadata.annotations.clone().unwrap_or_default(),
        );
        let now = jiff::Timestamp::now();
        let kind = workload.kind;
        let mut selector = std::collections::BTreeMap::new();
        let updated = self
            .cluster
            .update_workload(&workload, |state, version| {
                selector = state.selector();
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
        // A failure's Event says what the new pods are doing, when they can be listed.
        let followed = match followed {
            Followed::RolledBack { record, reason, to } => Followed::RolledBack {
                reason: self.with_pod_states(&selector, &record, reason).await,
                record,
                to,
            },
            Followed::Halted {
                record,
                reason,
                why,
            } => Followed::Halted {
                reason: self.with_pod_states(&selector, &record, reason).await,
                record,
                why,
            },
            other => other,
        };
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
pub(super) fn restarted_recently(pod: &Pod) -> bool {
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
    let timeout = RolloutSettings::from_annotations(annotations).timeout;
    let age = Duration::try_from(jiff::Timestamp::now().duration_since(restarted_at))
        .unwrap_or(Duration::ZERO);
    age <= timeout + Duration::from_secs(60)
}
