//! pod-reloaded against a real control plane: kube-apiserver, etcd and
//! kube-controller-manager built from their Go modules (`pod_reloaded_tests::cluster`),
//! installed from `manifests/`, the webhook called by the API server, the sidecars run with
//! real ServiceAccount tokens, the real controllers rolling out.

use pod_reloaded_tests::cluster::story;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_story_on_a_real_control_plane() {
    let mut lines = Vec::new();
    let result = story::run("story", &mut |line| {
        eprintln!("{line}");
        lines.push(line)
    })
    .await;
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => panic!("{error}"),
    };
    assert_eq!(summary.first_sidecars, 3);
    // One restart for the push; a restart and a rollback for the bad image; one for the
    // next push; the person's undo; nothing after it.
    assert_eq!(summary.revisions[0], 2, "{summary:?}");
    assert_eq!(summary.revisions[1], 4, "{summary:?}");
    assert_eq!(summary.revisions[2], 5, "{summary:?}");
    assert_eq!(summary.revisions[3], 6, "{summary:?}");
    assert!(
        summary.rollout_records[0].starts_with("undone "),
        "{summary:?}"
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
}
