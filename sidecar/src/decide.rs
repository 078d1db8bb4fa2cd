//! Decide: restart, skip or warn, given the workload's template annotations (DESIGN.md step 4) as
//! pure functions.
//!
//! `pod-reloaded.io/restarted-for` records `<container>=<digest>` entries (comma-separated
//! when several containers are watched). A change already recorded is never restarted for
//! again: another replica did it, or the new pods still run the old digest (the loop
//! guard).

use std::collections::BTreeMap;

use jiff::Timestamp;
use pod_reloaded_contract as contract;
use pod_reloaded_contract::record::DigestRecord;
use serde_json::{json, Value};

/// A watched container whose tag now points to another digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub container: String,
    pub digest: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Patch the template: `restarted_for` is the annotation's new value.
    Restart { restarted_for: String },
    /// Every change is already recorded.
    AlreadyRestarted {
        /// This pod was created after that restart and still runs the old digest: the new
        /// pull did not take (a Warning); otherwise this pod is simply waiting to be
        /// replaced by the rollout another replica started.
        pull_did_not_take: bool,
    },
}

/// Decides for `changes` (non-empty) given the workload template's annotations and when
/// this pod was created.
pub fn decide(
    template_annotations: &BTreeMap<String, String>,
    changes: &[Change],
    pod_created: Option<Timestamp>,
) -> RestartDecision {
    let mut record = template_annotations
        .get(contract::ANNOTATION_RESTARTED_FOR)
        .map(|v| DigestRecord::parse(v))
        .unwrap_or_default();
    let new: Vec<&Change> = changes
        .iter()
        .filter(|c| record.get(&c.container) != Some(c.digest.as_str()))
        .collect();
    if new.is_empty() {
        let restarted_at = template_annotations
            .get(contract::ANNOTATION_RESTARTED_AT)
            .and_then(|t| t.parse::<Timestamp>().ok());
        let pull_did_not_take = match (pod_created, restarted_at) {
            // restartedAt has second precision: a pod of that same second predates it.
            (Some(created), Some(restarted)) => created > restarted,
            _ => false,
        };
        return RestartDecision::AlreadyRestarted { pull_did_not_take };
    }
    for change in new {
        record.insert(&change.container, &change.digest);
    }
    RestartDecision::Restart {
        restarted_for: record.to_string(),
    }
}

/// The merge patch that rolls the workload, guarded by the `resourceVersion` we read so
/// that of N replicas exactly one patch wins.
pub fn restart_patch(
    resource_version: &str,
    restarted_at: Timestamp,
    restarted_for: &str,
) -> Value {
    json!({
        "metadata": { "resourceVersion": resource_version },
        "spec": { "template": { "metadata": { "annotations": {
            contract::ANNOTATION_RESTARTED_AT: restarted_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            contract::ANNOTATION_RESTARTED_FOR: restarted_for,
        }}}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn change(container: &str, c: char) -> Change {
        Change {
            container: container.into(),
            digest: digest(c),
        }
    }

    fn annotations(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn first_change_restarts() {
        assert_eq!(
            decide(&BTreeMap::new(), &[change("web", 'a')], None),
            RestartDecision::Restart {
                restarted_for: format!("web={}", digest('a'))
            }
        );
    }

    #[test]
    fn a_recorded_change_is_not_restarted_again() {
        let template = annotations(&[
            (
                contract::ANNOTATION_RESTARTED_FOR,
                format!("web={}", digest('a')),
            ),
            (
                contract::ANNOTATION_RESTARTED_AT,
                "2026-11-24T10:00:00Z".into(),
            ),
        ]);
        let older: Timestamp = "2026-11-24T09:00:00Z".parse().unwrap();
        let newer: Timestamp = "2026-11-24T10:00:05Z".parse().unwrap();
        assert_eq!(
            decide(&template, &[change("web", 'a')], Some(older)),
            RestartDecision::AlreadyRestarted {
                pull_did_not_take: false
            }
        );
        assert_eq!(
            decide(&template, &[change("web", 'a')], Some(newer)),
            RestartDecision::AlreadyRestarted {
                pull_did_not_take: true
            }
        );
    }

    #[test]
    fn a_newer_digest_restarts_again_and_other_entries_are_kept() {
        let template = annotations(&[(
            contract::ANNOTATION_RESTARTED_FOR,
            format!("web={},sidecar={}", digest('a'), digest('s')),
        )]);
        assert_eq!(
            decide(
                &template,
                &[change("web", 'b'), change("sidecar", 's')],
                None
            ),
            RestartDecision::Restart {
                restarted_for: format!("sidecar={},web={}", digest('s'), digest('b'))
            }
        );
    }

    #[test]
    fn a_garbled_record_is_ignored_not_trusted() {
        let template = annotations(&[(
            contract::ANNOTATION_RESTARTED_FOR,
            "nonsense,=x,web=".into(),
        )]);
        assert!(matches!(
            decide(&template, &[change("web", 'a')], None),
            RestartDecision::Restart { .. }
        ));
    }

    #[test]
    fn patch_carries_both_annotations_and_the_precondition() {
        let at: Timestamp = "2026-11-24T10:00:00.123Z".parse().unwrap();
        let patch = restart_patch("42", at, "web=x");
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        let annotations = &patch["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations[contract::ANNOTATION_RESTARTED_AT],
            "2026-11-24T10:00:00Z"
        );
        assert_eq!(annotations[contract::ANNOTATION_RESTARTED_FOR], "web=x");
    }
}
