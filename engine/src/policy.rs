//! The platform team's policy: which targets *are* production, and the
//! minimum gate per environment.
//!
//! A spec cannot dodge the gate by declaring `environment: dev` while
//! pointing at a production cluster: the environment that counts is the one
//! the policy derives from where the run *actually* deploys — the context
//! used (the spec's, or `--context`), the API server that context reaches
//! (whatever client configuration supplied it, or in-cluster), or the namespace. A
//! spec may be stricter than the policy, never weaker.
//!
//! Where the policy is, is explicit: `--policy FILE`, else
//! `$ROLLWRIGHT_POLICY`, else the machine-wide `/etc/rollwright/policy.yaml`
//! (the platform team's, not the repository's). It is never picked up from
//! the working directory — a pull request could otherwise bring its own —
//! and a run records its path and digest, so `resume` uses the same file.
//!
//! ```yaml
//! apiVersion: rollwright.dev/v1alpha1
//! kind: Policy
//! production:
//!   contexts: [prod-east, prod-west]
//!   api-servers: ["https://10.0.0.1:6443"]
//!   namespaces: [payments]
//! gitops:                       # targets a GitOps controller manages: specs must
//!   contexts: [prod-east]       # declare `target.gitops`, never apply directly
//!   namespaces: [payments]
//! environments:
//!   production:
//!     gate: {approvals: 2, roles: [ml-lead], evals: {auc: {min: 0.9}}}
//!     canary-by-default: true
//!   staging:
//!     gate: {approvals: 1}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::spec::{Environment, Spec};
use crate::yaml::{Limits, load_bytes};

/// The minimum gate of an environment.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MinGate {
    /// Distinct approvals.
    #[serde(default)]
    pub approvals: u32,
    /// Roles that must be among the approvers.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Required evals and their thresholds.
    #[serde(default)]
    pub evals: BTreeMap<String, Bounds>,
}

/// Eval bounds.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    /// Lowest accepted.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest accepted.
    #[serde(default)]
    pub max: Option<f64>,
}

/// Rules of one environment.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EnvironmentRules {
    /// Minimum gate.
    #[serde(default)]
    pub gate: Option<MinGate>,
    /// Going straight to 100 % needs a justification here too.
    #[serde(default)]
    pub canary_by_default: bool,
}

/// A set of targets (which are production, which are GitOps-managed): by
/// cluster context, API server, or namespace.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Targets {
    /// cluster context names.
    #[serde(default)]
    pub contexts: Vec<String>,
    /// API server URLs (matched through the client configuration).
    #[serde(default)]
    pub api_servers: Vec<String>,
    /// Namespaces that are production in any cluster.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// The policy file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    /// `rollwright.dev/v1alpha1`.
    pub api_version: String,
    /// `Policy`.
    pub kind: String,
    /// Which targets are production.
    #[serde(default)]
    pub production: Targets,
    /// Targets a GitOps controller manages (same matching as `production`).
    #[serde(default)]
    pub gitops: Targets,
    /// Rules per environment (`production`, `staging`, `dev`).
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentRules>,
    /// Where it was read from (for messages).
    #[serde(skip)]
    pub path: PathBuf,
    /// SHA-256 of the file, recorded by runs.
    #[serde(skip)]
    pub digest: String,
}

/// The machine-wide policy location.
pub const SYSTEM_POLICY: &str = "/etc/rollwright/policy.yaml";

/// Where a run deploys, as actually reached: the context used and the API
/// server it points at (`None` when unknown, e.g. linting without a
/// client configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reached {
    /// The context used (the spec's, or one named on the command line).
    pub context: String,
    /// The API server URL.
    pub server: Option<String>,
}

/// An API server URL in one form: lower-case scheme and host, the default
/// port written out, no trailing slash.
#[must_use]
pub fn normalize_server(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let scheme = scheme.to_ascii_lowercase();
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let host = host.to_ascii_lowercase();
    let has_port = host.rsplit_once(':').is_some_and(|(h, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']'))
    });
    let host = if has_port {
        host
    } else {
        format!("{host}:{}", if scheme == "http" { 80 } else { 443 })
    };
    if path.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/{path}")
    }
}

/// Which part of a target a [`Targets`] set matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matched {
    /// Its cluster context.
    Context,
    /// Its namespace.
    Namespace,
    /// The API server its context points at.
    Server(String),
}

impl Targets {
    /// Whether `t`, reached as `reached`, is in the set: the context the
    /// spec names or the one actually used, else its namespace, else the API
    /// server actually reached.
    #[must_use]
    pub fn matched(&self, t: &crate::spec::Target, reached: Option<&Reached>) -> Option<Matched> {
        let used = reached.map(|r| r.context.as_str());
        if self.contexts.contains(&t.context) || used.is_some_and(|c| self.contexts.iter().any(|x| x == c)) {
            Some(Matched::Context)
        } else if self.namespaces.contains(&t.namespace) {
            Some(Matched::Namespace)
        } else {
            let server = reached.and_then(|r| r.server.as_deref())?;
            let n = normalize_server(server);
            self.api_servers
                .iter()
                .any(|s| normalize_server(s) == n)
                .then(|| Matched::Server(server.to_owned()))
        }
    }
}

/// Where a target's environment comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    /// The environment that counts.
    pub environment: Environment,
    /// Why, when the policy decided it (`context prod-east is production`).
    pub reason: Option<String>,
}

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file cannot be read.
    #[error("cannot read policy {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::fsread::ReadError,
    },
    /// Not YAML, or not the shape of a policy.
    #[error("policy {}:{at}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// `line:col` of the problem.
        at: String,
        /// What is wrong there.
        message: String,
    },
    /// Another kind of document.
    #[error("{} is not a rollwright policy (expected apiVersion {} and kind Policy)", path.display(), crate::spec::API_VERSION)]
    NotAPolicy {
        /// The file.
        path: PathBuf,
    },
}

impl Policy {
    /// Reads a policy file.
    ///
    /// # Errors
    /// Naming the file (and line:col) when it cannot be used.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let bytes =
            crate::fsread::read(path, crate::fsread::DEFAULT_MAX).map_err(|source| PolicyError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let doc = load_bytes(&bytes, &Limits::default()).map_err(|d| PolicyError::Invalid {
            path: path.to_path_buf(),
            at: d[0].span.start.to_string(),
            message: d[0].message.clone(),
        })?;
        let digest = crate::digest::digest_bytes(&bytes);
        let mut p: Policy = serde_path_to_error::deserialize(&doc.value).map_err(|e| {
            let at = doc.locate(&format!("/{}", e.path().to_string().replace('.', "/")));
            PolicyError::Invalid {
                path: path.to_path_buf(),
                at: at.start.to_string(),
                message: format!("`{}`: {}", e.path(), e.inner()),
            }
        })?;
        if p.kind != "Policy" || p.api_version != crate::spec::API_VERSION {
            return Err(PolicyError::NotAPolicy {
                path: path.to_path_buf(),
            });
        }
        p.path = path.to_path_buf();
        p.digest = digest;
        Ok(p)
    }

    /// The policy in force: `explicit`, else `$ROLLWRIGHT_POLICY`, else
    /// [`SYSTEM_POLICY`] if it exists. Never a file of the working directory.
    ///
    /// # Errors
    /// When a named policy cannot be read.
    pub fn discover(explicit: Option<&Path>) -> Result<Option<Policy>, PolicyError> {
        if let Some(p) = explicit {
            return Policy::load(p).map(Some);
        }
        if let Some(p) = std::env::var_os("ROLLWRIGHT_POLICY").filter(|p| !p.is_empty()) {
            return Policy::load(Path::new(&p)).map(Some);
        }
        let system = Path::new(SYSTEM_POLICY);
        if system.exists() {
            Policy::load(system).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A warning when the working directory holds a policy file that older
    /// versions read implicitly and this one does not.
    #[must_use]
    pub fn ignored_local_file() -> Option<String> {
        let local = Path::new(".rollwright/policy.yaml");
        local.is_file().then(|| {
            "warning: .rollwright/policy.yaml is not read implicitly (a repository could bring its own); name it with --policy or $ROLLWRIGHT_POLICY, or install it as /etc/rollwright/policy.yaml".to_owned()
        })
    }

    /// What a run records about the policy: `{path, digest}`.
    #[must_use]
    pub fn record(&self) -> Value {
        let abs = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        serde_json::json!({"path": abs.to_string_lossy(), "digest": self.digest})
    }

    /// The environment of `spec`'s target as the policy sees it, when
    /// reached as `reached` (the context used and its API server).
    #[must_use]
    pub fn derive(&self, spec: &Spec, reached: Option<&Reached>) -> Option<Derived> {
        let t = spec.target.as_ref()?;
        let used = reached.map_or(t.context.as_str(), |r| r.context.as_str());
        let reason = self.production.matched(t, reached).map(|m| match m {
            Matched::Context if used != t.context && self.production.contexts.iter().any(|c| c == used) => {
                format!("context `{used}` is production")
            }
            Matched::Context => format!("context `{}` is production", t.context),
            Matched::Namespace => format!("namespace `{}` is production", t.namespace),
            Matched::Server(s) => format!("context `{used}` points at production API server {s}"),
        });
        Some(match reason {
            Some(r) => Derived {
                environment: Environment::Production,
                reason: Some(format!("{r} (policy {})", self.path.display())),
            },
            None => Derived {
                environment: t.environment,
                reason: None,
            },
        })
    }

    /// Why the policy says a GitOps controller manages `spec`'s target, if it does.
    #[must_use]
    pub fn gitops_managed(&self, spec: &Spec, reached: Option<&Reached>) -> Option<String> {
        let t = spec.target.as_ref()?;
        let reason = match self.gitops.matched(t, reached)? {
            Matched::Context => format!("context `{}`", t.context),
            Matched::Namespace => format!("namespace `{}`", t.namespace),
            Matched::Server(s) => format!("API server {s}"),
        };
        Some(format!(
            "{reason} is GitOps-managed (policy {})",
            self.path.display()
        ))
    }

    /// The rules of an environment.
    #[must_use]
    pub fn rules(&self, env: Environment) -> Option<&EnvironmentRules> {
        let name = match env {
            Environment::Production => "production",
            Environment::Staging => "staging",
            Environment::Dev => "dev",
        };
        self.environments.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_match_in_one_form() {
        for (a, b) in [
            ("https://10.0.0.1:6443/", "https://10.0.0.1:6443"),
            ("HTTPS://API.Prod.Example", "https://api.prod.example:443"),
            ("https://[::1]", "https://[::1]:443"),
        ] {
            assert_eq!(normalize_server(a), normalize_server(b), "{a} vs {b}");
        }
        assert_ne!(
            normalize_server("https://10.0.0.1:6443"),
            normalize_server("https://10.0.0.2:6443")
        );
    }
}
