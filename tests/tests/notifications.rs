//! Notifications from the real webhook binary, two replicas of it, against a real
//! kube-apiserver: pod-reloaded's Events (as the sidecar writes them) in, HTTPS
//! receivers of each format out, each Event told once per receiver, across a failing
//! receiver, a hanging one, and the replica that was telling going away.

use std::time::Duration;

use hmac::{Hmac, Mac};
use pod_reloaded_contract as contract;
use pod_reloaded_contract::notify::NotificationType;
use pod_reloaded_tests::api_server::ApiServer;
use pod_reloaded_tests::process::eventually;
use pod_reloaded_tests::receiver::{Behaviour, Receivers};
use pod_reloaded_tests::webhook::{generate_certificates, Webhook};
use pod_reloaded_tests::workspace_root;
use serde_json::{json, Value};
use sha2::Sha256;

const DEADLINE: Duration = Duration::from_secs(60);
const HMAC_KEY: &str = "only-the-receiver-and-the-secret-know";

/// The Event a sidecar records, with the annotations that say what it is about.
fn sidecar_event(namespace: &str, name: &str, reason: &str, workload: &str) -> Value {
    let warning = matches!(
        reason,
        "RolloutFailed" | "ImageSignatureRejected" | "ImageDigestUnchangedAfterRestart"
    );
    let now = pod_reloaded_contract::record::timestamp_text(jiff::Timestamp::now());
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": namespace, "annotations": {
            contract::ANNOTATION_EVENT_TO: format!("app=sha256:{}", "b".repeat(64)),
            contract::ANNOTATION_EVENT_FROM: format!("app=sha256:{}", "a".repeat(64)),
            contract::ANNOTATION_EVENT_IMAGES: "app=registry.example.com/shop/web:main",
        }},
        "involvedObject": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": namespace, "name": workload},
        "reason": reason, "message": format!("{reason} of {workload}"),
        "type": if warning { "Warning" } else { "Normal" },
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "source": {"component": "pod-reloaded"},
        "reportingComponent": contract::EVENT_REPORTING_COMPONENT, "reportingInstance": "web-1",
    })
}

const REASONS: [&str; 9] = [
    "ImageDigestChanged",
    "RolloutSucceeded",
    "RolloutFailed",
    "RolledBack",
    "RolloutUndone",
    "ImageUpdateAvailable",
    "ImageUpdateHeld",
    "ImageSignatureRejected",
    "ImageDigestUnchangedAfterRestart",
];

struct Setup {
    api: ApiServer,
    receivers: Receivers,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

async fn setup() -> Setup {
    let api = ApiServer::start().await.expect("API server");
    api.ensure_namespace(contract::WEBHOOK_NAMESPACE);
    api.put(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"team": "shop"}}}));
    api.put(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "billing", "annotations": {contract::ANNOTATION_NOTIFY: "bus"}}}));
    let receivers = Receivers::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for name in ["slack", "teams", "hook", "bus", "flaky", "slow"] {
        std::fs::write(secrets.join(format!("{name}-url")), receivers.url(name)).unwrap();
    }
    std::fs::write(secrets.join("hook-hmac"), HMAC_KEY).unwrap();
    let config = "receivers:
  slack: {type: slack, urlKey: slack-url, namespaceSelector: {matchLabels: {team: shop}}}
  teams: {type: teams, urlKey: teams-url, namespaceSelector: {matchLabels: {team: shop}}}
  hook: {type: webhook, urlKey: hook-url, hmacKey: hook-hmac, namespaceSelector: {}}
  bus: {type: cloudevents, urlKey: bus-url}
  flaky: {type: webhook, urlKey: flaky-url, events: [rollout-failed], namespaceSelector: {}}
  slow: {type: webhook, urlKey: slow-url, namespaceSelector: {}}
";
    std::fs::write(dir.path().join("notify.yaml"), config).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &receivers.ca_pem).unwrap();
    receivers.set("flaky", Behaviour::FailFirst(1));
    receivers.set("slow", Behaviour::Hang);
    let path = |name: &str| dir.path().join(name).to_string_lossy().to_string();
    let args = vec![
        "--notify-config".to_string(),
        path("notify.yaml"),
        "--notify-secrets-dir".to_string(),
        path("secrets"),
        "--notify-ca-file".to_string(),
        path("ca.pem"),
        "--notify-retry-delays".to_string(),
        "300ms,300ms".to_string(),
        "--notify-timeout".to_string(),
        "2s".to_string(),
    ];
    Setup {
        api,
        receivers,
        dir,
        args,
    }
}

async fn replica(setup: &Setup) -> Webhook {
    let certs = generate_certificates(
        &setup
            .dir
            .path()
            .join(format!("certs-{}", rand::random::<u32>())),
    );
    let args: Vec<&str> = setup.args.iter().map(String::as_str).collect();
    Webhook::start(&certs, Some(&setup.api), &args).await
}

/// The notification ids a receiver accepted, one entry per delivery.
fn ids(receivers: &Receivers, path: &str, id: impl Fn(&Value) -> String) -> Vec<String> {
    let mut ids: Vec<String> = receivers
        .accepted(path)
        .iter()
        .map(|r| id(&r.json()))
        .collect();
    ids.sort();
    ids
}

fn uid_of(api: &ApiServer, namespace: &str, name: &str) -> String {
    api.get(&format!("/api/v1/namespaces/{namespace}/events/{name}"))
        .expect("event")["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_event_reaches_each_of_its_receivers_once_in_its_format() {
    let setup = setup().await;
    let first = replica(&setup).await;
    let second = replica(&setup).await;
    let api = &setup.api;
    let receivers = &setup.receivers;

    for (i, reason) in REASONS.iter().enumerate() {
        api.put(sidecar_event("shop", &format!("web.{i}"), reason, "web"));
    }
    api.put(sidecar_event("billing", "pay.1", "RolloutSucceeded", "pay"));
    // Not the sidecar's: never told.
    let mut foreign = sidecar_event("shop", "web.foreign", "Scheduled", "web");
    foreign["source"]["component"] = json!("default-scheduler");
    api.put(foreign);

    let shop_uids: Vec<String> = (0..REASONS.len())
        .map(|i| uid_of(api, "shop", &format!("web.{i}")))
        .collect();
    let billing_uid = uid_of(api, "billing", "pay.1");
    let mut every_shop_uid = shop_uids.clone();
    every_shop_uid.sort();

    let all_told = eventually(DEADLINE, || {
        receivers.accepted("slack").len() >= REASONS.len()
            && receivers.accepted("teams").len() >= REASONS.len()
            && receivers.accepted("hook").len() > REASONS.len()
            && !receivers.accepted("bus").is_empty()
            && !receivers.accepted("flaky").is_empty()
    })
    .await;
    assert!(
        all_told,
        "slack {} teams {} hook {} bus {} flaky {}\n{}\n-----\n{}",
        receivers.accepted("slack").len(),
        receivers.accepted("teams").len(),
        receivers.accepted("hook").len(),
        receivers.accepted("bus").len(),
        receivers.accepted("flaky").len(),
        first.process.output(),
        second.process.output()
    );
    // Whatever came later would have come by now: the hanging receiver's attempts
    // (2 s each, three of them) are over too.
    let settled = eventually(DEADLINE, || {
        receivers.received("slow").len() >= 3 * (REASONS.len() + 1)
    })
    .await;
    assert!(
        settled,
        "the hanging receiver saw {}",
        receivers.received("slow").len()
    );

    // Each receiver: each Event once, from two replicas.
    let hook_ids = ids(receivers, "hook", |b| {
        b["id"].as_str().unwrap_or("").to_string()
    });
    let mut expected = every_shop_uid.clone();
    expected.push(billing_uid.clone());
    expected.sort();
    assert_eq!(hook_ids, expected, "the generic webhook: every Event, once");
    let bus_ids = ids(receivers, "bus", |b| {
        b["id"].as_str().unwrap_or("").to_string()
    });
    assert_eq!(
        bus_ids,
        vec![billing_uid.clone()],
        "bus: only the namespace that names it"
    );
    assert_eq!(receivers.accepted("slack").len(), REASONS.len());
    assert_eq!(receivers.accepted("teams").len(), REASONS.len());
    // The flaky receiver: only failures, the first attempt refused, one delivery.
    assert_eq!(receivers.accepted("flaky").len(), 1);
    assert_eq!(receivers.received("flaky").len(), 2);
    assert_eq!(
        receivers.accepted("flaky")[0].json()["type"],
        "rollout-failed"
    );

    // Formats.
    for received in receivers.accepted("hook") {
        let body = received.json();
        let mut mac = Hmac::<Sha256>::new_from_slice(HMAC_KEY.as_bytes()).unwrap();
        mac.update(&received.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(received.headers.get("x-signature"), Some(&expected));
        check_against_schema(&body);
        let kind = body["type"].as_str().unwrap();
        assert!(
            NotificationType::ALL.iter().any(|t| t.as_str() == kind),
            "{kind}"
        );
        assert_eq!(body["changes"][0]["tag"], "main");
        assert_eq!(body["changes"][0]["to"]["short"], "sha256:bbbbbbbbbbbb");
    }
    for received in receivers.accepted("slack") {
        let body = received.json();
        assert!(body["text"]
            .as_str()
            .is_some_and(|t| t.contains("Deployment shop/web")));
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert!(blocks
            .iter()
            .all(|b| ["header", "section", "context"].contains(&b["type"].as_str().unwrap())));
    }
    for received in receivers.accepted("teams") {
        let body = received.json();
        let attachment = &body["attachments"][0];
        assert_eq!(
            attachment["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        let card = &attachment["content"];
        check_adaptive_card(card);
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        assert_eq!(card["body"][2]["type"], "FactSet");
    }
    let cloudevent = receivers.accepted("bus")[0].clone();
    assert_eq!(
        cloudevent.headers.get("content-type").map(String::as_str),
        Some("application/cloudevents+json; charset=utf-8")
    );
    let event = cloudevent.json();
    for attribute in ["specversion", "id", "source", "type"] {
        assert!(
            event[attribute].as_str().is_some_and(|v| !v.is_empty()),
            "{attribute}: {event}"
        );
    }
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "dev.cdevents.service.upgraded.0.2.0");
    assert_eq!(
        event["data"]["context"]["type"],
        "dev.cdevents.service.upgraded.0.2.0"
    );

    // Every Event says who was told; the metric counts it.
    let shop_event = api.get("/api/v1/namespaces/shop/events/web.2").unwrap();
    assert_eq!(
        shop_event["metadata"]["annotations"][contract::ANNOTATION_EVENT_NOTIFIED],
        "flaky,hook,slack,teams"
    );
    let metrics = || -> String {
        [&first, &second]
            .iter()
            .map(|w| {
                w.get_metrics_port("/metrics")
                    .map(|(_, body)| body)
                    .unwrap_or_default()
            })
            .collect()
    };
    assert!(
        metrics()
            .contains("pod_reloaded_notifications_total{receiver=\"flaky\",result=\"retried\"} 1"),
        "{}",
        metrics()
    );
    // The hanging receiver: each attempt timed out, each notification dropped at last.
    let dropped = format!(
        "pod_reloaded_notifications_total{{receiver=\"slow\",result=\"dropped\"}} {}",
        REASONS.len() + 1
    );
    let counted = eventually(DEADLINE, || metrics().contains(&dropped)).await;
    assert!(counted, "{}", metrics());

    // The replica that tells goes away: the other takes over, tells what is new, and
    // nothing twice.
    let (leader, follower) = if first.process.output().contains("holds the Lease") {
        (first, second)
    } else {
        (second, first)
    };
    drop(leader);
    api.put(sidecar_event(
        "shop",
        "web.after",
        "RolloutSucceeded",
        "web",
    ));
    let told = eventually(DEADLINE, || {
        receivers.accepted("hook").len() > expected.len()
    })
    .await;
    assert!(told, "{}", follower.process.output());
    let after = uid_of(api, "shop", "web.after");
    let mut with_after = expected.clone();
    with_after.push(after);
    with_after.sort();
    assert_eq!(
        ids(receivers, "hook", |b| b["id"]
            .as_str()
            .unwrap_or("")
            .to_string()),
        with_after
    );
}

/// The generic body against `contract/notification.schema.json` (draft 7).
fn check_against_schema(body: &Value) {
    let text = std::fs::read_to_string(workspace_root().join("contract/notification.schema.json"))
        .expect("the schema");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema is a JSON schema");
    let problems: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(problems.is_empty(), "{problems:?}\n{body}");
}

/// A card against the Adaptive Card JSON schema Microsoft publishes (a copy in
/// `tests/fixtures/notifications/`, see its README).
fn check_adaptive_card(card: &Value) {
    let text = std::fs::read_to_string(
        workspace_root().join("tests/fixtures/notifications/adaptive-card.schema.json"),
    )
    .expect("the Adaptive Card schema");
    let schema: Value = serde_json::from_str(&text).expect("JSON");
    let validator = jsonschema::validator_for(&schema).expect("a JSON schema");
    let problems: Vec<String> = validator.iter_errors(card).map(|e| e.to_string()).collect();
    assert!(problems.is_empty(), "{problems:?}\n{card}");
}

#[test]
fn the_golden_teams_card_is_an_adaptive_card() {
    let path = workspace_root().join("tests/fixtures/notifications/teams.json");
    let message: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    check_adaptive_card(&message["attachments"][0]["content"]);
    // The schema is not vacuous: a card without its version is refused.
    let mut broken = message["attachments"][0]["content"].clone();
    broken.as_object_mut().unwrap().remove("version");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            workspace_root().join("tests/fixtures/notifications/adaptive-card.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(!jsonschema::validator_for(&schema)
        .unwrap()
        .is_valid(&broken));
}

#[test]
fn the_golden_generic_body_is_what_the_schema_describes() {
    let read = |file: &str| -> Value {
        let path = workspace_root()
            .join("tests/fixtures/notifications")
            .join(file);
        serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("JSON")
    };
    check_against_schema(&read("webhook.json"));
    // A CloudEvent of a CDEvents type carries pod-reloaded's JSON as its custom data.
    let cloudevent = read("cloudevents.json");
    check_against_schema(&cloudevent["data"]["customData"]);
    // And a broken body is refused: the schema is not vacuous.
    let mut broken = read("webhook.json");
    broken["type"] = json!("something-else");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("contract/notification.schema.json"))
            .unwrap(),
    )
    .unwrap();
    assert!(!jsonschema::validator_for(&schema)
        .unwrap()
        .is_valid(&broken));
}
