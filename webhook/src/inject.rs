//! The injection rules: given a Pod and the webhook's settings, decide whether to inject
//! the checker sidecar and build the JSON Patch that does it. Pure: no I/O.
//!
//! The patch is a list of operations against the pod as sent (`add` where a field or map
//! is missing, `replace` where it exists); JSON Pointers are escaped by `jsonptr`.

use std::collections::{BTreeMap, BTreeSet};

use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSpec,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use pod_reloaded_contract as contract;
use pod_reloaded_contract::image::ImageReference;
use pod_reloaded_contract::owner::{self, NotRestartable};
use pod_reloaded_contract::settings::{self, RegistryOverride};
use serde::Serialize;

const API_ACCESS_VOLUME_PREFIX: &str = "kube-api-access-";
const OWN_API_ACCESS_VOLUME: &str = "pod-reloaded-api-access";
const SERVICE_ACCOUNT_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const PULL_SECRET_VOLUME_PREFIX: &str = "pod-reloaded-pull-secret-";
/// UID/GID of the distroless `nonroot` user the sidecar image runs as.
const SIDECAR_USER: i64 = 65532;

/// How the sidecar is added to the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// A regular container appended to `spec.containers`.
    Container,
    /// A native sidecar: first `initContainer` with `restartPolicy: Always` (Kubernetes >= 1.29).
    Native,
}

/// Everything the injection rules need from the webhook's configuration.
#[derive(Clone, Debug)]
pub struct InjectionSettings {
    pub sidecar_image: String,
    pub sidecar_resources: ResourceRequirements,
    pub sidecar_mode: SidecarMode,
    pub default_interval: String,
    /// Namespaces never injected, including the webhook's own.
    pub excluded_namespaces: BTreeSet<String>,
    /// Written into the `pod-reloaded.io/injected` annotation.
    pub version: String,
}

/// What the webhook should do with a pod.
#[derive(Debug)]
pub enum Decision {
    Inject(Injection),
    Skip(SkipReason),
}

#[derive(Debug)]
pub struct Injection {
    pub patch: json_patch::Patch,
    /// The account the pod will run as, which must be bound to the checker ClusterRole.
    pub service_account: String,
    /// True when the pod was switched to the checker ServiceAccount, which must exist.
    pub uses_checker_account: bool,
    pub watched_containers: Vec<String>,
    pub warnings: Vec<String>,
}

/// Why a pod is admitted unchanged; the text becomes the admission warning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("pod-reloaded: namespace {0} is excluded from injection")]
    ExcludedNamespace(String),
    #[error("pod-reloaded: pod is labelled {label}={disabled}", label = contract::INJECT_LABEL, disabled = contract::INJECT_DISABLED)]
    OptedOut,
    #[error("pod-reloaded: pod already has the {name} sidecar", name = contract::SIDECAR_CONTAINER_NAME)]
    AlreadyInjected,
    #[error("pod-reloaded: pod has no owner that can be restarted (bare pod); not injected")]
    NoOwner,
    #[error(
        "pod-reloaded: pod is owned by a {0}, which cannot be rolling-restarted; not injected"
    )]
    UnrestartableOwner(String),
    #[error("pod-reloaded: no container runs an image by tag (all are pinned by digest); nothing to watch")]
    NothingToWatch,
    #[error("pod-reloaded: annotation {annotation}: {problem}; not injected")]
    InvalidAnnotation {
        annotation: &'static str,
        problem: String,
    },
}

/// The decision for a pod being created in `namespace`.
pub fn decide(pod: &Pod, namespace: &str, settings: &InjectionSettings) -> Decision {
    match plan(pod, namespace, settings) {
        Ok(plan) => Decision::Inject(build_injection(pod, plan, settings)),
        Err(reason) => Decision::Skip(reason),
    }
}

/// What was read and validated from the pod before any change is made.
struct Plan {
    watched: Vec<String>,
    interval: String,
    registry_url: Option<String>,
    set_pull_policy: bool,
    warnings: Vec<String>,
}

fn plan(pod: &Pod, namespace: &str, settings: &InjectionSettings) -> Result<Plan, SkipReason> {
    if settings.excluded_namespaces.contains(namespace) {
        return Err(SkipReason::ExcludedNamespace(namespace.to_string()));
    }
    let metadata = &pod.metadata;
    let label = metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(contract::INJECT_LABEL));
    if label.map(String::as_str) == Some(contract::INJECT_DISABLED) {
        return Err(SkipReason::OptedOut);
    }
    let spec = pod.spec.as_ref().ok_or(SkipReason::NothingToWatch)?;
    if is_injected(pod, spec) {
        return Err(SkipReason::AlreadyInjected);
    }
    check_owner(pod)?;

    let annotation = |key: &str| {
        metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let mut warnings = Vec::new();
    let watched = watched_containers(
        spec,
        annotation(contract::ANNOTATION_WATCH_CONTAINERS),
        &mut warnings,
    )?;

    let interval = annotation(contract::ANNOTATION_INTERVAL).unwrap_or(&settings.default_interval);
    settings::parse_interval(interval).map_err(|problem| SkipReason::InvalidAnnotation {
        annotation: contract::ANNOTATION_INTERVAL,
        problem,
    })?;

    let registry_url = annotation(contract::ANNOTATION_REGISTRY_URL);
    if let Some(url) = registry_url {
        RegistryOverride::parse(url).map_err(|problem| SkipReason::InvalidAnnotation {
            annotation: contract::ANNOTATION_REGISTRY_URL,
            problem,
        })?;
    }

    let set_pull_policy =
        settings::parse_pull_policy(annotation(contract::ANNOTATION_PULL_POLICY).unwrap_or("set"))
            .map_err(|problem| SkipReason::InvalidAnnotation {
                annotation: contract::ANNOTATION_PULL_POLICY,
                problem,
            })?;

    Ok(Plan {
        watched,
        interval: interval.to_string(),
        registry_url: registry_url.map(str::to_string),
        set_pull_policy,
        warnings,
    })
}

fn is_injected(pod: &Pod, spec: &PodSpec) -> bool {
    let has_sidecar = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == contract::SIDECAR_CONTAINER_NAME);
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(contract::ANNOTATION_INJECTED));
    has_sidecar || annotated
}

fn check_owner(pod: &Pod) -> Result<(), SkipReason> {
    let owners = pod.metadata.owner_references.as_deref().unwrap_or_default();
    match owner::pod_owner(owners) {
        Ok(_) => Ok(()),
        Err(NotRestartable::NoOwner) => Err(SkipReason::NoOwner),
        Err(why) => Err(SkipReason::UnrestartableOwner(match why {
            NotRestartable::Kind(kind) => kind,
            other => other.to_string(),
        })),
    }
}

/// A container's image as the watch rules see it: a tag to watch, pinned, or invalid.
enum ImageState {
    Watchable,
    Pinned,
    Invalid(String),
}

fn image_state(image: &str) -> ImageState {
    match ImageReference::parse(image) {
        Ok(reference) if reference.is_pinned() => ImageState::Pinned,
        Ok(_) => ImageState::Watchable,
        Err(problem) => ImageState::Invalid(problem),
    }
}

fn watched_containers(
    spec: &PodSpec,
    requested: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>, SkipReason> {
    let image_of = |name: &str| {
        spec.containers
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.image.as_deref())
    };
    let names: Vec<&str> = match requested {
        None => spec.containers.iter().map(|c| c.name.as_str()).collect(),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect(),
    };
    let mut watched: Vec<String> = Vec::new();
    for name in names {
        let image = match (image_of(name), requested) {
            (Some(image), _) => image,
            (None, None) => continue,
            (None, Some(_)) => {
                return Err(SkipReason::InvalidAnnotation {
                    annotation: contract::ANNOTATION_WATCH_CONTAINERS,
                    problem: format!("the pod has no container named {name:?}"),
                })
            }
        };
        match image_state(image) {
            // Only a container the user named is worth a warning: by default pinned
            // containers are simply not watched.
            ImageState::Pinned if requested.is_some() => warnings.push(format!(
                "pod-reloaded: container {name} is pinned by digest ({image}); not watched"
            )),
            ImageState::Pinned => {}
            ImageState::Invalid(problem) => warnings.push(format!(
                "pod-reloaded: container {name}: {problem}; not watched"
            )),
            ImageState::Watchable if watched.iter().any(|n| n == name) => {}
            ImageState::Watchable => watched.push(name.to_string()),
        }
    }
    if watched.is_empty() {
        Err(SkipReason::NothingToWatch)
    } else {
        Ok(watched)
    }
}

/// JSON Patch operations against the pod as the API server sent it. Pointers are built
/// from unescaped tokens by `jsonptr`, which escapes `/` and `~` (annotation keys).
#[derive(Default)]
struct PatchOps(Vec<PatchOperation>);

impl PatchOps {
    fn add<'t>(&mut self, path: impl IntoIterator<Item = &'t str>, value: impl Serialize) {
        self.push(path, value, |path, value| {
            PatchOperation::Add(AddOperation { path, value })
        });
    }

    fn replace<'t>(&mut self, path: impl IntoIterator<Item = &'t str>, value: impl Serialize) {
        self.push(path, value, |path, value| {
            PatchOperation::Replace(ReplaceOperation { path, value })
        });
    }

    /// `add` when the pod has no such field yet, `replace` when it has one.
    fn set<'t>(
        &mut self,
        exists: bool,
        path: impl IntoIterator<Item = &'t str>,
        value: impl Serialize,
    ) {
        if exists {
            self.replace(path, value);
        } else {
            self.add(path, value);
        }
    }

    fn push<'t>(
        &mut self,
        path: impl IntoIterator<Item = &'t str>,
        value: impl Serialize,
        op: impl FnOnce(PointerBuf, serde_json::Value) -> PatchOperation,
    ) {
        // k8s-openapi types and strings always serialize; `Null` keeps the no-panic rule.
        let value = serde_json::to_value(value).unwrap_or_default();
        self.0.push(op(PointerBuf::from_tokens(path), value));
    }
}

fn build_injection(pod: &Pod, plan: Plan, settings: &InjectionSettings) -> Injection {
    let mut warnings = plan.warnings;
    let mut ops = PatchOps::default();
    let empty_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty_spec);

    if plan.set_pull_policy {
        for (index, container) in spec.containers.iter().enumerate() {
            let policy = container.image_pull_policy.as_deref();
            if !plan.watched.contains(&container.name) || policy == Some("Always") {
                continue;
            }
            let index = index.to_string();
            ops.set(
                policy.is_some(),
                ["spec", "containers", &index, "imagePullPolicy"],
                "Always",
            );
            warnings.push(format!(
                "pod-reloaded: set imagePullPolicy: Always on container {} so a restart pulls the new digest (annotate {}=keep to prevent)",
                container.name,
                contract::ANNOTATION_PULL_POLICY
            ));
        }
    }

    let current_account = spec
        .service_account_name
        .as_deref()
        .or(spec.service_account.as_deref())
        .filter(|sa| !sa.is_empty())
        .unwrap_or("default");
    let uses_checker_account = current_account == "default";
    let service_account = if uses_checker_account {
        let checker = contract::CHECKER_SERVICE_ACCOUNT;
        ops.set(
            spec.service_account_name.is_some(),
            ["spec", "serviceAccountName"],
            checker,
        );
        // The deprecated alias must agree, or validation rejects the pod.
        if spec.service_account.is_some() {
            ops.replace(["spec", "serviceAccount"], checker);
        }
        checker.to_string()
    } else {
        current_account.to_string()
    };

    let mut new_volumes = Vec::new();
    let mut mounts = vec![api_access_mount(spec, &mut new_volumes)];
    let pull_secrets: Vec<&str> = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|s| s.name.as_str())
        .filter(|n| !n.is_empty())
        .collect();
    for (index, secret) in pull_secrets.iter().enumerate() {
        let volume_name = format!("{PULL_SECRET_VOLUME_PREFIX}{index}");
        new_volumes.push(Volume {
            name: volume_name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_string()),
                // A missing pull secret must not stop the application pod from starting.
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: volume_name,
            mount_path: format!("{}/{secret}", contract::PULL_SECRETS_MOUNT_DIR),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if spec.volumes.is_some() {
        for volume in &new_volumes {
            ops.add(["spec", "volumes", "-"], volume);
        }
    } else if !new_volumes.is_empty() {
        ops.add(["spec", "volumes"], &new_volumes);
    }

    let mut env = vec![
        env_value(contract::ENV_WATCH_CONTAINER, plan.watched.join(",")),
        env_value(contract::ENV_INTERVAL, plan.interval),
    ];
    if let Some(url) = plan.registry_url {
        env.push(env_value(contract::ENV_REGISTRY_URL, url));
    }
    env.push(env_field(contract::ENV_POD_NAME, "metadata.name"));
    env.push(env_field(contract::ENV_POD_NAMESPACE, "metadata.namespace"));
    if !pull_secrets.is_empty() {
        env.push(env_value(
            contract::ENV_PULL_SECRETS_DIR,
            contract::PULL_SECRETS_MOUNT_DIR.to_string(),
        ));
    }

    let mut sidecar = sidecar_container(settings, env, mounts);
    match settings.sidecar_mode {
        SidecarMode::Container => ops.add(["spec", "containers", "-"], &sidecar),
        SidecarMode::Native => {
            sidecar.restart_policy = Some("Always".to_string());
            if spec.init_containers.is_some() {
                ops.add(["spec", "initContainers", "0"], &sidecar);
            } else {
                ops.add(["spec", "initContainers"], [&sidecar]);
            }
        }
    }

    let injected = contract::ANNOTATION_INJECTED;
    if pod.metadata.annotations.is_some() {
        ops.add(["metadata", "annotations", injected], &settings.version);
    } else {
        ops.add(
            ["metadata", "annotations"],
            BTreeMap::from([(injected, &settings.version)]),
        );
    }

    Injection {
        patch: json_patch::Patch(ops.0),
        service_account,
        uses_checker_account,
        watched_containers: plan.watched,
        warnings,
    }
}

/// The mount that gives the sidecar its API token: the pod's own `kube-api-access-*`
/// volume when the ServiceAccount admission plugin added one, else a projected volume of
/// our own (the pod may have `automountServiceAccountToken: false`).
fn api_access_mount(spec: &PodSpec, new_volumes: &mut Vec<Volume>) -> VolumeMount {
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

fn sidecar_container(
    settings: &InjectionSettings,
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: contract::SIDECAR_CONTAINER_NAME.to_string(),
        image: Some(settings.sidecar_image.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
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

fn env_value(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    }
}

fn env_field(name: &str, field_path: &str) -> EnvVar {
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

#[cfg(test)]
#[path = "inject_tests.rs"]
mod tests;
