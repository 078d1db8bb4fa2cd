//! The admission side effect: make sure the account an injected pod runs as may do what
//! the sidecar needs, by binding it to the `pod-reloaded-checker` ClusterRole in the pod's
//! namespace (and creating the checker ServiceAccount when the pod was switched to it).
//!
//! Idempotent: objects are read first and only created or patched when missing or
//! different; an `AlreadyExists` from a concurrent replica counts as success. What was
//! ensured is remembered for a while; within that time a pod costs only an existence
//! check of the account and binding, so one deleted by hand is created again before a pod
//! is sent to an account that does not exist. The check is answered by the watches of
//! `ExistingGrants` (no request) while they are in sync, by two concurrent GETs otherwise.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pod_reloaded_contract as contract;

use crate::existing_grants::ExistingGrants;

/// How long an ensured binding is trusted before it is checked again.
const ENSURED_TTL: Duration = Duration::from_secs(300);

pub struct AccessGranter {
    client: Client,
    timeout: Duration,
    ensured: Mutex<HashMap<(String, String), Instant>>,
    existing: Option<ExistingGrants>,
}

impl AccessGranter {
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self {
            client,
            timeout,
            ensured: Mutex::new(HashMap::new()),
            existing: None,
        }
    }

    /// Answers existence checks from watches of the managed accounts and bindings.
    pub fn with_existing_grants(mut self, existing: ExistingGrants) -> Self {
        self.existing = Some(existing);
        self
    }

    /// Ensures `service_account` in `namespace` exists (when `create_account`) and is bound
    /// to the checker ClusterRole, within the configured timeout.
    pub async fn ensure(
        &self,
        namespace: &str,
        service_account: &str,
        create_account: bool,
    ) -> anyhow::Result<()> {
        let key = (namespace.to_string(), service_account.to_string());
        let recently_ensured = self.recently_ensured(&key);
        // What the watches know costs neither a request nor a timer: checked first.
        let known = if recently_ensured {
            self.existing.as_ref().and_then(|existing| {
                existing.both_exist(
                    namespace,
                    service_account,
                    &contract::checker_role_binding_name(service_account),
                    create_account,
                )
            })
        } else {
            None
        };
        if known != Some(true) {
            tokio::time::timeout(self.timeout, async {
                if recently_ensured
                    && known.is_none()
                    && self
                        .exist_in_api(namespace, service_account, create_account)
                        .await?
                {
                    return Ok(());
                }
                if create_account {
                    self.ensure_service_account(namespace, service_account)
                        .await?;
                }
                self.ensure_role_binding(namespace, service_account).await
            })
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the Kubernetes API did not answer within {:?}",
                    self.timeout
                )
            })??;
        }
        if let Ok(mut ensured) = self.ensured.lock() {
            ensured.insert(key, Instant::now());
        }
        Ok(())
    }

    /// True when the account (if we manage it) and the binding are still there, asked of
    /// the API server (two concurrent GETs).
    async fn exist_in_api(
        &self,
        namespace: &str,
        service_account: &str,
        check_account: bool,
    ) -> anyhow::Result<bool> {
        let binding = contract::checker_role_binding_name(service_account);
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let bindings: Api<RoleBinding> = Api::namespaced(self.client.clone(), namespace);
        let (account, binding) = tokio::join!(
            async {
                if check_account {
                    accounts
                        .get_metadata_opt(service_account)
                        .await
                        .map(|a| a.is_some())
                } else {
                    Ok(true)
                }
            },
            bindings.get_metadata_opt(&binding)
        );
        let account = account
            .with_context(|| format!("reading ServiceAccount {namespace}/{service_account}"))?;
        let binding = binding.context("reading the checker RoleBinding")?;
        Ok(account && binding.is_some())
    }

    fn recently_ensured(&self, key: &(String, String)) -> bool {
        self.ensured
            .lock()
            .map(|ensured| {
                ensured
                    .get(key)
                    .is_some_and(|at| at.elapsed() < ENSURED_TTL)
            })
            .unwrap_or(false)
    }

    async fn ensure_service_account(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        if api
            .get_opt(name)
            .await
            .with_context(|| format!("reading ServiceAccount {namespace}/{name}"))?
            .is_some()
        {
            return Ok(());
        }
        let account = ServiceAccount {
            metadata: managed_metadata(name, namespace),
            ..Default::default()
        };
        ignore_already_exists(api.create(&PostParams::default(), &account).await)
            .with_context(|| format!("creating ServiceAccount {namespace}/{name}"))
    }

    async fn ensure_role_binding(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<()> {
        let api: Api<RoleBinding> = Api::namespaced(self.client.clone(), namespace);
        let name = contract::checker_role_binding_name(service_account);
        let wanted = role_binding(&name, namespace, service_account);
        match api
            .get_opt(&name)
            .await
            .with_context(|| format!("reading RoleBinding {namespace}/{name}"))?
        {
            None => ignore_already_exists(api.create(&PostParams::default(), &wanted).await)
                .with_context(|| format!("creating RoleBinding {namespace}/{name}")),
            Some(existing)
                if existing.role_ref == wanted.role_ref && existing.subjects == wanted.subjects =>
            {
                Ok(())
            }
            Some(existing) if existing.role_ref != wanted.role_ref => anyhow::bail!(
                "RoleBinding {namespace}/{name} exists but refers to {} {}, not ClusterRole {}",
                existing.role_ref.kind,
                existing.role_ref.name,
                contract::CHECKER_CLUSTER_ROLE
            ),
            Some(_) => {
                let patch = serde_json::json!({ "subjects": wanted.subjects });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
                    .with_context(|| format!("patching RoleBinding {namespace}/{name}"))
            }
        }
    }
}

fn managed_metadata(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(BTreeMap::from([(
            contract::MANAGED_BY_LABEL.to_string(),
            contract::MANAGED_BY_VALUE.to_string(),
        )])),
        ..Default::default()
    }
}

/// The RoleBinding that grants `service_account` the checker ClusterRole.
pub fn role_binding(name: &str, namespace: &str, service_account: &str) -> RoleBinding {
    RoleBinding {
        metadata: managed_metadata(name, namespace),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "ClusterRole".to_string(),
            name: contract::CHECKER_CLUSTER_ROLE.to_string(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: service_account.to_string(),
            namespace: Some(namespace.to_string()),
            api_group: None,
        }]),
    }
}

fn ignore_already_exists<T>(result: kube::Result<T>) -> kube::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    //! The side effect's API calls, asserted in order over a mocked client.

    use super::*;
    use pod_reloaded_test_support::api_mock::{self, expect, expect_unordered, status};
    use serde_json::{json, Value};

    const ACCOUNT: &str = "/api/v1/namespaces/shop/serviceaccounts/pod-reloaded-checker";
    const ACCOUNTS: &str = "/api/v1/namespaces/shop/serviceaccounts";
    const BINDING: &str =
        "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/pod-reloaded-checker";
    const BINDINGS: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings";

    fn granter() -> (AccessGranter, api_mock::ApiHandle) {
        let (client, handle) = api_mock::client("shop");
        (AccessGranter::new(client, Duration::from_secs(5)), handle)
    }

    fn binding_json(subject: &str) -> Value {
        serde_json::to_value(role_binding("pod-reloaded-checker", "shop", subject)).unwrap()
    }

    #[tokio::test]
    async fn a_new_namespace_gets_the_account_and_the_binding_then_only_existence_checks() {
        let (granter, mut api) = granter();
        let server = tokio::spawn(async move {
            expect(&mut api, "GET", ACCOUNT, 404, status(404, "NotFound")).await;
            let account = expect(&mut api, "POST", ACCOUNTS, 201, json!({})).await;
            expect(&mut api, "GET", BINDING, 404, status(404, "NotFound")).await;
            let binding = expect(&mut api, "POST", BINDINGS, 201, json!({})).await;
            // The second pod: two concurrent existence checks, nothing written.
            let reads = expect_unordered(
                &mut api,
                &[
                    ("GET", ACCOUNT, 200, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "pod-reloaded-checker"}})),
                    ("GET", BINDING, 200, binding_json("pod-reloaded-checker")),
                ],
            )
            .await;
            (account, binding, reads)
        });
        granter
            .ensure("shop", "pod-reloaded-checker", true)
            .await
            .unwrap();
        granter
            .ensure("shop", "pod-reloaded-checker", true)
            .await
            .unwrap();
        let (account, binding, reads) = server.await.unwrap();
        assert_eq!(account["metadata"]["name"], "pod-reloaded-checker");
        assert_eq!(
            account["metadata"]["labels"][contract::MANAGED_BY_LABEL],
            contract::MANAGED_BY_VALUE
        );
        assert_eq!(binding["roleRef"]["name"], contract::CHECKER_CLUSTER_ROLE);
        assert_eq!(binding["subjects"][0]["name"], "pod-reloaded-checker");
        assert_eq!(
            reads,
            vec![
                ("GET".to_string(), ACCOUNT.to_string()),
                ("GET".to_string(), BINDING.to_string())
            ]
        );
    }

    #[tokio::test]
    async fn a_binding_with_other_subjects_is_patched_and_a_race_counts_as_done() {
        let (granter, mut api) = granter();
        let server = tokio::spawn(async move {
            expect(&mut api, "GET", BINDING, 200, binding_json("someone-else")).await;
            let patch = expect(
                &mut api,
                "PATCH",
                BINDING,
                200,
                binding_json("pod-reloaded-checker"),
            )
            .await;
            // Another namespace, where a concurrent replica created the binding first.
            expect(
                &mut api,
                "GET",
                "/apis/rbac.authorization.k8s.io/v1/namespaces/pay/rolebindings/pod-reloaded-checker-api",
                404,
                status(404, "NotFound"),
            )
            .await;
            expect(
                &mut api,
                "POST",
                "/apis/rbac.authorization.k8s.io/v1/namespaces/pay/rolebindings",
                409,
                status(409, "AlreadyExists"),
            )
            .await;
            patch
        });
        granter
            .ensure("shop", "pod-reloaded-checker", false)
            .await
            .unwrap();
        granter.ensure("pay", "api", false).await.unwrap();
        let patch = server.await.unwrap();
        assert_eq!(patch["subjects"][0]["name"], "pod-reloaded-checker");
    }

    #[tokio::test]
    async fn a_binding_to_another_role_is_an_error() {
        let (granter, mut api) = granter();
        let server = tokio::spawn(async move {
            let mut foreign = binding_json("pod-reloaded-checker");
            foreign["roleRef"]["name"] = json!("cluster-admin");
            expect(&mut api, "GET", BINDING, 200, foreign).await;
        });
        let error = granter
            .ensure("shop", "pod-reloaded-checker", false)
            .await
            .unwrap_err();
        server.await.unwrap();
        assert!(format!("{error:#}").contains("cluster-admin"), "{error:#}");
    }
}
