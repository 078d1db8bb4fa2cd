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

/// What a comparison needs next from the registry, or its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// The tag's manifest (the index, or the manifest for this platform, with its config
    /// digest when `want_config`).
    Details {
        want_config: bool,
    },
    /// The manifest for this platform in the index the pod runs (`digest`); `None` when
    /// the registry no longer has that index.
    RunningPlatformManifest {
        digest: String,
    },
    Verdict(Verdict),
}

/// One comparison of a running digest with the tag's, from the HEAD's answer to the
/// verdict: it says what it needs next (`need`) and is given it (`details`,
/// `running_platform_manifest`), so the order of the registry requests is decided here.
pub struct Comparison {
    running: RunningDigest,
    remote: RemoteTag,
    need: Need,
    /// What the tag serves for this platform, once the details are known.
    remote_platform_manifest: Option<String>,
}

impl Comparison {
    /// From the HEAD's answer.
    pub fn new(running: &RunningDigest, remote: &RemoteTag) -> Self {
        let need = match decide_from_head(running, remote) {
            Some(verdict) => Need::Verdict(verdict),
            None => Need::Details {
                want_config: matches!(running, RunningDigest::Config(_)),
            },
        };
        Self {
            running: running.clone(),
            remote: remote.clone(),
            need,
            remote_platform_manifest: None,
        }
    }

    pub fn need(&self) -> &Need {
        &self.need
    }

    /// The tag's manifest. `Err` when it does not let us tell: never a change.
    pub fn details(&mut self, details: &RemoteDetails) -> Result<(), String> {
        let verdict = decide_from_details(&self.running, &self.remote, details)?;
        self.remote_platform_manifest = details.platform_manifest.clone();
        self.need = match (verdict, &self.running) {
            // The tag's index moved and the pod runs another index (or a child of another
            // one): compare what each holds for our platform. One more GET.
            (Verdict::Changed, RunningDigest::Manifest(digest)) => Need::RunningPlatformManifest {
                digest: digest.clone(),
            },
            (verdict, _) => Need::Verdict(verdict),
        };
        Ok(())
    }

    /// The running index's manifest for this platform (`None`: unknown, or gone).
    pub fn running_platform_manifest(&mut self, manifest: Option<&str>) {
        self.need = Need::Verdict(decide_for_platform(
            manifest,
            self.remote_platform_manifest.as_deref(),
        ));
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

    #[test]
    fn a_comparison_asks_only_for_what_the_last_answer_left_open() {
        let index = remote('b', ManifestKind::Index);
        // The HEAD decides.
        let same = Comparison::new(&RunningDigest::Manifest(digest('b')), &index);
        assert_eq!(same.need(), &Need::Verdict(Verdict::UpToDate));
        let single = remote('b', ManifestKind::Manifest);
        let moved = Comparison::new(&RunningDigest::Manifest(digest('a')), &single);
        assert_eq!(moved.need(), &Need::Verdict(Verdict::Changed));

        // A bare config digest needs the platform's config.
        let config = Comparison::new(&RunningDigest::Config(digest('c')), &index);
        assert_eq!(config.need(), &Need::Details { want_config: true });

        // The pod runs one of the index's manifests: up to date after one GET.
        let mut child = Comparison::new(&RunningDigest::Manifest(digest('d')), &index);
        assert_eq!(child.need(), &Need::Details { want_config: false });
        let details = RemoteDetails {
            index_manifests: vec![digest('d'), digest('e')],
            platform_config: None,
            platform_manifest: Some(digest('d')),
        };
        child.details(&details).unwrap();
        assert_eq!(child.need(), &Need::Verdict(Verdict::UpToDate));

        // Another index: its manifest for our platform decides, one more GET.
        let mut other = Comparison::new(&RunningDigest::Manifest(digest('a')), &index);
        other.details(&details).unwrap();
        assert_eq!(
            other.need(),
            &Need::RunningPlatformManifest {
                digest: digest('a')
            }
        );
        other.running_platform_manifest(Some(&digest('d')));
        assert_eq!(other.need(), &Need::Verdict(Verdict::Equivalent));
        let mut rebuilt = Comparison::new(&RunningDigest::Manifest(digest('a')), &index);
        rebuilt.details(&details).unwrap();
        rebuilt.running_platform_manifest(None);
        assert_eq!(rebuilt.need(), &Need::Verdict(Verdict::Changed));
    }
}
