//! `exec`: run a command with arguments (no shell), from the spec's
//! directory. Real and documented, and what examples and tests use to run
//! whole DAGs without a cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use rollwright_engine::exec::{BoxFuture, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::{BuildContext, BuildError, Finding, Role, StepKind};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::common::config;

/// Runs a command (no shell) from the spec's directory. Exit 0 succeeds with
/// `stdout` as output; an exit code listed in `transient-exit-codes` is
/// retried; any other fails. Treated as a change to the target: in
/// production a gate-check must precede it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "exec")]
pub struct ExecConfig {
    /// Program and arguments.
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// Extra environment variables (literal, non-secret values).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Exit codes that mean "try again" (default [75], EX_TEMPFAIL).
    #[serde(default = "tempfail")]
    #[schemars(inner(range(min = 1, max = 255)))]
    pub transient_exit_codes: Vec<i32>,
    /// Program and arguments run as this step's compensation.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub undo: Vec<String>,
}

fn tempfail() -> Vec<i32> {
    vec![75]
}

/// The exec kind.
pub struct Exec;

impl StepKind for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }
    fn summary(&self) -> &'static str {
        "runs a command (no shell); exit 0 succeeds, listed exit codes are retried"
    }
    fn schema(&self) -> &'static str {
        include_str!("../schemas/exec.schema.json")
    }
    fn generated_schema(&self) -> Option<Value> {
        Some(crate::schema::of::<ExecConfig>())
    }
    fn role(&self) -> Role {
        // An arbitrary command may change anything: treat it as a change.
        Role::Promote
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["stdout"]
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let _ = config::<ExecConfig>(with, &mut out);
        out
    }
    fn build(&self, with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        let c: ExecConfig = serde_json::from_value(with.clone())?;
        Ok(Arc::new(ExecStep {
            config: c,
            dir: cx.spec_dir.clone(),
        }))
    }
}

struct ExecStep {
    config: ExecConfig,
    dir: PathBuf,
}

/// Largest stdout kept as the `stdout` output.
const MAX_STDOUT: usize = 4096;

impl ExecStep {
    async fn exec(&self, argv: &[String], cx: &StepContext) -> Result<String, StepError> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| StepError::failed("empty command"))?;
        let out = tokio::process::Command::new(prog)
            .args(args)
            .envs(&self.config.env)
            .env("ROLLWRIGHT_STEP", &cx.step_id)
            .env("ROLLWRIGHT_ATTEMPT", cx.attempt.to_string())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Cancelled with the run: the child dies with the future.
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| StepError::failed(format!("cannot run `{prog}`: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stdout: String = stdout.trim_end().chars().take(MAX_STDOUT).collect();
        match out.status.code() {
            Some(0) => Ok(stdout),
            Some(code) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let last = stderr.trim_end().lines().last().unwrap_or("").to_owned();
                let msg = format!(
                    "`{prog}` exited with {code}{}",
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(": {last}")
                    }
                );
                if self.config.transient_exit_codes.contains(&code) {
                    Err(StepError::transient(msg))
                } else {
                    Err(StepError::failed(msg))
                }
            }
            None => Err(StepError::transient(format!("`{prog}` was killed by a signal"))),
        }
    }
}

impl Step for ExecStep {
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            // Recorded (journaled) before the command may change anything:
            // the run knows it changed something, and the undo knows it has
            // something to undo.
            if cx.recalled("ran").is_none() {
                cx.remember("ran", Value::from(self.config.command.clone()))?;
            }
            let stdout = self.exec(&self.config.command, cx).await?;
            let mut outputs = Map::new();
            outputs.insert("stdout".into(), Value::String(stdout));
            Ok(Progress::Done { outputs })
        })
    }
    fn compensate<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            // Nothing ran, nothing to undo.
            if self.config.undo.is_empty() || cx.recalled("ran").is_none() {
                return Ok(());
            }
            self.exec(&self.config.undo, cx).await.map(|_| ())
        })
    }
}
