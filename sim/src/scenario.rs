//! The scenario file: how the simulated world behaves.
//!
//! ```yaml
//! kind: SimScenario            # optional
//! time-scale: 60               # 60× faster: a 10-minute hold takes 10 s
//! startup: 30s                 # pod startup delay (sim time; scaled)
//! seed: 7                      # the random source (routing, errors, latency)
//! traffic: {rate: 20}          # background requests per second and model
//! models:
//!   fraud-detector:
//!     versions:
//!       "7": {error-rate: 0.1%, latency: {p50: 20ms, p99: 80ms}}
//!       "8":
//!         latency: {p50: 25ms, p99: 90ms}
//!         phases:
//!           - {after: 2m, error-rate: 12%}   # 2 min (sim time) after it first served
//!           - {at-weight: 50, latency: {p50: 300ms, p99: 900ms}}
//! pods:
//!   - {image: "fraud:8", crash-loop: true}
//!   - {version: "9", slow-start: 5m}
//! api:
//!   - {verb: patch, resource: virtualservices, error-rate: 20%, code: 500}
//!   - {error-rate: 5%, code: 429, latency: 50ms}
//! objects: []                  # objects created at start (namespaces first)
//! ```
//!
//! Errors name the line and column (`serde-saphyr` reports them, and every
//! range check below runs during deserialization so it is located too).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A whole scenario.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Scenario {
    /// `SimScenario` (optional; anything else is refused).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "scenario_kind"
    )]
    pub kind: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A scenario this one builds on (path relative to this file): its
    /// fields are taken, then this file's on top (mappings merged, `pods`,
    /// `api` and `objects` appended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// How much faster than real time the sim runs (startup delays, phase
    /// times and, in `run --sim`, holds are divided by it).
    #[serde(default)]
    pub time_scale: TimeScale,
    /// Pod startup delay, sim time (default 2 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<Dur>,
    /// Seed of the random source (routing, errors, latency); fixed default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The background traffic generator.
    #[serde(default)]
    pub traffic: Traffic,
    /// Model behaviour per model name and version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelSpec>,
    /// Pod faults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<crate::faults::PodFault>,
    /// API faults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api: Vec<ApiFault>,
    /// Objects created when the sim starts (Namespaces first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<Value>,
    /// Git repositories the sim creates at start (bare, branch `main`), each
    /// seeded with one commit of a directory (relative to the scenario
    /// file); Argo CD Applications and Flux GitRepositories address them
    /// as `sim://NAME`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub repositories: BTreeMap<String, String>,
    /// Webhook receivers on the model servers (`POST /hooks/NAME`, listed
    /// by `GET /hooks`), each with a Secret `NAMESPACE/SECRET` the sim
    /// creates holding its URL under `url` — what a `notify` step's
    /// `webhook: {secretRef: SECRET}` reads. `NAME: NAMESPACE/SECRET`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub webhooks: BTreeMap<String, String>,
    /// Not read by the sim: the model registry `rollwright run --sim` seeds
    /// (the file registry format, `{models: [...]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<Value>,
}

/// The largest scenario file.
const MAX_BYTES: usize = 1024 * 1024;
/// The most objects a scenario creates.
const MAX_OBJECTS: usize = 1_000;
/// The most replicas of one workload.
pub const MAX_REPLICAS: u64 = 1_000;

/// Reads a regular file of at most [`MAX_BYTES`] (a FIFO or a device is
/// refused without blocking; the sim stands alone, so this is its own).
fn read_bounded(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(0o4000) // O_NONBLOCK: opening a FIFO does not wait for a writer
        .open(path)?;
    let meta = file.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else {
            "not a regular file"
        };
        return Err(std::io::Error::other(format!("is {what}")));
    }
    let mut text = String::new();
    file.take(MAX_BYTES as u64 + 1).read_to_string(&mut text)?;
    if text.len() > MAX_BYTES {
        return Err(std::io::Error::other(format!(
            "is larger than {} KiB",
            MAX_BYTES / 1024
        )));
    }
    Ok(text)
}

/// Why a scenario cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed or a field is wrong (the message names line and column).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What and where.
        message: String,
    },
}

impl Scenario {
    /// Parses a scenario from YAML (or JSON).
    ///
    /// # Errors
    /// Malformed YAML, unknown fields, values out of range — located.
    pub fn from_yaml(text: &str, path: &str) -> Result<Scenario, ScenarioError> {
        let invalid = |message: String| ScenarioError::Invalid {
            path: path.to_owned(),
            message,
        };
        if text.len() > MAX_BYTES {
            return Err(invalid(format!("larger than {} KiB", MAX_BYTES / 1024)));
        }
        let s = serde_saphyr::from_str::<Scenario>(text).map_err(|e| invalid(e.to_string()))?;
        s.bounded().map_err(invalid)?;
        Ok(s)
    }

    /// A scenario describes a small world: its sizes are bounded so that a
    /// typo (or a hostile file) cannot make the sim grow without end.
    fn bounded(&self) -> Result<(), String> {
        let too_many =
            |what: &str, n: usize, max: usize| (n > max).then(|| format!("{n} {what}, at most {max}"));
        let versions: usize = self.models.values().map(|m| m.versions.len()).sum();
        let problem = too_many("objects", self.objects.len(), MAX_OBJECTS)
            .or_else(|| too_many("models", self.models.len(), 100))
            .or_else(|| too_many("model versions", versions, 1_000))
            .or_else(|| too_many("pod faults", self.pods.len(), 1_000))
            .or_else(|| too_many("API faults", self.api.len(), 1_000))
            .or_else(|| too_many("repositories", self.repositories.len(), 20))
            .or_else(|| too_many("webhooks", self.webhooks.len(), 20));
        if let Some(p) = problem {
            return Err(p);
        }
        for (name, at) in &self.webhooks {
            let ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= 253
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            };
            match at.split_once('/') {
                Some((ns, secret)) if ok(ns) && ok(secret) && ok(name) => {}
                _ => {
                    return Err(format!(
                        "webhooks.{name}: `{at}` is not NAMESPACE/SECRET (lower-case names; the hook's name too)"
                    ));
                }
            }
        }
        for (i, o) in self.objects.iter().enumerate() {
            for ptr in [
                "/spec/replicas",
                "/spec/predictor/minReplicas",
                "/spec/predictor/maxReplicas",
            ] {
                if let Some(n) = o.pointer(ptr).and_then(Value::as_u64)
                    && n > MAX_REPLICAS
                {
                    return Err(format!(
                        "objects[{i}]{}: {n} replicas, the sim runs at most {MAX_REPLICAS} per workload",
                        ptr.replace('/', ".")
                    ));
                }
            }
        }
        if !(self.traffic.rate.is_finite() && self.traffic.rate <= 10_000.0) {
            return Err(format!(
                "traffic.rate {} is more than 10000 requests/s",
                self.traffic.rate
            ));
        }
        Ok(())
    }

    /// Reads and parses a scenario file.
    ///
    /// # Errors
    /// As [`Scenario::from_yaml`], or the file cannot be read.
    pub fn load(path: &std::path::Path) -> Result<Scenario, ScenarioError> {
        Scenario::load_value(path, 0).and_then(|(v, shown)| {
            let s: Scenario = serde_json::from_value(v).map_err(|e| ScenarioError::Invalid {
                path: shown.clone(),
                message: e.to_string(),
            })?;
            s.bounded()
                .map_err(|message| ScenarioError::Invalid { path: shown, message })?;
            Ok(s)
        })
    }

    /// A file with its `extends` chain merged in, as a value (each file is
    /// validated alone first, so errors keep their line and column).
    fn load_value(path: &std::path::Path, depth: u32) -> Result<(Value, String), ScenarioError> {
        let shown = path.display().to_string();
        let text = read_bounded(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        let own = Scenario::from_yaml(&text, &shown)?;
        // What the file itself says (not its defaults), to lay over the base.
        let mut value: Value = serde_saphyr::from_str(&text).map_err(|e| ScenarioError::Invalid {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        // Repository directories are relative to the file that names them.
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        if let Some(repos) = value.get_mut("repositories").and_then(Value::as_object_mut) {
            for v in repos.values_mut() {
                if let Some(d) = v.as_str()
                    && std::path::Path::new(d).is_relative()
                {
                    *v = Value::from(dir.join(d).to_string_lossy().into_owned());
                }
            }
        }
        let Some(base) = own.extends else {
            return Ok((value, shown));
        };
        if depth >= 8 {
            return Err(ScenarioError::Invalid {
                path: shown,
                message: "`extends` goes more than 8 files deep (a cycle?)".into(),
            });
        }
        let base_path = path.parent().unwrap_or(std::path::Path::new(".")).join(base);
        let (mut merged, _) = Scenario::load_value(&base_path, depth + 1)?;
        if let Some(m) = value.as_object_mut() {
            m.remove("extends");
        }
        overlay(&mut merged, value);
        Ok((merged, shown))
    }

    /// Adds the Namespace `name` to the objects created at start, unless
    /// they already create it.
    pub fn ensure_namespace(&mut self, name: &str) {
        if !self
            .objects
            .iter()
            .any(|o| o["kind"] == "Namespace" && o["metadata"]["name"] == name)
        {
            self.objects.push(
                serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
            );
        }
    }

    /// The pod startup delay in real time.
    #[must_use]
    pub fn startup_real(&self) -> Duration {
        self.time_scale
            .to_real(self.startup.map_or(Duration::from_secs(2), |d| d.0))
    }
}

/// Lays `top` over `base`: mappings merged, `pods`/`api`/`objects` appended,
/// anything else replaced.
fn overlay(base: &mut Value, top: Value) {
    match (base, top) {
        (Value::Object(b), Value::Object(t)) => {
            for (k, v) in t {
                match (b.get_mut(&k), v) {
                    (Some(Value::Array(old)), Value::Array(new))
                        if matches!(k.as_str(), "pods" | "api" | "objects") =>
                    {
                        old.extend(new);
                    }
                    (Some(slot @ Value::Object(_)), v @ Value::Object(_)) => overlay(slot, v),
                    (_, v) => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, t) => *b = t,
    }
}

fn scenario_kind<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let kind = String::deserialize(d)?;
    if kind == "SimScenario" {
        Ok(Some(kind))
    } else {
        Err(serde::de::Error::custom(format!(
            "kind must be SimScenario, not {kind:?}"
        )))
    }
}

/// The time scale: a positive factor (`60`, or `60x`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeScale(pub f64);

impl Default for TimeScale {
    fn default() -> Self {
        TimeScale(1.0)
    }
}

impl TimeScale {
    /// Real time for a sim-time duration.
    #[must_use]
    pub fn to_real(self, sim: Duration) -> Duration {
        sim.div_f64(self.0)
    }

    /// Sim time for a real-time duration.
    #[must_use]
    pub fn to_sim(self, real: Duration) -> Duration {
        real.mul_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for TimeScale {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = NumOrText::deserialize(d)?;
        let f = match v {
            NumOrText::Num(f) => f,
            NumOrText::Text(s) => s
                .trim()
                .trim_end_matches(['x', '×'])
                .trim()
                .parse()
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "time-scale must be a number like 60 or \"60x\", not {s:?}"
                    ))
                })?,
        };
        if !(f.is_finite() && (0.001..=100_000.0).contains(&f)) {
            return Err(serde::de::Error::custom(format!(
                "time-scale must be between 0.001 and 100000, not {f}"
            )));
        }
        Ok(TimeScale(f))
    }
}

impl Serialize for TimeScale {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(f64),
    Text(String),
}

/// A duration written `250ms`, `2m`, `1h30m` (or a number of seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrText::deserialize(d)? {
            NumOrText::Num(f) if (0.0..1e9).contains(&f) => Ok(Dur(Duration::from_secs_f64(f))),
            NumOrText::Num(f) => Err(serde::de::Error::custom(format!(
                "a duration must be a non-negative number of seconds, not {f}"
            ))),
            NumOrText::Text(s) => humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
                serde::de::Error::custom(format!("{s:?} is not a duration like 250ms, 30s or 2m: {e}"))
            }),
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A fraction in [0, 1], written `0.12` or `12%`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rate(pub f64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f =
            match NumOrText::deserialize(d)? {
                NumOrText::Num(f) => f,
                NumOrText::Text(s) => match s.trim().strip_suffix('%') {
                    Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0).map_err(|_| {
                        serde::de::Error::custom(format!("{s:?} is not a rate like 0.12 or 12%"))
                    })?,
                    None => s.trim().parse().map_err(|_| {
                        serde::de::Error::custom(format!("{s:?} is not a rate like 0.12 or 12%"))
                    })?,
                },
            };
        if !(0.0..=1.0).contains(&f) {
            return Err(serde::de::Error::custom(format!(
                "a rate must be between 0 and 1 (or 0% and 100%), not {f}"
            )));
        }
        Ok(Rate(f))
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

/// The background traffic generator.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Traffic {
    /// Requests per (real) second and model; 0 turns it off. Default 20.
    #[serde(default = "default_rate")]
    pub rate: f64,
}

fn default_rate() -> f64 {
    20.0
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic { rate: default_rate() }
    }
}

/// One model's versions.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModelSpec {
    /// Behaviour per version (the version a backend serves comes from its
    /// pods' `version` label).
    #[serde(default)]
    pub versions: BTreeMap<String, VersionSpec>,
}

/// How one model version behaves.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VersionSpec {
    /// Fraction of requests answered 500.
    #[serde(default)]
    pub error_rate: Rate,
    /// Latency distribution (log-normal through p50 and p99).
    #[serde(default)]
    pub latency: Latency,
    /// The prediction returned per instance (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Changes over time or with traffic, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
}

/// A change in a version's behaviour.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", try_from = "RawPhase")]
pub struct Phase {
    /// From this long (sim time) after the version first served a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Dur>,
    /// From the moment the version's traffic share reached this percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_weight: Option<u8>,
    /// New error rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<Rate>,
    /// New latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPhase {
    #[serde(default)]
    after: Option<Dur>,
    #[serde(default)]
    at_weight: Option<u8>,
    #[serde(default)]
    error_rate: Option<Rate>,
    #[serde(default)]
    latency: Option<Latency>,
}

impl TryFrom<RawPhase> for Phase {
    type Error = String;
    fn try_from(r: RawPhase) -> Result<Self, String> {
        if r.after.is_none() && r.at_weight.is_none() {
            return Err("a phase needs `after: DURATION` or `at-weight: PERCENT`".into());
        }
        if r.at_weight.is_some_and(|w| w > 100) {
            return Err("at-weight is a percentage (0-100)".into());
        }
        if r.error_rate.is_none() && r.latency.is_none() {
            return Err("a phase changes `error-rate` or `latency`".into());
        }
        Ok(Phase {
            after: r.after,
            at_weight: r.at_weight,
            error_rate: r.error_rate,
            latency: r.latency,
        })
    }
}

/// A latency distribution: log-normal through the given median and 99th percentile.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, try_from = "RawLatency")]
pub struct Latency {
    /// Median.
    pub p50: Dur,
    /// 99th percentile (≥ p50).
    pub p99: Dur,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            p50: Dur(Duration::from_millis(10)),
            p99: Dur(Duration::from_millis(30)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatency {
    p50: Dur,
    #[serde(default)]
    p99: Option<Dur>,
}

impl TryFrom<RawLatency> for Latency {
    type Error = String;
    fn try_from(r: RawLatency) -> Result<Self, String> {
        let p99 = r.p99.unwrap_or(r.p50);
        if p99 < r.p50 {
            return Err(format!(
                "latency p99 ({}) is below p50 ({})",
                humantime::format_duration(p99.0),
                humantime::format_duration(r.p50.0)
            ));
        }
        Ok(Latency { p50: r.p50, p99 })
    }
}

/// An API fault: requests matching `verb` and `resource` fail with `code`
/// at `error-rate`, and all of them wait `latency` first.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", try_from = "RawApiFault")]
pub struct ApiFault {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` (any when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verb: Option<String>,
    /// Plural resource name, e.g. `virtualservices` (any when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Fraction of matching requests that fail.
    #[serde(default)]
    pub error_rate: Rate,
    /// 500, 503, 429 or 409.
    pub code: u16,
    /// Added to every matching request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawApiFault {
    #[serde(default)]
    verb: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    error_rate: Rate,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    latency: Option<Dur>,
}

/// The verbs an API fault can name.
pub const VERBS: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete"];

impl TryFrom<RawApiFault> for ApiFault {
    type Error = String;
    fn try_from(r: RawApiFault) -> Result<Self, String> {
        if let Some(v) = &r.verb
            && !VERBS.contains(&v.as_str())
        {
            return Err(format!("verb {v:?} is not one of {}", VERBS.join(", ")));
        }
        let code = r.code.unwrap_or(500);
        if ![500, 503, 429, 409].contains(&code) {
            return Err(format!("code {code} is not one of 500, 503, 429, 409"));
        }
        if r.error_rate.0 == 0.0 && r.latency.is_none() {
            return Err("an API fault needs `error-rate` or `latency`".into());
        }
        Ok(ApiFault {
            verb: r.verb,
            resource: r.resource,
            error_rate: r.error_rate,
            code,
            latency: r.latency,
        })
    }
}

impl ApiFault {
    /// Whether the fault applies to this request.
    #[must_use]
    pub fn matches(&self, verb: &str, resource: &str) -> bool {
        self.verb.as_deref().is_none_or(|v| v == verb)
            && self.resource.as_deref().is_none_or(|r| r == resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("scenario.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.strip_prefix("//! ").unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let s = Scenario::from_yaml(&doc, "doc").unwrap();
        assert_eq!(s.time_scale.0, 60.0);
        assert_eq!(s.startup_real(), Duration::from_millis(500));
        let v8 = &s.models["fraud-detector"].versions["8"];
        assert_eq!(v8.phases[0].error_rate, Some(Rate(0.12)));
        assert_eq!(v8.phases[1].at_weight, Some(50));
        assert_eq!(s.models["fraud-detector"].versions["7"].error_rate, Rate(0.001));
        assert_eq!(s.pods.len(), 2);
        assert_eq!(s.api[1].code, 429);
        assert!(s.api[0].matches("patch", "virtualservices"));
        assert!(!s.api[0].matches("get", "virtualservices"));
    }

    #[test]
    fn errors_are_located() {
        for (text, want) in [
            ("time-scale: 0\n", "between 0.001"),
            (
                "models:\n  m:\n    versions:\n      \"8\": {error-rate: 120%}\n",
                "between 0 and 1",
            ),
            ("api:\n  - {code: 404, error-rate: 1%}\n", "code 404"),
            ("colour: red\n", "colour"),
            ("kind: Rollout\n", "SimScenario"),
            (
                "models:\n  m:\n    versions:\n      \"8\": {latency: {p50: 2s, p99: 1s}}\n",
                "below p50",
            ),
            ("pods:\n  - {image: x}\n", "crash-loop"),
        ] {
            let e = Scenario::from_yaml(text, "s.yaml").unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.starts_with("s.yaml: "), "{e}");
            assert!(e.contains("line") || e.contains(':'), "{e}");
        }
    }
}
