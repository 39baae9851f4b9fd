//! `/metrics` (OpenMetrics, controller-runtime's metric names for the
//! reconciler), `/healthz` (a reconcile or election heartbeat younger than
//! [`STALE`]), `/readyz` (the replica is up and has reached the API
//! server).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A heartbeat older than this makes `/healthz` fail.
pub const STALE: Duration = Duration::from_secs(60);

type Labels = Vec<(String, String)>;

fn reconcile_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn step_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 20))
}

/// What the controller measures.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    reconcile_errors: Family<Labels, Counter>,
    reconcile_time: Family<Labels, Histogram, fn() -> Histogram>,
    phases: Family<Labels, Gauge>,
    steps: Family<Labels, Histogram, fn() -> Histogram>,
    leader: Gauge,
    runs: Gauge,
}

const CONTROLLER: &str = "rolloutrun";

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let reconciles = Family::<Labels, Counter>::default();
        let reconcile_errors = Family::<Labels, Counter>::default();
        let reconcile_time: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(reconcile_buckets);
        let phases = Family::<Labels, Gauge>::default();
        let steps: Family<Labels, Histogram, fn() -> Histogram> = Family::new_with_constructor(step_buckets);
        let leader = Gauge::default();
        let runs = Gauge::default();
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            reconciles.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            reconcile_errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            reconcile_time.clone(),
        );
        registry.register(
            "rollwright_rolloutruns",
            "RolloutRuns this replica has seen, by phase",
            phases.clone(),
        );
        registry.register(
            "rollwright_step_duration_seconds",
            "Duration of finished steps, by step kind and result",
            steps.clone(),
        );
        registry.register(
            "rollwright_leader",
            "1 while this replica is the leader",
            leader.clone(),
        );
        registry.register(
            "rollwright_active_runs",
            "Runs this replica is executing",
            runs.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_time,
            phases,
            steps,
            leader,
            runs,
        }
    }

    pub fn reconciled(&self, result: &str, seconds: f64) {
        let c = vec![("controller".to_owned(), CONTROLLER.to_owned())];
        let mut with = c.clone();
        with.push(("result".to_owned(), result.to_owned()));
        self.reconciles.get_or_create(&with).inc();
        if result == "error" {
            self.reconcile_errors.get_or_create(&c).inc();
        }
        self.reconcile_time.get_or_create(&c).observe(seconds);
    }

    /// A run moved from phase `from` (if any) to `to`.
    pub fn phase(&self, from: Option<&str>, to: &str) {
        if let Some(f) = from {
            self.phases
                .get_or_create(&vec![("phase".to_owned(), f.to_owned())])
                .dec();
        }
        self.phases
            .get_or_create(&vec![("phase".to_owned(), to.to_owned())])
            .inc();
    }

    pub fn step(&self, kind: &str, result: &str, seconds: f64) {
        self.steps
            .get_or_create(&vec![
                ("kind".to_owned(), kind.to_owned()),
                ("result".to_owned(), result.to_owned()),
            ])
            .observe(seconds);
    }

    pub fn leading(&self, yes: bool) {
        self.leader.set(i64::from(yes));
    }

    pub fn active(&self, n: usize) {
        self.runs.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Liveness and readiness.
#[derive(Default)]
pub struct Health {
    beat_ms: AtomicU64,
    ready: AtomicBool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Health {
    pub fn beat(&self) {
        self.beat_ms.store(now_ms(), Ordering::SeqCst);
    }
    pub fn ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
    fn alive(&self) -> bool {
        now_ms().saturating_sub(self.beat_ms.load(Ordering::SeqCst)) < STALE.as_millis() as u64
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, health: Arc<Health>) {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Shared>| async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.text(),
                )
            }),
        )
        .route(
            "/healthz",
            get(|State(s): State<Shared>| async move {
                if s.health.alive() {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "no heartbeat")
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(s): State<Shared>| async move {
                if s.health.ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .with_state(Shared { metrics, health });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("the metrics and health endpoint stopped: {e}");
    }
}
