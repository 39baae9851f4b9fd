//! `rollwright approve`: a signed approval, bound to who the API server
//! says the approver is.

use super::*;

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
    /// Approve a RolloutRun the in-cluster controller runs, in this namespace
    /// (RUN_ID is its name).
    #[arg(short = 'n', long, value_name = "NS", conflicts_with_all = ["who", "state_dir"])]
    namespace: Option<String>,
}

pub fn approve(args: &ApproveArgs) -> CliResult {
    if let Some(ns) = &args.namespace {
        return crate::cluster_cmd::approve(
            &args.run,
            &args.step,
            ns,
            args.kubeconfig.as_deref(),
            args.context.as_deref(),
        );
    }
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
        Err(e @ rollwright_steps::approval::ApprovalError::Io { .. }) => {
            Err(CliError::state("the approval could not be recorded").because(e))
        }
        Err(e) => Err(CliError::usage(e.to_string())),
    }
}
