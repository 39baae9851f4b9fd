//! Simulated controllers. The Deployment controller creates a ReplicaSet
//! per pod template and the Pods it wants; Pods become Ready after the
//! startup delay; Deployment status (observedGeneration, replicas,
//! updated/ready/available, Available and Progressing conditions) follows
//! the real controller closely enough for `kubectl rollout status`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::api::State;
use crate::faults::{Behaviour, PodFault};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn fnv(v: &Value) -> u32 {
    let h = v.to_string().bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    h & 0x7fff_ffff
}

/// Runs the controllers until the sim stops.
pub async fn run(state: Arc<State>, tick: Duration, startup: Duration) {
    loop {
        reconcile_deployments(&state, startup);
        tokio::time::sleep(tick).await;
    }
}

fn reconcile_deployments(state: &State, startup: Duration) {
    for d in state.snapshot("apps", "deployments") {
        let (Some(ns), Some(name)) = (
            d["metadata"]["namespace"].as_str(),
            d["metadata"]["name"].as_str(),
        ) else {
            continue;
        };
        let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
        let template = d["spec"]["template"].clone();
        let hash = fnv(&template);
        let rs_name = format!("{name}-{hash:x}");
        let mut labels = template["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels["pod-template-hash"] = Value::from(format!("{hash:x}"));
        let owner = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": d["metadata"]["uid"], "controller": true}]);
        // The current ReplicaSet.
        let rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs_name, "namespace": ns, "labels": labels, "ownerReferences": owner},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": template},
        });
        state.ensure("apps", "replicasets", ns, &rs_name, rs);
        // Older ReplicaSets of this Deployment go to zero, with their Pods.
        for old in state.snapshot("apps", "replicasets") {
            let owned = old["metadata"]["ownerReferences"][0]["name"].as_str() == Some(name)
                && old["metadata"]["namespace"].as_str() == Some(ns);
            let old_name = old["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            if owned && old_name != rs_name && old["spec"]["replicas"].as_u64() != Some(0) {
                let mut o = old.clone();
                o["spec"]["replicas"] = Value::from(0);
                state.ensure("apps", "replicasets", ns, &old_name, o);
            }
        }
        // Pods of every owned ReplicaSet, as many as it wants.
        let mut updated = 0u64;
        let mut ready = 0u64;
        let mut total = 0u64;
        for set in state.snapshot("apps", "replicasets") {
            if set["metadata"]["ownerReferences"][0]["name"].as_str() != Some(name)
                || set["metadata"]["namespace"].as_str() != Some(ns)
            {
                continue;
            }
            let set_name = set["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let want = set["spec"]["replicas"].as_u64().unwrap_or(0);
            let pods: Vec<Value> = state
                .snapshot("", "pods")
                .into_iter()
                .filter(|p| {
                    p["metadata"]["namespace"].as_str() == Some(ns)
                        && p["metadata"]["ownerReferences"][0]["name"].as_str() == Some(set_name.as_str())
                })
                .collect();
            for i in 0..want.max(pods.len() as u64) {
                let pod_name = format!("{set_name}-{i}");
                let existing = pods
                    .iter()
                    .find(|p| p["metadata"]["name"].as_str() == Some(pod_name.as_str()));
                if i >= want {
                    state.remove("", "pods", ns, &pod_name);
                    continue;
                }
                let pod = match existing {
                    Some(p) => p.clone(),
                    None => {
                        let spec = set["spec"]["template"]["spec"].clone();
                        let p = json!({
                            "apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": pod_name, "namespace": ns, "labels": set["spec"]["template"]["metadata"]["labels"],
                                         "annotations": {"sim.rollwright.dev/started-ms": now_ms().to_string()},
                                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": set_name, "controller": true}]},
                            "spec": spec,
                            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]},
                        });
                        state.ensure("", "pods", ns, &pod_name, p.clone());
                        p
                    }
                };
                let started: u64 = pod["metadata"]["annotations"]["sim.rollwright.dev/started-ms"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let image = pod["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let fault = state.pod_fault(&image);
                let delay = match &fault {
                    Some(PodFault {
                        behaviour: Behaviour::SlowStart { seconds },
                        ..
                    }) => Duration::from_secs_f64(*seconds),
                    _ => startup,
                };
                let elapsed = now_ms().saturating_sub(started);
                let is_ready = fault
                    .as_ref()
                    .is_none_or(|f| matches!(f.behaviour, Behaviour::SlowStart { .. }))
                    && elapsed >= u64::try_from(delay.as_millis()).unwrap_or(0);
                match fault.as_ref().map(|f| &f.behaviour) {
                    Some(Behaviour::CrashLoop) => {
                        // A restart a second, waiting in CrashLoopBackOff in between.
                        let restarts = elapsed / 1000;
                        let containers: Vec<Value> = pod["spec"]["containers"]
                            .as_array()
                            .map(|cs| cs.iter().map(|c| json!({"name": c["name"], "ready": false, "restartCount": restarts,
                                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}},
                                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}})).collect())
                            .unwrap_or_default();
                        let status = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}], "containerStatuses": containers});
                        if pod.get("status") != Some(&status) {
                            state.set_status("", "pods", ns, &pod_name, status);
                        }
                    }
                    Some(Behaviour::NeverReady) => {}
                    _ => {
                        if is_ready && pod["status"]["phase"].as_str() != Some("Running") {
                            let containers: Vec<Value> = pod["spec"]["containers"]
                                .as_array()
                                .map(|cs| cs.iter().map(|c| json!({"name": c["name"], "ready": true, "restartCount": 0, "state": {"running": {}}})).collect())
                                .unwrap_or_default();
                            state.set_status("", "pods", ns, &pod_name, json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": containers}));
                        }
                    }
                }
                total += 1;
                if set_name == rs_name {
                    updated += 1;
                    ready += u64::from(is_ready);
                }
            }
        }
        let done = updated == replicas && ready == replicas && total == replicas;
        let status = json!({
            "observedGeneration": d["metadata"]["generation"],
            "replicas": total, "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready,
            "conditions": [
                {"type": "Available", "status": if ready >= replicas { "True" } else { "False" }, "reason": if ready >= replicas { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }},
                {"type": "Progressing", "status": "True", "reason": if done { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" }},
            ],
        });
        if d.get("status") != Some(&status) {
            state.set_status("apps", "deployments", ns, name, status);
        }
    }
}
