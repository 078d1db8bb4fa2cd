//! Injection: given a Pod and the webhook's settings, decide whether to inject the
//! checker sidecar and build the JSON Patch that does it. Pure: no I/O.
//!
//! `pod_view` is the part of a pod they read, `rules` reads and validates the pod (what to watch, why not inject), `patch` turns
//! that plan into JSON Patch operations, `templates` holds the injected container and
//! volumes.

mod patch;
mod pod_view;
mod rules;
mod templates;

pub use self::patch::JsonPatch;
pub use self::pod_view::{ContainerView, PodSpecView, PodView, VolumeView};

pub use self::rules::{InjectionSettings, SidecarMode, SkipReason};
pub use self::templates::resources;

/// What the webhook should do with a pod.
#[derive(Debug)]
pub enum Decision {
    Inject(Injection),
    Skip(SkipReason),
}

#[derive(Debug)]
pub struct Injection {
    pub patch: JsonPatch,
    /// The account the pod will run as, which must be bound to the checker ClusterRole.
    pub service_account: String,
    /// True when the pod was switched to the checker ServiceAccount, which must exist.
    pub uses_checker_account: bool,
    pub watched_containers: Vec<String>,
    pub warnings: Vec<String>,
}

/// The decision for a pod being created in `namespace`.
pub fn decide(pod: &PodView, namespace: &str, settings: &InjectionSettings) -> Decision {
    match rules::plan(pod, namespace, settings) {
        Ok(plan) => match patch::build_injection(pod, plan, settings) {
            Ok(injection) => Decision::Inject(injection),
            Err(error) => Decision::Skip(SkipReason::PatchNotWritten(error.to_string())),
        },
        Err(reason) => Decision::Skip(reason),
    }
}

#[cfg(test)]
mod tests;
