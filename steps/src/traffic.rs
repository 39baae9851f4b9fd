//! Traffic providers: which object splits a model's traffic, how a weight
//! is written into it, and how to tell that a backend can take traffic.
//!
//! | provider | object patched | fields |
//! |---|---|---|
//! | `kserve` | InferenceService `route` | `spec.predictor.canaryTrafficPercent` |
//! | `istio` | VirtualService `route` | `spec.http[0].route[].weight` of the `stable`/`canary` destinations (subset or host) |
//! | `gateway-api` | HTTPRoute `route` | `spec.rules[0].backendRefs[].weight` of the `stable`/`canary` Services |
//! | `smi` | TrafficSplit `route` | `spec.backends[].weight` |
//! | `nginx` | the canary Ingress (`canary`, default `<route>-canary`) | `canary` and `canary-weight` annotations |
//! | `seldon` | SeldonDeployment `route` | `spec.predictors[].traffic` of the `stable`/`canary` predictors |
//!
//! Weights always sum to 100. `route` defaults to the model name.

use rollwright_engine::exec::StepError;
use rollwright_engine::registry::BuildContext;
use serde_json::{Value, json};

use crate::cluster::{Cluster, ObjRef, pod_ready, selector};

/// A traffic provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Istio VirtualService weights.
    Istio,
    /// Gateway API HTTPRoute backendRef weights.
    GatewayApi,
    /// KServe canaryTrafficPercent.
    Kserve,
    /// SMI TrafficSplit.
    Smi,
    /// NGINX ingress canary annotations.
    Nginx,
    /// Seldon predictor traffic.
    Seldon,
}

impl Provider {
    /// Every provider, in the order the docs list them.
    pub const ALL: [Provider; 6] = [
        Provider::Istio,
        Provider::GatewayApi,
        Provider::Kserve,
        Provider::Smi,
        Provider::Nginx,
        Provider::Seldon,
    ];

    /// The provider a spec names (`serving.traffic`, a step's `provider`).
    #[must_use]
    pub fn parse(name: &str) -> Option<Provider> {
        Some(match name {
            "istio" => Provider::Istio,
            "gateway-api" => Provider::GatewayApi,
            "kserve" => Provider::Kserve,
            "smi" => Provider::Smi,
            "nginx" => Provider::Nginx,
            "seldon" => Provider::Seldon,
            _ => return None,
        })
    }

    /// The name a spec uses for it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Provider::Istio => "istio",
            Provider::GatewayApi => "gateway-api",
            Provider::Kserve => "kserve",
            Provider::Smi => "smi",
            Provider::Nginx => "nginx",
            Provider::Seldon => "seldon",
        }
    }

    /// `(apiVersion, kind)` of the object whose fields a shift changes.
    #[must_use]
    pub fn route_kind(self) -> (&'static str, &'static str) {
        match self {
            Provider::Istio => ("networking.istio.io/v1beta1", "VirtualService"),
            Provider::GatewayApi => ("gateway.networking.k8s.io/v1", "HTTPRoute"),
            Provider::Kserve => ("serving.kserve.io/v1beta1", "InferenceService"),
            Provider::Smi => ("split.smi-spec.io/v1alpha2", "TrafficSplit"),
            Provider::Nginx => ("networking.k8s.io/v1", "Ingress"),
            Provider::Seldon => ("machinelearning.seldon.io/v1", "SeldonDeployment"),
        }
    }
}

const NGINX_CANARY: &str = "nginx.ingress.kubernetes.io/canary";
const NGINX_WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";

/// The names of every traffic provider.
#[must_use]
pub fn names() -> Vec<&'static str> {
    Provider::ALL.iter().map(|p| p.name()).collect()
}

/// How a run's model traffic is routed.
#[derive(Debug, Clone)]
pub struct Router {
    /// The provider.
    pub provider: Provider,
    /// Name of the routing object.
    pub route: String,
    /// Stable backend.
    pub stable: String,
    /// Canary backend.
    pub canary: String,
    /// Target namespace.
    pub namespace: String,
}

impl Router {
    /// The router of a run (`provider` overrides `serving.traffic`).
    ///
    /// # Errors
    /// No provider, or `none`.
    pub fn of(cx: &BuildContext, provider: Option<&str>) -> Result<Router, String> {
        let serving = crate::target::serving(cx);
        let serving = serving.as_ref();
        let name = provider
            .map(str::to_owned)
            .or_else(|| serving.and_then(|s| s.traffic.clone()))
            .or_else(|| serving.and_then(|s| (s.platform == "kserve").then(|| "kserve".to_owned())))
            .or_else(|| serving.and_then(|s| (s.platform == "seldon").then(|| "seldon".to_owned())))
            .ok_or("shift-traffic needs a provider: set `serving.traffic` (or `provider`)")?;
        let provider = Provider::parse(&name)
            .ok_or_else(|| format!("traffic provider `{name}` cannot shift traffic"))?;
        let route = serving
            .and_then(|s| s.route.clone())
            .or_else(|| cx.model.as_ref().map(|m| m.1.clone()))
            .ok_or("shift-traffic needs `serving.route` or a `model` to name the routing object")?;
        let (stable, canary) = match provider {
            Provider::Istio => ("stable".to_owned(), "canary".to_owned()),
            Provider::Seldon => ("main".to_owned(), "canary".to_owned()),
            Provider::Kserve => ("prev".to_owned(), "latest".to_owned()),
            _ => (route.clone(), format!("{route}-canary")),
        };
        let namespace = cx
            .target
            .as_ref()
            .map(|t| t.namespace.clone())
            .unwrap_or_default();
        Ok(Router {
            provider,
            stable: serving.and_then(|s| s.stable.clone()).unwrap_or(stable),
            canary: serving.and_then(|s| s.canary.clone()).unwrap_or(canary),
            route,
            namespace,
        })
    }

    /// The object whose fields change.
    #[must_use]
    pub fn object(&self) -> ObjRef {
        let (av, kind) = self.provider.route_kind();
        let name = if self.provider == Provider::Nginx {
            &self.canary
        } else {
            &self.route
        };
        ObjRef::new(av, kind, &self.namespace, name)
    }

    /// The fields a shift changes, as JSON pointers (what is recorded).
    #[must_use]
    pub fn pointers(&self) -> Vec<String> {
        match self.provider {
            Provider::Istio => vec!["/spec/http".into()],
            Provider::GatewayApi => vec!["/spec/rules".into()],
            Provider::Kserve => vec!["/spec/predictor/canaryTrafficPercent".into()],
            Provider::Smi => vec!["/spec/backends".into()],
            Provider::Nginx => [NGINX_CANARY, NGINX_WEIGHT]
                .iter()
                .map(|a| {
                    format!(
                        "/metadata/annotations/{}",
                        rollwright_engine::yaml::escape_segment(a)
                    )
                })
                .collect(),
            Provider::Seldon => vec!["/spec/predictors".into()],
        }
    }

    /// The values of those fields now.
    #[must_use]
    pub fn fields(&self, obj: &Value) -> serde_json::Map<String, Value> {
        self.pointers()
            .into_iter()
            .map(|p| {
                let v = obj.pointer(&p).cloned().unwrap_or(Value::Null);
                (p, v)
            })
            .collect()
    }

    /// The fields that route `canary` percent to the canary, the rest to stable.
    ///
    /// # Errors
    /// The object has no route to one of the backends.
    pub fn fields_for(&self, obj: &Value, canary: u8) -> Result<serde_json::Map<String, Value>, String> {
        let p = u64::from(canary);
        let rest = 100 - p;
        let what = self.object();
        let weights = |list: Option<&Value>,
                       key: &dyn Fn(&Value) -> Option<String>,
                       field: &str,
                       label: &str| {
            let mut list = list.cloned().unwrap_or(Value::Array(Vec::new()));
            let items = list
                .as_array_mut()
                .ok_or(format!("{what}: {label} is not a list"))?;
            let (mut seen_stable, mut seen_canary) = (false, false);
            for item in items.iter_mut() {
                match key(item) {
                    Some(k) if k == self.canary => {
                        item[field] = json!(p);
                        seen_canary = true;
                    }
                    Some(k) if k == self.stable => {
                        item[field] = json!(rest);
                        seen_stable = true;
                    }
                    _ => item[field] = json!(0),
                }
            }
            if !seen_canary || !seen_stable {
                return Err(format!(
                    "{what}: {label} has no entry for the {} backend `{}` (set `serving.stable`/`serving.canary` to name them)",
                    if seen_canary { "stable" } else { "canary" },
                    if seen_canary { &self.stable } else { &self.canary }
                ));
            }
            Ok(list)
        };
        let mut out = serde_json::Map::new();
        match self.provider {
            Provider::Kserve => {
                out.insert("/spec/predictor/canaryTrafficPercent".into(), json!(p));
            }
            Provider::Istio => {
                let mut http = obj["spec"]["http"].clone();
                let key = |d: &Value| {
                    d["destination"]["subset"]
                        .as_str()
                        .filter(|s| *s == self.canary || *s == self.stable)
                        .or_else(|| {
                            d["destination"]["host"]
                                .as_str()
                                .and_then(|h| h.split('.').next())
                        })
                        .map(str::to_owned)
                };
                let route = weights(
                    http.get(0).and_then(|h| h.get("route")),
                    &key,
                    "weight",
                    "spec.http[0].route",
                )?;
                match http.get_mut(0) {
                    Some(first) => {
                        first["route"] = route;
                        // A shift ends any mirroring (a shadow phase sets it
                        // again explicitly): nothing is mirrored behind a ramp.
                        if let Some(m) = first.as_object_mut() {
                            m.remove("mirror");
                            m.remove("mirrorPercentage");
                        }
                    }
                    None => return Err(format!("{what} has no http route")),
                }
                out.insert("/spec/http".into(), http);
            }
            Provider::GatewayApi => {
                let mut rules = obj["spec"]["rules"].clone();
                let key = |b: &Value| b["name"].as_str().map(str::to_owned);
                let refs = weights(
                    rules.get(0).and_then(|r| r.get("backendRefs")),
                    &key,
                    "weight",
                    "spec.rules[0].backendRefs",
                )?;
                match rules.get_mut(0) {
                    Some(first) => first["backendRefs"] = refs,
                    None => return Err(format!("{what} has no rules")),
                }
                out.insert("/spec/rules".into(), rules);
            }
            Provider::Smi => {
                let key = |b: &Value| b["service"].as_str().map(str::to_owned);
                out.insert(
                    "/spec/backends".into(),
                    weights(obj["spec"].get("backends"), &key, "weight", "spec.backends")?,
                );
            }
            Provider::Seldon => {
                let key = |b: &Value| b["name"].as_str().map(str::to_owned);
                out.insert(
                    "/spec/predictors".into(),
                    weights(obj["spec"].get("predictors"), &key, "traffic", "spec.predictors")?,
                );
            }
            Provider::Nginx => {
                let ptrs = self.pointers();
                out.insert(ptrs[0].clone(), json!("true"));
                out.insert(ptrs[1].clone(), json!(p.to_string()));
            }
        }
        Ok(out)
    }

    /// Whether the router *serves* the split `canary` (not only whether the
    /// object says so): for KServe, the InferenceService's status traffic
    /// (observed generation current, the latest revision at `canary` %, all
    /// of it adding up to 100). `Some(why)` while it does not yet.
    #[must_use]
    pub fn not_served(&self, obj: &Value, canary: u8) -> Option<String> {
        match self.provider {
            Provider::Kserve => {
                let status = &obj["status"];
                if status["observedGeneration"] != obj["metadata"]["generation"] {
                    return Some("the InferenceService has not observed the change yet".into());
                }
                let p = &status["components"]["predictor"];
                let latest = p["latestCreatedRevision"].as_str();
                let traffic = p["traffic"].as_array().cloned().unwrap_or_default();
                let total: u64 = traffic.iter().filter_map(|t| t["percent"].as_u64()).sum();
                let to_latest: u64 = traffic
                    .iter()
                    .filter(|t| t["revisionName"].as_str() == latest)
                    .filter_map(|t| t["percent"].as_u64())
                    .sum();
                (total != 100 || to_latest != u64::from(canary)).then(|| {
                    format!(
                        "KServe serves {to_latest} % to revision {} (want {canary} %)",
                        latest.unwrap_or("(none)")
                    )
                })
            }
            _ => {
                let w = self.canary_weight(obj).unwrap_or(0);
                (w != u64::from(canary))
                    .then(|| format!("{} routes {w} % to the canary (want {canary} %)", self.object()))
            }
        }
    }

    /// The canary's share the object routes now, if readable.
    #[must_use]
    pub fn canary_weight(&self, obj: &Value) -> Option<u64> {
        let find = |list: &Value, key: &dyn Fn(&Value) -> Option<String>, field: &str| {
            list.as_array()?
                .iter()
                .find(|i| key(i).as_deref() == Some(self.canary.as_str()))
                .and_then(|i| i[field].as_u64())
        };
        match self.provider {
            Provider::Kserve => obj["spec"]["predictor"]["canaryTrafficPercent"].as_u64(),
            Provider::Istio => find(
                &obj["spec"]["http"][0]["route"],
                &|d: &Value| {
                    d["destination"]["subset"]
                        .as_str()
                        .or_else(|| {
                            d["destination"]["host"]
                                .as_str()
                                .and_then(|h| h.split('.').next())
                        })
                        .map(str::to_owned)
                },
                "weight",
            ),
            Provider::GatewayApi => find(
                &obj["spec"]["rules"][0]["backendRefs"],
                &|b: &Value| b["name"].as_str().map(str::to_owned),
                "weight",
            ),
            Provider::Smi => find(
                &obj["spec"]["backends"],
                &|b: &Value| b["service"].as_str().map(str::to_owned),
                "weight",
            ),
            Provider::Seldon => find(
                &obj["spec"]["predictors"],
                &|b: &Value| b["name"].as_str().map(str::to_owned),
                "traffic",
            ),
            Provider::Nginx => obj["metadata"]["annotations"][NGINX_WEIGHT]
                .as_str()
                .and_then(|w| w.parse().ok()),
        }
    }

    /// Checks that the canary backend can take traffic (at least one Ready
    /// pod; for KServe, the latest revision Ready).
    ///
    /// # Errors
    /// Why it cannot (a rejection: routing there would answer 503).
    pub async fn canary_ready(&self, cluster: &Cluster, route: &Value) -> Result<(), StepError> {
        let not_ready = |why: String| {
            StepError::rejected(format!(
                "refusing to route traffic to the canary: {why} (traffic to a backend that is not Ready is answered 503)"
            ))
        };
        match self.provider {
            Provider::Kserve => {
                let p = &route["status"]["components"]["predictor"];
                let latest = p["latestCreatedRevision"].as_str();
                if latest.is_some() && latest == p["latestReadyRevision"].as_str() {
                    Ok(())
                } else {
                    Err(not_ready(format!(
                        "InferenceService {} revision {} is not Ready",
                        self.route,
                        latest.unwrap_or("(none yet)")
                    )))
                }
            }
            Provider::Seldon => {
                let d = ObjRef::new(
                    "apps/v1",
                    "Deployment",
                    &self.namespace,
                    &format!("{}-{}", self.route, self.canary),
                );
                let ready = cluster
                    .get(&d)
                    .await?
                    .and_then(|d| d["status"]["readyReplicas"].as_u64())
                    .unwrap_or(0);
                if ready > 0 {
                    Ok(())
                } else {
                    Err(not_ready(format!("{d} has no Ready replica")))
                }
            }
            _ => {
                let (service, extra) = match self.provider {
                    Provider::Istio => self.istio_backend(cluster, route).await?,
                    _ => (self.canary.clone(), Value::Null),
                };
                let svc = ObjRef::new("v1", "Service", &self.namespace, &service);
                let Some(svc_obj) = cluster.get(&svc).await? else {
                    return Err(not_ready(format!("{svc} does not exist")));
                };
                let mut labels = svc_obj["spec"]["selector"].clone();
                if let (Some(l), Some(x)) = (labels.as_object_mut(), extra.as_object()) {
                    l.extend(x.clone());
                }
                let sel = selector(&labels);
                if sel.is_empty() {
                    return Err(not_ready(format!("{svc} selects no pods")));
                }
                let pods = cluster.list("v1", "Pod", &sel).await?;
                if pods.iter().any(pod_ready) {
                    Ok(())
                } else {
                    Err(not_ready(format!("no Ready pod behind {svc} ({sel})")))
                }
            }
        }
    }

    /// The pod labels the stable backend selects (Deployment platforms):
    /// the stable Service's selector, plus the Istio subset's labels.
    ///
    /// # Errors
    /// The route or its Service cannot be read, or selects nothing.
    pub async fn stable_selector(&self, cluster: &Cluster) -> Result<Value, StepError> {
        let route = cluster
            .get(&self.object())
            .await?
            .ok_or_else(|| StepError::failed(format!("{} does not exist", self.object())))?;
        let (service, extra) = match self.provider {
            Provider::Istio => self.istio_backend_of(cluster, &route, &self.stable).await?,
            _ => (self.stable.clone(), Value::Null),
        };
        let svc = ObjRef::new("v1", "Service", &self.namespace, &service);
        let svc_obj = cluster
            .get(&svc)
            .await?
            .ok_or_else(|| StepError::failed(format!("{svc}, the stable backend, does not exist")))?;
        let mut labels = svc_obj["spec"]["selector"].clone();
        if let (Some(l), Some(x)) = (labels.as_object_mut(), extra.as_object()) {
            l.extend(x.clone());
        }
        if labels.as_object().is_none_or(serde_json::Map::is_empty) {
            return Err(StepError::failed(format!(
                "{svc}, the stable backend, selects no pods"
            )));
        }
        Ok(labels)
    }

    /// For Istio: the canary destination's Service and its subset's labels.
    async fn istio_backend(&self, cluster: &Cluster, vs: &Value) -> Result<(String, Value), StepError> {
        self.istio_backend_of(cluster, vs, &self.canary).await
    }

    /// For Istio: the destination named `backend` (a subset, or a host).
    async fn istio_backend_of(
        &self,
        cluster: &Cluster,
        vs: &Value,
        backend: &str,
    ) -> Result<(String, Value), StepError> {
        let dest = vs["spec"]["http"][0]["route"]
            .as_array()
            .and_then(|r| {
                r.iter().find(|d| {
                    d["destination"]["subset"].as_str() == Some(backend)
                        || d["destination"]["host"]
                            .as_str()
                            .and_then(|h| h.split('.').next())
                            == Some(backend)
                })
            })
            .map(|d| d["destination"].clone())
            .unwrap_or(Value::Null);
        let host = dest["host"]
            .as_str()
            .and_then(|h| h.split('.').next())
            .unwrap_or(backend)
            .to_owned();
        let Some(subset) = dest["subset"].as_str() else {
            return Ok((host, Value::Null));
        };
        let rules = cluster
            .list("networking.istio.io/v1beta1", "DestinationRule", "")
            .await?;
        let labels = rules
            .iter()
            .filter(|r| r["spec"]["host"].as_str().and_then(|h| h.split('.').next()) == Some(host.as_str()))
            .find_map(|r| {
                r["spec"]["subsets"]
                    .as_array()?
                    .iter()
                    .find(|s| s["name"].as_str() == Some(subset))
                    .map(|s| s["labels"].clone())
            })
            .ok_or_else(|| {
                StepError::rejected(format!(
                    "refusing to route traffic: no DestinationRule for host {host} defines subset {subset}"
                ))
            })?;
        Ok((host, labels))
    }
}

/// A merge patch that sets each pointer to its value (`null` removes it).
#[must_use]
pub fn merge_patch_of(fields: &serde_json::Map<String, Value>) -> Value {
    let mut patch = json!({});
    for (ptr, v) in fields {
        let segs: Vec<String> = ptr
            .split('/')
            .skip(1)
            .map(|s| rollwright_engine::yaml::unescape_segment(s).into_owned())
            .collect();
        let mut cur = &mut patch;
        for (i, seg) in segs.iter().enumerate() {
            if i + 1 == segs.len() {
                cur[seg.as_str()] = v.clone();
            } else {
                if !cur[seg.as_str()].is_object() {
                    cur[seg.as_str()] = json!({});
                }
                cur = &mut cur[seg.as_str()];
            }
        }
    }
    patch
}

/// Applies a merge patch (RFC 7386: objects merge, `null` removes, anything
/// else replaces) to a local copy of an object, as the API server would:
/// the engine's, which `customize.with` merges with too.
pub use rollwright_engine::expand::merge_patch as apply_merge_patch;

#[cfg(test)]
mod tests {
    use super::*;

    fn router(traffic: &str) -> Router {
        let mut cx = BuildContext::detached(std::path::Path::new("."));
        cx.model = Some(("file".into(), "fraud".into(), "8".into()));
        cx.serving = Some(serde_json::json!({"platform": "deployment", "traffic": traffic}));
        cx.target = Some(rollwright_engine::registry::TargetInfo {
            context: "c".into(),
            namespace: "ml".into(),
            production: true,
            gitops: None,
        });
        Router::of(&cx, None).unwrap()
    }

    /// Every provider writes canary/stable weights that sum to 100, reads
    /// them back, and names what it changes.
    #[test]
    fn every_provider_splits_100() {
        let cases = [
            (
                "istio",
                json!({"spec": {"http": [{"route": [
                    {"destination": {"host": "fraud", "subset": "stable"}, "weight": 100},
                    {"destination": {"host": "fraud", "subset": "canary"}, "weight": 0}]}]}}),
            ),
            (
                "gateway-api",
                json!({"spec": {"rules": [{"backendRefs": [{"name": "fraud", "weight": 1}, {"name": "fraud-canary", "weight": 0}]}]}}),
            ),
            (
                "smi",
                json!({"spec": {"service": "fraud", "backends": [{"service": "fraud", "weight": 100}, {"service": "fraud-canary", "weight": 0}]}}),
            ),
            (
                "seldon",
                json!({"spec": {"predictors": [{"name": "main", "traffic": 100}, {"name": "canary", "traffic": 0}]}}),
            ),
            ("nginx", json!({"metadata": {"annotations": {}}})),
            (
                "kserve",
                json!({"spec": {"predictor": {"canaryTrafficPercent": 0}}}),
            ),
        ];
        for (provider, obj) in cases {
            let r = router(provider);
            for w in [5u8, 20, 50, 100, 0] {
                let fields = r
                    .fields_for(&obj, w)
                    .unwrap_or_else(|e| panic!("{provider}: {e}"));
                let mut next = obj.clone();
                let patch = merge_patch_of(&fields);
                apply_merge_patch(&mut next, &patch);
                assert_eq!(
                    r.canary_weight(&next),
                    Some(u64::from(w)),
                    "{provider} at {w}: {next}"
                );
                let text = next.to_string();
                if provider != "nginx" && provider != "kserve" {
                    assert!(
                        text.contains(&format!(":{}", 100 - w)),
                        "{provider}: the stable side gets the rest: {text}"
                    );
                }
            }
            assert_eq!(r.pointers().len(), r.fields(&obj).len());
        }
        // A route without the canary backend is refused, naming it.
        let e = router("istio")
            .fields_for(&json!({"spec": {"http": [{"route": [{"destination": {"host": "fraud", "subset": "stable"}, "weight": 100}]}]}}), 20)
            .unwrap_err();
        assert!(e.contains("no entry for the canary backend `canary`"), "{e}");
        assert_eq!(router("nginx").object().name, "fraud-canary");
        assert_eq!(router("kserve").object().kind, "InferenceService");
    }
}
