//! The sidecar: RSS, CPU and requests per round over many rounds of one watched
//! multi-arch tag behind a bearer-token registry, side by side for several builds.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use pod_reloaded_contract::trust::{KeylessIdentity, NamedPolicy, TransparencyLog, TrustPolicy};
use pod_reloaded_tests::cloud_fakes::{self, CloudFakes};
use pod_reloaded_tests::fault_proxy::{BearerAuth, FaultProxy};
use pod_reloaded_tests::process::{binary, Running};
use pod_reloaded_tests::sigstore::{Cosign, Format};
use pod_reloaded_tests::workloads;
use pod_reloaded_tests::world::World;
use serde_json::json;

use crate::process_stats::*;
use crate::Settings;

/// What one sidecar binary did over the rounds; counts are from the harness, not its log.
struct SidecarFigures {
    rounds: usize,
    steady_rss_kib: u64,
    /// Of the steady RSS: anonymous memory (per pod) and file-backed pages (the binary's
    /// code, shared by every sidecar of a node).
    steady_anonymous_kib: u64,
    steady_file_kib: u64,
    peak_rss_kib: u64,
    cpu_per_round: Duration,
    cpu_total: Duration,
    heads: usize,
    manifest_gets: usize,
    tokens: usize,
    api_reads: usize,
    api_writes: usize,
}

pub(crate) async fn sidecar(settings: &Settings) -> anyhow::Result<()> {
    let binaries = if settings.sidecar_binary.is_empty() {
        vec![binary("pod-reloaded-sidecar")]
    } else {
        settings.sidecar_binary.clone()
    };
    let mut measured = Vec::new();
    for path in &binaries {
        measured.push((path, sidecar_rounds(settings, path, Mode::Plain).await?));
    }
    let mut with_cloud = Vec::new();
    for path in &binaries {
        with_cloud.push(sidecar_rounds(settings, path, Mode::Cloud).await?);
    }
    let mut verifying = Vec::new();
    for path in &binaries {
        verifying.push(sidecar_rounds(settings, path, Mode::Verifying).await?);
    }
    println!("### Sidecar: {} rounds at interval 1s, one watched multi-arch tag, Bearer tokens living 30s, each binary read from disk at start (dropped from the page cache first)\n", settings.rounds);
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
    row("of which anonymous: the cost per pod", &|f| {
        mib(f.steady_anonymous_kib)
    });
    row("of which file-backed: code pages, once per node", &|f| {
        mib(f.steady_file_kib)
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
    println!("### Sidecar with cloud auth: the same tag as an ECR image, logged in through IRSA (STS, then ECR), {} rounds\n", settings.rounds);
    println!("| measure | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(measured.len()));
    let compare = |name: &str, value: &dyn Fn(&SidecarFigures, &SidecarFigures) -> String| {
        let cells: Vec<String> = measured
            .iter()
            .zip(&with_cloud)
            .map(|((_, anonymous), cloud)| value(anonymous, cloud))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    compare("steady RSS with cloud auth (without)", &|a, c| {
        format!("{} ({})", mib(c.steady_rss_kib), mib(a.steady_rss_kib))
    });
    compare("peak RSS with cloud auth (without)", &|a, c| {
        format!("{} ({})", mib(c.peak_rss_kib), mib(a.peak_rss_kib))
    });
    compare("CPU per round, cloud auth", &|_, c| {
        format!("{:.2} ms", c.cpu_per_round.as_secs_f64() * 1000.0)
    });
    println!();
    println!("### Sidecar with a trust policy (a cosign key and a keyless identity under the built-in public-good trusted root): at round 5 the tag moves to a cosign-signed digest, verified, then restarted to and followed, {} rounds\n", settings.rounds);
    println!("| measure | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(measured.len()));
    let compare = |name: &str, value: &dyn Fn(&SidecarFigures, &SidecarFigures) -> String| {
        let cells: Vec<String> = measured
            .iter()
            .zip(&verifying)
            .map(|((_, plain), verified)| value(plain, verified))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    compare("steady RSS with the policy (without)", &|p, v| {
        format!("{} ({})", mib(v.steady_rss_kib), mib(p.steady_rss_kib))
    });
    compare("of which anonymous, with the policy (without)", &|p, v| {
        format!(
            "{} ({})",
            mib(v.steady_anonymous_kib),
            mib(p.steady_anonymous_kib)
        )
    });
    compare("peak RSS with the policy (without)", &|p, v| {
        format!("{} ({})", mib(v.peak_rss_kib), mib(p.peak_rss_kib))
    });
    compare("API writes (the restart, its Event)", &|_, v| {
        v.api_writes.to_string()
    });
    println!();
    Ok(())
}

/// "dynamic" when the ELF file has a program interpreter (`PT_INTERP`), else "static".
pub(crate) fn linkage(path: &Path) -> &'static str {
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

/// What the measured sidecar does besides its rounds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    /// The image is an ECR image the sidecar logs in to with IRSA (the harness's fake
    /// STS and ECR), and the registry wants that login's credentials.
    Cloud,
    /// The pod has a trust policy; at round 5 the tag moves to a digest cosign signed.
    Verifying,
}

async fn sidecar_rounds(
    settings: &Settings,
    sidecar: &Path,
    mode: Mode,
) -> anyhow::Result<SidecarFigures> {
    let cloud = mode == Mode::Cloud;
    // The tests' world: `demo/app:latest` (a two-platform index) in a real registry, a
    // Deployment `web` in the API server; its pod runs the pushed index.
    let (world, owner) = World::start(json!({})).await;
    let ecr = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
    if cloud {
        let image = format!("{ecr}/demo/app:latest");
        let image_id = format!("{ecr}/demo/app@{}", world.first.digest);
        workloads::running_pod(
            &world.api,
            "web-1",
            Some(&owner),
            &image,
            &image_id,
            "2026-11-24T00:00:00Z",
        );
    } else {
        world.add_pod(&owner, "web-1", &world.image_id(&world.first.digest), true);
    }
    let api = &world.api;
    // Bearer tokens that live 30s: a token request only when the cached one expired.
    let proxy = FaultProxy::start(
        &world.registry.base_url,
        Some(BearerAuth {
            credentials: cloud.then(|| ("AWS".to_string(), cloud_fakes::ECR_PASSWORD.to_string())),
            token_lifetime: Duration::from_secs(30),
        }),
    )
    .await;
    let fakes = CloudFakes::start(Duration::from_secs(12 * 3600)).await;
    let identity = tempfile::NamedTempFile::new()?;
    std::fs::write(identity.path(), cloud_fakes::WEB_IDENTITY_TOKEN)?;
    // A round is one HEAD (the first is answered 401 and sent again with a token); an
    // unchanged round makes no API request, so the API server cannot count them.
    let rounds_done = || proxy.count("HEAD", "/manifests/").saturating_sub(1);

    let registry_url = if cloud {
        format!("{ecr}={}", proxy.base_url())
    } else {
        proxy.base_url()
    };
    let harness_command =
        workloads::sidecar_command(api, "web-1", "web", "1s", Some(&registry_url));
    let mut command = Command::new(sidecar);
    command.env_clear().env("RUST_LOG", "warn");
    if cloud {
        command
            .env("AWS_WEB_IDENTITY_TOKEN_FILE", identity.path())
            .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/bench")
            .env("AWS_ENDPOINT_URL_STS", fakes.url("/sts"))
            .env("AWS_ENDPOINT_URL_ECR", fakes.url("/ecr"))
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }
    for (name, value) in harness_command.get_envs() {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    let cosign = (mode == Mode::Verifying).then(Cosign::new);
    let signer = cosign.as_ref().map(|cosign| cosign.key_pair("release"));
    if let Some(signer) = &signer {
        let policy = NamedPolicy {
            name: "release".into(),
            policy: TrustPolicy {
                keys: vec![signer.public_pem.clone()],
                keyless: vec![KeylessIdentity {
                    issuer: "https://token.actions.githubusercontent.com".into(),
                    subject_reg_exp: "^https://github\\.com/acme/.+$".into(),
                }],
                transparency_log: TransparencyLog::Optional,
                wait_for_signature: None,
                trusted_root: String::new(),
            },
        };
        command.env(pod_reloaded_contract::ENV_VERIFY_POLICY, policy.to_json());
    }
    let mut moved = false;
    // Nothing else maps the binary now (the previous run has ended), so all of it goes.
    evict_from_page_cache(sidecar)
        .with_context(|| format!("dropping {} from the page cache", sidecar.display()))?;
    let process = Running::spawn(command);
    let pid = process.child.id();
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut cpu_at_10 = None;
    loop {
        let rounds = rounds_done();
        if let (Some(cosign), Some(signer), false) = (&cosign, &signer, moved) {
            if rounds >= 5 {
                // Signed before the tag moves to it, as a pipeline does.
                let signed = world
                    .registry
                    .push_index(
                        "demo/app",
                        "candidate",
                        "signed",
                        &pod_reloaded_tests::world::PLATFORMS,
                        false,
                    )
                    .await;
                cosign.sign(
                    &world.registry,
                    "demo/app",
                    &signed.digest,
                    signer,
                    Format::Bundle,
                    None,
                );
                world
                    .registry
                    .copy_manifest("demo/app", "candidate", "latest")
                    .await;
                moved = true;
            }
        }
        if rounds >= 10 {
            samples.push(resident_kib(pid));
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
    // The sample of median RSS, so its parts add up.
    samples.sort_unstable_by_key(|sample| sample.rss);
    let steady = samples[samples.len() / 2];
    let steady_rounds = (rounds - rounds_at_10).max(1) as f64;
    let api_requests = api.requests();
    Ok(SidecarFigures {
        rounds,
        steady_rss_kib: steady.rss,
        steady_anonymous_kib: steady.anonymous,
        steady_file_kib: steady.file,
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
