//! `make demo`: the whole pod-reloaded loop on this machine, printed as a timeline.
//! Everything listens on 127.0.0.1 only.

use std::process::ExitCode;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("demo: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("pod-reloaded demo: registry, webhook and sidecar on 127.0.0.1, a fake API server as the cluster\n");
    let mut print = |line: String| println!("{line}");
    match runtime.block_on(pod_reloaded_tests::scenario::run(&mut print)) {
        Ok(summary) => {
            println!(
                "\nOK: one restart {:.2}s after the push, no loop, one patch from 3 replicas, {} rollback of a bad image",
                summary.restart_latency.as_secs_f64(),
                summary.rollbacks
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("\nFAILED: {error:#}");
            ExitCode::FAILURE
        }
    }
}
