//! What a decision does, as a value: the log lines and Events to say (some only once),
//! the metric to count, whether to follow the rollout, and how the round ended. `decide`
//! and `rollout` build these next to their decisions (so each Event's text sits by the
//! decision it reports, unit-tested there); the checker only carries them out.

use std::borrow::Cow;
use std::time::Duration;

use crate::metrics::RolloutResult;

/// How a round ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RoundOutcome {
    UpToDate,
    /// A watched container has not started yet (a native sidecar starts first).
    Waiting,
    Restarted,
    /// A restart is due but held: paused, notify mode, min-age, cooldown or window.
    Deferred,
    /// A change another replica already restarted for (or that did not take).
    AlreadyRestarted,
    /// Something failed; nothing was restarted. `retry_after` is the registry's wish.
    Failed {
        retry_after: Option<Duration>,
    },
}

/// What to do with a workload as read: patch it (the patch carries the read
/// `resourceVersion`), or leave it.
pub enum Update<T> {
    Patch(serde_json::Value, T),
    Leave(T),
}

/// What became of an `Update` at the API server.
#[derive(Debug, PartialEq, Eq)]
pub enum Updated<T> {
    /// The patch was applied.
    Applied(T),
    /// Nothing to patch: the workload was left as it was.
    LeftAsItWas(T),
}

/// Everything a decision asks the checker to do besides its workload patch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub said: Vec<Said>,
    pub metric: Option<Metric>,
    /// `Some(true)`: follow the workload's rollout from the next round on; `Some(false)`:
    /// stop; `None`: as before.
    pub follow: Option<bool>,
}

impl Effects {
    pub fn saying(said: Said) -> Self {
        Self {
            said: vec![said],
            ..Self::default()
        }
    }
}

/// A log line, and the Events that go with it.
#[derive(Debug, PartialEq, Eq)]
pub struct Said {
    /// Said only the first time this key comes up (a decision that repeats every round).
    pub once: Option<String>,
    pub log: LogLine,
    pub events: Vec<Event>,
}

impl Said {
    pub fn log(log: LogLine) -> Self {
        Self {
            once: None,
            log,
            events: Vec::new(),
        }
    }

    pub fn with_event(mut self, event: Event) -> Self {
        self.events.push(event);
        self
    }

    pub fn once(mut self, key: String) -> Self {
        self.once = Some(key);
        self
    }
}

/// A Kubernetes Event on the workload. `reason` and `message` are product surface: people
/// grep them and alert on them.
/// `to` and `from` (`<container>=<digest>[,...]`) go on the Event as annotations, so that
/// a reader (the notifier) needs no parsing of the message.
#[derive(Debug, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
    /// The digests the Event is about: where the workload goes (or would go).
    pub to: Option<String>,
    /// Where it comes from, when that is known.
    pub from: Option<String>,
    /// A name of its own (after the workload's), for an Event several replicas may say:
    /// the API server keeps the first and refuses the rest. `None`: a unique name.
    pub name: Option<String>,
}

impl Event {
    pub fn normal(reason: &'static str, message: String) -> Self {
        Self {
            warning: false,
            reason,
            message,
            to: None,
            from: None,
            name: None,
        }
    }

    pub fn warning(reason: &'static str, message: String) -> Self {
        Self {
            warning: true,
            ..Self::normal(reason, message)
        }
    }

    /// Named `<workload>.<name>`: said by several replicas, recorded once.
    pub fn named(mut self, name: String) -> Self {
        self.name = Some(name);
        self
    }

    /// The digests the Event is about.
    pub fn about(mut self, to: impl ToString, from: Option<String>) -> Self {
        self.to = Some(to.to_string()).filter(|t| !t.is_empty());
        self.from = from.filter(|f| !f.is_empty());
        self
    }
}

/// A log line about the workload: its level, `decision` field, message and the fields
/// that apply (those left `None` are not logged).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogLine {
    pub warn: bool,
    pub decision: &'static str,
    pub message: Cow<'static, str>,
    pub fields: LogFields,
}

impl LogLine {
    pub fn info(
        decision: &'static str,
        message: impl Into<Cow<'static, str>>,
        fields: LogFields,
    ) -> Self {
        Self {
            warn: false,
            decision,
            message: message.into(),
            fields,
        }
    }

    pub fn warn(
        decision: &'static str,
        message: impl Into<Cow<'static, str>>,
        fields: LogFields,
    ) -> Self {
        Self {
            warn: true,
            decision,
            message: message.into(),
            fields,
        }
    }
}

/// The fields a decision's log line may carry.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogFields {
    pub changes: Option<String>,
    pub restarted_for: Option<String>,
    pub rolled_from: Option<String>,
    pub rolled_to: Option<String>,
    pub left: Option<String>,
    pub quarantined: Option<String>,
    pub reason: Option<String>,
    pub restarted_at: Option<String>,
    pub took: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Restart,
    Rollout(RolloutResult),
}
