//! The whole loop against a real control plane (`cluster::story`, what `make demo`
//! prints): kube-apiserver, etcd and kube-controller-manager built from their Go modules,
//! pod-reloaded installed from `manifests/`, the webhook called by the API server, the
//! sidecars run with real ServiceAccount tokens, the real Deployment controller rolling out.

use pod_reloaded_contract as contract;
use pod_reloaded_tests::cluster::story;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_rolls_out_once_a_bad_image_is_rolled_back_and_an_undo_is_kept() {
    let mut timeline = Vec::new();
    let result = story::run("story", &mut |line| timeline.push(line)).await;
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => panic!("{error}\n{}", timeline.join("\n")),
    };
    println!("{}", timeline.join("\n"));
    assert_eq!(summary.first_sidecars, 3);
    // Revisions of the Deployment: one restart for the push (2); a restart and a rollback
    // for the bad image (4); one restart for the next push (5); the person's undo (6), and
    // nothing after it.
    assert_eq!(summary.revisions, vec![2, 4, 5, 6], "{summary:?}");
    assert!(
        summary.rollout_records[0].starts_with("undone "),
        "{summary:?}"
    );
    let count = |reason: &str| summary.events.get(reason).map_or(0, |(_, n)| *n);
    assert_eq!(count("ImageDigestChanged"), 3, "{:?}", summary.events);
    assert_eq!(count("RolloutSucceeded"), 2, "{:?}", summary.events);
    assert_eq!(count("RolloutFailed"), 1, "{:?}", summary.events);
    assert_eq!(count("RolloutUndone"), 1, "{:?}", summary.events);
    assert_eq!(
        summary.events.get("RolloutFailed").map(|(t, _)| t.as_str()),
        Some("Warning")
    );
    for reason in [
        "ImageDigestChanged",
        "RolloutSucceeded",
        "RolloutFailed",
        "RolloutUndone",
    ] {
        assert!(
            summary.describe.contains(reason),
            "kubectl describe shows no {reason} Event:\n{}",
            summary.describe
        );
    }
    // The sidecar ran with the env the webhook injected.
    for expected in [
        format!("{}=app", contract::ENV_WATCH_CONTAINER),
        format!("{}=1s", contract::ENV_INTERVAL),
        format!("{}=fieldRef:metadata.name", contract::ENV_POD_NAME),
        format!(
            "{}=fieldRef:metadata.namespace",
            contract::ENV_POD_NAMESPACE
        ),
    ] {
        assert!(
            summary.sidecar_env.contains(&expected),
            "{expected} not in {:?}",
            summary.sidecar_env
        );
    }
    assert!(summary
        .sidecar_env
        .iter()
        .any(|e| e.starts_with(contract::ENV_REGISTRY_URL)));
}
