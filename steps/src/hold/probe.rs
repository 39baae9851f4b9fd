//! `probe`: synthetic requests rollwright sends itself, to the canary and
//! to stable (`serving.endpoint`), once per evaluation for all probe
//! metrics: `error-rate`, `latency-p50|p90|p99`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollwright_engine::exec::BoxFuture;
use rollwright_engine::registry::{BuildContext, BuildError, Finding};

use super::{Analysis, Metric, MetricProvider, ProbeConfig, Sample, Source};
use crate::common::dur;
use crate::inference::{Endpoint, Probe, Track};

/// Synthetic requests sent by rollwright itself.
pub struct Probes;

impl MetricProvider for Probes {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn quantities(&self) -> Option<&'static [&'static str]> {
        Some(&["error-rate", "latency-p50", "latency-p90", "latency-p99"])
    }
    fn check_rendered(&self, cx: &BuildContext) -> Option<Finding> {
        crate::inference::missing(cx).map(|f| f.with_help("the `probe` metrics send requests to it"))
    }
    /// One request in two failing: a stable version worse than that is no
    /// baseline.
    fn baseline_ceiling(&self, query: &str) -> Option<f64> {
        (query == "error-rate").then_some(0.5)
    }
    fn source(&self, cx: &BuildContext, a: &Analysis) -> Result<Arc<dyn Source>, BuildError> {
        Ok(Arc::new(ProbeSource {
            endpoint: Endpoint::of(cx)?,
            config: a.probe.clone(),
            last: Mutex::default(),
        }))
    }
}

struct ProbeSource {
    endpoint: Endpoint,
    config: Option<ProbeConfig>,
    /// The round last probed and what it measured, shared by its metrics.
    last: Mutex<Option<Round>>,
}

/// An evaluation's number and its probes of the canary and of stable.
type Round = (u32, Arc<(Probe, Probe)>);

impl ProbeSource {
    async fn probe(&self) -> (Probe, Probe) {
        let p = self.config.as_ref();
        let protocol = p
            .and_then(|p| p.protocol)
            .unwrap_or(crate::verify_inference::Protocol::KserveV1);
        let Ok((url, body)) = self.endpoint.request(
            protocol,
            p.and_then(|p| p.path.as_deref()),
            p.and_then(|p| p.request.as_ref()),
        ) else {
            // Refused when the step was built (`check`); nothing is sent.
            return Default::default();
        };
        let n = p.and_then(|p| p.requests).unwrap_or(20);
        let timeout = p
            .and_then(|p| p.timeout.as_deref())
            .map_or(Duration::from_secs(5), dur);
        let canary = self.endpoint.probe(Track::Canary, &url, &body, n, timeout);
        let stable = self.endpoint.probe(Track::Stable, &url, &body, n, timeout);
        tokio::join!(canary, stable)
    }
}

impl Source for ProbeSource {
    fn sample<'a>(&'a self, m: &'a Metric, round: u32) -> BoxFuture<'a, Sample> {
        Box::pin(async move {
            let cached = self
                .last
                .lock()
                .ok()
                .and_then(|l| l.as_ref().filter(|(r, _)| *r == round).map(|(_, p)| p.clone()));
            let probes = match cached {
                Some(p) => p,
                None => {
                    let p = Arc::new(self.probe().await);
                    if let Ok(mut l) = self.last.lock() {
                        *l = Some((round, p.clone()));
                    }
                    p
                }
            };
            let q = m.query.as_deref().unwrap_or_default();
            let (c, st) = &*probes;
            Sample {
                canary: c.quantity(q),
                stable: if m.max_increase_over_stable.is_some() {
                    st.quantity(q)
                } else {
                    None
                },
                samples: c.answered(),
            }
        })
    }
}
