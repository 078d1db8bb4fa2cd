//! Trust policies: the signatures a new digest needs before pod-reloaded restarts to it.
//! The cluster's operator writes them in one file the webhook reads
//! (`--trust-policy-file`, from the ConfigMap `pod-reloaded-trust`); the webhook gives each
//! injected sidecar the policy its pod names, as JSON in `IMAGE_CHECKER_VERIFY_POLICY`.
//!
//! ```yaml
//! policies:
//!   release:
//!     keys: ["-----BEGIN PUBLIC KEY-----\n..."]
//!     keyless:
//!       - issuer: https://token.actions.githubusercontent.com
//!         subjectRegExp: ^https://github\.com/acme/.+@refs/heads/main$
//!     transparencyLog: required   # or optional
//!     trustedRoot: ""             # a Sigstore trusted_root.json; empty: public-good's
//! ```

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Largest policy file read: a few keys and a trusted root are a few KiB.
pub const MAX_POLICY_FILE_BYTES: usize = 1024 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustPolicies {
    #[serde(default)]
    pub policies: BTreeMap<String, TrustPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustPolicy {
    /// Cosign public keys (PEM): a signature by any one of them is enough.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Certificate identities (keyless signing): any one of them is enough.
    #[serde(default)]
    pub keyless: Vec<KeylessIdentity>,
    #[serde(default)]
    pub transparency_log: TransparencyLog,
    /// How long a new digest without any signature waits for one (signing follows the
    /// push in most pipelines) before it is quarantined: `0s` at once; default 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_signature: Option<String>,
    /// A Sigstore `trusted_root.json` (a private Sigstore, or a test one); empty: the
    /// public-good instance's, built into the sidecar.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trusted_root: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeylessIdentity {
    /// The OIDC issuer the certificate names, exactly.
    pub issuer: String,
    /// A regular expression the certificate's identity (its SAN) must match.
    pub subject_reg_exp: String,
}

/// Whether a signature must come with a transparency-log entry the trusted root's log
/// vouches for. `optional` is for signers that cannot reach a log (air-gapped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransparencyLog {
    #[default]
    Required,
    Optional,
}

/// A policy with its name, as the sidecar gets it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedPolicy {
    pub name: String,
    #[serde(flatten)]
    pub policy: TrustPolicy,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrustError {
    #[error("the trust policy file does not parse: {0}")]
    Parse(String),
    #[error("the trust policy file is larger than {MAX_POLICY_FILE_BYTES} bytes")]
    TooLarge,
    #[error("trust policy {name:?}: {problem}")]
    Invalid { name: String, problem: String },
}

impl TrustPolicies {
    /// Parses and validates a policy file (YAML, or JSON, which YAML includes).
    pub fn parse(text: &str) -> Result<Self, TrustError> {
        if text.len() > MAX_POLICY_FILE_BYTES {
            return Err(TrustError::TooLarge);
        }
        let policies: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| TrustError::Parse(e.to_string()))?
        };
        for (name, policy) in &policies.policies {
            validate(name, policy).map_err(|problem| TrustError::Invalid {
                name: name.clone(),
                problem,
            })?;
        }
        Ok(policies)
    }

    pub fn get(&self, name: &str) -> Option<NamedPolicy> {
        self.policies.get(name).map(|policy| NamedPolicy {
            name: name.to_string(),
            policy: policy.clone(),
        })
    }

    /// The names, for messages.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.policies.keys().map(String::as_str).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }
}

/// The default of `waitForSignature`.
pub const DEFAULT_WAIT_FOR_SIGNATURE: std::time::Duration = std::time::Duration::from_secs(600);

impl TrustPolicy {
    /// `waitForSignature` (0s to 24h), or its default.
    pub fn signature_wait(&self) -> Result<std::time::Duration, String> {
        match &self.wait_for_signature {
            None => Ok(DEFAULT_WAIT_FOR_SIGNATURE),
            Some(text) => {
                let wait = humantime::parse_duration(text.trim())
                    .map_err(|e| format!("waitForSignature {text:?}: {e}"))?;
                if wait > std::time::Duration::from_secs(24 * 3600) {
                    return Err(format!("waitForSignature {text:?}: at most 24h"));
                }
                Ok(wait)
            }
        }
    }
}

impl NamedPolicy {
    /// Parses the sidecar's `IMAGE_CHECKER_VERIFY_POLICY`, validated as the webhook did.
    pub fn from_json(text: &str) -> Result<Self, TrustError> {
        let named: Self =
            serde_json::from_str(text).map_err(|e| TrustError::Parse(e.to_string()))?;
        validate(&named.name, &named.policy).map_err(|problem| TrustError::Invalid {
            name: named.name.clone(),
            problem,
        })?;
        Ok(named)
    }

    pub fn to_json(&self) -> String {
        // A struct of strings and lists always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn validate(name: &str, policy: &TrustPolicy) -> Result<(), String> {
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err("a policy name is 1 to 63 letters, digits, '-', '_' or '.'".to_string());
    }
    if name == crate::VERIFY_OFF {
        return Err(format!(
            "{:?} is reserved: it opts a pod out of verification",
            crate::VERIFY_OFF
        ));
    }
    if policy.keys.is_empty() && policy.keyless.is_empty() {
        return Err("it names no key and no keyless identity: nothing could ever pass".into());
    }
    for (i, key) in policy.keys.iter().enumerate() {
        public_key_der(key).map_err(|problem| format!("keys[{i}]: {problem}"))?;
    }
    for (i, identity) in policy.keyless.iter().enumerate() {
        if identity.issuer.trim().is_empty() {
            return Err(format!("keyless[{i}]: the issuer is empty"));
        }
        if identity.subject_reg_exp.trim().is_empty() {
            return Err(format!(
                "keyless[{i}]: the subjectRegExp is empty (use .+ to accept any identity of that issuer)"
            ));
        }
        regex::Regex::new(&identity.subject_reg_exp)
            .map_err(|e| format!("keyless[{i}].subjectRegExp: {e}"))?;
    }
    policy.signature_wait()?;
    if !policy.trusted_root.trim().is_empty() {
        let root: serde_json::Value = serde_json::from_str(&policy.trusted_root)
            .map_err(|e| format!("trustedRoot is not JSON: {e}"))?;
        if !root.is_object() {
            return Err("trustedRoot is not a JSON object (a trusted_root.json)".into());
        }
    }
    Ok(())
}

/// The DER of a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as cosign writes `cosign.pub`.
pub fn public_key_der(pem: &str) -> Result<Vec<u8>, String> {
    let der = pem_der(pem, "PUBLIC KEY")?;
    // A SubjectPublicKeyInfo is a DER SEQUENCE.
    if der.first() != Some(&0x30) || der.len() < 32 {
        return Err("the PEM body is not a SubjectPublicKeyInfo".to_string());
    }
    Ok(der)
}

/// The DER of the first PEM block labelled `label` (`PUBLIC KEY`, `CERTIFICATE`) in `pem`.
pub fn pem_der(pem: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).map(|at| at + begin.len()).ok_or_else(|| {
        format!(
            "not a PEM {} (expected {begin} ... {end})",
            label.to_lowercase()
        )
    })?;
    let length = pem[start..]
        .find(&end)
        .ok_or_else(|| format!("the PEM {} has no {end}", label.to_lowercase()))?;
    let body: String = pem[start..start + length]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "the PEM body is not base64".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEKPBvz4jSNa5R2m9Wia+41ZsToRK\nVh94HI1bxDk5ilh+WAp3akcYsuIVlc0mwBL2O3dFNqk4pEEyUs2jkUkM7g==\n-----END PUBLIC KEY-----\n";

    #[test]
    fn a_policy_file_parses_in_yaml_and_json_and_round_trips_to_the_sidecar() {
        let yaml = format!(
            "policies:\n  release:\n    keys:\n      - |\n{}\n    keyless:\n      - issuer: https://issuer.example\n        subjectRegExp: ^https://github\\.com/acme/.+$\n    transparencyLog: optional\n",
            KEY.lines().map(|l| format!("        {l}")).collect::<Vec<_>>().join("\n")
        );
        let policies = TrustPolicies::parse(&yaml).unwrap();
        let release = policies.get("release").unwrap();
        assert_eq!(release.policy.transparency_log, TransparencyLog::Optional);
        assert_eq!(public_key_der(&release.policy.keys[0]).unwrap().len(), 91);
        let json = serde_json::to_string(&policies).unwrap();
        assert_eq!(TrustPolicies::parse(&json).unwrap(), policies);
        assert_eq!(NamedPolicy::from_json(&release.to_json()).unwrap(), release);
        assert_eq!(policies.get("other"), None);
    }

    #[test]
    fn invalid_policies_are_refused_with_the_reason() {
        let cases = [
            ("policies: {p: {}}", "nothing could ever pass"),
            ("policies: {p: {keys: [nope]}}", "not a PEM public key"),
            (
                "policies: {p: {keys: [\"-----BEGIN PUBLIC KEY-----\\n!!!!\\n-----END PUBLIC KEY-----\"]}}",
                "not base64",
            ),
            (
                "policies: {p: {keyless: [{issuer: i, subjectRegExp: '(unclosed'}]}}",
                "subjectRegExp",
            ),
            ("policies: {p: {keyless: [{issuer: '', subjectRegExp: x}]}}", "issuer is empty"),
            ("policies: {off: {keyless: [{issuer: i, subjectRegExp: x}]}}", "reserved"),
            ("policies: {p: {keyless: [{issuer: i, subjectRegExp: x}], trustedRoot: '[1]'}}", "trustedRoot"),
            ("policies: {p: {keyless: [{issuer: i, subjectRegExp: x}], transparencyLog: maybe}}", "does not parse"),
            ("policies: {p: {keyless: [{issuer: i, subjectRegExp: x}], extra: 1}}", "does not parse"),
            ("policies: {p: {keyless: [{issuer: i, subjectRegExp: x}], waitForSignature: soon}}", "waitForSignature"),
            ("policies: {p: {keyless: [{issuer: i, subjectRegExp: x}], waitForSignature: 25h}}", "at most 24h"),
        ];
        for (text, expected) in cases {
            let error = TrustPolicies::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert_eq!(TrustPolicies::parse("").unwrap(), TrustPolicies::default());
    }
}
