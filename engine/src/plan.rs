//! The plan: the expanded DAG in execution order, with compensations, the
//! gates, the rollback path and a timing budget.
//!
//! The budget is a *bound*, derived only from the spec:
//! - **minimum time to full promotion**: steps run as soon as their `needs`
//!   are done, holds take their `duration`, everything else is counted as
//!   instant (approvals included), so it is the longest chain of holds before
//!   the first step that sends 100 % to the canary;
//! - **worst-case detection**: a hold judges every `interval` and fails after
//!   `failure-limit` breaches, so a regression that starts at any moment of an
//!   analysed hold is acted on within `interval × failure-limit`;
//! - **worst-case rollback**: when the analysed hold fails, the compensations
//!   of every step it depends on run, each bounded by
//!   `attempts × timeout + the backoff delays between attempts`; a
//!   compensation without a timeout makes the bound unbounded, and the plan
//!   says so.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;
use serde_json::Value;

use crate::diag::Locate;
use crate::duration::Display;
use crate::expand::{Expanded, Manifest};
use crate::registry::{Registry, Role};
use crate::retry::RetryPolicy;
use crate::spec::Spec;

/// One concrete step of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanStep {
    /// Deterministic id (`ramp[20].hold`).
    pub id: String,
    /// Step kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// Dependencies.
    pub needs: Vec<String>,
    /// Resolved configuration.
    pub with: Value,
    /// Deadline per attempt, if any.
    #[serde(serialize_with = "ser_opt_dur")]
    pub timeout: Option<Duration>,
    /// Attempts (1 = no retry).
    pub attempts: u32,
    /// Kind of the compensation, if any.
    pub compensate: Option<String>,
    /// A failure does not fail the run.
    pub continue_on_failure: bool,
    /// Where it was written (`file:line:col`).
    pub source: String,
    /// Earliest start, from the plan's start, if every hold takes its duration.
    #[serde(serialize_with = "ser_dur")]
    pub earliest_start: Duration,
}

/// A gate and the production changes it guards.
#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    /// The gate-check step.
    pub step: String,
    /// Steps that change the target after it.
    pub guards: Vec<String>,
}

/// The timing budget.
#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    /// Earliest moment the canary gets 100 % (None: no step sends 100 %).
    #[serde(serialize_with = "ser_opt_dur")]
    pub to_full_promotion: Option<Duration>,
    /// The holds on that critical path.
    pub critical_path: Vec<String>,
    /// Earliest end of the whole run.
    #[serde(serialize_with = "ser_dur")]
    pub to_completion: Duration,
    /// Worst case from a regression to its detection, over analysed holds.
    #[serde(serialize_with = "ser_opt_dur")]
    pub detection: Option<Duration>,
    /// Worst-case time of the compensations after a failed hold.
    #[serde(serialize_with = "ser_opt_dur")]
    pub rollback: Option<Duration>,
    /// Detection plus rollback, for the worst hold.
    #[serde(serialize_with = "ser_opt_dur")]
    pub reaction: Option<Duration>,
    /// The hold for which `reaction` is reached.
    pub worst_hold: Option<String>,
    /// Why a bound is missing.
    pub notes: Vec<String>,
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// `metadata.name`.
    pub name: String,
    /// The files that made it: the spec, then the strategies it uses.
    pub sources: Vec<String>,
    /// Resolved parameters.
    pub params: serde_json::Map<String, Value>,
    /// Model, target and serving as resolved.
    pub model: Value,
    /// Target.
    pub target: Value,
    /// Serving.
    pub serving: Value,
    /// Steps in execution order.
    pub steps: Vec<PlanStep>,
    /// On-failure handlers, in order.
    pub on_failure: Vec<PlanStep>,
    /// Gates.
    pub gates: Vec<Gate>,
    /// Compensations in the order they would run after a failure at the end.
    pub rollback_path: Vec<String>,
    /// Rendered manifest templates.
    pub manifests: Vec<ManifestOut>,
    /// Timing budget.
    pub budget: Budget,
}

/// A rendered manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestOut {
    /// Step id.
    pub step: String,
    /// Template path.
    pub template: String,
    /// Rendered text.
    pub text: String,
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&Display(*d).to_string())
}

fn ser_opt_dur<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_dur(d, s),
        None => s.serialize_none(),
    }
}

/// Compensations that are the same action run once.
fn compensation_key(c: &crate::spec::Compensation) -> String {
    format!("{}|{}|{:?}|{:?}", c.kind, c.with, c.timeout, c.retry)
}

/// Builds the plan of a lint-clean expansion.
#[must_use]
pub fn build(exp: &Expanded, spec: &Spec, registry: &Registry) -> Plan {
    let policy = |t: Option<&String>, r: Option<&Value>| -> (Option<Duration>, RetryPolicy) {
        let l = spec.limits(t, None, r);
        (l.deadline, l.retry)
    };
    let where_ = |ptr: &str| {
        let l = exp.locate(ptr);
        let file = l.file.as_deref().unwrap_or(&exp.sources[0].display).to_owned();
        format!("{file}:{}", l.span.start)
    };

    // Graph and execution order (lint guarantees a DAG).
    let mut g: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..spec.steps.len()).map(|i| g.add_node(i)).collect();
    let index: HashMap<&str, usize> = spec
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    for (i, s) in spec.steps.iter().enumerate() {
        for n in &s.needs {
            if let Some(&j) = index.get(n.as_str()) {
                g.add_edge(nodes[j], nodes[i], ());
            }
        }
    }
    let order: Vec<usize> = petgraph::algo::toposort(&g, None)
        .map(|o| o.into_iter().map(|n| g[n]).collect())
        .unwrap_or_else(|_| (0..spec.steps.len()).collect());
    let own = |i: usize| -> Duration {
        let s = &spec.steps[i];
        registry
            .get(&s.kind)
            .and_then(|k| k.min_duration(&s.with))
            .unwrap_or_default()
    };
    // Earliest start and finish, and the predecessor on the critical path.
    let mut start = vec![Duration::ZERO; spec.steps.len()];
    let mut finish = vec![Duration::ZERO; spec.steps.len()];
    let mut via: Vec<Option<usize>> = vec![None; spec.steps.len()];
    for &i in &order {
        for n in &spec.steps[i].needs {
            if let Some(&j) = index.get(n.as_str())
                && (via[i].is_none() || finish[j] > start[i])
            {
                start[i] = start[i].max(finish[j]);
                via[i] = Some(j);
            }
        }
        finish[i] = start[i] + own(i);
    }

    let steps: Vec<PlanStep> = order
        .iter()
        .map(|&i| {
            let s = &spec.steps[i];
            let (timeout, retry) = policy(s.timeout.as_ref(), s.retry.as_ref());
            PlanStep {
                id: s.id.clone(),
                kind: s.kind.clone(),
                needs: s.needs.clone(),
                with: s.with.clone(),
                timeout,
                attempts: retry.attempts,
                compensate: s.compensate.as_ref().map(|c| c.kind.clone()),
                continue_on_failure: s.continue_on_failure,
                source: where_(&format!("/steps/{i}")),
                earliest_start: start[i],
            }
        })
        .collect();
    let on_failure = spec
        .on_failure
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let (timeout, retry) = policy(h.timeout.as_ref(), h.retry.as_ref());
            PlanStep {
                id: h.id.clone(),
                kind: h.kind.clone(),
                needs: Vec::new(),
                with: h.with.clone(),
                timeout,
                attempts: retry.attempts,
                compensate: None,
                continue_on_failure: true,
                source: where_(&format!("/on-failure/{i}")),
                earliest_start: Duration::ZERO,
            }
        })
        .collect();

    // Ancestors, for gates and rollback sets.
    let ancestors = |i: usize| -> HashSet<usize> {
        let mut seen = HashSet::new();
        let mut stack = vec![i];
        while let Some(k) = stack.pop() {
            for n in &spec.steps[k].needs {
                if let Some(&j) = index.get(n.as_str())
                    && seen.insert(j)
                {
                    stack.push(j);
                }
            }
        }
        seen
    };
    let role = |i: usize| registry.get(&spec.steps[i].kind).map(|k| k.role());
    let gates = order
        .iter()
        .filter(|&&i| role(i) == Some(Role::Gate))
        .map(|&gi| Gate {
            step: spec.steps[gi].id.clone(),
            guards: order
                .iter()
                .filter(|&&j| role(j) == Some(Role::Promote) && ancestors(j).contains(&gi))
                .map(|&j| spec.steps[j].id.clone())
                .collect(),
        })
        .collect();
    let mut seen_comp: HashSet<String> = HashSet::new();
    let rollback_path: Vec<String> = order
        .iter()
        .rev()
        .filter_map(|&i| {
            let c = spec.steps[i].compensate.as_ref()?;
            Some(if seen_comp.insert(compensation_key(c)) {
                format!("{} ({})", spec.steps[i].id, c.kind)
            } else {
                format!("{} ({}, already done)", spec.steps[i].id, c.kind)
            })
        })
        .collect();

    // Worst case of one compensation.
    let comp_bound = |i: usize| -> Option<Duration> {
        let c = spec.steps[i].compensate.as_ref()?;
        let (timeout, retry) = policy(c.timeout.as_ref(), c.retry.as_ref());
        let t = timeout?;
        let waits: Duration = (1..retry.attempts).map(|k| retry.delay_after(k)).sum();
        Some(t * retry.attempts + waits)
    };
    let mut notes = Vec::new();
    let mut detection: Option<Duration> = None;
    let mut worst: Option<(Duration, Duration, Duration, String)> = None; // (reaction, detect, rollback, hold)
    let mut unbounded = false;
    for &i in &order {
        let s = &spec.steps[i];
        let Some(detect) = registry.get(&s.kind).and_then(|k| k.detection_bound(&s.with)) else {
            continue;
        };
        detection = Some(detection.map_or(detect, |d| d.max(detect)));
        let mut rollback = Duration::ZERO;
        // Identical compensations (the usual `{type: rollback}` on every
        // change) are idempotent: the executor runs each distinct one once.
        let mut distinct: HashSet<String> = HashSet::new();
        let mut anc: Vec<usize> = ancestors(i).into_iter().collect();
        anc.sort_unstable();
        for j in anc {
            if let Some(c) = &spec.steps[j].compensate
                && distinct.insert(compensation_key(c))
            {
                match comp_bound(j) {
                    Some(b) => rollback += b,
                    None => {
                        if !unbounded {
                            notes.push(format!(
                                "rollback is unbounded: the compensation of `{}` has no timeout (set `timeout` on it or `defaults.timeout`)",
                                spec.steps[j].id
                            ));
                        }
                        unbounded = true;
                    }
                }
            }
        }
        let reaction = detect + rollback;
        if worst.as_ref().is_none_or(|w| reaction > w.0) {
            worst = Some((reaction, detect, rollback, s.id.clone()));
        }
    }
    if detection.is_none() {
        notes.push("no hold has an analysis: regressions are not detected automatically".into());
    }
    let full = order.iter().copied().find(|&i| {
        let s = &spec.steps[i];
        registry.get(&s.kind).and_then(|k| k.canary_weight(&s.with)) == Some(100)
    });
    let critical_path = full
        .map(|f| {
            let mut path = Vec::new();
            let mut cur = via[f];
            while let Some(j) = cur {
                if own(j) > Duration::ZERO {
                    path.push(spec.steps[j].id.clone());
                }
                cur = via[j];
            }
            path.reverse();
            path
        })
        .unwrap_or_default();
    let budget = Budget {
        to_full_promotion: full.map(|f| start[f]),
        critical_path,
        to_completion: finish.iter().copied().max().unwrap_or_default(),
        detection,
        rollback: if unbounded {
            None
        } else {
            worst.as_ref().map(|w| w.2)
        },
        reaction: if unbounded {
            None
        } else {
            worst.as_ref().map(|w| w.0)
        },
        worst_hold: worst.map(|w| w.3),
        notes,
    };
    Plan {
        name: spec.metadata.name.clone(),
        sources: exp.sources.iter().map(|s| s.display.to_string()).collect(),
        params: exp.params.clone(),
        model: exp.value.get("model").cloned().unwrap_or(Value::Null),
        target: exp.value.get("target").cloned().unwrap_or(Value::Null),
        serving: exp.value.get("serving").cloned().unwrap_or(Value::Null),
        steps,
        on_failure,
        gates,
        rollback_path,
        manifests: exp
            .manifests
            .iter()
            .map(|m: &Manifest| ManifestOut {
                step: m.step.clone(),
                template: m.path.clone(),
                text: m.text.clone(),
            })
            .collect(),
        budget,
    }
}
