//! A simulated cluster on either API server: rollwright's embedded one, or
//! a real Kubernetes control plane ([`ControlPlane`]) with the simulated
//! world running over it. What `run --sim`, `rollwright test` and
//! `rollwright sim` start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::control_plane::ControlPlane;
use crate::{Sim, SimError, SimOptions, World, WorldOptions};

/// Which API server a simulation runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiServer {
    /// rollwright's embedded API server.
    Embedded,
    /// etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
    /// kwok, from the binaries `scripts/setup-kube` built into `bin`.
    KubeApiserver {
        /// The directory of the binaries.
        bin: PathBuf,
    },
}

/// A running simulation. Dropping it stops everything it started.
pub struct Simulation {
    inner: Inner,
}

enum Inner {
    Embedded(Sim),
    // The world stops before the control plane under it.
    Kube { world: World, cp: ControlPlane },
}

impl Simulation {
    /// Starts the API server, creates the scenario's objects and starts the
    /// simulated world over it.
    ///
    /// # Errors
    /// What could not start; on kube-apiserver also a scenario that needs
    /// the embedded API server (API faults, fixed ports).
    pub async fn start(api: &ApiServer, options: SimOptions) -> Result<Simulation, SimError> {
        let bin = match api {
            ApiServer::Embedded => {
                return Ok(Simulation {
                    inner: Inner::Embedded(Sim::start_with(options).await?),
                });
            }
            ApiServer::KubeApiserver { bin } => bin.clone(),
        };
        if let Some(why) = needs_embedded(&options) {
            return Err(SimError::Unsupported(why));
        }
        let mut objects = options.scenario.objects.clone();
        // Namespaces and CRDs before what lives in them.
        objects.sort_by_key(|o| match o["kind"].as_str() {
            Some("Namespace") => 0,
            Some("CustomResourceDefinition") => 1,
            _ => 2,
        });
        let cp = tokio::task::spawn_blocking(move || {
            let cp = ControlPlane::start_for_world(&bin).map_err(|e| SimError::Seed(e.to_string()))?;
            if !objects.is_empty() {
                let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
                cp.kubectl(&["apply", "--server-side", "-f", "-"], Some(&list.to_string()))
                    .map_err(|e| SimError::Seed(format!("the scenario's objects: {e}")))?;
            }
            Ok::<_, SimError>(cp)
        })
        .await
        .map_err(|e| SimError::Seed(e.to_string()))??;
        let world = World::start(
            &cp.kubeconfig_for("sim"),
            WorldOptions {
                models_port: options.models_port,
                scenario: options.scenario,
                repositories_dir: options.repositories_dir,
            },
        )
        .await?;
        Ok(Simulation {
            inner: Inner::Kube { world, cp },
        })
    }

    /// The simulated world (model servers, router, faults, repositories).
    #[must_use]
    pub fn world(&self) -> &World {
        match &self.inner {
            Inner::Embedded(sim) => sim.world(),
            Inner::Kube { world, .. } => world,
        }
    }

    /// The embedded API server, when that is what runs.
    #[must_use]
    pub fn embedded(&self) -> Option<&Sim> {
        match &self.inner {
            Inner::Embedded(sim) => Some(sim),
            Inner::Kube { .. } => None,
        }
    }

    /// The control plane, when that is what runs.
    #[must_use]
    pub fn control_plane(&self) -> Option<&ControlPlane> {
        match &self.inner {
            Inner::Embedded(_) => None,
            Inner::Kube { cp, .. } => Some(cp),
        }
    }

    /// `https://127.0.0.1:PORT` of the API server.
    #[must_use]
    pub fn url(&self) -> String {
        match &self.inner {
            Inner::Embedded(sim) => sim.url(),
            Inner::Kube { cp, .. } => cp.url().to_owned(),
        }
    }

    /// What proves a run's API server is this simulation (see
    /// `Attach::verify`): `/sim/identity` on the embedded API server, the
    /// certificate's name on kube-apiserver.
    #[must_use]
    pub fn identity(&self) -> &str {
        match &self.inner {
            Inner::Embedded(sim) => sim.identity(),
            Inner::Kube { cp, .. } => cp.identity(),
        }
    }

    /// The administrator's kubeconfig, its context named `context`.
    #[must_use]
    pub fn kubeconfig_for(&self, context: &str) -> String {
        match &self.inner {
            Inner::Embedded(sim) => sim.kubeconfig_for(context),
            Inner::Kube { cp, .. } => cp.kubeconfig_for(context),
        }
    }

    /// Writes [`Simulation::kubeconfig_for`] (mode 0600: it holds a token).
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_kubeconfig_for(&self, path: &Path, context: &str) -> std::io::Result<()> {
        crate::write_private(path, &self.kubeconfig_for(context))
    }

    /// A kubeconfig for another user (approvals by someone else). The
    /// embedded API server knows any user; kube-apiserver the
    /// [`crate::control_plane::USERS`].
    ///
    /// # Errors
    /// A user kube-apiserver does not know.
    pub fn kubeconfig_for_user(&self, context: &str, user: &str) -> Result<String, String> {
        match &self.inner {
            Inner::Embedded(sim) => Ok(sim.kubeconfig_for_user(context, user)),
            Inner::Kube { cp, .. } => {
                if cp.token(user).is_none() {
                    let known: Vec<&str> = crate::control_plane::USERS.iter().map(|u| u.0).collect();
                    return Err(format!(
                        "kube-apiserver authenticates the users {} only, not `{user}`",
                        known.join(", ")
                    ));
                }
                Ok(cp.kubeconfig_for_user(context, user))
            }
        }
    }

    /// Waits (at most `max`) until the world has settled ([`World::settled`]).
    pub async fn settled(&self, max: Duration) -> bool {
        self.world().settled(max).await
    }
}

/// Why a scenario cannot run on kube-apiserver, if it cannot.
#[must_use]
pub fn needs_embedded(options: &SimOptions) -> Option<String> {
    if !options.scenario.api.is_empty() {
        return Some(
            "the scenario's `api` faults are injected by the embedded API server only (--control-plane embedded)"
                .into(),
        );
    }
    if options.port != 0 {
        return Some(
            "kube-apiserver takes a free port of its own (--port is the embedded API server's)".into(),
        );
    }
    None
}
