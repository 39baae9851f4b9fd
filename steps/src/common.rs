//! Pieces shared by several step kinds.

use rollwright_engine::Code;
use rollwright_engine::registry::Finding;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A reference to a secret: exactly one of `secretRef` (+ `key`), `env`, `file`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Kubernetes Secret name.
    #[serde(default, rename = "secretRef", skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// Key in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// File path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl SecretRef {
    /// Checks that exactly one source is given, and `key` only with `secretRef`.
    pub fn check(&self, pointer: &str, out: &mut Vec<Finding>) {
        let n = [&self.secret_ref, &self.env, &self.file]
            .iter()
            .filter(|o| o.is_some())
            .count();
        if n != 1 {
            out.push(
                Finding::new(
                    pointer,
                    Code::InvalidStepConfig,
                    format!(
                        "a secret reference needs exactly one of `secretRef`, `env` or `file`, found {n}"
                    ),
                )
                .with_help("e.g. `{secretRef: slack-hook}` or `{env: SLACK_HOOK}`"),
            );
        }
        if self.key.is_some() && self.secret_ref.is_none() {
            out.push(Finding::new(
                format!("{pointer}/key"),
                Code::InvalidStepConfig,
                "`key` only applies to `secretRef`",
            ));
        }
    }
}

/// Deserializes a kind's config from a schema-valid `with`. A failure here
/// means the schema and the type disagree, which is reported, not hidden.
pub fn config<T: DeserializeOwned>(with: &Value, out: &mut Vec<Finding>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(with) {
        Ok(c) => Some(c),
        Err(e) => {
            let ptr: String = e.path().iter().map(|s| format!("/{s}")).collect();
            out.push(Finding::new(ptr, Code::Schema, e.inner().to_string()));
            None
        }
    }
}

/// Parses a duration that the schema's pattern already accepted.
pub fn dur(s: &str) -> std::time::Duration {
    rollwright_engine::duration::parse(s).unwrap_or_default()
}
