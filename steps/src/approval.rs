//! `approval`: wait for people to approve with `rollwright approve`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rollwright_engine::Code;
use rollwright_engine::exec::{BoxFuture, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::{BuildContext, Finding, Role, StepKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::common::config;

/// `with` of an approval.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    /// Distinct approvals required.
    #[serde(default = "one")]
    pub approvers: u32,
    /// Allowed approvers.
    #[serde(default)]
    pub from: Vec<String>,
    /// Expiry.
    #[serde(default)]
    pub expires: Option<String>,
    /// Text for approvers.
    #[serde(default)]
    pub message: Option<String>,
}

fn one() -> u32 {
    1
}

/// The approval kind.
pub struct Approval;

impl StepKind for Approval {
    fn name(&self) -> &'static str {
        "approval"
    }
    fn summary(&self) -> &'static str {
        "waits until enough people run `rollwright approve`"
    }
    fn schema(&self) -> &'static str {
        include_str!("../../schemas/steps/approval.schema.json")
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["approvers"]
    }
    fn build(&self, with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, String> {
        let config: ApprovalConfig = serde_json::from_value(with.clone()).map_err(|e| e.to_string())?;
        let expires = match &config.expires {
            Some(e) => Some(rollwright_engine::duration::parse(e).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Arc::new(ApprovalStep {
            config,
            expires,
            run_dir: cx.run_dir.clone(),
            started_by: cx.started_by.clone(),
        }))
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(c) = config::<ApprovalConfig>(with, &mut out) else {
            return out;
        };
        if !c.from.is_empty() && (c.from.len() as u64) < u64::from(c.approvers) {
            out.push(Finding::new(
                "/approvers",
                Code::InvalidStepConfig,
                format!(
                    "{} approvals required but only {} people may approve",
                    c.approvers,
                    c.from.len()
                ),
            ));
        }
        out
    }
}

/// One recorded approval (`<run>/approvals/<step>/<who>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    /// Who approved.
    pub who: String,
    /// Unix time in milliseconds.
    pub at_ms: u64,
}

/// Where approvals of `step` are kept.
#[must_use]
pub fn dir(run_dir: &Path, step: &str) -> PathBuf {
    let safe: String = step
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    run_dir.join("approvals").join(safe)
}

/// Checks and records an approval (what `rollwright approve` does).
///
/// # Errors
/// Who may not approve, or an I/O error.
pub fn record(run_dir: &Path, step: &str, with: &Value, started_by: &str, who: &str) -> Result<(), String> {
    let c: ApprovalConfig = serde_json::from_value(with.clone()).map_err(|e| e.to_string())?;
    if who.trim().is_empty() {
        return Err("the approver's name is empty".into());
    }
    if who == started_by {
        return Err(format!(
            "{who} started this run and cannot approve it; ask someone else"
        ));
    }
    if !c.from.is_empty() && !c.from.iter().any(|f| f == who) {
        return Err(format!(
            "{who} may not approve `{step}`; allowed: {}",
            c.from.join(", ")
        ));
    }
    let d = dir(run_dir, step);
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    let rec = Recorded {
        who: who.to_owned(),
        at_ms: now_ms(),
    };
    let safe: String = who
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let tmp = d.join(format!(".{safe}.tmp"));
    let path = d.join(format!("{safe}.json"));
    // Written whole, then renamed: a reader never sees half a record.
    std::fs::write(&tmp, serde_json::to_vec(&rec).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How often an approval looks for new approvals.
const POLL: Duration = Duration::from_secs(1);

struct ApprovalStep {
    config: ApprovalConfig,
    expires: Option<Duration>,
    run_dir: PathBuf,
    started_by: String,
}

impl ApprovalStep {
    /// When the step first waited (kept on disk so that resume keeps the expiry).
    fn opened_ms(&self, step: &str) -> Result<u64, StepError> {
        let d = dir(&self.run_dir, step);
        let f = d.join(".opened");
        if let Some(ms) = std::fs::read_to_string(&f)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(ms);
        }
        std::fs::create_dir_all(&d).map_err(|e| StepError::transient(format!("{}: {e}", d.display())))?;
        let ms = now_ms();
        std::fs::write(&f, ms.to_string())
            .map_err(|e| StepError::transient(format!("{}: {e}", f.display())))?;
        Ok(ms)
    }

    fn approvals(&self, step: &str) -> Vec<Recorded> {
        let mut out: Vec<Recorded> = std::fs::read_dir(dir(&self.run_dir, step))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Recorded>(&b).ok())
            // Distinct people, never the one who started the run, only those allowed.
            .filter(|r| r.who != self.started_by)
            .filter(|r| self.config.from.is_empty() || self.config.from.contains(&r.who))
            .collect();
        out.sort_by(|a, b| a.who.cmp(&b.who));
        out.dedup_by(|a, b| a.who == b.who);
        out
    }
}

impl Step for ApprovalStep {
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            let opened = self.opened_ms(&cx.step_id)?;
            let got = self.approvals(&cx.step_id);
            let need = self.config.approvers as usize;
            if got.len() >= need {
                let mut outputs = Map::new();
                outputs.insert(
                    "approvers".into(),
                    Value::from(got.iter().map(|r| r.who.clone()).collect::<Vec<_>>()),
                );
                return Ok(Progress::Done { outputs });
            }
            let waited = Duration::from_millis(now_ms().saturating_sub(opened));
            if let Some(limit) = self.expires
                && waited >= limit
            {
                return Err(StepError::rejected(format!(
                    "approval expired after {} with {} of {need} approvals",
                    rollwright_engine::duration::Display(limit),
                    got.len()
                )));
            }
            let left = self.expires.map_or(POLL, |l| l.saturating_sub(waited).min(POLL));
            Ok(Progress::Wait {
                after: left.max(Duration::from_millis(50)),
                reason: format!(
                    "waiting for {need} approval(s), {} so far: rollwright approve <run> {} --as NAME",
                    got.len(),
                    cx.step_id
                ),
            })
        })
    }
}
