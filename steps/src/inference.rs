//! Synthetic inference requests, shared by `verify-inference` and the
//! `probe` metric provider of `hold`: where to send them (`serving.endpoint`),
//! how to address the canary or the stable version (`serving.canary-headers`
//! / `stable-headers`; by default the headers the embedded cluster's router
//! understands), what to send per protocol, and which version answered (the
//! `x-model-version` response header, else `model_version` in a v2 body).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rollwright_engine::registry::{BuildContext, BuildError};
use serde_json::{Value, json};

use crate::verify_inference::Protocol;

/// Which version a request addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// The version being rolled out.
    Canary,
    /// What served before.
    Stable,
}

/// Where and how to call the model.
#[derive(Debug, Clone)]
pub struct Endpoint {
    base: String,
    /// The model name.
    pub model: String,
    /// The canary's version (the run's model version).
    pub version: String,
    canary_headers: BTreeMap<String, String>,
    stable_headers: BTreeMap<String, String>,
    client: reqwest::Client,
}

/// One answered (or failed) request.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP status (0 when no answer came).
    pub status: u16,
    /// Round-trip time.
    pub latency: Duration,
    /// The JSON body, if any.
    pub body: Option<Value>,
    /// The version that answered, when the answer says.
    pub version: Option<String>,
    /// A transport error.
    pub error: Option<String>,
}

/// Why a step that calls the model cannot, from the spec alone (no
/// `serving.endpoint`, no `model`): the check [`Endpoint::of`] makes at
/// run time, made by lint and plan too.
#[must_use]
pub fn missing(cx: &BuildContext) -> Option<rollwright_engine::registry::Finding> {
    let message = if crate::target::serving(cx).and_then(|s| s.endpoint).is_none() {
        "this step calls the model: set `serving.endpoint` (the inference URL)"
    } else if cx.model.is_none() {
        "this step calls the model: the spec needs `model`"
    } else {
        return None;
    };
    Some(rollwright_engine::registry::Finding::new(
        "",
        rollwright_engine::Code::InvalidStepConfig,
        message,
    ))
}

impl Endpoint {
    /// The endpoint of a run.
    ///
    /// # Errors
    /// No `serving.endpoint` or no model.
    pub fn of(cx: &BuildContext) -> Result<Endpoint, BuildError> {
        let serving = crate::target::serving(cx);
        let serving = serving.as_ref();
        let base = serving.and_then(|s| s.endpoint.clone()).ok_or_else(|| {
            BuildError::Config("this step calls the model: set `serving.endpoint` (the inference URL)".into())
        })?;
        let (_, model, version) = cx
            .model
            .clone()
            .ok_or_else(|| BuildError::Config("this step calls the model: the spec needs `model`".into()))?;
        let fill = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.iter()
                .map(|(k, v)| (k.clone(), v.replace("{{model.version}}", &version)))
                .collect()
        };
        let canary_headers = serving.and_then(|s| s.canary_headers.as_ref()).map_or_else(
            || BTreeMap::from([("x-sim-version".to_owned(), version.clone())]),
            fill,
        );
        let stable_headers = serving.and_then(|s| s.stable_headers.as_ref()).map_or_else(
            || BTreeMap::from([("x-sim-exclude-version".to_owned(), version.clone())]),
            fill,
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| BuildError::Unavailable(format!("cannot make an HTTP client: {e}")))?;
        Ok(Endpoint {
            base: base.trim_end_matches('/').to_owned(),
            model,
            version,
            canary_headers,
            stable_headers,
            client,
        })
    }

    /// The URL and body of a request (`path`/`body` override the protocol's
    /// defaults). The URL is always under `serving.endpoint`: same scheme,
    /// host and port, below its path (see [`confined_path`]).
    ///
    /// # Errors
    /// A `path` that would leave the endpoint.
    pub fn request(
        &self,
        protocol: Protocol,
        path: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(String, Value), PathRefused> {
        let (default_path, default_body) = match protocol {
            Protocol::KserveV1 => (
                format!("/v1/models/{}:predict", self.model),
                json!({"instances": [[1.0, 2.0, 3.0]]}),
            ),
            Protocol::V2 => (
                format!("/v2/models/{}/infer", self.model),
                json!({"id": "rollwright-probe", "inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}),
            ),
            Protocol::Http => ("/".to_owned(), json!({})),
        };
        let path = path.unwrap_or(&default_path);
        confined_path(path)?;
        let url = format!("{}{path}", self.base);
        let (Ok(base), Ok(joined)) = (reqwest::Url::parse(&self.base), reqwest::Url::parse(&url)) else {
            return Err(PathRefused::NoUrl(path.to_owned()));
        };
        let same_origin = base.scheme() == joined.scheme()
            && base.host_str() == joined.host_str()
            && base.port_or_known_default() == joined.port_or_known_default()
            && joined.username().is_empty()
            && joined.password().is_none()
            && joined.path().starts_with(base.path().trim_end_matches('/'));
        if !same_origin {
            return Err(PathRefused::Outside(path.to_owned()));
        }
        Ok((url, body.cloned().unwrap_or(default_body)))
    }

    /// Sends one request to `track`.
    pub async fn call(
        &self,
        track: Track,
        url: &str,
        body: &Value,
        auth: Option<&str>,
        budget: Duration,
    ) -> Call {
        let headers = match track {
            Track::Canary => &self.canary_headers,
            Track::Stable => &self.stable_headers,
        };
        let mut req = self.client.post(url).json(body).timeout(budget);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let started = Instant::now();
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let header_version = r
                    .headers()
                    .get("x-model-version")
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned);
                let body = r
                    .bytes()
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
                let latency = started.elapsed();
                let version = header_version.or_else(|| {
                    body.as_ref()
                        .and_then(|b| b.get("model_version"))
                        .and_then(Value::as_str)
                        .filter(|v| !v.is_empty())
                        .map(str::to_owned)
                });
                Call {
                    status,
                    latency,
                    body,
                    version,
                    error: None,
                }
            }
            Err(e) => Call {
                status: 0,
                latency: started.elapsed(),
                body: None,
                version: None,
                error: Some(if e.is_timeout() {
                    format!("no answer within {}", humantime::format_duration(budget))
                } else {
                    format!("request failed: {}", crate::inference::without_url(&e))
                }),
            },
        }
    }
}

/// The answers of a burst of probe requests to one version.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// Requests sent.
    pub sent: u64,
    /// Answered with a 2xx.
    pub ok: u64,
    /// Latencies of the answered requests.
    pub latencies: Vec<Duration>,
}

impl Probe {
    /// Requests that got an answer at all.
    #[must_use]
    pub fn answered(&self) -> u64 {
        self.sent
    }

    /// `error-rate` (errors and timeouts over requests) or `latency-pNN` (seconds).
    #[must_use]
    pub fn quantity(&self, q: &str) -> Option<f64> {
        if self.sent == 0 {
            return None;
        }
        match q {
            "error-rate" => Some((self.sent - self.ok) as f64 / self.sent as f64),
            "latency-p50" => quantile(&self.latencies, 0.5),
            "latency-p90" => quantile(&self.latencies, 0.9),
            "latency-p99" => quantile(&self.latencies, 0.99),
            _ => None,
        }
    }
}

impl Endpoint {
    /// `n` concurrent requests to `track`.
    pub async fn probe(&self, track: Track, url: &str, body: &Value, n: u32, timeout: Duration) -> Probe {
        // A few at a time: measured latency is the model's, not the queue's.
        use futures_util::StreamExt;
        let answers: Vec<Call> =
            futures_util::stream::iter((0..n).map(|_| self.call(track, url, body, None, timeout)))
                .buffer_unordered(4)
                .collect()
                .await;
        let mut p = Probe::default();
        for a in answers {
            p.sent += 1;
            if (200..300).contains(&a.status) {
                p.ok += 1;
            }
            if a.error.is_none() {
                p.latencies.push(a.latency);
            }
        }
        p
    }
}

/// A request path a probe or smoke test may not take.
#[derive(Debug, thiserror::Error)]
pub enum PathRefused {
    /// It could leave the endpoint it is joined to.
    #[error("path `{path}` {why}: probes only call `serving.endpoint`")]
    Leaves {
        /// The path as written.
        path: String,
        /// What in it is refused.
        why: &'static str,
    },
    /// Joined to the endpoint it makes no URL.
    #[error("`{0}` does not make a URL with `serving.endpoint`")]
    NoUrl(String),
    /// Joined to the endpoint it names another origin or path.
    #[error("`{0}` would send the request outside `serving.endpoint`")]
    Outside(String),
}

/// Checks that a request path stays under the endpoint it is joined to: it
/// starts with `/`, and holds no `..` or `.` segment, no `//`, no `@`, no
/// backslash, no encoded dot or slash, no control characters. (Probes are
/// read-only calls to the model: they may not be turned into a request to
/// another host, or to a proxy's other paths.)
///
/// # Errors
/// Why it is refused.
pub fn confined_path(path: &str) -> Result<(), PathRefused> {
    let bad = |why: &'static str| {
        Err(PathRefused::Leaves {
            path: path.to_owned(),
            why,
        })
    };
    if !path.starts_with('/') {
        return bad("must start with `/`");
    }
    let lower = path.to_ascii_lowercase();
    if path.contains("//") || path.contains('@') || path.contains('\\') || path.chars().any(char::is_control)
    {
        return bad("holds `//`, `@`, `\\` or a control character");
    }
    if lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c") || lower.contains("%40") {
        return bad("holds an encoded `.`, `/`, `\\` or `@`");
    }
    let route = path.split(['?', '#']).next().unwrap_or(path);
    if route.split('/').any(|seg| seg == ".." || seg == ".") {
        return bad("holds a `.` or `..` segment");
    }
    Ok(())
}

fn without_url(e: &reqwest::Error) -> String {
    // The client's message without the URL it quotes (which may carry
    // credentials or a token in its query).
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<endpoint>");
    }
    rollwright_engine::secrets::scrub(&s)
}

/// The `q` quantile (0–1) of durations, in seconds.
#[must_use]
pub fn quantile(samples: &[Duration], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}
