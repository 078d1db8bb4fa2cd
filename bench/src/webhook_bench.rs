//! The webhook: CPU per admission in-process, and throughput, latency, readiness and RSS
//! of the binary under load against a do-nothing hyper+rustls baseline.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pod_reloaded_tests::fake_apiserver::FakeApiServer;
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
    let api = FakeApiServer::start().await?;
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

    // Our webhook, and the baseline, on the same certificate.
    let ours = Webhook::start(&certs, Some(&api), &[]).await;
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
    load::run(
        ours.port,
        &certs.ca,
        bodies.clone(),
        4,
        Duration::from_secs(1),
    )
    .await;
    load::run(
        baseline_port,
        &certs.ca,
        bodies.clone(),
        4,
        Duration::from_secs(1),
    )
    .await;

    println!(
        "### Webhook: throughput and latency (each run {})\n",
        humantime::format_duration(settings.duration)
    );
    println!(
        "| C | server | req/s | ratio to baseline | p50 ms | p90 ms | p99 ms | max ms | server CPU µs/req | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let ours_pid = ours.process.child.id();
    let baseline_pid = baseline_process.child.id();
    // CPU the server process spent per answered request during one run.
    let cpu_per_request = |before: Duration, pid: u32, result: &load::LoadResult| {
        let requests = (result.ok + result.failed).max(1) as f64;
        cpu_time(pid).saturating_sub(before).as_secs_f64() * 1e6 / requests
    };
    let mut rss_after_runs = 0;
    for &concurrency in &settings.concurrency {
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
        let cpu_before = cpu_time(ours_pid);
        let mine = load::run(
            ours.port,
            &certs.ca,
            bodies.clone(),
            concurrency,
            settings.duration,
        )
        .await;
        let mine_cpu = cpu_per_request(cpu_before, ours_pid, &mine);
        rss_after_runs = rss_after_runs.max(memory_kib(ours_pid).0);
        for (name, result, cpu) in [
            ("baseline (hyper+rustls, no work)", &base, base_cpu),
            ("pod-reloaded-webhook", &mine, mine_cpu),
        ] {
            let ratio = result.throughput() / base.throughput();
            println!(
                "| {concurrency} | {name} | {:.0} | {ratio:.2}x | {} | {} | {} | {} | {cpu:.0} | {} |",
                result.throughput(),
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
    }
    let (rss, hwm) = memory_kib(ours_pid);
    println!();
    println!("### Webhook: start-up and memory\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| process start to `/readyz` 200 (median of 5, max) | {} ms, {} ms |",
        ms(ready_times[ready_times.len() / 2]),
        ms(*ready_times.last().unwrap_or(&Duration::ZERO))
    );
    println!(
        "| RSS after the load runs / peak (VmHWM) | {} / {} |",
        mib(rss.max(rss_after_runs)),
        mib(hwm)
    );
    drop(baseline_process);
    println!();
    Ok(())
}
