//! The spec's `target.gitops` and `serving`, as the steps read them. The
//! engine keeps both as written (it knows no serving platform, router or
//! GitOps controller); the envelope schema checks their shape, and the
//! steps deserialize them here.

use std::collections::BTreeMap;

use rollwright_engine::registry::BuildContext;
use schemars::JsonSchema;
use serde::Deserialize;

/// Serving platform and traffic router.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "serving")]
pub struct Serving {
    /// Serving platform.
    #[schemars(schema_with = "platform")]
    pub platform: String,
    /// Traffic router used by shift-traffic.
    #[serde(default)]
    #[schemars(schema_with = "traffic_or_none")]
    pub traffic: Option<String>,
    /// Name of the object that splits traffic (InferenceService,
    /// VirtualService, HTTPRoute, TrafficSplit, stable Ingress,
    /// SeldonDeployment); default the model name.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub route: Option<String>,
    /// The stable backend in the route: Istio subset or host, Service name,
    /// Seldon predictor (defaults: `stable` for Istio, the model name for
    /// Gateway API, SMI and NGINX, `main` for Seldon).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub stable: Option<String>,
    /// The canary backend in the route (defaults: `canary` for Istio and
    /// Seldon, `<model>-canary` for Gateway API, SMI and NGINX).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub canary: Option<String>,
    /// Base URL of the inference endpoint that verify-inference and probe
    /// analysis call (e.g. `http://fraud.risk.example.com`).
    #[serde(default)]
    #[schemars(regex(pattern = "^https?://"))]
    pub endpoint: Option<String>,
    /// Headers that route a request to the canary (default `x-sim-version:
    /// <model.version>`, what the embedded cluster understands; e.g.
    /// `x-canary: "true"` with a matching VirtualService rule).
    #[serde(default, rename = "canary-headers")]
    pub canary_headers: Option<BTreeMap<String, String>>,
    /// Headers that route a request to the stable version (default
    /// `x-sim-exclude-version: <model.version>`).
    #[serde(default, rename = "stable-headers")]
    pub stable_headers: Option<BTreeMap<String, String>>,
}

/// The serving platforms the steps know: KServe's InferenceService, a
/// Kubernetes Deployment behind a router, Seldon's SeldonDeployment.
pub const PLATFORMS: &[&str] = &["kserve", "deployment", "seldon"];

/// `serving.platform`: one of [`PLATFORMS`].
fn platform(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": PLATFORMS})
}

/// `serving.traffic`: a traffic provider, or `none`.
fn traffic_or_none(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut names = crate::traffic::names();
    names.push("none");
    schemars::json_schema!({"type": "string", "enum": names})
}

/// Set when Argo CD or Flux manages the target: `apply`, `shift-traffic`
/// and `rollback` commit to the repository and wait for the controller to
/// sync, instead of changing the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "gitops")]
pub struct GitOps {
    /// The repository: a local path (relative to the spec), `file://`,
    /// `https://` or ssh URL.
    #[schemars(length(min = 1))]
    pub repo: String,
    /// The branch the controller follows (default `main`).
    #[serde(default = "default_branch")]
    #[schemars(length(min = 1))]
    pub branch: String,
    /// Directory in the repository holding the target's manifests.
    #[schemars(length(min = 1))]
    pub path: String,
    /// The GitOps controller.
    pub controller: Controller,
    /// The Argo CD `Application` or Flux `Kustomization` name.
    #[schemars(length(min = 1))]
    pub app: String,
    /// Namespace of the Application/Kustomization (default `argocd`, or
    /// `flux-system` for Flux).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub app_namespace: Option<String>,
    /// Credentials for a remote repository, by reference.
    #[serde(default)]
    pub credentials: Option<GitCredentials>,
    /// Commit author, `Name <email>`.
    #[serde(default)]
    #[schemars(regex(pattern = "^[^<>]+ <[^<>]+>$"))]
    pub author: Option<String>,
}

impl GitOps {
    /// The namespace of the controller's object.
    #[must_use]
    pub fn app_namespace(&self) -> &str {
        self.app_namespace.as_deref().unwrap_or(match self.controller {
            Controller::Argocd => "argocd",
            Controller::Flux => "flux-system",
        })
    }
}

impl GitOps {
    /// The controller's object whose status tells whether a revision is
    /// synced: `(apiVersion, kind, what to call it)`.
    #[must_use]
    pub fn sync_kind(&self) -> (&'static str, &'static str, &'static str) {
        match self.controller {
            Controller::Argocd => ("argoproj.io/v1alpha1", "Application", "Argo CD Application"),
            Controller::Flux => (
                "kustomize.toolkit.fluxcd.io/v1",
                "Kustomization",
                "Flux Kustomization",
            ),
        }
    }
}

/// The GitOps controller that syncs the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Controller {
    /// Argo CD (`Application`).
    Argocd,
    /// Flux (`Kustomization`).
    Flux,
}

/// How to authenticate to a remote repository (secret references only).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GitCredentials {
    /// HTTPS token, sent as basic auth.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::secret_ref")]
    pub token: Option<serde_json::Value>,
    /// User name for the token (default `x-access-token`).
    #[serde(default)]
    pub username: Option<String>,
    /// SSH private key.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::secret_ref")]
    pub ssh_key: Option<serde_json::Value>,
}

fn default_branch() -> String {
    "main".into()
}

/// The spec's `serving`, when set and well-formed (the schema has checked it).
#[must_use]
pub fn serving(cx: &BuildContext) -> Option<Serving> {
    cx.serving.as_ref().and_then(|v| Serving::deserialize(v).ok())
}

/// The spec's `target.gitops`, when set and well-formed.
#[must_use]
pub fn gitops(cx: &BuildContext) -> Option<GitOps> {
    cx.target
        .as_ref()
        .and_then(|t| t.gitops.as_ref())
        .and_then(|v| GitOps::deserialize(v).ok())
}

/// The schemas of the spec parts the steps own (`serving`,
/// `target.gitops`), generated from the types above: what
/// `steps/envelope/*.schema.json` must hold.
#[must_use]
pub fn generated_defs() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("serving", crate::schema::of_envelope::<Serving>()),
        ("gitops", crate::schema::of_envelope::<GitOps>()),
    ]
}
