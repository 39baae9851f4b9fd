//! `approval`: wait for people to approve with `rollwright approve`.
//!
//! Who approves is not what they claim: when the run reaches a cluster,
//! `rollwright approve` asks the API server who the approver's credentials
//! are (`SelfSubjectReview`) and records that name (`trust: cluster`). Only a
//! run that reaches no cluster takes `--as NAME` (`trust: local`: anyone who
//! can run rollwright as this user can claim any name), and a production run
//! never counts such approvals. Each approval is a file in the run directory
//! signed with the run key (the journal's, kept outside the run directory),
//! bound to the run and the step: a file written or copied by hand does not
//! count. When the step first waited is journaled, so its expiry survives a
//! resume and cannot be moved by editing a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rollwright_engine::Code;
use rollwright_engine::exec::{BoxFuture, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::{BuildContext, BuildError, Finding, Role, StepKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::common::config;

/// Waits for people to run `rollwright approve RUN STEP --as NAME`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "approval")]
pub struct ApprovalConfig {
    /// Distinct approvals required, never the person who started the run
    /// (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub approvers: u32,
    /// Who may approve (default anyone).
    #[serde(default)]
    #[schemars(inner(length(min = 1)), extend("uniqueItems" = true))]
    pub from: Vec<String>,
    /// Fail the step if not approved within this time.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::duration")]
    pub expires: Option<String>,
    /// Shown to approvers.
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
    fn approvable(&self) -> bool {
        true
    }
    fn shape(&self) -> rollwright_engine::registry::Shape {
        rollwright_engine::registry::Shape::Decision
    }
    fn summary(&self) -> &'static str {
        "waits until enough people run `rollwright approve`"
    }
    fn schema(&self) -> &'static str {
        include_str!("../schemas/approval.schema.json")
    }
    fn generated_schema(&self) -> Option<Value> {
        Some(crate::schema::of::<ApprovalConfig>())
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["approvers"]
    }
    fn build(&self, with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        let config: ApprovalConfig = serde_json::from_value(with.clone())?;
        let expires = match &config.expires {
            // In the sim's time, like every duration of the spec.
            Some(e) => Some(crate::reach::Reach::of(cx).scaled(
                rollwright_engine::duration::parse(e).map_err(|e| BuildError::Config(e.to_string()))?,
            )),
            None => None,
        };
        Ok(Arc::new(ApprovalStep {
            config,
            expires,
            run_dir: cx.run_dir.clone(),
            run_id: cx.run_id.clone(),
            started_by: cx.started_by.clone(),
            key: cx.run_key.clone(),
            production: cx.target.as_ref().is_some_and(|t| t.production),
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
    /// `cluster` (the API server authenticated `who`) or `local` (claimed).
    #[serde(default)]
    pub trust: String,
    /// The API server that authenticated `who` (`trust: cluster`).
    #[serde(default)]
    pub server: String,
    /// MAC with the run key over the run, step and the fields above.
    #[serde(default)]
    pub sig: String,
}

impl Recorded {
    fn parts<'a>(&'a self, run: &'a str, step: &'a str, at: &'a str) -> [&'a str; 7] {
        ["approval", run, step, &self.who, at, &self.trust, &self.server]
    }
}

/// How an approver was identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Authenticated by the cluster's API server (at this URL).
    Cluster {
        /// Username from `SelfSubjectReview`.
        who: String,
        /// The API server.
        server: String,
    },
    /// Claimed (`--as`), for runs that reach no cluster.
    Local(String),
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

/// What `rollwright approve` needs to record an approval.
pub struct Approver<'a> {
    /// The run's directory.
    pub run_dir: &'a Path,
    /// The run id.
    pub run: &'a str,
    /// The approval step.
    pub step: &'a str,
    /// The step's `with`.
    pub with: &'a Value,
    /// Who started the run.
    pub started_by: &'a str,
    /// Who approves, and how we know.
    pub identity: Identity,
    /// The run key.
    pub key: &'a rollwright_engine::journal::Key,
}

/// Why an approval is not recorded.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// The step's `with` is not an approval's.
    #[error("the step's approval settings: {0}")]
    Config(#[from] serde_json::Error),
    /// The approver has no name.
    #[error("the approver's name is empty")]
    NoName,
    /// The run's own starter cannot approve it.
    #[error("{0} started this run and cannot approve it; ask someone else")]
    Starter(String),
    /// The approver is not on the step's `from` list.
    #[error("{who} may not approve `{step}`; allowed: {allowed}")]
    NotAllowed {
        /// Who tried.
        who: String,
        /// The approval step.
        step: String,
        /// Who may.
        allowed: String,
    },
    /// The record cannot be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Checks and records an approval (what `rollwright approve` does).
///
/// # Errors
/// Who may not approve, or an I/O error.
pub fn record(a: &Approver<'_>) -> Result<(), ApprovalError> {
    let (run_dir, step, started_by) = (a.run_dir, a.step, a.started_by);
    let (who, trust, server) = match &a.identity {
        Identity::Cluster { who, server } => (who.as_str(), "cluster", server.as_str()),
        Identity::Local(who) => (who.as_str(), "local", ""),
    };
    let c: ApprovalConfig = serde_json::from_value(a.with.clone())?;
    if who.trim().is_empty() {
        return Err(ApprovalError::NoName);
    }
    if who == started_by {
        return Err(ApprovalError::Starter(who.to_owned()));
    }
    if !c.from.is_empty() && !c.from.iter().any(|f| f == who) {
        return Err(ApprovalError::NotAllowed {
            who: who.to_owned(),
            step: step.to_owned(),
            allowed: c.from.join(", "),
        });
    }
    let d = dir(run_dir, step);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ApprovalError::Io { path, source }
    };
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    let mut rec = Recorded {
        who: who.to_owned(),
        at_ms: now_ms(),
        trust: trust.to_owned(),
        server: server.to_owned(),
        sig: String::new(),
    };
    let at = rec.at_ms.to_string();
    rec.sig = a.key.sign(&rec.parts(a.run, step, &at));
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
    std::fs::write(&tmp, serde_json::to_vec(&rec).unwrap_or_default()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
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
    run_id: String,
    started_by: String,
    key: Option<Arc<rollwright_engine::journal::Key>>,
    production: bool,
}

impl ApprovalStep {
    /// When the step first waited: journaled, so that a resume keeps the
    /// expiry and no file can move it.
    fn opened_ms(&self, cx: &StepContext) -> Result<u64, StepError> {
        if let Some(ms) = cx.recalled("opened-ms").and_then(|v| v.as_u64()) {
            return Ok(ms);
        }
        let ms = now_ms();
        cx.remember("opened-ms", Value::from(ms))?;
        Ok(ms)
    }

    fn approvals(&self, step: &str) -> Vec<Recorded> {
        let Some(key) = &self.key else {
            return Vec::new();
        };
        let mut out: Vec<Recorded> = std::fs::read_dir(dir(&self.run_dir, step))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| rollwright_engine::fsread::read(&e.path(), 64 * 1024).ok())
            .filter_map(|b| serde_json::from_slice::<Recorded>(&b).ok())
            // Signed for this run and step with the run key: not written by hand.
            .filter(|r| {
                let at = r.at_ms.to_string();
                key.verify(&r.parts(&self.run_id, step, &at), &r.sig)
            })
            // Authenticated by the cluster in production.
            .filter(|r| !self.production || r.trust == "cluster")
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
            let opened = self.opened_ms(cx)?;
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
                    "waiting for {need} approval(s), {} so far: rollwright approve {} {}",
                    got.len(),
                    self.run_id,
                    cx.step_id
                ),
            })
        })
    }
}
