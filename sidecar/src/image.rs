//! Image references and running digests, read the way the container runtime writes them.

use oci_spec::distribution::Reference;
use pod_reloaded_contract::is_sha256_digest;

/// Docker Hub's API host; `docker.io` is only the name in references.
const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";

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

/// How a container's image is referenced.
#[derive(Debug, PartialEq, Eq)]
pub enum ImageSpec {
    /// A tag to watch (a tag with a digest pins the digest and is not watched).
    Tagged(WatchedImage),
    /// Pinned by digest: nothing to watch.
    Pinned(String),
}

/// Parses `nginx`, `host:5000/a/b:tag`, `repo@sha256:…` like the runtime does:
/// no registry means Docker Hub, a one-part Hub name lives under `library/`, no tag is
/// `latest`.
pub fn parse_image(image: &str) -> Result<ImageSpec, String> {
    let reference: Reference = image
        .parse()
        .map_err(|e| format!("{image:?} is not a valid image reference: {e}"))?;
    if let Some(digest) = reference.digest() {
        return Ok(ImageSpec::Pinned(digest.to_string()));
    }
    let registry = match reference.registry() {
        "docker.io" | "index.docker.io" => DOCKER_HUB_REGISTRY.to_string(),
        other => other.to_string(),
    };
    Ok(ImageSpec::Tagged(WatchedImage {
        registry,
        repository: reference.repository().to_string(),
        tag: reference.tag().unwrap_or("latest").to_string(),
    }))
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
        match parse_image(image).unwrap() {
            ImageSpec::Tagged(w) => w,
            other => panic!("{image}: {other:?}"),
        }
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
    }

    #[test]
    fn digests_pin_even_with_a_tag() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse_image(&format!("nginx@{digest}")).unwrap(),
            ImageSpec::Pinned(digest.clone())
        );
        assert_eq!(
            parse_image(&format!("nginx:1@{digest}")).unwrap(),
            ImageSpec::Pinned(digest)
        );
    }

    #[test]
    fn bad_references_are_errors() {
        for bad in ["", "library/UPPER", "nginx:", "a b", "nginx@sha256:short"] {
            assert!(parse_image(bad).is_err(), "{bad:?}");
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
