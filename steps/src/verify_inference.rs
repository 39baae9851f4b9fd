//! `verify-inference`: synthetic requests against the canary.

use rollwright_engine::Code;
use rollwright_engine::registry::{Finding, Role, StepKind};
use serde::Deserialize;
use serde_json::Value;

use crate::common::{SecretRef, config};

/// `with` of a verify-inference.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VerifyInferenceConfig {
    /// kserve-v1, v2 or http.
    pub protocol: String,
    /// canary or stable.
    #[serde(default)]
    pub target: Option<String>,
    /// Path (http).
    #[serde(default)]
    pub path: Option<String>,
    /// Body.
    #[serde(default)]
    pub request: Option<Value>,
    /// Count.
    #[serde(default = "one")]
    pub requests: u32,
    /// Pass ratio.
    #[serde(default)]
    pub success_ratio: Option<f64>,
    /// Expectations.
    #[serde(default)]
    pub expect: Option<Value>,
    /// Auth header by reference.
    #[serde(default)]
    pub auth: Option<SecretRef>,
}

fn one() -> u32 {
    1
}

/// The verify-inference kind.
pub struct VerifyInference;

impl StepKind for VerifyInference {
    fn name(&self) -> &'static str {
        "verify-inference"
    }
    fn summary(&self) -> &'static str {
        "sends synthetic inference requests (KServe v1, OIP v2, HTTP) and checks the answers"
    }
    fn schema(&self) -> &'static str {
        include_str!("../../schemas/steps/verify-inference.schema.json")
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(c) = config::<VerifyInferenceConfig>(with, &mut out) else {
            return out;
        };
        if c.protocol == "http" && c.path.is_none() {
            out.push(
                Finding::new("", Code::InvalidStepConfig, "the http protocol needs a `path`")
                    .with_help("e.g. `path: /predict`"),
            );
        }
        if c.success_ratio.is_some() && c.requests == 1 {
            out.push(Finding::new(
                "/success-ratio",
                Code::InvalidStepConfig,
                "`success-ratio` needs `requests` greater than 1",
            ));
        }
        if let Some(a) = &c.auth {
            a.check("/auth", &mut out);
        }
        out
    }
}
