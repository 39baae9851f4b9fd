//! `hold`: wait while judging the canary from metrics.

use std::time::Duration;

use rollwright_engine::Code;
use rollwright_engine::duration::Display;
use rollwright_engine::registry::{Finding, Role, StepKind};
use serde::Deserialize;
use serde_json::Value;

use crate::common::{SecretRef, config, dur};

/// `with` of a hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldConfig {
    /// How long.
    pub duration: String,
    /// What to judge.
    #[serde(default)]
    pub analysis: Option<Analysis>,
}

/// Analysis during a hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Analysis {
    /// Evaluation period.
    #[serde(default = "thirty_seconds")]
    pub interval: String,
    /// Breaches tolerated.
    #[serde(default = "one")]
    pub failure_limit: u32,
    /// Consecutive or total.
    #[serde(default)]
    pub count: Option<String>,
    /// Missing data policy.
    #[serde(default)]
    pub on_no_data: Option<String>,
    /// Samples before judging.
    #[serde(default = "one")]
    pub min_samples: u32,
    /// The metrics.
    pub metrics: Vec<Metric>,
}

/// One judged metric.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Metric {
    /// Name.
    pub name: String,
    /// Provider.
    pub provider: Provider,
    /// Query.
    #[serde(default)]
    pub query: Option<String>,
    /// Upper bound.
    #[serde(default)]
    pub max: Option<f64>,
    /// Lower bound.
    #[serde(default)]
    pub min: Option<f64>,
    /// Relative bound.
    #[serde(default)]
    pub max_increase_over_stable: Option<f64>,
    /// Prometheus URL.
    #[serde(default)]
    pub address: Option<String>,
    /// Auth token.
    #[serde(default)]
    pub token: Option<SecretRef>,
}

/// Where a metric's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// A PromQL query against the Prometheus HTTP API.
    Prometheus,
    /// Synthetic requests sent by rollwright itself.
    Probe,
    /// Pod and workload health read from the Kubernetes API.
    Kubernetes,
}

impl Provider {
    /// The name used in specs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Prometheus => "prometheus",
            Provider::Probe => "probe",
            Provider::Kubernetes => "kubernetes",
        }
    }
}

fn thirty_seconds() -> String {
    "30s".into()
}
fn one() -> u32 {
    1
}

/// Quantities the probe provider measures.
pub const PROBE_QUANTITIES: &[&str] = &["error-rate", "latency-p50", "latency-p90", "latency-p99"];
/// Quantities the kubernetes provider measures.
pub const KUBERNETES_QUANTITIES: &[&str] = &["restarts", "ready"];

/// The hold kind.
pub struct Hold;

impl StepKind for Hold {
    fn name(&self) -> &'static str {
        "hold"
    }
    fn summary(&self) -> &'static str {
        "waits a duration while analysing metrics; a breach fails the step"
    }
    fn schema(&self) -> &'static str {
        include_str!("../../schemas/steps/hold.schema.json")
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn min_duration(&self, with: &Value) -> Option<Duration> {
        with.get("duration").and_then(Value::as_str).map(dur)
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
            let provider = m.provider.as_str();
            let known: &[&str] = match m.provider {
                Provider::Probe => PROBE_QUANTITIES,
                Provider::Kubernetes => KUBERNETES_QUANTITIES,
                Provider::Prometheus => &[],
            };
            match (&m.query, provider) {
                (None, "prometheus") => out.push(Finding::new(
                    at.clone(),
                    Code::InvalidStepConfig,
                    format!("prometheus metric `{}` needs a `query`", m.name),
                )),
                (None, _) => out.push(
                    Finding::new(
                        at.clone(),
                        Code::InvalidStepConfig,
                        format!("{provider} metric `{}` needs a `query`", m.name),
                    )
                    .with_help(format!("one of: {}", known.join(", "))),
                ),
                (Some(q), "probe" | "kubernetes") if !known.contains(&q.as_str()) => out.push(
                    Finding::new(
                        format!("{at}/query"),
                        Code::InvalidStepConfig,
                        format!("{provider} cannot measure `{q}`"),
                    )
                    .with_help(format!("one of: {}", known.join(", "))),
                ),
                _ => {}
            }
            if m.address.is_some() && m.provider != Provider::Prometheus {
                out.push(Finding::new(
                    format!("{at}/address"),
                    Code::InvalidStepConfig,
                    "`address` only applies to the prometheus provider",
                ));
            }
            if let Some(t) = &m.token {
                t.check(&format!("{at}/token"), &mut out);
            }
        }
        out
    }
}
