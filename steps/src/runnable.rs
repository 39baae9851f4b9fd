//! From an expanded spec to the executor's nodes — where the central safety
//! invariant is wired, so it lives here, tested, and not in the CLI.
//!
//! - Every step kind is built through the registry; a kind that cannot be
//!   built (a manifest breaking the policy, no endpoint, …) is reported with
//!   every other one, before anything runs.
//! - Gates are at least as strict as the policy's minimum gate for the
//!   environment (`min_gate`).
//! - In production, every step whose kind changes the target
//!   ([`Role::Promote`]) is wrapped in a [`Guarded`] that refuses to act
//!   unless a gate-check step of this run passed for exactly this model
//!   version, and re-evaluates the gates live (`recheck`) right before
//!   acting. The production flag is the *effective* one (the policy's view
//!   of the cluster actually reached), never only what the spec declares.
//! - A compensation is never guarded: rollback must always work.
//! - On resume ([`rewire_for_resume`]) the gates run again before anything
//!   left to do.

use std::sync::Arc;
use std::time::Duration;

use rollwright_engine::exec::{BoxFuture, Node, Progress, Step, StepContext, StepError};
use rollwright_engine::policy::MinGate;
use rollwright_engine::registry::{BuildContext, Registry, Role};
use rollwright_engine::spec::Spec;
use serde_json::Value;

use crate::gate_check::Guarded;

/// The executor's input.
pub struct Runnable {
    /// The steps.
    pub steps: Vec<Node>,
    /// `on-failure` handlers.
    pub handlers: Vec<Node>,
}

/// Builds the nodes of `spec`. `cx.target.production` is the effective
/// environment; `min_gate` the policy's minimum gate for it.
///
/// # Errors
/// One message per step that cannot be built.
pub fn build(
    spec: &Spec,
    registry: &Registry,
    cx: &BuildContext,
    min_gate: Option<&MinGate>,
) -> Result<Runnable, Vec<String>> {
    let production = cx.target.as_ref().is_some_and(|t| t.production);
    let role = |kind: &str| registry.get(kind).map(|k| k.role());
    let gate_with = |kind: &str, with: &Value| -> Value {
        match (min_gate, registry.get(kind)) {
            (Some(min), Some(k)) => k.harden(with, min),
            _ => with.clone(),
        }
    };
    // Every duration of the spec passes in the run's time (the sim's time
    // scale); what real calls need (an API request, a probe) keeps a floor.
    let reach = crate::reach::Reach::of(cx);
    let limits = |t: Option<&String>, a: Option<&String>, r: Option<&Value>| {
        let mut l = spec.limits(t, a, r);
        if reach.time_scale() != 1.0 {
            let floor = Duration::from_secs(2);
            l.attempt_timeout = l.attempt_timeout.map(|d| reach.scaled(d).max(floor.min(d)));
            l.deadline = l.deadline.map(|d| reach.scaled(d).max(floor.min(d)));
            l.retry.initial = reach
                .scaled(l.retry.initial)
                .max(Duration::from_millis(10).min(l.retry.initial));
            l.retry.max = reach.scaled(l.retry.max).max(l.retry.initial);
        }
        l
    };
    let mut errors = Vec::new();
    let mut make = |id: &str, undoes: &str, kind: &str, with: &Value| -> Option<Arc<dyn Step>> {
        let cx = BuildContext {
            step: undoes.to_owned(),
            ..cx.clone()
        };
        // `{{steps.<id>.outputs.<key>}}`: built when it runs, from the
        // outputs of the steps it depends on (lint checked the references).
        if has_runtime_ref(with)
            && let Some(k) = registry.shared(kind)
        {
            return Some(Arc::new(Deferred {
                kind: k,
                with: with.clone(),
                cx,
                built: std::sync::OnceLock::new(),
            }) as Arc<dyn Step>);
        }
        match registry
            .get(kind)
            .ok_or_else(|| format!("unknown step kind `{kind}`"))
            .and_then(|k| k.build(with, &cx).map_err(|e| e.to_string()))
        {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(format!("step `{id}`: {e}"));
                None
            }
        }
    };
    let gates: Vec<String> = spec
        .steps
        .iter()
        .filter(|s| role(&s.kind) == Some(Role::Gate))
        .map(|s| s.id.clone())
        .collect();
    // Gates evaluated again, live, before each production change (`recheck`, default true).
    let rechecks: Vec<Arc<dyn Step>> = spec
        .steps
        .iter()
        .filter(|s| role(&s.kind) == Some(Role::Gate))
        .filter(|s| s.with.get("recheck").and_then(Value::as_bool).unwrap_or(true))
        .filter_map(|s| {
            let cx = BuildContext {
                step: s.id.clone(),
                ..cx.clone()
            };
            registry
                .get(&s.kind)
                .and_then(|k| k.build(&gate_with(&s.kind, &s.with), &cx).ok())
        })
        .collect();
    let mut steps = Vec::new();
    let mut unguardable = Vec::new();
    for s in &spec.steps {
        let step = make(&s.id, &s.id, &s.kind, &gate_with(&s.kind, &s.with));
        let comp = s.compensate.as_ref().and_then(|c| {
            make(&format!("{} (compensation)", s.id), &s.id, &c.kind, &c.with).map(|b| {
                (
                    b,
                    limits(c.timeout.as_ref(), c.attempt_timeout.as_ref(), c.retry.as_ref()),
                )
            })
        });
        let step = match (&spec.model, step) {
            (Some(m), Some(inner)) if production && role(&s.kind) == Some(Role::Promote) => {
                Some(Arc::new(Guarded {
                    gates: gates.clone(),
                    model: m.name.clone(),
                    version: m.version.clone(),
                    inner,
                    recheck: rechecks.clone(),
                }) as Arc<dyn Step>)
            }
            (None, Some(_)) if production && role(&s.kind) == Some(Role::Promote) => {
                unguardable.push(format!(
                    "step `{}`: a production change needs the spec's `model` (its gate is checked against it)",
                    s.id
                ));
                None
            }
            (_, step) => step,
        };
        if let Some(step) = step {
            let own = limits(s.timeout.as_ref(), s.attempt_timeout.as_ref(), s.retry.as_ref());
            // Without an explicit `compensate`, the step's own compensation
            // (a no-op for kinds that change nothing) undoes it.
            let compensation = comp.or_else(|| Some((step.clone(), own)));
            steps.push(Node {
                id: s.id.clone(),
                needs: s.needs.clone(),
                step,
                limits: own,
                compensation,
                continue_on_failure: s.continue_on_failure
                    || registry
                        .get(&s.kind)
                        .is_some_and(|k| k.tolerates_failure(&s.with)),
            });
        }
    }
    let mut handlers = Vec::new();
    for h in &spec.on_failure {
        if let Some(step) = make(&h.id, &h.id, &h.kind, &h.with) {
            handlers.push(Node {
                id: h.id.clone(),
                needs: Vec::new(),
                step,
                limits: limits(h.timeout.as_ref(), h.attempt_timeout.as_ref(), h.retry.as_ref()),
                compensation: None,
                continue_on_failure: true,
            });
        }
    }
    errors.extend(unguardable);
    if errors.is_empty() {
        Ok(Runnable { steps, handlers })
    } else {
        Err(errors)
    }
}

/// The ids of completed steps to keep on resume: every completed step but
/// the gates, which run again (an approval revoked, or a journal edited,
/// while the run was down must not carry it on). A run that had already
/// failed keeps them all (it only compensates).
#[must_use]
pub fn kept_on_resume(spec: &Spec, registry: &Registry, completed: &[String], failed: bool) -> Vec<String> {
    completed
        .iter()
        .filter(|id| {
            failed
                || !spec
                    .steps
                    .iter()
                    .any(|s| &s.id == *id && registry.get(&s.kind).is_some_and(|k| k.role() == Role::Gate))
        })
        .cloned()
        .collect()
}

/// On resume: the gates run again, before anything left to do (completed
/// steps stay completed: the executor never releases them again).
pub fn rewire_for_resume(steps: &mut [Node], spec: &Spec, registry: &Registry, completed: &[String]) {
    let done = |id: &str| completed.iter().any(|c| c == id);
    let gates: Vec<String> = spec
        .steps
        .iter()
        .filter(|s| registry.get(&s.kind).is_some_and(|k| k.role() == Role::Gate) && !done(&s.id))
        .map(|s| s.id.clone())
        .collect();
    if completed.is_empty() {
        return;
    }
    for n in steps {
        if !done(&n.id) && !gates.contains(&n.id) {
            for g in &gates {
                if !n.needs.contains(g) {
                    n.needs.push(g.clone());
                }
            }
        }
    }
}

/// Whether `v` holds a runtime reference `{{steps.<id>.outputs.<key>}}`.
fn has_runtime_ref(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("{{steps.") || s.contains("{{ steps."),
        Value::Array(a) => a.iter().any(has_runtime_ref),
        Value::Object(m) => m.values().any(has_runtime_ref),
        _ => false,
    }
}

/// `v` with every `{{steps.<id>.outputs.<key>}}` replaced by that output: a
/// string that is exactly one reference takes the output's own type, one
/// with text around it the output as text.
///
/// # Errors
/// A reference to an output the step did not produce.
pub fn resolve_runtime_refs(
    v: &Value,
    outputs: &std::collections::HashMap<String, serde_json::Map<String, Value>>,
) -> Result<Value, String> {
    let lookup = |inner: &str| -> Result<Value, String> {
        let path = inner.trim();
        let mut parts = path.strip_prefix("steps.").unwrap_or(path).splitn(3, '.');
        let (Some(step), Some("outputs"), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("`{{{{{path}}}}}` is not a step output reference"));
        };
        outputs
            .get(step)
            .and_then(|o| o.get(key))
            .cloned()
            .ok_or_else(|| format!("step `{step}` has no output `{key}` (yet)"))
    };
    Ok(match v {
        Value::String(s) if s.contains("{{") => {
            let t = s.trim();
            if let Some(inner) = t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}"))
                && !inner.contains("{{")
                && inner.trim().starts_with("steps.")
            {
                return lookup(inner);
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                let Some(len) = rest[start..].find("}}") else {
                    break;
                };
                let inner = &rest[start + 2..start + len];
                out.push_str(&rest[..start]);
                if inner.trim().starts_with("steps.") {
                    match lookup(inner)? {
                        Value::String(x) => out.push_str(&x),
                        other => out.push_str(&other.to_string()),
                    }
                } else {
                    out.push_str(&rest[start..start + len + 2]);
                }
                rest = &rest[start + len + 2..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| resolve_runtime_refs(x, outputs))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| Ok((k.clone(), resolve_runtime_refs(x, outputs)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// A step whose `with` refers to outputs of earlier steps: built on its
/// first run, from the outputs then known, and the same built step after.
struct Deferred {
    kind: Arc<dyn rollwright_engine::StepKind>,
    with: Value,
    cx: BuildContext,
    built: std::sync::OnceLock<Arc<dyn Step>>,
}

impl Deferred {
    fn step(&self, cx: &StepContext) -> Result<Arc<dyn Step>, StepError> {
        if let Some(s) = self.built.get() {
            return Ok(s.clone());
        }
        let outputs = cx
            .outputs
            .read()
            .map_err(|_| StepError::failed("the run's outputs are unreadable"))?
            .clone();
        let with = resolve_runtime_refs(&self.with, &outputs).map_err(StepError::failed)?;
        let step = self
            .kind
            .build(&with, &self.cx)
            .map_err(|e| StepError::failed(e.to_string()))?;
        Ok(self.built.get_or_init(|| step).clone())
    }
}

impl Deferred {
    /// Whether the step recorded anything (it is about to change, or has
    /// changed, the target).
    fn recorded(&self, cx: &StepContext) -> bool {
        cx.records
            .read()
            .map_or(true, |r| r.iter().any(|m| m.step == cx.owner))
    }
}

impl Step for Deferred {
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move { self.step(cx)?.run(cx).await })
    }
    fn compensate<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            match self.step(cx) {
                Ok(s) => s.compensate(cx).await,
                // Never built, here or (by its records) in an earlier
                // process of this run: it changed nothing to undo.
                Err(_) if !self.recorded(cx) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
    fn settle<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            match self.step(cx) {
                Ok(s) => s.settle(cx).await,
                Err(_) if !self.recorded(cx) => Ok(Progress::Done {
                    outputs: serde_json::Map::new(),
                }),
                Err(e) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(env: &str) -> Spec {
        let v = serde_json::json!({
            "apiVersion": "rollwright.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "r"},
            "model": {"name": "fraud", "version": "7"},
            "target": {"context": "c", "namespace": "ml", "environment": env},
            "steps": [
                {"id": "gate", "type": "gate-check", "with": {"approvals": 1}},
                {"id": "change", "type": "exec", "needs": ["gate"], "with": {"command": ["true"]}},
                {"id": "look", "type": "exec", "needs": ["change"], "with": {"command": ["true"]}, "compensate": {"type": "exec", "with": {"command": ["true"]}}}
            ]
        });
        serde_json::from_value(v).unwrap()
    }

    fn cx(production: bool) -> BuildContext {
        let mut cx = BuildContext::detached(std::path::Path::new("."));
        cx.model = Some(("file".into(), "fraud".into(), "7".into()));
        cx.target = Some(rollwright_engine::registry::TargetInfo {
            context: "c".into(),
            namespace: "ml".into(),
            production,
            gitops: None,
        });
        cx
    }

    /// The guard wraps every change when the *effective* environment is
    /// production, whatever the spec declares; compensations stay unwrapped.
    #[tokio::test]
    async fn production_changes_are_guarded_by_the_effective_environment() {
        let registry = crate::registry();
        for (declared, effective) in [("staging", true), ("production", true), ("staging", false)] {
            let r = build(&spec(declared), &registry, &cx(effective), None).unwrap();
            let change = r.steps.iter().find(|n| n.id == "change").unwrap();
            let e = change
                .step
                .run(&rollwright_engine::exec::StepContext::detached("change"))
                .await;
            assert_eq!(
                e.is_err(),
                effective,
                "{declared} reached as production={effective}: guarded iff production"
            );
            if let Err(e) = e {
                assert!(
                    e.message
                        .contains("no gate-check passed in this run for fraud version 7"),
                    "{e}"
                );
            }
            let look = r.steps.iter().find(|n| n.id == "look").unwrap();
            let (comp, _) = look.compensation.as_ref().unwrap();
            let undo = comp
                .compensate(&rollwright_engine::exec::StepContext::detached("look"))
                .await;
            assert!(undo.is_ok(), "a compensation is never guarded");
        }
    }

    #[test]
    fn the_policy_minimum_strengthens_the_gate_and_gates_rerun_on_resume() {
        let registry = crate::registry();
        let min = MinGate {
            approvals: 3,
            ..MinGate::default()
        };
        let s = spec("production");
        assert!(build(&s, &registry, &cx(true), Some(&min)).is_ok());
        let kept = kept_on_resume(&s, &registry, &["gate".into(), "change".into()], false);
        assert_eq!(kept, ["change"]);
        assert_eq!(
            kept_on_resume(&s, &registry, &["gate".into(), "change".into()], true),
            ["gate", "change"],
            "a failed run only compensates"
        );
        let mut r = build(&s, &registry, &cx(true), None).unwrap();
        rewire_for_resume(&mut r.steps, &s, &registry, &kept);
        let look = r.steps.iter().find(|n| n.id == "look").unwrap();
        assert!(
            look.needs.contains(&"gate".to_owned()),
            "what is left waits for the gate again"
        );
        let change = r.steps.iter().find(|n| n.id == "change").unwrap();
        assert_eq!(change.needs, ["gate"]);
    }
}
