//! Signed images only: before a restart, the new digest must carry a cosign signature
//! that the pod's trust policy accepts. `fetch` finds the signatures in the registry
//! (cosign v3's Sigstore bundles attached as OCI referrers, and the legacy
//! `sha256-<hex>.sig` tag); this module decides.
//!
//! Verification is offline, with sigstore-verify on `ring` (`ring_provider`): a bundle
//! with a transparency-log entry or an RFC 3161 timestamp is verified by it entirely
//! (certificate chain to the trusted root at the verified time, log proofs, timestamps).
//! A key-signed one with neither, which sigstore-verify refuses and `cosign verify
//! --insecure-ignore-tlog` accepts, is checked here: the signature over the DSSE envelope
//! or the simple-signing payload, with the policy's key; a certificate with neither is
//! checked here too, as valid now (what `cosign verify --insecure-ignore-tlog` does),
//! and only where the policy makes the log optional.

pub mod fetch;
mod ring_provider;

use base64::Engine as _;
use pod_reloaded_contract::trust::{pem_der, public_key_der, NamedPolicy, TransparencyLog};
use regex::Regex;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use sigstore_verify::crypto::VerificationKey;
use sigstore_verify::trust_root::{TrustedRoot, SIGSTORE_PRODUCTION_TRUSTED_ROOT};
use sigstore_verify::types::bundle::VerificationMaterialContent;
use sigstore_verify::types::{Bundle, DerPublicKey, Sha256Hash, SignatureBytes, SignatureContent};
use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy, Verifier};

/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER content.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

pub use fetch::{FoundSignatures, LegacySignature};

/// The in-toto predicate cosign v3 signs an image with; other predicates attached to the
/// digest (provenance, SBOM attestations) are not signatures of it.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// Whether a digest may be rolled out under a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureVerdict {
    /// Who signed: `key sha256:<fingerprint>` or the certificate's identity and issuer.
    Verified { signer: String },
    /// What failed.
    Rejected { reason: String },
    /// No signature at all (yet): signing often follows the push, so the digest waits
    /// for one, up to the policy's `waitForSignature`, before it is rejected.
    Unsigned { reason: String },
}

/// A trust policy ready to verify with: keys parsed, expressions compiled, the trusted
/// root loaded. Built once, when the sidecar starts with a policy.
pub struct SignaturePolicy {
    pub name: String,
    /// How long a digest without any signature waits for one.
    pub signature_wait: std::time::Duration,
    keys: Vec<PolicyKey>,
    keyless: Vec<(String, Regex)>,
    transparency_log: TransparencyLog,
    verifier: Verifier,
    /// Whether the trusted root has certificate-transparency logs to check SCTs with.
    has_ct_logs: bool,
    /// The trusted root's certificate authorities as trust anchors, for certificates
    /// checked without a verified signing time (`Verifier::new` validated them).
    certificate_authorities: Vec<rustls_pki_types::TrustAnchor<'static>>,
}

struct PolicyKey {
    der: DerPublicKey,
    /// `sha256:<hex>` of the key's DER, the form cosign's bundles hint with.
    fingerprint: String,
}

impl SignaturePolicy {
    pub fn new(named: &NamedPolicy) -> Result<Self, String> {
        ring_provider::install();
        let policy = &named.policy;
        let mut keys = Vec::new();
        for (i, pem) in policy.keys.iter().enumerate() {
            let der = public_key_der(pem).map_err(|e| format!("keys[{i}]: {e}"))?;
            let der = DerPublicKey::new(der);
            VerificationKey::from_spki(&der)
                .map_err(|e| format!("keys[{i}]: not a usable public key: {e}"))?;
            let fingerprint = format!("sha256:{}", hex::encode(Sha256::digest(der.as_bytes())));
            keys.push(PolicyKey { der, fingerprint });
        }
        let mut keyless = Vec::new();
        for (i, identity) in policy.keyless.iter().enumerate() {
            let regex = Regex::new(&identity.subject_reg_exp)
                .map_err(|e| format!("keyless[{i}].subjectRegExp: {e}"))?;
            keyless.push((identity.issuer.clone(), regex));
        }
        let root_json = if policy.trusted_root.trim().is_empty() {
            SIGSTORE_PRODUCTION_TRUSTED_ROOT
        } else {
            policy.trusted_root.as_str()
        };
        let root = TrustedRoot::from_json(root_json)
            .map_err(|e| format!("trustedRoot does not load: {e}"))?;
        let verifier =
            Verifier::new(&root).map_err(|e| format!("trustedRoot is not usable: {e}"))?;
        Ok(Self {
            name: named.name.clone(),
            signature_wait: policy.signature_wait()?,
            keys,
            keyless,
            transparency_log: policy.transparency_log,
            verifier,
            has_ct_logs: !root.ctlogs.is_empty(),
            certificate_authorities: root
                .certificate_authorities
                .iter()
                .flat_map(|ca| &ca.cert_chain.certificates)
                .filter_map(|cert| {
                    let der = CertificateDer::from(cert.raw_bytes.as_bytes());
                    webpki::anchor_from_trusted_cert(&der)
                        .ok()
                        .map(|anchor| anchor.to_owned())
                })
                .collect(),
        })
    }

    /// The verdict on `digest` (`sha256:<hex>`) given the signatures found for it: the
    /// first signature the policy accepts verifies it; none does, it is rejected with
    /// what each one lacked.
    pub fn verify(&self, digest: &str, found: &FoundSignatures) -> SignatureVerdict {
        let Some(hex) = digest.strip_prefix("sha256:") else {
            return SignatureVerdict::Rejected {
                reason: format!("{digest} is not a sha256 digest"),
            };
        };
        let mut reasons: Vec<String> = Vec::new();
        let mut note = |reason: String| {
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        };
        for bundle in &found.bundles {
            match self.verify_bundle_json(hex, bundle) {
                Ok(signer) => return SignatureVerdict::Verified { signer },
                Err(reason) => note(format!("bundle: {reason}")),
            }
        }
        for legacy in &found.legacy {
            match self.verify_legacy(hex, legacy) {
                Ok(signer) => return SignatureVerdict::Verified { signer },
                Err(reason) => note(format!("{}.sig: {reason}", fetch::tag_of(digest))),
            }
        }
        if reasons.is_empty() {
            return SignatureVerdict::Unsigned {
                reason: format!(
                    "no cosign signature found for {digest} (no Sigstore bundle referring to it, no {}.sig tag)",
                    fetch::tag_of(digest)
                ),
            };
        }
        SignatureVerdict::Rejected {
            reason: reasons.join("; "),
        }
    }

    fn verify_bundle_json(&self, hex: &str, json: &[u8]) -> Result<String, String> {
        let text = std::str::from_utf8(json).map_err(|_| "not UTF-8".to_string())?;
        let bundle = Bundle::from_json(text).map_err(|e| format!("does not parse: {e}"))?;
        let digest = Sha256Hash::from_hex(hex).map_err(|e| e.to_string())?;
        if let SignatureContent::DsseEnvelope(envelope) = &bundle.content {
            check_statement(hex, envelope.payload.as_bytes())?;
        }
        self.verify_bundle(&bundle, digest, None)
    }

    /// A bundle whose signature covers `artifact` (the image digest for a DSSE statement;
    /// the simple-signing payload of a legacy signature).
    fn verify_bundle(
        &self,
        bundle: &Bundle,
        digest: Sha256Hash,
        payload: Option<&[u8]>,
    ) -> Result<String, String> {
        let material = &bundle.verification_material;
        let has_time = !material.tlog_entries.is_empty()
            || !material
                .timestamp_verification_data
                .rfc3161_timestamps
                .is_empty();
        let artifact = || match payload {
            Some(payload) => sigstore_verify::types::Artifact::from_blob(payload),
            None => sigstore_verify::types::Artifact::from_digest(digest),
        };
        match &material.content {
            VerificationMaterialContent::PublicKey(_) => {
                if self.keys.is_empty() {
                    return Err(
                        "signed with a key; the policy trusts certificate identities only".into(),
                    );
                }
                let mut failures = Vec::new();
                for key in &self.keys {
                    let outcome = if has_time {
                        let mut policy = PublicKeyVerificationPolicy::new(key.der.clone());
                        if self.transparency_log == TransparencyLog::Optional {
                            policy = policy.skip_tlog_unsafe();
                        }
                        self.verifier
                            .verify(artifact(), bundle, &policy)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    } else if self.transparency_log == TransparencyLog::Required {
                        Err("no transparency-log entry, and the policy requires one".to_string())
                    } else {
                        verify_with_key(&key.der, bundle, payload)
                    };
                    match outcome {
                        Ok(()) => return Ok(format!("key {}", key.fingerprint)),
                        Err(reason) => failures.push(reason),
                    }
                }
                Err(summarize("not signed by a policy key", failures))
            }
            _ => {
                if self.keyless.is_empty() {
                    return Err("signed with a certificate; the policy trusts keys only".into());
                }
                if !has_time {
                    if self.transparency_log == TransparencyLog::Required {
                        return Err("no transparency-log entry, and the policy requires one".into());
                    }
                    return self.verify_certificate_now(bundle, payload);
                }
                let mut failures = Vec::new();
                for (issuer, subject) in &self.keyless {
                    let mut policy = VerificationPolicy::any_identity().require_issuer(issuer);
                    if self.transparency_log == TransparencyLog::Optional {
                        policy = policy.skip_tlog_unsafe();
                    }
                    if !self.has_ct_logs {
                        policy = policy.skip_sct();
                    }
                    match self.verifier.verify(artifact(), bundle, &policy) {
                        Ok(result) => {
                            let identity = result
                                .identity()
                                .map(|i| i.as_str().to_string())
                                .unwrap_or_default();
                            if subject.is_match(&identity) {
                                return Ok(format!("{identity} (issuer {issuer})"));
                            }
                            failures.push(format!(
                                "identity {identity} does not match {}",
                                subject.as_str()
                            ));
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                Err(summarize("no policy identity signed it", failures))
            }
        }
    }

    /// A certificate signature with neither log entry nor timestamp, under a policy
    /// where the log is optional: as `cosign verify --insecure-ignore-tlog` does, the
    /// certificate must chain to the trusted root and be valid now (a Fulcio certificate
    /// lives ten minutes: an untimed keyless signature is not accepted for long).
    fn verify_certificate_now(
        &self,
        bundle: &Bundle,
        payload: Option<&[u8]>,
    ) -> Result<String, String> {
        let der = bundle
            .signing_certificate()
            .ok_or("the bundle has no certificate")?;
        let info = sigstore_verify::crypto::parse_certificate_info(der)
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        let leaf = CertificateDer::from(der.as_bytes());
        let leaf = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        leaf.verify_for_usage(
            sigstore_verify::crypto::WEBPKI_VERIFICATION_ALGS,
            &self.certificate_authorities,
            &[],
            UnixTime::now(),
            webpki::KeyUsage::required(CODE_SIGNING),
            None,
            None,
        )
        .map_err(|e| format!("the certificate does not chain to the trusted root now: {e}"))?;
        verify_with_key(&info.public_key, bundle, payload)?;
        let identity = info
            .identity
            .as_ref()
            .map(|i| i.as_str().to_string())
            .unwrap_or_default();
        let issuer = info.issuer.unwrap_or_default();
        let mut failures = Vec::new();
        for (wanted_issuer, subject) in &self.keyless {
            if *wanted_issuer != issuer {
                failures.push(format!("issuer {issuer} is not {wanted_issuer}"));
            } else if !subject.is_match(&identity) {
                failures.push(format!(
                    "identity {identity} does not match {}",
                    subject.as_str()
                ));
            } else {
                return Ok(format!("{identity} (issuer {issuer})"));
            }
        }
        Err(summarize("no policy identity signed it", failures))
    }

    fn verify_legacy(&self, hex: &str, legacy: &LegacySignature) -> Result<String, String> {
        check_simple_signing(hex, &legacy.payload)?;
        let digest = Sha256Hash::from_hex(hex).map_err(|e| e.to_string())?;
        let bundle = legacy_bundle(legacy)?;
        self.verify_bundle(&bundle, digest, Some(&legacy.payload))
    }
}

fn summarize(what: &str, failures: Vec<String>) -> String {
    let mut failures = failures;
    failures.dedup();
    if failures.is_empty() {
        what.to_string()
    } else {
        format!("{what} ({})", failures.join("; "))
    }
}

/// A key signature without log entry or timestamp: the signature over the DSSE envelope's
/// PAE, or over the legacy payload.
fn verify_with_key(
    der: &DerPublicKey,
    bundle: &Bundle,
    payload: Option<&[u8]>,
) -> Result<(), String> {
    let key = VerificationKey::from_spki(der).map_err(|e| e.to_string())?;
    let (data, signature): (Vec<u8>, &SignatureBytes) = match (&bundle.content, payload) {
        (SignatureContent::DsseEnvelope(envelope), _) => (envelope.pae(), &envelope.signature.sig),
        (SignatureContent::MessageSignature(message), Some(payload)) => {
            (payload.to_vec(), &message.signature)
        }
        _ => return Err("a signature over an unknown artifact".into()),
    };
    key.verify(&data, signature)
        .map_err(|_| "the signature does not verify with this key".to_string())
}

/// A cosign v3 image signature: an in-toto statement of `COSIGN_SIGN_PREDICATE` whose
/// subject is the digest.
fn check_statement(hex: &str, payload: &[u8]) -> Result<(), String> {
    let statement: Value = serde_json::from_slice(payload)
        .map_err(|e| format!("the statement does not parse: {e}"))?;
    let predicate = statement["predicateType"].as_str().unwrap_or("");
    if predicate != COSIGN_SIGN_PREDICATE {
        return Err(format!(
            "an attestation of {predicate:?}, not a cosign signature"
        ));
    }
    let names_digest = statement["subject"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s["digest"]["sha256"].as_str() == Some(hex));
    if !names_digest {
        return Err(format!("the statement does not name sha256:{hex}"));
    }
    Ok(())
}

/// A legacy simple-signing payload must name the digest being verified.
fn check_simple_signing(hex: &str, payload: &[u8]) -> Result<(), String> {
    let payload: Value =
        serde_json::from_slice(payload).map_err(|e| format!("the payload does not parse: {e}"))?;
    let named = payload["critical"]["image"]["docker-manifest-digest"]
        .as_str()
        .unwrap_or("");
    if named != format!("sha256:{hex}") {
        return Err(format!(
            "the payload names {named:?}, not sha256:{hex} (digest mismatch)"
        ));
    }
    Ok(())
}

/// The Sigstore bundle a legacy signature amounts to: its signature over the payload, its
/// certificate (or the key hint), its Rekor entry (`dev.sigstore.cosign/bundle`, an
/// inclusion promise) and its RFC 3161 timestamp, as cosign and sigstore-go read them.
fn legacy_bundle(legacy: &LegacySignature) -> Result<Bundle, String> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut material = serde_json::Map::new();
    match &legacy.certificate {
        Some(pem) => {
            let der = pem_der(pem, "CERTIFICATE")
                .map_err(|e| format!("the certificate annotation: {e}"))?;
            material.insert("certificate".into(), json!({ "rawBytes": b64(&der) }));
        }
        None => {
            material.insert("publicKey".into(), json!({ "hint": "" }));
        }
    }
    let mut tlog_entries = Vec::new();
    if let Some(rekor) = &legacy.rekor_bundle {
        let rekor: Value = serde_json::from_str(rekor)
            .map_err(|e| format!("the Rekor bundle does not parse: {e}"))?;
        let entry = &rekor["Payload"];
        let body_b64 = entry["body"].as_str().unwrap_or("");
        let body: Value = base64::engine::general_purpose::STANDARD
            .decode(body_b64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("the Rekor entry's body does not parse")?;
        let log_id = hex::decode(entry["logID"].as_str().unwrap_or(""))
            .map_err(|_| "the Rekor entry's logID is not hex")?;
        tlog_entries.push(json!({
            "logIndex": entry["logIndex"].as_i64().unwrap_or(0).to_string(),
            "logId": { "keyId": b64(&log_id) },
            "kindVersion": { "kind": body["kind"], "version": body["apiVersion"] },
            "integratedTime": entry["integratedTime"].as_i64().unwrap_or(0).to_string(),
            "inclusionPromise": { "signedEntryTimestamp": rekor["SignedEntryTimestamp"] },
            "canonicalizedBody": body_b64,
        }));
    }
    material.insert("tlogEntries".into(), Value::Array(tlog_entries));
    let timestamps: Vec<Value> = legacy
        .timestamp
        .as_deref()
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .and_then(|t| t["SignedRFC3161Timestamp"].as_str().map(str::to_string))
        .map(|signed| json!({ "signedTimestamp": signed }))
        .into_iter()
        .collect();
    material.insert(
        "timestampVerificationData".into(),
        json!({ "rfc3161Timestamps": timestamps }),
    );
    let media_type = if legacy.rekor_bundle.is_some() {
        "application/vnd.dev.sigstore.bundle+json;version=0.1"
    } else {
        "application/vnd.dev.sigstore.bundle.v0.3+json"
    };
    let bundle = json!({
        "mediaType": media_type,
        "verificationMaterial": material,
        "messageSignature": {
            "messageDigest": { "algorithm": "SHA2_256", "digest": b64(&Sha256::digest(&legacy.payload)) },
            "signature": legacy.signature,
        },
    });
    Bundle::from_json(&bundle.to_string()).map_err(|e| format!("not a usable signature: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "a4eee50251b970f48c571c8aeb8f93b54c243bbfacc8669f97773b531f11f546";

    fn policy() -> SignaturePolicy {
        let named = NamedPolicy::from_json(
            r#"{"name":"release","keyless":[{"issuer":"https://issuer.example","subjectRegExp":".+"}]}"#,
        )
        .unwrap();
        SignaturePolicy::new(&named).unwrap()
    }

    #[test]
    fn only_a_cosign_signature_statement_about_this_digest_counts() {
        let statement = |predicate: &str, hex: &str| {
            json!({"_type": "https://in-toto.io/Statement/v1", "predicateType": predicate,
                "subject": [{"digest": {"sha256": hex}}], "predicate": {}})
            .to_string()
        };
        assert_eq!(
            check_statement(HEX, statement(COSIGN_SIGN_PREDICATE, HEX).as_bytes()),
            Ok(())
        );
        let provenance = check_statement(
            HEX,
            statement("https://slsa.dev/provenance/v1", HEX).as_bytes(),
        );
        assert!(provenance.unwrap_err().contains("an attestation of"));
        let other = check_statement(
            HEX,
            statement(COSIGN_SIGN_PREDICATE, &"0".repeat(64)).as_bytes(),
        );
        assert!(other.unwrap_err().contains("does not name"));
        assert!(check_statement(HEX, b"not json").is_err());
    }

    #[test]
    fn a_legacy_payload_must_name_the_digest() {
        let payload = |digest: &str| {
            json!({"critical": {"identity": {"docker-reference": "r"}, "image":
                {"docker-manifest-digest": digest}, "type": "cosign container image signature"},
                "optional": null})
            .to_string()
        };
        assert_eq!(
            check_simple_signing(HEX, payload(&format!("sha256:{HEX}")).as_bytes()),
            Ok(())
        );
        let mismatch = check_simple_signing(HEX, payload("sha256:00").as_bytes()).unwrap_err();
        assert!(mismatch.contains("digest mismatch"), "{mismatch}");
    }

    #[test]
    fn nothing_found_and_nothing_readable_are_rejections_that_say_so() {
        let policy = policy();
        let digest = format!("sha256:{HEX}");
        let SignatureVerdict::Unsigned { reason } =
            policy.verify(&digest, &FoundSignatures::default())
        else {
            panic!("verified nothing");
        };
        assert!(reason.starts_with("no cosign signature found"), "{reason}");
        let found = FoundSignatures {
            bundles: vec![b"{}".to_vec()],
            legacy: vec![LegacySignature {
                payload: b"{}".to_vec(),
                signature: "AAAA".into(),
                ..LegacySignature::default()
            }],
        };
        let SignatureVerdict::Rejected { reason } = policy.verify(&digest, &found) else {
            panic!("verified garbage");
        };
        assert!(reason.contains("bundle: does not parse"), "{reason}");
        assert!(reason.contains(".sig: the payload names \"\""), "{reason}");
    }

    #[test]
    fn an_unusable_policy_is_refused_when_the_sidecar_starts() {
        let named = NamedPolicy::from_json(
            r#"{"name":"p","keyless":[{"issuer":"i","subjectRegExp":"x"}],"trustedRoot":"{\"mediaType\":1}"}"#,
        )
        .unwrap();
        let error = SignaturePolicy::new(&named).err().unwrap();
        assert!(error.contains("trustedRoot"), "{error}");
    }
}
