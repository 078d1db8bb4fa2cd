//! Act: the Kubernetes API edge of the sidecar. Read our pod, find the workload that
//! owns it, patch its template with a `resourceVersion` precondition, and record Events.
//! The only place the sidecar writes to the API.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pod_reloaded_contract as contract;
use pod_reloaded_contract::owner::{self, NotRestartable, PodOwner, WorkloadKind, WorkloadRef};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::workload::WorkloadState;

/// Re-reads after a 409 before giving up for this round.
const MAX_CONFLICT_RETRIES: usize = 5;

fn api_resource(kind: WorkloadKind) -> ApiResource {
    let (group, version) = kind.api_version().split_once('/').unwrap_or(("", "v1"));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind.name()))
}

/// Set by the Deployment controller on a ReplicaSet it reuses for a template it had
/// before (`kubectl rollout undo`): the revisions the ReplicaSet had.
const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";

fn is_forbidden(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(response) if response.code == 403)
}

/// The name of this pod, found by its `hostname` (when `POD_NAME` is not set): the pod of
/// that name, or else the one pod whose `spec.hostname` is it (or whose name the runtime
/// cut to 63 characters). None or several: an error saying to set `POD_NAME`.
pub async fn pod_named_by_hostname(
    client: &Client,
    namespace: &str,
    hostname: &str,
) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let set_pod_name = "set POD_NAME (env valueFrom fieldRef metadata.name)";
    if pods
        .get_opt(hostname)
        .await
        .with_context(|| format!("reading pod {namespace}/{hostname}"))?
        .is_some()
    {
        return Ok(hostname.to_string());
    }
    let listed = pods
        .list(&kube::api::ListParams::default())
        .await
        .with_context(|| format!("no pod {namespace}/{hostname}, and its pods cannot be listed to find one with that hostname: {set_pod_name}"))?;
    let matching: Vec<String> = listed
        .items
        .iter()
        .filter(|pod| {
            let name = pod.metadata.name.as_deref().unwrap_or("");
            match pod.spec.as_ref().and_then(|s| s.hostname.as_deref()) {
                Some(set) => set == hostname,
                None => hostname.len() == 63 && name.starts_with(hostname),
            }
        })
        .filter_map(|pod| pod.metadata.name.clone())
        .collect();
    match matching.as_slice() {
        [name] => Ok(name.clone()),
        [] => anyhow::bail!(
            "no pod in {namespace} has the name or hostname {hostname:?}: {set_pod_name}"
        ),
        several => anyhow::bail!(
            "{} pods in {namespace} have the hostname {hostname:?} ({}): {set_pod_name}",
            several.len(),
            several.join(", ")
        ),
    }
}

/// Where the owner chain ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Owner {
    Restartable {
        workload: WorkloadRef,
        /// The pod's ReplicaSet was made for an earlier revision and reused: its template
        /// went back to one it had before (see `decide::ThisPod`).
        from_earlier_revision: bool,
    },
    /// Bare pod, Job, a ReplicaSet without a Deployment, ...: said once, then left alone.
    NotRestartable(NotRestartable),
}

pub use crate::effects::{Update, Updated};

pub struct Cluster {
    client: Client,
    namespace: String,
    /// Our pod's name, the Events' reporting instance.
    pod_name: String,
    metrics: Option<Arc<Metrics>>,
    /// Requests RBAC refused once already (said once, then only counted): a sidecar
    /// deployed by hand with the old image-checker's Role lacks what some features need.
    forbidden: Mutex<BTreeSet<&'static str>>,
}

impl Cluster {
    pub fn new(client: Client, namespace: String, pod_name: String) -> Self {
        Self {
            client,
            namespace,
            pod_name,
            metrics: None,
            forbidden: Mutex::new(BTreeSet::new()),
        }
    }

    /// Counts refused requests in `pod_reloaded_api_forbidden_total`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A request RBAC refused, for a feature that goes on without it: one Warning line
    /// the first time, a metric every time.
    fn degraded(&self, request: &'static str, feature: &str, error: &kube::Error) {
        if let Some(metrics) = &self.metrics {
            metrics.forbidden(request);
        }
        let first = self
            .forbidden
            .lock()
            .map(|mut seen| seen.insert(request))
            .unwrap_or(false);
        if first {
            warn!(request, %error, "forbidden by RBAC: {feature} is skipped from now on; grant {request} (README: Coming from image-checker)");
        } else {
            debug!(request, "forbidden by RBAC again");
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
            Ok(PodOwner::Workload(workload)) => {
                return Ok(Owner::Restartable {
                    workload,
                    from_earlier_revision: false,
                })
            }
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
        // The Deployment controller records the revisions a reused ReplicaSet had before.
        let from_earlier_revision = object
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(REVISION_HISTORY_ANNOTATION));
        Ok(match owner::replica_set_owner(&replica_set, parents) {
            Ok(workload) => Owner::Restartable {
                workload,
                from_earlier_revision,
            },
            Err(why) => Owner::NotRestartable(why),
        })
    }

    fn workload_api(&self, workload: &WorkloadRef) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &api_resource(workload.kind),
        )
    }

    /// Reads the workload, lets `decide` say what to patch, and patches with the read
    /// `resourceVersion` as precondition; on a 409 reads and decides again, so of N
    /// replicas deciding the same thing exactly one patch wins. Returns what `decide`
    /// said, applied or left as it was.
    pub async fn update_workload<T>(
        &self,
        workload: &WorkloadRef,
        mut decide: impl FnMut(&WorkloadState, &str) -> Update<T>,
    ) -> anyhow::Result<Updated<T>> {
        let api = self.workload_api(workload);
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
            let state = workload_state(workload, &object)?;
            let (patch, outcome) = match decide(&state, &version) {
                Update::Leave(outcome) => return Ok(Updated::LeftAsItWas(outcome)),
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
                Ok(_) => return Ok(Updated::Applied(outcome)),
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

    /// How many pods `workload` wants (a DaemonSet: how many it schedules); `None` when
    /// this account may not read it (said once).
    pub async fn desired_replicas(&self, workload: &WorkloadRef) -> anyhow::Result<Option<u32>> {
        match self.workload_api(workload).get(&workload.name).await {
            Ok(object) => Ok(Some(workload_state(workload, &object)?.desired_replicas())),
            Err(error) if is_forbidden(&error) => {
                self.degraded(
                    "get workload",
                    "sharing the checks among the workload's replicas",
                    &error,
                );
                Ok(None)
            }
            Err(error) => Err(error).with_context(|| format!("reading {workload}")),
        }
    }

    /// The pods matching `selector` in our namespace.
    pub async fn pods(
        &self,
        selector: &std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Vec<Pod>> {
        let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let params = kube::api::ListParams::default().labels(&labels.join(","));
        match Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .list(&params)
            .await
        {
            Ok(list) => Ok(list.items),
            Err(error) if is_forbidden(&error) => {
                self.degraded(
                    "list pods",
                    "saying what a failed rollout's pods do",
                    &error,
                );
                Ok(Vec::new())
            }
            Err(error) => Err(error).context("listing the workload's pods"),
        }
    }

    /// Records an Event on the workload; failures are logged, never fatal.
    /// Records `event` on `workload`; `images` (`<container>=<image>[,...]`) names the
    /// watched images it is about.
    pub async fn event(&self, workload: &WorkloadRef, event: &crate::effects::Event, images: &str) {
        let now = jiff::Timestamp::now();
        let (warning, reason, message) = (event.warning, event.reason, event.message.clone());
        let mut annotations = std::collections::BTreeMap::new();
        for (key, value) in [
            (contract::ANNOTATION_EVENT_TO, event.to.as_deref()),
            (contract::ANNOTATION_EVENT_FROM, event.from.as_deref()),
            (
                contract::ANNOTATION_EVENT_IMAGES,
                Some(images).filter(|i| !i.is_empty()),
            ),
        ] {
            if let Some(value) = value {
                annotations.insert(key.to_string(), value.to_string());
            }
        }
        let event = Event {
            metadata: kube::api::ObjectMeta {
                name: Some(match &event.name {
                    Some(name) => format!("{}.{name}", workload.name),
                    None => format!("{}.{:x}", workload.name, now.as_nanosecond()),
                }),
                namespace: Some(self.namespace.clone()),
                annotations: Some(annotations).filter(|a| !a.is_empty()),
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
            reporting_component: Some(contract::EVENT_REPORTING_COMPONENT.to_string()),
            reporting_instance: Some(self.pod_name.clone()),
            action: Some(reason.to_string()),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {}
            // Another replica recorded this named Event first.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) if is_forbidden(&error) => {
                self.degraded("create events", "recording Events", &error)
            }
            Err(error) => warn!(%workload, %reason, %error, "could not record an Event"),
        }
    }
}

/// The workload as the decisions read it, from the object the API server returned.
fn workload_state(workload: &WorkloadRef, object: &DynamicObject) -> anyhow::Result<WorkloadState> {
    WorkloadState::from_object(workload.kind, &object.metadata, &object.data)
        .with_context(|| format!("reading {workload}"))
}

#[cfg(test)]
mod tests {
    //! Each API call the edge makes, asserted in order over a mocked `kube::Client` (the
    //! way kube-rs/controller-rs tests its controller): method, path, body, precondition.

    use super::*;
    use pod_reloaded_test_support::api_mock::{self, expect};
    use serde_json::{json, Value};

    fn cluster() -> (Cluster, api_mock::ApiHandle) {
        let (client, handle) = api_mock::client("shop");
        (Cluster::new(client, "shop".into(), "web-1".into()), handle)
    }

    fn pod(owner_kind: &str, owner_name: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": owner_kind, "name": owner_name, "uid": "rs-uid", "controller": true}
            ]}
        }))
        .unwrap()
    }

    fn deployment(version: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "web-uid", "resourceVersion": version},
            "spec": {"template": {"metadata": {"annotations": {}}}}
        })
    }

    fn conflict() -> Value {
        api_mock::status(409, "Conflict")
    }

    #[tokio::test]
    async fn the_owner_chain_goes_through_the_replica_set() {
        let (cluster, mut api) = cluster();
        let server = tokio::spawn(async move {
            expect(
                &mut api,
                "GET",
                "/apis/apps/v1/namespaces/shop/replicasets/web-5d9",
                200,
                json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                       "metadata": {"name": "web-5d9", "namespace": "shop", "ownerReferences": [
                           {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "web-uid", "controller": true}]}}),
            )
            .await;
        });
        let owner = cluster.owner(&pod("ReplicaSet", "web-5d9")).await.unwrap();
        server.await.unwrap();
        assert_eq!(
            owner,
            Owner::Restartable {
                workload: WorkloadRef {
                    kind: WorkloadKind::Deployment,
                    name: "web".into(),
                    uid: "web-uid".into()
                },
                from_earlier_revision: false
            }
        );
        // A StatefulSet owner needs no request at all.
        let (cluster, _api) = self::cluster();
        assert!(matches!(
            cluster.owner(&pod("StatefulSet", "db")).await.unwrap(),
            Owner::Restartable {
                workload: WorkloadRef {
                    kind: WorkloadKind::StatefulSet,
                    ..
                },
                from_earlier_revision: false
            }
        ));
    }

    #[tokio::test]
    async fn an_update_carries_the_read_version_and_reads_again_after_a_conflict() {
        let (cluster, mut api) = cluster();
        let path = "/apis/apps/v1/namespaces/shop/deployments/web";
        let server = tokio::spawn(async move {
            expect(&mut api, "GET", path, 200, deployment("5")).await;
            let first = expect(&mut api, "PATCH", path, 409, conflict()).await;
            expect(&mut api, "GET", path, 200, deployment("6")).await;
            let second = expect(&mut api, "PATCH", path, 200, deployment("7")).await;
            (first, second)
        });
        let workload = WorkloadRef {
            kind: WorkloadKind::Deployment,
            name: "web".into(),
            uid: "web-uid".into(),
        };
        let updated = cluster
            .update_workload(&workload, |_, version| {
                Update::Patch(
                    json!({"metadata": {"resourceVersion": version, "annotations": {"a": "b"}}}),
                    version.to_string(),
                )
            })
            .await
            .unwrap();
        let (first, second) = server.await.unwrap();
        assert_eq!(first["metadata"]["resourceVersion"], "5");
        assert_eq!(second["metadata"]["resourceVersion"], "6");
        assert_eq!(updated, Updated::Applied("6".to_string()));
    }

    #[tokio::test]
    async fn leaving_a_workload_alone_sends_no_patch() {
        let (cluster, mut api) = cluster();
        let path = "/apis/apps/v1/namespaces/shop/deployments/web";
        let server = tokio::spawn(async move {
            expect(&mut api, "GET", path, 200, deployment("5")).await;
            // Nothing else: a PATCH would find no answer and fail the test.
            api
        });
        let workload = WorkloadRef {
            kind: WorkloadKind::Deployment,
            name: "web".into(),
            uid: "web-uid".into(),
        };
        let left = cluster
            .update_workload(&workload, |_, _| Update::Leave(()))
            .await
            .unwrap();
        let _api = server.await.unwrap();
        assert_eq!(left, Updated::LeftAsItWas(()));
    }

    #[tokio::test]
    async fn events_name_the_workload_by_uid() {
        let (cluster, mut api) = cluster();
        let server = tokio::spawn(async move {
            expect(
                &mut api,
                "POST",
                "/api/v1/namespaces/shop/events",
                201,
                json!({}),
            )
            .await
        });
        let workload = WorkloadRef {
            kind: WorkloadKind::DaemonSet,
            name: "agent".into(),
            uid: "agent-uid".into(),
        };
        cluster
            .event(
                &workload,
                &crate::effects::Event::warning("RolloutFailed", "it failed".into()),
                "",
            )
            .await;
        let event = server.await.unwrap();
        assert_eq!(event["involvedObject"]["kind"], "DaemonSet");
        assert_eq!(event["involvedObject"]["uid"], "agent-uid");
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "RolloutFailed");
        assert_eq!(event["reportingInstance"], "web-1");
    }
}
