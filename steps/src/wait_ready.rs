//! `wait-ready`: wait until workloads are ready, failing fast on crash loops.

use rollwright_engine::registry::{Finding, Role, StepKind};
use serde::Deserialize;
use serde_json::Value;

use crate::common::config;

/// `with` of a wait-ready.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WaitReadyConfig {
    /// `kind/name` of each object.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Restarts tolerated before failing.
    #[serde(default = "two")]
    pub max_restarts: u32,
}

fn two() -> u32 {
    2
}

/// The wait-ready kind.
pub struct WaitReady;

impl StepKind for WaitReady {
    fn name(&self) -> &'static str {
        "wait-ready"
    }
    fn summary(&self) -> &'static str {
        "waits for Deployments, Pods and InferenceServices to be ready; fails fast on crash loops"
    }
    fn schema(&self) -> &'static str {
        include_str!("../../schemas/steps/wait-ready.schema.json")
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let _ = config::<WaitReadyConfig>(with, &mut out);
        out
    }
}
