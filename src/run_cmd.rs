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
use rollwright_engine::registry::{BuildContext, Registry, Role};
use rollwright_engine::spec::{Environment, Spec};
use rollwright_engine::{Limits as LoadLimits, Linter};
use rollwright_steps::reach::Reach;
use serde_json::Value;

use crate::progress::{Output, Progress, state_name};
use crate::{exit, render};

#[derive(Args)]
pub struct RunArgs {
    /// The Rollout to run.
    #[arg(value_name = "SPEC")]
    spec: PathBuf,
    /// Override a parameter; the value is read as YAML.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Deadline of the whole run (`2h`); when it passes, the run fails and rolls back.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    deadline: Option<Duration>,
    /// Platform policy (default: $ROLLWRIGHT_POLICY, else /etc/rollwright/policy.yaml).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Where runs and locks are kept.
    #[arg(long, value_name = "DIR", default_value = ".rollwright")]
    state_dir: PathBuf,
    /// Progress: live lines on a terminal (plain otherwise), or JSON events on stdout.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "FILE", conflicts_with = "sim")]
    kubeconfig: Option<PathBuf>,
    /// kubeconfig context instead of the spec's `target.context` (refused
    /// when the run is production, by the spec or by the policy).
    #[arg(long, value_name = "NAME", conflicts_with = "sim")]
    context: Option<String>,
    /// Run against the embedded cluster (started in this process, or the
    /// one `--attach` names); prints its kubeconfig so `kubectl` can watch.
    #[arg(long)]
    sim: bool,
    /// With `--sim`: the scenario (stable version, model registry, model
    /// behaviour, faults, time scale).
    #[arg(long, value_name = "FILE", requires = "sim", conflicts_with = "attach")]
    scenario: Option<PathBuf>,
    /// With `--sim`: how much faster than real time (default: the scenario's).
    #[arg(long, value_name = "N", requires = "sim", conflicts_with = "attach")]
    time_scale: Option<f64>,
    /// The directory strategies and templates must stay inside (default:
    /// the spec's repository — the nearest directory with `.git` — else the
    /// spec's own directory).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// With `--sim`: attach to an embedded cluster another process runs
    /// (`rollwright sim` prints its attach file); the run can then be resumed.
    #[arg(long, value_name = "FILE", requires = "sim")]
    attach: Option<PathBuf>,
}

#[derive(Args)]
pub struct ResumeArgs {
    /// The run to continue.
    #[arg(value_name = "RUN_ID")]
    run: String,
    /// Where runs and locks are kept.
    #[arg(long, value_name = "DIR", default_value = ".rollwright")]
    state_dir: PathBuf,
    /// Progress: live lines on a terminal (plain otherwise), or JSON events on stdout.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Output format of `status`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum StatusFormat {
    /// One line per run, or the steps of one run.
    Text,
    /// JSON.
    Json,
}

#[derive(Args)]
pub struct StatusArgs {
    /// One run (default: every run, newest first).
    #[arg(value_name = "RUN_ID")]
    run: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    format: StatusFormat,
    /// Where runs and locks are kept.
    #[arg(long, value_name = "DIR", default_value = ".rollwright")]
    state_dir: PathBuf,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    rollwright_engine::duration::parse(s).map_err(|e| e.to_string())
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
fn unbuildable(errors: Vec<String>) -> CliError {
    for e in errors {
        eprintln!("error: {e}");
    }
    CliError::findings("nothing was run")
}

fn state_code(s: FinalState) -> u8 {
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn new_run_id(name: &str) -> String {
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
fn run_key() -> CliResult<Arc<Key>> {
    Key::load_default()
        .map(Arc::new)
        .map_err(|e| CliError::state(e.to_string()))
}

fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("cannot start the runtime: {e}")))
}

/// Who runs rollwright locally: `ROLLWRIGHT_USER`, else `USER`, else the uid.
fn local_user() -> String {
    std::env::var("ROLLWRIGHT_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {}", uid()))
}

fn uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

fn run_dir(state_dir: &Path, run: &str) -> PathBuf {
    state_dir.join("runs").join(run)
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// The environment a run actually deploys to, decided from the cluster it
/// reaches: the spec's rules checked again for that cluster (a spec calling
/// a production cluster `staging` is refused), production when the spec or
/// the policy says so, and the policy's minimum gate.
struct Effective {
    production: bool,
    min_gate: Option<MinGate>,
}

fn effective(
    linter: &Linter,
    exp: &Expanded,
    spec: &Spec,
    reach: &Reach,
    context_flag: Option<&str>,
) -> CliResult<Effective> {
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
        let path = exp
            .sources
            .first()
            .map_or_else(String::new, |s| s.display.to_string());
        let bytes = rollwright_engine::fsread::read(Path::new(&path), rollwright_engine::fsread::DEFAULT_MAX)
            .unwrap_or_default();
        eprint!(
            "{}",
            render::Human::new(false).render_file(&path, &bytes, &errors)
        );
        return Err(CliError::findings(format!(
            "on the cluster this run reaches ({}), `{path}` breaks the policy; nothing was run",
            reached.server.as_deref().unwrap_or(&reached.context)
        )));
    }
    let derived = linter.policy().and_then(|p| p.derive(spec, Some(&reached)));
    let environment = derived.as_ref().map_or(target.environment, |d| d.environment);
    let production = target.environment == Environment::Production || environment == Environment::Production;
    if let Some(c) = context_flag
        && c != target.context
        && production
    {
        return Err(CliError::findings(format!(
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

/// Everything about a run that its journal header records.
struct Header {
    run: String,
    digest: String,
    spec: PathBuf,
    overrides: Vec<(String, Value)>,
    started_by: String,
    policy: Option<PathBuf>,
    reach: Reach,
    root: Option<PathBuf>,
}

impl Header {
    fn record(&self, policy: Option<&Policy>) -> Record {
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

    fn of(records: &[Record]) -> Option<Header> {
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
fn build_context(
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
fn starter(rt: &tokio::runtime::Runtime, spec: &Spec, reach: &Reach) -> String {
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

/// How to show and bound a run.
#[derive(Clone, Copy)]
struct Show {
    output: Output,
    deadline: Option<Duration>,
}

/// One run, ready to execute.
struct Launch<'a> {
    spec: &'a Spec,
    header: &'a Header,
    state_dir: &'a Path,
    key: Arc<Key>,
    runnable: rollwright_steps::runnable::Runnable,
    journal: Journal,
    resume: Resume,
    show: Show,
    rt: tokio::runtime::Runtime,
}

/// Journals events (group commit) and shows progress. A record a step must
/// have durable before it changes anything (`recorded`), a failure (so a
/// resume compensates) and the end are flushed at once; the answer says
/// whether they are durable.
fn journal_sink(journal: Arc<GroupCommit>, progress: Arc<Progress>) -> Sink {
    Arc::new(move |e: &Event| {
        progress.event(e);
        let Some(r) = journal::record_of(e) else {
            return Ok(());
        };
        let flush_now = matches!(
            r,
            Record::RunFinished { .. }
                | Record::Recorded { .. }
                | Record::StepFailed { tolerated: false, .. }
        );
        journal.append(r);
        if flush_now { journal.flush() } else { Ok(()) }
    })
}

/// Resolves with the reason when the run must stop: `rollwright abort`
/// (a file in the run directory), a journal that can no longer be written,
/// or the first SIGINT/SIGTERM (a second one exits at once).
fn stop_signal(
    abort_file: PathBuf,
    writer: Arc<GroupCommit>,
    run: String,
) -> exec::BoxFuture<'static, String> {
    Box::pin(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(t), Ok(i)) => (t, i),
            _ => return std::future::pending().await,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let why = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM".to_owned(),
                _ = int.recv() => break "SIGINT".to_owned(),
                _ = tick.tick() => {
                    if let Some(e) = writer.error() {
                        return format!("the journal can no longer be written ({e}); stopping and compensating as far as possible");
                    }
                    if let Ok(why) = std::fs::read_to_string(&abort_file) {
                        return why.trim().to_owned();
                    }
                }
            }
        };
        eprintln!(
            "{why}: stopping at the next safe point and rolling back (send it again to stop at once; `rollwright resume {run}` finishes the rollback)"
        );
        let w = writer.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            let _ = w.flush();
            eprintln!("stopped at once; the rollback is not finished: rollwright resume {run}");
            std::process::exit(i32::from(exit::INTERRUPTED));
        });
        format!("interrupted by {why}")
    })
}

fn execute(l: Launch<'_>) -> CliResult {
    let Launch {
        spec,
        header,
        state_dir,
        key,
        runnable,
        journal,
        resume,
        show,
        rt,
    } = l;
    let run = header.run.as_str();
    let reg = registry();
    let target = spec.target.as_ref().map_or_else(
        || "no-target".to_owned(),
        |t| {
            format!(
                "{}/{}",
                header.reach.server.as_deref().unwrap_or(&header.reach.context),
                t.namespace
            )
        },
    );
    let holder = format!("run {run} (pid {})", std::process::id());
    let _lock = TargetLock::acquire(&state_dir.join("locks"), &target, &holder)
        .map_err(|e| CliError::locked(e.to_string()))?;
    let _lease = match spec.target.as_ref().filter(|_| header.reach.reaches_cluster()) {
        Some(t) => {
            let cluster = rollwright_steps::cluster::Cluster::at(header.reach.clone(), &t.namespace)
                .map_err(|e| CliError::usage(e.to_string()))?;
            match rt.block_on(rollwright_steps::lease::TargetLease::acquire(cluster, run)) {
                Ok(l) => Some(l),
                Err(rollwright_steps::lease::LeaseError::Held(who)) => {
                    return Err(CliError::locked(format!(
                        "target {target} is locked in the cluster by another run ({who}); wait for it, or resume it"
                    )));
                }
                Err(rollwright_steps::lease::LeaseError::Api(e)) => {
                    // Nothing was changed: the cluster refused the run lock
                    // (no permission, unreachable) before the first step.
                    return Err(CliError::refused(format!("cannot take the target's Lease: {e}")));
                }
            }
        }
        None => None,
    };
    let writer = Arc::new(GroupCommit::start(journal));
    let progress = Arc::new(Progress::new(show.output));
    let sink = journal_sink(writer.clone(), progress.clone());
    // A change counts only for steps that change the target.
    let changes = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mutating: Vec<String> = spec
        .steps
        .iter()
        .filter(|s| {
            reg.get(&s.kind)
                .is_some_and(|k| matches!(k.role(), Role::Promote | Role::Restore))
        })
        .map(|s| s.id.clone())
        .collect();
    let seen = changes.clone();
    let inner = sink.clone();
    let sink: Sink = Arc::new(move |e: &Event| {
        if let Event::Recorded { step, .. } = e
            && mutating.contains(step)
        {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        inner(e)
    });
    if resume.recorded.iter().any(|m| {
        spec.steps.iter().any(|s| {
            s.id == m.step
                && reg
                    .get(&s.kind)
                    .is_some_and(|k| matches!(k.role(), Role::Promote | Role::Restore))
        })
    }) {
        changes.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    // Signal handlers are installed when the executor first polls this.
    let stop = stop_signal(
        run_dir(state_dir, run).join("abort"),
        writer.clone(),
        run.to_owned(),
    );
    let lease_lost = _lease.as_ref().map(rollwright_steps::lease::TargetLease::lost);
    let stop: exec::BoxFuture<'static, String> = Box::pin(async move {
        match lease_lost {
            Some(lost) => tokio::select! {
                why = stop => why,
                why = lost => why,
            },
            None => stop.await,
        }
    });
    let outcome = rt.block_on(exec::execute_resumed(
        runnable.steps,
        runnable.handlers,
        Options {
            run_deadline: show.deadline,
            ..Options::default()
        },
        sink,
        resume,
        Some(stop),
    ));
    if let Some(l) = _lease {
        rt.block_on(l.release());
    }
    let flushed = writer.flush();
    if let Some((step, error)) = &outcome.failure {
        progress.note(&format!("failed at `{step}`: {error}"));
    }
    if let Err(e) = write_report(state_dir, run, spec, &key) {
        progress.note(&format!("error: cannot write the report: {e}"));
    }
    for (step, e) in &outcome.left_over {
        progress.note(&format!("NOT ROLLED BACK: `{step}`: {e} — restore it by hand"));
    }
    if let Some(e) = writer.error().or(flushed.err()) {
        let what = match (outcome.state, outcome.left_over.is_empty()) {
            (FinalState::Succeeded, _) => "succeeded, but its end could not be journaled".to_owned(),
            (_, true) => "was stopped and compensated as far as it could".to_owned(),
            (_, false) => "was stopped and NOT fully compensated (see above)".to_owned(),
        };
        return Err(CliError::state(format!(
            "the journal could not be written ({e}): the run {what}; its journal ends before that point"
        )));
    }
    if show.output == Output::Text {
        println!("run {run}: {}", state_name(outcome.state));
    }
    let _ = std::io::stdout().flush();
    let refused = outcome.state == FinalState::RolledBack
        && !changes.load(std::sync::atomic::Ordering::SeqCst)
        && outcome.failure.as_ref().is_some_and(|(s, _)| s != "abort");
    if refused {
        // Already said by the step that refused.
        Err(CliError::refused(String::new()))
    } else {
        Ok(state_code(outcome.state))
    }
}

pub fn run(args: &RunArgs) -> CliResult {
    let policy = discover_policy(args.policy.as_deref())?;
    let overrides: Vec<(String, Value)> =
        match args.set.iter().map(|s| crate::plan_cmd::parse_set(s)).collect() {
            Ok(o) => o,
            Err(e) => return Err(CliError::usage(e.to_string())),
        };
    let linter = linter(policy.clone(), args.root.as_deref())?;
    let spec_path = absolute(&args.spec);
    let (exp, spec) = prepare(&linter, &spec_path, &overrides)?;
    let key = run_key()?;
    let rt = runtime()?;
    let run = new_run_id(&spec.metadata.name);
    // How the run reaches its cluster: decided here, once.
    let reach = if args.sim {
        let attach = match &args.attach {
            Some(f) => crate::sim_run::attach(f, &rt),
            None => crate::sim_run::start(
                args.scenario.as_deref(),
                args.time_scale,
                &spec,
                &args.state_dir.join("sim").join(&run),
            ),
        };
        match attach.and_then(|a| crate::sim_run::reach_of(&a, args.attach.as_deref(), &spec)) {
            Ok(r) => r,
            Err(e) => {
                // Nothing half-made stays behind.
                let _ = std::fs::remove_dir_all(args.state_dir.join("sim").join(&run));
                return Err(CliError::usage(e.to_string()));
            }
        }
    } else if let Some(t) = &spec.target {
        match Reach::real(
            args.kubeconfig.as_deref(),
            args.context.as_deref().unwrap_or(&t.context),
        ) {
            Ok(r) => r,
            Err(e) => return Err(CliError::usage(e.to_string())),
        }
    } else {
        Reach::default()
    };
    let eff = effective(&linter, &exp, &spec, &reach, args.context.as_deref())?;
    let header = Header {
        run: run.clone(),
        digest: journal::digest(&exp.value),
        spec: spec_path,
        overrides,
        started_by: starter(&rt, &spec, &reach),
        policy: policy.as_ref().map(|p| absolute(&p.path)),
        reach,
        root: args.root.as_deref().map(absolute),
    };
    // Every step must be buildable before the run exists: nothing half-created.
    let cx = build_context(
        &spec,
        run_dir(&args.state_dir, &run),
        &header,
        eff.production,
        &key,
    );
    let runnable = rollwright_steps::runnable::build(&spec, &registry(), &cx, eff.min_gate.as_ref())
        .map_err(unbuildable)?;
    let path = run_dir(&args.state_dir, &run).join("journal.jsonl");
    let mut journal = match Journal::create(&path, key.clone()) {
        Ok(j) => j,
        Err(e) => return Err(CliError::state(e.to_string())),
    };
    if let Err(e) = journal.append(&header.record(policy.as_ref())) {
        let _ = std::fs::remove_dir_all(run_dir(&args.state_dir, &run));
        return Err(CliError::state(e.to_string()));
    }
    eprintln!("run {run} (journal {})", path.display());
    execute(Launch {
        spec: &spec,
        header: &header,
        state_dir: &args.state_dir,
        key,
        runnable,
        journal,
        resume: Resume::default(),
        show: Show {
            output: args.output,
            deadline: args.deadline,
        },
        rt,
    })
}

/// A run as its (verified) journal says.
struct Opened {
    dir: PathBuf,
    records: Vec<Record>,
    header: Header,
    key: Arc<Key>,
}

/// Reads and verifies a run's journal.
fn open_run(state_dir: &Path, run: &str) -> CliResult<Opened> {
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
fn respec(o: &Opened) -> CliResult<(Linter, Option<Policy>, Expanded, Spec)> {
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
fn still_reaches(h: &Header, rt: &tokio::runtime::Runtime) -> CliResult<()> {
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
        None => h.reach.still_reaches().map_err(fail),
    }
}

/// What resume and abort share: the cluster reached again (and proven the
/// same), the runnable plan rebuilt from the re-expanded spec, and the
/// journal reopened for appending.
fn reopen(
    o: &Opened,
    linter: &Linter,
    exp: &Expanded,
    spec: &Spec,
) -> Result<
    (
        tokio::runtime::Runtime,
        rollwright_steps::runnable::Runnable,
        Journal,
    ),
    CliError,
> {
    let rt = runtime()?;
    still_reaches(&o.header, &rt)?;
    let eff = effective(linter, exp, spec, &o.header.reach, None)?;
    let cx = build_context(spec, o.dir.clone(), &o.header, eff.production, &o.key);
    let runnable = rollwright_steps::runnable::build(spec, &registry(), &cx, eff.min_gate.as_ref())
        .map_err(unbuildable)?;
    let journal = Journal::reopen(&o.dir.join("journal.jsonl"), o.key.clone())
        .map_err(|e| CliError::state(e.to_string()))?;
    Ok((rt, runnable, journal))
}

pub fn resume(args: &ResumeArgs) -> CliResult {
    let o = open_run(&args.state_dir, &args.run)?;
    let state = journal::state(&o.records);
    if let Some(done) = &state.finished {
        println!("run {}: already {done}", args.run);
        return Ok(match done.as_str() {
            "succeeded" => exit::OK,
            "rolled-back" => exit::ROLLED_BACK,
            _ => exit::ROLLBACK_FAILED,
        });
    }
    let (linter, _, exp, spec) = respec(&o)?;
    let (rt, mut runnable, journal) = reopen(&o, &linter, &exp, &spec)?;
    eprintln!(
        "resuming run {} ({} steps already done)",
        args.run,
        state.completed.len()
    );
    let failed = state.failed.into_iter().next();
    let ids: Vec<String> = state.completed.iter().map(|(id, _)| id.clone()).collect();
    let reg = registry();
    let kept = rollwright_steps::runnable::kept_on_resume(&spec, &reg, &ids, failed.is_some());
    rollwright_steps::runnable::rewire_for_resume(&mut runnable.steps, &spec, &reg, &kept);
    let resume = Resume {
        completed: state
            .completed
            .into_iter()
            .filter(|(id, _)| kept.contains(id))
            .collect(),
        compensated: state.compensated,
        failed,
        started: state.started,
        recorded: state.recorded,
    };
    execute(Launch {
        spec: &spec,
        header: &o.header,
        state_dir: &args.state_dir,
        key: o.key.clone(),
        runnable,
        journal,
        resume,
        show: Show {
            output: args.output,
            deadline: None,
        },
        rt,
    })
}

pub fn status(args: &StatusArgs) -> CliResult {
    let runs_dir = args.state_dir.join("runs");
    let mut runs: Vec<String> = match &args.run {
        Some(r) => vec![r.clone()],
        None => std::fs::read_dir(&runs_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default(),
    };
    runs.sort();
    runs.reverse();
    let key = run_key()?;
    let mut out = Vec::new();
    for run in runs {
        let records = journal::read(&runs_dir.join(&run).join("journal.jsonl"), &key)
            .map_err(|e| CliError::state(e.to_string()))?;
        let s = journal::state(&records);
        let spec = match records.first() {
            Some(Record::RunStarted { spec, .. }) => spec.clone(),
            _ => String::new(),
        };
        out.push(serde_json::json!({
            "run": run,
            "spec": spec,
            "state": s.finished.clone().unwrap_or_else(|| "running-or-interrupted".into()),
            "completed": s.completed.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
            "failed": s.failed.iter().map(|f| serde_json::json!({"step": f.0, "error": f.1})).collect::<Vec<_>>(),
            "compensated": s.compensated,
        }));
    }
    let text = match args.format {
        StatusFormat::Json => serde_json::to_string_pretty(&out).unwrap_or_default() + "\n",
        StatusFormat::Text => out
            .iter()
            .map(|r| {
                format!(
                    "{}  {}  {} steps done  {}\n",
                    r["run"].as_str().unwrap_or_default(),
                    r["state"].as_str().unwrap_or_default(),
                    r["completed"].as_array().map_or(0, Vec::len),
                    r["spec"].as_str().unwrap_or_default()
                )
            })
            .collect(),
    };
    print!("{text}");
    Ok(exit::OK)
}

#[derive(Args)]
pub struct ApproveArgs {
    /// The run.
    #[arg(value_name = "RUN_ID")]
    run: String,
    /// The approval step.
    #[arg(value_name = "STEP")]
    step: String,
    /// Who approves, for a run that reaches no cluster (local trust only).
    /// When the run reaches a cluster, the API server says who you are.
    #[arg(long = "as", value_name = "NAME")]
    who: Option<String>,
    /// Your kubeconfig (default: $KUBECONFIG, else ~/.kube/config): your
    /// credentials for the run's cluster, which authenticate you.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Your context for the run's cluster (default: the run's context name).
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Where runs and locks are kept.
    #[arg(long, value_name = "DIR", default_value = ".rollwright")]
    state_dir: PathBuf,
}

pub fn approve(args: &ApproveArgs) -> CliResult {
    let o = open_run(&args.state_dir, &args.run)?;
    let (_, _, _, spec) = respec(&o)?;
    let reg = registry();
    let approval_steps: Vec<&str> = spec
        .steps
        .iter()
        .filter(|s| reg.get(&s.kind).is_some_and(|k| k.approvable()))
        .map(|s| s.id.as_str())
        .collect();
    let Some(step) = spec.steps.iter().find(|s| s.id == args.step) else {
        return Err(CliError::usage(format!(
            "run {} has no step `{}`; its approval steps: {}",
            args.run,
            args.step,
            approval_steps.join(", ")
        )));
    };
    if !approval_steps.contains(&step.id.as_str()) {
        return Err(CliError::usage(format!(
            "step `{}` is a {}, not an approval",
            step.id, step.kind
        )));
    }
    if journal::state(&o.records).finished.is_some() {
        return Err(CliError::usage(format!("run {} has already finished", args.run)));
    }
    let h = &o.header;
    let identity = match (&spec.target, h.reach.reaches_cluster()) {
        (Some(t), true) => {
            // The approver's own credentials, for the run's cluster.
            let mine = match &h.reach.sim {
                Some(_) if args.kubeconfig.is_none() => {
                    return Err(CliError::usage(
                        "name your credentials for the run's embedded cluster with --kubeconfig (the API server authenticates approvers)",
                    ));
                }
                Some(_) => Reach::real(
                    args.kubeconfig.as_deref(),
                    args.context.as_deref().unwrap_or(&h.reach.context),
                ),
                None => Reach::real(
                    args.kubeconfig.as_deref(),
                    args.context.as_deref().unwrap_or(&h.reach.context),
                ),
            };
            let mine = mine.map_err(|e| CliError::usage(e.to_string()))?;
            let norm = |s: &Option<String>| s.as_deref().map(rollwright_engine::policy::normalize_server);
            if norm(&mine.server) != norm(&h.reach.server) {
                return Err(CliError::usage(format!(
                    "your kubeconfig reaches {}, but run {} runs on {}: approve with credentials for that cluster",
                    mine.server.as_deref().unwrap_or("no API server"),
                    h.run,
                    h.reach.server.as_deref().unwrap_or("an unknown API server")
                )));
            }
            let rt = runtime()?;
            let who = rollwright_steps::cluster::Cluster::at(mine.clone(), &t.namespace)
                .map_err(rollwright_engine::exec::StepError::failed)
                .and_then(|c| rt.block_on(async move { c.whoami().await }));
            let who = who.map_err(|e| {
                CliError::usage(format!(
                    "the cluster cannot say who you are, so your approval cannot be recorded: {e}"
                ))
            })?;
            if let Some(claimed) = &args.who
                && claimed != &who
            {
                return Err(CliError::usage(format!(
                    "you are `{who}` to the cluster, not `{claimed}`"
                )));
            }
            rollwright_steps::approval::Identity::Cluster {
                who,
                server: mine.server.unwrap_or_default(),
            }
        }
        _ => match &args.who {
            Some(w) => rollwright_steps::approval::Identity::Local(w.clone()),
            None => {
                return Err(CliError::usage(format!(
                    "run {} reaches no cluster: say who approves with --as NAME (local trust)",
                    args.run
                )));
            }
        },
    };
    let shown = match &identity {
        rollwright_steps::approval::Identity::Cluster { who, .. } => who.clone(),
        rollwright_steps::approval::Identity::Local(w) => format!("{w} (local trust)"),
    };
    match rollwright_steps::approval::record(&rollwright_steps::approval::Approver {
        run_dir: &o.dir,
        run: &h.run,
        step: &step.id,
        with: &step.with,
        started_by: &h.started_by,
        identity,
        key: &o.key,
    }) {
        Ok(()) => {
            println!("recorded: {shown} approves `{}` of run {}", step.id, args.run);
            Ok(exit::OK)
        }
        Err(e) => Err(CliError::usage(e.to_string())),
    }
}

#[derive(Args)]
pub struct AbortArgs {
    /// The run to abort.
    #[arg(value_name = "RUN_ID")]
    run: String,
    /// Who aborts (recorded).
    #[arg(long = "as", value_name = "NAME")]
    who: Option<String>,
    /// Where runs and locks are kept.
    #[arg(long, value_name = "DIR", default_value = ".rollwright")]
    state_dir: PathBuf,
    /// Progress: live lines on a terminal (plain otherwise), or JSON events on stdout.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// Aborts a run: a running process notices within a fraction of a second
/// and compensates; an interrupted run is compensated here and now.
pub fn abort(args: &AbortArgs) -> CliResult {
    let o = open_run(&args.state_dir, &args.run)?;
    let state = journal::state(&o.records);
    if let Some(done) = &state.finished {
        return Err(CliError::usage(format!(
            "run {} has already finished ({done})",
            args.run
        )));
    }
    let why = format!("aborted by {}", args.who.clone().unwrap_or_else(local_user));
    let tmp = o.dir.join(".abort.tmp");
    if let Err(e) = std::fs::write(&tmp, &why).and_then(|()| std::fs::rename(&tmp, o.dir.join("abort"))) {
        return Err(CliError::state(format!(
            "cannot record the abort in {}: {e}",
            o.dir.display()
        )));
    }
    let (linter, _, exp, spec) = respec(&o)?;
    let target = spec.target.as_ref().map_or_else(
        || "no-target".to_owned(),
        |t| {
            format!(
                "{}/{}",
                o.header
                    .reach
                    .server
                    .as_deref()
                    .unwrap_or(&o.header.reach.context),
                t.namespace
            )
        },
    );
    match TargetLock::acquire(&args.state_dir.join("locks"), &target, "abort check") {
        Err(journal::JournalError::Locked { .. }) => {
            println!(
                "abort requested: the process running {} is compensating",
                args.run
            );
            Ok(exit::OK)
        }
        Err(e) => Err(CliError::state(e.to_string())),
        Ok(lock) => {
            drop(lock);
            let (rt, runnable, journal) = reopen(&o, &linter, &exp, &spec)?;
            eprintln!("run {} is not running: compensating it now", args.run);
            let resume = Resume {
                completed: state.completed,
                compensated: state.compensated,
                failed: Some(state.failed.into_iter().next().unwrap_or(("abort".into(), why))),
                started: state.started,
                recorded: state.recorded,
            };
            execute(Launch {
                spec: &spec,
                header: &o.header,
                state_dir: &args.state_dir,
                key: o.key.clone(),
                runnable,
                journal,
                resume,
                show: Show {
                    output: args.output,
                    deadline: None,
                },
                rt,
            })
        }
    }
}

/// Writes `report.md` and `report.json` into the run directory.
fn write_report(state_dir: &Path, run: &str, spec: &Spec, key: &Key) -> Result<(), String> {
    let dir = run_dir(state_dir, run);
    let records = journal::read(&dir.join("journal.jsonl"), key).map_err(|e| e.to_string())?;
    let report = rollwright_engine::report::build(spec, &records, &registry());
    std::fs::write(dir.join("report.md"), report.to_markdown()).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
    std::fs::write(dir.join("report.json"), json).map_err(|e| e.to_string())
}

/// Report format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    /// Markdown.
    Md,
    /// JSON.
    Json,
}

#[derive(Args)]
pub struct ReportArgs {
    /// The run.
    #[arg(value_name = "RUN_ID")]
    run: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    format: ReportFormat,
    /// Where runs and locks are kept.
    #[arg(long, value_name = "DIR", default_value = ".rollwright")]
    state_dir: PathBuf,
}

/// Prints a run's report, rebuilt from its (verified) journal, so it
/// exists for interrupted runs too.
pub fn report(args: &ReportArgs) -> CliResult {
    let o = open_run(&args.state_dir, &args.run)?;
    let (_, _, _, spec) = respec(&o)?;
    let report = rollwright_engine::report::build(&spec, &o.records, &registry());
    match args.format {
        ReportFormat::Md => print!("{}", report.to_markdown()),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
    }
    Ok(exit::OK)
}
