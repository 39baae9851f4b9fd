//! The `rollwright` command line: thin wiring over the engine and the steps.
//!
//! Exit codes are owned here, in one place ([`exit`], chosen by
//! [`error::CliError`]'s kind), and documented in the README; library crates
//! report *what* failed with their own error types.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Lint allocates many small strings and maps per file; mimalloc is ~2x
/// faster than glibc malloc for that pattern (measured in `benches/`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cluster_cmd;
mod controller;
mod error;
mod init_cmd;
mod lint;
mod plan_cmd;
mod progress;
mod rbac_cmd;
mod render;
mod report_html;
mod rolloutrun;
mod run_cmd;
mod schema_cmd;
mod sim_cmd;
mod sim_run;
mod test_cmd;

/// Stable exit codes.
pub mod exit {
    /// Success: no findings, or the command did what it was asked.
    pub const OK: u8 = 0;
    /// Lint found errors (or warnings with `--deny-warnings`).
    pub const FINDINGS: u8 = 1;
    /// Usage error, missing path, unreadable file, or another I/O error.
    pub const USAGE: u8 = 2;
    /// `run`/`resume`: a step failed and the run was rolled back.
    pub const ROLLED_BACK: u8 = 3;
    /// `run`/`resume`: a step failed and a compensation failed too.
    pub const ROLLBACK_FAILED: u8 = 4;
    /// `run`/`resume`: refused before any change (a closed gate, a check
    /// before the first change): nothing on the target was changed.
    pub const REFUSED: u8 = 5;
    /// The run's state cannot be trusted or written: a journal that was
    /// changed outside rollwright, a key that cannot be read, a journal
    /// that could not be written mid-run (the run stopped and compensated
    /// as far as it could).
    pub const STATE: u8 = 6;
    /// Another run holds the target (locally or the cluster's Lease).
    pub const LOCKED: u8 = 7;
    /// Stopped at once by a second SIGINT/SIGTERM; `resume` finishes the rollback.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Parser)]
#[command(
    name = "rollwright",
    version,
    about = "Deploy approved ML model versions to Kubernetes with safe, declarative rollouts",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check spec files: YAML, schema and semantic rules, every problem located.
    Lint(lint::LintArgs),
    /// Show the fully expanded plan: steps, gates, rollback path, manifests, timing budget.
    Plan(plan_cmd::PlanArgs),
    /// Run a rollout: execute its plan with a crash-safe journal.
    Run(run_cmd::RunArgs),
    /// Continue a run that was interrupted (from its journal).
    Resume(run_cmd::ResumeArgs),
    /// Show runs and their state.
    Status(run_cmd::StatusArgs),
    /// Record an approval for an approval step of a run.
    Approve(run_cmd::ApproveArgs),
    /// Abort a run: cancel it and compensate what it changed.
    Abort(run_cmd::AbortArgs),
    /// Print a run's report (Plan, Changes, Verification, Rollback, Summary).
    Report(run_cmd::ReportArgs),
    /// Print the JSON Schema of specs, or of one step kind's `with`.
    Schema(schema_cmd::SchemaArgs),
    /// Run the embedded cluster (a Kubernetes API server on 127.0.0.1) until Ctrl-C.
    Sim(sim_cmd::SimArgs),
    /// Print the least-privilege Role and RoleBinding a run of the spec needs.
    Rbac(rbac_cmd::RbacArgs),
    /// Run scenario tests (`kind: RolloutTest`), each on its own embedded cluster.
    Test(test_cmd::TestArgs),
    /// Scaffold a Rollout on a shipped strategy (asks on a terminal for what flags leave open).
    Init(Box<init_cmd::InitArgs>),
    /// Submit a rollout to the in-cluster controller: lint, expand, create its RolloutRun.
    Submit(cluster_cmd::SubmitArgs),
    /// Show a RolloutRun as a tree of steps (`--watch` follows it to its end).
    Get(cluster_cmd::GetArgs),
    /// Run RolloutRuns in the cluster (highly available: replicas elect a leader);
    /// `controller manifests` prints what installs it.
    Controller(controller::ControllerArgs),
}

/// When to colour human output.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ColorChoice {
    /// When stdout is a terminal and NO_COLOR is unset.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Lint(args) => lint::run(&args),
        Command::Plan(args) => plan_cmd::run(&args),
        Command::Run(args) => run_cmd::run(&args),
        Command::Resume(args) => run_cmd::resume(&args),
        Command::Status(args) => run_cmd::status(&args),
        Command::Approve(args) => run_cmd::approve(&args),
        Command::Abort(args) => run_cmd::abort(&args),
        Command::Report(args) => run_cmd::report(&args),
        Command::Schema(args) => schema_cmd::run(&args),
        Command::Sim(args) => sim_cmd::run(&args),
        Command::Rbac(args) => rbac_cmd::run(&args),
        Command::Test(args) => test_cmd::run(&args),
        Command::Init(args) => init_cmd::run(*args),
        Command::Submit(args) => cluster_cmd::submit(&args),
        Command::Get(args) => cluster_cmd::get(&args),
        Command::Controller(args) => controller::controller(&args),
    };
    ExitCode::from(error::finish(result))
}
