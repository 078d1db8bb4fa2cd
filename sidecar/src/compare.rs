//! Is this a change? The comparison rules of DESIGN.md step 3, as pure functions.
//!
//! Up to date when the running digest equals the remote digest, or the remote is an index
//! and the running digest is one of its manifests, or the running bare `sha256:` is the
//! config digest of the remote manifest for our platform. Anything else is a change; an
//! answer we do not understand is an error, never a change.

use pod_reloaded_contract::image::RunningDigest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The `Accept` header of every manifest request: indexes first, so the registry answers
/// with what a multi-arch pull would resolve.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    Index,
    Manifest,
}

impl ManifestKind {
    /// `None` for a media type we do not understand.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type.split(';').next().unwrap_or("").trim() {
            OCI_INDEX | DOCKER_MANIFEST_LIST => Some(Self::Index),
            OCI_MANIFEST | DOCKER_MANIFEST => Some(Self::Manifest),
            _ => None,
        }
    }
}

/// What the tag points to, from the manifest HEAD (or a GET when HEAD had no digest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteTag {
    pub digest: String,
    pub kind: ManifestKind,
}

/// What a GET of the remote manifest adds, fetched only when the HEAD did not decide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteDetails {
    /// Digests of the manifests an index lists (empty for a single manifest).
    pub index_manifests: Vec<String>,
    /// Config digest of the manifest for our platform.
    pub platform_config: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    UpToDate,
    Changed,
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

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn remote(c: char, kind: ManifestKind) -> RemoteTag {
        RemoteTag {
            digest: digest(c),
            kind,
        }
    }

    #[test]
    fn media_types() {
        assert_eq!(
            ManifestKind::from_media_type(OCI_INDEX),
            Some(ManifestKind::Index)
        );
        assert_eq!(
            ManifestKind::from_media_type(DOCKER_MANIFEST_LIST),
            Some(ManifestKind::Index)
        );
        assert_eq!(
            ManifestKind::from_media_type(OCI_MANIFEST),
            Some(ManifestKind::Manifest)
        );
        assert_eq!(
            ManifestKind::from_media_type(
                "application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"
            ),
            Some(ManifestKind::Manifest)
        );
        assert_eq!(
            ManifestKind::from_media_type(
                "application/vnd.docker.distribution.manifest.v1+prettyjws"
            ),
            None
        );
        assert_eq!(ManifestKind::from_media_type("text/html"), None);
        assert_eq!(ManifestKind::from_media_type(""), None);
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
    fn a_bare_config_digest_is_compared_with_the_platform_config() {
        let tag = remote('m', ManifestKind::Manifest);
        let details = |config: Option<char>| RemoteDetails {
            index_manifests: vec![],
            platform_config: config.map(digest),
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
