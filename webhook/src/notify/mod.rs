//! Notifications: the webhook's replicas tell people what pod-reloaded did, from the
//! sidecars' own Events. One replica at a time (the holder of a Lease, `lease`) watches
//! pod-reloaded's Events cluster-wide, picks each one's receivers (by type, namespace
//! label and the namespace's `pod-reloaded.io/notify`, `contract::notify`), builds the
//! body each receiver's format wants (`message`) and sends it on a task of its own
//! (`deliver`). A delivered receiver is written on the Event
//! (`pod-reloaded.io/notified`), so another replica or a restart never tells it again;
//! whatever the number of sidecars, each Event is one notification per receiver.

pub mod deliver;
pub mod lease;
pub mod message;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Api, Client};
use pod_reloaded_contract as contract;
use pod_reloaded_contract::notify::{annotated_receivers, NotifyConfig, MAX_NOTIFY_FILE_BYTES};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, warn};

use self::deliver::Delivery;
use self::lease::LeaseLock;
use self::message::Notification;
use crate::reloaded::{self, Reloaded};

/// Events older than this when first seen are not told (a new notifier does not replay
/// the last hour of a cluster's Events; Events live an hour).
pub const MAX_EVENT_AGE: Duration = Duration::from_secs(600);

pub type NotifyStore = Reloaded<NotifyConfig>;

const WHAT: &str = "the notification config";

pub fn load(path: &std::path::Path) -> anyhow::Result<NotifyConfig> {
    reloaded::load(
        path,
        MAX_NOTIFY_FILE_BYTES,
        "--notify-config",
        NotifyConfig::parse,
    )
}

pub fn watch(store: &NotifyStore, path: PathBuf, every: Duration) {
    store.watch(
        path,
        every,
        MAX_NOTIFY_FILE_BYTES,
        WHAT,
        NotifyConfig::parse,
    );
}

/// Everything the notifier runs with.
pub struct Notifier {
    pub client: Client,
    pub config: NotifyStore,
    pub delivery: Delivery,
    /// The webhook's namespace, where the Lease lives.
    pub namespace: String,
    pub identity: String,
}

/// A delivered notification to write on its Event.
struct Delivered {
    namespace: String,
    event: String,
    receiver: String,
}

impl Notifier {
    /// Runs for the process's life: holds the Lease when it can, and while it does, tells.
    pub async fn run(self) {
        let lock = LeaseLock::new(
            self.client.clone(),
            &self.namespace,
            contract::NOTIFY_LEASE,
            self.identity.clone(),
        );
        let (marks, marking) = mpsc::unbounded_channel();
        tokio::spawn(mark_delivered(self.client.clone(), marking));
        let this = Arc::new(self);
        loop {
            match lock.try_hold().await {
                Ok(true) => {}
                Ok(false) => {
                    tokio::time::sleep(lease::RENEW).await;
                    continue;
                }
                Err(error) => {
                    warn!(
                        error = format!("{error:#}"),
                        "notifier: cannot read the Lease {}; trying again",
                        contract::NOTIFY_LEASE
                    );
                    tokio::time::sleep(lease::RENEW).await;
                    continue;
                }
            }
            info!(
                identity = lock.identity,
                "notifier: this replica holds the Lease and sends the notifications"
            );
            let telling = tokio::spawn(this.clone().tell(marks.clone()));
            // Renew until a renewal fails; then stop telling (another replica takes over
            // once the Lease expires).
            loop {
                tokio::time::sleep(lease::RENEW).await;
                if !matches!(lock.try_hold().await, Ok(true)) {
                    break;
                }
            }
            telling.abort();
            warn!("notifier: lost the Lease; another replica sends the notifications");
        }
    }

    /// Watches pod-reloaded's Events and tells each new one's receivers.
    async fn tell(self: Arc<Self>, marks: mpsc::UnboundedSender<Delivered>) {
        let events: Api<Event> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields("source=pod-reloaded");
        let stream = watcher(events, config).default_backoff().applied_objects();
        futures_util::pin_mut!(stream);
        let mut started: HashMap<(String, String), Instant> = HashMap::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => self.consider(&event, &mut started, &marks).await,
                Err(error) => warn!(%error, "notifier: the Event watch failed; it resumes"),
            }
        }
    }

    async fn consider(
        &self,
        event: &Event,
        started: &mut HashMap<(String, String), Instant>,
        marks: &mpsc::UnboundedSender<Delivered>,
    ) {
        let Some(notification) = Notification::from_event(event) else {
            return;
        };
        let age = jiff::Timestamp::now().duration_since(
            notification
                .time
                .parse::<jiff::Timestamp>()
                .unwrap_or_else(|_| jiff::Timestamp::now()),
        );
        if age > jiff::SignedDuration::try_from(MAX_EVENT_AGE).unwrap_or_default() {
            return;
        }
        let notified = notified(event);
        let (labels, annotation) = self.namespace_of(&notification.workload.namespace).await;
        let config = self.config.current();
        let receivers = config.receivers_for(
            notification.kind,
            &labels,
            &annotated_receivers(annotation.as_deref()),
        );
        if started.len() > 10_000 {
            started.retain(|_, at| at.elapsed() < 2 * MAX_EVENT_AGE);
        }
        for name in receivers {
            let key = (notification.id.clone(), name.to_string());
            if notified.iter().any(|n| n == name) || started.contains_key(&key) {
                continue;
            }
            let Some(receiver) = config.receivers.get(name).cloned() else {
                continue;
            };
            started.insert(key, Instant::now());
            let delivery = self.delivery.clone();
            let body = notification.body(receiver.kind);
            let what = notification.title();
            let name = name.to_string();
            let marks = marks.clone();
            let mark = Delivered {
                namespace: event.metadata.namespace.clone().unwrap_or_default(),
                event: event.metadata.name.clone().unwrap_or_default(),
                receiver: name.clone(),
            };
            tokio::spawn(async move {
                if delivery.send(&name, &receiver, &body, &what).await {
                    let _ = marks.send(mark);
                }
            });
        }
    }

    /// A namespace's labels and `pod-reloaded.io/notify`; none when it cannot be read.
    async fn namespace_of(&self, name: &str) -> (BTreeMap<String, String>, Option<String>) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        match namespaces.get_opt(name).await {
            Ok(Some(namespace)) => {
                let annotation = namespace
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(contract::ANNOTATION_NOTIFY))
                    .cloned();
                (namespace.metadata.labels.unwrap_or_default(), annotation)
            }
            Ok(None) => (BTreeMap::new(), None),
            Err(error) => {
                warn!(namespace = name, %error, "notifier: cannot read the namespace; only receivers selecting every namespace hear of it");
                (BTreeMap::new(), None)
            }
        }
    }
}

/// The receivers an Event says were told (`pod-reloaded.io/notified`).
fn notified(event: &Event) -> Vec<String> {
    let annotation = event
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(contract::ANNOTATION_EVENT_NOTIFIED));
    annotated_receivers(annotation.map(String::as_str))
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// Writes each delivered receiver on its Event, one at a time (so no write loses
/// another), each guarded by the Event's `resourceVersion`.
async fn mark_delivered(client: Client, mut marking: mpsc::UnboundedReceiver<Delivered>) {
    while let Some(delivered) = marking.recv().await {
        let events: Api<Event> = Api::namespaced(client.clone(), &delivered.namespace);
        for _ in 0..5 {
            let Ok(Some(event)) = events.get_opt(&delivered.event).await else {
                break;
            };
            let mut notified = notified(&event);
            if notified.contains(&delivered.receiver) {
                break;
            }
            notified.push(delivered.receiver.clone());
            notified.sort();
            let patch = json!({"metadata": {
                "resourceVersion": event.metadata.resource_version,
                "annotations": {contract::ANNOTATION_EVENT_NOTIFIED: notified.join(",")}}});
            match events
                .patch(
                    &delivered.event,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => break,
                Err(kube::Error::Api(status)) if status.code == 409 => continue,
                Err(error) => {
                    warn!(event = delivered.event, receiver = delivered.receiver, %error, "notifier: cannot mark the Event as told (a new notifier could tell it again)");
                    break;
                }
            }
        }
    }
}
