//! The spec model, `rollwright.dev/v1alpha1`.
//!
//! These types are deserialized from the loader's `serde_json::Value` after
//! JSON Schema validation. The schema (`schemas/rollout.schema.json`) is the
//! contract users and editors see; these types are what the engine uses. A
//! test proves they agree: every example both validates and deserializes,
//! every schema-invalid fixture is refused by both. A step's `with` stays a
//! `Value` here: its shape belongs to the step kind (see `registry`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The only API version this build reads.
pub const API_VERSION: &str = "rollwright.dev/v1alpha1";

/// A whole spec file: a `Rollout` or a reusable `Strategy`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Spec {
    /// Always `rollwright.dev/v1alpha1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `Rollout` or `Strategy`.
    pub kind: Kind,
    /// Name and labels.
    pub metadata: Metadata,
    /// Relative path of a Strategy this Rollout instantiates.
    #[serde(default)]
    pub uses: Option<String>,
    /// Changes to the used strategy (consumed by expansion).
    #[serde(default)]
    pub customize: Option<Value>,
    /// Parameter values (Rollout) or declarations (Strategy).
    #[serde(default)]
    pub params: Map<String, Value>,
    /// The model version to deploy.
    #[serde(default)]
    pub model: Option<ModelRef>,
    /// Where it deploys.
    #[serde(default)]
    pub target: Option<Target>,
    /// How it is served and routed: the steps crate's business (the schema
    /// checks its shape; the steps read it as their type).
    #[serde(default, deserialize_with = "present")]
    pub serving: Option<Value>,
    /// Defaults for every step.
    #[serde(default)]
    pub defaults: Defaults,
    /// The DAG.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Handlers run after a failed run has been compensated.
    #[serde(default)]
    pub on_failure: Vec<Handler>,
    /// Manifest templates rendered for `apply` steps (set by
    /// [`crate::Linter::prepare`]; not part of the document).
    #[serde(skip)]
    pub manifests: Vec<Manifest>,
}

/// What a spec file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Kind {
    /// A concrete rollout of one model version to one target.
    Rollout,
    /// A reusable, parameterised list of steps.
    Strategy,
}

/// Identity of the spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// DNS-label-like name.
    pub name: String,
    /// Free-form description.
    #[serde(default)]
    pub description: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The model version a rollout deploys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// Registry backend: `file` (default) or `mlflow`.
    #[serde(default = "default_registry")]
    pub registry: String,
    /// Registered model name.
    pub name: String,
    /// Exact version (a string: `"7"`, never a float).
    pub version: String,
}

fn default_registry() -> String {
    "file".into()
}

/// Where a rollout deploys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The context of the target cluster (in the client configuration).
    pub context: String,
    /// Namespace.
    pub namespace: String,
    /// Environment class; production enables every safety rule.
    pub environment: Environment,
    /// Set when a GitOps controller manages the target: changes go through
    /// Git. What it holds is the steps crate's business (the schema checks
    /// its shape); the engine only knows whether it is set.
    #[serde(default, deserialize_with = "present")]
    pub gitops: Option<serde_json::Value>,
}

/// An optional field whose value is kept as written; `null` is absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok((!v.is_null()).then_some(v))
}

/// Environment class of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Gates, canary-by-default and resource rules are mandatory.
    Production,
    /// Pre-production.
    Staging,
    /// Development.
    Dev,
}

/// Defaults applied to every step that does not set its own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Step deadline, e.g. `10m`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Deadline of each attempt.
    #[serde(default, rename = "attempt-timeout")]
    pub attempt_timeout: Option<String>,
    /// Retry policy (see `retry`).
    #[serde(default)]
    pub retry: Option<Value>,
}

/// One node of the DAG.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Step {
    /// Unique id.
    pub id: String,
    /// Step kind (`gate-check`, `apply`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Free-form description.
    #[serde(default)]
    pub description: Option<String>,
    /// Ids of steps that must succeed first.
    #[serde(default)]
    pub needs: Vec<String>,
    /// The kind's configuration.
    #[serde(default = "empty_object", rename = "with")]
    pub with: Value,
    /// Step deadline.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Deadline of each attempt.
    #[serde(default)]
    pub attempt_timeout: Option<String>,
    /// Retry policy.
    #[serde(default)]
    pub retry: Option<Value>,
    /// What undoes this step when the run fails later.
    #[serde(default)]
    pub compensate: Option<Compensation>,
    /// A failure of this step does not fail the run.
    #[serde(default)]
    pub continue_on_failure: bool,
}

/// A compensating action, run when a later step fails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compensation {
    /// Step kind (normally `rollback`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The kind's configuration.
    #[serde(default = "empty_object", rename = "with")]
    pub with: Value,
    /// Deadline.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Deadline of each attempt.
    #[serde(default, rename = "attempt-timeout")]
    pub attempt_timeout: Option<String>,
    /// Retry policy.
    #[serde(default)]
    pub retry: Option<Value>,
}

/// An `on-failure` handler.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Handler {
    /// Unique id.
    pub id: String,
    /// Step kind (normally `notify`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Free-form description.
    #[serde(default)]
    pub description: Option<String>,
    /// The kind's configuration.
    #[serde(default = "empty_object", rename = "with")]
    pub with: Value,
    /// Deadline.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Deadline of each attempt.
    #[serde(default)]
    pub attempt_timeout: Option<String>,
    /// Retry policy.
    #[serde(default)]
    pub retry: Option<Value>,
}

impl Step {
    /// As [`Spec::lenient`], for one step.
    #[must_use]
    pub fn lenient(v: &Value) -> Step {
        if let Ok(s) = Step::deserialize(v) {
            return s;
        }
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Step {
            id: text("id").unwrap_or_default(),
            kind: text("type").unwrap_or_default(),
            description: None,
            needs: v
                .get("needs")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default(),
            with: v
                .get("with")
                .filter(|w| w.is_object())
                .cloned()
                .unwrap_or_else(empty_object),
            timeout: text("timeout"),
            attempt_timeout: text("attempt-timeout"),
            retry: v.get("retry").cloned(),
            compensate: v
                .get("compensate")
                .and_then(|c| Compensation::deserialize(c).ok()),
            continue_on_failure: v
                .get("continue-on-failure")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl Spec {
    /// Builds the model from a value that failed strict deserialization, so
    /// that the semantic rules can still run next to the schema's findings.
    /// Every field that does not fit its type is left at its default; the
    /// rules skip what the schema already reported.
    #[must_use]
    pub fn lenient(v: &Value) -> Spec {
        fn field<T: DeserializeOwned>(v: &Value, key: &str) -> Option<T> {
            v.get(key).and_then(|x| T::deserialize(x).ok())
        }
        let list = |key: &str| {
            v.get(key)
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
        };
        Spec {
            api_version: field(v, "apiVersion").unwrap_or_default(),
            kind: field(v, "kind").unwrap_or(Kind::Rollout),
            metadata: field(v, "metadata").unwrap_or(Metadata {
                name: String::new(),
                description: None,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
            }),
            uses: field(v, "uses"),
            customize: v.get("customize").cloned(),
            params: field(v, "params").unwrap_or_default(),
            model: field(v, "model"),
            target: field(v, "target"),
            serving: field(v, "serving"),
            defaults: field(v, "defaults").unwrap_or_else(|| Defaults {
                timeout: field(&v["defaults"], "timeout"),
                attempt_timeout: field(&v["defaults"], "attempt-timeout"),
                retry: v["defaults"].get("retry").cloned(),
            }),
            steps: list("steps").iter().map(Step::lenient).collect(),
            manifests: Vec::new(),
            on_failure: list("on-failure")
                .iter()
                .map(|h| {
                    Handler::deserialize(h).unwrap_or_else(|_| {
                        let s = Step::lenient(h);
                        Handler {
                            id: s.id,
                            kind: s.kind,
                            description: None,
                            with: s.with,
                            timeout: s.timeout,
                            attempt_timeout: s.attempt_timeout,
                            retry: s.retry,
                        }
                    })
                })
                .collect(),
        }
    }

    /// Whether the target is declared production.
    #[must_use]
    pub fn is_production(&self) -> bool {
        self.target
            .as_ref()
            .is_some_and(|t| t.environment == Environment::Production)
    }
}

/// A manifest template rendered for an `apply` step.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The expanded step id.
    pub step: String,
    /// The template path as shown.
    pub path: String,
    /// The rendered text.
    pub text: String,
    /// Its documents as parsed when it was rendered (the line each starts
    /// at, 0-based): parsed once, read by every step that needs them.
    pub docs: Option<std::sync::Arc<Vec<(u32, crate::yaml::Document)>>>,
}

impl Spec {
    /// The limits of a step, compensation or handler: its own `timeout`,
    /// `attempt-timeout` and `retry`, else the spec's defaults.
    #[must_use]
    pub fn limits(
        &self,
        timeout: Option<&String>,
        attempt: Option<&String>,
        retry: Option<&Value>,
    ) -> crate::exec::Limits {
        let parse = |t: Option<&String>| t.and_then(|t| crate::duration::parse(t).ok());
        let d = &self.defaults;
        crate::exec::Limits {
            attempt_timeout: parse(attempt).or_else(|| parse(d.attempt_timeout.as_ref())),
            deadline: parse(timeout).or_else(|| parse(d.timeout.as_ref())),
            retry: retry
                .or(d.retry.as_ref())
                .and_then(|r| crate::retry::RetryPolicy::from_value(r).ok())
                .unwrap_or_default(),
        }
    }
}
