//! Property tests of everything that parses input pod-reloaded does not control: the
//! admission path (any bytes answer 200 or 400, never a panic, and every patch applies to
//! the request's object), image references, docker config JSON, `WWW-Authenticate`
//! challenges, token answers and manifest/index bodies.
//!
//! `PROPTEST_CASES` sets the cases per property: the default keeps `make test` quick;
//! `make fuzz` runs a million per property.

use std::sync::OnceLock;

use base64::Engine as _;
use pod_reloaded_contract::image::{parse_image_id, ImageReference};
use pod_reloaded_sidecar::registry::auth::{parse_challenge, TokenResponse};
use pod_reloaded_sidecar::registry::credentials::Credentials;
use pod_reloaded_sidecar::registry::manifest::{Index, Manifest};
use pod_reloaded_tests::webhook::fixture;
use pod_reloaded_webhook::admission::{encode_review, Admission};
use pod_reloaded_webhook::inject::{InjectionSettings, SidecarMode};
use proptest::prelude::*;
use serde_json::{json, Value};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(512);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[ -~]{0,24}".prop_map(Value::from),
        Just(json!("nginx:latest")),
        Just(json!(format!("sha256:{}", "a".repeat(64)))),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z./-]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Where a mutation lands in a fixture: the fields the webhook reads.
const MUTATED_POINTERS: [&str; 16] = [
    "",
    "/request",
    "/request/uid",
    "/request/kind",
    "/request/operation",
    "/request/dryRun",
    "/request/object",
    "/request/object/metadata",
    "/request/object/metadata/annotations",
    "/request/object/metadata/ownerReferences",
    "/request/object/metadata/labels",
    "/request/object/spec",
    "/request/object/spec/containers",
    "/request/object/spec/containers/0",
    "/request/object/spec/containers/0/image",
    "/request/object/spec/volumes",
];

const FIXTURES: [&str; 6] = [
    "deployment-pod-default-sa.json",
    "deployment-pod-custom-sa-pull-secret.json",
    "deployment-pod-dry-run.json",
    "statefulset-pod.json",
    "daemonset-pod.json",
    "bare-pod.json",
];

fn admission() -> &'static Admission {
    static ADMISSION: OnceLock<Admission> = OnceLock::new();
    ADMISSION.get_or_init(|| Admission {
        settings: InjectionSettings::example(SidecarMode::Container),
        // No API access: non-dry-run pods are admitted uninjected, dry runs injected.
        granter: None,
        metrics: Default::default(),
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

/// Reviews `body` as the HTTP handler does: the encoded answer (200), or `None` (400). An
/// answer names the request's uid, and its patch applies to the request's object.
fn review(body: &[u8]) -> Result<Option<Value>, TestCaseError> {
    let Ok(review) = runtime().block_on(admission().review(body)) else {
        return Ok(None);
    };
    // The object the API server would apply the patch to: the one it sent.
    let object = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/request/object").cloned());
    let encoded = encode_review(review).map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
    let answer: Value = serde_json::from_slice(&encoded)
        .map_err(|e| TestCaseError::fail(format!("answer is not JSON: {e}")))?;
    prop_assert_eq!(&answer["apiVersion"], "admission.k8s.io/v1");
    if let Some(patch) = answer["response"]["patch"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .map_err(|e| TestCaseError::fail(format!("patch is not base64: {e}")))?;
        let patch: json_patch::Patch = serde_json::from_slice(&bytes)
            .map_err(|e| TestCaseError::fail(format!("patch is not a JSON Patch: {e}")))?;
        let mut target = object.unwrap_or(Value::Null);
        json_patch::patch(&mut target, &patch)
            .map_err(|e| TestCaseError::fail(format!("patch does not apply: {e}")))?;
    }
    let sent: Value = serde_json::from_slice(body)
        .map_err(|e| TestCaseError::fail(format!("answered a body that is not JSON: {e}")))?;
    prop_assert_eq!(&answer["response"]["uid"], &sent["request"]["uid"]);
    Ok(Some(answer))
}

fn mutated_fixture() -> impl Strategy<Value = Vec<u8>> {
    (
        0..FIXTURES.len(),
        prop::collection::vec((0..MUTATED_POINTERS.len(), arb_json()), 1..4),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(fixture_index, mutations, truncate)| {
            let mut review = fixture(FIXTURES[fixture_index]);
            // Dry runs take the whole injection path without API access.
            review["request"]["dryRun"] = json!(true);
            for (pointer, value) in mutations {
                if let Some(slot) = review.pointer_mut(MUTATED_POINTERS[pointer]) {
                    *slot = value;
                }
            }
            let mut bytes = serde_json::to_vec(&review).unwrap_or_default();
            if let Some(at) = truncate {
                bytes.truncate(at.index(bytes.len() + 1));
            }
            bytes
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_get_an_answer_only_when_they_are_a_review(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let answered = review(&body)?.is_some();
        // An answer needs a review with a request to answer (and its uid).
        let is_a_review = serde_json::from_slice::<Value>(&body)
            .is_ok_and(|v| v["request"]["uid"].is_string());
        if !is_a_review {
            prop_assert!(!answered, "answered {:?}", String::from_utf8_lossy(&body));
        }
    }

    #[test]
    fn a_fixture_is_answered_whatever_its_uid(uid in "[a-z0-9-]{1,40}") {
        let mut body = fixture(FIXTURES[0]);
        body["request"]["uid"] = json!(uid);
        let answer = review(&serde_json::to_vec(&body).unwrap_or_default())?;
        prop_assert!(answer.is_some(), "a valid review was refused");
    }

    #[test]
    fn mutated_reviews_get_an_answer_and_patches_that_apply(body in mutated_fixture()) {
        review(&body)?;
    }

    #[test]
    fn image_references_never_panic_and_valid_ones_round_trip(
        text in "[a-zA-Z0-9:/@._\\-\\[\\]]{0,80}",
        host in "[a-z][a-z0-9]{0,10}(\\.[a-z]{2,5})?",
        port in "(:[0-9]{1,5})?",
        path in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
        tag in "[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}",
    ) {
        let _ = ImageReference::parse(&text);
        let _ = parse_image_id(&text);
        let image = format!("{host}.io{port}/{path}:{tag}");
        let reference = ImageReference::parse(&image).map_err(TestCaseError::fail)?;
        prop_assert_eq!(reference.tag.as_deref(), Some(tag.as_str()));
        prop_assert_eq!(&reference.repository, &path);
        prop_assert!(!reference.is_pinned());
        let pinned = format!("{image}@sha256:{}", "b".repeat(64));
        prop_assert!(ImageReference::parse(&pinned).map_err(TestCaseError::fail)?.is_pinned());
    }

    #[test]
    fn docker_configs_never_panic(body in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        arb_json().prop_map(|auths| serde_json::to_vec(&json!({"auths": auths})).unwrap_or_default()),
    ]) {
        let mut credentials = Credentials::default();
        let _ = credentials.add_config(&body);
        let _ = credentials.add_legacy_config(&body);
        let _ = credentials.for_image("registry.example.com:5000", "team/app");
    }

    #[test]
    fn challenges_and_token_answers_never_panic(
        header in "[ -~]{0,120}",
        body in prop::collection::vec(any::<u8>(), 0..128),
        expires_in in any::<u64>(),
    ) {
        let _ = parse_challenge(&header);
        let _ = parse_challenge(&format!("Bearer {header}"));
        let _ = TokenResponse::parse(&body);
        let answer = json!({"token": "t", "expires_in": expires_in}).to_string();
        prop_assert!(TokenResponse::parse(answer.as_bytes()).is_ok());
    }

    #[test]
    fn manifest_and_index_bodies_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        value in arb_json(),
    ) {
        let _ = serde_json::from_slice::<Index>(&bytes);
        let _ = serde_json::from_slice::<Manifest>(&bytes);
        let text = json!({"manifests": value, "config": value}).to_string();
        if let Ok(index) = serde_json::from_str::<Index>(&text) {
            let platform = pod_reloaded_sidecar::platform::Platform::current();
            let _ = index.manifest_for(&platform);
        }
        let _ = serde_json::from_str::<Manifest>(&text);
    }
}

/// The properties above would pass vacuously if no generated review were injected: the
/// unmutated dry-run fixture must go through the patch check.
#[test]
fn the_patch_check_is_reached() {
    let review_json = fixture("deployment-pod-dry-run.json");
    let body = serde_json::to_vec(&review_json).unwrap();
    let answer = runtime()
        .block_on(admission().review(&body))
        .expect("a valid review");
    assert!(answer
        .response
        .as_ref()
        .and_then(|r| r.patch.as_ref())
        .is_some());
    let answer = review(&body).unwrap().expect("answered");
    assert!(answer["response"]["patch"].is_string());
}
