//! Settings from the env the webhook injects (names kept from the original image-checker)
//! and flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use pod_reloaded_bootstrap::LogFormat;
use pod_reloaded_contract as contract;
use pod_reloaded_contract::settings::{self, RegistryOverride};

use crate::platform::Platform;

/// pod-reloaded's checker sidecar: restarts the owning workload when a watched
/// container's tag points to a new digest.
#[derive(Parser, Debug, Clone)]
#[command(name = "pod-reloaded-sidecar", version, about, long_about = None)]
pub struct Config {
    /// Comma-separated names of the containers to watch.
    #[arg(long, env = contract::ENV_WATCH_CONTAINER, value_delimiter = ',', required = true)]
    pub watch_containers: Vec<String>,

    /// Poll interval (humantime: 30s, 5m); jittered by ±10%.
    #[arg(long, env = contract::ENV_INTERVAL, default_value = contract::DEFAULT_INTERVAL, value_parser = settings::parse_interval)]
    pub interval: Duration,

    /// Who polls for the workload: `workload` (the replicas share the checks: each polls at
    /// interval × replicas, at most 100 intervals, at its own random phase) or `replica`
    /// (each at the interval).
    #[arg(long, env = contract::ENV_POLL, default_value = "workload", value_parser = settings::Poll::parse)]
    pub poll: settings::Poll,

    /// The trust policy a new digest's cosign signature must satisfy before a restart, as
    /// JSON (`{"name": …, "keys": […], "keyless": […], "transparencyLog": …}`); the
    /// webhook sets it from `pod-reloaded.io/verify`. Unset: no verification.
    #[arg(long, env = contract::ENV_VERIFY_POLICY, value_parser = parse_verify_policy)]
    pub verify_policy: Option<contract::trust::NamedPolicy>,

    /// Base URL of a registry (mirror) to ask instead of the one in the image reference
    /// (a path prefix is kept), or `host=URL[,host=URL]` to redirect only those hosts;
    /// `http://` means plain HTTP.
    #[arg(long, env = contract::ENV_REGISTRY_URL, value_parser = RegistryOverride::parse)]
    pub registry_url: Option<RegistryOverride>,

    /// Name of this pod; default: the pod whose hostname is `HOSTNAME` (a pod's hostname
    /// is its name unless `spec.hostname` sets another).
    #[arg(long, env = contract::ENV_POD_NAME)]
    pub pod_name: Option<String>,

    /// Namespace of this pod; default: the Kubernetes client's (in a pod, its service
    /// account's namespace).
    #[arg(long, env = contract::ENV_POD_NAMESPACE)]
    pub pod_namespace: Option<String>,

    /// This container's hostname, set by the runtime: finds the pod when `POD_NAME` is not
    /// set (a sidecar deployed by hand, as the image-checker was).
    #[arg(long, env = "HOSTNAME", hide = true)]
    pub hostname: Option<String>,

    /// Directory of mounted pull secrets (`<dir>/<secret>/.dockerconfigjson`).
    #[arg(long, env = contract::ENV_PULL_SECRETS_DIR)]
    pub pull_secrets_dir: Option<PathBuf>,

    /// PEM bundle of extra CAs to trust for registries.
    #[arg(long, env = contract::ENV_REGISTRY_CA_FILE)]
    pub registry_ca_file: Option<PathBuf>,

    /// Directory of PEM files with extra CAs to trust for registries (every file in it;
    /// missing or empty: none). The webhook mounts `--sidecar-ca-configmap` here.
    #[arg(long, env = contract::ENV_REGISTRY_CA_DIR)]
    pub registry_ca_dir: Option<PathBuf>,

    /// Registry hosts (host[:port], comma-separated) to talk to over plain HTTP.
    #[arg(long, env = contract::ENV_INSECURE_REGISTRIES, value_delimiter = ',')]
    pub insecure_registries: Vec<String>,

    /// Timeout of one registry request (100ms to 10m).
    #[arg(long, env = contract::ENV_REGISTRY_TIMEOUT, default_value = "10s", value_parser = settings::parse_timeout)]
    pub registry_timeout: Duration,

    /// Timeout of one Kubernetes API request (100ms to 10m): a slow API server fails the
    /// round, which is retried with backoff, instead of stalling the checker.
    #[arg(long, env = contract::ENV_API_TIMEOUT, default_value = "15s", value_parser = settings::parse_timeout)]
    pub api_timeout: Duration,

    /// Platform whose manifest the pod runs (os/arch[/variant]); default: this binary's.
    #[arg(long, env = contract::ENV_PLATFORM, value_parser = Platform::parse)]
    pub platform: Option<Platform>,

    /// `auto`: log in to Amazon ECR, Google Artifact Registry/GCR and Azure ACR with the
    /// pod's cloud identity when no pull secret has credentials for them; `none`: never.
    #[arg(long, env = contract::ENV_CLOUD_AUTH, default_value = "auto", value_parser = CloudAuth::parse)]
    pub cloud_auth: CloudAuth,

    /// Run one round and exit: 0 when up to date or restarted, 1 on error.
    #[arg(long)]
    pub once: bool,

    /// Serve Prometheus /metrics on this address (off by default).
    #[arg(long, env = contract::ENV_METRICS_LISTEN)]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format.
    #[arg(
        long,
        env = contract::ENV_LOG_FORMAT,
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&mut self) -> Result<(), String> {
        self.watch_containers = self
            .watch_containers
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        for host in &self.insecure_registries {
            if !host.trim().is_empty() {
                pod_reloaded_contract::settings::check_registry_host(host.trim()).map_err(
                    |problem| format!("{}: {problem}", contract::ENV_INSECURE_REGISTRIES),
                )?;
            }
        }
        if let Some(dir) = &self.registry_ca_dir {
            if dir.exists() && !dir.is_dir() {
                return Err(format!(
                    "--registry-ca-dir {} is a file, not a directory (use --registry-ca-file)",
                    dir.display()
                ));
            }
        }
        if self.watch_containers.is_empty() {
            return Err(format!(
                "{} names no container",
                contract::ENV_WATCH_CONTAINER
            ));
        }
        let set = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        self.pod_name = set(&self.pod_name);
        self.pod_namespace = set(&self.pod_namespace);
        self.hostname = set(&self.hostname);
        if self.pod_name.is_none() && self.hostname.is_none() {
            return Err(format!(
                "neither {} nor HOSTNAME is set: set {} from the downward API (fieldRef metadata.name)",
                contract::ENV_POD_NAME,
                contract::ENV_POD_NAME
            ));
        }
        Ok(())
    }
}

/// `--cloud-auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudAuth {
    Auto,
    None,
}

impl CloudAuth {
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            other => Err(format!("{other:?} is neither \"auto\" nor \"none\"")),
        }
    }
}

fn parse_verify_policy(text: &str) -> Result<contract::trust::NamedPolicy, String> {
    contract::trust::NamedPolicy::from_json(text).map_err(|e| e.to_string())
}
