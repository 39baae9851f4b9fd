//! `rollback`: traffic back to stable, then restore the recorded objects.
//! The default compensation of every step that changes the target.

use rollwright_engine::registry::{Finding, Role, StepKind};
use serde::Deserialize;
use serde_json::Value;

use crate::common::config;

/// `with` of a rollback.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RollbackConfig {
    /// Steps whose recorded state to restore.
    #[serde(default)]
    pub restore: Vec<String>,
    /// Remove the canary afterwards.
    #[serde(default = "yes")]
    pub scale_down_canary: bool,
}

fn yes() -> bool {
    true
}

/// The rollback kind.
pub struct Rollback;

impl StepKind for Rollback {
    fn name(&self) -> &'static str {
        "rollback"
    }
    fn summary(&self) -> &'static str {
        "sends all traffic to stable and restores the last known-good objects"
    }
    fn schema(&self) -> &'static str {
        include_str!("../../schemas/steps/rollback.schema.json")
    }
    fn role(&self) -> Role {
        Role::Restore
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let _ = config::<RollbackConfig>(with, &mut out);
        out
    }
    fn step_refs(&self, with: &Value) -> Vec<(String, String)> {
        with.get("restore")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.as_str().map(|s| (format!("/restore/{i}"), s.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }
}
