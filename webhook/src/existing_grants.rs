//! What the webhook's grants look like in the cluster right now: the checker accounts and
//! RoleBindings it manages, kept by two watches (metadata only, its own label only).
//!
//! Why: an admission must not send a pod to an account or binding that was deleted, and
//! asking the API server on every pod cost two GETs per pod created (half of the
//! webhook's CPU under load). A watch knows about a deletion within moments, for one
//! long-lived request per resource.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Api, Client};
use pod_reloaded_contract as contract;
use tracing::{info, warn};

type AccountMeta = PartialObjectMeta<ServiceAccount>;
type BindingMeta = PartialObjectMeta<RoleBinding>;

#[derive(Clone)]
pub struct ExistingGrants {
    accounts: Watched<AccountMeta>,
    bindings: Watched<BindingMeta>,
}

/// One watched resource: its cache, and whether the watch is currently sound.
#[derive(Clone)]
struct Watched<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    /// False from a watch error until the watch delivers again: a cache that may have
    /// missed a deletion is not trusted.
    sound: Arc<AtomicBool>,
}

impl<K> Watched<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    fn start(api: Api<K>, what: &'static str) -> Self {
        let (store, writer) = reflector::store();
        let sound = Arc::new(AtomicBool::new(false));
        let config = watcher::Config::default().labels(&format!(
            "{}={}",
            contract::MANAGED_BY_LABEL,
            contract::MANAGED_BY_VALUE
        ));
        let events = reflector::reflector(writer, watcher(api, config).default_backoff());
        let marks = sound.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            // Said once per change of state, not once per retry.
            let mut failing = None;
            while let Some(event) = events.next().await {
                let ok = event.is_ok();
                marks.store(ok, Ordering::Release);
                if failing == Some(!ok) {
                    continue;
                }
                failing = Some(!ok);
                match event {
                    Ok(_) => info!(what, "watching the checker grants"),
                    Err(error) => warn!(
                        what,
                        %error,
                        "cannot watch the checker grants (list and watch are in the webhook's ClusterRole): asking the API server for each pod until the watch works"
                    ),
                }
            }
        });
        Self { store, sound }
    }

    /// `Some(exists)` when the cache can be trusted, `None` when it cannot.
    fn contains(&self, namespace: &str, name: &str) -> Option<bool> {
        let ready = matches!(self.store.wait_until_ready().now_or_never(), Some(Ok(())));
        if !ready || !self.sound.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.store
                .get(&ObjectRef::new(name).within(namespace))
                .is_some(),
        )
    }
}

impl ExistingGrants {
    /// Starts both watches in the background (needs a Tokio runtime).
    pub fn watch(client: Client) -> Self {
        Self {
            accounts: Watched::start(Api::all(client.clone()), "serviceaccounts"),
            bindings: Watched::start(Api::all(client), "rolebindings"),
        }
    }

    /// Whether the account (when `check_account`) and the binding exist, or `None` when
    /// the watches are not (or no longer) in sync and the API server must be asked.
    pub fn both_exist(
        &self,
        namespace: &str,
        service_account: &str,
        binding: &str,
        check_account: bool,
    ) -> Option<bool> {
        let account = if check_account {
            self.accounts.contains(namespace, service_account)?
        } else {
            true
        };
        let binding = self.bindings.contains(namespace, binding)?;
        Some(account && binding)
    }
}
