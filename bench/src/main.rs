//! `pod-reloaded-bench`: measures the release binaries and prints Markdown tables for
//! BENCHMARKS.md. Everything runs on 127.0.0.1. Benchmarks, not tests: nothing here is
//! asserted in CI, which only builds this binary.

mod admission_cpu;
mod baseline;
mod load;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use pod_reloaded_tests::fake_apiserver::FakeApiServer;
use pod_reloaded_tests::fault_proxy::{BearerAuth, FaultProxy};
use pod_reloaded_tests::process::{binary, free_port, Running};
use pod_reloaded_tests::registry::{Registry, RegistryOptions};
use pod_reloaded_tests::webhook::{fixture, generate_certificates, http_get, Webhook};
use pod_reloaded_tests::workloads;
use serde_json::json;

/// The webhook's allocator, so in-process figures match the shipped binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pod-reloaded-bench",
    about = "Benchmarks of the release binaries (run with `make bench`)"
)]
struct Args {
    #[command(subcommand)]
    command: Which,
}

#[derive(Subcommand)]
enum Which {
    /// Everything: admission CPU, webhook, sidecar, binary sizes.
    All(Settings),
    /// Webhook throughput and latency against the baseline, readiness time, RSS.
    Webhook(Settings),
    /// Sidecar footprint over many rounds.
    Sidecar(Settings),
    /// CPU per admission in-process, by stage.
    Admission {
        #[arg(long, default_value_t = 2000)]
        iterations: u32,
    },
    /// (internal) the baseline server.
    Baseline {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(clap::Args, Clone)]
struct Settings {
    /// How long each load run lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrencies (connections) to run.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    concurrency: Vec<usize>,
    /// Sidecar rounds (at interval 1s).
    #[arg(long, default_value_t = 120)]
    rounds: usize,
    /// Sidecar binaries to measure side by side (default: the release build's).
    #[arg(long)]
    sidecar_binary: Vec<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match args.command {
            Which::Baseline { listen, cert, key } => baseline::serve(listen, &cert, &key).await,
            Which::Webhook(settings) => webhook(&settings).await,
            Which::Admission { iterations } => {
                admission_cpu(iterations).await;
                Ok(())
            }
            Which::Sidecar(settings) => sidecar(&settings).await,
            Which::All(settings) => {
                machine();
                admission_cpu(2000).await;
                webhook(&settings).await?;
                sidecar(&settings).await?;
                sizes(&settings)
            }
        }
    })
}

fn machine() {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024 / 1024)
        .unwrap_or(0);
    println!(
        "Machine: {cores} cores, {memory} GiB memory, {}\n",
        std::env::consts::ARCH
    );
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time of a process, summed over its threads from `/proc/<pid>/task/*/schedstat`
/// (nanoseconds: the tick counts of `/proc/<pid>/stat` are too coarse for a sidecar round).
fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// A path as given relative to the working directory, for tables.
fn shown(path: &Path) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    path.strip_prefix(&cwd)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Injectable bodies: the shared fixtures that inject, and pods of 1, 3 and 10 containers.
fn bodies() -> Vec<load::Body> {
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

async fn admission_cpu(iterations: u32) {
    use clap::Parser as _;
    let config = pod_reloaded_webhook::config::Config::parse_from(["pod-reloaded-webhook"]);
    let admission = pod_reloaded_webhook::admission::Admission {
        settings: config.injection_settings().expect("default settings"),
        granter: None,
        metrics: Default::default(),
    };
    let body = fixture("deployment-pod-dry-run.json").to_string();
    admission_cpu::run(&admission, body.as_bytes(), iterations).await;
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn webhook(settings: &Settings) -> anyhow::Result<()> {
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

/// What one sidecar binary did over the rounds; counts are from the harness, not its log.
struct SidecarFigures {
    rounds: usize,
    steady_rss_kib: u64,
    peak_rss_kib: u64,
    cpu_per_round: Duration,
    cpu_total: Duration,
    heads: usize,
    manifest_gets: usize,
    tokens: usize,
    api_reads: usize,
    api_writes: usize,
}

async fn sidecar(settings: &Settings) -> anyhow::Result<()> {
    let binaries = if settings.sidecar_binary.is_empty() {
        vec![binary("pod-reloaded-sidecar")]
    } else {
        settings.sidecar_binary.clone()
    };
    let mut measured = Vec::new();
    for path in &binaries {
        measured.push((path, sidecar_rounds(settings, path).await?));
    }
    println!("### Sidecar: {} rounds at interval 1s, one watched multi-arch tag, Bearer tokens living 30s\n", settings.rounds);
    let header: Vec<String> = measured
        .iter()
        .map(|(path, _)| format!("`{}` ({})", path.display(), linkage(path)))
        .collect();
    println!("| measure | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(measured.len()));
    let row = |name: &str, value: &dyn Fn(&SidecarFigures) -> String| {
        let cells: Vec<String> = measured.iter().map(|(_, f)| value(f)).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    let per_round = |n: usize, f: &SidecarFigures| {
        format!(
            "{:.3} ({n} in {} rounds)",
            n as f64 / f.rounds as f64,
            f.rounds
        )
    };
    row("steady RSS (median after round 10)", &|f| {
        mib(f.steady_rss_kib)
    });
    row("peak RSS (VmHWM)", &|f| mib(f.peak_rss_kib));
    row("CPU per round (after round 10)", &|f| {
        format!("{:.2} ms", f.cpu_per_round.as_secs_f64() * 1000.0)
    });
    row("CPU in total", &|f| {
        format!("{:.2} s", f.cpu_total.as_secs_f64())
    });
    row("registry HEAD per round (the first answered 401)", &|f| {
        per_round(f.heads, f)
    });
    row("registry GET manifest per round", &|f| {
        per_round(f.manifest_gets, f)
    });
    row("token requests per round", &|f| per_round(f.tokens, f));
    row("API reads per round", &|f| per_round(f.api_reads, f));
    row("API writes", &|f| f.api_writes.to_string());
    println!();
    Ok(())
}

/// "dynamic" when the ELF file has a program interpreter (`PT_INTERP`), else "static".
fn linkage(path: &Path) -> &'static str {
    const PT_INTERP: u32 = 3;
    let Ok(elf) = std::fs::read(path) else {
        return "unreadable";
    };
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // ELF64 little-endian: e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38.
    let (Some(offset), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return "not ELF64";
    };
    let has_interpreter = (0..usize::from(count))
        .any(|i| u32_at(offset as usize + i * usize::from(size)) == Some(PT_INTERP));
    if has_interpreter {
        "dynamic"
    } else {
        "static"
    }
}

async fn sidecar_rounds(settings: &Settings, sidecar: &Path) -> anyhow::Result<SidecarFigures> {
    let registry = Registry::start(RegistryOptions::default()).await;
    let pushed = registry
        .push_index(
            "demo/app",
            "latest",
            "bench",
            &[("linux", "amd64"), ("linux", "arm64")],
            false,
        )
        .await;
    // Bearer tokens that live 30s: a token request only when the cached one expired.
    let proxy = FaultProxy::start(
        &registry.base_url,
        Some(BearerAuth {
            credentials: None,
            token_lifetime: Duration::from_secs(30),
        }),
    )
    .await;
    let api = FakeApiServer::start().await?;
    let image = format!("{}/demo/app:latest", proxy.host());
    let owner = workloads::deployment(&api, "web", &image, json!({}));
    let image_id = format!("{}/demo/app@{}", proxy.host(), pushed.digest);
    workloads::running_pod(
        &api,
        "web-1",
        Some(&owner),
        &image,
        &image_id,
        "2026-11-24T00:00:00Z",
    );
    // A round is one HEAD (the first is answered 401 and sent again with a token); an
    // unchanged round makes no API request, so the API server cannot count them.
    let rounds_done = || proxy.count("HEAD", "/manifests/").saturating_sub(1);

    let harness_command =
        workloads::sidecar_command(&api, "web-1", "web", "1s", Some(&proxy.base_url()));
    let mut command = Command::new(sidecar);
    command.env_clear().env("RUST_LOG", "warn");
    for (name, value) in harness_command.get_envs() {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    let process = Running::spawn(command);
    let pid = process.child.id();
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut cpu_at_10 = None;
    loop {
        let rounds = rounds_done();
        if rounds >= 10 {
            samples.push(memory_kib(pid).0);
            if cpu_at_10.is_none() {
                cpu_at_10 = Some((rounds, cpu_time(pid)));
            }
        }
        if rounds >= settings.rounds {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(settings.rounds as u64 * 3 + 30),
            "sidecar stopped doing rounds: {}",
            process.output()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, peak) = memory_kib(pid);
    let cpu_total = cpu_time(pid);
    let rounds = rounds_done();
    let (rounds_at_10, cpu_10) = cpu_at_10.context("never reached 10 rounds")?;
    drop(process);
    samples.sort_unstable();
    let steady = samples[samples.len() / 2];
    let steady_rounds = (rounds - rounds_at_10).max(1) as f64;
    let api_requests = api.requests();
    Ok(SidecarFigures {
        rounds,
        steady_rss_kib: steady,
        peak_rss_kib: peak,
        cpu_per_round: cpu_total.saturating_sub(cpu_10).div_f64(steady_rounds),
        cpu_total,
        heads: proxy.count("HEAD", "/manifests/"),
        manifest_gets: proxy.count("GET", "/manifests/"),
        tokens: proxy.count("GET", "/token"),
        api_reads: api_requests.iter().filter(|r| !r.is_write()).count(),
        api_writes: api_requests.iter().filter(|r| r.is_write()).count(),
    })
}

fn sizes(settings: &Settings) -> anyhow::Result<()> {
    println!("### Release binaries (stripped)\n");
    println!("| binary | linkage | size |");
    println!("|---|---|---|");
    let mut paths = vec![
        binary("pod-reloaded-webhook"),
        binary("pod-reloaded-sidecar"),
    ];
    for extra in &settings.sidecar_binary {
        let extra = extra.canonicalize().unwrap_or_else(|_| extra.clone());
        if !paths.contains(&extra) {
            paths.push(extra);
        }
    }
    for path in paths {
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        println!(
            "| `{}` | {} | {} |",
            shown(&path),
            linkage(&path),
            mib(bytes / 1024)
        );
    }
    println!();
    Ok(())
}
