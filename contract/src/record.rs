//! The format of pod-reloaded's `<container>=<digest>[,...]` annotations
//! (`restarted-for`, and the rollout annotations that reuse it), parsed and printed in
//! one place.

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
    fn garbled_entries_are_dropped() {
        let record = DigestRecord::parse("nonsense,=x,web=,ok=sha256:a");
        assert_eq!(record.to_string(), "ok=sha256:a");
        assert!(DigestRecord::parse("").is_empty());
    }
}
