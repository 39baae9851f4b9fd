//! `approval`: wait for people to approve with `rollwright approve`.

use rollwright_engine::Code;
use rollwright_engine::registry::{Finding, Role, StepKind};
use serde::Deserialize;
use serde_json::Value;

use crate::common::config;

/// `with` of an approval.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    /// Distinct approvals required.
    #[serde(default = "one")]
    pub approvers: u32,
    /// Allowed approvers.
    #[serde(default)]
    pub from: Vec<String>,
    /// Expiry.
    #[serde(default)]
    pub expires: Option<String>,
    /// Text for approvers.
    #[serde(default)]
    pub message: Option<String>,
}

fn one() -> u32 {
    1
}

/// The approval kind.
pub struct Approval;

impl StepKind for Approval {
    fn name(&self) -> &'static str {
        "approval"
    }
    fn summary(&self) -> &'static str {
        "waits until enough people run `rollwright approve`"
    }
    fn schema(&self) -> &'static str {
        include_str!("../../schemas/steps/approval.schema.json")
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["approvers"]
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(c) = config::<ApprovalConfig>(with, &mut out) else {
            return out;
        };
        if !c.from.is_empty() && (c.from.len() as u64) < u64::from(c.approvers) {
            out.push(Finding::new(
                "/approvers",
                Code::InvalidStepConfig,
                format!(
                    "{} approvals required but only {} people may approve",
                    c.approvers,
                    c.from.len()
                ),
            ));
        }
        out
    }
}
