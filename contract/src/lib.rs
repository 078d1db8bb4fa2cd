//! The names and rules pod-reloaded's webhook, sidecar and manifests agree on.
//!
//! These are the product contract: users put the names in their YAML, so they never
//! change silently, and a rule both binaries apply is written once, here: image
//! references and "is pinned" (`image`), the restartable-owner chain (`owner`), interval
//! and registry-URL validation (`settings`), and the `<container>=<digest>` annotation
//! format (`record`). Both binaries (and the manifest drift test) read them from here.

pub mod image;
pub mod notify;
pub mod owner;
pub mod pod_settings;
pub mod record;
pub mod settings;
pub mod trust;
pub mod window;

/// Label on a namespace or pod: `enabled` opts in, `disabled` (pod only) opts out.
pub const INJECT_LABEL: &str = "pod-reloaded.io/inject";
pub const INJECT_ENABLED: &str = "enabled";
pub const INJECT_DISABLED: &str = "disabled";

/// Pod annotations a user may set.
pub const ANNOTATION_WATCH_CONTAINERS: &str = "pod-reloaded.io/watch-containers";
pub const ANNOTATION_INTERVAL: &str = "pod-reloaded.io/interval";
pub const ANNOTATION_REGISTRY_URL: &str = "pod-reloaded.io/registry-url";
pub const ANNOTATION_PULL_POLICY: &str = "pod-reloaded.io/pull-policy";
/// `"false"`: the webhook never pins watched images to the restart's digest.
pub const ANNOTATION_PIN: &str = "pod-reloaded.io/pin";
/// `rollback` (default) or `halt`: what a failed rollout leads to.
pub const ANNOTATION_ON_FAILURE: &str = "pod-reloaded.io/on-failure";
/// How long new pods may fail or stay unready before a rollout has failed.
pub const ANNOTATION_ROLLOUT_TIMEOUT: &str = "pod-reloaded.io/rollout-timeout";
pub const DEFAULT_ROLLOUT_TIMEOUT: &str = "10m";
/// `restart` (default) or `notify`: Events and the metric only, never a restart.
pub const ANNOTATION_MODE: &str = "pod-reloaded.io/mode";
/// Soak: the tag must serve a digest this long before it is restarted to.
pub const ANNOTATION_MIN_AGE: &str = "pod-reloaded.io/min-age";
/// When restarts may start (`window::RestartWindows`).
pub const ANNOTATION_RESTART_WINDOW: &str = "pod-reloaded.io/restart-window";
/// The least time between two restarts of one workload.
pub const ANNOTATION_COOLDOWN: &str = "pod-reloaded.io/cooldown";
/// `workload` (default): the replicas of a workload share its checks, each polling at
/// `interval × replicas`; `replica`: every replica polls at `interval`.
pub const ANNOTATION_POLL: &str = "pod-reloaded.io/poll";
/// The trust policy (by name, from the webhook's `--trust-policy-file`) a new digest must
/// satisfy before it is restarted to; `off` opts the pod out of `--default-verify-policy`.
pub const ANNOTATION_VERIFY: &str = "pod-reloaded.io/verify";
pub const VERIFY_OFF: &str = "off";
/// On pod-reloaded's Events: the digests an Event is about (`<container>=<digest>[,...]`),
/// where they come from, and the watched images (`<container>=<image>[,...]`).
pub const ANNOTATION_EVENT_TO: &str = "pod-reloaded.io/to";
pub const ANNOTATION_EVENT_FROM: &str = "pod-reloaded.io/from";
pub const ANNOTATION_EVENT_IMAGES: &str = "pod-reloaded.io/images";
/// The `reportingComponent` of the sidecar's Events.
pub const EVENT_REPORTING_COMPONENT: &str = "pod-reloaded.io/sidecar";
/// Workload metadata annotation: `"true"` stops restarts of that workload.
pub const ANNOTATION_PAUSED: &str = "pod-reloaded.io/paused";
/// Workload metadata annotation: `<container>=<digest>@<RFC 3339>`, when each new
/// digest was first seen (`record::PendingRecord`).
pub const ANNOTATION_PENDING: &str = "pod-reloaded.io/pending";

/// Annotation the webhook writes on the pods it injected, with its version.
pub const ANNOTATION_INJECTED: &str = "pod-reloaded.io/injected";
/// Template annotation the sidecar writes: `<container>=<digest>` it restarted for.
pub const ANNOTATION_RESTARTED_FOR: &str = "pod-reloaded.io/restarted-for";
/// Template annotation the sidecar writes with each restart: `<container>=<digest>` the
/// pods ran before, the rollback target.
pub const ANNOTATION_ROLLED_FROM: &str = "pod-reloaded.io/rolled-from";
/// Workload metadata annotation: `<container>=<digest>` never to be restarted to.
pub const ANNOTATION_QUARANTINED: &str = "pod-reloaded.io/quarantined";
/// Workload metadata annotation: the last rollout pod-reloaded started and how it went
/// (`record::RolloutRecord`).
pub const ANNOTATION_ROLLOUT: &str = "pod-reloaded.io/rollout";
/// Template annotation `kubectl rollout restart` writes; changing it rolls the workload.
pub const ANNOTATION_RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Label put on every object the webhook creates in user namespaces, so `make undeploy`
/// can find them.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "pod-reloaded";

/// Env vars of the sidecar (names kept from the original image-checker).
pub const ENV_WATCH_CONTAINER: &str = "IMAGE_CHECKER_WATCH_CONTAINER";
pub const ENV_INTERVAL: &str = "IMAGE_CHECKER_INTERVAL";
pub const ENV_REGISTRY_URL: &str = "IMAGE_CHECKER_REGISTRY_URL";
pub const ENV_POD_NAME: &str = "POD_NAME";
pub const ENV_POD_NAMESPACE: &str = "POD_NAMESPACE";
/// Where the sidecar finds the pod's pull secrets (each mounted in a subdirectory).
pub const ENV_PULL_SECRETS_DIR: &str = "IMAGE_CHECKER_PULL_SECRETS_DIR";
/// Settings of the sidecar the webhook can set cluster-wide (its `--sidecar-*` flags).
pub const ENV_REGISTRY_CA_FILE: &str = "IMAGE_CHECKER_REGISTRY_CA_FILE";
pub const ENV_REGISTRY_CA_DIR: &str = "IMAGE_CHECKER_REGISTRY_CA_DIR";
pub const ENV_INSECURE_REGISTRIES: &str = "IMAGE_CHECKER_INSECURE_REGISTRIES";
pub const ENV_REGISTRY_TIMEOUT: &str = "IMAGE_CHECKER_REGISTRY_TIMEOUT";
pub const ENV_API_TIMEOUT: &str = "IMAGE_CHECKER_API_TIMEOUT";
pub const ENV_PLATFORM: &str = "IMAGE_CHECKER_PLATFORM";
pub const ENV_METRICS_LISTEN: &str = "IMAGE_CHECKER_METRICS_LISTEN";
pub const ENV_LOG_FORMAT: &str = "IMAGE_CHECKER_LOG_FORMAT";
pub const ENV_CLOUD_AUTH: &str = "IMAGE_CHECKER_CLOUD_AUTH";
pub const ENV_POLL: &str = "IMAGE_CHECKER_POLL";
/// The selected trust policy as JSON (`trust::NamedPolicy`): its content, since the
/// sidecar cannot read the webhook's ConfigMap.
pub const ENV_VERIFY_POLICY: &str = "IMAGE_CHECKER_VERIFY_POLICY";
/// Namespace annotation: receivers (`<name>[,...]`) of the notification config that hear
/// about this namespace's workloads, besides those its labels select.
pub const ANNOTATION_NOTIFY: &str = "pod-reloaded.io/notify";
/// On pod-reloaded's Events: the receivers already told (`<name>[,...]`), so a new
/// notifier (another replica, a restart) never tells them again.
pub const ANNOTATION_EVENT_NOTIFIED: &str = "pod-reloaded.io/notified";
/// The ConfigMap and the Secret, in the webhook's namespace, of the notifications.
pub const NOTIFY_CONFIGMAP: &str = "pod-reloaded-notify";
pub const NOTIFY_SECRET: &str = "pod-reloaded-notify";
/// The Lease the webhook's replicas hold, one at a time, to send notifications.
pub const NOTIFY_LEASE: &str = "pod-reloaded-notifier";
/// The ConfigMap, in the webhook's namespace, mounted as `--trust-policy-file`.
pub const TRUST_CONFIGMAP: &str = "pod-reloaded-trust";
/// Where the webhook mounts the `--sidecar-ca-configmap` ConfigMap in the sidecar.
pub const REGISTRY_CA_MOUNT_DIR: &str = "/etc/pod-reloaded/registry-ca";

/// Name of the injected container.
pub const SIDECAR_CONTAINER_NAME: &str = "pod-reloaded-checker";
/// ServiceAccount the webhook switches `default`-account pods to.
pub const CHECKER_SERVICE_ACCOUNT: &str = "pod-reloaded-checker";
/// ClusterRole the checker's account is bound to, per namespace.
pub const CHECKER_CLUSTER_ROLE: &str = "pod-reloaded-checker";
/// Where pull secrets are mounted in the sidecar: `<dir>/<secret name>/.dockerconfigjson`.
pub const PULL_SECRETS_MOUNT_DIR: &str = "/var/run/secrets/pod-reloaded/pull-secrets";

/// The webhook's own install: namespace, Service, and the TLS name it serves.
pub const WEBHOOK_NAMESPACE: &str = "pod-reloaded";
pub const WEBHOOK_SERVICE: &str = "pod-reloaded-webhook";
pub const WEBHOOK_MUTATE_PATH: &str = "/mutate";
pub const WEBHOOK_TLS_SECRET: &str = "pod-reloaded-webhook-tls";
pub const WEBHOOK_CONFIGURATION: &str = "pod-reloaded";

/// Defaults of the interval setting, shared so both sides agree.
pub const DEFAULT_INTERVAL: &str = "60s";

/// DNS name of the webhook Service, which its serving certificate must carry.
pub fn webhook_service_dns_name() -> String {
    format!("{WEBHOOK_SERVICE}.{WEBHOOK_NAMESPACE}.svc")
}

/// Name of the RoleBinding that grants `service_account` the checker ClusterRole.
pub fn checker_role_binding_name(service_account: &str) -> String {
    if service_account == CHECKER_SERVICE_ACCOUNT {
        CHECKER_CLUSTER_ROLE.to_string()
    } else {
        format!("{CHECKER_CLUSTER_ROLE}-{service_account}")
    }
}

/// True for a `sha256:<64 lowercase hex>` digest; anything else is not a digest we trust.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_validation_accepts_only_sha256_lower_hex() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert!(is_sha256_digest(&good));
        assert!(!is_sha256_digest(&good.to_uppercase()));
        assert!(!is_sha256_digest(&good[..good.len() - 1]));
        assert!(!is_sha256_digest(&format!("sha512:{}", "ab".repeat(32))));
        assert!(!is_sha256_digest(&format!("{good}0")));
    }

    #[test]
    fn role_binding_names_are_per_account() {
        assert_eq!(
            checker_role_binding_name("pod-reloaded-checker"),
            "pod-reloaded-checker"
        );
        assert_eq!(checker_role_binding_name("api"), "pod-reloaded-checker-api");
    }
}
