//! `pod-reloaded-certs`: makes a CA and a serving certificate for the webhook Service and
//! writes a kustomize overlay over `manifests/` that adds the TLS Secret and puts the CA
//! bundle into the MutatingWebhookConfiguration (or, with `--cert-manager`, leaves both to
//! cert-manager), with the images and optional components asked for. `kubectl apply -k
//! <out-dir>` deploys it.

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
    /// kustomization.yaml and overlay.json (the images and components the overlay was made
    /// with) to.
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
    /// A kustomize Component to add to the install (`examples/servicemonitor`); repeat for
    /// more. Kept for later runs, like the images.
    #[arg(long = "component")]
    components: Vec<PathBuf>,
    /// Let cert-manager issue and rotate the serving certificate and inject the CA bundle,
    /// with this Component (`certs/cert-manager`): no CA, certificate or Secret is made
    /// here. Kept for later runs.
    #[arg(long)]
    cert_manager: Option<PathBuf>,
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

/// What the overlay was last made with (images, components, cert-manager), kept in
/// --out-dir so a later run (a renewal, a --rotate) writes the same overlay unless told
/// otherwise.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Kept {
    webhook: Option<String>,
    sidecar: Option<String>,
    #[serde(default)]
    components: Vec<PathBuf>,
    #[serde(default)]
    cert_manager: Option<PathBuf>,
}
const KEPT_FILE: &str = "overlay.json";
/// What earlier versions kept (the images only).
const KEPT_FILE_BEFORE: &str = "images.json";

impl Kept {
    fn read(dir: &Path) -> Self {
        [KEPT_FILE, KEPT_FILE_BEFORE]
            .iter()
            .find_map(|name| std::fs::read(dir.join(name)).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }
}

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
    for (flag, dir) in args
        .components
        .iter()
        .map(|dir| ("--component", dir))
        .chain(args.cert_manager.iter().map(|dir| ("--cert-manager", dir)))
    {
        let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml"))
            .with_context(|| format!("{flag} {}: no kustomization.yaml", dir.display()))?;
        let kind: serde_yaml::Value = serde_yaml::from_str(&kustomization)
            .with_context(|| format!("{flag} {}: kustomization.yaml", dir.display()))?;
        anyhow::ensure!(
            kind["kind"] == "Component",
            "{flag} {} is not a kustomize Component (kind: Component)",
            dir.display()
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // What is not given now is what the overlay was made with last time.
    let kept = Kept::read(&args.out_dir);
    args.webhook_image = args.webhook_image.or(kept.webhook);
    args.sidecar_image = args.sidecar_image.or(kept.sidecar);
    if args.components.is_empty() {
        args.components = kept.components;
    }
    args.cert_manager = args.cert_manager.or(kept.cert_manager);
    // Checked once everything is known (a kept path may have gone since), before anything
    // is written.
    validate(&args)?;
    // Kept as absolute paths: a later run may start elsewhere.
    for dir in args.components.iter_mut().chain(args.cert_manager.as_mut()) {
        *dir =
            std::fs::canonicalize(&*dir).with_context(|| format!("resolving {}", dir.display()))?;
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

    let out = &args.out_dir;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut overlay = Kustomization {
        api_version: "kustomize.config.k8s.io/v1beta1",
        kind: "Kustomization",
        resources: vec![relative_path(out, &args.manifests_dir)?],
        components: Vec::new(),
        patches: Vec::new(),
        images: Vec::new(),
    };
    let summary = match &args.cert_manager {
        Some(component) => {
            overlay.components.push(relative_path(out, component)?);
            "cert-manager issues, renews and trusts the serving certificate".to_string()
        }
        None => {
            let summary = write_certificates(&args, &names)?;
            overlay.resources.push(SECRET_FILE.to_string());
            overlay.patches.push(Patch::new(
                "admissionregistration.k8s.io",
                "MutatingWebhookConfiguration",
                contract::WEBHOOK_CONFIGURATION,
                CA_BUNDLE_PATCH,
            ));
            summary
        }
    };
    for component in &args.components {
        overlay.components.push(relative_path(out, component)?);
    }
    if let Some(image) = &args.sidecar_image {
        // A flag beats the env fallback: the sidecar image as the webhook's last argument.
        let patch = serde_json::json!([{"op": "add", "path": "/spec/template/spec/containers/0/args/-",
            "value": format!("--sidecar-image={image}")}]);
        write(out, SIDECAR_IMAGE_PATCH, &serde_yaml::to_string(&patch)?)?;
        overlay.patches.push(Patch::new(
            "apps",
            "Deployment",
            contract::WEBHOOK_SERVICE,
            SIDECAR_IMAGE_PATCH,
        ));
    }
    if let Some(image) = &args.webhook_image {
        // `name[:tag]`: the tag is whatever follows the last `:` after the last `/`.
        let slash = image.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match image[slash..].rfind(':') {
            Some(i) => (&image[..slash + i], Some(&image[slash + i + 1..])),
            None => (image.as_str(), None),
        };
        overlay.images.push(Image {
            name: BASE_WEBHOOK_IMAGE,
            new_name: name.to_string(),
            new_tag: tag.map(str::to_string),
        });
    }
    write(
        out,
        "kustomization.yaml",
        &format!(
            "# Written by pod-reloaded-certs; deploy with kubectl apply -k on this directory.\n{}",
            serde_yaml::to_string(&overlay)?
        ),
    )?;
    let kept = Kept {
        webhook: args.webhook_image.clone(),
        sidecar: args.sidecar_image.clone(),
        components: args.components.clone(),
        cert_manager: args.cert_manager.clone(),
    };
    write(out, KEPT_FILE, &serde_json::to_string(&kept)?)?;
    println!("{summary}\ndeploy with: kubectl apply -k {}", out.display());
    Ok(())
}

/// The CA, serving certificate, Secret and CA bundle patch in --out-dir, kept while still
/// good (else renewed with the previous CA kept in the bundle); says what it did.
fn write_certificates(args: &Args, names: &[String]) -> anyhow::Result<String> {
    let now = time::OffsetDateTime::now_utc();
    let out = &args.out_dir;
    let existing = Existing::read(out);
    let (ca_pem, cert_pem, key_pem, expires, kept) = match existing {
        Some(existing) if !args.rotate && existing.still_good_for(names, now) => (
            existing.ca_bundle.clone(),
            existing.cert.clone(),
            existing.key.clone(),
            existing.expires,
            true,
        ),
        previous => {
            let (ca, cert, key, expires) = new_certificates(names, args.days, now)?;
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
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": contract::WEBHOOK_TLS_SECRET, "namespace": contract::WEBHOOK_NAMESPACE},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(&cert_pem), "tls.key": b64(&key_pem), "ca.crt": b64(&ca_pem)},
    });
    write_private(out, SECRET_FILE, &serde_yaml::to_string(&secret)?)?;
    // Both webhooks of the configuration trust the bundle.
    let patch: Vec<serde_json::Value> = (0..2)
        .map(|i| serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": b64(&ca_pem)}))
        .collect();
    write(out, CA_BUNDLE_PATCH, &serde_yaml::to_string(&patch)?)?;
    let expiry = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Ok(format!(
        "{} the CA and serving certificate for {} in {}; the serving certificate expires {expiry} \
         (renew before then with --rotate: the CA bundle keeps the old CA meanwhile)",
        if kept { "kept" } else { "wrote" },
        names.join(", "),
        out.display(),
    ))
}

/// The overlay, in kustomize v5's spellings (`resources`, `patches`): no deprecation
/// warnings.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Kustomization {
    api_version: &'static str,
    kind: &'static str,
    resources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    components: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    patches: Vec<Patch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<Image>,
}

#[derive(serde::Serialize)]
struct Patch {
    target: serde_json::Value,
    path: &'static str,
}

impl Patch {
    fn new(group: &str, kind: &str, name: &str, path: &'static str) -> Self {
        let target =
            serde_json::json!({"group": group, "version": "v1", "kind": kind, "name": name});
        Self { target, path }
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Image {
    name: &'static str,
    new_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_tag: Option<String>,
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
const SECRET_FILE: &str = "secret.yaml";
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
