//! One run per target, enforced by the cluster itself: a
//! `coordination.k8s.io/v1` Lease named [`LEASE_NAME`] in the target
//! namespace, held by the run id.
//!
//! A local file lock only stops runs on the same machine and state
//! directory; three people (or three CI jobs) running canaries on the same
//! InferenceService from three places each "succeed" while fighting over
//! the split. The Lease is what they all see:
//! - taken with create (or an update carrying the resourceVersion it read:
//!   two takers cannot both win), when absent, free, expired, or already
//!   held by the same run (a resume);
//! - renewed every [`RENEW`] while the run lives; a renewal that finds the
//!   Lease taken by someone else (after we stalled past its duration)
//!   resolves [`TargetLease::lost`], and the run stops and compensates;
//! - released (deleted, only if it is still ours) at the end. A run killed
//!   outright leaves it to expire after [`DURATION`]; its own `resume` takes
//!   it back at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rollwright_engine::exec::StepError;
use serde_json::{Value, json};

use crate::cluster::{Cluster, ObjRef};

/// The Lease's name in the target namespace.
pub const LEASE_NAME: &str = "rollwright-run-lock";
/// How long a Lease stays valid without renewal.
pub const DURATION: Duration = Duration::from_secs(30);
/// How often it is renewed.
pub const RENEW: Duration = Duration::from_secs(10);

/// Why the Lease was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another run holds it (its id and until when).
    #[error("held by {0}")]
    Held(String),
    /// The API server said no.
    #[error("{0}")]
    Api(StepError),
}

/// A held Lease; renewed in the background until released.
pub struct TargetLease {
    cluster: Arc<Cluster>,
    holder: String,
    lost: tokio::sync::watch::Receiver<Option<String>>,
    renewer: tokio::task::JoinHandle<()>,
}

fn lease_ref(cluster: &Cluster) -> ObjRef {
    ObjRef::new("coordination.k8s.io/v1", "Lease", &cluster.namespace, LEASE_NAME)
}

fn now_micro() -> String {
    // RFC 3339 with microseconds, as the API server's MicroTime.
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// Whether the Lease `obj` is free for `holder` now: absent holder, the
/// same holder, or expired.
fn free_for(obj: &Value, holder: &str) -> Result<(), String> {
    let spec = &obj["spec"];
    let current = spec["holderIdentity"].as_str().unwrap_or_default();
    if current.is_empty() || current == holder {
        return Ok(());
    }
    let duration = spec["leaseDurationSeconds"]
        .as_u64()
        .unwrap_or(DURATION.as_secs());
    let renewed = spec["renewTime"]
        .as_str()
        .or(spec["acquireTime"].as_str())
        .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok());
    match renewed {
        Some(t) if t + Duration::from_secs(duration) < SystemTime::now() => Ok(()),
        Some(t) => {
            let left = (t + Duration::from_secs(duration))
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            Err(format!(
                "{current}, for {} more unless renewed",
                rollwright_engine::duration::Display(Duration::from_secs(left.as_secs().max(1)))
            ))
        }
        None => Err(current.to_owned()),
    }
}

impl TargetLease {
    /// Takes the target's Lease for the run `holder`.
    ///
    /// # Errors
    /// [`LeaseError::Held`] naming the holder, or the API's error.
    pub async fn acquire(cluster: Arc<Cluster>, holder: &str) -> Result<TargetLease, LeaseError> {
        let r = lease_ref(&cluster);
        let body = |rv: Option<&Value>| {
            let mut o = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": LEASE_NAME, "namespace": cluster.namespace,
                             "labels": {"app.kubernetes.io/managed-by": "rollwright"}},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": DURATION.as_secs(),
                         "acquireTime": now_micro(), "renewTime": now_micro()}
            });
            if let Some(rv) = rv {
                o["metadata"]["resourceVersion"] = rv.clone();
            }
            o
        };
        for _ in 0..5 {
            match cluster.get(&r).await.map_err(LeaseError::Api)? {
                None => match cluster.create(&r, &body(None)).await {
                    Ok(_) => break,
                    Err(e) if e.message.contains("(409") => {}
                    Err(e) => return Err(LeaseError::Api(e)),
                },
                Some(cur) => {
                    free_for(&cur, holder).map_err(LeaseError::Held)?;
                    match cluster
                        .replace(&r, &body(Some(&cur["metadata"]["resourceVersion"])))
                        .await
                    {
                        Ok(_) => break,
                        // Someone else wrote it between our read and our write: read again.
                        Err(e) if e.message.contains("(409") => {}
                        Err(e) => return Err(LeaseError::Api(e)),
                    }
                }
            }
        }
        let mine = cluster.get(&r).await.map_err(LeaseError::Api)?;
        if mine.as_ref().and_then(|m| m["spec"]["holderIdentity"].as_str()) != Some(holder) {
            return Err(LeaseError::Held(
                mine.and_then(|m| m["spec"]["holderIdentity"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "someone else".into()),
            ));
        }
        let (tx, lost) = tokio::sync::watch::channel(None);
        let renewer = tokio::spawn(renew(cluster.clone(), holder.to_owned(), tx));
        Ok(TargetLease {
            cluster,
            holder: holder.to_owned(),
            lost,
            renewer,
        })
    }

    /// Resolves (with why) when the Lease is lost: the run must stop.
    pub fn lost(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.lost.clone();
        async move {
            loop {
                if let Some(why) = rx.borrow().clone() {
                    return why;
                }
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }

    /// Gives the Lease up (deletes it, if it is still ours).
    pub async fn release(self) {
        self.renewer.abort();
        let r = lease_ref(&self.cluster);
        if let Ok(Some(cur)) = self.cluster.get(&r).await
            && cur["spec"]["holderIdentity"].as_str() == Some(self.holder.as_str())
        {
            let _ = self.cluster.delete(&r).await;
        }
    }
}

/// Renews every [`RENEW`]; reports a loss once and stops.
async fn renew(cluster: Arc<Cluster>, holder: String, lost: tokio::sync::watch::Sender<Option<String>>) {
    let r = lease_ref(&cluster);
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(RENEW).await;
        let outcome = async {
            let Some(mut cur) = cluster.get(&r).await.map_err(|e| (false, e.message))? else {
                return Err((true, "the target's Lease was deleted".to_owned()));
            };
            if cur["spec"]["holderIdentity"].as_str() != Some(holder.as_str()) {
                return Err((
                    true,
                    format!(
                        "the target's Lease is now held by {}",
                        cur["spec"]["holderIdentity"].as_str().unwrap_or("nobody")
                    ),
                ));
            }
            cur["spec"]["renewTime"] = Value::from(now_micro());
            cluster
                .replace(&r, &cur)
                .await
                .map(|_| ())
                .map_err(|e| (false, e.message))
        }
        .await;
        match outcome {
            Ok(()) => failures = 0,
            Err((true, why)) => {
                let _ = lost.send(Some(format!("lost the target lock: {why}; stopping")));
                return;
            }
            // Transient trouble: the Lease holds for DURATION; give up before it lapses.
            Err((false, why)) => {
                failures += 1;
                if u64::from(failures) * RENEW.as_secs() + RENEW.as_secs() >= DURATION.as_secs() {
                    let _ = lost.send(Some(format!(
                        "could not renew the target lock ({why}); stopping before another run may take it"
                    )));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_free_when_absent_ours_or_expired() {
        let at = |secs_ago: u64, who: &str| {
            let t = SystemTime::now() - Duration::from_secs(secs_ago);
            json!({"spec": {"holderIdentity": who, "leaseDurationSeconds": 30,
                            "renewTime": humantime::format_rfc3339_micros(t).to_string()}})
        };
        assert!(
            free_for(&at(5, "run-a"), "run-a").is_ok(),
            "a resume takes its own lease back"
        );
        assert!(free_for(&at(5, ""), "run-b").is_ok());
        assert!(free_for(&at(31, "run-a"), "run-b").is_ok(), "expired");
        let e = free_for(&at(5, "run-a"), "run-b").unwrap_err();
        assert!(e.starts_with("run-a, for 2"), "{e}");
    }
}
