//! `rollwright schema [--step TYPE | --common | --crd]`.

use crate::error::{CliError, CliResult};
use std::io::Write;

use clap::Args;
use rollwright_engine::schema;

use crate::exit;

#[derive(Args)]
pub struct SchemaArgs {
    /// Print the schema of this step kind's `with` instead of the spec schema.
    #[arg(long, value_name = "TYPE")]
    step: Option<String>,
    /// Print the shared definitions (`common.schema.json`).
    #[arg(long, conflicts_with = "step")]
    common: bool,
    /// Print what `plan --format rolloutrun` objects need installed (YAML):
    /// the `RolloutRun` CustomResourceDefinition and the admission policy
    /// that authenticates approvals.
    #[arg(long, conflicts_with_all = ["step", "common"])]
    crd: bool,
}

pub fn run(args: &SchemaArgs) -> CliResult {
    let registry = rollwright_steps::registry();
    let text = if args.crd {
        crate::rolloutrun::install_yaml()
    } else if args.common {
        schema::COMMON.to_owned()
    } else if let Some(t) = &args.step {
        match registry.get(t) {
            Some(k) => k.schema().to_owned(),
            None => {
                let known: Vec<&str> = registry.names().collect();
                let hint = rollwright_engine::diag::did_you_mean(t, known.iter().copied())
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err(CliError::usage(format!(
                    "unknown step type `{t}`{hint}; known types: {}",
                    known.join(", ")
                )));
            }
        }
    } else {
        match schema::rollout_schema(&registry) {
            Ok(v) => schema::to_pretty(&v),
            Err(e) => return Err(CliError::usage(e.to_string())),
        }
    };
    let mut out = std::io::stdout().lock();
    if out.write_all(text.as_bytes()).is_err() {
        return Err(CliError::usage("cannot write the schema to stdout"));
    }
    Ok(exit::OK)
}
