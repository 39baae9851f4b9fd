//! Simulated controllers, one pass per tick:
//! - **InferenceService**: a predictor Deployment per revision (a new one
//!   when `spec.predictor` or the version changes), a status URL, the
//!   `IngressReady`/`PredictorReady`/`Ready` conditions and
//!   `components.predictor.traffic` with `canaryTrafficPercent` honoured
//!   (latest revision gets that share, the last rolled-out one the rest;
//!   `0` is a rollback; none or `100` promotes once the latest is Ready);
//! - **SeldonDeployment**: a Deployment per predictor, `state` and
//!   `deploymentStatus`;
//! - **Deployment**: a ReplicaSet per pod template and the Pods it wants,
//!   rolled like the real `RollingUpdate` with full surge (older sets keep
//!   their pods until every pod of the new set is Ready); Pods become Ready after the startup delay (scaled by the time scale)
//!   unless a pod fault says otherwise; status (observedGeneration,
//!   replicas, updated/ready/available, conditions) as the real controller
//!   reports it, so `kubectl rollout status` works;
//! - **garbage collection**: objects whose owner is gone are deleted;
//! - **routing**: the traffic split the model servers follow.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::api::State;
use crate::faults::Behaviour;
use crate::routing;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn fnv(v: &Value) -> u32 {
    let h = v.to_string().bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    h & 0x7fff_ffff
}

fn meta<'a>(v: &'a Value, field: &str) -> &'a str {
    v["metadata"][field].as_str().unwrap_or_default()
}

/// Runs the controllers until the sim stops.
pub async fn run(state: Arc<State>, tick: Duration) {
    loop {
        reconcile_inference_services(&state);
        reconcile_seldon(&state);
        reconcile_deployments(&state);
        collect_garbage(&state);
        if let Some(routes) = state.read(routing::compute) {
            state.models.set_routes(routes);
        }
        tokio::time::sleep(tick).await;
    }
}

/// A condition, keeping its lastTransitionTime while its status holds.
fn condition(old: &Value, kind: &str, ok: bool, reason: &str, message: &str) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = old["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind && c["status"] == status))
        .and_then(|c| c["lastTransitionTime"].as_str())
        .map_or_else(now_rfc3339, str::to_owned);
    let mut c = json!({"type": kind, "status": status, "lastTransitionTime": since});
    if !ok {
        c["reason"] = Value::from(reason);
        c["message"] = Value::from(message);
    }
    c
}

fn deployment_ready(d: &Value) -> bool {
    let want = d["spec"]["replicas"].as_u64().unwrap_or(1);
    d["status"]["observedGeneration"] == d["metadata"]["generation"]
        && d["status"]["readyReplicas"].as_u64().unwrap_or(0) >= want.max(1)
        && d["status"]["updatedReplicas"].as_u64().unwrap_or(0) >= want
        && d["status"]["replicas"].as_u64().unwrap_or(0) <= want
}

/// The model version an InferenceService serves: its `version` label, else
/// the last segment of `storageUri` (`models:/fraud/8` → `8`).
fn isvc_version(isvc: &Value) -> Option<String> {
    routing::version_label(&isvc["metadata"]["labels"])
        .map(str::to_owned)
        .or_else(|| {
            isvc["spec"]["predictor"]["model"]["storageUri"]
                .as_str()
                .and_then(|u| u.trim_end_matches('/').rsplit(['/', ':']).next())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
}

fn reconcile_inference_services(state: &State) {
    let isvcs = state.snapshot("serving.kserve.io", "inferenceservices");
    if isvcs.is_empty() {
        return;
    }
    let deployments = state.snapshot("apps", "deployments");
    for isvc in isvcs {
        let (ns, name) = (meta(&isvc, "namespace"), meta(&isvc, "name"));
        let predictor = &isvc["spec"]["predictor"];
        let version = isvc_version(&isvc);
        let mut template = predictor.clone();
        if let Some(m) = template.as_object_mut() {
            m.remove("canaryTrafficPercent");
        }
        let hash = format!("{:x}", fnv(&json!([template, version])));
        // Revisions: the predictor Deployments, oldest first.
        let mut revisions: Vec<(u32, String, String, bool)> = deployments
            .iter()
            .filter(|d| meta(d, "namespace") == ns)
            .filter(|d| d["metadata"]["labels"]["serving.kserve.io/inferenceservice"].as_str() == Some(name))
            .filter_map(|d| {
                let rev = d["metadata"]["labels"]["serving.knative.dev/revision"].as_str()?;
                let n = rev.rsplit('-').next()?.parse().ok()?;
                let h = d["metadata"]["annotations"]["sim.rollwright.dev/predictor-hash"]
                    .as_str()
                    .unwrap_or_default();
                Some((n, rev.to_owned(), h.to_owned(), deployment_ready(d)))
            })
            .collect();
        revisions.sort();
        if revisions.last().is_none_or(|r| r.2 != hash) {
            let n = revisions.last().map_or(1, |r| r.0 + 1);
            let rev = format!("{name}-predictor-{n:05}");
            create_revision(state, &isvc, &rev, &hash, version.as_deref());
            revisions.push((n, rev, hash.clone(), false));
        }
        let Some((_, latest, _, latest_ready)) = revisions.last().cloned() else {
            continue;
        };
        let ready_of = |rev: &str| revisions.iter().any(|r| r.1 == rev && r.3);
        let old = &isvc["status"];
        let pstatus = &old["components"]["predictor"];
        let mut rolled = pstatus["latestRolledoutRevision"].as_str().map(str::to_owned);
        let mut previous = pstatus["previousRolledoutRevision"].as_str().map(str::to_owned);
        if rolled
            .as_ref()
            .is_some_and(|r| !revisions.iter().any(|x| &x.1 == r))
        {
            rolled = None;
        }
        let canary = predictor["canaryTrafficPercent"].as_u64().map(|p| p.min(100));
        let traffic: Vec<(String, u64, bool)> = match (&rolled, canary) {
            (Some(r), _) if *r == latest => vec![(latest.clone(), 100, true)],
            (None, _) => {
                if latest_ready {
                    rolled = Some(latest.clone());
                }
                vec![(latest.clone(), 100, true)]
            }
            (Some(r), None | Some(100)) => {
                if latest_ready {
                    previous = Some(r.clone());
                    rolled = Some(latest.clone());
                    vec![(latest.clone(), 100, true)]
                } else {
                    vec![(r.clone(), 100, false), (latest.clone(), 0, true)]
                }
            }
            (Some(r), Some(p)) => vec![(latest.clone(), p, true), (r.clone(), 100 - p, false)],
        };
        // Revisions that are neither latest nor rolled out scale away.
        for (_, rev, _, _) in &revisions {
            if *rev != latest && Some(rev) != rolled.as_ref() {
                state.remove("apps", "deployments", ns, &format!("{rev}-deployment"));
            }
        }
        let serving_ready = traffic.iter().filter(|t| t.1 > 0).all(|t| ready_of(&t.0));
        let not_ready = traffic
            .iter()
            .filter(|t| t.1 > 0 && !ready_of(&t.0))
            .map(|t| t.0.clone())
            .collect::<Vec<_>>()
            .join(", ");
        let message = format!("revision(s) {not_ready} not ready");
        let url = format!("http://{name}.{ns}.example.com");
        let status = json!({
            "observedGeneration": isvc["metadata"]["generation"],
            "url": url,
            "address": {"url": format!("http://{name}-predictor.{ns}.svc.cluster.local")},
            "conditions": [
                condition(old, "IngressReady", true, "", ""),
                condition(old, "PredictorReady", serving_ready, "RevisionMissing", &message),
                condition(old, "Ready", serving_ready, "RevisionMissing", &message),
            ],
            "components": {"predictor": {
                "url": format!("http://{name}-predictor.{ns}.example.com"),
                "latestCreatedRevision": latest,
                "latestReadyRevision": revisions.iter().rev().find(|r| r.3).map(|r| r.1.clone()),
                "latestRolledoutRevision": rolled,
                "previousRolledoutRevision": previous,
                "traffic": traffic.iter().map(|(rev, p, l)| json!({"revisionName": rev, "percent": p, "latestRevision": l, "tag": if *l { "latest" } else { "prev" }})).collect::<Vec<_>>(),
            }},
            "modelStatus": {
                "transitionStatus": if latest_ready { "UpToDate" } else { "InProgress" },
                "states": {"activeModelState": if serving_ready { "Loaded" } else { "Pending" }, "targetModelState": if latest_ready { "Loaded" } else { "Pending" }},
            },
        });
        if isvc.get("status") != Some(&status) {
            state.set_status("serving.kserve.io", "inferenceservices", ns, name, status);
        }
    }
}

fn create_revision(state: &State, isvc: &Value, rev: &str, hash: &str, version: Option<&str>) {
    let (ns, name) = (meta(isvc, "namespace"), meta(isvc, "name"));
    let predictor = &isvc["spec"]["predictor"];
    let containers = match predictor["containers"].as_array() {
        Some(cs) if !cs.is_empty() => Value::Array(cs.clone()),
        _ => {
            let model = &predictor["model"];
            let format = model["modelFormat"]["name"].as_str().unwrap_or("custom");
            json!([{
                "name": "kserve-container",
                "image": model["image"].as_str().map_or_else(|| format!("kserve/{format}server:latest"), str::to_owned),
                "args": [format!("--model_name={name}"), format!("--storage_uri={}", model["storageUri"].as_str().unwrap_or_default())],
                "resources": model["resources"],
            }])
        }
    };
    let mut labels = json!({
        "app": rev,
        "serving.kserve.io/inferenceservice": name,
        "serving.knative.dev/revision": rev,
    });
    if let Some(v) = version {
        labels["version"] = Value::from(v);
    }
    let replicas = predictor["minReplicas"]
        .as_u64()
        .unwrap_or(1)
        .clamp(1, crate::scenario::MAX_REPLICAS);
    let dep = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("{rev}-deployment"), "namespace": ns, "labels": labels,
                     "annotations": {"sim.rollwright.dev/predictor-hash": hash},
                     "ownerReferences": [{"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "name": name, "uid": isvc["metadata"]["uid"], "controller": true}]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"serving.knative.dev/revision": rev}},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}}},
    });
    state.ensure("apps", "deployments", ns, &format!("{rev}-deployment"), dep);
}

fn reconcile_seldon(state: &State) {
    let sdeps = state.snapshot("machinelearning.seldon.io", "seldondeployments");
    if sdeps.is_empty() {
        return;
    }
    let deployments = state.snapshot("apps", "deployments");
    for sdep in sdeps {
        let (ns, name) = (meta(&sdep, "namespace"), meta(&sdep, "name"));
        let predictors = sdep["spec"]["predictors"].as_array().cloned().unwrap_or_default();
        let mut wanted = Vec::new();
        let mut dstatus = serde_json::Map::new();
        let mut all_ready = true;
        for p in &predictors {
            let pname = p["name"].as_str().unwrap_or("default");
            let dname = format!("{name}-{pname}");
            let containers = p["componentSpecs"][0]["spec"]["containers"]
                .as_array()
                .filter(|c| !c.is_empty())
                .map_or_else(
                    || json!([{"name": p["graph"]["name"].as_str().unwrap_or("model"), "image": "seldonio/mock_classifier:1.0"}]),
                    |c| Value::Array(c.clone()),
                );
            let mut labels = json!({"seldon-deployment-id": name, "seldon-predictor": pname});
            if let Some(v) = routing::version_label(&p["labels"]) {
                labels["version"] = Value::from(v);
            }
            let replicas = p["replicas"]
                .as_u64()
                .unwrap_or(1)
                .min(crate::scenario::MAX_REPLICAS);
            let dep = json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": dname, "namespace": ns, "labels": labels,
                             "ownerReferences": [{"apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment", "name": name, "uid": sdep["metadata"]["uid"], "controller": true}]},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"seldon-deployment-id": name, "seldon-predictor": pname}},
                         "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}}},
            });
            state.ensure("apps", "deployments", ns, &dname, dep);
            let current = deployments
                .iter()
                .find(|d| meta(d, "namespace") == ns && meta(d, "name") == dname);
            let ready = current.is_some_and(deployment_ready);
            all_ready &= ready;
            dstatus.insert(
                dname.clone(),
                json!({"replicas": replicas, "availableReplicas": current.map_or(Value::from(0), |d| d["status"]["availableReplicas"].clone())}),
            );
            wanted.push(dname);
        }
        for d in &deployments {
            if meta(d, "namespace") == ns
                && d["metadata"]["labels"]["seldon-deployment-id"].as_str() == Some(name)
                && !wanted.iter().any(|w| w == meta(d, "name"))
            {
                state.remove("apps", "deployments", ns, meta(d, "name"));
            }
        }
        let old = &sdep["status"];
        let status = json!({
            "state": if all_ready { "Available" } else { "Creating" },
            "deploymentStatus": dstatus,
            "address": {"url": format!("http://{name}-default.{ns}.svc.cluster.local:8000/api/v1.0/predictions")},
            "conditions": [condition(old, "Ready", all_ready, "DeploymentsNotReady", "predictor deployments are not ready")],
        });
        if sdep.get("status") != Some(&status) {
            state.set_status("machinelearning.seldon.io", "seldondeployments", ns, name, status);
        }
    }
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
                                         "annotations": {"sim.rollwright.dev/started-ms": now_ms().to_string()},
                                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": set_name, "controller": true}]},
                            "spec": set["spec"]["template"]["spec"],
                            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]},
                        });
                        state.ensure("", "pods", ns, &pod_name, p.clone());
                        p
                    }
                };
                let is_ready = reconcile_pod(state, &pod);
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

/// Moves a pod along (startup, faults); returns whether it is Ready.
fn reconcile_pod(state: &State, pod: &Value) -> bool {
    let (ns, pod_name) = (meta(pod, "namespace"), meta(pod, "name"));
    let started: u64 = pod["metadata"]["annotations"]["sim.rollwright.dev/started-ms"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let fault = state.pod_fault(pod);
    let delay = match fault.as_ref().map(|f| &f.behaviour) {
        Some(Behaviour::SlowStart { seconds }) => state.scale.to_real(Duration::from_secs_f64(*seconds)),
        _ => state.startup,
    };
    let elapsed = now_ms().saturating_sub(started);
    let is_ready = fault
        .as_ref()
        .is_none_or(|f| matches!(f.behaviour, Behaviour::SlowStart { .. }))
        && elapsed >= u64::try_from(delay.as_millis()).unwrap_or(0);
    let containers = |f: &dyn Fn(&Value) -> Value| -> Vec<Value> {
        pod["spec"]["containers"]
            .as_array()
            .map(|cs| cs.iter().map(f).collect())
            .unwrap_or_default()
    };
    match fault.as_ref().map(|f| &f.behaviour) {
        Some(Behaviour::CrashLoop) => {
            // A restart a second, waiting in CrashLoopBackOff in between.
            let restarts = elapsed / 1000;
            let cs = containers(&|c| {
                json!({"name": c["name"], "image": c["image"], "ready": false, "restartCount": restarts,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off restarting failed container {} in pod {pod_name}", c["name"].as_str().unwrap_or_default())}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}})
            });
            let status = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}], "containerStatuses": cs});
            if pod.get("status") != Some(&status) {
                state.set_status("", "pods", ns, pod_name, status);
            }
        }
        Some(Behaviour::NeverReady) => {
            let cs = containers(
                &|c| json!({"name": c["name"], "image": c["image"], "ready": false, "restartCount": 0, "state": {"running": {}}}),
            );
            let status = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}], "containerStatuses": cs});
            if pod.get("status") != Some(&status) {
                state.set_status("", "pods", ns, pod_name, status);
            }
        }
        _ => {
            if is_ready && !routing::pod_ready(pod) {
                let cs = containers(
                    &|c| json!({"name": c["name"], "image": c["image"], "ready": true, "restartCount": 0, "state": {"running": {}}}),
                );
                state.set_status(
                    "",
                    "pods",
                    ns,
                    pod_name,
                    json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "containerStatuses": cs}),
                );
            }
        }
    }
    is_ready
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
