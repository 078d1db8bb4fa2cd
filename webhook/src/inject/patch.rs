//! The patch builder: JSON Patch operations against the pod as the API server sent it
//! (`add` where a field or map is missing, `replace` where it exists); JSON Pointers are
//! escaped by `jsonptr`.

use std::collections::BTreeMap;

use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, SecretVolumeSource, Volume, VolumeMount};
use pod_reloaded_contract as contract;
use pod_reloaded_contract::settings::Poll;
use serde::Serialize;

use super::pod_view::{PodSpecView, PodView};
use super::rules::{InjectionSettings, Plan, SidecarMode};
use super::templates::{
    api_access_mount, env_field, env_value, sidecar_container, PULL_SECRET_VOLUME_PREFIX,
    REGISTRY_CA_VOLUME,
};
use super::Injection;

/// A JSON Patch (RFC 6902) document, as the text that goes into the admission response.
///
/// The operations are written as JSON when they are added: building them as
/// `serde_json::Value` trees first (what `json_patch::Patch` holds), writing those and
/// dropping them was a third of an admission's CPU (BENCHMARKS.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPatch(Vec<u8>);

impl JsonPatch {
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The operations, read back with `json_patch`'s types (to apply or inspect them).
    pub fn operations(&self) -> Result<json_patch::Patch, serde_json::Error> {
        serde_json::from_slice(&self.0)
    }
}

/// JSON Patch operations against the pod as the API server sent it. Pointers are built
/// from unescaped tokens by `jsonptr`, which escapes `/` and `~` (annotation keys).
struct PatchOps {
    /// `[` and the operations written so far, separated by commas.
    json: Vec<u8>,
    /// The first operation that could not be written: the patch is then not used.
    error: Option<serde_json::Error>,
}

#[derive(Serialize)]
struct Operation<'a, V> {
    op: &'static str,
    path: &'a PointerBuf,
    value: V,
}

impl PatchOps {
    fn new() -> Self {
        let mut json = Vec::with_capacity(2048);
        json.push(b'[');
        Self { json, error: None }
    }

    fn add<'t>(&mut self, path: impl IntoIterator<Item = &'t str>, value: impl Serialize) {
        self.push("add", path, value);
    }

    fn replace<'t>(&mut self, path: impl IntoIterator<Item = &'t str>, value: impl Serialize) {
        self.push("replace", path, value);
    }

    /// `add` when the pod has no such field yet, `replace` when it has one.
    fn set<'t>(
        &mut self,
        exists: bool,
        path: impl IntoIterator<Item = &'t str>,
        value: impl Serialize,
    ) {
        if exists {
            self.replace(path, value);
        } else {
            self.add(path, value);
        }
    }

    fn push<'t>(
        &mut self,
        op: &'static str,
        path: impl IntoIterator<Item = &'t str>,
        value: impl Serialize,
    ) {
        if self.json.len() > 1 {
            self.json.push(b',');
        }
        let path = PointerBuf::from_tokens(path);
        let start = self.json.len();
        let written = serde_json::to_writer(
            &mut self.json,
            &Operation {
                op,
                path: &path,
                value,
            },
        );
        if let Err(error) = written {
            self.json.truncate(start);
            self.error.get_or_insert(error);
        }
    }

    /// The patch, or the first operation's error: a patch missing an operation would
    /// inject half a sidecar.
    fn finish(mut self) -> Result<JsonPatch, serde_json::Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        self.json.push(b']');
        Ok(JsonPatch(self.json))
    }
}

pub(super) fn build_injection(
    pod: &PodView,
    plan: Plan,
    settings: &InjectionSettings,
) -> Result<Injection, serde_json::Error> {
    let mut warnings = plan.warnings;
    let mut ops = PatchOps::new();
    let empty_spec = PodSpecView::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty_spec);

    for pin in &plan.pins {
        let index = pin.index.to_string();
        ops.replace(["spec", "containers", &index, "image"], &pin.image);
    }
    if !plan.pins.is_empty() {
        let pinned: Vec<String> = plan
            .pins
            .iter()
            .map(|p| format!("{} to {}", p.container, p.image))
            .collect();
        warnings.push(format!(
            "pod-reloaded: pinned {} (the digest its restart rolled out; annotate {}=\"false\" to prevent)",
            pinned.join(", "),
            contract::ANNOTATION_PIN
        ));
    }
    for change in &plan.pull_always {
        let index = change.index.to_string();
        ops.set(
            change.had_policy,
            ["spec", "containers", &index, "imagePullPolicy"],
            "Always",
        );
        warnings.push(format!(
            "pod-reloaded: set imagePullPolicy: Always on container {} so a restart pulls the new digest (annotate {}=keep to prevent)",
            change.container,
            contract::ANNOTATION_PULL_POLICY
        ));
    }

    if plan.account.switched_to_checker {
        ops.set(
            spec.service_account_name.is_some(),
            ["spec", "serviceAccountName"],
            &plan.account.name,
        );
        // The deprecated alias must agree, or validation rejects the pod.
        if spec.service_account.is_some() {
            ops.replace(["spec", "serviceAccount"], &plan.account.name);
        }
    }

    let mut new_volumes = Vec::new();
    let mut mounts = vec![api_access_mount(spec, &mut new_volumes)];
    for (index, secret) in plan.mounted_pull_secrets.iter().enumerate() {
        let volume_name = format!("{PULL_SECRET_VOLUME_PREFIX}{index}");
        new_volumes.push(Volume {
            name: volume_name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_string()),
                // A missing pull secret must not stop the application pod from starting.
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: volume_name,
            mount_path: format!("{}/{secret}", contract::PULL_SECRETS_MOUNT_DIR),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if let Some(secret) = &plan.added_pull_secret {
        let reference = BTreeMap::from([("name", secret)]);
        if spec.image_pull_secrets.is_some() {
            ops.add(["spec", "imagePullSecrets", "-"], &reference);
        } else {
            ops.add(["spec", "imagePullSecrets"], [&reference]);
        }
    }
    if let Some(configmap) = &plan.ca_configmap {
        new_volumes.push(Volume {
            name: REGISTRY_CA_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: configmap.clone(),
                // Namespaces without it still start their pods: then no extra CAs.
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: REGISTRY_CA_VOLUME.to_string(),
            mount_path: contract::REGISTRY_CA_MOUNT_DIR.to_string(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if spec.volumes.is_some() {
        for volume in &new_volumes {
            ops.add(["spec", "volumes", "-"], volume);
        }
    } else if !new_volumes.is_empty() {
        ops.add(["spec", "volumes"], &new_volumes);
    }

    let mut env = vec![
        env_value(contract::ENV_WATCH_CONTAINER, plan.watched.join(",")),
        env_value(contract::ENV_INTERVAL, plan.interval),
    ];
    if let Some(url) = plan.registry_url {
        env.push(env_value(contract::ENV_REGISTRY_URL, url));
    }
    // The sidecar's own default is `workload`: said only when it is not.
    if plan.poll != Poll::Workload {
        env.push(env_value(
            contract::ENV_POLL,
            plan.poll.as_str().to_string(),
        ));
    }
    if let Some(policy) = &plan.verify {
        env.push(env_value(contract::ENV_VERIFY_POLICY, policy.to_json()));
    }
    env.push(env_field(contract::ENV_POD_NAME, "metadata.name"));
    env.push(env_field(contract::ENV_POD_NAMESPACE, "metadata.namespace"));
    if !plan.mounted_pull_secrets.is_empty() {
        env.push(env_value(
            contract::ENV_PULL_SECRETS_DIR,
            contract::PULL_SECRETS_MOUNT_DIR.to_string(),
        ));
    }

    if plan.ca_configmap.is_some() {
        env.push(env_value(
            contract::ENV_REGISTRY_CA_DIR,
            contract::REGISTRY_CA_MOUNT_DIR.to_string(),
        ));
    }
    for (name, value) in &settings.sidecar_env {
        env.push(env_value(name, value.clone()));
    }

    let mut sidecar = sidecar_container(settings, env, mounts);
    match settings.sidecar_mode {
        SidecarMode::Container => ops.add(["spec", "containers", "-"], &sidecar),
        SidecarMode::Native => {
            sidecar.restart_policy = Some("Always".to_string());
            if spec.init_containers.is_some() {
                ops.add(["spec", "initContainers", "0"], &sidecar);
            } else {
                ops.add(["spec", "initContainers"], [&sidecar]);
            }
        }
    }

    let injected = contract::ANNOTATION_INJECTED;
    if pod.metadata.annotations.is_some() {
        ops.add(["metadata", "annotations", injected], &settings.version);
    } else {
        ops.add(
            ["metadata", "annotations"],
            BTreeMap::from([(injected, &settings.version)]),
        );
    }

    Ok(Injection {
        patch: ops.finish()?,
        service_account: plan.account.name,
        uses_checker_account: plan.account.switched_to_checker,
        watched_containers: plan.watched,
        warnings,
    })
}

#[cfg(test)]
mod patch_ops_tests {
    use super::*;

    #[test]
    fn an_operation_that_cannot_be_written_fails_the_patch_instead_of_writing_null() {
        let mut ops = PatchOps::new();
        ops.add(["metadata", "labels"], BTreeMap::from([("a", "b")]));
        // JSON object keys must be strings: this value cannot be written.
        ops.add(["spec", "x"], BTreeMap::from([((1, 2), "pair")]));
        assert!(ops.finish().is_err());

        let mut ops = PatchOps::new();
        ops.add(["metadata", "labels"], BTreeMap::from([("a", "b")]));
        let patch = ops.finish().expect("written");
        assert_eq!(
            String::from_utf8(patch.into_bytes()).unwrap(),
            r#"[{"op":"add","path":"/metadata/labels","value":{"a":"b"}}]"#
        );
    }
}
