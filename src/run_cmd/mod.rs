//! `rollwright run`, `resume`, `status`, `approve`, `abort` and `report`:
//! execute a plan with a crash-safe, integrity-protected journal under
//! `.rollwright/runs/<run-id>/`.
//!
//! What a run is — its spec (absolute path), `--set` values, the policy's
//! location, how it reaches its cluster, who started it — is written once,
//! in the journal's first record, under the journal's integrity chain
//! (`rollwright_engine::journal`). Nothing else in the run directory is read
//! back as truth: `resume` re-expands the spec from that record and refuses
//! one that changed, re-checks that the kubeconfig still reaches the same
//! API server (or that the embedded cluster is still the same one), reads
//! the policy from its recorded place, and builds the plan again.
//!
//! One run per target at a time: a local file lock (fast path) and, in the
//! cluster, a Lease in the target namespace that every rollwright process
//! on any machine respects.
//!
//! Signals: the first SIGINT/SIGTERM stops the run at the next safe point
//! (running steps are cancelled at an await) and compensates; a second one
//! exits at once (130), leaving a journal that `resume` rolls back from.

use crate::error::{CliError, CliResult};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use rollwright_engine::exec::{self, Event, FinalState, Options, Resume, Sink};
use rollwright_engine::expand::Expanded;
use rollwright_engine::journal::{self, GroupCommit, Journal, Key, Record, TargetLock};
use rollwright_engine::policy::{MinGate, Policy, Reached};
use rollwright_engine::registry::{BuildContext, Registry};
use rollwright_engine::spec::{Environment, Spec};
use rollwright_engine::{Limits as LoadLimits, Linter};
use rollwright_steps::reach::Reach;
use serde_json::Value;

use crate::progress::{Output, Progress, state_name};
use crate::{exit, render};

mod abort;
mod approve;
mod report;
mod resume;
mod start;
mod status;

pub use abort::{AbortArgs, abort};
pub use approve::{ApproveArgs, approve};
use report::write_report;
pub use report::{ReportArgs, report};
pub use resume::{ResumeArgs, resume};
use start::{Launch, Show, execute};
pub(crate) use start::{Observed, journal_entry};
pub use start::{RunArgs, run};
pub use status::{StatusArgs, status};

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    rollwright_engine::duration::parse(s).map_err(|e| e.to_string())
}

/// The plan's timing budget, for the report.
pub(super) fn budget(exp: &Expanded, spec: &Spec) -> rollwright_engine::plan::Budget {
    rollwright_engine::plan::build(exp, spec, &registry()).budget
}

pub(crate) fn registry() -> Registry {
    rollwright_steps::registry()
}

/// The API server of a context of the user's kubeconfig, for lint and plan
/// (run knows the cluster it reaches).
pub(crate) fn resolver() -> rollwright_engine::lint::Resolver {
    let seen = std::sync::Mutex::new(std::collections::HashMap::<String, Option<String>>::new());
    Arc::new(move |context: &str| {
        if let Some(s) = seen.lock().ok().and_then(|m| m.get(context).cloned()) {
            return s;
        }
        let server = Reach::real(None, context).ok().and_then(|r| r.server);
        if let Ok(mut m) = seen.lock() {
            m.insert(context.to_owned(), server.clone());
        }
        server
    })
}

/// The policy named (or installed), with the warning about a local file
/// that is no longer read implicitly.
pub(crate) fn discover_policy(explicit: Option<&Path>) -> CliResult<Option<Policy>> {
    if explicit.is_none()
        && std::env::var_os("ROLLWRIGHT_POLICY").is_none()
        && let Some(w) = Policy::ignored_local_file()
    {
        eprintln!("{w}");
    }
    Policy::discover(explicit).map_err(|e| CliError::usage(e.to_string()))
}

/// A linter with the policy, the kubeconfig resolver and the confinement root.
pub(crate) fn linter(policy: Option<Policy>, root: Option<&Path>) -> CliResult<Linter> {
    Linter::new(registry(), LoadLimits::default())
        .map(|l| {
            l.with_policy(policy)
                .with_resolver(resolver())
                .with_root(root.map(absolute))
        })
        .map_err(|e| CliError::usage(e.to_string()))
}

/// Steps that cannot be built: each is said, and nothing is run.
pub(super) fn unbuildable(errors: Vec<String>) -> CliError {
    for e in errors {
        eprintln!("error: {e}");
    }
    CliError::findings("nothing was run")
}

pub(super) fn state_code(s: FinalState) -> u8 {
    match s {
        FinalState::Succeeded => exit::OK,
        FinalState::RolledBack => exit::ROLLED_BACK,
        FinalState::RollbackFailed => exit::ROLLBACK_FAILED,
    }
}

/// Lints and expands a spec; prints problems and returns None when it has errors.
pub(crate) fn prepare(
    linter: &Linter,
    spec: &Path,
    overrides: &[(String, Value)],
) -> CliResult<(Expanded, Spec)> {
    let bytes = rollwright_engine::fsread::read(spec, rollwright_engine::fsread::DEFAULT_MAX)
        .map_err(|e| CliError::usage(format!("cannot read `{}`", spec.display())).because(e))?;
    let path = spec.to_string_lossy().into_owned();
    let human = render::Human::new(false);
    match linter.prepare(spec, &bytes, overrides) {
        Ok((exp, s, warnings)) => {
            if !warnings.is_empty() {
                eprint!("{}", human.render_file(&path, &bytes, &warnings));
            }
            Ok((exp, s))
        }
        Err(diags) => {
            eprint!("{}", human.render_file(&path, &bytes, &diags));
            Err(CliError::findings(format!(
                "`{path}` has errors; nothing was run"
            )))
        }
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn new_run_id(name: &str) -> String {
    // 2026-11-24T04:00:00Z -> 20261124T040000, plus 16 bits against collisions.
    let stamp: String = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    format!(
        "{name}-{stamp}-{:04x}",
        (now_ms() ^ u64::from(std::process::id())) & 0xffff
    )
}

/// The key of the journals' integrity chain (outside every run directory).
pub(super) fn run_key() -> CliResult<Arc<Key>> {
    Key::load_default()
        .map(Arc::new)
        .map_err(|e| CliError::state(e.to_string()))
}

pub(super) fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("cannot start the runtime: {e}")))
}

/// Who runs rollwright locally: `ROLLWRIGHT_USER`, else `USER`, else the uid.
pub(super) fn local_user() -> String {
    std::env::var("ROLLWRIGHT_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {}", uid()))
}

pub(super) fn uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

pub(super) fn run_dir(state_dir: &Path, run: &str) -> PathBuf {
    state_dir.join("runs").join(run)
}

pub(crate) fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// The environment a run actually deploys to, decided from the cluster it
/// reaches: the spec's rules checked again for that cluster (a spec calling
/// a production cluster `staging` is refused), production when the spec or
/// the policy says so, and the policy's minimum gate.
pub(crate) struct Effective {
    pub(crate) production: bool,
    pub(crate) min_gate: Option<MinGate>,
}

/// Why a run may not deploy to the cluster it reaches.
pub(crate) enum Unfit {
    /// The spec breaks the policy there (located findings).
    Findings {
        server: String,
        diagnostics: Vec<rollwright_engine::Diagnostic>,
    },
    /// `--context` other than the spec's on a production run.
    Context(String),
}

impl Unfit {
    /// For people, in one text (the controller's status; the CLI renders
    /// findings against the spec file instead).
    pub(crate) fn message(&self) -> String {
        match self {
            Unfit::Findings { server, diagnostics } => format!(
                "on the cluster this run reaches ({server}) the plan breaks the policy: {}",
                diagnostics
                    .iter()
                    .map(|d| d.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Unfit::Context(m) => m.clone(),
        }
    }
}

/// Decides [`Effective`] (see [`effective`]), without printing.
pub(crate) fn decide(
    linter: &Linter,
    exp: &Expanded,
    spec: &Spec,
    reach: &Reach,
    context_flag: Option<&str>,
) -> Result<Effective, Unfit> {
    let Some(target) = &spec.target else {
        return Ok(Effective {
            production: false,
            min_gate: None,
        });
    };
    let reached = Reached {
        context: if reach.context.is_empty() {
            target.context.clone()
        } else {
            reach.context.clone()
        },
        server: reach.server.clone(),
    };
    let errors: Vec<_> = linter
        .check_reached(exp, spec, &reached)
        .into_iter()
        .filter(|d| d.severity == rollwright_engine::Severity::Error)
        .collect();
    if !errors.is_empty() {
        return Err(Unfit::Findings {
            server: reached.server.clone().unwrap_or(reached.context.clone()),
            diagnostics: errors,
        });
    }
    let derived = linter.policy().and_then(|p| p.derive(spec, Some(&reached)));
    let environment = derived.as_ref().map_or(target.environment, |d| d.environment);
    let production = target.environment == Environment::Production || environment == Environment::Production;
    if let Some(c) = context_flag
        && c != target.context
        && production
    {
        return Err(Unfit::Context(format!(
            "the run is production{} and the spec's context is `{}`: refusing to use `{c}` (--context)",
            derived
                .as_ref()
                .and_then(|d| d.reason.as_ref())
                .map_or_else(String::new, |r| format!(" ({r})")),
            target.context
        )));
    }
    let min_gate = linter
        .policy()
        .and_then(|p| {
            p.rules(if production {
                Environment::Production
            } else {
                environment
            })
        })
        .and_then(|r| r.gate.clone());
    Ok(Effective { production, min_gate })
}

pub(super) fn effective(
    linter: &Linter,
    exp: &Expanded,
    spec: &Spec,
    reach: &Reach,
    context_flag: Option<&str>,
) -> CliResult<Effective> {
    match decide(linter, exp, spec, reach, context_flag) {
        Ok(e) => Ok(e),
        Err(Unfit::Context(m)) => Err(CliError::findings(m)),
        Err(Unfit::Findings { server, diagnostics }) => {
            let path = exp
                .sources
                .first()
                .map_or_else(String::new, |s| s.display.to_string());
            let bytes =
                rollwright_engine::fsread::read(Path::new(&path), rollwright_engine::fsread::DEFAULT_MAX)
                    .unwrap_or_default();
            eprint!(
                "{}",
                render::Human::new(false).render_file(&path, &bytes, &diagnostics)
            );
            Err(CliError::findings(format!(
                "on the cluster this run reaches ({server}), `{path}` breaks the policy; nothing was run"
            )))
        }
    }
}

/// Everything about a run that its journal header records.
pub(crate) struct Header {
    pub(crate) run: String,
    pub(crate) digest: String,
    pub(crate) spec: PathBuf,
    pub(crate) overrides: Vec<(String, Value)>,
    pub(crate) started_by: String,
    pub(crate) policy: Option<PathBuf>,
    pub(crate) reach: Reach,
    pub(crate) root: Option<PathBuf>,
}

impl Header {
    pub(crate) fn record(&self, policy: Option<&Policy>) -> Record {
        Record::RunStarted {
            run: self.run.clone(),
            digest: self.digest.clone(),
            spec: self.spec.to_string_lossy().into_owned(),
            at_ms: now_ms(),
            overrides: self.overrides.clone(),
            started_by: self.started_by.clone(),
            policy: policy.map_or(Value::Null, Policy::record),
            reach: self.reach.to_value(),
            root: self
                .root
                .as_ref()
                .map_or_else(String::new, |r| r.to_string_lossy().into_owned()),
        }
    }

    pub(crate) fn of(records: &[Record]) -> Option<Header> {
        let Some(Record::RunStarted {
            run,
            digest,
            spec,
            overrides,
            started_by,
            policy,
            reach,
            root,
            ..
        }) = records.first()
        else {
            return None;
        };
        Some(Header {
            run: run.clone(),
            digest: digest.clone(),
            spec: PathBuf::from(spec),
            overrides: overrides.clone(),
            started_by: started_by.clone(),
            policy: policy["path"].as_str().map(PathBuf::from),
            reach: serde_json::from_value(reach.clone()).unwrap_or_default(),
            root: (!root.is_empty()).then(|| PathBuf::from(root)),
        })
    }
}

/// What step builders of a run see.
pub(crate) fn build_context(
    spec: &Spec,
    run_dir: PathBuf,
    h: &Header,
    production: bool,
    key: &Arc<Key>,
) -> BuildContext {
    let sim = h.reach.sim.as_ref();
    let spec_dir = h
        .spec
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let mut cx = BuildContext::of_spec(spec, production, &spec_dir);
    if let Some(s) = sim {
        if let (Some(g), Some(r)) = (
            cx.target.as_mut().and_then(|t| t.gitops.as_mut()),
            s.gitops_repo.as_ref(),
        ) {
            g["repo"] = r.to_string_lossy().into_owned().into();
        }
        // On the embedded cluster the sim's router addresses versions: the
        // model's own base URL on the sim, where plain-HTTP paths
        // (`/predict`) reach that model, like its real Service.
        if let Some(sv) = cx.serving.as_mut() {
            sv["endpoint"] = match &spec.model {
                Some(m) => format!("{}/models/{}", s.endpoint.trim_end_matches('/'), m.name),
                None => s.endpoint.clone(),
            }
            .into();
            if let Some(o) = sv.as_object_mut() {
                o.remove("canary-headers");
                o.remove("stable-headers");
            }
        }
    }
    BuildContext {
        reach: h.reach.to_value(),
        run_dir,
        started_by: h.started_by.clone(),
        run_id: h.run.clone(),
        run_key: Some(key.clone()),
        ..cx
    }
}

/// Who starts the run: the cluster's answer for the run's credentials when
/// it reaches one (an approver must be someone else *to the API server*),
/// else the local user.
pub(super) fn starter(rt: &tokio::runtime::Runtime, spec: &Spec, reach: &Reach) -> String {
    let (Some(t), true) = (&spec.target, reach.reaches_cluster()) else {
        return local_user();
    };
    let who = rollwright_steps::cluster::Cluster::at(reach.clone(), &t.namespace)
        .map_err(rollwright_engine::exec::StepError::failed)
        .map(|c| rt.block_on(async move { c.whoami().await }));
    match who {
        Ok(Ok(u)) => u,
        _ => local_user(),
    }
}

/// A run as its (verified) journal says.
pub(super) struct Opened {
    pub(super) dir: PathBuf,
    pub(super) records: Vec<Record>,
    pub(super) header: Header,
    pub(super) key: Arc<Key>,
}

/// Reads and verifies a run's journal.
pub(super) fn open_run(state_dir: &Path, run: &str) -> CliResult<Opened> {
    let key = run_key()?;
    let dir = run_dir(state_dir, run);
    let records =
        journal::read(&dir.join("journal.jsonl"), &key).map_err(|e| CliError::state(e.to_string()))?;
    let header = Header::of(&records)
        .ok_or_else(|| CliError::state(format!("run {run}: the journal has no header")))?;
    if header.run != run {
        return Err(CliError::state(format!(
            "the journal in {} belongs to run {}, not {run}",
            dir.display(),
            header.run
        )));
    }
    Ok(Opened {
        dir,
        records,
        header,
        key,
    })
}

/// Re-expands the spec a run started with (same overrides, the policy from
/// its recorded place) and checks it did not change.
pub(super) fn respec(o: &Opened) -> CliResult<(Linter, Option<Policy>, Expanded, Spec)> {
    let policy = match &o.header.policy {
        Some(p) => Some(
            Policy::load(p)
                .map_err(|e| CliError::usage(format!("the policy run {} started with: {e}", o.header.run)))?,
        ),
        None => None,
    };
    let linter = linter(policy.clone(), o.header.root.as_deref())?;
    let (exp, spec) = prepare(&linter, &o.header.spec, &o.header.overrides)?;
    if journal::digest(&exp.value) != o.header.digest {
        return Err(CliError::usage(format!(
            "`{}` changed since run {} started; resume refuses a different spec (start a new run)",
            o.header.spec.display(),
            o.header.run
        )));
    }
    Ok((linter, policy, exp, spec))
}

/// Checks the run can still reach what it started on: the same API server
/// through its kubeconfig, or the same embedded cluster.
pub(super) fn still_reaches(h: &Header, rt: &tokio::runtime::Runtime) -> CliResult<()> {
    let fail = |e: String| CliError::usage(format!("run {}: {e}", h.run));
    match &h.reach.sim {
        Some(sim) => {
            let Some(file) = &sim.attach else {
                return Err(fail(
                    "it ran on an embedded cluster that ended with its process; it cannot be continued"
                        .into(),
                ));
            };
            let a = crate::sim_run::attach(file, rt).map_err(fail)?;
            if a.identity != sim.identity {
                return Err(fail(format!(
                    "{} now describes another embedded cluster than the one the run started on",
                    file.display()
                )));
            }
            Ok(())
        }
        None => h.reach.still_reaches().map_err(|e| fail(e.to_string())),
    }
}

/// What resume and abort share: the cluster reached again (and proven the
/// same), the runnable plan rebuilt from the re-expanded spec, and the
/// journal reopened for appending.
pub(super) fn reopen(o: &Opened, linter: &Linter, exp: &Expanded, spec: &Spec) -> CliResult<Reopened> {
    let rt = runtime()?;
    still_reaches(&o.header, &rt)?;
    let eff = effective(linter, exp, spec, &o.header.reach, None)?;
    let cx = build_context(spec, o.dir.clone(), &o.header, eff.production, &o.key);
    let runnable = rollwright_steps::runnable::build(spec, &registry(), &cx, eff.min_gate.as_ref())
        .map_err(unbuildable)?;
    let journal = Journal::reopen(&o.dir.join("journal.jsonl"), o.key.clone())
        .map_err(|e| CliError::state(e.to_string()))?;
    Ok(Reopened {
        rt,
        runnable,
        journal,
    })
}

/// What is left of a run its journal describes: the completed steps kept
/// (those a failure does not make run again), the plan rewired so that
/// nothing completed is released twice.
pub(crate) fn resume_of(
    state: journal::State,
    spec: &Spec,
    runnable: &mut rollwright_steps::runnable::Runnable,
) -> Resume {
    let failed = state.failed.into_iter().next();
    let ids: Vec<String> = state.completed.iter().map(|(id, _)| id.clone()).collect();
    let reg = registry();
    let kept = rollwright_steps::runnable::kept_on_resume(spec, &reg, &ids, failed.is_some());
    rollwright_steps::runnable::rewire_for_resume(&mut runnable.steps, spec, &reg, &kept);
    Resume {
        completed: state
            .completed
            .into_iter()
            .filter(|(id, _)| kept.contains(id))
            .collect(),
        compensated: state.compensated,
        failed,
        started: state.started,
        recorded: state.recorded,
    }
}

/// A run reopened by resume or abort.
pub(super) struct Reopened {
    rt: tokio::runtime::Runtime,
    pub(super) runnable: rollwright_steps::runnable::Runnable,
    journal: Journal,
}

impl Reopened {
    /// Executes what is left of the run (`resume` says what that is).
    pub(super) fn execute(
        self,
        o: &Opened,
        spec: &Spec,
        state_dir: &Path,
        output: Output,
        resume: Resume,
        budget: rollwright_engine::plan::Budget,
    ) -> CliResult {
        execute(Launch {
            spec,
            header: &o.header,
            state_dir,
            key: o.key.clone(),
            runnable: self.runnable,
            journal: self.journal,
            resume,
            show: Show {
                output,
                deadline: None,
            },
            rt: self.rt,
            budget,
        })
    }
}
