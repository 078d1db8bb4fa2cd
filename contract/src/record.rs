//! The formats of pod-reloaded's annotations, parsed and printed in one place:
//! `<container>=<digest>[,...]` (`restarted-for`, `rolled-from`, `quarantined`) and the
//! workload's rollout record (`pod-reloaded.io/rollout`).

use std::collections::BTreeMap;

/// Digests by container name, printed sorted by container so the same record is always
/// the same string (replicas compare them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestRecord(BTreeMap<String, String>);

impl DigestRecord {
    /// Reads a record. Entries that are not `name=value` are dropped, never trusted: a
    /// garbled record means "nothing recorded" for those containers.
    pub fn parse(value: &str) -> Self {
        Self(
            value
                .split(',')
                .filter_map(|entry| entry.split_once('='))
                .map(|(container, digest)| {
                    (container.trim().to_string(), digest.trim().to_string())
                })
                .filter(|(container, digest)| !container.is_empty() && !digest.is_empty())
                .collect(),
        )
    }

    pub fn get(&self, container: &str) -> Option<&str> {
        self.0.get(container).map(String::as_str)
    }

    pub fn insert(&mut self, container: &str, digest: &str) {
        self.0.insert(container.to_string(), digest.to_string());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(c, d)| (c.as_str(), d.as_str()))
    }
}

impl std::fmt::Display for DigestRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (container, digest)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{container}={digest}")?;
        }
        Ok(())
    }
}

/// A time as pod-reloaded's annotations write it (and `kubectl rollout restart` writes
/// `restartedAt`): RFC 3339 in UTC, to the second.
pub fn timestamp_text(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// How the last rollout pod-reloaded started went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutState {
    /// Started; its sidecars follow it.
    Progressing,
    Succeeded,
    /// Failed and halted: the new digests are quarantined, nothing rolled back.
    Failed,
    /// Failed and rolled back to the digests the pods ran before.
    RolledBack,
    /// A person rolled the template back (`kubectl rollout undo`): the digests they left
    /// are quarantined so pod-reloaded does not roll forward to them again.
    Undone,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progressing => "progressing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled-back",
            Self::Undone => "undone",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            Self::Progressing,
            Self::Succeeded,
            Self::Failed,
            Self::RolledBack,
            Self::Undone,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// `pod-reloaded.io/rollout` on the workload's metadata:
/// `<state> <restartedAt> <container>=<digest>[,...]`, the restart pod-reloaded made last
/// (the `restartedAt` and `restarted-for` it wrote) and how it went. Kept on the metadata
/// so that it changes nothing in the pods, survives `kubectl rollout undo` (which restores
/// an older template) and lets every replica agree on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutRecord {
    pub state: RolloutState,
    pub restarted_at: String,
    pub rolled_to: DigestRecord,
}

impl RolloutRecord {
    /// `None` for a value that is not a record (then there is no rollout to follow).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split_whitespace();
        let state = RolloutState::parse(parts.next()?)?;
        let restarted_at = parts.next()?.to_string();
        let rolled_to = DigestRecord::parse(parts.next()?);
        if parts.next().is_some() || rolled_to.is_empty() {
            return None;
        }
        Some(Self {
            state,
            restarted_at,
            rolled_to,
        })
    }

    pub fn with_state(&self, state: RolloutState) -> Self {
        Self {
            state,
            ..self.clone()
        }
    }
}

impl std::fmt::Display for RolloutRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.state.as_str(),
            self.restarted_at,
            self.rolled_to
        )
    }
}

/// `pod-reloaded.io/pending` on the workload's metadata: when each container's new digest
/// was first seen served by its tag, `<container>=<digest>@<RFC 3339>[,...]`. On the
/// metadata so replicas and restarted sidecars agree on one clock; a tag that moves
/// again starts it anew.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingRecord(std::collections::BTreeMap<String, (String, jiff::Timestamp)>);

impl PendingRecord {
    /// Entries that do not parse are dropped (their clock starts again).
    pub fn parse(value: &str) -> Self {
        Self(
            value
                .split(',')
                .filter_map(|entry| {
                    let (container, rest) = entry.split_once('=')?;
                    let (digest, since) = rest.rsplit_once('@')?;
                    let since = since.trim().parse().ok()?;
                    Some((
                        container.trim().to_string(),
                        (digest.trim().to_string(), since),
                    ))
                })
                .collect(),
        )
    }

    /// When `digest` was first seen for `container`, if it is the one recorded.
    pub fn since(&self, container: &str, digest: &str) -> Option<jiff::Timestamp> {
        self.0
            .get(container)
            .filter(|(recorded, _)| recorded == digest)
            .map(|(_, since)| *since)
    }

    pub fn insert(&mut self, container: &str, digest: &str, since: jiff::Timestamp) {
        self.0
            .insert(container.to_string(), (digest.to_string(), since));
    }

    pub fn remove(&mut self, container: &str) {
        self.0.remove(container);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for PendingRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (container, (digest, since))) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{container}={digest}@{}", timestamp_text(*since))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_sorted() {
        let mut record = DigestRecord::parse("web=sha256:b, api = sha256:a");
        assert_eq!(record.get("api"), Some("sha256:a"));
        assert_eq!(record.to_string(), "api=sha256:a,web=sha256:b");
        record.insert("web", "sha256:c");
        assert_eq!(DigestRecord::parse(&record.to_string()), record);
    }

    #[test]
    fn rollout_records_round_trip() {
        let text = "progressing 2026-11-24T10:00:00Z web=sha256:a,api=sha256:b";
        let record = RolloutRecord::parse(text).unwrap();
        assert_eq!(record.state, RolloutState::Progressing);
        assert_eq!(record.restarted_at, "2026-11-24T10:00:00Z");
        assert_eq!(record.rolled_to.get("web"), Some("sha256:a"));
        let done = record.with_state(RolloutState::RolledBack);
        assert_eq!(
            done.to_string(),
            "rolled-back 2026-11-24T10:00:00Z api=sha256:b,web=sha256:a"
        );
        assert_eq!(RolloutRecord::parse(&done.to_string()), Some(done));
        for bad in [
            "",
            "progressing",
            "sideways 2026 web=x",
            "succeeded t",
            "succeeded t x y",
        ] {
            assert_eq!(RolloutRecord::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn pending_records_round_trip() {
        let text = "web=sha256:a@2026-11-24T10:00:00Z,api=sha256:b@2026-11-24T11:00:00Z";
        let mut record = PendingRecord::parse(text);
        let ten: jiff::Timestamp = "2026-11-24T10:00:00Z".parse().unwrap();
        assert_eq!(record.since("web", "sha256:a"), Some(ten));
        assert_eq!(
            record.since("web", "sha256:other"),
            None,
            "another digest starts anew"
        );
        record.remove("api");
        assert_eq!(record.to_string(), "web=sha256:a@2026-11-24T10:00:00Z");
        assert!(PendingRecord::parse("web=sha256:a@yesterday,junk").is_empty());
    }

    #[test]
    fn garbled_entries_are_dropped() {
        let record = DigestRecord::parse("nonsense,=x,web=,ok=sha256:a");
        assert_eq!(record.to_string(), "ok=sha256:a");
        assert!(DigestRecord::parse("").is_empty());
    }
}
