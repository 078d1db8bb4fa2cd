//! The workload as read (`WorkloadState`: its annotations, selector and a typed rollout
//! status, read once per kind from the API object), and the one builder of the patches
//! that record pod-reloaded's decisions on it (`WorkloadPatch`: it knows which annotation
//! lives on the metadata and which on the pod template).

use std::collections::BTreeMap;

use jiff::Timestamp;
use pod_reloaded_contract as contract;
use pod_reloaded_contract::owner::WorkloadKind;
use pod_reloaded_contract::record::{DigestRecord, PendingRecord, RolloutRecord};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The workload as the decisions read it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkloadState {
    pub metadata_annotations: BTreeMap<String, String>,
    pub template_annotations: BTreeMap<String, String>,
    pub generation: Option<i64>,
    /// `spec.selector.matchLabels`: the workload's pods.
    pub selector: BTreeMap<String, String>,
    pub status: RolloutStatus,
}

/// Where a workload's rollout stands, as its controller reports it, in one shape for
/// every kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutStatus {
    /// The generation the controller has seen (Argo Rollouts writes it as a string).
    pub observed_generation: Option<i64>,
    /// Pods wanted: `spec.replicas` (1 when unset); a DaemonSet's desired number
    /// scheduled.
    pub desired: i64,
    /// Pods of any revision (`status.replicas`).
    pub total: i64,
    /// Pods of the current template.
    pub updated: i64,
    pub ready: i64,
    /// A DaemonSet's available pods.
    pub available: i64,
    /// A StatefulSet's update revision is its current revision.
    pub revisions_current: bool,
    /// An Argo Rollout's phase and message.
    pub phase: Option<String>,
    pub message: Option<String>,
    /// The message of a Deployment's `Progressing=False, ProgressDeadlineExceeded`.
    pub deadline_exceeded: Option<String>,
}

/// The parts of a workload object read, for every kind at once.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Body {
    spec: Spec,
    status: Status,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    replicas: Option<i64>,
    selector: Option<Selector>,
    template: Option<Template>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Template {
    metadata: TemplateMetadata,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TemplateMetadata {
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    observed_generation: Option<Count>,
    replicas: Option<i64>,
    updated_replicas: Option<i64>,
    ready_replicas: Option<i64>,
    desired_number_scheduled: Option<i64>,
    updated_number_scheduled: Option<i64>,
    number_available: Option<i64>,
    update_revision: Option<String>,
    current_revision: Option<String>,
    phase: Option<String>,
    message: Option<String>,
    conditions: Vec<Condition>,
}

/// A count the API writes as a number (or, Argo Rollouts' `observedGeneration`, a string).
#[derive(Deserialize)]
#[serde(untagged)]
enum Count {
    Number(i64),
    Text(String),
}

impl Count {
    fn value(&self) -> Option<i64> {
        match self {
            Self::Number(n) => Some(*n),
            Self::Text(text) => text.parse().ok(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    reason: String,
    message: String,
}

impl WorkloadState {
    /// From a workload object of `kind`: its metadata, and the rest of it (`spec`,
    /// `status`) read into their typed parts. A field the API leaves out reads as unset.
    pub fn from_object(
        kind: WorkloadKind,
        metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        rest: &Value,
    ) -> Result<Self, serde_json::Error> {
        let body = Body::deserialize(rest)?;
        let status = body.status;
        let deadline_exceeded = status
            .conditions
            .iter()
            .find(|c| {
                c.kind == "Progressing"
                    && c.status == "False"
                    && c.reason == "ProgressDeadlineExceeded"
            })
            .map(|c| c.message.clone());
        let desired = match kind {
            WorkloadKind::DaemonSet => status.desired_number_scheduled.unwrap_or(0),
            _ => body.spec.replicas.unwrap_or(1),
        };
        let updated = match kind {
            WorkloadKind::DaemonSet => status.updated_number_scheduled,
            _ => status.updated_replicas,
        };
        Ok(Self {
            metadata_annotations: metadata.annotations.clone().unwrap_or_default(),
            template_annotations: body
                .spec
                .template
                .map(|t| t.metadata.annotations)
                .unwrap_or_default(),
            generation: metadata.generation,
            selector: body
                .spec
                .selector
                .map(|s| s.match_labels)
                .unwrap_or_default(),
            status: RolloutStatus {
                observed_generation: status.observed_generation.as_ref().and_then(Count::value),
                desired,
                total: status.replicas.unwrap_or(0),
                updated: updated.unwrap_or(0),
                ready: status.ready_replicas.unwrap_or(0),
                available: status.number_available.unwrap_or(0),
                revisions_current: status.update_revision == status.current_revision,
                phase: status.phase,
                message: status.message,
                deadline_exceeded,
            },
        })
    }

    /// From a whole object's JSON, as tests write them.
    #[cfg(test)]
    pub fn from_json(kind: WorkloadKind, object: &Value) -> Self {
        let metadata = serde_json::from_value(object["metadata"].clone()).unwrap_or_default();
        Self::from_object(kind, &metadata, object).unwrap_or_default()
    }

    /// The desired pods as a replica count (at least 1).
    pub fn desired_replicas(&self) -> u32 {
        u32::try_from(self.status.desired.max(1)).unwrap_or(u32::MAX)
    }

    fn template_record(&self, key: &str) -> DigestRecord {
        self.template_annotations
            .get(key)
            .map(|v| DigestRecord::parse(v))
            .unwrap_or_default()
    }

    pub fn restarted_for(&self) -> DigestRecord {
        self.template_record(contract::ANNOTATION_RESTARTED_FOR)
    }

    pub fn rolled_from(&self) -> DigestRecord {
        self.template_record(contract::ANNOTATION_ROLLED_FROM)
    }

    pub fn quarantined(&self) -> DigestRecord {
        self.metadata_annotations
            .get(contract::ANNOTATION_QUARANTINED)
            .map(|v| DigestRecord::parse(v))
            .unwrap_or_default()
    }

    pub fn pending(&self) -> PendingRecord {
        self.metadata_annotations
            .get(contract::ANNOTATION_PENDING)
            .map(|v| PendingRecord::parse(v))
            .unwrap_or_default()
    }

    pub fn paused(&self) -> bool {
        self.metadata_annotations
            .get(contract::ANNOTATION_PAUSED)
            .is_some_and(|v| v.trim() == "true")
    }

    pub fn last_restart(&self) -> Option<Timestamp> {
        self.template_annotations
            .get(contract::ANNOTATION_RESTARTED_AT)
            .and_then(|t| t.parse().ok())
    }

    pub fn rollout(&self) -> Option<RolloutRecord> {
        self.metadata_annotations
            .get(contract::ANNOTATION_ROLLOUT)
            .and_then(|v| RolloutRecord::parse(v))
    }

    /// The rollout record when the template still carries what that rollout rolled to;
    /// `None` when there is none, or when the template moved away from it.
    pub fn rollout_in_template(&self) -> Option<RolloutRecord> {
        let record = self.rollout()?;
        let template = self.restarted_for();
        let carried = record
            .rolled_to
            .iter()
            .all(|(container, digest)| template.get(container) == Some(digest));
        carried.then_some(record)
    }

    /// The quarantine with `digests` added.
    pub fn quarantined_with(&self, digests: &DigestRecord) -> DigestRecord {
        let mut quarantined = self.quarantined();
        for (container, digest) in digests.iter() {
            quarantined.insert(container, digest);
        }
        quarantined
    }
}

/// Where an annotation pod-reloaded writes on a workload lives. The template's change a
/// rollout (and reach the pods); the metadata's are records the pods never see.
fn on_template(annotation: &str) -> bool {
    matches!(
        annotation,
        contract::ANNOTATION_RESTARTED_AT
            | contract::ANNOTATION_RESTARTED_FOR
            | contract::ANNOTATION_ROLLED_FROM
    )
}

/// A merge patch of pod-reloaded's annotations on a workload, with the `resourceVersion`
/// it was decided on (so of replicas deciding the same thing, exactly one patch wins).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadPatch {
    resource_version: String,
    metadata: Map<String, Value>,
    template: Map<String, Value>,
}

impl WorkloadPatch {
    pub fn new(resource_version: &str) -> Self {
        Self {
            resource_version: resource_version.to_string(),
            metadata: Map::new(),
            template: Map::new(),
        }
    }

    fn place(&mut self, annotation: &'static str, value: Value) {
        let annotations = if on_template(annotation) {
            &mut self.template
        } else {
            &mut self.metadata
        };
        annotations.insert(annotation.to_string(), value);
    }

    /// Sets `annotation`, where it lives.
    pub fn set(mut self, annotation: &'static str, value: impl ToString) -> Self {
        self.place(annotation, Value::String(value.to_string()));
        self
    }

    /// Removes `annotation`, where it lives.
    pub fn remove(mut self, annotation: &'static str) -> Self {
        self.place(annotation, Value::Null);
        self
    }

    /// Sets `annotation` to `value`, or removes it when `value` is empty.
    pub fn set_or_remove(self, annotation: &'static str, value: impl ToString) -> Self {
        let value = value.to_string();
        if value.is_empty() {
            self.remove(annotation)
        } else {
            self.set(annotation, value)
        }
    }

    /// Quarantines `digests` (added to what `workload` quarantines already) and records
    /// the rollout's state: metadata only.
    pub fn quarantine(
        self,
        workload: &WorkloadState,
        digests: &DigestRecord,
        record: &RolloutRecord,
    ) -> Self {
        self.set(
            contract::ANNOTATION_QUARANTINED,
            workload.quarantined_with(digests),
        )
        .set(contract::ANNOTATION_ROLLOUT, record)
    }

    /// The JSON merge patch.
    pub fn into_json(self) -> Value {
        let mut patch = json!({"metadata": {"resourceVersion": self.resource_version}});
        if !self.metadata.is_empty() {
            patch["metadata"]["annotations"] = Value::Object(self.metadata);
        }
        if !self.template.is_empty() {
            patch["spec"] = json!({"template": {"metadata": {"annotations": self.template}}});
        }
        patch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_annotation_goes_where_it_lives() {
        let patch = WorkloadPatch::new("7")
            .set(contract::ANNOTATION_RESTARTED_FOR, "web=sha256:b")
            .set(contract::ANNOTATION_ROLLOUT, "record")
            .remove(contract::ANNOTATION_ROLLED_FROM)
            .set_or_remove(contract::ANNOTATION_PENDING, "")
            .into_json();
        assert_eq!(
            patch,
            json!({
                "metadata": {"resourceVersion": "7", "annotations": {
                    contract::ANNOTATION_ROLLOUT: "record",
                    contract::ANNOTATION_PENDING: null,
                }},
                "spec": {"template": {"metadata": {"annotations": {
                    contract::ANNOTATION_RESTARTED_FOR: "web=sha256:b",
                    contract::ANNOTATION_ROLLED_FROM: null,
                }}}}
            })
        );
        assert_eq!(
            WorkloadPatch::new("8")
                .set(contract::ANNOTATION_QUARANTINED, "q")
                .into_json(),
            json!({"metadata": {"resourceVersion": "8", "annotations": {contract::ANNOTATION_QUARANTINED: "q"}}}),
            "metadata only: the template, and so the pods, are left alone"
        );
    }

    #[test]
    fn the_rollout_status_is_read_once_per_kind() {
        let object = json!({
            "metadata": {"generation": 4, "annotations": {"a": "b"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"annotations": {"t": "u"}}}},
            "status": {"observedGeneration": "4", "replicas": 4, "updatedReplicas": 2,
                "readyReplicas": 1, "phase": "Progressing",
                "conditions": [{"type": "Progressing", "status": "False",
                    "reason": "ProgressDeadlineExceeded", "message": "too slow"}]}
        });
        let state = WorkloadState::from_json(WorkloadKind::Rollout, &object);
        assert_eq!(state.generation, Some(4));
        assert_eq!(state.selector["app"], "web");
        assert_eq!(state.template_annotations["t"], "u");
        assert_eq!(state.metadata_annotations["a"], "b");
        let status = &state.status;
        assert_eq!(status.observed_generation, Some(4), "a string count");
        assert_eq!(
            (status.desired, status.total, status.updated, status.ready),
            (3, 4, 2, 1)
        );
        assert_eq!(status.phase.as_deref(), Some("Progressing"));
        assert_eq!(status.deadline_exceeded.as_deref(), Some("too slow"));

        let daemon_set = json!({"status": {"desiredNumberScheduled": 5,
            "updatedNumberScheduled": 4, "numberAvailable": 3}});
        let status = WorkloadState::from_json(WorkloadKind::DaemonSet, &daemon_set).status;
        assert_eq!(
            (status.desired, status.updated, status.available),
            (5, 4, 3)
        );
        // Unset: one desired pod, nothing else.
        let empty = WorkloadState::from_json(WorkloadKind::Deployment, &json!({}));
        assert_eq!(empty.status.desired, 1);
        assert!(empty.selector.is_empty());
    }
}
