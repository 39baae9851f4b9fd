//! The serving platforms' controllers, over the Kubernetes API:
//! - **InferenceService**: a predictor Deployment per revision (a new one
//!   when `spec.predictor` or the version changes), a status URL, the
//!   `IngressReady`/`PredictorReady`/`Ready` conditions and
//!   `components.predictor.traffic` with `canaryTrafficPercent` honoured
//!   (latest revision gets that share, the last rolled-out one the rest;
//!   `0` is a rollback; none or `100` promotes once the latest is Ready);
//! - **SeldonDeployment**: a Deployment per predictor, `state` and
//!   `deploymentStatus`.
//!
//! The Deployments they create are rolled out by the cluster's Deployment
//! controller (the embedded one, or kube-controller-manager).

use serde_json::{Value, json};

use crate::{fnv, meta};

use super::cluster::Cluster;
use crate::routing;

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// A condition, keeping its lastTransitionTime while its status holds.
pub(super) fn condition(old: &Value, kind: &str, ok: bool, reason: &str, message: &str) -> Value {
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

pub(crate) fn reconcile_inference_services(state: &Cluster) {
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

fn create_revision(state: &Cluster, isvc: &Value, rev: &str, hash: &str, version: Option<&str>) {
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

pub(crate) fn reconcile_seldon(state: &Cluster) {
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
                    |c| Value::Array(c.iter().map(|c| with_server_image(c, &p["graph"])).collect()),
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

/// A container of a Seldon predictor: the graph node's container without
/// an image gets the prepackaged server its `implementation` names, as
/// Seldon Core's operator fills it in.
fn with_server_image(container: &Value, graph: &Value) -> Value {
    let mut c = container.clone();
    if c["image"].as_str().is_none_or(str::is_empty) && c.is_object() {
        let image = match graph["implementation"].as_str() {
            Some("SKLEARN_SERVER") => "seldonio/sklearnserver:1.18.0",
            Some("XGBOOST_SERVER") => "seldonio/xgboostserver:1.18.0",
            Some("MLFLOW_SERVER") => "seldonio/mlflowserver:1.18.0",
            Some("TENSORFLOW_SERVER") => "tensorflow/serving:2.1.0",
            Some("TRITON_SERVER") => "nvcr.io/nvidia/tritonserver:21.08-py3",
            _ => "seldonio/mock_classifier:1.0",
        };
        c["image"] = Value::from(image);
    }
    c
}
