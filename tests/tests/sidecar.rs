//! The real sidecar binary against a real registry and a real API server: what it
//! patches, when it does not, and what it does with bad answers.

use std::process::Command;
use std::time::Duration;

use pod_reloaded_contract as contract;
use pod_reloaded_tests::api_server::ApiServer;
use pod_reloaded_tests::fault_proxy::{Fault, FaultProxy};
use pod_reloaded_tests::process::{eventually, Running};
use pod_reloaded_tests::registry::{docker_config_json, Registry, RegistryOptions};
use pod_reloaded_tests::workloads::{
    controller, deployment, deployment_path, pod_path, running_pod, scale_deployment,
    sidecar_command, NAMESPACE,
};
use pod_reloaded_tests::world::World;
use serde_json::{json, Value};

const EARLY: &str = "2026-11-24T00:00:00Z";

async fn run_once(mut command: Command) -> (i32, String) {
    command.arg("--once");
    let mut running = Running::spawn(command);
    let status = tokio::task::block_in_place(|| running.wait_for_exit(Duration::from_secs(30)))
        .expect("--once finishes");
    (status.code().unwrap_or(-1), running.output())
}

/// Deployment `web` and its pod `web-1`, running the first push; returns the owner.
fn web_running_first_push(world: &World) -> Value {
    let owner = deployment(&world.api, "web", &world.image, json!({}));
    running_pod(
        &world.api,
        "web-1",
        Some(&owner),
        &world.image,
        &world.image_id(&world.first.digest),
        EARLY,
    );
    owner
}

fn template_annotations(api: &ApiServer, path: &str) -> Value {
    api.get(path).expect("workload")["spec"]["template"]["metadata"]["annotations"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_pod_is_never_patched_in_any_running_digest_form() {
    let s = World::empty().await;
    let owner = deployment(&s.api, "web", &s.image, json!({}));
    let forms = [
        s.image_id(&s.first.digest),
        format!(
            "docker-pullable://{}",
            s.image_id(&s.first.manifests[0].digest)
        ),
        s.first.manifests[0].config_digest.clone(),
    ];
    for (i, image_id) in forms.iter().enumerate() {
        let pod = format!("web-5d9c8b7f6-{i}");
        running_pod(&s.api, &pod, Some(&owner), &s.image, image_id, EARLY);
        let (code, output) = run_once(s.sidecar(&pod)).await;
        assert_eq!(code, 0, "{image_id}: {output}");
        assert!(output.contains("up-to-date"), "{output}");
    }
    assert!(s.writes().is_empty(), "{:?}", s.writes());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_tag_patches_the_deployment_once_with_both_annotations() {
    let s = World::empty().await;
    let owner = deployment(&s.api, "web", &s.image, json!({"keep": "me"}));
    running_pod(
        &s.api,
        "web-1",
        Some(&owner),
        &s.image,
        &s.image_id(&s.first.digest),
        EARLY,
    );
    let second = s.push("v2").await;
    let read_version =
        s.api.get(&deployment_path("web")).unwrap()["metadata"]["resourceVersion"].clone();

    let (code, output) = run_once(s.sidecar("web-1")).await;
    assert_eq!(code, 0, "{output}");

    let patches = s.api.requests_to("PATCH", &deployment_path("web"));
    assert_eq!(patches.len(), 1, "{output}");
    let patch = &patches[0];
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert_eq!(
        patch.body["metadata"]["resourceVersion"], read_version,
        "precondition"
    );
    let sent = &patch.body["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        sent[contract::ANNOTATION_RESTARTED_FOR],
        format!("web={}", second.digest)
    );
    let restarted_at = sent[contract::ANNOTATION_RESTARTED_AT].as_str().unwrap();
    assert!(
        restarted_at.len() == 20 && restarted_at.parse::<jiff::Timestamp>().is_ok(),
        "{restarted_at}"
    );
    let stored = template_annotations(&s.api, &deployment_path("web"));
    assert_eq!(
        stored["keep"], "me",
        "other annotations survive the merge patch"
    );
    assert_eq!(
        stored[contract::ANNOTATION_RESTARTED_FOR],
        format!("web={}", second.digest)
    );

    let events = s.all_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "Normal");
    assert_eq!(events[0]["reason"], "ImageDigestChanged");
    assert_eq!(events[0]["involvedObject"]["kind"], "Deployment");
    assert_eq!(events[0]["involvedObject"]["name"], "web");
    let deployment_uid = s.api.get(&deployment_path("web")).unwrap()["metadata"]["uid"].clone();
    assert_eq!(
        events[0]["involvedObject"]["uid"], deployment_uid,
        "kubectl describe finds Events by uid"
    );
    assert_eq!(
        s.writes(),
        vec![
            format!("PATCH {}", deployment_path("web")),
            format!("POST /api/v1/namespaces/{NAMESPACE}/events")
        ]
    );
}

/// RFC 3339 check without another dependency: `YYYY-MM-DDTHH:MM:SSZ`.

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_restart_is_not_repeated_and_warns_once() {
    let s = World::empty().await;
    let second = s.push("v2").await;
    let owner = deployment(
        &s.api,
        "web",
        &s.image,
        json!({
            contract::ANNOTATION_RESTARTED_FOR: format!("web={}", second.digest),
            contract::ANNOTATION_RESTARTED_AT: "2026-11-24T10:00:00Z"
        }),
    );
    // Created after the restart, still on the old digest: the pull did not take.
    running_pod(
        &s.api,
        "web-new",
        Some(&owner),
        &s.image,
        &s.image_id(&s.first.digest),
        "2026-11-24T10:00:30Z",
    );
    let mut sidecar = Running::spawn(s.sidecar("web-new"));
    let rounds = eventually(Duration::from_secs(15), || {
        s.api.requests_to("GET", &pod_path("web-new")).len() >= 3
    })
    .await;
    assert!(rounds, "{}", sidecar.output());
    assert!(s
        .api
        .requests_to("PATCH", &deployment_path("web"))
        .is_empty());
    let events = s.all_events();
    assert_eq!(
        events.len(),
        1,
        "warned once over several rounds: {events:?}"
    );
    assert_eq!(events[0]["type"], "Warning");
    sidecar.signal("TERM");
    assert!(sidecar.wait_for_exit(Duration::from_secs(2)).is_some());

    // An old pod waiting for the rollout another replica started: no patch, no warning.
    // The API server stamps a pod's creation with its own clock, so the restart is moved
    // to just after this pod's creation instead of the pod to before the restart.
    let old = running_pod(
        &s.api,
        "web-old",
        Some(&owner),
        &s.image,
        &s.image_id(&s.first.digest),
        EARLY,
    );
    let created: jiff::Timestamp = old["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut deployment = s.api.get(&deployment_path("web")).unwrap();
    deployment["spec"]["template"]["metadata"]["annotations"][contract::ANNOTATION_RESTARTED_AT] = json!(
        pod_reloaded_contract::record::timestamp_text(created + jiff::SignedDuration::from_secs(1))
    );
    s.api.put(deployment);
    let (code, output) = run_once(s.sidecar("web-old")).await;
    assert_eq!(code, 0, "{output}");
    assert_eq!(s.all_events().len(), 1);
    assert!(s
        .api
        .requests_to("PATCH", &deployment_path("web"))
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conflict_is_read_again_and_decided_again() {
    let s = World::empty().await;
    web_running_first_push(&s);
    let second = s.push("v2").await;
    s.api.interfere_with_next_patch(&deployment_path("web"));
    let (code, output) = run_once(s.sidecar("web-1")).await;
    assert_eq!(code, 0, "{output}");
    let patches = s.api.requests_to("PATCH", &deployment_path("web"));
    let statuses: Vec<u16> = patches.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [409, 200], "{output}");
    assert_ne!(
        patches[0].body["metadata"]["resourceVersion"],
        patches[1].body["metadata"]["resourceVersion"],
        "the second patch carries the re-read version"
    );
    assert_eq!(s.api.requests_to("GET", &deployment_path("web")).len(), 2);
    let stored = template_annotations(&s.api, &deployment_path("web"));
    assert_eq!(
        stored[contract::ANNOTATION_RESTARTED_FOR],
        format!("web={}", second.digest)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn statefulset_and_daemonset_owners_are_patched() {
    let s = World::empty().await;
    s.push("v2").await;
    for (kind, plural) in [("StatefulSet", "statefulsets"), ("DaemonSet", "daemonsets")] {
        let owner = controller(&s.api, kind, "db", &s.image);
        let pod = format!("db-{plural}");
        running_pod(
            &s.api,
            &pod,
            Some(&owner),
            &s.image,
            &s.image_id(&s.first.digest),
            EARLY,
        );
        let (code, output) = run_once(s.sidecar(&pod)).await;
        assert_eq!(code, 0, "{output}");
        let path = format!("/apis/apps/v1/namespaces/{NAMESPACE}/{plural}/db");
        assert_eq!(
            s.api.requests_to("PATCH", &path).len(),
            1,
            "{kind}: {output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_without_a_restartable_owner_are_never_patched() {
    let s = World::empty().await;
    s.push("v2").await;
    running_pod(
        &s.api,
        "bare",
        None,
        &s.image,
        &s.image_id(&s.first.digest),
        EARLY,
    );
    let job = s.api.put(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "nightly", "namespace": NAMESPACE},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "web", "image": s.image}]}}}}));
    running_pod(
        &s.api,
        "job-pod",
        Some(&job),
        &s.image,
        &s.image_id(&s.first.digest),
        EARLY,
    );
    for pod in ["bare", "job-pod"] {
        let (code, output) = run_once(s.sidecar(pod)).await;
        assert_eq!(
            code, 1,
            "a change that cannot be acted on is reported: {output}"
        );
        assert!(output.contains("nothing can be restarted"), "{output}");
    }
    assert!(s.writes().is_empty(), "{:?}", s.writes());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_registry_answers_never_restart() {
    let s = World::empty().await;
    s.push("v2").await; // a real change is there to be (wrongly) acted on
    let owner = web_running_first_push(&s);
    let proxy = FaultProxy::start(&s.registry.base_url, None).await;
    let faults = [
        Fault::Status(500),
        Fault::Status(503),
        Fault::TooManyRequests {
            retry_after_seconds: 30,
        },
        Fault::Hang,
        Fault::DigestHeader("sha256:tooshort".into()),
        Fault::DigestHeader(format!("sha256:{}", "Z".repeat(64))),
    ];
    for fault in faults {
        proxy.set_fault(fault.clone());
        let mut command = sidecar_command(&s.api, "web-1", "web", "1s", Some(&proxy.base_url()));
        command.env("IMAGE_CHECKER_REGISTRY_TIMEOUT", "1s");
        let (code, output) = run_once(command).await;
        assert_eq!(code, 1, "{fault:?}: {output}");
        assert!(
            output.contains("decision=\"error\"") || output.contains("decision=error"),
            "{fault:?}: {output}"
        );
    }
    proxy.set_fault(Fault::None);

    // A tag that does not exist.
    let missing = format!("{}/demo/app:missing", s.registry.host());
    running_pod(
        &s.api,
        "web-2",
        Some(&owner),
        &missing,
        &s.image_id(&s.first.digest),
        EARLY,
    );
    let (code, output) = run_once(s.sidecar("web-2")).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("not found"), "{output}");

    // Credentials the registry rejects.
    let private = Registry::start(RegistryOptions {
        basic_auth: Some(("puller".into(), "right".into())),
        tls: false,
    })
    .await;
    let pushed = private
        .push_single("demo/app", Some("latest"), "p1", ("linux", "amd64"), false)
        .await;
    let secrets = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(secrets.path().join("regcred")).unwrap();
    std::fs::write(
        secrets.path().join("regcred/.dockerconfigjson"),
        docker_config_json(&private.host(), "puller", "wrong").to_string(),
    )
    .unwrap();
    let private_image = format!("{}/demo/app:latest", private.host());
    let old = format!("sha256:{}", "0".repeat(64));
    running_pod(
        &s.api,
        "web-3",
        Some(&owner),
        &private_image,
        &format!("{}/demo/app@{old}", private.host()),
        EARLY,
    );
    let mut command = sidecar_command(&s.api, "web-3", "web", "1s", Some(&private.base_url));
    command.env(contract::ENV_PULL_SECRETS_DIR, secrets.path());
    let (code, output) = run_once(command).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("unauthorized"), "{output}");

    // The same with the right password is a real change.
    std::fs::write(
        secrets.path().join("regcred/.dockerconfigjson"),
        docker_config_json(&private.host(), "puller", "right").to_string(),
    )
    .unwrap();
    assert!(s.writes().is_empty(), "{:?}", s.writes());
    let mut command = sidecar_command(&s.api, "web-3", "web", "1s", Some(&private.base_url));
    command.env(contract::ENV_PULL_SECRETS_DIR, secrets.path());
    let (code, output) = run_once(command).await;
    assert_eq!(code, 0, "{output}");
    let stored = template_annotations(&s.api, &deployment_path("web"));
    assert_eq!(
        stored[contract::ANNOTATION_RESTARTED_FOR],
        format!("web={}", pushed.digest)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_loop_survives_errors_and_honours_retry_after() {
    let s = World::empty().await;
    web_running_first_push(&s);
    let second = s.push("v2").await;
    let proxy = FaultProxy::start(&s.registry.base_url, None).await;
    proxy.set_fault(Fault::TooManyRequests {
        retry_after_seconds: 3,
    });
    let sidecar = Running::spawn(sidecar_command(
        &s.api,
        "web-1",
        "web",
        "1s",
        Some(&proxy.base_url()),
    ));

    let two = eventually(Duration::from_secs(15), || {
        proxy.count("HEAD", "/manifests/") >= 2
    })
    .await;
    assert!(two, "{}", sidecar.output());
    let heads: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "HEAD")
        .collect();
    let gap = heads[1].at - heads[0].at;
    assert!(
        gap >= Duration::from_millis(2900),
        "Retry-After 3 ignored: retried after {gap:?}"
    );
    assert!(s.writes().is_empty());

    proxy.set_fault(Fault::Status(500));
    let more = eventually(Duration::from_secs(15), || {
        proxy.count("HEAD", "/manifests/") >= 3
    })
    .await;
    assert!(more, "the loop stopped after errors: {}", sidecar.output());
    assert!(s.writes().is_empty());

    proxy.set_fault(Fault::None);
    let patched = eventually(Duration::from_secs(20), || {
        !s.api
            .requests_to("PATCH", &deployment_path("web"))
            .is_empty()
    })
    .await;
    assert!(patched, "{}", sidecar.output());
    let stored = template_annotations(&s.api, &deployment_path("web"));
    assert_eq!(
        stored[contract::ANNOTATION_RESTARTED_FOR],
        format!("web={}", second.digest)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_seeing_the_same_change_patch_exactly_once() {
    let s = World::empty().await;
    let owner = deployment(&s.api, "web", &s.image, json!({}));
    for i in 0..3 {
        running_pod(
            &s.api,
            &format!("web-{i}"),
            Some(&owner),
            &s.image,
            &s.image_id(&s.first.digest),
            EARLY,
        );
    }
    s.push("v2").await;
    let mut sidecars: Vec<Running> = (0..3)
        .map(|i| {
            let mut command = s.sidecar(&format!("web-{i}"));
            command.arg("--once");
            Running::spawn(command)
        })
        .collect();
    for sidecar in &mut sidecars {
        let status = tokio::task::block_in_place(|| sidecar.wait_for_exit(Duration::from_secs(30)))
            .expect("exits");
        assert!(status.success(), "{}", sidecar.output());
    }
    let patches = s.api.requests_to("PATCH", &deployment_path("web"));
    assert_eq!(
        patches.iter().filter(|p| p.status == 200).count(),
        1,
        "{patches:?}"
    );
    let normal = s
        .all_events()
        .into_iter()
        .filter(|e| e["type"] == "Normal")
        .count();
    assert_eq!(normal, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_round_costs_one_head_and_no_api_request() {
    let s = World::empty().await;
    let owner = deployment(&s.api, "web", &s.image, json!({}));
    // Running an index child: the first round reads the index once, later rounds do not.
    running_pod(
        &s.api,
        "web-1",
        Some(&owner),
        &s.image,
        &s.image_id(&s.first.manifests[0].digest),
        EARLY,
    );
    let proxy = FaultProxy::start(&s.registry.base_url, None).await;
    let mut command = sidecar_command(&s.api, "web-1", "web", "1s", Some(&proxy.base_url()));
    command.arg("--metrics-listen").arg(format!(
        "127.0.0.1:{}",
        pod_reloaded_tests::process::free_port()
    ));
    let sidecar = Running::spawn(command);
    let checked = || sidecar.output().matches(": checked ").count();
    let rounds = eventually(Duration::from_secs(20), || checked() >= 4).await;
    assert!(rounds, "{}", sidecar.output());
    let rounds = checked();
    let heads = proxy.count("HEAD", "/manifests/");
    drop(sidecar);
    assert!(
        heads == rounds || heads == rounds + 1,
        "{heads} HEADs for {rounds} rounds"
    );
    assert_eq!(
        proxy.count("GET", "/manifests/"),
        1,
        "index read once, then remembered"
    );
    let reads: Vec<String> = s
        .api
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        reads,
        vec![
            format!("GET {}", pod_path("web-1")),
            format!("GET /apis/apps/v1/namespaces/{NAMESPACE}/replicasets/web-5d9c8b7f6"),
            format!("GET {}", deployment_path("web")),
        ],
        "the pod, its owner and the workload (its replica count) read once at start, nothing after"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_and_sigint_stop_it_within_a_second() {
    let s = World::empty().await;
    web_running_first_push(&s);
    for signal in ["TERM", "INT"] {
        s.api.clear_requests();
        let mut sidecar = Running::spawn(sidecar_command(
            &s.api,
            "web-1",
            "web",
            "60s",
            Some(&s.registry.base_url),
        ));
        let started = eventually(Duration::from_secs(10), || {
            !s.api.requests_to("GET", &pod_path("web-1")).is_empty()
        })
        .await;
        assert!(started, "{}", sidecar.output());
        tokio::time::sleep(Duration::from_millis(300)).await;
        sidecar.signal(signal);
        let status = sidecar.wait_for_exit(Duration::from_secs(1));
        assert!(
            status.is_some_and(|s| s.success()),
            "SIG{signal}: {status:?}\n{}",
            sidecar.output()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_invalid_setting_stops_it_with_one_line() {
    let api = ApiServer::start().await.unwrap();
    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), "this is not a certificate").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_address = taken.local_addr().unwrap().to_string();
    let not_pem_path = not_pem.path().display().to_string();
    let ca_dir = tempfile::tempdir().unwrap();
    std::fs::write(ca_dir.path().join("ca.crt"), "not a certificate either").unwrap();
    let ca_dir_path = ca_dir.path().display().to_string();
    let cases: Vec<(&str, Option<&str>, &str)> = vec![
        // Neither POD_NAME nor HOSTNAME (the command's env is cleared): nothing names the pod.
        (contract::ENV_POD_NAME, None, "set POD_NAME"),
        (contract::ENV_POD_NAME, Some(" "), "set POD_NAME"),
        (contract::ENV_INTERVAL, Some("100ms"), "minimum"),
        (contract::ENV_INTERVAL, Some("often"), "not a duration"),
        (contract::ENV_INTERVAL, Some("48h"), "maximum"),
        (
            contract::ENV_REGISTRY_URL,
            Some("registry.local"),
            "http://",
        ),
        (
            "IMAGE_CHECKER_REGISTRY_CA_FILE",
            Some("/nonexistent/ca.pem"),
            "--registry-ca-file",
        ),
        (
            "IMAGE_CHECKER_REGISTRY_CA_FILE",
            Some(&not_pem_path),
            "no PEM certificate",
        ),
        (
            contract::ENV_REGISTRY_CA_DIR,
            Some(&ca_dir_path),
            "no PEM certificate",
        ),
        (
            "IMAGE_CHECKER_REGISTRY_TIMEOUT",
            Some("0s"),
            "between 100ms and 10m",
        ),
        (
            "IMAGE_CHECKER_API_TIMEOUT",
            Some("2h"),
            "between 100ms and 10m",
        ),
        (
            "IMAGE_CHECKER_METRICS_LISTEN",
            Some(&taken_address),
            "--metrics-listen",
        ),
        (
            contract::ENV_INSECURE_REGISTRIES,
            Some("http://foo/bar baz"),
            "registry host[:port]",
        ),
        (
            contract::ENV_REGISTRY_CA_DIR,
            Some(&not_pem_path),
            "is a file, not a directory",
        ),
    ];
    for (name, value, expected) in cases {
        let mut command = sidecar_command(&api, "web-1", "web", "1s", None);
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{name}={value:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{name}={value:?}: {stderr}");
    }
    assert!(api.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_it_while_the_api_server_does_not_answer() {
    let s = World::empty().await;
    // An "API server" that accepts connections and never answers: the first read of the
    // pod hangs, as it can while a cluster's API is overloaded.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        kubeconfig.path(),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
            silent.local_addr().unwrap()
        ),
    )
    .unwrap();
    let mut command = s.sidecar("web-1");
    command.env("KUBECONFIG", kubeconfig.path());
    let mut sidecar = Running::spawn(command);
    let connected = tokio::task::block_in_place(|| {
        silent.set_nonblocking(false).unwrap();
        silent.accept().is_ok()
    });
    assert!(connected, "{}", sidecar.output());
    sidecar.signal("TERM");
    let status = sidecar.wait_for_exit(Duration::from_secs(2));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        sidecar.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_that_has_not_started_is_waited_for_not_an_error() {
    let s = World::empty().await;
    let owner = deployment(&s.api, "web", &s.image, json!({}));
    // A native sidecar starts before the app: the app has no imageID yet.
    running_pod(&s.api, "web-1", Some(&owner), &s.image, "", EARLY);
    let (code, output) = run_once(s.sidecar("web-1")).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("has not started yet"), "{output}");
    assert!(!output.contains("decision=\"error\""), "{output}");
    assert!(s.writes().is_empty());

    // Once it runs, the next round checks it (the pod is read again while waiting).
    let mut command = s.sidecar("web-1");
    command.arg("--metrics-listen").arg(format!(
        "127.0.0.1:{}",
        pod_reloaded_tests::process::free_port()
    ));
    s.api.clear_requests();
    let sidecar = Running::spawn(command);
    let waited = eventually(Duration::from_secs(10), || {
        sidecar.output().contains("has not started yet")
    })
    .await;
    assert!(waited, "{}", sidecar.output());
    let mut pod = s.api.get(&pod_path("web-1")).unwrap();
    pod["status"]["containerStatuses"][0]["imageID"] = json!(s.image_id(&s.first.digest));
    s.api.put(pod);
    let checked = eventually(Duration::from_secs(10), || {
        sidecar.output().contains("decision=\"up-to-date\"")
    })
    .await;
    assert!(checked, "{}", sidecar.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_argo_rollout_is_restarted_through_its_template() {
    let s = World::empty().await;
    let rollout = s.api.put(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "web", "namespace": NAMESPACE},
        "spec": {"replicas": 1, "strategy": {"canary": {"steps": [{"setWeight": 50}]}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": s.image}]}}}
    }));
    let replica_set = s.api.put(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-7f8c", "namespace": NAMESPACE, "ownerReferences": [{
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "web",
            "uid": rollout["metadata"]["uid"], "controller": true}]},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": s.image}]}}}
    }));
    running_pod(
        &s.api,
        "web-1",
        Some(&replica_set),
        &s.image,
        &s.image_id(&s.first.digest),
        EARLY,
    );
    let second = s.push("v2").await;
    let (code, output) = run_once(s.sidecar("web-1")).await;
    assert_eq!(code, 0, "{output}");
    let path = format!("/apis/argoproj.io/v1alpha1/namespaces/{NAMESPACE}/rollouts/web");
    let patches = s.api.requests_to("PATCH", &path);
    assert_eq!(patches.len(), 1, "{output}");
    assert_eq!(
        template_annotations(&s.api, &path)[contract::ANNOTATION_RESTARTED_FOR],
        format!("web={}", second.digest)
    );
    let events = s.all_events();
    assert_eq!(events[0]["involvedObject"]["kind"], "Rollout");
    assert_eq!(
        events[0]["involvedObject"]["apiVersion"],
        "argoproj.io/v1alpha1"
    );
}

/// Two workloads of four replicas, one pod of each running its sidecar at interval 1s:
/// the one whose replicas share the checks (the default) asks the registry about a
/// quarter as often as the one polling from every replica, and says why.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_share_their_workloads_checks_unless_told_to_poll_each() {
    let s = World::empty().await;
    let mut sidecars = Vec::new();
    let mut proxies = Vec::new();
    for (name, poll) in [("shared", None), ("each", Some("replica"))] {
        let owner = deployment(&s.api, name, &s.image, json!({}));
        scale_deployment(&s.api, name, 4);
        let pod = format!("{name}-1");
        running_pod(
            &s.api,
            &pod,
            Some(&owner),
            &s.image,
            &s.image_id(&s.first.digest),
            EARLY,
        );
        let proxy = FaultProxy::start(&s.registry.base_url, None).await;
        let mut command = sidecar_command(&s.api, &pod, "web", "1s", Some(&proxy.base_url()));
        if let Some(poll) = poll {
            command.env(contract::ENV_POLL, poll);
        }
        sidecars.push(Running::spawn(command));
        proxies.push(proxy);
    }
    let shared_log = || sidecars[0].output();
    assert!(
        eventually(Duration::from_secs(30), || shared_log()
            .contains("the replicas share the workload's checks"))
        .await,
        "{}",
        shared_log()
    );
    assert!(shared_log().contains("replicas=4"), "{}", shared_log());
    // A window of many intervals, as long as the replica polling each interval takes to
    // ask 16 times.
    let heads = |proxy: &FaultProxy| proxy.count("HEAD", "/manifests/");
    let (shared_before, each_before) = (heads(&proxies[0]), heads(&proxies[1]));
    assert!(
        eventually(Duration::from_secs(120), || heads(&proxies[1])
            - each_before
            >= 16)
        .await,
        "the replica polling each interval stopped asking"
    );
    let shared = heads(&proxies[0]) - shared_before;
    let each = heads(&proxies[1]) - each_before;
    assert!(
        shared * 2 <= each,
        "sharing the checks: {shared} HEADs, polling each interval: {each}\n{}",
        shared_log()
    );
    assert!(!sidecars[1]
        .output()
        .contains("the replicas share the workload's checks"));

    // Scaled down: the next safety-net re-read (10 of its rounds) follows it.
    scale_deployment(&s.api, "shared", 1);
    assert!(
        eventually(Duration::from_secs(120), || shared_log()
            .contains("replicas=1"))
        .await,
        "{}",
        shared_log()
    );
}
