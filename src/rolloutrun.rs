//! The `RolloutRun` custom resource (`rollwright.dev/v1alpha1`): a rollout
//! as a Kubernetes object, for the in-cluster controller and for GitOps
//! (`rollwright plan --format rolloutrun`: commit it, let Argo CD or Flux
//! apply it).
//!
//! - `spec.plan` is the *fully expanded* plan — strategies, parameters and
//!   templates resolved, manifests rendered, the spec's digest — so the
//!   controller needs no files. It is immutable once created: a CEL rule in
//!   the CRD makes the API server refuse any change to it.
//! - `spec.intent` is what people may change: an abort, approvals. Never in
//!   status, which only the controller writes.
//! - `status` is bounded whatever the run's length (every list has a
//!   `maxItems`, every message a `maxLength`): history goes elsewhere.
//!
//! The CRD is generated from these types; `crds/rolloutrun.yaml` is the
//! committed copy, held equal by a test (`UPDATE_CRDS=1` rewrites it).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A rollout of one model version, as the API server stores it.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rollwright.dev",
    version = "v1alpha1",
    kind = "RolloutRun",
    namespaced,
    status = "RolloutRunStatus",
    shortname = "rr",
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.plan.model.name"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.plan.model.version"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Canary","type":"number","jsonPath":".status.canaryPercent"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRunSpec {
    /// The fully expanded plan. Immutable after creation.
    pub plan: RunPlan,
    /// What people may change while it runs.
    #[serde(default)]
    pub intent: Intent,
}

/// The fully expanded plan: everything a run needs, no file.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunPlan {
    /// The Rollout's `metadata.name`.
    pub name: String,
    /// Who creates the RolloutRun: the admission policy refuses a create by
    /// anyone else, and the controller refuses their approvals (no one
    /// approves their own rollout).
    #[serde(default)]
    pub submitter: String,
    /// SHA-256 of the expanded spec, keys in sorted order (`digest::canonical`).
    pub digest: String,
    /// The files that made it: the spec, then the strategies it uses.
    pub sources: Vec<String>,
    /// The model version it deploys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PlanModel>,
    /// The expanded spec (strategies, parameters and templates resolved).
    #[schemars(schema_with = "any_object")]
    pub spec: Value,
    /// Rendered manifest templates.
    #[serde(default)]
    pub manifests: Vec<RenderedManifest>,
}

/// The model of a plan (also the printer columns).
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlanModel {
    /// Name in the registry.
    pub name: String,
    /// Version.
    pub version: String,
    /// Registry.
    pub registry: String,
}

/// A rendered manifest.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct RenderedManifest {
    /// The step that applies it.
    pub step: String,
    /// The template it was rendered from.
    pub template: String,
    /// The rendered YAML.
    pub text: String,
}

/// What people may change.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    /// Stop the run and roll it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortIntent>,
    /// Approvals of `approval` steps (the API server checks `by` is the
    /// requesting user; the controller refuses the submitter's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub approvals: Vec<ApprovalIntent>,
}

/// An abort.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct AbortIntent {
    /// Who asked.
    pub by: String,
    /// Why.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub reason: String,
}

/// One approval.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalIntent {
    /// The `approval` step.
    pub step: String,
    /// Who approves (the requesting user).
    pub by: String,
}

/// What the controller reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRunStatus {
    /// `Running`, `Succeeded`, `RolledBack`, `RollbackFailed`, `Refused`
    /// (nothing changed), `Stopped` (a run whose journal cannot be trusted:
    /// a person must look).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (`Progressing`, `Completed`, `Degraded`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub conditions: Vec<Condition>,
    /// Each step's state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500))]
    pub steps: Vec<StepStatus>,
    /// The canary's share of traffic now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_percent: Option<f64>,
    /// The last analysis: each metric against its threshold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub analysis: Vec<MetricStatus>,
    /// The controller instance that wrote this status, and its leader
    /// epoch: a deposed leader's writes are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<Holder>,
}

/// A condition, as Kubernetes writes them.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    #[serde(default)]
    pub reason: String,
    /// For people.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub message: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// One step's state.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// Step id.
    pub id: String,
    /// `Pending`, `Running`, `Waiting`, `Succeeded`, `Failed`, `RolledBack`.
    pub state: String,
    /// Attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// What it waits for, or why it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    pub message: String,
}

/// A metric of the last analysis.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricStatus {
    /// The hold step.
    pub step: String,
    /// Metric name.
    pub name: String,
    /// The canary's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// As a person reads it.
    pub threshold: String,
    /// `pass`, `breach`, `no-data`, `inconclusive`.
    pub verdict: String,
    /// Breaches counted towards the limit.
    pub breaches: u32,
    /// Breaches that fail the step.
    pub limit: u32,
}

/// Who wrote the status.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Holder {
    /// The controller instance.
    pub identity: String,
    /// Its leader epoch.
    pub epoch: i64,
}

/// An object of any shape (the expanded spec): kept as is by the API server.
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// The CRD, as YAML: generated from the types, with the rule that makes the
/// plan immutable.
#[must_use]
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(RolloutRun::crd()).unwrap_or_default();
    // Kubernetes knows `int32` and `int64`, not schemars' `uint32` (kubectl
    // warns on each apply): an unsigned field keeps its `minimum: 0`.
    fn known_formats(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if m.get("format")
                    .and_then(Value::as_str)
                    .is_some_and(|f| f.starts_with("uint"))
                {
                    m.remove("format");
                }
                m.values_mut().for_each(known_formats);
            }
            Value::Array(a) => a.iter_mut().for_each(known_formats),
            _ => {}
        }
    }
    known_formats(&mut crd);
    for version in crd["spec"]["versions"].as_array_mut().into_iter().flatten() {
        let plan = &mut version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["plan"];
        plan["x-kubernetes-validations"] = serde_json::json!([{
            "rule": "self == oldSelf",
            "message": "the plan of a RolloutRun is immutable: submit a new run",
        }]);
    }
    let body = serde_saphyr::to_string(&crd).unwrap_or_default();
    format!(
        "# Generated from src/rolloutrun.rs (UPDATE_CRDS=1 cargo test --bin rollwright rolloutrun); do not edit.\n{body}"
    )
}

/// The admission policy that authenticates approvals and aborts
/// (`crds/approvals-policy.yaml`, shipped as written).
pub const APPROVALS_POLICY: &str = include_str!("../crds/approvals-policy.yaml");

/// What RolloutRuns need installed: the CRD, then the admission policy
/// (one YAML stream).
#[must_use]
pub fn install_yaml() -> String {
    format!("{}---\n{APPROVALS_POLICY}", crd_yaml())
}

/// The RolloutRun of a plan, named after the Rollout and the digest (the
/// same plan gives the same object: applying it twice is one run).
#[must_use]
pub fn of(
    plan: &rollwright_engine::plan::Plan,
    exp: &rollwright_engine::expand::Expanded,
    namespace: &str,
    submitter: &str,
) -> RolloutRun {
    let digest = rollwright_engine::digest::canonical(&exp.value);
    let short: String = digest.trim_start_matches("sha256:").chars().take(10).collect();
    let model = plan.model.as_object().map(|m| PlanModel {
        name: m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        version: m
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        registry: m
            .get("registry")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    });
    let mut run = RolloutRun::new(
        &format!("{}-{short}", plan.name),
        RolloutRunSpec {
            plan: RunPlan {
                name: plan.name.clone(),
                submitter: submitter.to_owned(),
                digest,
                sources: plan.sources.clone(),
                model,
                spec: exp.value.clone(),
                manifests: plan
                    .manifests
                    .iter()
                    .map(|m| RenderedManifest {
                        step: m.step.clone(),
                        template: m.template.clone(),
                        text: m.text.clone(),
                    })
                    .collect(),
            },
            intent: Intent::default(),
        },
    );
    run.metadata.namespace = Some(namespace.to_owned());
    run
}

#[cfg(test)]
mod tests {
    /// The committed CRD is the one the types generate.
    #[test]
    fn the_committed_crd_is_generated_from_the_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/rolloutrun.yaml");
        let now = super::crd_yaml();
        if std::env::var_os("UPDATE_CRDS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &now).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == now,
            "crds/rolloutrun.yaml differs from the types (UPDATE_CRDS=1 cargo test --bin rollwright rolloutrun):\n{now}"
        );
        assert!(now.contains("self == oldSelf"), "the plan is immutable");
    }
}
