//! Serving certificate: read from PEM files, TLS 1.2+ with the ring provider, and reloaded
//! in place when the files change (cert-manager and kubelet rotate them by swapping the
//! Secret volume's symlinks), so new handshakes see the new certificate and open
//! connections are not dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The bytes last loaded, to tell a change from a re-read of the same files.
#[derive(PartialEq, Eq)]
struct LoadedPem {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl CertificateFiles {
    fn read(&self) -> anyhow::Result<LoadedPem> {
        Ok(LoadedPem {
            cert: read(&self.cert)?,
            key: read(&self.key)?,
        })
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn server_config(pem: &LoadedPem) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the certificate PEM")?;
    anyhow::ensure!(
        !certs.is_empty(),
        "the certificate file holds no certificate"
    );
    let key = PrivateKeyDer::from_pem_slice(&pem.key).context("parsing the private key PEM")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not form a valid pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads the files and builds the TLS configuration once: a setting that cannot work
/// (missing file, bad key, a certificate that does not match it) stops the webhook at
/// start (exit 2), like any other setting.
pub fn check(files: &CertificateFiles) -> anyhow::Result<()> {
    server_config(&files.read()?).map(drop)
}

/// Loads the certificate (failing at start if it is unusable) and starts a task that
/// reloads it whenever the files' contents change.
pub async fn load_and_watch(
    files: CertificateFiles,
    every: Duration,
) -> anyhow::Result<RustlsConfig> {
    let mut loaded = files.read()?;
    let config = RustlsConfig::from_config(server_config(&loaded)?);
    let reloadable = config.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let current = match files.read() {
                Ok(current) if current != loaded => current,
                Ok(_) => continue,
                Err(error) => {
                    warn!(
                        error = format!("{error:#}"),
                        "cannot read the TLS files; keeping the current certificate"
                    );
                    continue;
                }
            };
            match server_config(&current) {
                Ok(server) => {
                    reloadable.reload_from_config(server);
                    loaded = current;
                    info!(cert = %files.cert.display(), "reloaded the TLS certificate");
                }
                // Half-written files during a rotation land here; the next tick retries.
                Err(error) => warn!(
                    error = format!("{error:#}"),
                    "new TLS files are not usable yet; keeping the current certificate"
                ),
            }
        }
    });
    Ok(config)
}
