//! `gate-check`: the model version must be approved before anything changes.
//!
//! It is the one kind with [`Role::Gate`]. At run time it resolves the exact
//! version in the model registry and checks, all at once: the required
//! alias, enough distinct, unexpired approvals (with the required roles) and
//! every eval threshold. Any unmet condition is a *rejection* (never
//! retried) that lists them all; a pass records the evidence as outputs
//! (`gate: true`, `version`, `digest`, `approvers`, `evals`), which the
//! production guard of every mutating step checks before acting.

use crate::model_registry::ApprovalRecord;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use rollwright_engine::exec::{BoxFuture, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::BuildContext;

use crate::model_registry::{FileRegistry, MlflowRegistry, ModelRegistry, VersionRecord, parse_time};

use rollwright_engine::Code;
use rollwright_engine::policy::MinGate;
use rollwright_engine::registry::{BuildError, Finding, Role, StepKind};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::common::config;

/// Checks that the exact model version is approved, with enough approvals
/// and passing evaluations, before anything changes. A failed gate is a
/// rejection: never retried.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "gate-check")]
pub struct GateCheckConfig {
    /// Distinct approvers required (default 1).
    #[serde(default = "one")]
    pub approvals: u32,
    /// Roles at least one approver must hold each.
    #[serde(default)]
    #[schemars(inner(length(min = 1)), extend("uniqueItems" = true))]
    pub roles: Vec<String>,
    /// Registry alias (or stage) the version must carry, e.g.
    /// `production-approved`.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub alias: Option<String>,
    /// Evaluation thresholds by metric name: `{auc: {min: 0.92}}`.
    #[serde(default)]
    pub evals: BTreeMap<String, Threshold>,
    /// Re-check the gate before the final promotion and at every hold
    /// (default true).
    #[serde(default = "yes")]
    pub recheck: bool,
    /// Registry credentials (MLflow bearer token), by reference (default:
    /// MLFLOW_TRACKING_TOKEN).
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::secret_ref")]
    pub token: Option<crate::SecretRef>,
}

/// An evaluation threshold.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1))]
pub struct Threshold {
    /// Lowest accepted value.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest accepted value.
    #[serde(default)]
    pub max: Option<f64>,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// The gate-check kind.
pub struct GateCheck;

impl StepKind for GateCheck {
    fn describe(&self, o: &serde_json::Map<String, Value>) -> String {
        use rollwright_engine::words::scalar;
        let mut out = format!(
            "{} version {}",
            o.get("model").map(scalar).unwrap_or_default(),
            o.get("version").map(scalar).unwrap_or_default()
        );
        let artifact: Vec<String> = ["uri", "digest"]
            .iter()
            .filter_map(|k| o.get(*k).and_then(Value::as_str).map(str::to_owned))
            .collect();
        if !artifact.is_empty() {
            out.push_str(&format!(" ({})", artifact.join(", digest ")));
        }
        let approvals: Vec<String> = o
            .get("approvals")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|a| {
                let role = a["role"].as_str().map(|r| format!("{r}, ")).unwrap_or_default();
                format!("{} ({role}{})", scalar(&a["who"]), scalar(&a["at"]))
            })
            .collect();
        if !approvals.is_empty() {
            out.push_str(&format!("; approved by {}", approvals.join(", ")));
        }
        let evals: Vec<String> = o
            .get("evals")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let t = &o.get("eval-thresholds").unwrap_or(&Value::Null)[k];
                let mut bound = Vec::new();
                if let Some(min) = t["min"].as_f64() {
                    bound.push(format!("min {min}"));
                }
                if let Some(max) = t["max"].as_f64() {
                    bound.push(format!("max {max}"));
                }
                let bound = if bound.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", bound.join(", "))
                };
                format!("{k} {}{bound}", scalar(v))
            })
            .collect();
        if !evals.is_empty() {
            out.push_str(&format!("; evals {}", evals.join(", ")));
        }
        out
    }
    fn name(&self) -> &'static str {
        "gate-check"
    }
    fn summary(&self) -> &'static str {
        "checks the model version is approved, with enough approvals and passing evals"
    }
    fn schema(&self) -> &'static str {
        include_str!("../schemas/gate-check.schema.json")
    }
    fn generated_schema(&self) -> Option<Value> {
        Some(crate::schema::of::<GateCheckConfig>())
    }
    fn role(&self) -> Role {
        Role::Gate
    }
    fn shortfall(&self, with: &Value, min: &MinGate) -> Vec<(String, String)> {
        shortfall(with, min)
    }
    fn harden(&self, with: &Value, min: &MinGate) -> Value {
        strengthen(with, min)
    }
    fn outputs(&self) -> &'static [&'static str] {
        &[
            "gate",
            "model",
            "version",
            "uri",
            "digest",
            "approvers",
            "approvals",
            "evals",
            "eval-thresholds",
        ]
    }
    fn build(&self, with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        let config: GateCheckConfig = serde_json::from_value(with.clone())?;
        let Some((registry, name, version)) = cx.model.clone() else {
            return Err(BuildError::Config("a gate-check needs the spec's `model`".into()));
        };
        // Only the embedded cluster brings its own registry (the scenario's).
        let sim_registry = crate::reach::Reach::of(cx).sim.and_then(|s| s.registry);
        let backend: Box<dyn ModelRegistry> = match registry.as_str() {
            _ if sim_registry.is_some() => Box::new(FileRegistry::at(sim_registry.unwrap_or_default())),
            "file" => Box::new(FileRegistry::locate(&cx.spec_dir)),
            "mlflow" => Box::new(
                MlflowRegistry::from_env(with.get("token"), &cx.spec_dir)
                    .map_err(|e| BuildError::Unavailable(e.to_string()))?,
            ),
            other => return Err(BuildError::Config(format!("unknown model registry `{other}`"))),
        };
        Ok(Arc::new(GateStep {
            config,
            registry: backend,
            name,
            version,
        }))
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(c) = config::<GateCheckConfig>(with, &mut out) else {
            return out;
        };
        for (metric, t) in &c.evals {
            if let (Some(min), Some(max)) = (t.min, t.max)
                && min > max
            {
                let mut ptr = String::from("/evals");
                rollwright_engine::yaml::push_pointer_segment(&mut ptr, metric);
                out.push(Finding::new(
                    ptr,
                    Code::InvalidStepConfig,
                    format!(
                        "eval `{metric}`: `min` ({min}) is greater than `max` ({max}); no value can pass"
                    ),
                ));
            }
        }
        if (c.roles.len() as u64) > u64::from(c.approvals) {
            out.push(Finding::new(
                "/roles",
                Code::InvalidStepConfig,
                format!(
                    "{} roles are required but only {} approval(s): each role needs its own approver",
                    c.roles.len(),
                    c.approvals
                ),
            ));
        }
        out
    }
}

struct GateStep {
    config: GateCheckConfig,
    registry: Box<dyn ModelRegistry>,
    name: String,
    version: String,
}

/// Every unmet condition of `record` under `config`, at time `now`.
#[must_use]
pub fn unmet(
    config: &GateCheckConfig,
    record: &VersionRecord,
    now: SystemTime,
) -> (Vec<String>, Vec<ApprovalRecord>) {
    let mut problems = Vec::new();
    if let Some(alias) = &config.alias
        && !record.aliases.contains(alias)
    {
        problems.push(format!(
            "lacks alias `{alias}` (has: {})",
            if record.aliases.is_empty() {
                "none".to_owned()
            } else {
                record.aliases.join(", ")
            }
        ));
    }
    let mut valid: Vec<&crate::model_registry::ApprovalRecord> = Vec::new();
    for a in &record.approvals {
        let expired = match a.expires.as_deref().map(parse_time) {
            Some(Ok(t)) => t <= now,
            Some(Err(e)) => {
                problems.push(format!("approval by {}: {e}", a.who));
                true
            }
            None => false,
        };
        if expired {
            continue;
        }
        if !valid.iter().any(|v| v.who == a.who) {
            valid.push(a);
        }
    }
    let approvers: Vec<ApprovalRecord> = valid.iter().map(|a| (*a).clone()).collect();
    if (valid.len() as u64) < u64::from(config.approvals) {
        let expired = record.approvals.len()
            - record
                .approvals
                .iter()
                .filter(|a| valid.iter().any(|v| v.who == a.who))
                .count();
        problems.push(format!(
            "has {} valid approval(s) from distinct people, {} required{}",
            valid.len(),
            config.approvals,
            if expired > 0 {
                format!(" ({expired} expired)")
            } else {
                String::new()
            }
        ));
    }
    for role in &config.roles {
        if !valid.iter().any(|a| a.role.as_deref() == Some(role.as_str())) {
            problems.push(format!("no valid approval from a `{role}`"));
        }
    }
    for (metric, t) in &config.evals {
        match record.evals.iter().find(|e| &e.metric == metric) {
            None => problems.push(format!("eval `{metric}` is missing")),
            Some(e) => {
                if let Some(min) = t.min
                    && e.value < min
                {
                    problems.push(format!(
                        "eval `{metric}` = {} is below the minimum {min}",
                        e.value
                    ));
                }
                if let Some(max) = t.max
                    && e.value > max
                {
                    problems.push(format!(
                        "eval `{metric}` = {} is above the maximum {max}",
                        e.value
                    ));
                }
            }
        }
    }
    (problems, approvers)
}

impl Step for GateStep {
    fn run<'a>(&'a self, _cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            let record = self
                .registry
                .version(&self.name, &self.version)
                .await
                .map_err(StepError::transient)?
                .ok_or_else(|| {
                    StepError::rejected(format!(
                        "gate closed: {} version {} is not in the model registry",
                        self.name, self.version
                    ))
                })?;
            let (problems, approvers) = unmet(&self.config, &record, SystemTime::now());
            if !problems.is_empty() {
                let list: Vec<String> = problems
                    .iter()
                    .enumerate()
                    .map(|(i, p)| format!("({}) {p}", i + 1))
                    .collect();
                return Err(StepError::rejected(format!(
                    "gate closed for {} version {}: {}",
                    self.name,
                    self.version,
                    list.join("; ")
                )));
            }
            let mut outputs = serde_json::Map::new();
            outputs.insert("gate".into(), Value::Bool(true));
            outputs.insert("model".into(), Value::from(self.name.clone()));
            outputs.insert("version".into(), Value::from(self.version.clone()));
            outputs.insert(
                "uri".into(),
                record.artifact.uri.clone().map_or(Value::Null, Value::from),
            );
            outputs.insert(
                "digest".into(),
                record.artifact.digest.clone().map_or(Value::Null, Value::from),
            );
            outputs.insert(
                "approvers".into(),
                Value::from(approvers.iter().map(|a| a.who.clone()).collect::<Vec<_>>()),
            );
            // Who approved, as what and when: the report's evidence.
            outputs.insert(
                "approvals".into(),
                Value::from(
                    approvers
                        .iter()
                        .map(|a| serde_json::json!({"who": a.who, "role": a.role, "at": a.at}))
                        .collect::<Vec<_>>(),
                ),
            );
            let thresholds: serde_json::Map<String, Value> = self
                .config
                .evals
                .iter()
                .map(|(m, t)| (m.clone(), serde_json::json!({"min": t.min, "max": t.max})))
                .collect();
            outputs.insert("eval-thresholds".into(), Value::Object(thresholds));
            let evals: serde_json::Map<String, Value> = record
                .evals
                .iter()
                .filter(|e| self.config.evals.contains_key(&e.metric))
                .map(|e| (e.metric.clone(), Value::from(e.value)))
                .collect();
            outputs.insert("evals".into(), Value::Object(evals));
            Ok(Progress::Done { outputs })
        })
    }
}

/// Wraps a step that changes production: before acting it checks that a
/// gate-check passed *in this run* for exactly this model version (and, when
/// the registry gave one, this digest). Whatever the spec says; its
/// compensation is never guarded (rollback must always work).
pub struct Guarded {
    /// The ids of the run's gate-check steps: only their outputs count as a
    /// passed gate (another step's outputs cannot pose as one).
    pub gates: Vec<String>,
    /// The model.
    pub model: String,
    /// The version.
    pub version: String,
    /// The step.
    pub inner: Arc<dyn Step>,
    /// Gates to evaluate again, live, right before acting (`recheck`,
    /// default true): an approval revoked mid-rollout stops the change.
    pub recheck: Vec<Arc<dyn Step>>,
}

impl Step for Guarded {
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            let gate_outputs = |o: &std::collections::HashMap<String, serde_json::Map<String, Value>>| {
                o.iter()
                    .filter(|(id, _)| self.gates.contains(id))
                    .map(|(_, out)| out.clone())
                    .collect::<Vec<_>>()
            };
            let outs = cx.outputs.read().map(|o| gate_outputs(&o)).unwrap_or_default();
            let passed = {
                outs.iter().any(|out| {
                    out.get("gate") == Some(&Value::Bool(true))
                        && out.get("model").and_then(Value::as_str) == Some(self.model.as_str())
                        && out.get("version").and_then(Value::as_str) == Some(self.version.as_str())
                })
            };
            if !passed {
                return Err(StepError::rejected(format!(
                    "refusing to change production: no gate-check passed in this run for {} version {}",
                    self.model, self.version
                )));
            }
            let recorded: Option<Value> = outs
                .iter()
                .find(|out| {
                    out.get("gate") == Some(&Value::Bool(true))
                        && out.get("version").and_then(Value::as_str) == Some(self.version.as_str())
                })
                .and_then(|out| out.get("digest").cloned());
            for gate in &self.recheck {
                match gate.run(cx).await {
                    Ok(Progress::Done { outputs }) => {
                        let now = outputs.get("digest").cloned();
                        if recorded.is_some() && now != recorded {
                            return Err(StepError::rejected(format!(
                                "refusing to change production: the artifact digest of {} version {} changed since the gate passed ({} -> {})",
                                self.model,
                                self.version,
                                recorded.as_ref().map_or("none".into(), ToString::to_string),
                                now.as_ref().map_or("none".into(), ToString::to_string)
                            )));
                        }
                    }
                    Ok(Progress::Wait { .. }) => {}
                    Err(e) if e.class == rollwright_engine::exec::ErrorClass::Rejected => {
                        return Err(StepError::rejected(format!(
                            "gate re-check before changing production: {}",
                            e.message
                        )));
                    }
                    Err(e) => return Err(e),
                }
            }
            self.inner.run(cx).await
        })
    }
    fn compensate<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        self.inner.compensate(cx)
    }
    fn settle<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        self.inner.settle(cx)
    }
}

// The policy's minimum gate, against a gate-check's `with`.

/// Where a gate-check's `with` is weaker than the minimum gate.
fn shortfall(with: &Value, min: &MinGate) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let approvals = with.get("approvals").and_then(Value::as_u64).unwrap_or(1);
    if approvals < u64::from(min.approvals) {
        out.push((
            "/approvals".into(),
            format!(
                "the policy requires at least {} approvals, the gate asks {approvals}",
                min.approvals
            ),
        ));
    }
    let roles: Vec<&str> = with
        .get("roles")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for r in &min.roles {
        if !roles.contains(&r.as_str()) {
            out.push((
                "/roles".into(),
                format!("the policy requires an approval from a `{r}`"),
            ));
        }
    }
    for (metric, b) in &min.evals {
        let mut ptr = String::from("/evals");
        rollwright_engine::yaml::push_pointer_segment(&mut ptr, metric);
        let Some(t) = with.get("evals").and_then(|e| e.get(metric)) else {
            out.push(("/evals".into(), format!("the policy requires eval `{metric}`")));
            continue;
        };
        let (tmin, tmax) = (
            t.get("min").and_then(Value::as_f64),
            t.get("max").and_then(Value::as_f64),
        );
        if let Some(pmin) = b.min
            && tmin.is_none_or(|m| m < pmin)
        {
            out.push((
                ptr.clone(),
                format!("the policy requires `{metric}` min ≥ {pmin}"),
            ));
        }
        if let Some(pmax) = b.max
            && tmax.is_none_or(|m| m > pmax)
        {
            out.push((ptr, format!("the policy requires `{metric}` max ≤ {pmax}")));
        }
    }
    out
}

/// The stricter of a gate's `with` and the policy minimum, for run time.
fn strengthen(with: &Value, min: &MinGate) -> Value {
    let mut w = with.clone();
    if !w.is_object() {
        w = Value::Object(serde_json::Map::new());
    }
    let approvals = w
        .get("approvals")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(u64::from(min.approvals));
    w["approvals"] = Value::from(approvals);
    let mut roles: Vec<Value> = w
        .get("roles")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in &min.roles {
        if !roles.iter().any(|x| x.as_str() == Some(r)) {
            roles.push(Value::from(r.clone()));
        }
    }
    if !roles.is_empty() {
        w["roles"] = Value::Array(roles);
    }
    for (metric, b) in &min.evals {
        let cur = w
            .get("evals")
            .and_then(|e| e.get(metric))
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        let tmin = cur.get("min").and_then(Value::as_f64);
        let tmax = cur.get("max").and_then(Value::as_f64);
        let mut t = serde_json::Map::new();
        if let Some(m) = match (tmin, b.min) {
            (Some(a), Some(c)) => Some(a.max(c)),
            (a, c) => a.or(c),
        } {
            t.insert("min".into(), Value::from(m));
        }
        if let Some(m) = match (tmax, b.max) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        } {
            t.insert("max".into(), Value::from(m));
        }
        if !w.get("evals").is_some_and(Value::is_object) {
            w["evals"] = serde_json::json!({});
        }
        w["evals"][metric] = Value::Object(t);
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_registry::{ApprovalRecord, Artifact, EvalRecord};
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn weaker_and_strengthen() {
        let min = rollwright_engine::policy::MinGate {
            approvals: 2,
            roles: vec!["ml-lead".into()],
            evals: [(
                "auc".to_owned(),
                rollwright_engine::policy::Bounds {
                    min: Some(0.9),
                    max: None,
                },
            )]
            .into_iter()
            .collect(),
        };
        let w = json!({"approvals": 1, "evals": {"auc": {"min": 0.85}}});
        let problems: Vec<String> = shortfall(&w, &min).into_iter().map(|p| p.1).collect();
        assert_eq!(
            problems,
            [
                "the policy requires at least 2 approvals, the gate asks 1",
                "the policy requires an approval from a `ml-lead`",
                "the policy requires `auc` min ≥ 0.9"
            ]
        );
        let s = strengthen(&w, &min);
        assert_eq!(
            s,
            json!({"approvals": 2, "roles": ["ml-lead"], "evals": {"auc": {"min": 0.9}}})
        );
        assert!(shortfall(&s, &min).is_empty());
        let stricter = json!({"approvals": 3, "roles": ["ml-lead", "sec"], "evals": {"auc": {"min": 0.95}}});
        assert!(shortfall(&stricter, &min).is_empty(), "a spec may be stricter");
        assert_eq!(strengthen(&stricter, &min)["evals"]["auc"]["min"], 0.95);
    }

    fn record() -> VersionRecord {
        let a = |who: &str, role: &str, expires: Option<&str>| ApprovalRecord {
            who: who.into(),
            role: Some(role.into()),
            at: "2026-11-01T00:00:00Z".into(),
            expires: expires.map(str::to_owned),
        };
        VersionRecord {
            version: "7".into(),
            artifact: Artifact {
                uri: None,
                digest: Some("sha256:abc".into()),
            },
            aliases: vec!["staging-approved".into()],
            approvals: vec![
                a("alice", "ml-lead", None),
                a("alice", "ml-lead", None),
                a("bob", "engineer", Some("2026-11-10T00:00:00Z")),
            ],
            evals: vec![EvalRecord {
                metric: "auc".into(),
                value: 0.91,
                dataset: None,
                evaluator: None,
            }],
        }
    }

    fn config(yaml: serde_json::Value) -> GateCheckConfig {
        serde_json::from_value(yaml).unwrap()
    }

    #[test]
    fn every_unmet_condition_is_listed() {
        let now = parse_time("2026-11-24T00:00:00Z").unwrap();
        let c = config(serde_json::json!({
            "approvals": 2, "roles": ["ml-lead", "security"], "alias": "production-approved",
            "evals": {"auc": {"min": 0.92}, "f1": {"min": 0.5}}
        }));
        let (problems, approvers) = unmet(&c, &record(), now);
        let who: Vec<&str> = approvers.iter().map(|a| a.who.as_str()).collect();
        assert_eq!(who, ["alice"], "distinct and unexpired");
        assert_eq!(
            problems,
            [
                "lacks alias `production-approved` (has: staging-approved)",
                "has 1 valid approval(s) from distinct people, 2 required (1 expired)",
                "no valid approval from a `security`",
                "eval `auc` = 0.91 is below the minimum 0.92",
                "eval `f1` is missing",
            ]
        );
        // Before bob's approval expired, two people count.
        let earlier = now - Duration::from_secs(20 * 86_400);
        let c = config(serde_json::json!({"approvals": 2, "evals": {"auc": {"max": 0.95}}}));
        assert_eq!(unmet(&c, &record(), earlier).0, Vec::<String>::new());
    }

    struct Effect(std::sync::atomic::AtomicU32);
    impl Step for Effect {
        fn run<'a>(&'a self, _cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
            Box::pin(async move {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(Progress::Done {
                    outputs: serde_json::Map::new(),
                })
            })
        }
    }

    #[tokio::test]
    async fn the_guard_needs_a_passing_gate_for_this_exact_version() {
        let inner = Arc::new(Effect(std::sync::atomic::AtomicU32::new(0)));
        let guarded = Guarded {
            gates: vec!["gate".into()],
            model: "fraud".into(),
            version: "7".into(),
            inner: inner.clone(),
            recheck: Vec::new(),
        };
        let cx = |gate: Option<(&str, &str)>| {
            let mut outs = std::collections::HashMap::new();
            if let Some((m, v)) = gate {
                let o = serde_json::json!({"gate": true, "model": m, "version": v});
                outs.insert("gate".to_owned(), o.as_object().unwrap().clone());
            }
            StepContext {
                outputs: Arc::new(std::sync::RwLock::new(outs)),
                ..StepContext::detached("deploy")
            }
        };
        // Outputs that look like a pass, from a step that is not a gate.
        let mut outs = std::collections::HashMap::new();
        let forged = serde_json::json!({"gate": true, "model": "fraud", "version": "7"});
        outs.insert("smoke".to_owned(), forged.as_object().unwrap().clone());
        let posing = StepContext {
            outputs: Arc::new(std::sync::RwLock::new(outs)),
            ..StepContext::detached("deploy")
        };
        let e = guarded.run(&posing).await.unwrap_err();
        assert!(e.message.contains("no gate-check passed"), "{e}");
        for gate in [None, Some(("fraud", "6")), Some(("other", "7"))] {
            let e = guarded.run(&cx(gate)).await.unwrap_err();
            assert_eq!(e.class, rollwright_engine::exec::ErrorClass::Rejected);
            assert!(
                e.message
                    .contains("no gate-check passed in this run for fraud version 7")
            );
        }
        assert_eq!(
            inner.0.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "nothing changed"
        );
        guarded.run(&cx(Some(("fraud", "7")))).await.unwrap();
        assert_eq!(inner.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
