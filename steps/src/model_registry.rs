//! Model registries: where a gate-check learns whether a version may ship.
//!
//! One trait, selected by `model.registry`. The `file` backend (the
//! default) reads a YAML registry: `ROLLWRIGHT_REGISTRY_FILE`, else
//! `registry.yaml` next to the spec, else `.rollwright/registry.yaml`. The
//! `mlflow` backend reads the MLflow REST API at `MLFLOW_TRACKING_URI`
//! (token from `MLFLOW_TRACKING_TOKEN`). MLflow deprecated stages, so
//! "approved" is read from aliases and tags: aliases as they are, approval
//! tags `approval.<user>` = `<role>` (expiry in `approval.<user>.expires`),
//! the digest in tag `rollwright.digest`, and evals from the metrics of the
//! version's run.
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

use rollwright_engine::exec::BoxFuture;
use serde::Deserialize;
use serde_json::Value;

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
    /// Errors are messages; the gate treats them as transient (retried).
    fn version<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Option<VersionRecord>, String>>;
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
    fn version<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Option<VersionRecord>, String>> {
        Box::pin(async move { self.read(name, version) })
    }
}

impl FileRegistry {
    fn read(&self, name: &str, version: &str) -> Result<Option<VersionRecord>, String> {
        let bytes = rollwright_engine::fsread::read(&self.path, 16 * 1024 * 1024)
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

/// A time in a registry record that is not RFC 3339.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not an RFC 3339 time: {source}")]
pub struct TimeError {
    /// The text as found.
    pub text: String,
    /// What the parser said.
    pub source: humantime::TimestampError,
}

/// Why the MLflow registry cannot be used by this run.
#[derive(Debug, thiserror::Error)]
pub enum MlflowSetupError {
    /// `MLFLOW_TRACKING_URI` is not set.
    #[error("the mlflow registry needs MLFLOW_TRACKING_URI (e.g. http://127.0.0.1:5000)")]
    NoTrackingUri,
    /// The token's reference cannot be resolved.
    #[error("the mlflow token: {0}")]
    Token(#[from] rollwright_engine::secrets::SecretError),
    /// The HTTP client cannot be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Parses an RFC 3339 time.
///
/// # Errors
/// When it is not one.
pub fn parse_time(s: &str) -> Result<SystemTime, TimeError> {
    humantime::parse_rfc3339_weak(s).map_err(|source| TimeError {
        text: s.to_owned(),
        source,
    })
}

/// The MLflow REST backend.
pub struct MlflowRegistry {
    base: String,
    token: Option<rollwright_engine::secrets::Secret>,
    client: reqwest::Client,
}

impl MlflowRegistry {
    /// From `MLFLOW_TRACKING_URI`, with the token from `token` (a secret
    /// reference) or else `MLFLOW_TRACKING_TOKEN`.
    ///
    /// # Errors
    /// When the tracking URI is not set, the token cannot be resolved, or
    /// the client cannot be built.
    pub fn from_env(token: Option<&Value>, base_dir: &Path) -> Result<Self, MlflowSetupError> {
        let base = std::env::var("MLFLOW_TRACKING_URI").map_err(|_| MlflowSetupError::NoTrackingUri)?;
        let token = match (token, std::env::var_os("MLFLOW_TRACKING_TOKEN")) {
            (Some(r), _) => Some(rollwright_engine::secrets::resolve(r, base_dir)?),
            (None, Some(_)) => Some(rollwright_engine::secrets::resolve(
                &serde_json::json!({"env": "MLFLOW_TRACKING_TOKEN"}),
                base_dir,
            )?),
            (None, None) => None,
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(15))
            .build()?;
        Ok(MlflowRegistry {
            base: base.trim_end_matches('/').to_owned(),
            token,
            client,
        })
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Option<Value>, String> {
        let mut req = self
            .client
            .get(format!("{}/api/2.0/mlflow/{path}", self.base))
            .query(query);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let resp = req.send().await.map_err(|e| format!("MLflow not reached: {e}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Some(body));
        }
        if body.get("error_code").and_then(Value::as_str) == Some("RESOURCE_DOES_NOT_EXIST") {
            return Ok(None);
        }
        Err(format!(
            "MLflow answered {status} to {path}: {}",
            body.get("message").and_then(Value::as_str).unwrap_or("")
        ))
    }
}

impl ModelRegistry for MlflowRegistry {
    fn version<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Option<VersionRecord>, String>> {
        Box::pin(async move {
            let Some(body) = self
                .get("model-versions/get", &[("name", name), ("version", version)])
                .await?
            else {
                return Ok(None);
            };
            let mv = &body["model_version"];
            let tags: Vec<(String, String)> = mv["tags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| {
                            Some((
                                t["key"].as_str()?.to_owned(),
                                t["value"].as_str().unwrap_or("").to_owned(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let tag = |k: &str| tags.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let approvals = tags
                .iter()
                .filter_map(|(k, v)| {
                    let who = k.strip_prefix("approval.")?;
                    (!who.ends_with(".expires")).then(|| ApprovalRecord {
                        who: who.to_owned(),
                        role: (!v.is_empty()).then(|| v.clone()),
                        at: "recorded in MLflow".into(),
                        expires: tag(&format!("approval.{who}.expires")),
                    })
                })
                .collect();
            let mut evals = Vec::new();
            if let Some(run_id) = mv["run_id"].as_str().filter(|r| !r.is_empty())
                && let Some(run) = self.get("runs/get", &[("run_id", run_id)]).await?
            {
                for m in run["run"]["data"]["metrics"].as_array().into_iter().flatten() {
                    if let (Some(k), Some(v)) = (m["key"].as_str(), m["value"].as_f64()) {
                        evals.push(EvalRecord {
                            metric: k.to_owned(),
                            value: v,
                            dataset: None,
                            evaluator: Some(format!("mlflow run {run_id}")),
                        });
                    }
                }
            }
            Ok(Some(VersionRecord {
                version: version.to_owned(),
                artifact: Artifact {
                    uri: mv["source"].as_str().map(str::to_owned),
                    digest: tag("rollwright.digest"),
                },
                aliases: mv["aliases"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default(),
                approvals,
                evals,
            }))
        })
    }
}
