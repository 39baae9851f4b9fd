//! `rollwright report`: the report, rebuilt from the verified journal.

use super::*;

/// Writes `report.md`, `report.json` and `report.html` into the run directory; returns
/// the Markdown report's path and the summary.
pub(super) fn write_report(
    state_dir: &Path,
    run: &str,
    spec: &Spec,
    key: &Key,
    budget: Option<rollwright_engine::plan::Budget>,
) -> Result<(PathBuf, String), String> {
    let dir = run_dir(state_dir, run);
    let records = journal::read(&dir.join("journal.jsonl"), key).map_err(|e| e.to_string())?;
    let mut report = rollwright_engine::report::build(spec, &records, &registry());
    report.plan.budget = budget;
    std::fs::write(dir.join("report.md"), report.to_markdown()).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
    std::fs::write(dir.join("report.json"), json).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("report.html"), crate::report_html::render(&report))
        .map_err(|e| e.to_string())?;
    Ok((dir.join("report.md"), report.summary.text))
}

/// Report format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    /// Markdown.
    Md,
    /// JSON.
    Json,
    /// One self-contained HTML page with charts over time.
    Html,
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
    let (_, _, exp, spec) = respec(&o)?;
    let mut report = rollwright_engine::report::build(&spec, &o.records, &registry());
    report.plan.budget = Some(budget(&exp, &spec));
    match args.format {
        ReportFormat::Md => print!("{}", report.to_markdown()),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
        ReportFormat::Html => print!("{}", crate::report_html::render(&report)),
    }
    Ok(exit::OK)
}
