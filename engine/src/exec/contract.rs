//! The contract between the executor and a step: what a step returns
//! ([`Progress`], [`StepError`]), what it sees of the run ([`StepContext`],
//! its records) and the [`Step`] trait.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{Event, Sink};

/// A boxed, sendable future (steps are trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a step measured while it ran: judged metrics, a traffic split. The
/// executor passes it on (display, journal, report) and decides nothing by
/// it; what a step concludes from it is its `Progress` or `StepError`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Observation {
    /// Metrics judged against their thresholds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Measurement>,
    /// The traffic split the step verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// How far a timed step is: (elapsed, total) in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<(u64, u64)>,
}

/// One metric's value against its threshold at one evaluation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Measurement {
    /// The metric's name in the spec.
    pub name: String,
    /// The canary's value, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The baseline it was compared with (the stable version's value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// The threshold, as a person reads it (`<= 0.05`, `<= stable + 0.005`).
    pub threshold: String,
    /// The highest value that passed at this evaluation (the tightest of
    /// `max` and stable + `max-increase-over-stable`), for charts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<f64>,
    /// The lowest value that passed (`min`), for charts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<f64>,
    /// `pass`, `breach`, `no-data` or `inconclusive`.
    pub verdict: String,
    /// Breaches counted towards the limit so far.
    pub breaches: u32,
    /// Breaches that fail the step.
    pub limit: u32,
}

impl Measurement {
    /// The value as people read it, with the baseline it was compared
    /// with: `0.250 (stable 0.000)`, or `no data`.
    #[must_use]
    pub fn value_text(&self) -> String {
        let v = self
            .value
            .map_or_else(|| "no data".to_owned(), crate::words::number);
        match self.baseline {
            Some(b) => format!("{v} (stable {})", crate::words::number(b)),
            None => v,
        }
    }
}

/// A traffic split: what share the canary gets.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Split {
    /// The canary's share, in percent.
    pub canary_percent: f64,
    /// The object that routes it.
    pub route: String,
}

/// What a run of a step achieved.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Finished, with outputs later steps may reference.
    Done {
        /// `{{steps.<id>.outputs.<key>}}` values.
        outputs: Map<String, Value>,
    },
    /// Not finished: call `run` again after `after` (the step never sleeps).
    Wait {
        /// When to look again.
        after: Duration,
        /// What it waits for, for the display.
        reason: String,
    },
}

/// How an error should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying (a 503, a timeout, a conflict).
    Transient,
    /// A domain "no" (gate closed, SLO breached): never retried.
    Rejected,
    /// Broken for good (bad config, 4xx): never retried.
    Failed,
}

/// A step's error, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// Retry or not.
    pub class: ErrorClass,
    /// What happened, for people.
    pub message: String,
}

impl StepError {
    /// A transient error.
    pub fn transient(message: impl Into<String>) -> Self {
        StepError {
            class: ErrorClass::Transient,
            message: message.into(),
        }
    }
    /// A rejection.
    pub fn rejected(message: impl Into<String>) -> Self {
        StepError {
            class: ErrorClass::Rejected,
            message: message.into(),
        }
    }
    /// A permanent failure.
    pub fn failed(message: impl Into<String>) -> Self {
        StepError {
            class: ErrorClass::Failed,
            message: message.into(),
        }
    }
}

/// What a step sees of the run.
#[derive(Clone)]
pub struct StepContext {
    /// The step's id.
    pub step_id: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Outputs of the steps completed so far (shared, read-only for steps).
    pub outputs: Outputs,
    /// Whose records this context writes and reads first: the step's id, or
    /// for a compensation the id of the step it undoes.
    pub owner: String,
    /// What steps recorded before changing the target (shared; journaled).
    pub records: Records,
    /// Where records go to be made durable (the journal).
    pub sink: Option<Sink>,
}

impl std::fmt::Debug for StepContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepContext")
            .field("step_id", &self.step_id)
            .field("attempt", &self.attempt)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// Outputs of completed steps, shared by every running step.
pub type Outputs = Arc<std::sync::RwLock<HashMap<String, Map<String, Value>>>>;

/// Records of every step, in the order they were made.
pub type Records = Arc<std::sync::RwLock<Vec<Memo>>>;

/// A fact a step recorded (durably, in the journal) before changing the
/// target, e.g. the object it is about to replace: what its compensation
/// and a rollback restore, also after a crash and `resume`.
#[derive(Debug, Clone, PartialEq)]
pub struct Memo {
    /// The step that recorded it.
    pub step: String,
    /// What it is (`objects`, `traffic`, …).
    pub key: String,
    /// The value.
    pub value: Value,
}

impl StepContext {
    /// A context for `step` with nothing shared (tests, one-off checks).
    #[must_use]
    pub fn detached(step: &str) -> Self {
        StepContext {
            step_id: step.to_owned(),
            attempt: 1,
            outputs: Outputs::default(),
            owner: step.to_owned(),
            records: Records::default(),
            sink: None,
        }
    }

    /// An output of a completed step (`{{steps.<step>.outputs.<key>}}`).
    #[must_use]
    pub fn output(&self, step: &str, key: &str) -> Option<Value> {
        self.outputs.read().ok()?.get(step)?.get(key).cloned()
    }

    /// Records `value` under `key` for the owner; returns once the sink
    /// (the journal) has it durably.
    ///
    /// # Errors
    /// The record could not be made durable: the step must not change what
    /// it was about to change (a permanent error; the run stops and
    /// compensates with what it had recorded before).
    pub fn remember(&self, key: &str, value: Value) -> Result<(), StepError> {
        let memo = Memo {
            step: self.owner.clone(),
            key: key.to_owned(),
            value,
        };
        if let Some(sink) = &self.sink {
            sink(&Event::Recorded {
                step: memo.step.clone(),
                key: memo.key.clone(),
                value: memo.value.clone(),
            })
            .map_err(|e| {
                StepError::failed(format!(
                    "the journal could not record `{key}` ({e}); nothing was changed"
                ))
            })?;
        }
        if let Ok(mut r) = self.records.write() {
            r.push(memo);
        }
        Ok(())
    }

    /// Reports what the step measured (display, journal, report). Best
    /// effort: an observation that cannot be journaled changes nothing.
    pub fn observe(&self, observation: Observation) {
        if let Some(sink) = &self.sink {
            let _ = sink(&Event::Observed {
                step: self.step_id.clone(),
                observation,
            });
        }
    }

    /// The owner's latest record under `key`.
    #[must_use]
    pub fn recalled(&self, key: &str) -> Option<Value> {
        self.records
            .read()
            .ok()?
            .iter()
            .rev()
            .find(|m| m.step == self.owner && m.key == key)
            .map(|m| m.value.clone())
    }

    /// Every record of the run, oldest first.
    #[must_use]
    pub fn all_records(&self) -> Vec<Memo> {
        self.records.read().map(|r| r.clone()).unwrap_or_default()
    }
}

/// A runnable step.
///
/// Contract:
/// - `run` is idempotent: after a crash or a timeout it may be called again
///   for an attempt whose effect already happened, and must converge.
/// - `run` never sleeps to wait for the world: it returns
///   [`Progress::Wait`].
/// - `compensate` undoes the step. Expected flow: called once, after `run`
///   completed, when a later step failed. Guarantees: idempotent; tolerates a
///   `run` that never started or failed halfway (it restores what was
///   recorded, and does nothing when nothing was). Caveats: every `.await` is
///   a cancellation point.
pub trait Step: Send + Sync {
    /// Makes progress.
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>>;
    /// Undoes the effect of `run`.
    fn compensate<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        let _ = cx;
        Box::pin(async { Ok(()) })
    }
    /// After `compensate` succeeded: waits (by returning
    /// [`Progress::Wait`]) until the restored state is verified, e.g. the
    /// stable version Ready again. Default: nothing to wait for.
    fn settle<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        let _ = cx;
        Box::pin(async { Ok(Progress::Done { outputs: Map::new() }) })
    }
}
