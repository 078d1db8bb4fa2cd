//! Where cosign keeps an image's signatures, read with the checker's registry client
//! (same credentials, pull secrets and cloud logins as the tag itself):
//! - cosign v3: a Sigstore bundle in an OCI artifact whose `subject` is the digest, found
//!   through the referrers API, or, on registries without it, through the `sha256-<hex>`
//!   tag's index (the OCI 1.1 fallback);
//! - cosign's legacy format: the `sha256-<hex>.sig` tag, one simple-signing layer per
//!   signature, with the signature, certificate, Rekor bundle and timestamp annotations.

use std::collections::HashMap;

use serde::Deserialize;

use crate::registry::{RegistryClient, RegistryError, Repository};

const BUNDLE_MEDIA_TYPE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
const REKOR_BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
const TIMESTAMP_ANNOTATION: &str = "dev.sigstore.cosign/rfc3161timestamp";
/// Most signatures read per digest: each costs requests, and one good one is enough.
const MAX_SIGNATURES: usize = 16;

/// The signatures found for one digest.
#[derive(Debug, Default)]
pub struct FoundSignatures {
    /// Sigstore bundles (JSON) attached to the digest.
    pub bundles: Vec<Vec<u8>>,
    pub legacy: Vec<LegacySignature>,
}

/// One layer of a `.sig` tag.
#[derive(Debug, Default)]
pub struct LegacySignature {
    /// The simple-signing payload that was signed.
    pub payload: Vec<u8>,
    /// Base64 signature over the payload.
    pub signature: String,
    pub certificate: Option<String>,
    pub chain: Option<String>,
    /// Rekor's inclusion promise (`SignedEntryTimestamp` and the entry).
    pub rekor_bundle: Option<String>,
    /// `{"SignedRFC3161Timestamp": <base64>}`.
    pub timestamp: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Referrers {
    #[serde(default)]
    manifests: Vec<ArtifactDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    artifact_type: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactManifest {
    #[serde(default)]
    artifact_type: String,
    #[serde(default)]
    subject: Option<ArtifactDescriptor>,
    #[serde(default)]
    layers: Vec<ArtifactDescriptor>,
}

/// `sha256-<hex>`: the tag cosign derives from a digest.
pub fn tag_of(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// Finds the signatures of `digest` in `repository`. A registry error is an error (the
/// round fails and is retried); a signature that cannot be read as one is skipped, and
/// shows as "no signature" if nothing else is found.
pub async fn find(
    registry: &RegistryClient,
    repository: &Repository,
    digest: &str,
) -> Result<FoundSignatures, RegistryError> {
    let mut found = FoundSignatures::default();
    let index = match registry.referrers(repository, digest).await? {
        Some(index) => Some(index),
        None => {
            registry
                .manifest_if_any(repository, &tag_of(digest))
                .await?
        }
    };
    let referrers = index
        .and_then(|body| serde_json::from_slice::<Referrers>(&body).ok())
        .map(|r| r.manifests)
        .unwrap_or_default();
    for referrer in referrers
        .iter()
        .filter(|r| r.artifact_type.starts_with(BUNDLE_MEDIA_TYPE_PREFIX))
        .take(MAX_SIGNATURES)
    {
        let Some(body) = registry
            .manifest_if_any(repository, &referrer.digest)
            .await?
        else {
            continue;
        };
        let Ok(manifest) = serde_json::from_slice::<ArtifactManifest>(&body) else {
            continue;
        };
        let refers_to_digest = manifest
            .subject
            .as_ref()
            .is_some_and(|s| s.digest == digest);
        if !refers_to_digest || !manifest.artifact_type.starts_with(BUNDLE_MEDIA_TYPE_PREFIX) {
            continue;
        }
        for layer in manifest
            .layers
            .iter()
            .filter(|l| l.media_type.starts_with(BUNDLE_MEDIA_TYPE_PREFIX))
        {
            found
                .bundles
                .push(registry.blob(repository, &layer.digest).await?);
        }
    }

    let legacy_tag = format!("{}.sig", tag_of(digest));
    if let Some(body) = registry.manifest_if_any(repository, &legacy_tag).await? {
        let layers = serde_json::from_slice::<ArtifactManifest>(&body)
            .map(|m| m.layers)
            .unwrap_or_default();
        for layer in layers
            .into_iter()
            .filter(|l| l.media_type == SIMPLE_SIGNING)
            .take(MAX_SIGNATURES)
        {
            let Some(signature) = layer.annotations.get(SIGNATURE_ANNOTATION).cloned() else {
                continue;
            };
            let payload = registry.blob(repository, &layer.digest).await?;
            let annotation = |name: &str| layer.annotations.get(name).cloned();
            found.legacy.push(LegacySignature {
                payload,
                signature,
                certificate: annotation(CERTIFICATE_ANNOTATION).filter(|c| !c.is_empty()),
                chain: annotation(CHAIN_ANNOTATION).filter(|c| !c.is_empty()),
                rekor_bundle: annotation(REKOR_BUNDLE_ANNOTATION).filter(|c| !c.is_empty()),
                timestamp: annotation(TIMESTAMP_ANNOTATION).filter(|c| !c.is_empty()),
            });
        }
    }
    Ok(found)
}
