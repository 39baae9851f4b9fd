//! `rollwright lint [PATH…]`: expand paths, lint files in parallel, print.
//!
//! Files are linted in batches on all cores (rayon) and printed in path
//! order after each batch, so memory stays flat in the number of files:
//! only diagnostics (and, for `json`/`sarif`, their records) are kept.
//! Explicitly named files are always linted; files found by walking a
//! directory are linted only if they are rollwright specs (a monorepo holds
//! plenty of other YAML), and the summary says how many were skipped.

use crate::error::{CliError, CliResult};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use rayon::prelude::*;
use rollwright_engine::{Diagnostic, Limits, Linter, Severity};

use crate::render::{self, Record};
use crate::{ColorChoice, exit};

/// Output format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// rustc-like snippets with a caret.
    Human,
    /// One JSON object with every diagnostic.
    Json,
    /// SARIF 2.1.0, for code scanning.
    Sarif,
    /// GitHub Actions workflow commands (`::error file=…`).
    Github,
}

#[derive(Args)]
pub struct LintArgs {
    /// Files, directories (searched recursively for *.yaml and *.yml) or glob patterns.
    #[arg(value_name = "PATH", default_value = ".")]
    paths: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Exit with 1 on warnings too.
    #[arg(long)]
    deny_warnings: bool,
    /// Largest accepted spec file, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    max_file_size: usize,
    /// Worker threads (default: all cores).
    #[arg(long, short = 'j', value_name = "N")]
    jobs: Option<usize>,
    /// Colour for human output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// Platform policy (default: $ROLLWRIGHT_POLICY, else /etc/rollwright/policy.yaml).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The directory strategies and templates must stay inside (default:
    /// the spec's repository — the nearest directory with `.git` — else the
    /// spec's own directory).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
}

/// A file to lint and how it was found.
struct Input {
    path: PathBuf,
    /// Found by walking a directory: skip non-rollwright YAML.
    walked: bool,
}

/// What linting one file produced, ready to print.
pub struct Outcome {
    pub path: String,
    pub diagnostics: Vec<Diagnostic>,
    pub skipped: bool,
    pub io_error: bool,
    /// Pre-rendered human text (rendered where the source is at hand).
    pub human: String,
}

const BATCH: usize = 2048;

pub fn run(args: &LintArgs) -> CliResult {
    let inputs = match expand(&args.paths) {
        Ok(i) => i,
        Err(msg) => {
            return Err(CliError::usage(msg.to_string()));
        }
    };
    let limits = Limits {
        max_bytes: args.max_file_size,
        ..Limits::default()
    };
    let policy = crate::run_cmd::discover_policy(args.policy.as_deref())?;
    let linter = match Linter::new(rollwright_steps::registry(), limits) {
        Ok(l) => l
            .with_policy(policy)
            .with_resolver(crate::run_cmd::resolver())
            .with_root(
                args.root
                    .as_ref()
                    .map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.clone())),
            ),
        Err(e) => return Err(CliError::usage(e.to_string())),
    };
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(args.jobs.unwrap_or(0))
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            return Err(CliError::usage(format!("cannot start worker threads: {e}")));
        }
    };
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let human = args.format == Format::Human;
    let renderer = render::Human::new(color);

    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let (mut files, mut skipped, mut errors, mut warnings, mut io_errors) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut records: Vec<Record> = Vec::new();
    for batch in inputs.chunks(BATCH) {
        let outcomes: Vec<Outcome> = pool.install(|| {
            batch
                .par_iter()
                .map(|input| lint_one(&linter, input, human.then_some(&renderer)))
                .collect()
        });
        for o in outcomes {
            if o.skipped {
                skipped += 1;
                continue;
            }
            files += 1;
            io_errors += usize::from(o.io_error);
            for d in &o.diagnostics {
                match d.severity {
                    Severity::Error => errors += 1,
                    Severity::Warning => warnings += 1,
                }
            }
            let written = match args.format {
                Format::Human => out.write_all(o.human.as_bytes()),
                Format::Github => render::github(&mut out, &o.path, &o.diagnostics),
                Format::Json | Format::Sarif => {
                    records.extend(o.diagnostics.into_iter().map(|d| Record {
                        file: d.file.as_deref().map_or_else(|| o.path.clone(), str::to_owned),
                        spec: o.path.clone(),
                        d,
                    }));
                    Ok(())
                }
            };
            if written.is_err() {
                // stdout closed (e.g. piped into `head`): nothing to say it on.
                return Err(CliError::usage(String::new()));
            }
        }
    }
    let summary = render::Summary {
        files,
        skipped,
        errors,
        warnings,
    };
    let written = match args.format {
        Format::Human => render::human_summary(&mut out, &summary, color),
        Format::Github => render::github_summary(&mut out, &summary),
        Format::Json => render::json(&mut out, &summary, &records),
        Format::Sarif => render::sarif(&mut out, &records),
    };
    if written.and_then(|()| out.flush()).is_err() {
        return Err(CliError::usage(String::new()));
    }
    if io_errors > 0 {
        // Each was reported with its file.
        Err(CliError::usage(String::new()))
    } else if errors > 0 || (args.deny_warnings && warnings > 0) {
        Err(CliError::findings(String::new()))
    } else {
        Ok(exit::OK)
    }
}

fn lint_one(linter: &Linter, input: &Input, human: Option<&render::Human>) -> Outcome {
    let path = display_path(&input.path);
    let max = linter.limits().max_bytes as u64;
    let start = rollwright_engine::diag::Span::point(rollwright_engine::diag::Pos { line: 1, col: 1 });
    let (bytes, diagnostics, skipped, io_error) = match rollwright_engine::fsread::read(&input.path, max) {
        Ok(bytes) => {
            let r = linter.lint(&input.path, &bytes, input.walked);
            (bytes, r.diagnostics, r.skipped, false)
        }
        Err(rollwright_engine::fsread::ReadError::TooLarge { max }) => {
            let d = Diagnostic::new(
                rollwright_engine::Code::TooLarge,
                start,
                format!(
                    "file is {} bytes, over the limit of {max} bytes",
                    std::fs::metadata(&input.path).map_or(0, |m| m.len())
                ),
            )
            .with_help("split the spec, or raise the limit with --max-file-size");
            (Vec::new(), vec![d], false, false)
        }
        Err(e) => {
            let d = Diagnostic::new(
                rollwright_engine::Code::Io,
                start,
                format!("cannot read file: {e}"),
            );
            (Vec::new(), vec![d], false, true)
        }
    };
    let human = match human {
        Some(r) if !diagnostics.is_empty() => r.render_file(&path, &bytes, &diagnostics),
        _ => String::new(),
    };
    Outcome {
        path,
        diagnostics,
        skipped,
        io_error,
        human,
    }
}

fn display_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    s.strip_prefix("./").unwrap_or(&s).to_owned()
}

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Expands files, directories and globs; any path that names nothing is an error.
fn expand(paths: &[String]) -> Result<Vec<Input>, String> {
    let mut inputs = Vec::new();
    for p in paths {
        if p.contains(['*', '?', '[']) {
            let matches = glob::glob(p).map_err(|e| format!("invalid glob pattern `{p}`: {e}"))?;
            let mut n = 0;
            for m in matches {
                let m = m.map_err(|e| format!("cannot read `{}`: {}", e.path().display(), e.error()))?;
                if m.is_dir() {
                    n += walk(&m, &mut inputs)?;
                } else {
                    inputs.push(Input {
                        path: m,
                        walked: false,
                    });
                    n += 1;
                }
            }
            if n == 0 {
                return Err(format!("pattern `{p}` matched no files"));
            }
            continue;
        }
        let path = PathBuf::from(p);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {
                walk(&path, &mut inputs)?;
            }
            Ok(_) => inputs.push(Input { path, walked: false }),
            Err(e) => return Err(format!("cannot read `{p}`: {e}")),
        }
    }
    inputs.sort_by(|a, b| a.path.cmp(&b.path).then(a.walked.cmp(&b.walked)));
    inputs.dedup_by(|a, b| a.path == b.path);
    Ok(inputs)
}

/// Adds every *.yaml / *.yml below `dir`, skipping hidden directories.
fn walk(dir: &Path, inputs: &mut Vec<Input>) -> Result<usize, String> {
    let mut n = 0;
    let it = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_str().is_some_and(|s| s.starts_with('.')));
    for entry in it {
        let entry = entry.map_err(|e| format!("cannot walk `{}`: {e}", dir.display()))?;
        if entry.file_type().is_file() && is_yaml(entry.path()) {
            inputs.push(Input {
                path: entry.into_path(),
                walked: true,
            });
            n += 1;
        }
    }
    Ok(n)
}
