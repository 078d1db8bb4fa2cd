//! The real webhook binary over real TLS, with certificates from the real certs command,
//! its RBAC side effect landing in a real API server (`api_server`).

use std::time::Duration;

use pod_reloaded_contract as contract;
use pod_reloaded_tests::api_server::{ApiFault, ApiServer};
use pod_reloaded_tests::webhook::{
    fixture, generate_certificates, response_patch, tls_client, warnings, Webhook,
};
use serde_json::{json, Value};

/// A real API server with the namespaces the fixtures' pods are created in (a pod is
/// admitted only in a namespace that exists).
async fn api_server() -> ApiServer {
    let api = ApiServer::start().await.unwrap();
    for namespace in ["shop", "payments", "data", "monitoring", "batch"] {
        api.ensure_namespace(namespace);
    }
    api
}

async fn post(
    webhook: &Webhook,
    client: &reqwest::Client,
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let response = client
        .post(webhook.url(contract::WEBHOOK_MUTATE_PATH))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("webhook answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

async fn review(webhook: &Webhook, client: &reqwest::Client, request: &Value) -> Value {
    let (status, body) = post(webhook, client, request.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let review: Value = serde_json::from_str(&body).expect("response is JSON");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(
        review["response"]["uid"], request["request"]["uid"],
        "same uid"
    );
    assert_eq!(review["response"]["allowed"], true, "never blocks a pod");
    review
}

fn patched_object(request: &Value, review: &Value) -> Value {
    let patch = response_patch(review).expect("response has a JSON patch");
    let mut object = request["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).expect("patch applies to the request object");
    object
}

fn sidecar_of(pod: &Value) -> Option<&Value> {
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == contract::SIDECAR_CONTAINER_NAME)
}

#[tokio::test]
async fn fixtures_are_answered_as_their_readme_says() {
    let api = api_server().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = generate_certificates(dir.path());
    let webhook = Webhook::start(&certs, Some(&api), &["--sidecar-image", "test/checker:1"]).await;
    let client = webhook.client(&certs.ca);

    // Injected, switched to the checker account, account and binding created.
    let request = fixture("deployment-pod-default-sa.json");
    let answer = review(&webhook, &client, &request).await;
    let pod = patched_object(&request, &answer);
    let sidecar = sidecar_of(&pod).expect("sidecar injected");
    assert_eq!(sidecar["image"], "test/checker:1");
    // The documented defaults (README), sized from the sidecar's measured RSS.
    assert_eq!(
        sidecar["resources"],
        json!({"requests": {"cpu": "5m", "memory": "10Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}})
    );
    assert_eq!(
        pod["spec"]["serviceAccountName"],
        contract::CHECKER_SERVICE_ACCOUNT
    );
    let account = api
        .get("/api/v1/namespaces/shop/serviceaccounts/pod-reloaded-checker")
        .expect("checker ServiceAccount created");
    assert_eq!(
        account["metadata"]["labels"][contract::MANAGED_BY_LABEL],
        contract::MANAGED_BY_VALUE
    );
    let binding = api
        .get("/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/pod-reloaded-checker")
        .expect("RoleBinding created");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], contract::CHECKER_CLUSTER_ROLE);
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "pod-reloaded-checker", "namespace": "shop"}])
    );

    // Idempotent: the patched pod yields no patch, and a second pod costs no API writes.
    let mut again = request.clone();
    again["request"]["object"] = pod;
    let answer = review(&webhook, &client, &again).await;
    assert!(response_patch(&answer).is_none(), "no second injection");
    assert!(
        warnings(&answer).iter().any(|w| w.contains("already has")),
        "{:?}",
        warnings(&answer)
    );
    let writes_before = api.requests().iter().filter(|r| r.is_write()).count();
    review(&webhook, &client, &request).await;
    assert_eq!(
        api.requests().iter().filter(|r| r.is_write()).count(),
        writes_before
    );

    // Custom account kept, its own binding, the pull secret mounted, watching `app` only.
    let request = fixture("deployment-pod-custom-sa-pull-secret.json");
    let answer = review(&webhook, &client, &request).await;
    let pod = patched_object(&request, &answer);
    assert_eq!(pod["spec"]["serviceAccountName"], "api");
    let sidecar = sidecar_of(&pod).expect("sidecar injected");
    let env: Vec<(String, String)> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert!(
        env.contains(&(contract::ENV_WATCH_CONTAINER.into(), "app".into())),
        "{env:?}"
    );
    assert!(
        env.contains(&(contract::ENV_INTERVAL.into(), "30s".into())),
        "{env:?}"
    );
    assert!(sidecar["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(
            |m| m["mountPath"] == "/var/run/secrets/pod-reloaded/pull-secrets/regcred"
                && m["readOnly"] == true
        ));
    assert!(api
        .get("/apis/rbac.authorization.k8s.io/v1/namespaces/payments/rolebindings/pod-reloaded-checker-api")
        .is_some());
    assert!(api
        .get("/api/v1/namespaces/payments/serviceaccounts/pod-reloaded-checker")
        .is_none());
    assert!(warnings(&answer)
        .iter()
        .any(|w| w.contains("imagePullPolicy: Always on container app")));

    for name in ["statefulset-pod.json", "daemonset-pod.json"] {
        let request = fixture(name);
        let answer = review(&webhook, &client, &request).await;
        assert!(
            sidecar_of(&patched_object(&request, &answer)).is_some(),
            "{name}"
        );
    }

    // Dry run: patched, but nothing written to the API.
    api.clear_requests();
    let request = fixture("deployment-pod-dry-run.json");
    let mut other_namespace = request.clone();
    other_namespace["request"]["namespace"] = json!("dry");
    let answer = review(&webhook, &client, &other_namespace).await;
    assert!(sidecar_of(&patched_object(&other_namespace, &answer)).is_some());
    assert!(
        api.object_requests().is_empty(),
        "dry run touched the API: {:?}",
        api.object_requests()
    );

    // Admitted unchanged, with a warning saying why.
    for (name, why) in [
        ("bare-pod.json", "no owner"),
        ("job-pod.json", "Job"),
        ("kube-system-pod.json", "kube-system"),
        ("pod-update.json", "CREATE"),
        ("configmap-create.json", "ConfigMap"),
    ] {
        let answer = review(&webhook, &client, &fixture(name)).await;
        assert!(response_patch(&answer).is_none(), "{name} was patched");
        let said = warnings(&answer);
        assert!(said.iter().any(|w| w.contains(why)), "{name}: {said:?}");
    }
    assert!(
        api.object_requests().is_empty(),
        "skips touched the API: {:?}",
        api.object_requests()
    );

    let (code, metrics) = webhook.get_metrics_port("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("pod_reloaded_admissions_total{result=\"injected\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pod_reloaded_admissions_total{result=\"skipped\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pod_reloaded_admission_duration_seconds_count 12"),
        "{metrics}"
    );
}

#[tokio::test]
async fn native_sidecar_mode_uses_an_init_container() {
    let api = api_server().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = generate_certificates(dir.path());
    let webhook = Webhook::start(&certs, Some(&api), &["--sidecar-mode", "native"]).await;
    let request = fixture("deployment-pod-default-sa.json");
    let answer = review(&webhook, &webhook.client(&certs.ca), &request).await;
    let pod = patched_object(&request, &answer);
    assert_eq!(
        pod["spec"]["initContainers"][0]["name"],
        contract::SIDECAR_CONTAINER_NAME
    );
    assert_eq!(pod["spec"]["initContainers"][0]["restartPolicy"], "Always");
    assert!(sidecar_of(&pod).is_none());
}

#[tokio::test]
async fn without_api_access_pods_are_admitted_uninjected_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let certs = generate_certificates(dir.path());
    let webhook = Webhook::start(&certs, None, &[]).await;
    let answer = review(
        &webhook,
        &webhook.client(&certs.ca),
        &fixture("deployment-pod-default-sa.json"),
    )
    .await;
    assert!(response_patch(&answer).is_none());
    let said = warnings(&answer);
    assert!(
        said.iter()
            .any(|w| w.contains("not injected") && w.contains("ClusterRole")),
        "{said:?}"
    );
    let (_, metrics) = webhook.get_metrics_port("/metrics").unwrap();
    assert!(
        metrics.contains("pod_reloaded_admissions_total{result=\"error\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_binding_with_other_subjects_is_patched() {
    let api = api_server().await;
    api.put(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "pod-reloaded-checker", "namespace": "shop"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pod-reloaded-checker"},
        "subjects": [{"kind": "ServiceAccount", "name": "someone-else", "namespace": "shop"}]
    }));
    let dir = tempfile::tempdir().unwrap();
    let certs = generate_certificates(dir.path());
    let webhook = Webhook::start(&certs, Some(&api), &[]).await;
    review(
        &webhook,
        &webhook.client(&certs.ca),
        &fixture("deployment-pod-default-sa.json"),
    )
    .await;
    let path =
        "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/pod-reloaded-checker";
    let patches = api.requests_to("PATCH", path);
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].content_type, "application/merge-patch+json");
    assert_eq!(
        api.get(path).unwrap()["subjects"][0]["name"],
        "pod-reloaded-checker"
    );
}

#[tokio::test]
async fn malformed_requests_get_a_clear_4xx_and_change_nothing() {
    let api = api_server().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = generate_certificates(dir.path());
    let mut webhook = Webhook::start(
        &certs,
        Some(&api),
        &["--log-format", "json", "--shutdown-delay", "0s"],
    )
    .await;
    let client = webhook.client(&certs.ca);

    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let mut wrong_version = fixture("deployment-pod-default-sa.json");
    wrong_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut not_a_pod = fixture("deployment-pod-default-sa.json");
    not_a_pod["request"]["object"]["spec"]["containers"] = json!("web");
    let cases: Vec<(String, &str)> = vec![
        ("this is not json".into(), "not an AdmissionReview"),
        ("{\"hello\": 1}".into(), "AdmissionReview"),
        ("[1,2,3]".into(), "not an AdmissionReview"),
        (no_request.to_string(), "no request"),
        (wrong_version.to_string(), "unsupported AdmissionReview"),
        (not_a_pod.to_string(), "not a valid Pod"),
    ];
    for (body, reason) in cases {
        let (status, text) = post(&webhook, &client, body.clone()).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(reason), "{body}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "one-line reason: {text}");
    }

    let huge = vec![b' '; 3 * 1024 * 1024 + 1];
    let (status, _) = post(&webhook, &client, huge).await;
    assert_eq!(status, 413);

    let response = client.get(webhook.url("/mutate")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let response = client
        .post(webhook.url("/validate"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);

    assert!(
        api.object_requests().is_empty(),
        "bad input reached the API: {:?}",
        api.object_requests()
    );
    assert!(
        webhook.process.child.try_wait().unwrap().is_none(),
        "webhook still running"
    );
    let (_, metrics) = webhook.get_metrics_port("/metrics").unwrap();
    assert!(
        metrics.contains("pod_reloaded_admissions_total{result=\"invalid\"} 6"),
        "{metrics}"
    );

    // Logs are JSON lines.
    let output = webhook.process.output();
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        assert!(parsed.get("level").is_some(), "{line}");
    }

    // SIGTERM stops it promptly.
    webhook.process.signal("TERM");
    let status = webhook
        .process
        .wait_for_exit(Duration::from_secs(6))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = generate_certificates(&dir.path().join("first"));
    let second = generate_certificates(&dir.path().join("second"));
    let serving = dir.path().join("serving");
    std::fs::create_dir_all(&serving).unwrap();
    for file in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::copy(first.dir.join(file), serving.join(file)).unwrap();
    }
    let serving_certs = pod_reloaded_tests::webhook::Certificates {
        dir: serving.clone(),
        ca: serving.join("ca.crt"),
        cert: serving.join("tls.crt"),
        key: serving.join("tls.key"),
    };
    let webhook = Webhook::start(&serving_certs, None, &["--tls-reload-interval", "100ms"]).await;
    let healthy = |client: reqwest::Client| {
        let url = webhook.url("/mutate");
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(
        healthy(tls_client(&first.ca, webhook.port)).await.ok(),
        Some(405)
    );
    assert!(
        healthy(tls_client(&second.ca, webhook.port)).await.is_err(),
        "second CA not served yet"
    );

    // A kept-alive connection from before the rotation.
    let kept = tls_client(&first.ca, webhook.port);
    assert_eq!(healthy(kept.clone()).await.ok(), Some(405));

    // Replace the files the way a Secret volume update does: new files, then rename.
    for file in ["tls.key", "tls.crt"] {
        let staged = serving.join(format!(".{file}.new"));
        std::fs::copy(second.dir.join(file), &staged).unwrap();
        std::fs::rename(&staged, serving.join(file)).unwrap();
    }
    let mut rotated = false;
    for _ in 0..100 {
        if healthy(tls_client(&second.ca, webhook.port)).await.ok() == Some(405) {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rotated,
        "new handshakes never saw the new certificate:\n{}",
        webhook.process.output()
    );

    // The served leaf is exactly the new file's first certificate.
    let response = tls_client(&second.ca, webhook.port)
        .get(webhook.url("/healthz"))
        .send()
        .await
        .unwrap();
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls info");
    let served = info.peer_certificate().expect("peer certificate").to_vec();
    let pem = std::fs::read_to_string(&second.cert).unwrap();
    let first_block: String = pem
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::STANDARD
        .decode(first_block)
        .unwrap();
    assert_eq!(served, expected);

    // New handshakes with the old CA fail; the connection opened before still works.
    assert!(healthy(tls_client(&first.ca, webhook.port)).await.is_err());
    assert_eq!(
        healthy(kept).await.ok(),
        Some(405),
        "open connection was dropped"
    );
}

#[tokio::test]
async fn an_account_or_binding_deleted_by_hand_is_created_again_for_the_next_pod() {
    let api = api_server().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = generate_certificates(dir.path());
    let webhook = Webhook::start(&certs, Some(&api), &[]).await;
    let client = webhook.client(&certs.ca);
    let account = "/api/v1/namespaces/shop/serviceaccounts/pod-reloaded-checker";
    let binding =
        "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/pod-reloaded-checker";
    let request = fixture("deployment-pod-default-sa.json");
    let answer = review(&webhook, &client, &request).await;
    assert!(response_patch(&answer).is_some());
    assert!(api.get(account).is_some() && api.get(binding).is_some());

    // The webhook watches what it manages: one list and one watch per resource, with its
    // label, across namespaces.
    for collection in [
        "/api/v1/serviceaccounts",
        "/apis/rbac.authorization.k8s.io/v1/rolebindings",
    ] {
        let label = format!(
            "{}%3D{}",
            contract::MANAGED_BY_LABEL.replace('/', "%2F"),
            contract::MANAGED_BY_VALUE
        );
        let sent = api.requests_to("GET", collection);
        assert!(
            sent.iter().any(|r| r.query.contains("watch=true")),
            "{collection}: {sent:?}"
        );
        assert!(
            sent.iter().all(|r| r.query.contains(&label)),
            "{collection}: {sent:?}"
        );
    }

    // Once the watches know both objects, a pod costs no API request at all.
    let mut quiet = false;
    for _ in 0..200 {
        api.clear_requests();
        review(&webhook, &client, &request).await;
        if api.object_requests().is_empty() {
            quiet = true;
            break;
        }
        assert!(
            api.requests().iter().all(|r| !r.is_write()),
            "{:?}",
            api.requests()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(quiet, "pods still cost API reads: {:?}", api.requests());

    // Someone deletes the account, then the binding: as soon as the watch has told the
    // webhook, the next pod gets them back before it is sent to an account that does not
    // exist.
    for deleted in [account, binding] {
        api.delete(deleted);
        let mut recreated = false;
        for _ in 0..200 {
            let answer = review(&webhook, &client, &request).await;
            let pod = patched_object(&request, &answer);
            assert_eq!(
                pod["spec"]["serviceAccountName"],
                contract::CHECKER_SERVICE_ACCOUNT
            );
            if api.get(deleted).is_some() {
                recreated = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            recreated,
            "{deleted} not created again:\n{}",
            webhook.process.output()
        );
    }
}

#[tokio::test]
async fn without_the_watch_each_pod_is_checked_with_the_api_server() {
    let api = api_server().await;
    // A ClusterRole without list/watch on rolebindings, as an older install has.
    api.inject_fault(
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/rolebindings",
        ApiFault::Status(403),
    );
    let dir = tempfile::tempdir().unwrap();
    let certs = generate_certificates(dir.path());
    let webhook = Webhook::start(&certs, Some(&api), &[]).await;
    let client = webhook.client(&certs.ca);
    let binding =
        "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/pod-reloaded-checker";
    let request = fixture("deployment-pod-default-sa.json");
    review(&webhook, &client, &request).await;
    assert!(api.get(binding).is_some());

    // Each pod asks; a deleted binding is back for the very next pod.
    api.clear_requests();
    review(&webhook, &client, &request).await;
    assert_eq!(
        api.requests_to("GET", binding).len(),
        1,
        "{:?}",
        api.requests()
    );
    api.delete(binding);
    review(&webhook, &client, &request).await;
    assert!(api.get(binding).is_some(), "binding not created again");
    assert!(
        webhook
            .process
            .output()
            .contains("cannot watch the checker grants"),
        "{}",
        webhook.process.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_always_get_their_413() {
    let dir = tempfile::tempdir().unwrap();
    let certs = generate_certificates(dir.path());
    let webhook = Webhook::start(&certs, None, &[]).await;
    let client = webhook.client(&certs.ca);
    // The client is still sending when the server knows the answer: the answer must
    // still arrive, every time, and the connection stay usable.
    for size in [4 * 1024 * 1024, 3 * 1024 * 1024 + 1, 8 * 1024 * 1024] {
        for _ in 0..5 {
            let response = client
                .post(webhook.url(contract::WEBHOOK_MUTATE_PATH))
                .header("content-type", "application/json")
                .body(vec![b' '; size])
                .send()
                .await
                .unwrap_or_else(|e| panic!("{size} bytes: no answer: {e:?}"));
            assert_eq!(response.status().as_u16(), 413, "{size} bytes");
        }
    }
    let (status, _) = post(&webhook, &client, "{}".to_string()).await;
    assert_eq!(status, 400, "the server still answers afterwards");
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_bad_bodies_over_keep_alive_connections_all_get_answers() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let certs = generate_certificates(dir.path());
    let webhook = Webhook::start(&certs, None, &[]).await;
    let client = webhook.client(&certs.ca);
    let base = serde_json::to_vec(&fixture("deployment-pod-dry-run.json")).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut ok, mut bad) = (0, 0);
    for i in 0..3000 {
        let body: Vec<u8> = match i % 3 {
            // Truncated.
            0 => base[..rng.gen_range(0..base.len())].to_vec(),
            // Bytes flipped.
            1 => {
                let mut body = base.clone();
                for _ in 0..rng.gen_range(1..8) {
                    let at = rng.gen_range(0..body.len());
                    body[at] = rng.gen();
                }
                body
            }
            // Random bytes.
            _ => (0..rng.gen_range(0..2048)).map(|_| rng.gen()).collect(),
        };
        let response = client
            .post(webhook.url(contract::WEBHOOK_MUTATE_PATH))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i}: no answer: {e:?}"));
        match response.status().as_u16() {
            200 => ok += 1,
            400 => bad += 1,
            other => panic!("request {i}: HTTP {other}"),
        }
    }
    assert_eq!(ok + bad, 3000);
    assert!(ok > 0 && bad > 0, "{ok} answered 200, {bad} answered 400");
}

/// The fixture pod with `pod-reloaded.io/verify` set (or the annotation left off).
fn pod_verifying(verify: Option<&str>) -> Value {
    let mut request = fixture("deployment-pod-default-sa.json");
    request["request"]["uid"] = json!(format!("verify-{}", rand::random::<u32>()));
    if let Some(name) = verify {
        let annotations = &mut request["request"]["object"]["metadata"]["annotations"];
        if !annotations.is_object() {
            *annotations = json!({});
        }
        annotations[contract::ANNOTATION_VERIFY] = json!(name);
    }
    request
}

fn policy_of(pod: &Value) -> Option<contract::trust::NamedPolicy> {
    sidecar_of(pod)?["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == contract::ENV_VERIFY_POLICY)
        .and_then(|e| e["value"].as_str())
        .map(|json| contract::trust::NamedPolicy::from_json(json).expect("the policy parses"))
}

const RELEASE_POLICY: &str = "policies:\n  release:\n    keyless:\n      - issuer: https://token.actions.githubusercontent.com\n        subjectRegExp: ^https://github\\.com/acme/.+$\n";

#[tokio::test(flavor = "multi_thread")]
async fn trust_policies_are_given_to_the_pods_that_name_them_and_reloaded_when_they_change() {
    let api = api_server().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = generate_certificates(dir.path());
    let file = dir.path().join("policies.yaml");
    std::fs::write(&file, RELEASE_POLICY).unwrap();
    let webhook = Webhook::start(
        &certs,
        Some(&api),
        &[
            "--trust-policy-file",
            file.to_str().unwrap(),
            "--default-verify-policy",
            "release",
            "--tls-reload-interval",
            "100ms",
        ],
    )
    .await;
    let client = webhook.client(&certs.ca);
    let admitted = |verify: Option<&'static str>| {
        let client = client.clone();
        let webhook = &webhook;
        async move {
            let request = pod_verifying(verify);
            let answer = review(webhook, &client, &request).await;
            match response_patch(&answer) {
                Some(_) => Ok(patched_object(&request, &answer)),
                None => Err(warnings(&answer).join("\n")),
            }
        }
    };

    // The default, the named policy, and `off`.
    let pod = admitted(None).await.expect("injected");
    let policy = policy_of(&pod).expect("the default policy");
    assert_eq!(policy.name, "release");
    assert_eq!(
        policy.policy.keyless[0].issuer,
        "https://token.actions.githubusercontent.com"
    );
    assert_eq!(
        policy_of(&admitted(Some("release")).await.unwrap())
            .unwrap()
            .name,
        "release"
    );
    assert_eq!(policy_of(&admitted(Some("off")).await.unwrap()), None);
    let refused = admitted(Some("nightly"))
        .await
        .expect_err("an unknown name is not injected");
    assert!(
        refused.contains("no trust policy named \"nightly\""),
        "{refused}"
    );

    // An invalid file is said once and the last good policies stay.
    std::fs::write(&file, "policies: {release: {keys: [not-a-key]}}").unwrap();
    let said = pod_reloaded_tests::process::eventually(Duration::from_secs(30), || {
        webhook
            .process
            .output()
            .contains("the trust policy file is invalid; keeping the last good one")
    })
    .await;
    assert!(said, "{}", webhook.process.output());
    assert_eq!(
        policy_of(&admitted(None).await.unwrap()).unwrap().name,
        "release"
    );

    // A valid change is taken.
    let both = format!("{RELEASE_POLICY}  nightly:\n    keyless:\n      - issuer: https://accounts.google.com\n        subjectRegExp: .+@acme\\.com$\n");
    std::fs::write(&file, both).unwrap();
    let reloaded =
        pod_reloaded_tests::process::eventually_async(Duration::from_secs(30), || async {
            admitted(Some("nightly")).await.is_ok()
        })
        .await;
    assert!(reloaded, "{}", webhook.process.output());
    assert_eq!(
        webhook
            .process
            .output()
            .matches("the trust policy file is invalid")
            .count(),
        1,
        "said once: {}",
        webhook.process.output()
    );
}

#[test]
fn the_webhook_refuses_a_setting_the_api_server_would_reject_at_start() {
    for (flag, value, expected) in [
        ("--sidecar-cpu-limit", "banana", "not a Kubernetes quantity"),
        (
            "--sidecar-memory-request",
            "16MB",
            "not a Kubernetes quantity",
        ),
        (
            "--sidecar-cpu-request",
            "2",
            "more than --sidecar-cpu-limit",
        ),
        ("--default-interval", "1ms", "minimum"),
        ("--sidecar-mode", "sideways", "neither"),
        // A zero period cannot tick: the reload task would stop for good.
        ("--tls-reload-interval", "0s", "between 100ms and 1h"),
        // SIGTERM would wait for ever.
        ("--shutdown-delay", "9999999h", "between 0s and 2m"),
        // 0s admits every pod uninjected; past the API server's 5s it makes no sense.
        (
            "--api-timeout",
            "0s",
            "the API server gives the whole webhook call 5s",
        ),
        (
            "--api-timeout",
            "6s",
            "the API server gives the whole webhook call 5s",
        ),
        // The API server refuses a negative request, and failurePolicy: Ignore does not
        // cover that refusal: every opted-in pod would be refused.
        ("--sidecar-cpu-request=-5m", "", "is negative"),
        ("--sidecar-memory-limit", "0", "below 4Mi"),
        (
            "--sidecar-image",
            "Not A Valid/Image Ref",
            "not a valid image reference",
        ),
        ("--sidecar-ca-configmap", "Bad_Name!", "DNS-1123 subdomain"),
        ("--webhook-namespace", "", "DNS-1123 label"),
        ("--webhook-namespace", "Not_A_Namespace", "DNS-1123 label"),
        (
            "--sidecar-insecure-registries",
            "http://foo/bar baz",
            "registry host[:port]",
        ),
        // A default trust policy that no file has.
        (
            "--default-verify-policy",
            "release",
            "--default-verify-policy release: no such policy",
        ),
        // Settings the process cannot work with: one rule, exit 2.
        (
            "--tls-cert-file",
            "/nonexistent/tls.crt",
            "/nonexistent/tls.crt",
        ),
    ] {
        let mut command =
            std::process::Command::new(pod_reloaded_tests::process::binary("pod-reloaded-webhook"));
        command.env_clear().arg(flag);
        if !flag.contains('=') {
            command.arg(value);
        }
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{flag} {value}: {stderr}");
        assert!(stderr.contains(expected), "{flag} {value}: {stderr}");
    }
    // An invalid trust policy file stops the webhook at start, with the reason.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    std::fs::write(&file, "policies: {release: {keys: [not-a-key]}}").unwrap();
    let output =
        std::process::Command::new(pod_reloaded_tests::process::binary("pod-reloaded-webhook"))
            .env_clear()
            .arg("--trust-policy-file")
            .arg(&file)
            .output()
            .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("trust policy \"release\": keys[0]: not a PEM public key"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sigterm_it_turns_unready_serves_on_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let certs = generate_certificates(dir.path());
    let mut webhook = Webhook::start(&certs, None, &["--shutdown-delay", "6s"]).await;
    let client = webhook.client(&certs.ca);
    assert_eq!(webhook.get_metrics_port("/readyz").unwrap().0, 200);
    let signalled = std::time::Instant::now();
    webhook.process.signal("TERM");
    let unready = pod_reloaded_tests::process::eventually(Duration::from_secs(3), || {
        webhook
            .get_metrics_port("/readyz")
            .is_ok_and(|(s, _)| s == 503)
    })
    .await;
    assert!(unready, "not ready at once, so endpoints drop the pod");
    // Reviews sent while the endpoints catch up are still answered.
    let (status, _) = post(
        &webhook,
        &client,
        fixture("deployment-pod-dry-run.json").to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "still within the delay"
    );
    let status = webhook
        .process
        .wait_for_exit(Duration::from_secs(15))
        .expect("exits after the delay and the grace");
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(6),
        "served on for the delay"
    );
}
