//! Leader election: one `coordination.k8s.io/v1` Lease
//! ([`LEASE_NAME`]) that the replicas compete for. The holder renews it;
//! a replica takes it only when it is free or expired, with an update that
//! carries the resourceVersion it read (two takers cannot both win). Each
//! new holder increments `leaseTransitions`: that number is the leader's
//! **epoch**, stamped on everything it writes, so a deposed leader's late
//! writes are recognised and refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

/// The Lease the replicas compete for.
pub const LEASE_NAME: &str = "rollwright-controller";

/// Where a replica stands.
pub struct Leadership {
    api: Api<Lease>,
    identity: String,
    duration: Duration,
    /// Unix ms of the last successful renewal (0: not leading).
    renewed_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now() -> MicroTime {
    let ms = i64::try_from(now_ms()).unwrap_or(i64::MAX);
    MicroTime(k8s_openapi::jiff::Timestamp::from_millisecond(ms).unwrap_or_default())
}

impl Leadership {
    pub fn new(api: Api<Lease>, identity: &str, duration: Duration) -> Arc<Self> {
        Arc::new(Leadership {
            api,
            identity: identity.to_owned(),
            duration,
            renewed_ms: AtomicU64::new(0),
        })
    }

    /// Whether this replica may still act as leader: its last renewal is
    /// younger than the Lease's duration, less a margin for clock rate and
    /// the time a write takes. A leader that was paused (stopped, starved,
    /// cut off) finds it no longer may before it writes anything.
    pub fn valid(&self) -> bool {
        let renewed = self.renewed_ms.load(Ordering::SeqCst);
        let margin = self.duration.as_millis() as u64 / 5;
        renewed > 0 && now_ms().saturating_sub(renewed) + margin < self.duration.as_millis() as u64
    }

    /// Waits until this replica holds the Lease; returns its epoch.
    pub async fn acquire(&self, tick: &(dyn Fn() + Send + Sync)) -> i64 {
        loop {
            tick();
            match self.try_take().await {
                Ok(Some(epoch)) => return epoch,
                Ok(None) => {}
                Err(e) => tracing::warn!("leader election: {e}"),
            }
            tokio::time::sleep(self.duration / 5).await;
        }
    }

    /// One attempt: `Some(epoch)` when taken (or already ours).
    async fn try_take(&self) -> Result<Option<i64>, kube::Error> {
        let seconds = i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let at = now_ms();
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    labels: Some(
                        [("app.kubernetes.io/managed-by".to_owned(), "rollwright".to_owned())].into(),
                    ),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(1),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.renewed_ms.store(at, Ordering::SeqCst);
                    tracing::info!("leading as {} (epoch 1)", self.identity);
                    Ok(Some(1))
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        if holder == self.identity {
            // Ours already (a restart with the same identity is a new term).
            spec.lease_transitions = Some(transitions + 1);
        } else {
            let duration = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(seconds)).unwrap_or(15),
            );
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| u64::try_from(t.0.as_millisecond()).unwrap_or(0));
            let expired =
                holder.is_empty() || renewed.is_none_or(|t| t + (duration.as_millis() as u64) < now_ms());
            if !expired {
                return Ok(None);
            }
            spec.lease_transitions = Some(transitions + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.acquire_time = Some(now());
        spec.renew_time = Some(now());
        let epoch = i64::from(transitions + 1);
        match self.api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
            Ok(_) => {
                self.renewed_ms.store(at, Ordering::SeqCst);
                tracing::info!("leading as {} (epoch {epoch})", self.identity);
                Ok(Some(epoch))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the Lease says this replica no longer leads in `epoch` (held
    /// by another, or taken again since). A newer epoch found stamped on a
    /// journal chunk or a status is believed only when the Lease agrees:
    /// anyone who may write ConfigMaps or a status could stamp one, only
    /// the replicas may write the Lease. Unreadable: deposed (stop rather
    /// than risk two writers).
    pub async fn deposed(&self, epoch: i64) -> bool {
        match self.api.get(LEASE_NAME).await {
            Ok(lease) => {
                let spec = lease.spec.unwrap_or_default();
                spec.holder_identity.as_deref() != Some(self.identity.as_str())
                    || i64::from(spec.lease_transitions.unwrap_or(0)) != epoch
            }
            Err(_) => true,
        }
    }

    /// Renews the Lease every fifth of its duration; returns (the replica
    /// must stop) when it is lost: taken by another replica, or not renewed
    /// within its duration.
    pub async fn keep(&self, tick: &(dyn Fn() + Send + Sync)) -> String {
        loop {
            tokio::time::sleep(self.duration / 5).await;
            tick();
            if !self.valid() {
                return format!(
                    "the leader Lease was not renewed within {:?}: another replica may lead now",
                    self.duration
                );
            }
            let at = now_ms();
            match self.api.get(LEASE_NAME).await {
                Ok(mut lease) => {
                    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                    if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                        return format!(
                            "the leader Lease is held by {}",
                            spec.holder_identity.as_deref().unwrap_or("nobody")
                        );
                    }
                    spec.renew_time = Some(now());
                    match self.api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
                        Ok(_) => self.renewed_ms.store(at, Ordering::SeqCst),
                        Err(e) => tracing::warn!("renewing the leader Lease: {e}"),
                    }
                }
                Err(e) => tracing::warn!("reading the leader Lease: {e}"),
            }
        }
    }
}
