//! The webhook: CPU per admission in-process, and throughput, latency, readiness and RSS
//! of the binary under load against a do-nothing hyper+rustls baseline.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pod_reloaded_tests::api_server::ApiServer;
use pod_reloaded_tests::process::{binary, free_port, Running};
use pod_reloaded_tests::webhook::{fixture, generate_certificates, http_get, Webhook};
use serde_json::json;

use crate::process_stats::*;
use crate::{load, Settings};

/// Injectable bodies: the shared fixtures that inject, and pods of 1, 3 and 10 containers.
pub(crate) fn bodies() -> Vec<load::Body> {
    let mut reviews = Vec::new();
    for name in [
        "deployment-pod-default-sa.json",
        "deployment-pod-custom-sa-pull-secret.json",
        "statefulset-pod.json",
        "daemonset-pod.json",
        "deployment-pod-dry-run.json",
    ] {
        reviews.push(fixture(name));
    }
    let base = fixture("deployment-pod-default-sa.json");
    for count in [1, 3, 10] {
        let mut review = base.clone();
        let template = review["request"]["object"]["spec"]["containers"][0].clone();
        let containers: Vec<_> = (0..count)
            .map(|i| {
                let mut c = template.clone();
                c["name"] = json!(format!("c{i}"));
                c["image"] = json!(format!("registry.example.com/team/app{i}:main"));
                c
            })
            .collect();
        review["request"]["object"]["spec"]["containers"] = json!(containers);
        reviews.push(review);
    }
    // Many distinct uids, so an answer for one request cannot pass for another.
    let mut bodies = Vec::new();
    for round in 0..64 {
        for (i, review) in reviews.iter().enumerate() {
            let uid = format!("bench-{round}-{i}");
            let mut request = review["request"].clone();
            if let Some(fields) = request.as_object_mut() {
                fields.remove("uid");
            }
            // `uid` first, as kube-apiserver's Go structs serialize it.
            let rest = request.to_string();
            let text = format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"{uid}",{}}}"#,
                &rest[1..]
            );
            bodies.push(load::Body {
                uid,
                bytes: Bytes::from(text),
            });
        }
    }
    bodies
}

pub(crate) async fn admission_cpu(iterations: u32) {
    use clap::Parser as _;
    let config = pod_reloaded_webhook::config::Config::parse_from(["pod-reloaded-webhook"]);
    let admission = pod_reloaded_webhook::admission::Admission {
        settings: config.injection_settings().expect("default settings"),
        granter: None,
        metrics: Default::default(),
    };
    let body = fixture("deployment-pod-dry-run.json").to_string();
    crate::admission_cpu::run(&admission, body.as_bytes(), iterations).await;
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

pub(crate) async fn webhook(settings: &Settings) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = generate_certificates(dir.path());
    let api = ApiServer::start().await?;
    let bodies = Arc::new(bodies());

    // Time from process start to /readyz answering 200, five starts.
    let mut ready_times = Vec::new();
    for _ in 0..5 {
        let port = free_port();
        let metrics_port = free_port();
        let started = Instant::now();
        let mut command = Command::new(binary("pod-reloaded-webhook"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .arg("--tls-cert-file")
            .arg(&certs.cert)
            .arg("--tls-key-file")
            .arg(&certs.key)
            .env("KUBECONFIG", api.kubeconfig_path())
            .env("RUST_LOG", "warn");
        let process = Running::spawn(command);
        loop {
            if matches!(http_get(metrics_port, "/readyz"), Ok((200, _))) {
                ready_times.push(started.elapsed());
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "webhook never became ready: {}",
                process.output()
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    ready_times.sort();

    // The webhook builds to compare, and the baseline, on the same certificate.
    let binaries = if settings.webhook_binary.is_empty() {
        vec![binary("pod-reloaded-webhook")]
    } else {
        settings.webhook_binary.clone()
    };
    let mut servers = Vec::new();
    for path in &binaries {
        servers.push(Webhook::start_binary(path, &certs, Some(&api), &[]).await);
    }
    let baseline_port = free_port();
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("baseline")
        .args(["--listen", &format!("127.0.0.1:{baseline_port}")])
        .arg("--cert")
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key);
    let baseline_process = Running::spawn(command);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Warm-up: the RBAC side effect of each namespace happens once, then is remembered.
    for port in servers
        .iter()
        .map(|server| server.port)
        .chain([baseline_port])
    {
        load::run(port, &certs.ca, bodies.clone(), 4, Duration::from_secs(1)).await;
    }

    println!(
        "### Webhook: throughput and latency (each run {}{})\n",
        humantime::format_duration(settings.duration),
        if settings.repeat > 1 {
            format!(", {} times, the builds alternating", settings.repeat)
        } else {
            String::new()
        }
    );
    println!(
        "| C | server | req/s | ratio to baseline | p50 ms | p90 ms | p99 ms | max ms | server CPU µs/req | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let baseline_pid = baseline_process.child.id();
    // CPU the server process spent per answered request during one run.
    let cpu_per_request = |before: Duration, pid: u32, result: &load::LoadResult| {
        let requests = (result.ok + result.failed).max(1) as f64;
        cpu_time(pid).saturating_sub(before).as_secs_f64() * 1e6 / requests
    };
    let name_of = |index: usize| {
        if binaries.len() == 1 {
            "pod-reloaded-webhook".to_string()
        } else {
            format!("`{}`", binaries[index].display())
        }
    };
    let mut rss_after_runs = vec![0; servers.len()];
    // Per concurrency and build: (req/s, server CPU µs/req) of each repetition.
    let mut figures = Vec::new();
    for &concurrency in &settings.concurrency {
        let mut runs = vec![Vec::new(); servers.len()];
        for repetition in 0..settings.repeat {
            let cpu_before = cpu_time(baseline_pid);
            let base = load::run(
                baseline_port,
                &certs.ca,
                bodies.clone(),
                concurrency,
                settings.duration,
            )
            .await;
            let base_cpu = cpu_per_request(cpu_before, baseline_pid, &base);
            print_row(
                concurrency,
                "baseline (hyper+rustls, no work)",
                &base,
                &base,
                base_cpu,
            );
            // Each repetition starts with the next build, so none always runs first.
            for turn in 0..servers.len() {
                let index = (turn + repetition) % servers.len();
                let pid = servers[index].process.child.id();
                let cpu_before = cpu_time(pid);
                let mine = load::run(
                    servers[index].port,
                    &certs.ca,
                    bodies.clone(),
                    concurrency,
                    settings.duration,
                )
                .await;
                let mine_cpu = cpu_per_request(cpu_before, pid, &mine);
                rss_after_runs[index] = rss_after_runs[index].max(memory_kib(pid).0);
                print_row(concurrency, &name_of(index), &mine, &base, mine_cpu);
                runs[index].push((mine.throughput(), mine_cpu));
            }
        }
        figures.push((concurrency, runs));
    }
    if settings.repeat > 1 || servers.len() > 1 {
        println!();
        println!("### Webhook: medians over the runs\n");
        println!("| C | server | median req/s | ratio to the first | median server CPU µs/req |");
        println!("|---|---|---|---|---|");
        for (concurrency, runs) in &figures {
            let medians: Vec<(f64, f64)> = runs
                .iter()
                .map(|runs| {
                    (
                        median(runs.iter().map(|r| r.0).collect()),
                        median(runs.iter().map(|r| r.1).collect()),
                    )
                })
                .collect();
            for (index, (throughput, cpu)) in medians.iter().enumerate() {
                println!(
                    "| {concurrency} | {} | {throughput:.0} | {:.2}x | {cpu:.0} |",
                    name_of(index),
                    throughput / medians[0].0
                );
            }
        }
    }
    println!();
    println!("### Webhook: start-up and memory\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| process start to `/readyz` 200 (median of 5, max) | {} ms, {} ms |",
        ms(ready_times[ready_times.len() / 2]),
        ms(*ready_times.last().unwrap_or(&Duration::ZERO))
    );
    for (index, server) in servers.iter().enumerate() {
        let (rss, hwm) = memory_kib(server.process.child.id());
        println!(
            "| {}: RSS after the load runs / peak (VmHWM) | {} / {} |",
            name_of(index),
            mib(rss.max(rss_after_runs[index])),
            mib(hwm)
        );
    }
    drop(baseline_process);
    println!();
    Ok(())
}

fn print_row(
    concurrency: usize,
    name: &str,
    result: &load::LoadResult,
    base: &load::LoadResult,
    cpu: f64,
) {
    println!(
        "| {concurrency} | {name} | {:.0} | {:.2}x | {} | {} | {} | {} | {cpu:.0} | {} |",
        result.throughput(),
        result.throughput() / base.throughput(),
        ms(result.percentile(0.5)),
        ms(result.percentile(0.9)),
        ms(result.percentile(0.99)),
        ms(result.latencies.last().copied().unwrap_or_default()),
        result.failed,
    );
    if let Some(reason) = &result.first_failure {
        println!("|  | first failure: {reason} | | | | | | | | |");
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
