//! Which pods can be restarted, and through which workload: the webhook injects only
//! those, the sidecar walks the same chain to patch the workload.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// A workload whose template annotations roll its pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    /// Argo Rollouts' `Rollout`: restarted through the same template annotations, so a
    /// restart is a new revision that goes through its canary steps and analysis.
    Rollout,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::Rollout => "Rollout",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Self::Rollout => "argoproj.io/v1alpha1",
            _ => "apps/v1",
        }
    }
}

/// A workload a restart patches, as an owner reference names it (the uid lets Events
/// show up in `kubectl describe`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind.name(), self.name)
    }
}

/// The first step of a pod's owner chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodOwner {
    /// Owned directly by a restartable workload.
    Workload(WorkloadRef),
    /// Owned by a ReplicaSet, which must in turn be owned by a Deployment or a Rollout.
    ReplicaSet { name: String },
}

/// Why a pod cannot be restarted by patching a workload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotRestartable {
    #[error("the pod has no owner (bare pod)")]
    NoOwner,
    #[error("the pod is owned by a {0}, which cannot be rolling-restarted")]
    Kind(String),
    #[error("ReplicaSet {replica_set} is owned by a {kind}, not a Deployment or an Argo Rollout")]
    ReplicaSetOwnedBy { replica_set: String, kind: String },
    #[error("ReplicaSet {0} has no Deployment")]
    ReplicaSetWithoutDeployment(String),
}

/// The controlling owner (or, failing that, the first one), as the garbage collector and
/// `kubectl` pick it.
pub fn controller_of(owners: &[OwnerReference]) -> Option<&OwnerReference> {
    owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
}

fn is_apps(owner: &OwnerReference) -> bool {
    owner.api_version.starts_with("apps/")
}

/// The pod's restartable owner, from its `ownerReferences`.
pub fn pod_owner(owners: &[OwnerReference]) -> Result<PodOwner, NotRestartable> {
    let owner = controller_of(owners).ok_or(NotRestartable::NoOwner)?;
    let workload = |kind| {
        Ok(PodOwner::Workload(WorkloadRef {
            kind,
            name: owner.name.clone(),
            uid: owner.uid.clone(),
        }))
    };
    match (is_apps(owner), owner.kind.as_str()) {
        (true, "StatefulSet") => workload(WorkloadKind::StatefulSet),
        (true, "DaemonSet") => workload(WorkloadKind::DaemonSet),
        (true, "ReplicaSet") => Ok(PodOwner::ReplicaSet {
            name: owner.name.clone(),
        }),
        (_, kind) => Err(NotRestartable::Kind(kind.to_string())),
    }
}

/// The Deployment that owns ReplicaSet `replica_set`, from the ReplicaSet's owners.
pub fn replica_set_owner(
    replica_set: &str,
    owners: &[OwnerReference],
) -> Result<WorkloadRef, NotRestartable> {
    match controller_of(owners) {
        Some(parent) if is_apps(parent) && parent.kind == "Deployment" => Ok(WorkloadRef {
            kind: WorkloadKind::Deployment,
            name: parent.name.clone(),
            uid: parent.uid.clone(),
        }),
        Some(parent)
            if parent.api_version.starts_with("argoproj.io/") && parent.kind == "Rollout" =>
        {
            Ok(WorkloadRef {
                kind: WorkloadKind::Rollout,
                name: parent.name.clone(),
                uid: parent.uid.clone(),
            })
        }
        Some(parent) => Err(NotRestartable::ReplicaSetOwnedBy {
            replica_set: replica_set.to_string(),
            kind: parent.kind.clone(),
        }),
        None => Err(NotRestartable::ReplicaSetWithoutDeployment(
            replica_set.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(
        api_version: &str,
        kind: &str,
        name: &str,
        controller: Option<bool>,
    ) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            controller,
            block_owner_deletion: None,
        }
    }

    #[test]
    fn pods_of_apps_controllers_are_restartable() {
        assert_eq!(
            pod_owner(&[owner("apps/v1", "ReplicaSet", "web-1", Some(true))]),
            Ok(PodOwner::ReplicaSet {
                name: "web-1".into()
            })
        );
        assert_eq!(
            pod_owner(&[owner("apps/v1", "StatefulSet", "db", Some(true))]),
            Ok(PodOwner::Workload(WorkloadRef {
                kind: WorkloadKind::StatefulSet,
                name: "db".into(),
                uid: "uid-db".into()
            }))
        );
        assert_eq!(
            pod_owner(&[owner("apps/v1", "DaemonSet", "agent", None)]),
            Ok(PodOwner::Workload(WorkloadRef {
                kind: WorkloadKind::DaemonSet,
                name: "agent".into(),
                uid: "uid-agent".into()
            }))
        );
    }

    #[test]
    fn the_controller_wins_over_other_owners() {
        let owners = [
            owner("v1", "ConfigMap", "cm", None),
            owner("apps/v1", "StatefulSet", "db", Some(true)),
        ];
        assert!(matches!(pod_owner(&owners), Ok(PodOwner::Workload(_))));
    }

    #[test]
    fn other_owners_are_not_restartable() {
        assert_eq!(pod_owner(&[]), Err(NotRestartable::NoOwner));
        assert_eq!(
            pod_owner(&[owner("batch/v1", "Job", "j", Some(true))]),
            Err(NotRestartable::Kind("Job".into()))
        );
        assert_eq!(
            pod_owner(&[owner("example.com/v1", "ReplicaSet", "x", Some(true))]),
            Err(NotRestartable::Kind("ReplicaSet".into())),
            "only apps/ ReplicaSets"
        );
    }

    #[test]
    fn replica_sets_lead_to_their_deployment() {
        assert_eq!(
            replica_set_owner(
                "web-1",
                &[owner("apps/v1", "Deployment", "web", Some(true))]
            ),
            Ok(WorkloadRef {
                kind: WorkloadKind::Deployment,
                name: "web".into(),
                uid: "uid-web".into()
            })
        );
        assert_eq!(
            replica_set_owner(
                "web-1",
                &[owner("argoproj.io/v1alpha1", "Rollout", "web", Some(true))]
            ),
            Ok(WorkloadRef {
                kind: WorkloadKind::Rollout,
                name: "web".into(),
                uid: "uid-web".into()
            })
        );
        assert!(matches!(
            replica_set_owner(
                "web-1",
                &[owner("example.com/v1", "Other", "x", Some(true))]
            ),
            Err(NotRestartable::ReplicaSetOwnedBy { .. })
        ));
        assert_eq!(
            replica_set_owner("web-1", &[]),
            Err(NotRestartable::ReplicaSetWithoutDeployment("web-1".into()))
        );
    }
}
