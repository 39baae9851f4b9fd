//! A failed run: compensations in reverse completion order (the steps that
//! started but did not complete first), then the `on-failure` handlers,
//! each bounded; a failed compensation is left over, never hidden.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::attempt::{Jitter, Shared, drive};
use super::scheduler::take_outputs;
use super::{BoxFuture, Event, FinalState, Node, Outcome, Progress, Sink, Step, StepContext, StepError};

/// What compensation needs of the run that failed.
pub(super) struct Failed<'a, J: FnMut() -> Jitter> {
    pub(super) nodes: &'a [Node],
    pub(super) handlers: &'a [Node],
    pub(super) index: &'a HashMap<String, usize>,
    /// Started, not completed (in start order).
    pub(super) halfway: &'a [String],
    /// Completed, in completion order.
    pub(super) completed: Vec<String>,
    /// Compensations a resumed run had already done.
    pub(super) already: &'a [String],
    /// The step that failed the run, and why.
    pub(super) fail: (String, String),
    pub(super) shared: &'a Shared,
    pub(super) sink: &'a Sink,
    pub(super) next_jitter: &'a mut J,
}

/// Compensates a failed run and runs its handlers.
pub(super) async fn compensate<J: FnMut() -> Jitter>(f: Failed<'_, J>) -> Outcome {
    let Failed {
        nodes,
        handlers,
        index,
        halfway,
        completed,
        already,
        fail,
        shared,
        sink,
        next_jitter,
    } = f;
    let outputs = shared.outputs.clone();
    // Compensate, newest first, each with its own limits: first the steps
    // that started but did not complete (they may have changed the target
    // halfway; their compensation restores what they recorded, or nothing),
    // then the completed ones.
    let mut left_over = Vec::new();
    let order: Vec<String> = halfway
        .iter()
        .rev()
        .chain(completed.iter().rev())
        .filter(|id| !already.contains(*id))
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
    for h in handlers {
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
