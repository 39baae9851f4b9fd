//! `verify-inference`: synthetic requests against the canary.

use std::sync::Arc;
use std::time::Duration;

use rollwright_engine::Code;
use rollwright_engine::exec::{BoxFuture, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::{BuildContext, BuildError, Finding, Role, StepKind};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::common::{SecretRef, config, dur};
use crate::inference::{Endpoint, Track, quantile};

/// Sends synthetic inference requests to the canary and checks status,
/// latency and response values.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "verify-inference")]
pub struct VerifyInferenceConfig {
    /// Request protocol.
    pub protocol: Protocol,
    /// Which version to address (default canary).
    #[serde(default)]
    pub target: Target,
    /// Request path (http protocol).
    #[serde(default)]
    #[schemars(regex(pattern = "^/"))]
    pub path: Option<String>,
    /// Request body (JSON).
    #[serde(default)]
    pub request: Option<Value>,
    /// Number of requests (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub requests: u32,
    /// Share of requests that must pass (default 1.0).
    #[serde(default)]
    #[schemars(range(max = 1), extend("exclusiveMinimum" = 0))]
    pub success_ratio: Option<f64>,
    /// What every answer must satisfy.
    #[serde(default)]
    pub expect: Expect,
    /// Authorization header value, by reference.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::secret_ref")]
    pub auth: Option<SecretRef>,
}

/// What every answer must satisfy.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Expected HTTP status (default 200).
    #[serde(default)]
    #[schemars(range(min = 100, max = 599))]
    pub status: Option<u16>,
    /// Latency budget per request.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::duration")]
    pub latency: Option<String>,
    /// JSONPath assertions on the response.
    #[serde(default)]
    pub json: Vec<JsonAssert>,
}

/// One JSONPath assertion.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonAssert {
    /// JSONPath, e.g. `$.predictions[0]`.
    #[schemars(regex(pattern = r"^\$"))]
    pub path: String,
    /// Expected value.
    #[serde(default)]
    pub equals: Option<Value>,
    /// Accepted absolute difference for numbers.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub tolerance: Option<f64>,
    /// Only require the path to exist.
    #[serde(default)]
    pub exists: Option<bool>,
}

/// Request protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum Protocol {
    /// KServe v1 `:predict`.
    #[serde(rename = "kserve-v1")]
    KserveV1,
    /// Open Inference Protocol v2 `/infer`.
    #[serde(rename = "v2")]
    V2,
    /// Plain HTTP/JSON.
    #[serde(rename = "http")]
    Http,
}

/// Which version a verification addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The new version.
    #[default]
    Canary,
    /// The current version.
    Stable,
}

fn one() -> u32 {
    1
}

/// The verify-inference kind.
pub struct VerifyInference;

impl StepKind for VerifyInference {
    fn describe(&self, o: &serde_json::Map<String, Value>) -> String {
        use rollwright_engine::words::scalar;
        let mut out = format!(
            "{} requests passed",
            o.get("passed").map(scalar).unwrap_or_default()
        );
        if let Some(p) = o.get("latency-p99").and_then(Value::as_f64) {
            out.push_str(&format!(", p99 latency {:.0} ms", p * 1000.0));
        }
        if let Some(v) = o.get("answered-by") {
            out.push_str(&format!(", answered by version {}", scalar(v)));
        }
        out
    }
    fn name(&self) -> &'static str {
        "verify-inference"
    }
    fn summary(&self) -> &'static str {
        "sends synthetic inference requests (KServe v1, OIP v2, HTTP) and checks the answers"
    }
    fn schema(&self) -> &'static str {
        include_str!("../schemas/verify-inference.schema.json")
    }
    fn generated_schema(&self) -> Option<Value> {
        Some(crate::schema::of::<VerifyInferenceConfig>())
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["answered-by", "latency-p99", "passed"]
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(c) = config::<VerifyInferenceConfig>(with, &mut out) else {
            return out;
        };
        if c.protocol == Protocol::Http && c.path.is_none() {
            out.push(
                Finding::new("", Code::InvalidStepConfig, "the http protocol needs a `path`")
                    .with_help("e.g. `path: /predict`"),
            );
        }
        if let Some(path) = &c.path
            && let Err(e) = crate::inference::confined_path(path)
        {
            out.push(Finding::new("/path", Code::InvalidStepConfig, e.to_string()));
        }
        if c.success_ratio.is_some() && c.requests == 1 {
            out.push(Finding::new(
                "/success-ratio",
                Code::InvalidStepConfig,
                "`success-ratio` needs `requests` greater than 1",
            ));
        }
        if let Some(a) = &c.auth {
            a.check("/auth", &mut out);
        }
        for (i, j) in c.expect.json.iter().enumerate() {
            if let Err(e) = serde_json_path::JsonPath::parse(&j.path) {
                out.push(Finding::new(
                    format!("/expect/json/{i}/path"),
                    Code::InvalidStepConfig,
                    format!("not a JSONPath: {e}"),
                ));
            }
        }
        out
    }
    fn check_rendered(&self, _with: &Value, cx: &BuildContext) -> Vec<Finding> {
        crate::inference::missing(cx).into_iter().collect()
    }
    fn build(&self, with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        let c: VerifyInferenceConfig = serde_json::from_value(with.clone())?;
        let endpoint = Endpoint::of(cx)?;
        let asserts = c
            .expect
            .json
            .iter()
            .map(|j| {
                serde_json_path::JsonPath::parse(&j.path)
                    .map(|p| (p, j.clone()))
                    .map_err(|e| format!("`{}` is not a JSONPath: {e}", j.path))
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(BuildError::Config)?;
        Ok(Arc::new(VerifyStep {
            endpoint,
            budget: c.expect.latency.as_deref().map_or(Duration::from_secs(30), dur),
            status: c.expect.status.unwrap_or(200),
            asserts,
            auth: with.get("auth").cloned(),
            cluster: crate::cluster::Cluster::of(cx).ok(),
            base: cx.spec_dir.clone(),
            config: c,
        }))
    }
}

struct VerifyStep {
    endpoint: Endpoint,
    budget: Duration,
    status: u16,
    asserts: Vec<(serde_json_path::JsonPath, JsonAssert)>,
    auth: Option<Value>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    base: std::path::PathBuf,
    config: VerifyInferenceConfig,
}

impl VerifyStep {
    /// What is wrong with one answer (`None`: it passes).
    fn judge(&self, track: Track, call: &crate::inference::Call) -> Option<String> {
        if let Some(e) = &call.error {
            return Some(e.clone());
        }
        if call.status != self.status {
            let why = call
                .body
                .as_ref()
                .and_then(|b| b.get("error").and_then(Value::as_str).map(str::to_owned));
            return Some(format!(
                "status {} (expected {}){}",
                call.status,
                self.status,
                why.map_or(String::new(), |w| format!(": {w}"))
            ));
        }
        if call.latency > self.budget {
            return Some(format!(
                "took {} (budget {})",
                humantime::format_duration(Duration::from_millis(
                    u64::try_from(call.latency.as_millis()).unwrap_or(u64::MAX)
                )),
                humantime::format_duration(self.budget)
            ));
        }
        let v = &self.endpoint.version;
        match (track, call.version.as_deref()) {
            (Track::Canary, Some(got)) if got != v => {
                return Some(format!("answered by version {got}, not the canary {v}"));
            }
            (Track::Stable, Some(got)) if got == v => {
                return Some(format!("answered by the canary {v}, not the stable version"));
            }
            _ => {}
        }
        let body = call.body.clone().unwrap_or(Value::Null);
        for (path, a) in &self.asserts {
            let found: Vec<&Value> = path.query(&body).all();
            let Some(first) = found.first() else {
                return Some(format!("{} is missing from the answer", a.path));
            };
            if a.exists == Some(true) && a.equals.is_none() {
                continue;
            }
            if let Some(want) = &a.equals {
                let ok = match (first.as_f64(), want.as_f64()) {
                    (Some(g), Some(w)) => (g - w).abs() <= a.tolerance.unwrap_or(0.0),
                    _ => *first == want,
                };
                if !ok {
                    return Some(format!(
                        "{} is {first}, expected {want}{}",
                        a.path,
                        a.tolerance.map_or(String::new(), |t| format!(" ± {t}"))
                    ));
                }
            }
        }
        None
    }
}

impl Step for VerifyStep {
    fn run<'a>(&'a self, _cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            let auth = match &self.auth {
                Some(r) => Some(
                    crate::cluster::resolve_secret(self.cluster.as_deref(), r, &self.base)
                        .await?
                        .expose()
                        .to_owned(),
                ),
                None => None,
            };
            let track = match self.config.target {
                Target::Canary => Track::Canary,
                Target::Stable => Track::Stable,
            };
            let (url, body) = self
                .endpoint
                .request(
                    self.config.protocol,
                    self.config.path.as_deref(),
                    self.config.request.as_ref(),
                )
                .map_err(|e| StepError::failed(e.to_string()))?;
            let n = self.config.requests.max(1);
            let mut passed = 0u32;
            let mut failures: Vec<String> = Vec::new();
            let mut latencies = Vec::new();
            let mut versions = std::collections::BTreeSet::new();
            for _ in 0..n {
                let call = self
                    .endpoint
                    .call(
                        track,
                        &url,
                        &body,
                        auth.as_deref(),
                        self.budget.saturating_add(Duration::from_secs(10)),
                    )
                    .await;
                latencies.push(call.latency);
                if let Some(v) = &call.version {
                    versions.insert(v.clone());
                }
                match self.judge(track, &call) {
                    None => passed += 1,
                    Some(why) => failures.push(why),
                }
            }
            let ratio = f64::from(passed) / f64::from(n);
            let need = self.config.success_ratio.unwrap_or(1.0);
            let p99 = quantile(&latencies, 0.99).unwrap_or(0.0);
            if ratio + 1e-9 < need {
                let mut distinct: Vec<String> = Vec::new();
                for f in &failures {
                    if !distinct.contains(f) && distinct.len() < 3 {
                        distinct.push(f.clone());
                    }
                }
                return Err(StepError::rejected(format!(
                    "{passed} of {n} requests to the {} passed (needed {:.0}%): {}",
                    if track == Track::Canary {
                        "canary"
                    } else {
                        "stable version"
                    },
                    need * 100.0,
                    distinct.join("; ")
                )));
            }
            let mut outputs = Map::new();
            outputs.insert(
                "answered-by".into(),
                json!(versions.into_iter().collect::<Vec<_>>()),
            );
            outputs.insert("latency-p99".into(), json!((p99 * 1000.0).round() / 1000.0));
            outputs.insert("passed".into(), json!(format!("{passed}/{n}")));
            Ok(Progress::Done { outputs })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_checks_status_version_and_json() {
        let mut cx = BuildContext::detached(std::path::Path::new("."));
        cx.model = Some(("file".into(), "fraud".into(), "8".into()));
        cx.serving = Some(json!({"platform": "deployment", "endpoint": "http://127.0.0.1:1"}));
        let with = json!({"protocol": "kserve-v1", "expect": {"json": [{"path": "$.predictions[0]", "equals": 0.9, "tolerance": 0.05}]}});
        let c: VerifyInferenceConfig = serde_json::from_value(with.clone()).unwrap();
        assert_eq!(c.expect.json.len(), 1);
        let endpoint = Endpoint::of(&cx).unwrap();
        let step = VerifyStep {
            endpoint,
            budget: Duration::from_secs(1),
            status: 200,
            asserts: c
                .expect
                .json
                .iter()
                .map(|j| (serde_json_path::JsonPath::parse(&j.path).unwrap(), j.clone()))
                .collect(),
            auth: None,
            cluster: None,
            base: ".".into(),
            config: c,
        };
        let call = |status: u16, version: Option<&str>, body: Value| crate::inference::Call {
            status,
            latency: Duration::from_millis(5),
            body: Some(body),
            version: version.map(str::to_owned),
            error: None,
        };
        assert_eq!(
            step.judge(
                Track::Canary,
                &call(200, Some("8"), json!({"predictions": [0.92]}))
            ),
            None
        );
        assert_eq!(
            step.judge(
                Track::Canary,
                &call(200, Some("8"), json!({"predictions": [0.5]}))
            )
            .unwrap(),
            "$.predictions[0] is 0.5, expected 0.9 ± 0.05"
        );
        assert_eq!(
            step.judge(
                Track::Canary,
                &call(200, Some("7"), json!({"predictions": [0.9]}))
            )
            .unwrap(),
            "answered by version 7, not the canary 8"
        );
        assert_eq!(
            step.judge(
                Track::Canary,
                &call(503, None, json!({"error": "no healthy upstream"}))
            )
            .unwrap(),
            "status 503 (expected 200): no healthy upstream"
        );
    }
}
