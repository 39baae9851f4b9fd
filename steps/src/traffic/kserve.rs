//! `kserve`: the InferenceService's own `canaryTrafficPercent`; KServe
//! splits between the previous and the latest revision.

use rollwright_engine::exec::{BoxFuture, StepError};
use rollwright_engine::registry::Access;
use serde_json::{Map, Value, json};

use super::{Router, TrafficProvider};
use crate::cluster::Cluster;

const PERCENT: &str = "/spec/predictor/canaryTrafficPercent";

/// KServe canaryTrafficPercent.
pub struct Kserve;

impl TrafficProvider for Kserve {
    fn name(&self) -> &'static str {
        "kserve"
    }
    fn route_kind(&self) -> (&'static str, &'static str) {
        ("serving.kserve.io/v1beta1", "InferenceService")
    }
    fn platform(&self) -> Option<&'static str> {
        Some("kserve")
    }
    fn default_backends(&self, _route: &str) -> (String, String) {
        ("prev".into(), "latest".into())
    }
    fn pointers(&self, _r: &Router) -> Vec<String> {
        vec![PERCENT.into()]
    }
    fn fields_for(&self, _r: &Router, _obj: &Value, canary: u8) -> Result<Map<String, Value>, String> {
        Ok(Map::from_iter([(PERCENT.to_owned(), json!(canary))]))
    }
    fn canary_weight(&self, _r: &Router, obj: &Value) -> Option<u64> {
        obj.pointer(PERCENT).and_then(Value::as_u64)
    }
    /// What KServe serves, from the status: observed generation current,
    /// the latest revision at `canary` %, all of it adding up to 100.
    fn not_served(&self, _r: &Router, obj: &Value, canary: u8) -> Option<String> {
        let status = &obj["status"];
        if status["observedGeneration"] != obj["metadata"]["generation"] {
            return Some("the InferenceService has not observed the change yet".into());
        }
        let p = &status["components"]["predictor"];
        let latest = p["latestCreatedRevision"].as_str();
        let traffic = p["traffic"].as_array().cloned().unwrap_or_default();
        let total: u64 = traffic.iter().filter_map(|t| t["percent"].as_u64()).sum();
        let to_latest: u64 = traffic
            .iter()
            .filter(|t| t["revisionName"].as_str() == latest)
            .filter_map(|t| t["percent"].as_u64())
            .sum();
        (total != 100 || to_latest != u64::from(canary)).then(|| {
            format!(
                "KServe serves {to_latest} % to revision {} (want {canary} %)",
                latest.unwrap_or("(none)")
            )
        })
    }
    fn readiness_access(&self, _r: &Router) -> Vec<Access> {
        Vec::new()
    }
    /// The latest revision Ready.
    fn canary_ready<'a>(
        &'a self,
        r: &'a Router,
        _cluster: &'a Cluster,
        route: &'a Value,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            let p = &route["status"]["components"]["predictor"];
            let latest = p["latestCreatedRevision"].as_str();
            if latest.is_some() && latest == p["latestReadyRevision"].as_str() {
                Ok(())
            } else {
                Err(super::not_ready(format!(
                    "InferenceService {} revision {} is not Ready",
                    r.route,
                    latest.unwrap_or("(none yet)")
                )))
            }
        })
    }
}
