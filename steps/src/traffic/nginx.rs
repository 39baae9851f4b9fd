//! `nginx`: the `canary` and `canary-weight` annotations of the canary
//! Ingress (`serving.canary`, default `<route>-canary`).

use serde_json::{Map, Value, json};

use super::{Router, TrafficProvider};

const CANARY: &str = "nginx.ingress.kubernetes.io/canary";
const WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";

/// NGINX ingress canary annotations.
pub struct Nginx;

impl TrafficProvider for Nginx {
    fn name(&self) -> &'static str {
        "nginx"
    }
    fn route_kind(&self) -> (&'static str, &'static str) {
        ("networking.k8s.io/v1", "Ingress")
    }
    fn object_name<'r>(&self, r: &'r Router) -> &'r str {
        &r.canary
    }
    fn pointers(&self, _r: &Router) -> Vec<String> {
        [CANARY, WEIGHT]
            .iter()
            .map(|a| {
                format!(
                    "/metadata/annotations/{}",
                    rollwright_engine::yaml::escape_segment(a)
                )
            })
            .collect()
    }
    fn fields_for(&self, r: &Router, _obj: &Value, canary: u8) -> Result<Map<String, Value>, String> {
        let ptrs = self.pointers(r);
        Ok(Map::from_iter([
            (ptrs[0].clone(), json!("true")),
            (ptrs[1].clone(), json!(canary.to_string())),
        ]))
    }
    fn canary_weight(&self, _r: &Router, obj: &Value) -> Option<u64> {
        obj["metadata"]["annotations"][WEIGHT]
            .as_str()
            .and_then(|w| w.parse().ok())
    }
}
