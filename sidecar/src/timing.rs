//! When a restart may happen: `mode`, `min-age`, `cooldown`, `restart-window` from the
//! pod's own annotations (copied from its template), `paused` from the workload's
//! metadata. Pure: `now` comes in, so windows, soak and cooldown are tested with a clock
//! of the test's choosing.

use std::time::Duration;

use jiff::Timestamp;
use pod_reloaded_contract as contract;
use pod_reloaded_contract::pod_settings::PodSettings;
use pod_reloaded_contract::record::{timestamp_text, PendingRecord};
use pod_reloaded_contract::settings::Mode;

/// Why a restart that is due does not happen now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// `pod-reloaded.io/paused: "true"` on the workload.
    Paused,
    /// `mode: notify`: never restarted.
    Notify,
    /// The tag has not served the digest for `min-age` yet.
    Soaking { until: Timestamp },
    /// The last restart was less than `cooldown` ago.
    CoolingDown { until: Timestamp },
    /// Outside every restart window.
    OutsideWindow { until: Option<Timestamp> },
}

impl Hold {
    /// The kind of hold without its time, so a deferral is said once per digest and
    /// kind (not each time its "until" moves).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::Notify => "notify",
            Self::Soaking { .. } => "min-age",
            Self::CoolingDown { .. } => "cooldown",
            Self::OutsideWindow { .. } => "window",
        }
    }

    /// A short reason and, when known, when the restart may happen.
    pub fn describe(&self) -> String {
        let at = |t: &Timestamp| timestamp_text(*t);
        match self {
            Self::Paused => format!(
                "the workload is paused ({}: \"true\")",
                contract::ANNOTATION_PAUSED
            ),
            Self::Notify => "mode notify: never restarted".to_string(),
            Self::Soaking { until } => {
                format!("min-age: the digest must be served until {}", at(until))
            }
            Self::CoolingDown { until } => format!("cooldown: no restart before {}", at(until)),
            Self::OutsideWindow { until: Some(until) } => {
                format!("outside the restart window; next one opens {}", at(until))
            }
            Self::OutsideWindow { until: None } => "outside the restart window".to_string(),
        }
    }
}

fn plus(at: Timestamp, wait: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(wait)
        .ok()
        .and_then(|wait| at.checked_add(wait).ok())
        .unwrap_or(Timestamp::MAX)
}

/// Whether a restart for the new digests may happen at `now`, and the pending record
/// with each digest's first sight added (`first_seen` lists those added now).
pub struct Timed {
    pub hold: Option<Hold>,
    pub pending: PendingRecord,
    pub first_seen: Vec<String>,
}

/// `new` is `(container, digest)` of the changes not restarted for yet.
pub fn timed(
    timing: &PodSettings,
    new: &[(&str, &str)],
    paused: bool,
    mut pending: PendingRecord,
    last_restart: Option<Timestamp>,
    now: Timestamp,
) -> Timed {
    let mut first_seen = Vec::new();
    let mut youngest = None::<Timestamp>;
    for (container, digest) in new {
        let since = match pending.since(container, digest) {
            Some(since) => since,
            None => {
                pending.insert(container, digest, now);
                first_seen.push(container.to_string());
                now
            }
        };
        youngest = Some(youngest.map_or(since, |y| y.max(since)));
    }
    let soaked_at = plus(youngest.unwrap_or(now), timing.min_age);
    let cooled_at = last_restart.map(|at| plus(at, timing.cooldown));
    let hold = if paused {
        Some(Hold::Paused)
    } else if timing.mode == Mode::Notify {
        Some(Hold::Notify)
    } else if now < soaked_at {
        Some(Hold::Soaking { until: soaked_at })
    } else if cooled_at.is_some_and(|at| now < at) {
        cooled_at.map(|until| Hold::CoolingDown { until })
    } else {
        match &timing.window {
            Some(window) if !window.contains(now) => Some(Hold::OutsideWindow {
                until: window.next_start(now),
            }),
            _ => None,
        }
    };
    Timed {
        hold,
        pending,
        first_seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn timing(pairs: &[(&str, &str)]) -> PodSettings {
        PodSettings::lenient(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    const NEW: [(&str, &str); 1] = [("web", "sha256:b")];

    #[test]
    fn by_default_nothing_holds_a_restart() {
        let timed = timed(
            &PodSettings::default(),
            &NEW,
            false,
            PendingRecord::default(),
            None,
            at("2026-11-24T10:00:00Z"),
        );
        assert_eq!(timed.hold, None);
        assert_eq!(timed.first_seen, vec!["web".to_string()]);
    }

    #[test]
    fn min_age_counts_from_the_first_sight_and_restarts_when_the_tag_moves() {
        let soak = timing(&[(contract::ANNOTATION_MIN_AGE, "1h")]);
        let first = timed(
            &soak,
            &NEW,
            false,
            PendingRecord::default(),
            None,
            at("2026-11-24T10:00:00Z"),
        );
        assert_eq!(
            first.hold,
            Some(Hold::Soaking {
                until: at("2026-11-24T11:00:00Z")
            })
        );
        // Later rounds (any replica) read the recorded first sight.
        let later = timed(
            &soak,
            &NEW,
            false,
            first.pending.clone(),
            None,
            at("2026-11-24T10:59:59Z"),
        );
        assert!(matches!(later.hold, Some(Hold::Soaking { .. })));
        assert!(later.first_seen.is_empty());
        let done = timed(
            &soak,
            &NEW,
            false,
            first.pending.clone(),
            None,
            at("2026-11-24T11:00:00Z"),
        );
        assert_eq!(done.hold, None);
        // The tag moved again: the clock starts anew.
        let moved = timed(
            &soak,
            &[("web", "sha256:c")],
            false,
            first.pending,
            None,
            at("2026-11-24T11:30:00Z"),
        );
        assert_eq!(
            moved.hold,
            Some(Hold::Soaking {
                until: at("2026-11-24T12:30:00Z")
            })
        );
        assert_eq!(moved.first_seen, vec!["web".to_string()]);
    }

    #[test]
    fn cooldown_counts_from_the_last_restart() {
        let cool = timing(&[(contract::ANNOTATION_COOLDOWN, "30m")]);
        let last = Some(at("2026-11-24T10:00:00Z"));
        let early = timed(
            &cool,
            &NEW,
            false,
            PendingRecord::default(),
            last,
            at("2026-11-24T10:10:00Z"),
        );
        assert_eq!(
            early.hold,
            Some(Hold::CoolingDown {
                until: at("2026-11-24T10:30:00Z")
            })
        );
        let late = timed(
            &cool,
            &NEW,
            false,
            PendingRecord::default(),
            last,
            at("2026-11-24T10:30:00Z"),
        );
        assert_eq!(late.hold, None);
    }

    #[test]
    fn windows_pause_and_notify() {
        let nights = timing(&[(
            contract::ANNOTATION_RESTART_WINDOW,
            "Mon-Fri 02:00-05:00 Europe/Berlin",
        )]);
        let day = timed(
            &nights,
            &NEW,
            false,
            PendingRecord::default(),
            None,
            at("2026-11-24T12:00:00Z"),
        );
        assert_eq!(
            day.hold,
            Some(Hold::OutsideWindow {
                until: Some(at("2026-11-25T01:00:00Z"))
            })
        );
        assert!(day
            .hold
            .unwrap()
            .describe()
            .contains("2026-11-25T01:00:00Z"));
        let night = timed(
            &nights,
            &NEW,
            false,
            PendingRecord::default(),
            None,
            at("2026-11-25T02:00:00Z"),
        );
        assert_eq!(night.hold, None);
        let paused = timed(
            &PodSettings::default(),
            &NEW,
            true,
            PendingRecord::default(),
            None,
            at("2026-11-25T02:00:00Z"),
        );
        assert_eq!(paused.hold, Some(Hold::Paused));
        let notify = timing(&[(contract::ANNOTATION_MODE, "notify")]);
        let told = timed(
            &notify,
            &NEW,
            false,
            PendingRecord::default(),
            None,
            at("2026-11-25T02:00:00Z"),
        );
        assert_eq!(told.hold, Some(Hold::Notify));
        assert_eq!(
            told.first_seen.len(),
            1,
            "the first sight is recorded for the Event"
        );
    }
}
