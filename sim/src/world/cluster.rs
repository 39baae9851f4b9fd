//! The simulated world's only way to the cluster: the Kubernetes API,
//! through kube-rs. Reads come from watch caches (reflectors), one per
//! resource the world follows; writes are API calls.
//!
//! The world's controllers are plain synchronous code run on blocking
//! threads; this facade blocks on the runtime for each call, so the same
//! controllers run unchanged against the embedded API server and against
//! kube-apiserver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

use crate::faults::PodFault;
use crate::kinds::{KINDS, Kind};
use crate::models::Models;
use crate::scenario::TimeScale;
use crate::store::Store;

/// The resources the world follows (reads through watch caches).
pub(crate) const FOLLOWED: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "services"),
    ("apps", "deployments"),
    ("networking.k8s.io", "ingresses"),
    ("serving.kserve.io", "inferenceservices"),
    ("machinelearning.seldon.io", "seldondeployments"),
    ("networking.istio.io", "virtualservices"),
    ("networking.istio.io", "destinationrules"),
    ("gateway.networking.k8s.io", "httproutes"),
    ("split.smi-spec.io", "trafficsplits"),
    ("argoproj.io", "applications"),
    ("source.toolkit.fluxcd.io", "gitrepositories"),
    ("kustomize.toolkit.fluxcd.io", "kustomizations"),
];

/// What a resource is on the API server: where it is served and whether it is namespaced.
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    pub api: ApiResource,
    pub namespaced: bool,
}

fn resource_of(k: &Kind) -> Resource {
    Resource {
        api: ApiResource {
            group: k.group.to_owned(),
            version: k.version.to_owned(),
            api_version: crate::kinds::api_version(k),
            kind: k.kind.to_owned(),
            plural: k.plural.to_owned(),
        },
        namespaced: k.namespaced,
    }
}

/// The live, changeable parts of the scenario the world follows.
#[derive(Clone)]
pub(crate) struct Live {
    pub faults: Arc<Mutex<Vec<PodFault>>>,
    pub models: Arc<Models>,
    pub scale: TimeScale,
    /// The pod startup delay (real time).
    pub startup: Duration,
    /// The scenario's git repositories, by name.
    pub repos: Arc<RwLock<HashMap<String, std::path::PathBuf>>>,
}

/// `(plural, namespace, name)`.
type ObjectKey = (String, String, String);

/// The cluster as the world sees it.
pub(crate) struct Cluster {
    client: kube::Client,
    rt: tokio::runtime::Handle,
    caches: Vec<(&'static Kind, reflector::Store<DynamicObject>)>,
    /// Kinds found by discovery, by (apiVersion, kind); `None`: not served.
    discovered: Mutex<HashMap<(String, String), Option<Resource>>>,
    /// What [`Cluster::ensure`] last wrote to each object (spec and
    /// labels) and the resourceVersion the API server answered: while the
    /// object is still at that version and the wish is the same, nothing
    /// is sent (the server's defaults make the cached spec differ from
    /// the wish, which would otherwise re-send every object every pass).
    sent: Mutex<HashMap<ObjectKey, (Value, String)>>,
    pub live: Live,
}

impl Cluster {
    /// Starts a watch cache per followed resource and waits (at most
    /// `max`) for each to hold its first list, so the first pass never
    /// mistakes an unfilled cache for an empty cluster.
    pub async fn start(
        client: kube::Client,
        live: Live,
        max: Duration,
    ) -> Result<(Cluster, Vec<tokio::task::JoinHandle<()>>), String> {
        let mut caches = Vec::new();
        let mut tasks = Vec::new();
        for (group, plural) in FOLLOWED {
            let kind = KINDS
                .iter()
                .find(|k| k.group == *group && k.plural == *plural)
                .ok_or_else(|| format!("{group}/{plural} is not a known kind"))?;
            let r = resource_of(kind);
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &r.api);
            let writer = Writer::new(r.api.clone());
            let reader = writer.as_reader();
            let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
                .touched_objects();
            tasks.push(tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while stream.next().await.is_some() {}
            }));
            caches.push((kind, reader));
        }
        for (kind, reader) in &caches {
            if tokio::time::timeout(max, reader.wait_until_ready())
                .await
                .is_err()
            {
                for t in &tasks {
                    t.abort();
                }
                return Err(format!(
                    "the API server never listed {} ({}): is its CustomResourceDefinition installed?",
                    kind.plural,
                    crate::kinds::api_version(kind)
                ));
            }
        }
        Ok((
            Cluster {
                client,
                rt: tokio::runtime::Handle::current(),
                caches,
                discovered: Mutex::default(),
                sent: Mutex::default(),
                live,
            },
            tasks,
        ))
    }

    fn cache(&self, group: &str, plural: &str) -> Option<&(&'static Kind, reflector::Store<DynamicObject>)> {
        self.caches
            .iter()
            .find(|(k, _)| k.group == group && k.plural == plural)
    }

    /// Every object of a followed resource, as JSON with its apiVersion and kind.
    pub fn snapshot(&self, group: &str, plural: &str) -> Vec<Value> {
        let Some((kind, store)) = self.cache(group, plural) else {
            return Vec::new();
        };
        let mut out: Vec<Value> = store.state().iter().map(|o| as_json(kind, o)).collect();
        let key = |v: &Value| {
            (
                v["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
                v["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
            )
        };
        out.sort_by_cached_key(key);
        out
    }

    /// The followed resources as one store (what routing reads).
    pub fn view(&self) -> Store {
        let mut s = Store::default();
        for (kind, store) in &self.caches {
            for o in store.state() {
                let v = as_json(kind, &o);
                let key = (
                    kind.group.to_owned(),
                    kind.plural.to_owned(),
                    v["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
                    v["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                );
                s.objects.insert(key, v);
            }
        }
        s
    }

    /// The resource of an object (`apiVersion` + `kind`): a known kind, else
    /// asked of the API server's discovery once.
    pub fn kind_of(&self, obj: &Value) -> Option<Resource> {
        self.resource(obj["apiVersion"].as_str()?, obj["kind"].as_str()?)
    }

    fn resource(&self, api_version: &str, kind: &str) -> Option<Resource> {
        if let Some(k) = KINDS
            .iter()
            .find(|k| k.kind == kind && crate::kinds::api_version(k) == api_version)
        {
            return Some(resource_of(k));
        }
        let key = (api_version.to_owned(), kind.to_owned());
        if let Some(found) = self.discovered.lock().ok()?.get(&key) {
            return found.clone();
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let found = self
            .rt
            .block_on(kube::discovery::pinned_kind(&self.client, &gvk))
            .ok()
            .map(|(api, caps)| Resource {
                api,
                namespaced: caps.scope == kube::discovery::Scope::Namespaced,
            });
        if let Ok(mut d) = self.discovered.lock() {
            d.insert(key, found.clone());
        }
        found
    }

    fn api(&self, r: &Resource, ns: &str) -> Api<DynamicObject> {
        if r.namespaced {
            Api::namespaced_with(self.client.clone(), ns, &r.api)
        } else {
            Api::all_with(self.client.clone(), &r.api)
        }
    }

    fn followed(&self, group: &str, plural: &str) -> Option<Resource> {
        self.cache(group, plural).map(|(k, _)| resource_of(k))
    }

    fn cached(&self, group: &str, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let (kind, store) = self.cache(group, plural)?;
        let mut key = reflector::ObjectRef::new_with(name, resource_of(kind).api);
        if kind.namespaced {
            key = key.within(ns);
        }
        store.get(&key).map(|o| as_json(kind, &o))
    }

    /// Creates the object, or replaces its spec and labels when they differ
    /// from what it asks for (a conflict is retried on the next pass).
    pub fn ensure(&self, group: &str, plural: &str, ns: &str, name: &str, obj: Value) {
        let Some(r) = self.followed(group, plural) else {
            return;
        };
        let api = self.api(&r, ns);
        match self.cached(group, plural, ns, name) {
            None => {
                let Ok(o) = serde_json::from_value::<DynamicObject>(obj) else {
                    return;
                };
                self.call("create", plural, name, api.create(&PostParams::default(), &o));
            }
            Some(cur)
                if cur.get("spec") != obj.get("spec")
                    || cur["metadata"]["labels"] != obj["metadata"]["labels"] =>
            {
                let key = (plural.to_owned(), ns.to_owned(), name.to_owned());
                let wish = serde_json::json!({"spec": obj.get("spec"), "labels": obj["metadata"]["labels"]});
                let at = cur["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let unchanged = self
                    .sent
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&key).cloned())
                    .is_some_and(|(w, v)| w == wish && v == at);
                if unchanged {
                    return;
                }
                let mut next = cur;
                next["spec"] = obj["spec"].clone();
                next["metadata"]["labels"] = obj["metadata"]["labels"].clone();
                let Ok(o) = serde_json::from_value::<DynamicObject>(next) else {
                    return;
                };
                match self.rt.block_on(api.replace(name, &PostParams::default(), &o)) {
                    Ok(done) => {
                        if let (Ok(mut m), Some(v)) = (self.sent.lock(), done.metadata.resource_version) {
                            m.insert(key, (wish, v));
                        }
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                    Err(e) => tracing::warn!("sim world: cannot replace {plural}/{name}: {}", message(&e)),
                }
            }
            Some(_) => {}
        }
    }

    /// Replaces the status of a followed object (its status subresource),
    /// when it differs.
    pub fn set_status(&self, group: &str, plural: &str, ns: &str, name: &str, status: Value) {
        let Some(r) = self.followed(group, plural) else {
            return;
        };
        let Some(mut cur) = self.cached(group, plural, ns, name) else {
            return;
        };
        if cur["status"] == status {
            return;
        }
        cur["status"] = status;
        let Ok(o) = serde_json::from_value::<DynamicObject>(cur) else {
            return;
        };
        let api = self.api(&r, ns);
        self.call(
            "replace status of",
            plural,
            name,
            api.replace_status(name, &PostParams::default(), &o),
        );
    }

    /// Deletes a followed object (absent is fine).
    pub fn remove(&self, group: &str, plural: &str, ns: &str, name: &str) {
        if let Some(r) = self.followed(group, plural) {
            let api = self.api(&r, ns);
            self.call(
                "delete",
                plural,
                name,
                api.delete(name, &DeleteParams::background()),
            );
        }
    }

    /// An object by apiVersion and kind (from the cache when followed).
    pub fn get_object(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let r = self.resource(api_version, kind)?;
        if self.cache(&r.api.group, &r.api.plural).is_some() {
            return self.cached(&r.api.group, &r.api.plural, ns, name);
        }
        let api = self.api(&r, ns);
        let o = self.rt.block_on(api.get_opt(name)).ok()??;
        let mut v = serde_json::to_value(o).ok()?;
        v["apiVersion"] = Value::from(r.api.api_version.clone());
        v["kind"] = Value::from(r.api.kind.clone());
        Some(v)
    }

    /// Server-side apply as `manager`, forced (as GitOps controllers do).
    ///
    /// # Errors
    /// The API server's refusal, as its message says it.
    pub fn apply_object(&self, obj: Value, manager: &str) -> Result<(), String> {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let r = self.kind_of(&obj).ok_or_else(|| {
            format!(
                "{} {name}: the server could not find the requested resource ({})",
                obj["kind"].as_str().unwrap_or_default(),
                obj["apiVersion"].as_str().unwrap_or_default()
            )
        })?;
        let api = self.api(&r, &ns);
        self.rt
            .block_on(api.patch(&name, &PatchParams::apply(manager).force(), &Patch::Apply(&obj)))
            .map(|_| ())
            .map_err(|e| format!("{} {name}: {}", r.api.kind, message(&e)))
    }

    /// Replaces an object as given (with its resourceVersion).
    pub fn update_object(&self, obj: Value) {
        let Some(r) = self.kind_of(&obj) else { return };
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let Ok(o) = serde_json::from_value::<DynamicObject>(obj) else {
            return;
        };
        let api = self.api(&r, &ns);
        self.call(
            "replace",
            &r.api.plural,
            &name,
            api.replace(&name, &PostParams::default(), &o),
        );
    }

    /// Deletes an object by apiVersion and kind (absent is fine).
    pub fn delete_object(&self, api_version: &str, kind: &str, ns: &str, name: &str) {
        if let Some(r) = self.resource(api_version, kind) {
            let api = self.api(&r, ns);
            self.call(
                "delete",
                &r.api.plural,
                name,
                api.delete(name, &DeleteParams::background()),
            );
        }
    }

    /// The pod fault that applies to a pod, if any.
    pub fn pod_fault(&self, pod: &Value) -> Option<PodFault> {
        self.live
            .faults
            .lock()
            .ok()?
            .iter()
            .find(|f| f.matches(pod))
            .cloned()
    }

    /// A scenario repository's path.
    pub fn repository(&self, name: &str) -> Option<std::path::PathBuf> {
        self.live.repos.read().ok()?.get(name).cloned()
    }

    /// Runs a write; a refusal is logged (controllers retry on the next pass).
    fn call<T>(
        &self,
        verb: &str,
        plural: &str,
        name: &str,
        f: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) {
        match self.rt.block_on(f) {
            Ok(_) => {}
            // Someone else got there first, or it is gone already: the next pass sees it.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => {
                tracing::warn!("sim world: cannot {verb} {plural}/{name}: {}", message(&e));
            }
        }
    }
}

fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

fn as_json(kind: &Kind, o: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    v["apiVersion"] = Value::from(crate::kinds::api_version(kind));
    v["kind"] = Value::from(kind.kind);
    v
}
