//! Step kinds for exercising the executor without a cluster: `sleep` and
//! `fail`. They are registered only by [`crate::registry_with_test_steps`]
//! (the CLI enables it with `ROLLWRIGHT_TEST_STEPS=1`), never in the
//! published schema.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rollwright_engine::exec::{BoxFuture, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::{BuildContext, Finding, Role, StepKind};
use serde_json::{Map, Value};
use tokio::time::Instant;

/// `sleep {duration}`: waits (as `Progress::Wait`) for a duration.
pub struct Sleep;

const SLEEP_SCHEMA: &str = r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "sleep", "type": "object", "additionalProperties": false, "required": ["duration"], "properties": {"duration": {"$ref": "../common.schema.json#/$defs/duration"}}}"#;
const FAIL_SCHEMA: &str = r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "fail", "type": "object", "additionalProperties": false, "properties": {"times": {"type": "integer", "minimum": 0}, "class": {"enum": ["transient", "rejected", "failed"]}, "message": {"type": "string"}}}"#;

impl StepKind for Sleep {
    fn name(&self) -> &'static str {
        "sleep"
    }
    fn summary(&self) -> &'static str {
        "test step: waits for a duration"
    }
    fn schema(&self) -> &'static str {
        SLEEP_SCHEMA
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn check(&self, _with: &Value) -> Vec<Finding> {
        Vec::new()
    }
    fn build(&self, with: &Value, _cx: &BuildContext) -> Result<Arc<dyn Step>, String> {
        let d = with.get("duration").and_then(Value::as_str).unwrap_or("0s");
        let d = rollwright_engine::duration::parse(d).map_err(|e| e.to_string())?;
        Ok(Arc::new(SleepStep {
            duration: d,
            started: std::sync::Mutex::new(None),
        }))
    }
}

struct SleepStep {
    duration: Duration,
    started: std::sync::Mutex<Option<Instant>>,
}

impl Step for SleepStep {
    fn run<'a>(&'a self, _cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            let started = *self
                .started
                .lock()
                .map_err(|_| StepError::failed("poisoned"))?
                .get_or_insert_with(Instant::now);
            let left = self.duration.saturating_sub(started.elapsed());
            Ok(if left.is_zero() {
                Progress::Done { outputs: Map::new() }
            } else {
                Progress::Wait {
                    after: left,
                    reason: "sleeping".into(),
                }
            })
        })
    }
}

/// `fail {times, class, message}`: fails the first `times` calls (default:
/// always), then succeeds.
pub struct Fail;

impl StepKind for Fail {
    fn name(&self) -> &'static str {
        "fail"
    }
    fn summary(&self) -> &'static str {
        "test step: fails the first N calls"
    }
    fn schema(&self) -> &'static str {
        FAIL_SCHEMA
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn check(&self, _with: &Value) -> Vec<Finding> {
        Vec::new()
    }
    fn build(&self, with: &Value, _cx: &BuildContext) -> Result<Arc<dyn Step>, String> {
        Ok(Arc::new(FailStep {
            times: with
                .get("times")
                .and_then(Value::as_u64)
                .map_or(u32::MAX, |t| u32::try_from(t).unwrap_or(u32::MAX)),
            class: with
                .get("class")
                .and_then(Value::as_str)
                .unwrap_or("failed")
                .to_owned(),
            message: with
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("told to fail")
                .to_owned(),
            calls: AtomicU32::new(0),
        }))
    }
}

struct FailStep {
    times: u32,
    class: String,
    message: String,
    calls: AtomicU32,
}

impl Step for FailStep {
    fn run<'a>(&'a self, _cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            if self.calls.fetch_add(1, Ordering::SeqCst) >= self.times {
                return Ok(Progress::Done { outputs: Map::new() });
            }
            Err(match self.class.as_str() {
                "transient" => StepError::transient(self.message.clone()),
                "rejected" => StepError::rejected(self.message.clone()),
                _ => StepError::failed(self.message.clone()),
            })
        })
    }
}
