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
use rollwright_engine::registry::{BuildContext, BuildError};
use serde_json::{Map, Value, json};

use crate::cluster::{Cluster, ObjRef};
use crate::git::{Credentials, Git, GitError, short};

mod argocd;
mod flux;
mod manifests;

pub use manifests::{ManifestError, RepoDoc, add_to_kustomization, docs_in, find_doc, rewrite, upsert};

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
    pub fn of(cx: &BuildContext) -> Result<Option<Arc<GitOpsTarget>>, BuildError> {
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
        edit: impl Fn(&Path) -> Result<(), ManifestError>,
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
            edit(&root).map_err(|e| StepError::failed(e.to_string()))?;
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
        edit: impl Fn(&Path) -> Result<(), ManifestError>,
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
        match self.config.controller {
            Controller::Argocd => argocd::synced(self, &app, &name, revision).await,
            Controller::Flux => flux::synced(self, &app, &name, revision).await,
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

/// Not yet: look again shortly.
fn wait(reason: String) -> Result<Progress, StepError> {
    Ok(Progress::Wait {
        after: Duration::from_millis(300),
        reason,
    })
}

fn done(revision: &str, at: &str) -> Progress {
    let mut outputs = Map::new();
    outputs.insert("commit".into(), json!(revision));
    outputs.insert("synced-revision".into(), json!(at));
    Progress::Done { outputs }
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
