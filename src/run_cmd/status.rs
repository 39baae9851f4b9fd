//! `rollwright status`: runs and their state.

use super::*;

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
