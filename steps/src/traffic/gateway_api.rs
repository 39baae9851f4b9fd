//! `gateway-api`: `spec.rules[0].backendRefs[].weight` of the HTTPRoute's
//! `stable`/`canary` Services.

use serde_json::{Map, Value};

use super::{Router, TrafficProvider, set_weights, weight_of};

/// Gateway API HTTPRoute backendRef weights.
pub struct GatewayApi;

fn name_of(b: &Value) -> Option<String> {
    b["name"].as_str().map(str::to_owned)
}

impl TrafficProvider for GatewayApi {
    fn name(&self) -> &'static str {
        "gateway-api"
    }
    fn route_kind(&self) -> (&'static str, &'static str) {
        ("gateway.networking.k8s.io/v1", "HTTPRoute")
    }
    fn pointers(&self, _r: &Router) -> Vec<String> {
        vec!["/spec/rules".into()]
    }
    fn fields_for(&self, r: &Router, obj: &Value, canary: u8) -> Result<Map<String, Value>, String> {
        let mut rules = obj["spec"]["rules"].clone();
        let refs = set_weights(
            r,
            rules.get(0).and_then(|r| r.get("backendRefs")),
            &name_of,
            "weight",
            "spec.rules[0].backendRefs",
            canary,
        )?;
        match rules.get_mut(0) {
            Some(first) => first["backendRefs"] = refs,
            None => return Err(format!("{} has no rules", r.object())),
        }
        Ok(Map::from_iter([("/spec/rules".to_owned(), rules)]))
    }
    fn canary_weight(&self, r: &Router, obj: &Value) -> Option<u64> {
        weight_of(r, &obj["spec"]["rules"][0]["backendRefs"], &name_of, "weight")
    }
}
