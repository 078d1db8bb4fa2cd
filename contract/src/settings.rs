//! Settings both binaries read and must agree on: the webhook validates a pod's
//! annotations with these functions before it injects, and the sidecar parses the env the
//! webhook wrote with the same functions, so a value the webhook accepts never stops the
//! sidecar at start.

use std::time::Duration;

use crate::image::is_docker_hub;

/// Shortest poll interval: shorter would hammer registries.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest poll interval. Longer is surely a typo, and the backoff arithmetic stays far
/// from overflow.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// A duration as users write it (`30s`, `5m`, `1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

/// The poll interval: a duration from 1s to 24h.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < MIN_INTERVAL {
        return Err(format!("{text:?} is shorter than the minimum of 1s"));
    }
    if interval > MAX_INTERVAL {
        return Err(format!("{text:?} is longer than the maximum of 24h"));
    }
    Ok(interval)
}

/// A request timeout: from 100ms to 10m (0 would fail every request; hours would park a
/// round).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(600) {
        return Err(format!("{text:?} is not between 100ms and 10m"));
    }
    Ok(timeout)
}

/// A duration between `min` and `max`; `why` says what the bounds protect.
pub fn parse_bounded(
    text: &str,
    min: Duration,
    max: Duration,
    why: &str,
) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration < min || duration > max {
        return Err(format!(
            "{text:?} is not between {} and {} ({why})",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(duration)
}

/// How often the webhook checks its TLS files: from 100ms (a zero period cannot tick) to 1h.
pub fn parse_tls_reload_interval(text: &str) -> Result<Duration, String> {
    parse_bounded(
        text,
        Duration::from_millis(100),
        Duration::from_secs(3600),
        "a renewed certificate is picked up within it",
    )
}

/// The webhook's RBAC side effect: from 100ms to 4s, inside the 5s the API server gives
/// the whole webhook call (0 would admit every pod uninjected).
pub fn parse_api_timeout(text: &str) -> Result<Duration, String> {
    parse_bounded(
        text,
        Duration::from_millis(100),
        Duration::from_secs(4),
        "the API server gives the whole webhook call 5s",
    )
}

/// A wait between two attempts to deliver a notification: at most 1h (a notification
/// hours late tells nobody anything).
pub fn parse_retry_delay(text: &str) -> Result<Duration, String> {
    parse_bounded(
        text,
        Duration::from_millis(10),
        Duration::from_secs(3600),
        "a notification an hour late is news to nobody",
    )
}

/// One attempt to deliver a notification: a receiver slower than this is counted as down.
pub fn parse_notify_timeout(text: &str) -> Result<Duration, String> {
    parse_bounded(
        text,
        Duration::from_secs(1),
        Duration::from_secs(60),
        "a receiver that needs more is down",
    )
}

/// Serving on after SIGTERM while endpoints drop the pod: at most 2m, within a pod's
/// usual termination grace period.
pub fn parse_shutdown_delay(text: &str) -> Result<Duration, String> {
    parse_bounded(
        text,
        Duration::ZERO,
        Duration::from_secs(120),
        "a pod is killed after its termination grace period",
    )
}

/// A DNS-1123 label (a namespace's name): 1 to 63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn check_dns_label(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a DNS-1123 label (1-63 lowercase letters, digits or '-', starting and ending with a letter or digit)"
        ))
    }
}

/// A DNS-1123 subdomain (a ConfigMap's or Secret's name): at most 253 characters of
/// DNS-1123 labels joined by '.'.
pub fn check_dns_subdomain(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| check_dns_label(label).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253)"
        ))
    }
}

/// A registry host as images name it: `host[:port]`, no scheme, path or spaces.
pub fn check_registry_host(text: &str) -> Result<(), String> {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || text.starts_with('[') => (host, Some(port)),
        _ => (text, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a registry host[:port] (no scheme, path or spaces)"
        ))
    }
}

/// A resource request or limit: a quantity of the API's grammar, not negative (the API
/// server refuses a pod with a negative one, and `failurePolicy: Ignore` does not cover
/// that refusal: every opted-in pod would be refused).
pub fn parse_resource_quantity(text: &str) -> Result<f64, String> {
    let value = parse_quantity(text)?;
    if value < 0.0 || text.trim_start().starts_with('-') {
        return Err(format!("{text:?} is negative"));
    }
    Ok(value)
}

/// A Kubernetes resource quantity (`100m`, `16Mi`, `1.5`, `2e3`), checked with the API's
/// grammar (apimachinery's `resource.Quantity`): the value, for comparisons. The API
/// server rejects a pod whose quantities do not parse, so a bad one must stop the
/// webhook at start rather than reach every opted-in pod.
pub fn parse_quantity(text: &str) -> Result<f64, String> {
    let invalid = || format!("{text:?} is not a Kubernetes quantity (e.g. 100m, 0.5, 16Mi, 1G)");
    let (number, suffix) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .map_or((text, ""), |i| text.split_at(i));
    let unsigned = number.strip_prefix(['+', '-']).unwrap_or(number);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty())
        || !digits_ok(whole)
        || !digits_ok(fraction)
        || unsigned.matches('.').count() > 1
    {
        return Err(invalid());
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent if exponent.starts_with(['e', 'E']) => {
            let power = &exponent[1..];
            let digits = power.strip_prefix(['+', '-']).unwrap_or(power);
            if digits.is_empty() || !digits_ok(digits) {
                return Err(invalid());
            }
            10f64.powi(power.parse().map_err(|_| invalid())?)
        }
        _ => return Err(invalid()),
    };
    Ok(value * multiplier)
}

/// Where to ask for a registry's manifests: `http(s)://host[:port][/path prefix]`.
/// Registries served under a path (Artifactory's `/api/docker/<repo>`, Nexus, Harbor
/// proxies behind a gateway) are supported: requests go to `<url>/v2/...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryUrl {
    /// `https://host[:port][/prefix]`, no trailing slash.
    pub base: String,
    /// `host[:port]`, for credential look-up.
    pub host: String,
    /// The text as given, when it was the old image-checker's form (`…/api/v1/repository/`).
    pub legacy_form: Option<String>,
}

/// The path of the only registry URL the hand-deployed image-checker documented
/// (`https://domain.com/api/v1/repository/`): Quay's API base, not where a registry's
/// `/v2/` lives. A URL with exactly this path means the registry at its host.
pub const LEGACY_IMAGE_CHECKER_API_PATH: &str = "api/v1/repository";

impl RegistryUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim().trim_end_matches('/');
        let rest = trimmed
            .strip_prefix("https://")
            .or_else(|| trimmed.strip_prefix("http://"))
            .ok_or_else(|| format!("{text:?} must start with http:// or https://"))?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host_ok = !host.is_empty()
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !host_ok {
            return Err(format!("{text:?} has no valid host[:port]"));
        }
        let path_ok = path.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~' | b'%')
        }) && !path.starts_with('/')
            && !path.contains("//");
        if !path_ok || trimmed.contains(['?', '#']) {
            return Err(format!(
                "{text:?} must be scheme://host[:port][/path] without query or spaces"
            ));
        }
        if path == LEGACY_IMAGE_CHECKER_API_PATH {
            let base = &trimmed[..trimmed.len() - path.len() - 1];
            return Ok(Self {
                base: base.to_string(),
                host: host.to_ascii_lowercase(),
                legacy_form: Some(text.trim().to_string()),
            });
        }
        Ok(Self {
            base: trimmed.to_string(),
            host: host.to_ascii_lowercase(),
            legacy_form: None,
        })
    }

    /// Plain HTTP (`http://`), for registries the user marked so.
    pub fn is_plain_http(&self) -> bool {
        self.base.starts_with("http://")
    }
}

/// The `pod-reloaded.io/registry-url` setting: either one URL that every watched
/// container is checked against (a pod usually pulls from one registry), or
/// `host=URL[,host=URL...]` pairs that redirect only images from those hosts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryOverride {
    every_image: Option<RegistryUrl>,
    by_host: Vec<(String, RegistryUrl)>,
}

impl RegistryOverride {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if !text.contains('=') {
            return Ok(Self {
                every_image: Some(RegistryUrl::parse(text)?),
                by_host: Vec::new(),
            });
        }
        let mut by_host = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (host, url) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not host=URL"))?;
            let host = host.trim().to_ascii_lowercase();
            if host.is_empty() || host.contains(['/', ' ']) {
                return Err(format!("{entry:?}: {host:?} is not a registry host[:port]"));
            }
            by_host.push((host, RegistryUrl::parse(url)?));
        }
        if by_host.is_empty() {
            return Err(format!("{text:?} names no registry"));
        }
        Ok(Self {
            every_image: None,
            by_host,
        })
    }

    /// The URLs given in the old image-checker's form, as given (said once at start).
    pub fn legacy_forms(&self) -> Vec<(&str, &str)> {
        self.every_image
            .iter()
            .chain(self.by_host.iter().map(|(_, url)| url))
            .filter_map(|url| {
                url.legacy_form
                    .as_deref()
                    .map(|text| (text, url.base.as_str()))
            })
            .collect()
    }

    /// The URL to ask instead of `registry` (an image's host), if any.
    pub fn for_registry(&self, registry: &str) -> Option<&RegistryUrl> {
        if let Some(url) = &self.every_image {
            return Some(url);
        }
        self.by_host
            .iter()
            .find(|(host, _)| {
                host.eq_ignore_ascii_case(registry)
                    || (is_docker_hub(host) && is_docker_hub(registry))
            })
            .map(|(_, url)| url)
    }
}

/// What a failed rollout leads to (`pod-reloaded.io/on-failure`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Roll back to the digests the pods ran before, and quarantine the new ones.
    Rollback,
    /// Quarantine the new digests only; the workload stays as it is.
    Halt,
}

impl OnFailure {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "rollback" => Ok(Self::Rollback),
            "halt" => Ok(Self::Halt),
            other => Err(format!("{other:?} is neither \"rollback\" nor \"halt\"")),
        }
    }
}

/// `pod-reloaded.io/rollout-timeout`: from 1s to 24h.
pub fn parse_rollout_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout < Duration::from_secs(1) || timeout > MAX_INTERVAL {
        return Err(format!("{text:?} is not between 1s and 24h"));
    }
    Ok(timeout)
}

/// `pod-reloaded.io/mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Restart,
    /// Never restart: an Event per new digest and the metric.
    Notify,
}

impl Mode {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "restart" => Ok(Self::Restart),
            "notify" => Ok(Self::Notify),
            other => Err(format!("{other:?} is neither \"restart\" nor \"notify\"")),
        }
    }
}

/// Who polls for a workload (`pod-reloaded.io/poll`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Poll {
    /// The replicas share the checks: each polls at `interval × replicas` (capped), at its
    /// own random phase, so the workload is checked about once per interval.
    #[default]
    Workload,
    /// Every replica polls at `interval`.
    Replica,
}

impl Poll {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "workload" => Ok(Self::Workload),
            "replica" => Ok(Self::Replica),
            other => Err(format!("{other:?} is neither \"workload\" nor \"replica\"")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Replica => "replica",
        }
    }
}

/// Longest a replica's poll period is stretched, as a multiple of the interval: each pod
/// still looks at the registry and at its own pod at least this often (a pod whose
/// siblings all went away is not left unwatched for days), and past this many replicas a
/// workload is checked a little more than once per interval.
pub const MAX_POLL_STRETCH: u32 = 100;

/// A replica's poll period: `interval` × `replicas` when the replicas share the checks,
/// at most `MAX_POLL_STRETCH` intervals and `MAX_INTERVAL`; `interval` for one replica
/// or `Poll::Replica`.
pub fn poll_period(interval: Duration, replicas: u32, poll: Poll) -> Duration {
    match poll {
        Poll::Replica => interval,
        Poll::Workload => {
            let stretch = replicas.clamp(1, MAX_POLL_STRETCH);
            interval
                .saturating_mul(stretch)
                .min(MAX_INTERVAL.max(interval))
        }
    }
}

/// `pod-reloaded.io/min-age` and `pod-reloaded.io/cooldown`: from 0s to 30 days.
pub fn parse_wait(text: &str) -> Result<Duration, String> {
    let wait = parse_duration(text)?;
    if wait > Duration::from_secs(30 * 24 * 3600) {
        return Err(format!("{text:?} is longer than 30 days"));
    }
    Ok(wait)
}

/// `pod-reloaded.io/pin`: `"true"` (default) or `"false"`.
pub fn parse_pin(text: &str) -> Result<bool, String> {
    match text.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{other:?} is neither \"true\" nor \"false\"")),
    }
}

/// `pod-reloaded.io/pull-policy`: `set` (default) or `keep`.
pub fn parse_pull_policy(text: &str) -> Result<bool, String> {
    match text.trim() {
        "set" => Ok(true),
        "keep" => Ok(false),
        other => Err(format!("{other:?} is neither \"set\" nor \"keep\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replicas_period_grows_with_the_workload_up_to_its_caps() {
        let minute = Duration::from_secs(60);
        assert_eq!(poll_period(minute, 1, Poll::Workload), minute);
        assert_eq!(poll_period(minute, 0, Poll::Workload), minute);
        assert_eq!(poll_period(minute, 50, Poll::Workload), minute * 50);
        assert_eq!(poll_period(minute, 5000, Poll::Workload), minute * 100);
        assert_eq!(poll_period(minute, 50, Poll::Replica), minute);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            poll_period(hour, 50, Poll::Workload),
            MAX_INTERVAL,
            "never longer than the longest interval"
        );
        assert_eq!(Poll::parse(" replica "), Ok(Poll::Replica));
        assert!(Poll::parse("pod").is_err());
    }

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(parse_interval("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_interval(" 1m "), Ok(Duration::from_secs(60)));
        assert!(parse_interval("500ms").unwrap_err().contains("minimum"));
        assert!(parse_interval("25h").unwrap_err().contains("maximum"));
        assert!(parse_interval("99999999999999999s").is_err());
        assert!(parse_interval("soon").is_err());
    }

    #[test]
    fn registry_urls_may_have_a_path_prefix() {
        let url = RegistryUrl::parse("https://artifactory.example.com/api/docker/hub/").unwrap();
        assert_eq!(url.base, "https://artifactory.example.com/api/docker/hub");
        assert_eq!(url.host, "artifactory.example.com");
        assert!(!url.is_plain_http());
        let plain = RegistryUrl::parse("http://127.0.0.1:5000").unwrap();
        assert!(plain.is_plain_http());
        assert_eq!(plain.host, "127.0.0.1:5000");
        for bad in [
            "registry.example.com",
            "ftp://x",
            "https://",
            "https:///path",
            "https://a b",
            "https://host/p?q=1",
            "https://host//double",
        ] {
            assert!(RegistryUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_override_applies_to_every_image_or_to_named_hosts() {
        let all = RegistryOverride::parse("https://mirror.example.com").unwrap();
        assert_eq!(
            all.for_registry("ghcr.io").map(|u| u.base.as_str()),
            Some("https://mirror.example.com")
        );
        let scoped = RegistryOverride::parse(
            "docker.io=https://mirror.example.com/hub, ghcr.io=http://10.0.0.1:5000",
        )
        .unwrap();
        assert_eq!(
            scoped
                .for_registry("registry-1.docker.io")
                .map(|u| u.base.as_str()),
            Some("https://mirror.example.com/hub")
        );
        assert_eq!(
            scoped.for_registry("ghcr.io").map(|u| u.base.as_str()),
            Some("http://10.0.0.1:5000")
        );
        assert_eq!(scoped.for_registry("quay.io"), None);
        assert!(RegistryOverride::parse("docker.io=").is_err());
        // The old image-checker's documented form is the registry at that host.
        let legacy =
            RegistryOverride::parse("https://quay.example.com/api/v1/repository/").unwrap();
        assert_eq!(
            legacy
                .for_registry("quay.example.com")
                .map(|u| u.base.as_str()),
            Some("https://quay.example.com")
        );
        assert_eq!(
            legacy.legacy_forms(),
            vec![(
                "https://quay.example.com/api/v1/repository/",
                "https://quay.example.com"
            )]
        );
        // Any other path is a prefix, as before.
        let prefixed =
            RegistryOverride::parse("https://a.example.com/api/v1/repository/x").unwrap();
        assert_eq!(
            prefixed.for_registry("x").map(|u| u.base.as_str()),
            Some("https://a.example.com/api/v1/repository/x")
        );
        assert!(prefixed.legacy_forms().is_empty());
        assert!(RegistryOverride::parse("=https://x").is_err());
        assert!(RegistryOverride::parse(",").is_err());
    }

    #[test]
    fn bounded_settings_say_why() {
        assert!(parse_tls_reload_interval("0s")
            .unwrap_err()
            .contains("between 100ms"));
        assert_eq!(
            parse_tls_reload_interval("10s"),
            Ok(Duration::from_secs(10))
        );
        assert!(parse_api_timeout("0s").is_err());
        assert!(parse_api_timeout("6s").unwrap_err().contains("5s"));
        assert!(parse_shutdown_delay("9999999h").is_err());
        assert_eq!(parse_shutdown_delay("0s"), Ok(Duration::ZERO));
        assert!(check_dns_label("pod-reloaded").is_ok());
        for bad in ["", "Not_A_Namespace", "-x", &"a".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad}");
        }
        assert!(check_dns_subdomain("registry-cas.v1").is_ok());
        assert!(check_dns_subdomain("Bad_Name!").is_err());
        for good in [
            "registry.local:5000",
            "127.0.0.1:5000",
            "localhost",
            "[::1]:5000",
        ] {
            assert!(check_registry_host(good).is_ok(), "{good}");
        }
        for bad in ["http://foo/bar baz", "foo/bar", "host:port", "", "a b"] {
            assert!(check_registry_host(bad).is_err(), "{bad}");
        }
        assert!(parse_resource_quantity("-5m").is_err());
        assert_eq!(parse_resource_quantity("0"), Ok(0.0));
    }

    #[test]
    fn quantities_follow_the_api_grammar() {
        assert_eq!(parse_quantity("100m"), Ok(0.1));
        assert_eq!(parse_quantity("16Mi"), Ok(16.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("1.5"), Ok(1.5));
        assert_eq!(parse_quantity(".5G"), Ok(0.5e9));
        assert_eq!(parse_quantity("2e3"), Ok(2000.0));
        assert_eq!(parse_quantity("1E-3"), Ok(0.001));
        for bad in [
            "banana", "", "1.2.3", "16MB", "m", "1e", "10 Mi", "1Mi2", ".",
        ] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timing_settings() {
        assert_eq!(Mode::parse("notify"), Ok(Mode::Notify));
        assert!(Mode::parse("dry-run").is_err());
        assert_eq!(parse_wait("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_wait("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_wait("31d").is_err());
        assert!(parse_wait("-1s").is_err());
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(parse_timeout("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("1h").is_err());
    }

    #[test]
    fn rollout_settings() {
        assert_eq!(OnFailure::parse("rollback"), Ok(OnFailure::Rollback));
        assert_eq!(OnFailure::parse(" halt"), Ok(OnFailure::Halt));
        assert!(OnFailure::parse("Rollback").is_err());
        assert_eq!(parse_rollout_timeout("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_rollout_timeout("0s").is_err());
        assert!(parse_rollout_timeout("2d").is_err());
        assert_eq!(parse_pin("false"), Ok(false));
        assert!(parse_pin("no").is_err());
    }

    #[test]
    fn pull_policies() {
        assert_eq!(parse_pull_policy("set"), Ok(true));
        assert_eq!(parse_pull_policy("keep"), Ok(false));
        assert!(parse_pull_policy("Always").is_err());
    }
}
