//! `shift-traffic`: set the canary's share of traffic.

use rollwright_engine::registry::{Finding, Role, StepKind};
use serde::Deserialize;
use serde_json::Value;

use crate::common::config;

/// `with` of a shift-traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShiftTrafficConfig {
    /// Percent to the canary.
    pub canary: u8,
    /// Percent of traffic mirrored to the canary.
    #[serde(default)]
    pub mirror: u8,
    /// Router override.
    #[serde(default)]
    pub provider: Option<String>,
    /// Why production may skip the canary.
    #[serde(default)]
    pub justification: Option<String>,
}

/// The shift-traffic kind.
pub struct ShiftTraffic;

impl StepKind for ShiftTraffic {
    fn name(&self) -> &'static str {
        "shift-traffic"
    }
    fn summary(&self) -> &'static str {
        "sets the canary's share of traffic (Istio, Gateway API, KServe, SMI, NGINX, Seldon)"
    }
    fn schema(&self) -> &'static str {
        include_str!("../../schemas/steps/shift-traffic.schema.json")
    }
    fn role(&self) -> Role {
        Role::Promote
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let _ = config::<ShiftTrafficConfig>(with, &mut out);
        out
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["previous-split"]
    }
    fn canary_weight(&self, with: &Value) -> Option<u64> {
        with.get("canary").and_then(Value::as_u64)
    }
    fn justification<'a>(&self, with: &'a Value) -> Option<&'a str> {
        with.get("justification").and_then(Value::as_str)
    }
}
