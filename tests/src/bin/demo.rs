//! `make demo`: the whole pod-reloaded loop on a real Kubernetes control plane on this
//! machine (kube-apiserver, etcd and kube-controller-manager built from their Go
//! modules), printed as a timeline. Everything listens on 127.0.0.1 only. With `--keep`
//! (`make demo KEEP=1`) the cluster stays up until Ctrl-C, for a look around with kubectl.

use std::process::ExitCode;

use pod_reloaded_tests::cluster::{control_plane, story};

const NAMESPACE: &str = "demo";

fn main() -> ExitCode {
    let keep = std::env::args().any(|a| a == "--keep");
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
    println!(
        "pod-reloaded demo: a registry, the webhook and the sidecars on 127.0.0.1, against kube-apiserver, etcd and kube-controller-manager\n\
         (no container runs: the harness plays the kubelet, reporting the digests the registry serves and running each pod's sidecar binary)\n"
    );
    let mut print = |line: String| println!("{line}");
    let code = match runtime.block_on(story::run(NAMESPACE, &mut print)) {
        Ok(summary) => {
            println!(
                "\nOK: one restart {:.2}s after the push from {} sidecars, a real ProgressDeadlineExceeded rolled back, a kubectl rollout undo kept",
                summary.restart_latency.as_secs_f64(),
                summary.first_sidecars
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("\nFAILED: {error:#}");
            ExitCode::FAILURE
        }
    };
    let plane = control_plane();
    let kubectl = format!(
        "{} --kubeconfig {}",
        plane.bin.join("kubectl").display(),
        plane.admin_kubeconfig.display()
    );
    println!("\nLook around (while the cluster is up):");
    for command in [
        format!("{kubectl} -n {NAMESPACE} get deployment,replicasets,pods -o wide"),
        format!("{kubectl} -n {NAMESPACE} describe deployment app"),
        format!("{kubectl} -n {NAMESPACE} get events --sort-by=.lastTimestamp"),
        format!("{kubectl} get mutatingwebhookconfiguration pod-reloaded -o yaml"),
    ] {
        println!("  {command}");
    }
    println!(
        "Logs, certificates and the audit log: {}",
        plane.dir.display()
    );
    if keep {
        println!("\nThe cluster stays up until Ctrl-C (KEEP=1).");
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
    } else {
        println!(
            "The cluster stops with this program: `make demo KEEP=1` keeps it up until Ctrl-C."
        );
    }
    code
}
