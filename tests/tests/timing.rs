//! When a restart happens, with the real sidecar: min-age (two sidecars agree on one
//! clock, a moving tag starts it anew), notify mode (one Event per digest, the metric),
//! cooldown, pause and restart windows. Window arithmetic (zones, DST) is unit-tested with
//! an injected clock in `contract::window` and `sidecar::timing`.

use std::time::Duration;

use pod_reloaded_contract as contract;
use pod_reloaded_tests::process::{eventually, free_port, Running};
use pod_reloaded_tests::world::{rounds, World};
use serde_json::json;

fn metadata_patches(w: &World) -> usize {
    w.api
        .requests_to(
            "PATCH",
            &pod_reloaded_tests::workloads::deployment_path("web"),
        )
        .iter()
        .filter(|r| r.status == 200 && r.body.pointer("/spec/template").is_none())
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn min_age_waits_on_one_clock_for_all_replicas_and_a_moving_tag_restarts_it() {
    let (w, owner) = World::start(json!({contract::ANNOTATION_MIN_AGE: "4s"})).await;
    let a = w.pod(&owner, "web-a", &w.image_id(&w.first.digest), true);
    let b = w.pod(&owner, "web-b", &w.image_id(&w.first.digest), true);
    let second = w.push("second").await;
    w.until(
        "first sight recorded",
        |w| {
            w.metadata_annotation(contract::ANNOTATION_PENDING)
                .is_some()
        },
        &[&a, &b],
    )
    .await;
    let pending = w.metadata_annotation(contract::ANNOTATION_PENDING).unwrap();
    assert!(
        pending.starts_with(&format!("web={}@", second.digest)),
        "{pending}"
    );
    rounds(&[&a, &b], 1).await;
    assert_eq!(metadata_patches(&w), 1, "both replicas read one clock");
    let held = w.events("ImageUpdateHeld");
    assert_eq!(held.len(), 1, "one Event from two replicas: {held:?}");
    assert_eq!(
        held[0]["metadata"]["annotations"][contract::ANNOTATION_EVENT_TO],
        format!("web={}", second.digest)
    );
    assert!(w.template_patches().is_empty(), "no restart before the age");
    assert!(a.output().contains("min-age") || b.output().contains("min-age"));

    // The tag moves before the soak is over: the clock starts anew for the new digest.
    let third = w.push("third").await;
    w.until(
        "the new digest's first sight",
        |w| {
            w.metadata_annotation(contract::ANNOTATION_PENDING)
                .is_some_and(|p| p.starts_with(&format!("web={}@", third.digest)))
        },
        &[&a, &b],
    )
    .await;
    let since: jiff::Timestamp = w
        .metadata_annotation(contract::ANNOTATION_PENDING)
        .unwrap()
        .rsplit_once('@')
        .unwrap()
        .1
        .parse()
        .unwrap();
    w.until(
        "the restart after the soak",
        |w| w.template_patches().len() == 1,
        &[&a, &b],
    )
    .await;
    let restarted_at: jiff::Timestamp = w
        .template_annotation(contract::ANNOTATION_RESTARTED_AT)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        restarted_at.duration_since(since) >= jiff::SignedDuration::from_secs(4),
        "restarted at {restarted_at}, first seen {since}"
    );
    assert_eq!(
        w.template_annotation(contract::ANNOTATION_RESTARTED_FOR),
        Some(format!("web={}", third.digest))
    );
    assert_eq!(
        w.metadata_annotation(contract::ANNOTATION_PENDING),
        None,
        "cleared by the restart"
    );
    rounds(&[&a, &b], 2).await;
    assert_eq!(w.template_patches().len(), 1, "exactly one restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_mode_tells_once_per_digest_and_never_restarts() {
    let (w, owner) = World::start(json!({contract::ANNOTATION_MODE: "notify"})).await;
    w.add_pod(&owner, "web-a", &w.image_id(&w.first.digest), true);
    let port = free_port();
    let mut command = w.sidecar("web-a");
    command
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{port}"));
    let a = Running::spawn(command);
    let b = w.pod(&owner, "web-b", &w.image_id(&w.first.digest), true);
    let metric = || {
        let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"));
        async move { body.await.ok()?.text().await.ok() }
    };
    let second = w.push("second").await;
    w.until(
        "one Event",
        |w| w.events("ImageUpdateAvailable").len() == 1,
        &[&a, &b],
    )
    .await;
    rounds(&[&a, &b], 3).await;
    assert_eq!(w.events("ImageUpdateAvailable").len(), 1, "once per digest");
    assert!(w.template_patches().is_empty(), "notify never restarts");
    let line = format!(
        "pod_reloaded_update_available{{namespace=\"{}\",workload=\"web\",container=\"web\"}} 1",
        pod_reloaded_tests::workloads::NAMESPACE
    );
    let text = metric().await.unwrap_or_default();
    assert!(text.contains(&line), "{text}");

    // Someone rolls it out by hand: the pod runs the new digest, the metric drops to 0.
    w.set_running("web-a", &w.image_id(&second.digest));
    let zero = line.replace("} 1", "} 0");
    let dropped =
        pod_reloaded_tests::process::eventually_async(Duration::from_secs(20), || async {
            metric().await.unwrap_or_default().contains(&zero)
        })
        .await;
    assert!(dropped, "{}", a.output());

    // A newer digest is told again, once.
    w.push("third").await;
    w.until(
        "a second Event",
        |w| w.events("ImageUpdateAvailable").len() == 2,
        &[&a, &b],
    )
    .await;
    rounds(&[&a, &b], 2).await;
    assert_eq!(w.events("ImageUpdateAvailable").len(), 2);
    assert!(w.template_patches().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn cooldown_pause_and_windows_defer_and_say_why() {
    // A restart happened just now: the cooldown holds the next one.
    let (w, owner) = World::start(json!({
        contract::ANNOTATION_COOLDOWN: "1h",
        contract::ANNOTATION_RESTARTED_AT: pod_reloaded_tests::world::now(),
    }))
    .await;
    let a = w.pod(&owner, "web-a", &w.image_id(&w.first.digest), true);
    w.push("second").await;
    let said = eventually(Duration::from_secs(20), || {
        a.output().contains("cooldown: no restart before")
    })
    .await;
    assert!(said, "{}", a.output());
    rounds(&[&a], 2).await;
    assert!(w.template_patches().is_empty());
    assert_eq!(
        a.output().matches("restart deferred").count(),
        1,
        "said once"
    );
    drop(a);

    // Paused on the workload's metadata: held until the annotation is removed.
    let (w, owner) = World::start(json!({})).await;
    let mut deployment = w.deployment();
    deployment["metadata"]["annotations"] = json!({contract::ANNOTATION_PAUSED: "true"});
    w.api.put(deployment);
    let a = w.pod(&owner, "web-a", &w.image_id(&w.first.digest), true);
    w.push("second").await;
    let said = eventually(Duration::from_secs(20), || a.output().contains("paused")).await;
    assert!(said, "{}", a.output());
    rounds(&[&a], 2).await;
    assert!(w.template_patches().is_empty());
    let mut deployment = w.deployment();
    deployment["metadata"]["annotations"] = json!({});
    w.api.put(deployment);
    w.until(
        "restarted once unpaused",
        |w| w.template_patches().len() == 1,
        &[&a],
    )
    .await;
    drop(a);

    // Outside every window: deferred, and the log says when the next one opens.
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .weekday();
    let other_day = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        [(today.to_monday_zero_offset() as usize + 3) % 7];
    let (w, owner) = World::start(json!({
        contract::ANNOTATION_RESTART_WINDOW: format!("{other_day} 00:00-24:00 UTC"),
    }))
    .await;
    let a = w.pod(&owner, "web-a", &w.image_id(&w.first.digest), true);
    w.push("second").await;
    let said = eventually(Duration::from_secs(20), || {
        a.output().contains("next one opens")
    })
    .await;
    assert!(said, "{}", a.output());
    rounds(&[&a], 2).await;
    assert!(w.template_patches().is_empty());
    drop(a);

    // Inside a window: restarted.
    let (w, owner) = World::start(json!({
        contract::ANNOTATION_RESTART_WINDOW: "Mon-Sun 00:00-24:00 Europe/Berlin",
    }))
    .await;
    let a = w.pod(&owner, "web-a", &w.image_id(&w.first.digest), true);
    w.push("second").await;
    w.until(
        "restarted inside the window",
        |w| w.template_patches().len() == 1,
        &[&a],
    )
    .await;
}
