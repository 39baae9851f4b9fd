//! `smi`: `spec.backends[].weight` of the TrafficSplit.

use serde_json::{Map, Value};

use super::{Router, TrafficProvider, set_weights, weight_of};

/// SMI TrafficSplit.
pub struct Smi;

fn service_of(b: &Value) -> Option<String> {
    b["service"].as_str().map(str::to_owned)
}

impl TrafficProvider for Smi {
    fn name(&self) -> &'static str {
        "smi"
    }
    fn route_kind(&self) -> (&'static str, &'static str) {
        ("split.smi-spec.io/v1alpha2", "TrafficSplit")
    }
    fn pointers(&self, _r: &Router) -> Vec<String> {
        vec!["/spec/backends".into()]
    }
    fn fields_for(&self, r: &Router, obj: &Value, canary: u8) -> Result<Map<String, Value>, String> {
        let list = set_weights(
            r,
            obj["spec"].get("backends"),
            &service_of,
            "weight",
            "spec.backends",
            canary,
        )?;
        Ok(Map::from_iter([("/spec/backends".to_owned(), list)]))
    }
    fn canary_weight(&self, r: &Router, obj: &Value) -> Option<u64> {
        weight_of(r, &obj["spec"]["backends"], &service_of, "weight")
    }
}
