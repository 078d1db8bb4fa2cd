use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pod_reloaded_webhook::admission::Admission;
use pod_reloaded_webhook::config::Config;
use pod_reloaded_webhook::existing_grants::ExistingGrants;
use pod_reloaded_webhook::inject::InjectionSettings;
use pod_reloaded_webhook::rbac::AccessGranter;
use pod_reloaded_webhook::server::{self, HealthState};
use pod_reloaded_webhook::tls::{self, CertificateFiles};
use tracing::{error, info, warn};

/// Every admission parses and builds many small JSON values; glibc's and musl's
/// allocators were a third of the CPU under load (perf, see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// In-flight admission requests get this long after SIGTERM; the API server times out at 5s.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn main() -> std::process::ExitCode {
    let config: Config = pod_reloaded_bootstrap::parse_args_or_exit("pod-reloaded-webhook");
    // Every setting is checked before anything starts: a value the API server would
    // reject (say `--sidecar-cpu-limit banana`) would otherwise reach every opted-in pod.
    let settings = match config.injection_settings() {
        Ok(settings) => settings,
        Err(problem) => {
            pod_reloaded_bootstrap::exit_invalid("pod-reloaded-webhook", &format!("{problem:#}"))
        }
    };
    // So is the notification config, and its receivers' CA file.
    let notifications = match config
        .notify_config
        .as_ref()
        .map(|path| {
            let receivers = pod_reloaded_webhook::notify::load(path)?;
            let http = notify_client(&config)?;
            anyhow::Ok((path.clone(), receivers, http))
        })
        .transpose()
    {
        Ok(notifications) => notifications,
        Err(problem) => {
            pod_reloaded_bootstrap::exit_invalid("pod-reloaded-webhook", &format!("{problem:#}"))
        }
    };
    // So are the TLS files and the two ports (in use: exit 2 too, one rule for all).
    let files = CertificateFiles {
        cert: config.tls_cert_file.clone(),
        key: config.tls_key_file.clone(),
    };
    let listeners = tls::check(&files).and_then(|()| {
        let bind = |flag: &str, address: std::net::SocketAddr| {
            let listener = std::net::TcpListener::bind(address)
                .with_context(|| format!("{flag} {address}"))?;
            listener
                .set_nonblocking(true)
                .with_context(|| format!("{flag} {address}"))?;
            anyhow::Ok(listener)
        };
        Ok((
            bind("--listen", config.listen)?,
            bind("--metrics-listen", config.metrics_listen)?,
        ))
    });
    let (listener, metrics_listener) = match listeners {
        Ok(listeners) => listeners,
        Err(problem) => {
            pod_reloaded_bootstrap::exit_invalid("pod-reloaded-webhook", &format!("{problem:#}"))
        }
    };
    pod_reloaded_bootstrap::init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            error!(%error, "cannot start the async runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(
        config,
        settings,
        notifications,
        files,
        listener,
        metrics_listener,
    )) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            error!(error = format!("{error:#}"), "webhook stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What the notifier starts with: its config file, the config read from it at start, and
/// the HTTP client of its receivers.
type Notifications = (
    std::path::PathBuf,
    pod_reloaded_contract::notify::NotifyConfig,
    reqwest::Client,
);

/// The receivers' HTTP client: TLS verified against the Mozilla roots and
/// `--notify-ca-file`, no redirect followed, each attempt bounded.
fn notify_client(config: &Config) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.notify_timeout)
        .connect_timeout(config.notify_timeout);
    if let Some(path) = &config.notify_ca_file {
        let pem =
            std::fs::read(path).with_context(|| format!("--notify-ca-file {}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--notify-ca-file {}: not PEM", path.display()))?;
        anyhow::ensure!(
            !certificates.is_empty(),
            "--notify-ca-file {}: no PEM certificate in it",
            path.display()
        );
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .context("building the notifications' HTTP client")
}

async fn run(
    config: Config,
    settings: InjectionSettings,
    notifications: Option<Notifications>,
    files: CertificateFiles,
    listener: std::net::TcpListener,
    metrics_listener: std::net::TcpListener,
) -> anyhow::Result<()> {
    let client = match kube_client().await {
        Ok(client) => Some(client),
        Err(error) => {
            warn!(
                error = format!("{error:#}"),
                "no Kubernetes API access: pods will be admitted without injection"
            );
            None
        }
    };
    let granter = client.clone().map(|client| {
        AccessGranter::new(client.clone(), config.api_timeout)
            .with_existing_grants(ExistingGrants::watch(client))
    });
    if let Some(path) = &config.trust_policy_file {
        pod_reloaded_webhook::trust::watch(
            &settings.trust,
            path.clone(),
            config.tls_reload_interval,
        );
    }
    let admission = Arc::new(Admission {
        settings,
        granter,
        metrics: Default::default(),
    });

    if let Some((path, receivers, http)) = notifications {
        match client {
            Some(client) => {
                let store = pod_reloaded_webhook::notify::NotifyStore::new(receivers);
                pod_reloaded_webhook::notify::watch(&store, path, config.tls_reload_interval);
                let identity = format!(
                    "{}-{}",
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "webhook".to_string()),
                    std::process::id()
                );
                let notifier = pod_reloaded_webhook::notify::Notifier {
                    client,
                    config: store,
                    delivery: pod_reloaded_webhook::notify::deliver::Delivery {
                        http,
                        secrets_dir: config.notify_secrets_dir.clone(),
                        retry_delays: config.notify_retry_delays.clone(),
                        counter: admission.metrics.notifications(),
                    },
                    namespace: config.webhook_namespace.clone(),
                    identity,
                };
                tokio::spawn(notifier.run());
            }
            None => warn!("no Kubernetes API access: no notifications"),
        }
    }

    let tls = tls::load_and_watch(files, config.tls_reload_interval).await?;

    let ready = Arc::new(AtomicBool::new(false));
    let health = server::health_router(HealthState {
        admission: admission.clone(),
        ready: ready.clone(),
    });
    let metrics_listener = tokio::net::TcpListener::from_std(metrics_listener)
        .with_context(|| format!("serving --metrics-listen {}", config.metrics_listen))?;
    info!(address = %config.metrics_listen, "serving /healthz, /readyz, /metrics");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(metrics_listener, health).await {
            error!(%error, "metrics server stopped");
        }
    });

    let handle = axum_server::Handle::new();
    let listening = handle.clone();
    let draining = ready.clone();
    tokio::spawn(async move {
        if let Some(address) = listening.listening().await {
            ready.store(true, Ordering::Release);
            info!(%address, "serving admission requests over TLS");
        }
    });
    let stopping = handle.clone();
    let delay = config.shutdown_delay;
    tokio::spawn(async move {
        shutdown_signal().await;
        // Not ready first, still serving: the endpoints controller takes this pod out of
        // the Service before the port closes, so the API server's reviews go elsewhere.
        draining.store(false, Ordering::Release);
        info!(
            delay = %humantime::format_duration(delay),
            "SIGTERM: not ready; serving on while endpoints drop this pod"
        );
        tokio::time::sleep(delay).await;
        info!("shutting down: finishing the reviews in flight");
        stopping.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });

    axum_server::from_tcp_rustls(listener, tls)
        .handle(handle)
        .serve(server::admission_router(admission).into_make_service())
        .await
        .with_context(|| format!("serving on --listen {}", config.listen))
}

async fn kube_client() -> anyhow::Result<kube::Client> {
    let config = kube::Config::infer()
        .await
        .context("inferring the Kubernetes API configuration")?;
    kube::Client::try_from(config).context("building the Kubernetes client")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
