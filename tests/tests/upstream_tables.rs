//! The rules our parsers share with the projects that apply them in Go, checked against
//! those projects' own test tables, ported as data into `tests/fixtures/upstream/` (each
//! file names its source and revision). Where we differ on purpose, the file lists the
//! row with the reason; every other row agrees.

use pod_reloaded_contract::image::{ImageReference, DOCKER_HUB_REGISTRY};
use pod_reloaded_tests::workspace_root;
use serde_json::Value;

fn table(name: &str) -> Value {
    let path = workspace_root().join("tests/fixtures/upstream").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let table: Value = serde_json::from_str(&text).expect("a table is JSON");
    assert!(
        table["source"]
            .as_str()
            .is_some_and(|s| s.contains("revision")),
        "{name} names its source and revision"
    );
    table
}

/// Inputs where we differ on purpose, with the reason (the row is checked the other way).
fn on_purpose(table: &Value) -> Vec<String> {
    table["differs_on_purpose"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            assert!(
                row["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "a difference says why: {row}"
            );
            row["input"].as_str().unwrap_or("").to_string()
        })
        .collect()
}

/// The name in Docker's familiar form: Docker Hub's host and `library/` left off.
fn familiar(reference: &ImageReference) -> String {
    if reference.registry == DOCKER_HUB_REGISTRY {
        match reference.repository.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => reference.repository.clone(),
        }
    } else {
        format!("{}/{}", reference.registry, reference.repository)
    }
}

#[test]
fn image_references_agree_with_distribution_reference() {
    let mut disagreements = Vec::new();
    for file in [
        "distribution-reference-parse.json",
        "distribution-reference-normalize.json",
    ] {
        let table = table(file);
        let differs = on_purpose(&table);
        for row in table["rows"].as_array().expect("rows") {
            let input = row["input"].as_str().expect("input");
            let parsed = ImageReference::parse(input);
            let valid = row["valid"] == true;
            let agrees = match &parsed {
                Err(_) => !valid,
                Ok(reference) if valid => {
                    let name_ok = row["name"]
                        .as_str()
                        .is_none_or(|name| familiar(reference) == name);
                    let domain_ok = row["domain"].as_str().is_none_or(|domain| {
                        let ours = if domain == "docker.io" {
                            DOCKER_HUB_REGISTRY
                        } else {
                            domain
                        };
                        reference.registry == ours
                    });
                    let path_ok = row["path"]
                        .as_str()
                        .is_none_or(|p| reference.repository == p);
                    let tag_ok =
                        reference.tag.as_deref() == row["tag"].as_str() || row.get("tag").is_none();
                    let digest_ok = reference.digest.as_deref() == row["digest"].as_str()
                        || row.get("digest").is_none();
                    name_ok && domain_ok && path_ok && tag_ok && digest_ok
                }
                Ok(_) => false,
            };
            if agrees == differs.iter().any(|d| d == input) {
                disagreements.push(format!(
                    "{file}: {input:?}: upstream {row}, ours {parsed:?}"
                ));
            }
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

#[test]
fn quantities_agree_with_apimachinery() {
    use pod_reloaded_contract::settings::parse_quantity;
    let table = table("apimachinery-quantity.json");
    let differs = on_purpose(&table);
    let close = |ours: f64, theirs: f64| {
        (ours - theirs).abs() <= 1e-8 || (ours - theirs).abs() <= theirs.abs() * 1e-12
    };
    let mut disagreements = Vec::new();
    for row in table["rows"].as_array().expect("rows") {
        let input = row["input"].as_str().expect("input");
        let mut variants = vec![(input.to_string(), 1.0)];
        if row["valid"] == true {
            // The upstream test also parses each valid row signed.
            variants.push((format!("-{input}"), -1.0));
            variants.push((format!("+{input}"), 1.0));
        }
        for (text, sign) in variants {
            let ours = parse_quantity(&text);
            let agrees = match (&ours, row["value"].as_f64()) {
                (Ok(value), Some(expected)) => close(*value, sign * expected),
                (Err(_), None) => true,
                _ => false,
            };
            if agrees == differs.iter().any(|d| d == input) {
                disagreements.push(format!("{text:?}: upstream {row}, ours {ours:?}"));
            }
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

#[test]
fn challenges_agree_with_distribution_and_containerd() {
    use pod_reloaded_sidecar::registry::auth::parse_parameters;
    let table = table("www-authenticate.json");
    for row in table["rows"].as_array().expect("rows") {
        let header = row["header"].as_str().expect("header");
        let (scheme, params) =
            parse_parameters(header).unwrap_or_else(|| panic!("{header}: not parsed"));
        assert_eq!(scheme, row["scheme"].as_str().unwrap(), "{header}");
        let expected: std::collections::HashMap<String, String> =
            serde_json::from_value(row["params"].clone()).expect("params");
        assert_eq!(params, expected, "{} ({})", header, row["source"]);
    }
}

/// An image as the kubelet's keyring looks it up: `host[:port]/path`, Docker Hub when
/// the first component is no host.
fn host_and_repository(image: &str) -> (String, String) {
    match image.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_string(), rest.to_string())
        }
        // A bare host (TestUrlsMatch compares URLs): no repository.
        None if image.contains(['.', ':']) => (image.to_string(), String::new()),
        None => ("docker.io".to_string(), format!("library/{image}")),
        _ => ("docker.io".to_string(), image.to_string()),
    }
}

#[test]
fn pull_secret_keys_agree_with_the_kubelet() {
    use base64::Engine as _;
    use pod_reloaded_sidecar::registry::credentials::Credentials;
    let table = table("kubelet-keyring.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("foo:bar");
    let lookup = |key: &str, image: &str| {
        let mut credentials = Credentials::default();
        let config = serde_json::json!({"auths": {key: {"auth": auth, "email": "foo@bar.baz"}}});
        let problems = credentials.add_config(config.to_string().as_bytes());
        assert!(problems.is_empty(), "{key}: {problems:?}");
        let (host, repository) = host_and_repository(image);
        credentials
            .for_image(&host, &repository)
            .map(|c| (c.username.clone(), c.password.clone()))
    };
    let mut disagreements = Vec::new();
    for row in table["keys"].as_array().expect("keys") {
        let (key, image) = (row["key"].as_str().unwrap(), row["image"].as_str().unwrap());
        let found = lookup(key, image);
        let agrees = match (&found, row["match"] == true) {
            (Some(pair), true) => pair == &("foo".to_string(), "bar".to_string()),
            (None, false) => true,
            _ => false,
        };
        if !agrees {
            disagreements.push(format!("{row}: ours {found:?}"));
        }
    }
    for row in table["differs_on_purpose"].as_array().expect("differences") {
        assert!(row["reason"].as_str().is_some_and(|r| !r.is_empty()));
        let found = lookup(row["key"].as_str().unwrap(), row["image"].as_str().unwrap());
        if found.is_some() {
            disagreements.push(format!("{row}: ours matched, on purpose it must not"));
        }
    }
    for row in table["entries"].as_array().expect("entries") {
        let mut credentials = Credentials::default();
        let config = serde_json::json!({"registry.example.com": row["entry"]});
        let problems = credentials.add_legacy_config(config.to_string().as_bytes());
        let found = credentials.for_image("registry.example.com", "app");
        let agrees = if row["fails"] == true {
            found.is_none() && !problems.is_empty()
        } else {
            found.is_some_and(|c| c.username == row["username"] && c.password == row["password"])
        };
        if !agrees {
            disagreements.push(format!("{row}: ours {found:?} {problems:?}"));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
