//! The HTTP front: authentication, path routing, API faults, content types.

use super::*;

pub fn router(state: Arc<State>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

async fn handle(
    AxState(state): AxState<Arc<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let user = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| state.user_of(t));
    let Some((username, user_groups)) = user else {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized".into());
    };
    let path = uri.path().trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["sim", "identity"] => return reply(StatusCode::OK, json!({"identity": state.identity})),
        ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"] if method == Method::POST => {
            return reply(
                StatusCode::CREATED,
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                       "metadata": {"creationTimestamp": null},
                       "status": {"userInfo": {"username": username, "groups": user_groups}}}),
            );
        }
        ["sim", "faults"] => return state.admin_faults(&method, &body),
        ["sim", "scenario"] => return state.admin_scenario(&method, &body),
        ["sim", "traffic"] => {
            let routes: Vec<crate::routing::Route> = state.models.routes().values().cloned().collect();
            return reply(StatusCode::OK, serde_json::to_value(routes).unwrap_or_default());
        }
        ["version"] => {
            return reply(
                StatusCode::OK,
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-rollwright-sim", "platform": "linux/amd64"}),
            );
        }
        ["api"] => {
            return reply(
                StatusCode::OK,
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            );
        }
        ["apis"] => return reply(StatusCode::OK, groups(&state.kinds())),
        ["api", "v1"] => return reply(StatusCode::OK, resources(&state.kinds(), "", "v1")),
        ["apis", g, v] => {
            let all = state.kinds();
            return if all.iter().any(|k| k.group == *g && k.version == *v) {
                reply(StatusCode::OK, resources(&all, g, v))
            } else {
                status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("the server could not find the requested resource ({path})"),
                )
            };
        }
        _ => {}
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            );
        }
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub, scale) = match rest {
        [plural] => (*plural, None, false, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false, false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true, false),
        [plural @ ("deployments" | "replicasets"), name, "scale"] if group == "apps" => {
            (*plural, Some((*name).to_owned()), false, true)
        }
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            );
        }
    };
    let Some(kind) = state.find_kind(group, version, plural) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
    };
    let t = Target {
        kind,
        namespace,
        name,
        status: sub,
        scale,
    };
    let query = uri.query().unwrap_or("");
    let verb = match (&method, &t.name) {
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) if query_param(query, "watch").is_some_and(|w| w == "1" || w == "true") => {
            "watch"
        }
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
    let watching = query_param(query, "watch").is_some_and(|w| w == "1" || w == "true");
    match method {
        Method::GET if table && !watching => state.table(&t, query),
        Method::GET => match &t.name {
            Some(n) => state.get(&t, n),
            None if query_param(query, "watch").is_some_and(|w| w == "1" || w == "true") => {
                state.watch(t, query)
            }
            None => state.list(&t, query),
        },
        Method::POST | Method::PUT | Method::PATCH
            if !t.status && wrong_kind(t.kind, &body, &headers).is_some() =>
        {
            wrong_kind(t.kind, &body, &headers).unwrap_or_else(store_unavailable)
        }
        Method::POST => match serde_json::from_slice::<Value>(&body) {
            Ok(obj) => state.create(t.kind, t.namespace.as_deref(), obj),
            Err(e) => status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("invalid JSON: {e}"),
            ),
        },
        Method::PUT => match serde_json::from_slice::<Value>(&body) {
            Ok(obj) => state.replace(&t, obj),
            Err(e) => status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("invalid JSON: {e}"),
            ),
        },
        Method::PATCH => {
            let ctype = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            match serde_json::from_slice::<Value>(&body) {
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
                    let manager = query_param(query, "fieldManager").unwrap_or_default();
                    let force = query_param(query, "force").is_some_and(|f| f == "true");
                    if manager.is_empty() {
                        status(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid",
                            "fieldManager is required for apply requests".into(),
                        )
                    } else {
                        state.apply(&t, p, &manager, force)
                    }
                }
                Ok(_) => status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    format!("the sim does not support {ctype} yet"),
                ),
                Err(e) => status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("invalid JSON: {e}"),
                ),
            }
        }
        Method::DELETE => state.delete(&t),
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not allowed"),
        ),
    }
}
