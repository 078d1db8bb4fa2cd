//! `pod-reloaded-certs`: bad arguments write nothing; a renewal keeps the previous CA in
//! the bundle (no moment where the API server trusts neither the old nor the new serving
//! certificate); a later run keeps the images the overlay was made with.

use std::path::Path;
use std::process::{Command, Output};

use pod_reloaded_tests::process::binary;
use pod_reloaded_tests::workspace_root;

fn certs(out: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(binary("pod-reloaded-certs"));
    command.arg("--out-dir").arg(out);
    if !args.contains(&"--manifests-dir") {
        command
            .arg("--manifests-dir")
            .arg(workspace_root().join("manifests"));
    }
    command.args(args).output().expect("the certs command runs")
}

fn certificates_in(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

#[test]
fn bad_arguments_are_refused_before_anything_is_written() {
    for (args, said) in [
        (vec!["--days", "1000000"], "between 1 and 3650"),
        (vec!["--days", "0"], "between 1 and 3650"),
        (vec!["--days=-5"], "between 1 and 3650"),
        (vec!["--dns-name", ""], "neither a DNS name"),
        (vec!["--dns-name", "not a dns name!"], "neither a DNS name"),
        (vec!["--webhook-image", "Not An/Image"], "--webhook-image"),
        (
            vec!["--manifests-dir", "/nonexistent"],
            "no kustomization.yaml",
        ),
        (vec!["--component", "/nonexistent"], "no kustomization.yaml"),
        (
            vec!["--cert-manager", "/nonexistent"],
            "no kustomization.yaml",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let output = certs(&out, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?}: something was written");
    }
}

#[test]
fn a_kustomization_that_is_not_a_component_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let manifests = workspace_root().join("manifests");
    let output = certs(&out, &["--component", manifests.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("is not a kustomize Component"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn a_renewal_keeps_the_previous_ca_in_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Ten days: within the 30 days before the end, so the next run renews.
    assert!(certs(&out, &["--days", "10"]).status.success());
    let first_ca = std::fs::read_to_string(out.join("ca.crt")).unwrap();
    let first_cert = std::fs::read_to_string(out.join("tls.crt")).unwrap();
    assert_eq!(certificates_in(&first_ca), 1);

    let renewed = certs(&out, &[]);
    assert!(renewed.status.success());
    let bundle = std::fs::read_to_string(out.join("ca.crt")).unwrap();
    assert_ne!(
        std::fs::read_to_string(out.join("tls.crt")).unwrap(),
        first_cert
    );
    assert_eq!(certificates_in(&bundle), 2, "new CA and the previous one");
    assert!(bundle.contains(first_ca.trim()), "the previous CA is kept");

    // Still good: kept as it is.
    assert!(certs(&out, &[]).status.success());
    assert_eq!(std::fs::read_to_string(out.join("ca.crt")).unwrap(), bundle);
}

#[test]
fn a_rotation_keeps_the_images_the_overlay_was_made_with() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let made = certs(
        &out,
        &[
            "--webhook-image",
            "registry.example.com/team/webhook:1.2.3",
            "--sidecar-image",
            "registry.example.com/team/sidecar:1.2.3",
        ],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let rotated = certs(&out, &["--rotate"]);
    assert!(rotated.status.success());
    let overlay = std::fs::read_to_string(out.join("kustomization.yaml")).unwrap();
    assert!(
        overlay.contains("newName: registry.example.com/team/webhook"),
        "{overlay}"
    );
    assert!(overlay.contains("newTag: 1.2.3"), "{overlay}");
    let patch = std::fs::read_to_string(out.join("sidecar-image-patch.yaml")).unwrap();
    assert!(
        patch.contains("--sidecar-image=registry.example.com/team/sidecar:1.2.3"),
        "{patch}"
    );
    // A new image given later replaces the kept one.
    assert!(certs(
        &out,
        &["--webhook-image", "registry.example.com/team/webhook:2.0.0"]
    )
    .status
    .success());
    let overlay = std::fs::read_to_string(out.join("kustomization.yaml")).unwrap();
    assert!(overlay.contains("newTag: 2.0.0"), "{overlay}");
}
