//! The `scale` subresource of Deployments and ReplicaSets.

use super::*;

impl State {
    /// The `scale` subresource of a Deployment or ReplicaSet: read it as an
    /// `autoscaling/v1` Scale, change `spec.replicas` through it.
    pub(super) fn scale(&self, t: &Target, method: &Method, body: &[u8]) -> Response {
        let (name, obj) = match self.current(t) {
            Ok(found) => found,
            Err(r) => return *r,
        };
        let as_scale = |o: &Value| {
            let selector: Vec<String> = o["spec"]["selector"]["matchLabels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {
                    "name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"],
                    "uid": o["metadata"]["uid"], "resourceVersion": o["metadata"]["resourceVersion"],
                    "creationTimestamp": o["metadata"]["creationTimestamp"],
                },
                "spec": {"replicas": o["spec"]["replicas"].as_u64().unwrap_or(1)},
                "status": {"replicas": o["status"]["replicas"].as_u64().unwrap_or(0), "selector": selector.join(",")},
            })
        };
        let mut scale = as_scale(&obj);
        match *method {
            Method::GET => return reply(StatusCode::OK, scale),
            Method::PATCH => match serde_json::from_slice::<Value>(body) {
                Ok(p) if p.is_object() => merge_patch(&mut scale, &p),
                Ok(p) => {
                    if let Err(e) = json_patch(&mut scale, &p) {
                        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e);
                    }
                }
                Err(e) => {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("invalid JSON: {e}"),
                    );
                }
            },
            Method::PUT => match serde_json::from_slice::<Value>(body) {
                Ok(s) => scale = s,
                Err(e) => {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("invalid JSON: {e}"),
                    );
                }
            },
            _ => {
                return status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    format!("{method} is not allowed"),
                );
            }
        }
        let Some(replicas) = scale["spec"]["replicas"].as_u64() else {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "spec.replicas: Required value".into(),
            );
        };
        let target = Target {
            kind: t.kind,
            namespace: t.namespace.clone(),
            name: Some(name),
            status: false,
            scale: false,
        };
        let mut next = obj;
        next["spec"]["replicas"] = json!(replicas);
        let response = self.store_update(&target, next, false);
        if !response.status().is_success() {
            return response;
        }
        match self.current(&target) {
            Ok((_, updated)) => reply(StatusCode::OK, as_scale(&updated)),
            Err(r) => *r,
        }
    }
}
