//! Is this a change? The comparison rules of the README's "How the sidecar decides", as
//! pure functions.
//!
//! Up to date when the running digest equals the remote digest, or the remote is an index
//! and the running digest is one of its manifests, or the running bare `sha256:` is the
//! config digest of the remote manifest for our platform. Anything else is a change; an
//! answer we do not understand is an error, never a change.

use pod_reloaded_contract::image::RunningDigest;

use crate::registry::manifest::{ManifestKind, RemoteDetails, RemoteTag};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    UpToDate,
    Changed,
    /// The tag's digest moved (another platform rebuilt, an attestation added), but the
    /// image for this pod's platform is the same: not a change.
    Equivalent,
}

/// A change of the tag's digest, looked at for this pod's platform: the manifest the pod
/// runs for it against the one the tag serves for it. Unknown on either side (an index
/// without our platform) stays a change, as before platforms were compared.
pub fn decide_for_platform(running: Option<&str>, remote: Option<&str>) -> Verdict {
    match (running, remote) {
        (Some(running), Some(remote)) if running == remote => Verdict::Equivalent,
        _ => Verdict::Changed,
    }
}

/// What the HEAD alone decides; `None` when the manifest must be inspected.
pub fn decide_from_head(running: &RunningDigest, remote: &RemoteTag) -> Option<Verdict> {
    if running.digest() == remote.digest {
        return Some(Verdict::UpToDate);
    }
    match (running, remote.kind) {
        // A single remote manifest with another digest: nothing else can match.
        (RunningDigest::Manifest(_), ManifestKind::Manifest) => Some(Verdict::Changed),
        // The running digest may be one of the index's manifests, or a config digest.
        _ => None,
    }
}

/// The verdict once the manifest was inspected. `Err` when the answer does not let us
/// tell (e.g. no manifest for our platform): that is never a change.
pub fn decide_from_details(
    running: &RunningDigest,
    remote: &RemoteTag,
    details: &RemoteDetails,
) -> Result<Verdict, String> {
    if let Some(verdict) = decide_from_head(running, remote) {
        return Ok(verdict);
    }
    match running {
        RunningDigest::Manifest(digest) => {
            Ok(if details.index_manifests.iter().any(|d| d == digest) {
                Verdict::UpToDate
            } else {
                Verdict::Changed
            })
        }
        RunningDigest::Config(digest) => match &details.platform_config {
            Some(config) if config == digest => Ok(Verdict::UpToDate),
            Some(_) => Ok(Verdict::Changed),
            None => Err("the remote manifest has no config digest for this platform".to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use pod_reloaded_test_support::digest;

    fn remote(c: char, kind: ManifestKind) -> RemoteTag {
        RemoteTag {
            digest: digest(c),
            kind,
        }
    }

    #[test]
    fn equal_digest_is_up_to_date_for_any_kind() {
        for kind in [ManifestKind::Index, ManifestKind::Manifest] {
            assert_eq!(
                decide_from_head(&RunningDigest::Manifest(digest('a')), &remote('a', kind)),
                Some(Verdict::UpToDate)
            );
            assert_eq!(
                decide_from_head(&RunningDigest::Config(digest('a')), &remote('a', kind)),
                Some(Verdict::UpToDate)
            );
        }
    }

    #[test]
    fn another_single_manifest_is_a_change_without_a_get() {
        assert_eq!(
            decide_from_head(
                &RunningDigest::Manifest(digest('a')),
                &remote('b', ManifestKind::Manifest)
            ),
            Some(Verdict::Changed)
        );
    }

    #[test]
    fn an_index_or_a_config_digest_needs_the_manifest() {
        assert_eq!(
            decide_from_head(
                &RunningDigest::Manifest(digest('a')),
                &remote('b', ManifestKind::Index)
            ),
            None
        );
        assert_eq!(
            decide_from_head(
                &RunningDigest::Config(digest('a')),
                &remote('b', ManifestKind::Manifest)
            ),
            None
        );
        assert_eq!(
            decide_from_head(
                &RunningDigest::Config(digest('a')),
                &remote('b', ManifestKind::Index)
            ),
            None
        );
    }

    #[test]
    fn a_child_of_the_remote_index_is_up_to_date() {
        let index = remote('i', ManifestKind::Index);
        let details = RemoteDetails {
            index_manifests: vec![digest('x'), digest('a')],
            platform_config: None,
            platform_manifest: None,
        };
        assert_eq!(
            decide_from_details(&RunningDigest::Manifest(digest('a')), &index, &details),
            Ok(Verdict::UpToDate)
        );
        assert_eq!(
            decide_from_details(&RunningDigest::Manifest(digest('z')), &index, &details),
            Ok(Verdict::Changed)
        );
    }

    #[test]
    fn the_same_platform_image_under_a_moved_index_is_equivalent() {
        assert_eq!(
            decide_for_platform(Some("sha256:a"), Some("sha256:a")),
            Verdict::Equivalent
        );
        assert_eq!(
            decide_for_platform(Some("sha256:a"), Some("sha256:b")),
            Verdict::Changed
        );
        assert_eq!(
            decide_for_platform(None, Some("sha256:b")),
            Verdict::Changed
        );
        assert_eq!(
            decide_for_platform(Some("sha256:a"), None),
            Verdict::Changed
        );
    }

    #[test]
    fn a_bare_config_digest_is_compared_with_the_platform_config() {
        let tag = remote('m', ManifestKind::Manifest);
        let details = |config: Option<char>| RemoteDetails {
            index_manifests: vec![],
            platform_config: config.map(digest),
            platform_manifest: None,
        };
        let running = RunningDigest::Config(digest('c'));
        assert_eq!(
            decide_from_details(&running, &tag, &details(Some('c'))),
            Ok(Verdict::UpToDate)
        );
        assert_eq!(
            decide_from_details(&running, &tag, &details(Some('d'))),
            Ok(Verdict::Changed)
        );
        assert!(
            decide_from_details(&running, &tag, &details(None)).is_err(),
            "unknown is never a change"
        );
    }
}
