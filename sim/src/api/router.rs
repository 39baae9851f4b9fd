//! The HTTP front: a route per API path shape (axum), authentication as a
//! layer, typed query parameters, API faults and content types.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Path, Query, Request};
use axum::middleware::{self, Next};
use axum::routing::{any, get, post};

use super::*;

/// Who a request authenticated as.
#[derive(Clone)]
struct User {
    name: String,
    groups: Vec<String>,
}

/// The query parameters the API understands (others are ignored, as
/// kube-apiserver ignores unknown ones).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ApiQuery {
    /// `1`/`true`: a watch instead of a list.
    pub(super) watch: Option<String>,
    pub(super) label_selector: Option<String>,
    pub(super) resource_version: Option<String>,
    pub(super) timeout_seconds: Option<String>,
    pub(super) field_manager: Option<String>,
    pub(super) force: Option<String>,
    /// `Object`: a Table's rows carry the full object.
    pub(super) include_object: Option<String>,
}

impl ApiQuery {
    fn watching(&self) -> bool {
        matches!(self.watch.as_deref(), Some("1" | "true"))
    }
}

/// The routing object of every request: the paths kube-apiserver serves
/// for the kinds the sim knows, discovery, and the sim's own admin paths.
pub fn router(state: Arc<State>) -> Router {
    // Every resource path shape, core (`/api/v1`) and grouped (`/apis/G/V`),
    // cluster-scoped or namespaced, an object, a collection or a subresource.
    let mut r = Router::new()
        .route("/sim/identity", get(identity))
        .route("/sim/faults", any(faults))
        .route("/sim/scenario", any(scenario))
        .route("/sim/traffic", get(traffic))
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route("/apis", get(api_groups))
        .route("/api/v1", get(core_resources))
        .route("/apis/{group}/{version}", get(group_resources))
        .route(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            post(self_subject_review),
        );
    for prefix in ["/api/{version}", "/apis/{group}/{version}"] {
        for scope in ["", "/namespaces/{namespace}"] {
            for rest in ["/{plural}", "/{plural}/{name}", "/{plural}/{name}/{sub}"] {
                r = r.route(&format!("{prefix}{scope}{rest}"), any(resource));
            }
        }
    }
    r.fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

/// Bearer tokens of the sim's users; anything else is 401.
async fn authenticate(AxState(state): AxState<Arc<State>>, mut req: Request, next: Next) -> Response {
    let user = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| state.user_of(t));
    let Some((name, groups)) = user else {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized".into());
    };
    req.extensions_mut().insert(User { name, groups });
    next.run(req).await
}

async fn not_found(uri: Uri) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "the server could not find the requested resource ({})",
            uri.path()
        ),
    )
}

async fn identity(AxState(state): AxState<Arc<State>>) -> Response {
    reply(StatusCode::OK, json!({"identity": state.identity}))
}

async fn faults(AxState(state): AxState<Arc<State>>, method: Method, body: Bytes) -> Response {
    state.admin_faults(&method, &body)
}

async fn scenario(AxState(state): AxState<Arc<State>>, method: Method, body: Bytes) -> Response {
    state.admin_scenario(&method, &body)
}

async fn traffic(AxState(state): AxState<Arc<State>>) -> Response {
    let routes: Vec<crate::routing::Route> = state.models.routes().values().cloned().collect();
    reply(StatusCode::OK, serde_json::to_value(routes).unwrap_or_default())
}

async fn version() -> Response {
    reply(
        StatusCode::OK,
        json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-rollwright-sim", "platform": "linux/amd64"}),
    )
}

async fn api_versions() -> Response {
    reply(
        StatusCode::OK,
        json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
    )
}

async fn api_groups(AxState(state): AxState<Arc<State>>) -> Response {
    reply(StatusCode::OK, groups(&state.kinds()))
}

async fn core_resources(AxState(state): AxState<Arc<State>>) -> Response {
    reply(StatusCode::OK, resources(&state.kinds(), "", "v1"))
}

async fn group_resources(
    AxState(state): AxState<Arc<State>>,
    Path((group, version)): Path<(String, String)>,
    uri: Uri,
) -> Response {
    let all = state.kinds();
    if all.iter().any(|k| k.group == group && k.version == version) {
        reply(StatusCode::OK, resources(&all, &group, &version))
    } else {
        not_found(uri).await
    }
}

async fn self_subject_review(Extension(user): Extension<User>) -> Response {
    reply(
        StatusCode::CREATED,
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
               "metadata": {"creationTimestamp": null},
               "status": {"userInfo": {"username": user.name, "groups": user.groups}}}),
    )
}

/// A request for an object, a collection or a subresource.
async fn resource(
    AxState(state): AxState<Arc<State>>,
    method: Method,
    uri: Uri,
    Path(p): Path<HashMap<String, String>>,
    Query(q): Query<ApiQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let group = p.get("group").map_or("", String::as_str);
    let (version, plural) = (p["version"].as_str(), p["plural"].as_str());
    let (status_sub, scale) = match p.get("sub").map(String::as_str) {
        None => (false, false),
        Some("status") => (true, false),
        Some("scale") if group == "apps" && matches!(plural, "deployments" | "replicasets") => (false, true),
        Some(_) => return not_found(uri).await,
    };
    let Some(kind) = state.find_kind(group, version, plural) else {
        return not_found(uri).await;
    };
    let t = Target {
        kind,
        namespace: p.get("namespace").cloned(),
        name: p.get("name").cloned(),
        status: status_sub,
        scale,
    };
    let verb = match (&method, &t.name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) if q.watching() => "watch",
        (&Method::GET, None) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, _) => "delete",
        _ => "other",
    };
    let (delay, failure) = state.api_fault(verb, t.kind.plural);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = failure {
        return injected(code, verb, t.kind.plural);
    }
    // Only JSON bodies: protobuf or CBOR clients are told so (clients fall back to JSON).
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if matches!(method, Method::POST | Method::PUT | Method::PATCH)
        && !ctype.contains("json")
        && !ctype.contains("yaml")
    {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the sim speaks JSON, not {ctype}"),
        );
    }
    if t.scale {
        return state.scale(&t, &method, &body);
    }
    let table =
        crate::table::wanted(headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("")) && !t.status;
    let bad_json = |e: serde_json::Error| {
        status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("invalid JSON: {e}"),
        )
    };
    match method {
        Method::GET if table && !q.watching() => state.table(&t, &q),
        Method::GET => match &t.name {
            Some(n) => state.get(&t, n),
            None if q.watching() => state.watch(t, &q),
            None => state.list(&t, &q),
        },
        Method::POST | Method::PUT | Method::PATCH
            if !t.status && wrong_kind(t.kind, &body, &headers).is_some() =>
        {
            wrong_kind(t.kind, &body, &headers).unwrap_or_else(store_unavailable)
        }
        Method::POST => match serde_json::from_slice::<Value>(&body) {
            Ok(obj) => state.create(t.kind, t.namespace.as_deref(), obj),
            Err(e) => bad_json(e),
        },
        Method::PUT => match serde_json::from_slice::<Value>(&body) {
            Ok(obj) => state.replace(&t, obj),
            Err(e) => bad_json(e),
        },
        Method::PATCH => match serde_json::from_slice::<Value>(&body) {
            // Strategic merge is treated as a merge patch for the built-in kinds.
            Ok(p)
                if ctype.starts_with("application/merge-patch+json")
                    || ctype.starts_with("application/strategic-merge-patch+json") =>
            {
                state.patch(&t, |obj| {
                    merge_patch(obj, &p);
                    Ok(())
                })
            }
            Ok(p) if ctype.starts_with("application/json-patch+json") => {
                state.patch(&t, |obj| json_patch(obj, &p))
            }
            Ok(p) if ctype.starts_with("application/apply-patch+yaml") => {
                let manager = q.field_manager.as_deref().unwrap_or_default();
                let force = q.force.as_deref() == Some("true");
                if manager.is_empty() {
                    status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "fieldManager is required for apply requests".into(),
                    )
                } else {
                    state.apply(&t, p, manager, force)
                }
            }
            Ok(_) => status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("the sim does not support {ctype} yet"),
            ),
            Err(e) => bad_json(e),
        },
        Method::DELETE => state.delete(&t),
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not allowed"),
        ),
    }
}
