//! The injection rules: whether a pod is injected, which containers are watched, and
//! its pod-reloaded annotations validated with the rules the sidecar applies too.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ResourceRequirements;

use super::pod_view::{PodSpecView, PodView};
use pod_reloaded_contract as contract;
use pod_reloaded_contract::image::ImageReference;
use pod_reloaded_contract::owner::{self, NotRestartable};
use pod_reloaded_contract::pod_settings::PodSettings;
use pod_reloaded_contract::record::DigestRecord;
use pod_reloaded_contract::settings::Poll;
use pod_reloaded_contract::trust::NamedPolicy;

use crate::trust::TrustStore;

/// How the sidecar is added to the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Who polls for pods without `pod-reloaded.io/poll`.
    pub default_poll: Poll,
    /// Namespaces never injected, including the webhook's own.
    pub excluded_namespaces: BTreeSet<String>,
    /// Written into the `pod-reloaded.io/injected` annotation.
    pub version: String,
    /// Cluster-wide settings of the sidecar, injected as env `(name, value)`.
    pub sidecar_env: Vec<(String, String)>,
    /// A ConfigMap of extra registry CAs, mounted (optional) into the sidecar.
    pub ca_configmap: Option<String>,
    /// A pull secret for a private sidecar image, added to the pod's `imagePullSecrets`
    /// (pull secrets are the pod's: the kubelet pulls every container with them).
    pub sidecar_image_pull_secret: Option<String>,
    /// The port the sidecar serves `/metrics` on, if any.
    pub metrics_port: Option<u16>,
    /// The trust policies pods name in `pod-reloaded.io/verify`.
    pub trust: TrustStore,
    /// The policy of pods without the annotation.
    pub default_verify_policy: Option<String>,
}

impl InjectionSettings {
    /// The one fixture of the tests and benchmarks: image `example/checker:1`, version
    /// `9.9.9`, `kube-system` and `pod-reloaded` excluded, the rest as simple as it gets.
    pub fn example(sidecar_mode: SidecarMode) -> Self {
        Self {
            sidecar_image: "example/checker:1".to_string(),
            sidecar_resources: super::templates::resources("5m", "16Mi", "100m", "32Mi"),
            sidecar_mode,
            default_interval: "60s".to_string(),
            default_poll: Poll::Workload,
            excluded_namespaces: ["kube-system", "pod-reloaded"]
                .into_iter()
                .map(String::from)
                .collect(),
            version: "9.9.9".to_string(),
            sidecar_env: Vec::new(),
            ca_configmap: None,
            sidecar_image_pull_secret: None,
            metrics_port: None,
            trust: TrustStore::default(),
            default_verify_policy: None,
        }
    }
}

impl SidecarMode {
    /// `container` or `native`, as the `--sidecar-mode` flag takes it.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "container" => Ok(Self::Container),
            "native" => Ok(Self::Native),
            other => Err(format!("{other:?} is neither \"container\" nor \"native\"")),
        }
    }
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
    #[error("pod-reloaded: pod runs on Windows (spec.os.name: windows), and the checker sidecar is Linux only; not injected")]
    WindowsPod,
    #[error("pod-reloaded: no container runs an image by tag (all are pinned by digest); nothing to watch")]
    NothingToWatch,
    #[error("pod-reloaded: container {0} is the hand-deployed image-checker sidecar pod-reloaded replaces (it has {env}); remove it from the pod template to be injected, or the two would restart the workload; not injected", env = contract::ENV_WATCH_CONTAINER)]
    OldImageChecker(String),
    #[error("pod-reloaded: annotation {annotation}: {problem}; not injected")]
    InvalidAnnotation {
        annotation: &'static str,
        problem: String,
    },
    #[error("pod-reloaded: the patch could not be written ({0}); not injected")]
    PatchNotWritten(String),
}

/// What was read and validated from the pod before any change is made.
/// A watched container whose image is rewritten to the digest its restart rolled out.
#[derive(Debug)]
pub(super) struct Pin {
    pub(super) index: usize,
    pub(super) container: String,
    pub(super) image: String,
}

/// A watched container whose `imagePullPolicy` becomes `Always`.
#[derive(Debug)]
pub(super) struct PullAlways {
    pub(super) index: usize,
    pub(super) container: String,
    /// It has a policy (replaced) or none (added).
    pub(super) had_policy: bool,
}

/// The account the pod will run as.
#[derive(Debug)]
pub(super) struct Account {
    pub(super) name: String,
    /// The pod ran as its namespace's `default` account and is switched to the checker's.
    pub(super) switched_to_checker: bool,
}

/// Everything decided about a pod before the patch is written: `patch` only writes it.
pub(super) struct Plan {
    pub(super) pins: Vec<Pin>,
    pub(super) watched: Vec<String>,
    pub(super) interval: String,
    pub(super) registry_url: Option<String>,
    pub(super) poll: Poll,
    /// The trust policy given to the sidecar, if any.
    pub(super) verify: Option<NamedPolicy>,
    pub(super) pull_always: Vec<PullAlways>,
    pub(super) account: Account,
    /// The pod's pull secrets, mounted into the sidecar (optional volumes).
    pub(super) mounted_pull_secrets: Vec<String>,
    /// The sidecar image's pull secret, added to the pod's when it lacks it.
    pub(super) added_pull_secret: Option<String>,
    /// The ConfigMap of extra registry CAs mounted into the sidecar.
    pub(super) ca_configmap: Option<String>,
    pub(super) warnings: Vec<String>,
}

pub(super) fn plan(
    pod: &PodView,
    namespace: &str,
    settings: &InjectionSettings,
) -> Result<Plan, SkipReason> {
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
    if let Some(old) = old_image_checker(spec) {
        return Err(SkipReason::OldImageChecker(old));
    }
    check_owner(pod)?;
    // The sidecar image is Linux only; on a Windows node it could not start.
    if spec
        .os
        .as_ref()
        .is_some_and(|os| os.name.eq_ignore_ascii_case("windows"))
    {
        return Err(SkipReason::WindowsPod);
    }

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

    let pod_settings = PodSettings::strict(
        metadata.annotations.as_ref().unwrap_or(&BTreeMap::new()),
    )
    .map_err(|invalid| SkipReason::InvalidAnnotation {
        annotation: invalid.annotation,
        problem: invalid.problem,
    })?;
    // The sidecar gets the interval as written (validated above), or the flag's.
    let interval = annotation(contract::ANNOTATION_INTERVAL).unwrap_or(&settings.default_interval);
    let registry_url = annotation(contract::ANNOTATION_REGISTRY_URL);
    let set_pull_policy = pod_settings.set_pull_policy;
    let poll = pod_settings.poll.unwrap_or(settings.default_poll);
    let verify = verify_policy(annotation(contract::ANNOTATION_VERIFY), settings)?;
    let pin = pod_settings.pin;
    let pins = if pin {
        pins(
            spec,
            &watched,
            annotation(contract::ANNOTATION_RESTARTED_FOR),
        )
    } else {
        Vec::new()
    };

    let pull_always = if set_pull_policy {
        pull_always(spec, &watched)
    } else {
        Vec::new()
    };
    let mounted_pull_secrets: Vec<String> = spec
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|s| s.name.clone())
        .filter(|n| !n.is_empty())
        .collect();
    // A private sidecar image: its pull secret joins the pod's (not mounted into the
    // sidecar: it is for pulling the sidecar, not for checking the app's registry).
    let added_pull_secret = settings
        .sidecar_image_pull_secret
        .clone()
        .filter(|s| !mounted_pull_secrets.contains(s));

    Ok(Plan {
        watched,
        interval: interval.to_string(),
        registry_url: registry_url.map(str::to_string),
        poll,
        verify,
        pull_always,
        account: account(spec),
        mounted_pull_secrets,
        added_pull_secret,
        ca_configmap: settings.ca_configmap.clone(),
        pins,
        warnings,
    })
}

/// Watched containers whose pull policy is not `Always` yet: a restart must pull the new
/// digest, not reuse a node's cached image.
fn pull_always(spec: &PodSpecView, watched: &[String]) -> Vec<PullAlways> {
    spec.containers
        .iter()
        .enumerate()
        .filter(|(_, c)| watched.contains(&c.name))
        .filter(|(_, c)| c.image_pull_policy.as_deref() != Some("Always"))
        .map(|(index, c)| PullAlways {
            index,
            container: c.name.clone(),
            had_policy: c.image_pull_policy.is_some(),
        })
        .collect()
}

/// A pod on its namespace's `default` account runs as the checker's account instead (so
/// `default` never gets the checker's rights); any other account is bound as it is.
fn account(spec: &PodSpecView) -> Account {
    let current = spec
        .service_account_name
        .as_deref()
        .or(spec.service_account.as_deref())
        .filter(|sa| !sa.is_empty())
        .unwrap_or("default");
    if current == "default" {
        Account {
            name: contract::CHECKER_SERVICE_ACCOUNT.to_string(),
            switched_to_checker: true,
        }
    } else {
        Account {
            name: current.to_string(),
            switched_to_checker: false,
        }
    }
}

/// The watched containers a restart recorded a digest for, with that digest: the pod
/// runs exactly what the restart rolled out, whatever the tag says by the time it pulls,
/// and whatever a node has cached. Pods only, never templates: a mutated template would
/// make the Deployment controller fight the webhook.
fn pins(spec: &PodSpecView, watched: &[String], restarted_for: Option<&str>) -> Vec<Pin> {
    let Some(record) = restarted_for.map(DigestRecord::parse) else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .enumerate()
        .filter(|(_, c)| watched.contains(&c.name))
        .filter_map(|(index, container)| {
            let digest = record.get(&container.name)?;
            let image = container.image.as_deref()?;
            let unpinned = ImageReference::parse(image).is_ok_and(|r| !r.is_pinned());
            (unpinned && contract::is_sha256_digest(digest)).then(|| Pin {
                index,
                container: container.name.clone(),
                image: format!("{image}@{digest}"),
            })
        })
        .collect()
}

fn is_injected(pod: &PodView, spec: &PodSpecView) -> bool {
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

/// A container that carries the checker's own env (`IMAGE_CHECKER_WATCH_CONTAINER`) is
/// the image-checker sidecar deployed by hand (the old one, or pod-reloaded's sidecar put
/// in its place): it watches and restarts already.
fn old_image_checker(spec: &PodSpecView) -> Option<String> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| {
            c.env
                .iter()
                .flatten()
                .any(|e| e.name == contract::ENV_WATCH_CONTAINER)
        })
        .map(|c| c.name.clone())
}

fn check_owner(pod: &PodView) -> Result<(), SkipReason> {
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
    spec: &PodSpecView,
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

/// The trust policy a pod's new digests must satisfy: the one its annotation names, or
/// the webhook's default; `off` opts out. A name with no policy leaves the pod uninjected.
fn verify_policy(
    annotation: Option<&str>,
    settings: &InjectionSettings,
) -> Result<Option<NamedPolicy>, SkipReason> {
    let name = match annotation {
        Some(contract::VERIFY_OFF) => return Ok(None),
        Some(name) => name,
        None => match &settings.default_verify_policy {
            Some(name) => name.as_str(),
            None => return Ok(None),
        },
    };
    let policies = settings.trust.current();
    policies
        .get(name)
        .map(Some)
        .ok_or_else(|| SkipReason::InvalidAnnotation {
            annotation: contract::ANNOTATION_VERIFY,
            problem: format!(
                "no trust policy named {name:?} (the webhook's trust policies: {}; \"{}\" opts out)",
                policies.names(),
                contract::VERIFY_OFF
            ),
        })
}
