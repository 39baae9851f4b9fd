//! The run report, in the charter's format: Plan · Changes · Verification ·
//! Rollback · Summary, as Markdown and JSON. Built from the journal alone
//! (plus the spec for step kinds), so it is the same for finished, failed
//! and resumed runs.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::journal::Record;
use crate::registry::{Registry, Role};
use crate::spec::Spec;

/// A step as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StepLine {
    /// Id.
    pub id: String,
    /// Kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// `succeeded`, `failed`, `not run`, `tolerated failure`.
    pub result: String,
    /// Outputs, or the error.
    pub detail: Value,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Run id.
    pub run: String,
    /// Spec path.
    pub spec: String,
    /// Model and target.
    pub model: Value,
    /// Target.
    pub target: Value,
    /// Every step in plan order with its result.
    pub plan: Vec<StepLine>,
    /// Steps that changed the target.
    pub changes: Vec<StepLine>,
    /// Gates, holds, verifications, approvals.
    pub verification: Vec<StepLine>,
    /// The failure, compensations and what is left for a human.
    pub rollback: Rollback,
    /// State and timing.
    pub summary: Summary,
}

/// The rollback section.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Rollback {
    /// The step (or `abort`, `run`) that failed, and why.
    pub failure: Option<(String, String)>,
    /// Compensations in the order they ran, with their error if any.
    pub compensations: Vec<(String, Option<String>)>,
    /// What was not restored.
    pub left_over: Vec<(String, String)>,
    /// What compensations restored, as they recorded it (`restored` records).
    pub restored: Vec<(String, String)>,
}

/// The summary section.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Final state, or `interrupted`.
    pub state: String,
    /// Unix ms.
    pub started_ms: u64,
    /// Unix ms, if finished.
    pub finished_ms: Option<u64>,
    /// Steps succeeded / planned.
    pub succeeded: usize,
    /// Planned steps.
    pub planned: usize,
}

/// Builds the report of a run.
#[must_use]
pub fn build(spec: &Spec, records: &[Record], registry: &Registry) -> Report {
    let (mut run, mut spec_path, mut started_ms) = (String::new(), String::new(), 0);
    let mut outcome: Map<String, Value> = Map::new();
    let mut results: std::collections::HashMap<&str, (String, Value)> = std::collections::HashMap::new();
    let mut rollback = Rollback::default();
    let mut state = "interrupted".to_owned();
    let mut finished_ms = None;
    for r in records {
        match r {
            Record::RunStarted {
                run: id, spec, at_ms, ..
            } => {
                run.clone_from(id);
                spec_path.clone_from(spec);
                started_ms = *at_ms;
            }
            Record::StepSucceeded { step, outputs } => {
                results.insert(step, ("succeeded".into(), Value::Object(outputs.clone())));
            }
            Record::StepFailed {
                step,
                error,
                tolerated,
            } => {
                let what = if *tolerated { "tolerated failure" } else { "failed" };
                results.insert(step, (what.into(), Value::String(error.clone())));
                if !tolerated && rollback.failure.is_none() {
                    rollback.failure = Some((step.clone(), error.clone()));
                }
            }
            Record::Compensated { step, error } => {
                rollback.compensations.push((step.clone(), error.clone()));
                if let Some(e) = error {
                    rollback.left_over.push((step.clone(), e.clone()));
                }
            }
            Record::RunFinished { state: s, at_ms } => {
                state.clone_from(s);
                finished_ms = (*at_ms > 0).then_some(*at_ms);
            }
            Record::Recorded { step, key, value } if key == "restored" => {
                let text = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
                rollback.restored.push((step.clone(), text));
            }
            Record::StepStarted { .. } | Record::Recorded { .. } => {}
        }
    }
    // A run that failed without a failing step record was aborted or timed out.
    if rollback.failure.is_none() && state != "succeeded" && state != "interrupted" {
        rollback.failure = Some(("run".into(), "aborted or run deadline exceeded".into()));
    }
    let line = |s: &crate::spec::Step| {
        let (result, detail) = results
            .get(s.id.as_str())
            .cloned()
            .unwrap_or(("not run".into(), Value::Null));
        StepLine {
            id: s.id.clone(),
            kind: s.kind.clone(),
            result,
            detail,
        }
    };
    let role = |s: &crate::spec::Step| registry.get(&s.kind).map(|k| k.role());
    let plan: Vec<StepLine> = spec.steps.iter().map(line).collect();
    let changes = spec
        .steps
        .iter()
        .filter(|s| role(s) == Some(Role::Promote))
        .map(line)
        .filter(|l| l.result != "not run")
        .collect();
    let verification = spec
        .steps
        .iter()
        .filter(|s| matches!(role(s), Some(Role::Gate | Role::Observe)))
        .map(line)
        .filter(|l| l.result != "not run")
        .collect();
    outcome.insert("state".into(), Value::String(state.clone()));
    let succeeded = plan.iter().filter(|l| l.result == "succeeded").count();
    Report {
        run,
        spec: spec_path,
        model: spec.model.as_ref().map_or(Value::Null, |m| serde_json::json!({"name": m.name, "version": m.version, "registry": m.registry})),
        target: spec.target.as_ref().map_or(Value::Null, |t| {
            serde_json::json!({"context": t.context, "namespace": t.namespace, "environment": format!("{:?}", t.environment).to_lowercase()})
        }),
        summary: Summary {
            state,
            started_ms,
            finished_ms,
            succeeded,
            planned: plan.len(),
        },
        plan,
        changes,
        verification,
        rollback,
    }
}

fn detail(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.replace('|', "\\|").replace('\n', " "),
        Value::Object(m) if m.is_empty() => String::new(),
        other => format!("`{}`", other.to_string().replace('|', "\\|")),
    }
}

impl Report {
    /// The Markdown form.
    #[must_use]
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Rollout report: {}\n", self.run);
        let _ = writeln!(s, "## Plan\n");
        let _ = writeln!(s, "- spec: `{}`", self.spec);
        let _ = writeln!(s, "- model: `{}`", self.model);
        let _ = writeln!(s, "- target: `{}`\n", self.target);
        table(&mut s, &self.plan);
        let _ = writeln!(s, "\n## Changes\n");
        if self.changes.is_empty() {
            let _ = writeln!(s, "No step changed the target.");
        } else {
            table(&mut s, &self.changes);
        }
        let _ = writeln!(s, "\n## Verification\n");
        if self.verification.is_empty() {
            let _ = writeln!(s, "No verification ran.");
        } else {
            table(&mut s, &self.verification);
        }
        let _ = writeln!(s, "\n## Rollback\n");
        match &self.rollback.failure {
            None => {
                let _ = writeln!(s, "Not needed.");
            }
            Some((step, why)) => {
                let _ = writeln!(s, "Failed at `{step}`: {why}\n");
                for (c, e) in &self.rollback.compensations {
                    let _ = writeln!(
                        s,
                        "- compensated `{c}`: {}",
                        e.as_deref().map_or("ok".to_owned(), |e| format!("FAILED: {e}"))
                    );
                }
                for (c, what) in &self.rollback.restored {
                    let _ = writeln!(s, "- restored for `{c}`: {what}");
                }
                if !self.rollback.left_over.is_empty() {
                    let _ = writeln!(s, "\n**Left for a human:**");
                    for (c, e) in &self.rollback.left_over {
                        let _ = writeln!(s, "- `{c}` was not restored: {e}");
                    }
                }
            }
        }
        let _ = writeln!(s, "\n## Summary\n");
        let _ = writeln!(s, "- state: **{}**", self.summary.state);
        let _ = writeln!(
            s,
            "- steps succeeded: {} of {}",
            self.summary.succeeded, self.summary.planned
        );
        if let Some(f) = self.summary.finished_ms {
            let secs = f.saturating_sub(self.summary.started_ms) as f64 / 1000.0;
            let _ = writeln!(s, "- duration: {secs:.1}s");
        }
        s
    }
}

fn table(s: &mut String, lines: &[StepLine]) {
    let _ = writeln!(s, "| step | type | result | detail |\n|---|---|---|---|");
    for l in lines {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} |",
            l.id,
            l.kind,
            l.result,
            detail(&l.detail)
        );
    }
}
