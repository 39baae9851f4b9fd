//! rollwright's embedded cluster: an HTTP server on 127.0.0.1 that speaks
//! the Kubernetes REST API for the kinds rollouts touch, so that `kubectl`
//! and kube-rs work against it as against a real API server.
//!
//! This first part serves discovery (`/version`, `/api`, `/apis`, group
//! versions), and get / list (label selectors) / create / replace (409 on a
//! stale resourceVersion) / merge-patch / delete with API-server metadata
//! (uid, resourceVersion, generation bumped on spec changes,
//! creationTimestamp), real namespaces (an object in a missing namespace is
//! a 404) and Kubernetes-shaped `Status` errors. It serves HTTPS with a
//! self-signed certificate made at start (kubectl sends bearer tokens only
//! over TLS); the CA and the token go into the kubeconfig, and every request
//! needs the token (401 otherwise).
//!
//! Also: server-side apply (field ownership per manager, managedFields,
//! conflicts and force), watch (history + live, 410 Expired), JSON patch, the status
//! subresource, and a Deployment controller (ReplicaSets, Pods Ready after a
//! startup delay, status for `kubectl rollout status`).
//!
//! Also the InferenceService and SeldonDeployment controllers, CRDs
//! (`apiextensions.k8s.io/v1`: a created CustomResourceDefinition is served
//! at once), garbage collection of owned objects, and the model side: a
//! plain-HTTP listener on 127.0.0.1 where each simulated model version
//! answers KServe v1 and Open Inference Protocol v2 requests through a
//! router that follows the routing objects ([`routing`]), a background
//! traffic generator and `/metrics` in Prometheus text format ([`models`]).
//!
//! Also a GitOps controller standing in for Argo CD (`Application`) and
//! Flux (`GitRepository` + `Kustomization`): it applies what is committed
//! in a repository on this machine and reports sync and health as they do.
//!
//! A [`Scenario`] (YAML, see [`scenario`]) sets model behaviour per version,
//! pod faults, API faults and the time scale; its live parts can be changed
//! while running (`PUT /sim/scenario`, `PUT /sim/faults`).

mod api;
pub mod control_plane;
mod controllers;
mod faults;
mod gitops;
mod kinds;
pub mod models;
pub mod routing;
pub mod scenario;
pub mod simulation;
mod store;
mod table;
pub mod world;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use faults::{Behaviour, PodFault};
pub use kinds::{KINDS, Kind};
pub use routing::{Backend, Route};
pub use scenario::{Scenario, ScenarioError};
pub use simulation::{ApiServer, Simulation};
pub use world::{World, WorldOptions};

/// Why the sim cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Binding or serving failed.
    #[error("sim: {0}")]
    Io(#[from] std::io::Error),
    /// A scenario object could not be created.
    #[error("scenario: {0}")]
    Seed(String),
    /// The scenario needs what this API server cannot simulate.
    #[error("{0}")]
    Unsupported(String),
}

/// How to start a sim.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// API server port on 127.0.0.1 (0 picks a free one).
    pub port: u16,
    /// Model server port on 127.0.0.1 (0 picks a free one).
    pub models_port: u16,
    /// The scenario.
    pub scenario: Scenario,
    /// Where to create the scenario's repositories (kept); default a
    /// temporary directory removed when the sim is dropped.
    pub repositories_dir: Option<std::path::PathBuf>,
}

/// A running sim. Dropping it stops the server.
pub struct Sim {
    state: Arc<api::State>,
    /// The simulated world, over this API server.
    world: World,
    addr: SocketAddr,
    token: String,
    ca_pem: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Sim {
    /// Starts a sim on 127.0.0.1 (`port` 0 picks a free one), in the
    /// current tokio runtime.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(port: u16) -> Result<Sim, SimError> {
        Sim::start_with(SimOptions {
            port,
            ..SimOptions::default()
        })
        .await
    }

    /// Starts a sim with a scenario: its objects are created before this
    /// returns.
    ///
    /// # Errors
    /// When a port cannot be bound or a scenario object cannot be created.
    pub async fn start_with(options: SimOptions) -> Result<Sim, SimError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port)).await?;
        let addr = listener.local_addr()?;
        let token = token();
        let (tls, ca_pem) = tls_config()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let objects = options.scenario.objects.clone();
        let world_options = WorldOptions {
            models_port: options.models_port,
            scenario: options.scenario.clone(),
            repositories_dir: options.repositories_dir.clone(),
        };
        let state = Arc::new(api::State::new(token.clone(), options.scenario));
        state.seed(&objects).map_err(SimError::Seed)?;
        let app = api::router(state.clone());
        let tick = std::time::Duration::from_millis(100);
        let controllers = tokio::spawn(controllers::run(state.clone(), tick));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    _ = &mut rx => {
                        controllers.abort();
                        return;
                    }
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ =
                        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                });
            }
        });
        // The world reaches this API server as any client does.
        let live = world::Live {
            faults: state.faults.clone(),
            models: state.models.clone(),
            scale: state.scale,
            startup: state.startup,
            repos: Arc::default(),
        };
        let kubeconfig = kubeconfig_text(&format!("https://{addr}"), &ca_pem, &token, "sim");
        let world = match World::start_with(&kubeconfig, live, &world_options).await {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(());
                return Err(e);
            }
        };
        Ok(Sim {
            state,
            world,
            addr,
            token,
            ca_pem,
            shutdown: Some(tx),
        })
    }

    /// The simulated world running over this API server.
    #[must_use]
    pub fn world(&self) -> &World {
        &self.world
    }

    /// Replaces the pod faults (as `PUT /sim/faults` does).
    pub fn set_pod_faults(&self, faults: Vec<PodFault>) {
        self.state.set_faults(faults);
    }

    /// Replaces the live parts of the scenario (models, pods, api, traffic),
    /// as `PUT /sim/scenario` does.
    pub fn set_scenario(&self, scenario: &Scenario) {
        self.state.set_live(scenario);
    }

    /// Waits (at most `max`) until the world has settled: every Deployment
    /// rolled out, every InferenceService Ready, every SeldonDeployment
    /// Available, every Argo CD Application Synced and Healthy, every Flux
    /// Kustomization Ready. Returns whether it did.
    pub async fn settled(&self, max: std::time::Duration) -> bool {
        self.world.settled(max).await
    }

    /// The scenario's repositories (`sim://NAME` → a bare repository path).
    #[must_use]
    pub fn repositories(&self) -> Vec<(String, std::path::PathBuf)> {
        self.world.repositories()
    }

    /// See [`World::repository_for`].
    ///
    /// # Errors
    /// No repository, or none that matches among several.
    pub fn repository_for(&self, url: &str) -> Result<std::path::PathBuf, String> {
        self.world.repository_for(url)
    }

    /// The current traffic split per model.
    #[must_use]
    pub fn routes(&self) -> Vec<Route> {
        self.world.routes()
    }

    /// The versions serving `model` now and their share of traffic.
    #[must_use]
    pub fn split(&self, model: &str) -> std::collections::BTreeMap<String, u32> {
        self.world.split(model)
    }

    /// The time scale.
    #[must_use]
    pub fn time_scale(&self) -> f64 {
        self.world.time_scale()
    }

    /// `http://127.0.0.1:PORT` of the model servers (and `/metrics`).
    #[must_use]
    pub fn models_url(&self) -> String {
        self.world.models_url()
    }

    /// `https://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The PEM certificate clients must trust.
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The bearer token.
    #[must_use]
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The sim's identity: `GET /sim/identity` answers it, which is how a
    /// run attached to this sim proves its API server is this sim.
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.state.identity
    }

    /// A kubeconfig for `user` (another identity than the admin's, for
    /// approvals by someone else: `SelfSubjectReview` answers `user`).
    #[must_use]
    pub fn kubeconfig_for_user(&self, context: &str, user: &str) -> String {
        let token = self.state.user_token(user, &[]);
        self.kubeconfig_with(context, &token)
    }

    /// A kubeconfig for this sim, context `sim`.
    #[must_use]
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_for("sim")
    }

    /// A kubeconfig for this sim whose context is named `context` (so a
    /// spec's `target.context` reaches the sim).
    #[must_use]
    pub fn kubeconfig_for(&self, context: &str) -> String {
        self.kubeconfig_with(context, &self.token)
    }

    fn kubeconfig_with(&self, context: &str, token: &str) -> String {
        kubeconfig_text(&self.url(), &self.ca_pem, token, context)
    }

    /// Writes the kubeconfig (mode 0600: it holds the token).
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        self.write_kubeconfig_for(path, "sim")
    }

    /// Writes the kubeconfig of [`Sim::kubeconfig_for`] (mode 0600).
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_kubeconfig_for(&self, path: &Path, context: &str) -> std::io::Result<()> {
        write_private(path, &self.kubeconfig_for(context))
    }
}

/// A kubeconfig with one cluster (`server`, trusting `ca_pem`), one user
/// (a bearer `token`) and one context named `context`.
pub(crate) fn kubeconfig_text(server: &str, ca_pem: &str, token: &str, context: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster: {{server: \"{server}\", certificate-authority-data: \"{}\"}}\nusers:\n- name: sim\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: \"{context}\"\n  context: {{cluster: sim, user: sim, namespace: default}}\ncurrent-context: \"{context}\"\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca_pem.as_bytes()),
    )
}

/// Writes `text` to `path`, readable by its owner only (it holds a key or token).
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, and its PEM.
fn tls_config() -> Result<(rustls::ServerConfig, String), SimError> {
    let other = |e: String| SimError::Io(std::io::Error::other(e));
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(|e| other(format!("cannot make a certificate: {e}")))?;
    let pem = cert.cert.pem();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
        .map_err(|e| other(e.to_owned()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| other(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .map_err(|e| other(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, pem))
}

/// An object's `metadata.<field>` string (empty when absent).
pub(crate) fn meta<'a>(v: &'a serde_json::Value, field: &str) -> &'a str {
    v["metadata"][field].as_str().unwrap_or_default()
}

/// A short stable hash of a value (FNV-1a over its JSON, 31 bits): the
/// names controllers derive from content (ReplicaSet, revision hashes).
pub(crate) fn fnv(v: &serde_json::Value) -> u32 {
    let h = v.to_string().bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    h & 0x7fff_ffff
}

/// 32 hex digits from the kernel's random source (the clock, pid and a
/// counter only if it cannot be read).
pub(crate) fn random_hex() -> String {
    token().trim_start_matches("sim-").to_owned()
}

/// A token from the kernel's random source (the clock and pid only if it
/// cannot be read).
fn token() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !random {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (t ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sim-{hex}")
}
