//! `gate-check`: the model version must be approved before anything changes.
//!
//! In this issue the kind carries its configuration, schema and the facts
//! lint relies on (it is the one kind with [`Role::Gate`]); evaluation
//! against a registry comes with the gates issue.

use std::collections::BTreeMap;

use rollwright_engine::Code;
use rollwright_engine::registry::{Finding, Role, StepKind};
use serde::Deserialize;
use serde_json::Value;

use crate::common::config;

/// `with` of a gate-check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateCheckConfig {
    /// Distinct approvers required.
    #[serde(default = "one")]
    pub approvals: u32,
    /// Roles required among approvers.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Required registry alias.
    #[serde(default)]
    pub alias: Option<String>,
    /// Evaluation thresholds by metric.
    #[serde(default)]
    pub evals: BTreeMap<String, Threshold>,
    /// Re-check before the final promotion.
    #[serde(default = "yes")]
    pub recheck: bool,
}

/// An evaluation threshold.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Lowest accepted value.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest accepted value.
    #[serde(default)]
    pub max: Option<f64>,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// The gate-check kind.
pub struct GateCheck;

impl StepKind for GateCheck {
    fn name(&self) -> &'static str {
        "gate-check"
    }
    fn summary(&self) -> &'static str {
        "checks the model version is approved, with enough approvals and passing evals"
    }
    fn schema(&self) -> &'static str {
        include_str!("../../schemas/steps/gate-check.schema.json")
    }
    fn role(&self) -> Role {
        Role::Gate
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["version", "digest", "approvers"]
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(c) = config::<GateCheckConfig>(with, &mut out) else {
            return out;
        };
        for (metric, t) in &c.evals {
            if let (Some(min), Some(max)) = (t.min, t.max)
                && min > max
            {
                let mut ptr = String::from("/evals");
                rollwright_engine::yaml::push_pointer_segment(&mut ptr, metric);
                out.push(Finding::new(
                    ptr,
                    Code::InvalidStepConfig,
                    format!(
                        "eval `{metric}`: `min` ({min}) is greater than `max` ({max}); no value can pass"
                    ),
                ));
            }
        }
        if (c.roles.len() as u64) > u64::from(c.approvals) {
            out.push(Finding::new(
                "/roles",
                Code::InvalidStepConfig,
                format!(
                    "{} roles are required but only {} approval(s): each role needs its own approver",
                    c.roles.len(),
                    c.approvals
                ),
            ));
        }
        out
    }
}
