//! Patch-builder tests: every patch is applied with `json-patch` to the pod JSON and the
//! assertions are on the resulting pod, never on the patch text.

use super::templates::OWN_API_ACCESS_VOLUME;
use super::*;
use crate::inject::PodView as Pod;
use pod_reloaded_contract as contract;
use serde_json::{json, Value};

fn settings(mode: SidecarMode) -> InjectionSettings {
    InjectionSettings::example(mode)
}

/// A pod as the ReplicaSet controller makes it, after the ServiceAccount plugin ran.
fn deployment_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7c9d8b6f5d-",
            "namespace": "shop",
            "creationTimestamp": null,
            "labels": {"app": "web"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7c9d8b6f5d",
                "uid": "u1", "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "volumes": [{"name": "kube-api-access-x2kqz", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}],
            "containers": [{
                "name": "web",
                "image": "nginx:latest",
                "imagePullPolicy": "Always",
                "volumeMounts": [{"name": "kube-api-access-x2kqz", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]
            }]
        }
    })
}

/// The injection's patch as `json_patch` operations, to apply.
fn operations(injection: &Injection) -> json_patch::Patch {
    injection
        .patch
        .operations()
        .expect("the patch is a JSON Patch")
}

/// Runs the decision; for an injection, applies its patch and returns the patched pod.
fn inject(pod: &Value, mode: SidecarMode) -> (Injection, Value) {
    let typed: Pod = serde_json::from_value(pod.clone()).expect("test pod is a Pod");
    match decide(&typed, "shop", &settings(mode)) {
        Decision::Inject(injection) => {
            let mut patched = pod.clone();
            json_patch::patch(&mut patched, &operations(&injection))
                .expect("patch applies to the original pod");
            (injection, patched)
        }
        Decision::Skip(reason) => panic!("expected an injection, got skip: {reason}"),
    }
}

fn skip_reason(pod: &Value, namespace: &str) -> SkipReason {
    let typed: Pod = serde_json::from_value(pod.clone()).expect("test pod is a Pod");
    match decide(&typed, namespace, &settings(SidecarMode::Container)) {
        Decision::Skip(reason) => reason,
        Decision::Inject(injection) => panic!(
            "expected a skip, got an injection watching {:?}",
            injection.watched_containers
        ),
    }
}

fn sidecar(pod: &Value) -> &Value {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .find(|c| c["name"] == contract::SIDECAR_CONTAINER_NAME)
        .expect("pod has the sidecar")
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    env(container, name)?["value"].as_str()
}

fn set_annotations(pod: &mut Value, annotations: Value) {
    pod["metadata"]["annotations"] = annotations;
}

fn set(pod: &mut Value, pointer: &str, value: Value) {
    *pod.pointer_mut(pointer)
        .expect("pointer exists in test pod") = value;
}

#[test]
fn default_account_pod_gets_sidecar_env_account_and_annotation() {
    let pod = deployment_pod();
    let (injection, patched) = inject(&pod, SidecarMode::Container);

    let containers = patched["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(
        containers[0], pod["spec"]["containers"][0],
        "the app container is untouched"
    );
    let sidecar = sidecar(&patched);
    assert_eq!(sidecar["image"], "example/checker:1");
    assert_eq!(
        env_value(sidecar, contract::ENV_WATCH_CONTAINER),
        Some("web")
    );
    assert_eq!(env_value(sidecar, contract::ENV_INTERVAL), Some("60s"));
    assert!(env(sidecar, contract::ENV_REGISTRY_URL).is_none());
    assert!(env(sidecar, contract::ENV_PULL_SECRETS_DIR).is_none());
    assert_eq!(
        env(sidecar, contract::ENV_POD_NAME).unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env(sidecar, contract::ENV_POD_NAMESPACE).unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let security = &sidecar["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sidecar["resources"]["limits"]["memory"], "32Mi");
    assert_eq!(
        sidecar["volumeMounts"],
        json!([{"name": "kube-api-access-x2kqz", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}])
    );

    assert_eq!(
        patched["spec"]["serviceAccountName"],
        contract::CHECKER_SERVICE_ACCOUNT
    );
    assert_eq!(
        patched["spec"]["serviceAccount"],
        contract::CHECKER_SERVICE_ACCOUNT
    );
    assert_eq!(injection.service_account, contract::CHECKER_SERVICE_ACCOUNT);
    assert!(injection.uses_checker_account);
    assert_eq!(
        patched["metadata"]["annotations"][contract::ANNOTATION_INJECTED],
        "9.9.9"
    );
    assert_eq!(
        patched["metadata"]["creationTimestamp"],
        Value::Null,
        "untouched fields survive"
    );
    assert!(injection.warnings.is_empty(), "{:?}", injection.warnings);
}

#[test]
fn patched_pod_is_not_injected_again() {
    for mode in [SidecarMode::Container, SidecarMode::Native] {
        let (_, patched) = inject(&deployment_pod(), mode);
        assert_eq!(skip_reason(&patched, "shop"), SkipReason::AlreadyInjected);
    }
}

#[test]
fn a_sidecar_without_the_annotation_still_counts_as_injected() {
    let mut pod = deployment_pod();
    pod["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": contract::SIDECAR_CONTAINER_NAME, "image": "x:1"}));
    assert_eq!(skip_reason(&pod, "shop"), SkipReason::AlreadyInjected);
}

#[test]
fn annotation_keys_with_slash_and_tilde_are_preserved() {
    let mut pod = deployment_pod();
    set_annotations(
        &mut pod,
        json!({"a/b": "1", "c~d": "2", "e~1f/~0": "3", "prometheus.io/scrape": "true"}),
    );
    let (_, patched) = inject(&pod, SidecarMode::Container);
    let annotations = patched["metadata"]["annotations"].as_object().unwrap();
    assert_eq!(annotations["a/b"], "1");
    assert_eq!(annotations["c~d"], "2");
    assert_eq!(annotations["e~1f/~0"], "3");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations[contract::ANNOTATION_INJECTED], "9.9.9");
    assert_eq!(annotations.len(), 5);
}

#[test]
fn pod_without_annotations_map_gets_one() {
    let pod = deployment_pod();
    assert!(pod["metadata"].get("annotations").is_none());
    let (_, patched) = inject(&pod, SidecarMode::Container);
    assert_eq!(
        patched["metadata"]["annotations"],
        json!({contract::ANNOTATION_INJECTED: "9.9.9"})
    );
}

#[test]
fn only_tagged_containers_are_watched_by_default() {
    let mut pod = deployment_pod();
    let containers = pod["spec"]["containers"].as_array_mut().unwrap();
    containers.push(json!({"name": "pinned", "image": format!("prom/x@sha256:{}", "a".repeat(64)), "imagePullPolicy": "IfNotPresent"}));
    containers
        .push(json!({"name": "both", "image": format!("prom/y:1@sha256:{}", "b".repeat(64))}));
    containers
        .push(json!({"name": "cache", "image": "redis:7", "imagePullPolicy": "IfNotPresent"}));
    let (injection, patched) = inject(&pod, SidecarMode::Container);
    assert_eq!(injection.watched_containers, vec!["web", "cache"]);
    assert_eq!(
        env_value(sidecar(&patched), contract::ENV_WATCH_CONTAINER),
        Some("web,cache")
    );
    let by_name = |name: &str| {
        patched["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("cache")["imagePullPolicy"], "Always");
    assert_eq!(
        by_name("pinned")["imagePullPolicy"],
        "IfNotPresent",
        "unwatched containers keep their policy"
    );
    assert_eq!(
        injection.warnings.len(),
        1,
        "one warning for the one policy changed: {:?}",
        injection.warnings
    );
    assert!(injection.warnings[0].contains("cache"));
}

#[test]
fn all_pinned_is_nothing_to_watch() {
    let mut pod = deployment_pod();
    set(
        &mut pod,
        "/spec/containers/0/image",
        json!(format!("nginx@sha256:{}", "c".repeat(64))),
    );
    assert_eq!(skip_reason(&pod, "shop"), SkipReason::NothingToWatch);
}

#[test]
fn watch_annotation_selects_containers_and_rejects_unknown_names() {
    let mut pod = deployment_pod();
    pod["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "worker", "image": "example/worker:main"}));
    set_annotations(
        &mut pod,
        json!({contract::ANNOTATION_WATCH_CONTAINERS: " worker , worker"}),
    );
    let (injection, patched) = inject(&pod, SidecarMode::Container);
    assert_eq!(injection.watched_containers, vec!["worker"]);
    assert_eq!(
        patched["spec"]["containers"][0]["imagePullPolicy"],
        "Always"
    );
    assert_eq!(
        patched["spec"]["containers"][1]["imagePullPolicy"],
        "Always"
    );

    set_annotations(
        &mut pod,
        json!({contract::ANNOTATION_WATCH_CONTAINERS: "worker,ghost"}),
    );
    match skip_reason(&pod, "shop") {
        SkipReason::InvalidAnnotation {
            annotation,
            problem,
        } => {
            assert_eq!(annotation, contract::ANNOTATION_WATCH_CONTAINERS);
            assert!(problem.contains("ghost"), "{problem}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn interval_registry_and_pull_policy_annotations() {
    let mut pod = deployment_pod();
    set(
        &mut pod,
        "/spec/containers/0/imagePullPolicy",
        json!("IfNotPresent"),
    );
    set_annotations(
        &mut pod,
        json!({
            contract::ANNOTATION_INTERVAL: "5m",
            contract::ANNOTATION_REGISTRY_URL: "http://mirror.local:5000",
            contract::ANNOTATION_PULL_POLICY: "keep"
        }),
    );
    let (injection, patched) = inject(&pod, SidecarMode::Container);
    let sidecar = sidecar(&patched);
    assert_eq!(env_value(sidecar, contract::ENV_INTERVAL), Some("5m"));
    assert_eq!(
        env_value(sidecar, contract::ENV_REGISTRY_URL),
        Some("http://mirror.local:5000")
    );
    assert_eq!(
        patched["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    assert!(injection.warnings.is_empty());

    for (key, bad) in [
        (contract::ANNOTATION_INTERVAL, "soon"),
        (contract::ANNOTATION_INTERVAL, "100ms"),
        (contract::ANNOTATION_REGISTRY_URL, "mirror.local:5000"),
        (contract::ANNOTATION_PULL_POLICY, "always"),
    ] {
        set_annotations(&mut pod, json!({ key: bad }));
        match skip_reason(&pod, "shop") {
            SkipReason::InvalidAnnotation { annotation, .. } => assert_eq!(annotation, key),
            other => panic!("{key}={bad}: unexpected {other:?}"),
        }
    }
}

#[test]
fn pull_policy_set_changes_unset_policy_with_warning() {
    let mut pod = deployment_pod();
    pod["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("imagePullPolicy");
    let (injection, patched) = inject(&pod, SidecarMode::Container);
    assert_eq!(
        patched["spec"]["containers"][0]["imagePullPolicy"],
        "Always"
    );
    assert_eq!(injection.warnings.len(), 1);
}

#[test]
fn pull_secrets_are_mounted_into_the_sidecar_only() {
    let mut pod = deployment_pod();
    set(&mut pod, "/spec/serviceAccountName", json!("api"));
    pod["spec"]
        .as_object_mut()
        .unwrap()
        .remove("serviceAccount");
    pod["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}, {"name": "other.cred"}]);
    let (injection, patched) = inject(&pod, SidecarMode::Container);

    assert_eq!(injection.service_account, "api");
    assert!(!injection.uses_checker_account);
    assert_eq!(
        patched["spec"]["serviceAccountName"], "api",
        "a custom account is kept"
    );
    assert!(patched["spec"].get("serviceAccount").is_none());

    let volumes = patched["spec"]["volumes"].as_array().unwrap();
    let secret_volumes: Vec<&Value> = volumes
        .iter()
        .filter(|v| v.get("secret").is_some())
        .collect();
    assert_eq!(secret_volumes.len(), 2);
    assert_eq!(
        secret_volumes[0]["secret"],
        json!({"secretName": "regcred", "optional": true})
    );
    assert_eq!(secret_volumes[1]["secret"]["secretName"], "other.cred");

    let sidecar = sidecar(&patched);
    let mounts = sidecar["volumeMounts"].as_array().unwrap();
    let secret_mounts: Vec<(&str, &str)> = mounts
        .iter()
        .filter(|m| {
            m["mountPath"]
                .as_str()
                .unwrap()
                .starts_with(contract::PULL_SECRETS_MOUNT_DIR)
        })
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        secret_mounts,
        vec![
            (
                secret_volumes[0]["name"].as_str().unwrap(),
                "/var/run/secrets/pod-reloaded/pull-secrets/regcred"
            ),
            (
                secret_volumes[1]["name"].as_str().unwrap(),
                "/var/run/secrets/pod-reloaded/pull-secrets/other.cred"
            ),
        ]
    );
    assert!(mounts.iter().all(|m| m["readOnly"] == true));
    assert_eq!(
        env_value(sidecar, contract::ENV_PULL_SECRETS_DIR),
        Some(contract::PULL_SECRETS_MOUNT_DIR)
    );
    assert_eq!(
        patched["spec"]["containers"][0]["volumeMounts"],
        pod["spec"]["containers"][0]["volumeMounts"],
        "the app container does not see the secrets"
    );
}

#[test]
fn native_mode_puts_the_sidecar_first_among_init_containers() {
    let mut pod = deployment_pod();
    pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "example/migrate:1"}]);
    let (_, patched) = inject(&pod, SidecarMode::Native);
    let init = patched["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 2);
    assert_eq!(init[0]["name"], contract::SIDECAR_CONTAINER_NAME);
    assert_eq!(init[0]["restartPolicy"], "Always");
    assert_eq!(init[1]["name"], "migrate");
    assert_eq!(patched["spec"]["containers"].as_array().unwrap().len(), 1);
}

#[test]
fn native_mode_without_init_containers_creates_the_list() {
    let (_, patched) = inject(&deployment_pod(), SidecarMode::Native);
    let init = patched["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 1);
    assert_eq!(init[0]["name"], contract::SIDECAR_CONTAINER_NAME);
    assert_eq!(init[0]["restartPolicy"], "Always");
}

#[test]
fn account_set_only_by_the_deprecated_alias_is_switched_in_both_fields() {
    let mut pod = deployment_pod();
    pod["spec"]
        .as_object_mut()
        .unwrap()
        .remove("serviceAccountName");
    let (injection, patched) = inject(&pod, SidecarMode::Container);
    assert!(injection.uses_checker_account);
    for field in ["serviceAccountName", "serviceAccount"] {
        assert_eq!(
            patched["spec"][field],
            contract::CHECKER_SERVICE_ACCOUNT,
            "{field}"
        );
    }

    let mut custom = deployment_pod();
    custom["spec"]
        .as_object_mut()
        .unwrap()
        .remove("serviceAccountName");
    custom["spec"]["serviceAccount"] = json!("builder");
    let (injection, patched) = inject(&custom, SidecarMode::Container);
    assert!(!injection.uses_checker_account);
    assert_eq!(injection.service_account, "builder");
    assert_eq!(patched["spec"]["serviceAccount"], "builder");
    assert!(patched["spec"].get("serviceAccountName").is_none());
}

#[test]
fn pod_without_api_token_volume_gets_its_own_for_the_sidecar() {
    let mut pod = deployment_pod();
    pod["spec"].as_object_mut().unwrap().remove("volumes");
    pod["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("volumeMounts");
    pod["spec"]["automountServiceAccountToken"] = json!(false);
    let (_, patched) = inject(&pod, SidecarMode::Container);
    let volumes = patched["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0]["name"], OWN_API_ACCESS_VOLUME);
    assert_eq!(
        volumes[0]["projected"]["sources"][0]["serviceAccountToken"]["path"],
        "token"
    );
    assert_eq!(
        sidecar(&patched)["volumeMounts"][0]["name"],
        OWN_API_ACCESS_VOLUME
    );
    assert!(patched["spec"]["containers"][0]
        .get("volumeMounts")
        .is_none());
}

#[test]
fn pods_that_are_not_injected_say_why() {
    let pod = deployment_pod();
    assert_eq!(
        skip_reason(&pod, "kube-system"),
        SkipReason::ExcludedNamespace("kube-system".into())
    );
    assert_eq!(
        skip_reason(&pod, "pod-reloaded"),
        SkipReason::ExcludedNamespace("pod-reloaded".into())
    );

    let mut opted_out = pod.clone();
    opted_out["metadata"]["labels"][contract::INJECT_LABEL] = json!("disabled");
    assert_eq!(skip_reason(&opted_out, "shop"), SkipReason::OptedOut);

    let mut bare = pod.clone();
    bare["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    assert_eq!(skip_reason(&bare, "shop"), SkipReason::NoOwner);

    let mut job = pod.clone();
    job["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "n", "uid": "u", "controller": true}]);
    assert_eq!(
        skip_reason(&job, "shop"),
        SkipReason::UnrestartableOwner("Job".into())
    );

    let mut windows = pod.clone();
    windows["spec"]["os"] = json!({"name": "windows"});
    assert_eq!(skip_reason(&windows, "shop"), SkipReason::WindowsPod);
    let mut linux = pod.clone();
    linux["spec"]["os"] = json!({"name": "linux"});
    inject(&linux, SidecarMode::Container);

    for kind in ["StatefulSet", "DaemonSet"] {
        let mut owned = pod.clone();
        owned["metadata"]["ownerReferences"][0]["kind"] = json!(kind);
        inject(&owned, SidecarMode::Container);
    }
}

#[test]
fn fixtures_decide_as_their_readme_says() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/admission");
    let expectations = [
        ("deployment-pod-default-sa.json", true),
        ("deployment-pod-custom-sa-pull-secret.json", true),
        ("statefulset-pod.json", true),
        ("daemonset-pod.json", true),
        ("bare-pod.json", false),
        ("job-pod.json", false),
        ("kube-system-pod.json", false),
    ];
    for (file, injected) in expectations {
        let review: Value =
            serde_json::from_slice(&std::fs::read(dir.join(file)).expect("fixture")).expect("json");
        let request = &review["request"];
        let pod: Pod = serde_json::from_value(request["object"].clone()).expect("fixture pod");
        let namespace = request["namespace"].as_str().unwrap();
        let decision = decide(&pod, namespace, &settings(SidecarMode::Container));
        assert_eq!(
            matches!(decision, Decision::Inject(_)),
            injected,
            "{file}: {decision:?}"
        );
    }
}

use pod_reloaded_test_support::digest;

/// A pod of a template a restart annotated, with containers `web`, `api` (both tags) and
/// `db` (pinned by the user), and an init container `migrate` (a tag).
fn restarted_pod(restarted_for: &str) -> Value {
    let mut pod = deployment_pod();
    pod["spec"]["containers"] = json!([
        {"name": "web", "image": "nginx:latest"},
        {"name": "api", "image": "registry.example.com/team/api:main", "imagePullPolicy": "Always"},
        {"name": "db", "image": format!("postgres:16@{}", digest('d'))}
    ]);
    pod["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "registry.example.com/team/migrate:main"}]);
    set_annotations(
        &mut pod,
        json!({contract::ANNOTATION_RESTARTED_FOR: restarted_for}),
    );
    pod
}

fn image_of<'a>(pod: &'a Value, container: &str) -> &'a str {
    pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .find(|c| c["name"] == container)
        .and_then(|c| c["image"].as_str())
        .unwrap()
}

#[test]
fn watched_images_are_pinned_to_the_digest_their_restart_rolled_out() {
    let record = format!(
        "web={},api={},db={},migrate={}",
        digest('a'),
        digest('b'),
        digest('e'),
        digest('f')
    );
    for mode in [SidecarMode::Container, SidecarMode::Native] {
        let (injection, patched) = inject(&restarted_pod(&record), mode);
        assert_eq!(
            image_of(&patched, "web"),
            format!("nginx:latest@{}", digest('a'))
        );
        assert_eq!(
            image_of(&patched, "api"),
            format!("registry.example.com/team/api:main@{}", digest('b'))
        );
        assert_eq!(
            image_of(&patched, "db"),
            format!("postgres:16@{}", digest('d')),
            "a user's pin is kept"
        );
        assert_eq!(
            image_of(&patched, "migrate"),
            "registry.example.com/team/migrate:main",
            "init containers are not watched, so not pinned"
        );
        assert_eq!(
            image_of(&patched, contract::SIDECAR_CONTAINER_NAME),
            "example/checker:1"
        );
        let said = injection.warnings.join("\n");
        assert!(
            said.contains("pinned web to nginx:latest@") && said.contains("api to "),
            "{said}"
        );

        // Reinvocation: the pinned pod yields no further patch.
        let typed: Pod = serde_json::from_value(patched).unwrap();
        assert!(matches!(
            decide(&typed, "shop", &settings(mode)),
            Decision::Skip(SkipReason::AlreadyInjected)
        ));
    }
}

#[test]
fn only_watched_containers_with_a_valid_digest_are_pinned() {
    // One container listed, one not; the record's other entries are ignored.
    let mut pod = restarted_pod(&format!(
        "web={},api=sha256:short,ghost={}",
        digest('a'),
        digest('c')
    ));
    pod["metadata"]["annotations"][contract::ANNOTATION_WATCH_CONTAINERS] = json!("web,api");
    let (_, patched) = inject(&pod, SidecarMode::Container);
    assert_eq!(
        image_of(&patched, "web"),
        format!("nginx:latest@{}", digest('a'))
    );
    assert_eq!(
        image_of(&patched, "api"),
        "registry.example.com/team/api:main"
    );

    let mut only_api = restarted_pod(&format!("web={}", digest('a')));
    only_api["metadata"]["annotations"][contract::ANNOTATION_WATCH_CONTAINERS] = json!("api");
    let (_, patched) = inject(&only_api, SidecarMode::Container);
    assert_eq!(
        image_of(&patched, "web"),
        "nginx:latest",
        "not watched, not pinned"
    );
}

#[test]
fn pin_false_and_pods_without_a_restart_are_left_alone() {
    let mut pod = restarted_pod(&format!("web={}", digest('a')));
    pod["metadata"]["annotations"][contract::ANNOTATION_PIN] = json!("false");
    let (injection, patched) = inject(&pod, SidecarMode::Container);
    assert_eq!(image_of(&patched, "web"), "nginx:latest");
    assert!(!injection.warnings.join("\n").contains("pinned web"));

    let (_, patched) = inject(&deployment_pod(), SidecarMode::Container);
    assert_eq!(image_of(&patched, "web"), "nginx:latest");

    let mut bad = restarted_pod(&format!("web={}", digest('a')));
    bad["metadata"]["annotations"][contract::ANNOTATION_PIN] = json!("no");
    assert!(matches!(
        skip_reason(&bad, "shop"),
        SkipReason::InvalidAnnotation {
            annotation: contract::ANNOTATION_PIN,
            ..
        }
    ));
}

#[test]
fn rollout_annotations_are_validated() {
    for (annotation, bad) in [
        (contract::ANNOTATION_ON_FAILURE, "retry"),
        (contract::ANNOTATION_ROLLOUT_TIMEOUT, "0s"),
        (contract::ANNOTATION_ROLLOUT_TIMEOUT, "soon"),
        (contract::ANNOTATION_MODE, "dry-run"),
        (contract::ANNOTATION_MIN_AGE, "a while"),
        (contract::ANNOTATION_COOLDOWN, "90d"),
        (
            contract::ANNOTATION_RESTART_WINDOW,
            "Mon-Fri 02:00-05:00 Mars/Olympus",
        ),
        (contract::ANNOTATION_RESTART_WINDOW, "weekends"),
    ] {
        let mut pod = deployment_pod();
        set_annotations(&mut pod, json!({annotation: bad}));
        assert!(
            matches!(skip_reason(&pod, "shop"), SkipReason::InvalidAnnotation { annotation: a, .. } if a == annotation),
            "{annotation}={bad}"
        );
    }
    let mut pod = deployment_pod();
    set_annotations(
        &mut pod,
        json!({
            contract::ANNOTATION_ON_FAILURE: "halt",
            contract::ANNOTATION_ROLLOUT_TIMEOUT: "5m",
            contract::ANNOTATION_MODE: "notify",
            contract::ANNOTATION_MIN_AGE: "1h",
            contract::ANNOTATION_COOLDOWN: "30m",
            contract::ANNOTATION_RESTART_WINDOW: "Mon-Fri 02:00-05:00 Europe/Berlin; Sat 00:00-06:00",
        }),
    );
    inject(&pod, SidecarMode::Container);
}

#[test]
fn cluster_wide_sidecar_settings_reach_the_sidecar() {
    let mut with_settings = settings(SidecarMode::Container);
    with_settings.sidecar_env = vec![
        (contract::ENV_LOG_FORMAT.to_string(), "json".to_string()),
        (
            contract::ENV_INSECURE_REGISTRIES.to_string(),
            "registry.lan:5000".to_string(),
        ),
    ];
    with_settings.ca_configmap = Some("corporate-ca".to_string());
    with_settings.metrics_port = Some(9102);
    let pod = deployment_pod();
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let Decision::Inject(injection) = decide(&typed, "shop", &with_settings) else {
        panic!("injected expected")
    };
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &operations(&injection)).unwrap();
    let sidecar = sidecar(&patched);
    assert_eq!(env_value(sidecar, contract::ENV_LOG_FORMAT), Some("json"));
    assert_eq!(
        env_value(sidecar, contract::ENV_INSECURE_REGISTRIES),
        Some("registry.lan:5000")
    );
    assert_eq!(
        env_value(sidecar, contract::ENV_REGISTRY_CA_DIR),
        Some(contract::REGISTRY_CA_MOUNT_DIR)
    );
    assert_eq!(sidecar["ports"][0]["containerPort"], 9102);
    let mount = sidecar["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == contract::REGISTRY_CA_MOUNT_DIR)
        .expect("CA mount");
    assert_eq!(mount["readOnly"], true);
    let volume = patched["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("CA volume");
    assert_eq!(volume["configMap"]["name"], "corporate-ca");
    assert_eq!(
        volume["configMap"]["optional"], true,
        "a namespace without it still starts pods"
    );
}

#[test]
fn a_private_sidecar_image_brings_its_pull_secret_to_the_pod() {
    let mut with_secret = settings(SidecarMode::Container);
    with_secret.sidecar_image_pull_secret = Some("sidecar-pull".to_string());
    let apply = |pod: &Value| {
        let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
        let Decision::Inject(injection) = decide(&typed, "shop", &with_secret) else {
            panic!("injected expected");
        };
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &operations(&injection)).unwrap();
        patched
    };
    // A pod without pull secrets gets the list.
    let patched = apply(&deployment_pod());
    assert_eq!(
        patched["spec"]["imagePullSecrets"],
        json!([{"name": "sidecar-pull"}])
    );
    // A pod with its own keeps them, the sidecar's added, not mounted into the sidecar.
    let mut pod = deployment_pod();
    pod["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
    let patched = apply(&pod);
    assert_eq!(
        patched["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}, {"name": "sidecar-pull"}])
    );
    let mounts = sidecar(&patched)["volumeMounts"].to_string();
    assert!(
        mounts.contains("regcred") && !mounts.contains("sidecar-pull"),
        "{mounts}"
    );
    // Already there: not twice.
    let mut pod = deployment_pod();
    pod["spec"]["imagePullSecrets"] = json!([{"name": "sidecar-pull"}]);
    assert_eq!(
        apply(&pod)["spec"]["imagePullSecrets"],
        json!([{"name": "sidecar-pull"}])
    );
}

#[test]
fn who_polls_reaches_the_sidecar_only_when_it_is_not_the_default() {
    let (_, pod) = inject(&deployment_pod(), SidecarMode::Container);
    assert_eq!(env_value(sidecar(&pod), contract::ENV_POLL), None);

    let mut annotated = deployment_pod();
    set_annotations(
        &mut annotated,
        json!({contract::ANNOTATION_POLL: "replica"}),
    );
    let (_, pod) = inject(&annotated, SidecarMode::Container);
    assert_eq!(
        env_value(sidecar(&pod), contract::ENV_POLL),
        Some("replica")
    );

    // The webhook's default applies to pods without the annotation.
    let mut every_replica = settings(SidecarMode::Container);
    every_replica.default_poll = contract::settings::Poll::Replica;
    let review = deployment_pod();
    let view: Pod = serde_json::from_value(review.clone()).unwrap();
    let Decision::Inject(injection) = decide(&view, "shop", &every_replica) else {
        panic!("injected")
    };
    let mut patched = review;
    json_patch::patch(&mut patched, &operations(&injection)).unwrap();
    assert_eq!(
        env_value(sidecar(&patched), contract::ENV_POLL),
        Some("replica")
    );

    let mut invalid = deployment_pod();
    set_annotations(
        &mut invalid,
        json!({contract::ANNOTATION_POLL: "sometimes"}),
    );
    assert!(matches!(
        skip_reason(&invalid, "shop"),
        SkipReason::InvalidAnnotation {
            annotation: contract::ANNOTATION_POLL,
            ..
        }
    ));
}

#[test]
fn the_trust_policy_a_pod_names_reaches_its_sidecar_as_content() {
    let policies = contract::trust::TrustPolicies::parse(
        "policies:\n  release:\n    keyless:\n      - issuer: https://issuer.example\n        subjectRegExp: ^ci@acme$\n    transparencyLog: optional\n",
    )
    .unwrap();
    let mut verifying = settings(SidecarMode::Container);
    verifying.trust = crate::reloaded::Reloaded::new(policies.clone());
    let patched = |pod: &Value, settings: &InjectionSettings| {
        let view: Pod = serde_json::from_value(pod.clone()).unwrap();
        match decide(&view, "shop", settings) {
            Decision::Inject(injection) => {
                let mut patched = pod.clone();
                json_patch::patch(&mut patched, &operations(&injection)).unwrap();
                Ok(patched)
            }
            Decision::Skip(reason) => Err(reason),
        }
    };
    let policy_env = |pod: &Value| {
        env_value(sidecar(pod), contract::ENV_VERIFY_POLICY)
            .map(|json| contract::trust::NamedPolicy::from_json(json).unwrap())
    };

    // No annotation, no default: no verification.
    assert_eq!(
        policy_env(&patched(&deployment_pod(), &verifying).unwrap()),
        None
    );

    let mut named = deployment_pod();
    set_annotations(&mut named, json!({contract::ANNOTATION_VERIFY: "release"}));
    assert_eq!(
        policy_env(&patched(&named, &verifying).unwrap()),
        policies.get("release")
    );

    // The default applies to pods without the annotation; `off` opts out.
    verifying.default_verify_policy = Some("release".into());
    assert_eq!(
        policy_env(&patched(&deployment_pod(), &verifying).unwrap()),
        policies.get("release")
    );
    let mut off = deployment_pod();
    set_annotations(&mut off, json!({contract::ANNOTATION_VERIFY: "off"}));
    assert_eq!(policy_env(&patched(&off, &verifying).unwrap()), None);

    // An unknown name leaves the pod uninjected, and the warning says which exist.
    let mut unknown = deployment_pod();
    set_annotations(
        &mut unknown,
        json!({contract::ANNOTATION_VERIFY: "nightly"}),
    );
    let reason = patched(&unknown, &verifying).unwrap_err();
    assert!(matches!(
        reason,
        SkipReason::InvalidAnnotation {
            annotation: contract::ANNOTATION_VERIFY,
            ..
        }
    ));
    assert!(
        reason
            .to_string()
            .contains("no trust policy named \"nightly\" (the webhook's trust policies: release"),
        "{reason}"
    );
}
