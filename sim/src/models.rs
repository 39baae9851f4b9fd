//! Simulated model servers behind a router that honours the current
//! traffic split, a background traffic generator, and `/metrics`.
//!
//! One plain-HTTP listener on 127.0.0.1 serves every model:
//! - KServe v1: `POST /v1/models/<m>:predict`, `GET /v1/models/<m>`;
//! - Open Inference Protocol v2: `POST /v2/models/<m>[/versions/<v>]/infer`,
//!   `GET /v2/models/<m>[/ready]`, `GET /v2/health/ready|live`;
//! - one model's base URL `/models/<m>/`: the paths above below it, and
//!   any other `POST` as that model's plain-HTTP predict
//!   (`{"prediction": …, "model_version": …}`);
//! - `GET /metrics` (Prometheus text format), `GET /routes` (the split, JSON).
//!
//! Every answer carries `x-model-version` (the version that answered) and
//! `x-sim-backend`. A request picks its backend by weight, unless it names a
//! version (`x-sim-version` header, or `/versions/<v>/` in v2) as a client
//! going to a canary's own Service does, or excludes one
//! (`x-sim-exclude-version`: the stable side of a canary). A backend with no Ready pod answers
//! 503 (`no healthy upstream`), as a mesh does.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use rand_distr::{Distribution, LogNormal};
use serde_json::{Value, json};

use crate::routing::{Backend, Route};
use crate::scenario::{Latency, ModelSpec, Rate, TimeScale};

/// Histogram buckets, seconds.
const BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One model version's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Series {
    namespace: String,
    model: String,
    version: String,
}

/// A series and the HTTP status of the answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Answered {
    namespace: String,
    model: String,
    version: String,
    code: String,
}

/// A backend of a route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendSeries {
    namespace: String,
    model: String,
    version: String,
    backend: String,
}

/// What the model servers expose on `/metrics` (prometheus-client).
struct Metrics {
    registry: Registry,
    requests: Family<Answered, Counter>,
    latency: Family<Series, Histogram, fn() -> Histogram>,
    traffic: Family<BackendSeries, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<Answered, Counter>::default();
        let latency: Family<Series, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(BUCKETS.iter().copied()));
        let traffic = Family::<BackendSeries, Gauge>::default();
        let mut registry = Registry::default();
        registry.register(
            "sim_model_requests",
            "Requests answered by the simulated model servers",
            requests.clone(),
        );
        registry.register(
            "sim_model_request_duration_seconds",
            "Model latency",
            latency.clone(),
        );
        registry.register(
            "sim_model_traffic_percent",
            "The current traffic split",
            traffic.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            traffic,
        }
    }
}

/// The model side of the sim.
pub struct Models {
    scale: TimeScale,
    behaviour: RwLock<BTreeMap<String, ModelSpec>>,
    routes: RwLock<Arc<BTreeMap<(String, String), Route>>>,
    metrics: Metrics,
    rng: Mutex<SmallRng>,
    first_served: Mutex<HashMap<(String, String), Instant>>,
    peak_weight: Mutex<HashMap<(String, String), u32>>,
    rate: Mutex<f64>,
    /// What webhooks received, newest last (at most [`HOOKS_KEPT`]).
    hooks: Mutex<std::collections::VecDeque<Value>>,
}

/// Webhook deliveries the model servers keep.
const HOOKS_KEPT: usize = 100;
/// The largest webhook body kept.
const HOOK_BYTES: usize = 64 * 1024;

/// One answered request.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub code: u16,
    /// The version that answered (empty when no backend did).
    pub version: String,
    /// The backend.
    pub backend: String,
    /// How long the model took.
    pub latency: Duration,
    /// Why it failed.
    pub error: Option<String>,
    /// The per-instance prediction.
    pub output: Value,
}

impl Models {
    pub fn new(scale: TimeScale, seed: u64, models: BTreeMap<String, ModelSpec>, rate: f64) -> Self {
        Models {
            scale,
            behaviour: RwLock::new(models),
            routes: RwLock::default(),
            metrics: Metrics::default(),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            first_served: Mutex::default(),
            peak_weight: Mutex::default(),
            rate: Mutex::new(rate),
            hooks: Mutex::default(),
        }
    }

    /// Replaces model behaviour and the generator's rate (admin endpoint).
    pub fn set_behaviour(&self, models: BTreeMap<String, ModelSpec>, rate: f64) {
        if let Ok(mut b) = self.behaviour.write() {
            *b = models;
        }
        if let Ok(mut r) = self.rate.lock() {
            *r = rate;
        }
    }

    /// The behaviour in force.
    pub fn behaviour(&self) -> (BTreeMap<String, ModelSpec>, f64) {
        (
            self.behaviour.read().map(|b| b.clone()).unwrap_or_default(),
            self.rate.lock().map(|r| *r).unwrap_or(0.0),
        )
    }

    /// Installs a new routing table (controllers, every tick).
    pub fn set_routes(&self, routes: BTreeMap<(String, String), Route>) {
        if let Ok(mut peak) = self.peak_weight.lock() {
            for r in routes.values() {
                for b in &r.backends {
                    let e = peak.entry((r.model.clone(), b.version.clone())).or_insert(0);
                    *e = (*e).max(b.weight);
                }
            }
        }
        if let Ok(mut cur) = self.routes.write() {
            *cur = Arc::new(routes);
        }
    }

    /// The routing table.
    pub fn routes(&self) -> Arc<BTreeMap<(String, String), Route>> {
        self.routes.read().map(|r| r.clone()).unwrap_or_default()
    }

    fn route(&self, model: &str, namespace: Option<&str>) -> Option<Route> {
        let routes = self.routes();
        routes
            .values()
            .find(|r| r.model == model && namespace.is_none_or(|n| n == r.namespace))
            .cloned()
    }

    /// Error rate and latency of a version now, phases applied.
    fn effective(&self, model: &str, version: &str) -> (Rate, Latency, Value) {
        let spec = self
            .behaviour
            .read()
            .ok()
            .and_then(|b| b.get(model).and_then(|m| m.versions.get(version)).cloned())
            .unwrap_or_default();
        let (mut rate, mut latency) = (spec.error_rate, spec.latency);
        let key = (model.to_owned(), version.to_owned());
        let served = self.first_served.lock().ok().and_then(|f| f.get(&key).copied());
        let peak = self
            .peak_weight
            .lock()
            .ok()
            .and_then(|p| p.get(&key).copied())
            .unwrap_or(0);
        for p in &spec.phases {
            let by_time = p
                .after
                .is_none_or(|a| served.is_some_and(|s| self.scale.to_sim(s.elapsed()) >= a.0));
            let by_weight = p.at_weight.is_none_or(|w| peak >= u32::from(w));
            if by_time && by_weight {
                rate = p.error_rate.unwrap_or(rate);
                latency = p.latency.unwrap_or(latency);
            }
        }
        (rate, latency, spec.output.unwrap_or(Value::from(0.5)))
    }

    /// Routes one request and decides its outcome (and records it).
    pub fn answer(&self, model: &str, namespace: Option<&str>, version: Option<&str>) -> Answer {
        self.answer_except(model, namespace, version, None)
    }

    /// As [`Self::answer`]; `except` routes among the backends that do not
    /// serve that version (by weight, or evenly when they have none), as a
    /// client calling the stable Service does during a canary.
    pub fn answer_except(
        &self,
        model: &str,
        namespace: Option<&str>,
        version: Option<&str>,
        except: Option<&str>,
    ) -> Answer {
        let fail = |code: u16, error: String| Answer {
            code,
            version: String::new(),
            backend: String::new(),
            latency: Duration::ZERO,
            error: Some(error),
            output: Value::Null,
        };
        let Some(route) = self.route(model, namespace) else {
            return fail(404, format!("model {model} not found"));
        };
        let backend: Option<Backend> = match version {
            Some(v) => route.backends.iter().find(|b| b.version == v).cloned(),
            None => {
                let mut candidates: Vec<Backend> = route
                    .backends
                    .iter()
                    .filter(|b| except.is_none_or(|x| b.version != x))
                    .cloned()
                    .collect();
                if except.is_some() && candidates.iter().all(|b| b.weight == 0) {
                    for b in &mut candidates {
                        b.weight = 1;
                    }
                }
                let total: u32 = candidates.iter().map(|b| b.weight).sum();
                if total == 0 {
                    None
                } else {
                    let mut pick = self.rng.lock().map_or(0, |mut r| r.random_range(0..total));
                    candidates.into_iter().find(|b| {
                        if pick < b.weight {
                            true
                        } else {
                            pick -= b.weight;
                            false
                        }
                    })
                }
            }
        };
        let Some(b) = backend else {
            let why = match version {
                Some(v) => format!("model {model} has no backend serving version {v}"),
                None => format!("model {model}: no backend has traffic"),
            };
            let a = fail(503, why);
            self.record(&route.namespace, model, "", &a);
            return a;
        };
        if !b.ready {
            let mut a = fail(503, format!("no healthy upstream: {} has no Ready pod", b.name));
            a.version.clone_from(&b.version);
            a.backend = b.name;
            self.record(&route.namespace, model, &a.version.clone(), &a);
            return a;
        }
        if let Ok(mut f) = self.first_served.lock() {
            f.entry((model.to_owned(), b.version.clone()))
                .or_insert_with(Instant::now);
        }
        let (rate, latency, output) = self.effective(model, &b.version);
        let (err, lat) = {
            let Ok(mut rng) = self.rng.lock() else {
                return fail(500, "rng".into());
            };
            let err = rng.random::<f64>() < rate.0;
            (err, sample(&mut rng, latency))
        };
        let a = Answer {
            code: if err { 500 } else { 200 },
            version: b.version.clone(),
            backend: b.name,
            latency: lat,
            error: err.then(|| format!("simulated error of model {model} version {}", b.version)),
            output,
        };
        self.record(&route.namespace, model, &b.version, &a);
        a
    }

    fn record(&self, ns: &str, model: &str, version: &str, a: &Answer) {
        let m = &self.metrics;
        m.requests
            .get_or_create(&Answered {
                namespace: ns.to_owned(),
                model: model.to_owned(),
                version: version.to_owned(),
                code: a.code.to_string(),
            })
            .inc();
        m.latency
            .get_or_create(&Series {
                namespace: ns.to_owned(),
                model: model.to_owned(),
                version: version.to_owned(),
            })
            .observe(a.latency.as_secs_f64());
    }

    /// The OpenMetrics text exposition (what Prometheus scrapes).
    pub fn metrics_text(&self) -> String {
        let m = &self.metrics;
        // The split as it is now (a removed backend is no longer exposed).
        m.traffic.clear();
        for r in self.routes().values() {
            for b in &r.backends {
                m.traffic
                    .get_or_create(&BackendSeries {
                        namespace: r.namespace.clone(),
                        model: r.model.clone(),
                        version: b.version.clone(),
                        backend: b.name.clone(),
                    })
                    .set(i64::from(b.weight));
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
        out
    }

    /// Background traffic: `rate` requests per second and model, spread
    /// over ticks (outcomes recorded, nothing sleeps).
    pub async fn generate(self: Arc<Self>, tick: Duration) {
        let mut owed = 0.0f64;
        loop {
            tokio::time::sleep(tick).await;
            let rate = self.rate.lock().map(|r| *r).unwrap_or(0.0);
            if rate <= 0.0 {
                continue;
            }
            owed += rate * tick.as_secs_f64();
            let n = owed.floor();
            owed -= n;
            let routes = self.routes();
            for r in routes.values() {
                for _ in 0..(n as u64) {
                    self.answer(&r.model, Some(&r.namespace), None);
                }
            }
        }
    }
}

fn sample(rng: &mut SmallRng, l: Latency) -> Duration {
    let p50 = l.p50.0.as_secs_f64();
    if p50 <= 0.0 {
        return Duration::ZERO;
    }
    let sigma = (l.p99.0.as_secs_f64() / p50).ln() / 2.326_348;
    match LogNormal::new(p50.ln(), sigma.max(0.0)) {
        Ok(d) => Duration::from_secs_f64(d.sample(rng).min(60.0)),
        Err(_) => l.p50.0,
    }
}

fn json_reply(code: u16, headers: &[(&str, String)], body: &Value) -> Response {
    let mut r = (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    for (k, v) in headers {
        if let (Ok(name), Ok(val)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            axum::http::HeaderValue::from_str(v),
        ) {
            r.headers_mut().insert(name, val);
        }
    }
    r
}

/// The HTTP surface of the model servers.
pub fn router(models: Arc<Models>) -> axum::Router {
    axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let models = models.clone();
        async move { serve(&models, &method, &uri, &headers, &body).await }
    })
}

async fn serve(models: &Models, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
    let path = uri.path();
    let mut segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let ns = header("x-sim-namespace");
    let live = |m: &str| models.route(m, ns.as_deref());
    // `/models/<m>/…`: one model's own base URL (what a run's
    // `serving.endpoint` becomes on the sim). The protocols' paths work
    // below it; any other POST is that model's plain-HTTP predict.
    if let ["models", m, rest @ ..] = segs.as_slice() {
        let m = *m;
        let is_protocol = matches!(rest.first(), Some(&"v1" | &"v2"));
        if !is_protocol {
            if method != Method::POST {
                return json_reply(
                    405,
                    &[],
                    &json!({"error": format!("{method} {path}: POST a request")}),
                );
            }
            if let Err(e) = serde_json::from_slice::<Value>(body) {
                return json_reply(400, &[], &json!({"error": format!("invalid JSON: {e}")}));
            }
            let a = models.answer_except(
                m,
                ns.as_deref(),
                header("x-sim-version").as_deref(),
                header("x-sim-exclude-version").as_deref(),
            );
            return respond(
                a,
                |a| json!({"prediction": a.output.clone(), "model_version": a.version}),
            )
            .await;
        }
        segs = rest.to_vec();
    }
    match (method, segs.as_slice()) {
        (&Method::GET, ["metrics"]) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            models.metrics_text(),
        )
            .into_response(),
        (&Method::POST, ["hooks", name]) => {
            let body = if body.len() > HOOK_BYTES {
                return json_reply(413, &[], &json!({"error": format!("at most {HOOK_BYTES} bytes")}));
            } else {
                serde_json::from_slice::<Value>(body)
                    .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(body).into_owned()))
            };
            if let Ok(mut h) = models.hooks.lock() {
                if h.len() == HOOKS_KEPT {
                    h.pop_front();
                }
                h.push_back(json!({"hook": name, "body": body}));
            }
            json_reply(200, &[], &json!({"received": true}))
        }
        (&Method::GET, ["hooks"]) => {
            let all: Vec<Value> = models
                .hooks
                .lock()
                .map(|h| h.iter().cloned().collect())
                .unwrap_or_default();
            json_reply(200, &[], &Value::from(all))
        }
        (&Method::GET, ["routes"]) => {
            let routes: Vec<Route> = models.routes().values().cloned().collect();
            json_reply(200, &[], &serde_json::to_value(routes).unwrap_or_default())
        }
        (&Method::GET, ["v2", "health", "live"]) => json_reply(200, &[], &json!({"live": true})),
        (&Method::GET, ["v2", "health", "ready"]) => {
            let ready = models
                .routes()
                .values()
                .any(|r| r.backends.iter().any(|b| b.ready));
            json_reply(if ready { 200 } else { 503 }, &[], &json!({"ready": ready}))
        }
        (&Method::GET, ["v1", "models", m]) | (&Method::GET, ["v2", "models", m, "ready"]) => {
            let ready = live(m).is_some_and(|r| r.backends.iter().any(|b| b.ready && b.weight > 0));
            json_reply(
                if ready { 200 } else { 503 },
                &[],
                &json!({"name": m, "ready": ready}),
            )
        }
        (&Method::GET, ["v2", "models", m]) => match live(m) {
            Some(r) => json_reply(
                200,
                &[],
                &json!({"name": m, "versions": r.backends.iter().map(|b| b.version.clone()).collect::<Vec<_>>(), "platform": "rollwright-sim", "inputs": [], "outputs": [{"name": "output-0", "datatype": "FP32", "shape": [-1]}]}),
            ),
            None => json_reply(404, &[], &json!({"error": format!("model {m} not found")})),
        },
        (&Method::POST, ["v1", "models", m]) if m.ends_with(":predict") => {
            let model = &m[..m.len() - ":predict".len()];
            let req: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return json_reply(400, &[], &json!({"error": format!("invalid JSON: {e}")})),
            };
            let Some(instances) = req["instances"].as_array() else {
                return json_reply(
                    400,
                    &[],
                    &json!({"error": "the v1 protocol needs {\"instances\": [...]}"}),
                );
            };
            let n = instances.len();
            let a = models.answer_except(
                model,
                ns.as_deref(),
                header("x-sim-version").as_deref(),
                header("x-sim-exclude-version").as_deref(),
            );
            respond(a, |a| json!({"predictions": vec![a.output.clone(); n]})).await
        }
        (&Method::POST, ["v2", "models", m, "infer"])
        | (&Method::POST, ["v2", "models", m, "versions", _, "infer"]) => {
            let pinned = if segs.len() == 6 {
                Some(segs[4].to_owned())
            } else {
                header("x-sim-version")
            };
            let req: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return json_reply(400, &[], &json!({"error": format!("invalid JSON: {e}")})),
            };
            let Some(inputs) = req["inputs"].as_array() else {
                return json_reply(
                    400,
                    &[],
                    &json!({"error": "the v2 protocol needs {\"inputs\": [...]}"}),
                );
            };
            let n = inputs
                .first()
                .and_then(|i| i["shape"].as_array())
                .and_then(|s| s.first())
                .and_then(Value::as_u64)
                .unwrap_or(1);
            let id = req["id"].clone();
            let model = (*m).to_owned();
            let a = models.answer_except(
                m,
                ns.as_deref(),
                pinned.as_deref(),
                header("x-sim-exclude-version").as_deref(),
            );
            respond(a, move |a| {
                let data = vec![a.output.clone(); usize::try_from(n).unwrap_or(1)];
                json!({"model_name": model, "model_version": a.version, "id": id,
                       "outputs": [{"name": "output-0", "shape": [n], "datatype": "FP32", "data": data}]})
            })
            .await
        }
        _ => json_reply(
            404,
            &[],
            &json!({"error": format!("no such endpoint: {method} {path}")}),
        ),
    }
}

async fn respond(a: Answer, ok: impl FnOnce(&Answer) -> Value) -> Response {
    tokio::time::sleep(a.latency).await;
    let headers = [
        ("x-model-version", a.version.clone()),
        ("x-sim-backend", a.backend.clone()),
    ];
    match &a.error {
        None => json_reply(a.code, &headers, &ok(&a)),
        Some(e) => json_reply(a.code, &headers, &json!({"error": e})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition Prometheus scrapes: the counter as
    /// `sim_model_requests_total`, the latency histogram with its buckets,
    /// label values escaped, and the OpenMetrics end marker.
    #[test]
    fn metrics_are_exposed_as_openmetrics() {
        let models = Models::new(TimeScale::default(), 1, BTreeMap::new(), 1.0);
        let answer = |code: u16, ms: u64| Answer {
            code,
            version: "7".into(),
            backend: "fraud".into(),
            latency: Duration::from_millis(ms),
            error: None,
            output: Value::Null,
        };
        models.record("ml", "fraud \"x\"", "7", &answer(200, 20));
        models.record("ml", "fraud \"x\"", "7", &answer(503, 300));
        let text = models.metrics_text();
        for line in [
            "# TYPE sim_model_requests counter",
            r#"sim_model_requests_total{namespace="ml",model="fraud \"x\"",version="7",code="200"} 1"#,
            r#"sim_model_requests_total{namespace="ml",model="fraud \"x\"",version="7",code="503"} 1"#,
            r#"sim_model_request_duration_seconds_bucket{le="0.025",namespace="ml",model="fraud \"x\"",version="7"} 1"#,
            r#"sim_model_request_duration_seconds_bucket{le="0.5",namespace="ml",model="fraud \"x\"",version="7"} 2"#,
            r#"sim_model_request_duration_seconds_count{namespace="ml",model="fraud \"x\"",version="7"} 2"#,
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
        }
    }
}
