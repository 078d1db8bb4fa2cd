//! The ValidatingAdmissionPolicy that keeps the app container from using the checker's
//! rights: its CEL expressions, read from `manifests/policy.yaml`, evaluated by a CEL
//! implementation against what the sidecar sends (allowed) and what an app could try
//! (denied), so the expressions cannot silently allow too much.

use std::path::Path;

use cel::{Context, Program};
use pod_reloaded_contract as contract;
use serde_json::{json, Value};

/// One policy as the API server evaluates it, for a request whose params were found.
struct Policy {
    resource: String,
    match_conditions: Vec<Program>,
    variables: Vec<(String, Program)>,
    validations: Vec<(Program, String)>,
}

fn compile(expression: &str) -> Program {
    Program::compile(expression).unwrap_or_else(|e| panic!("{expression}: {e:?}"))
}

fn policies() -> Vec<Policy> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/policy.yaml");
    let text = std::fs::read_to_string(&path).expect("manifests/policy.yaml");
    let mut policies = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let doc: Value = serde::Deserialize::deserialize(document).expect("YAML");
        if doc["kind"] != "ValidatingAdmissionPolicy" {
            continue;
        }
        let spec = &doc["spec"];
        assert_eq!(spec["failurePolicy"], "Fail");
        assert_eq!(spec["paramKind"]["kind"], "RoleBinding");
        let list = |key: &str| spec[key].as_array().cloned().unwrap_or_default();
        policies.push(Policy {
            resource: spec["matchConstraints"]["resourceRules"][0]["resources"][0]
                .as_str()
                .unwrap()
                .to_string(),
            match_conditions: list("matchConditions")
                .iter()
                .map(|c| compile(c["expression"].as_str().unwrap()))
                .collect(),
            variables: list("variables")
                .iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap().to_string(),
                        compile(v["expression"].as_str().unwrap()),
                    )
                })
                .collect(),
            validations: list("validations")
                .iter()
                .map(|v| {
                    (
                        compile(v["expression"].as_str().unwrap()),
                        v["message"].as_str().unwrap().to_string(),
                    )
                })
                .collect(),
        });
    }
    assert_eq!(policies.len(), 4, "one policy per workload kind");
    policies
}

/// What the policy decides for an UPDATE by `username` of `old` to `new`, with `params`
/// (the RoleBinding the webhook made in the object's namespace). `Err` is a denial; an
/// evaluation error is a denial too (`failurePolicy: Fail`).
fn evaluate(
    policy: &Policy,
    username: &str,
    old: &Value,
    new: &Value,
    params: &Value,
) -> Result<(), String> {
    let mut context = Context::default();
    let request = json!({
        "operation": "UPDATE",
        "namespace": new["metadata"]["namespace"],
        "userInfo": {"username": username}
    });
    for (name, value) in [
        ("object", new),
        ("oldObject", old),
        ("request", &request),
        ("params", params),
    ] {
        context.add_variable_from_value(name, cel::to_value(value).expect("to CEL"));
    }
    for condition in &policy.match_conditions {
        match condition.execute(&context) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => return Ok(()),
            other => return Err(format!("match condition: {other:?}")),
        }
    }
    let mut variables = serde_json::Map::new();
    for (name, program) in &policy.variables {
        let value = program
            .execute(&context)
            .map_err(|e| format!("variable {name}: {e:?}"))?;
        variables.insert(name.clone(), value.json().map_err(|e| format!("{e:?}"))?);
        context.add_variable_from_value(
            "variables",
            cel::to_value(Value::Object(variables.clone())).unwrap(),
        );
    }
    for (program, message) in &policy.validations {
        match program.execute(&context) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => return Err(message.clone()),
            other => return Err(format!("{message}: evaluation: {other:?}")),
        }
    }
    Ok(())
}

const CHECKER: &str = "system:serviceaccount:shop:pod-reloaded-checker";

fn binding(namespace: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "pod-reloaded-checker", "namespace": namespace,
                     "labels": {contract::MANAGED_BY_LABEL: contract::MANAGED_BY_VALUE}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": contract::CHECKER_CLUSTER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": contract::CHECKER_SERVICE_ACCOUNT, "namespace": namespace}]
    })
}

fn workload(resource: &str, namespace: &str) -> Value {
    let (kind, extra) = match resource {
        "deployments" => (
            "Deployment",
            json!({"replicas": 2, "strategy": {"type": "RollingUpdate"}, "progressDeadlineSeconds": 600}),
        ),
        "statefulsets" => (
            "StatefulSet",
            json!({"replicas": 2, "serviceName": "web", "updateStrategy": {"type": "RollingUpdate"}}),
        ),
        "rollouts" => (
            "Rollout",
            json!({"replicas": 2, "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}}}),
        ),
        _ => (
            "DaemonSet",
            json!({"updateStrategy": {"type": "RollingUpdate"}}),
        ),
    };
    let mut spec = json!({
        "selector": {"matchLabels": {"app": "web"}},
        "revisionHistoryLimit": 10,
        "template": {
            "metadata": {"labels": {"app": "web"}, "annotations": {"team": "shop", contract::ANNOTATION_RESTARTED_FOR: "web=sha256:old"}},
            "spec": {"containers": [{"name": "web", "image": "nginx:latest"}], "serviceAccountName": "pod-reloaded-checker"}
        }
    });
    for (key, value) in extra.as_object().unwrap() {
        spec[key] = value.clone();
    }
    json!({
        "apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": "web", "namespace": namespace, "labels": {"app": "web"},
                     "annotations": {"deployment.kubernetes.io/revision": "3"}, "resourceVersion": "7"},
        "spec": spec
    })
}

type Change = fn(&mut Value);

fn allowed_changes() -> Vec<(&'static str, Change)> {
    vec![
        ("the sidecar's restart patch", |w| {
            let a = &mut w["spec"]["template"]["metadata"]["annotations"];
            a[contract::ANNOTATION_RESTARTED_AT] = json!("2026-11-24T10:00:00Z");
            a[contract::ANNOTATION_RESTARTED_FOR] = json!("web=sha256:new");
            a[contract::ANNOTATION_ROLLED_FROM] = json!("web=sha256:old");
            w["metadata"]["annotations"][contract::ANNOTATION_ROLLOUT] =
                json!("progressing 2026-11-24T10:00:00Z web=sha256:new");
        }),
        ("the rollback patch", |w| {
            let a = &mut w["spec"]["template"]["metadata"]["annotations"];
            a[contract::ANNOTATION_RESTARTED_FOR] = json!("web=sha256:older");
            a[contract::ANNOTATION_RESTARTED_AT] = json!("2026-11-24T10:11:00Z");
            w["metadata"]["annotations"][contract::ANNOTATION_QUARANTINED] =
                json!("web=sha256:new");
        }),
        ("the quarantine patch", |w| {
            w["metadata"]["annotations"][contract::ANNOTATION_QUARANTINED] =
                json!("web=sha256:new");
            w["metadata"]["annotations"][contract::ANNOTATION_ROLLOUT] =
                json!("failed 2026-11-24T10:00:00Z web=sha256:new");
        }),
        ("removing its own annotation", |w| {
            w["spec"]["template"]["metadata"]["annotations"]
                .as_object_mut()
                .unwrap()
                .remove(contract::ANNOTATION_RESTARTED_FOR);
        }),
    ]
}

fn denied_changes(resource: &str) -> Vec<(&'static str, Change)> {
    let mut changes: Vec<(&'static str, Change)> = vec![
        ("an image change", |w| {
            w["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil/miner:latest")
        }),
        ("a container added", |w| {
            w["spec"]["template"]["spec"]["containers"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "x", "image": "evil/x"}))
        }),
        ("a command", |w| {
            w["spec"]["template"]["spec"]["containers"][0]["command"] =
                json!(["sh", "-c", "curl evil"])
        }),
        ("another template annotation", |w| {
            w["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] =
                json!("false")
        }),
        ("a template label", |w| {
            w["spec"]["template"]["metadata"]["labels"]["app"] = json!("other")
        }),
        ("a metadata label", |w| {
            w["metadata"]["labels"]["tier"] = json!("x")
        }),
        ("another metadata annotation", |w| {
            w["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("1")
        }),
        ("a selector", |w| {
            w["spec"]["selector"]["matchLabels"]["app"] = json!("other")
        }),
        ("a finalizer", |w| {
            w["metadata"]["finalizers"] = json!(["x/y"])
        }),
    ];
    if resource == "rollouts" {
        changes.push(("the canary steps", |w| {
            w["spec"]["strategy"] = json!({"canary": {"steps": []}})
        }));
    }
    if resource != "daemonsets" {
        changes.push(("replicas", |w| w["spec"]["replicas"] = json!(0)));
    } else {
        changes.push(("the update strategy", |w| {
            w["spec"]["updateStrategy"] = json!({"type": "OnDelete"})
        }));
    }
    changes
}

/// The API server bumps a DaemonSet's `deprecated.daemonset.template.generation` on
/// every template change, before validation: the restart patch of a DaemonSet arrives with
/// it changed (found on the real API server). Only there is it allowed.
#[test]
fn a_daemonset_restart_carries_the_template_generation_the_api_server_bumps() {
    for policy in policies() {
        let mut old = workload(&policy.resource, "shop");
        old["metadata"]["annotations"]["deprecated.daemonset.template.generation"] = json!("1");
        let mut new = old.clone();
        (allowed_changes()[0].1)(&mut new);
        new["metadata"]["annotations"]["deprecated.daemonset.template.generation"] = json!("2");
        let verdict = evaluate(&policy, CHECKER, &old, &new, &binding("shop"));
        if policy.resource == "daemonsets" {
            assert_eq!(verdict, Ok(()), "a DaemonSet's restart must be allowed");
        } else {
            assert!(
                verdict.is_err(),
                "{}: not an annotation of its own",
                policy.resource
            );
        }
    }
}

#[test]
fn the_checker_may_change_its_annotations_and_nothing_else() {
    for policy in policies() {
        let old = workload(&policy.resource, "shop");
        for (what, change) in allowed_changes() {
            let mut new = old.clone();
            change(&mut new);
            assert_eq!(
                evaluate(&policy, CHECKER, &old, &new, &binding("shop")),
                Ok(()),
                "{}: {what} must be allowed",
                policy.resource
            );
        }
        for (what, change) in denied_changes(&policy.resource) {
            let mut new = old.clone();
            change(&mut new);
            assert!(
                evaluate(&policy, CHECKER, &old, &new, &binding("shop")).is_err(),
                "{}: {what} must be denied",
                policy.resource
            );
        }
    }
}

#[test]
fn only_the_granted_identities_in_their_own_namespace_are_limited() {
    for policy in policies() {
        let old = workload(&policy.resource, "shop");
        let mut image_change = old.clone();
        image_change["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.27");
        // People, controllers and accounts the webhook did not bind are never matched.
        for other in [
            "jane@example.com",
            "system:serviceaccount:kube-system:deployment-controller",
            "system:serviceaccount:shop:deployer",
            "system:admin",
        ] {
            assert_eq!(
                evaluate(&policy, other, &old, &image_change, &binding("shop")),
                Ok(()),
                "{}: {other} must not be limited",
                policy.resource
            );
        }
        // A workload in another namespace: even the allowed annotation change is denied
        // when the params name the checker of a different namespace.
        let elsewhere = workload(&policy.resource, "other");
        let mut restart = elsewhere.clone();
        restart["spec"]["template"]["metadata"]["annotations"][contract::ANNOTATION_RESTARTED_AT] =
            json!("2026-11-24T10:00:00Z");
        let mut foreign = binding("other");
        foreign["subjects"][0]["namespace"] = json!("shop");
        assert!(
            evaluate(&policy, CHECKER, &elsewhere, &restart, &foreign).is_err(),
            "{}: a workload in another namespace must be denied",
            policy.resource
        );
        // A pod's own account bound by the webhook is limited the same way.
        let mut own = binding("shop");
        own["subjects"][0]["name"] = json!("api");
        assert!(evaluate(
            &policy,
            "system:serviceaccount:shop:api",
            &old,
            &image_change,
            &own
        )
        .is_err());
    }
}

#[test]
fn the_policy_file_is_what_its_generator_writes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = std::process::Command::new("python3")
        .arg(root.join("manifests/policy.py"))
        .arg("--print")
        .output()
        .expect("python3 runs manifests/policy.py");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let written = std::fs::read_to_string(root.join("manifests/policy.yaml")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        written,
        "manifests/policy.yaml is stale: run python3 manifests/policy.py"
    );
}
