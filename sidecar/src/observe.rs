//! Observe: what the pod says about each watched container, its image reference and the
//! digest it runs. Pure: the pod comes in, plain facts go out.

use k8s_openapi::api::core::v1::Pod;
use pod_reloaded_contract::image::{parse_image_id, ImageReference, RunningDigest, WatchedImage};

/// One watched container as the pod shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub container: String,
    pub state: ContainerState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// A tag to check, and the digest the container runs.
    Running {
        image: WatchedImage,
        running: RunningDigest,
    },
    /// Not started yet (no `imageID`): a native sidecar starts before the app. Not an
    /// error; looked at again next round.
    NotRunningYet { image: WatchedImage },
    /// Pinned by digest: nothing to watch.
    Pinned { image: String, digest: String },
    /// No such container in the pod (a wrong `watch-containers` list).
    Missing,
    /// The image or the `imageID` cannot be read.
    Unreadable { problem: String },
}

/// The watched containers of `pod`, in the order they were asked for. Native sidecars and
/// init containers are looked up too, so a watched init container is found.
pub fn observe(pod: &Pod, watched: &[String]) -> Vec<Observation> {
    watched
        .iter()
        .map(|container| Observation {
            container: container.clone(),
            state: container_state(pod, container),
        })
        .collect()
}

fn container_state(pod: &Pod, name: &str) -> ContainerState {
    let spec = pod.spec.as_ref().and_then(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .find(|c| c.name == name)
    });
    let Some(image) = spec.and_then(|c| c.image.as_deref()) else {
        return ContainerState::Missing;
    };
    // A container the sidecar was told to watch with `name:tag@digest` was pinned by the
    // webhook to what its restart rolled out: the tag is still what is watched. Only a
    // digest without a tag leaves nothing to watch.
    let image = match ImageReference::parse(image) {
        Ok(reference) => match (&reference.tag, &reference.digest) {
            (None, Some(digest)) => {
                return ContainerState::Pinned {
                    image: image.to_string(),
                    digest: digest.clone(),
                }
            }
            _ => reference.watched_tag(),
        },
        Err(problem) => return ContainerState::Unreadable { problem },
    };
    let status = pod.status.as_ref().and_then(|s| {
        s.container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
            .find(|s| s.name == name)
    });
    match status
        .map(|s| s.image_id.as_str())
        .filter(|id| !id.is_empty())
    {
        None => ContainerState::NotRunningYet { image },
        Some(image_id) => match parse_image_id(image_id) {
            Ok(running) => ContainerState::Running { image, running },
            Err(problem) => ContainerState::Unreadable { problem },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use pod_reloaded_test_support::digest;

    fn pod(statuses: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "web", "image": "nginx:1.27"},
                {"name": "pinned", "image": format!("redis@{}", digest('b'))},
                {"name": "bad", "image": "Not An Image"}
            ]},
            "status": {"containerStatuses": statuses}
        }))
        .unwrap()
    }

    fn state_of(pod: &Pod, container: &str) -> ContainerState {
        observe(pod, &[container.to_string()]).remove(0).state
    }

    #[test]
    fn a_running_container_gives_its_tag_and_digest() {
        let pod = pod(
            json!([{"name": "web", "image": "nginx:1.27", "imageID": format!("docker.io/library/nginx@{}", digest('a')), "ready": true, "restartCount": 0}]),
        );
        let ContainerState::Running { image, running } = state_of(&pod, "web") else {
            panic!("running expected");
        };
        assert_eq!(image.to_string(), "registry-1.docker.io/library/nginx:1.27");
        assert_eq!(running, RunningDigest::Manifest(digest('a')));
    }

    #[test]
    fn no_image_id_yet_is_not_running_yet_not_an_error() {
        let pod = pod(
            json!([{"name": "web", "image": "nginx:1.27", "imageID": "", "ready": false, "restartCount": 0}]),
        );
        assert!(matches!(
            state_of(&pod, "web"),
            ContainerState::NotRunningYet { .. }
        ));
        let no_status = self::pod(json!([]));
        assert!(matches!(
            state_of(&no_status, "web"),
            ContainerState::NotRunningYet { .. }
        ));
    }

    #[test]
    fn a_tag_pinned_by_the_webhook_is_still_watched_by_its_tag() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "web", "image": format!("nginx:latest@{}", digest('a'))}]},
            "status": {"containerStatuses": [{"name": "web", "image": "nginx", "imageID": format!("docker.io/library/nginx@{}", digest('a')), "ready": true, "restartCount": 0}]}
        }))
        .unwrap();
        let ContainerState::Running { image, running } = state_of(&pod, "web") else {
            panic!("watched expected");
        };
        assert_eq!(image.tag, "latest");
        assert_eq!(running, RunningDigest::Manifest(digest('a')));
    }

    #[test]
    fn pinned_missing_and_unreadable() {
        let pod = pod(
            json!([{"name": "web", "image": "nginx", "imageID": "garbage", "ready": true, "restartCount": 0}]),
        );
        assert!(matches!(
            state_of(&pod, "pinned"),
            ContainerState::Pinned { .. }
        ));
        assert_eq!(state_of(&pod, "nope"), ContainerState::Missing);
        assert!(matches!(
            state_of(&pod, "bad"),
            ContainerState::Unreadable { .. }
        ));
        assert!(matches!(
            state_of(&pod, "web"),
            ContainerState::Unreadable { .. }
        ));
    }
}
