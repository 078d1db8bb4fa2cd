//! Prometheus metrics of the checker (served only with `--metrics-listen`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckResult {
    UpToDate,
    Changed,
    /// The tag's index moved, but the image for this pod's platform is the same.
    Equivalent,
    Error,
}

impl CheckResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpToDate => "up_to_date",
            Self::Changed => "changed",
            Self::Equivalent => "equivalent",
            Self::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    request: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    namespace: String,
    workload: String,
    container: String,
}

/// How a rollout pod-reloaded started ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutResult {
    Succeeded,
    /// Failed and halted (quarantine only).
    Failed,
    RolledBack,
}

impl RolloutResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    checks: Family<ResultLabel, Counter>,
    restarts: Counter,
    rollouts: Family<ResultLabel, Counter>,
    update_available: Family<ContainerLabels, Gauge>,
    forbidden: Family<RequestLabel, Counter>,
    signature_checks: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let checks = Family::<ResultLabel, Counter>::default();
        registry.register(
            "pod_reloaded_checks",
            "Digest checks of watched containers, by result",
            checks.clone(),
        );
        let restarts = Counter::default();
        registry.register(
            "pod_reloaded_restarts",
            "Rolling restarts this sidecar triggered",
            restarts.clone(),
        );
        let rollouts = Family::<ResultLabel, Counter>::default();
        registry.register(
            "pod_reloaded_rollouts",
            "Outcomes of the rollouts this sidecar recorded, by result",
            rollouts.clone(),
        );
        let update_available = Family::<ContainerLabels, Gauge>::default();
        registry.register(
            "pod_reloaded_update_available",
            "1 while the workload runs an older digest than its tag serves (also while a restart is deferred or in notify mode), else 0",
            update_available.clone(),
        );
        let forbidden = Family::<RequestLabel, Counter>::default();
        registry.register(
            "pod_reloaded_api_forbidden",
            "API requests RBAC refused for a feature that goes on without them (e.g. create events with the old image-checker's Role), by request",
            forbidden.clone(),
        );
        let signature_checks = Family::<ResultLabel, Counter>::default();
        registry.register(
            "pod_reloaded_signature_checks",
            "Signature verifications of new digests under the pod's trust policy, by result (verified, rejected, unsigned: none yet, error: not fetched)",
            signature_checks.clone(),
        );
        Self {
            registry,
            signature_checks,
            checks,
            restarts,
            rollouts,
            update_available,
            forbidden,
        }
    }
}

impl Metrics {
    pub fn check(&self, result: CheckResult) {
        self.checks
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
    }

    pub fn restart(&self) {
        self.restarts.inc();
    }

    pub fn update_available(
        &self,
        namespace: &str,
        workload: &str,
        container: &str,
        available: bool,
    ) {
        self.update_available
            .get_or_create(&ContainerLabels {
                namespace: namespace.to_string(),
                workload: workload.to_string(),
                container: container.to_string(),
            })
            .set(i64::from(available));
    }

    pub fn rollout(&self, result: RolloutResult) {
        self.rollouts
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
    }

    /// `verified`, `rejected`, `unsigned` (none yet, waiting) or `error` (not fetched).
    pub fn signature_check(&self, result: &'static str) {
        self.signature_checks
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn forbidden(&self, request: &'static str) {
        self.forbidden
            .get_or_create(&RequestLabel { request })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
