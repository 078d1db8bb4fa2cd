//! Image references and running digests, read the way the container runtime writes them.
//! Both binaries decide with these: the webhook which containers to watch (and pin), the
//! sidecar what to ask the registry.

use crate::is_sha256_digest;

/// Docker Hub's API host; `docker.io` is only the name in references.
pub const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";

/// The names Docker Hub answers to in references and in docker config keys.
const DOCKER_HUB_ALIASES: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// True when `host` (any case) is one of Docker Hub's names.
pub fn is_docker_hub(host: &str) -> bool {
    DOCKER_HUB_ALIASES
        .iter()
        .any(|alias| alias.eq_ignore_ascii_case(host))
}

/// A parsed image reference, normalised: registry host (Docker Hub as
/// `registry-1.docker.io`), repository path (`library/` added for one-part Hub names),
/// and the tag and digest as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageReference {
    /// Parses `nginx`, `host:5000/a/b:tag`, `repo@sha256:…`, `repo:tag@sha256:…`.
    pub fn parse(image: &str) -> Result<Self, String> {
        parse_reference(image)
    }

    /// Pinned by digest: the runtime pulls the digest and ignores any tag.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }

    /// The tag to ask the registry about (`latest` when none is written).
    pub fn watched_tag(&self) -> WatchedImage {
        WatchedImage {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: self.tag.clone().unwrap_or_else(|| "latest".to_string()),
        }
    }
}

/// What to ask the registry about: a repository and a tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedImage {
    /// Registry host (and port) the image comes from, e.g. `registry-1.docker.io`.
    pub registry: String,
    /// Repository path, e.g. `library/nginx`.
    pub repository: String,
    pub tag: String,
}

impl std::fmt::Display for WatchedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repository, self.tag)
    }
}

/// Parses like the runtime does: no registry means Docker Hub, a one-part Hub name lives
/// under `library/`. The grammar is distribution's `reference` package (ASCII, as in Go).
///
/// Hand-written: the crates that parse references compile distribution's regular
/// expression with Unicode `\w{0,127}`, which costs ~17 MB at first use and keeps ~5 MB,
/// more than half the sidecar's memory budget (measured with heaptrack).
fn parse_reference(image: &str) -> Result<ImageReference, String> {
    let invalid = |why: &str| format!("{image:?} is not a valid image reference: {why}");
    let (name_and_tag, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    // A `:` after the last `/` starts the tag; one before it is the registry's port.
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_and_tag[..last_slash + i],
            Some(&name_and_tag[last_slash + i + 1..]),
        ),
        None => (name_and_tag, None),
    };
    if let Some(tag) = tag {
        if !is_tag(tag) {
            return Err(invalid(
                "tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
    }
    let (domain, path) = split_domain(name);
    if let Some(domain) = domain {
        if !is_domain(domain) {
            return Err(invalid("registry host is not host[:port]"));
        }
    }
    if path.is_empty() || !path.split('/').all(is_path_component) {
        return Err(invalid(
            "repository must be lowercase [a-z0-9] components separated by /, ., _, __ or -",
        ));
    }
    // distribution/reference >= v0.6.0 limits the path, not the registry host with it.
    if path.len() > NAME_MAX_LENGTH {
        return Err(invalid("repository path is longer than 255 characters"));
    }
    // A bare 64-hex name would read as an image ID (distribution refuses it).
    if domain.is_none() && tag.is_none() && digest.is_none() && is_hex_of(path, 64) {
        return Err(invalid("a 64-hex name is an image ID, not a repository"));
    }
    if let Some(digest) = digest {
        if !is_digest(digest) {
            return Err(invalid(
                "digest must be sha256:<64 hex>, sha384:<96 hex> or sha512:<128 hex>, lowercase",
            ));
        }
    }
    let registry = match domain {
        None => DOCKER_HUB_REGISTRY,
        Some(host) if is_docker_hub(host) => DOCKER_HUB_REGISTRY,
        Some(other) => other,
    };
    let repository = if registry == DOCKER_HUB_REGISTRY && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    Ok(ImageReference {
        registry: registry.to_string(),
        repository,
        tag: tag.map(str::to_string),
        digest: digest.map(str::to_string),
    })
}

/// Longest repository path distribution accepts (the registry host not counted).
const NAME_MAX_LENGTH: usize = 255;

/// The first component is a registry when it looks like a host: it has a `.` or a `:`,
/// is `localhost`, or has uppercase letters (which repositories cannot have).
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.find(']') {
        // `[IPv6]` or `[IPv6]:port`
        Some(end) => match &domain[end + 1..] {
            "" => (&domain[..=end], None),
            rest => (&domain[..=end], Some(rest.strip_prefix(':').unwrap_or(""))),
        },
        None => match domain.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        },
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = if let Some(ipv6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !ipv6.is_empty() && ipv6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
    } else {
        host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
    };
    port_ok && host_ok
}

/// `[a-z0-9]+` runs joined by one separator: `.`, `_`, `__` or any number of `-`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(|&b| alnum(b)) || !bytes.last().is_some_and(|&b| alnum(b)) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
}

fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    tag.len() <= 128
        && tag.bytes().next().is_some_and(word)
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// A digest of an algorithm the runtime can verify, with that algorithm's length of
/// lowercase hex (go-digest's rule): others are refused, not pulled.
fn is_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    is_hex_of(hex, length)
}

fn is_hex_of(text: &str, length: usize) -> bool {
    text.len() == length
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The digest a container runs, from `status.containerStatuses[].imageID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunningDigest {
    /// A manifest or index digest (`docker-pullable://repo@sha256:…`, `repo@sha256:…`).
    Manifest(String),
    /// A bare `sha256:…`: the image ID, i.e. the config digest.
    Config(String),
}

impl RunningDigest {
    pub fn digest(&self) -> &str {
        match self {
            Self::Manifest(d) | Self::Config(d) => d,
        }
    }
}

pub fn parse_image_id(image_id: &str) -> Result<RunningDigest, String> {
    let without_scheme = image_id
        .split_once("://")
        .map_or(image_id, |(_, rest)| rest);
    let (digest, is_bare) = match without_scheme.rsplit_once('@') {
        Some((_, digest)) => (digest, false),
        None => (without_scheme, true),
    };
    if !is_sha256_digest(digest) {
        return Err(format!("imageID {image_id:?} has no sha256 digest"));
    }
    Ok(if is_bare {
        RunningDigest::Config(digest.to_string())
    } else {
        RunningDigest::Manifest(digest.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(image: &str) -> WatchedImage {
        let reference = ImageReference::parse(image).unwrap();
        assert!(!reference.is_pinned(), "{image}");
        reference.watched_tag()
    }

    #[test]
    fn references_are_normalized_like_the_runtime() {
        let hub = |repo: &str, tag: &str| WatchedImage {
            registry: "registry-1.docker.io".into(),
            repository: repo.into(),
            tag: tag.into(),
        };
        assert_eq!(tagged("nginx"), hub("library/nginx", "latest"));
        assert_eq!(tagged("nginx:1.27"), hub("library/nginx", "1.27"));
        assert_eq!(
            tagged("docker.io/library/nginx:latest"),
            hub("library/nginx", "latest")
        );
        assert_eq!(
            tagged("index.docker.io/bitnami/redis"),
            hub("bitnami/redis", "latest")
        );
        assert_eq!(
            tagged("registry.hub.docker.com/library/nginx:1"),
            hub("library/nginx", "1")
        );
        assert_eq!(
            tagged("registry.hub.docker.com/nginx"),
            hub("library/nginx", "latest")
        );
        assert_eq!(
            tagged("prom/statsd-exporter:v1"),
            hub("prom/statsd-exporter", "v1")
        );
        assert_eq!(
            tagged("registry.example.com:5000/team/api:main"),
            WatchedImage {
                registry: "registry.example.com:5000".into(),
                repository: "team/api".into(),
                tag: "main".into()
            }
        );
        assert_eq!(
            tagged("localhost:5000/app").to_string(),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            tagged("127.0.0.1:5000/demo/app:latest").registry,
            "127.0.0.1:5000"
        );
        assert_eq!(
            tagged("[::1]:5000/demo/app:v2").to_string(),
            "[::1]:5000/demo/app:v2"
        );
        assert_eq!(tagged("[fe80::1]/app").registry, "[fe80::1]");
        assert_eq!(
            tagged("ghcr.io/org/team/svc-a__b.c---d:1.0_rc-2").to_string(),
            "ghcr.io/org/team/svc-a__b.c---d:1.0_rc-2"
        );
        // An uppercase first component can only be a registry host.
        assert_eq!(tagged("Registry/app").registry, "Registry");
        assert_eq!(tagged("team/app").repository, "team/app");
        assert_eq!(tagged(&format!("app:{}", "t".repeat(128))).tag.len(), 128);
        assert!(ImageReference::parse(&format!("app:{}", "t".repeat(129))).is_err());
        assert!(ImageReference::parse(&format!("a/{}", "b".repeat(255))).is_err());
    }

    #[test]
    fn digests_pin_even_with_a_tag() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for image in [format!("nginx@{digest}"), format!("nginx:1@{digest}")] {
            let reference = ImageReference::parse(&image).unwrap();
            assert!(reference.is_pinned(), "{image}");
            assert_eq!(reference.digest.as_deref(), Some(digest.as_str()));
        }
    }

    #[test]
    fn a_reference_keeps_its_tag_and_digest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let reference = ImageReference::parse(&format!("nginx:1.27@{digest}")).unwrap();
        assert!(reference.is_pinned());
        assert_eq!(reference.tag.as_deref(), Some("1.27"));
        assert_eq!(
            reference.watched_tag().to_string(),
            "registry-1.docker.io/library/nginx:1.27"
        );
    }

    #[test]
    fn bad_references_are_errors() {
        for bad in [
            "",
            "library/UPPER",
            "nginx:",
            "a b",
            "nginx@sha256:short",
            "nginx:-dash",
            "nginx:ünicode",
            "team//app",
            "team/app_",
            "team/a...b",
            "host:port/app",
            "-host.io/app",
            "nginx@sha256",
            "[::1]x/app",
            "[]:5000/app",
            "host:/app",
        ] {
            assert!(ImageReference::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_ids_in_every_runtime_form() {
        let digest = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            parse_image_id(&format!("docker-pullable://nginx@{digest}")),
            Ok(RunningDigest::Manifest(digest.clone()))
        );
        assert_eq!(
            parse_image_id(&format!("docker.io/library/nginx@{digest}")),
            Ok(RunningDigest::Manifest(digest.clone()))
        );
        assert_eq!(
            parse_image_id(&digest),
            Ok(RunningDigest::Config(digest.clone()))
        );
        assert_eq!(
            parse_image_id(&format!("docker://{digest}")),
            Ok(RunningDigest::Config(digest))
        );
        assert!(parse_image_id("").is_err());
        assert!(parse_image_id("nginx@sha256:xyz").is_err());
        assert!(parse_image_id(&format!("sha512:{}", "c".repeat(128))).is_err());
    }
}
