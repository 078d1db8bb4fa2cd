//! Act on a change: read the workload, let `decide` say what to do and patch it (or
//! quarantine what a person rolled back from), then carry out what the decision says.

use k8s_openapi::api::core::v1::Pod;
use tracing::warn;

use super::{Checker, RoundOutcome};
use crate::cluster::Updated;
use crate::decide::{self, Change};

impl Checker {
    pub(super) async fn restart_for(&mut self, pod: &Pod, changes: &[Change]) -> RoundOutcome {
        let Some(workload) = self.workload(pod).await else {
            return RoundOutcome::Failed { retry_after: None };
        };
        let this_pod = decide::ThisPod {
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            from_earlier_revision: self.from_earlier_revision,
        };
        let now = jiff::Timestamp::now();
        let mut desired = None;
        let decision = match self
            .cluster
            .update_workload(&workload, |state, version| {
                desired = Some(state.desired_replicas());
                decide::restart_update(state, version, changes, this_pod, &self.settings, now)
            })
            .await
        {
            Ok(Updated::Applied(decision) | Updated::LeftAsItWas(decision)) => decision,
            Err(error) => {
                warn!(%workload, error = format!("{error:#}"), "restart failed");
                return RoundOutcome::Failed { retry_after: None };
            }
        };
        if let Some(desired) = desired {
            self.set_replicas(&workload, desired);
        }
        let pod_name = pod.metadata.name.as_deref().unwrap_or("");
        let (round, effects) = decide::restart_effects(&workload, decision, changes, pod_name);
        self.execute(&workload, effects).await;
        round
    }
}
