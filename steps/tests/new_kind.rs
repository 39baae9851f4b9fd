//! Adding a step kind is one module plus one registration line. The `wait`
//! kind below exists only in this file — its config type, schema, role,
//! semantic check and step — and is registered beside the shipped kinds
//! with one `.with(Wait)`. Nothing else is touched: the engine lints it
//! (schema and semantic findings, located in the file), plans it, and the
//! runnable builder and executor run it, with outputs later steps can use.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rollwright_engine::Code;
use rollwright_engine::exec::{self, BoxFuture, FinalState, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::{BuildContext, BuildError, Finding, Role, StepKind};
use rollwright_engine::spec::Spec;
use rollwright_engine::yaml::Limits;
use serde::Deserialize;
use serde_json::{Map, Value, json};

// ---- the whole kind -------------------------------------------------------

/// `with` of a `wait` step.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitConfig {
    /// How long, in milliseconds (`20ms`).
    #[serde(rename = "for")]
    time: String,
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "wait",
  "description": "Waits a while.",
  "type": "object",
  "additionalProperties": false,
  "required": ["for"],
  "properties": {"for": {"description": "How long (`20ms`).", "type": "string", "pattern": "^[0-9]+ms$"}}
}"#;

fn millis(with: &Value) -> Option<u64> {
    let c: WaitConfig = serde_json::from_value(with.clone()).ok()?;
    c.time.strip_suffix("ms")?.parse().ok()
}

struct Wait;

impl StepKind for Wait {
    fn name(&self) -> &'static str {
        "wait"
    }
    fn summary(&self) -> &'static str {
        "waits a while"
    }
    fn schema(&self) -> &'static str {
        SCHEMA
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["waited-ms"]
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        match millis(with) {
            Some(ms) if ms > 1000 => vec![Finding::new(
                "/for",
                Code::InvalidDuration,
                format!("a wait of {ms}ms is longer than 1000ms"),
            )],
            _ => Vec::new(),
        }
    }
    fn build(&self, with: &Value, _cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        let ms = millis(with).ok_or_else(|| BuildError::Config("`for` must be milliseconds".into()))?;
        Ok(Arc::new(WaitStep(ms)))
    }
}

struct WaitStep(u64);

impl Step for WaitStep {
    fn run<'a>(&'a self, _cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(self.0)).await;
            let mut outputs = Map::new();
            outputs.insert("waited-ms".into(), json!(self.0));
            Ok(Progress::Done { outputs })
        })
    }
}

// ---- its one registration line --------------------------------------------

fn registry() -> rollwright_engine::Registry {
    rollwright_steps::registry().with(Wait)
}

// ---- what the rest of the system does with it -------------------------------

const SPEC: &str = "apiVersion: rollwright.dev/v1alpha1
kind: Rollout
metadata: {name: waits}
model: {name: m, version: \"1\"}
target: {context: c, namespace: n, environment: dev}
steps:
  - {id: pause, type: wait, with: {for: 20ms}}
  - {id: after, type: exec, needs: [pause], with: {command: [test, \"waited={{steps.pause.outputs.waited-ms}}\", \"=\", \"waited=20\"]}}
";

#[test]
fn a_new_kind_lints_with_located_findings() {
    let linter = rollwright_engine::Linter::new(registry(), Limits::default()).unwrap();
    let clean = linter.lint(Path::new("waits.yaml"), SPEC.as_bytes(), false);
    assert!(clean.diagnostics.is_empty(), "{:?}", clean.diagnostics);
    for (bad, code, line) in [
        // Its schema: a pattern, at the value.
        ("{for: 2s}", Code::SchemaValue, 7),
        // Its semantic check, at the field.
        ("{for: 5000ms}", Code::InvalidDuration, 7),
        // An unknown field.
        ("{for: 20ms, until: never}", Code::SchemaUnknownField, 7),
    ] {
        let text = SPEC.replace("{for: 20ms}", bad);
        let lint = linter.lint(Path::new("waits.yaml"), text.as_bytes(), false);
        let d = lint
            .diagnostics
            .iter()
            .find(|d| d.code == code)
            .unwrap_or_else(|| panic!("{bad}: {:?}", lint.diagnostics));
        assert_eq!(d.span.start.line, line, "{bad}: {d:?}");
    }
    // The shipped binary does not know it: an unknown type there.
    let shipped = rollwright_engine::Linter::new(rollwright_steps::registry(), Limits::default()).unwrap();
    let lint = shipped.lint(Path::new("waits.yaml"), SPEC.as_bytes(), false);
    assert!(!lint.diagnostics.is_empty());
}

#[test]
fn a_new_kind_plans_and_runs() {
    let linter = rollwright_engine::Linter::new(registry(), Limits::default()).unwrap();
    let (plan, _) = linter
        .plan(Path::new("waits.yaml"), SPEC.as_bytes(), &[])
        .unwrap();
    let kinds: Vec<&str> = plan.steps.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["wait", "exec"]);

    let doc = rollwright_engine::yaml::load_str(SPEC, &Limits::default()).unwrap();
    let spec: Spec = serde_json::from_value(doc.value).unwrap();
    let mut cx = BuildContext::detached(Path::new("."));
    cx.model = Some(("file".into(), "m".into(), "1".into()));
    let registry = registry();
    let runnable = rollwright_steps::runnable::build(&spec, &registry, &cx, None).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sink: exec::Sink = Arc::new(|_| Ok(()));
    let outcome = rt.block_on(exec::execute(
        runnable.steps,
        runnable.handlers,
        exec::Options::default(),
        sink,
    ));
    assert_eq!(outcome.state, FinalState::Succeeded, "{:?}", outcome.failure);
    assert_eq!(outcome.outputs["pause"]["waited-ms"], 20);
    assert_eq!(outcome.completed, ["pause", "after"]);
}
