//! `istio`: `spec.http[0].route[].weight` of the VirtualService's
//! `stable`/`canary` destinations (a subset, or a host). The only provider
//! that mirrors: a shift ends any mirroring.

use rollwright_engine::exec::{BoxFuture, StepError};
use rollwright_engine::registry::Access;
use serde_json::{Map, Value, json};

use super::{Router, TrafficProvider, set_weights, weight_of};
use crate::cluster::Cluster;

/// Istio VirtualService weights.
pub struct Istio;

/// The first label of a destination's host (`fraud.ml.svc` → `fraud`).
fn host_of(d: &Value) -> Option<&str> {
    d["destination"]["host"]
        .as_str()
        .and_then(|h| h.split('.').next())
}

impl TrafficProvider for Istio {
    fn name(&self) -> &'static str {
        "istio"
    }
    fn route_kind(&self) -> (&'static str, &'static str) {
        ("networking.istio.io/v1beta1", "VirtualService")
    }
    fn default_backends(&self, _route: &str) -> (String, String) {
        ("stable".into(), "canary".into())
    }
    fn mirrors(&self) -> bool {
        true
    }
    /// `mirror` (the canary's destination) and `mirrorPercentage` on the
    /// first http route.
    fn mirror(&self, r: &Router, fields: &mut Map<String, Value>, percent: u8) {
        let Some(Value::Array(http)) = fields.get_mut("/spec/http") else {
            return;
        };
        let Some(first) = http.first_mut() else {
            return;
        };
        let dest = first["route"]
            .as_array()
            .and_then(|rs| {
                rs.iter()
                    .find(|d| d["destination"]["subset"].as_str() == Some(&r.canary))
            })
            .map(|d| d["destination"].clone());
        if let Some(dest) = dest {
            first["mirror"] = dest;
            first["mirrorPercentage"] = json!({"value": percent});
        }
    }
    fn pointers(&self, _r: &Router) -> Vec<String> {
        vec!["/spec/http".into()]
    }
    fn fields_for(&self, r: &Router, obj: &Value, canary: u8) -> Result<Map<String, Value>, String> {
        let mut http = obj["spec"]["http"].clone();
        let key = |d: &Value| {
            d["destination"]["subset"]
                .as_str()
                .filter(|s| *s == r.canary || *s == r.stable)
                .or_else(|| host_of(d))
                .map(str::to_owned)
        };
        let route = set_weights(
            r,
            http.get(0).and_then(|h| h.get("route")),
            &key,
            "weight",
            "spec.http[0].route",
            canary,
        )?;
        match http.get_mut(0) {
            Some(first) => {
                first["route"] = route;
                // A shift ends any mirroring (a shadow phase sets it again
                // explicitly): nothing is mirrored behind a ramp.
                if let Some(m) = first.as_object_mut() {
                    m.remove("mirror");
                    m.remove("mirrorPercentage");
                }
            }
            None => return Err(format!("{} has no http route", r.object())),
        }
        Ok(Map::from_iter([("/spec/http".to_owned(), http)]))
    }
    fn canary_weight(&self, r: &Router, obj: &Value) -> Option<u64> {
        let key = |d: &Value| {
            d["destination"]["subset"]
                .as_str()
                .or_else(|| host_of(d))
                .map(str::to_owned)
        };
        weight_of(r, &obj["spec"]["http"][0]["route"], &key, "weight")
    }
    fn selection_access(&self, _r: &Router, _backend: &str) -> Vec<Access> {
        vec![Access::new(
            "networking.istio.io/v1beta1",
            "DestinationRule",
            None,
            &["list"],
        )]
    }
    fn readiness_access(&self, r: &Router) -> Vec<Access> {
        let mut out = self.selection_access(r, &r.canary);
        // The Service is the route's host, read at run time.
        out.push(Access::new("v1", "Service", None, &["get"]));
        out.push(Access::new("v1", "Pod", None, &["list"]));
        out
    }
    /// The destination named `backend` (a subset, or a host): its Service
    /// (the host) and, for a subset, the DestinationRule's labels for it.
    fn backend<'a>(
        &'a self,
        _r: &'a Router,
        cluster: &'a Cluster,
        route: &'a Value,
        backend: &'a str,
    ) -> BoxFuture<'a, Result<(String, Value), StepError>> {
        Box::pin(async move {
            let dest = route["spec"]["http"][0]["route"]
                .as_array()
                .and_then(|r| {
                    r.iter().find(|d| {
                        d["destination"]["subset"].as_str() == Some(backend) || host_of(d) == Some(backend)
                    })
                })
                .map(|d| d["destination"].clone())
                .unwrap_or(Value::Null);
            let host = dest["host"]
                .as_str()
                .and_then(|h| h.split('.').next())
                .unwrap_or(backend)
                .to_owned();
            let Some(subset) = dest["subset"].as_str() else {
                return Ok((host, Value::Null));
            };
            let rules = cluster
                .list("networking.istio.io/v1beta1", "DestinationRule", "")
                .await?;
            let labels = rules
                .iter()
                .filter(|r| r["spec"]["host"].as_str().and_then(|h| h.split('.').next()) == Some(host.as_str()))
                .find_map(|r| {
                    r["spec"]["subsets"]
                        .as_array()?
                        .iter()
                        .find(|s| s["name"].as_str() == Some(subset))
                        .map(|s| s["labels"].clone())
                })
                .ok_or_else(|| {
                    StepError::rejected(format!(
                        "refusing to route traffic: no DestinationRule for host {host} defines subset {subset}"
                    ))
                })?;
            Ok((host, labels))
        })
    }
}
