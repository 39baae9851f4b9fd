//! What the cluster steps record before changing anything, and how it is
//! restored: the one implementation behind `apply` and `shift-traffic`
//! compensations and the `rollback` step.
//!
//! Records (journaled, see [`rollwright_engine::exec::StepContext::remember`]):
//! - `objects`: `[{ref, existed, object}]`, each object an `apply` touches,
//!   as it was before (or `existed: false`);
//! - `traffic`: `{ref, fields: {pointer: value}}`, the routing fields a
//!   `shift-traffic` changes, as they were before.
//!
//! Restoring always goes to the *earliest* record of an object in the run
//! (its last known-good state), so every compensation converges on the same
//! state whatever order they run in, and the first one to run does the
//! work: a failed canary at 50 % goes straight back to 0 %, not through 20
//! and 5.

use std::collections::BTreeMap;

use rollwright_engine::exec::{Memo, StepContext, StepError};
use serde_json::Value;

use crate::cluster::{Cluster, ObjRef};
use crate::traffic::merge_patch_of;

/// The traffic fields of each routing object as they were first recorded.
fn original_traffic(records: &[Memo]) -> BTreeMap<ObjRef, serde_json::Map<String, Value>> {
    let mut out = BTreeMap::new();
    for m in records.iter().filter(|m| m.key == "traffic") {
        let Some(r) = serde_json::from_value::<ObjRef>(m.value["ref"].clone()).ok() else {
            continue;
        };
        let fields = m.value["fields"].as_object().cloned().unwrap_or_default();
        out.entry(r).or_insert(fields);
    }
    out
}

/// Each object as it was first recorded: (existed, object).
fn original_objects(records: &[Memo]) -> BTreeMap<ObjRef, (bool, Value)> {
    let mut out = BTreeMap::new();
    for m in records.iter().filter(|m| m.key == "objects") {
        for o in m.value.as_array().into_iter().flatten() {
            let Some(r) = serde_json::from_value::<ObjRef>(o["ref"].clone()).ok() else {
                continue;
            };
            out.entry(r)
                .or_insert((o["existed"].as_bool().unwrap_or(false), o["object"].clone()));
        }
    }
    out
}

/// Objects recorded by `steps` (all steps when `None`).
fn touched_by(records: &[Memo], steps: Option<&[String]>) -> Vec<ObjRef> {
    let mut out: Vec<ObjRef> = Vec::new();
    for m in records.iter().filter(|m| m.key == "objects") {
        if steps.is_some_and(|s| !s.contains(&m.step)) {
            continue;
        }
        for o in m.value.as_array().into_iter().flatten() {
            if let Ok(r) = serde_json::from_value::<ObjRef>(o["ref"].clone())
                && !out.contains(&r)
            {
                out.push(r);
            }
        }
    }
    out
}

/// Journals what a restore did, when it did anything: the progress stream
/// shows it and the report lists it under the step it undid.
pub fn report(cx: &StepContext, done: &[String]) {
    // Best effort: a restore goes on even when the journal cannot be written.
    if !done.is_empty() {
        let _ = cx.remember("restored", Value::from(done.join("; ")));
    }
}

/// Sends every recorded route back to its original split. Returns what it changed.
///
/// # Errors
/// Classified API errors (a 409 from a concurrent writer is transient).
pub async fn traffic(cluster: &Cluster, cx: &StepContext, manager: &str) -> Result<Vec<String>, StepError> {
    let mut done = Vec::new();
    let originals = original_traffic(&cx.all_records());
    for r in originals.keys() {
        cluster.check_restorable(r)?;
    }
    for (r, fields) in originals {
        let Some(current) = cluster.get(&r).await? else {
            continue;
        };
        if fields
            .iter()
            .all(|(p, v)| current.pointer(p).unwrap_or(&Value::Null) == v)
        {
            continue;
        }
        let mut patch = merge_patch_of(&fields);
        patch["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        cluster.merge_patch(&r, &patch, manager).await?;
        done.push(format!("{r} traffic back to its original split"));
    }
    Ok(done)
}

/// Puts the objects recorded by `steps` (all when `None`) back as they
/// were first recorded; deletes those that did not exist when
/// `delete_created`. Returns what it changed.
///
/// # Errors
/// Classified API errors.
pub async fn objects(
    cluster: &Cluster,
    cx: &StepContext,
    steps: Option<&[String]>,
    delete_created: bool,
) -> Result<Vec<String>, StepError> {
    let records = cx.all_records();
    let originals = original_objects(&records);
    let touched = touched_by(&records, steps);
    // Every object is checked before any is touched.
    for r in &touched {
        cluster.check_restorable(r)?;
        if let Some((true, before)) = originals.get(r)
            && ObjRef::of(before, &cluster.namespace).as_ref() != Some(r)
        {
            return Err(StepError::failed(format!(
                "refusing to restore {r}: the recorded object is another one"
            )));
        }
    }
    let mut done = Vec::new();
    // Newest first: what was applied last is undone first.
    for r in touched.into_iter().rev() {
        let Some((existed, before)) = originals.get(&r) else {
            continue;
        };
        if *existed {
            let current = cluster.get(&r).await?;
            let same = current.as_ref().is_some_and(|c| {
                c.get("spec") == before.get("spec")
                    && c["metadata"]["labels"] == before["metadata"]["labels"]
                    && c["metadata"]["annotations"] == before["metadata"]["annotations"]
            });
            if !same {
                cluster.restore(&r, before).await?;
                done.push(format!("{r} restored"));
            }
        } else if delete_created && cluster.get(&r).await?.is_some() {
            cluster.delete(&r).await?;
            done.push(format!("{r} deleted (it did not exist before)"));
        }
    }
    Ok(done)
}

/// Whether what was restored holds and the restored workloads are Ready;
/// `Some(reason)` while not.
///
/// # Errors
/// Classified API errors.
pub async fn pending(
    cluster: &Cluster,
    cx: &StepContext,
    steps: Option<&[String]>,
) -> Result<Option<String>, StepError> {
    let records = cx.all_records();
    let originals = original_objects(&records);
    let restored_whole = touched_by(&records, steps);
    for (r, fields) in original_traffic(&records) {
        // An object restored whole carries its own original split.
        if restored_whole.contains(&r) && originals.get(&r).is_some_and(|(existed, _)| *existed) {
            continue;
        }
        if let Some(current) = cluster.get(&r).await?
            && fields
                .iter()
                .any(|(p, v)| current.pointer(p).unwrap_or(&Value::Null) != v)
        {
            return Ok(Some(format!("{r}: traffic not back yet")));
        }
    }
    for r in restored_whole {
        if !originals.get(&r).is_some_and(|(existed, _)| *existed) {
            continue;
        }
        let Some(obj) = cluster.get(&r).await? else {
            return Ok(Some(format!("{r} is missing")));
        };
        if let Some(why) = not_ready(&obj) {
            return Ok(Some(format!("{r}: {why}")));
        }
    }
    Ok(None)
}

/// [`pending`] as a step's progress: done, or a wait of `after` with the reason.
///
/// # Errors
/// Classified API errors.
pub async fn settled(
    cluster: &Cluster,
    cx: &StepContext,
    steps: Option<&[String]>,
    after: std::time::Duration,
) -> Result<rollwright_engine::exec::Progress, StepError> {
    use rollwright_engine::exec::Progress;
    Ok(match pending(cluster, cx, steps).await? {
        None => Progress::Done {
            outputs: serde_json::Map::new(),
        },
        Some(reason) => Progress::Wait { after, reason },
    })
}

/// Why a workload is not ready (`None` when it is, or is not a workload).
#[must_use]
pub fn not_ready(obj: &Value) -> Option<String> {
    let status = &obj["status"];
    match obj["kind"].as_str() {
        Some("Deployment") => {
            let want = obj["spec"]["replicas"].as_u64().unwrap_or(1);
            let generation = obj["metadata"]["generation"].as_u64().unwrap_or(0);
            let observed = status["observedGeneration"].as_u64().unwrap_or(0);
            let updated = status["updatedReplicas"].as_u64().unwrap_or(0);
            let available = status["availableReplicas"].as_u64().unwrap_or(0);
            let total = status["replicas"].as_u64().unwrap_or(0);
            if observed < generation {
                Some("rollout not observed yet".into())
            } else if updated < want || available < want || total > want {
                // Why pods are not even created (a missing ServiceAccount, a
                // quota, an admission webhook), or the rollout gave up: the
                // Deployment controller's own words.
                let why = status["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| {
                        (c["type"] == "ReplicaFailure" && c["status"] == "True")
                            || (c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded")
                    })
                    .and_then(|c| c["message"].as_str())
                    .map(|m| format!("; {m}"))
                    .unwrap_or_default();
                Some(format!(
                    "{available} of {want} replicas available ({updated} updated){why}"
                ))
            } else {
                None
            }
        }
        Some("InferenceService") => {
            let ready = status["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map(|c| {
                    (
                        c["status"] == "True",
                        c["message"].as_str().unwrap_or("").to_owned(),
                    )
                });
            let p = &status["components"]["predictor"];
            let latest = p["latestCreatedRevision"].as_str();
            match ready {
                Some((true, _)) if latest.is_some() && latest != p["latestReadyRevision"].as_str() => Some(
                    format!("revision {} is not Ready yet", latest.unwrap_or_default()),
                ),
                Some((true, _)) if status["observedGeneration"] == obj["metadata"]["generation"] => None,
                Some((true, _)) => Some("new generation not observed yet".into()),
                Some((false, msg)) => Some(format!("not Ready: {msg}")),
                None => Some("no Ready condition yet".into()),
            }
        }
        Some("SeldonDeployment") => {
            // Available, and reporting a ready deployment for every predictor
            // of the current spec (a state left from before a change is not
            // readiness of the change).
            let predictors = obj["spec"]["predictors"].as_array().map_or(0, Vec::len);
            let deployments = status["deploymentStatus"].as_object();
            let ready = deployments.map_or(0, |d| {
                d.values()
                    .filter(|s| {
                        s["availableReplicas"].as_u64().unwrap_or(0) >= s["replicas"].as_u64().unwrap_or(1)
                    })
                    .count()
            });
            match status["state"].as_str() {
                Some("Available")
                    if deployments.map_or(0, serde_json::Map::len) == predictors && ready == predictors =>
                {
                    None
                }
                Some("Available") => Some(format!("{ready} of {predictors} predictors ready")),
                other => Some(format!("state {}", other.unwrap_or("unknown"))),
            }
        }
        Some("Pod") => (!crate::cluster::pod_ready(obj)).then(|| "not Ready".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollwright_engine::exec::Memo;
    use serde_json::json;

    /// A record naming an object the run never applied — another model's
    /// production InferenceService, a ConfigMap in `default`, a cluster-scoped
    /// kind — is refused before any request is made (this cluster has no
    /// client: a request would fail differently).
    #[tokio::test]
    async fn restores_only_what_the_run_itself_declared_in_its_namespace() {
        let reach = crate::reach::Reach {
            context: "restore-test".into(),
            ..Default::default()
        };
        let cluster = Cluster::at(reach, "risk").unwrap();
        let ours = ObjRef::new("apps/v1", "Deployment", "risk", "fraud-canary");
        cluster.allow([ours.clone()]);
        let cx = |memos: Vec<Memo>| {
            let cx = StepContext::detached("deploy");
            cx.records.write().unwrap().extend(memos);
            cx
        };
        let objects = |r: &ObjRef, obj: Value| Memo {
            step: "deploy".into(),
            key: "objects".into(),
            value: json!([{"ref": r, "existed": true, "object": obj}]),
        };
        for (forged, why) in [
            (
                ObjRef::new(
                    "serving.kserve.io/v1beta1",
                    "InferenceService",
                    "risk",
                    "payments",
                ),
                "no step of this run",
            ),
            (
                ObjRef::new("v1", "ConfigMap", "default", "x"),
                "outside the run's namespace",
            ),
            (
                ObjRef {
                    api_version: "v1".into(),
                    kind: "Namespace".into(),
                    namespace: None,
                    name: "risk".into(),
                },
                "outside the run's namespace",
            ),
        ] {
            let e = objects_restored(&cluster, &cx(vec![objects(&forged, json!({}))])).await;
            assert!(e.contains(why), "{forged}: {e}");
            let t = Memo {
                step: "shift".into(),
                key: "traffic".into(),
                value: json!({"ref": forged, "fields": {"/spec/x": 1}}),
            };
            let e = traffic(&cluster, &cx(vec![t]), "m").await.unwrap_err().message;
            assert!(e.contains(why), "{forged}: {e}");
        }
        // Our own object, recorded as another one: refused too.
        let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "default"}});
        let e = objects_restored(&cluster, &cx(vec![objects(&ours, other)])).await;
        assert!(e.contains("the recorded object is another one"), "{e}");
    }

    async fn objects_restored(cluster: &Cluster, cx: &StepContext) -> String {
        objects(cluster, cx, None, true).await.unwrap_err().message
    }
}
