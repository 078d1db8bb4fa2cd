//! The real signer: cosign and the Sigstore timestamp authority built from their Go
//! modules by `tests/tools/build.sh`, a test certificate authority standing in for
//! Fulcio (certificates with an identity and an OIDC issuer, as Fulcio issues them), and
//! the `trusted_root.json` that trusts both. Everything on 127.0.0.1; cosign never
//! reaches a public Sigstore (no transparency log, no signing config).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};

use crate::process::{eventually_async, free_port, Running};
use crate::registry::Registry;

/// Where `tests/tools/build.sh` puts cosign and the timestamp server.
pub fn tools_dir() -> Result<PathBuf, String> {
    crate::process::built_tools(
        "tests/tools/build.sh",
        &["cosign", "timestamp-server"],
        "sigstore-tools",
    )
}

/// How cosign signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// cosign v3's default: a Sigstore bundle attached as an OCI referrer.
    Bundle,
    /// `--new-bundle-format=false`: the `sha256-<hex>.sig` tag.
    Legacy,
}

/// A signing identity: a cosign key pair, and for keyless signing the certificate the
/// test Fulcio issued for that key.
pub struct Signer {
    /// cosign's encrypted private key (password empty).
    pub key: PathBuf,
    pub public_pem: String,
    pub certificate: Option<PathBuf>,
    /// The certificate's issuing CA (PEM), which the legacy format carries along.
    pub chain: Option<PathBuf>,
}

/// cosign, with a home and a key directory of its own.
pub struct Cosign {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Cosign {
    pub fn new() -> Self {
        let dir = tools_dir().unwrap_or_else(|e| panic!("{e}"));
        Self {
            bin: dir.join("cosign"),
            dir: tempfile::tempdir().expect("cosign dir"),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("COSIGN_PASSWORD", "")
            .env("TUF_ROOT", self.dir.path().join("tuf"));
        command
    }

    fn run(&self, mut command: Command) -> Result<String, String> {
        let output = command
            .output()
            .map_err(|e| format!("cannot run cosign: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// A new key pair, made by `cosign generate-key-pair`.
    pub fn key_pair(&self, name: &str) -> Signer {
        let mut command = self.command();
        command.args(["generate-key-pair", "--output-key-prefix", name]);
        self.run(command)
            .unwrap_or_else(|e| panic!("cosign generate-key-pair: {e}"));
        Signer {
            key: self.dir.path().join(format!("{name}.key")),
            public_pem: std::fs::read_to_string(self.dir.path().join(format!("{name}.pub")))
                .expect("cosign public key"),
            certificate: None,
            chain: None,
        }
    }

    /// A key pair certified by `fulcio` for `identity` (a SAN URI) and `issuer`: the key
    /// imported into cosign's format by `cosign import-key-pair`.
    pub fn certified(
        &self,
        name: &str,
        fulcio: &TestFulcio,
        identity: &str,
        issuer: &str,
    ) -> Signer {
        self.certified_for(name, fulcio, identity, issuer, Validity::Fresh)
    }

    pub fn certified_for(
        &self,
        name: &str,
        fulcio: &TestFulcio,
        identity: &str,
        issuer: &str,
        validity: Validity,
    ) -> Signer {
        let (certificate, key_pem) = fulcio.issue(identity, issuer, validity);
        let key_path = self.dir.path().join(format!("{name}.pem"));
        std::fs::write(&key_path, key_pem).expect("key file");
        let mut command = self.command();
        command
            .args(["import-key-pair", "--key"])
            .arg(&key_path)
            .args(["--output-key-prefix", name]);
        self.run(command)
            .unwrap_or_else(|e| panic!("cosign import-key-pair: {e}"));
        let cert_path = self.dir.path().join(format!("{name}.crt"));
        std::fs::write(&cert_path, certificate).expect("certificate file");
        let chain_path = self.dir.path().join(format!("{name}-chain.crt"));
        std::fs::write(&chain_path, fulcio.cert_pem()).expect("chain file");
        Signer {
            key: self.dir.path().join(format!("{name}.key")),
            public_pem: std::fs::read_to_string(self.dir.path().join(format!("{name}.pub")))
                .expect("cosign public key"),
            certificate: Some(cert_path),
            chain: Some(chain_path),
        }
    }

    /// `cosign sign` of `repository@digest` in `registry`, offline: no transparency log;
    /// a certificate signature is timestamped by `tsa` (its signing time).
    pub fn sign(
        &self,
        registry: &Registry,
        repository: &str,
        digest: &str,
        signer: &Signer,
        format: Format,
        tsa: Option<&Tsa>,
    ) {
        let mut command = self.command();
        command
            .args([
                "sign",
                "--yes",
                "--tlog-upload=false",
                "--use-signing-config=false",
            ])
            .arg("--key")
            .arg(&signer.key);
        if let Some(certificate) = &signer.certificate {
            command.arg("--certificate").arg(certificate);
        }
        if format == Format::Legacy {
            command.arg("--new-bundle-format=false");
            // cosign verifies a legacy certificate signature with the chain it carries.
            // (Its bundles cannot carry one: cosign v3.1.3 writes a v0.3 bundle with a
            // certificate chain, which its own verifier refuses.)
            if let Some(chain) = &signer.chain {
                command.arg("--certificate-chain").arg(chain);
            }
        }
        if let Some(tsa) = tsa {
            command.arg(format!("--timestamp-server-url={}", tsa.url));
        }
        self.registry_args(&mut command, registry);
        command.arg(format!("{}/{repository}@{digest}", registry.host()));
        self.run(command)
            .unwrap_or_else(|e| panic!("cosign sign {repository}@{digest}: {e}"));
    }

    fn registry_args(&self, command: &mut Command, registry: &Registry) {
        if registry.base_url.starts_with("http://") {
            command.arg("--allow-http-registry");
        }
        if let Some(ca) = &registry.ca {
            command.arg(format!("--registry-cacert={}", ca.display()));
        }
        if let Some((user, password)) = registry.credentials() {
            // cosign logs in as docker does: a config.json in its HOME.
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let config = json!({"auths": {registry.host(): {"auth": auth}}});
            let docker = self.dir.path().join(".docker");
            std::fs::create_dir_all(&docker).expect("docker config dir");
            std::fs::write(docker.join("config.json"), config.to_string()).expect("docker config");
        }
    }

    /// `cosign verify` of `repository@digest` under what a policy says, offline, as the
    /// cross-check of the sidecar's verdict: `Ok` when cosign accepts.
    pub fn verify(
        &self,
        registry: &Registry,
        repository: &str,
        digest: &str,
        trust: &CosignTrust,
    ) -> Result<String, String> {
        let mut command = self.command();
        command.args(["verify", "--insecure-ignore-tlog", "--insecure-ignore-sct"]);
        match trust {
            CosignTrust::Key(public_pem) => {
                let path = self
                    .dir
                    .path()
                    .join(format!("verify-{}.pub", rand::random::<u32>()));
                std::fs::write(&path, public_pem).expect("public key file");
                command.arg("--key").arg(path);
            }
            CosignTrust::Identity {
                trusted_root,
                issuer,
                subject_reg_exp,
            } => {
                let path = self
                    .dir
                    .path()
                    .join(format!("root-{}.json", rand::random::<u32>()));
                std::fs::write(&path, trusted_root).expect("trusted root file");
                command
                    .arg("--trusted-root")
                    .arg(path)
                    .arg(format!("--certificate-oidc-issuer={issuer}"))
                    .arg(format!("--certificate-identity-regexp={subject_reg_exp}"));
            }
        }
        self.registry_args(&mut command, registry);
        command.arg(format!("{}/{repository}@{digest}", registry.host()));
        self.run(command)
    }
}

impl Default for Cosign {
    fn default() -> Self {
        Self::new()
    }
}

/// What `cosign verify` is told to trust.
pub enum CosignTrust {
    Key(String),
    Identity {
        trusted_root: String,
        issuer: String,
        subject_reg_exp: String,
    },
}

/// When a test certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// From now, for ten minutes (as Fulcio issues them).
    Fresh,
    /// It ended twenty minutes ago.
    Expired,
}

/// A certificate authority standing in for Fulcio: code-signing certificates for a key,
/// with the identity as a SAN URI and the OIDC issuer in Fulcio's extensions.
pub struct TestFulcio {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// Fulcio's OIDC issuer extensions: v1 (raw string) and v2 (DER UTF8String).
const FULCIO_ISSUER_V1: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 1];
const FULCIO_ISSUER_V2: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 8];

impl TestFulcio {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "pod-reloaded test fulcio");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "pod-reloaded tests");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self { cert, key }
    }

    /// A certificate for a new key: (certificate PEM, PKCS#8 private key PEM).
    pub fn issue(&self, identity: &str, issuer: &str, validity: Validity) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names =
            vec![SanType::URI(identity.try_into().expect("an identity URI"))];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        // Valid for minutes, from now, as Fulcio's: a signature counts only with a
        // verified signing time inside that window (cosign checks a legacy signature
        // without one at the certificate's start).
        let now = time::OffsetDateTime::now_utc();
        let (start, end) = match validity {
            Validity::Fresh => (
                now - time::Duration::seconds(5),
                now + time::Duration::minutes(10),
            ),
            Validity::Expired => (
                now - time::Duration::minutes(30),
                now - time::Duration::minutes(20),
            ),
        };
        params.not_before = start;
        params.not_after = end;
        let mut utf8 = vec![0x0c];
        der_length(&mut utf8, issuer.len());
        utf8.extend_from_slice(issuer.as_bytes());
        params.custom_extensions = vec![
            CustomExtension::from_oid_content(FULCIO_ISSUER_V1, issuer.as_bytes().to_vec()),
            CustomExtension::from_oid_content(FULCIO_ISSUER_V2, utf8),
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("certificate");
        (cert.pem(), key.serialize_pem())
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }
}

impl Default for TestFulcio {
    fn default() -> Self {
        Self::new()
    }
}

fn der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

/// The Sigstore timestamp authority (`timestamp-server`, in-memory signer) on 127.0.0.1.
pub struct Tsa {
    _process: Running,
    pub url: String,
    /// Its certificate chain (leaf first), PEM.
    pub chain_pem: String,
}

impl Tsa {
    pub async fn start() -> Self {
        let dir = tools_dir().unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let mut command = Command::new(dir.join("timestamp-server"));
        command.args([
            "serve",
            "--host=127.0.0.1",
            &format!("--port={port}"),
            "--timestamp-signer=memory",
            "--disable-ntp-monitoring",
        ]);
        let process = Running::spawn(command);
        let base = format!("http://127.0.0.1:{port}/api/v1/timestamp");
        let chain_url = format!("{base}/certchain");
        let client = reqwest::Client::new();
        let fetch_chain = || async {
            match client.get(&chain_url).send().await {
                Ok(response) if response.status().is_success() => response
                    .text()
                    .await
                    .ok()
                    .filter(|t| t.contains("BEGIN CERTIFICATE")),
                _ => None,
            }
        };
        let up = eventually_async(Duration::from_secs(30), || async {
            fetch_chain().await.is_some()
        })
        .await;
        let chain = fetch_chain().await.unwrap_or_default();
        assert!(up, "timestamp-server did not start:\n{}", process.output());
        Self {
            _process: process,
            url: base,
            chain_pem: chain,
        }
    }
}

/// A `trusted_root.json` trusting `fulcio` for certificates and, when given, `tsa` for
/// timestamps; no transparency or certificate-transparency log.
pub fn trusted_root(fulcio: &TestFulcio, tsa: Option<&Tsa>) -> String {
    let b64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
    let authorities: Vec<Value> = tsa
        .map(|tsa| {
            let chain: Vec<Value> = pem_blocks(&tsa.chain_pem)
                .iter()
                .map(|der| json!({"rawBytes": b64(der)}))
                .collect();
            vec![json!({
                "subject": {"organization": "pod-reloaded tests", "commonName": "test tsa"},
                "uri": tsa.url,
                "certChain": {"certificates": chain},
                "validFor": {"start": "2020-01-01T00:00:00Z"},
            })]
        })
        .unwrap_or_default();
    json!({
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [],
        "certificateAuthorities": [{
            "subject": {"organization": "pod-reloaded tests", "commonName": "pod-reloaded test fulcio"},
            "uri": "https://fulcio.test.invalid",
            "certChain": {"certificates": [{"rawBytes": b64(&fulcio.cert_der())}]},
            "validFor": {"start": "2020-01-01T00:00:00Z"},
        }],
        "ctlogs": [],
        "timestampAuthorities": authorities,
    })
    .to_string()
}

fn pem_blocks(pem: &str) -> Vec<Vec<u8>> {
    pem.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|rest| rest.split("-----END CERTIFICATE-----").next())
        .filter_map(|body| {
            let body: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            base64::engine::general_purpose::STANDARD.decode(body).ok()
        })
        .collect()
}

/// Where the file of a test's policy is written for the webhook.
pub fn write_policy_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("trust-policies.yaml");
    std::fs::write(&path, text).expect("policy file");
    path
}
