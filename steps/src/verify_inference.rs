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
    /// Request protocol.
    pub protocol: Protocol,
    /// Which version to address.
    #[serde(default)]
    pub target: Target,
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

/// Request protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// KServe v1 `:predict`.
    #[serde(rename = "kserve-v1")]
    KserveV1,
    /// Open Inference Protocol v2 `/infer`.
    #[serde(rename = "v2")]
    V2,
    /// Plain HTTP/JSON.
    #[serde(rename = "http")]
    Http,
}

/// Which version a verification addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The new version.
    #[default]
    Canary,
    /// The current version.
    Stable,
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
    fn outputs(&self) -> &'static [&'static str] {
        &["answered-by", "latency-p99"]
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(c) = config::<VerifyInferenceConfig>(with, &mut out) else {
            return out;
        };
        if c.protocol == Protocol::Http && c.path.is_none() {
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
