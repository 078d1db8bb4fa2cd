//! Command-line flags, each with a `POD_RELOADED_*` environment fallback.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use pod_reloaded_bootstrap::LogFormat;
use pod_reloaded_contract as contract;
use pod_reloaded_contract::settings;

use crate::inject::{self, InjectionSettings, SidecarMode};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// pod-reloaded's mutating admission webhook: injects the image checker sidecar into
/// opted-in pods.
#[derive(Parser, Debug, Clone)]
#[command(name = "pod-reloaded-webhook", version, about, long_about = None)]
pub struct Config {
    /// Address of the HTTPS admission server (serves /mutate).
    #[arg(long, env = "POD_RELOADED_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Address of the plain-HTTP server for /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "POD_RELOADED_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_listen: SocketAddr,

    /// PEM file with the serving certificate (chain); reloaded when it changes.
    #[arg(
        long,
        env = "POD_RELOADED_TLS_CERT_FILE",
        default_value = "/etc/pod-reloaded/tls/tls.crt"
    )]
    pub tls_cert_file: PathBuf,

    /// PEM file with the serving certificate's private key; reloaded when it changes.
    #[arg(
        long,
        env = "POD_RELOADED_TLS_KEY_FILE",
        default_value = "/etc/pod-reloaded/tls/tls.key"
    )]
    pub tls_key_file: PathBuf,

    /// How often the certificate files are checked for changes.
    #[arg(long, env = "POD_RELOADED_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = settings::parse_tls_reload_interval)]
    pub tls_reload_interval: Duration,

    /// Image of the injected checker sidecar.
    #[arg(long, env = "POD_RELOADED_SIDECAR_IMAGE", default_value = concat!("pod-reloaded/sidecar:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,

    /// Where the sidecar goes: `container` (appended) or `native` (initContainer with
    /// restartPolicy: Always, Kubernetes >= 1.29).
    #[arg(
        long,
        env = "POD_RELOADED_SIDECAR_MODE",
        default_value = "container",
        value_parser = SidecarMode::parse
    )]
    pub sidecar_mode: SidecarMode,

    /// CPU request of the sidecar.
    #[arg(long, env = "POD_RELOADED_SIDECAR_CPU_REQUEST", default_value = "5m")]
    pub sidecar_cpu_request: String,

    /// Memory request of the sidecar: its own memory and peak (BENCHMARKS.md), and the
    /// binary's page cache the pod may be charged for.
    #[arg(
        long,
        env = "POD_RELOADED_SIDECAR_MEMORY_REQUEST",
        default_value = "10Mi"
    )]
    pub sidecar_memory_request: String,

    /// CPU limit of the sidecar.
    #[arg(long, env = "POD_RELOADED_SIDECAR_CPU_LIMIT", default_value = "100m")]
    pub sidecar_cpu_limit: String,

    /// Memory limit of the sidecar: room for a restart round that lists the pods of a
    /// large rollout.
    #[arg(
        long,
        env = "POD_RELOADED_SIDECAR_MEMORY_LIMIT",
        default_value = "32Mi"
    )]
    pub sidecar_memory_limit: String,

    /// Port the sidecar serves /metrics on (0: off); a container port named
    /// `reloaded-metric`, for a PodMonitor.
    #[arg(long, env = "POD_RELOADED_SIDECAR_METRICS_PORT", default_value_t = 0)]
    pub sidecar_metrics_port: u16,

    /// Log format of the sidecar.
    #[arg(
        long,
        env = "POD_RELOADED_SIDECAR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub sidecar_log_format: LogFormat,

    /// Registry hosts (host[:port], comma-separated) the sidecar reaches over plain HTTP.
    #[arg(
        long,
        env = "POD_RELOADED_SIDECAR_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub sidecar_insecure_registries: Vec<String>,

    /// Timeout of one registry request of the sidecar (100ms to 10m).
    #[arg(
        long,
        env = "POD_RELOADED_SIDECAR_REGISTRY_TIMEOUT",
        default_value = "10s"
    )]
    pub sidecar_registry_timeout: String,

    /// ConfigMap (in each pod's namespace) of extra CA certificates (PEM) the sidecar
    /// trusts for registries; mounted read-only and optional.
    #[arg(long, env = "POD_RELOADED_SIDECAR_CA_CONFIGMAP")]
    pub sidecar_ca_configmap: Option<String>,

    /// A pull secret for a private sidecar image (`--sidecar-image`), added to every
    /// injected pod's `imagePullSecrets`; the Secret must exist in each opted-in namespace.
    #[arg(long, env = "POD_RELOADED_SIDECAR_IMAGE_PULL_SECRET")]
    pub sidecar_image_pull_secret: Option<String>,

    /// Poll interval of pods without the pod-reloaded.io/interval annotation.
    #[arg(long, env = "POD_RELOADED_DEFAULT_INTERVAL", default_value = contract::DEFAULT_INTERVAL)]
    pub default_interval: String,

    /// Who polls for pods without the pod-reloaded.io/poll annotation: `workload` (the
    /// replicas share the checks, each at interval × replicas) or `replica` (each at the
    /// interval).
    #[arg(long, env = "POD_RELOADED_DEFAULT_POLL", default_value = "workload", value_parser = settings::Poll::parse)]
    pub default_poll: settings::Poll,

    /// The operator's trust policies (YAML or JSON; see the README's "Signed images
    /// only"), mounted from the ConfigMap pod-reloaded-trust. Reloaded when it changes
    /// (checked every --tls-reload-interval); a missing file means no policies.
    #[arg(long, env = "POD_RELOADED_TRUST_POLICY_FILE")]
    pub trust_policy_file: Option<std::path::PathBuf>,

    /// The trust policy of injected pods without the pod-reloaded.io/verify annotation
    /// (`off` there opts a pod out). Must name a policy of --trust-policy-file.
    #[arg(long, env = "POD_RELOADED_DEFAULT_VERIFY_POLICY")]
    pub default_verify_policy: Option<String>,

    /// The notification config (YAML; see the README's "Notifications"), mounted from the
    /// ConfigMap pod-reloaded-notify; reloaded when it changes. Set: one replica at a time
    /// (the holder of the Lease pod-reloaded-notifier) sends notifications.
    #[arg(long, env = "POD_RELOADED_NOTIFY_CONFIG")]
    pub notify_config: Option<std::path::PathBuf>,

    /// Where the Secret pod-reloaded-notify is mounted: the receivers' URLs and HMAC keys,
    /// one file per key.
    #[arg(
        long,
        env = "POD_RELOADED_NOTIFY_SECRETS_DIR",
        default_value = "/etc/pod-reloaded/notify-secrets"
    )]
    pub notify_secrets_dir: std::path::PathBuf,

    /// PEM CA certificates trusted for receivers, besides the Mozilla roots built in.
    #[arg(long, env = "POD_RELOADED_NOTIFY_CA_FILE")]
    pub notify_ca_file: Option<std::path::PathBuf>,

    /// The waits between delivery attempts (comma-separated; one attempt more than waits).
    #[arg(long, env = "POD_RELOADED_NOTIFY_RETRY_DELAYS", default_value = "10s,30s,2m,7m", value_delimiter = ',', value_parser = settings::parse_retry_delay)]
    pub notify_retry_delays: Vec<Duration>,

    /// One delivery attempt, at most (1s to 1m).
    #[arg(long, env = "POD_RELOADED_NOTIFY_TIMEOUT", default_value = "10s", value_parser = settings::parse_notify_timeout)]
    pub notify_timeout: Duration,

    /// Namespaces never injected (comma-separated); the webhook's own is always added.
    #[arg(
        long,
        env = "POD_RELOADED_EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system,kube-public,kube-node-lease"
    )]
    pub excluded_namespaces: Vec<String>,

    /// The namespace the webhook runs in (never injected).
    #[arg(long, env = "POD_RELOADED_WEBHOOK_NAMESPACE", default_value = contract::WEBHOOK_NAMESPACE)]
    pub webhook_namespace: String,

    /// Longest time the RBAC side effect may take before the pod is admitted uninjected
    /// (the API server gives the whole webhook 5s).
    #[arg(long, env = "POD_RELOADED_API_TIMEOUT", default_value = "2s", value_parser = settings::parse_api_timeout)]
    pub api_timeout: Duration,

    /// After SIGTERM: how long to go on serving while not ready, so endpoints drop this
    /// pod before it stops listening (then in-flight reviews get 5s to finish).
    #[arg(long, env = "POD_RELOADED_SHUTDOWN_DELAY", default_value = "5s", value_parser = settings::parse_shutdown_delay)]
    pub shutdown_delay: Duration,

    /// Log format.
    #[arg(
        long,
        env = "POD_RELOADED_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl Config {
    /// Checks what clap cannot and builds the injection settings.
    pub fn injection_settings(&self) -> anyhow::Result<InjectionSettings> {
        pod_reloaded_contract::settings::parse_interval(&self.default_interval)
            .map_err(|problem| anyhow::anyhow!("--default-interval: {problem}"))?;
        contract::image::ImageReference::parse(self.sidecar_image.trim())
            .map_err(|problem| anyhow::anyhow!("--sidecar-image: {problem}"))?;
        settings::check_dns_label(&self.webhook_namespace)
            .map_err(|problem| anyhow::anyhow!("--webhook-namespace: {problem}"))?;
        for namespace in self
            .excluded_namespaces
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
        {
            settings::check_dns_label(namespace)
                .map_err(|problem| anyhow::anyhow!("--excluded-namespaces: {problem}"))?;
        }
        if let Some(name) = &self.sidecar_ca_configmap {
            settings::check_dns_subdomain(name.trim())
                .map_err(|problem| anyhow::anyhow!("--sidecar-ca-configmap: {problem}"))?;
        }
        let sidecar_image_pull_secret = self
            .sidecar_image_pull_secret
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|name| {
                settings::check_dns_subdomain(name)
                    .map(|()| name.to_string())
                    .map_err(|problem| anyhow::anyhow!("--sidecar-image-pull-secret: {problem}"))
            })
            .transpose()?;
        for host in self
            .sidecar_insecure_registries
            .iter()
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
        {
            settings::check_registry_host(host)
                .map_err(|problem| anyhow::anyhow!("--sidecar-insecure-registries: {problem}"))?;
        }
        let quantity = |flag: &str, value: &str| {
            settings::parse_resource_quantity(value)
                .map_err(|problem| anyhow::anyhow!("--{flag}: {problem}"))
        };
        // Below 4Mi the sidecar cannot hold its own memory and the code pages a round runs
        // (BENCHMARKS.md): it would be killed at once.
        let memory_limit = quantity("sidecar-memory-limit", &self.sidecar_memory_limit)?;
        anyhow::ensure!(
            memory_limit >= 4.0 * 1024.0 * 1024.0,
            "--sidecar-memory-limit {} is below 4Mi: the sidecar would be killed for memory at once",
            self.sidecar_memory_limit
        );
        for (resource, request, limit) in [
            ("cpu", &self.sidecar_cpu_request, &self.sidecar_cpu_limit),
            (
                "memory",
                &self.sidecar_memory_request,
                &self.sidecar_memory_limit,
            ),
        ] {
            let requested = quantity(&format!("sidecar-{resource}-request"), request)?;
            let limited = quantity(&format!("sidecar-{resource}-limit"), limit)?;
            // The API server rejects a pod whose request exceeds its limit.
            anyhow::ensure!(
                requested <= limited,
                "--sidecar-{resource}-request {request} is more than --sidecar-{resource}-limit {limit}"
            );
        }
        let mut excluded: BTreeSet<String> = self
            .excluded_namespaces
            .iter()
            .map(|ns| ns.trim().to_string())
            .filter(|ns| !ns.is_empty())
            .collect();
        excluded.insert(self.webhook_namespace.clone());
        pod_reloaded_contract::settings::parse_timeout(&self.sidecar_registry_timeout)
            .map_err(|problem| anyhow::anyhow!("--sidecar-registry-timeout: {problem}"))?;
        let mut sidecar_env = vec![(
            contract::ENV_REGISTRY_TIMEOUT.to_string(),
            self.sidecar_registry_timeout.clone(),
        )];
        if self.sidecar_log_format == LogFormat::Json {
            sidecar_env.push((contract::ENV_LOG_FORMAT.to_string(), "json".to_string()));
        }
        let insecure: Vec<&str> = self
            .sidecar_insecure_registries
            .iter()
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .collect();
        if !insecure.is_empty() {
            sidecar_env.push((
                contract::ENV_INSECURE_REGISTRIES.to_string(),
                insecure.join(","),
            ));
        }
        let metrics_port = (self.sidecar_metrics_port != 0).then_some(self.sidecar_metrics_port);
        if let Some(port) = metrics_port {
            sidecar_env.push((
                contract::ENV_METRICS_LISTEN.to_string(),
                format!("0.0.0.0:{port}"),
            ));
        }
        let ca_configmap = self
            .sidecar_ca_configmap
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let policies = match &self.trust_policy_file {
            Some(path) => crate::trust::load(path)?,
            None => Default::default(),
        };
        let default_verify_policy = self
            .default_verify_policy
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        if let Some(name) = &default_verify_policy {
            anyhow::ensure!(
                policies.get(name).is_some(),
                "--default-verify-policy {name}: no such policy in --trust-policy-file (it has: {})",
                policies.names()
            );
        }
        Ok(InjectionSettings {
            trust: crate::reloaded::Reloaded::new(policies),
            default_verify_policy,
            sidecar_env,
            ca_configmap,
            sidecar_image_pull_secret,
            metrics_port,
            sidecar_image: self.sidecar_image.clone(),
            sidecar_resources: inject::resources(
                &self.sidecar_cpu_request,
                &self.sidecar_memory_request,
                &self.sidecar_cpu_limit,
                &self.sidecar_memory_limit,
            ),
            sidecar_mode: self.sidecar_mode,
            default_interval: self.default_interval.clone(),
            default_poll: self.default_poll,
            excluded_namespaces: excluded,
            version: VERSION.to_string(),
        })
    }
}
