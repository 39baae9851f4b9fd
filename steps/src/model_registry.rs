//! Model registries: where a gate-check learns whether a version may ship.
//!
//! One trait, selected by `model.registry`. The `file` backend (the
//! default) reads a YAML registry: `ROLLWRIGHT_REGISTRY_FILE`, else
//! `registry.yaml` next to the spec, else `.rollwright/registry.yaml`. The
//! MLflow backend comes with the gates issue's second part.
//!
//! ```yaml
//! apiVersion: rollwright.dev/v1alpha1
//! kind: ModelRegistry
//! models:
//!   - name: fraud-detector
//!     versions:
//!       - version: "7"
//!         artifact: {uri: "s3://models/fraud/7", digest: "sha256:…"}
//!         aliases: [production-approved]
//!         approvals:
//!           - {who: alice, role: ml-lead, at: "2026-11-01T10:00:00Z", expires: "2027-01-01T00:00:00Z"}
//!         evals:
//!           - {metric: auc, value: 0.94, dataset: holdout-2026-10, evaluator: ci}
//! ```

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

/// An approval of a version.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRecord {
    /// Who approved.
    pub who: String,
    /// Their role.
    #[serde(default)]
    pub role: Option<String>,
    /// When (RFC 3339).
    pub at: String,
    /// Until when it counts (RFC 3339).
    #[serde(default)]
    pub expires: Option<String>,
}

/// An evaluation result.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalRecord {
    /// Metric name.
    pub metric: String,
    /// Value.
    pub value: f64,
    /// Dataset it was measured on.
    #[serde(default)]
    pub dataset: Option<String>,
    /// Who or what measured it.
    #[serde(default)]
    pub evaluator: Option<String>,
}

/// The artifact of a version.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Where it is.
    #[serde(default)]
    pub uri: Option<String>,
    /// Its content digest.
    #[serde(default)]
    pub digest: Option<String>,
}

/// What a registry knows about one version.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    /// The version.
    pub version: String,
    /// Its artifact.
    #[serde(default)]
    pub artifact: Artifact,
    /// Aliases (or stages) it carries.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Approvals.
    #[serde(default)]
    pub approvals: Vec<ApprovalRecord>,
    /// Evaluation results.
    #[serde(default)]
    pub evals: Vec<EvalRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    name: String,
    #[serde(default)]
    versions: Vec<VersionRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RegistryFile {
    #[allow(dead_code)] // checked by value below
    api_version: String,
    kind: String,
    #[serde(default)]
    models: Vec<ModelEntry>,
}

/// A model registry backend.
pub trait ModelRegistry: Send + Sync {
    /// The record of `name` `version`, or `None` if the registry does not have it.
    ///
    /// # Errors
    /// The registry cannot be read (transient or not, as a message).
    fn version(&self, name: &str, version: &str) -> Result<Option<VersionRecord>, String>;
}

/// The YAML file backend.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    path: PathBuf,
}

impl FileRegistry {
    /// The registry file a spec in `spec_dir` uses.
    #[must_use]
    pub fn locate(spec_dir: &Path) -> Self {
        let path = std::env::var_os("ROLLWRIGHT_REGISTRY_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let next_to_spec = spec_dir.join("registry.yaml");
                if next_to_spec.is_file() {
                    next_to_spec
                } else {
                    PathBuf::from(".rollwright/registry.yaml")
                }
            });
        FileRegistry { path }
    }

    /// A registry at an explicit path.
    #[must_use]
    pub fn at(path: PathBuf) -> Self {
        FileRegistry { path }
    }
}

impl ModelRegistry for FileRegistry {
    fn version(&self, name: &str, version: &str) -> Result<Option<VersionRecord>, String> {
        let bytes = std::fs::read(&self.path)
            .map_err(|e| format!("cannot read model registry {}: {e}", self.path.display()))?;
        let doc = rollwright_engine::yaml::load_bytes(&bytes, &rollwright_engine::Limits::default())
            .map_err(|d| {
                format!(
                    "model registry {}:{}: {}",
                    self.path.display(),
                    d[0].span.start,
                    d[0].message
                )
            })?;
        let file: RegistryFile = serde_path_to_error::deserialize(&doc.value).map_err(|e| {
            format!(
                "model registry {}: `{}`: {}",
                self.path.display(),
                e.path(),
                e.inner()
            )
        })?;
        if file.kind != "ModelRegistry" {
            return Err(format!(
                "{} is not a ModelRegistry (kind: {})",
                self.path.display(),
                file.kind
            ));
        }
        Ok(file
            .models
            .into_iter()
            .find(|m| m.name == name)
            .and_then(|m| m.versions.into_iter().find(|v| v.version == version)))
    }
}

/// Parses an RFC 3339 time.
///
/// # Errors
/// When it is not one.
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s).map_err(|e| format!("`{s}` is not an RFC 3339 time: {e}"))
}
