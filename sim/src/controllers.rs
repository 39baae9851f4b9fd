//! The embedded cluster's own controllers (what kube-controller-manager
//! does on a real cluster), one pass per tick, in-process:
//! - **Deployment**: a ReplicaSet per pod template and the Pods it wants
//!   (scheduled to the embedded node), rolled like the real
//!   `RollingUpdate` with full surge (older sets keep their pods until every
//!   pod of the new set is Ready); status (observedGeneration, replicas,
//!   updated/ready/available, conditions) as the real controller reports
//!   it, so `kubectl rollout status` works. Pods' own status is the node
//!   agent's ([`crate::world`]), as a kubelet's is;
//! - **garbage collection**: objects whose owner is gone are deleted.
//!
//! The simulated world (serving platforms, pods' lifecycle, routing, GitOps)
//! runs beside it over the API, as it does on kube-apiserver.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{fnv, meta};

use crate::api::State;

/// The node the embedded cluster schedules every pod to.
pub const NODE: &str = "sim-node-0";

/// Runs the controllers until the sim stops.
pub async fn run(state: Arc<State>, tick: Duration) {
    loop {
        reconcile_deployments(&state);
        collect_garbage(&state);
        tokio::time::sleep(tick).await;
    }
}

/// A pod spec as the scheduler leaves it: on the embedded node.
fn scheduled(spec: &Value) -> Value {
    let mut spec = spec.clone();
    if spec.is_object() {
        spec["nodeName"] = Value::from(NODE);
    }
    spec
}

/// The first owner of an object: (namespace, owner name).
fn owner(v: &Value) -> (&str, &str) {
    (
        meta(v, "namespace"),
        v["metadata"]["ownerReferences"][0]["name"]
            .as_str()
            .unwrap_or_default(),
    )
}

fn reconcile_deployments(state: &State) {
    let deployments = state.snapshot("apps", "deployments");
    let sets = state.snapshot("apps", "replicasets");
    let pods = state.snapshot("", "pods");
    let mut sets_of: HashMap<(&str, &str), Vec<&Value>> = HashMap::new();
    for s in &sets {
        sets_of.entry(owner(s)).or_default().push(s);
    }
    let mut pods_of: HashMap<(&str, &str), Vec<&Value>> = HashMap::new();
    for p in &pods {
        pods_of.entry(owner(p)).or_default().push(p);
    }
    for d in &deployments {
        let (ns, name) = (meta(d, "namespace"), meta(d, "name"));
        // The embedded cluster runs a bounded world (a real cluster would be
        // bounded by its nodes).
        let replicas = d["spec"]["replicas"]
            .as_u64()
            .unwrap_or(1)
            .min(crate::scenario::MAX_REPLICAS);
        let template = d["spec"]["template"].clone();
        let hash = fnv(&template);
        let rs_name = format!("{name}-{hash:x}");
        let mut labels = template["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels["pod-template-hash"] = Value::from(format!("{hash:x}"));
        let owner_ref = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": d["metadata"]["uid"], "controller": true}]);
        // The current ReplicaSet.
        let rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs_name, "namespace": ns, "labels": labels, "ownerReferences": owner_ref},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": template},
        });
        state.ensure("apps", "replicasets", ns, &rs_name, rs);
        let owned: &[&Value] = sets_of.get(&(ns, name)).map_or(&[], Vec::as_slice);
        // Older ReplicaSets of this Deployment go to zero, with their Pods.
        for old in owned {
            let old_name = meta(old, "name");
            if old_name != rs_name && old["spec"]["replicas"].as_u64() != Some(0) {
                let mut o = (*old).clone();
                o["spec"]["replicas"] = Value::from(0);
                state.ensure("apps", "replicasets", ns, old_name, o);
            }
        }
        // Pods of every owned ReplicaSet, as many as it wants. A rolling
        // update: the current set first; older sets keep their pods until
        // every pod of the current set is Ready.
        let mut ordered: Vec<&Value> = owned.to_vec();
        ordered.sort_by_key(|s| meta(s, "name") != rs_name);
        let (mut updated, mut ready, mut total, mut updated_ready) = (0u64, 0u64, 0u64, 0u64);
        // Pods are admitted only with an existing ServiceAccount (the
        // ServiceAccount admission plugin); the ReplicaSet reports why not.
        let mut replica_failure: Option<String> = None;
        for set in ordered {
            let set_name = meta(set, "name");
            let existing: &[&Value] = pods_of.get(&(ns, set_name)).map_or(&[], Vec::as_slice);
            let (mut set_total, mut set_ready) = (0u64, 0u64);
            let want = if set_name == rs_name {
                replicas
            } else if updated_ready >= replicas {
                0
            } else {
                existing.len() as u64
            };
            for i in 0..want.max(existing.len() as u64) {
                let pod_name = format!("{set_name}-{i}");
                let found = existing.iter().find(|p| meta(p, "name") == pod_name);
                if i >= want {
                    if found.is_some() {
                        state.remove("", "pods", ns, &pod_name);
                    }
                    continue;
                }
                let pod = match found {
                    Some(p) => (*p).clone(),
                    None => {
                        let spec = &set["spec"]["template"]["spec"];
                        let sa = spec["serviceAccountName"]
                            .as_str()
                            .or_else(|| spec["serviceAccount"].as_str())
                            .unwrap_or("default");
                        if state.get_object("v1", "ServiceAccount", ns, sa).is_none() {
                            replica_failure = Some(format!(
                                "pods \"{set_name}-\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
                            ));
                            continue;
                        }
                        let p = json!({
                            "apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": pod_name, "namespace": ns, "labels": set["spec"]["template"]["metadata"]["labels"],
                                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": set_name, "controller": true}]},
                            "spec": scheduled(&set["spec"]["template"]["spec"]),
                            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
                        });
                        state.ensure("", "pods", ns, &pod_name, p.clone());
                        p
                    }
                };
                let is_ready = crate::routing::pod_ready(&pod);
                total += 1;
                ready += u64::from(is_ready);
                set_total += 1;
                set_ready += u64::from(is_ready);
                if set_name == rs_name {
                    updated += 1;
                    updated_ready += u64::from(is_ready);
                }
            }
            // The ReplicaSet's own status, as its controller reports it.
            let set_status = json!({
                "observedGeneration": set["metadata"]["generation"],
                "replicas": set_total, "fullyLabeledReplicas": set_total,
                "readyReplicas": set_ready, "availableReplicas": set_ready,
            });
            if set["status"] != set_status {
                state.set_status("apps", "replicasets", ns, set_name, set_status);
            }
        }
        let done = updated == replicas && updated_ready == replicas && total == replicas;
        let old = &d["status"];
        let available = ready >= replicas;
        let mut status = json!({
            "observedGeneration": d["metadata"]["generation"],
            "replicas": total, "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready,
            "conditions": [
                {"type": "Available", "status": if available { "True" } else { "False" }, "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }},
                {"type": "Progressing", "status": "True", "reason": if done { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" }},
            ],
        });
        if ready < total {
            status["unavailableReplicas"] = Value::from(total - ready);
        }
        if let (Some(message), Some(conditions)) = (replica_failure, status["conditions"].as_array_mut()) {
            conditions.push(json!({"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message}));
        }
        if old != &status {
            state.set_status("apps", "deployments", ns, name, status);
        }
    }
}

/// Deletes objects whose controlling owner is gone (cascading over ticks).
fn collect_garbage(state: &State) {
    const OWNERS: &[(&str, &str, &str)] = &[
        ("Deployment", "apps", "deployments"),
        ("ReplicaSet", "apps", "replicasets"),
        ("InferenceService", "serving.kserve.io", "inferenceservices"),
        (
            "SeldonDeployment",
            "machinelearning.seldon.io",
            "seldondeployments",
        ),
    ];
    let orphans: Vec<(&str, &str, String, String)> = state
        .read(|store| {
            let mut out = Vec::new();
            for (group, plural) in [("apps", "deployments"), ("apps", "replicasets"), ("", "pods")] {
                for o in store.of_kind(group, plural) {
                    let r = &o["metadata"]["ownerReferences"][0];
                    let Some((_, og, op)) = OWNERS.iter().find(|(k, _, _)| r["kind"].as_str() == Some(k))
                    else {
                        continue;
                    };
                    let ns = meta(o, "namespace").to_owned();
                    let owner = store.objects.get(&(
                        (*og).to_owned(),
                        (*op).to_owned(),
                        ns.clone(),
                        r["name"].as_str().unwrap_or_default().to_owned(),
                    ));
                    let gone = owner.is_none_or(|w| r["uid"].is_string() && w["metadata"]["uid"] != r["uid"]);
                    if gone {
                        out.push((group, plural, ns, meta(o, "name").to_owned()));
                    }
                }
            }
            out
        })
        .unwrap_or_default();
    for (group, plural, ns, name) in orphans {
        state.remove(group, plural, &ns, &name);
    }
}
