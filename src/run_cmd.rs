//! `rollwright run`, `resume` and `status`: execute a plan with a crash-safe
//! journal under `.rollwright/runs/<run-id>/`.
//!
//! Every event is appended to the journal and fsynced before the run moves
//! on; `resume RUN_ID` rebuilds the state from it (completed steps are not
//! repeated, the interrupted one is run again, compensation continues where
//! it stopped) and refuses a spec whose expansion changed. One run per
//! target at a time (a lock file naming its holder).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use rollwright_engine::exec::{self, Event, FinalState, Limits, Node, Options, Resume, Sink, Step};
use rollwright_engine::journal::{self, GroupCommit, Journal, Record, TargetLock};
use rollwright_engine::policy::Policy;
use rollwright_engine::registry::{BuildContext, Registry, Role};
use rollwright_engine::spec::{Environment, Spec};
use rollwright_engine::{Limits as LoadLimits, Linter};
use rollwright_steps::gate_check::Guarded;
use serde_json::Value;

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
    /// Platform policy (default: $ROLLWRIGHT_POLICY, else .rollwright/policy.yaml if present).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Where runs and locks are kept.
    #[arg(long, value_name = "DIR", default_value = ".rollwright")]
    state_dir: PathBuf,
    /// Progress: live lines on a terminal (plain otherwise), or JSON events on stdout.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// kubeconfig context instead of the spec's `target.context` (refused in
    /// production unless it is the same).
    #[arg(long, value_name = "NAME", conflicts_with = "sim")]
    context: Option<String>,
    /// Run against the embedded cluster, started in this process (prints
    /// its kubeconfig so `kubectl` can watch).
    #[arg(long, conflicts_with = "kubeconfig")]
    sim: bool,
    /// With `--sim`: the scenario (stable version, model registry, model
    /// behaviour, faults, time scale).
    #[arg(long, value_name = "FILE", requires = "sim")]
    scenario: Option<PathBuf>,
    /// With `--sim`: how much faster than real time (default: the scenario's).
    #[arg(long, value_name = "N", requires = "sim")]
    time_scale: Option<f64>,
    /// Used by `rollwright test`: run against a sim it started (its model
    /// servers, registry file and time scale).
    #[arg(long, hide = true, value_name = "URL", requires = "kubeconfig")]
    sim_endpoint: Option<String>,
    #[arg(long, hide = true, value_name = "FILE", requires = "sim_endpoint")]
    sim_registry: Option<PathBuf>,
    #[arg(long, hide = true, value_name = "N", requires = "sim_endpoint")]
    sim_time_scale: Option<f64>,
    #[arg(long, hide = true, value_name = "DIR", requires = "sim_endpoint")]
    sim_gitops_repo: Option<PathBuf>,
}

/// How a run reaches its cluster; saved in the run directory so that
/// `resume` and `abort` use the same.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct ClusterFlags {
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    /// The inference endpoint instead of `serving.endpoint` (the sim's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    /// The model registry file instead of `model.registry` (the sim's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registry_file: Option<PathBuf>,
    /// Holds run this much faster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_scale: Option<f64>,
    /// The repository instead of `target.gitops.repo` (the sim's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gitops_repo: Option<PathBuf>,
}

impl ClusterFlags {
    fn of_run(rdir: &Path) -> Self {
        std::fs::read(rdir.join("cluster.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
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

/// The policy in force for this process (`--policy` is exported by the CLI
/// as `ROLLWRIGHT_POLICY`, so resume, approve and abort see the same one).
pub(crate) fn current_policy() -> Option<Policy> {
    Policy::discover(None).ok().flatten()
}

pub(crate) fn registry() -> Registry {
    // The test-only kinds (`sleep`, `fail`) exist only when asked for.
    if std::env::var_os("ROLLWRIGHT_TEST_STEPS").is_some() {
        rollwright_steps::registry_with_test_steps()
    } else {
        rollwright_steps::registry()
    }
}

fn state_code(s: FinalState) -> u8 {
    match s {
        FinalState::Succeeded => exit::OK,
        FinalState::RolledBack => exit::ROLLED_BACK,
        FinalState::RollbackFailed => exit::ROLLBACK_FAILED,
    }
}

use crate::progress::{Output, Progress, state_name};

/// Lints and expands a spec; prints problems and returns None when it has errors.
pub(crate) fn prepare(
    linter: &Linter,
    spec: &Path,
    overrides: &[(String, Value)],
) -> Result<(Spec, Value), u8> {
    let bytes = std::fs::read(spec).map_err(|e| {
        eprintln!("error: cannot read `{}`: {e}", spec.display());
        exit::USAGE
    })?;
    let path = spec.to_string_lossy().into_owned();
    let human = render::Human::new(false);
    match linter.prepare(spec, &bytes, overrides) {
        Ok((exp, s, warnings)) => {
            if !warnings.is_empty() {
                eprint!("{}", human.render_file(&path, &bytes, &warnings));
            }
            Ok((s, exp.value))
        }
        Err(diags) => {
            eprint!("{}", human.render_file(&path, &bytes, &diags));
            eprintln!("error: `{path}` has errors; nothing was run");
            Err(exit::FINDINGS)
        }
    }
}

/// Builds the executable nodes; any kind that cannot run is reported.
fn nodes(registry: &Registry, spec: &Spec, cx: &BuildContext) -> Result<(Vec<Node>, Vec<Node>), Vec<String>> {
    // The environment that counts is the policy's, and gates are at least
    // as strict as the policy's minimum for it.
    let policy = current_policy();
    let derived = policy.as_ref().and_then(|p| p.derive(spec));
    let production = derived.as_ref().map_or_else(
        || spec.is_production(),
        |d| d.environment == Environment::Production,
    );
    let min_gate = policy
        .as_ref()
        .zip(derived.as_ref())
        .and_then(|(p, d)| p.rules(d.environment))
        .and_then(|r| r.gate.clone());
    let is_gate = |kind: &str| registry.get(kind).is_some_and(|k| k.role() == Role::Gate);
    let gate_with = |kind: &str, with: &Value| -> Value {
        match (&min_gate, is_gate(kind)) {
            (Some(min), true) => rollwright_engine::policy::strengthen(with, min),
            _ => with.clone(),
        }
    };
    let limits = |t: Option<&String>, a: Option<&String>, r: Option<&Value>| Limits::of(spec, t, a, r);
    let mut errors = Vec::new();
    let mut build = |id: &str, kind: &str, with: &Value| -> Option<Arc<dyn Step>> {
        let cx = BuildContext {
            step: id.trim_end_matches(" (compensation)").to_owned(),
            ..cx.clone()
        };
        match registry
            .get(kind)
            .ok_or_else(|| format!("unknown step kind `{kind}`"))
            .and_then(|k| k.build(with, &cx))
        {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(format!("step `{id}`: {e}"));
                None
            }
        }
    };
    // Gates re-evaluated live before each production change (`recheck`, default true).
    let rechecks: Vec<Arc<dyn Step>> = spec
        .steps
        .iter()
        .filter(|s| registry.get(&s.kind).is_some_and(|k| k.role() == Role::Gate))
        .filter(|s| s.with.get("recheck").and_then(Value::as_bool).unwrap_or(true))
        .filter_map(|s| {
            registry
                .get(&s.kind)
                .and_then(|k| k.build(&gate_with(&s.kind, &s.with), cx).ok())
        })
        .collect();
    let mut steps = Vec::new();
    for s in &spec.steps {
        let step = build(&s.id, &s.kind, &gate_with(&s.kind, &s.with));
        let comp = s.compensate.as_ref().and_then(|c| {
            build(&format!("{} (compensation)", s.id), &c.kind, &c.with).map(|b| {
                (
                    b,
                    limits(c.timeout.as_ref(), c.attempt_timeout.as_ref(), c.retry.as_ref()),
                )
            })
        });
        // Production changes check for a passing gate of this exact version,
        // at run time, whatever the spec says.
        let step = match (&spec.model, step) {
            (Some(m), Some(inner))
                if production && registry.get(&s.kind).is_some_and(|k| k.role() == Role::Promote) =>
            {
                Some(Arc::new(Guarded {
                    model: m.name.clone(),
                    version: m.version.clone(),
                    inner,
                    recheck: rechecks.clone(),
                }) as Arc<dyn Step>)
            }
            (_, step) => step,
        };
        if let Some(step) = step {
            let own = limits(s.timeout.as_ref(), s.attempt_timeout.as_ref(), s.retry.as_ref());
            // Without an explicit `compensate`, the step's own compensation
            // (a no-op for kinds that change nothing) undoes it.
            let compensation = comp.or_else(|| Some((step.clone(), own)));
            steps.push(Node {
                id: s.id.clone(),
                needs: s.needs.clone(),
                step,
                limits: own,
                compensation,
                continue_on_failure: s.continue_on_failure
                    || registry
                        .get(&s.kind)
                        .is_some_and(|k| k.tolerates_failure(&s.with)),
            });
        }
    }
    let mut handlers = Vec::new();
    for h in &spec.on_failure {
        if let Some(step) = build(&h.id, &h.kind, &h.with) {
            handlers.push(Node {
                id: h.id.clone(),
                needs: Vec::new(),
                step,
                limits: limits(h.timeout.as_ref(), h.attempt_timeout.as_ref(), h.retry.as_ref()),
                compensation: None,
                continue_on_failure: true,
            });
        }
    }
    if errors.is_empty() {
        Ok((steps, handlers))
    } else {
        Err(errors)
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

/// Journals events (group commit) and shows progress.
fn journal_sink(journal: Arc<GroupCommit>, progress: Arc<Progress>) -> Sink {
    // A testing hook: abort (as a kill -9 would) once N records are durable,
    // to prove that resume works from every record boundary.
    let crash_after: Option<usize> = std::env::var("ROLLWRIGHT_TEST_CRASH_AFTER_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok());
    let written = Mutex::new(1usize); // run-started is record 1
    // The same, right after the first record whose JSON contains this text.
    let crash_at: Option<String> = std::env::var("ROLLWRIGHT_TEST_CRASH_AT").ok();
    Arc::new(move |e: &Event| {
        progress.event(e);
        let Some(r) = journal::record_of(e) else { return };
        let crash_here = crash_at
            .as_deref()
            .is_some_and(|m| serde_json::to_string(&r).is_ok_and(|t| t.contains(m)));
        // A record must be durable before the step changes what it records.
        let flush_now = matches!(r, Record::RunFinished { .. } | Record::Recorded { .. });
        journal.append(r);
        if flush_now {
            let _ = journal.flush();
        }
        if crash_here {
            let _ = journal.flush();
            std::process::abort();
        }
        if let (Some(c), Ok(mut n)) = (crash_after, written.lock()) {
            *n += 1;
            if *n >= c {
                let _ = journal.flush();
                std::process::abort();
            }
        }
    })
}

/// Starts the embedded cluster for `run --sim` on a thread of its own (it
/// lives as long as the process): the scenario's objects, the target
/// namespace, a kubeconfig whose context is the spec's, and the scenario's
/// model registry.
fn start_sim(args: &RunArgs, spec: &Spec, run: &str) -> Result<ClusterFlags, String> {
    let mut scenario = match &args.scenario {
        Some(p) => rollwright_sim::Scenario::load(p).map_err(|e| e.to_string())?,
        None => rollwright_sim::Scenario::default(),
    };
    if let Some(t) = args.time_scale {
        if !(t.is_finite() && (0.001..=100_000.0).contains(&t)) {
            return Err(format!("--time-scale must be between 0.001 and 100000, not {t}"));
        }
        scenario.time_scale = rollwright_sim::scenario::TimeScale(t);
    }
    let target = spec.target.clone().ok_or("--sim needs the spec's `target`")?;
    // The target namespace exists in the sim unless the scenario makes it.
    scenario.ensure_namespace(&target.namespace);
    let time_scale = scenario.time_scale.0;
    let registry = scenario.registry.clone();
    let dir = args.state_dir.join("sim").join(run);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let kc_path = dir.join("kubeconfig");
    let (tx, rx) = std::sync::mpsc::channel();
    let (context, kc) = (target.context.clone(), kc_path.clone());
    let gitops_url = target.gitops.as_ref().map(|g| g.repo.clone());
    let repos_dir = dir.join("repos");
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            let options = rollwright_sim::SimOptions {
                scenario,
                // Kept after the run, to look at its history.
                repositories_dir: Some(repos_dir),
                ..rollwright_sim::SimOptions::default()
            };
            match rollwright_sim::Sim::start_with(options).await {
                Ok(sim) => {
                    // The scenario's world (the stable version) is up before the run starts.
                    let _ = sim.settled(std::time::Duration::from_secs(60)).await;
                    // A GitOps target pushes to the sim's repository, never elsewhere.
                    let repo = gitops_url.as_deref().map(|u| sim.repository_for(u)).transpose();
                    let written = repo.and_then(|repo| {
                        sim.write_kubeconfig_for(&kc, &context)
                            .map(|()| (sim.models_url(), sim.url(), repo))
                            .map_err(|e| format!("{}: {e}", kc.display()))
                    });
                    let _ = tx.send(written);
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
    });
    let (models, api, gitops_repo) = rx.recv().map_err(|e| e.to_string())??;
    let registry_file = match registry {
        Some(r) => {
            let p = dir.join("registry.yaml");
            write_registry(&p, &r)?;
            Some(p)
        }
        None => None,
    };
    eprintln!("embedded cluster: {api} (time scale {time_scale}x), model servers {models}");
    if let Some(r) = &gitops_repo {
        eprintln!(
            "GitOps repository (the sim's, kept after the run): git -C {} log --oneline",
            r.display()
        );
    }
    eprintln!(
        "watch it:  kubectl --kubeconfig {} get all -n {}",
        kc_path.display(),
        target.namespace
    );
    Ok(ClusterFlags {
        kubeconfig: Some(kc_path),
        context: None,
        endpoint: Some(models),
        registry_file,
        time_scale: Some(time_scale),
        gitops_repo,
    })
}

/// Writes a file model registry: `registry` is `{models: [...]}` or the list itself.
pub(crate) fn write_registry(path: &Path, registry: &Value) -> Result<(), String> {
    let mut doc = serde_json::json!({"apiVersion": "rollwright.dev/v1alpha1", "kind": "ModelRegistry"});
    doc["models"] = registry
        .get("models")
        .cloned()
        .unwrap_or_else(|| registry.clone());
    std::fs::write(path, doc.to_string()).map_err(|e| format!("{}: {e}", path.display()))
}

/// What step builders of a run see: one place, for the pre-run check and the run.
fn build_context(
    spec: &Spec,
    spec_path: &Path,
    state_dir: &Path,
    run: &str,
    started_by: &str,
    cluster: &ClusterFlags,
) -> BuildContext {
    BuildContext {
        target: spec
            .target
            .as_ref()
            .map(|t| rollwright_engine::registry::TargetInfo {
                context: t.context.clone(),
                namespace: t.namespace.clone(),
                production: t.environment == Environment::Production,
                gitops: t.gitops.clone().map(|mut g| {
                    if let Some(r) = &cluster.gitops_repo {
                        g.repo = r.to_string_lossy().into_owned();
                    }
                    g
                }),
            }),
        serving: spec.serving.clone().map(|mut sv| {
            // On the embedded cluster the sim's router addresses versions.
            if let Some(e) = &cluster.endpoint {
                sv.endpoint = Some(e.clone());
                sv.canary_headers = None;
                sv.stable_headers = None;
            }
            sv
        }),
        manifests: spec.manifests.clone(),
        kubeconfig: cluster.kubeconfig.clone(),
        context: cluster.context.clone(),
        step: String::new(),
        time_scale: cluster.time_scale.unwrap_or(1.0),
        registry_file: cluster.registry_file.clone(),
        spec_dir: spec_path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(".")),
        run_dir: run_dir(state_dir, run),
        started_by: started_by.to_owned(),
        run_id: run.to_owned(),
        model: spec
            .model
            .as_ref()
            .map(|m| (m.registry.clone(), m.name.clone(), m.version.clone())),
    }
}

/// Who runs rollwright: `ROLLWRIGHT_USER`, else `USER`.
fn current_user() -> String {
    std::env::var("ROLLWRIGHT_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into())
}

fn run_dir(state_dir: &Path, run: &str) -> PathBuf {
    state_dir.join("runs").join(run)
}

/// How to show and bound a run.
#[derive(Clone, Copy)]
struct Show {
    output: Output,
    deadline: Option<Duration>,
}

fn execute(
    spec: &Spec,
    spec_path: &Path,
    journal: Journal,
    run: &str,
    state_dir: &Path,
    resume: Resume,
    show: Show,
) -> u8 {
    let Show { output, deadline } = show;
    let registry = registry();
    let rdir = run_dir(state_dir, run);
    let started_by = std::fs::read_to_string(rdir.join("started-by")).unwrap_or_else(|_| current_user());
    let cx = build_context(
        spec,
        spec_path,
        state_dir,
        run,
        started_by.trim(),
        &ClusterFlags::of_run(&rdir),
    );
    let (mut steps, handlers) = match nodes(&registry, spec, &cx) {
        Ok(n) => n,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return exit::FINDINGS;
        }
    };
    // A resumed run evaluates its gates again: nothing left to do starts
    // before they pass (their outputs are what production changes check).
    if !resume.completed.is_empty() {
        let done = |id: &str| resume.completed.iter().any(|(c, _)| c == id);
        let gates: Vec<String> = spec
            .steps
            .iter()
            .filter(|s| registry.get(&s.kind).is_some_and(|k| k.role() == Role::Gate) && !done(&s.id))
            .map(|s| s.id.clone())
            .collect();
        for n in &mut steps {
            if !done(&n.id) && !gates.contains(&n.id) {
                for g in &gates {
                    if !n.needs.contains(g) {
                        n.needs.push(g.clone());
                    }
                }
            }
        }
    }
    let target = spec.target.as_ref().map_or_else(
        || "no-target".to_owned(),
        |t| format!("{}/{}", t.context, t.namespace),
    );
    let _lock = match TargetLock::acquire(
        &state_dir.join("locks"),
        &target,
        &format!("run {run} (pid {})", std::process::id()),
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::USAGE;
        }
    };
    let writer = Arc::new(GroupCommit::start(journal));
    let progress = Arc::new(Progress::new(output));
    let sink = journal_sink(writer.clone(), progress.clone());
    // `rollwright abort` from another process leaves a file here.
    let abort_file = run_dir(state_dir, run).join("abort");
    let abort: exec::BoxFuture<'static, String> = Box::pin(async move {
        loop {
            if let Ok(why) = std::fs::read_to_string(&abort_file) {
                return why.trim().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let outcome = runtime.block_on(exec::execute_resumed(
        steps,
        handlers,
        Options {
            run_deadline: deadline,
            ..Options::default()
        },
        sink,
        resume,
        Some(abort),
    ));
    let flushed = writer.flush();
    if let Some(e) = writer.error().or(flushed.err()) {
        eprintln!("error: the journal could not be written ({e}); the run cannot be resumed reliably");
        return exit::USAGE;
    }
    if let Some((step, error)) = &outcome.failure {
        progress.note(&format!("failed at `{step}`: {error}"));
    }
    if let Err(e) = write_report(state_dir, run, spec) {
        eprintln!("error: cannot write the report: {e}");
    }
    for (step, e) in &outcome.left_over {
        progress.note(&format!("NOT ROLLED BACK: `{step}`: {e} — restore it by hand"));
    }
    if output == Output::Text {
        println!("run {run}: {}", state_name(outcome.state));
    }
    let _ = std::io::stdout().flush();
    state_code(outcome.state)
}

pub fn run(args: &RunArgs) -> u8 {
    if let Some(p) = &args.policy {
        if let Err(e) = Policy::load(p) {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
        // SAFETY: set before any thread starts; read by this process only.
        unsafe { std::env::set_var("ROLLWRIGHT_POLICY", p) };
    }
    let overrides: Vec<(String, Value)> =
        match args.set.iter().map(|s| crate::plan_cmd::parse_set(s)).collect() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        };
    let linter = match Linter::new(registry(), LoadLimits::default()).map(|l| l.with_policy(current_policy()))
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let (spec, value) = match prepare(&linter, &args.spec, &overrides) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let run = new_run_id(&spec.metadata.name);
    // Every step must be buildable before the run exists: nothing half-created.
    let cluster = if args.sim {
        match start_sim(args, &spec, &run) {
            Ok(c) => c,
            Err(e) => {
                // Nothing half-made stays behind.
                let _ = std::fs::remove_dir_all(args.state_dir.join("sim").join(&run));
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        }
    } else {
        ClusterFlags {
            kubeconfig: args
                .kubeconfig
                .clone()
                .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
                .map(|p| std::fs::canonicalize(&p).unwrap_or(p)),
            context: args.context.clone(),
            endpoint: args.sim_endpoint.clone(),
            registry_file: args.sim_registry.clone(),
            time_scale: args.sim_time_scale,
            gitops_repo: args.sim_gitops_repo.clone(),
        }
    };
    let probe = build_context(
        &spec,
        &args.spec,
        &args.state_dir,
        &run,
        &current_user(),
        &cluster,
    );
    if let Err(errors) = nodes(&registry(), &spec, &probe) {
        for e in errors {
            eprintln!("error: {e}");
        }
        eprintln!("error: nothing was run");
        return exit::FINDINGS;
    }
    let path = run_dir(&args.state_dir, &run).join("journal.jsonl");
    let mut journal = match Journal::create(&path) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let header = Record::RunStarted {
        run: run.clone(),
        digest: journal::digest(&value),
        spec: args.spec.to_string_lossy().into_owned(),
        at_ms: now_ms(),
    };
    let overrides_file = run_dir(&args.state_dir, &run).join("overrides.json");
    let saved = serde_json::to_vec(&overrides).unwrap_or_default();
    if let Ok(p) = std::env::var("ROLLWRIGHT_POLICY") {
        let abs = std::fs::canonicalize(&p).unwrap_or_else(|_| PathBuf::from(&p));
        let _ = std::fs::create_dir_all(run_dir(&args.state_dir, &run));
        let _ = std::fs::write(
            run_dir(&args.state_dir, &run).join("policy"),
            abs.to_string_lossy().as_bytes(),
        );
    }
    if let Err(e) = std::fs::write(&overrides_file, saved)
        .and_then(|()| std::fs::write(run_dir(&args.state_dir, &run).join("started-by"), current_user()))
        .and_then(|()| {
            std::fs::write(
                run_dir(&args.state_dir, &run).join("cluster.json"),
                serde_json::to_vec(&cluster).unwrap_or_default(),
            )
        })
    {
        eprintln!(
            "error: cannot write the run directory {}: {e}",
            run_dir(&args.state_dir, &run).display()
        );
        return exit::USAGE;
    }
    if let Err(e) = journal.append(&header) {
        eprintln!("error: {e}");
        return exit::USAGE;
    }
    eprintln!("run {run} (journal {})", path.display());
    execute(
        &spec,
        &args.spec,
        journal,
        &run,
        &args.state_dir,
        Resume::default(),
        Show {
            output: args.output,
            deadline: args.deadline,
        },
    )
}

pub fn resume(args: &ResumeArgs) -> u8 {
    let (dir, records) = match run_records(&args.state_dir, &args.run) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let path = dir.join("journal.jsonl");
    let Some(Record::RunStarted { spec, digest, .. }) = records.first().cloned() else {
        return exit::USAGE;
    };
    let state = journal::state(&records);
    if let Some(done) = &state.finished {
        println!("run {}: already {done}", args.run);
        return match done.as_str() {
            "succeeded" => exit::OK,
            "rolled-back" => exit::ROLLED_BACK,
            _ => exit::ROLLBACK_FAILED,
        };
    }
    let spec_path = PathBuf::from(&spec);
    let (typed, value) = match run_spec_of(&dir, &records) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if journal::digest(&value) != digest {
        eprintln!(
            "error: `{spec}` changed since run {} started; resume refuses a different spec (start a new run)",
            args.run
        );
        return exit::USAGE;
    }
    let journal = match Journal::reopen(&path) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    eprintln!(
        "resuming run {} ({} steps already done)",
        args.run,
        state.completed.len()
    );
    // Gates are re-checked on every resume: an approval revoked (or a journal
    // edited) while the run was down must not carry the run on.
    let reg = registry();
    let is_gate = |id: &str| {
        typed
            .steps
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| reg.get(&s.kind))
            .is_some_and(|k| k.role() == Role::Gate)
    };
    let failed = state.failed.into_iter().next();
    let completed = if failed.is_some() {
        state.completed
    } else {
        state
            .completed
            .into_iter()
            .filter(|(id, _)| !is_gate(id))
            .collect()
    };
    let resume = Resume {
        completed,
        compensated: state.compensated,
        failed,
        started: state.started,
        recorded: state.recorded,
    };
    execute(
        &typed,
        &spec_path,
        journal,
        &args.run,
        &args.state_dir,
        resume,
        Show {
            output: args.output,
            deadline: None,
        },
    )
}

pub fn status(args: &StatusArgs) -> u8 {
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
    let mut out = Vec::new();
    for run in runs {
        let records = match journal::read(&runs_dir.join(&run).join("journal.jsonl")) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        };
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
    exit::OK
}

#[derive(Args)]
pub struct ApproveArgs {
    /// The run.
    #[arg(value_name = "RUN_ID")]
    run: String,
    /// The approval step.
    #[arg(value_name = "STEP")]
    step: String,
    /// Who approves (never the person who started the run).
    #[arg(long = "as", value_name = "NAME")]
    who: String,
    /// Where runs and locks are kept.
    #[arg(long, value_name = "DIR", default_value = ".rollwright")]
    state_dir: PathBuf,
}

/// Uses the policy a run started with, unless one is named explicitly.
fn adopt_policy(dir: &Path) {
    if std::env::var_os("ROLLWRIGHT_POLICY").is_none()
        && let Ok(p) = std::fs::read_to_string(dir.join("policy"))
    {
        // SAFETY: set before any thread starts; read by this process only.
        unsafe { std::env::set_var("ROLLWRIGHT_POLICY", p.trim()) };
    }
}

/// Reads a run's journal (adopting the policy it started with).
fn run_records(state_dir: &Path, run: &str) -> Result<(PathBuf, Vec<Record>), u8> {
    let dir = run_dir(state_dir, run);
    adopt_policy(&dir);
    let records = journal::read(&dir.join("journal.jsonl")).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })?;
    match records.first() {
        Some(Record::RunStarted { .. }) => Ok((dir, records)),
        _ => Err(exit::USAGE),
    }
}

/// Re-expands the spec a run started with (same overrides, same policy).
fn run_spec_of(dir: &Path, records: &[Record]) -> Result<(Spec, Value), u8> {
    let Some(Record::RunStarted { spec, .. }) = records.first() else {
        return Err(exit::USAGE);
    };
    let overrides: Vec<(String, Value)> = std::fs::read(dir.join("overrides.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let linter = Linter::new(registry(), LoadLimits::default())
        .map(|l| l.with_policy(current_policy()))
        .map_err(|e| {
            eprintln!("error: {e}");
            exit::USAGE
        })?;
    prepare(&linter, Path::new(spec), &overrides)
}

/// Reads a run's header and re-expands its spec (same overrides).
fn run_spec(state_dir: &Path, run: &str) -> Result<(Spec, Vec<Record>), u8> {
    let (dir, records) = run_records(state_dir, run)?;
    let (typed, _) = run_spec_of(&dir, &records)?;
    Ok((typed, records))
}

pub fn approve(args: &ApproveArgs) -> u8 {
    let (spec, records) = match run_spec(&args.state_dir, &args.run) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let Some(step) = spec.steps.iter().find(|s| s.id == args.step) else {
        let approvals: Vec<&str> = spec
            .steps
            .iter()
            .filter(|s| s.kind == "approval")
            .map(|s| s.id.as_str())
            .collect();
        eprintln!(
            "error: run {} has no step `{}`; its approval steps: {}",
            args.run,
            args.step,
            approvals.join(", ")
        );
        return exit::USAGE;
    };
    if step.kind != "approval" {
        eprintln!("error: step `{}` is a {}, not an approval", step.id, step.kind);
        return exit::USAGE;
    }
    if journal::state(&records).finished.is_some() {
        eprintln!("error: run {} has already finished", args.run);
        return exit::USAGE;
    }
    let dir = run_dir(&args.state_dir, &args.run);
    let started_by = std::fs::read_to_string(dir.join("started-by")).unwrap_or_default();
    match rollwright_steps::approval::record(&dir, &step.id, &step.with, started_by.trim(), &args.who) {
        Ok(()) => {
            println!(
                "recorded: {} approves `{}` of run {}",
                args.who, step.id, args.run
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
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
pub fn abort(args: &AbortArgs) -> u8 {
    let (spec, records) = match run_spec(&args.state_dir, &args.run) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let state = journal::state(&records);
    if let Some(done) = &state.finished {
        eprintln!("error: run {} has already finished ({done})", args.run);
        return exit::USAGE;
    }
    let dir = run_dir(&args.state_dir, &args.run);
    let why = format!("aborted by {}", args.who.clone().unwrap_or_else(current_user));
    let tmp = dir.join(".abort.tmp");
    if let Err(e) = std::fs::write(&tmp, &why).and_then(|()| std::fs::rename(&tmp, dir.join("abort"))) {
        eprintln!("error: cannot record the abort in {}: {e}", dir.display());
        return exit::USAGE;
    }
    let target = spec.target.as_ref().map_or_else(
        || "no-target".to_owned(),
        |t| format!("{}/{}", t.context, t.namespace),
    );
    match TargetLock::acquire(&args.state_dir.join("locks"), &target, "abort check") {
        Err(journal::JournalError::Locked { .. }) => {
            println!(
                "abort requested: the process running {} is compensating",
                args.run
            );
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
        Ok(lock) => {
            drop(lock);
            let journal = match Journal::reopen(&dir.join("journal.jsonl")) {
                Ok(j) => j,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::USAGE;
                }
            };
            let Some(Record::RunStarted { spec: spec_path, .. }) = records.first() else {
                return exit::USAGE;
            };
            eprintln!("run {} is not running: compensating it now", args.run);
            let resume = Resume {
                completed: state.completed,
                compensated: state.compensated,
                failed: Some(state.failed.into_iter().next().unwrap_or(("abort".into(), why))),
                started: state.started,
                recorded: state.recorded,
            };
            execute(
                &spec,
                Path::new(spec_path),
                journal,
                &args.run,
                &args.state_dir,
                resume,
                Show {
                    output: args.output,
                    deadline: None,
                },
            )
        }
    }
}

/// Writes `report.md` and `report.json` into the run directory.
fn write_report(state_dir: &Path, run: &str, spec: &Spec) -> Result<(), String> {
    let dir = run_dir(state_dir, run);
    let records = journal::read(&dir.join("journal.jsonl")).map_err(|e| e.to_string())?;
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

/// Prints a run's report, rebuilt from its journal (so it exists for
/// interrupted runs too).
pub fn report(args: &ReportArgs) -> u8 {
    let (spec, records) = match run_spec(&args.state_dir, &args.run) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let report = rollwright_engine::report::build(&spec, &records, &registry());
    match args.format {
        ReportFormat::Md => print!("{}", report.to_markdown()),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
    }
    exit::OK
}
