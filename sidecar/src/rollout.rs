//! Following a rollout pod-reloaded started: is it done, has it failed, and the patches
//! that record the outcome (success, rollback, or halt). Pure.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use pod_reloaded_contract as contract;
use pod_reloaded_contract::owner::WorkloadKind;
use pod_reloaded_contract::pod_settings::PodSettings;
use pod_reloaded_contract::record::{timestamp_text, DigestRecord, RolloutRecord, RolloutState};
use pod_reloaded_contract::settings::OnFailure;
use serde_json::Value;

use crate::effects::{Effects, Event, LogFields, LogLine, Metric, Said, Update, Updated};
use crate::metrics::RolloutResult;
use crate::workload::{RolloutStatus, WorkloadPatch, WorkloadState};
use pod_reloaded_contract::owner::WorkloadRef;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    Pending,
    Succeeded,
    Failed { reason: String },
}

/// Where the rollout of `workload` (started at `started`) stands at `now`.
///
/// Done when the controller has seen the new template and every desired pod is updated
/// and ready (Deployment: updated = ready = desired, no old pods left; StatefulSet: the
/// same and the update revision current; DaemonSet: updated = available = desired;
/// Argo Rollout: `phase: Healthy` with every pod updated).
/// Failed when a Deployment reports `ProgressDeadlineExceeded`, an Argo Rollout is
/// `Degraded` (its analysis failed, or its deadline passed), or when it is not done
/// `timeout` after it started (new pods crash-looping, not pulled, or never ready).
pub fn progress(
    kind: WorkloadKind,
    workload: &WorkloadState,
    started: Timestamp,
    timeout: Duration,
    now: Timestamp,
) -> Progress {
    let status = &workload.status;
    let observed = match (workload.generation, status.observed_generation) {
        (Some(generation), Some(observed)) => observed >= generation,
        (None, _) => true,
        (Some(_), None) => false,
    };
    let RolloutStatus {
        desired,
        total,
        updated,
        ready,
        available,
        ..
    } = *status;
    let (done, counts) = match kind {
        WorkloadKind::Deployment => (
            updated >= desired && ready >= desired && total <= desired,
            format!("{updated}/{desired} updated, {ready} ready"),
        ),
        WorkloadKind::StatefulSet => (
            updated >= desired && ready >= desired && status.revisions_current,
            format!("{updated}/{desired} updated, {ready} ready"),
        ),
        WorkloadKind::Rollout => {
            let phase = status.phase.as_deref().unwrap_or("");
            if phase == "Degraded" && observed {
                return Progress::Failed {
                    reason: format!(
                        "the Rollout is Degraded ({updated}/{desired} updated, {ready} ready): {}",
                        status.message.as_deref().unwrap_or("")
                    ),
                };
            }
            (
                phase == "Healthy" && updated >= desired && ready >= desired,
                format!("{updated}/{desired} updated, {ready} ready, phase {phase}"),
            )
        }
        WorkloadKind::DaemonSet => (
            updated >= desired && available >= desired,
            format!("{updated}/{desired} updated, {available} available"),
        ),
    };
    if observed && done {
        return Progress::Succeeded;
    }
    if let Some(message) = &status.deadline_exceeded {
        return Progress::Failed {
            reason: format!("ProgressDeadlineExceeded ({counts}): {message}"),
        };
    }
    let elapsed = Duration::try_from(now.duration_since(started)).unwrap_or(Duration::ZERO);
    if elapsed > timeout {
        return Progress::Failed {
            reason: format!(
                "not done {} after the restart ({counts})",
                humantime::format_duration(timeout)
            ),
        };
    }
    Progress::Pending
}

/// What following a rollout came to in one round.
#[derive(Debug, PartialEq, Eq)]
pub enum Followed {
    NothingToFollow,
    Pending,
    Succeeded {
        record: RolloutRecord,
        started: Timestamp,
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

/// Where the rollout pod-reloaded started on the workload (as read, at `version`) stands,
/// and the patch that records its end: success, rollback or halt, or the quarantine of
/// what a person rolled back from while it was in progress.
pub fn follow_update(
    kind: WorkloadKind,
    state: &WorkloadState,
    version: &str,
    settings: &PodSettings,
    now: Timestamp,
) -> Update<Followed> {
    let Some(record) = state
        .rollout()
        .filter(|r| r.state == RolloutState::Progressing)
    else {
        return Update::Leave(Followed::NothingToFollow);
    };
    if state.rollout_in_template().is_none() {
        // Rolled back by hand while it was in progress: the undo sticks.
        let left = record.rolled_to.clone();
        let patch = WorkloadPatch::new(version)
            .quarantine(state, &left, &record.with_state(RolloutState::Undone))
            .into_json();
        return Update::Patch(patch, Followed::Undone(left));
    }
    let Ok(started) = record.restarted_at.parse::<Timestamp>() else {
        return Update::Leave(Followed::NothingToFollow);
    };
    match progress(kind, state, started, settings.rollout_timeout, now) {
        Progress::Pending => Update::Leave(Followed::Pending),
        Progress::Succeeded => Update::Patch(
            success_patch(version, &record),
            Followed::Succeeded { record, started },
        ),
        Progress::Failed { reason } => {
            match failure_action(version, state, &record, settings.on_failure, now) {
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
}

/// What following said and does: the recorded end's log line, Events and metric, and
/// whether to go on following (only while the rollout is pending).
pub fn follow_effects(
    workload: &WorkloadRef,
    followed: Updated<Followed>,
    now: Timestamp,
) -> Effects {
    let followed = match followed {
        Updated::LeftAsItWas(Followed::Pending) => {
            return Effects {
                follow: Some(true),
                ..Effects::default()
            }
        }
        Updated::LeftAsItWas(_) => {
            return Effects {
                follow: Some(false),
                ..Effects::default()
            }
        }
        Updated::Applied(followed) => followed,
    };
    let (said, metric) = match followed {
        Followed::Succeeded { record, started } => {
            let took = Duration::try_from(now.duration_since(started)).unwrap_or_default();
            let took = humantime::format_duration(Duration::from_secs(took.as_secs())).to_string();
            let message = format!(
                "pod-reloaded's rollout of {workload} to {} succeeded in {took}",
                record.rolled_to
            );
            let log = LogLine::info(
                "rollout-succeeded",
                "rollout succeeded",
                LogFields {
                    rolled_to: Some(record.rolled_to.to_string()),
                    took: Some(took),
                    ..LogFields::default()
                },
            );
            (
                Some(Said::log(log).with_event(
                    Event::normal("RolloutSucceeded", message).about(&record.rolled_to, None),
                )),
                Some(Metric::Rollout(RolloutResult::Succeeded)),
            )
        }
        Followed::RolledBack { record, reason, to } => {
            let failed = format!(
                "pod-reloaded's rollout of {workload} to {} failed: {reason}",
                record.rolled_to
            );
            let rolled_back = format!(
                "pod-reloaded rolled {workload} back to {to} and quarantined {}",
                record.rolled_to
            );
            let log = LogLine::warn(
                "rollback",
                "rollout failed; rolled back and quarantined",
                LogFields {
                    rolled_to: Some(record.rolled_to.to_string()),
                    reason: Some(reason),
                    ..LogFields::default()
                },
            );
            (
                Some(
                    Said::log(log)
                        .with_event(
                            Event::warning("RolloutFailed", failed)
                                .about(&record.rolled_to, Some(to.to_string())),
                        )
                        .with_event(
                            Event::normal("RolledBack", rolled_back)
                                .about(&to, Some(record.rolled_to.to_string())),
                        ),
                ),
                Some(Metric::Rollout(RolloutResult::RolledBack)),
            )
        }
        Followed::Halted {
            record,
            reason,
            why,
        } => {
            let why = why.map(|w| format!("; {w}")).unwrap_or_default();
            let message = format!(
                "pod-reloaded's rollout of {workload} to {} failed: {reason}; quarantined, not rolled back{why}",
                record.rolled_to
            );
            let log = LogLine::warn(
                "halt",
                "rollout failed; quarantined, not rolled back",
                LogFields {
                    rolled_to: Some(record.rolled_to.to_string()),
                    reason: Some(reason),
                    ..LogFields::default()
                },
            );
            (
                Some(Said::log(log).with_event(
                    Event::warning("RolloutFailed", message).about(&record.rolled_to, None),
                )),
                Some(Metric::Rollout(RolloutResult::Failed)),
            )
        }
        Followed::Undone(left) => {
            let log = LogLine::info(
                "undone",
                "the template was rolled back by hand during the rollout",
                LogFields {
                    left: Some(left.to_string()),
                    ..LogFields::default()
                },
            );
            (Some(Said::log(log)), None)
        }
        // Never patched: nothing happened to say.
        Followed::Pending | Followed::NothingToFollow => (None, None),
    };
    Effects {
        said: said.into_iter().collect(),
        metric,
        follow: Some(false),
    }
}

/// What a failed rollout leads to.
#[derive(Debug, PartialEq)]
pub enum FailureAction {
    /// One patch: the template back to the previous digests (a new `restartedAt`, so the
    /// webhook pins every new pod to them), the new digests quarantined.
    RollBack { patch: Value },
    /// The new digests quarantined, nothing rolled; `why` when a rollback was asked for
    /// but there is nothing to roll back to.
    Halt { patch: Value, why: Option<String> },
}

/// The patch for a rollout that failed, by `on-failure`.
pub fn failure_action(
    resource_version: &str,
    workload: &WorkloadState,
    record: &RolloutRecord,
    on_failure: OnFailure,
    now: Timestamp,
) -> FailureAction {
    let rolled_from = workload.rolled_from();
    let missing: Vec<&str> = record
        .rolled_to
        .iter()
        .filter(|(container, _)| rolled_from.get(container).is_none())
        .map(|(container, _)| container)
        .collect();
    if on_failure == OnFailure::Rollback && missing.is_empty() {
        let mut restarted_for = workload.restarted_for();
        for (container, digest) in rolled_from.iter() {
            restarted_for.insert(container, digest);
        }
        let patch = WorkloadPatch::new(resource_version)
            .quarantine(
                workload,
                &record.rolled_to,
                &record.with_state(RolloutState::RolledBack),
            )
            .set(contract::ANNOTATION_RESTARTED_AT, timestamp_text(now))
            .set(contract::ANNOTATION_RESTARTED_FOR, restarted_for)
            .remove(contract::ANNOTATION_ROLLED_FROM)
            .into_json();
        return FailureAction::RollBack { patch };
    }
    let why = (on_failure == OnFailure::Rollback).then(|| {
        format!(
            "no rollback target for {} (the pods ran a bare image ID, not a pullable digest)",
            missing.join(",")
        )
    });
    FailureAction::Halt {
        patch: WorkloadPatch::new(resource_version)
            .quarantine(
                workload,
                &record.rolled_to,
                &record.with_state(RolloutState::Failed),
            )
            .into_json(),
        why,
    }
}

/// The metadata patch that records a rollout's success.
pub fn success_patch(resource_version: &str, record: &RolloutRecord) -> Value {
    WorkloadPatch::new(resource_version)
        .set(
            contract::ANNOTATION_ROLLOUT,
            record.with_state(RolloutState::Succeeded),
        )
        .into_json()
}

/// What the new pods of a failed rollout are doing, for its Event: e.g.
/// `2/2 new pods CrashLoopBackOff`, or `new pods: 1 ImagePullBackOff, 1 not ready`. New
/// pods are those whose template recorded `rolled_to`. `None` when there are none.
pub fn describe_new_pods(pods: &[Pod], rolled_to: &DigestRecord) -> Option<String> {
    let new: Vec<&Pod> = pods
        .iter()
        .filter(|pod| {
            let recorded = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(contract::ANNOTATION_RESTARTED_FOR))
                .map(|v| DigestRecord::parse(v))
                .unwrap_or_default();
            rolled_to.iter().all(|(c, d)| recorded.get(c) == Some(d))
        })
        .collect();
    if new.is_empty() {
        return None;
    }
    let mut states: std::collections::BTreeMap<String, usize> = Default::default();
    for pod in &new {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .cloned()
            .unwrap_or_default();
        let waiting = statuses.iter().find_map(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.waiting.as_ref())
                .and_then(|w| w.reason.clone())
        });
        let state = match waiting {
            Some(reason) => reason,
            None if !statuses.is_empty() && statuses.iter().all(|s| s.ready) => "Ready".to_string(),
            None => "not ready".to_string(),
        };
        *states.entry(state).or_default() += 1;
    }
    Some(if states.len() == 1 {
        let (state, count) = states
            .iter()
            .next()
            .map(|(s, c)| (s.clone(), *c))
            .unwrap_or_default();
        format!("{count}/{} new pods {state}", new.len())
    } else {
        let parts: Vec<String> = states.iter().map(|(s, c)| format!("{c} {s}")).collect();
        format!("new pods: {}", parts.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const STARTED: &str = "2026-11-24T10:00:00Z";

    fn at(seconds: i64) -> Timestamp {
        STARTED.parse::<Timestamp>().unwrap() + jiff::SignedDuration::from_secs(seconds)
    }

    fn deployment(status: Value) -> WorkloadState {
        WorkloadState::from_json(
            WorkloadKind::Deployment,
            &json!({"metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": status}),
        )
    }

    fn progress_at(kind: WorkloadKind, state: &WorkloadState, seconds: i64) -> Progress {
        progress(kind, state, at(0), Duration::from_secs(600), at(seconds))
    }

    #[test]
    fn a_deployment_is_done_when_every_pod_is_updated_and_ready() {
        let done = deployment(
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}),
        );
        assert_eq!(
            progress_at(WorkloadKind::Deployment, &done, 30),
            Progress::Succeeded
        );
        let stale = deployment(
            json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}),
        );
        assert_eq!(
            progress_at(WorkloadKind::Deployment, &stale, 30),
            Progress::Pending
        );
        let old_left = deployment(
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "readyReplicas": 2}),
        );
        assert_eq!(
            progress_at(WorkloadKind::Deployment, &old_left, 30),
            Progress::Pending
        );
        let unready = deployment(
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1}),
        );
        assert_eq!(
            progress_at(WorkloadKind::Deployment, &unready, 30),
            Progress::Pending
        );
    }

    #[test]
    fn a_deployment_fails_on_its_deadline_or_our_timeout() {
        let stuck = deployment(
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"web-2\" has timed out progressing."}]}),
        );
        let Progress::Failed { reason } = progress_at(WorkloadKind::Deployment, &stuck, 30) else {
            panic!("failed expected")
        };
        assert!(
            reason.contains("ProgressDeadlineExceeded") && reason.contains("1/2 updated"),
            "{reason}"
        );
        let slow = deployment(
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 0}),
        );
        assert_eq!(
            progress_at(WorkloadKind::Deployment, &slow, 600),
            Progress::Pending
        );
        let Progress::Failed { reason } = progress_at(WorkloadKind::Deployment, &slow, 601) else {
            panic!("failed expected")
        };
        assert!(
            reason.contains("10m") && reason.contains("0 ready"),
            "{reason}"
        );
    }

    #[test]
    fn argo_rollouts_report_their_phase() {
        let rollout = |phase: &str, observed: &str| {
            WorkloadState::from_json(
                WorkloadKind::Rollout,
                &json!({"metadata": {"generation": 3}, "spec": {"replicas": 2},
                    "status": {"observedGeneration": observed, "phase": phase, "updatedReplicas": 2, "readyReplicas": 2, "message": "analysis failed"}}),
            )
        };
        assert_eq!(
            progress_at(WorkloadKind::Rollout, &rollout("Healthy", "3"), 5),
            Progress::Succeeded
        );
        assert_eq!(
            progress_at(WorkloadKind::Rollout, &rollout("Healthy", "2"), 5),
            Progress::Pending,
            "not observed yet"
        );
        assert_eq!(
            progress_at(WorkloadKind::Rollout, &rollout("Progressing", "3"), 5),
            Progress::Pending
        );
        let Progress::Failed { reason } =
            progress_at(WorkloadKind::Rollout, &rollout("Degraded", "3"), 5)
        else {
            panic!("failed expected")
        };
        assert!(
            reason.contains("Degraded") && reason.contains("analysis failed"),
            "{reason}"
        );
    }

    #[test]
    fn statefulsets_and_daemonsets_have_their_own_counts() {
        let sts = |current: &str| {
            WorkloadState::from_json(
                WorkloadKind::StatefulSet,
                &json!({"metadata": {"generation": 1}, "spec": {"replicas": 2},
                    "status": {"observedGeneration": 1, "updatedReplicas": 2, "readyReplicas": 2, "updateRevision": "r2", "currentRevision": current}}),
            )
        };
        assert_eq!(
            progress_at(WorkloadKind::StatefulSet, &sts("r2"), 5),
            Progress::Succeeded
        );
        assert_eq!(
            progress_at(WorkloadKind::StatefulSet, &sts("r1"), 5),
            Progress::Pending
        );
        let ds = |available: i64| {
            WorkloadState::from_json(
                WorkloadKind::DaemonSet,
                &json!({"metadata": {"generation": 1},
                    "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": available}}),
            )
        };
        assert_eq!(
            progress_at(WorkloadKind::DaemonSet, &ds(3), 5),
            Progress::Succeeded
        );
        assert_eq!(
            progress_at(WorkloadKind::DaemonSet, &ds(2), 5),
            Progress::Pending
        );
        assert!(matches!(
            progress_at(WorkloadKind::DaemonSet, &ds(2), 700),
            Progress::Failed { .. }
        ));
    }

    fn failed_workload(rolled_from: Option<&str>) -> (WorkloadState, RolloutRecord) {
        let mut state = deployment(json!({}));
        state.template_annotations.insert(
            contract::ANNOTATION_RESTARTED_FOR.into(),
            "web=sha256:new,api=sha256:api".into(),
        );
        if let Some(from) = rolled_from {
            state
                .template_annotations
                .insert(contract::ANNOTATION_ROLLED_FROM.into(), from.into());
        }
        state.metadata_annotations.insert(
            contract::ANNOTATION_QUARANTINED.into(),
            "old=sha256:q".into(),
        );
        let record = RolloutRecord {
            state: RolloutState::Progressing,
            restarted_at: STARTED.into(),
            rolled_to: DigestRecord::parse("web=sha256:new"),
        };
        (state, record)
    }

    #[test]
    fn a_rollback_restores_the_previous_digests_and_quarantines_the_new_ones() {
        let (state, record) = failed_workload(Some("web=sha256:old"));
        let FailureAction::RollBack { patch } =
            failure_action("7", &state, &record, OnFailure::Rollback, at(700))
        else {
            panic!("rollback expected")
        };
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let template = &patch["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            template[contract::ANNOTATION_RESTARTED_FOR],
            "api=sha256:api,web=sha256:old"
        );
        assert_eq!(
            template[contract::ANNOTATION_RESTARTED_AT],
            "2026-11-24T10:11:40Z"
        );
        assert_eq!(template[contract::ANNOTATION_ROLLED_FROM], Value::Null);
        let metadata = &patch["metadata"]["annotations"];
        assert_eq!(
            metadata[contract::ANNOTATION_QUARANTINED],
            "old=sha256:q,web=sha256:new"
        );
        assert_eq!(
            metadata[contract::ANNOTATION_ROLLOUT],
            format!("rolled-back {STARTED} web=sha256:new")
        );
    }

    #[test]
    fn halt_or_no_target_quarantines_without_touching_the_template() {
        let (state, record) = failed_workload(Some("web=sha256:old"));
        let FailureAction::Halt { patch, why } =
            failure_action("7", &state, &record, OnFailure::Halt, at(700))
        else {
            panic!("halt expected")
        };
        assert!(why.is_none());
        assert!(patch.get("spec").is_none());
        assert_eq!(
            patch["metadata"]["annotations"][contract::ANNOTATION_ROLLOUT],
            format!("failed {STARTED} web=sha256:new")
        );

        let (state, record) = failed_workload(None);
        let FailureAction::Halt { patch, why } =
            failure_action("7", &state, &record, OnFailure::Rollback, at(700))
        else {
            panic!("halt expected without a target")
        };
        assert!(why.unwrap().contains("no rollback target for web"));
        assert!(patch.get("spec").is_none());
    }

    #[test]
    fn success_is_recorded_on_the_metadata() {
        let (_, record) = failed_workload(None);
        assert_eq!(
            success_patch("3", &record)["metadata"]["annotations"][contract::ANNOTATION_ROLLOUT],
            format!("succeeded {STARTED} web=sha256:new")
        );
    }

    #[test]
    fn new_pods_are_described_by_what_they_wait_for() {
        let pod = |restarted_for: &str, waiting: Option<&str>, ready: bool| -> Pod {
            let state = match waiting {
                Some(reason) => json!({"waiting": {"reason": reason}}),
                None => json!({"running": {}}),
            };
            serde_json::from_value(json!({
                "metadata": {"annotations": {contract::ANNOTATION_RESTARTED_FOR: restarted_for}},
                "status": {"containerStatuses": [{"name": "web", "image": "x", "imageID": "", "ready": ready, "restartCount": 3, "state": state}]}
            }))
            .unwrap()
        };
        let new = DigestRecord::parse("web=sha256:new");
        let crashing = [
            pod("web=sha256:new", Some("CrashLoopBackOff"), false),
            pod("web=sha256:new", Some("CrashLoopBackOff"), false),
            pod("web=sha256:old", None, true),
        ];
        assert_eq!(
            describe_new_pods(&crashing, &new).as_deref(),
            Some("2/2 new pods CrashLoopBackOff")
        );
        let mixed = [
            pod("web=sha256:new", Some("ImagePullBackOff"), false),
            pod("web=sha256:new", None, false),
        ];
        assert_eq!(
            describe_new_pods(&mixed, &new).as_deref(),
            Some("new pods: 1 ImagePullBackOff, 1 not ready")
        );
        assert_eq!(describe_new_pods(&crashing[2..], &new), None);
    }

    fn web() -> WorkloadRef {
        WorkloadRef {
            kind: WorkloadKind::Deployment,
            name: "web".into(),
            uid: "web-uid".into(),
        }
    }

    fn record() -> RolloutRecord {
        RolloutRecord {
            state: RolloutState::Progressing,
            restarted_at: STARTED.into(),
            rolled_to: DigestRecord::parse(&format!("app=sha256:{}", "b".repeat(64))),
        }
    }

    #[test]
    fn a_pending_rollout_is_followed_on_and_an_ended_one_no_more() {
        let pending = follow_effects(&web(), Updated::LeftAsItWas(Followed::Pending), at(5));
        assert_eq!(pending.follow, Some(true));
        assert!(pending.said.is_empty() && pending.metric.is_none());
        let nothing = follow_effects(
            &web(),
            Updated::LeftAsItWas(Followed::NothingToFollow),
            at(5),
        );
        assert_eq!(nothing.follow, Some(false));
        let done = follow_effects(
            &web(),
            Updated::Applied(Followed::Succeeded {
                record: record(),
                started: at(0),
            }),
            at(75),
        );
        assert_eq!(done.follow, Some(false));
        assert_eq!(done.metric, Some(Metric::Rollout(RolloutResult::Succeeded)));
        assert_eq!(
            done.said[0].events[0].message,
            format!(
                "pod-reloaded's rollout of Deployment/web to app=sha256:{} succeeded in 1m 15s",
                "b".repeat(64)
            )
        );
    }

    #[test]
    fn a_rollback_says_why_it_failed_and_where_it_went() {
        let to = DigestRecord::parse(&format!("app=sha256:{}", "a".repeat(64)));
        let effects = follow_effects(
            &web(),
            Updated::Applied(Followed::RolledBack {
                record: record(),
                reason: "ProgressDeadlineExceeded; 2/2 new pods CrashLoopBackOff".into(),
                to,
            }),
            at(700),
        );
        assert_eq!(
            effects.metric,
            Some(Metric::Rollout(RolloutResult::RolledBack))
        );
        let events: Vec<(&str, bool)> = effects.said[0]
            .events
            .iter()
            .map(|e| (e.reason, e.warning))
            .collect();
        assert_eq!(events, [("RolloutFailed", true), ("RolledBack", false)]);
        assert!(effects.said[0].events[0]
            .message
            .ends_with("failed: ProgressDeadlineExceeded; 2/2 new pods CrashLoopBackOff"));
        assert!(effects.said[0].events[1].message.starts_with(&format!(
            "pod-reloaded rolled Deployment/web back to app=sha256:{}",
            "a".repeat(64)
        )));
    }

    #[test]
    fn a_halt_says_why_there_was_no_rollback() {
        let effects = follow_effects(
            &web(),
            Updated::Applied(Followed::Halted {
                record: record(),
                reason: "not ready after 10m".into(),
                why: Some("no rollback target for app".into()),
            }),
            at(700),
        );
        assert_eq!(effects.metric, Some(Metric::Rollout(RolloutResult::Failed)));
        assert!(effects.said[0].events[0].message.ends_with(
            "failed: not ready after 10m; quarantined, not rolled back; no rollback target for app"
        ));
    }
}
