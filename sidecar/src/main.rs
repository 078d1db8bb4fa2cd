use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use pod_reloaded_sidecar::checker::{Checker, RoundOutcome};
use pod_reloaded_sidecar::cluster::{self, Cluster};
use pod_reloaded_sidecar::config::{CloudAuth, Config};
use pod_reloaded_sidecar::metrics::Metrics;
use pod_reloaded_sidecar::platform::Platform;
use pod_reloaded_sidecar::registry::cloud::{CloudEnv, CloudLogin};
use pod_reloaded_sidecar::registry::credentials::Credentials;
use pod_reloaded_sidecar::registry::RegistryClient;
use pod_reloaded_sidecar::resident;
use pod_reloaded_sidecar::schedule::{first_delay, next_delay};
use tracing::{debug, error, info, warn};

fn main() -> ExitCode {
    // One thread: the sidecar waits on the network almost all the time, and a small
    // footprint matters more than parallelism.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pod-reloaded-sidecar: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Signal handlers first: the sidecar is PID 1, where a signal without a handler is
    // ignored, and start-up (API discovery, binding) can take a while.
    let signals = match runtime.block_on(async { Signals::install() }) {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("pod-reloaded-sidecar: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut config: Config = pod_reloaded_bootstrap::parse_args_or_exit("pod-reloaded-sidecar");
    let prepared = match config
        .validate()
        .and_then(|()| Prepared::from_config(&config))
    {
        Ok(prepared) => prepared,
        Err(problem) => pod_reloaded_bootstrap::exit_invalid("pod-reloaded-sidecar", &problem),
    };
    pod_reloaded_bootstrap::init_logging(config.log_format);
    if let Some(registry_url) = &config.registry_url {
        for (given, read_as) in registry_url.legacy_forms() {
            info!(given, read_as, "IMAGE_CHECKER_REGISTRY_URL has the old image-checker's form (an API base, not a registry path): asking the registry at its host");
        }
    }
    let outcome = runtime.block_on(async {
        let mut stop = std::pin::pin!(signals.received());
        tokio::select! {
            outcome = run(config, prepared) => outcome,
            _ = &mut stop => Ok(ExitCode::SUCCESS),
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            error!(error = format!("{error:#}"), "sidecar cannot start");
            ExitCode::FAILURE
        }
    }
}

/// Starts and runs the rounds; dropped (at any await) when a signal arrives.
async fn run(config: Config, prepared: Prepared) -> anyhow::Result<ExitCode> {
    let mut kube_config = kube::Config::infer()
        .await
        .context("inferring the Kubernetes API configuration")?;
    kube_config.connect_timeout = Some(config.api_timeout);
    kube_config.read_timeout = Some(config.api_timeout);
    kube_config.write_timeout = Some(config.api_timeout);
    let namespace = match config.pod_namespace.clone() {
        Some(namespace) => namespace,
        None => {
            info!(namespace = %kube_config.default_namespace, "POD_NAMESPACE is not set: using the Kubernetes client's namespace (in a pod, its service account's)");
            kube_config.default_namespace.clone()
        }
    };
    let client = kube::Client::try_from(kube_config).context("building the Kubernetes client")?;
    let pod_name = match (&config.pod_name, &config.hostname) {
        (Some(name), _) => name.clone(),
        (None, Some(hostname)) => {
            let name = cluster::pod_named_by_hostname(&client, &namespace, hostname).await?;
            info!(pod = %name, %hostname, "POD_NAME is not set: found this pod by its hostname");
            name
        }
        (None, None) => anyhow::bail!("neither POD_NAME nor HOSTNAME is set"),
    };
    let metrics = Arc::new(Metrics::default());
    let cluster =
        Cluster::new(client, namespace.clone(), pod_name.clone()).with_metrics(metrics.clone());

    let mut http = reqwest::Client::builder()
        .user_agent(concat!("pod-reloaded-sidecar/", env!("CARGO_PKG_VERSION")))
        .timeout(config.registry_timeout)
        .connect_timeout(config.registry_timeout)
        .use_rustls_tls();
    for certificate in prepared.registry_cas {
        http = http.add_root_certificate(certificate);
    }
    let credentials = match &config.pull_secrets_dir {
        Some(dir) => {
            let (credentials, problems) = Credentials::load(dir);
            for problem in problems {
                warn!(problem, "pull secret not usable");
            }
            credentials
        }
        None => Credentials::default(),
    };
    let platform = config.platform.clone().unwrap_or_else(Platform::current);
    let mut registry =
        RegistryClient::new(http, credentials, platform).context("building the HTTP client")?;
    if config.cloud_auth == CloudAuth::Auto {
        let http = registry.http().clone();
        registry = registry.with_cloud_login(CloudLogin::new(http, CloudEnv::from_process()));
    }

    if let Some(listener) = prepared.metrics_listener {
        serve_metrics(listener, metrics.clone())?;
    }
    let interval = config.interval;
    let once = config.once;
    info!(containers = %config.watch_containers.join(","), interval = %humantime::format_duration(interval), pod = %pod_name, %namespace, "watching");
    let mut checker = Checker::new(config, registry, cluster, metrics);

    let mut failures: u32 = 0;
    let mut phased = false;
    let mut start_up_pages_released = false;
    loop {
        let outcome = checker.round().await;
        if !start_up_pages_released {
            // After the first round: start-up and the first look at the pod and the
            // registry are done, and what later rounds touch is mapped again on demand.
            start_up_pages_released = true;
            match resident::release_start_up_pages() {
                Ok(released) => debug!(
                    mappings = released.mappings,
                    resident_kib = released.resident_bytes / 1024,
                    "released the binary's start-up pages"
                ),
                Err(error) => debug!(%error, "could not release the binary's start-up pages"),
            }
        }
        let period = checker.poll_period(&outcome);
        let waiting = outcome == RoundOutcome::Waiting;
        let retry_after = match outcome {
            RoundOutcome::Failed { retry_after } => {
                failures = failures.saturating_add(1);
                retry_after
            }
            _ => {
                failures = 0;
                None
            }
        };
        if once {
            return Ok(if failures == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        // After the first good round, each replica takes its own phase of the period.
        let delay = if !phased && failures == 0 && !waiting {
            phased = true;
            first_delay(interval, period, &mut rand::thread_rng())
        } else {
            next_delay(period, failures, retry_after, &mut rand::thread_rng())
        };
        tokio::time::sleep(delay).await;
    }
}

fn serve_metrics(listener: std::net::TcpListener, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    use axum::routing::get;
    let listener =
        tokio::net::TcpListener::from_std(listener).context("serving --metrics-listen")?;
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { metrics.encode() }))
        .route("/healthz", get(|| async { "ok\n" }));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            warn!(%error, "metrics server stopped");
        }
    });
    Ok(())
}

/// What the settings need from the machine, checked before anything starts: a CA file
/// that cannot be read or holds no certificate, or a metrics address that cannot be bound,
/// is a setting that cannot work (exit 2), not a failure at run time.
struct Prepared {
    registry_cas: Vec<reqwest::Certificate>,
    metrics_listener: Option<std::net::TcpListener>,
}

impl Prepared {
    fn from_config(config: &Config) -> Result<Self, String> {
        let mut registry_cas = match &config.registry_ca_file {
            None => Vec::new(),
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("--registry-ca-file {}: {e}", path.display()))?;
                let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("--registry-ca-file {}: {e}", path.display()))?;
                if certificates.is_empty() {
                    return Err(format!(
                        "--registry-ca-file {}: no PEM certificate in it",
                        path.display()
                    ));
                }
                certificates
            }
        };
        if let Some(dir) = &config.registry_ca_dir {
            registry_cas.extend(ca_directory(dir)?);
        }
        let metrics_listener = match config.metrics_listen {
            None => None,
            Some(address) => {
                let listener = std::net::TcpListener::bind(address)
                    .map_err(|e| format!("--metrics-listen {address}: {e}"))?;
                listener
                    .set_nonblocking(true)
                    .map_err(|e| format!("--metrics-listen {address}: {e}"))?;
                Some(listener)
            }
        };
        Ok(Self {
            registry_cas,
            metrics_listener,
        })
    }
}

/// The certificates of every PEM file in `dir`, a mounted ConfigMap that may be
/// missing (`optional: true`): then there are none. A file that holds no certificate is
/// an error: it is surely not what was meant.
fn ca_directory(dir: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        // ConfigMap volumes hold `..data` links and a hidden timestamped directory.
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    let mut certificates = Vec::new();
    for file in files {
        let pem = std::fs::read(&file)
            .map_err(|e| format!("--registry-ca-dir {}: {e}", file.display()))?;
        let found = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("--registry-ca-dir {}: {e}", file.display()))?;
        if found.is_empty() {
            return Err(format!(
                "--registry-ca-dir {}: no PEM certificate in it",
                file.display()
            ));
        }
        certificates.extend(found);
    }
    Ok(certificates)
}

/// SIGTERM and SIGINT, registered with the kernel as soon as this exists.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn received(mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM: exiting"),
            _ = self.int.recv() => info!("SIGINT: exiting"),
        }
    }
}
