//! A notification, read from one of the sidecar's Events (its annotations say which
//! digests it is about), and its body in each receiver's format, each written from the
//! service's documented schema:
//! - Slack incoming webhooks: a Block Kit message (`blocks`) with `text` as the
//!   plain-text fallback (api.slack.com/reference/block-kit);
//! - Microsoft Teams Workflows ("Post to a channel when a webhook request is received"):
//!   a `message` with one Adaptive Card 1.4 attachment (adaptivecards.io);
//! - generic webhooks: pod-reloaded's own JSON, `contract/notification.schema.json`;
//! - CloudEvents 1.0 in structured JSON mode, whose `data` is a CDEvent (cdevents.dev
//!   v0.4) for `service.upgraded` and `service.rolledback`, and pod-reloaded's JSON for
//!   the rest.

use k8s_openapi::api::core::v1::Event;
use pod_reloaded_contract as contract;
use pod_reloaded_contract::image::ImageReference;
use pod_reloaded_contract::notify::{NotificationType, ReceiverKind};
use pod_reloaded_contract::record::DigestRecord;
use serde_json::{json, Value};

/// The version of pod-reloaded's notification JSON (`apiVersion`).
pub const API_VERSION: &str = "pod-reloaded.io/v1";

#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// The Event's uid: the notification's identity (CloudEvents `id`).
    pub id: String,
    pub kind: NotificationType,
    pub reason: String,
    pub warning: bool,
    pub workload: Workload,
    pub changes: Vec<Change>,
    /// The Event's message, as people read it in `kubectl describe`.
    pub message: String,
    pub time: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub container: String,
    /// The watched image as the pod spec writes it, and its tag.
    pub image: Option<String>,
    pub tag: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl Notification {
    /// The notification an Event of the sidecar makes; `None` for any other Event.
    pub fn from_event(event: &Event) -> Option<Self> {
        let reason = event.reason.clone()?;
        let kind = NotificationType::of_reason(&reason)?;
        let object = &event.involved_object;
        let annotation = |key: &str| {
            event
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .map(|v| DigestRecord::parse(v))
                .unwrap_or_default()
        };
        let (to, from, images) = (
            annotation(contract::ANNOTATION_EVENT_TO),
            annotation(contract::ANNOTATION_EVENT_FROM),
            annotation(contract::ANNOTATION_EVENT_IMAGES),
        );
        let changes = to
            .iter()
            .map(|(container, digest)| {
                let image = images.get(container).map(str::to_string);
                let tag = image
                    .as_deref()
                    .and_then(|i| ImageReference::parse(i).ok())
                    .map(|r| r.watched_tag().tag);
                Change {
                    container: container.to_string(),
                    image,
                    tag,
                    from: from.get(container).map(str::to_string),
                    to: Some(digest.to_string()),
                }
            })
            .collect();
        let time = event
            .last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(event.event_time.as_ref().map(|t| t.0))
            .or(event.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .map(contract::record::timestamp_text)
            .unwrap_or_default();
        Some(Self {
            id: event.metadata.uid.clone().unwrap_or_default(),
            kind,
            reason,
            warning: event.type_.as_deref() == Some("Warning"),
            workload: Workload {
                api_version: object.api_version.clone().unwrap_or_default(),
                kind: object.kind.clone().unwrap_or_default(),
                namespace: object
                    .namespace
                    .clone()
                    .or(event.metadata.namespace.clone())
                    .unwrap_or_default(),
                name: object.name.clone().unwrap_or_default(),
            },
            changes,
            message: event.message.clone().unwrap_or_default(),
            time,
        })
    }

    /// `Deployment shop/web`.
    pub fn workload_text(&self) -> String {
        format!(
            "{} {}/{}",
            self.workload.kind, self.workload.namespace, self.workload.name
        )
    }

    /// A one-line title: `rollout-failed: Deployment shop/web`.
    pub fn title(&self) -> String {
        format!("{}: {}", self.kind.as_str(), self.workload_text())
    }

    fn change_lines(&self) -> Vec<String> {
        self.changes
            .iter()
            .map(|c| {
                let tag = c
                    .tag
                    .as_deref()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default();
                let from = c
                    .from
                    .as_deref()
                    .map(|f| format!("{} → ", short(f)))
                    .unwrap_or_default();
                let to = c.to.as_deref().map(short).unwrap_or("");
                format!("{}{tag}: {from}{to}", c.container)
            })
            .collect()
    }

    /// The body for a receiver of `kind`.
    pub fn body(&self, kind: ReceiverKind) -> Value {
        match kind {
            ReceiverKind::Slack => self.slack(),
            ReceiverKind::Teams => self.teams(),
            ReceiverKind::Webhook => self.json(),
            ReceiverKind::Cloudevents => self.cloudevent(),
        }
    }

    fn slack(&self) -> Value {
        let changes = self.change_lines().join("\n");
        let fallback = format!("{}: {}", self.title(), self.message);
        let mut fields = vec![
            json!({"type": "mrkdwn", "text": format!("*Workload*\n{}", self.workload_text())}),
        ];
        if !changes.is_empty() {
            fields.push(json!({"type": "mrkdwn", "text": format!("*Images*\n{changes}")}));
        }
        json!({
            "text": fallback,
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": truncate(&self.title(), 150)}},
                {"type": "section", "text": {"type": "plain_text", "text": truncate(&self.message, 3000)}, "fields": fields},
                {"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Next:* {}", self.kind.next()), 3000)}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("pod-reloaded · {} · {}", self.reason, self.time)}]},
            ],
        })
    }

    fn teams(&self) -> Value {
        let mut facts = vec![json!({"title": "Workload", "value": self.workload_text()})];
        for line in self.change_lines() {
            facts.push(json!({"title": "Image", "value": line}));
        }
        facts.push(json!({"title": "Next", "value": self.kind.next()}));
        facts.push(json!({"title": "Time", "value": self.time}));
        json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {"type": "TextBlock", "text": self.title(), "weight": "bolder", "size": "medium", "wrap": true,
                         "color": if self.warning { "attention" } else { "default" }},
                        {"type": "TextBlock", "text": self.message, "wrap": true},
                        {"type": "FactSet", "facts": facts},
                    ],
                },
            }],
        })
    }

    /// pod-reloaded's JSON (`contract/notification.schema.json`).
    pub fn json(&self) -> Value {
        let changes: Vec<Value> = self
            .changes
            .iter()
            .map(|c| {
                let digest = |d: &Option<String>| {
                    d.as_deref()
                        .map(|d| json!({"digest": d, "short": short(d)}))
                        .unwrap_or(Value::Null)
                };
                json!({"container": c.container, "image": c.image, "tag": c.tag,
                    "from": digest(&c.from), "to": digest(&c.to)})
            })
            .collect();
        json!({
            "apiVersion": API_VERSION,
            "kind": "Notification",
            "id": self.id,
            "type": self.kind.as_str(),
            "reason": self.reason,
            "severity": if self.warning { "warning" } else { "info" },
            "workload": {"apiVersion": self.workload.api_version, "kind": self.workload.kind,
                "namespace": self.workload.namespace, "name": self.workload.name},
            "changes": changes,
            "message": self.message,
            "next": self.kind.next(),
            "time": self.time,
        })
    }

    fn cloudevent(&self) -> Value {
        let source = format!(
            "/apis/{}/namespaces/{}/{}s/{}",
            self.workload.api_version,
            self.workload.namespace,
            self.workload.kind.to_lowercase(),
            self.workload.name
        );
        let cdevent = match self.kind {
            NotificationType::RolloutSucceeded => Some("dev.cdevents.service.upgraded.0.2.0"),
            NotificationType::RolledBack => Some("dev.cdevents.service.rolledback.0.2.0"),
            _ => None,
        };
        let (event_type, data) = match cdevent {
            Some(event_type) => {
                let artifact = self
                    .changes
                    .first()
                    .map(|c| purl(c.image.as_deref(), c.to.as_deref()))
                    .unwrap_or_default();
                let data = json!({
                    "context": {"version": "0.4.1", "id": self.id, "source": source,
                        "type": event_type, "timestamp": self.time},
                    "subject": {"id": source, "source": source, "type": "service",
                        "content": {"environment": {"id": self.workload.namespace}, "artifactId": artifact}},
                    "customData": self.json(),
                    "customDataContentType": "application/json",
                });
                (event_type.to_string(), data)
            }
            None => (
                format!("io.pod-reloaded.{}.v1", self.kind.as_str()),
                self.json(),
            ),
        };
        json!({
            "specversion": "1.0",
            "id": self.id,
            "source": source,
            "type": event_type,
            "subject": self.workload.name,
            "time": self.time,
            "datacontenttype": "application/json",
            "data": data,
        })
    }
}

/// `sha256:0123456789ab`: the first 12 hex digits, as `docker images` shows them.
pub fn short(digest: &str) -> &str {
    let end = digest
        .find(':')
        .map(|i| i + 13)
        .unwrap_or(12)
        .min(digest.len());
    &digest[..end]
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(max - 1).collect();
        cut.push('…');
        cut
    }
}

/// A package URL for an OCI image at a digest (purl-spec's `oci` type), as CDEvents'
/// `artifactId` wants it.
fn purl(image: Option<&str>, digest: Option<&str>) -> String {
    let Some(reference) = image.and_then(|i| ImageReference::parse(i).ok()) else {
        return String::new();
    };
    let name = reference
        .repository
        .rsplit('/')
        .next()
        .unwrap_or(&reference.repository)
        .to_string();
    let digest = digest.unwrap_or("").replace(':', "%3A");
    format!(
        "pkg:oci/{name}@{digest}?repository_url={}/{}",
        reference.registry, reference.repository
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": "web.1", "namespace": "shop", "uid": "e-1",
                "annotations": {
                    contract::ANNOTATION_EVENT_TO: format!("app=sha256:{}", "b".repeat(64)),
                    contract::ANNOTATION_EVENT_FROM: format!("app=sha256:{}", "a".repeat(64)),
                    contract::ANNOTATION_EVENT_IMAGES: "app=registry.example.com/shop/web:main",
                }},
            "involvedObject": {"apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop", "name": "web"},
            "reason": "RolledBack", "type": "Normal", "message": "rolled back",
            "lastTimestamp": "2026-12-01T10:00:00Z",
        }))
        .unwrap()
    }

    #[test]
    fn an_event_of_the_sidecar_says_what_changed_from_its_annotations() {
        let n = Notification::from_event(&event()).unwrap();
        assert_eq!(n.kind, NotificationType::RolledBack);
        assert_eq!(n.workload_text(), "Deployment shop/web");
        assert_eq!(n.changes[0].tag.as_deref(), Some("main"));
        assert_eq!(
            n.change_lines(),
            vec!["app (main): sha256:aaaaaaaaaaaa → sha256:bbbbbbbbbbbb"]
        );
        assert_eq!(n.time, "2026-12-01T10:00:00Z");
        let mut other = event();
        other.reason = Some("Scheduled".into());
        assert_eq!(Notification::from_event(&other), None);
    }

    /// The bodies of one Event in each format, against the files a person reviewed
    /// (`tests/fixtures/notifications/`); `UPDATE_GOLDEN=1` writes them anew.
    #[test]
    fn each_format_is_its_golden_file() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/notifications");
        let n = Notification::from_event(&event()).unwrap();
        for (kind, file) in [
            (ReceiverKind::Slack, "slack.json"),
            (ReceiverKind::Teams, "teams.json"),
            (ReceiverKind::Webhook, "webhook.json"),
            (ReceiverKind::Cloudevents, "cloudevents.json"),
        ] {
            let body = serde_json::to_string_pretty(&n.body(kind)).unwrap() + "\n";
            let path = dir.join(file);
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &body).unwrap();
            }
            let golden = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
            assert_eq!(body, golden, "{file}");
        }
    }

    #[test]
    fn each_format_carries_the_workload_digests_and_what_comes_next() {
        let n = Notification::from_event(&event()).unwrap();
        let slack = n.body(ReceiverKind::Slack);
        assert!(slack["text"]
            .as_str()
            .unwrap()
            .starts_with("rolled-back: Deployment shop/web"));
        assert_eq!(slack["blocks"][0]["type"], "header");
        let teams = n.body(ReceiverKind::Teams);
        assert_eq!(teams["attachments"][0]["content"]["type"], "AdaptiveCard");
        let json = n.body(ReceiverKind::Webhook);
        assert_eq!(json["apiVersion"], API_VERSION);
        assert_eq!(json["changes"][0]["to"]["short"], "sha256:bbbbbbbbbbbb");
        let cloudevent = n.body(ReceiverKind::Cloudevents);
        assert_eq!(cloudevent["specversion"], "1.0");
        assert_eq!(cloudevent["type"], "dev.cdevents.service.rolledback.0.2.0");
        assert_eq!(
            cloudevent["data"]["subject"]["content"]["artifactId"],
            format!(
                "pkg:oci/web@sha256%3A{}?repository_url=registry.example.com/shop/web",
                "b".repeat(64)
            )
        );
    }
}
