//! The parts of a Pod the injection rules read, and only those.
//!
//! An admission request carries the whole pod (probes, env, resources, mounts of every
//! container). Parsing all of it into k8s-openapi's `Pod` was the largest cost of an
//! admission; the fields below are what `rules` and `patch` look at, and the rest of the
//! object is skipped unparsed. The field names and types are the API's, so a pod the API
//! server sends always fits.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;

use k8s_openapi::api::core::v1::{LocalObjectReference, PodOS};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Clone, Debug, Default, Serialize)]
pub struct PodView {
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<PodSpecView>,
}

impl<'de> Deserialize<'de> for PodView {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            #[serde(default, deserialize_with = "objects_only::option")]
            metadata: Option<MetadataView>,
            #[serde(default, deserialize_with = "objects_only::option")]
            spec: Option<PodSpecView>,
        }
        let Object(Fields { metadata, spec }) = Object::deserialize(deserializer)?;
        Ok(Self {
            metadata: metadata.unwrap_or_default().into_object_meta(),
            spec,
        })
    }
}

/// The metadata the rules read, with the API's types; the rest (`managedFields`, the
/// timestamps, ...) is skipped unparsed. Kept as an `ObjectMeta`, which kube's admission
/// types need.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataView {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    generate_name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    owner_references: Option<Vec<OwnerReference>>,
}

impl MetadataView {
    fn into_object_meta(self) -> ObjectMeta {
        ObjectMeta {
            name: self.name,
            generate_name: self.generate_name,
            namespace: self.namespace,
            labels: self.labels,
            annotations: self.annotations,
            owner_references: self.owner_references,
            ..ObjectMeta::default()
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView {
    #[serde(default, deserialize_with = "objects_only::vec")]
    pub containers: Vec<ContainerView>,
    #[serde(
        default,
        deserialize_with = "objects_only::option_vec",
        skip_serializing_if = "Option::is_none"
    )]
    pub init_containers: Option<Vec<ContainerView>>,
    #[serde(
        default,
        deserialize_with = "objects_only::option_vec",
        skip_serializing_if = "Option::is_none"
    )]
    pub volumes: Option<Vec<VolumeView>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<PodOS>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    /// Defaulted when missing, as k8s-openapi's `Container` does.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Only the names: a container with `IMAGE_CHECKER_WATCH_CONTAINER` is an old checker.
    #[serde(
        default,
        deserialize_with = "objects_only::option_vec",
        skip_serializing
    )]
    pub env: Option<Vec<EnvView>>,
}

/// An env var as far as the rules read it: its name (its value only checked to be what
/// `EnvVar` accepts, so the view refuses what `Pod` refuses).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvView {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub value_from: Option<serde::de::IgnoredAny>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct VolumeView {
    #[serde(default)]
    pub name: String,
    /// Whether it is a projected volume (the token volume); its sources are not read.
    #[serde(default, skip_serializing)]
    pub projected: Option<serde::de::IgnoredAny>,
}

/// serde's derived structs also accept an array, read as the fields in order; the API's
/// types (and so the API server) accept only an object. Every struct of the view is read
/// through `Object`, so a pod that `Pod` refuses is refused here too.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(Object)
    }
}

mod objects_only {
    use super::Object;
    use serde::{Deserialize, Deserializer};

    pub fn option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        Ok(Option::<Object<T>>::deserialize(deserializer)?.map(|o| o.0))
    }

    pub fn vec<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<T>, D::Error> {
        Ok(Vec::<Object<T>>::deserialize(deserializer)?
            .into_iter()
            .map(|o| o.0)
            .collect())
    }

    pub fn option_vec<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<T>>, D::Error> {
        Ok(Option::<Vec<Object<T>>>::deserialize(deserializer)?
            .map(|v| v.into_iter().map(|o| o.0).collect()))
    }
}

/// A Pod for kube's admission types (`AdmissionReview<PodView>`).
impl kube::Resource for PodView {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    #[test]
    fn reads_what_the_rules_read_from_a_whole_pod_and_skips_the_rest() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-", "namespace": "shop", "labels": {"a": "b"},
                         "annotations": {"x": "y"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web-1", "uid": "u", "controller": true}]},
            "spec": {
                "containers": [{"name": "app", "image": "nginx:latest", "imagePullPolicy": "IfNotPresent",
                                "env": [{"name": "A", "value": "1"}],
                                "resources": {"limits": {"memory": "1Gi"}},
                                "livenessProbe": {"httpGet": {"path": "/", "port": 80}}}],
                "initContainers": [{"name": "init", "image": "busybox"}],
                "volumes": [{"name": "data", "emptyDir": {}},
                            {"name": "kube-api-access-x", "projected": {"sources": []}}],
                "imagePullSecrets": [{"name": "regcred"}],
                "os": {"name": "linux"},
                "serviceAccountName": "web",
                "nodeSelector": {"disk": "ssd"}
            }
        });
        let view: PodView = serde_json::from_value(pod.clone()).unwrap();
        let whole: Pod = serde_json::from_value(pod.clone()).unwrap();
        assert_eq!(view.metadata, whole.metadata);
        // What the rules do not read of the metadata is skipped; the rest reads the same.
        let mut with_more = pod;
        with_more["metadata"]["managedFields"] = json!([{"manager": "kube-controller-manager",
            "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]);
        with_more["metadata"]["creationTimestamp"] = json!(null);
        with_more["metadata"]["uid"] = json!("0a1b");
        let more: PodView = serde_json::from_value(with_more.clone()).unwrap();
        let whole: Pod = serde_json::from_value(with_more).unwrap();
        assert!(whole.metadata.managed_fields.is_some() && whole.metadata.uid.is_some());
        assert_eq!(more.metadata, view.metadata);
        let (spec, whole_spec) = (view.spec.unwrap(), whole.spec.unwrap());
        assert_eq!(spec.containers.len(), 1);
        assert_eq!(spec.containers[0].name, whole_spec.containers[0].name);
        assert_eq!(spec.containers[0].image, whole_spec.containers[0].image);
        assert_eq!(
            spec.containers[0].image_pull_policy,
            whole_spec.containers[0].image_pull_policy
        );
        assert_eq!(spec.init_containers.unwrap()[0].name, "init");
        let volumes = spec.volumes.unwrap();
        assert_eq!(volumes[0].name, "data");
        assert!(volumes[0].projected.is_none());
        assert!(volumes[1].projected.is_some());
        assert_eq!(spec.image_pull_secrets, whole_spec.image_pull_secrets);
        assert_eq!(spec.os, whole_spec.os);
        assert_eq!(spec.service_account_name.as_deref(), Some("web"));
        assert_eq!(spec.service_account, None);
    }

    #[test]
    fn read_fields_are_refused_and_accepted_as_the_api_types_do() {
        for (spec, valid) in [
            (json!({"containers": "nope"}), false),
            (json!({"containers": [{"name": 3}]}), false),
            (json!({"volumes": "nope"}), false),
            (json!({"serviceAccountName": ["a"]}), false),
            (json!({"os": {"name": 1}}), false),
            // A struct as an array: serde's derive would read it by position.
            (json!({"containers": [["app", "nginx:latest"]]}), false),
            (json!({"initContainers": [["init"]]}), false),
            (json!({"volumes": [["data"]]}), false),
            (json!(["a", "b"]), false),
            (json!({"containers": [{"image": "nginx"}]}), true),
            (json!({"volumes": [{}]}), true),
        ] {
            let pod = json!({"metadata": {}, "spec": spec});
            assert_reads_as_pod_does(pod, valid);
        }
        for (metadata, valid) in [
            (json!({"name": 3}), false),
            (json!({"labels": ["a"]}), false),
            (json!({"labels": {"a": 1}}), false),
            (json!({"annotations": "x"}), false),
            // k8s-openapi defaults the missing required fields.
            (json!({"ownerReferences": [{"kind": "ReplicaSet"}]}), true),
            (
                json!({"ownerReferences": [["apps/v1", "ReplicaSet", "web-1", "u"]]}),
                false,
            ),
            (json!(["web"]), false),
            (json!(null), true),
            (json!({"labels": null, "namespace": null}), true),
            (
                json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u"}]}),
                true,
            ),
        ] {
            assert_reads_as_pod_does(json!({"metadata": metadata, "spec": {}}), valid);
        }
        // The pod itself as an array.
        let pod = json!([{}, {"containers": []}]);
        assert!(serde_json::from_value::<Pod>(pod.clone()).is_err());
        assert!(serde_json::from_value::<PodView>(pod).is_err());
    }

    fn assert_reads_as_pod_does(pod: serde_json::Value, valid: bool) {
        assert_eq!(
            serde_json::from_value::<Pod>(pod.clone()).is_ok(),
            valid,
            "{pod}"
        );
        assert_eq!(
            serde_json::from_value::<PodView>(pod.clone()).is_ok(),
            valid,
            "{pod}"
        );
    }
}
