//! The executor core: runs a DAG of steps with bounded concurrency,
//! per-attempt timeouts, per-step and per-run deadlines, retries with
//! backoff on transient errors only, and compensation in reverse completion
//! order when the run fails.
//!
//! Why steps return [`Progress::Wait`] instead of sleeping: the caller owns
//! the clock. The CLI sleeps; a future Kubernetes controller requeues. Long
//! steps (hold, wait-ready, approval) therefore never block inside `run`, and
//! one executor serves both. Every `.await` of a step is a cancellation
//! point: when the run fails, running steps are dropped at their next await.
//!
//! This module knows no journal and no display: it reports [`Event`]s to a
//! sink, which the journal, the progress display and the report consume.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

use crate::retry::RetryPolicy;

/// A boxed, sendable future (steps are trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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

/// Limits of one step (or compensation, or handler).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Deadline of each call to `run`.
    pub attempt_timeout: Option<Duration>,
    /// Deadline of the whole step, waits and retries included.
    pub deadline: Option<Duration>,
    /// Retries on transient errors.
    pub retry: RetryPolicy,
}

impl Limits {
    /// The limits of a step, compensation or handler of `spec`: its own
    /// `timeout`, `attempt-timeout` and `retry`, else the spec's defaults.
    #[must_use]
    pub fn of(
        spec: &crate::spec::Spec,
        timeout: Option<&String>,
        attempt: Option<&String>,
        retry: Option<&Value>,
    ) -> Self {
        let parse = |t: Option<&String>| t.and_then(|t| crate::duration::parse(t).ok());
        let d = &spec.defaults;
        Limits {
            attempt_timeout: parse(attempt).or_else(|| parse(d.attempt_timeout.as_ref())),
            deadline: parse(timeout).or_else(|| parse(d.timeout.as_ref())),
            retry: retry
                .or(d.retry.as_ref())
                .and_then(|r| RetryPolicy::from_value(r).ok())
                .unwrap_or_default(),
        }
    }
}

/// A step of the plan, ready to execute.
pub struct Node {
    /// Id.
    pub id: String,
    /// Dependencies.
    pub needs: Vec<String>,
    /// The step.
    pub step: Arc<dyn Step>,
    /// Its limits.
    pub limits: Limits,
    /// Its compensation, with its own limits.
    pub compensation: Option<(Arc<dyn Step>, Limits)>,
    /// A failure does not fail the run.
    pub continue_on_failure: bool,
}

/// Executor settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Steps running at once.
    pub concurrency: usize,
    /// Deadline of the whole run (compensation excluded).
    pub run_deadline: Option<Duration>,
    /// Seed of the backoff jitter (tests pin it; `None` disables jitter).
    pub jitter_seed: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            concurrency: 8,
            run_deadline: None,
            jitter_seed: Some(0x5EED),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalState {
    /// Every step succeeded (or failed with `continue-on-failure`).
    Succeeded,
    /// A step failed and every compensation succeeded.
    RolledBack,
    /// A step failed and a compensation failed too: a human must look.
    RollbackFailed,
}

/// What happened, for the journal, the display and the report.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An attempt started.
    Started { step: String, attempt: u32 },
    /// The step asked to be called again later.
    Waiting {
        step: String,
        after: Duration,
        reason: String,
    },
    /// A transient error; the next attempt follows after `delay`.
    Retrying {
        step: String,
        attempt: u32,
        delay: Duration,
        error: String,
    },
    /// Done.
    Succeeded {
        step: String,
        outputs: Map<String, Value>,
    },
    /// Failed for good.
    Failed {
        step: String,
        error: String,
        tolerated: bool,
    },
    /// Stopped because the run failed elsewhere.
    Cancelled { step: String },
    /// A step recorded what it needs to undo itself (journaled durably
    /// before the step changes anything).
    Recorded { step: String, key: String, value: Value },
    /// A compensation ran.
    Compensated { step: String, error: Option<String> },
    /// An on-failure handler ran.
    Handled { handler: String, error: Option<String> },
    /// The end.
    Finished { state: FinalState },
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Final state.
    pub state: FinalState,
    /// The error that failed the run, if any.
    pub failure: Option<(String, String)>,
    /// Steps in completion order.
    pub completed: Vec<String>,
    /// Compensations that failed, with their errors: what a human must fix.
    pub left_over: Vec<(String, String)>,
    /// Outputs of completed steps.
    pub outputs: HashMap<String, Map<String, Value>>,
}

/// Outputs, or the final error of a step.
type StepResult = Result<Map<String, Value>, String>;

/// Receives events. For [`Event::Recorded`] it answers whether the record
/// is durable (a journal that cannot be written says why); the executor
/// ignores the answer for every other event.
pub type Sink = Arc<dyn Fn(&Event) -> Result<(), String> + Send + Sync>;

struct Jitter(Option<u64>);

impl Jitter {
    /// Equal jitter: half the delay fixed, half random.
    fn apply(&mut self, d: Duration, enabled: bool) -> Duration {
        let Some(state) = self.0.as_mut().filter(|_| enabled) else {
            return d;
        };
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let half = d / 2;
        let frac = (*state % 1_000) as f64 / 1_000.0;
        half + half.mul_f64(frac)
    }
}

/// Runs one step to completion: attempts, waits, retries, deadlines.
/// What running steps share: outputs and records.
#[derive(Clone, Default)]
struct Shared {
    outputs: Outputs,
    records: Records,
}

async fn drive(
    id: String,
    owner: String,
    step: Arc<dyn Step>,
    limits: Limits,
    shared: Shared,
    sink: Sink,
    mut jitter: Jitter,
) -> Result<Map<String, Value>, String> {
    // What the step last waited for: named when its deadline passes.
    let waiting_for: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let body = async {
        let mut attempt = 1u32;
        loop {
            let _ = sink(&Event::Started {
                step: id.clone(),
                attempt,
            });
            let cx = StepContext {
                step_id: id.clone(),
                attempt,
                outputs: shared.outputs.clone(),
                owner: owner.clone(),
                records: shared.records.clone(),
                sink: Some(sink.clone()),
            };
            let result = match limits.attempt_timeout {
                Some(t) => match timeout(t, step.run(&cx)).await {
                    Ok(r) => r,
                    Err(_) => Err(StepError::transient(format!(
                        "attempt timed out after {}",
                        crate::duration::Display(t)
                    ))),
                },
                None => step.run(&cx).await,
            };
            match result {
                Ok(Progress::Done { outputs }) => return Ok(outputs),
                Ok(Progress::Wait { after, reason }) => {
                    if let Ok(mut w) = waiting_for.lock() {
                        *w = Some(reason.clone());
                    }
                    let _ = sink(&Event::Waiting {
                        step: id.clone(),
                        after,
                        reason,
                    });
                    sleep(after).await;
                    // Progress was made: the retry budget counts consecutive
                    // failures, so a long wait survives occasional 503s.
                    attempt = 1;
                }
                Err(e) if e.class == ErrorClass::Transient && attempt < limits.retry.attempts => {
                    let base = limits.retry.delay_after(attempt);
                    let delay = jitter.apply(base, limits.retry.jitter);
                    let _ = sink(&Event::Retrying {
                        step: id.clone(),
                        attempt,
                        delay,
                        error: e.message.clone(),
                    });
                    sleep(delay).await;
                    attempt += 1;
                }
                Err(e) if e.class == ErrorClass::Transient && attempt > 1 => {
                    return Err(format!("gave up after {attempt} attempts: {}", e.message));
                }
                Err(e) => return Err(e.message),
            }
        }
    };
    match limits.deadline {
        Some(d) => {
            let r = timeout(d, body).await;
            r.unwrap_or_else(|_| {
                let last = waiting_for.lock().ok().and_then(|mut w| w.take());
                Err(match last {
                    Some(why) => format!(
                        "step deadline of {} exceeded, still waiting: {why}",
                        crate::duration::Display(d)
                    ),
                    None => format!("step deadline of {} exceeded", crate::duration::Display(d)),
                })
            })
        }
        None => body.await,
    }
}

/// Where a resumed run stands, as read from its journal.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// Steps completed before, in completion order, with their outputs: not run again.
    pub completed: Vec<(String, Map<String, Value>)>,
    /// Compensations already done: not run again.
    pub compensated: Vec<String>,
    /// The failure that had already ended the run, if any: go straight to compensation.
    pub failed: Option<(String, String)>,
    /// Steps that started but neither completed nor were compensated, in
    /// start order: compensated too (they may have changed the target halfway).
    pub started: Vec<String>,
    /// Records made so far, oldest first.
    pub recorded: Vec<Memo>,
}

/// Executes `nodes` (a DAG, already validated), then compensations and
/// `handlers` if a step fails.
pub async fn execute(nodes: Vec<Node>, handlers: Vec<Node>, options: Options, sink: Sink) -> Outcome {
    execute_resumed(nodes, handlers, options, sink, Resume::default(), None).await
}

/// As [`execute`], continuing a run from what its journal recorded. When
/// `abort` resolves (with who asked and why), the run fails as if a step
/// had: running steps are cancelled and completed ones compensated.
pub async fn execute_resumed(
    nodes: Vec<Node>,
    handlers: Vec<Node>,
    options: Options,
    sink: Sink,
    resume: Resume,
    abort: Option<BoxFuture<'static, String>>,
) -> Outcome {
    let mut abort = abort.unwrap_or_else(|| Box::pin(std::future::pending()));
    let start = Instant::now();
    let index: HashMap<String, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
    let mut done: HashSet<usize> = HashSet::new();
    let mut started: HashSet<usize> = HashSet::new();
    let mut completed: Vec<String> = Vec::new();
    // Started, not completed: compensated too when the run fails.
    let mut halfway: Vec<String> = resume
        .started
        .iter()
        .filter(|s| !resume.completed.iter().any(|(c, _)| c == *s))
        .cloned()
        .collect();
    let shared = Shared::default();
    if let Ok(mut r) = shared.records.write() {
        r.clone_from(&resume.recorded);
    }
    let outputs: Outputs = shared.outputs.clone();
    for (id, out) in resume.completed {
        if let Some(&i) = index.get(&id) {
            done.insert(i);
            started.insert(i);
            completed.push(id.clone());
            if let Ok(mut o) = outputs.write() {
                o.insert(id, out);
            }
        }
    }
    // Ready queue from dependency counters: O(steps + edges) scheduling.
    let mut remaining = vec![0usize; nodes.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        // A step completed before a resume is never released again, even
        // when a step it needs (a gate, checked again) runs anew.
        if done.contains(&i) {
            continue;
        }
        let deps: HashSet<usize> = n.needs.iter().filter_map(|d| index.get(d).copied()).collect();
        for j in deps {
            if !done.contains(&j) {
                remaining[i] += 1;
                dependents[j].push(i);
            }
        }
    }
    let mut ready: std::collections::VecDeque<usize> = (0..nodes.len())
        .filter(|i| !done.contains(i) && remaining[*i] == 0)
        .collect();
    let mut release = |i: usize, ready: &mut std::collections::VecDeque<usize>| {
        for &k in &dependents[i] {
            remaining[k] -= 1;
            if remaining[k] == 0 {
                ready.push_back(k);
            }
        }
    };
    let mut failure: Option<(String, String)> = resume.failed;
    let mut running: JoinSet<(usize, StepResult)> = JoinSet::new();
    let mut seed = options.jitter_seed;
    let mut next_jitter = || {
        let j = Jitter(seed);
        seed = seed.map(|s| s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        j
    };
    let deadline = options.run_deadline.map(|d| start + d);
    loop {
        // Start what is ready, up to the concurrency bound.
        while failure.is_none() && running.len() < options.concurrency.max(1) {
            let Some(i) = ready.pop_front() else { break };
            let n = &nodes[i];
            started.insert(i);
            let (id, step, limits, sink, jitter, sh) = (
                n.id.clone(),
                n.step.clone(),
                n.limits,
                sink.clone(),
                next_jitter(),
                shared.clone(),
            );
            halfway.retain(|h| *h != id);
            halfway.push(id.clone());
            running.spawn(async move { (i, drive(id.clone(), id, step, limits, sh, sink, jitter).await) });
        }
        if running.is_empty() {
            break;
        }
        let far = start + Duration::from_secs(100 * 365 * 86_400);
        let joined = tokio::select! {
            j = running.join_next() => j,
            () = tokio::time::sleep_until(deadline.unwrap_or(far)) => {
                failure = Some(("run".into(), format!("run deadline of {} exceeded", crate::duration::Display(options.run_deadline.unwrap_or_default()))));
                None
            }
            why = &mut abort => {
                failure = Some(("abort".into(), why));
                None
            }
        };
        let Some(joined) = joined else {
            // A run-level failure (deadline, abort, a signal) is journaled
            // like a step's, so a resume goes straight to compensation.
            if let Some((step, error)) = &failure {
                let _ = sink(&Event::Failed {
                    step: step.clone(),
                    error: error.clone(),
                    tolerated: false,
                });
            }
            break;
        };
        let Ok((i, result)) = joined else { continue };
        let n = &nodes[i];
        match result {
            Ok(out) => {
                let _ = sink(&Event::Succeeded {
                    step: n.id.clone(),
                    outputs: out.clone(),
                });
                if let Ok(mut o) = outputs.write() {
                    o.insert(n.id.clone(), out);
                }
                done.insert(i);
                completed.push(n.id.clone());
                halfway.retain(|h| *h != n.id);
                release(i, &mut ready);
            }
            Err(e) => {
                let _ = sink(&Event::Failed {
                    step: n.id.clone(),
                    error: e.clone(),
                    tolerated: n.continue_on_failure,
                });
                if n.continue_on_failure {
                    done.insert(i);
                    halfway.retain(|h| *h != n.id);
                    release(i, &mut ready);
                } else if failure.is_none() {
                    failure = Some((n.id.clone(), e));
                }
            }
        }
        if failure.is_some() {
            break;
        }
    }
    // Cancel what still runs: dropped at its next await.
    if failure.is_some() {
        for (i, n) in nodes.iter().enumerate() {
            if started.contains(&i) && !done.contains(&i) && failure.as_ref().is_some_and(|f| f.0 != n.id) {
                let _ = sink(&Event::Cancelled { step: n.id.clone() });
            }
        }
    }
    running.abort_all();
    while running.join_next().await.is_some() {}

    let Some(fail) = failure else {
        let _ = sink(&Event::Finished {
            state: FinalState::Succeeded,
        });
        return Outcome {
            state: FinalState::Succeeded,
            failure: None,
            completed,
            left_over: Vec::new(),
            outputs: take_outputs(&outputs),
        };
    };
    // Compensate, newest first, each with its own limits: first the steps
    // that started but did not complete (they may have changed the target
    // halfway; their compensation restores what they recorded, or nothing),
    // then the completed ones.
    let mut left_over = Vec::new();
    let order: Vec<String> = halfway
        .iter()
        .rev()
        .chain(completed.iter().rev())
        .filter(|id| !resume.compensated.contains(*id))
        .cloned()
        .collect();
    for id in order {
        let Some(&i) = index.get(&id) else { continue };
        let n = &nodes[i];
        let Some((comp, limits)) = &n.compensation else {
            continue;
        };
        let undo = Arc::new(Undo {
            step: comp.clone(),
            compensated: std::sync::atomic::AtomicBool::new(false),
        });
        let r = drive(
            format!("{id} (undo)"),
            id.clone(),
            undo,
            *limits,
            shared.clone(),
            sink.clone(),
            next_jitter(),
        )
        .await;
        let error = r.err();
        let _ = sink(&Event::Compensated {
            step: id.clone(),
            error: error.clone(),
        });
        if let Some(e) = error {
            left_over.push((id.clone(), e));
        }
    }
    // Handlers see how the run failed as the outputs of a pseudo-step `run`.
    if let Ok(mut o) = shared.outputs.write() {
        let mut run = Map::new();
        run.insert(
            "state".into(),
            Value::from(if left_over.is_empty() {
                "rolled-back"
            } else {
                "rollback-failed"
            }),
        );
        run.insert("failed-step".into(), Value::from(fail.0.clone()));
        run.insert("error".into(), Value::from(fail.1.clone()));
        o.insert("run".into(), run);
    }
    // Handlers: each bounded, a failure never blocks the end of the run.
    for h in &handlers {
        let r = drive(
            h.id.clone(),
            h.id.clone(),
            h.step.clone(),
            h.limits,
            shared.clone(),
            sink.clone(),
            next_jitter(),
        )
        .await;
        let _ = sink(&Event::Handled {
            handler: h.id.clone(),
            error: r.err(),
        });
    }
    let state = if left_over.is_empty() {
        FinalState::RolledBack
    } else {
        FinalState::RollbackFailed
    };
    let _ = sink(&Event::Finished { state });
    Outcome {
        state,
        failure: Some(fail),
        completed,
        left_over,
        outputs: take_outputs(&outputs),
    }
}

fn take_outputs(o: &Outputs) -> HashMap<String, Map<String, Value>> {
    o.write().map(|mut m| std::mem::take(&mut *m)).unwrap_or_default()
}

/// Runs a compensation through the same retry machinery as `run`, then
/// waits for it to settle.
struct Undo {
    step: Arc<dyn Step>,
    compensated: std::sync::atomic::AtomicBool,
}

impl Step for Undo {
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        use std::sync::atomic::Ordering;
        Box::pin(async move {
            if !self.compensated.load(Ordering::SeqCst) {
                self.step.compensate(cx).await?;
                self.compensated.store(true, Ordering::SeqCst);
            }
            match self.step.settle(cx).await? {
                Progress::Done { .. } => Ok(Progress::Done { outputs: Map::new() }),
                wait => Ok(wait),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::retry::Backoff;

    /// A scripted step: each call pops the next result; records call times.
    struct Script {
        results: Mutex<Vec<Result<Progress, StepError>>>,
        calls: Mutex<Vec<Duration>>,
        start: Instant,
        compensations: Arc<Mutex<Vec<String>>>,
        id: String,
        fail_compensation: bool,
        hang: bool,
    }

    impl Step for Script {
        fn run<'a>(&'a self, _cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
            Box::pin(async move {
                self.calls.lock().unwrap().push(self.start.elapsed());
                if self.hang {
                    sleep(Duration::from_secs(3600)).await;
                }
                let mut r = self.results.lock().unwrap();
                if r.is_empty() {
                    Ok(Progress::Done { outputs: Map::new() })
                } else {
                    r.remove(0)
                }
            })
        }
        fn compensate<'a>(&'a self, _cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>> {
            Box::pin(async move {
                self.compensations.lock().unwrap().push(self.id.clone());
                if self.fail_compensation {
                    Err(StepError::failed("cannot restore"))
                } else {
                    Ok(())
                }
            })
        }
    }

    struct Bed {
        comps: Arc<Mutex<Vec<String>>>,
        events: Arc<Mutex<Vec<Event>>>,
        start: Instant,
    }

    impl Bed {
        fn new() -> Self {
            Bed {
                comps: Arc::default(),
                events: Arc::default(),
                start: Instant::now(),
            }
        }
        fn script(&self, id: &str, results: Vec<Result<Progress, StepError>>) -> Arc<Script> {
            Arc::new(Script {
                results: Mutex::new(results),
                calls: Mutex::default(),
                start: self.start,
                compensations: self.comps.clone(),
                id: id.into(),
                fail_compensation: false,
                hang: false,
            })
        }
        fn node(&self, id: &str, needs: &[&str], step: Arc<Script>, limits: Limits) -> Node {
            Node {
                id: id.into(),
                needs: needs.iter().map(|s| (*s).to_owned()).collect(),
                step: step.clone(),
                limits,
                compensation: Some((step, Limits::default())),
                continue_on_failure: false,
            }
        }
        fn sink(&self) -> Sink {
            let ev = self.events.clone();
            Arc::new(move |e: &Event| {
                ev.lock().unwrap().push(e.clone());
                Ok(())
            })
        }
    }

    fn retry(attempts: u32, backoff: Backoff, initial: u64, max: u64) -> Limits {
        Limits {
            retry: RetryPolicy {
                attempts,
                backoff,
                initial: Duration::from_secs(initial),
                max: Duration::from_secs(max),
                jitter: false,
            },
            ..Limits::default()
        }
    }

    fn no_jitter() -> Options {
        Options {
            jitter_seed: None,
            ..Options::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_with_exponential_backoff() {
        let bed = Bed::new();
        let s = bed.script(
            "a",
            vec![Err(StepError::transient("503")), Err(StepError::transient("503"))],
        );
        let out = execute(
            vec![bed.node("a", &[], s.clone(), retry(3, Backoff::Exponential, 2, 60))],
            vec![],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(out.state, FinalState::Succeeded);
        let calls = s.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [Duration::ZERO, Duration::from_secs(2), Duration::from_secs(6)],
            "delays 2s then 4s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn giving_up_keeps_the_last_real_error_and_rolls_back() {
        let bed = Bed::new();
        let a = bed.script("a", vec![]);
        let b = bed.script(
            "b",
            vec![
                Err(StepError::transient("503 from api")),
                Err(StepError::transient("429 from api")),
            ],
        );
        let out = execute(
            vec![
                bed.node("a", &[], a, Limits::default()),
                bed.node("b", &["a"], b, retry(2, Backoff::Constant, 1, 1)),
            ],
            vec![],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(out.state, FinalState::RolledBack);
        assert_eq!(
            out.failure,
            Some(("b".into(), "gave up after 2 attempts: 429 from api".into()))
        );
        assert_eq!(
            *bed.comps.lock().unwrap(),
            ["b", "a"],
            "the failed step is compensated too (it may have changed something before failing)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rejections_are_never_retried() {
        let bed = Bed::new();
        let s = bed.script(
            "gate",
            vec![Err(StepError::rejected("version 7 is not approved"))],
        );
        let out = execute(
            vec![bed.node("gate", &[], s.clone(), retry(5, Backoff::Constant, 1, 1))],
            vec![],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(out.failure.unwrap().1, "version 7 is not approved");
        assert_eq!(s.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn attempt_timeouts_are_transient_and_the_step_deadline_is_final() {
        let bed = Bed::new();
        let mut s = Arc::try_unwrap(bed.script("slow", vec![])).ok().unwrap();
        s.hang = true;
        let s = Arc::new(s);
        let mut limits = retry(3, Backoff::Constant, 1, 1);
        limits.attempt_timeout = Some(Duration::from_secs(10));
        let out = execute(
            vec![bed.node("slow", &[], s.clone(), limits)],
            vec![],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(
            out.failure.unwrap().1,
            "gave up after 3 attempts: attempt timed out after 10s"
        );
        assert_eq!(
            *s.calls.lock().unwrap(),
            [Duration::ZERO, Duration::from_secs(11), Duration::from_secs(22)]
        );
        limits.deadline = Some(Duration::from_secs(15));
        let out = execute(
            vec![bed.node("slow", &[], s, limits)],
            vec![],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(out.failure.unwrap().1, "step deadline of 15s exceeded");
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_slept_by_the_executor() {
        let bed = Bed::new();
        let wait = || {
            Ok(Progress::Wait {
                after: Duration::from_secs(30),
                reason: "holding".into(),
            })
        };
        let s = bed.script("hold", vec![wait(), wait()]);
        let out = execute(
            vec![bed.node("hold", &[], s.clone(), Limits::default())],
            vec![],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(out.state, FinalState::Succeeded);
        assert_eq!(
            *s.calls.lock().unwrap(),
            [Duration::ZERO, Duration::from_secs(30), Duration::from_secs(60)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn compensation_runs_in_reverse_completion_order_and_cancels_the_rest() {
        let bed = Bed::new();
        let mut slow = Arc::try_unwrap(bed.script("side", vec![])).ok().unwrap();
        slow.hang = true;
        let nodes = vec![
            bed.node("a", &[], bed.script("a", vec![]), Limits::default()),
            bed.node("b", &["a"], bed.script("b", vec![]), Limits::default()),
            bed.node("side", &["a"], Arc::new(slow), Limits::default()),
            bed.node("c", &["b"], bed.script("c", vec![]), Limits::default()),
            bed.node(
                "d",
                &["c"],
                bed.script("d", vec![Err(StepError::rejected("error rate 12% > 1%"))]),
                Limits::default(),
            ),
        ];
        let out = execute(nodes, vec![], no_jitter(), bed.sink()).await;
        assert_eq!(out.state, FinalState::RolledBack);
        // The failed step and the cancelled one first (newest start first):
        // they may have changed the target halfway.
        assert_eq!(*bed.comps.lock().unwrap(), ["d", "side", "c", "b", "a"]);
        assert!(
            bed.events
                .lock()
                .unwrap()
                .contains(&Event::Cancelled { step: "side".into() })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_compensation_is_rollback_failed_and_handlers_still_run() {
        let bed = Bed::new();
        let mut a = Arc::try_unwrap(bed.script("a", vec![])).ok().unwrap();
        a.fail_compensation = true;
        let handler_calls = Arc::new(AtomicU32::new(0));
        struct Handler(Arc<AtomicU32>, bool);
        impl Step for Handler {
            fn run<'a>(&'a self, _cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
                Box::pin(async move {
                    self.0.fetch_add(1, Ordering::SeqCst);
                    if self.1 {
                        Err(StepError::failed("webhook 500"))
                    } else {
                        Ok(Progress::Done { outputs: Map::new() })
                    }
                })
            }
        }
        let handler = |id: &str, fail: bool| Node {
            id: id.into(),
            needs: vec![],
            step: Arc::new(Handler(handler_calls.clone(), fail)),
            limits: Limits::default(),
            compensation: None,
            continue_on_failure: true,
        };
        let nodes = vec![
            bed.node("a", &[], Arc::new(a), Limits::default()),
            bed.node(
                "b",
                &["a"],
                bed.script("b", vec![Err(StepError::failed("boom"))]),
                Limits::default(),
            ),
        ];
        let out = execute(
            nodes,
            vec![handler("h1", true), handler("h2", false)],
            no_jitter(),
            bed.sink(),
        )
        .await;
        assert_eq!(out.state, FinalState::RollbackFailed);
        assert_eq!(out.left_over, [("a".to_owned(), "cannot restore".to_owned())]);
        assert_eq!(
            handler_calls.load(Ordering::SeqCst),
            2,
            "a failing handler does not stop the next"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn continue_on_failure_and_run_deadline() {
        let bed = Bed::new();
        let mut soft = bed.node(
            "soft",
            &[],
            bed.script("soft", vec![Err(StepError::failed("meh"))]),
            Limits::default(),
        );
        soft.continue_on_failure = true;
        let after = bed.node("after", &["soft"], bed.script("after", vec![]), Limits::default());
        let out = execute(vec![soft, after], vec![], no_jitter(), bed.sink()).await;
        assert_eq!(out.state, FinalState::Succeeded);
        assert_eq!(out.completed, ["after"]);

        let mut slow = Arc::try_unwrap(bed.script("slow", vec![])).ok().unwrap();
        slow.hang = true;
        let opts = Options {
            run_deadline: Some(Duration::from_secs(60)),
            ..no_jitter()
        };
        let out = execute(
            vec![bed.node("slow", &[], Arc::new(slow), Limits::default())],
            vec![],
            opts,
            bed.sink(),
        )
        .await;
        assert_eq!(
            out.failure,
            Some(("run".into(), "run deadline of 1m exceeded".into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn resume_skips_completed_steps_and_finished_compensations() {
        let bed = Bed::new();
        let (a, b, c) = (
            bed.script("a", vec![]),
            bed.script("b", vec![]),
            bed.script("c", vec![]),
        );
        let nodes = |a: &Arc<Script>, b: &Arc<Script>, c: &Arc<Script>| {
            vec![
                bed.node("a", &[], a.clone(), Limits::default()),
                bed.node("b", &["a"], b.clone(), Limits::default()),
                bed.node("c", &["b"], c.clone(), Limits::default()),
            ]
        };
        let done = |id: &str| (id.to_owned(), Map::new());
        let resume = Resume {
            completed: vec![done("a"), done("b")],
            ..Resume::default()
        };
        let out = execute_resumed(nodes(&a, &b, &c), vec![], no_jitter(), bed.sink(), resume, None).await;
        assert_eq!(out.state, FinalState::Succeeded);
        assert!(a.calls.lock().unwrap().is_empty() && b.calls.lock().unwrap().is_empty());
        assert_eq!(c.calls.lock().unwrap().len(), 1);
        assert_eq!(out.completed, ["a", "b", "c"]);

        // Killed while compensating after `c` failed: `b` was already undone.
        let resume = Resume {
            completed: vec![done("a"), done("b")],
            compensated: vec!["b".into()],
            failed: Some(("c".into(), "breach".into())),
            ..Resume::default()
        };
        let out = execute_resumed(nodes(&a, &b, &c), vec![], no_jitter(), bed.sink(), resume, None).await;
        assert_eq!(out.state, FinalState::RolledBack);
        assert_eq!(*bed.comps.lock().unwrap(), ["a"]);
        assert_eq!(
            c.calls.lock().unwrap().len(),
            1,
            "the failed run does not start steps again"
        );
    }

    /// The regression behind "deploy ran twice": on resume a gate is
    /// checked again, and a completed step that needs it must not be
    /// released (and so run) a second time when the gate passes.
    #[tokio::test(start_paused = true)]
    async fn a_completed_step_is_never_run_again_when_a_step_it_needs_reruns() {
        let bed = Bed::new();
        let (gate, deploy, shift) = (
            bed.script("gate", vec![]),
            bed.script("deploy", vec![]),
            bed.script("shift", vec![]),
        );
        let nodes = vec![
            bed.node("gate", &[], gate.clone(), Limits::default()),
            bed.node("deploy", &["gate"], deploy.clone(), Limits::default()),
            bed.node("shift", &["deploy", "gate"], shift.clone(), Limits::default()),
        ];
        let resume = Resume {
            completed: vec![("deploy".to_owned(), Map::new())],
            ..Resume::default()
        };
        let out = execute_resumed(nodes, vec![], no_jitter(), bed.sink(), resume, None).await;
        assert_eq!(out.state, FinalState::Succeeded);
        assert_eq!(gate.calls.lock().unwrap().len(), 1, "the gate is checked again");
        assert!(deploy.calls.lock().unwrap().is_empty(), "deploy is not repeated");
        assert_eq!(shift.calls.lock().unwrap().len(), 1);
        assert_eq!(out.completed, ["deploy", "gate", "shift"]);
    }

    #[tokio::test(start_paused = true)]
    async fn abort_cancels_and_compensates() {
        let bed = Bed::new();
        let mut slow = Arc::try_unwrap(bed.script("b", vec![])).ok().unwrap();
        slow.hang = true;
        let nodes = vec![
            bed.node("a", &[], bed.script("a", vec![]), Limits::default()),
            bed.node("b", &["a"], Arc::new(slow), Limits::default()),
        ];
        let abort: BoxFuture<'static, String> = Box::pin(async {
            sleep(Duration::from_secs(5)).await;
            "aborted by alice".to_owned()
        });
        let out = execute_resumed(
            nodes,
            vec![],
            no_jitter(),
            bed.sink(),
            Resume::default(),
            Some(abort),
        )
        .await;
        assert_eq!(out.state, FinalState::RolledBack);
        assert_eq!(out.failure, Some(("abort".into(), "aborted by alice".into())));
        assert_eq!(*bed.comps.lock().unwrap(), ["b", "a"]);
        assert!(
            bed.events
                .lock()
                .unwrap()
                .contains(&Event::Cancelled { step: "b".into() })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded_and_jitter_stays_within_half() {
        let bed = Bed::new();
        let nodes: Vec<Node> = (0..5)
            .map(|i| {
                let w = Ok(Progress::Wait {
                    after: Duration::from_secs(10),
                    reason: String::new(),
                });
                bed.node(&format!("n{i}"), &[], bed.script("x", vec![w]), Limits::default())
            })
            .collect();
        let opts = Options {
            concurrency: 2,
            ..no_jitter()
        };
        let out = execute(nodes, vec![], opts, bed.sink()).await;
        assert_eq!(out.completed.len(), 5);
        // Two at a time, each 10s: three waves.
        assert_eq!(bed.start.elapsed(), Duration::from_secs(30));
        let mut j = Jitter(Some(42));
        for _ in 0..100 {
            let d = j.apply(Duration::from_secs(10), true);
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(10));
        }
    }
}
