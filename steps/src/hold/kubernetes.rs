//! `kubernetes`: pod health of the canary (the pods carrying its version
//! label) read from the Kubernetes API: `restarts` (summed over its
//! containers) or `ready` (the share of Ready pods).

use std::sync::Arc;

use rollwright_engine::exec::BoxFuture;
use rollwright_engine::registry::{Access, BuildContext, BuildError};

use super::{Analysis, Metric, MetricProvider, Sample, Source};
use crate::cluster::Cluster;

/// Pod and workload health read from the Kubernetes API.
pub struct Kubernetes;

impl MetricProvider for Kubernetes {
    fn name(&self) -> &'static str {
        "kubernetes"
    }
    fn quantities(&self) -> Option<&'static [&'static str]> {
        Some(&["restarts", "ready"])
    }
    fn access(&self) -> Vec<Access> {
        vec![Access::new("v1", "Pod", None, &["list"])]
    }
    fn source(&self, cx: &BuildContext, _a: &Analysis) -> Result<Arc<dyn Source>, BuildError> {
        Ok(Arc::new(KubernetesSource {
            cluster: Cluster::of(cx)?,
            version: super::version(cx),
        }))
    }
}

struct KubernetesSource {
    cluster: Arc<Cluster>,
    version: String,
}

impl Source for KubernetesSource {
    fn sample<'a>(&'a self, m: &'a Metric, _round: u32) -> BoxFuture<'a, Sample> {
        Box::pin(async move {
            let Ok(pods) = self
                .cluster
                .list("v1", "Pod", &format!("version={}", self.version))
                .await
            else {
                return Sample::default();
            };
            if pods.is_empty() {
                return Sample::default();
            }
            let value = match m.query.as_deref() {
                Some("restarts") => pods
                    .iter()
                    .flat_map(|p| {
                        p["status"]["containerStatuses"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                    })
                    .map(|c| c["restartCount"].as_f64().unwrap_or(0.0))
                    .sum(),
                _ => {
                    let ready = pods.iter().filter(|p| crate::cluster::pod_ready(p)).count();
                    ready as f64 / pods.len() as f64
                }
            };
            Sample {
                canary: Some(value),
                stable: Some(0.0),
                samples: pods.len() as u64,
            }
        })
    }
}
