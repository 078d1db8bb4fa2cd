use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use pod_reloaded_sidecar::checker::{Checker, RoundOutcome};
use pod_reloaded_sidecar::cluster::Cluster;
use pod_reloaded_sidecar::config::Config;
use pod_reloaded_sidecar::metrics::Metrics;
use pod_reloaded_sidecar::platform::Platform;
use pod_reloaded_sidecar::registry::credentials::Credentials;
use pod_reloaded_sidecar::registry::RegistryClient;
use pod_reloaded_sidecar::schedule::next_delay;
use tracing::{error, info, warn};

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
    let mut config = match Config::try_parse() {
        Ok(config) => config,
        Err(error)
            if matches!(
                error.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // One clear line, not clap's usage block: this runs unattended in a pod.
            let text = error.to_string();
            let message = text.split("\n\n").next().unwrap_or("invalid configuration");
            let words: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!(
                "pod-reloaded-sidecar: {}",
                words.join(" ").trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    if let Err(problem) = config.validate() {
        eprintln!("pod-reloaded-sidecar: {problem}");
        return ExitCode::from(2);
    }
    pod_reloaded_contract::init_logging(config.log_format);
    let outcome = runtime.block_on(async {
        let mut stop = std::pin::pin!(signals.received());
        tokio::select! {
            outcome = run(config) => outcome,
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
async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let mut kube_config = kube::Config::infer()
        .await
        .context("inferring the Kubernetes API configuration")?;
    kube_config.connect_timeout = Some(config.api_timeout);
    kube_config.read_timeout = Some(config.api_timeout);
    kube_config.write_timeout = Some(config.api_timeout);
    let client = kube::Client::try_from(kube_config).context("building the Kubernetes client")?;
    let cluster = Cluster::new(
        client,
        config.pod_namespace.clone(),
        config.pod_name.clone(),
    );

    let mut http = reqwest::Client::builder()
        .user_agent(concat!("pod-reloaded-sidecar/", env!("CARGO_PKG_VERSION")))
        .timeout(config.registry_timeout)
        .connect_timeout(config.registry_timeout)
        .use_rustls_tls();
    if let Some(path) = &config.registry_ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading --registry-ca-file {}", path.display()))?;
        for certificate in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("parsing {}", path.display()))?
        {
            http = http.add_root_certificate(certificate);
        }
    }
    let http = http.build().context("building the HTTP client")?;
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
    let registry = RegistryClient::new(http, credentials, platform);

    let metrics = Arc::new(Metrics::default());
    if let Some(address) = config.metrics_listen {
        serve_metrics(address, metrics.clone()).await?;
    }
    let interval = config.interval;
    let once = config.once;
    info!(containers = %config.watch_containers.join(","), interval = %humantime::format_duration(interval), pod = %config.pod_name, namespace = %config.pod_namespace, "watching");
    let mut checker = Checker::new(config, registry, cluster, metrics);

    let mut failures: u32 = 0;
    loop {
        let outcome = checker.round().await;
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
        let delay = next_delay(interval, failures, retry_after, &mut rand::thread_rng());
        tokio::time::sleep(delay).await;
    }
}

async fn serve_metrics(address: std::net::SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding --metrics-listen {address}"))?;
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
