//! One webhook replica at a time sends notifications: the holder of the Lease
//! `pod-reloaded-notifier` in the webhook's namespace. The holder renews it every
//! `RENEW`; another replica takes it over once it has not been renewed for `DURATION`.
//! Every write is guarded by the Lease's `resourceVersion`, so two replicas never both
//! think they hold it from the same read.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// How long a Lease not renewed stays its holder's.
pub const DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews it.
pub const RENEW: Duration = Duration::from_secs(5);

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    pub identity: String,
}

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, name: &str, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity,
        }
    }

    /// Takes or renews the Lease; true when we hold it after this call.
    pub async fn try_hold(&self) -> anyhow::Result<bool> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(DURATION.as_secs() as i32),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return Ok(self
                .api
                .create(&PostParams::default(), &lease)
                .await
                .is_ok());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(DURATION);
        let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
            renewed.0 + jiff::SignedDuration::try_from(duration).unwrap_or_default() < now
        });
        if !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(DURATION.as_secs() as i32);
        spec.renew_time = Some(MicroTime(now));
        // The read resourceVersion rides along: a concurrent writer makes this a 409.
        Ok(self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .is_ok())
    }
}
