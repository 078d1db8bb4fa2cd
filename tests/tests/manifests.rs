//! The kustomize manifests render and agree with the code: names, ports, flags and
//! defaults come from the Rust side, so the YAML cannot drift from it unnoticed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use clap::CommandFactory;
use pod_reloaded_contract as contract;
use pod_reloaded_tests::webhook::generate_certificates;
use pod_reloaded_tests::workspace_root;
use pod_reloaded_webhook::config::Config;
use serde::Deserialize;
use serde_yaml::Value;

/// kubectl 1.31 (kustomize v5) from `.tools/bin`, which `make test` installs
/// (tests/install-tools.py).
fn kubectl() -> Command {
    Command::new(workspace_root().join(".tools/bin/kubectl"))
}

fn render(dir: &Path) -> Vec<Value> {
    let output =
        kubectl().arg("kustomize").arg(dir).output().expect(
            "kubectl is in .tools/bin (make test installs it: python3 tests/install-tools.py)",
        );
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(
        warnings.trim().is_empty(),
        "kustomize warned about {}: {warnings}",
        dir.display()
    );
    let text = String::from_utf8(output.stdout).expect("utf-8 YAML");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The webhook's defaults: no flags (CI sets none of the POD_RELOADED_* variables).
fn defaults() -> Config {
    use clap::Parser;
    Config::try_parse_from(["pod-reloaded-webhook"]).expect("defaults parse")
}

#[test]
fn base_renders_and_agrees_with_the_code() {
    let docs = render(&workspace_root().join("manifests"));
    let ns = contract::WEBHOOK_NAMESPACE;
    let config = defaults();

    let namespace = find(&docs, "Namespace", ns);
    assert_eq!(
        namespace["metadata"]["labels"][contract::INJECT_LABEL],
        contract::INJECT_DISABLED
    );

    let service = find(&docs, "Service", contract::WEBHOOK_SERVICE);
    assert_eq!(service["metadata"]["namespace"], ns);

    let deployment = find(&docs, "Deployment", "pod-reloaded-webhook");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"][contract::INJECT_LABEL],
        contract::INJECT_DISABLED
    );
    let container = &pod["spec"]["containers"][0];
    let ports: Vec<(String, u64)> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        ports.contains(&("https".into(), u64::from(config.listen.port()))),
        "{ports:?}"
    );
    assert!(
        ports.contains(&("metrics".into(), u64::from(config.metrics_listen.port()))),
        "{ports:?}"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        pod["spec"]["volumes"][0]["secret"]["secretName"],
        contract::WEBHOOK_TLS_SECRET
    );
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    assert_eq!(config.tls_cert_file, Path::new(mount).join("tls.crt"));
    assert_eq!(config.tls_key_file, Path::new(mount).join("tls.key"));

    // Every env var the Deployment sets is one the binary reads, with matching values.
    let known_env: BTreeSet<String> = Config::command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for var in container["env"].as_sequence().unwrap() {
        let name = var["name"].as_str().unwrap();
        assert!(
            known_env.contains(name),
            "Deployment sets {name}, which the webhook does not read"
        );
        let value = var["value"].as_str();
        match name {
            "POD_RELOADED_LISTEN" => assert_eq!(value, Some(config.listen.to_string().as_str())),
            "POD_RELOADED_METRICS_LISTEN" => {
                assert_eq!(value, Some(config.metrics_listen.to_string().as_str()))
            }
            "POD_RELOADED_SIDECAR_IMAGE" => assert_eq!(value, Some(config.sidecar_image.as_str())),
            _ => {}
        }
    }

    let pdb = find(&docs, "PodDisruptionBudget", "pod-reloaded-webhook");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    // RBAC: the checker's ClusterRole is exactly what the README lists, and Argo Rollouts.
    let checker = find(&docs, "ClusterRole", contract::CHECKER_CLUSTER_ROLE);
    let mut granted = BTreeSet::new();
    for rule in checker["rules"].as_sequence().unwrap() {
        for resource in strings(&rule["resources"]) {
            for verb in strings(&rule["verbs"]) {
                granted.insert(format!("{verb} {resource}"));
            }
        }
    }
    let expected: BTreeSet<String> = [
        "get pods",
        "list pods",
        "get replicasets",
        "get deployments",
        "patch deployments",
        "get statefulsets",
        "patch statefulsets",
        "get daemonsets",
        "patch daemonsets",
        "get rollouts",
        "patch rollouts",
        // Each Event is created once; the end-to-end test's audit finds no other use.
        "create events",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(granted, expected);
    let webhook_role = find(&docs, "ClusterRole", "pod-reloaded-webhook");
    let bind_rule = webhook_role["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| strings(&r["verbs"]) == ["bind"])
        .expect("bind rule");
    assert_eq!(
        strings(&bind_rule["resourceNames"]),
        [contract::CHECKER_CLUSTER_ROLE]
    );

    // Webhook configuration: two entries, the contract's settings, the code's exclusions.
    let configuration = find(
        &docs,
        "MutatingWebhookConfiguration",
        contract::WEBHOOK_CONFIGURATION,
    );
    let webhooks = configuration["webhooks"].as_sequence().unwrap();
    assert_eq!(webhooks.len(), 2);
    let mut excluded: BTreeSet<String> = config.excluded_namespaces.iter().cloned().collect();
    excluded.insert(config.webhook_namespace.clone());
    for webhook in webhooks {
        assert_eq!(webhook["failurePolicy"], "Ignore");
        assert_eq!(webhook["sideEffects"], "NoneOnDryRun");
        assert_eq!(webhook["timeoutSeconds"], 5);
        assert_eq!(webhook["reinvocationPolicy"], "IfNeeded");
        assert_eq!(strings(&webhook["admissionReviewVersions"]), ["v1"]);
        let target = &webhook["clientConfig"]["service"];
        assert_eq!(target["name"], contract::WEBHOOK_SERVICE);
        assert_eq!(target["namespace"], ns);
        assert_eq!(target["path"], contract::WEBHOOK_MUTATE_PATH);
        assert_eq!(strings(&webhook["rules"][0]["operations"]), ["CREATE"]);
        assert_eq!(strings(&webhook["rules"][0]["resources"]), ["pods"]);
        let expressions = webhook["namespaceSelector"]["matchExpressions"]
            .as_sequence()
            .unwrap();
        let by_name = expressions
            .iter()
            .find(|e| e["key"] == "kubernetes.io/metadata.name")
            .expect("namespace name exclusion");
        assert_eq!(by_name["operator"], "NotIn");
        let listed: BTreeSet<String> = strings(&by_name["values"]).into_iter().collect();
        assert_eq!(
            listed, excluded,
            "selector exclusions differ from the code's"
        );
        let opt_in = expressions
            .iter()
            .find(|e| e["key"] == contract::INJECT_LABEL)
            .expect("opt-in expression");
        assert_eq!(strings(&opt_in["values"]), [contract::INJECT_ENABLED]);
    }
    // The namespace entry takes opted-in namespaces, the pod entry the others: disjoint.
    let operators: Vec<&str> = webhooks
        .iter()
        .map(|w| {
            w["namespaceSelector"]["matchExpressions"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|e| e["key"] == contract::INJECT_LABEL)
                .unwrap()["operator"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(operators, ["In", "NotIn"]);
    assert_eq!(
        webhooks[1]["objectSelector"]["matchLabels"][contract::INJECT_LABEL],
        contract::INJECT_ENABLED
    );

    // Only the admission port is open to all (the API server); metrics to monitoring.
    let policy = find(&docs, "NetworkPolicy", "pod-reloaded-webhook");
    let ingress = policy["spec"]["ingress"].as_sequence().unwrap();
    assert_eq!(ingress[0]["ports"][0]["port"], 8443);
    assert!(ingress[0].get("from").is_none());
    assert_eq!(ingress[1]["ports"][0]["port"], 9090);
    assert!(ingress[1].get("from").is_some());
    let pod_spec = &find(&docs, "Deployment", "pod-reloaded-webhook")["spec"]["template"];
    assert_eq!(
        pod_spec["metadata"]["annotations"]["prometheus.io/port"],
        "9090"
    );
    assert!(
        pod_spec["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap()
            >= 10
    );

    // The policy that limits the identities the webhook binds reads exactly the
    // RoleBindings the webhook labels, one policy and binding per workload kind.
    for resource in ["deployments", "statefulsets", "daemonsets", "rollouts"] {
        let name = format!("pod-reloaded-checker-{resource}");
        let policy = find(&docs, "ValidatingAdmissionPolicy", &name);
        assert_eq!(
            policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"][0],
            resource
        );
        let binding = find(&docs, "ValidatingAdmissionPolicyBinding", &name);
        assert_eq!(binding["spec"]["policyName"], name.as_str());
        assert_eq!(
            binding["spec"]["paramRef"]["selector"]["matchLabels"][contract::MANAGED_BY_LABEL],
            contract::MANAGED_BY_VALUE
        );
        assert_eq!(
            binding["spec"]["paramRef"]["parameterNotFoundAction"],
            "Allow"
        );
    }
}

#[test]
fn certs_overlay_adds_the_secret_and_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let certs = generate_certificates(dir.path());
    for private in ["tls.key", "secret.yaml"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(certs.dir.join(private))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{private} holds the private key");
    }
    let docs = render(&certs.dir);
    let secret = find(&docs, "Secret", contract::WEBHOOK_TLS_SECRET);
    assert_eq!(secret["metadata"]["namespace"], contract::WEBHOOK_NAMESPACE);
    assert_eq!(secret["type"], "kubernetes.io/tls");
    use base64::Engine as _;
    let ca = std::fs::read(&certs.ca).unwrap();
    let bundle = base64::engine::general_purpose::STANDARD.encode(&ca);
    let configuration = find(
        &docs,
        "MutatingWebhookConfiguration",
        contract::WEBHOOK_CONFIGURATION,
    );
    for webhook in configuration["webhooks"].as_sequence().unwrap() {
        assert_eq!(
            webhook["clientConfig"]["caBundle"].as_str(),
            Some(bundle.as_str())
        );
    }
    assert_eq!(
        secret["data"]["tls.crt"].as_str().unwrap(),
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&certs.cert).unwrap())
    );
}

/// The deploy overlay `make deploy` writes (the certs command), with `args`, rendered;
/// the directory is kept while the overlay is used.
fn deploy_overlay(args: &[&str]) -> (tempfile::TempDir, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let output =
        std::process::Command::new(pod_reloaded_tests::process::binary("pod-reloaded-certs"))
            .current_dir(workspace_root())
            .arg("--out-dir")
            .arg(dir.path())
            .args(["--webhook-image", "registry.example/team/webhook:1.2.3"])
            .args(["--sidecar-image", "registry.example/team/sidecar:1.2.3"])
            .args(args)
            .output()
            .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let docs = render(dir.path());
    (dir, docs)
}

fn webhook_image(docs: &[Value]) -> &Value {
    &find(docs, "Deployment", contract::WEBHOOK_SERVICE)["spec"]["template"]["spec"]["containers"]
        [0]["image"]
}

#[test]
fn optional_components_add_to_the_deploy_overlay_without_undoing_it() {
    // The ServiceMonitor scrapes the Service's metrics port, and the install keeps its CA
    // bundle, Secret and images, also after a rotation that does not name the component.
    let (dir, docs) = deploy_overlay(&["--component", "examples/servicemonitor"]);
    for docs in [docs, {
        let rotated =
            std::process::Command::new(pod_reloaded_tests::process::binary("pod-reloaded-certs"))
                .current_dir(workspace_root())
                .arg("--out-dir")
                .arg(dir.path())
                .arg("--rotate")
                .output()
                .unwrap();
        assert!(rotated.status.success());
        render(dir.path())
    }] {
        let monitor = find(&docs, "ServiceMonitor", "pod-reloaded-webhook");
        assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
        assert_eq!(
            find(&docs, "Service", contract::WEBHOOK_SERVICE)["spec"]["ports"][1]["name"],
            "metrics"
        );
        let configuration = find(
            &docs,
            "MutatingWebhookConfiguration",
            contract::WEBHOOK_CONFIGURATION,
        );
        for webhook in configuration["webhooks"].as_sequence().unwrap() {
            assert!(webhook["clientConfig"]["caBundle"].is_string());
        }
        find(&docs, "Secret", contract::WEBHOOK_TLS_SECRET);
        assert_eq!(webhook_image(&docs), "registry.example/team/webhook:1.2.3");
    }
}

#[test]
fn with_cert_manager_the_overlay_leaves_the_certificate_to_it_and_keeps_the_images() {
    let (_dir, docs) = deploy_overlay(&[
        "--cert-manager",
        "certs/cert-manager",
        "--component",
        "examples/servicemonitor",
    ]);
    let configuration = find(
        &docs,
        "MutatingWebhookConfiguration",
        contract::WEBHOOK_CONFIGURATION,
    );
    assert_eq!(
        configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "pod-reloaded/pod-reloaded-webhook"
    );
    for webhook in configuration["webhooks"].as_sequence().unwrap() {
        assert!(
            webhook["clientConfig"]["caBundle"].is_null(),
            "cert-manager's injector fills the CA bundle"
        );
    }
    assert!(
        !docs.iter().any(|d| d["kind"] == "Secret"),
        "cert-manager writes the Secret"
    );
    let certificate = find(&docs, "Certificate", "pod-reloaded-webhook");
    assert_eq!(
        certificate["spec"]["secretName"],
        contract::WEBHOOK_TLS_SECRET
    );
    assert!(
        strings(&certificate["spec"]["dnsNames"]).contains(&contract::webhook_service_dns_name())
    );
    find(&docs, "ServiceMonitor", "pod-reloaded-webhook");
    assert_eq!(webhook_image(&docs), "registry.example/team/webhook:1.2.3");
    let args = strings(
        &find(&docs, "Deployment", contract::WEBHOOK_SERVICE)["spec"]["template"]["spec"]
            ["containers"][0]["args"],
    );
    assert!(args.contains(&"--sidecar-image=registry.example/team/sidecar:1.2.3".to_string()));
}

#[test]
fn one_version_and_one_place_to_set_the_images() {
    // The base's images carry the workspace version, as the webhook's default does.
    let docs = render(&workspace_root().join("manifests"));
    let version = env!("CARGO_PKG_VERSION");
    let deployment = find(&docs, "Deployment", "pod-reloaded-webhook");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"].as_str(),
        Some(format!("pod-reloaded/webhook:{version}").as_str())
    );
    let sidecar_env = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_RELOADED_SIDECAR_IMAGE")
        .unwrap();
    assert_eq!(
        sidecar_env["value"].as_str(),
        Some(format!("pod-reloaded/sidecar:{version}").as_str())
    );
    let makefile = std::fs::read_to_string(workspace_root().join("Makefile")).unwrap();
    assert!(
        !makefile.contains(version) || version.is_empty(),
        "the Makefile reads the version from Cargo.toml instead of repeating it"
    );

    // `make deploy IMAGE_REGISTRY=... TAG=...` sets both images through the overlay.
    let dir = tempfile::tempdir().unwrap();
    let status =
        std::process::Command::new(pod_reloaded_tests::process::binary("pod-reloaded-certs"))
            .args(["--out-dir"])
            .arg(dir.path())
            .arg("--manifests-dir")
            .arg(workspace_root().join("manifests"))
            .args([
                "--webhook-image",
                "registry.example.com:5000/team/webhook:1.2.3",
                "--sidecar-image",
                "registry.example.com:5000/team/sidecar:1.2.3",
            ])
            .output()
            .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let docs = render(dir.path());
    let container = &find(&docs, "Deployment", "pod-reloaded-webhook")["spec"]["template"]["spec"]
        ["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.com:5000/team/webhook:1.2.3"
    );
    assert_eq!(
        strings(&container["args"]).last().map(String::as_str),
        Some("--sidecar-image=registry.example.com:5000/team/sidecar:1.2.3")
    );
}

#[test]
fn certificates_are_reused_until_rotated_and_rotation_overlaps_the_cas() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let output =
            std::process::Command::new(pod_reloaded_tests::process::binary("pod-reloaded-certs"))
                .arg("--out-dir")
                .arg(dir.path())
                .arg("--manifests-dir")
                .arg(workspace_root().join("manifests"))
                .args(extra)
                .output()
                .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let said = run(&[]);
    assert!(
        said.starts_with("wrote") && said.contains("expires"),
        "{said}"
    );
    let (cert, ca) = (read("tls.crt"), read("ca.crt"));
    let said = run(&[]);
    assert!(
        said.starts_with("kept"),
        "a second deploy keeps a working certificate: {said}"
    );
    assert_eq!(read("tls.crt"), cert);
    run(&["--rotate"]);
    assert_ne!(read("tls.crt"), cert, "rotated");
    let bundle = read("ca.crt");
    assert_eq!(
        bundle.matches("BEGIN CERTIFICATE").count(),
        2,
        "new and previous CA"
    );
    assert!(
        bundle.contains(ca.trim()),
        "the previous CA is still trusted"
    );
    // The overlay carries the bundle, so the API server trusts both during the switch.
    use base64::Engine as _;
    let docs = render(dir.path());
    let configuration = find(
        &docs,
        "MutatingWebhookConfiguration",
        contract::WEBHOOK_CONFIGURATION,
    );
    assert_eq!(
        configuration["webhooks"][0]["clientConfig"]["caBundle"].as_str(),
        Some(
            base64::engine::general_purpose::STANDARD
                .encode(&bundle)
                .as_str()
        )
    );
}

#[test]
fn images_are_built_per_platform_from_pinned_bases_and_run_as_nonroot() {
    for name in ["Dockerfile.webhook", "Dockerfile.sidecar"] {
        let text = std::fs::read_to_string(workspace_root().join(name)).unwrap();
        for line in text
            .lines()
            .filter(|l| l.starts_with("ARG ") && l.contains("_IMAGE="))
        {
            assert!(
                line.contains("@sha256:"),
                "{name}: {line} is not pinned by digest"
            );
        }
        assert!(text.contains("ARG TARGETARCH") && text.contains("aarch64-unknown-linux-musl"));
        assert!(text.contains("USER 65532:65532"), "{name} runs as nonroot");
    }
}
