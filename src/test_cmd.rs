//! `rollwright test [PATH…] [--junit FILE]`: scenario tests. Each
//! `kind: RolloutTest` file names a spec, a sim scenario and the expected
//! outcome; each runs on its own embedded cluster (started here), with the
//! rollout itself in a child `rollwright run` process — so a test can kill
//! it mid-run and `resume` it — in parallel, then a summary line and
//! optionally JUnit XML.
//!
//! ```yaml
//! apiVersion: rollwright.dev/v1alpha1
//! kind: RolloutTest
//! metadata: {name: error-rate-regression-at-20}
//! spec: ../examples/kserve-canary.yaml     # relative to this file
//! scenario: ../sim/fraud-healthy.yaml       # a sim scenario file, or one inline
//! time-scale: 240                           # optional: overrides the scenario's
//! set: {weights: [5, 20, 50]}               # optional: parameter overrides
//! kill-at: '"step":"ramp[20].shift","key":"traffic"'   # optional: kill -9 as soon
//!                                           # as the journal has a record containing
//!                                           # this, then `rollwright resume`
//! approve: [{step: sign-off, as: alice}]    # optional: `rollwright approve` that
//!                                           # step as that sim user once it starts
//! change-registry:                          # optional: replace the model registry
//!   at: '"step":"ramp[50].hold","key":"started-ms"'     # once the journal shows this
//!   registry: {models: []}                  # (an approval revoked mid-rollout)
//! expect:
//!   outcome: rolled-back                    # promoted | rolled-back | rollback-failed | refused
//!                                           # (refused: nothing changed — lint, policy or a gate)
//!   failed-step: ramp[20].hold              # optional
//!   error: analysis failed                  # optional: in the failure message
//!   split: {"6": 100}                       # optional: final traffic split (version: percent)
//! ```

use crate::error::{CliError, CliResult};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Deserialize;
use serde_json::Value;

use crate::exit;

#[derive(Args)]
pub struct TestArgs {
    /// Test files or directories (default: specs/scenarios).
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Write JUnit XML here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Tests run at once (default: 2).
    #[arg(long, value_name = "N", default_value_t = 2)]
    jobs: usize,
    #[command(flatten)]
    api: crate::sim_cmd::ApiServerArgs,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RolloutTest {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: String,
    scenario: Value,
    #[serde(default)]
    time_scale: Option<f64>,
    #[serde(default)]
    set: BTreeMap<String, Value>,
    #[serde(default)]
    kill_at: Option<String>,
    #[serde(default)]
    change_registry: Option<RegistryChange>,
    #[serde(default)]
    approve: Vec<Approve>,
    /// One release (the test's own `set`/`expect`/`kill-at`), or several
    /// run one after the other on the same cluster.
    #[serde(default)]
    expect: Option<Expect>,
    #[serde(default)]
    releases: Vec<Release>,
}

/// One release of a multi-release test: its `--set` values, what to
/// expect, and optionally a kill or a registry change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Release {
    #[serde(default)]
    set: BTreeMap<String, Value>,
    #[serde(default)]
    kill_at: Option<String>,
    #[serde(default)]
    change_registry: Option<RegistryChange>,
    #[serde(default)]
    approve: Vec<Approve>,
    expect: Expect,
}

/// A human's `rollwright approve` of an approval step, as a user of the
/// sim (authenticated by its API server like any approver), once the step
/// has started.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Approve {
    step: String,
    #[serde(rename = "as")]
    user: String,
}

/// Replaces the model registry while the run goes on (an approval revoked
/// mid-rollout), once the journal has a record containing `at`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryChange {
    at: String,
    registry: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    name: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Expect {
    outcome: Outcome,
    #[serde(default)]
    failed_step: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    split: Option<BTreeMap<String, u32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Outcome {
    Promoted,
    RolledBack,
    RollbackFailed,
    Refused,
}

impl Outcome {
    fn of_exit(code: Option<i32>) -> Option<Outcome> {
        match code {
            Some(0) => Some(Outcome::Promoted),
            Some(3) => Some(Outcome::RolledBack),
            Some(4) => Some(Outcome::RollbackFailed),
            // The spec or a gate said no before anything changed.
            Some(1 | 5) => Some(Outcome::Refused),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Outcome::Promoted => "promoted",
            Outcome::RolledBack => "rolled-back",
            Outcome::RollbackFailed => "rollback-failed",
            Outcome::Refused => "refused",
        }
    }
}

/// One test's result.
struct Result_ {
    name: String,
    file: PathBuf,
    took: Duration,
    failures: Vec<String>,
    log: String,
    /// Per release: the outcome and every split the router served.
    report: Vec<String>,
    /// Why it did not run on this API server, when it did not.
    skipped: Option<String>,
}

fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let defaults = [PathBuf::from("specs/scenarios")];
    let paths = if paths.is_empty() { &defaults[..] } else { paths };
    for p in paths {
        if p.is_dir() {
            for e in walkdir::WalkDir::new(p).sort_by_file_name() {
                let e = e.map_err(|e| e.to_string())?;
                let path = e.path();
                if path.is_file() && path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                    out.push(path.to_path_buf());
                }
            }
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    Ok(out)
}

fn load(file: &Path) -> Result<RolloutTest, String> {
    let text = rollwright_engine::fsread::read_string(file, rollwright_engine::fsread::DEFAULT_MAX)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let t: RolloutTest = serde_saphyr_like(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    if t.kind != "RolloutTest" || t.api_version != "rollwright.dev/v1alpha1" {
        return Err(format!(
            "{}: not a RolloutTest (apiVersion rollwright.dev/v1alpha1, kind RolloutTest)",
            file.display()
        ));
    }
    if t.expect.is_some() != t.releases.is_empty() {
        return Err(format!(
            "{}: a RolloutTest has either `expect` (one release) or `releases`",
            file.display()
        ));
    }
    Ok(t)
}

/// The YAML of a test file, through the engine's located loader.
fn serde_saphyr_like(text: &str) -> Result<RolloutTest, String> {
    let doc =
        rollwright_engine::yaml::load_str(text, &rollwright_engine::Limits::default()).map_err(|d| {
            d.first().map_or_else(
                || "cannot be read".to_owned(),
                |d| format!("{}:{}: {}", d.span.start.line, d.span.start.col, d.message),
            )
        })?;
    serde_path_to_error::deserialize(&doc.value).map_err(|e| {
        let ptr: String = e.path().iter().map(|s| format!("/{s}")).collect();
        let at = doc.locate(&ptr).start;
        format!("{}:{}: {}", at.line, at.col, e.inner())
    })
}

/// The directory of the (only) run in a test's state directory.
fn the_run(state: &Path) -> Option<PathBuf> {
    std::fs::read_dir(state.join("runs"))
        .ok()?
        .next()?
        .ok()
        .map(|e| e.path())
}

fn run_one(
    api: &rollwright_sim::ApiServer,
    file: &Path,
    t: &RolloutTest,
    report: &mut Vec<String>,
    skipped: &mut Option<String>,
) -> Vec<String> {
    // Relative paths in a test file start at its directory (`.` for a
    // file named without one), made absolute before the scenario is
    // written elsewhere.
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = &std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    let mut failures = Vec::new();
    let mut scenario = match &t.scenario {
        Value::String(p) => match rollwright_sim::Scenario::load(&base.join(p)) {
            Ok(s) => s,
            Err(e) => return vec![e.to_string()],
        },
        inline => {
            // An inline scenario may extend a file relative to the test.
            let mut v = inline.clone();
            if let Some(e) = v.get("extends").and_then(Value::as_str) {
                v["extends"] = Value::from(base.join(e).to_string_lossy().into_owned());
            }
            // So are its repository directories.
            if let Some(repos) = v.get_mut("repositories").and_then(Value::as_object_mut) {
                for d in repos.values_mut() {
                    if let Some(rel) = d.as_str().filter(|r| Path::new(r).is_relative()) {
                        *d = Value::from(base.join(rel).to_string_lossy().into_owned());
                    }
                }
            }
            let tmp = std::env::temp_dir().join(format!(
                "rollwright-test-{}-{}.yaml",
                std::process::id(),
                t.metadata.name
            ));
            let loaded = std::fs::write(&tmp, v.to_string())
                .map_err(|e| e.to_string())
                .and_then(|()| rollwright_sim::Scenario::load(&tmp).map_err(|e| e.to_string()));
            let _ = std::fs::remove_file(&tmp);
            match loaded {
                Ok(s) => s,
                Err(e) => return vec![format!("{}: scenario: {e}", file.display())],
            }
        }
    };
    if let Some(ts) = t.time_scale {
        scenario.time_scale = rollwright_sim::scenario::TimeScale(ts);
    }
    let spec_path = base.join(&t.spec);
    let spec_text =
        match rollwright_engine::fsread::read_string(&spec_path, rollwright_engine::fsread::DEFAULT_MAX) {
            Ok(s) => s,
            Err(e) => return vec![format!("{}: {e}", spec_path.display())],
        };
    let spec_doc = rollwright_engine::yaml::load_str(&spec_text, &rollwright_engine::Limits::default())
        .map(|d| d.value)
        .unwrap_or(Value::Null);
    let context = spec_doc["target"]["context"].as_str().unwrap_or("sim").to_owned();
    let namespace = spec_doc["target"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let model = spec_doc["model"]["name"].as_str().unwrap_or_default().to_owned();
    scenario.ensure_namespace(&namespace);
    let registry = scenario.registry.clone();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return vec![e.to_string()],
    };
    let options = rollwright_sim::SimOptions {
        scenario,
        ..rollwright_sim::SimOptions::default()
    };
    if matches!(api, rollwright_sim::ApiServer::KubeApiserver { .. })
        && let Some(why) = rollwright_sim::simulation::needs_embedded(&options)
    {
        *skipped = Some(why);
        return Vec::new();
    }
    let sim = match rt.block_on(async {
        let sim = rollwright_sim::Simulation::start(api, options).await?;
        sim.settled(Duration::from_secs(60)).await;
        Ok::<_, rollwright_sim::SimError>(sim)
    }) {
        Ok(s) => s,
        Err(e) => return vec![e.to_string()],
    };
    let Ok(dir) = tempfile::tempdir() else {
        return vec!["cannot make a temporary directory".into()];
    };
    let kc = dir.path().join("kubeconfig");
    if let Err(e) = sim.write_kubeconfig_for(&kc, &context) {
        return vec![e.to_string()];
    }
    let reg = dir.path().join("registry.yaml");
    let empty = serde_json::json!({"models": []});
    if let Err(e) = crate::sim_run::write_registry(&reg, registry.as_ref().unwrap_or(&empty)) {
        return vec![e];
    }
    // The run attaches to this sim (and proves it is this sim): the only
    // way a run gets simulation inputs.
    let attach = dir.path().join("attach.json");
    let described = crate::sim_run::describe(&sim, kc.clone(), &context, Some(reg.clone()));
    if let Err(e) = crate::sim_run::write_attach(&attach, &described) {
        return vec![e];
    }
    let state = dir.path().join("state");
    let releases: Vec<Release> = if t.releases.is_empty() {
        vec![Release {
            set: t.set.clone(),
            kill_at: t.kill_at.clone(),
            change_registry: t.change_registry.clone(),
            approve: t.approve.clone(),
            expect: t.expect.clone().unwrap_or(Expect {
                outcome: Outcome::Promoted,
                failed_step: None,
                error: None,
                split: None,
            }),
        }]
    } else {
        t.releases
            .iter()
            .map(|r| {
                let mut r = r.clone();
                for (k, v) in &t.set {
                    r.set.entry(k.clone()).or_insert_with(|| v.clone());
                }
                r
            })
            .collect()
    };
    let env = Env {
        sim: &sim,
        spec: &spec_path,
        attach: &attach,
        reg: &reg,
        model: &model,
        context: &context,
        dir: dir.path(),
    };
    for (n, release) in releases.iter().enumerate() {
        let state = state.join(format!("release-{n}"));
        let label = if releases.len() > 1 {
            format!("release {} ({}): ", n + 1, show_set(&release.set))
        } else {
            String::new()
        };
        let mut f = run_release(&env, &state, release, &label, report);
        let stop = !f.is_empty();
        failures.extend(f.drain(..).map(|x| format!("{label}{x}")));
        if stop {
            break;
        }
    }
    drop(sim);
    drop(rt);
    failures
}

fn show_split(split: &BTreeMap<String, u32>) -> String {
    let parts: Vec<String> = split.iter().map(|(v, w)| format!("v{v} {w}%")).collect();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(" + ")
    }
}

fn show_set(set: &BTreeMap<String, Value>) -> String {
    set.iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What every release of a test shares.
struct Env<'a> {
    sim: &'a rollwright_sim::Simulation,
    spec: &'a Path,
    attach: &'a Path,
    reg: &'a Path,
    model: &'a str,
    /// The context the spec names (the sim's kubeconfigs use it).
    context: &'a str,
    /// The test's scratch directory.
    dir: &'a Path,
}

/// The split the router serves (versions with traffic), as a sorted map.
fn served(sim: &rollwright_sim::Simulation, model: &str) -> BTreeMap<String, u32> {
    sim.world().split(model)
}

/// Runs one release: the rollout in a child process attached to the sim,
/// watching its journal (for `kill-at`, `change-registry` and the planned
/// splits) and the router's split all along: only the stable version and
/// this release's version may ever receive traffic, and after each shift
/// the split is the planned one.
fn run_release(
    env: &Env<'_>,
    state: &Path,
    release: &Release,
    label: &str,
    report: &mut Vec<String>,
) -> Vec<String> {
    let mut failures = Vec::new();
    // Every distinct split the router served, in order (bounded).
    let mut timeline: Vec<BTreeMap<String, u32>> = Vec::new();
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("rollwright"));
    // The world at rest before the release: one version serving everything.
    let before = served(env.sim, env.model);
    let stable = match before.iter().find(|(_, w)| **w == 100) {
        Some((v, _)) => v.clone(),
        None => return vec![format!("the world is not at rest before the release: {before:?}")],
    };
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("run")
        .arg(env.spec)
        .arg("--sim")
        .arg("--attach")
        .arg(env.attach)
        .arg("--state-dir")
        .arg(state)
        .env("NO_COLOR", "1");
    for (k, v) in &release.set {
        cmd.arg("--set").arg(format!("{k}={v}"));
    }
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return vec![format!("cannot run {}: {e}", exe.display())],
    };
    // The child's stderr is read aside (it would fill the pipe otherwise).
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(e) = stderr.as_mut() {
            use std::io::Read;
            let _ = e.read_to_string(&mut text);
        }
        text
    });
    let mut killed = false;
    let mut changed = release.change_registry.is_none();
    let mut new_version: Option<String> = None;
    let mut seen_lines = 0usize;
    let mut approved: Vec<&str> = Vec::new();
    // (planned split, since when it is awaited)
    let mut awaited: Option<(BTreeMap<String, u32>, Instant, String)> = None;
    let started = Instant::now();
    loop {
        let journal = the_run(state)
            .and_then(|d| std::fs::read_to_string(d.join("journal.jsonl")).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = journal.lines().collect();
        for line in lines.iter().skip(seen_lines) {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["record"] == "step-started"
                && let Some(a) = release
                    .approve
                    .iter()
                    .find(|a| v["step"] == a.step.as_str() && !approved.contains(&a.step.as_str()))
            {
                approved.push(&a.step);
                if let Err(e) = approve(env, state, a) {
                    failures.push(e);
                }
            }
            if v["record"] == "step-succeeded" {
                let out = &v["outputs"];
                if out["gate"] == true {
                    new_version = out["version"].as_str().map(str::to_owned);
                }
                let Some(new) = &new_version else { continue };
                let planned = if let Some(w) = out["canary"].as_u64().filter(|_| out["route"].is_string()) {
                    let w = u32::try_from(w).unwrap_or(100);
                    Some(
                        [(stable.clone(), 100 - w), (new.clone(), w)]
                            .into_iter()
                            .filter(|(_, w)| *w > 0)
                            .collect::<BTreeMap<_, _>>(),
                    )
                } else {
                    out["stable"]
                        .is_string()
                        .then(|| BTreeMap::from([(new.clone(), 100)]))
                };
                if let Some(p) = planned {
                    awaited = Some((
                        p,
                        Instant::now(),
                        v["step"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
        }
        seen_lines = lines.len();
        // Only stable and the version of this release, ever.
        let now = served(env.sim, env.model);
        if timeline.last() != Some(&now) && timeline.len() < 64 {
            timeline.push(now.clone());
        }
        let allowed = |v: &String| *v == stable || new_version.as_ref() == Some(v);
        if let Some((v, w)) = now.iter().find(|(v, _)| !allowed(v)) {
            failures.push(format!(
                "version {v} received {w} % of traffic (stable is {stable}, this release {}): {now:?}",
                new_version.as_deref().unwrap_or("not gated yet")
            ));
            let _ = child.kill();
            break;
        }
        if let Some((want, since, step)) = &awaited {
            if &now == want {
                awaited = None;
            } else if since.elapsed() > Duration::from_secs(3) {
                failures.push(format!(
                    "after `{step}` the router served {now:?}, planned {want:?}"
                ));
                awaited = None;
            }
        }
        if let Some(m) = &release.kill_at
            && !killed
            && journal.contains(m.as_str())
        {
            let _ = child.kill();
            killed = true;
        }
        if let Some(change) = &release.change_registry
            && !changed
            && journal.contains(change.at.as_str())
        {
            // Written aside, then renamed: the run never reads half a file.
            let tmp = env.reg.with_extension("tmp");
            changed = crate::sim_run::write_registry(&tmp, &change.registry).is_ok()
                && std::fs::rename(&tmp, env.reg).is_ok();
        }
        if matches!(child.try_wait(), Ok(Some(_))) || started.elapsed() > Duration::from_secs(600) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if let Some(change) = &release.change_registry
        && !changed
    {
        failures.push(format!("change-registry: the run never reached `{}`", change.at));
    }
    for a in release
        .approve
        .iter()
        .filter(|a| !approved.contains(&a.step.as_str()))
    {
        failures.push(format!("approve: step `{}` never started", a.step));
    }
    let _ = child.kill();
    let mut status = child.wait().ok();
    let mut log = reader.join().unwrap_or_default();
    let run_id = the_run(state).and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
    if release.kill_at.is_some() {
        let Some(id) = &run_id else {
            return vec![format!("the run was not started: {log}")];
        };
        if !killed {
            failures.push(format!(
                "kill-at: the run never wrote the marker (it exited {:?})",
                status.and_then(|s| s.code())
            ));
        }
        match std::process::Command::new(&exe)
            .arg("resume")
            .arg(id)
            .arg("--state-dir")
            .arg(state)
            .env("NO_COLOR", "1")
            .output()
        {
            Ok(o) => {
                log.push_str("\n--- resume ---\n");
                log.push_str(&String::from_utf8_lossy(&o.stderr));
                status = Some(o.status);
            }
            Err(e) => return vec![format!("cannot resume: {e}")],
        }
    }
    let code = status.and_then(|s| s.code());
    let outcome = Outcome::of_exit(code);
    let mut versions: Vec<&String> = timeline.iter().flat_map(BTreeMap::keys).collect();
    versions.sort();
    versions.dedup();
    report.push(format!(
        "{label}{}; versions that received traffic: {}; splits served: {}",
        outcome.map_or("a crash", Outcome::name),
        versions.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
        timeline.iter().map(show_split).collect::<Vec<_>>().join(" -> "),
    ));
    let t = &release.expect;
    if outcome != Some(t.outcome) {
        failures.push(format!(
            "expected {}, got {} (exit {code:?})",
            t.outcome.name(),
            outcome.map_or("a crash", Outcome::name),
        ));
    }
    let failure = run_id
        .as_ref()
        .and_then(|id| std::fs::read(state.join("runs").join(id).join("report.json")).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|r| r["rollback"]["failure"].clone())
        .unwrap_or(Value::Null);
    let failed_step = failure[0].as_str().unwrap_or_default();
    let error = failure[1].as_str().map_or_else(|| log.clone(), str::to_owned);
    if let Some(want) = &t.failed_step
        && failed_step != want
    {
        failures.push(format!(
            "expected the run to fail at `{want}`, it failed at `{failed_step}`"
        ));
    }
    if let Some(want) = &t.error
        && !error.contains(want.as_str())
    {
        failures.push(format!("expected the failure to mention `{want}`: {error}"));
    }
    if let Some(want) = &t.split {
        // The split settles within a controller tick of the last change.
        let started = Instant::now();
        let got = loop {
            let got = served(env.sim, env.model);
            if &got == want || started.elapsed() > Duration::from_secs(3) {
                break got;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if &got != want {
            failures.push(format!("expected the traffic split {want:?}, got {got:?}"));
        }
    }
    if !failures.is_empty() {
        failures.push(format!("log:\n{log}"));
    }
    failures
}

/// `rollwright approve RUN STEP` as sim user `a.user`.
fn approve(env: &Env<'_>, state: &Path, a: &Approve) -> Result<(), String> {
    let run = the_run(state)
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .ok_or("approve: no run")?;
    let kc = env
        .dir
        .join(format!("kubeconfig-{}", a.user.replace(['/', '\\'], "_")));
    let text = env
        .sim
        .kubeconfig_for_user(env.context, &a.user)
        .map_err(|e| format!("approve: {e}"))?;
    std::fs::write(&kc, text).map_err(|e| format!("approve: {e}"))?;
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("rollwright"));
    let out = std::process::Command::new(exe)
        .arg("approve")
        .arg(&run)
        .arg(&a.step)
        .arg("--kubeconfig")
        .arg(&kc)
        .arg("--state-dir")
        .arg(state)
        .env("NO_COLOR", "1")
        .output()
        .map_err(|e| format!("approve: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "approve {} as {}: {}",
            a.step,
            a.user,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The JUnit XML report (`quick-junit`: valid XML whatever the messages
/// hold — control characters and ANSI escapes are removed).
fn junit(results: &[Result_]) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let total: Duration = results.iter().map(|r| r.took).sum();
    let mut suite = TestSuite::new("rollout scenarios");
    for r in results {
        let status = if let Some(why) = &r.skipped {
            let mut s = TestCaseStatus::skipped();
            s.set_message(why.as_str());
            s
        } else if r.failures.is_empty() {
            TestCaseStatus::success()
        } else {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(r.failures.first().map_or("", String::as_str))
                .set_description(r.failures.join("\n"));
            s
        };
        let mut case = TestCase::new(r.name.as_str(), status);
        case.set_classname(r.file.display().to_string()).set_time(r.took);
        if r.report.len() > 1 {
            case.set_system_out(r.report.join("\n"));
        }
        suite.add_test_case(case);
    }
    suite.set_time(total);
    let mut report = Report::new("rollwright");
    report.set_time(total).add_test_suite(suite);
    report.to_string().unwrap_or_default()
}

pub fn run(args: &TestArgs) -> CliResult {
    let files = match collect(&args.paths) {
        Ok(f) if f.is_empty() => {
            return Err(CliError::usage("no test files found"));
        }
        Ok(f) => f,
        Err(e) => return Err(CliError::usage(e.to_string())),
    };
    let mut tests = Vec::new();
    for f in &files {
        match load(f) {
            Ok(t) => tests.push((f.clone(), t)),
            Err(e) => return Err(CliError::usage(e.to_string())),
        }
    }
    let api = args.api.api_server()?;
    let queue = std::sync::Mutex::new(tests.into_iter().enumerate().collect::<Vec<_>>());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..args.jobs.max(1) {
            s.spawn(|| {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some((i, (file, t))) = next else { break };
                    let started = Instant::now();
                    let mut report = Vec::new();
                    let mut skipped = None;
                    let failures = run_one(&api, &file, &t, &mut report, &mut skipped);
                    let r = Result_ {
                        report,
                        name: t.metadata.name.clone(),
                        file,
                        took: started.elapsed(),
                        log: t.metadata.description.clone().unwrap_or_default(),
                        failures,
                        skipped,
                    };
                    // One write per test: lines of parallel tests never interleave.
                    let mut text = format!(
                        "{} {} ({:.1}s){}\n",
                        match (&r.skipped, r.failures.is_empty()) {
                            (Some(_), _) => "SKIP",
                            (None, true) => "PASS",
                            (None, false) => "FAIL",
                        },
                        r.name,
                        r.took.as_secs_f64(),
                        match (&r.skipped, r.log.is_empty()) {
                            (Some(why), _) => format!(": {why}"),
                            (None, true) => String::new(),
                            (None, false) => format!(": {}", r.log),
                        }
                    );
                    if r.report.len() > 1 {
                        for line in &r.report {
                            text.push_str(&format!("  {line}\n"));
                        }
                    }
                    print!("{text}");
                    if let Ok(mut all) = results.lock() {
                        all.push((i, r));
                    }
                }
            });
        }
    });
    let mut results: Vec<Result_> = results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    results.sort_by(|a, b| a.file.cmp(&b.file));
    for r in results.iter().filter(|r| !r.failures.is_empty()) {
        eprintln!("\n--- {} ({}) ---", r.name, r.file.display());
        for f in &r.failures {
            eprintln!("{f}");
        }
    }
    let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
    let skipped = results.iter().filter(|r| r.skipped.is_some()).count();
    if skipped == 0 {
        println!("{} passed, {failed} failed", results.len() - failed);
    } else {
        println!(
            "{} passed, {failed} failed, {skipped} skipped",
            results.len() - failed - skipped
        );
    }
    if let Some(path) = &args.junit
        && let Err(e) = std::fs::write(path, junit(&results))
    {
        return Err(CliError::usage(format!("cannot write {}: {e}", path.display())));
    }
    if failed == 0 {
        Ok(exit::OK)
    } else {
        // Each failure was printed with its scenario.
        Err(CliError::findings(String::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages hold what runs print: quotes, markup, ANSI colours, control
    /// characters. The report stays well-formed XML and keeps the text.
    #[test]
    fn junit_is_valid_xml_whatever_the_messages_hold() {
        let hostile = "expected <promoted> & \"ok\", got \u{1b}[31mrolled-back\u{1b}[0m \u{1}\u{7}]]>";
        let r = Result_ {
            name: "a\u{0}b <c>".into(),
            file: PathBuf::from("t/\"x\".yaml"),
            took: Duration::from_millis(1500),
            failures: vec![hostile.into()],
            skipped: None,
            log: String::new(),
            report: vec!["release 1".into(), hostile.into()],
        };
        let xml = junit(&[r]);
        let parsed = quick_junit::Report::deserialize_from_str(&xml)
            .unwrap_or_else(|e| panic!("not valid JUnit XML: {e}\n{xml}"));
        let case = &parsed.test_suites[0].test_cases[0];
        assert_eq!(case.name.as_str(), "ab <c>");
        assert!(!xml.contains('\u{1b}') && !xml.contains('\u{1}'), "{xml}");
        assert!(xml.contains("expected &lt;promoted&gt; &amp;"), "{xml}");
        assert!(xml.contains(r#"failures="1""#), "{xml}");
    }
}
