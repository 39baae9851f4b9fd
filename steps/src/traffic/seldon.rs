//! `seldon`: `spec.predictors[].traffic` of the SeldonDeployment's `stable`
//! (default `main`) and `canary` predictors.

use rollwright_engine::exec::{BoxFuture, StepError};
use rollwright_engine::registry::Access;
use serde_json::{Map, Value};

use super::{Router, TrafficProvider, set_weights, weight_of};
use crate::cluster::{Cluster, ObjRef};

/// Seldon predictor traffic.
pub struct Seldon;

fn name_of(p: &Value) -> Option<String> {
    p["name"].as_str().map(str::to_owned)
}

impl TrafficProvider for Seldon {
    fn name(&self) -> &'static str {
        "seldon"
    }
    fn route_kind(&self) -> (&'static str, &'static str) {
        ("machinelearning.seldon.io/v1", "SeldonDeployment")
    }
    fn platform(&self) -> Option<&'static str> {
        Some("seldon")
    }
    fn default_backends(&self, _route: &str) -> (String, String) {
        ("main".into(), "canary".into())
    }
    fn pointers(&self, _r: &Router) -> Vec<String> {
        vec!["/spec/predictors".into()]
    }
    fn fields_for(&self, r: &Router, obj: &Value, canary: u8) -> Result<Map<String, Value>, String> {
        let list = set_weights(
            r,
            obj["spec"].get("predictors"),
            &name_of,
            "traffic",
            "spec.predictors",
            canary,
        )?;
        Ok(Map::from_iter([("/spec/predictors".to_owned(), list)]))
    }
    fn canary_weight(&self, r: &Router, obj: &Value) -> Option<u64> {
        weight_of(r, &obj["spec"]["predictors"], &name_of, "traffic")
    }
    fn readiness_access(&self, r: &Router) -> Vec<Access> {
        let d = format!("{}-{}", r.route, r.canary);
        vec![Access::new("apps/v1", "Deployment", Some(&d), &["get"])]
    }
    /// The canary predictor's Deployment has a Ready replica.
    fn canary_ready<'a>(
        &'a self,
        r: &'a Router,
        cluster: &'a Cluster,
        _route: &'a Value,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            let d = ObjRef::new(
                "apps/v1",
                "Deployment",
                &r.namespace,
                &format!("{}-{}", r.route, r.canary),
            );
            let ready = cluster
                .get(&d)
                .await?
                .and_then(|d| d["status"]["readyReplicas"].as_u64())
                .unwrap_or(0);
            if ready > 0 {
                Ok(())
            } else {
                Err(super::not_ready(format!("{d} has no Ready replica")))
            }
        })
    }
}
