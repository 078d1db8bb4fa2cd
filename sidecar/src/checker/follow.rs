//! Following a rollout pod-reloaded started on our workload, until one sidecar records
//! how it ended: success, rollback or halt (`rollout` decides and says what; this reads,
//! patches and carries it out).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use pod_reloaded_contract as contract;
use pod_reloaded_contract::record::RolloutRecord;
use tracing::warn;

use super::Checker;
use crate::cluster::Updated;
use crate::rollout::{self, Followed};

impl Checker {
    /// Follows the rollout pod-reloaded started on our workload; the first sidecar to see
    /// it end records the outcome, with the same precondition as a restart so exactly one
    /// does.
    pub(super) async fn follow_rollout(&mut self, pod: &Pod) {
        let Some(workload) = self.workload(pod).await else {
            self.following = false;
            return;
        };
        let now = jiff::Timestamp::now();
        let mut selector = std::collections::BTreeMap::new();
        let updated = self
            .cluster
            .update_workload(&workload, |state, version| {
                selector = state.selector.clone();
                rollout::follow_update(workload.kind, state, version, &self.settings, now)
            })
            .await;
        let followed = match updated {
            Ok(Updated::Applied(followed)) => {
                // A failure's Event says what the new pods are doing, when they can be listed.
                Updated::Applied(match followed {
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
                })
            }
            Ok(left) => left,
            Err(error) => {
                warn!(%workload, error = format!("{error:#}"), "cannot follow the rollout; trying next round");
                self.following = true;
                return;
            }
        };
        let effects = rollout::follow_effects(&workload, followed, now);
        self.execute(&workload, effects).await;
    }

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
}

/// True for a pod made by a pod-reloaded restart that may still be rolling out: its
/// template carried `restarted-for`, and its `restartedAt` is within the rollout timeout
/// (and a minute of grace). Such pods' sidecars follow the rollout, so it is followed
/// even when the pod that restarted it is gone.
pub(super) fn restarted_recently(pod: &Pod, timeout: Duration) -> bool {
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
    let age = Duration::try_from(jiff::Timestamp::now().duration_since(restarted_at))
        .unwrap_or(Duration::ZERO);
    age <= timeout + Duration::from_secs(60)
}
