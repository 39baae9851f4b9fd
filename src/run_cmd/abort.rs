//! `rollwright abort`: stop a run and compensate it.

use super::*;

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
    /// Abort a RolloutRun the in-cluster controller runs, in this namespace
    /// (RUN_ID is its name); the API server says who you are.
    #[arg(short = 'n', long, value_name = "NS", conflicts_with_all = ["who", "state_dir"])]
    namespace: Option<String>,
    /// With `-n`: why (shown in the run's status and Events).
    #[arg(long, value_name = "TEXT", default_value = "", requires = "namespace")]
    reason: String,
    /// With `-n`: your kubeconfig (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "FILE", requires = "namespace")]
    kubeconfig: Option<PathBuf>,
    /// With `-n`: your context (default: the kubeconfig's current one).
    #[arg(long, value_name = "NAME", requires = "namespace")]
    context: Option<String>,
}

/// Aborts a run: a running process notices within a fraction of a second
/// and compensates; an interrupted run is compensated here and now.
pub fn abort(args: &AbortArgs) -> CliResult {
    if let Some(ns) = &args.namespace {
        return crate::cluster_cmd::abort(
            &args.run,
            ns,
            &args.reason,
            args.kubeconfig.as_deref(),
            args.context.as_deref(),
        );
    }
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
            let reopened = reopen(&o, &linter, &exp, &spec)?;
            eprintln!("run {} is not running: compensating it now", args.run);
            let resume = Resume {
                completed: state.completed,
                compensated: state.compensated,
                failed: Some(state.failed.into_iter().next().unwrap_or(("abort".into(), why))),
                started: state.started,
                recorded: state.recorded,
            };
            reopened.execute(
                &o,
                &spec,
                &args.state_dir,
                args.output,
                resume,
                budget(&exp, &spec),
            )
        }
    }
}
