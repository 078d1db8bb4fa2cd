//! The whole loop with the real binaries: webhook injects, sidecar watches, a push to the
//! tag restarts the Deployment exactly once (see `scenario.rs` for the steps).

use std::time::Duration;

use pod_reloaded_contract as contract;

#[tokio::test(flavor = "multi_thread")]
async fn push_to_tag_restarts_the_deployment_exactly_once() {
    let mut timeline = Vec::new();
    let mut sink = |line: String| timeline.push(line);
    let result = pod_reloaded_tests::scenario::run(&mut sink).await;
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => panic!("{error:#}\n{}", timeline.join("\n")),
    };
    assert!(
        summary.restart_latency <= Duration::from_secs(3),
        "{summary:?}"
    );
    assert_eq!(summary.patches_after_change, 1);
    assert_eq!(summary.patches_with_replicas, 1);
    // The loop guard's warning, and the bad image's RolloutFailed.
    assert_eq!(summary.warning_events, 2);
    // ImageDigestChanged x4 (v2, v3, bad, good), RolloutSucceeded x3 (v2, v3, good),
    // RolledBack x1.
    assert_eq!(summary.normal_events, 8);
    assert_eq!(
        summary.patches_with_bad_image, 3,
        "restart, rollback, restart"
    );
    assert_eq!(summary.rollbacks, 1);
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
    println!("{}", timeline.join("\n"));
}
