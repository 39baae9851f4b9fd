//! `rollwright resume`: continue an interrupted run from its journal.

use super::*;

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
    let mut reopened = reopen(&o, &linter, &exp, &spec)?;
    eprintln!(
        "resuming run {} ({} steps already done)",
        args.run,
        state.completed.len()
    );
    let resume = resume_of(state, &spec, &mut reopened.runnable);
    reopened.execute(
        &o,
        &spec,
        &args.state_dir,
        args.output,
        resume,
        budget(&exp, &spec),
    )
}
