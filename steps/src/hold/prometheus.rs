//! `prometheus`: a PromQL query against the Prometheus HTTP API at
//! `address`; `${selector}` in the query is filled in per version
//! (`version="v7"` for the canary, `version!="v7"` for stable).

use std::sync::Arc;
use std::time::Duration;

use rollwright_engine::Code;
use rollwright_engine::exec::BoxFuture;
use rollwright_engine::registry::{BuildContext, BuildError, Finding};
use serde_json::Value;

use super::{Analysis, Metric, MetricProvider, Sample, Source};
use crate::cluster::Cluster;

/// A PromQL query against the Prometheus HTTP API.
pub struct Prometheus;

impl MetricProvider for Prometheus {
    fn name(&self) -> &'static str {
        "prometheus"
    }
    fn takes_address(&self) -> bool {
        true
    }
    fn check(&self, m: &Metric, at: &str, out: &mut Vec<Finding>) {
        if m.address.is_none() {
            out.push(Finding::new(
                at,
                Code::InvalidStepConfig,
                format!(
                    "prometheus metric `{}` needs `address` (the Prometheus URL)",
                    m.name
                ),
            ));
        }
    }
    fn source(&self, cx: &BuildContext, _a: &Analysis) -> Result<Arc<dyn Source>, BuildError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| BuildError::Unavailable(format!("cannot make an HTTP client: {e}")))?;
        Ok(Arc::new(PrometheusSource {
            http,
            version: super::version(cx),
            secrets: Cluster::of(cx).ok(),
            base: cx.spec_dir.clone(),
        }))
    }
}

struct PrometheusSource {
    http: reqwest::Client,
    version: String,
    /// Where `secretRef` tokens are read (the target, when there is one).
    secrets: Option<Arc<Cluster>>,
    base: std::path::PathBuf,
}

impl Source for PrometheusSource {
    fn sample<'a>(&'a self, m: &'a Metric, _round: u32) -> BoxFuture<'a, Sample> {
        Box::pin(async move {
            let Some(address) = &m.address else {
                return Sample::default();
            };
            let q = m.query.as_deref().unwrap_or_default();
            let token = match m.token.as_ref().and_then(|t| serde_json::to_value(t).ok()) {
                Some(v) => crate::cluster::resolve_secret(self.secrets.as_deref(), &v, &self.base)
                    .await
                    .ok()
                    .map(|s| s.expose().to_owned()),
                None => None,
            };
            // `{{model.name}}` and the like were filled in when the spec was
            // expanded; `${selector}` is filled in here, once per version.
            let render = |selector: &str| q.replace("${selector}", selector);
            let value = |query: String| {
                let mut req = self
                    .http
                    .get(format!("{}/api/v1/query", address.trim_end_matches('/')))
                    .query(&[("query", query)]);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                async move {
                    let body: Value = req.send().await.ok()?.json().await.ok()?;
                    if body["status"] != "success" {
                        return None;
                    }
                    let r = &body["data"]["result"];
                    let v = match body["data"]["resultType"].as_str() {
                        Some("scalar") => r[1].as_str(),
                        _ => r[0]["value"][1].as_str(),
                    }?;
                    v.parse::<f64>().ok().filter(|v| v.is_finite())
                }
            };
            let canary = value(render(&format!("version=\"{}\"", self.version))).await;
            let stable = if m.max_increase_over_stable.is_some() {
                value(render(&format!("version!=\"{}\"", self.version))).await
            } else {
                None
            };
            Sample {
                canary,
                stable,
                samples: u64::from(canary.is_some()),
            }
        })
    }
}
