//! sigstore-crypto's provider on `ring`, the one crypto library the sidecar already has
//! (rustls and reqwest use it): sigstore-verify's default, aws-lc-rs, would be a second.
//! Verification only. ring cannot verify ECDSA over a precomputed digest, which
//! sigstore-verify asks for message signatures: RustCrypto's p256/p384 do that part.
//! What neither does (RSA over a digest, ML-DSA) is refused, and a signature that needs
//! it does not verify.

use sigstore_verify::crypto::provider::{CryptoProvider, HashContext};
use sigstore_verify::crypto::{Error, Result, SigningScheme};
use sigstore_verify::types::HashAlgorithm;

use ring::digest;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};

#[derive(Debug)]
pub struct RingProvider;

pub static RING_PROVIDER: RingProvider = RingProvider;

/// Installs the provider for the process; a second call is harmless.
pub fn install() {
    let _ = sigstore_verify::crypto::provider::install_default_provider(&RING_PROVIDER);
}

struct RingHash(digest::Context);

impl HashContext for RingHash {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn finalize(self: Box<Self>) -> Vec<u8> {
        self.0.finish().as_ref().to_vec()
    }
}

fn algorithm(scheme: SigningScheme) -> Result<&'static dyn VerificationAlgorithm> {
    Ok(match scheme {
        SigningScheme::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_ASN1,
        SigningScheme::EcdsaP256Sha384 => &signature::ECDSA_P256_SHA384_ASN1,
        SigningScheme::EcdsaP384Sha256 => &signature::ECDSA_P384_SHA256_ASN1,
        SigningScheme::EcdsaP384Sha384 => &signature::ECDSA_P384_SHA384_ASN1,
        SigningScheme::Ed25519 => &signature::ED25519,
        SigningScheme::RsaPssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
        SigningScheme::RsaPssSha384 => &signature::RSA_PSS_2048_8192_SHA384,
        SigningScheme::RsaPssSha512 => &signature::RSA_PSS_2048_8192_SHA512,
        SigningScheme::RsaPkcs1Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        SigningScheme::RsaPkcs1Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        SigningScheme::RsaPkcs1Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        other => {
            return Err(Error::UnsupportedAlgorithm(format!(
                "{other:?} is not supported by the sidecar's crypto (ring)"
            )))
        }
    })
}

impl CryptoProvider for RingProvider {
    fn hash(&self, algorithm: HashAlgorithm) -> Result<Box<dyn HashContext>> {
        let algorithm = match algorithm {
            HashAlgorithm::Sha2256 => &digest::SHA256,
            HashAlgorithm::Sha2384 => &digest::SHA384,
            HashAlgorithm::Sha2512 => &digest::SHA512,
            other => {
                return Err(Error::UnsupportedAlgorithm(format!(
                    "{other:?} is not supported by the sidecar's crypto (ring)"
                )))
            }
        };
        Ok(Box::new(RingHash(digest::Context::new(algorithm))))
    }

    fn verify_raw(
        &self,
        scheme: SigningScheme,
        spki_pubkey_bytes: &[u8],
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        UnparsedPublicKey::new(algorithm(scheme)?, spki_pubkey_bytes)
            .verify(data, signature)
            .map_err(|_| Error::Verification("the signature does not verify".into()))
    }

    fn verify_prehashed(
        &self,
        scheme: SigningScheme,
        spki_pubkey_bytes: &[u8],
        digest: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        let invalid = |_| Error::Verification("the signature does not verify".into());
        match scheme {
            SigningScheme::EcdsaP256Sha256 | SigningScheme::EcdsaP256Sha384 => {
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(spki_pubkey_bytes)
                    .map_err(|e| Error::InvalidKey(e.to_string()))?;
                let signature = p256::ecdsa::Signature::from_der(signature).map_err(invalid)?;
                key.verify_prehash(digest, &signature).map_err(invalid)
            }
            SigningScheme::EcdsaP384Sha256 | SigningScheme::EcdsaP384Sha384 => {
                let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(spki_pubkey_bytes)
                    .map_err(|e| Error::InvalidKey(e.to_string()))?;
                let signature = p384::ecdsa::Signature::from_der(signature).map_err(invalid)?;
                key.verify_prehash(digest, &signature).map_err(invalid)
            }
            other => Err(Error::UnsupportedAlgorithm(format!(
                "{other:?} over a precomputed digest is not supported by the sidecar's crypto"
            ))),
        }
    }
}
