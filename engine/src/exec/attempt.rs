//! Running one step to completion: attempts, waits, retries with backoff
//! and jitter, per-attempt timeouts and the step's deadline.

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::{sleep, timeout};

use super::{ErrorClass, Event, Outputs, Progress, Records, Sink, Step, StepContext, StepError};
use crate::retry::RetryPolicy;
use std::sync::Arc;

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

pub(super) struct Jitter(pub(super) Option<u64>);

impl Jitter {
    /// Equal jitter: half the delay fixed, half random.
    pub(super) fn apply(&mut self, d: Duration, enabled: bool) -> Duration {
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

/// What running steps share: outputs and records.
#[derive(Clone, Default)]
pub(super) struct Shared {
    pub(super) outputs: Outputs,
    pub(super) records: Records,
}

/// Runs one step to completion: attempts, waits, retries, deadlines.
pub(super) async fn drive(
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
        // A call after a wait continues the same attempt: only a new attempt
        // is an event (and a journal record), never a poll.
        let mut polling = false;
        loop {
            if !polling {
                let _ = sink(&Event::Started {
                    step: id.clone(),
                    attempt,
                });
            }
            polling = false;
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
                    polling = true;
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
