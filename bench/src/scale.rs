//! Fleet scale: many real sidecar processes, each with its own pod in a real API server,
//! against the real registry behind a Bearer-token proxy that counts every request. Half
//! the workloads share their checks (`--poll workload`, the default), half poll from every
//! replica (`--poll replica`, as before), side by side in the same run; then one push per
//! workload, and the time until its restart patch.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use pod_reloaded_contract as contract;
use pod_reloaded_tests::api_server::ApiServer;
use pod_reloaded_tests::fault_proxy::{BearerAuth, FaultProxy};
use pod_reloaded_tests::process::{binary, Running};
use pod_reloaded_tests::registry::{Registry, RegistryOptions};
use pod_reloaded_tests::workloads::{self, deployment_path};
use pod_reloaded_tests::world::PLATFORMS;
use serde_json::json;

use crate::process_stats::{cpu_time, mib, resident_kib};

#[derive(clap::Args, Clone)]
pub(crate) struct ScaleSettings {
    /// Workloads of `--replicas` pods each (half share their checks, half poll from every
    /// replica).
    #[arg(long, default_value_t = 20)]
    workloads: usize,
    #[arg(long, default_value_t = 50)]
    replicas: usize,
    /// Single-replica workloads besides (they behave as before whatever the mode).
    #[arg(long, default_value_t = 4)]
    singles: usize,
    /// The sidecars' interval.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// How long the steady state is measured.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    steady: Duration,
    /// Lifetime of the registry's Bearer tokens.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    token_lifetime: Duration,
}

struct Workload {
    name: String,
    repository: String,
    replicas: usize,
    shares_checks: bool,
}

impl Workload {
    fn mode(&self) -> &'static str {
        match (self.replicas, self.shares_checks) {
            (1, _) => "single replica",
            (_, true) => "`--poll workload` (shared)",
            (_, false) => "`--poll replica` (before)",
        }
    }
}

pub(crate) async fn scale(settings: &ScaleSettings) -> anyhow::Result<()> {
    let registry = Registry::start(RegistryOptions::default()).await;
    let proxy = FaultProxy::start(
        &registry.base_url,
        Some(BearerAuth {
            credentials: None,
            token_lifetime: settings.token_lifetime,
        }),
    )
    .await;
    let api = ApiServer::start().await?;
    let interval = humantime::format_duration(settings.interval).to_string();

    let mut workloads = Vec::new();
    for index in 0..settings.workloads + settings.singles {
        let replicas = if index < settings.workloads {
            settings.replicas
        } else {
            1
        };
        workloads.push(Workload {
            name: format!("app-{index}"),
            repository: format!("scale/app-{index}"),
            replicas,
            shares_checks: index % 2 == 0,
        });
    }
    let pods: usize = workloads.iter().map(|w| w.replicas).sum();
    eprintln!("scale: {} workloads, {pods} pods", workloads.len());

    let mut sidecars = Vec::new();
    let mut first_digests = BTreeMap::new();
    for workload in &workloads {
        let pushed = registry
            .push_index(&workload.repository, "latest", "v1", &PLATFORMS, false)
            .await;
        let image = format!("{}/{}:latest", registry.host(), workload.repository);
        let image_id = format!(
            "{}/{}@{}",
            registry.host(),
            workload.repository,
            pushed.digest
        );
        first_digests.insert(workload.name.clone(), pushed.digest.clone());
        let replica_set = workloads::deployment(&api, &workload.name, &image, json!({}));
        workloads::scale_deployment(&api, &workload.name, workload.replicas);
        for replica in 0..workload.replicas {
            let pod = format!("{}-{replica}", workload.name);
            workloads::running_pod(
                &api,
                &pod,
                Some(&replica_set),
                &image,
                &image_id,
                "2026-11-24T00:00:00Z",
            );
            let harness =
                workloads::sidecar_command(&api, &pod, "web", &interval, Some(&proxy.base_url()));
            let mut command = Command::new(binary("pod-reloaded-sidecar"));
            command.env_clear().env("RUST_LOG", "warn");
            for (name, value) in harness.get_envs() {
                if let Some(value) = value {
                    command.env(name, value);
                }
            }
            if !workload.shares_checks {
                command.env(contract::ENV_POLL, "replica");
            }
            sidecars.push(Running::spawn(command));
        }
    }
    let started = Instant::now();
    eprintln!("scale: {} sidecars started", sidecars.len());

    // Warm-up: every sidecar has read its pod and made its first check (the first HEAD of
    // each is answered 401, then sent again with a token).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let heads = proxy.count("HEAD", "/manifests/");
        if heads >= 2 * sidecars.len() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {heads} HEADs from {} sidecars after 5 minutes",
            sidecars.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let warm_up = started.elapsed();
    // A stretched period starts at a random phase: let the first phases pass.
    tokio::time::sleep(settings.interval * 2).await;
    let pids: Vec<u32> = sidecars.iter().map(|s| s.child.id()).collect();
    let cpu_before: Duration = pids.iter().map(|pid| cpu_time(*pid)).sum();
    let window_start = Instant::now();
    eprintln!("scale: steady state for {:?}", settings.steady);
    tokio::time::sleep(settings.steady).await;
    let window_end = Instant::now();
    let cpu_after: Duration = pids.iter().map(|pid| cpu_time(*pid)).sum();
    let resident: Vec<_> = pids.iter().map(|pid| resident_kib(*pid)).collect();
    let window = window_end - window_start;
    let intervals = window.as_secs_f64() / settings.interval.as_secs_f64();

    let in_window = |at: Instant| at >= window_start && at < window_end;
    let registry_requests = proxy.requests();
    let api_requests = api.requests();
    let api_steady = api_requests.iter().filter(|r| in_window(r.at)).count();

    // Registry requests per workload per interval, by mode.
    let mut by_mode: BTreeMap<&str, (usize, f64, f64, f64)> = BTreeMap::new();
    for workload in &workloads {
        let repository_path = format!("/v2/{}/", workload.repository);
        let scope = format!(
            "repository%3A{}%3Apull",
            workload.repository.replace('/', "%2F")
        );
        let count =
            |method: &str,
             what: &dyn Fn(&pod_reloaded_tests::fault_proxy::ProxiedRequest) -> bool| {
                registry_requests
                    .iter()
                    .filter(|r| in_window(r.at) && r.method == method && what(r))
                    .count() as f64
                    / intervals
            };
        let heads = count("HEAD", &|r| r.path.starts_with(&repository_path));
        let gets = count("GET", &|r| {
            r.path.starts_with(&repository_path) && r.path.contains("/manifests/")
        });
        let tokens = count("GET", &|r| {
            r.path == "/token"
                && (r.query.contains(&scope) || r.query.contains(&workload.repository))
        });
        let entry = by_mode.entry(workload.mode()).or_default();
        entry.0 += 1;
        entry.1 += heads;
        entry.2 += gets;
        entry.3 += tokens;
    }

    // One push per workload; the time until its restart patch.
    let mut pushed_at = BTreeMap::new();
    for workload in &workloads {
        registry
            .push_index(&workload.repository, "latest", "v2", &PLATFORMS, false)
            .await;
        pushed_at.insert(workload.name.clone(), Instant::now());
    }
    let push_started = Instant::now();
    let restart_deadline = Instant::now() + settings.interval * 60;
    let restarts = |workload: &Workload| {
        api.requests_to("PATCH", &deployment_path(&workload.name))
            .into_iter()
            .filter(|r| {
                r.status == 200
                    && r.body
                        .pointer("/spec/template/metadata/annotations")
                        .and_then(|a| a.get(contract::ANNOTATION_RESTARTED_FOR))
                        .is_some()
            })
            .collect::<Vec<_>>()
    };
    loop {
        let done = workloads.iter().all(|w| !restarts(w).is_empty());
        if done || Instant::now() > restart_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A little more, to see that no replica restarts a second time.
    tokio::time::sleep(settings.interval * 3).await;
    let push_window_end = Instant::now();
    let api_at_push = api
        .requests()
        .iter()
        .filter(|r| r.at >= push_started && r.at < push_window_end)
        .count();

    let mut latencies: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut patch_counts = Vec::new();
    let mut missing = Vec::new();
    for workload in &workloads {
        let patches = restarts(workload);
        patch_counts.push(patches.len());
        match patches.first() {
            Some(first) => latencies.entry(workload.mode()).or_default().push(
                first
                    .at
                    .saturating_duration_since(pushed_at[&workload.name]),
            ),
            None => missing.push(workload.name.clone()),
        }
    }
    let errors: usize = sidecars
        .iter()
        .map(|s| s.output().matches("decision=\"error\"").count())
        .sum();
    drop(sidecars);

    println!(
        "### Fleet scale: {} sidecars ({} workloads of {} replicas, {} single-replica), interval {}, tokens living {}, steady state {} ({:.0} intervals)\n",
        pids.len(),
        settings.workloads,
        settings.replicas,
        settings.singles,
        interval,
        humantime::format_duration(settings.token_lifetime),
        humantime::format_duration(Duration::from_secs(window.as_secs())),
        intervals
    );
    println!(
        "| workloads | registry HEAD per workload per interval | manifest GET | token requests |"
    );
    println!("|---|---|---|---|");
    for (mode, (count, heads, gets, tokens)) in &by_mode {
        let n = *count as f64;
        println!(
            "| {mode} ({count}) | {:.2} | {:.2} | {:.2} |",
            heads / n,
            gets / n,
            tokens / n
        );
    }
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| every sidecar had checked once, after the last one started | {:.0} s later |",
        warm_up.as_secs_f64()
    );
    println!(
        "| API requests per second, steady state | {:.2} |",
        api_steady as f64 / window.as_secs_f64()
    );
    println!(
        "| API requests from the pushes until every restart (+3 intervals) | {api_at_push} in {:.0} s |",
        (push_window_end - push_started).as_secs_f64()
    );
    for (mode, mut times) in latencies {
        times.sort();
        let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
        println!(
            "| push to restart patch, {mode} ({} workloads): median / p95 / max | {:.1} s / {:.1} s / {:.1} s |",
            times.len(),
            at(0.5).as_secs_f64(),
            at(0.95).as_secs_f64(),
            at(1.0).as_secs_f64()
        );
    }
    println!(
        "| restart patches per workload | {} (min {}, max {}){} |",
        if patch_counts.iter().all(|c| *c == 1) {
            "exactly 1 each"
        } else {
            "NOT exactly 1"
        },
        patch_counts.iter().min().unwrap_or(&0),
        patch_counts.iter().max().unwrap_or(&0),
        if missing.is_empty() {
            String::new()
        } else {
            format!("; none for {}", missing.join(", "))
        }
    );
    println!("| sidecar errors (`decision=\"error\"`) | {errors} |");
    let anonymous: u64 = resident.iter().map(|r| r.anonymous).sum();
    let rss: u64 = resident.iter().map(|r| r.rss).sum();
    println!(
        "| memory of all sidecars: anonymous / VmRSS summed (code pages counted once per process) | {} / {} |",
        mib(anonymous),
        mib(rss)
    );
    println!(
        "| CPU of all sidecars in steady state | {:.1}% of one core |",
        (cpu_after.saturating_sub(cpu_before)).as_secs_f64() / window.as_secs_f64() * 100.0
    );
    println!();
    Ok(())
}
