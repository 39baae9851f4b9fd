//! `rollwright run`: a new run, and the execution every run shares (the
//! target's locks, the journal sink, signals, the outcome).

use super::*;
use std::collections::HashMap;

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
    /// With `--sim`: which API server the simulated cluster runs on.
    #[command(flatten)]
    api: crate::sim_cmd::ApiServerArgs,
}

/// How to show and bound a run.
#[derive(Clone, Copy)]
pub(super) struct Show {
    pub(super) output: Output,
    pub(super) deadline: Option<Duration>,
}

/// One run, ready to execute.
pub(super) struct Launch<'a> {
    pub(super) spec: &'a Spec,
    pub(super) header: &'a Header,
    pub(super) state_dir: &'a Path,
    pub(super) key: Arc<Key>,
    pub(super) runnable: rollwright_steps::runnable::Runnable,
    pub(super) journal: Journal,
    pub(super) resume: Resume,
    pub(super) show: Show,
    pub(super) rt: tokio::runtime::Runtime,
    /// The plan's timing budget, for the report.
    pub(super) budget: rollwright_engine::plan::Budget,
}

/// Journals events (group commit) and shows progress. A record a step must
/// have durable before it changes anything (`recorded`), a failure (so a
/// resume compensates) and the end are flushed at once; the answer says
/// whether they are durable.
pub(super) fn journal_sink(journal: Arc<GroupCommit>, progress: Arc<Progress>) -> Sink {
    let observed = std::sync::Mutex::new(HashMap::<String, Observed>::new());
    Arc::new(move |e: &Event| {
        progress.event(e);
        let Some((r, flush_now)) = journal_entry(&observed, e) else {
            return Ok(());
        };
        journal.append(r);
        if flush_now {
            journal.flush().map_err(|e| e.to_string())
        } else {
            Ok(())
        }
    })
}

/// What an event puts in the journal (observations thinned, see
/// [`worth_journaling`]), and whether it must be durable before the run
/// goes on: a record a step needs before it changes anything, a failure
/// (so that a resume compensates) and the end.
pub(crate) fn journal_entry(
    observed: &std::sync::Mutex<HashMap<String, Observed>>,
    e: &Event,
) -> Option<(Record, bool)> {
    if let Event::Observed { step, observation } = e
        && !worth_journaling(observed, step, observation)
    {
        return None;
    }
    let r = journal::record_of(e)?;
    let durable = matches!(
        r,
        Record::RunFinished { .. } | Record::Recorded { .. } | Record::StepFailed { tolerated: false, .. }
    );
    Some((r, durable))
}

/// Observations journaled per step: the first [`OBSERVED_IN_FULL`] in full;
/// after that each change of verdict (at most [`OBSERVED_CHANGES`] more)
/// and every [`OBSERVED_EVERY`]th — a day-long hold with a verdict that
/// flips at every evaluation still keeps a bounded journal (and report).
const OBSERVED_IN_FULL: u64 = 500;
const OBSERVED_CHANGES: u64 = 1_000;
const OBSERVED_EVERY: u64 = 100;

#[derive(Default)]
pub(crate) struct Observed {
    seen: u64,
    changes: u64,
    last: String,
}

fn worth_journaling(
    seen: &std::sync::Mutex<HashMap<String, Observed>>,
    step: &str,
    o: &rollwright_engine::exec::Observation,
) -> bool {
    let Ok(mut seen) = seen.lock() else { return true };
    let verdicts: String = o
        .metrics
        .iter()
        .map(|m| format!("{}={};", m.verdict, m.breaches))
        .collect();
    let s = seen.entry(step.to_owned()).or_default();
    s.seen += 1;
    let changed = s.last != verdicts;
    s.last = verdicts;
    if s.seen <= OBSERVED_IN_FULL || s.seen.is_multiple_of(OBSERVED_EVERY) {
        return true;
    }
    if changed && s.changes < OBSERVED_CHANGES {
        s.changes += 1;
        return true;
    }
    false
}

/// Resolves with the reason when the run must stop: `rollwright abort`
/// (a file in the run directory), a journal that can no longer be written,
/// or the first SIGINT/SIGTERM (a second one exits at once).
pub(super) fn stop_signal(
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

/// What the display shows of the plan.
fn board(spec: &Spec, run: &str, mutating: &[String]) -> crate::progress::Board {
    let plan = spec
        .steps
        .iter()
        .map(|s| crate::progress::PlanStep {
            id: s.id.clone(),
            kind: s.kind.clone(),
            changes: mutating.contains(&s.id),
        })
        .collect();
    let version = spec.model.as_ref().map(|m| {
        if m.version.starts_with('v') {
            m.version.clone()
        } else {
            format!("v{}", m.version)
        }
    });
    let mut title = format!("rollout {run}");
    if let Some(m) = &spec.model {
        title.push_str(&format!(
            " · {} {}",
            m.name,
            version.as_deref().unwrap_or_default()
        ));
    }
    if let Some(t) = &spec.target {
        title.push_str(&format!(" → {}/{}", t.context, t.namespace));
    }
    crate::progress::Board::new(title, plan, version)
}

pub(super) fn execute(l: Launch<'_>) -> CliResult {
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
        budget,
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
    // The steps that change the target: only they count as a change, and
    // only they are shown as rolled back.
    let mutating: Vec<String> = spec
        .steps
        .iter()
        .filter(|s| reg.get(&s.kind).is_some_and(|k| k.role().changes_target()))
        .map(|s| s.id.clone())
        .collect();
    // A resumed run that had recorded a change before has changed the target.
    let changes = Arc::new(std::sync::atomic::AtomicBool::new(
        resume.recorded.iter().any(|m| mutating.contains(&m.step)),
    ));
    let done: Vec<String> = resume.completed.iter().map(|(id, _)| id.clone()).collect();
    let progress = Arc::new(Progress::new(
        show.output,
        board(spec, run, &mutating).resumed(&done),
    ));
    if progress.is_live() {
        // Elapsed and remaining times move between events too.
        let weak = Arc::downgrade(&progress);
        std::thread::spawn(move || {
            while let Some(p) = weak.upgrade() {
                p.redraw();
                drop(p);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
    }
    let sink = journal_sink(writer.clone(), progress.clone());
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
    progress.finish();
    if let Some((step, error)) = &outcome.failure {
        progress.note(&format!("failed at `{step}`: {error}"));
    }
    match write_report(state_dir, run, spec, &key, Some(budget)) {
        Ok((path, summary)) => {
            progress.note(&format!("\n{summary}\nreport: {}", path.display()));
        }
        Err(e) => progress.note(&format!("error: cannot write the report: {e}")),
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
    if !args.api.is_default() && (!args.sim || args.attach.is_some()) {
        return Err(CliError::usage(
            "--control-plane and --kube-bin choose the API server `run --sim` starts (not with --attach: that one is running)",
        ));
    }
    let reach = if args.sim {
        let api = args.api.api_server()?;
        let attach = match &args.attach {
            Some(f) => crate::sim_run::attach(f, &rt),
            None => crate::sim_run::start(
                &api,
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
        budget: budget(&exp, &spec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollwright_engine::exec::{Measurement, Observation};

    #[test]
    fn a_day_long_hold_whose_verdict_flips_every_time_keeps_a_bounded_journal() {
        let seen = std::sync::Mutex::new(HashMap::new());
        let obs = |verdict: &str| Observation {
            metrics: vec![Measurement {
                name: "e".into(),
                value: Some(0.0),
                baseline: None,
                threshold: "<= 1".into(),
                upper: Some(1.0),
                lower: None,
                verdict: verdict.into(),
                breaches: 0,
                limit: 100_000,
            }],
            ..Observation::default()
        };
        let kept = (0..86_400)
            .filter(|i| {
                worth_journaling(
                    &seen,
                    "hold",
                    &obs(if i % 2 == 0 { "pass" } else { "inconclusive" }),
                )
            })
            .count();
        assert!(kept <= 500 + 1_000 + 864, "{kept}");
        assert!(kept >= 500, "{kept}");
    }
}
