//! The REST surface: one handler that parses Kubernetes paths.

use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use rand::{Rng, SeedableRng, rngs::SmallRng};

use crate::kinds::{self, KINDS, Kind};
use crate::models::Models;
use crate::scenario::{ApiFault, Scenario, TimeScale};
use crate::store::{Change, HISTORY, Key, Store, fields_v1, leaves, merge_patch, remove_at, set_at};

pub struct State {
    token: String,
    /// Random per sim: what `/sim/identity` answers, so a run can prove
    /// that its API server is this sim and not a real cluster.
    pub identity: String,
    /// Further users: token → (username, groups). The admin token is `token`.
    users: Mutex<std::collections::HashMap<String, (String, Vec<String>)>>,
    faults: Mutex<Vec<crate::faults::PodFault>>,
    api_faults: Mutex<Vec<ApiFault>>,
    store: Mutex<Store>,
    changes: tokio::sync::broadcast::Sender<Change>,
    /// Kinds defined by CustomResourceDefinitions (leaked: a handful per sim).
    crds: RwLock<Vec<&'static Kind>>,
    rng: Mutex<SmallRng>,
    /// The time scale and the pod startup delay (real time).
    pub scale: TimeScale,
    pub startup: std::time::Duration,
    /// The model servers.
    pub models: Arc<Models>,
    scenario: Mutex<Scenario>,
    /// The scenario's git repositories, by name.
    repos: RwLock<std::collections::HashMap<String, std::path::PathBuf>>,
}

impl State {
    pub fn new(token: String, scenario: Scenario) -> Self {
        let seed = scenario.seed.unwrap_or(0x5EED);
        let state = State {
            identity: crate::random_hex(),
            users: Mutex::default(),
            token,
            faults: Mutex::new(scenario.pods.clone()),
            api_faults: Mutex::new(scenario.api.clone()),
            store: Mutex::default(),
            changes: tokio::sync::broadcast::channel(HISTORY).0,
            crds: RwLock::default(),
            rng: Mutex::new(SmallRng::seed_from_u64(seed ^ 0xA11)),
            scale: scenario.time_scale,
            startup: scenario.startup_real(),
            models: Arc::new(Models::new(
                scenario.time_scale,
                seed,
                scenario.models.clone(),
                scenario.traffic.rate,
            )),
            scenario: Mutex::new(scenario),
            repos: RwLock::default(),
        };
        // The namespaces a fresh cluster has.
        for ns in ["default", "kube-system"] {
            let _ = state.create(
                kinds::find("", "v1", "namespaces").unwrap_or(&KINDS[0]),
                None,
                json!({"metadata": {"name": ns}}),
            );
        }
        state
    }

    /// A token for `user` (made once; the same token on every call).
    pub fn user_token(&self, user: &str, groups: &[&str]) -> String {
        let Ok(mut users) = self.users.lock() else {
            return String::new();
        };
        if let Some((t, _)) = users.iter().find(|(_, (u, _))| u == user) {
            return t.clone();
        }
        let token = format!("sim-user-{}", crate::random_hex());
        let mut g: Vec<String> = groups.iter().map(|s| (*s).to_owned()).collect();
        g.push("system:authenticated".into());
        users.insert(token.clone(), (user.to_owned(), g));
        token
    }

    /// Who a bearer token is (`None`: nobody).
    fn user_of(&self, token: &str) -> Option<(String, Vec<String>)> {
        if token == self.token {
            return Some((
                "sim-admin".into(),
                vec!["system:masters".into(), "system:authenticated".into()],
            ));
        }
        self.users.lock().ok()?.get(token).cloned()
    }

    /// Creates the scenario's objects (Namespaces and CRDs first).
    ///
    /// # Errors
    /// Which object could not be created, and why.
    pub fn seed(&self, objects: &[Value]) -> Result<(), String> {
        let mut order: Vec<(usize, &Value)> = objects.iter().enumerate().collect();
        order.sort_by_key(|(_, o)| match o["kind"].as_str() {
            Some("Namespace") => 0,
            Some("CustomResourceDefinition") => 1,
            _ => 2,
        });
        for (i, obj) in order {
            let what = format!(
                "objects[{i}] ({} {:?})",
                obj["kind"].as_str().unwrap_or("?"),
                obj["metadata"]["name"].as_str().unwrap_or("?")
            );
            let kind = self.kind_of(obj).ok_or_else(|| {
                format!(
                    "{what}: the sim does not serve {}/{}",
                    obj["apiVersion"].as_str().unwrap_or("?"),
                    obj["kind"].as_str().unwrap_or("?")
                )
            })?;
            let r = self.create(kind, obj["metadata"]["namespace"].as_str(), obj.clone());
            if !r.status().is_success() {
                return Err(format!("{what}: {}", r.status()));
            }
        }
        Ok(())
    }

    /// Registers the scenario's repositories (`sim://NAME`).
    pub fn set_repositories(&self, repos: std::collections::HashMap<String, std::path::PathBuf>) {
        if let Ok(mut r) = self.repos.write() {
            *r = repos;
        }
    }

    /// The path of the repository `sim://name`.
    pub fn repository(&self, name: &str) -> Option<std::path::PathBuf> {
        self.repos.read().ok()?.get(name).cloned()
    }

    /// Every repository, by name.
    pub fn repositories(&self) -> Vec<(String, std::path::PathBuf)> {
        let mut all: Vec<_> = self
            .repos
            .read()
            .map(|r| r.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        all.sort();
        all
    }

    /// Every kind served now: the built-in ones and those CRDs define.
    pub fn kinds(&self) -> Vec<&'static Kind> {
        let mut all: Vec<&'static Kind> = KINDS.iter().collect();
        if let Ok(c) = self.crds.read() {
            all.extend(c.iter().copied());
        }
        all
    }

    fn find_kind(&self, group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
        kinds::find(group, version, plural).or_else(|| {
            self.crds
                .read()
                .ok()?
                .iter()
                .copied()
                .find(|k| k.group == group && k.version == version && k.plural == plural)
        })
    }

    /// The kind of an object, from its apiVersion and kind.
    pub fn kind_of(&self, obj: &Value) -> Option<&'static Kind> {
        let (av, kind) = (obj["apiVersion"].as_str()?, obj["kind"].as_str()?);
        self.kinds()
            .into_iter()
            .find(|k| kinds::api_version(k) == av && k.kind == kind)
    }

    /// Serves the kind a CustomResourceDefinition defines.
    fn register_crd(&self, crd: &Value) {
        let spec = &crd["spec"];
        let (Some(group), Some(plural), Some(kind)) = (
            spec["group"].as_str(),
            spec["names"]["plural"].as_str(),
            spec["names"]["kind"].as_str(),
        ) else {
            return;
        };
        let versions: Vec<&str> = spec["versions"]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .filter(|v| v["served"] != Value::Bool(false))
                    .filter_map(|v| v["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let Ok(mut crds) = self.crds.write() else { return };
        for version in versions {
            if kinds::find(group, version, plural).is_some()
                || crds
                    .iter()
                    .any(|k| k.group == group && k.version == version && k.plural == plural)
            {
                continue;
            }
            let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
            let short: Vec<&'static str> = spec["names"]["shortNames"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).map(leak).collect())
                .unwrap_or_default();
            crds.push(Box::leak(Box::new(Kind {
                group: leak(group),
                version: leak(version),
                kind: leak(kind),
                plural: leak(plural),
                namespaced: spec["scope"].as_str() != Some("Cluster"),
                short: Box::leak(short.into_boxed_slice()),
            })));
        }
    }

    /// Reads the store (controllers).
    pub fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> Option<R> {
        self.store.lock().ok().map(|s| f(&s))
    }

    /// The delay and failure an API request meets, per the API faults.
    fn api_fault(&self, verb: &str, resource: &str) -> (std::time::Duration, Option<u16>) {
        let Ok(faults) = self.api_faults.lock() else {
            return (std::time::Duration::ZERO, None);
        };
        let mut delay = std::time::Duration::ZERO;
        let mut fail = None;
        for f in faults.iter().filter(|f| f.matches(verb, resource)) {
            delay += f.latency.map_or(std::time::Duration::ZERO, |d| d.0);
            if fail.is_none() && f.error_rate.0 > 0.0 {
                let hit = self
                    .rng
                    .lock()
                    .is_ok_and(|mut r| r.random::<f64>() < f.error_rate.0);
                if hit {
                    fail = Some(f.code);
                }
            }
        }
        (delay, fail)
    }
}

pub fn router(state: Arc<State>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

fn reply(code: StatusCode, body: Value) -> Response {
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

/// A Kubernetes `Status` error.
fn status(code: StatusCode, reason: &str, message: String) -> Response {
    reply(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// An API fault the scenario injects, shaped as the API server's own.
fn injected(code: u16, verb: &str, plural: &str) -> Response {
    match code {
        429 => {
            let mut r = status(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                format!("too many requests (sim fault on {verb} {plural}), please try again later"),
            );
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            r
        }
        409 => status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {plural}: the object has been modified; please apply your changes to the latest version and try again (sim fault on {verb})"
            ),
        ),
        503 => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("the server is currently unable to handle the request (sim fault on {verb} {plural})"),
        ),
        _ => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("Internal error occurred: sim fault on {verb} {plural}"),
        ),
    }
}

/// A `422 Invalid` with one cause, as the API server reports field errors.
fn invalid(kind: &Kind, name: &str, field: &str, reason: &str, message: &str) -> Response {
    reply(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{} \"{name}\" is invalid: {field}: {message}", kind.kind),
               "reason": "Invalid", "code": 422,
               "details": {"name": name, "kind": kind.plural, "causes": [{"reason": reason, "message": message, "field": field}]}}),
    )
}

/// A DNS-1123 subdomain: what most object names must be.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A body whose `kind`/`apiVersion` is not the resource of the URL (a
/// Secret POSTed to `/configmaps`): the API server refuses it with a 400.
/// Patches other than server-side apply carry no kind and pass.
fn wrong_kind(kind: &Kind, body: &[u8], headers: &HeaderMap) -> Option<Response> {
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype.contains("patch") && !ctype.starts_with("application/apply-patch") {
        return None;
    }
    let obj: Value = serde_json::from_slice(body).ok()?;
    let want_api = if kind.group.is_empty() {
        kind.version.to_owned()
    } else {
        format!("{}/{}", kind.group, kind.version)
    };
    let got_kind = obj["kind"].as_str();
    let got_api = obj["apiVersion"].as_str();
    let bad = got_kind.is_some_and(|k| k != kind.kind) || got_api.is_some_and(|a| a != want_api);
    bad.then(|| {
        status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "the object provided is unrecognized (must be of type {}): {} {}",
                kind.kind,
                got_api.unwrap_or(""),
                got_kind.unwrap_or("")
            ),
        )
    })
}

/// A request on a collection that needs an object name.
fn name_required() -> Response {
    status(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "a name is required".into(),
    )
}

/// The store's lock was poisoned by a panic elsewhere.
fn store_unavailable() -> Response {
    status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "store".into())
}

/// Where a request points.
struct Target {
    kind: &'static Kind,
    namespace: Option<String>,
    name: Option<String>,
    /// The `status` subresource.
    status: bool,
    /// The `scale` subresource (Deployments, ReplicaSets).
    scale: bool,
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

/// RFC 6902 JSON patch: add, remove, replace, test (and copy/move).
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch is a list of operations")?;
    for op in ops {
        let kind = op["op"].as_str().ok_or("an operation needs `op`")?;
        let path = op["path"].as_str().ok_or("an operation needs `path`")?;
        match kind {
            "add" => add(target, path, op["value"].clone())?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                let slot = target
                    .pointer_mut(path)
                    .ok_or_else(|| format!("no value at `{path}`"))?;
                *slot = op["value"].clone();
            }
            "test" => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test failed at `{path}`"));
                }
            }
            "copy" | "move" => {
                let from = op["from"].as_str().ok_or("copy and move need `from`")?;
                let v = if kind == "move" {
                    remove(target, from)?
                } else {
                    target
                        .pointer(from)
                        .cloned()
                        .ok_or_else(|| format!("no value at `{from}`"))?
                };
                add(target, path, v)?;
            }
            other => return Err(format!("unknown operation `{other}`")),
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("`{path}` is not a JSON pointer"))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>().map_err(|_| format!("bad index `{last}`"))?
            };
            if i > a.len() {
                return Err(format!("index {i} is past the end of `{parent}`"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("no container at `{parent}`")),
    }
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or_else(|| format!("no value at `{path}`")),
        Some(Value::Array(a)) => {
            let i = last.parse::<usize>().map_err(|_| format!("bad index `{last}`"))?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(format!("no value at `{path}`"))
            }
        }
        _ => Err(format!("no value at `{path}`")),
    }
}

fn groups(all: &[&'static Kind]) -> Value {
    let mut names: Vec<&str> = all.iter().map(|k| k.group).filter(|g| !g.is_empty()).collect();
    let mut seen = std::collections::HashSet::new();
    names.retain(|g| seen.insert(*g));
    let groups: Vec<Value> = names
        .iter()
        .map(|g| {
            let v = all.iter().find(|k| k.group == *g).map_or("v1", |k| k.version);
            json!({"name": g, "versions": [{"groupVersion": format!("{g}/{v}"), "version": v}], "preferredVersion": {"groupVersion": format!("{g}/{v}"), "version": v}})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resources(all: &[&'static Kind], group: &str, version: &str) -> Value {
    let list: Vec<Value> = all
        .iter()
        .filter(|k| k.group == group && k.version == version)
        .map(|k| {
            json!({"name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": k.namespaced, "kind": k.kind,
                   "verbs": ["create", "delete", "get", "list", "patch", "update"], "shortNames": k.short})
        })
        .chain(
            all.iter()
                .filter(|k| k.group == group && k.version == version && matches!(k.kind, "Deployment" | "ReplicaSet"))
                .map(|k| {
                    json!({"name": format!("{}/scale", k.plural), "singularName": "", "namespaced": true,
                           "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
                }),
        )
        .collect();
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
}

/// The resource as kube-apiserver names it in messages: `deployments.apps`,
/// `pods` (the core group unqualified).
fn qualified(kind: &Kind) -> String {
    if kind.group.is_empty() {
        kind.plural.to_owned()
    } else {
        format!("{}.{}", kind.plural, kind.group)
    }
}

fn key(kind: &Kind, namespace: Option<&str>, name: &str) -> Key {
    (
        kind.group.to_owned(),
        kind.plural.to_owned(),
        namespace.unwrap_or("").to_owned(),
        name.to_owned(),
    )
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// `a=b,c!=d,e` label selectors.
fn selected(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels.get(k.trim()).and_then(Value::as_str) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.get(k.trim()).and_then(Value::as_str) == Some(v.trim())
        } else {
            labels.get(term.trim()).is_some()
        }
    })
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl State {
    /// `GET /sim/faults` lists the pod faults; `PUT /sim/faults` replaces
    /// them with a JSON list (the admin endpoint, same token).
    fn admin_faults(&self, method: &Method, body: &[u8]) -> Response {
        let Ok(mut faults) = self.faults.lock() else {
            return store_unavailable();
        };
        if *method == Method::PUT {
            match serde_json::from_slice::<Vec<crate::faults::PodFault>>(body) {
                Ok(list) => faults.clone_from(&list),
                Err(e) => {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        format!("expected a list of pod faults: {e}"),
                    );
                }
            }
        }
        reply(StatusCode::OK, serde_json::to_value(&*faults).unwrap_or_default())
    }

    /// `GET /sim/scenario` shows the scenario in force; `PUT` (YAML or
    /// JSON) replaces its live parts: models, pods, api and traffic.
    /// time-scale, startup, seed and objects are fixed at start.
    fn admin_scenario(&self, method: &Method, body: &[u8]) -> Response {
        if *method == Method::PUT {
            let text = String::from_utf8_lossy(body);
            let next = match Scenario::from_yaml(&text, "PUT /sim/scenario") {
                Ok(s) => s,
                Err(e) => return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string()),
            };
            self.set_live(&next);
        }
        let Ok(mut sc) = self.scenario.lock() else {
            return store_unavailable();
        };
        sc.pods = self.faults.lock().map(|f| f.clone()).unwrap_or_default();
        sc.api = self.api_faults.lock().map(|f| f.clone()).unwrap_or_default();
        let (models, rate) = self.models.behaviour();
        sc.models = models;
        sc.traffic.rate = rate;
        reply(StatusCode::OK, serde_json::to_value(&*sc).unwrap_or_default())
    }

    /// Replaces the parts of the scenario that can change while running.
    pub fn set_live(&self, next: &Scenario) {
        self.set_faults(next.pods.clone());
        if let Ok(mut a) = self.api_faults.lock() {
            a.clone_from(&next.api);
        }
        self.models.set_behaviour(next.models.clone(), next.traffic.rate);
    }

    /// A watch: past changes after `resourceVersion` (or the current
    /// objects as `ADDED`), then live changes, one JSON event per line;
    /// `410 Gone` as an `ERROR` event when that history is gone.
    fn watch(self: &Arc<Self>, t: Target, query: &str) -> Response {
        let selector = query_param(query, "labelSelector").unwrap_or_default();
        let since: Option<u64> = query_param(query, "resourceVersion")
            .and_then(|r| r.parse().ok())
            .filter(|r| *r > 0);
        let timeout = query_param(query, "timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(1800);
        let matches = {
            let (group, plural, ns) = (t.kind.group, t.kind.plural, t.namespace.clone());
            let selector = selector.clone();
            move |c: &Change| {
                c.key.0 == group
                    && c.key.1 == plural
                    && ns.as_deref().is_none_or(|n| n == c.key.2)
                    && selected(&c.object, &selector)
            }
        };
        let event = |kind: &str, object: &Value| format!("{}\n", json!({"type": kind, "object": object}));
        let (initial, rx) = {
            let Ok(store) = self.store.lock() else {
                return store_unavailable();
            };
            let rx = self.changes.subscribe();
            let mut lines = Vec::new();
            match since {
                None => {
                    for ((g, p, ns, _), o) in &store.objects {
                        let c = Change {
                            revision: 0,
                            kind: "ADDED",
                            key: (g.clone(), p.clone(), ns.clone(), String::new()),
                            object: o.clone(),
                        };
                        if matches(&c) {
                            lines.push(event("ADDED", o));
                        }
                    }
                }
                Some(rv) => {
                    let oldest = store.history.front().map_or(store.revision + 1, |c| c.revision);
                    if rv + 1 < oldest && rv < store.revision {
                        let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": format!("too old resource version: {rv} ({})", oldest.saturating_sub(1)), "reason": "Expired", "code": 410});
                        return (
                            StatusCode::OK,
                            [("content-type", "application/json")],
                            event("ERROR", &gone),
                        )
                            .into_response();
                    }
                    for c in store.history.iter().filter(|c| c.revision > rv && matches(c)) {
                        lines.push(event(c.kind, &c.object));
                    }
                }
            }
            (lines, rx)
        };
        let live = futures_util::stream::unfold((rx, matches), move |(mut rx, matches)| async move {
            loop {
                match rx.recv().await {
                    Ok(c) if matches(&c) => {
                        let line = format!("{}\n", json!({"type": c.kind, "object": c.object}));
                        return Some((Ok::<_, std::convert::Infallible>(line), (rx, matches)));
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let head = futures_util::stream::iter(initial.into_iter().map(Ok::<_, std::convert::Infallible>));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
        let stream = futures_util::StreamExt::take_until(
            futures_util::StreamExt::chain(head, live),
            tokio::time::sleep_until(deadline),
        );
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            axum::body::Body::from_stream(stream),
        )
            .into_response()
    }

    /// Server-side apply: create or merge the applied fields, tracking which
    /// manager owns which field; a field owned by another manager with a
    /// different value is a conflict (409) unless `force`, which takes it.
    fn apply(&self, t: &Target, applied: Value, manager: &str, force: bool) -> Response {
        let Some(name) = t.name.clone() else {
            return name_required();
        };
        let k = key(t.kind, t.namespace.as_deref(), &name);
        let new_leaves = leaves(&applied);
        let (current, owners) = {
            let Ok(store) = self.store.lock() else {
                return store_unavailable();
            };
            (
                store.objects.get(&k).cloned(),
                store.owners.get(&k).cloned().unwrap_or_default(),
            )
        };
        let with_managed = |obj: &mut Value,
                            owners: &std::collections::BTreeMap<
            String,
            std::collections::BTreeSet<String>,
        >| {
            let entries: Vec<Value> = owners
                .iter()
                .filter(|(_, l)| !l.is_empty())
                .map(|(m, l)| json!({"manager": m, "operation": "Apply", "apiVersion": kinds::api_version(t.kind), "fieldsType": "FieldsV1", "fieldsV1": fields_v1(l)}))
                .collect();
            obj["metadata"]["managedFields"] = Value::Array(entries);
        };
        let Some(mut obj) = current else {
            let mut owners = std::collections::BTreeMap::new();
            owners.insert(manager.to_owned(), new_leaves);
            let mut obj = applied;
            obj["metadata"]["name"] = Value::from(name.clone());
            with_managed(&mut obj, &owners);
            let resp = self.create(t.kind, t.namespace.as_deref(), obj);
            if resp.status() == StatusCode::CREATED
                && let Ok(mut store) = self.store.lock()
            {
                store.owners.insert(k, owners);
            }
            return resp;
        };
        let mut conflicts = Vec::new();
        for leaf in &new_leaves {
            for (m, owned) in &owners {
                if m != manager && owned.contains(leaf) && obj.pointer(leaf) != applied.pointer(leaf) {
                    conflicts.push((m.clone(), leaf.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            let field = |p: &str| p.replace('/', ".");
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": field(p)}))
                .collect();
            let list: Vec<String> = conflicts
                .iter()
                .map(|(m, p)| format!("conflict with \"{m}\": {}", field(p)))
                .collect();
            return reply(
                StatusCode::CONFLICT,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Conflict", "code": 409,
                       "message": format!("Apply failed with {} conflict{}: {}", conflicts.len(), if conflicts.len() == 1 { "" } else { "s" }, list.join("; ")),
                       "details": {"name": name, "kind": t.kind.plural, "causes": causes}}),
            );
        }
        let mut owners = owners;
        // Fields this manager owned and no longer applies are removed, unless someone else owns them.
        let previous = owners.get(manager).cloned().unwrap_or_default();
        for gone in previous.difference(&new_leaves) {
            if !owners.iter().any(|(m, l)| m != manager && l.contains(gone)) {
                remove_at(&mut obj, gone);
            }
        }
        for leaf in &new_leaves {
            if let Some(v) = applied.pointer(leaf) {
                set_at(&mut obj, leaf, v.clone());
            }
            for (m, owned) in owners.iter_mut() {
                if m != manager {
                    owned.remove(leaf);
                }
            }
        }
        owners.insert(manager.to_owned(), new_leaves);
        with_managed(&mut obj, &owners);
        let resp = self.store_update(t, obj, false);
        if resp.status() == StatusCode::OK
            && let Ok(mut store) = self.store.lock()
        {
            store.owners.insert(k, owners);
        }
        resp
    }

    /// Replaces the pod faults.
    pub fn set_faults(&self, faults: Vec<crate::faults::PodFault>) {
        if let Ok(mut f) = self.faults.lock() {
            *f = faults;
        }
    }

    /// The fault that applies to a pod with this image, if any.
    pub fn pod_fault(&self, pod: &Value) -> Option<crate::faults::PodFault> {
        self.faults.lock().ok()?.iter().find(|f| f.matches(pod)).cloned()
    }

    /// Every object of a resource (controllers read through this).
    pub fn snapshot(&self, group: &str, plural: &str) -> Vec<Value> {
        self.store
            .lock()
            .map(|s| {
                s.objects
                    .iter()
                    .filter(|((g, p, _, _), _)| g == group && p == plural)
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn target(&self, group: &str, plural: &str, ns: &str, name: &str, status: bool) -> Option<Target> {
        let kind = self
            .kinds()
            .into_iter()
            .find(|k| k.group == group && k.plural == plural)?;
        Some(Target {
            kind,
            namespace: kind.namespaced.then(|| ns.to_owned()),
            name: Some(name.to_owned()),
            status,
            scale: false,
        })
    }

    /// Creates the object, or updates it when its spec or labels differ (controllers).
    pub fn ensure(&self, group: &str, plural: &str, ns: &str, name: &str, obj: Value) {
        let Some(t) = self.target(group, plural, ns, name, false) else {
            return;
        };
        let current = self
            .store
            .lock()
            .ok()
            .and_then(|s| s.objects.get(&key(t.kind, t.namespace.as_deref(), name)).cloned());
        match current {
            None => {
                let _ = self.create(t.kind, t.namespace.as_deref(), obj);
            }
            Some(cur)
                if cur.get("spec") != obj.get("spec")
                    || cur["metadata"]["labels"] != obj["metadata"]["labels"] =>
            {
                let mut next = cur.clone();
                next["spec"] = obj["spec"].clone();
                next["metadata"]["labels"] = obj["metadata"]["labels"].clone();
                let _ = self.store_update(&t, next, false);
            }
            Some(_) => {}
        }
    }

    fn kind_by(&self, api_version: &str, kind: &str) -> Option<&'static Kind> {
        self.kinds()
            .into_iter()
            .find(|k| kinds::api_version(k) == api_version && k.kind == kind)
    }

    /// Server-side applies an object, forced (the GitOps controller).
    ///
    /// # Errors
    /// The kind is not served, or the API server refused it.
    pub fn apply_object(&self, obj: Value, manager: &str) -> Result<(), String> {
        let what = format!(
            "{} {}",
            obj["kind"].as_str().unwrap_or("?"),
            obj["metadata"]["name"].as_str().unwrap_or("?")
        );
        let kind = self.kind_of(&obj).ok_or_else(|| {
            format!(
                "{what}: the server could not find the requested resource ({})",
                obj["apiVersion"].as_str().unwrap_or("?")
            )
        })?;
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_owned);
        if kind.namespaced {
            let exists = self
                .store
                .lock()
                .is_ok_and(|s| Self::namespace_exists(&s, ns.as_deref().unwrap_or_default()));
            if !exists {
                return Err(format!(
                    "{what}: namespaces \"{}\" not found",
                    ns.unwrap_or_default()
                ));
            }
        }
        let t = Target {
            kind,
            namespace: kind.namespaced.then(|| ns.unwrap_or_default()),
            name: obj["metadata"]["name"].as_str().map(str::to_owned),
            status: false,
            scale: false,
        };
        let r = self.apply(&t, obj, manager, true);
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("{what}: {}", r.status()))
        }
    }

    /// Replaces an object's metadata and content, not its status (controllers).
    pub fn update_object(&self, obj: Value) {
        let Some(kind) = self.kind_of(&obj) else { return };
        let t = Target {
            kind,
            namespace: obj["metadata"]["namespace"]
                .as_str()
                .filter(|_| kind.namespaced)
                .map(str::to_owned),
            name: obj["metadata"]["name"].as_str().map(str::to_owned),
            status: false,
            scale: false,
        };
        let _ = self.store_update(&t, obj, false);
    }

    /// An object by apiVersion, kind, namespace and name (controllers).
    pub fn get_object(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let k = self.kind_by(api_version, kind)?;
        let store = self.store.lock().ok()?;
        store
            .objects
            .get(&key(k, k.namespaced.then_some(ns), name))
            .cloned()
    }

    /// Deletes an object by apiVersion, kind, namespace and name (controllers).
    pub fn delete_object(&self, api_version: &str, kind: &str, ns: &str, name: &str) {
        if let Some(k) = self.kind_by(api_version, kind) {
            self.remove(k.group, k.plural, ns, name);
        }
    }

    /// Writes an object's status (controllers).
    pub fn set_status(&self, group: &str, plural: &str, ns: &str, name: &str, status: Value) {
        let Some(t) = self.target(group, plural, ns, name, true) else {
            return;
        };
        let _ = self.store_update(&t, json!({"status": status}), false);
    }

    /// Deletes an object (controllers).
    pub fn remove(&self, group: &str, plural: &str, ns: &str, name: &str) {
        if let Some(t) = self.target(group, plural, ns, name, false) {
            let _ = self.delete(&t);
        }
    }

    fn namespace_exists(store: &Store, ns: &str) -> bool {
        store
            .objects
            .contains_key(&(String::new(), "namespaces".into(), String::new(), ns.to_owned()))
    }

    fn get(&self, t: &Target, name: &str) -> Response {
        let Ok(store) = self.store.lock() else {
            return store_unavailable();
        };
        match store.objects.get(&key(t.kind, t.namespace.as_deref(), name)) {
            Some(o) => reply(StatusCode::OK, o.clone()),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(t.kind)),
            ),
        }
    }

    fn list(&self, t: &Target, query: &str) -> Response {
        let Ok(store) = self.store.lock() else {
            return store_unavailable();
        };
        let selector = query_param(query, "labelSelector").unwrap_or_default();
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|((g, p, ns, _), _)| {
                *g == t.kind.group && *p == t.kind.plural && t.namespace.as_deref().is_none_or(|n| n == ns)
            })
            .map(|(_, o)| o)
            .filter(|o| selected(o, &selector))
            .cloned()
            .collect();
        reply(
            StatusCode::OK,
            json!({"kind": format!("{}List", t.kind.kind), "apiVersion": kinds::api_version(t.kind), "metadata": {"resourceVersion": store.revision.to_string()}, "items": items}),
        )
    }

    fn create(&self, kind: &'static Kind, namespace: Option<&str>, mut obj: Value) -> Response {
        let Ok(mut store) = self.store.lock() else {
            return store_unavailable();
        };
        let Some(name) = obj["metadata"]["name"].as_str().map(str::to_owned) else {
            return invalid(
                kind,
                "",
                "metadata.name",
                "FieldValueRequired",
                "Required value: name is required",
            );
        };
        if !valid_name(&name) {
            return invalid(
                kind,
                &name,
                "metadata.name",
                "FieldValueInvalid",
                &format!(
                    "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            );
        }
        if let (Some(url_ns), Some(body_ns)) = (namespace, obj["metadata"]["namespace"].as_str())
            && kind.namespaced
            && url_ns != body_ns
        {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request"
                    .into(),
            );
        }
        let ns = if kind.namespaced {
            Some(
                namespace
                    .or(obj["metadata"]["namespace"].as_str())
                    .unwrap_or("default")
                    .to_owned(),
            )
        } else {
            None
        };
        if let Some(ns) = &ns
            && !Self::namespace_exists(&store, ns)
        {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
            );
        }
        let k = key(kind, ns.as_deref(), &name);
        if store.objects.contains_key(&k) {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", kind.plural),
            );
        }
        obj["apiVersion"] = Value::from(kinds::api_version(kind));
        obj["kind"] = Value::from(kind.kind);
        let rv = store.next_revision();
        let uid = store.next_uid();
        let meta = obj["metadata"]
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut meta: Map<String, Value> = meta;
        if let Some(ns) = &ns {
            meta.insert("namespace".into(), Value::from(ns.clone()));
        }
        meta.insert("uid".into(), Value::from(uid));
        meta.insert("resourceVersion".into(), Value::from(rv));
        meta.insert("generation".into(), Value::from(1));
        meta.insert("creationTimestamp".into(), Value::from(now()));
        obj["metadata"] = Value::Object(meta);
        if kind.kind == "Namespace" {
            obj["status"] = json!({"phase": "Active"});
        }
        store.objects.insert(k.clone(), obj.clone());
        let change = store.record("ADDED", k, obj.clone());
        let _ = self.changes.send(change);
        drop(store);
        if kind.kind == "CustomResourceDefinition" {
            self.register_crd(&obj);
        }
        reply(StatusCode::CREATED, obj)
    }

    fn store_update(&self, t: &Target, mut obj: Value, check_rv: bool) -> Response {
        let Some(name) = t.name.clone() else {
            return name_required();
        };
        let Ok(mut store) = self.store.lock() else {
            return store_unavailable();
        };
        let k = key(t.kind, t.namespace.as_deref(), &name);
        let Some(old) = store.objects.get(&k).cloned() else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(t.kind)),
            );
        };
        let old_rv = old["metadata"]["resourceVersion"].clone();
        if check_rv
            && obj["metadata"]["resourceVersion"]
                .as_str()
                .is_some_and(|rv| Some(rv) != old_rv.as_str())
        {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    t.kind.plural
                ),
            );
        }
        // The status subresource changes only `status`; the main resource
        // never changes `status`, as on a real API server.
        if t.status {
            let status = obj.get("status").cloned();
            obj = old.clone();
            match status {
                Some(s) => obj["status"] = s,
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        } else if let Some(m) = obj.as_object_mut() {
            match old.get("status") {
                Some(s) => {
                    m.insert("status".into(), s.clone());
                }
                None => {
                    m.remove("status");
                }
            }
        }
        let generation = old["metadata"]["generation"].as_u64().unwrap_or(1);
        let bumped = if obj.get("spec") != old.get("spec") {
            generation + 1
        } else {
            generation
        };
        obj["apiVersion"] = Value::from(kinds::api_version(t.kind));
        obj["kind"] = Value::from(t.kind.kind);
        let rv = store.next_revision();
        for f in ["uid", "creationTimestamp", "namespace", "name"] {
            obj["metadata"][f] = old["metadata"][f].clone();
        }
        obj["metadata"]["resourceVersion"] = Value::from(rv);
        obj["metadata"]["generation"] = Value::from(bumped);
        store.objects.insert(k.clone(), obj.clone());
        let change = store.record("MODIFIED", k, obj.clone());
        let _ = self.changes.send(change);
        drop(store);
        if t.kind.kind == "CustomResourceDefinition" {
            self.register_crd(&obj);
        }
        reply(StatusCode::OK, obj)
    }

    /// `kubectl get`: the objects as a Table of the kind's printer columns.
    fn table(&self, t: &Target, query: &str) -> Response {
        let Ok(store) = self.store.lock() else {
            return store_unavailable();
        };
        let objects: Vec<Value> = match &t.name {
            Some(name) => match store.objects.get(&key(t.kind, t.namespace.as_deref(), name)) {
                Some(o) => vec![o.clone()],
                None => {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{} \"{name}\" not found", qualified(t.kind)),
                    );
                }
            },
            None => {
                let selector = query_param(query, "labelSelector").unwrap_or_default();
                store
                    .objects
                    .iter()
                    .filter(|((g, p, ns, _), _)| {
                        *g == t.kind.group
                            && *p == t.kind.plural
                            && t.namespace.as_deref().is_none_or(|n| n == ns)
                    })
                    .map(|(_, o)| o)
                    .filter(|o| selected(o, &selector))
                    .cloned()
                    .collect()
            }
        };
        // A custom resource prints its CRD's columns.
        let crd = store.objects.get(&(
            "apiextensions.k8s.io".to_owned(),
            "customresourcedefinitions".to_owned(),
            String::new(),
            format!("{}.{}", t.kind.plural, t.kind.group),
        ));
        let columns: Option<Vec<Value>> = crd.and_then(|c| {
            c["spec"]["versions"]
                .as_array()?
                .iter()
                .find(|v| v["name"] == t.kind.version)?["additionalPrinterColumns"]
                .as_array()
                .cloned()
        });
        let full = query_param(query, "includeObject").is_some_and(|i| i == "Object");
        reply(
            StatusCode::OK,
            crate::table::of(
                t.kind,
                &objects,
                &store.revision.to_string(),
                columns.as_deref(),
                full,
                std::time::SystemTime::now(),
            ),
        )
    }

    /// The `scale` subresource of a Deployment or ReplicaSet: read it as an
    /// `autoscaling/v1` Scale, change `spec.replicas` through it.
    fn scale(&self, t: &Target, method: &Method, body: &[u8]) -> Response {
        let Some(name) = t.name.clone() else {
            return name_required();
        };
        let current = {
            let Ok(store) = self.store.lock() else {
                return store_unavailable();
            };
            store
                .objects
                .get(&key(t.kind, t.namespace.as_deref(), &name))
                .cloned()
        };
        let Some(obj) = current else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(t.kind)),
            );
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
        let updated = {
            let Ok(store) = self.store.lock() else {
                return store_unavailable();
            };
            store
                .objects
                .get(&key(
                    t.kind,
                    t.namespace.as_deref(),
                    target.name.as_deref().unwrap_or_default(),
                ))
                .cloned()
        };
        reply(StatusCode::OK, as_scale(&updated.unwrap_or_default()))
    }

    fn replace(&self, t: &Target, obj: Value) -> Response {
        self.store_update(t, obj, true)
    }

    fn patch(&self, t: &Target, apply: impl FnOnce(&mut Value) -> Result<(), String>) -> Response {
        let Some(name) = &t.name else {
            return name_required();
        };
        let current = {
            let Ok(store) = self.store.lock() else {
                return store_unavailable();
            };
            store
                .objects
                .get(&key(t.kind, t.namespace.as_deref(), name))
                .cloned()
        };
        let Some(mut obj) = current else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(t.kind)),
            );
        };
        if let Err(e) = apply(&mut obj) {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("the patch cannot be applied: {e}"),
            );
        }
        self.store_update(t, obj, false)
    }

    fn delete(&self, t: &Target) -> Response {
        let Some(name) = &t.name else {
            return name_required();
        };
        let Ok(mut store) = self.store.lock() else {
            return store_unavailable();
        };
        let k = key(t.kind, t.namespace.as_deref(), name);
        match store.objects.remove(&k) {
            Some(mut o) => {
                if t.kind.kind == "Namespace" {
                    store.objects.retain(|(_, _, ns, _), _| ns != name);
                }
                o["metadata"]["resourceVersion"] = Value::from(store.next_revision());
                let change = store.record("DELETED", k, o.clone());
                let _ = self.changes.send(change);
                reply(StatusCode::OK, o)
            }
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(t.kind)),
            ),
        }
    }
}
