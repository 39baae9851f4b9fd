//! `rollwright controller`: runs RolloutRuns in the cluster, as a set of
//! replicas of which one leads.
//!
//! - **Leader election** ([`leader`]): a Lease; the leader's epoch is
//!   stamped on every status and journal write, each conditional on the
//!   resourceVersion last seen, so a deposed leader's late writes are
//!   refused; a replica that finds itself deposed, or cannot renew the
//!   Lease within its duration, exits at once (its runs stop where they
//!   are; the next leader resumes them from the journal).
//! - **Reconciling** (kube-runtime `Controller`): each RolloutRun that has
//!   not ended gets one task ([`run::drive`]) with the same executor, steps
//!   and gates as `rollwright run`; a change of its `spec.intent` (abort,
//!   approvals) reaches that task.
//! - **Journal in the cluster** ([`store`]), **status** ([`status`]),
//!   **Events** on the RolloutRun, `/metrics`, `/healthz`, `/readyz`
//!   ([`serve`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use rollwright_engine::Linter;
use rollwright_engine::journal::Key;
use rollwright_engine::policy::Policy;
use rollwright_steps::reach::Reach;

use crate::error::{CliError, CliResult};
use crate::rolloutrun::{Intent, RolloutRun};

mod leader;
mod manifests;
mod run;
mod serve;
mod status;
mod store;

pub use manifests::ManifestsArgs;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ControllerArgs {
    #[command(subcommand)]
    command: Option<ControllerCommand>,
    #[command(flatten)]
    options: Options,
}

#[derive(Subcommand)]
enum ControllerCommand {
    /// Print what installs the controller: the CRD, the admission policy,
    /// its ServiceAccount, least-privilege roles, a two-replica Deployment
    /// and a PodDisruptionBudget.
    Manifests(ManifestsArgs),
}

#[derive(Args)]
struct Options {
    /// Only RolloutRuns in this namespace (default: every namespace).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// This replica's name (default: $POD_NAME, else HOSTNAME-PID).
    #[arg(long, value_name = "NAME")]
    identity: Option<String>,
    /// Namespace of the leader Lease and the journal key (default:
    /// $POD_NAMESPACE, else `default`).
    #[arg(long, value_name = "NS")]
    lease_namespace: Option<String>,
    /// How long the leader's Lease lasts without renewal: a replica takes
    /// over at most this long after the leader stops.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = crate::run_cmd::parse_duration)]
    lease_duration: Duration,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Scratch space for runs' local journal copies (the truth is in the cluster).
    #[arg(long, value_name = "DIR", default_value = "/tmp/rollwright-controller")]
    state_dir: PathBuf,
    /// Platform policy (default: $ROLLWRIGHT_POLICY, else /etc/rollwright/policy.yaml).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The platform's files runs may use: a file model registry
    /// (`registry.yaml`), secret files. Never anything a RolloutRun carries.
    #[arg(long, value_name = "DIR")]
    files: Option<PathBuf>,
    /// kubeconfig (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// kubeconfig context (default: its current context).
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Run on a simulated cluster another process runs (`rollwright sim`
    /// prints its attach file), after proving the API server is that sim.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kubeconfig", "context"])]
    sim_attach: Option<PathBuf>,
}

/// One run this replica executes.
struct Running {
    intent: tokio::sync::watch::Sender<Intent>,
    task: tokio::task::JoinHandle<()>,
}

/// What every reconcile and run shares.
pub struct Ctl {
    client: Client,
    identity: String,
    epoch: AtomicI64,
    leadership: Arc<leader::Leadership>,
    reach: Reach,
    linter: Linter,
    policy: Option<Policy>,
    key: Arc<Key>,
    state_dir: PathBuf,
    files: Option<PathBuf>,
    runs: Mutex<HashMap<String, Running>>,
    metrics: Arc<serve::Metrics>,
    health: Arc<serve::Health>,
    recorder: Recorder,
    deposed: tokio::sync::watch::Sender<Option<String>>,
    /// Runs getting ready at once (checks, journal, status, target Lease):
    /// a new leader taking over many runs does it a few at a time.
    starting: tokio::sync::Semaphore,
}

impl Ctl {
    fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The check a write that finds a newer epoch makes before believing it.
    fn fence(&self) -> store::Deposed {
        let l = self.leadership.clone();
        Arc::new(move |epoch| {
            let l = l.clone();
            Box::pin(async move { l.deposed(epoch).await })
        })
    }

    /// This replica must stop: another one leads.
    fn depose(&self, why: String) {
        tracing::error!("deposed: {why}");
        self.deposed.send_replace(Some(why));
    }

    /// Deposes on a journal write that found a newer leader, or lapsed
    /// leadership; other failures are logged (the step fails, the run
    /// compensates as `rollwright run` would).
    fn depose_if(&self, e: &store::PushError, what: &str) {
        match e {
            store::PushError::Deposed(_) | store::PushError::NotLeading => {
                self.depose(format!("{what}: {e}"))
            }
            _ => tracing::warn!("{what}: {e}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ReconcileError(String);

async fn reconcile(rr: Arc<RolloutRun>, ctl: Arc<Ctl>) -> Result<Action, ReconcileError> {
    let t = Instant::now();
    ctl.health.beat();
    let key = format!("{}/{}", rr.namespace().unwrap_or_default(), rr.name_any());
    // A RolloutRun deleted while it runs is aborted (rolled back) first;
    // its finalizer keeps it, and its journal, until then.
    let deleting = rr.metadata.deletion_timestamp.is_some();
    let mut intent = rr.spec.intent.clone();
    if deleting && intent.abort.is_none() {
        intent.abort = Some(crate::rolloutrun::AbortIntent {
            by: "(deletion)".into(),
            reason: "the RolloutRun was deleted".into(),
        });
    }
    enum Next {
        Running,
        Release,
        Ended,
        Started,
    }
    let next = {
        let mut runs = ctl
            .runs
            .lock()
            .map_err(|_| ReconcileError("runs lock poisoned".into()))?;
        runs.retain(|_, r| !r.task.is_finished());
        if let Some(r) = runs.get(&key) {
            r.intent.send_replace(intent);
            Next::Running
        } else if deleting {
            Next::Release
        } else if run::terminal(&rr) {
            Next::Ended
        } else {
            let (tx, rx) = tokio::sync::watch::channel(intent);
            let task = tokio::spawn(run::drive(ctl.clone(), rr.clone(), rx));
            runs.insert(key.clone(), Running { intent: tx, task });
            Next::Started
        }
    };
    let result = match next {
        Next::Running => Ok(Action::requeue(Duration::from_secs(30))),
        Next::Started => Ok(Action::requeue(Duration::from_secs(10))),
        Next::Ended => Ok(Action::await_change()),
        Next::Release => run::finalizer(&ctl, &rr, false)
            .await
            .map(|()| Action::await_change())
            .map_err(|e| ReconcileError(format!("releasing {key}: {e}"))),
    };
    if let Ok(runs) = ctl.runs.lock() {
        ctl.metrics.active(runs.len());
    }
    ctl.metrics.reconciled(
        if result.is_ok() { "success" } else { "error" },
        t.elapsed().as_secs_f64(),
    );
    result
}

fn error_policy(_: Arc<RolloutRun>, e: &ReconcileError, ctl: Arc<Ctl>) -> Action {
    tracing::warn!("reconcile: {e}");
    ctl.metrics.reconciled("error", 0.0);
    Action::requeue(Duration::from_secs(5))
}

/// Logs through tracing, with every secret the process knows scrubbed.
fn init_logs() {
    struct Scrubbed;
    impl std::io::Write for Scrubbed {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let text = rollwright_engine::secrets::scrub(&String::from_utf8_lossy(buf));
            std::io::stderr().write_all(text.as_bytes())?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            std::io::stderr().flush()
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(|| Scrubbed)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

fn default_identity() -> String {
    if let Ok(p) = std::env::var("POD_NAME")
        && !p.is_empty()
    {
        return p;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// The cluster the controller reaches: a proven simulated one, the
/// kubeconfig's context, or the pod's own service account.
fn reach_of(o: &Options, rt: &tokio::runtime::Runtime) -> CliResult<Reach> {
    if let Some(f) = &o.sim_attach {
        let a = crate::sim_run::attach(f, rt).map_err(CliError::usage)?;
        return Ok(crate::sim_run::attached_reach(&a, Some(f), None));
    }
    real_reach(o.kubeconfig.as_deref(), o.context.as_deref())
}

/// A kubeconfig's context (default: its current one; none: in-cluster).
fn real_reach(kubeconfig: Option<&Path>, context: Option<&str>) -> CliResult<Reach> {
    let context = match context {
        Some(c) => c.to_owned(),
        None => {
            let kc = match kubeconfig {
                Some(p) => kube::config::Kubeconfig::read_from(p).ok(),
                None => kube::config::Kubeconfig::read().ok(),
            };
            kc.and_then(|k| k.current_context)
                .unwrap_or_else(|| "in-cluster".into())
        }
    };
    Reach::real(kubeconfig, &context).map_err(|e| CliError::usage(e.to_string()))
}

/// The controllers' shared journal key: a Secret in the Lease's namespace,
/// made by the first replica that needs it.
async fn shared_key(client: &Client, ns: &str) -> Result<Key, String> {
    const NAME: &str = "rollwright-journal-key";
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    for _ in 0..3 {
        if let Some(s) = api
            .get_opt(NAME)
            .await
            .map_err(|e| format!("Secret {ns}/{NAME}: {e}"))?
        {
            let bytes = s
                .data
                .as_ref()
                .and_then(|d| d.get("key"))
                .map(|b| b.0.clone())
                .filter(|b| b.len() >= 32)
                .ok_or_else(|| format!("Secret {ns}/{NAME} holds no `key` of 32 bytes or more"))?;
            return Ok(Key::from_bytes(&bytes));
        }
        let mut bytes = vec![0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .map_err(|e| format!("/dev/urandom: {e}"))?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(NAME.into()),
                labels: Some([("app.kubernetes.io/managed-by".to_owned(), "rollwright".to_owned())].into()),
                ..kube::api::ObjectMeta::default()
            },
            data: Some([("key".to_owned(), k8s_openapi::ByteString(bytes))].into()),
            ..Secret::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(format!("Secret {ns}/{NAME}: {e}")),
        }
    }
    Err(format!("Secret {ns}/{NAME} could not be read or made"))
}

pub fn controller(args: &ControllerArgs) -> CliResult {
    if let Some(ControllerCommand::Manifests(m)) = &args.command {
        return manifests::print(m);
    }
    let o = &args.options;
    init_logs();
    let policy = crate::run_cmd::discover_policy(o.policy.as_deref())?;
    let linter = crate::run_cmd::linter(policy.clone(), None)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("cannot start the runtime: {e}")))?;
    let reach = reach_of(o, &rt)?;
    let identity = o.identity.clone().unwrap_or_else(default_identity);
    let lease_ns = o
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "default".into());
    std::fs::create_dir_all(&o.state_dir)
        .map_err(|e| CliError::usage(format!("{}: {e}", o.state_dir.display())))?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(o.listen))
        .map_err(|e| CliError::usage(format!("cannot listen on {}: {e}", o.listen)))?;
    if let Ok(a) = listener.local_addr() {
        tracing::info!("{identity}: /metrics, /healthz and /readyz on http://{a}");
    }
    let me = identity.clone();
    let why = rt.block_on(async move {
        let cluster = rollwright_steps::cluster::Cluster::at(reach.clone(), &lease_ns).map_err(CliError::usage)?;
        let client = cluster.client().await.map_err(|e| CliError::usage(e.to_string()))?;
        // The Lease is renewed over connections of its own: a takeover of
        // a thousand runs must not make the new leader's renewal wait (and
        // the leader lose its Lease under the load it took on).
        let election = cluster.own_client().await.map_err(|e| CliError::usage(e.to_string()))?;
        let key = shared_key(&client, &lease_ns).await.map_err(CliError::state)?;
        let metrics = Arc::new(serve::Metrics::new());
        let health = Arc::new(serve::Health::default());
        health.beat();
        tokio::spawn(serve::serve(listener, metrics.clone(), health.clone()));
        let leadership = leader::Leadership::new(Api::namespaced(election, &lease_ns), &identity, o.lease_duration);
        let (deposed, mut deposed_rx) = tokio::sync::watch::channel(None);
        let ctl = Arc::new(Ctl {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "rollwright".into(),
                    instance: Some(identity.clone()),
                },
            ),
            client: client.clone(),
            identity: identity.clone(),
            epoch: AtomicI64::new(0),
            leadership: leadership.clone(),
            reach,
            linter,
            policy,
            key: Arc::new(key),
            state_dir: o.state_dir.clone(),
            files: o.files.as_deref().map(crate::run_cmd::absolute),
            runs: Mutex::default(),
            metrics: metrics.clone(),
            health: health.clone(),
            deposed,
            starting: tokio::sync::Semaphore::new(16),
        });
        health.ready();
        tracing::info!("{identity}: waiting to lead (Lease {lease_ns}/{})", leader::LEASE_NAME);
        let beat = {
            let h = health.clone();
            move || h.beat()
        };
        let epoch = leadership.acquire(&beat).await;
        ctl.epoch.store(epoch, Ordering::SeqCst);
        metrics.leading(true);
        let api: Api<RolloutRun> = match &o.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let controller = Controller::new(api, watcher::Config::default())
            .run(reconcile, error_policy, ctl.clone())
            .for_each(|_| async {});
        let keep = leadership.keep(&beat);
        let why = tokio::select! {
            () = controller => "the RolloutRun watch ended".to_owned(),
            why = keep => why,
            r = deposed_rx.wait_for(Option::is_some) => r.map(|w| w.clone().unwrap_or_default()).unwrap_or_default(),
            _ = tokio::signal::ctrl_c() => "interrupted".to_owned(),
        };
        Ok::<String, CliError>(why)
    })?;
    tracing::error!("{me}: stopping: {why}");
    // Runs stop where they are; the next leader resumes them.
    std::process::exit(1)
}

/// For the CLI's commands that talk to RolloutRuns.
pub fn client_for(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    namespace: &str,
) -> CliResult<(Reach, Arc<rollwright_steps::cluster::Cluster>)> {
    let reach = real_reach(kubeconfig, context)?;
    let cluster =
        rollwright_steps::cluster::Cluster::at(reach.clone(), namespace).map_err(CliError::usage)?;
    Ok((reach, cluster))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::Resource as _;

    /// The fences themselves, without the lapsed-Lease check in front of
    /// them (a deposed leader that does not notice it was paused): once a
    /// newer epoch has opened a run's journal and written its status, an
    /// older epoch's journal append, new chunk and status write are
    /// refused by the API server's resourceVersion check and recognised.
    #[test]
    fn an_older_epoch_cannot_write_the_journal_or_the_status_of_a_newer_one() {
        let bin = std::env::var_os("ROLLWRIGHT_KUBE_BIN").expect("ROLLWRIGHT_KUBE_BIN (scripts/setup-kube)");
        let cp = rollwright_sim::control_plane::ControlPlane::start(Path::new(&bin)).unwrap();
        cp.kubectl(
            &["apply", "--server-side", "-f", "-"],
            Some(&crate::rolloutrun::crd_yaml()),
        )
        .unwrap();
        cp.kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "crd/rolloutruns.rollwright.dev",
                "--timeout=30s",
            ],
            None,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        cp.write_kubeconfig_for(&kc, "t").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let reach = Reach::real(Some(&kc), "t").unwrap();
            let client = rollwright_steps::cluster::Cluster::at(reach, "default")
                .unwrap()
                .client()
                .await
                .unwrap();
            let runs: Api<RolloutRun> = Api::namespaced(client.clone(), "default");
            let mut rr = RolloutRun::new(
                "fenced",
                crate::rolloutrun::RolloutRunSpec {
                    plan: crate::rolloutrun::RunPlan {
                        name: "fenced".into(),
                        submitter: "admin".into(),
                        digest: "sha256:0".into(),
                        sources: Vec::new(),
                        model: None,
                        spec: serde_json::json!({}),
                        manifests: Vec::new(),
                    },
                    intent: Intent::default(),
                },
            );
            rr = runs.create(&PostParams::default(), &rr).await.unwrap();
            let owner = OwnerReference {
                api_version: "rollwright.dev/v1alpha1".into(),
                kind: "RolloutRun".into(),
                name: "fenced".into(),
                uid: rr.meta().uid.clone().unwrap(),
                controller: Some(true),
                block_owner_deletion: None,
            };
            let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
            // What the leader Lease answers: the older epoch was deposed…
            let lease_says_deposed: store::Deposed = Arc::new(|_| Box::pin(async { true }));
            // …or this epoch still leads (a newer stamp is then forged).
            let lease_says_leading: store::Deposed = Arc::new(|_| Box::pin(async { false }));
            let (mut old, text) = store::ClusterJournal::open(
                cms.clone(),
                "fenced",
                owner.clone(),
                1,
                lease_says_deposed.clone(),
            )
            .await
            .unwrap();
            assert_eq!(text, "");
            old.append("a\n").await.unwrap();
            let (mut new, text) = store::ClusterJournal::open(
                cms.clone(),
                "fenced",
                owner.clone(),
                2,
                lease_says_deposed.clone(),
            )
            .await
            .unwrap();
            assert_eq!(text, "a\n");
            let late = old.append("late\n").await;
            assert!(matches!(late, Err(store::PushError::Deposed(2))), "{late:?}");
            // Nor can it seal the chunk and start another one.
            let big = "x".repeat(store::CHUNK);
            let late = old.append(&format!("{big}\n")).await;
            assert!(matches!(late, Err(store::PushError::Deposed(2))), "{late:?}");
            new.append("b\n").await.unwrap();
            // An older epoch cannot even open it.
            let stale = store::ClusterJournal::open(
                cms.clone(),
                "fenced",
                owner.clone(),
                1,
                lease_says_deposed.clone(),
            )
            .await;
            assert!(
                matches!(stale, Err(store::PushError::Deposed(2))),
                "{:?}",
                stale.err()
            );
            let (_third, text) = store::ClusterJournal::open(
                cms.clone(),
                "fenced",
                owner.clone(),
                3,
                lease_says_deposed.clone(),
            )
            .await
            .unwrap();
            assert_eq!(text, "a\nb\n");
            // A stamp of a newer epoch the Lease does not confirm (anyone who
            // may write ConfigMaps could forge one) does not stop the leader.
            let chunk = kube::ResourceExt::name_any(
                &cms.list(&Default::default())
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .find(|c| {
                        c.metadata
                            .labels
                            .as_ref()
                            .is_some_and(|l| l.contains_key(store::OF))
                    })
                    .unwrap(),
            );
            cms.patch(
                &chunk,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    serde_json::json!({"metadata": {"annotations": {store::EPOCH: "99"}}}),
                ),
            )
            .await
            .unwrap();
            let mut forged_then_leading = store::ClusterJournal::open(
                cms.clone(),
                "fenced",
                owner.clone(),
                3,
                lease_says_leading.clone(),
            )
            .await
            .unwrap()
            .0;
            forged_then_leading.append("c\n").await.unwrap();
            let (_, text) = store::ClusterJournal::open(cms, "fenced", owner, 4, lease_says_deposed.clone())
                .await
                .unwrap();
            assert_eq!(text, "a\nb\nc\n");

            // The status: epoch 2 writes; epoch 1, with the version it saw before, is refused.
            let seen = rr.metadata.resource_version.clone().unwrap();
            let status = |epoch: i64| crate::rolloutrun::RolloutRunStatus {
                phase: Some("Running".into()),
                holder: Some(crate::rolloutrun::Holder {
                    identity: format!("epoch-{epoch}"),
                    epoch,
                }),
                ..Default::default()
            };
            let mut v2 = seen.clone();
            status::write(&runs, "fenced", &status(2), 2, &mut v2, &lease_says_deposed)
                .await
                .unwrap();
            let mut v1 = seen.clone();
            let late = status::write(&runs, "fenced", &status(1), 1, &mut v1, &lease_says_deposed).await;
            assert!(matches!(late, Err(status::WriteError::Deposed(2))), "{late:?}");
            let now = runs.get_status("fenced").await.unwrap();
            assert_eq!(now.status.unwrap().holder.unwrap().epoch, 2);
            // A forged holder of epoch 99 in the status, which the Lease does
            // not confirm: the leader of epoch 3 writes over it.
            let mut v3 = seen;
            status::write(&runs, "fenced", &status(99), 99, &mut v3, &lease_says_deposed)
                .await
                .unwrap();
            status::write(&runs, "fenced", &status(3), 3, &mut v3, &lease_says_leading)
                .await
                .unwrap();
            let now = runs.get_status("fenced").await.unwrap();
            assert_eq!(now.status.unwrap().holder.unwrap().epoch, 3);
        });
    }
}
