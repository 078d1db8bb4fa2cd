//! Exact-digest rollouts with the real sidecar binary, a real registry and a real API
//! server, the test playing the Deployment controller's status: success, rollback across replicas,
//! halt, a person's undo, and a restart with no rollback target.

use pod_reloaded_contract as contract;
use pod_reloaded_tests::world::{rounds, World};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_rollout_is_rolled_back_once_and_its_digest_quarantined() {
    let (w, owner) = World::start(json!({contract::ANNOTATION_ROLLOUT_TIMEOUT: "4s"})).await;
    let old = w.pod(&owner, "web-old", &w.image_id(&w.first.digest), true);
    let bad = w.push("bad").await;
    w.until("restart", |w| w.template_patches().len() == 1, &[&old])
        .await;
    assert_eq!(
        w.template_annotation(contract::ANNOTATION_ROLLED_FROM),
        Some(format!("web={}", w.first.digest)),
        "the restart records where it came from"
    );

    // Two new pods, pinned to the bad digest, crash-loop; the old one stays.
    w.set_status(2, 0);
    let new_a = w.pod(&owner, "web-new-a", &w.image_id(&bad.digest), false);
    let new_b = w.pod(&owner, "web-new-b", &w.image_id(&bad.digest), false);
    w.until(
        "rolled back after the 4s timeout",
        |w| w.template_patches().len() == 2,
        &[&old, &new_a, &new_b],
    )
    .await;
    let rollback = &w.template_patches()[1];
    assert_eq!(
        rollback["spec"]["template"]["metadata"]["annotations"][contract::ANNOTATION_RESTARTED_FOR],
        format!("web={}", w.first.digest),
        "back to exactly the previous digest"
    );
    assert_eq!(
        w.metadata_annotation(contract::ANNOTATION_QUARANTINED),
        Some(format!("web={}", bad.digest))
    );
    assert!(w
        .metadata_annotation(contract::ANNOTATION_ROLLOUT)
        .unwrap()
        .starts_with("rolled-back "));

    // The bad digest is still served: no sidecar rolls forward to it.
    rounds(&[&old, &new_a, &new_b], 3).await;
    assert_eq!(
        w.template_patches().len(),
        2,
        "no patch to a quarantined digest"
    );
    assert_eq!(w.events("RolloutFailed").len(), 1);
    assert_eq!(w.events("RolledBack").len(), 1);
    let failed = w.events("RolloutFailed")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(failed.contains("0 ready"), "{failed}");
    assert!(
        failed.contains("2/2 new pods CrashLoopBackOff"),
        "what the new pods do: {failed}"
    );
    assert!(old.output().contains("quarantined"), "{}", old.output());

    // The tag moves on: one normal restart, rolling from the digest rolled back to.
    let good = w.push("good").await;
    w.until(
        "a normal restart to the next digest",
        |w| w.template_patches().len() == 3,
        &[&old, &new_a, &new_b],
    )
    .await;
    // This time the new pods come up ready.
    w.set_status(2, 2);
    w.until(
        "the good rollout succeeds",
        |w| w.events("RolloutSucceeded").len() == 1,
        &[&old, &new_a, &new_b],
    )
    .await;
    rounds(&[&old, &new_a, &new_b], 2).await;
    assert_eq!(w.template_patches().len(), 3, "exactly one restart");
    assert_eq!(
        w.template_annotation(contract::ANNOTATION_RESTARTED_FOR),
        Some(format!("web={}", good.digest))
    );
    assert_eq!(
        w.template_annotation(contract::ANNOTATION_ROLLED_FROM),
        Some(format!("web={}", w.first.digest))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ready_rollout_is_recorded_as_succeeded_once() {
    let (w, owner) = World::start(json!({})).await;
    let old = w.pod(&owner, "web-old", &w.image_id(&w.first.digest), true);
    let next = w.push("next").await;
    w.until("restart", |w| w.template_patches().len() == 1, &[&old])
        .await;
    w.set_status(1, 1);
    let new = w.pod(&owner, "web-new", &w.image_id(&next.digest), true);
    w.until(
        "success recorded",
        |w| w.events("RolloutSucceeded").len() == 1,
        &[&old, &new],
    )
    .await;
    rounds(&[&old, &new], 2).await;
    assert_eq!(w.events("RolloutSucceeded").len(), 1);
    assert_eq!(w.template_patches().len(), 1, "no further patch");
    assert!(w
        .metadata_annotation(contract::ANNOTATION_ROLLOUT)
        .unwrap()
        .starts_with("succeeded "));
}

#[tokio::test(flavor = "multi_thread")]
async fn on_failure_halt_quarantines_without_touching_the_template() {
    let (w, owner) = World::start(json!({
        contract::ANNOTATION_ROLLOUT_TIMEOUT: "2s",
        contract::ANNOTATION_ON_FAILURE: "halt"
    }))
    .await;
    let old = w.pod(&owner, "web-old", &w.image_id(&w.first.digest), true);
    let bad = w.push("bad").await;
    w.until("restart", |w| w.template_patches().len() == 1, &[&old])
        .await;
    w.set_status(1, 0);
    w.until(
        "halted after the timeout",
        |w| {
            w.metadata_annotation(contract::ANNOTATION_QUARANTINED)
                .is_some()
        },
        &[&old],
    )
    .await;
    assert_eq!(
        w.metadata_annotation(contract::ANNOTATION_QUARANTINED),
        Some(format!("web={}", bad.digest))
    );
    assert!(w
        .metadata_annotation(contract::ANNOTATION_ROLLOUT)
        .unwrap()
        .starts_with("failed "));
    rounds(&[&old], 2).await;
    assert_eq!(w.template_patches().len(), 1, "halt: no rollback");
    assert_eq!(w.events("RolloutFailed").len(), 1);
    assert!(w.events("RolledBack").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_undone_by_a_person_is_not_rolled_forward_again() {
    let (w, owner) = World::start(json!({})).await;
    let old = w.pod(&owner, "web-old", &w.image_id(&w.first.digest), true);
    let left = w.push("left").await;
    w.until("restart", |w| w.template_patches().len() == 1, &[&old])
        .await;

    // `kubectl rollout undo`: the template of before comes back (no restarted-for).
    let mut deployment = w.deployment();
    deployment["spec"]["template"]["metadata"]["annotations"] = json!({});
    w.api.put(deployment);
    rounds(&[&old], 3).await;
    assert_eq!(w.template_patches().len(), 1, "not rolled forward again");
    assert_eq!(
        w.metadata_annotation(contract::ANNOTATION_QUARANTINED),
        Some(format!("web={}", left.digest)),
        "the digest the person left is quarantined"
    );
    assert!(w
        .metadata_annotation(contract::ANNOTATION_ROLLOUT)
        .unwrap()
        .starts_with("undone "));
    assert!(w.events("RolloutFailed").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bare_image_id_leaves_no_rollback_target_and_the_event_says_so() {
    let (w, owner) = World::start(json!({contract::ANNOTATION_ROLLOUT_TIMEOUT: "2s"})).await;
    // Some runtimes report the config digest, which cannot be pulled back.
    let old = w.pod(&owner, "web-old", &w.first.manifests[0].config_digest, true);
    let bad = w.push("bad").await;
    w.until("restart", |w| w.template_patches().len() == 1, &[&old])
        .await;
    assert_eq!(
        w.template_annotation(contract::ANNOTATION_ROLLED_FROM),
        None
    );
    // The Event follows the restart patch.
    w.until(
        "ImageDigestChanged Event",
        |w| !w.events("ImageDigestChanged").is_empty(),
        &[&old],
    )
    .await;
    let changed = w.events("ImageDigestChanged");
    assert!(
        changed[0]["message"]
            .as_str()
            .unwrap()
            .contains("no rollback target for web"),
        "{changed:?}"
    );
    w.set_status(1, 0);
    w.until(
        "halted: nothing to roll back to",
        |w| w.events("RolloutFailed").len() == 1,
        &[&old],
    )
    .await;
    assert!(w.events("RolloutFailed")[0]["message"]
        .as_str()
        .unwrap()
        .contains("no rollback target"));
    assert_eq!(w.template_patches().len(), 1);
    assert_eq!(
        w.metadata_annotation(contract::ANNOTATION_QUARANTINED),
        Some(format!("web={}", bad.digest))
    );
}
