//! `hold`: wait while judging the canary from metrics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rollwright_engine::Code;
use rollwright_engine::duration::Display;
use rollwright_engine::exec::{BoxFuture, Measurement, Observation, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::{Access, AccessContext, BuildContext, BuildError, Finding, Role, StepKind};
use rollwright_engine::words::number;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::common::{SecretRef, config, dur};

mod kubernetes;
mod probe;
mod prometheus;

/// Waits `duration` while evaluating `analysis` every `interval`; a breach
/// fails the step (and the run rolls back).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "hold")]
pub struct HoldConfig {
    /// How long to hold.
    #[schemars(schema_with = "crate::schema::duration")]
    pub duration: String,
    /// Why a production hold without `analysis` is enough (a production
    /// hold that judges nothing is an error otherwise).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub justification: Option<String>,
    /// What to judge during the hold.
    #[serde(default)]
    pub analysis: Option<Analysis>,
}

/// What to judge during the hold.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Analysis {
    /// Time between evaluations (default 30s).
    #[serde(default = "thirty_seconds")]
    #[schemars(schema_with = "crate::schema::duration")]
    pub interval: String,
    /// Breaches tolerated before failing (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub failure_limit: u32,
    /// Whether `failure-limit` counts consecutive breaches or all of them
    /// (default consecutive).
    #[serde(default)]
    pub count: Count,
    /// What a missing value means (default fail).
    #[serde(default)]
    pub on_no_data: OnNoData,
    /// Samples needed before a value is judged (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub min_samples: u32,
    /// The synthetic requests of `probe` metrics, sent to the canary and to
    /// stable at every evaluation (to `serving.endpoint`).
    #[serde(default)]
    pub probe: Option<ProbeConfig>,
    /// The metrics judged at every evaluation.
    #[schemars(length(min = 1))]
    pub metrics: Vec<Metric>,
}

/// How breaches add up to `failure-limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Count {
    #[default]
    Consecutive,
    Total,
}

/// What a missing value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnNoData {
    /// A breach.
    #[default]
    Fail,
    /// Not judged, and the hold cannot pass on it.
    Hold,
    /// Not judged.
    Ignore,
}

/// The requests probe metrics send.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Request protocol (default kserve-v1).
    #[serde(default)]
    pub protocol: Option<crate::verify_inference::Protocol>,
    /// Request path (http protocol).
    #[serde(default)]
    #[schemars(regex(pattern = "^/"))]
    pub path: Option<String>,
    /// Request body (JSON).
    #[serde(default)]
    pub request: Option<Value>,
    /// Requests per version and evaluation (default 20).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub requests: Option<u32>,
    /// Per-request timeout (default 5s); a request without an answer counts
    /// as an error.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::duration")]
    pub timeout: Option<String>,
}

/// One judged metric.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Metric {
    /// Metric name shown in reports.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Where the value comes from.
    #[schemars(schema_with = "provider_names")]
    pub provider: String,
    /// PromQL (prometheus) or the measured quantity (probe: `error-rate`,
    /// `latency-p50|p90|p99`; kubernetes: `restarts`, `ready`).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub query: Option<String>,
    /// Highest accepted value.
    #[serde(default)]
    pub max: Option<f64>,
    /// Lowest accepted value.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest accepted excess over the stable version's value, in the
    /// metric's unit.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_increase_over_stable: Option<f64>,
    /// Above this value the stable version is itself unhealthy: the
    /// comparison with it is inconclusive and the hold does not pass
    /// (default: `max`; for a probe's `error-rate` without `max`, 0.5).
    #[serde(default)]
    pub stable_max: Option<f64>,
    /// Prometheus base URL (prometheus only).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub address: Option<String>,
    /// Bearer token for the provider.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::secret_ref")]
    pub token: Option<SecretRef>,
}

/// `provider`: one of the registered metric providers.
fn provider_names(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = METRIC_PROVIDERS.iter().map(|p| p.name()).collect();
    schemars::json_schema!({"type": "string", "enum": names})
}

/// Every metric provider this build knows. The one place a provider is
/// registered.
static METRIC_PROVIDERS: &[&dyn MetricProvider] =
    &[&prometheus::Prometheus, &probe::Probes, &kubernetes::Kubernetes];

/// Where a metric's values come from: what it checks in a spec and what
/// measures at run time. One implementation per file in `hold/`.
pub trait MetricProvider: Send + Sync {
    /// The name a metric's `provider` uses.
    fn name(&self) -> &'static str;
    /// The quantities `query` may name, when it names one of a fixed set
    /// (`None`: a query language, e.g. PromQL).
    fn quantities(&self) -> Option<&'static [&'static str]> {
        None
    }
    /// Whether a metric's `address` applies.
    fn takes_address(&self) -> bool {
        false
    }
    /// Checks of one metric beyond the schema (`at` is its pointer).
    fn check(&self, m: &Metric, at: &str, out: &mut Vec<Finding>) {
        let _ = (m, at, out);
    }
    /// Checks against the rendered spec (e.g. an endpoint to send to).
    fn check_rendered(&self, cx: &BuildContext) -> Option<Finding> {
        let _ = cx;
        None
    }
    /// What reading the cluster needs (for `rbac`).
    fn access(&self) -> Vec<Access> {
        Vec::new()
    }
    /// Above what stable value a comparison with stable is meaningless when
    /// neither `stable-max` nor `max` says.
    fn baseline_ceiling(&self, query: &str) -> Option<f64> {
        let _ = query;
        None
    }
    /// What measures this provider's metrics during one run of a hold.
    ///
    /// # Errors
    /// What it needs is missing from the spec or the run.
    fn source(&self, cx: &BuildContext, a: &Analysis) -> Result<Arc<dyn Source>, BuildError>;
}

/// Measures metrics during a run of a hold.
pub trait Source: Send + Sync {
    /// The sample of `m` in evaluation `round` (metrics of one provider in
    /// the same round may share one measurement).
    fn sample<'a>(&'a self, m: &'a Metric, round: u32) -> BoxFuture<'a, Sample>;
}

/// The provider named `name`.
#[must_use]
pub fn metric_provider(name: &str) -> Option<&'static dyn MetricProvider> {
    METRIC_PROVIDERS.iter().copied().find(|p| p.name() == name)
}

/// The providers the analysis of a hold's `with` uses.
fn used(with: &Value) -> Vec<&'static dyn MetricProvider> {
    METRIC_PROVIDERS
        .iter()
        .copied()
        .filter(|p| {
            with["analysis"]["metrics"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["provider"] == p.name()))
        })
        .collect()
}

/// The version under test (the canary's).
fn version(cx: &BuildContext) -> String {
    cx.model.as_ref().map_or_else(String::new, |m| m.2.clone())
}

fn thirty_seconds() -> String {
    "30s".into()
}
fn one() -> u32 {
    1
}

/// The hold kind.
pub struct Hold;

impl StepKind for Hold {
    fn describe(&self, o: &Map<String, Value>) -> String {
        match o.get("evaluations").and_then(Value::as_u64) {
            Some(n) => format!("{n} evaluations, every metric within its threshold"),
            None => "held for its duration".into(),
        }
    }
    fn name(&self) -> &'static str {
        "hold"
    }
    fn access(&self, with: &Value, _cx: &AccessContext) -> Vec<Access> {
        used(with).iter().flat_map(|p| p.access()).collect()
    }
    fn summary(&self) -> &'static str {
        "waits a duration while analysing metrics; a breach fails the step"
    }
    fn schema(&self) -> &'static str {
        include_str!("../../schemas/hold.schema.json")
    }
    fn generated_schema(&self) -> Option<Value> {
        Some(crate::schema::of::<HoldConfig>())
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["evaluations", "last"]
    }
    fn build(&self, with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        Hold::build_step(with, cx)
    }
    fn min_duration(&self, with: &Value) -> Option<Duration> {
        with.get("duration").and_then(Value::as_str).map(dur)
    }
    fn detection_bound(&self, with: &Value) -> Option<Duration> {
        let analysis = with.get("analysis").filter(|a| !a.is_null())?;
        let interval = analysis
            .get("interval")
            .and_then(Value::as_str)
            .map_or(Duration::from_secs(30), dur);
        let limit = analysis.get("failure-limit").and_then(Value::as_u64).unwrap_or(1);
        Some(interval * u32::try_from(limit).unwrap_or(u32::MAX))
    }
    fn shape(&self) -> rollwright_engine::registry::Shape {
        rollwright_engine::registry::Shape::Wait
    }
    fn detail(&self, with: &Value) -> Option<String> {
        with.get("duration").and_then(Value::as_str).map(str::to_owned)
    }
    fn check_rendered(&self, with: &Value, cx: &BuildContext) -> Vec<Finding> {
        let production = cx.target.as_ref().is_some_and(|t| t.production);
        let judged = with.get("analysis").is_some_and(|a| !a.is_null());
        let justified = with
            .get("justification")
            .and_then(Value::as_str)
            .is_some_and(|j| !j.trim().is_empty());
        if let Some(f) = used(with).iter().find_map(|p| p.check_rendered(cx)) {
            return vec![f];
        }
        if production && !judged && !justified {
            return vec![
                Finding::new(
                    "",
                    Code::UnanalysedProductionHold,
                    "a production hold without `analysis` judges nothing: the rollout goes on whatever the new version does",
                )
                .with_help("add `analysis` (metrics with thresholds), or `justification:` saying why waiting alone is enough"),
            ];
        }
        Vec::new()
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(c) = config::<HoldConfig>(with, &mut out) else {
            return out;
        };
        let d = dur(&c.duration);
        if d.is_zero() {
            out.push(Finding::new(
                "/duration",
                Code::InvalidStepConfig,
                "a hold of 0s holds nothing",
            ));
        }
        let Some(a) = &c.analysis else { return out };
        if let Some(path) = a.probe.as_ref().and_then(|p| p.path.as_deref())
            && let Err(e) = crate::inference::confined_path(path)
        {
            out.push(Finding::new(
                "/analysis/probe/path",
                Code::InvalidStepConfig,
                e.to_string(),
            ));
        }
        let interval = dur(&a.interval);
        if interval.is_zero() {
            out.push(Finding::new(
                "/analysis/interval",
                Code::InvalidStepConfig,
                "analysis interval must be longer than 0s",
            ));
        } else if interval > d {
            out.push(Finding::new(
                "/analysis/interval",
                Code::InvalidStepConfig,
                format!(
                    "analysis interval {} is longer than the hold ({}): the metrics would never be judged",
                    Display(interval),
                    Display(d)
                ),
            ));
        }
        let mut names: Vec<&str> = Vec::new();
        for (i, m) in a.metrics.iter().enumerate() {
            let at = format!("/analysis/metrics/{i}");
            if names.contains(&m.name.as_str()) {
                out.push(Finding::new(
                    format!("{at}/name"),
                    Code::InvalidStepConfig,
                    format!("metric `{}` is defined twice", m.name),
                ));
            }
            names.push(&m.name);
            if m.max.is_none() && m.min.is_none() && m.max_increase_over_stable.is_none() {
                out.push(
                    Finding::new(
                        at.clone(),
                        Code::InvalidStepConfig,
                        format!("metric `{}` has no threshold: it can never fail", m.name),
                    )
                    .with_help("add `max`, `min` or `max-increase-over-stable`"),
                );
            }
            // The schema has named the provider already.
            let Some(provider) = metric_provider(&m.provider) else {
                continue;
            };
            let name = provider.name();
            match (&m.query, provider.quantities()) {
                (None, None) => out.push(Finding::new(
                    at.clone(),
                    Code::InvalidStepConfig,
                    format!("{name} metric `{}` needs a `query`", m.name),
                )),
                (None, Some(known)) => out.push(
                    Finding::new(
                        at.clone(),
                        Code::InvalidStepConfig,
                        format!("{name} metric `{}` needs a `query`", m.name),
                    )
                    .with_help(format!("one of: {}", known.join(", "))),
                ),
                (Some(q), Some(known)) if !known.contains(&q.as_str()) => out.push(
                    Finding::new(
                        format!("{at}/query"),
                        Code::InvalidStepConfig,
                        format!("{name} cannot measure `{q}`"),
                    )
                    .with_help(format!("one of: {}", known.join(", "))),
                ),
                _ => {}
            }
            if m.max_increase_over_stable.is_some() && m.max.is_none() && m.stable_max.is_none() {
                out.push(
                    Finding::new(
                        format!("{at}/max-increase-over-stable"),
                        Code::RelativeOnlyMetric,
                        format!(
                            "metric `{}` is judged only against stable: while stable itself fails, a failing canary passes",
                            m.name
                        ),
                    )
                    .with_help("add `max` (an absolute ceiling; stable above it makes the comparison inconclusive) or `stable-max`"),
                );
            }
            provider.check(m, &at, &mut out);
            if m.address.is_some() && !provider.takes_address() {
                out.push(Finding::new(
                    format!("{at}/address"),
                    Code::InvalidStepConfig,
                    format!("`address` does not apply to the {name} provider"),
                ));
            }
            if let Some(t) = &m.token {
                t.check(&format!("{at}/token"), &mut out);
            }
        }
        out
    }
}

impl Hold {
    fn build_step(with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        let c: HoldConfig = serde_json::from_value(with.clone())?;
        let analysis = c.analysis;
        let mut sources = BTreeMap::new();
        if let Some(a) = &analysis {
            for p in used(with) {
                // The same checks as `check`, which lint ran already.
                let mut problems = Vec::new();
                for m in a.metrics.iter().filter(|m| m.provider == p.name()) {
                    p.check(m, "", &mut problems);
                }
                if let Some(f) = problems.first() {
                    return Err(BuildError::Config(f.message.clone()));
                }
                sources.insert(p.name(), p.source(cx, a)?);
            }
        }
        // Under a time scale (the embedded cluster at 60×), a 10-minute hold
        // takes 10 s and its analysis interval shrinks alike.
        // Only the embedded cluster runs faster than real time.
        let reach = crate::reach::Reach::of(cx);
        let analysis = analysis.map(|mut a| {
            let iv = reach.scaled(dur(&a.interval)).max(Duration::from_millis(100));
            a.interval = format!("{}ms", iv.as_millis());
            a
        });
        Ok(Arc::new(HoldStep {
            duration: reach.scaled(dur(&c.duration)),
            analysis,
            sources,
            state: Mutex::default(),
        }))
    }
}

/// A measured value of one metric: the canary's, the stable version's
/// (when measured), and how many samples back them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// The canary's value.
    pub canary: Option<f64>,
    /// The stable version's value.
    pub stable: Option<f64>,
    /// How many samples back them.
    pub samples: u64,
}

/// How one evaluation of a metric went.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Pass(String),
    Breach(String),
    NoData(String),
    /// The baseline is itself unhealthy: nothing can be concluded, and the
    /// hold never passes on it.
    Inconclusive(String),
}

#[derive(Default)]
struct HoldState {
    next_eval_ms: u64,
    evaluations: u32,
    consecutive: BTreeMap<String, u32>,
    total: BTreeMap<String, u32>,
    last: BTreeMap<String, String>,
    inconclusive: bool,
    /// Conclusive evaluations still needed in a row before the hold may
    /// end, after an inconclusive one: one lucky sample of a failing
    /// baseline must not end it.
    settle: u32,
}

/// Conclusive evaluations in a row a hold needs after an inconclusive one.
const SETTLE: u32 = 3;

struct HoldStep {
    duration: Duration,
    analysis: Option<Analysis>,
    /// What measures each provider's metrics, by provider name.
    sources: BTreeMap<&'static str, Arc<dyn Source>>,
    state: Mutex<HoldState>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Above what a stable value makes a comparison with it meaningless:
/// `stable-max`, else `max`, else — for a probe's error rate — one request
/// in two failing.
fn baseline_ceiling(m: &Metric) -> Option<f64> {
    m.stable_max.or(m.max).or_else(|| {
        let p = metric_provider(&m.provider)?;
        p.baseline_ceiling(m.query.as_deref().unwrap_or_default())
    })
}

/// A metric's thresholds as a person reads them (`<= 0.05, <= stable + 0.005`).
fn threshold_text(m: &Metric) -> String {
    let mut parts = Vec::new();
    if let Some(max) = m.max {
        parts.push(format!("<= {}", number(max)));
    }
    if let Some(min) = m.min {
        parts.push(format!(">= {}", number(min)));
    }
    if let Some(inc) = m.max_increase_over_stable {
        parts.push(format!("<= stable + {}", number(inc)));
    }
    parts.join(", ")
}

fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Pass(_) => "pass",
        Verdict::Breach(_) => "breach",
        Verdict::NoData(_) => "no-data",
        Verdict::Inconclusive(_) => "inconclusive",
    }
}

/// Judges one metric's sample against its thresholds.
fn judge(m: &Metric, s: Sample, min_samples: u32) -> Verdict {
    let Some(value) = s.canary else {
        return Verdict::NoData(format!("{}: no data for the canary", m.name));
    };
    if s.samples < u64::from(min_samples) {
        return Verdict::NoData(format!(
            "{}: {} sample(s), {min_samples} needed before judging",
            m.name, s.samples
        ));
    }
    if let Some(max) = m.max
        && value > max
    {
        return Verdict::Breach(format!(
            "{}: canary {} > max {}",
            m.name,
            number(value),
            number(max)
        ));
    }
    if let Some(min) = m.min
        && value < min
    {
        return Verdict::Breach(format!(
            "{}: canary {} < min {}",
            m.name,
            number(value),
            number(min)
        ));
    }
    if let Some(inc) = m.max_increase_over_stable {
        // A difference, never a ratio: a canary failing while stable has no
        // errors at all is a breach, not NaN.
        let Some(stable) = s.stable else {
            return Verdict::NoData(format!(
                "{}: no data for the stable version to compare with",
                m.name
            ));
        };
        if let Some(ceiling) = baseline_ceiling(m)
            && stable > ceiling
        {
            return Verdict::Inconclusive(format!(
                "{}: stable {} is above {} itself: an unhealthy baseline, no comparison",
                m.name,
                number(stable),
                number(ceiling)
            ));
        }
        if value - stable > inc + 1e-12 {
            return Verdict::Breach(format!(
                "{}: canary {} > stable {} + {} (max-increase-over-stable)",
                m.name,
                number(value),
                number(stable),
                number(inc)
            ));
        }
        return Verdict::Pass(format!(
            "{}: canary {} vs stable {}",
            m.name,
            number(value),
            number(stable)
        ));
    }
    Verdict::Pass(format!("{}: {}", m.name, number(value)))
}

impl HoldStep {
    /// One evaluation (number `round`) of every metric.
    async fn evaluate(&self, a: &Analysis, round: u32) -> Vec<(String, Verdict, Sample)> {
        let mut out = Vec::new();
        for m in &a.metrics {
            let sample = match self.sources.get(m.provider.as_str()) {
                Some(source) => source.sample(m, round).await,
                None => Sample::default(),
            };
            out.push((m.name.clone(), judge(m, sample, a.min_samples), sample));
        }
        out
    }
}

impl Step for HoldStep {
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            // When the hold started, journaled: a resumed hold continues.
            let started = match cx.recalled("started-ms").and_then(|v| v.as_u64()) {
                Some(t) => t,
                None => {
                    let t = now_ms();
                    cx.remember("started-ms", json!(t))?;
                    t
                }
            };
            let end = started + ms(self.duration);
            let Some(a) = &self.analysis else {
                let now = now_ms();
                if now >= end {
                    return Ok(Progress::Done { outputs: Map::new() });
                }
                return Ok(Progress::Wait {
                    after: Duration::from_millis(end - now),
                    reason: format!("holding {} more", Display(Duration::from_millis(end - now))),
                });
            };
            let interval = ms(dur(&a.interval)).max(1);
            let (due, round) = {
                let st = self
                    .state
                    .lock()
                    .map_err(|_| StepError::failed("hold state poisoned"))?;
                (st.next_eval_ms.max(started), st.evaluations)
            };
            let now = now_ms();
            if now >= due || now >= end {
                let verdicts = self.evaluate(a, round).await;
                let mut st = self
                    .state
                    .lock()
                    .map_err(|_| StepError::failed("hold state poisoned"))?;
                st.evaluations += 1;
                st.inconclusive = false;
                let on_no_data = a.on_no_data;
                let total = a.count == Count::Total;
                let mut observed = Observation {
                    elapsed_ms: Some((
                        now.saturating_sub(started).min(ms(self.duration)),
                        ms(self.duration),
                    )),
                    ..Observation::default()
                };
                let mut failed = None;
                for ((name, v, sample), m) in verdicts.iter().zip(&a.metrics) {
                    let breach = match v {
                        Verdict::Breach(_) => true,
                        Verdict::Inconclusive(_) => {
                            st.inconclusive = true;
                            false
                        }
                        Verdict::NoData(_) => match on_no_data {
                            OnNoData::Fail => true,
                            OnNoData::Hold => {
                                st.inconclusive = true;
                                false
                            }
                            OnNoData::Ignore => false,
                        },
                        Verdict::Pass(_) => false,
                    };
                    let text = match v {
                        Verdict::Pass(t)
                        | Verdict::Breach(t)
                        | Verdict::NoData(t)
                        | Verdict::Inconclusive(t) => t.clone(),
                    };
                    st.last.insert(name.clone(), text.clone());
                    let c = st.consecutive.entry(name.clone()).or_insert(0);
                    if breach {
                        *c += 1;
                    } else if matches!(v, Verdict::Pass(_))
                        || (matches!(v, Verdict::NoData(_)) && on_no_data != OnNoData::Hold)
                    {
                        *c = 0;
                    }
                    let consecutive = *c;
                    let t = st.total.entry(name.clone()).or_insert(0);
                    if breach {
                        *t += 1;
                    }
                    let count = if total { *t } else { consecutive };
                    observed.metrics.push(Measurement {
                        name: name.clone(),
                        value: sample.canary,
                        baseline: m.max_increase_over_stable.and(sample.stable),
                        threshold: threshold_text(m),
                        upper: [
                            m.max,
                            m.max_increase_over_stable.zip(sample.stable).map(|(i, s)| s + i),
                        ]
                        .into_iter()
                        .flatten()
                        .reduce(f64::min),
                        lower: m.min,
                        verdict: verdict_name(v).into(),
                        breaches: count,
                        limit: a.failure_limit,
                    });
                    if breach && count >= a.failure_limit && failed.is_none() {
                        let how = if a.failure_limit == 1 {
                            String::new()
                        } else if total {
                            format!(" ({count} breaches in total, limit {})", a.failure_limit)
                        } else {
                            format!(" ({count} consecutive breaches, limit {})", a.failure_limit)
                        };
                        failed = Some(format!("analysis failed: {text}{how}"));
                    }
                }
                cx.observe(observed);
                if let Some(why) = failed {
                    return Err(StepError::rejected(why));
                }
                if st.inconclusive {
                    st.settle = SETTLE;
                } else {
                    st.settle = st.settle.saturating_sub(1);
                }
                st.next_eval_ms = now + interval;
            }
            let st = self
                .state
                .lock()
                .map_err(|_| StepError::failed("hold state poisoned"))?;
            let now = now_ms();
            let summary = st.last.values().cloned().collect::<Vec<_>>().join("; ");
            if now >= end && !st.inconclusive && st.settle == 0 {
                let mut outputs = Map::new();
                outputs.insert("evaluations".into(), json!(st.evaluations));
                outputs.insert("last".into(), json!(st.last));
                return Ok(Progress::Done { outputs });
            }
            let next = if now >= end {
                now + interval.min(1000)
            } else {
                st.next_eval_ms.min(end)
            };
            Ok(Progress::Wait {
                after: Duration::from_millis(next.saturating_sub(now).max(1)),
                reason: if now >= end && st.inconclusive {
                    format!("inconclusive, holding until the data is in: {summary}")
                } else if now >= end {
                    format!(
                        "confirming after an inconclusive evaluation ({} more in a row): {summary}",
                        st.settle
                    )
                } else {
                    format!(
                        "holding {} more: {summary}",
                        Display(Duration::from_millis(end - now))
                    )
                },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(json: serde_json::Value) -> Metric {
        serde_json::from_value(json).unwrap()
    }

    fn sample(canary: f64, stable: f64) -> Sample {
        Sample {
            canary: Some(canary),
            stable: Some(stable),
            samples: 20,
        }
    }

    #[test]
    fn a_failing_stable_never_lets_a_failing_canary_pass() {
        // Relative only: both at 100 % errors used to pass (1.0 - 1.0 <= 0.005).
        let relative = metric(
            json!({"name": "error-rate", "provider": "probe", "query": "error-rate", "max-increase-over-stable": 0.005}),
        );
        assert!(matches!(
            judge(&relative, sample(1.0, 1.0), 1),
            Verdict::Inconclusive(_)
        ));
        assert!(matches!(judge(&relative, sample(0.0, 0.0), 1), Verdict::Pass(_)));
        // With a ceiling (the shipped strategies): the canary breaches it.
        let ceiling = metric(
            json!({"name": "error-rate", "provider": "probe", "query": "error-rate", "max-increase-over-stable": 0.005, "max": 0.05}),
        );
        assert!(matches!(judge(&ceiling, sample(1.0, 1.0), 1), Verdict::Breach(_)));
        // A healthy canary beside a stable above the ceiling: no comparison.
        assert_eq!(
            judge(&ceiling, sample(0.01, 0.2), 1),
            Verdict::Inconclusive(
                "error-rate: stable 0.200 is above 0.050 itself: an unhealthy baseline, no comparison".into()
            )
        );
        // `stable-max` decides the baseline when given.
        let explicit = metric(
            json!({"name": "error-rate", "provider": "probe", "query": "error-rate", "max-increase-over-stable": 0.005, "max": 0.05, "stable-max": 0.3}),
        );
        assert!(matches!(
            judge(&explicit, sample(0.2, 0.2), 1),
            Verdict::Breach(_)
        ));
        assert!(matches!(judge(&explicit, sample(0.01, 0.2), 1), Verdict::Pass(_)));
    }

    #[test]
    fn lint_warns_on_relative_only_and_needs_a_prometheus_address() {
        let f = Hold.check(
            &serde_json::json!({"duration": "1m", "analysis": {"interval": "10s", "metrics": [
                {"name": "e", "provider": "probe", "query": "error-rate", "max-increase-over-stable": 0.01},
                {"name": "p", "provider": "prometheus", "query": "up", "max": 1},
            ]}}),
        );
        let codes: Vec<(&str, &str)> = f.iter().map(|f| (f.code.as_str(), f.pointer.as_str())).collect();
        assert_eq!(
            codes,
            [
                ("RW072", "/analysis/metrics/0/max-increase-over-stable"),
                ("RW071", "/analysis/metrics/1")
            ]
        );
    }
}
