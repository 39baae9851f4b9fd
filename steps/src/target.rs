//! The spec's `target.gitops` and `serving`, as the steps read them. The
//! engine keeps both as written (it knows no serving platform, router or
//! GitOps controller); the envelope schema checks their shape, and the
//! steps deserialize them here.

use std::collections::BTreeMap;

use rollwright_engine::registry::BuildContext;
use serde::Deserialize;

/// Serving platform and traffic router.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serving {
    /// `kserve`, `deployment` or `seldon`.
    pub platform: String,
    /// `istio`, `gateway-api`, `kserve`, `smi`, `nginx`, `seldon` or `none`.
    #[serde(default)]
    pub traffic: Option<String>,
    /// The object that splits traffic (default: the model name).
    #[serde(default)]
    pub route: Option<String>,
    /// The stable backend in the route.
    #[serde(default)]
    pub stable: Option<String>,
    /// The canary backend in the route.
    #[serde(default)]
    pub canary: Option<String>,
    /// Base URL of the inference endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Headers that route a request to the canary.
    #[serde(default, rename = "canary-headers")]
    pub canary_headers: Option<BTreeMap<String, String>>,
    /// Headers that route a request to the stable version.
    #[serde(default, rename = "stable-headers")]
    pub stable_headers: Option<BTreeMap<String, String>>,
}

/// A GitOps-managed target: `apply`, `shift-traffic` and `rollback` commit
/// to `repo` and wait for the controller to sync, instead of changing the
/// cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GitOps {
    /// The repository: a local path, `file://`, `https://` or ssh URL.
    pub repo: String,
    /// The branch the controller follows.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Directory in the repository holding the target's manifests.
    pub path: String,
    /// `argocd` or `flux`.
    pub controller: Controller,
    /// The Argo CD `Application` or Flux `Kustomization` name.
    pub app: String,
    /// Its namespace (default `argocd`, or `flux-system` for Flux).
    #[serde(default)]
    pub app_namespace: Option<String>,
    /// Credentials for a remote repository, by reference.
    #[serde(default)]
    pub credentials: Option<GitCredentials>,
    /// Commit author, `Name <email>` (default `rollwright <rollwright@localhost>`).
    #[serde(default)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Controller {
    /// Argo CD (`Application`).
    Argocd,
    /// Flux (`Kustomization`).
    Flux,
}

/// How to authenticate to a remote repository (secret references only).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GitCredentials {
    /// HTTPS: a token (sent as basic auth with `username`).
    #[serde(default)]
    pub token: Option<serde_json::Value>,
    /// HTTPS user name for the token (default `x-access-token`).
    #[serde(default)]
    pub username: Option<String>,
    /// SSH: a private key.
    #[serde(default)]
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
