//! A RolloutRun's status, kept from the run's events, and written by the
//! leader only: every write carries the resourceVersion last seen and the
//! leader's identity and epoch; a conflict is read again, and a status
//! stamped by a newer epoch means this replica was deposed.

use std::sync::Mutex;

use kube::api::{Api, Patch, PatchParams};
use rollwright_engine::exec::{Event, FinalState};
use serde_json::json;

use crate::rolloutrun::{Condition, Holder, MetricStatus, RolloutRun, RolloutRunStatus, StepStatus};

/// Phases after which nothing runs again.
pub const TERMINAL: &[&str] = &["Succeeded", "RolledBack", "RollbackFailed", "Refused", "Stopped"];

/// The longest message kept (the CRD's maxLength).
const MESSAGE: usize = 1000;
/// Steps kept in status (the CRD's maxItems).
const STEPS: usize = 500;
/// Metrics of the last analysis kept.
const METRICS: usize = 50;

fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn cut(s: &str) -> String {
    let s = rollwright_engine::secrets::scrub(s);
    if s.len() <= MESSAGE {
        return s;
    }
    let mut end = MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What an event means for people watching (`kubectl describe`): a
/// reason and a note, `Warning` when something failed.
pub struct Said {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
    /// What it is about (a step id, or `Run`): Events with the same
    /// reason and action are counted as one series, so each step's are
    /// its own.
    pub action: String,
}

/// The status of one run, as its events tell it.
pub struct Book {
    status: Mutex<(RolloutRunStatus, bool)>,
}

impl Book {
    pub fn new(steps: &[String], holder: Holder, generation: Option<i64>) -> Book {
        let status = RolloutRunStatus {
            phase: Some("Running".into()),
            observed_generation: generation,
            steps: steps
                .iter()
                .take(STEPS)
                .map(|id| StepStatus {
                    id: id.clone(),
                    state: "Pending".into(),
                    attempts: 0,
                    started_at: None,
                    finished_at: None,
                    message: String::new(),
                })
                .collect(),
            holder: Some(holder),
            conditions: vec![condition("Progressing", "True", "Started", "the run started")],
            ..RolloutRunStatus::default()
        };
        Book {
            status: Mutex::new((status, true)),
        }
    }

    /// Marks steps a previous leader finished (a resumed run).
    pub fn done(&self, ids: &[String]) {
        self.with(|s| {
            for st in &mut s.steps {
                if ids.contains(&st.id) {
                    st.state = "Succeeded".into();
                }
            }
        });
    }

    fn with<T>(&self, f: impl FnOnce(&mut RolloutRunStatus) -> T) -> T {
        let mut g = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.1 = true;
        f(&mut g.0)
    }

    /// The status to write, when it changed since the last call.
    pub fn take(&self) -> Option<RolloutRunStatus> {
        let mut g = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !g.1 {
            return None;
        }
        g.1 = false;
        Some(g.0.clone())
    }

    /// Sets the phase and its condition.
    pub fn phase(&self, phase: &str, reason: &str, message: &str) {
        self.with(|s| {
            s.phase = Some(phase.into());
            let (t, st) = match phase {
                "Succeeded" => ("Completed", "True"),
                "Running" | "Waiting" => ("Progressing", "True"),
                _ => ("Degraded", "True"),
            };
            set_condition(&mut s.conditions, condition(t, st, reason, &cut(message)));
            if TERMINAL.contains(&phase) {
                set_condition(
                    &mut s.conditions,
                    condition("Progressing", "False", reason, &cut(message)),
                );
            }
        });
    }

    /// Takes an event in; says what people should see of it, if anything.
    pub fn event(&self, e: &Event) -> Option<Said> {
        self.with(|s| {
            let step = |s: &mut RolloutRunStatus, id: &str| -> Option<usize> {
                s.steps.iter().position(|st| st.id == id)
            };
            match e {
                Event::Started { step: id, attempt } => {
                    let i = step(s, id)?;
                    let st = &mut s.steps[i];
                    st.state = "Running".into();
                    st.attempts = *attempt;
                    st.message.clear();
                    if st.started_at.is_none() {
                        st.started_at = Some(rfc3339_now());
                    }
                    (*attempt == 1).then(|| Said {
                        warning: false,
                        reason: "StepStarted",
                        note: format!("step {id} started"),
                        action: id.clone(),
                    })
                }
                Event::Waiting { step: id, reason, .. } => {
                    let i = step(s, id)?;
                    let st = &mut s.steps[i];
                    st.state = "Waiting".into();
                    st.message = cut(reason);
                    None
                }
                Event::Retrying { step: id, error, .. } => {
                    let i = step(s, id)?;
                    s.steps[i].message = cut(error);
                    None
                }
                Event::Succeeded { step: id, .. } => {
                    let i = step(s, id)?;
                    let st = &mut s.steps[i];
                    st.state = "Succeeded".into();
                    st.finished_at = Some(rfc3339_now());
                    st.message.clear();
                    Some(Said {
                        warning: false,
                        reason: "StepSucceeded",
                        note: format!("step {id} succeeded"),
                        action: id.clone(),
                    })
                }
                Event::Failed {
                    step: id,
                    error,
                    tolerated,
                } => {
                    let i = step(s, id)?;
                    let st = &mut s.steps[i];
                    st.state = "Failed".into();
                    st.finished_at = Some(rfc3339_now());
                    st.message = cut(error);
                    Some(Said {
                        warning: !tolerated,
                        reason: "StepFailed",
                        note: cut(&format!("step {id} failed: {error}")),
                        action: id.clone(),
                    })
                }
                Event::Cancelled { step: id } => {
                    let i = step(s, id)?;
                    s.steps[i].state = "Cancelled".into();
                    None
                }
                Event::Compensated { step: id, error } => {
                    let i = step(s, id)?;
                    let st = &mut s.steps[i];
                    st.state = if error.is_some() {
                        "RollbackFailed"
                    } else {
                        "RolledBack"
                    }
                    .into();
                    if let Some(e) = error {
                        st.message = cut(e);
                    }
                    Some(Said {
                        warning: error.is_some(),
                        reason: if error.is_some() {
                            "CompensationFailed"
                        } else {
                            "Compensated"
                        },
                        note: cut(&match error {
                            Some(e) => format!("step {id} could not be rolled back: {e}"),
                            None => format!("step {id} rolled back"),
                        }),
                        action: id.clone(),
                    })
                }
                Event::Observed {
                    step: id,
                    observation,
                } => {
                    if let Some(split) = &observation.split {
                        s.canary_percent = Some(split.canary_percent);
                    }
                    if !observation.metrics.is_empty() {
                        s.analysis.retain(|m| m.step != *id);
                        for m in observation.metrics.iter().take(METRICS) {
                            s.analysis.push(MetricStatus {
                                step: id.clone(),
                                name: m.name.clone(),
                                value: m.value,
                                threshold: cut(&m.threshold),
                                verdict: m.verdict.clone(),
                                breaches: m.breaches,
                                limit: m.limit,
                            });
                        }
                        let over = s.analysis.len().saturating_sub(METRICS);
                        s.analysis.drain(..over);
                    }
                    None
                }
                Event::Handled { handler, error } => Some(Said {
                    warning: error.is_some(),
                    reason: "HandlerRan",
                    note: cut(&match error {
                        Some(e) => format!("on-failure handler {handler} failed: {e}"),
                        None => format!("on-failure handler {handler} ran"),
                    }),
                    action: handler.clone(),
                }),
                Event::Recorded { .. } => None,
                Event::Finished { state } => {
                    let (phase, warning) = match state {
                        FinalState::Succeeded => ("Succeeded", false),
                        FinalState::RolledBack => ("RolledBack", true),
                        FinalState::RollbackFailed => ("RollbackFailed", true),
                    };
                    s.phase = Some(phase.into());
                    Some(Said {
                        warning,
                        reason: "RunFinished",
                        note: format!("the run ended: {phase}"),
                        action: "Run".into(),
                    })
                }
            }
        })
    }
}

fn condition(t: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: t.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Some(rfc3339_now()),
    }
}

fn set_condition(list: &mut Vec<Condition>, c: Condition) {
    match list.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => {
            if x.status != c.status {
                *x = c;
            } else {
                x.reason = c.reason;
                x.message = c.message;
            }
        }
        None => list.push(c),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("a newer leader (epoch {0}) writes this run's status now")]
    Deposed(i64),
    #[error("writing the status: {0}")]
    Api(#[from] kube::Error),
}

/// Writes `status` (merge patch with a resourceVersion precondition); on a
/// conflict reads the object again and writes over it unless a newer
/// leader holds it (a newer epoch in the status that the leader Lease
/// confirms). `version` is the last resourceVersion seen.
pub async fn write(
    api: &Api<RolloutRun>,
    name: &str,
    status: &RolloutRunStatus,
    epoch: i64,
    version: &mut String,
    deposed: &super::store::Deposed,
) -> Result<(), WriteError> {
    for _ in 0..5 {
        let body = json!({"metadata": {"resourceVersion": version}, "status": status});
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(o) => {
                *version = o.metadata.resource_version.unwrap_or_default();
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let now = api.get_status(name).await?;
                let theirs = now
                    .status
                    .as_ref()
                    .and_then(|s| s.holder.as_ref())
                    .map_or(0, |h| h.epoch);
                if theirs > epoch && deposed(epoch).await {
                    return Err(WriteError::Deposed(theirs));
                }
                *version = now.metadata.resource_version.unwrap_or_default();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(WriteError::Api(kube::Error::Service(
        "the status kept changing under five writes in a row".into(),
    )))
}
