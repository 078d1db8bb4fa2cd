//! Sending one notification to one receiver: HTTPS only, TLS verified, each attempt
//! bounded, failures retried on a bounded schedule, then dropped with one Warning line.
//! Every delivery runs on its own task: a slow or dead receiver delays nothing else.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use pod_reloaded_contract::notify::Receiver;
use sha2::Sha256;
use tracing::{info, warn};

use crate::metrics::NotificationCounter;

/// How deliveries are made.
#[derive(Clone)]
pub struct Delivery {
    pub http: reqwest::Client,
    /// Where the Secret `pod-reloaded-notify` is mounted: one file per key.
    pub secrets_dir: PathBuf,
    /// Waits between attempts: one attempt more than there are waits.
    pub retry_delays: Vec<Duration>,
    pub counter: NotificationCounter,
}

/// A receiver answered, or could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Not worth another attempt (a missing Secret key, a plain-HTTP URL).
    #[error("{0}")]
    Permanent(String),
    #[error("{0}")]
    Retryable(String),
}

impl Delivery {
    /// Sends `body` to `receiver`, retrying on the schedule; true once it was accepted.
    pub async fn send(
        &self,
        name: &str,
        receiver: &Receiver,
        body: &serde_json::Value,
        what: &str,
    ) -> bool {
        let body = body.to_string();
        let attempts = self.retry_delays.len() + 1;
        for attempt in 1..=attempts {
            match self.attempt(receiver, &body).await {
                Ok(()) => {
                    info!(
                        receiver = name,
                        notification = what,
                        attempt,
                        "notification delivered"
                    );
                    self.counter.count(name, "delivered");
                    return true;
                }
                Err(DeliveryError::Permanent(reason)) => {
                    warn!(
                        receiver = name,
                        notification = what,
                        reason,
                        "notification dropped: it cannot be delivered"
                    );
                    self.counter.count(name, "dropped");
                    return false;
                }
                Err(DeliveryError::Retryable(reason)) if attempt < attempts => {
                    let wait = self.retry_delays[attempt - 1];
                    info!(receiver = name, notification = what, attempt, reason, retry_in = %humantime::format_duration(wait), "notification not delivered; retrying");
                    self.counter.count(name, "retried");
                    tokio::time::sleep(wait).await;
                }
                Err(DeliveryError::Retryable(reason)) => {
                    warn!(
                        receiver = name,
                        notification = what,
                        attempts,
                        reason,
                        "notification dropped after the last attempt"
                    );
                    self.counter.count(name, "dropped");
                }
            }
        }
        false
    }

    async fn attempt(&self, receiver: &Receiver, body: &str) -> Result<(), DeliveryError> {
        let url = read_secret(&self.secrets_dir, &receiver.url_key)?;
        if !url.starts_with("https://") {
            return Err(DeliveryError::Permanent(format!(
                "the URL in {} is not https:// (notifications carry workload names: TLS only)",
                receiver.url_key
            )));
        }
        let content_type = match receiver.kind {
            pod_reloaded_contract::notify::ReceiverKind::Cloudevents => {
                "application/cloudevents+json; charset=utf-8"
            }
            _ => "application/json",
        };
        let mut request = self
            .http
            .post(&url)
            .header("content-type", content_type)
            .header(
                "user-agent",
                concat!("pod-reloaded/", env!("CARGO_PKG_VERSION")),
            )
            .body(body.to_string());
        if let Some(key) = &receiver.hmac_key {
            let key = read_secret(&self.secrets_dir, key)?;
            request = request.header("x-signature", signature(key.as_bytes(), body.as_bytes()));
        }
        let response = request
            .send()
            .await
            .map_err(|e| DeliveryError::Retryable(describe(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let reason = format!("the receiver answered HTTP {}", status.as_u16());
        // A client error will not go away by itself, except these.
        if status.is_client_error() && !matches!(status.as_u16(), 408 | 425 | 429) {
            Err(DeliveryError::Permanent(reason))
        } else {
            Err(DeliveryError::Retryable(reason))
        }
    }
}

/// `sha256=<hex HMAC-SHA256 of the body>`, as Flux's generic-hmac provider signs.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn read_secret(dir: &Path, key: &str) -> Result<String, DeliveryError> {
    let path = dir.join(key);
    std::fs::read_to_string(&path)
        .map(|text| text.trim().to_string())
        .map_err(|e| {
            DeliveryError::Permanent(format!(
                "key {key} of the Secret {} is not readable at {}: {e}",
                pod_reloaded_contract::NOTIFY_SECRET,
                path.display()
            ))
        })
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".to_string()
    } else {
        pod_reloaded_bootstrap::error_chain(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_flux_generic_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
