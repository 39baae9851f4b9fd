//! The run report, in the charter's five sections — Plan · Changes ·
//! Verification · Rollback · Summary — as Markdown and JSON, written for
//! the SRE who reads it during an incident and the auditor who reads it a
//! year later. Built from the journal alone (plus the spec and the step
//! kinds, which say in words what their outputs mean), so it is the same
//! for finished, failed and resumed runs.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::exec::{Measurement, Observation};
use crate::journal::Record;
use crate::registry::{Registry, Role};
use crate::spec::Spec;
pub use crate::words::{plain, scalar};

/// Markdown tables show at most this many evaluations of one hold (the
/// JSON has them all).
pub const TABLE_ROWS: usize = 20;

/// A step as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StepLine {
    /// Id.
    pub id: String,
    /// Kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// `succeeded`, `failed`, `not run`, `tolerated failure`, `interrupted`.
    pub result: String,
    /// When it started and ended (Unix ms; 0 when unknown).
    pub started_ms: u64,
    /// When it ended.
    pub ended_ms: u64,
    /// What it did, in words (the step kind's own description of its outputs).
    pub what: String,
    /// Its outputs, or null (JSON only).
    pub outputs: Value,
}

/// One evaluation of a hold's analysis.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Unix ms.
    pub at_ms: u64,
    /// Each metric against its threshold.
    pub metrics: Vec<Measurement>,
}

/// A verification step with its evaluations.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The step.
    #[serde(flatten)]
    pub step: StepLine,
    /// Its analysis, evaluation by evaluation (holds).
    pub evaluations: Vec<Evaluation>,
}

/// The plan section.
#[derive(Debug, Clone, Serialize)]
pub struct PlanSection {
    /// Model name, version, registry.
    pub model: Value,
    /// The gate's evidence, in words.
    pub gate: Vec<String>,
    /// Context, namespace, environment, API server, production.
    pub target: Value,
    /// The strategy file used, if any.
    pub strategy: Option<String>,
    /// The ramp: canary weights with the holds after them.
    pub ramp: Vec<String>,
    /// What a rollback restores.
    pub rollback_target: Vec<String>,
    /// The version it served before, when a step could tell.
    pub previous_version: Option<String>,
    /// Every step in plan order with its result.
    pub steps: Vec<StepLine>,
    /// The plan's timing budget (what `rollwright plan` shows), when known.
    pub budget: Option<crate::plan::Budget>,
}

/// One change to the target.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Unix ms.
    pub at_ms: u64,
    /// The step.
    pub step: String,
    /// What changed, in words.
    pub what: String,
}

/// The rollback section.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Rollback {
    /// The step (or `abort`, `run`) that failed, and why.
    pub failure: Option<(String, String)>,
    /// When it failed (Unix ms).
    pub failed_ms: u64,
    /// The measurements that breached, when an analysis triggered it.
    pub trigger: Vec<Measurement>,
    /// Compensations of steps that changed the target, in the order they
    /// ran, with their error if any.
    pub compensations: Vec<(String, Option<String>)>,
    /// What was not restored.
    pub left_over: Vec<(String, String)>,
    /// What compensations restored and verified, as they recorded it.
    pub restored: Vec<(String, String)>,
    /// On-failure handlers, with their error if any.
    pub handlers: Vec<(String, Option<String>)>,
    /// When no rollback ran: how to back out now.
    pub back_out: Option<String>,
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
    /// Three sentences for a change ticket.
    pub text: String,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Run id.
    pub run: String,
    /// Spec path.
    pub spec: String,
    /// Who started it.
    pub started_by: String,
    /// Whether it ran on a simulated cluster.
    pub simulated: bool,
    /// Plan.
    pub plan: PlanSection,
    /// Steps that changed the target, in time order.
    pub changes: Vec<Change>,
    /// Gates, health checks, smoke tests and holds.
    pub verification: Vec<Check>,
    /// The failure and what was done about it.
    pub rollback: Rollback,
    /// The canary's share over time: `(Unix ms, percent)`, each verified
    /// shift and each restore.
    pub traffic: Vec<(u64, f64)>,
    /// State and timing.
    pub summary: Summary,
}

#[derive(Default)]
struct Seen {
    started_ms: u64,
    ended_ms: u64,
    result: Option<String>,
    outputs: Value,
    observations: Vec<(u64, Observation)>,
}

/// Builds the report of a run.
#[must_use]
#[allow(clippy::too_many_lines)]
pub fn build(spec: &Spec, records: &[Record], registry: &Registry) -> Report {
    let (mut run, mut spec_path, mut started_ms, mut started_by, mut simulated) =
        (String::new(), String::new(), 0, String::new(), false);
    let mut server = Value::Null;
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut rollback = Rollback::default();
    let mut state = "interrupted".to_owned();
    let mut finished_ms = None;
    let mut previous: Vec<(String, bool)> = Vec::new();
    // (at, percent, the step that set it)
    let mut splits: Vec<(u64, f64, String)> = Vec::new();
    let changes_target = |id: &str| {
        spec.steps
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| registry.get(&s.kind))
            .is_some_and(|k| k.role().changes_target())
    };
    for r in records {
        match r {
            Record::RunStarted {
                run: id,
                spec,
                at_ms,
                started_by: by,
                reach,
                ..
            } => {
                run.clone_from(id);
                spec_path.clone_from(spec);
                started_ms = *at_ms;
                started_by.clone_from(by);
                simulated = !reach["sim"].is_null();
                server = reach["server"].clone();
            }
            Record::StepStarted { step, at_ms, .. } => {
                let s = seen.entry(step.clone()).or_default();
                if s.started_ms == 0 {
                    s.started_ms = *at_ms;
                }
            }
            Record::StepSucceeded { step, outputs, at_ms } => {
                let s = seen.entry(step.clone()).or_default();
                s.result = Some("succeeded".into());
                s.outputs = Value::Object(outputs.clone());
                s.ended_ms = *at_ms;
            }
            Record::StepFailed {
                step,
                error,
                tolerated,
                at_ms,
            } => {
                let s = seen.entry(step.clone()).or_default();
                s.result = Some(if *tolerated { "tolerated failure" } else { "failed" }.into());
                s.outputs = Value::String(error.clone());
                s.ended_ms = *at_ms;
                if !tolerated && rollback.failure.is_none() {
                    rollback.failure = Some((step.clone(), error.clone()));
                    rollback.failed_ms = *at_ms;
                }
            }
            Record::Observed {
                step,
                at_ms,
                observation,
            } => {
                if let Some(sp) = &observation.split {
                    splits.push((*at_ms, sp.canary_percent, step.clone()));
                }
                seen.entry(step.clone())
                    .or_default()
                    .observations
                    .push((*at_ms, observation.clone()));
            }
            Record::Compensated { step, error, at_ms } => {
                // A shift undone: the split goes back to what it was before it.
                if error.is_none()
                    && let Some(first) = splits.iter().position(|(_, _, s)| s == step)
                {
                    let before = splits[..first]
                        .iter()
                        .rev()
                        .find(|(_, _, s)| s != step)
                        .map_or(0.0, |(_, p, _)| *p);
                    splits.push((*at_ms, before, format!("{step} (undo)")));
                }
                if changes_target(step) || error.is_some() {
                    rollback.compensations.push((step.clone(), error.clone()));
                }
                if let Some(e) = error {
                    rollback.left_over.push((step.clone(), e.clone()));
                }
            }
            Record::Handled { handler, error, .. } => {
                rollback.handlers.push((handler.clone(), error.clone()))
            }
            Record::RunFinished { state: s, at_ms } => {
                state.clone_from(s);
                finished_ms = (*at_ms > 0).then_some(*at_ms);
            }
            Record::Recorded { step, key, value, .. } if key == "restored" => {
                let text = value.as_str().map_or_else(|| scalar(value), str::to_owned);
                rollback.restored.push((step.clone(), text));
            }
            Record::Recorded { key, value, .. } if key == "objects" => {
                for o in value.as_array().into_iter().flatten() {
                    let r = &o["ref"];
                    let name = format!(
                        "{} {}/{}",
                        r["kind"].as_str().unwrap_or("object"),
                        r["namespace"].as_str().unwrap_or_default(),
                        r["name"].as_str().unwrap_or_default()
                    );
                    if !previous.iter().any(|(n, _)| *n == name) {
                        previous.push((name, o["existed"].as_bool().unwrap_or(false)));
                    }
                }
            }
            Record::Recorded { .. } => {}
        }
    }
    // A run that failed without a failing step record was aborted or timed out.
    if rollback.failure.is_none() && state != "succeeded" && state != "interrupted" {
        rollback.failure = Some(("run".into(), "aborted or run deadline exceeded".into()));
    }
    let line = |s: &crate::spec::Step| {
        let got = seen.get(&s.id);
        let result = got
            .and_then(|g| g.result.clone())
            .unwrap_or_else(|| if got.is_some() { "interrupted" } else { "not run" }.into());
        let outputs = got.map_or(Value::Null, |g| g.outputs.clone());
        let what = match &outputs {
            Value::Object(m) => registry.get(&s.kind).map_or_else(|| plain(m), |k| k.describe(m)),
            Value::String(e) => e.clone(),
            _ => String::new(),
        };
        let what = if what.is_empty() && result == "succeeded" {
            "done".to_owned()
        } else {
            what
        };
        StepLine {
            id: s.id.clone(),
            kind: s.kind.clone(),
            result,
            started_ms: got.map_or(0, |g| g.started_ms),
            ended_ms: got.map_or(0, |g| g.ended_ms),
            what,
            outputs,
        }
    };
    let role = |s: &crate::spec::Step| registry.get(&s.kind).map(|k| k.role());
    let steps: Vec<StepLine> = spec.steps.iter().map(line).collect();
    let mut changes: Vec<Change> = spec
        .steps
        .iter()
        .filter(|s| role(s) == Some(Role::Promote))
        .map(line)
        .filter(|l| l.result == "succeeded")
        .map(|l| Change {
            at_ms: l.ended_ms,
            step: l.id,
            what: l.what,
        })
        .collect();
    changes.sort_by_key(|c| c.at_ms);
    let verification: Vec<Check> = spec
        .steps
        .iter()
        .filter(|s| matches!(role(s), Some(Role::Gate | Role::Observe)))
        .map(|s| Check {
            step: line(s),
            evaluations: seen
                .get(&s.id)
                .map(|g| {
                    g.observations
                        .iter()
                        .filter(|(_, o)| !o.metrics.is_empty())
                        .map(|(at, o)| Evaluation {
                            at_ms: *at,
                            metrics: o.metrics.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .filter(|c| c.step.result != "not run")
        .collect();
    if let Some((step, _)) = &rollback.failure
        && let Some(last) = seen
            .get(step)
            .and_then(|g| g.observations.iter().rev().find(|(_, o)| !o.metrics.is_empty()))
    {
        rollback.trigger = last
            .1
            .metrics
            .iter()
            .filter(|m| m.verdict != "pass")
            .cloned()
            .collect();
    }
    let previous_version = steps.iter().find_map(|l| {
        l.outputs
            .get("previous-version")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let rollback_target: Vec<String> = previous
        .iter()
        .map(|(name, existed)| {
            if *existed {
                format!("{name} as it was before the run")
            } else {
                format!("{name} (created by the run: deleted)")
            }
        })
        .collect();
    if rollback.failure.is_none() && state == "succeeded" {
        let previous = previous_version.as_deref().unwrap_or("<the previous version>");
        // `--set` overrides parameters only: when a parameter carries the
        // version, one command backs out; otherwise the spec names it.
        let param = spec.model.as_ref().and_then(|m| {
            spec.params
                .iter()
                .find(|(_, v)| v.as_str() == Some(m.version.as_str()))
                .map(|(k, _)| k.clone())
        });
        rollback.back_out = Some(match (param, &previous_version) {
            (Some(k), _) => format!("rollwright run {spec_path} --set {k}={previous}"),
            (None, Some(v)) => {
                format!("set `model.version: \"{v}\"` in {spec_path}, then `rollwright run {spec_path}`")
            }
            (None, None) => format!(
                "set `model.version` in {spec_path} to the version that served before, then `rollwright run {spec_path}`"
            ),
        });
    }
    let gate: Vec<String> = steps
        .iter()
        .filter(|l| {
            spec.steps
                .iter()
                .any(|s| s.id == l.id && role(s) == Some(Role::Gate))
        })
        .filter(|l| l.result == "succeeded")
        .map(|l| format!("`{}`: {}", l.id, l.what))
        .collect();
    let ramp = ramp(spec, registry);
    let succeeded = steps.iter().filter(|l| l.result == "succeeded").count();
    let model = spec.model.as_ref().map_or(Value::Null, |m| {
        serde_json::json!({
            "name": m.name,
            "version": m.version,
            "registry": if simulated { "the simulated cluster's registry (a file)".to_owned() } else { m.registry.clone() },
        })
    });
    let target = spec.target.as_ref().map_or(Value::Null, |t| {
        let env = format!("{:?}", t.environment).to_lowercase();
        serde_json::json!({
            "context": t.context, "namespace": t.namespace, "environment": env,
            "server": server, "production": env == "production" && !simulated,
        })
    });
    let mut report = Report {
        run,
        spec: spec_path,
        started_by: if started_by.is_empty() {
            "unknown (no user name was found)".into()
        } else {
            started_by
        },
        simulated,
        plan: PlanSection {
            model,
            gate,
            target,
            strategy: spec.uses.clone(),
            ramp,
            rollback_target,
            previous_version,
            steps,
            budget: None,
        },
        changes,
        verification,
        rollback,
        traffic: splits.iter().map(|(at, p, _)| (*at, *p)).collect(),
        summary: Summary {
            state,
            started_ms,
            finished_ms,
            succeeded,
            planned: spec.steps.len(),
            text: String::new(),
        },
    };
    report.summary.text = report.sentences();
    report
}

/// The ramp: each canary weight with the holds that follow it.
fn ramp(spec: &Spec, registry: &Registry) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in &spec.steps {
        let Some(k) = registry.get(&s.kind) else { continue };
        if let Some(w) = k.canary_weight(&s.with) {
            let w = format!("{w} %");
            if out.last() != Some(&w) {
                out.push(w);
            }
        } else if let Some(d) = k.min_duration(&s.with)
            && let Some(last) = out.last_mut()
        {
            last.push_str(&format!(" (hold {})", crate::duration::Display(d)));
        }
    }
    out
}

/// Unix ms as `YYYY-MM-DD HH:MM:SS UTC`.
#[must_use]
pub fn utc(ms: u64) -> String {
    if ms == 0 {
        return "—".into();
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    // `2026-12-07T15:34:36Z` → `2026-12-07 15:34:36 UTC`
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replacen('T', " ", 1)
        .replace('Z', " UTC")
}

/// Text safe in a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

impl Report {
    fn elapsed(&self, at: u64) -> String {
        if at == 0 || self.summary.started_ms == 0 {
            return "—".into();
        }
        let d = std::time::Duration::from_millis(at.saturating_sub(self.summary.started_ms));
        format!("+{}", crate::duration::Display(d))
    }

    /// Three sentences a person can paste into a change ticket.
    fn sentences(&self) -> String {
        let model = self.plan.model["name"].as_str().unwrap_or("the model");
        let version = self.plan.model["version"].as_str().unwrap_or("?");
        let target = format!(
            "{}/{}",
            self.plan.target["context"].as_str().unwrap_or("?"),
            self.plan.target["namespace"].as_str().unwrap_or("?")
        );
        let sim = if self.simulated {
            " (simulated cluster)"
        } else {
            ""
        };
        let took = self
            .summary
            .finished_ms
            .map(|f| {
                format!(
                    " in {}",
                    crate::duration::Display(std::time::Duration::from_millis(
                        f.saturating_sub(self.summary.started_ms)
                    ))
                )
            })
            .unwrap_or_default();
        let holds: usize = self.verification.iter().map(|c| c.evaluations.len()).sum();
        let first = match self.summary.state.as_str() {
            "succeeded" => format!(
                "{model} version {version} was rolled out to {target}{sim}{took} and now serves all traffic."
            ),
            "rolled-back" if self.changes.is_empty() => {
                let at = self.rollback.failure.as_ref().map_or("run", |(s, _)| s.as_str());
                format!(
                    "The rollout of {model} version {version} to {target}{sim} was refused at `{at}` before anything changed."
                )
            }
            "rolled-back" => format!(
                "The rollout of {model} version {version} to {target}{sim} was stopped and rolled back{took}."
            ),
            "rollback-failed" => format!(
                "The rollout of {model} version {version} to {target}{sim} failed and was NOT fully rolled back: a person must restore what is listed under Rollback."
            ),
            _ => format!(
                "The rollout of {model} version {version} to {target}{sim} was interrupted; `rollwright resume {}` continues it.",
                self.run
            ),
        };
        let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut with = Vec::new();
        if !self.plan.gate.is_empty() {
            with.push(plural(self.plan.gate.len(), "gate passed", "gates passed"));
        }
        if holds > 0 {
            with.push(plural(holds, "analysis evaluation", "analysis evaluations"));
        }
        let second = format!(
            "{} of {} steps succeeded{}.",
            self.summary.succeeded,
            self.summary.planned,
            if with.is_empty() {
                String::new()
            } else {
                format!(", with {}", with.join(" and "))
            }
        );
        let third = match (&self.rollback.failure, &self.rollback.back_out) {
            (Some((step, why)), _) => {
                let why = if why.chars().count() > 300 {
                    format!("{}…", why.chars().take(300).collect::<String>())
                } else {
                    why.trim_end_matches('.').to_owned()
                };
                format!("It stopped at `{step}`: {why}.")
            }
            (None, Some(how)) if how.starts_with("rollwright ") => format!("To back out: `{how}`."),
            (None, Some(how)) => format!("To back out: {how}."),
            (None, None) => "Nothing was rolled back.".to_owned(),
        };
        format!("{first} {second} {third}")
    }

    /// The Markdown form.
    #[must_use]
    #[allow(clippy::too_many_lines)]
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let sim = if self.simulated { " (simulated)" } else { "" };
        let _ = writeln!(s, "# Rollout report: {}{sim}\n", self.run);
        if self.simulated {
            let _ = writeln!(
                s,
                "> This run went to a **simulated cluster** (`--sim`): nothing reached a real cluster or registry.\n"
            );
        }
        let _ = writeln!(s, "## Plan\n");
        let m = &self.plan.model;
        if !m.is_null() {
            let _ = writeln!(
                s,
                "- **Model:** {} version {} (registry: {})",
                m["name"].as_str().unwrap_or_default(),
                m["version"].as_str().unwrap_or_default(),
                m["registry"].as_str().unwrap_or_default()
            );
        }
        for g in &self.plan.gate {
            let _ = writeln!(s, "- **Gate:** {g}");
        }
        let t = &self.plan.target;
        if !t.is_null() {
            let _ = writeln!(
                s,
                "- **Target:** context `{}`, namespace `{}`, environment {}{}{}",
                t["context"].as_str().unwrap_or_default(),
                t["namespace"].as_str().unwrap_or_default(),
                t["environment"].as_str().unwrap_or_default(),
                t["server"]
                    .as_str()
                    .map(|v| format!(", API server {v}"))
                    .unwrap_or_default(),
                if t["production"].as_bool() == Some(true) {
                    " — **production**"
                } else {
                    ""
                }
            );
        }
        if let Some(u) = &self.plan.strategy {
            let _ = writeln!(s, "- **Strategy:** `{u}`");
        }
        if !self.plan.ramp.is_empty() {
            let _ = writeln!(s, "- **Ramp:** {}", self.plan.ramp.join(" → "));
        }
        if !self.plan.rollback_target.is_empty() {
            let v = self
                .plan
                .previous_version
                .as_ref()
                .map(|v| format!("version {v}: "))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "- **Rollback target:** {v}{}",
                self.plan.rollback_target.join("; ")
            );
        }
        if let Some(b) = &self.plan.budget {
            let show = |d: std::time::Duration| crate::duration::Display(d).to_string();
            let full = b.to_full_promotion.map_or_else(
                || "no step sends 100 %".to_owned(),
                |d| format!("100 % at the earliest after {}", show(d)),
            );
            let react = match (b.detection, b.rollback, b.reaction) {
                (None, ..) => "no analysis detects a regression".to_owned(),
                (Some(d), Some(r), Some(t)) => format!(
                    "a regression is detected within {} and rolled back within {} (reaction {}{})",
                    show(d),
                    show(r),
                    show(t),
                    b.worst_hold
                        .as_ref()
                        .map(|h| format!(", worst during `{h}`"))
                        .unwrap_or_default()
                ),
                (Some(d), ..) => format!(
                    "a regression is detected within {}; its rollback is unbounded",
                    show(d)
                ),
            };
            let _ = writeln!(
                s,
                "- **Timing budget:** {full}, the whole run at least {}; {react}",
                show(b.to_completion)
            );
        }
        let _ = writeln!(
            s,
            "- **Started by:** {} at {}\n",
            self.started_by,
            utc(self.summary.started_ms)
        );
        let _ = writeln!(s, "| step | type | result | at | took |\n|---|---|---|---|---|");
        for l in &self.plan.steps {
            let took = if l.ended_ms > 0 && l.started_ms > 0 {
                crate::duration::Display(std::time::Duration::from_millis(
                    l.ended_ms.saturating_sub(l.started_ms),
                ))
                .to_string()
            } else {
                "—".into()
            };
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} | {took} |",
                l.id,
                l.kind,
                l.result,
                self.elapsed(l.started_ms)
            );
        }
        let _ = writeln!(s, "\n## Changes\n");
        if self.changes.is_empty() {
            let _ = writeln!(s, "No step changed the target.");
        }
        for c in &self.changes {
            let _ = writeln!(s, "- {} `{}`: {}", utc(c.at_ms), c.step, c.what);
        }
        let _ = writeln!(s, "\n## Verification\n");
        if self.verification.is_empty() {
            let _ = writeln!(s, "No verification ran.");
        }
        for c in &self.verification {
            let _ = writeln!(
                s,
                "- {} `{}` ({}): **{}** — {}",
                utc(c.step.ended_ms.max(c.step.started_ms)),
                c.step.id,
                c.step.kind,
                c.step.result,
                c.step.what
            );
            if !c.evaluations.is_empty() {
                self.evaluations(&mut s, &c.evaluations);
            }
        }
        let _ = writeln!(s, "\n## Rollback\n");
        match &self.rollback.failure {
            None => {
                let _ = writeln!(s, "Not needed: nothing failed.");
                if !self.plan.rollback_target.is_empty() {
                    let _ = writeln!(
                        s,
                        "\nWhat a rollback would restore: {}.",
                        self.plan.rollback_target.join("; ")
                    );
                }
                if let Some(how) = &self.rollback.back_out {
                    if how.starts_with("rollwright ") {
                        let _ = writeln!(s, "\nTo back out now: `{how}`.");
                    } else {
                        let _ = writeln!(s, "\nTo back out now: {how}.");
                    }
                }
            }
            Some((step, why)) => {
                let _ = writeln!(
                    s,
                    "**Triggered** at {} by `{step}`: {}\n",
                    utc(self.rollback.failed_ms),
                    why
                );
                for m in &self.rollback.trigger {
                    let _ = writeln!(
                        s,
                        "- {}: measured {} against {} ({} {}/{})",
                        m.name,
                        m.value_text(),
                        m.threshold,
                        m.verdict,
                        m.breaches,
                        m.limit
                    );
                }
                for (c, e) in &self.rollback.compensations {
                    let _ = writeln!(
                        s,
                        "- rolled back `{c}`: {}",
                        e.as_deref()
                            .map_or("done".to_owned(), |e| format!("**FAILED**: {e}"))
                    );
                }
                for (c, what) in &self.rollback.restored {
                    let _ = writeln!(s, "- restored and verified for `{c}`: {what}");
                }
                if !self.rollback.left_over.is_empty() {
                    let _ = writeln!(s, "\n**Left for a person:**");
                    for (c, e) in &self.rollback.left_over {
                        let _ = writeln!(s, "- `{c}` was not restored: {e}");
                    }
                }
            }
        }
        if !self.rollback.handlers.is_empty() {
            let _ = writeln!(s, "\nOn-failure handlers:");
            for (h, e) in &self.rollback.handlers {
                let _ = writeln!(
                    s,
                    "- `{h}`: {}",
                    e.as_deref()
                        .map_or("done".to_owned(), |e| format!("**failed**: {e}"))
                );
            }
        }
        let _ = writeln!(s, "\n## Summary\n");
        let _ = writeln!(s, "{}", self.summary.text);
        s
    }

    /// A hold's evaluations as a table: value against threshold per metric.
    fn evaluations(&self, s: &mut String, evals: &[Evaluation]) {
        let names: Vec<&str> = evals[0].metrics.iter().map(|m| m.name.as_str()).collect();
        let _ = write!(s, "\n  | at | ");
        for n in &names {
            let _ = write!(s, "{} | ", cell(n));
        }
        let _ = write!(s, "verdict |\n  |---|");
        for _ in &names {
            let _ = write!(s, "---|");
        }
        let _ = writeln!(s, "---|");
        let shown = sample(evals);
        for (i, e) in evals.iter().enumerate() {
            if !shown.contains(&i) {
                continue;
            }
            let _ = write!(s, "  | {} | ", self.elapsed(e.at_ms));
            for m in &e.metrics {
                let _ = write!(s, "{} vs {} | ", m.value_text(), cell(&m.threshold));
            }
            let bad: Vec<String> = e
                .metrics
                .iter()
                .filter(|m| m.verdict != "pass")
                .map(|m| format!("{} {} ({}/{})", m.name, m.verdict, m.breaches, m.limit))
                .collect();
            let verdict = if bad.is_empty() {
                "pass".to_owned()
            } else {
                bad.join(", ")
            };
            let _ = writeln!(s, "{} |", cell(&verdict));
        }
        if shown.len() < evals.len() {
            let _ = writeln!(
                s,
                "\n  {} of {} evaluations shown (every one that was not a pass, the first, the last and evenly spaced others; `report.json` has all).",
                shown.len(),
                evals.len()
            );
        }
        let _ = writeln!(s);
    }
}

/// Which evaluations a table shows: every non-pass, the first and last,
/// then evenly spaced ones up to [`TABLE_ROWS`].
fn sample(evals: &[Evaluation]) -> Vec<usize> {
    let n = evals.len();
    if n <= TABLE_ROWS {
        return (0..n).collect();
    }
    let mut keep: Vec<usize> = (0..n)
        .filter(|&i| evals[i].metrics.iter().any(|m| m.verdict != "pass"))
        .collect();
    keep.push(0);
    keep.push(n - 1);
    let room = TABLE_ROWS.saturating_sub(keep.len()).max(1);
    let step = n.div_ceil(room);
    keep.extend((0..n).step_by(step.max(1)));
    keep.sort_unstable();
    keep.dedup();
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_and_outputs_are_words_not_json() {
        assert_eq!(utc(1_796_657_676_303), "2026-12-07 15:34:36 UTC");
        assert_eq!(utc(0), "—");
        let o = serde_json::json!({"ready": ["a", "b"], "split": {"canary": 5}, "none": null});
        assert_eq!(plain(o.as_object().unwrap()), "ready: a, b; split.canary: 5");
    }

    #[test]
    fn a_long_hold_shows_a_bounded_table_with_every_breach() {
        let evals: Vec<Evaluation> = (0..500)
            .map(|i| Evaluation {
                at_ms: i,
                metrics: vec![Measurement {
                    name: "e".into(),
                    value: Some(0.0),
                    baseline: None,
                    threshold: "<= 1".into(),
                    upper: Some(1.0),
                    lower: None,
                    verdict: if i == 333 { "breach" } else { "pass" }.into(),
                    breaches: u32::from(i == 333),
                    limit: 2,
                }],
            })
            .collect();
        let shown = sample(&evals);
        assert!(shown.len() <= TABLE_ROWS + 3, "{}", shown.len());
        assert!(shown.contains(&333) && shown.contains(&0) && shown.contains(&499));
    }
}
