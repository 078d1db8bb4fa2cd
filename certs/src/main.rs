//! `pod-reloaded-certs`: makes a CA and a serving certificate for the webhook Service and
//! writes a kustomize overlay over `manifests/` that adds the TLS Secret and puts the CA
//! bundle into the MutatingWebhookConfiguration. `kubectl apply -k <out-dir>` deploys it.

use std::path::{Component, Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use clap::Parser;
use pod_reloaded_contract as contract;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// Make a CA and serving certificate for the pod-reloaded webhook, and a kustomize overlay
/// that deploys them.
#[derive(Parser, Debug)]
#[command(name = "pod-reloaded-certs", version)]
struct Args {
    /// Directory to write ca.crt, tls.crt, tls.key, secret.yaml, ca-bundle-patch.yaml,
    /// kustomization.yaml and images.json (the images the overlay was made with) to.
    #[arg(long, default_value = "certs/out")]
    out_dir: PathBuf,
    /// The kustomize base the overlay builds on.
    #[arg(long, default_value = "manifests")]
    manifests_dir: PathBuf,
    /// Validity of the serving certificate, in days, 1 to 3650 (the CA gets ten times as
    /// long).
    #[arg(long, default_value_t = 365)]
    days: i64,
    /// Extra DNS names for the serving certificate (the Service names are always included).
    #[arg(long = "dns-name")]
    extra_dns_names: Vec<String>,
    /// The webhook's image (`registry/name:tag`), instead of the base's; kept for later
    /// runs into the same --out-dir (a --rotate keeps it).
    #[arg(long)]
    webhook_image: Option<String>,
    /// The injected sidecar's image, instead of the base's (passed as --sidecar-image);
    /// kept for later runs like --webhook-image.
    #[arg(long)]
    sidecar_image: Option<String>,
    /// Make a new CA and serving certificate even if the ones in --out-dir are still good.
    /// The CA bundle keeps the previous CA too (as every renewal does), so the API server
    /// trusts both while the webhook's pods pick up the new certificate.
    #[arg(long)]
    rotate: bool,
}

/// Certificates left in --out-dir by an earlier run.
struct Existing {
    ca_bundle: String,
    cert: String,
    key: String,
    expires: time::OffsetDateTime,
    names: Vec<String>,
}

/// A serving certificate closer than this to its end is renewed.
const RENEW_BEFORE_DAYS: i64 = 30;

impl Existing {
    fn read(dir: &Path) -> Option<Self> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let (ca_bundle, cert, key) = (read("ca.crt")?, read("tls.crt")?, read("tls.key")?);
        let params = CertificateParams::from_ca_cert_pem(&cert).ok()?;
        let names = params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                rcgen::SanType::DnsName(name) => Some(name.to_string()),
                _ => None,
            })
            .collect();
        Some(Self {
            ca_bundle,
            cert,
            key,
            expires: params.not_after,
            names,
        })
    }

    fn still_good_for(&self, names: &[String], now: time::OffsetDateTime) -> bool {
        self.expires > now + time::Duration::days(RENEW_BEFORE_DAYS)
            && names.iter().all(|n| self.names.contains(n))
    }

    /// The CA that signed the current certificate: the first of the bundle.
    fn current_ca(&self) -> Option<&str> {
        let end = "-----END CERTIFICATE-----";
        self.ca_bundle
            .find(end)
            .map(|i| &self.ca_bundle[..i + end.len()])
    }
}

/// Longest validity of a serving certificate (its CA gets ten times as long, which must
/// stay a date certificates can carry).
const MAX_DAYS: i64 = 3650;

/// The images the overlay was last made with, kept in --out-dir so a later run (a
/// renewal, a --rotate) writes the same overlay unless told otherwise.
const IMAGES_FILE: &str = "images.json";

/// Checks every argument before anything is written: a bad one writes nothing.
fn validate(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=MAX_DAYS).contains(&args.days),
        "--days {} is not between 1 and {MAX_DAYS} (a certificate must outlive the day it is made; its CA gets ten times as long)",
        args.days
    );
    for name in &args.extra_dns_names {
        let ip = name.parse::<std::net::IpAddr>().is_ok();
        anyhow::ensure!(
            ip || pod_reloaded_contract::settings::check_dns_subdomain(name).is_ok(),
            "--dns-name {name:?} is neither a DNS name (lowercase letters, digits, '-' and '.') nor an IP address"
        );
    }
    for (flag, image) in [
        ("--webhook-image", &args.webhook_image),
        ("--sidecar-image", &args.sidecar_image),
    ] {
        if let Some(image) = image {
            contract::image::ImageReference::parse(image)
                .map_err(|problem| anyhow::anyhow!("{flag}: {problem}"))?;
        }
    }
    anyhow::ensure!(
        args.manifests_dir.join("kustomization.yaml").is_file(),
        "--manifests-dir {} holds no kustomization.yaml",
        args.manifests_dir.display()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    validate(&args)?;
    // Images not given now are those the overlay was made with last time.
    let kept_images: serde_json::Value = std::fs::read(args.out_dir.join(IMAGES_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    for (image, key) in [
        (&mut args.webhook_image, "webhook"),
        (&mut args.sidecar_image, "sidecar"),
    ] {
        if image.is_none() {
            *image = kept_images[key].as_str().map(str::to_string);
        }
    }
    let service = contract::WEBHOOK_SERVICE;
    let namespace = contract::WEBHOOK_NAMESPACE;
    let mut names = vec![
        contract::webhook_service_dns_name(),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ];
    names.extend(args.extra_dns_names.iter().cloned());

    let now = time::OffsetDateTime::now_utc();
    let out = &args.out_dir;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let existing = Existing::read(out);
    let (ca_pem, cert_pem, key_pem, expires, kept) = match existing {
        Some(existing) if !args.rotate && existing.still_good_for(&names, now) => (
            existing.ca_bundle.clone(),
            existing.cert.clone(),
            existing.key.clone(),
            existing.expires,
            true,
        ),
        previous => {
            let (ca, cert, key, expires) = new_certificates(&names, args.days, now)?;
            // A new CA overlaps the old one (a renewal as much as a --rotate): the previous
            // CA stays in the bundle until the next one, so pods are admitted (and injected)
            // while the webhook's pods still serve the old certificate.
            let bundle = match previous.as_ref().and_then(Existing::current_ca) {
                Some(old) => format!("{ca}{old}\n"),
                None => ca.clone(),
            };
            (bundle, format!("{cert}{ca}"), key, expires, false)
        }
    };
    write(out, "ca.crt", &ca_pem)?;
    write(out, "tls.crt", &cert_pem)?;
    write_private(out, "tls.key", &key_pem)?;
    write_private(
        out,
        "secret.yaml",
        &secret_yaml(&cert_pem, &key_pem, &ca_pem),
    )?;
    let base = relative_path(out, &args.manifests_dir)?;
    write(out, CA_BUNDLE_PATCH, &ca_bundle_patch_yaml(&ca_pem))?;
    write(
        out,
        "kustomization.yaml",
        &overlay_yaml(
            &base,
            args.webhook_image.as_deref(),
            args.sidecar_image.is_some(),
        ),
    )?;
    if let Some(image) = &args.sidecar_image {
        write(out, SIDECAR_IMAGE_PATCH, &sidecar_image_patch_yaml(image))?;
    }
    let images = serde_json::json!({"webhook": args.webhook_image, "sidecar": args.sidecar_image});
    write(out, IMAGES_FILE, &images.to_string())?;
    let expiry = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    println!(
        "{} the CA and serving certificate for {} in {}; the serving certificate expires {expiry} \
         (renew before then with --rotate: the CA bundle keeps the old CA meanwhile)\ndeploy with: kubectl apply -k {}",
        if kept { "kept" } else { "wrote" },
        names.join(", "),
        out.display(),
        out.display()
    );
    Ok(())
}

/// A new CA and serving certificate for `names`: (CA PEM, certificate PEM, key PEM, end).
fn new_certificates(
    names: &[String],
    days: i64,
    now: time::OffsetDateTime,
) -> anyhow::Result<(String, String, String, time::OffsetDateTime)> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pod-reloaded webhook CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = now + time::Duration::days(days * 10);
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;

    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, contract::webhook_service_dns_name());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    let key = KeyPair::generate()?;
    let expires = params.not_after;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem(), expires))
}

const CA_BUNDLE_PATCH: &str = "ca-bundle-patch.yaml";
const SIDECAR_IMAGE_PATCH: &str = "sidecar-image-patch.yaml";
/// The webhook's image as the base names it.
const BASE_WEBHOOK_IMAGE: &str = "pod-reloaded/webhook";

fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Files with the private key: readable by their owner only (0600), whatever the umask.
fn write_private(dir: &Path, name: &str, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode on open: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(contents.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn secret_yaml(cert: &str, key: &str, ca: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {crt}\n  tls.key: {key}\n  ca.crt: {ca}\n",
        name = contract::WEBHOOK_TLS_SECRET,
        ns = contract::WEBHOOK_NAMESPACE,
        crt = b64(cert),
        key = b64(key),
        ca = b64(ca),
    )
}

/// kustomize v5's spellings (`resources`, `patches`): no deprecation warnings.
fn overlay_yaml(base: &str, webhook_image: Option<&str>, sidecar_image: bool) -> String {
    let mut yaml = format!(
        "# Written by pod-reloaded-certs; deploy with kubectl apply -k on this directory.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {base}\n  - secret.yaml\n\
         patches:\n  - target:\n      group: admissionregistration.k8s.io\n      version: v1\n\
         \x20     kind: MutatingWebhookConfiguration\n      name: {config}\n    path: {CA_BUNDLE_PATCH}\n",
        config = contract::WEBHOOK_CONFIGURATION,
    );
    if sidecar_image {
        yaml.push_str(&format!(
            "  - target:\n      group: apps\n      version: v1\n      kind: Deployment\n      name: {service}\n    path: {SIDECAR_IMAGE_PATCH}\n",
            service = contract::WEBHOOK_SERVICE,
        ));
    }
    if let Some(image) = webhook_image {
        // `name[:tag]`: the tag is whatever follows the last `:` after the last `/`.
        let slash = image.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match image[slash..].rfind(':') {
            Some(i) => (&image[..slash + i], Some(&image[slash + i + 1..])),
            None => (image, None),
        };
        yaml.push_str(&format!(
            "images:\n  - name: {BASE_WEBHOOK_IMAGE}\n    newName: {name}\n"
        ));
        if let Some(tag) = tag {
            yaml.push_str(&format!("    newTag: \"{tag}\"\n"));
        }
    }
    yaml
}

/// A flag beats the env fallback: the sidecar image as the webhook's last argument.
fn sidecar_image_patch_yaml(image: &str) -> String {
    format!("- op: add\n  path: /spec/template/spec/containers/0/args/-\n  value: --sidecar-image={image}\n")
}

/// The JSON patch that puts the CA bundle into both webhooks of the configuration.
fn ca_bundle_patch_yaml(ca: &str) -> String {
    let bundle = b64(ca);
    format!(
        "- op: add\n  path: /webhooks/0/clientConfig/caBundle\n  value: {bundle}\n\
         - op: add\n  path: /webhooks/1/clientConfig/caBundle\n  value: {bundle}\n"
    )
}

/// `to` relative to `from`, both resolved against the current directory.
fn relative_path(from: &Path, to: &Path) -> anyhow::Result<String> {
    let from =
        std::fs::canonicalize(from).with_context(|| format!("resolving {}", from.display()))?;
    let to = std::fs::canonicalize(to)
        .with_context(|| format!("resolving --manifests-dir {}", to.display()))?;
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    Ok(if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    })
}
