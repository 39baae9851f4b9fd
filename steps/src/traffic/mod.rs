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

use rollwright_engine::exec::{BoxFuture, StepError};
use rollwright_engine::registry::{Access, BuildContext};
use serde_json::{Map, Value, json};

use crate::cluster::{Cluster, ObjRef, pod_ready, selector};

mod gateway_api;
mod istio;
mod kserve;
mod nginx;
mod seldon;
mod smi;

/// Every traffic provider this build knows, in the order the docs list
/// them. The one place a provider is registered.
static PROVIDERS: &[&dyn TrafficProvider] = &[
    &istio::Istio,
    &gateway_api::GatewayApi,
    &kserve::Kserve,
    &smi::Smi,
    &nginx::Nginx,
    &seldon::Seldon,
];

/// A traffic provider: which object splits a model's traffic, how a weight
/// is written into it and read back, and how to tell that a backend can
/// take traffic. One implementation per file in `traffic/`.
pub trait TrafficProvider: Send + Sync {
    /// The name a spec uses (`serving.traffic`, a step's `provider`).
    fn name(&self) -> &'static str;
    /// `(apiVersion, kind)` of the object whose fields a shift changes.
    fn route_kind(&self) -> (&'static str, &'static str);
    /// The serving platform whose own object splits the traffic (KServe's
    /// InferenceService, Seldon's SeldonDeployment), when the route is the
    /// model's workload rather than a router in front of Services.
    fn platform(&self) -> Option<&'static str> {
        None
    }
    /// Whether it can mirror (shadow) traffic.
    fn mirrors(&self) -> bool {
        false
    }
    /// Adds mirroring of `percent` of the traffic to the canary to the
    /// fields of a shift (only called when [`mirrors`](Self::mirrors)).
    fn mirror(&self, r: &Router, fields: &mut Map<String, Value>, percent: u8) {
        let _ = (r, fields, percent);
    }
    /// The `(stable, canary)` backends a route has by default.
    fn default_backends(&self, route: &str) -> (String, String) {
        (route.to_owned(), format!("{route}-canary"))
    }
    /// The name of the object whose fields change (default: the route).
    fn object_name<'r>(&self, r: &'r Router) -> &'r str {
        &r.route
    }
    /// The fields a shift changes, as JSON pointers (what is recorded).
    fn pointers(&self, r: &Router) -> Vec<String>;
    /// The fields that route `canary` percent to the canary, the rest to
    /// stable.
    ///
    /// # Errors
    /// The object has no route to one of the backends.
    fn fields_for(&self, r: &Router, obj: &Value, canary: u8) -> Result<Map<String, Value>, String>;
    /// The canary's share the object routes now, if readable.
    fn canary_weight(&self, r: &Router, obj: &Value) -> Option<u64>;
    /// Whether the router *serves* the split (not only whether the object
    /// says so); `Some(why)` while it does not yet.
    fn not_served(&self, r: &Router, obj: &Value, canary: u8) -> Option<String> {
        let w = self.canary_weight(r, obj).unwrap_or(0);
        (w != u64::from(canary))
            .then(|| format!("{} routes {w} % to the canary (want {canary} %)", r.object()))
    }
    /// What finding the pods of `backend` reads (default: its Service).
    fn selection_access(&self, r: &Router, backend: &str) -> Vec<Access> {
        let _ = r;
        vec![Access::new("v1", "Service", Some(backend), &["get"])]
    }
    /// What [`canary_ready`](Self::canary_ready) reads.
    fn readiness_access(&self, r: &Router) -> Vec<Access> {
        let mut out = self.selection_access(r, &r.canary);
        out.push(Access::new("v1", "Pod", None, &["list"]));
        out
    }
    /// The Service behind `backend` and labels its pods must also carry
    /// (default: the Service named `backend`, no more labels).
    fn backend<'a>(
        &'a self,
        r: &'a Router,
        cluster: &'a Cluster,
        route: &'a Value,
        backend: &'a str,
    ) -> BoxFuture<'a, Result<(String, Value), StepError>> {
        let _ = (r, cluster, route);
        Box::pin(async move { Ok((backend.to_owned(), Value::Null)) })
    }
    /// Checks that the canary backend can take traffic (default: a Ready
    /// pod behind its Service).
    ///
    /// # Errors
    /// Why it cannot (a rejection: routing there would answer 503).
    fn canary_ready<'a>(
        &'a self,
        r: &'a Router,
        cluster: &'a Cluster,
        route: &'a Value,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            let (svc, labels) = r.backend_pods(cluster, route, &r.canary).await?;
            let Some(labels) = labels else {
                return Err(not_ready(format!("{svc} does not exist")));
            };
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
        })
    }
}

impl std::fmt::Debug for dyn TrafficProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The provider a spec names.
#[must_use]
pub fn provider(name: &str) -> Option<&'static dyn TrafficProvider> {
    PROVIDERS.iter().copied().find(|p| p.name() == name)
}

/// The names of every traffic provider.
#[must_use]
pub fn names() -> Vec<&'static str> {
    PROVIDERS.iter().map(|p| p.name()).collect()
}

/// Routing to a backend that cannot take traffic is refused.
pub(crate) fn not_ready(why: String) -> StepError {
    StepError::rejected(format!(
        "refusing to route traffic to the canary: {why} (traffic to a backend that is not Ready is answered 503)"
    ))
}

/// Writes the weights into a list of backends: `canary` to the canary,
/// the rest to stable, 0 to any other; both must be present.
pub(crate) fn set_weights(
    r: &Router,
    list: Option<&Value>,
    key: &dyn Fn(&Value) -> Option<String>,
    field: &str,
    label: &str,
    canary: u8,
) -> Result<Value, String> {
    let p = u64::from(canary);
    let what = r.object();
    let mut list = list.cloned().unwrap_or(Value::Array(Vec::new()));
    let items = list
        .as_array_mut()
        .ok_or(format!("{what}: {label} is not a list"))?;
    let (mut seen_stable, mut seen_canary) = (false, false);
    for item in items.iter_mut() {
        match key(item) {
            Some(k) if k == r.canary => {
                item[field] = json!(p);
                seen_canary = true;
            }
            Some(k) if k == r.stable => {
                item[field] = json!(100 - p);
                seen_stable = true;
            }
            _ => item[field] = json!(0),
        }
    }
    if !seen_canary || !seen_stable {
        return Err(format!(
            "{what}: {label} has no entry for the {} backend `{}` (set `serving.stable`/`serving.canary` to name them)",
            if seen_canary { "stable" } else { "canary" },
            if seen_canary { &r.stable } else { &r.canary }
        ));
    }
    Ok(list)
}

/// The canary's weight in a list of backends.
pub(crate) fn weight_of(
    r: &Router,
    list: &Value,
    key: &dyn Fn(&Value) -> Option<String>,
    field: &str,
) -> Option<u64> {
    list.as_array()?
        .iter()
        .find(|i| key(i).as_deref() == Some(r.canary.as_str()))
        .and_then(|i| i[field].as_u64())
}

/// How a run's model traffic is routed.
#[derive(Debug, Clone)]
pub struct Router {
    /// The provider.
    pub provider: &'static dyn TrafficProvider,
    /// Name of the routing object.
    pub route: String,
    /// Stable backend.
    pub stable: String,
    /// Canary backend.
    pub canary: String,
    /// Target namespace.
    pub namespace: String,
}

/// Why a run has no router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Neither the step nor `serving` names a provider.
    #[error("shift-traffic needs a provider: set `serving.traffic` (or `provider`)")]
    NoProvider,
    /// This build has no provider of that name (or it is `none`).
    #[error("traffic provider `{0}` cannot shift traffic")]
    Unknown(String),
    /// Nothing names the routing object.
    #[error("shift-traffic needs `serving.route` or a `model` to name the routing object")]
    NoRoute,
}

impl Router {
    /// The router of a run (`provider` overrides `serving.traffic`).
    ///
    /// # Errors
    /// No provider, or `none`.
    pub fn of(cx: &BuildContext, provider: Option<&str>) -> Result<Router, RouterError> {
        let serving = crate::target::serving(cx);
        let serving = serving.as_ref();
        let name = provider
            .map(str::to_owned)
            .or_else(|| serving.and_then(|s| s.traffic.clone()))
            .or_else(|| {
                // A platform whose own object splits traffic routes itself.
                serving.and_then(|s| {
                    PROVIDERS
                        .iter()
                        .find(|p| p.platform() == Some(s.platform.as_str()))
                        .map(|p| p.name().to_owned())
                })
            })
            .ok_or(RouterError::NoProvider)?;
        let provider = self::provider(&name).ok_or(RouterError::Unknown(name))?;
        let route = serving
            .and_then(|s| s.route.clone())
            .or_else(|| cx.model.as_ref().map(|m| m.1.clone()))
            .ok_or(RouterError::NoRoute)?;
        let (stable, canary) = provider.default_backends(&route);
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
        ObjRef::new(av, kind, &self.namespace, self.provider.object_name(self))
    }

    /// The fields a shift changes, as JSON pointers (what is recorded).
    #[must_use]
    pub fn pointers(&self) -> Vec<String> {
        self.provider.pointers(self)
    }

    /// The values of those fields now.
    #[must_use]
    pub fn fields(&self, obj: &Value) -> Map<String, Value> {
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
    pub fn fields_for(&self, obj: &Value, canary: u8) -> Result<Map<String, Value>, String> {
        self.provider.fields_for(self, obj, canary)
    }

    /// Whether the router serves the split `canary`; `Some(why)` while not.
    #[must_use]
    pub fn not_served(&self, obj: &Value, canary: u8) -> Option<String> {
        self.provider.not_served(self, obj, canary)
    }

    /// The canary's share the object routes now, if readable.
    #[must_use]
    pub fn canary_weight(&self, obj: &Value) -> Option<u64> {
        self.provider.canary_weight(self, obj)
    }

    /// Checks that the canary backend can take traffic.
    ///
    /// # Errors
    /// Why it cannot (a rejection: routing there would answer 503).
    pub async fn canary_ready(&self, cluster: &Cluster, route: &Value) -> Result<(), StepError> {
        self.provider.canary_ready(self, cluster, route).await
    }

    /// The Service behind `backend` and the labels its pods carry: the
    /// Service's selector plus the provider's own (an Istio subset's);
    /// `None` when the Service does not exist.
    async fn backend_pods(
        &self,
        cluster: &Cluster,
        route: &Value,
        backend: &str,
    ) -> Result<(ObjRef, Option<Value>), StepError> {
        let (service, extra) = self.provider.backend(self, cluster, route, backend).await?;
        let svc = ObjRef::new("v1", "Service", &self.namespace, &service);
        let Some(svc_obj) = cluster.get(&svc).await? else {
            return Ok((svc, None));
        };
        let mut labels = svc_obj["spec"]["selector"].clone();
        if let (Some(l), Some(x)) = (labels.as_object_mut(), extra.as_object()) {
            l.extend(x.clone());
        }
        Ok((svc, Some(labels)))
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
        let (svc, labels) = self.backend_pods(cluster, &route, &self.stable).await?;
        let labels =
            labels.ok_or_else(|| StepError::failed(format!("{svc}, the stable backend, does not exist")))?;
        if labels.as_object().is_none_or(Map::is_empty) {
            return Err(StepError::failed(format!(
                "{svc}, the stable backend, selects no pods"
            )));
        }
        Ok(labels)
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

    /// A new provider is one file with five methods (plus its line in
    /// `PROVIDERS`): everything else (defaults, readiness, the access it
    /// needs, reading the split back) comes from the trait. This one, for
    /// a made-up router, lives here rather than in `PROVIDERS`.
    #[test]
    fn a_provider_needs_only_its_own_file() {
        struct Weights;
        impl TrafficProvider for Weights {
            fn name(&self) -> &'static str {
                "weights"
            }
            fn route_kind(&self) -> (&'static str, &'static str) {
                ("example.dev/v1", "WeightedRoute")
            }
            fn pointers(&self, _r: &Router) -> Vec<String> {
                vec!["/spec/targets".into()]
            }
            fn fields_for(&self, r: &Router, obj: &Value, canary: u8) -> Result<Map<String, Value>, String> {
                let key = |t: &Value| t["to"].as_str().map(str::to_owned);
                let list = set_weights(r, obj["spec"].get("targets"), &key, "w", "spec.targets", canary)?;
                Ok(Map::from_iter([("/spec/targets".to_owned(), list)]))
            }
            fn canary_weight(&self, r: &Router, obj: &Value) -> Option<u64> {
                weight_of(
                    r,
                    &obj["spec"]["targets"],
                    &|t: &Value| t["to"].as_str().map(str::to_owned),
                    "w",
                )
            }
        }
        static WEIGHTS: Weights = Weights;
        let mut r = router("smi");
        r.provider = &WEIGHTS;
        let (stable, canary) = WEIGHTS.default_backends(&r.route);
        (r.stable, r.canary) = (stable, canary);
        let obj = json!({"spec": {"targets": [{"to": "fraud", "w": 100}, {"to": "fraud-canary", "w": 0}]}});
        let mut next = obj.clone();
        apply_merge_patch(&mut next, &merge_patch_of(&r.fields_for(&obj, 20).unwrap()));
        assert_eq!(r.canary_weight(&next), Some(20));
        assert_eq!(r.not_served(&next, 20), None);
        assert!(r.not_served(&obj, 20).is_some());
        assert_eq!(r.object().kind, "WeightedRoute");
        let access = WEIGHTS.readiness_access(&r);
        assert_eq!(
            access.len(),
            2,
            "its canary Service and the pods behind it: {access:?}"
        );
        assert!(!WEIGHTS.mirrors());
    }
}
