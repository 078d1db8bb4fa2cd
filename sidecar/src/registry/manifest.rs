//! Manifest media types and the few fields of manifests and indexes the checker reads.
//! Small serde types instead of a full OCI model: the checker reads digests and
//! platforms, nothing else, and unknown fields are ignored.

use serde::Deserialize;

use crate::platform::Platform;

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

/// What the tag points to, from the manifest HEAD (or a GET when HEAD did not say).
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
    /// The manifest for our platform: an index's child, or a single manifest itself.
    pub platform_manifest: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub platform: Option<DescriptorPlatform>,
}

#[derive(Debug, Deserialize)]
pub struct DescriptorPlatform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An OCI image index or Docker manifest list.
#[derive(Debug, Deserialize)]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

/// An OCI image manifest or Docker v2 manifest.
#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub config: Descriptor,
}

/// The `mediaType` a manifest body declares (OCI makes it optional; Docker's is always set).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaTypeOnly {
    #[serde(default)]
    pub media_type: Option<String>,
}

impl Index {
    /// The manifest for `wanted`: os and architecture must match; the variant when asked
    /// for, else the first of that architecture (as containerd picks).
    pub fn manifest_for(&self, wanted: &Platform) -> Option<&str> {
        let mut first = None;
        for manifest in &self.manifests {
            let Some(platform) = &manifest.platform else {
                continue;
            };
            if platform.os != wanted.os || platform.architecture != wanted.architecture {
                continue;
            }
            if wanted.variant.is_none() || platform.variant == wanted.variant {
                return Some(&manifest.digest);
            }
            first.get_or_insert(manifest.digest.as_str());
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_platform_child_is_picked_by_os_architecture_and_variant() {
        let index: Index = serde_json::from_str(
            r#"{"schemaVersion": 2, "manifests": [
                {"mediaType": "x", "digest": "sha256:att", "size": 1, "annotations": {"vnd.docker.reference.type": "attestation-manifest"}, "platform": {"os": "unknown", "architecture": "unknown"}},
                {"digest": "sha256:v7", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"digest": "sha256:arm64", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"digest": "sha256:amd64", "platform": {"os": "linux", "architecture": "amd64"}}
            ]}"#,
        )
        .unwrap();
        let platform = |text| Platform::parse(text).unwrap();
        assert_eq!(
            index.manifest_for(&platform("linux/amd64")),
            Some("sha256:amd64")
        );
        assert_eq!(
            index.manifest_for(&platform("linux/arm64")),
            Some("sha256:arm64")
        );
        assert_eq!(
            index.manifest_for(&platform("linux/arm/v7")),
            Some("sha256:v7")
        );
        assert_eq!(index.manifest_for(&platform("linux/s390x")), None);
        assert!(serde_json::from_str::<Index>(r#"{"manifests": [{"size": 1}]}"#).is_err());
        let manifest: Manifest =
            serde_json::from_str(r#"{"config": {"digest": "sha256:c", "size": 2}, "layers": []}"#)
                .unwrap();
        assert_eq!(manifest.config.digest, "sha256:c");
    }
}
