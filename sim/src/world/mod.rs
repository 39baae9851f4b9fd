//! The simulated world: what makes an API server look like a cluster that
//! serves models. The serving platforms' controllers (InferenceService,
//! SeldonDeployment), the GitOps stand-in (Argo CD, Flux), the node agent
//! (pods' lifecycle and the scenario's pod faults), the traffic router,
//! the model servers and `/metrics`.
//!
//! It talks to its API server only through the Kubernetes API (kube-rs:
//! watch caches for reads, API calls for writes), so the same code runs on
//! the embedded API server and on a real kube-apiserver. On the embedded
//! one, Deployments, ReplicaSets, Pods' creation and garbage collection are
//! the embedded controllers' work; on kube-apiserver, the real
//! controllers'.

pub(crate) mod cluster;
mod kubelet;
pub(crate) mod serving;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::models::Models;
use crate::routing::Route;
use crate::scenario::Scenario;
use crate::{PodFault, SimError};

use cluster::Cluster;
pub(crate) use cluster::Live;

/// How to start a world over an API server.
#[derive(Debug, Clone, Default)]
pub struct WorldOptions {
    /// Model server port on 127.0.0.1 (0 picks a free one).
    pub models_port: u16,
    /// The scenario (its objects are not created here: the API server's
    /// owner does that).
    pub scenario: Scenario,
    /// Where to create the scenario's repositories (kept); default a
    /// temporary directory removed when the world is dropped.
    pub repositories_dir: Option<PathBuf>,
}

/// A running world. Dropping it stops it.
pub struct World {
    cluster: Arc<Cluster>,
    live: Live,
    models_addr: SocketAddr,
    repos_root: Option<PathBuf>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("models", &self.models_addr)
            .finish_non_exhaustive()
    }
}

/// A kube-rs client for the API server a kubeconfig (text) names.
async fn client(kubeconfig: &str) -> Result<kube::Client, SimError> {
    let seed = |e: String| SimError::Seed(e);
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).map_err(|e| seed(format!("kubeconfig: {e}")))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| seed(format!("kubeconfig: {e}")))?;
    kube::Client::try_from(config).map_err(|e| seed(format!("cannot make a client: {e}")))
}

impl World {
    /// Starts the world over the API server `kubeconfig` (its text) names,
    /// as its administrator, in the current tokio runtime (which must be
    /// multi-threaded). Returns once its watch caches are filled.
    ///
    /// # Errors
    /// A bad kubeconfig, a port that cannot be bound, repositories that
    /// cannot be made, or an API server that never lists what the world
    /// follows (its CRDs are not installed).
    pub async fn start(kubeconfig: &str, options: WorldOptions) -> Result<World, SimError> {
        let seed = options.scenario.seed.unwrap_or(0x5EED);
        let live = Live {
            faults: Arc::new(Mutex::new(options.scenario.pods.clone())),
            models: Arc::new(Models::new(
                options.scenario.time_scale,
                seed,
                options.scenario.models.clone(),
                options.scenario.traffic.rate,
            )),
            scale: options.scenario.time_scale,
            startup: options.scenario.startup_real(),
            repos: Arc::default(),
        };
        World::start_with(kubeconfig, live, &options).await
    }

    /// Starts it with live parts shared with an embedded API server (whose
    /// admin endpoints change them).
    pub(crate) async fn start_with(
        kubeconfig: &str,
        live: Live,
        options: &WorldOptions,
    ) -> Result<World, SimError> {
        let models_listener = tokio::net::TcpListener::bind(("127.0.0.1", options.models_port)).await?;
        let models_addr = models_listener.local_addr()?;
        let repos = &options.scenario.repositories;
        let repos_root = (!repos.is_empty() && options.repositories_dir.is_none()).then(|| {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            std::env::temp_dir().join(format!(
                "rollwright-sim-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ))
        });
        if let Some(root) = repos_root.as_ref().or(options.repositories_dir.as_ref())
            && !repos.is_empty()
        {
            let made = crate::gitops::create_repositories(root, repos).map_err(SimError::Seed)?;
            if let Ok(mut r) = live.repos.write() {
                *r = made;
            }
        }
        let client = client(kubeconfig).await?;
        let (cluster, mut tasks) = Cluster::start(client, live.clone(), Duration::from_secs(60))
            .await
            .map_err(SimError::Seed)?;
        let cluster = Arc::new(cluster);
        // Each webhook's URL, in the Secret a `notify` step reads.
        for (name, at) in &options.scenario.webhooks {
            let Some((ns, secret)) = at.split_once('/') else {
                continue;
            };
            let url = format!("http://{models_addr}/hooks/{name}");
            let obj = serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"namespace": ns, "name": secret, "labels": {"rollwright.dev/sim-webhook": name}},
                "type": "Opaque",
                "data": {"url": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, url)},
            });
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.apply_object(obj, "rollwright-sim"))
                .await
                .map_err(|e| SimError::Seed(e.to_string()))?
                .map_err(|e| SimError::Seed(format!("webhook {name}: the Secret {at}: {e}")))?;
        }
        let tick = Duration::from_millis(100);
        tasks.push(tokio::spawn(run(cluster.clone(), tick)));
        tasks.push(tokio::spawn(crate::gitops::run(
            cluster.clone(),
            Duration::from_millis(200),
        )));
        tasks.push(tokio::spawn(live.models.clone().generate(tick)));
        let models_app = crate::models::router(live.models.clone());
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(models_listener, models_app).await;
        }));
        Ok(World {
            cluster,
            live,
            models_addr,
            repos_root,
            tasks,
        })
    }

    /// Waits (at most `max`) until the world has settled: every Deployment
    /// rolled out, every InferenceService Ready, every SeldonDeployment
    /// Available, every Argo CD Application Synced and Healthy, every Flux
    /// Kustomization Ready. Returns whether it did.
    pub async fn settled(&self, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let c = self.cluster.clone();
            let done = tokio::task::spawn_blocking(move || settled(&c))
                .await
                .unwrap_or(false);
            if done {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces the pod faults.
    pub fn set_pod_faults(&self, faults: Vec<PodFault>) {
        if let Ok(mut f) = self.live.faults.lock() {
            *f = faults;
        }
    }

    /// Replaces the live parts of the scenario the world follows: models
    /// and traffic, pod faults.
    pub fn set_scenario(&self, scenario: &Scenario) {
        self.set_pod_faults(scenario.pods.clone());
        self.live
            .models
            .set_behaviour(scenario.models.clone(), scenario.traffic.rate);
    }

    /// The scenario's repositories (`sim://NAME` → a bare repository path).
    #[must_use]
    pub fn repositories(&self) -> Vec<(String, PathBuf)> {
        let mut all: Vec<_> = self
            .live
            .repos
            .read()
            .map(|r| r.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        all.sort();
        all
    }

    /// The sim repository standing in for a spec's `target.gitops.repo`:
    /// the only one, else the one named like the URL's last segment
    /// (`…/deploy.git` → `deploy`).
    ///
    /// # Errors
    /// No repository, or none that matches among several.
    pub fn repository_for(&self, url: &str) -> Result<PathBuf, String> {
        let all = self.repositories();
        if let [(_, only)] = all.as_slice() {
            return Ok(only.clone());
        }
        let base = url
            .trim_end_matches('/')
            .rsplit(['/', ':'])
            .next()
            .unwrap_or(url)
            .trim_end_matches(".git");
        all.into_iter()
            .find(|(n, _)| n == base)
            .map(|(_, p)| p)
            .ok_or_else(|| {
                format!(
                    "the spec's GitOps repository `{url}` needs a scenario repository (`repositories: {{{base}: DIR}}`); the sim never pushes anywhere else"
                )
            })
    }

    /// The current traffic split per model.
    #[must_use]
    pub fn routes(&self) -> Vec<Route> {
        self.live.models.routes().values().cloned().collect()
    }

    /// The versions serving `model` now and their share of traffic
    /// (backends without traffic left out).
    #[must_use]
    pub fn split(&self, model: &str) -> std::collections::BTreeMap<String, u32> {
        self.routes()
            .into_iter()
            .filter(|r| r.model == model)
            .flat_map(|r| r.backends)
            .filter(|b| b.weight > 0)
            .map(|b| (b.version, b.weight))
            .collect()
    }

    /// The time scale.
    #[must_use]
    pub fn time_scale(&self) -> f64 {
        self.live.scale.0
    }

    /// `http://127.0.0.1:PORT` of the model servers (and `/metrics`).
    #[must_use]
    pub fn models_url(&self) -> String {
        format!("http://{}", self.models_addr)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(root) = &self.repos_root {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

fn ready_condition(o: &serde_json::Value) -> bool {
    o["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn settled(c: &Cluster) -> bool {
    let all = |group: &str, plural: &str, ok: &dyn Fn(&serde_json::Value) -> bool| {
        c.snapshot(group, plural).iter().all(ok)
    };
    all("apps", "deployments", &|d| {
        let want = d["spec"]["replicas"].as_u64().unwrap_or(1);
        d["status"]["observedGeneration"] == d["metadata"]["generation"]
            && d["status"]["readyReplicas"].as_u64().unwrap_or(0) >= want
            && d["status"]["replicas"].as_u64().unwrap_or(0) <= want
    }) && all("serving.kserve.io", "inferenceservices", &|i| {
        ready_condition(i) && i["status"]["components"]["predictor"]["latestRolledoutRevision"].is_string()
    }) && all("machinelearning.seldon.io", "seldondeployments", &|s| {
        s["status"]["state"] == "Available"
    }) && all("argoproj.io", "applications", &|a| {
        a["status"]["sync"]["status"] == "Synced" && a["status"]["health"]["status"] == "Healthy"
    }) && all("kustomize.toolkit.fluxcd.io", "kustomizations", &ready_condition)
}

/// The world's controllers, one pass per tick on a blocking thread (they
/// block on API calls): serving platforms, the node agent, the router.
async fn run(cluster: Arc<Cluster>, tick: Duration) {
    let mut kubelet = kubelet::Kubelet::default();
    loop {
        let c = cluster.clone();
        kubelet = tokio::task::spawn_blocking(move || {
            serving::reconcile_inference_services(&c);
            serving::reconcile_seldon(&c);
            // The router learns of a pod's readiness before the API server
            // does: a pod is never Ready there (and its Deployment
            // available) while the router still answers 503 for it.
            let changes = kubelet.plan(&c);
            let mut view = c.view();
            for (ns, name, status) in &changes {
                let key = (String::new(), "pods".to_owned(), ns.clone(), name.clone());
                if let Some(pod) = view.objects.get_mut(&key) {
                    pod["status"] = status.clone();
                }
            }
            c.live.models.set_routes(crate::routing::compute(&view));
            kubelet::Kubelet::write(&c, changes);
            kubelet
        })
        .await
        .unwrap_or_default();
        tokio::time::sleep(tick).await;
    }
}
