//! Cluster access for the steps that change or read Kubernetes, through
//! kube-rs: the client from the usual sources (an explicit kubeconfig,
//! `KUBECONFIG`, `~/.kube/config`, in-cluster), the spec's context, any kind
//! through discovery, and errors classified for the executor (429, 5xx,
//! 409 and connection errors are transient; the rest are not).
//!
//! kube-rs retries 429/503 on its own (up to 15 times, backing off to
//! minutes), which would hide faults from the executor's own retry policy
//! and deadlines: that is turned off here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::KubeConfigOptions;
use kube::{Api, Client, Config};
use rollwright_engine::exec::StepError;
use rollwright_engine::registry::{BuildContext, BuildError};
use serde_json::{Value, json};

/// Where an object is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ObjRef {
    /// `apps/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `Deployment`.
    pub kind: String,
    /// Namespace (none for cluster-scoped kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl ObjRef {
    /// The reference of an object (its namespace, else `default_ns`).
    #[must_use]
    pub fn of(obj: &Value, default_ns: &str) -> Option<ObjRef> {
        Some(ObjRef {
            api_version: obj["apiVersion"].as_str()?.to_owned(),
            kind: obj["kind"].as_str()?.to_owned(),
            namespace: Some(
                obj["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or(default_ns)
                    .to_owned(),
            ),
            name: obj["metadata"]["name"].as_str()?.to_owned(),
        })
    }

    /// A reference in the target namespace.
    #[must_use]
    pub fn new(api_version: &str, kind: &str, namespace: &str, name: &str) -> ObjRef {
        ObjRef {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            namespace: Some(namespace.to_owned()),
            name: name.to_owned(),
        }
    }
}

impl std::fmt::Display for ObjRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One cluster, as a run's steps share it.
pub struct Cluster {
    reach: crate::reach::Reach,
    /// The objects this run's own steps apply or route (declared when they
    /// are built): the only ones a compensation may restore or delete.
    allowed: Mutex<std::collections::BTreeSet<(String, String, String)>>,
    /// The context used.
    pub context: String,
    /// The target namespace.
    pub namespace: String,
    /// The client and the kinds discovered: one per reach, shared by its
    /// namespaces (a controller running a thousand targets keeps one
    /// connection pool, not a thousand).
    client: Arc<tokio::sync::OnceCell<Client>>,
    kinds: Arc<Mutex<Kinds>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cluster({}/{})", self.context, self.namespace)
    }
}

/// A run's clusters, shared by its steps (one client per reach and namespace).
static CLUSTERS: Mutex<Vec<Arc<Cluster>>> = Mutex::new(Vec::new());

/// `(apiVersion, kind)` → the API resource and whether it is namespaced.
type Kinds = HashMap<(String, String), (ApiResource, bool)>;

impl Cluster {
    /// The cluster a run targets, as its [`crate::reach::Reach`] says: the
    /// only way steps reach a cluster.
    ///
    /// # Errors
    /// No target in the spec, or no reach (a run that was given none).
    pub fn of(cx: &BuildContext) -> Result<Arc<Cluster>, BuildError> {
        let target = cx.target.as_ref().ok_or_else(|| {
            BuildError::Config(
                "this step needs `target: {context, namespace, environment}` in the spec".into(),
            )
        })?;
        let reach = crate::reach::Reach::of(cx);
        if reach.context.is_empty() {
            return Err(BuildError::Unavailable("this run reaches no cluster".into()));
        }
        Cluster::at(reach, &target.namespace).map_err(BuildError::Unavailable)
    }

    /// The cluster `reach` reaches, for `namespace`.
    ///
    /// # Errors
    /// The cache is poisoned.
    pub fn at(reach: crate::reach::Reach, namespace: &str) -> Result<Arc<Cluster>, String> {
        let mut all = CLUSTERS.lock().map_err(|_| "cluster cache poisoned".to_owned())?;
        if let Some(c) = all.iter().find(|c| c.reach == reach && c.namespace == namespace) {
            return Ok(c.clone());
        }
        let (client, kinds) = all
            .iter()
            .find(|c| c.reach == reach)
            .map_or_else(Default::default, |c| (c.client.clone(), c.kinds.clone()));
        let c = Arc::new(Cluster {
            context: reach.context.clone(),
            allowed: Mutex::default(),
            reach,
            namespace: namespace.to_owned(),
            client,
            kinds,
        });
        all.push(c.clone());
        Ok(c)
    }

    /// Declares objects this run's steps change (what their compensations
    /// may restore): called when the steps are built, before anything runs.
    pub fn allow(&self, refs: impl IntoIterator<Item = ObjRef>) {
        if let Ok(mut a) = self.allowed.lock() {
            for r in refs {
                a.insert(Self::key(&r));
            }
        }
    }

    fn key(r: &ObjRef) -> (String, String, String) {
        let group = r.api_version.rsplit_once('/').map_or("", |(g, _)| g).to_owned();
        (
            format!("{group}/{}", r.kind),
            r.namespace.clone().unwrap_or_default(),
            r.name.clone(),
        )
    }

    /// Refuses to restore `r` unless this run's own steps declared it, in
    /// the target namespace: a record naming anything else (an object in
    /// `default`, the production InferenceService of another model, a
    /// cluster-scoped kind) is not acted on, whatever the journal says.
    ///
    /// # Errors
    /// A permanent error naming the object.
    pub fn check_restorable(&self, r: &ObjRef) -> Result<(), StepError> {
        let in_namespace = r.namespace.as_deref() == Some(self.namespace.as_str());
        let declared = self.allowed.lock().is_ok_and(|a| a.contains(&Self::key(r)));
        if in_namespace && declared {
            Ok(())
        } else {
            Err(StepError::failed(format!(
                "refusing to restore {r}: {}",
                if in_namespace {
                    "no step of this run applies or routes it"
                } else {
                    "it is outside the run's namespace"
                }
            )))
        }
    }

    /// The client, made on first use.
    ///
    /// # Errors
    /// No usable kubeconfig, or the context is not in it.
    pub async fn client(&self) -> Result<Client, StepError> {
        self.client.get_or_try_init(|| self.own_client()).await.cloned()
    }

    /// A client of its own (its own connections), for what must not wait
    /// behind the shared client's requests — a controller's leader Lease
    /// renewal.
    ///
    /// # Errors
    /// No usable kubeconfig, or the context is not in it.
    pub async fn own_client(&self) -> Result<Client, StepError> {
        let mut config = match self
            .reach
            .kubeconfig()
            .map_err(|e| StepError::failed(e.to_string()))?
        {
            Some(kc) => {
                if !kc.contexts.iter().any(|c| c.name == self.context) {
                    return Err(StepError::failed(format!(
                        "the kubeconfig has no context `{}` (it has: {})",
                        self.context,
                        kc.contexts
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                let options = KubeConfigOptions {
                    context: Some(self.context.clone()),
                    ..KubeConfigOptions::default()
                };
                Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| StepError::failed(format!("kubeconfig context `{}`: {e}", self.context)))?
            }
            None if self.reach.in_cluster => Config::incluster().map_err(|e| {
                StepError::failed(format!("not in a cluster (the run started in-cluster): {e}"))
            })?,
            None => {
                return Err(StepError::failed(
                    "no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and not in a cluster",
                ));
            }
        };
        config.default_retry = false;
        Client::try_from(config).map_err(|e| StepError::failed(format!("cannot make a client: {e}")))
    }

    /// Who the client is to the API server (`SelfSubjectReview`): the
    /// authenticated username, never what the user claims.
    ///
    /// # Errors
    /// The API server cannot say (too old, or unreachable).
    pub async fn whoami(&self) -> Result<String, StepError> {
        let client = self.client().await?;
        let body = serde_json::to_vec(
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        )
        .unwrap_or_default();
        let req = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
            .header("content-type", "application/json")
            .body(body)
            .map_err(|e| StepError::failed(e.to_string()))?;
        let review: Value = client
            .request(req)
            .await
            .map_err(|e| classify(e, "asking the API server who we are (SelfSubjectReview)"))?;
        review["status"]["userInfo"]["username"]
            .as_str()
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| StepError::failed("the API server's SelfSubjectReview names no user"))
    }

    /// The API of a kind (discovered once), in `namespace` when namespaced.
    ///
    /// # Errors
    /// The cluster does not serve the kind.
    pub async fn api(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Api<DynamicObject>, StepError> {
        let client = self.client().await?;
        let key = (api_version.to_owned(), kind.to_owned());
        let cached = self.kinds.lock().ok().and_then(|k| k.get(&key).cloned());
        let (ar, namespaced) = match cached {
            Some(x) => x,
            None => {
                let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
                let gvk = GroupVersionKind::gvk(group, version, kind);
                let (ar, caps) = kube::discovery::pinned_kind(&client, &gvk)
                    .await
                    .map_err(|e| classify(e, &format!("discovering {api_version} {kind}")))?;
                let namespaced = caps.scope == kube::discovery::Scope::Namespaced;
                if let Ok(mut k) = self.kinds.lock() {
                    k.insert(key, (ar.clone(), namespaced));
                }
                (ar, namespaced)
            }
        };
        Ok(if namespaced {
            Api::namespaced_with(client, namespace.unwrap_or(&self.namespace), &ar)
        } else {
            Api::all_with(client, &ar)
        })
    }

    /// Whether the cluster serves `kind` in namespaces (discovery, cached).
    ///
    /// # Errors
    /// The cluster does not serve the kind.
    pub async fn is_namespaced(&self, api_version: &str, kind: &str) -> Result<bool, StepError> {
        self.api(api_version, kind, None).await?;
        let key = (api_version.to_owned(), kind.to_owned());
        Ok(self
            .kinds
            .lock()
            .ok()
            .and_then(|k| k.get(&key).map(|(_, n)| *n))
            .unwrap_or(false))
    }

    async fn api_of(&self, r: &ObjRef) -> Result<Api<DynamicObject>, StepError> {
        self.api(&r.api_version, &r.kind, r.namespace.as_deref()).await
    }

    /// The object, or `None` when it does not exist.
    ///
    /// # Errors
    /// Classified API errors.
    pub async fn get(&self, r: &ObjRef) -> Result<Option<Value>, StepError> {
        let api = self.api_of(r).await?;
        match api.get_opt(&r.name).await {
            Ok(o) => Ok(o.map(|o| serde_json::to_value(o).unwrap_or_default())),
            Err(e) => Err(classify(e, &format!("reading {r}"))),
        }
    }

    /// Objects of a kind in the target namespace matching a label selector.
    ///
    /// # Errors
    /// Classified API errors.
    pub async fn list(&self, api_version: &str, kind: &str, selector: &str) -> Result<Vec<Value>, StepError> {
        let api = self.api(api_version, kind, None).await?;
        let lp = if selector.is_empty() {
            ListParams::default()
        } else {
            ListParams::default().labels(selector)
        };
        api.list(&lp)
            .await
            .map(|l| {
                l.items
                    .into_iter()
                    .map(|o| serde_json::to_value(o).unwrap_or_default())
                    .collect()
            })
            .map_err(|e| classify(e, &format!("listing {kind}")))
    }

    /// Server-side apply, taking ownership of conflicting fields.
    ///
    /// # Errors
    /// Classified API errors.
    pub async fn apply(&self, obj: &Value, manager: &str) -> Result<Value, StepError> {
        let r = ObjRef::of(obj, &self.namespace)
            .ok_or_else(|| StepError::failed("an object needs apiVersion, kind and metadata.name"))?;
        let api = self.api_of(&r).await?;
        let dynamic: DynamicObject =
            serde_json::from_value(obj.clone()).map_err(|e| StepError::failed(format!("{r}: {e}")))?;
        api.patch(
            &r.name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&dynamic),
        )
        .await
        .map(|o| serde_json::to_value(o).unwrap_or_default())
        .map_err(|e| classify(e, &format!("applying {r}")))
    }

    /// A JSON merge patch (with `metadata.resourceVersion` in it, a stale
    /// read is a 409 and retried).
    ///
    /// # Errors
    /// Classified API errors.
    pub async fn merge_patch(&self, r: &ObjRef, patch: &Value, manager: &str) -> Result<Value, StepError> {
        let api = self.api_of(r).await?;
        let pp = PatchParams {
            field_manager: Some(manager.to_owned()),
            ..PatchParams::default()
        };
        api.patch(&r.name, &pp, &Patch::Merge(patch))
            .await
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .map_err(|e| classify(e, &format!("patching {r}")))
    }

    /// Puts `obj` back as it was: replaces the current object (keeping the
    /// current resourceVersion), or creates it when it is gone.
    ///
    /// # Errors
    /// Classified API errors.
    pub async fn restore(&self, r: &ObjRef, obj: &Value) -> Result<(), StepError> {
        let api = self.api_of(r).await?;
        let mut obj = obj.clone();
        match api
            .get_opt(&r.name)
            .await
            .map_err(|e| classify(e, &format!("reading {r}")))?
        {
            Some(cur) => {
                obj["metadata"]["resourceVersion"] = json!(cur.metadata.resource_version);
                let dynamic: DynamicObject =
                    serde_json::from_value(obj).map_err(|e| StepError::failed(e.to_string()))?;
                api.replace(&r.name, &PostParams::default(), &dynamic)
                    .await
                    .map_err(|e| classify(e, &format!("restoring {r}")))?;
            }
            None => {
                let dynamic: DynamicObject =
                    serde_json::from_value(obj).map_err(|e| StepError::failed(e.to_string()))?;
                api.create(&PostParams::default(), &dynamic)
                    .await
                    .map_err(|e| classify(e, &format!("re-creating {r}")))?;
            }
        }
        Ok(())
    }

    /// Creates an object (409 when it exists).
    ///
    /// # Errors
    /// Classified API errors.
    pub async fn create(&self, r: &ObjRef, obj: &Value) -> Result<Value, StepError> {
        let api = self.api_of(r).await?;
        let dynamic: DynamicObject =
            serde_json::from_value(obj.clone()).map_err(|e| StepError::failed(format!("{r}: {e}")))?;
        api.create(&PostParams::default(), &dynamic)
            .await
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .map_err(|e| classify(e, &format!("creating {r}")))
    }

    /// Replaces an object; `obj` carries the resourceVersion it was read at
    /// (a concurrent writer makes it a 409).
    ///
    /// # Errors
    /// Classified API errors.
    pub async fn replace(&self, r: &ObjRef, obj: &Value) -> Result<Value, StepError> {
        let api = self.api_of(r).await?;
        let dynamic: DynamicObject =
            serde_json::from_value(obj.clone()).map_err(|e| StepError::failed(format!("{r}: {e}")))?;
        api.replace(&r.name, &PostParams::default(), &dynamic)
            .await
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .map_err(|e| classify(e, &format!("replacing {r}")))
    }

    /// Deletes an object; one already gone is fine.
    ///
    /// # Errors
    /// Classified API errors.
    pub async fn delete(&self, r: &ObjRef) -> Result<(), StepError> {
        let api = self.api_of(r).await?;
        match api.delete(&r.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(classify(e, &format!("deleting {r}"))),
        }
    }

    /// Waits (at most `max`) for the next change of a kind in the target
    /// namespace after `since` (a resourceVersion): watches, no polling.
    pub async fn next_change(&self, api_version: &str, kind: &str, since: &str, max: std::time::Duration) {
        use futures_util::StreamExt;
        let Ok(api) = self.api(api_version, kind, None).await else {
            tokio::time::sleep(max).await;
            return;
        };
        let secs = u32::try_from(max.as_secs().max(1)).unwrap_or(5);
        let wp = kube::api::WatchParams::default().timeout(secs);
        let wait = async {
            match api.watch(&wp, since).await {
                Ok(stream) => {
                    let mut stream = std::pin::pin!(stream);
                    let _ = stream.next().await;
                }
                Err(_) => tokio::time::sleep(max).await,
            }
        };
        let _ = tokio::time::timeout(max, wait).await;
    }
}

/// Resolves a secret reference: `{secretRef: NAME, key: KEY}` from a
/// Kubernetes Secret in the target namespace (the `key`, or its only key),
/// `{env}` and `{file}` as the engine does. The value is registered for
/// redaction before it is returned; errors never contain it.
///
/// # Errors
/// What is missing (a `secretRef` without a cluster, an unknown key, …).
pub async fn resolve_secret(
    cluster: Option<&Cluster>,
    reference: &Value,
    base: &std::path::Path,
) -> Result<rollwright_engine::secrets::Secret, StepError> {
    let Some(name) = reference.get("secretRef").and_then(Value::as_str) else {
        return rollwright_engine::secrets::resolve(reference, base)
            .map_err(|e| StepError::failed(e.to_string()));
    };
    let cluster = cluster.ok_or_else(|| {
        StepError::failed(format!(
            "Kubernetes Secret `{name}` needs the spec's `target` to be read; or use `env` or `file`"
        ))
    })?;
    let r = ObjRef::new("v1", "Secret", &cluster.namespace, name);
    let secret = cluster
        .get(&r)
        .await?
        .ok_or_else(|| StepError::failed(format!("{r} does not exist")))?;
    let data = secret["data"].as_object().cloned().unwrap_or_default();
    let key = match reference.get("key").and_then(Value::as_str) {
        Some(k) => k.to_owned(),
        None if data.len() == 1 => data.keys().next().cloned().unwrap_or_default(),
        None => {
            return Err(StepError::failed(format!(
                "{r} has {} keys: name one with `key` (it has: {})",
                data.len(),
                data.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    };
    let encoded = data
        .get(&key)
        .and_then(Value::as_str)
        .ok_or_else(|| StepError::failed(format!("{r} has no key `{key}`")))?;
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
        .map_err(|_| StepError::failed(format!("{r}: key `{key}` is not base64")))?;
    let value =
        String::from_utf8(bytes).map_err(|_| StepError::failed(format!("{r}: key `{key}` is not text")))?;
    Ok(rollwright_engine::secrets::Secret::from_resolved(
        value.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

/// An API error as the executor needs it.
#[must_use]
pub fn classify(e: kube::Error, doing: &str) -> StepError {
    match e {
        kube::Error::Api(s) => {
            let msg = format!("{doing}: {} ({} {})", s.message, s.code, s.reason);
            match s.code {
                409 | 429 | 500 | 502 | 503 | 504 => StepError::transient(msg),
                401 | 403 => StepError::failed(format!(
                    "{msg}; the credentials lack a permission (`rollwright rbac SPEC` prints the Role a run needs)"
                )),
                _ => StepError::failed(msg),
            }
        }
        kube::Error::Discovery(d) => {
            StepError::failed(format!("{doing}: the cluster does not serve it ({d})"))
        }
        other => StepError::transient(format!("{doing}: {other}")),
    }
}

/// An object as it should be restored: no server-managed metadata, no status.
#[must_use]
pub fn restorable(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
    }
    if let Some(meta) = o["metadata"].as_object_mut() {
        for k in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(k);
        }
    }
    o
}

/// Whether a pod's Ready condition is True.
#[must_use]
pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// `a=b,c=d` from a label map.
#[must_use]
pub fn selector(labels: &Value) -> String {
    labels
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Why a pod is failing, if it is crash-looping or cannot start:
/// `pod X, container Y: CrashLoopBackOff (restarts N)`.
#[must_use]
pub fn pod_trouble(pod: &Value, max_restarts: u32) -> Option<String> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("?");
    for c in pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let cname = c["name"].as_str().unwrap_or("?");
        let restarts = c["restartCount"].as_u64().unwrap_or(0);
        let waiting = c["state"]["waiting"]["reason"].as_str();
        let fatal = matches!(
            waiting,
            Some(
                "CrashLoopBackOff"
                    | "ImagePullBackOff"
                    | "ErrImagePull"
                    | "CreateContainerConfigError"
                    | "InvalidImageName"
            )
        );
        if fatal || restarts > u64::from(max_restarts) {
            let why = waiting.unwrap_or("restarting");
            let detail = c["state"]["waiting"]["message"]
                .as_str()
                .map_or(String::new(), |m| format!(": {m}"));
            return Some(format!(
                "pod {name}, container {cname}: {why} (restarts {restarts}){detail}"
            ));
        }
    }
    None
}
