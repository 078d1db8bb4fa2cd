//! One round of the checker, and when the next one comes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tracing::{info, warn};

use crate::cluster::{Cluster, Owner, RestartOutcome};
use crate::compare::{self, Verdict};
use crate::config::Config;
use crate::metrics::{CheckResult, Metrics};
use crate::registry::credentials::Credentials;
use crate::registry::{RegistryClient, RegistryError, Repository};
use crate::restart::Change;
use pod_reloaded_contract::image::{
    parse_image, parse_image_id, ImageSpec, RunningDigest, WatchedImage,
};

/// Longest wait between rounds while errors repeat (unless the interval is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(600);

#[derive(Debug, PartialEq, Eq)]
pub enum RoundOutcome {
    UpToDate,
    Restarted,
    /// A change another replica already restarted for (or that did not take).
    AlreadyRestarted,
    /// Something failed; nothing was restarted. `retry_after` is the registry's wish.
    Failed {
        retry_after: Option<Duration>,
    },
}

/// The last verdict per container, so an unchanged round costs one HEAD even when the
/// first verdict needed the manifest (running digest is an index child or a config).
#[derive(Clone, PartialEq, Eq)]
struct Remembered {
    remote_digest: String,
    running: RunningDigest,
    verdict: Verdict,
}

pub struct Checker {
    config: Config,
    registry: RegistryClient,
    cluster: Cluster,
    pub metrics: Arc<Metrics>,
    remembered: HashMap<String, Remembered>,
    /// Things said once and not again (pinned images, unrestartable owner, warnings).
    said: HashSet<String>,
}

impl Checker {
    pub fn new(
        config: Config,
        registry: RegistryClient,
        cluster: Cluster,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            registry,
            cluster,
            metrics,
            remembered: HashMap::new(),
            said: HashSet::new(),
        }
    }

    fn first_time(&mut self, key: String) -> bool {
        self.said.insert(key)
    }

    /// Where to ask about `watched`: the override for its registry, if any, else the
    /// registry itself (plain HTTP when listed as insecure).
    fn repository(&self, watched: &WatchedImage) -> Repository {
        let redirect = self
            .config
            .registry_url
            .as_ref()
            .and_then(|o| o.for_registry(&watched.registry));
        let (base_url, host) = match redirect {
            Some(url) => (url.base.clone(), url.host.clone()),
            None => {
                let insecure = self
                    .config
                    .insecure_registries
                    .iter()
                    .any(|h| h.trim().eq_ignore_ascii_case(&watched.registry));
                let scheme = if insecure { "http" } else { "https" };
                (
                    format!("{scheme}://{}", watched.registry),
                    watched.registry.clone(),
                )
            }
        };
        Repository {
            base_url,
            host,
            name: watched.repository.clone(),
        }
    }

    pub async fn round(&mut self) -> RoundOutcome {
        let pod = match self.cluster.read_pod().await {
            Ok(pod) => pod,
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "round failed: cannot read our pod"
                );
                return RoundOutcome::Failed { retry_after: None };
            }
        };
        let mut changes = Vec::new();
        let mut failed = false;
        let mut retry_after = None;
        for container in self.config.watch_containers.clone() {
            match self.check_container(&pod, &container).await {
                Ok(Some(change)) => changes.push(change),
                Ok(None) => {}
                Err(CheckError::Registry(error)) => {
                    retry_after = retry_after.max(error.retry_after());
                    failed = true;
                }
                Err(CheckError::Other) => failed = true,
            }
        }
        if changes.is_empty() {
            return if failed {
                RoundOutcome::Failed { retry_after }
            } else {
                RoundOutcome::UpToDate
            };
        }
        // A change seen for one container is acted on even if another container's check
        // failed: the failure means "unknown" for that container only.
        self.restart_for(&pod, &changes).await
    }

    async fn check_container(
        &mut self,
        pod: &Pod,
        container: &str,
    ) -> Result<Option<Change>, CheckError> {
        let spec = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == container));
        let Some(image) = spec.and_then(|c| c.image.clone()) else {
            if self.first_time(format!("missing:{container}")) {
                warn!(
                    container,
                    "the pod has no such container; check {}",
                    pod_reloaded_contract::ENV_WATCH_CONTAINER
                );
            }
            self.metrics.check(CheckResult::Error);
            return Err(CheckError::Other);
        };
        let watched = match parse_image(&image) {
            Ok(ImageSpec::Tagged(watched)) => watched,
            Ok(ImageSpec::Pinned(digest)) => {
                if self.first_time(format!("pinned:{container}")) {
                    info!(
                        container,
                        image, digest, "image is pinned by digest: nothing to watch"
                    );
                }
                return Ok(None);
            }
            Err(error) => {
                warn!(container, error, "cannot watch this image");
                self.metrics.check(CheckResult::Error);
                return Err(CheckError::Other);
            }
        };
        let status = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|statuses| statuses.iter().find(|s| s.name == container));
        let running = match status
            .map(|s| s.image_id.as_str())
            .filter(|id| !id.is_empty())
        {
            None => {
                info!(
                    container,
                    image, "container has no running digest yet; checking next round"
                );
                self.metrics.check(CheckResult::Error);
                return Err(CheckError::Other);
            }
            Some(image_id) => match parse_image_id(image_id) {
                Ok(running) => running,
                Err(error) => {
                    warn!(container, error, "cannot read the running digest");
                    self.metrics.check(CheckResult::Error);
                    return Err(CheckError::Other);
                }
            },
        };

        let repository = self.repository(&watched);
        let verdict = match self
            .verdict(container, &repository, &watched.tag, &running)
            .await
        {
            Ok(verdict) => verdict,
            Err(error) => {
                if matches!(error.0, RegistryError::Unauthorized { .. }) {
                    self.reload_credentials();
                }
                warn!(container, image = %watched, running = running.digest(), error = %error.0, decision = "error", "no change assumed");
                self.metrics.check(CheckResult::Error);
                return Err(CheckError::Registry(error.0));
            }
        };
        let remote = self
            .remembered
            .get(container)
            .map(|r| r.remote_digest.clone())
            .unwrap_or_default();
        match verdict {
            Verdict::UpToDate => {
                info!(container, image = %watched, running = running.digest(), remote, decision = "up-to-date", "checked");
                self.metrics.check(CheckResult::UpToDate);
                Ok(None)
            }
            Verdict::Changed => {
                info!(container, image = %watched, running = running.digest(), remote, decision = "changed", "checked");
                self.metrics.check(CheckResult::Changed);
                Ok(Some(Change {
                    container: container.to_string(),
                    digest: remote,
                }))
            }
        }
    }

    async fn verdict(
        &mut self,
        container: &str,
        repository: &Repository,
        tag: &str,
        running: &RunningDigest,
    ) -> Result<Verdict, Boxed> {
        let remote = self
            .registry
            .resolve_tag(repository, tag)
            .await
            .map_err(Boxed)?;
        if let Some(known) = self.remembered.get(container) {
            if known.remote_digest == remote.digest && &known.running == running {
                return Ok(known.verdict);
            }
        }
        let verdict = match compare::decide_from_head(running, &remote) {
            Some(verdict) => verdict,
            None => {
                let want_config = matches!(running, RunningDigest::Config(_));
                let details = self
                    .registry
                    .inspect(repository, &remote, want_config)
                    .await
                    .map_err(Boxed)?;
                compare::decide_from_details(running, &remote, &details).map_err(|reason| {
                    Boxed(RegistryError::Unexpected {
                        url: repository.base_url.clone(),
                        reason,
                    })
                })?
            }
        };
        self.remembered.insert(
            container.to_string(),
            Remembered {
                remote_digest: remote.digest,
                running: running.clone(),
                verdict,
            },
        );
        Ok(verdict)
    }

    fn reload_credentials(&self) {
        if let Some(dir) = &self.config.pull_secrets_dir {
            let (credentials, problems) = Credentials::load(dir);
            for problem in problems {
                warn!(problem, "pull secret not usable");
            }
            self.registry.set_credentials(credentials);
        }
    }

    async fn restart_for(&mut self, pod: &Pod, changes: &[Change]) -> RoundOutcome {
        let workload = match self.cluster.owner(pod).await {
            Ok(Owner::Restartable(workload)) => workload,
            Ok(Owner::NotRestartable(why)) => {
                if self.first_time("unrestartable".to_string()) {
                    warn!(
                        %why,
                        "image changed but nothing can be restarted; not restarting"
                    );
                }
                return RoundOutcome::Failed { retry_after: None };
            }
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "cannot find the workload to restart"
                );
                return RoundOutcome::Failed { retry_after: None };
            }
        };
        let summary: Vec<String> = changes
            .iter()
            .map(|c| format!("{}={}", c.container, c.digest))
            .collect();
        let summary = summary.join(",");
        match self.cluster.restart(&workload, changes, pod).await {
            Ok(RestartOutcome::Restarted { restarted_for }) => {
                info!(%workload, restarted_for, decision = "restart", "triggered a rolling restart");
                self.metrics.restart();
                self.cluster
                    .event(
                        &workload,
                        false,
                        "ImageDigestChanged",
                        format!("pod-reloaded restarted {workload}: the watched tag now points to {summary}"),
                    )
                    .await;
                RoundOutcome::Restarted
            }
            Ok(RestartOutcome::AlreadyRestarted { pull_did_not_take }) => {
                if pull_did_not_take {
                    if self.first_time(format!("did-not-take:{summary}")) {
                        warn!(%workload, changes = summary, decision = "skip", "already restarted for this digest, but this new pod still runs the old one (loop guard)");
                        self.cluster
                            .event(
                                &workload,
                                true,
                                "ImageDigestUnchangedAfterRestart",
                                format!("pod-reloaded already restarted {workload} for {summary}, but pod {} still runs the old digest; not restarting again (check imagePullPolicy and the registry)", pod.metadata.name.as_deref().unwrap_or("")),
                            )
                            .await;
                    }
                } else {
                    info!(%workload, changes = summary, decision = "skip", "another replica already restarted the workload for this digest");
                }
                RoundOutcome::AlreadyRestarted
            }
            Err(error) => {
                warn!(%workload, error = format!("{error:#}"), "restart failed");
                RoundOutcome::Failed { retry_after: None }
            }
        }
    }
}

/// Why a container's check gave no verdict.
enum CheckError {
    Registry(RegistryError),
    Other,
}

/// Keeps the large error type off the stack of the round future.
struct Boxed(RegistryError);

/// The wait before the next round: the interval ±10% after a good round; after `failures`
/// failed rounds in a row, the interval doubled per failure (capped at
/// max(interval, 10 min)) with the same jitter, and never shorter than `Retry-After`.
pub fn next_delay(
    interval: Duration,
    failures: u32,
    retry_after: Option<Duration>,
    rng: &mut impl rand::Rng,
) -> Duration {
    let base = if failures == 0 {
        interval
    } else {
        let factor = 2u32.saturating_pow(failures.min(16));
        interval
            .saturating_mul(factor)
            .min(MAX_BACKOFF.max(interval))
    };
    let jitter = rng.gen_range(0.9..=1.1);
    let delay = base.mul_f64(jitter);
    match retry_after {
        Some(wait) if wait > delay => wait,
        _ => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_is_the_jittered_interval_when_healthy() {
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let d = next_delay(Duration::from_secs(60), 0, None, &mut rng);
            assert!(
                d >= Duration::from_secs(54) && d <= Duration::from_secs(66),
                "{d:?}"
            );
        }
    }

    #[test]
    fn failures_back_off_exponentially_up_to_a_cap() {
        let mut rng = rand::thread_rng();
        let second =
            |f| next_delay(Duration::from_secs(1), f, None, &mut rand::thread_rng()).as_secs_f64();
        assert!((1.8..=2.2).contains(&second(1)));
        assert!((7.2..=8.8).contains(&second(3)));
        let capped = next_delay(Duration::from_secs(1), 30, None, &mut rng);
        assert!(capped <= Duration::from_secs(660), "{capped:?}");
        let long_interval = next_delay(Duration::from_secs(3600), 5, None, &mut rng);
        assert!(
            long_interval >= Duration::from_secs(3240),
            "never faster than the interval: {long_interval:?}"
        );
    }

    #[test]
    fn retry_after_is_honoured() {
        let mut rng = rand::thread_rng();
        assert_eq!(
            next_delay(
                Duration::from_secs(1),
                1,
                Some(Duration::from_secs(30)),
                &mut rng
            ),
            Duration::from_secs(30)
        );
        let d = next_delay(
            Duration::from_secs(60),
            0,
            Some(Duration::from_secs(1)),
            &mut rng,
        );
        assert!(
            d >= Duration::from_secs(54),
            "a short Retry-After does not shorten the interval"
        );
    }
}
