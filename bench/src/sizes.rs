//! Sizes of the release binaries.

use anyhow::Context as _;

use pod_reloaded_tests::process::binary;

use crate::process_stats::*;
use crate::sidecar_bench::linkage;
use crate::Settings;

pub(crate) fn sizes(settings: &Settings) -> anyhow::Result<()> {
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
