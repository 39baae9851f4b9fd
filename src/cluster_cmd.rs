//! Rollouts as Kubernetes objects, from the command line: `submit` a spec
//! as a RolloutRun for the in-cluster controller, `get` one (`--watch`
//! follows it), and `approve`/`abort -n NS` one — a patch to its mutable
//! `spec.intent`, sent with the user's own credentials (the API server's
//! admission policy refuses an entry in anyone else's name).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::error::{CliError, CliResult};
use crate::exit;
use crate::rolloutrun::RolloutRun;

#[derive(Args)]
pub struct SubmitArgs {
    /// The Rollout to submit.
    #[arg(value_name = "SPEC")]
    spec: PathBuf,
    /// Override a parameter; the value is read as YAML.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Platform policy lint checks against (the controller checks its own again).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The directory strategies and templates must stay inside.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Your kubeconfig (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Your context (default: the spec's `target.context`).
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Follow the run until it ends; exit as `rollwright run` would.
    #[arg(long)]
    wait: bool,
}

#[derive(Args)]
pub struct GetArgs {
    /// The RolloutRun.
    #[arg(value_name = "RUN")]
    run: String,
    /// Its namespace (default: the context's, else `default`).
    #[arg(short = 'n', long, value_name = "NS")]
    namespace: Option<String>,
    /// Your kubeconfig (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Your context (default: the kubeconfig's current one).
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Print it again at every change until it ends; exit as `rollwright run` would.
    #[arg(short = 'w', long)]
    watch: bool,
}

fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("cannot start the runtime: {e}")))
}

/// The client and the authenticated user of `context`.
fn connect(
    rt: &tokio::runtime::Runtime,
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    namespace: &str,
) -> CliResult<(kube::Client, String)> {
    let (_, cluster) = crate::controller::client_for(kubeconfig, context, namespace)?;
    rt.block_on(async {
        let client = cluster
            .client()
            .await
            .map_err(|e| CliError::usage(e.to_string()))?;
        let who = cluster
            .whoami()
            .await
            .map_err(|e| CliError::usage(format!("who are you to the API server? {e}")))?;
        Ok((client, who))
    })
}

fn api_error(what: &str, e: kube::Error) -> CliError {
    match &e {
        kube::Error::Api(s) if s.code == 403 || s.code == 422 || s.code == 400 => {
            CliError::refused(format!("{what}: the API server refused: {}", s.message))
        }
        kube::Error::Api(s) if s.code == 404 => CliError::usage(format!("{what}: not found")),
        _ => CliError::usage(format!("{what}: {e}")),
    }
}

pub fn submit(a: &SubmitArgs) -> CliResult {
    let policy = crate::run_cmd::discover_policy(a.policy.as_deref())?;
    let overrides: Vec<(String, Value)> = a
        .set
        .iter()
        .map(|s| crate::plan_cmd::parse_set(s))
        .collect::<Result<_, _>>()
        .map_err(CliError::usage)?;
    let linter = crate::run_cmd::linter(policy, a.root.as_deref())?;
    let (exp, spec) = crate::run_cmd::prepare(&linter, &crate::run_cmd::absolute(&a.spec), &overrides)?;
    let Some(target) = &spec.target else {
        return Err(CliError::usage(format!(
            "`{}` has no `target`: a RolloutRun lives in its target namespace",
            a.spec.display()
        )));
    };
    let rt = runtime()?;
    let context = a.context.clone().unwrap_or_else(|| target.context.clone());
    let (client, who) = connect(&rt, a.kubeconfig.as_deref(), Some(&context), &target.namespace)?;
    let plan = rollwright_engine::plan::build(&exp, &spec, &crate::run_cmd::registry());
    let rr = crate::rolloutrun::of(&plan, &exp, &target.namespace, &who);
    let name = rr.metadata.name.clone().unwrap_or_default();
    let api: Api<RolloutRun> = Api::namespaced(client, &target.namespace);
    match rt.block_on(api.create(&PostParams::default(), &rr)) {
        Ok(_) => println!(
            "rolloutrun/{name} created in {} (submitted by {who})",
            target.namespace
        ),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            println!(
                "rolloutrun/{name} exists already in {} (the same plan is one run)",
                target.namespace
            );
        }
        Err(e) => return Err(api_error(&format!("creating rolloutrun/{name}"), e)),
    }
    if a.wait {
        return follow(&rt, &api, &name, true);
    }
    Ok(exit::OK)
}

pub fn get(a: &GetArgs) -> CliResult {
    let rt = runtime()?;
    let ns = match &a.namespace {
        Some(n) => n.clone(),
        None => {
            let kc = match &a.kubeconfig {
                Some(p) => kube::config::Kubeconfig::read_from(p).ok(),
                None => kube::config::Kubeconfig::read().ok(),
            };
            kc.and_then(|k| {
                let current = a.context.clone().or(k.current_context.clone())?;
                k.contexts
                    .iter()
                    .find(|c| c.name == current)
                    .and_then(|c| c.context.as_ref()?.namespace.clone())
            })
            .unwrap_or_else(|| "default".into())
        }
    };
    let (_, cluster) = crate::controller::client_for(a.kubeconfig.as_deref(), a.context.as_deref(), &ns)?;
    let client = rt
        .block_on(cluster.client())
        .map_err(|e| CliError::usage(e.to_string()))?;
    let api: Api<RolloutRun> = Api::namespaced(client, &ns);
    follow(&rt, &api, &a.run, a.watch)
}

/// The exit code of an ended run, as `rollwright run` gives it.
fn code_of(phase: &str) -> Option<CliResult> {
    match phase {
        "Succeeded" => Some(Ok(exit::OK)),
        "RolledBack" => Some(Ok(exit::ROLLED_BACK)),
        "RollbackFailed" => Some(Ok(exit::ROLLBACK_FAILED)),
        "Refused" => Some(Err(CliError::refused(String::new()))),
        "Stopped" => Some(Err(CliError::state(String::new()))),
        _ => None,
    }
}

/// Prints the run (again at each change with `watch`, until it ends).
fn follow(rt: &tokio::runtime::Runtime, api: &Api<RolloutRun>, name: &str, watch: bool) -> CliResult {
    let mut last = String::new();
    loop {
        let rr = rt
            .block_on(api.get(name))
            .map_err(|e| api_error(&format!("rolloutrun/{name}"), e))?;
        let text = tree(&rr);
        if text != last {
            if !last.is_empty() {
                println!();
            }
            print!("{text}");
            let _ = std::io::stdout().flush();
            last = text;
        }
        let phase = rr
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if let Some(code) = code_of(&phase) {
            return if watch { code } else { Ok(exit::OK) };
        }
        if !watch {
            return Ok(exit::OK);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The run as a tree of steps, like `kubectl argo rollouts get`.
fn tree(rr: &RolloutRun) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let plan = &rr.spec.plan;
    let st = rr.status.clone().unwrap_or_default();
    let model = plan
        .model
        .as_ref()
        .map(|m| format!(" · {} v{}", m.name, m.version.trim_start_matches('v')))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "rolloutrun/{}{model} · {}",
        kube::ResourceExt::name_any(rr),
        st.phase.as_deref().unwrap_or("Pending")
    );
    if let Some(c) = st.canary_percent {
        let _ = writeln!(s, "traffic: stable {} % · canary {c} %", 100.0 - c);
    }
    if let Some(h) = &st.holder {
        let _ = writeln!(s, "controller: {} (epoch {})", h.identity, h.epoch);
    }
    let n = st.steps.len();
    for (i, step) in st.steps.iter().enumerate() {
        let branch = if i + 1 == n { "└─" } else { "├─" };
        let mark = match step.state.as_str() {
            "Succeeded" => "✔",
            "Failed" | "RollbackFailed" => "✖",
            "Running" | "Waiting" => "◌",
            "RolledBack" => "↺",
            _ => "·",
        };
        let _ = write!(s, "{branch} {mark} {:<20} {:<14}", step.id, step.state);
        if step.attempts > 1 {
            let _ = write!(s, " attempt {}", step.attempts);
        }
        if !step.message.is_empty() {
            let _ = write!(s, " {}", step.message);
        }
        s.push('\n');
        for m in st.analysis.iter().filter(|m| m.step == step.id) {
            let value = m
                .value
                .map_or_else(|| "no data".to_owned(), |v| format!("{v:.4}"));
            let _ = writeln!(
                s,
                "│     {:<18} {value:>10} {} {} ({} of {} breaches)",
                m.name, m.threshold, m.verdict, m.breaches, m.limit
            );
        }
    }
    for c in &st.conditions {
        if !c.message.is_empty() && c.status == "True" && c.type_ != "Progressing" {
            let _ = writeln!(s, "{}: {}", c.type_, c.message);
        }
    }
    s
}

/// `rollwright approve RUN STEP -n NS`: adds the user's approval to the
/// RolloutRun (the controller records it for the step, and refuses the
/// submitter's).
pub fn approve(
    run: &str,
    step: &str,
    ns: &str,
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> CliResult {
    let rt = runtime()?;
    let (client, who) = connect(&rt, kubeconfig, context, ns)?;
    let api: Api<RolloutRun> = Api::namespaced(client, ns);
    let rr = rt
        .block_on(api.get(run))
        .map_err(|e| api_error(&format!("rolloutrun/{run}"), e))?;
    if rr.spec.plan.submitter == who {
        return Err(CliError::refused(format!(
            "{who} submitted rolloutrun/{run} and cannot approve it; ask someone else"
        )));
    }
    let mut approvals = rr.spec.intent.approvals.clone();
    if approvals.iter().any(|a| a.step == step && a.by == who) {
        println!("{who} has approved `{step}` of rolloutrun/{run} already");
        return Ok(exit::OK);
    }
    approvals.push(crate::rolloutrun::ApprovalIntent {
        step: step.to_owned(),
        by: who.clone(),
    });
    let patch = json!({
        "metadata": {"resourceVersion": rr.metadata.resource_version},
        "spec": {"intent": {"approvals": approvals}}
    });
    rt.block_on(api.patch(run, &PatchParams::default(), &Patch::Merge(&patch)))
        .map_err(|e| api_error(&format!("approving rolloutrun/{run}"), e))?;
    println!("recorded: {who} approves `{step}` of rolloutrun/{run}");
    Ok(exit::OK)
}

/// `rollwright abort RUN -n NS`: asks the controller to stop the run and
/// roll it back.
pub fn abort(
    run: &str,
    ns: &str,
    reason: &str,
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> CliResult {
    let rt = runtime()?;
    let (client, who) = connect(&rt, kubeconfig, context, ns)?;
    let api: Api<RolloutRun> = Api::namespaced(client, ns);
    let patch = json!({"spec": {"intent": {"abort": {"by": who, "reason": reason}}}});
    rt.block_on(api.patch(run, &PatchParams::default(), &Patch::Merge(&patch)))
        .map_err(|e| api_error(&format!("aborting rolloutrun/{run}"), e))?;
    println!("rolloutrun/{run}: abort requested by {who}; the controller rolls it back");
    Ok(exit::OK)
}
