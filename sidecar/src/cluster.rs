//! Act: the Kubernetes API edge of the sidecar. Read our pod, find the workload that
//! owns it, patch its template with a `resourceVersion` precondition, and record Events.
//! The only place the sidecar writes to the API.

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pod_reloaded_contract::owner::{self, NotRestartable, PodOwner, WorkloadKind, WorkloadRef};
use tracing::{info, warn};

use crate::decide::WorkloadState;

/// Re-reads after a 409 before giving up for this round.
const MAX_CONFLICT_RETRIES: usize = 5;

fn api_resource(kind: WorkloadKind) -> ApiResource {
    let (group, version) = kind.api_version().split_once('/').unwrap_or(("", "v1"));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind.name()))
}

/// Where the owner chain ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Owner {
    Restartable(WorkloadRef),
    /// Bare pod, Job, a ReplicaSet without a Deployment, ...: said once, then left alone.
    NotRestartable(NotRestartable),
}

/// What to do with a workload as read: patch it (the patch carries the read
/// `resourceVersion`), or leave it.
pub enum Update<T> {
    Patch(serde_json::Value, T),
    Leave(T),
}

pub struct Cluster {
    client: Client,
    namespace: String,
    /// Our pod's name, the Events' reporting instance.
    pod_name: String,
}

impl Cluster {
    pub fn new(client: Client, namespace: String, pod_name: String) -> Self {
        Self {
            client,
            namespace,
            pod_name,
        }
    }

    pub async fn read_pod(&self) -> anyhow::Result<Pod> {
        Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .get(&self.pod_name)
            .await
            .with_context(|| format!("reading pod {}/{}", self.namespace, self.pod_name))
    }

    /// Walks Pod -> ReplicaSet -> Deployment, or Pod -> StatefulSet / DaemonSet.
    pub async fn owner(&self, pod: &Pod) -> anyhow::Result<Owner> {
        let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
        let replica_set = match owner::pod_owner(owners) {
            Err(why) => return Ok(Owner::NotRestartable(why)),
            Ok(PodOwner::Workload(workload)) => return Ok(Owner::Restartable(workload)),
            Ok(PodOwner::ReplicaSet { name }) => name,
        };
        let object = Api::<k8s_openapi::api::apps::v1::ReplicaSet>::namespaced(
            self.client.clone(),
            &self.namespace,
        )
        .get(&replica_set)
        .await
        .with_context(|| format!("reading ReplicaSet {}/{replica_set}", self.namespace))?;
        let parents = object
            .metadata
            .owner_references
            .as_deref()
            .unwrap_or_default();
        Ok(match owner::replica_set_owner(&replica_set, parents) {
            Ok(workload) => Owner::Restartable(workload),
            Err(why) => Owner::NotRestartable(why),
        })
    }

    /// Reads the workload, lets `decide` say what to patch, and patches with the read
    /// `resourceVersion` as precondition; on a 409 reads and decides again, so of N
    /// replicas deciding the same thing exactly one patch wins. Returns what `decide`
    /// said and whether its patch was applied.
    pub async fn update_workload<T>(
        &self,
        workload: &WorkloadRef,
        mut decide: impl FnMut(&WorkloadState, &str) -> Update<T>,
    ) -> anyhow::Result<(T, bool)> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &api_resource(workload.kind),
        );
        for _ in 0..MAX_CONFLICT_RETRIES {
            let object = api
                .get(&workload.name)
                .await
                .with_context(|| format!("reading {workload}"))?;
            let version = object
                .metadata
                .resource_version
                .clone()
                .with_context(|| format!("{workload} has no resourceVersion"))?;
            let json =
                serde_json::to_value(&object).with_context(|| format!("reading {workload}"))?;
            let (patch, outcome) = match decide(&WorkloadState::from_json(&json), &version) {
                Update::Leave(outcome) => return Ok((outcome, false)),
                Update::Patch(patch, outcome) => (patch, outcome),
            };
            match api
                .patch(
                    &workload.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => return Ok((outcome, true)),
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    info!(%workload, "conflict: another writer changed the workload; reading it again");
                }
                Err(error) => return Err(error).with_context(|| format!("patching {workload}")),
            }
        }
        anyhow::bail!(
            "{workload} kept changing under us ({MAX_CONFLICT_RETRIES} conflicts in a row)"
        )
    }

    /// Records an Event on the workload; failures are logged, never fatal.
    pub async fn event(
        &self,
        workload: &WorkloadRef,
        warning: bool,
        reason: &str,
        message: String,
    ) {
        let now = jiff::Timestamp::now();
        let event = Event {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{}.{:x}", workload.name, now.as_nanosecond())),
                namespace: Some(self.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(workload.kind.api_version().to_string()),
                kind: Some(workload.kind.name().to_string()),
                name: Some(workload.name.clone()),
                namespace: Some(self.namespace.clone()),
                uid: Some(workload.uid.clone()).filter(|uid| !uid.is_empty()),
                ..Default::default()
            },
            reason: Some(reason.to_string()),
            message: Some(message),
            type_: Some(if warning { "Warning" } else { "Normal" }.to_string()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource {
                component: Some("pod-reloaded".to_string()),
                host: None,
            }),
            reporting_component: Some("pod-reloaded.io/sidecar".to_string()),
            reporting_instance: Some(self.pod_name.clone()),
            action: Some(reason.to_string()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        if let Err(error) = api.create(&PostParams::default(), &event).await {
            warn!(%workload, %reason, %error, "could not record an Event");
        }
    }
}
