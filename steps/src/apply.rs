//! `apply`: render manifests and server-side apply them, recording the last
//! known-good state first. Its role is [`Role::Promote`]: in production a
//! gate-check must dominate it.

use rollwright_engine::Code;
use rollwright_engine::registry::{Finding, Role, StepKind};
use serde::Deserialize;
use serde_json::Value;

use crate::common::config;

/// `with` of an apply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApplyConfig {
    /// Manifest template path.
    #[serde(default)]
    pub template: Option<String>,
    /// Inline objects.
    #[serde(default)]
    pub manifests: Vec<Value>,
    /// SSA field manager.
    #[serde(default = "field_manager")]
    pub field_manager: String,
    /// Minimum replicas in production.
    #[serde(default = "two")]
    pub min_replicas: u32,
    /// Auth policy protecting exposed endpoints.
    #[serde(default)]
    pub auth_policy: Option<String>,
}

fn field_manager() -> String {
    "rollwright".into()
}
fn two() -> u32 {
    2
}

/// The apply kind.
pub struct Apply;

impl StepKind for Apply {
    fn name(&self) -> &'static str {
        "apply"
    }
    fn summary(&self) -> &'static str {
        "renders, policy-checks and server-side applies manifests, recording what it replaces"
    }
    fn schema(&self) -> &'static str {
        include_str!("../../schemas/steps/apply.schema.json")
    }
    fn role(&self) -> Role {
        Role::Promote
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["objects", "revision"]
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(c) = config::<ApplyConfig>(with, &mut out) else {
            return out;
        };
        match (&c.template, c.manifests.is_empty()) {
            (None, true) => out.push(
                Finding::new(
                    "",
                    Code::InvalidStepConfig,
                    "apply needs `template` or `manifests`",
                )
                .with_help("e.g. `template: manifests/isvc.yaml.hbs`"),
            ),
            (Some(_), false) => out.push(Finding::new(
                "/manifests",
                Code::InvalidStepConfig,
                "apply takes either `template` or `manifests`, not both",
            )),
            _ => {}
        }
        out
    }
}
