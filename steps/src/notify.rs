//! `notify`: POST a JSON summary to a webhook given by reference.

use std::collections::BTreeMap;

use rollwright_engine::registry::{Finding, Role, StepKind};
use serde::Deserialize;
use serde_json::Value;

use crate::common::{SecretRef, config};

/// `with` of a notify.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NotifyConfig {
    /// Webhook URL.
    pub webhook: SecretRef,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
    /// Text.
    #[serde(default)]
    pub message: Option<String>,
    /// Whether a failed notification fails the run.
    #[serde(default)]
    pub fail_run: bool,
}

/// The notify kind.
pub struct Notify;

impl StepKind for Notify {
    fn name(&self) -> &'static str {
        "notify"
    }
    fn summary(&self) -> &'static str {
        "POSTs a JSON summary of the run to a webhook"
    }
    fn schema(&self) -> &'static str {
        include_str!("../../schemas/steps/notify.schema.json")
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(c) = config::<NotifyConfig>(with, &mut out) else {
            return out;
        };
        c.webhook.check("/webhook", &mut out);
        for (name, r) in &c.headers {
            let mut p = String::from("/headers");
            rollwright_engine::yaml::push_pointer_segment(&mut p, name);
            r.check(&p, &mut out);
        }
        out
    }
}
