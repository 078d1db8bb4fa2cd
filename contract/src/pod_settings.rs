//! One reading of a pod's pod-reloaded annotations (copied from its template), with two
//! doors: `strict` for the webhook (an invalid value refuses injection, saying which
//! annotation and why) and `lenient` for the sidecar (an invalid value, which the webhook
//! would have refused, falls back to its default). Both apply the same parsers.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::settings::{self, Mode, OnFailure, Poll, RegistryOverride};
use crate::window::RestartWindows;

/// A pod's settings. Unset annotations take their defaults; `interval` and
/// `registry_url` stay `None` when unset (the webhook's flags decide).
#[derive(Clone, Debug)]
pub struct PodSettings {
    pub interval: Option<Duration>,
    pub registry_url: Option<RegistryOverride>,
    /// Whether the webhook sets `imagePullPolicy: Always` on watched containers.
    pub set_pull_policy: bool,
    /// Whether the webhook pins watched images to the restart's digest.
    pub pin: bool,
    pub on_failure: OnFailure,
    pub rollout_timeout: Duration,
    pub mode: Mode,
    pub min_age: Duration,
    pub cooldown: Duration,
    pub window: Option<RestartWindows>,
    /// `None` when unset: the webhook's `--default-poll` decides.
    pub poll: Option<Poll>,
}

impl Default for PodSettings {
    fn default() -> Self {
        Self {
            interval: None,
            registry_url: None,
            set_pull_policy: true,
            pin: true,
            on_failure: OnFailure::Rollback,
            rollout_timeout: default_rollout_timeout(),
            mode: Mode::Restart,
            min_age: Duration::ZERO,
            cooldown: Duration::ZERO,
            window: None,
            poll: None,
        }
    }
}

fn default_rollout_timeout() -> Duration {
    settings::parse_rollout_timeout(crate::DEFAULT_ROLLOUT_TIMEOUT)
        .unwrap_or(Duration::from_secs(600))
}

/// An annotation whose value cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidAnnotation {
    pub annotation: &'static str,
    pub problem: String,
}

impl PodSettings {
    /// The webhook's reading: the first invalid value is an error.
    pub fn strict(annotations: &BTreeMap<String, String>) -> Result<Self, InvalidAnnotation> {
        Self::read(annotations, true)
    }

    /// The sidecar's reading: an invalid value falls back to its default.
    pub fn lenient(annotations: &BTreeMap<String, String>) -> Self {
        Self::read(annotations, false).unwrap_or_default()
    }

    fn read(
        annotations: &BTreeMap<String, String>,
        strict: bool,
    ) -> Result<Self, InvalidAnnotation> {
        let defaults = Self::default();
        // The value of `key` (trimmed; empty is unset) through `parse`, or `None` when
        // unset, or (lenient) invalid.
        fn value<T>(
            annotations: &BTreeMap<String, String>,
            strict: bool,
            key: &'static str,
            parse: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Option<T>, InvalidAnnotation> {
            let Some(text) = annotations
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
            else {
                return Ok(None);
            };
            match parse(text) {
                Ok(parsed) => Ok(Some(parsed)),
                Err(problem) if strict => Err(InvalidAnnotation {
                    annotation: key,
                    problem,
                }),
                Err(_) => Ok(None),
            }
        }
        let a = annotations;
        Ok(Self {
            interval: value(
                a,
                strict,
                crate::ANNOTATION_INTERVAL,
                settings::parse_interval,
            )?,
            registry_url: value(
                a,
                strict,
                crate::ANNOTATION_REGISTRY_URL,
                RegistryOverride::parse,
            )?,
            set_pull_policy: value(
                a,
                strict,
                crate::ANNOTATION_PULL_POLICY,
                settings::parse_pull_policy,
            )?
            .unwrap_or(defaults.set_pull_policy),
            pin: value(a, strict, crate::ANNOTATION_PIN, settings::parse_pin)?
                .unwrap_or(defaults.pin),
            on_failure: value(a, strict, crate::ANNOTATION_ON_FAILURE, OnFailure::parse)?
                .unwrap_or(defaults.on_failure),
            rollout_timeout: value(
                a,
                strict,
                crate::ANNOTATION_ROLLOUT_TIMEOUT,
                settings::parse_rollout_timeout,
            )?
            .unwrap_or(defaults.rollout_timeout),
            mode: value(a, strict, crate::ANNOTATION_MODE, Mode::parse)?.unwrap_or(defaults.mode),
            min_age: value(a, strict, crate::ANNOTATION_MIN_AGE, settings::parse_wait)?
                .unwrap_or(defaults.min_age),
            cooldown: value(a, strict, crate::ANNOTATION_COOLDOWN, settings::parse_wait)?
                .unwrap_or(defaults.cooldown),
            window: value(
                a,
                strict,
                crate::ANNOTATION_RESTART_WINDOW,
                RestartWindows::parse,
            )?,
            poll: value(a, strict, crate::ANNOTATION_POLL, Poll::parse)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unset_and_empty_annotations_take_the_defaults() {
        let settings = PodSettings::strict(&annotations(&[(crate::ANNOTATION_MODE, "  ")]))
            .expect("empty is unset");
        assert_eq!(settings.mode, Mode::Restart);
        assert_eq!(settings.rollout_timeout, Duration::from_secs(600));
        assert!(settings.pin && settings.set_pull_policy);
        assert!(settings.interval.is_none() && settings.window.is_none());
    }

    #[test]
    fn values_are_trimmed_and_parsed_by_the_shared_rules() {
        let settings = PodSettings::strict(&annotations(&[
            (crate::ANNOTATION_INTERVAL, " 30s "),
            (crate::ANNOTATION_MODE, "notify "),
            (crate::ANNOTATION_ROLLOUT_TIMEOUT, " 5m"),
            (crate::ANNOTATION_ON_FAILURE, "halt"),
            (crate::ANNOTATION_MIN_AGE, "10m"),
            (crate::ANNOTATION_PIN, "false"),
        ]))
        .unwrap();
        assert_eq!(settings.interval, Some(Duration::from_secs(30)));
        assert_eq!(settings.mode, Mode::Notify);
        assert_eq!(settings.rollout_timeout, Duration::from_secs(300));
        assert_eq!(settings.on_failure, OnFailure::Halt);
        assert_eq!(settings.min_age, Duration::from_secs(600));
        assert!(!settings.pin);
    }

    #[test]
    fn an_invalid_value_is_an_error_for_the_webhook_and_its_default_for_the_sidecar() {
        for (key, value) in [
            (crate::ANNOTATION_INTERVAL, "0s"),
            (crate::ANNOTATION_ROLLOUT_TIMEOUT, "forever"),
            (crate::ANNOTATION_MODE, "sometimes"),
            (crate::ANNOTATION_COOLDOWN, "90d"),
            (crate::ANNOTATION_RESTART_WINDOW, "Someday 25:00"),
            (crate::ANNOTATION_PULL_POLICY, "maybe"),
            (crate::ANNOTATION_POLL, "sometimes"),
        ] {
            let pairs = annotations(&[(key, value), (crate::ANNOTATION_MIN_AGE, "1m")]);
            let error = PodSettings::strict(&pairs).expect_err(value);
            assert_eq!(error.annotation, key);
            let lenient = PodSettings::lenient(&pairs);
            let defaults = PodSettings::default();
            assert_eq!(lenient.interval, defaults.interval, "{key}");
            assert_eq!(lenient.rollout_timeout, defaults.rollout_timeout, "{key}");
            assert_eq!(lenient.mode, defaults.mode, "{key}");
            assert_eq!(lenient.cooldown, defaults.cooldown, "{key}");
            assert!(lenient.window.is_none(), "{key}");
            // The valid ones are kept.
            assert_eq!(lenient.min_age, Duration::from_secs(60), "{key}");
        }
    }
}
