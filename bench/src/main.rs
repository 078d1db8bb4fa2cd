//! `pod-reloaded-bench`: measures the release binaries and prints Markdown tables for
//! BENCHMARKS.md. Everything runs on 127.0.0.1. Benchmarks, not tests: nothing here is
//! asserted in CI, which only builds this binary.

mod admission_cpu;
mod baseline;
mod load;
mod process_stats;
mod scale;
mod sidecar_bench;
mod sizes;
mod webhook_bench;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::process_stats::machine;
use crate::sidecar_bench::sidecar;
use crate::sizes::sizes;
use crate::webhook_bench::{admission_cpu, webhook};

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
    /// Fleet scale: many real sidecars against the real registry and API server, registry
    /// load per workload, push-to-restart times (`make bench-scale`).
    Scale(scale::ScaleSettings),
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
pub(crate) struct Settings {
    /// How long each load run lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Concurrencies (connections) to run.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub(crate) concurrency: Vec<usize>,
    /// Sidecar rounds (at interval 1s).
    #[arg(long, default_value_t = 120)]
    pub(crate) rounds: usize,
    /// Sidecar binaries to measure side by side (default: the release build's).
    #[arg(long)]
    pub(crate) sidecar_binary: Vec<PathBuf>,
    /// Webhook binaries to compare under the same load (default: the release build's).
    #[arg(long)]
    pub(crate) webhook_binary: Vec<PathBuf>,
    /// Load runs per concurrency and webhook binary, the binaries alternating; with more
    /// than one, the medians are printed too.
    #[arg(long, default_value_t = 1)]
    pub(crate) repeat: usize,
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
            Which::Scale(settings) => scale::scale(&settings).await,
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
