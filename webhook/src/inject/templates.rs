//! What is injected: the checker container, its API token volume, env vars, resources.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use pod_reloaded_contract as contract;

use super::pod_view::PodSpecView;
use super::rules::InjectionSettings;

const API_ACCESS_VOLUME_PREFIX: &str = "kube-api-access-";
pub(super) const OWN_API_ACCESS_VOLUME: &str = "pod-reloaded-api-access";
const SERVICE_ACCOUNT_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
pub(super) const REGISTRY_CA_VOLUME: &str = "pod-reloaded-registry-ca";
/// Name of the sidecar's metrics port (a PodMonitor selects it).
pub const METRICS_PORT_NAME: &str = "reloaded-metric";
pub(super) const PULL_SECRET_VOLUME_PREFIX: &str = "pod-reloaded-pull-secret-";
/// UID/GID of the distroless `nonroot` user the sidecar image runs as.
const SIDECAR_USER: i64 = 65532;

/// The mount that gives the sidecar its API token: the pod's own `kube-api-access-*`
/// volume when the ServiceAccount admission plugin added one, else a projected volume of
/// our own (the pod may have `automountServiceAccountToken: false`).
pub(super) fn api_access_mount(spec: &PodSpecView, new_volumes: &mut Vec<Volume>) -> VolumeMount {
    let existing = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name.starts_with(API_ACCESS_VOLUME_PREFIX) && v.projected.is_some())
        .map(|v| v.name.clone());
    let name = existing.unwrap_or_else(|| {
        new_volumes.push(own_api_access_volume());
        OWN_API_ACCESS_VOLUME.to_string()
    });
    VolumeMount {
        name,
        mount_path: SERVICE_ACCOUNT_MOUNT_PATH.to_string(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn own_api_access_volume() -> Volume {
    use k8s_openapi::api::core::v1::{
        ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath,
    };
    Volume {
        name: OWN_API_ACCESS_VOLUME.to_string(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".to_string(),
                        expiration_seconds: Some(3607),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".to_string(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".to_string(),
                            path: "ca.crt".to_string(),
                            mode: None,
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".to_string(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "metadata.namespace".to_string(),
                                api_version: Some("v1".to_string()),
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
            default_mode: Some(0o444),
        }),
        ..Default::default()
    }
}

pub(super) fn sidecar_container(
    settings: &InjectionSettings,
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: contract::SIDECAR_CONTAINER_NAME.to_string(),
        image: Some(settings.sidecar_image.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        ports: settings.metrics_port.map(|port| {
            vec![ContainerPort {
                name: Some(METRICS_PORT_NAME.to_string()),
                container_port: i32::from(port),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]
        }),
        env: Some(env),
        resources: Some(settings.sidecar_resources.clone()),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_USER),
            run_as_group: Some(SIDECAR_USER),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn env_value(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    }
}

pub(super) fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_string(),
                api_version: Some("v1".to_string()),
            }),
            ..Default::default()
        }),
    }
}

/// Builds sidecar resource requirements from quantity strings.
pub fn resources(
    cpu_request: &str,
    memory_request: &str,
    cpu_limit: &str,
    memory_limit: &str,
) -> ResourceRequirements {
    let pair = |cpu: &str, memory: &str| {
        Some(
            [("cpu", cpu), ("memory", memory)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect(),
        )
    };
    ResourceRequirements {
        requests: pair(cpu_request, memory_request),
        limits: pair(cpu_limit, memory_limit),
        ..Default::default()
    }
}
