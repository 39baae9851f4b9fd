//! How simulated traffic splits between model versions, derived from the
//! routing objects in the store.
//!
//! A *model* is what a client asks for (`/v1/models/<model>:predict`). The
//! objects that claim it, in this order (the first one wins):
//! 1. an `InferenceService` named `<model>`: its `status…predictor.traffic`
//!    (revisions and percentages, `canaryTrafficPercent` honoured by the
//!    InferenceService controller);
//! 2. a `SeldonDeployment` named `<model>`: `spec.predictors[].traffic`;
//! 3. an Istio `VirtualService`: `spec.http[0].route[]` destinations (host =
//!    Service, `subset` = a `DestinationRule` subset's labels) and weights;
//! 4. a Gateway API `HTTPRoute`: `spec.rules[0].backendRefs[]` (Services,
//!    weights proportional, default 1);
//! 5. an SMI `TrafficSplit`: `spec.backends[]` (model = `spec.service`);
//! 6. NGINX ingress: the Ingress named `<model>` and its canary sibling
//!    (`nginx.ingress.kubernetes.io/canary: "true"`, `canary-weight`) for the
//!    same host;
//! 7. a plain `Service` named `<model>`: one backend, 100 %.
//!
//! Routing objects other than InferenceService and SeldonDeployment claim
//! the model named by their `rollwright.dev/model` label, else their name
//! (`spec.service` for a TrafficSplit). A backend's version is the `version`
//! label of its pods (or `app.kubernetes.io/version`), else the subset or
//! backend name; it is Ready when at least one of its pods is Ready.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::store::Store;

/// One destination of a split.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Backend {
    /// What the routing object names (Service, subset, revision, predictor).
    pub name: String,
    /// The model version its pods serve.
    pub version: String,
    /// Percentage of traffic (0–100; the backends of a route sum to 100).
    pub weight: u32,
    /// Whether any of its pods is Ready (traffic to it is answered 503 otherwise).
    pub ready: bool,
}

/// How one model's traffic is split.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Route {
    /// Namespace of the routing object.
    pub namespace: String,
    /// The model name.
    pub model: String,
    /// The object the split comes from, `Kind/name`.
    pub source: String,
    /// Destinations.
    pub backends: Vec<Backend>,
}

/// The version a set of labels names.
#[must_use]
pub fn version_label(labels: &Value) -> Option<&str> {
    [
        "version",
        "app.kubernetes.io/version",
        "serving.kserve.io/model-version",
    ]
    .iter()
    .find_map(|k| labels.get(*k).and_then(Value::as_str))
}

fn claimed_model<'a>(obj: &'a Value, fallback: Option<&'a str>) -> Option<&'a str> {
    obj["metadata"]["labels"]["rollwright.dev/model"]
        .as_str()
        .or(fallback)
        .or(obj["metadata"]["name"].as_str())
}

/// Whether a pod's Ready condition is True.
#[must_use]
pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn matches(labels: &Value, selector: &serde_json::Map<String, Value>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Pods of `ns` that carry every label in the selectors: (any Ready, version).
fn backend_pods(
    store: &Store,
    ns: &str,
    selectors: &[&serde_json::Map<String, Value>],
) -> (bool, Option<String>) {
    let mut ready = false;
    let mut version: Option<String> = None;
    for pod in store.of_kind("", "pods") {
        if pod["metadata"]["namespace"].as_str() != Some(ns) {
            continue;
        }
        let labels = &pod["metadata"]["labels"];
        if selectors.iter().all(|s| s.is_empty() || matches(labels, s))
            && selectors.iter().any(|s| !s.is_empty())
        {
            let r = pod_ready(pod);
            if version.is_none() || (r && !ready) {
                version = version_label(labels).map(str::to_owned);
            }
            ready |= r;
        }
    }
    (ready, version)
}

fn service<'a>(store: &'a Store, ns: &str, host: &str) -> Option<&'a Value> {
    // `svc`, `svc.ns`, `svc.ns.svc.cluster.local`.
    let mut parts = host.split('.');
    let name = parts.next()?;
    let ns = parts.next().unwrap_or(ns);
    store
        .objects
        .get(&(String::new(), "services".into(), ns.to_owned(), name.to_owned()))
}

fn service_backend(
    store: &Store,
    ns: &str,
    host: &str,
    extra: Option<&serde_json::Map<String, Value>>,
    name: &str,
    weight: u32,
) -> Backend {
    let empty = serde_json::Map::new();
    let (ready, version) = match service(store, ns, host) {
        Some(svc) => {
            let sel = svc["spec"]["selector"].as_object().unwrap_or(&empty);
            let svc_ns = svc["metadata"]["namespace"].as_str().unwrap_or(ns);
            backend_pods(store, svc_ns, &[sel, extra.unwrap_or(&empty)])
        }
        None => (false, None),
    };
    Backend {
        name: name.to_owned(),
        version: version.unwrap_or_else(|| name.to_owned()),
        weight,
        ready,
    }
}

/// Scales weights to percentages summing to 100 (largest remainders).
fn percentages(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let mut out: Vec<u32> = weights
        .iter()
        .map(|w| u32::try_from(w * 100 / total).unwrap_or(100))
        .collect();
    let mut rest = 100 - out.iter().sum::<u32>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(weights[i] * 100 % total));
    for i in order {
        if rest == 0 {
            break;
        }
        out[i] += 1;
        rest -= 1;
    }
    out
}

fn ns_of(obj: &Value) -> String {
    obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned()
}

fn route(obj: &Value, model: &str, backends: Vec<Backend>) -> Route {
    Route {
        namespace: ns_of(obj),
        model: model.to_owned(),
        source: format!(
            "{}/{}",
            obj["kind"].as_str().unwrap_or_default(),
            obj["metadata"]["name"].as_str().unwrap_or_default()
        ),
        backends,
    }
}

/// The routing table: `(namespace, model)` → route.
#[must_use]
pub fn compute(store: &Store) -> BTreeMap<(String, String), Route> {
    let mut out: BTreeMap<(String, String), Route> = BTreeMap::new();
    let mut claim = |r: Route| {
        out.entry((r.namespace.clone(), r.model.clone())).or_insert(r);
    };
    let empty = serde_json::Map::new();
    for isvc in store.of_kind("serving.kserve.io", "inferenceservices") {
        let ns = ns_of(isvc);
        let Some(name) = isvc["metadata"]["name"].as_str() else {
            continue;
        };
        let backends = isvc["status"]["components"]["predictor"]["traffic"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|e| {
                        let rev = e["revisionName"].as_str()?;
                        let sel: serde_json::Map<String, Value> =
                            [("serving.knative.dev/revision".to_owned(), Value::from(rev))]
                                .into_iter()
                                .collect();
                        let (ready, version) = backend_pods(store, &ns, &[&sel]);
                        Some(Backend {
                            name: rev.to_owned(),
                            version: version.unwrap_or_else(|| rev.to_owned()),
                            weight: u32::try_from(e["percent"].as_u64().unwrap_or(0)).unwrap_or(100),
                            ready,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        claim(route(isvc, name, backends));
    }
    for sdep in store.of_kind("machinelearning.seldon.io", "seldondeployments") {
        let ns = ns_of(sdep);
        let Some(name) = sdep["metadata"]["name"].as_str() else {
            continue;
        };
        let preds = sdep["spec"]["predictors"].as_array().cloned().unwrap_or_default();
        let live: Vec<&Value> = preds
            .iter()
            .filter(|p| p["shadow"] != Value::Bool(true))
            .collect();
        let weights: Vec<u64> = if live.len() == 1 && live[0]["traffic"].is_null() {
            vec![100]
        } else {
            live.iter().map(|p| p["traffic"].as_u64().unwrap_or(0)).collect()
        };
        let pct = percentages(&weights);
        let backends = live
            .iter()
            .zip(pct)
            .map(|(p, w)| {
                let pname = p["name"].as_str().unwrap_or_default();
                let sel: serde_json::Map<String, Value> = [
                    ("seldon-deployment-id".to_owned(), Value::from(name)),
                    ("seldon-predictor".to_owned(), Value::from(pname)),
                ]
                .into_iter()
                .collect();
                let (ready, version) = backend_pods(store, &ns, &[&sel]);
                Backend {
                    name: pname.to_owned(),
                    version: version.unwrap_or_else(|| pname.to_owned()),
                    weight: w,
                    ready,
                }
            })
            .collect();
        claim(route(sdep, name, backends));
    }
    for vs in store.of_kind("networking.istio.io", "virtualservices") {
        let ns = ns_of(vs);
        let Some(model) = claimed_model(vs, None) else {
            continue;
        };
        let routes = vs["spec"]["http"][0]["route"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let weights: Vec<u64> = if routes.len() == 1 && routes[0]["weight"].is_null() {
            vec![100]
        } else {
            routes.iter().map(|r| r["weight"].as_u64().unwrap_or(0)).collect()
        };
        let pct = percentages(&weights);
        let backends = routes
            .iter()
            .zip(pct)
            .map(|(r, w)| {
                let host = r["destination"]["host"].as_str().unwrap_or_default();
                let subset = r["destination"]["subset"].as_str();
                let subset_labels = subset.and_then(|s| {
                    store
                        .of_kind("networking.istio.io", "destinationrules")
                        .find_map(|dr| {
                            (ns_of(dr) == ns
                                && dr["spec"]["host"].as_str().map(|h| h.split('.').next())
                                    == Some(host.split('.').next()))
                            .then(|| {
                                dr["spec"]["subsets"].as_array().and_then(|ss| {
                                    ss.iter()
                                        .find(|x| x["name"].as_str() == Some(s))
                                        .and_then(|x| x["labels"].as_object())
                                })
                            })
                            .flatten()
                        })
                });
                let name = subset.map_or_else(|| host.to_owned(), |s| format!("{host}/{s}"));
                let mut b = service_backend(store, &ns, host, subset_labels.or(Some(&empty)), &name, w);
                if subset.is_some() && subset_labels.is_none() {
                    // A subset no DestinationRule defines routes nowhere.
                    b.ready = false;
                }
                if b.version == name
                    && let Some(s) = subset
                {
                    b.version = s.to_owned();
                }
                b
            })
            .collect();
        claim(route(vs, model, backends));
    }
    for hr in store.of_kind("gateway.networking.k8s.io", "httproutes") {
        let ns = ns_of(hr);
        let Some(model) = claimed_model(hr, None) else {
            continue;
        };
        let refs = hr["spec"]["rules"][0]["backendRefs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let weights: Vec<u64> = refs.iter().map(|r| r["weight"].as_u64().unwrap_or(1)).collect();
        let pct = percentages(&weights);
        let backends = refs
            .iter()
            .zip(pct)
            .map(|(r, w)| {
                let svc = r["name"].as_str().unwrap_or_default();
                let svc_ns = r["namespace"].as_str().unwrap_or(&ns);
                service_backend(store, svc_ns, svc, None, svc, w)
            })
            .collect();
        claim(route(hr, model, backends));
    }
    for ts in store.of_kind("split.smi-spec.io", "trafficsplits") {
        let ns = ns_of(ts);
        let Some(model) = claimed_model(ts, ts["spec"]["service"].as_str()) else {
            continue;
        };
        let list = ts["spec"]["backends"].as_array().cloned().unwrap_or_default();
        let weights: Vec<u64> = list.iter().map(|r| r["weight"].as_u64().unwrap_or(0)).collect();
        let pct = percentages(&weights);
        let backends = list
            .iter()
            .zip(pct)
            .map(|(r, w)| {
                let svc = r["service"].as_str().unwrap_or_default();
                service_backend(store, &ns, svc, None, svc, w)
            })
            .collect();
        claim(route(ts, model, backends));
    }
    let ingresses: Vec<&Value> = store.of_kind("networking.k8s.io", "ingresses").collect();
    let canary_of = |i: &Value| {
        i["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary"].as_str() == Some("true")
    };
    let host_of = |i: &Value| {
        i["spec"]["rules"][0]["host"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let svc_of = |i: &Value| {
        i["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    for stable in ingresses.iter().filter(|i| !canary_of(i)) {
        let ns = ns_of(stable);
        let Some(model) = claimed_model(stable, None) else {
            continue;
        };
        let canary = ingresses
            .iter()
            .find(|c| canary_of(c) && ns_of(c) == ns && host_of(c) == host_of(stable));
        let cw = canary
            .and_then(|c| c["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"].as_str())
            .and_then(|w| w.parse::<u32>().ok())
            .unwrap_or(0)
            .min(100);
        let s = svc_of(stable);
        let mut backends = vec![service_backend(store, &ns, &s, None, &s, 100 - cw)];
        if let Some(c) = canary {
            let cs = svc_of(c);
            backends.push(service_backend(store, &ns, &cs, None, &cs, cw));
        }
        claim(route(stable, model, backends));
    }
    for svc in store.of_kind("", "services") {
        let Some(name) = svc["metadata"]["name"].as_str() else {
            continue;
        };
        if name == "kubernetes" {
            continue;
        }
        let Some(model) = claimed_model(svc, None) else {
            continue;
        };
        let b = service_backend(store, &ns_of(svc), name, None, name, 100);
        claim(route(svc, model, vec![b]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::percentages;

    #[test]
    fn percentages_sum_to_100() {
        assert_eq!(percentages(&[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(percentages(&[95, 5]), vec![95, 5]);
        assert_eq!(percentages(&[0, 0]), vec![0, 0]);
        assert_eq!(percentages(&[3]), vec![100]);
    }
}
