//! GitOps targets (`target.gitops`): `apply`, `shift-traffic` and
//! `rollback` change the repository the controller follows instead of the
//! cluster, then wait until Argo CD or Flux has synced that revision.
//!
//! - A change is made in the run's clone at the branch's tip, committed with
//!   a message naming the run, the step and the model version (plus
//!   `Rollwright-*` trailers), journaled (`gitops-commit`, before the push)
//!   and pushed. A push refused because the branch moved is retried on the
//!   new tip (fetch, redo the change, commit again); never forced. A step
//!   whose commit is already on the branch (a retry, a resume) does not
//!   commit again; a commit made before a crash and not pushed is pushed as
//!   it is when the branch has not moved.
//! - Manifests are edited in place: an object that already lives in a file
//!   under `path` (same group, kind, namespace and name) is changed there —
//!   scalar by scalar when only values change, so comments and layout stay —
//!   otherwise a new file `<kind>-<name>.yaml` is written.
//! - Compensation is one revert commit of exactly the run's commits that
//!   are not reverted yet, newest first, pushed and waited for.
//! - Sync: Argo CD `Application` (`status.sync` Synced at the pushed
//!   revision or a later one containing it, health Healthy; Degraded, a
//!   failed sync operation or an error condition fail the step with the
//!   controller's message) or Flux `Kustomization` (`Ready` and
//!   `lastAppliedRevision`; `Ready=False` at the revision fails).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::target::{Controller, GitOps};
use rollwright_engine::exec::{Progress, StepContext, StepError};
use rollwright_engine::registry::BuildContext;
use serde_json::{Map, Value, json};

use crate::cluster::{Cluster, ObjRef};
use crate::git::{Credentials, Git, GitError, short};

/// Pushes tried before giving up on a branch that keeps moving.
const PUSH_ATTEMPTS: u32 = 8;

/// A GitOps-managed target of a run.
#[derive(Debug)]
pub struct GitOpsTarget {
    /// The spec's `target.gitops`.
    pub config: GitOps,
    /// The run's clone (`<run dir>/gitops`).
    work: PathBuf,
    run: String,
    model: String,
    namespace: String,
    spec_dir: PathBuf,
    cluster: Arc<Cluster>,
}

impl From<GitError> for StepError {
    fn from(e: GitError) -> Self {
        match e {
            GitError::Moved { .. } => StepError::transient(e.to_string()),
            GitError::Failed { .. } | GitError::Spawn(_) => StepError::transient(e.to_string()),
            GitError::Rejected { .. } | GitError::Conflict { .. } | GitError::Auth { .. } => {
                StepError::failed(e.to_string())
            }
        }
    }
}

impl GitOpsTarget {
    /// The run's GitOps target, when `target.gitops` is set.
    ///
    /// # Errors
    /// The cluster cannot be reached (it is read for the sync status).
    pub fn of(cx: &BuildContext) -> Result<Option<Arc<GitOpsTarget>>, String> {
        let Some(config) = crate::target::gitops(cx) else {
            return Ok(None);
        };
        let cluster = Cluster::of(cx)?;
        let model = cx.model.as_ref().map_or_else(String::new, |(_, name, version)| {
            format!("{name} version {version}")
        });
        Ok(Some(Arc::new(GitOpsTarget {
            namespace: cluster.namespace.clone(),
            config,
            work: cx.run_dir.join("gitops"),
            run: cx.run_id.clone(),
            model,
            spec_dir: cx.spec_dir.clone(),
            cluster,
        })))
    }

    async fn credentials(&self) -> Result<Credentials, StepError> {
        let mut out = Credentials::default();
        let Some(c) = &self.config.credentials else {
            return Ok(out);
        };
        // A repository on this machine needs none (e.g. the sim's, standing
        // in for the remote under `run --sim`).
        if crate::git::is_local(&self.config.repo) {
            return Ok(out);
        }
        if let Some(t) = &c.token {
            let token = crate::cluster::resolve_secret(Some(&self.cluster), t, &self.spec_dir).await?;
            let user = c.username.clone().unwrap_or_else(|| "x-access-token".into());
            out.token = Some((user, token));
        }
        if let Some(k) = &c.ssh_key {
            if let Some(file) = k.get("file").and_then(Value::as_str) {
                out.ssh_key = Some(self.spec_dir.join(file));
            } else {
                let key = crate::cluster::resolve_secret(Some(&self.cluster), k, &self.spec_dir).await?;
                // Written for this operation only (0600), removed when the
                // git handle is dropped.
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = self
                    .work
                    .with_file_name(format!("gitops-ssh-key-{}-{n}", std::process::id()));
                write_private(&path, key.expose())
                    .map_err(|e| StepError::failed(format!("cannot write the SSH key: {e}")))?;
                out.ssh_key = Some(path);
                out.temporary_key = true;
            }
        }
        Ok(out)
    }

    /// The run's clone, without credentials (local reads).
    fn local(&self) -> Git {
        Git::new(
            self.work.clone(),
            &self.config.repo,
            &self.config.branch,
            self.config.author.as_deref(),
            &self.spec_dir,
        )
    }

    /// The run's clone, with credentials for the remote.
    async fn git(&self) -> Result<Git, StepError> {
        let mut g = self.local();
        g.set_credentials(&self.credentials().await?);
        Ok(g)
    }

    fn message(&self, cx: &StepContext, action: &str, summary: &str) -> String {
        let model = if self.model.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.model)
        };
        format!(
            "rollwright: {summary}{model}\n\nRun {run}, step {step}.\n\nRollwright-Run: {run}\nRollwright-Step: {step}\nRollwright-Action: {action}\n",
            run = self.run,
            step = cx.owner,
        )
    }

    fn kept_moving(&self) -> StepError {
        StepError::transient(format!(
            "branch `{}` kept moving: {PUSH_ATTEMPTS} pushes were refused",
            self.config.branch
        ))
    }

    /// Makes `edit` in the repository (at `path`) as one pushed commit of
    /// this step; the revision to wait for (the branch's tip when nothing
    /// needed to change).
    ///
    /// # Errors
    /// The edit failed, the remote refused the push, or the branch kept moving.
    pub async fn change(
        &self,
        cx: &StepContext,
        action: &str,
        summary: &str,
        edit: impl Fn(&Path) -> Result<(), String>,
    ) -> Result<String, StepError> {
        let git = self.git().await?;
        let _held = git.lock().await;
        for attempt in 0..PUSH_ATTEMPTS {
            fetch_after_backoff(&git, attempt).await?;
            // Already on the branch (a retry after the push, a resume)?
            if let Some(c) = git
                .run_commits(&self.run)
                .await?
                .into_iter()
                .find(|c| c.step == cx.owner && c.action == action)
            {
                return Ok(c.sha);
            }
            let tip = git.remote_tip().await?;
            // Committed before a crash, not pushed, and the branch has not moved.
            if let Some(sha) = cx
                .recalled("gitops-commit")
                .and_then(|r| r["sha"].as_str().map(str::to_owned))
                && git.parent_of(&sha).await.as_deref() == Some(tip.as_str())
            {
                git.checkout(&sha).await?;
                if pushed(&git).await? {
                    return Ok(sha);
                }
                continue;
            }
            git.reset_to_remote().await?;
            let root = git.dir.join(&self.config.path);
            edit(&root).map_err(StepError::failed)?;
            let Some(sha) = git
                .commit(&self.config.path, &self.message(cx, action, summary))
                .await?
            else {
                return Ok(tip);
            };
            cx.remember(
                "gitops-commit",
                json!({"sha": sha, "parent": tip, "action": action}),
            )?;
            if pushed(&git).await? {
                return Ok(sha);
            }
        }
        Err(self.kept_moving())
    }

    /// Reverts the run's commits not reverted yet (those of `steps` only,
    /// when given), newest first, as one pushed commit; its sha, or `None`
    /// when there was nothing left to revert.
    ///
    /// # Errors
    /// The revert conflicts with later commits, or the push was refused.
    pub async fn revert_run(
        &self,
        cx: &StepContext,
        steps: Option<&[String]>,
    ) -> Result<Option<String>, StepError> {
        // A run that never committed has nothing to revert: no need to reach
        // the remote (which may be why it failed).
        if !cx.all_records().iter().any(|m| m.key == "gitops-commit") {
            return Ok(None);
        }
        let git = self.git().await?;
        let _held = git.lock().await;
        for attempt in 0..PUSH_ATTEMPTS {
            fetch_after_backoff(&git, attempt).await?;
            let commits = git.run_commits(&self.run).await?;
            let reverted: Vec<&String> = commits.iter().flat_map(|c| c.reverts.iter()).collect();
            let todo: Vec<String> = commits
                .iter()
                .filter(|c| c.action != "revert" && !reverted.contains(&&c.sha))
                .filter(|c| steps.is_none_or(|s| s.contains(&c.step) || c.action == "shift-traffic"))
                .map(|c| c.sha.clone())
                .collect();
            if todo.is_empty() {
                return Ok(None);
            }
            git.reset_to_remote().await?;
            git.revert(&todo).await?;
            let list = todo.iter().map(|s| short(s)).collect::<Vec<_>>().join(", ");
            let mut message = self.message(
                cx,
                "revert",
                &format!(
                    "revert run {} ({} commit{}: {list})",
                    self.run,
                    todo.len(),
                    if todo.len() == 1 { "" } else { "s" }
                ),
            );
            for s in &todo {
                message.push_str(&format!("Rollwright-Reverts: {s}\n"));
            }
            let Some(sha) = git.commit(&self.config.path, &message).await? else {
                // The reverse is already in place (someone reverted by hand).
                return Ok(None);
            };
            // A compensation goes on without its journal (rolling back
            // matters more); the revert's trailers keep it from happening twice.
            let _ = cx.remember(
                "gitops-commit",
                json!({"sha": sha, "action": "revert", "reverts": todo}),
            );
            if pushed(&git).await? {
                let _ = cx.remember("gitops-revert", json!({"sha": sha, "reverts": todo}));
                // For the progress stream and the report, like a direct restore.
                crate::restore::report(
                    cx,
                    &[format!(
                        "reverted {} commit{} of this run ({list}) as {} on {}",
                        todo.len(),
                        if todo.len() == 1 { "" } else { "s" },
                        short(&sha),
                        self.config.branch
                    )],
                );
                return Ok(Some(sha));
            }
        }
        Err(self.kept_moving())
    }

    /// The step's change, committed and pushed once (see [`Self::change`]),
    /// then waited for until synced.
    ///
    /// # Errors
    /// As [`Self::change`] and [`Self::synced`].
    pub async fn commit_and_sync(
        &self,
        cx: &StepContext,
        action: &str,
        summary: &str,
        edit: impl Fn(&Path) -> Result<(), String>,
    ) -> Result<Progress, StepError> {
        let pushed = cx
            .recalled("gitops-pushed")
            .and_then(|r| r["sha"].as_str().map(str::to_owned));
        let rev = match pushed {
            Some(sha) => sha,
            None => {
                let sha = self.change(cx, action, summary, edit).await?;
                cx.remember("gitops-pushed", json!({"sha": sha, "action": action}))?;
                sha
            }
        };
        self.synced(&rev).await
    }

    /// Reverts the run's commits (see [`Self::revert_run`]) once, then
    /// waits until the controller has synced the revert.
    ///
    /// # Errors
    /// As [`Self::revert_run`] and [`Self::synced`].
    pub async fn revert_and_sync(
        &self,
        cx: &StepContext,
        steps: Option<&[String]>,
    ) -> Result<Progress, StepError> {
        if cx.recalled("gitops-revert").is_none() {
            self.revert_run(cx, steps).await?;
        }
        self.revert_settled(cx).await
    }

    /// Waits for the revert this context pushed, if any.
    ///
    /// # Errors
    /// As [`Self::synced`].
    pub async fn revert_settled(&self, cx: &StepContext) -> Result<Progress, StepError> {
        let pushed = cx
            .recalled("gitops-revert")
            .and_then(|r| r["sha"].as_str().map(str::to_owned));
        match pushed {
            Some(sha) => self.synced(&sha).await,
            None => Ok(Progress::Done { outputs: Map::new() }),
        }
    }

    /// The target namespace (objects without one go there).
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether the controller has synced `revision` (or a later one holding
    /// it) and found it healthy.
    ///
    /// # Errors
    /// The controller reports a failed sync or a degraded application.
    pub async fn synced(&self, revision: &str) -> Result<Progress, StepError> {
        let ns = self.config.app_namespace();
        let (api_version, kind, what) = self.config.sync_kind();
        let r = ObjRef::new(api_version, kind, ns, &self.config.app);
        let Some(app) = self.cluster.get(&r).await? else {
            return Err(StepError::failed(format!(
                "{what} `{}` does not exist in namespace `{ns}`",
                self.config.app
            )));
        };
        let name = format!("{what} `{}`", self.config.app);
        let status = &app["status"];
        let wait = |reason: String| {
            Ok(Progress::Wait {
                after: Duration::from_millis(300),
                reason,
            })
        };
        match self.config.controller {
            Controller::Argocd => {
                let at = status["sync"]["revision"].as_str().unwrap_or_default();
                let sync = status["sync"]["status"].as_str().unwrap_or("Unknown");
                let automated = app["spec"]["syncPolicy"]["automated"].is_object();
                if !automated && sync == "OutOfSync" && app["operation"].is_null() {
                    // Manual sync: someone has to press the button; the step's
                    // timeout bounds the wait.
                    return wait(format!(
                        "someone to sync {name} (no automated sync policy): OutOfSync at {}, waiting for {}",
                        short(at),
                        short(revision)
                    ));
                }
                if !self.holds(at, revision).await {
                    return wait(format!("{name} to sync {} (at {})", short(revision), short(at)));
                }
                let op = &status["operationState"];
                if matches!(op["phase"].as_str(), Some("Failed" | "Error")) {
                    return Err(StepError::failed(format!(
                        "{name} failed to sync {}: {}",
                        short(revision),
                        op["message"].as_str().unwrap_or("no message")
                    )));
                }
                if let Some(c) = status["conditions"].as_array().and_then(|cs| {
                    cs.iter()
                        .find(|c| c["type"].as_str().is_some_and(|t| t.ends_with("Error")))
                }) {
                    return Err(StepError::failed(format!(
                        "{name}: {}: {}",
                        c["type"].as_str().unwrap_or_default(),
                        c["message"].as_str().unwrap_or_default()
                    )));
                }
                let health = status["health"]["status"].as_str().unwrap_or("Unknown");
                if health == "Degraded" {
                    return Err(StepError::failed(format!(
                        "{name} is Degraded at {}: {}",
                        short(revision),
                        degraded_message(status)
                    )));
                }
                if sync == "OutOfSync"
                    && op["phase"] == "Succeeded"
                    && let Some(prune) = needs_pruning(status)
                {
                    return Err(StepError::failed(format!(
                        "{name} stays OutOfSync at {}: {prune} must be pruned, and the Application does not prune (set `syncPolicy.automated.prune: true`)",
                        short(revision)
                    )));
                }
                if sync == "Synced" && health == "Healthy" {
                    return Ok(done(revision, at));
                }
                wait(format!("{name}: {sync}, {health} at {}", short(at)))
            }
            Controller::Flux => {
                let ready = status["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let applied = flux_sha(status["lastAppliedRevision"].as_str().unwrap_or_default());
                let attempted = flux_sha(status["lastAttemptedRevision"].as_str().unwrap_or_default());
                let observed = app["metadata"]["generation"] == status["observedGeneration"];
                if app["spec"]["suspend"] == true {
                    return wait(format!(
                        "{name} is suspended: waiting for it to be resumed to apply {}",
                        short(revision)
                    ));
                }
                if ready["status"] == "False"
                    && ready["reason"] != "Progressing"
                    && self.holds(attempted, revision).await
                {
                    return Err(StepError::failed(format!(
                        "{name} failed at {}: {}: {}",
                        short(revision),
                        ready["reason"].as_str().unwrap_or_default(),
                        ready["message"].as_str().unwrap_or_default()
                    )));
                }
                if ready["status"] == "True" && observed && self.holds(applied, revision).await {
                    return Ok(done(revision, applied));
                }
                wait(format!(
                    "{name} to apply {} (applied {})",
                    short(revision),
                    short(applied)
                ))
            }
        }
    }

    /// Whether the synced revision `at` is `revision` or a later one holding it.
    async fn holds(&self, at: &str, revision: &str) -> bool {
        if at.is_empty() {
            return false;
        }
        if at == revision {
            return true;
        }
        if self.local().contains(at, revision).await {
            return true;
        }
        // A newer revision than the last fetch: fetch once and look again.
        let Ok(git) = self.git().await else {
            return false;
        };
        let _held = git.lock().await;
        git.fetch().await.is_ok() && git.contains(at, revision).await
    }
}

/// Which GitOps controller manages a live object, from the labels and
/// annotations Argo CD and Flux put on what they apply.
#[must_use]
pub fn managed_by(obj: &Value) -> Option<String> {
    let labels = &obj["metadata"]["labels"];
    if let Some(app) = labels["argocd.argoproj.io/instance"].as_str() {
        return Some(format!("Argo CD Application `{app}`"));
    }
    if let Some(id) = obj["metadata"]["annotations"]["argocd.argoproj.io/tracking-id"].as_str() {
        let app = id.split(':').next().unwrap_or(id);
        return Some(format!("Argo CD Application `{app}`"));
    }
    labels["kustomize.toolkit.fluxcd.io/name"].as_str().map(|k| {
        let ns = labels["kustomize.toolkit.fluxcd.io/namespace"]
            .as_str()
            .unwrap_or("flux-system");
        format!("Flux Kustomization `{ns}/{k}`")
    })
}

/// Fetches the branch; after a refused push (attempt > 0) first waits
/// 100 ms, 200 ms, … up to 1.6 s.
async fn fetch_after_backoff(git: &Git, attempt: u32) -> Result<(), StepError> {
    if attempt > 0 {
        tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
    }
    git.fetch().await.map_err(StepError::from)
}

/// Pushes HEAD: whether it went through (`false`: the branch moved under
/// it, fetch and try again).
async fn pushed(git: &Git) -> Result<bool, StepError> {
    match git.push().await {
        Ok(()) => Ok(true),
        Err(GitError::Moved { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn done(revision: &str, at: &str) -> Progress {
    let mut outputs = Map::new();
    outputs.insert("commit".into(), json!(revision));
    outputs.insert("synced-revision".into(), json!(at));
    Progress::Done { outputs }
}

/// `main@sha1:abc…` (Flux ≥ 2), `main/abc…` (older) or a bare sha.
fn flux_sha(rev: &str) -> &str {
    rev.rsplit([':', '/']).next().unwrap_or_default()
}

fn degraded_message(status: &Value) -> String {
    let mut parts: Vec<String> = status["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["health"]["status"] == "Degraded")
        .map(|r| {
            format!(
                "{} {}: {}",
                r["kind"].as_str().unwrap_or_default(),
                r["name"].as_str().unwrap_or_default(),
                r["health"]["message"].as_str().unwrap_or("Degraded")
            )
        })
        .collect();
    if parts.is_empty()
        && let Some(m) = status["health"]["message"].as_str()
    {
        parts.push(m.to_owned());
    }
    if parts.is_empty() {
        "no message".into()
    } else {
        parts.join("; ")
    }
}

fn needs_pruning(status: &Value) -> Option<String> {
    let list: Vec<String> = status["resources"]
        .as_array()?
        .iter()
        .filter(|r| r["requiresPruning"] == true)
        .map(|r| {
            format!(
                "{} {}",
                r["kind"].as_str().unwrap_or_default(),
                r["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    (!list.is_empty()).then(|| list.join(", "))
}

/// Writes `text` to `path`, readable by its owner only (a key).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(path)?;
    f.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        f.write_all(b"\n")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Editing manifests in the repository.

/// One YAML document of a file under the target's path.
#[derive(Debug, Clone)]
pub struct RepoDoc {
    /// The file.
    pub file: PathBuf,
    /// Its lines `[start, end)` (0-based; separators excluded).
    pub lines: (usize, usize),
    /// The document.
    pub value: Value,
}

/// Every object document in the YAML files under `root` (recursively).
///
/// # Errors
/// A file that cannot be read or parsed (located).
pub fn docs_in(root: &Path) -> Result<Vec<RepoDoc>, String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != ".git") {
                    stack.push(p);
                }
                continue;
            }
            if !p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                continue;
            }
            let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            for (lines, chunk) in chunks(&text) {
                if chunk
                    .lines()
                    .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
                {
                    continue;
                }
                let doc = rollwright_engine::yaml::load_str(&chunk, &rollwright_engine::Limits::default())
                    .map_err(|d| {
                        let d = &d[0];
                        format!(
                            "{}:{}:{}: {}",
                            p.display(),
                            d.span.start.line as usize + lines.0,
                            d.span.start.col,
                            d.message
                        )
                    })?;
                if doc.value.is_object() {
                    out.push(RepoDoc {
                        file: p.clone(),
                        lines,
                        value: doc.value,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The documents of a file: line ranges and text, split at `---` lines.
fn chunks(text: &str) -> Vec<((usize, usize), String)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chunk = String::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            out.push(((start, i), std::mem::take(&mut chunk)));
            start = i + 1;
        } else {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    out.push(((start, lines.len()), chunk));
    out
}

/// Whether a document is the object `r` names (any version of its group;
/// a document without a namespace is in `namespace`).
fn same_object(doc: &Value, r: &ObjRef, namespace: &str) -> bool {
    let group = |av: &str| av.rsplit_once('/').map_or("", |(g, _)| g).to_owned();
    ObjRef::of(doc, namespace).is_some_and(|d| {
        group(&d.api_version) == group(&r.api_version)
            && d.kind == r.kind
            && d.name == r.name
            && d.namespace == r.namespace
    })
}

/// Finds the document holding the object `r` names.
///
/// # Errors
/// The files cannot be read.
pub fn find_doc(root: &Path, r: &ObjRef, namespace: &str) -> Result<Option<RepoDoc>, String> {
    Ok(docs_in(root)?
        .into_iter()
        .find(|d| same_object(&d.value, r, namespace)))
}

/// Writes `object` into the repository: in place of the document that holds
/// it, else as a new file. Nothing is written when it is already there.
///
/// # Errors
/// The files cannot be read or written.
pub fn upsert(root: &Path, object: &Value, namespace: &str) -> Result<(), String> {
    let r = ObjRef::of(object, namespace).ok_or("an object needs apiVersion, kind and metadata.name")?;
    match find_doc(root, &r, namespace)? {
        Some(doc) => {
            // Keep the file's own habit about namespaces.
            let mut want = object.clone();
            if doc.value["metadata"]["namespace"].is_null()
                && want["metadata"]["namespace"].as_str() == Some(namespace)
                && let Some(m) = want["metadata"].as_object_mut()
            {
                m.remove("namespace");
            }
            rewrite(&doc, &want)
        }
        None => {
            std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
            let name = format!(
                "{}-{}.yaml",
                object["kind"].as_str().unwrap_or("object").to_lowercase(),
                object["metadata"]["name"].as_str().unwrap_or("unnamed")
            );
            let text = serde_saphyr::to_string(object).map_err(|e| e.to_string())?;
            let path = root.join(&name);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            add_to_kustomization(root, &name)
        }
    }
}

/// When `root` holds a kustomization, lists `file` in its `resources`
/// (kustomize — and so Flux, and Argo CD on such a path — builds only
/// what is listed): a line added to a block list, in place; otherwise the
/// file is re-serialised with it.
///
/// # Errors
/// The kustomization cannot be read, parsed or written.
pub fn add_to_kustomization(root: &Path, file: &str) -> Result<(), String> {
    let Some(k) = ["kustomization.yaml", "kustomization.yml", "Kustomization"]
        .iter()
        .map(|n| root.join(n))
        .find(|p| p.is_file())
    else {
        return Ok(());
    };
    let shown = k.display().to_string();
    let text = std::fs::read_to_string(&k).map_err(|e| format!("{shown}: {e}"))?;
    let limits = rollwright_engine::Limits::default();
    let parse = |t: &str| {
        rollwright_engine::yaml::load_str(t, &limits)
            .map(|d| d.value)
            .map_err(|d| format!("{shown}:{}: {}", d[0].span.start, d[0].message))
    };
    let listed = |v: &Value| {
        v["resources"].as_array().is_some_and(|rs| {
            rs.iter()
                .any(|r| r.as_str().map(|r| r.trim_start_matches("./")) == Some(file))
        })
    };
    let mut value = parse(&text)?;
    if listed(&value) {
        return Ok(());
    }
    let lines: Vec<&str> = text.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.trim_end() == "resources:") {
        let mut end = i + 1;
        let mut indent = String::new();
        while let Some(l) = lines.get(end) {
            let item = l.trim_start();
            if !item.starts_with("- ") {
                break;
            }
            indent = l[..l.len() - item.len()].to_owned();
            end += 1;
        }
        let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        out.insert(end, format!("{indent}- {file}"));
        let edited = out.join("\n") + "\n";
        if parse(&edited).is_ok_and(|v| listed(&v)) {
            return std::fs::write(&k, edited).map_err(|e| format!("{shown}: {e}"));
        }
    } else if value.get("resources").is_none() {
        let sep = if text.ends_with('\n') || text.is_empty() {
            ""
        } else {
            "\n"
        };
        let edited = format!("{text}{sep}resources:\n- {file}\n");
        if parse(&edited).is_ok_and(|v| listed(&v)) {
            return std::fs::write(&k, edited).map_err(|e| format!("{shown}: {e}"));
        }
    }
    // A flow list or an unusual layout: the document, re-serialised.
    match value.get_mut("resources") {
        Some(Value::Array(rs)) => rs.push(Value::from(file)),
        _ => value["resources"] = serde_json::json!([file]),
    }
    let y = serde_saphyr::to_string(&value).map_err(|e| e.to_string())?;
    std::fs::write(&k, y).map_err(|e| format!("{shown}: {e}"))
}

/// Replaces a document with `want`: scalar by scalar when only values
/// differ (comments and layout stay), else re-serialised.
///
/// # Errors
/// The file cannot be read or written.
pub fn rewrite(doc: &RepoDoc, want: &Value) -> Result<(), String> {
    if doc.value == *want {
        return Ok(());
    }
    let text = std::fs::read_to_string(&doc.file).map_err(|e| format!("{}: {e}", doc.file.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let (a, b) = doc.lines;
    let old: String = lines[a..b].iter().map(|l| format!("{l}\n")).collect();
    let new = edit_scalars(&old, &doc.value, want).map_or_else(
        || {
            let lead: String = lines[a..b]
                .iter()
                .take_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
                .map(|l| format!("{l}\n"))
                .collect();
            serde_saphyr::to_string(want).map(|y| format!("{lead}{y}"))
        },
        Ok,
    );
    let new = new.map_err(|e| e.to_string())?;
    let mut out = String::new();
    for l in &lines[..a] {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(&new);
    if !new.ends_with('\n') {
        out.push('\n');
    }
    for l in &lines[b..] {
        out.push_str(l);
        out.push('\n');
    }
    std::fs::write(&doc.file, out).map_err(|e| format!("{}: {e}", doc.file.display()))
}

/// Pointers of scalars whose value differs, when the two values have the
/// same shape (same keys, same lengths); `None` otherwise.
fn changed_scalars(old: &Value, new: &Value, at: &str, out: &mut Vec<(String, Value)>) -> bool {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter().all(|(k, v)| {
                    b.get(k).is_some_and(|w| {
                        changed_scalars(
                            v,
                            w,
                            &format!("{at}/{}", rollwright_engine::yaml::escape_segment(k)),
                            out,
                        )
                    })
                })
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .enumerate()
                    .all(|(i, (v, w))| changed_scalars(v, w, &format!("{at}/{i}"), out))
        }
        (Value::Object(_) | Value::Array(_), _) | (_, Value::Object(_) | Value::Array(_)) => false,
        (a, b) => {
            if a != b {
                out.push((at.to_owned(), b.clone()));
            }
            true
        }
    }
}

/// The document with only its changed scalars rewritten, checked by
/// loading it again; `None` when that is not possible.
fn edit_scalars(text: &str, old: &Value, new: &Value) -> Option<String> {
    let mut changes = Vec::new();
    if !changed_scalars(old, new, "", &mut changes) {
        return None;
    }
    let doc = rollwright_engine::yaml::load_str(text, &rollwright_engine::Limits::default()).ok()?;
    let offset = |line: u32, col: u32| -> Option<usize> {
        let start: usize = text
            .split_inclusive('\n')
            .take(line.checked_sub(1)? as usize)
            .map(str::len)
            .sum();
        let rest = &text[start..];
        let byte = rest
            .char_indices()
            .nth(col.checked_sub(1)? as usize)
            .map_or(rest.len(), |(b, _)| b);
        Some(start + byte)
    };
    let mut edits = Vec::new();
    for (ptr, value) in changes {
        let span = doc.node(&ptr)?.span;
        let (s, e) = (
            offset(span.start.line, span.start.col)?,
            offset(span.end.line, span.end.col)?,
        );
        let quoted = text[s..].starts_with(['"', '\'']);
        let rendered = match &value {
            Value::String(v) if !quoted && plain_safe(v) => v.clone(),
            Value::String(_) => value.to_string(),
            Value::Null => "null".into(),
            other => other.to_string(),
        };
        edits.push((s, e, rendered));
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = text.to_owned();
    for (s, e, r) in edits {
        out.replace_range(s..e, &r);
    }
    let again = rollwright_engine::yaml::load_str(&out, &rollwright_engine::Limits::default()).ok()?;
    (again.value == *new).then_some(out)
}

fn plain_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && s.parse::<f64>().is_err()
        && !matches!(s, "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "# The route of the fraud model.\napiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: fraud  # same as the Service\nspec:\n  hosts: [fraud]\n  http:\n    - route:\n        - destination: {host: fraud, subset: stable}\n          weight: 100 # stable\n        - destination: {host: fraud, subset: canary}\n          weight: 0\n";

    #[test]
    fn weights_change_in_place_and_comments_stay() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("routes.yaml");
        std::fs::write(
            &f,
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: fraud}}\n---\n{VS}"),
        )
        .unwrap();
        let vs = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "fraud", "namespace": "ml"}});
        let doc = find_doc(dir.path(), &ObjRef::of(&vs, "ml").unwrap(), "ml")
            .unwrap()
            .unwrap();
        assert_eq!(doc.lines, (4, 17));
        let mut want = doc.value.clone();
        want["spec"]["http"][0]["route"][0]["weight"] = json!(80);
        want["spec"]["http"][0]["route"][1]["weight"] = json!(20);
        rewrite(&doc, &want).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains("          weight: 80 # stable\n"), "{text}");
        assert!(text.contains("          weight: 20\n"), "{text}");
        assert!(text.contains("name: fraud  # same as the Service"), "{text}");
        assert!(text.starts_with("apiVersion: v1\nkind: Service\n"), "{text}");
    }

    #[test]
    fn new_shapes_are_reserialised_and_new_objects_get_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vs.yaml"), VS).unwrap();
        let doc = find_doc(
            dir.path(),
            &ObjRef::new("networking.istio.io/v1beta1", "VirtualService", "ml", "fraud"),
            "ml",
        )
        .unwrap()
        .unwrap();
        let mut want = doc.value.clone();
        want["spec"]["http"][0]["mirror"] = json!({"host": "fraud", "subset": "canary"});
        rewrite(&doc, &want).unwrap();
        let again = find_doc(dir.path(), &ObjRef::of(&want, "ml").unwrap(), "ml")
            .unwrap()
            .unwrap();
        assert_eq!(again.value, want);
        assert!(
            std::fs::read_to_string(dir.path().join("vs.yaml"))
                .unwrap()
                .starts_with("# The route")
        );
        let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fraud-canary", "namespace": "ml"}, "spec": {"replicas": 2}});
        upsert(dir.path(), &dep, "ml").unwrap();
        let written = find_doc(dir.path(), &ObjRef::of(&dep, "ml").unwrap(), "ml")
            .unwrap()
            .unwrap();
        assert_eq!(written.file, dir.path().join("deployment-fraud-canary.yaml"));
        assert_eq!(written.value, dep);
        // Writing the same object again changes nothing.
        let before = std::fs::read_to_string(&written.file).unwrap();
        upsert(dir.path(), &dep, "ml").unwrap();
        assert_eq!(std::fs::read_to_string(&written.file).unwrap(), before);
    }

    #[test]
    fn new_files_are_listed_in_the_kustomization() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kustomization.yaml");
        std::fs::write(&k, "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - fraud.yaml # stable\n  - routes.yaml\nnamespace: ml\n").unwrap();
        let dep =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fraud-canary"}});
        upsert(dir.path(), &dep, "ml").unwrap();
        assert_eq!(
            std::fs::read_to_string(&k).unwrap(),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - fraud.yaml # stable\n  - routes.yaml\n  - deployment-fraud-canary.yaml\nnamespace: ml\n"
        );
        // Listed once, however often it is written.
        add_to_kustomization(dir.path(), "deployment-fraud-canary.yaml").unwrap();
        assert_eq!(
            std::fs::read_to_string(&k)
                .unwrap()
                .matches("deployment-fraud-canary")
                .count(),
            1
        );
        // A flow list is re-serialised with the file; no list gets one.
        std::fs::write(&k, "resources: [a.yaml]\n").unwrap();
        add_to_kustomization(dir.path(), "b.yaml").unwrap();
        let v = rollwright_engine::yaml::load_str(
            &std::fs::read_to_string(&k).unwrap(),
            &rollwright_engine::Limits::default(),
        )
        .unwrap()
        .value;
        assert_eq!(v["resources"], json!(["a.yaml", "b.yaml"]));
        std::fs::write(&k, "namespace: ml\n").unwrap();
        add_to_kustomization(dir.path(), "c.yaml").unwrap();
        assert_eq!(
            std::fs::read_to_string(&k).unwrap(),
            "namespace: ml\nresources:\n- c.yaml\n"
        );
    }

    #[test]
    fn strings_keep_their_quoting() {
        let text = "metadata:\n  labels: {version: \"7\", track: stable}\n";
        let old = json!({"metadata": {"labels": {"version": "7", "track": "stable"}}});
        let new = json!({"metadata": {"labels": {"version": "8", "track": "canary"}}});
        let out = edit_scalars(text, &old, &new).unwrap();
        assert_eq!(out, "metadata:\n  labels: {version: \"8\", track: canary}\n");
        assert_eq!(flux_sha("main@sha1:abc123"), "abc123");
        assert_eq!(flux_sha("main/abc123"), "abc123");
    }
}
