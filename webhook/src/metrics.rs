//! Prometheus metrics of the admission path.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How an admission request ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum AdmissionResult {
    /// Patch returned.
    Injected,
    /// Admitted unchanged on purpose (excluded, opted out, not a Pod CREATE, ...).
    Skipped,
    /// Admitted unchanged because something failed (API side effect).
    Error,
    /// The request itself was malformed (HTTP 400/413).
    Invalid,
}

impl AdmissionResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Error => "error",
            Self::Invalid => "invalid",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    admissions: Family<ResultLabel, Counter>,
    duration: Histogram,
    notifications: NotificationCounter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceiverLabels {
    receiver: String,
    result: &'static str,
}

/// `pod_reloaded_notifications_total{receiver,result}`, shared with the notifier.
#[derive(Clone, Debug, Default)]
pub struct NotificationCounter(Family<ReceiverLabels, Counter>);

impl NotificationCounter {
    /// `delivered`, `retried` (an attempt failed; another follows) or `dropped`.
    pub fn count(&self, receiver: &str, result: &'static str) {
        self.0
            .get_or_create(&ReceiverLabels {
                receiver: receiver.to_string(),
                result,
            })
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let admissions = Family::<ResultLabel, Counter>::default();
        registry.register(
            "pod_reloaded_admissions",
            "Admission requests handled, by result",
            admissions.clone(),
        );
        let duration = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register(
            "pod_reloaded_admission_duration_seconds",
            "Time to answer an admission request",
            duration.clone(),
        );
        let notifications = NotificationCounter::default();
        registry.register(
            "pod_reloaded_notifications",
            "Notifications by receiver and result: delivered, retried (an attempt failed), dropped (not delivered)",
            notifications.0.clone(),
        );
        Self {
            registry,
            admissions,
            duration,
            notifications,
        }
    }
}

impl Metrics {
    pub fn observe(&self, result: AdmissionResult, seconds: f64) {
        self.admissions
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
        self.duration.observe(seconds);
    }

    pub fn notifications(&self) -> NotificationCounter {
        self.notifications.clone()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
