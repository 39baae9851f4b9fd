//! A GitOps controller for tests, standing in for Argo CD and Flux. Part
//! of the simulated world: it reads and writes the cluster through the
//! Kubernetes API only.
//!
//! It follows repositories on this machine (a path or `file://` URL; read
//! with the `git` CLI) and applies what is committed at a path:
//! - **Argo CD** `Application` (`argoproj.io/v1alpha1`): `spec.source`
//!   {`repoURL`, `targetRevision` (a branch; default `HEAD`), `path`},
//!   `spec.destination.namespace`, `spec.syncPolicy.automated.prune`.
//!   Objects get the `argocd.argoproj.io/instance` label. Status as Argo CD
//!   writes it: `sync` {status, revision}, `health` {status, message},
//!   `operationState` {phase, message, syncResult.revision}, `resources`
//!   (with `requiresPruning`), `conditions` (`ComparisonError` when the
//!   manifests cannot be read), `reconciledAt`.
//! - **Flux** `GitRepository` (`source.toolkit.fluxcd.io/v1`: `spec.url`,
//!   `spec.ref.branch`; `status.artifact.revision` = `BRANCH@sha1:SHA`) and
//!   `Kustomization` (`kustomize.toolkit.fluxcd.io/v1`: `sourceRef`, `path`,
//!   `prune`, `targetNamespace`, `wait`): objects labelled
//!   `kustomize.toolkit.fluxcd.io/{name,namespace}`; `Ready` condition
//!   (`ReconciliationSucceeded`, `ReconciliationFailed`, `HealthCheckFailed`
//!   when `wait` and a workload is degraded), `lastAppliedRevision`,
//!   `lastAttemptedRevision`, `observedGeneration`, `inventory`.
//!
//! Sync is prompt (every 200 ms of real time) for an Application with
//! `syncPolicy.automated` and for every Kustomization (unless
//! `spec.suspend`); an Application without it stays OutOfSync at the new
//! revision until someone sets `operation.sync` (as `argocd app sync`
//! does). A new revision
//! is applied with server-side apply (field manager `argocd-controller` /
//! `kustomize-controller`, forced); objects of the app no longer in Git are
//! deleted when the app prunes. Health: a Deployment is Healthy when rolled
//! out, Degraded when a pod of it crash-loops, else Progressing; an
//! InferenceService follows its `Ready` condition; other kinds are Healthy.
//! A path with a `kustomization.yaml` is built the simple way: its
//! `resources` (files, directories with their own kustomization) and its
//! `namespace`; without one, every YAML file below the path.
//! Not simulated: self-heal of live edits, sync waves and hooks, Helm and
//! the rest of kustomize (patches, images, generators), webhooks and
//! polling delays.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::meta;

use crate::world::cluster::Cluster;

/// What the controller remembers of an app between passes.
#[derive(Debug, Default, Clone)]
struct Synced {
    revision: String,
    /// `(apiVersion, kind, namespace, name)` of what it applied.
    objects: Vec<(String, String, String, String)>,
    /// Why the last sync failed, if it did.
    error: Option<String>,
}

/// Runs until the sim stops.
pub async fn run(state: Arc<Cluster>, every: Duration) {
    let mut memory: HashMap<String, Synced> = HashMap::new();
    loop {
        let s = state.clone();
        let m = std::mem::take(&mut memory);
        memory = tokio::task::spawn_blocking(move || {
            let mut m = m;
            reconcile(&s, &mut m);
            m
        })
        .await
        .unwrap_or_default();
        tokio::time::sleep(every).await;
    }
}

fn reconcile(state: &Cluster, memory: &mut HashMap<String, Synced>) {
    for app in state.snapshot("argoproj.io", "applications") {
        argo(state, &app, memory);
    }
    let repos = state.snapshot("source.toolkit.fluxcd.io", "gitrepositories");
    for repo in &repos {
        git_repository(state, repo);
    }
    for k in state.snapshot("kustomize.toolkit.fluxcd.io", "kustomizations") {
        flux(state, &k, &repos, memory);
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn git(repo: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(repo).args(args);
    output(&mut cmd)
}

/// Runs a git command: its stdout, or its error output.
fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn local_path(state: &Cluster, url: &str) -> PathBuf {
    if let Some(name) = url.strip_prefix("sim://") {
        return state.repository(name).unwrap_or_else(|| PathBuf::from(url));
    }
    PathBuf::from(url.strip_prefix("file://").unwrap_or(url))
}

/// Creates the scenario's repositories under `root`: bare, branch `main`,
/// one commit holding each directory's files.
///
/// # Errors
/// A directory that does not exist, or git failing.
pub fn create_repositories(
    root: &Path,
    repos: &BTreeMap<String, String>,
) -> Result<HashMap<String, PathBuf>, String> {
    let mut out = HashMap::new();
    for (name, dir) in repos {
        let src = Path::new(dir);
        if !src.is_dir() {
            return Err(format!("repositories.{name}: {dir} is not a directory"));
        }
        std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        let bare = root.join(format!("{name}.git"));
        let b = bare.to_string_lossy().into_owned();
        git(root, &["init", "--quiet", "--bare", "-b", "main", &b])?;
        let seed = |args: &[&str]| -> Result<String, String> {
            let mut cmd = Command::new("git");
            cmd.args(["--git-dir", &b, "--work-tree"])
                .arg(src)
                .args(["-c", "user.name=rollwright-sim", "-c", "user.email=sim@localhost"])
                .args(["-c", "commit.gpgsign=false"])
                .args(args);
            output(&mut cmd).map_err(|e| format!("repositories.{name}: {e}"))
        };
        seed(&["add", "-A", "."])?;
        seed(&[
            "commit",
            "--quiet",
            "--no-verify",
            "-m",
            &format!("seed from {dir}"),
        ])?;
        let _ = std::fs::remove_file(bare.join("index"));
        out.insert(name.clone(), bare);
    }
    Ok(out)
}

/// The commit a branch (or `HEAD`) of a local repository points at.
fn resolve(state: &Cluster, url: &str, revision: &str) -> Result<String, String> {
    let rev = if revision.is_empty() || revision == "HEAD" {
        "HEAD".to_owned()
    } else {
        format!("refs/heads/{revision}")
    };
    git(
        &local_path(state, url),
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
    .map(|s| s.trim().to_owned())
    .map_err(|e| format!("unable to resolve '{revision}' in repository {url}: {e}"))
}

/// The objects committed under `path` at `sha` (YAML files, any depth).
/// The kustomization file names kustomize looks for.
const KUSTOMIZATION: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The objects committed under `path` at `sha`: what its kustomization
/// lists (`resources`: files and directories; `namespace`), else every
/// YAML file below it.
fn manifests(state: &Cluster, url: &str, sha: &str, path: &str) -> Result<Vec<Value>, String> {
    let repo = &local_path(state, url);
    build(
        state,
        repo,
        sha,
        path.trim_start_matches("./").trim_end_matches('/'),
        0,
    )
}

fn join(dir: &str, rel: &str) -> String {
    let mut parts: Vec<&str> = if dir.is_empty() || dir == "." {
        Vec::new()
    } else {
        dir.split('/').collect()
    };
    for seg in rel.trim_start_matches("./").split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

fn objects_of(repo: &Path, sha: &str, f: &str) -> Result<Vec<Value>, String> {
    let text = git(repo, &["show", &format!("{sha}:{f}")])?;
    let docs: Vec<Value> =
        serde_saphyr::from_str_multiple(&text).map_err(|e| format!("failed to unmarshal {f}: {e}"))?;
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    for d in &docs {
        if !d["kind"].is_string() || !d["apiVersion"].is_string() || !d["metadata"]["name"].is_string() {
            return Err(format!("{f}: an object needs apiVersion, kind and metadata.name"));
        }
    }
    Ok(docs)
}

fn build(state: &Cluster, repo: &Path, sha: &str, dir: &str, depth: u32) -> Result<Vec<Value>, String> {
    if depth > 8 {
        return Err(format!("{dir}: kustomizations nest more than 8 deep"));
    }
    let kustomization = KUSTOMIZATION
        .iter()
        .map(|n| join(dir, n))
        .find_map(|f| git(repo, &["show", &format!("{sha}:{f}")]).ok().map(|t| (f, t)));
    let Some((kfile, text)) = kustomization else {
        let mut args = vec!["ls-tree", "-r", "--name-only", sha];
        if !dir.is_empty() && dir != "." {
            args.extend(["--", dir]);
        }
        let mut out = Vec::new();
        for f in git(repo, &args)?
            .lines()
            .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
        {
            out.extend(objects_of(repo, sha, f)?);
        }
        return Ok(out);
    };
    let k: Value = serde_saphyr::from_str(&text).map_err(|e| format!("failed to unmarshal {kfile}: {e}"))?;
    let mut out = Vec::new();
    for r in k["resources"].as_array().into_iter().flatten() {
        let Some(r) = r.as_str() else { continue };
        if r.contains("://") || r.starts_with("github.com/") {
            return Err(format!("{kfile}: remote resource {r} is not simulated"));
        }
        let p = join(dir, r);
        let kind = git(repo, &["cat-file", "-t", &format!("{sha}:{p}")])
            .map_err(|_| format!("{kfile}: accumulating resources: {r}: no such file or directory"))?;
        if kind.trim() == "tree" {
            out.extend(build(state, repo, sha, &p, depth + 1)?);
        } else {
            out.extend(objects_of(repo, sha, &p)?);
        }
    }
    if let Some(ns) = k["namespace"].as_str() {
        for o in &mut out {
            if state.kind_of(o).is_none_or(|kind| kind.namespaced) {
                o["metadata"]["namespace"] = Value::from(ns);
            }
        }
    }
    Ok(out)
}

type ObjKey = (String, String, String, String);

fn key_of(o: &Value) -> ObjKey {
    (
        o["apiVersion"].as_str().unwrap_or_default().to_owned(),
        o["kind"].as_str().unwrap_or_default().to_owned(),
        meta(o, "namespace").to_owned(),
        meta(o, "name").to_owned(),
    )
}

/// Applies the objects (labelled as the controller's own), prunes what the
/// app applied before and no longer has when `prune`; the error, if any,
/// and what was left unpruned.
fn apply_all(
    state: &Cluster,
    objects: &mut [Value],
    namespace: &str,
    labels: &BTreeMap<&str, String>,
    manager: &str,
    previous: &[ObjKey],
    prune: bool,
) -> (Option<String>, Vec<ObjKey>) {
    let mut errors = Vec::new();
    for o in objects.iter_mut() {
        if o["metadata"]["namespace"].is_null() && state.kind_of(o).is_some_and(|k| k.namespaced) {
            o["metadata"]["namespace"] = Value::from(namespace);
        }
        for (k, v) in labels {
            o["metadata"]["labels"][*k] = Value::from(v.clone());
        }
        if let Err(e) = state.apply_object(o.clone(), manager) {
            errors.push(e);
        }
    }
    let now: Vec<ObjKey> = objects.iter().map(key_of).collect();
    let mut unpruned = Vec::new();
    for gone in previous.iter().filter(|k| !now.contains(k)) {
        if prune {
            state.delete_object(&gone.0, &gone.1, &gone.2, &gone.3);
        } else {
            unpruned.push(gone.clone());
        }
    }
    let error =
        (!errors.is_empty()).then(|| format!("one or more objects failed to apply: {}", errors.join("; ")));
    (error, unpruned)
}

/// Health of one live object: (status, message).
/// `pods` is read from the store once per pass, on first need.
fn health(state: &Cluster, pods: &std::cell::OnceCell<Vec<Value>>, k: &ObjKey) -> (&'static str, String) {
    let Some(live) = state.get_object(&k.0, &k.1, &k.2, &k.3) else {
        return ("Missing", format!("{} {} does not exist", k.1, k.3));
    };
    match k.1.as_str() {
        "Deployment" => {
            let selector = live["spec"]["selector"]["matchLabels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let pods = pods.get_or_init(|| state.snapshot("", "pods"));
            let crashing = pods.iter().find_map(|p| {
                if meta(p, "namespace") != k.2
                    || !selector.iter().all(|(l, v)| &p["metadata"]["labels"][l] == v)
                {
                    return None;
                }
                p["status"]["containerStatuses"].as_array()?.iter().find_map(|c| {
                    let reason = c["state"]["waiting"]["reason"].as_str()?;
                    matches!(reason, "CrashLoopBackOff" | "ImagePullBackOff" | "ErrImagePull").then(|| {
                        format!(
                            "pod {} container {}: {reason}",
                            meta(p, "name"),
                            c["name"].as_str().unwrap_or_default()
                        )
                    })
                })
            });
            if let Some(why) = crashing {
                return ("Degraded", why);
            }
            let want = live["spec"]["replicas"].as_u64().unwrap_or(1);
            let s = &live["status"];
            if s["observedGeneration"] == live["metadata"]["generation"]
                && s["updatedReplicas"].as_u64().unwrap_or(0) >= want
                && s["availableReplicas"].as_u64().unwrap_or(0) >= want
            {
                ("Healthy", String::new())
            } else {
                (
                    "Progressing",
                    format!("Waiting for rollout of deployment {} to finish", k.3),
                )
            }
        }
        "InferenceService" => {
            let ready = live["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            if ready {
                ("Healthy", String::new())
            } else {
                ("Progressing", format!("InferenceService {} is not Ready", k.3))
            }
        }
        _ => ("Healthy", String::new()),
    }
}

fn worst<'a>(all: impl Iterator<Item = &'a str>) -> &'a str {
    let rank = |s: &str| match s {
        "Degraded" => 3,
        "Missing" => 2,
        "Progressing" => 1,
        _ => 0,
    };
    all.max_by_key(|s| rank(s)).unwrap_or("Healthy")
}

fn set_status_if_changed(
    state: &Cluster,
    group: &str,
    plural: &str,
    obj: &Value,
    mut status: Value,
    stamp: &str,
) {
    // Time stamps alone do not make a change.
    let mut old = obj["status"].clone();
    if let Some(o) = old.as_object_mut() {
        o.remove(stamp);
    }
    if old == status {
        return;
    }
    status[stamp] = Value::from(now());
    state.set_status(group, plural, meta(obj, "namespace"), meta(obj, "name"), status);
}

fn publish_application(state: &Cluster, app: &Value, status: Value) {
    set_status_if_changed(state, "argoproj.io", "applications", app, status, "reconciledAt");
}

fn publish_kustomization(state: &Cluster, k: &Value, status: Value) {
    set_status_if_changed(
        state,
        "kustomize.toolkit.fluxcd.io",
        "kustomizations",
        k,
        status,
        "lastHandledReconcileAt",
    );
}

fn argo(state: &Cluster, app: &Value, memory: &mut HashMap<String, Synced>) {
    let (ns, name) = (meta(app, "namespace"), meta(app, "name"));
    let src = &app["spec"]["source"];
    let url = src["repoURL"].as_str().unwrap_or_default();
    let path = src["path"].as_str().unwrap_or(".");
    let dest = app["spec"]["destination"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let prune = app["spec"]["syncPolicy"]["automated"]["prune"] == true;
    let mem = memory.entry(format!("argo/{ns}/{name}")).or_default();
    let sha = match resolve(state, url, src["targetRevision"].as_str().unwrap_or("HEAD")) {
        Ok(s) => s,
        Err(e) => {
            let status = json!({"sync": {"status": "Unknown"}, "health": {"status": "Unknown"},
                "conditions": [{"type": "ComparisonError", "message": e}]});
            publish_application(state, app, status);
            return;
        }
    };
    // Without an automated sync policy nothing is applied until someone
    // asks (`operation.sync`, as `argocd app sync` writes it).
    let automated = app["spec"]["syncPolicy"]["automated"].is_object();
    let requested = app["operation"]["sync"].is_object();
    let prune = prune || app["operation"]["sync"]["prune"] == true;
    if !automated && !requested {
        if mem.revision != sha {
            let mut status = if app["status"].is_object() {
                app["status"].clone()
            } else {
                json!({"health": {"status": "Missing"}})
            };
            status["sync"] = json!({"status": "OutOfSync", "revision": sha, "comparedTo": {"source": src}});
            publish_application(state, app, status);
            return;
        }
    } else if requested {
        let mut done = app.clone();
        if let Some(m) = done.as_object_mut() {
            m.remove("operation");
        }
        state.update_object(done);
    }
    let unpruned: Vec<ObjKey>;
    // A requested sync applies whatever the revision; a failed one is retried.
    if requested || mem.revision != sha || mem.error.is_some() {
        match manifests(state, url, &sha, path) {
            Err(e) => {
                mem.revision = sha.clone();
                mem.error = Some(e.clone());
                let status = json!({"sync": {"status": "Unknown", "revision": sha}, "health": {"status": "Unknown"},
                    "conditions": [{"type": "ComparisonError", "message": format!("Failed to load target state: failed to generate manifest for source 1 of 1: {e}")}]});
                publish_application(state, app, status);
                return;
            }
            Ok(mut objects) => {
                let labels = BTreeMap::from([("argocd.argoproj.io/instance", name.to_owned())]);
                let (error, left) = apply_all(
                    state,
                    &mut objects,
                    dest,
                    &labels,
                    "argocd-controller",
                    &mem.objects,
                    prune,
                );
                unpruned = left;
                mem.revision = sha.clone();
                mem.error = error;
                mem.objects = objects
                    .iter()
                    .map(key_of)
                    .chain(unpruned.iter().cloned())
                    .collect();
            }
        }
    } else {
        let live = &app["status"]["resources"];
        unpruned = live
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["requiresPruning"] == true)
            .map(|r| {
                (
                    format!(
                        "{}{}",
                        r["group"].as_str().map(|g| format!("{g}/")).unwrap_or_default(),
                        r["version"].as_str().unwrap_or_default()
                    ),
                    r["kind"].as_str().unwrap_or_default().to_owned(),
                    r["namespace"].as_str().unwrap_or_default().to_owned(),
                    r["name"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
    }
    let pods = std::cell::OnceCell::new();
    let mut resources = Vec::new();
    let mut healths = Vec::new();
    for k in &mem.objects {
        let (h, msg) = health(state, &pods, k);
        let (group, version) = k.0.rsplit_once('/').unwrap_or(("", &k.0));
        let mut r = json!({"group": group, "version": version, "kind": k.1, "namespace": k.2, "name": k.3,
            "status": if unpruned.contains(k) { "OutOfSync" } else { "Synced" }, "health": {"status": h}});
        if group.is_empty()
            && let Some(m) = r.as_object_mut()
        {
            m.remove("group");
        }
        if !msg.is_empty() {
            r["health"]["message"] = Value::from(msg);
        }
        if unpruned.contains(k) {
            r["requiresPruning"] = Value::Bool(true);
        } else {
            healths.push(h);
        }
        resources.push(r);
    }
    let app_health = worst(healths.iter().copied());
    let (sync, phase, message) = match (&mem.error, unpruned.is_empty()) {
        (Some(e), _) => ("OutOfSync", "Failed", e.clone()),
        (None, true) => (
            "Synced",
            "Succeeded",
            "successfully synced (all tasks run)".to_owned(),
        ),
        (None, false) => (
            "OutOfSync",
            "Succeeded",
            "successfully synced (all tasks run); pruning skipped".to_owned(),
        ),
    };
    let mut health = json!({"status": app_health});
    if let Some(m) = resources
        .iter()
        .find(|r| r["health"]["status"] == app_health)
        .and_then(|r| r["health"]["message"].as_str())
    {
        health["message"] = Value::from(m);
    }
    let status = json!({
        "sync": {"status": sync, "revision": sha, "comparedTo": {"source": src, "destination": app["spec"]["destination"]}},
        "health": health,
        "operationState": {"phase": phase, "message": message, "syncResult": {"revision": sha}},
        "resources": resources,
        "sourceType": "Directory",
    });
    publish_application(state, app, status);
}

fn git_repository(state: &Cluster, repo: &Value) {
    let url = repo["spec"]["url"].as_str().unwrap_or_default();
    let branch = repo["spec"]["ref"]["branch"].as_str().unwrap_or("master");
    let status = match resolve(state, url, branch) {
        Ok(sha) => json!({"artifact": {"revision": format!("{branch}@sha1:{sha}"), "url": url},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded", "message": format!("stored artifact for revision '{branch}@sha1:{sha}'")}],
            "observedGeneration": repo["metadata"]["generation"]}),
        Err(e) => {
            json!({"conditions": [{"type": "Ready", "status": "False", "reason": "GitOperationFailed", "message": e}],
            "observedGeneration": repo["metadata"]["generation"]})
        }
    };
    set_status_if_changed(
        state,
        "source.toolkit.fluxcd.io",
        "gitrepositories",
        repo,
        status,
        "lastHandledReconcileAt",
    );
}

fn flux(state: &Cluster, k: &Value, repos: &[Value], memory: &mut HashMap<String, Synced>) {
    let (ns, name) = (meta(k, "namespace"), meta(k, "name"));
    if k["spec"]["suspend"] == true {
        return; // a suspended Kustomization is not reconciled
    }
    let src_name = k["spec"]["sourceRef"]["name"].as_str().unwrap_or_default();
    let src_ns = k["spec"]["sourceRef"]["namespace"].as_str().unwrap_or(ns);
    let generation = k["metadata"]["generation"].clone();
    let fail = |reason: &str, message: String, attempted: &str, applied: &Value| {
        json!({"conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": message}],
            "lastAttemptedRevision": attempted, "lastAppliedRevision": applied, "observedGeneration": generation})
    };
    let applied_before = k["status"]["lastAppliedRevision"].clone();
    let Some(repo) = repos
        .iter()
        .find(|r| meta(r, "name") == src_name && meta(r, "namespace") == src_ns)
    else {
        let status = fail(
            "ArtifactFailed",
            format!("Source 'GitRepository/{src_ns}/{src_name}' not found"),
            "",
            &applied_before,
        );
        publish_kustomization(state, k, status);
        return;
    };
    let url = repo["spec"]["url"].as_str().unwrap_or_default();
    let branch = repo["spec"]["ref"]["branch"].as_str().unwrap_or("master");
    let Ok(sha) = resolve(state, url, branch) else {
        return;
    };
    let revision = format!("{branch}@sha1:{sha}");
    let mem = memory.entry(format!("flux/{ns}/{name}")).or_default();
    if mem.revision != sha || mem.error.is_some() {
        let path = k["spec"]["path"].as_str().unwrap_or(".");
        match manifests(state, url, &sha, path) {
            Err(e) => {
                mem.revision = sha.clone();
                mem.error = Some(e.clone());
                let status = fail("BuildFailed", e, &revision, &applied_before);
                publish_kustomization(state, k, status);
                return;
            }
            Ok(mut objects) => {
                let target = k["spec"]["targetNamespace"].as_str().unwrap_or(ns);
                if k["spec"]["targetNamespace"].is_string() {
                    for o in &mut objects {
                        if state.kind_of(o).is_some_and(|kind| kind.namespaced) {
                            o["metadata"]["namespace"] = Value::from(target);
                        }
                    }
                }
                let labels = BTreeMap::from([
                    ("kustomize.toolkit.fluxcd.io/name", name.to_owned()),
                    ("kustomize.toolkit.fluxcd.io/namespace", ns.to_owned()),
                ]);
                let prune = k["spec"]["prune"] == true;
                let (error, left) = apply_all(
                    state,
                    &mut objects,
                    target,
                    &labels,
                    "kustomize-controller",
                    &mem.objects,
                    prune,
                );
                mem.revision = sha.clone();
                mem.error = error;
                mem.objects = objects.iter().map(key_of).chain(left).collect();
            }
        }
    }
    if let Some(e) = &mem.error {
        let status = fail("ReconciliationFailed", e.clone(), &revision, &applied_before);
        publish_kustomization(state, k, status);
        return;
    }
    let inventory: Vec<Value> = mem
        .objects
        .iter()
        .map(|o| {
            let (group, version) = o.0.rsplit_once('/').unwrap_or(("", &o.0));
            json!({"id": format!("{}_{}_{}_{}", o.2, o.3, group, o.1), "v": version})
        })
        .collect();
    let mut status = json!({"lastAttemptedRevision": revision, "observedGeneration": generation, "inventory": {"entries": inventory}});
    let pods = std::cell::OnceCell::new();
    let healths: Vec<(&str, String)> = mem.objects.iter().map(|o| health(state, &pods, o)).collect();
    let degraded = healths.iter().find(|(h, _)| *h == "Degraded");
    let waiting = k["spec"]["wait"] == true && healths.iter().any(|(h, _)| *h != "Healthy");
    if k["spec"]["wait"] == true
        && let Some((_, why)) = degraded
    {
        status["conditions"] = json!([{"type": "Ready", "status": "False", "reason": "HealthCheckFailed", "message": format!("health check failed after 0s: {why}")}]);
        status["lastAppliedRevision"] = applied_before;
    } else if waiting {
        status["conditions"] = json!([{"type": "Ready", "status": "Unknown", "reason": "Progressing", "message": "Reconciliation in progress"}]);
        status["lastAppliedRevision"] = applied_before;
    } else {
        status["conditions"] = json!([{"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded", "message": format!("Applied revision: {revision}")}]);
        status["lastAppliedRevision"] = Value::from(revision);
    }
    publish_kustomization(state, k, status);
}
