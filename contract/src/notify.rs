//! Notifications: which of pod-reloaded's Events are told to which receivers. The
//! operator writes the receivers in one file the webhook reads (`--notify-config`, from
//! the ConfigMap `pod-reloaded-notify`); their URLs and keys are credentials, and live in
//! the Secret `pod-reloaded-notify` (`--notify-secrets-dir`), referred to by key.
//!
//! ```yaml
//! receivers:
//!   ops:
//!     type: slack                  # slack | teams | webhook | cloudevents
//!     urlKey: ops-slack-url        # the Secret's key holding the URL
//!     events: [rollout-failed, rolled-back, signature-rejected]   # default: all
//!     namespaceSelector:           # namespaces by label; absent: only those that
//!       matchLabels: {team: shop}  # name the receiver in pod-reloaded.io/notify
//!   audit:
//!     type: webhook
//!     urlKey: audit-url
//!     hmacKey: audit-hmac          # X-Signature: sha256=<HMAC of the body>
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest notification config read.
pub const MAX_NOTIFY_FILE_BYTES: usize = 256 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    #[serde(default)]
    pub receivers: BTreeMap<String, Receiver>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Receiver {
    #[serde(rename = "type")]
    pub kind: ReceiverKind,
    /// The key, in the Secret `pod-reloaded-notify`, of the receiver's URL.
    pub url_key: String,
    /// The key of an HMAC key: the body is signed in `X-Signature` (webhook, cloudevents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_key: Option<String>,
    /// What it is told; empty: everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<NotificationType>,
    /// The namespaces it hears about by label (`{}`: all); absent: only those that name
    /// it in `pod-reloaded.io/notify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    /// A Slack incoming webhook: a Block Kit message with a plain-text fallback.
    Slack,
    /// A Microsoft Teams Workflows webhook: an Adaptive Card.
    Teams,
    /// Any HTTPS endpoint: pod-reloaded's JSON (`notification.schema.json`).
    Webhook,
    /// A CloudEvents 1.0 sink (structured JSON), CDEvents types where one fits.
    Cloudevents,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// What happened, as receivers filter it; each is one of the sidecar's Event reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NotificationType {
    RestartStarted,
    RolloutSucceeded,
    RolloutFailed,
    RolledBack,
    Undone,
    UpdateAvailable,
    UpdateHeld,
    SignatureRejected,
    PullDidNotTake,
}

impl NotificationType {
    pub const ALL: [Self; 9] = [
        Self::RestartStarted,
        Self::RolloutSucceeded,
        Self::RolloutFailed,
        Self::RolledBack,
        Self::Undone,
        Self::UpdateAvailable,
        Self::UpdateHeld,
        Self::SignatureRejected,
        Self::PullDidNotTake,
    ];

    /// The type of one of the sidecar's Event reasons.
    pub fn of_reason(reason: &str) -> Option<Self> {
        Some(match reason {
            "ImageDigestChanged" => Self::RestartStarted,
            "RolloutSucceeded" => Self::RolloutSucceeded,
            "RolloutFailed" => Self::RolloutFailed,
            "RolledBack" => Self::RolledBack,
            "RolloutUndone" => Self::Undone,
            "ImageUpdateAvailable" => Self::UpdateAvailable,
            "ImageUpdateHeld" => Self::UpdateHeld,
            "ImageSignatureRejected" => Self::SignatureRejected,
            "ImageDigestUnchangedAfterRestart" => Self::PullDidNotTake,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RestartStarted => "restart-started",
            Self::RolloutSucceeded => "rollout-succeeded",
            Self::RolloutFailed => "rollout-failed",
            Self::RolledBack => "rolled-back",
            Self::Undone => "undone",
            Self::UpdateAvailable => "update-available",
            Self::UpdateHeld => "update-held",
            Self::SignatureRejected => "signature-rejected",
            Self::PullDidNotTake => "pull-did-not-take",
        }
    }

    /// What happens next, in a sentence.
    pub fn next(self) -> &'static str {
        match self {
            Self::RestartStarted => "pod-reloaded follows the rollout; a failure is rolled back or halted (pod-reloaded.io/on-failure)",
            Self::RolloutSucceeded => "nothing: the workload runs the new digest",
            Self::RolloutFailed => "the new digest is quarantined, and the workload rolled back or halted (pod-reloaded.io/on-failure)",
            Self::RolledBack => "the pods return to the previous digest; the failed one stays quarantined until the tag moves",
            Self::Undone => "pod-reloaded does not roll forward; the next new digest rolls out as usual",
            Self::UpdateAvailable => "nothing (mode notify): restart by hand, or set pod-reloaded.io/mode: restart",
            Self::UpdateHeld => "the restart happens when the hold ends",
            Self::SignatureRejected => "nothing rolls out; the digest is quarantined, and the next signed push rolls out",
            Self::PullDidNotTake => "no restart again for this digest: check imagePullPolicy and the registry",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NotifyConfigError {
    #[error("the notification config does not parse: {0}")]
    Parse(String),
    #[error("the notification config is larger than {MAX_NOTIFY_FILE_BYTES} bytes")]
    TooLarge,
    #[error("receiver {name:?}: {problem}")]
    Invalid { name: String, problem: String },
}

impl NotifyConfig {
    pub fn parse(text: &str) -> Result<Self, NotifyConfigError> {
        if text.len() > MAX_NOTIFY_FILE_BYTES {
            return Err(NotifyConfigError::TooLarge);
        }
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| NotifyConfigError::Parse(e.to_string()))?
        };
        for (name, receiver) in &config.receivers {
            let invalid = |problem: String| NotifyConfigError::Invalid {
                name: name.clone(),
                problem,
            };
            if !is_receiver_name(name) {
                return Err(invalid(
                    "a receiver name is 1 to 63 lower-case letters, digits and '-'".into(),
                ));
            }
            for (field, key) in [
                ("urlKey", Some(&receiver.url_key)),
                ("hmacKey", receiver.hmac_key.as_ref()),
            ] {
                if let Some(key) = key {
                    if !is_secret_key(key) {
                        return Err(invalid(format!(
                            "{field} {key:?} is not a Secret key (letters, digits, '-', '_', '.')"
                        )));
                    }
                }
            }
            if receiver.hmac_key.is_some()
                && !matches!(
                    receiver.kind,
                    ReceiverKind::Webhook | ReceiverKind::Cloudevents
                )
            {
                return Err(invalid(
                    "hmacKey signs webhook and cloudevents bodies only".into(),
                ));
            }
        }
        Ok(config)
    }

    /// The receivers of a notification of `kind` about a workload in a namespace with
    /// `labels` whose `pod-reloaded.io/notify` annotation names `annotated`.
    pub fn receivers_for<'a>(
        &'a self,
        kind: NotificationType,
        labels: &BTreeMap<String, String>,
        annotated: &[&str],
    ) -> Vec<&'a str> {
        self.receivers
            .iter()
            .filter(|(_, r)| r.events.is_empty() || r.events.contains(&kind))
            .filter(|(name, r)| {
                annotated.contains(&name.as_str())
                    || r.namespace_selector
                        .as_ref()
                        .is_some_and(|s| s.matches(labels))
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// The receivers a namespace's `pod-reloaded.io/notify` annotation names.
pub fn annotated_receivers(annotation: Option<&str>) -> Vec<&str> {
    annotation
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect()
}

fn is_receiver_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "receivers:\n  ops:\n    type: slack\n    urlKey: ops-url\n    events: [rollout-failed, rolled-back]\n    namespaceSelector: {matchLabels: {team: shop}}\n  audit:\n    type: webhook\n    urlKey: audit-url\n    hmacKey: audit-hmac\n    namespaceSelector: {}\n  bus:\n    type: cloudevents\n    urlKey: bus-url\n";

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn receivers_are_chosen_by_event_type_namespace_label_and_annotation() {
        let config = NotifyConfig::parse(CONFIG).unwrap();
        let shop = labels(&[("team", "shop")]);
        assert_eq!(
            config.receivers_for(NotificationType::RolloutFailed, &shop, &[]),
            vec!["audit", "ops"]
        );
        assert_eq!(
            config.receivers_for(NotificationType::RestartStarted, &shop, &[]),
            vec!["audit"],
            "ops hears only of failures"
        );
        assert_eq!(
            config.receivers_for(NotificationType::RolloutFailed, &labels(&[]), &[]),
            vec!["audit"]
        );
        // Named by the namespace's annotation: added, still filtered by type.
        assert_eq!(
            config.receivers_for(
                NotificationType::RestartStarted,
                &labels(&[]),
                &["bus", "ops"]
            ),
            vec!["audit", "bus"]
        );
        assert_eq!(annotated_receivers(Some(" bus, ops ,")), vec!["bus", "ops"]);
    }

    #[test]
    fn invalid_configs_are_refused_with_the_reason() {
        for (text, expected) in [
            (
                "receivers: {Ops: {type: slack, urlKey: u}}",
                "receiver name",
            ),
            (
                "receivers: {ops: {type: email, urlKey: u}}",
                "does not parse",
            ),
            (
                "receivers: {ops: {type: slack, urlKey: 'a b'}}",
                "not a Secret key",
            ),
            (
                "receivers: {ops: {type: slack, urlKey: u, hmacKey: k}}",
                "hmacKey signs",
            ),
            (
                "receivers: {ops: {type: slack, urlKey: u, events: [everything]}}",
                "does not parse",
            ),
            ("receivers: {ops: {type: slack}}", "does not parse"),
        ] {
            let error = NotifyConfig::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn every_type_is_a_sidecar_event_reason() {
        let reasons = [
            "ImageDigestChanged",
            "RolloutSucceeded",
            "RolloutFailed",
            "RolledBack",
            "RolloutUndone",
            "ImageUpdateAvailable",
            "ImageUpdateHeld",
            "ImageSignatureRejected",
            "ImageDigestUnchangedAfterRestart",
        ];
        let types: Vec<_> = reasons
            .iter()
            .filter_map(|r| NotificationType::of_reason(r))
            .collect();
        assert_eq!(types, NotificationType::ALL.to_vec());
        assert_eq!(NotificationType::of_reason("Scheduled"), None);
    }
}
