//! The scheduler: runs the DAG with bounded concurrency and a run
//! deadline, continues a resumed run, and hands a failed run to
//! [`compensation`](super::compensation).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::attempt::{Jitter, Shared, drive};
use super::{BoxFuture, Limits, Memo, Observation, Outputs, Step};

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
    /// What a step measured (an analysis, a traffic split), for the
    /// display, the journal and the report; it decides nothing.
    Observed { step: String, observation: Observation },
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
    super::compensation::compensate(super::compensation::Failed {
        nodes: &nodes,
        handlers: &handlers,
        index: &index,
        halfway: &halfway,
        completed,
        already: &resume.compensated,
        fail,
        shared: &shared,
        sink: &sink,
        next_jitter: &mut next_jitter,
    })
    .await
}

pub(super) fn take_outputs(o: &Outputs) -> HashMap<String, Map<String, Value>> {
    o.write().map(|mut m| std::mem::take(&mut *m)).unwrap_or_default()
}
