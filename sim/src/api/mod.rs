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

mod admin;
mod apply;
mod crud;
mod discovery;
mod objects;
mod patch;
mod printing;
mod router;
mod scale;
mod watch;

use discovery::{groups, resources};
use patch::json_patch;
use router::ApiQuery;
pub use router::router;

pub struct State {
    token: String,
    /// Random per sim: what `/sim/identity` answers, so a run can prove
    /// that its API server is this sim and not a real cluster.
    pub identity: String,
    /// Further users: token → (username, groups). The admin token is `token`.
    users: Mutex<std::collections::HashMap<String, (String, Vec<String>)>>,
    /// Shared with the simulated world's node agent.
    pub(crate) faults: Arc<Mutex<Vec<crate::faults::PodFault>>>,
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
}

impl State {
    pub fn new(token: String, scenario: Scenario) -> Self {
        let seed = scenario.seed.unwrap_or(0x5EED);
        let state = State {
            identity: crate::random_hex(),
            users: Mutex::default(),
            token,
            faults: Arc::new(Mutex::new(scenario.pods.clone())),
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
            // A scenario may list the `default` ServiceAccount its namespace already has.
            let made_already = r.status() == StatusCode::CONFLICT
                && obj["kind"] == "ServiceAccount"
                && obj["metadata"]["name"] == "default";
            if !r.status().is_success() && !made_already {
                return Err(format!("{what}: {}", r.status()));
            }
        }
        Ok(())
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
               "details": {"name": name, "kind": kind.kind, "causes": [{"reason": reason, "message": message, "field": field}]}}),
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
