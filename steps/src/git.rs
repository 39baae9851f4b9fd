//! The `git` CLI, for GitOps targets (gix cannot push).
//!
//! A run works in its own clone (`<run dir>/gitops/`) of one branch. Every
//! commit it makes carries trailers naming the run, the step and what it
//! did, so that the remote history alone tells which commits a run made,
//! which it already reverted, and whether a step's commit was pushed (resume
//! never commits twice). Nothing here ever force-pushes: a moved branch is
//! fetched and the change made again on its new tip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};

use rollwright_engine::secrets::{Secret, scrub};

/// Why a git operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `git` could not be started.
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    /// A command failed.
    #[error("git {command}: {message}")]
    Failed {
        /// What ran (no secrets).
        command: String,
        /// Its error output.
        message: String,
    },
    /// The push was refused because the branch moved (someone else pushed).
    #[error("push to `{branch}` rejected: the branch moved on the remote")]
    Moved {
        /// The branch.
        branch: String,
    },
    /// The remote refused the push (a hook, a protected branch).
    #[error("push to `{branch}` rejected by the remote: {message}")]
    Rejected {
        /// The branch.
        branch: String,
        /// What the remote said.
        message: String,
    },
    /// The remote refused the credentials (or none were given).
    #[error(
        "git {command}: the remote refused the credentials ({message}); check `target.gitops.credentials`"
    )]
    Auth {
        /// What ran.
        command: String,
        /// What git said (scrubbed).
        message: String,
    },
    /// Reverting the run's commits conflicts with later commits.
    #[error(
        "reverting {commits} conflicts with later changes to {files}; resolve by hand (nothing was pushed)"
    )]
    Conflict {
        /// The commits being reverted.
        commits: String,
        /// The conflicting files.
        files: String,
    },
}

/// Trailers of a commit made by a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCommit {
    /// Full sha.
    pub sha: String,
    /// `Rollwright-Step`.
    pub step: String,
    /// `Rollwright-Action` (`apply`, `shift-traffic`, `revert`).
    pub action: String,
    /// `Rollwright-Reverts` (for reverts).
    pub reverts: Vec<String>,
}

/// One run's clone of one branch.
pub struct Git {
    /// The work tree.
    pub dir: PathBuf,
    remote: String,
    /// The branch.
    pub branch: String,
    author: (String, String),
    env: Vec<(String, String)>,
    lock: TreeLock,
    /// A key file written for this handle, removed when it is dropped.
    key_file: Option<PathBuf>,
}

impl Drop for Git {
    fn drop(&mut self) {
        if let Some(k) = &self.key_file {
            let _ = std::fs::remove_file(k);
        }
    }
}

impl std::fmt::Debug for Git {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Git")
            .field("dir", &self.dir)
            .field("remote", &self.remote)
            .field("branch", &self.branch)
            .finish_non_exhaustive()
    }
}

/// Credentials, resolved.
#[derive(Debug, Default)]
pub struct Credentials {
    /// HTTPS token and user name.
    pub token: Option<(String, Secret)>,
    /// Path of an SSH private key file.
    pub ssh_key: Option<PathBuf>,
    /// The key file was written for this operation: remove it afterwards.
    pub temporary_key: bool,
}

type TreeLock = Arc<tokio::sync::Mutex<()>>;

/// One lock per work tree: the steps of a run share the clone.
fn lock_of(dir: &Path) -> TreeLock {
    static LOCKS: OnceLock<Mutex<Vec<(PathBuf, TreeLock)>>> = OnceLock::new();
    let Ok(mut locks) = LOCKS.get_or_init(Mutex::default).lock() else {
        return Arc::default();
    };
    if let Some((_, l)) = locks.iter().find(|(d, _)| d == dir) {
        return l.clone();
    }
    let l: TreeLock = Arc::default();
    locks.push((dir.to_path_buf(), l.clone()));
    l
}

/// `Name <email>` split, else rollwright's own identity.
fn author_of(author: Option<&str>) -> (String, String) {
    author
        .and_then(|a| {
            let (name, rest) = a.split_once('<')?;
            Some((
                name.trim().to_owned(),
                rest.trim_end_matches('>').trim().to_owned(),
            ))
        })
        .unwrap_or_else(|| ("rollwright".into(), "rollwright@localhost".into()))
}

impl Git {
    /// A clone of `branch` of `remote` at `dir` (made on first use).
    /// A remote that is a relative local path is taken from `base`.
    #[must_use]
    pub fn new(dir: PathBuf, remote: &str, branch: &str, author: Option<&str>, base: &Path) -> Git {
        let remote = if is_local(remote) && !remote.starts_with("file://") && Path::new(remote).is_relative()
        {
            base.join(remote).to_string_lossy().into_owned()
        } else {
            remote.to_owned()
        };
        Git {
            lock: lock_of(&dir),
            dir,
            remote,
            branch: branch.to_owned(),
            author: author_of(author),
            env: Vec::new(),
            key_file: None,
        }
    }

    /// Uses these credentials for network operations. Passed through the
    /// environment (`GIT_CONFIG_*`, `GIT_SSH_COMMAND`), never the command line.
    pub fn set_credentials(&mut self, c: &Credentials) {
        self.env.clear();
        if let Some((user, token)) = &c.token {
            let basic = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{user}:{}", token.expose()),
            );
            rollwright_engine::secrets::register(&basic);
            self.env.push(("GIT_CONFIG_COUNT".into(), "1".into()));
            self.env
                .push(("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()));
            self.env.push((
                "GIT_CONFIG_VALUE_0".into(),
                format!("Authorization: Basic {basic}"),
            ));
        }
        if let Some(key) = &c.ssh_key {
            if c.temporary_key {
                self.key_file = Some(key.clone());
            }
            self.env.push((
                "GIT_SSH_COMMAND".into(),
                format!(
                    "ssh -i '{}' -o IdentitiesOnly=yes -o BatchMode=yes",
                    key.display()
                ),
            ));
        }
    }

    /// The environment given to git (for tests of credentials).
    #[must_use]
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Holds the work tree for one operation.
    pub async fn lock(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.lock.clone().lock_owned().await
    }

    async fn raw(&self, cwd: Option<&Path>, args: &[&str]) -> Result<(bool, String, String), GitError> {
        let mut cmd = tokio::process::Command::new("git");
        if let Some(d) = cwd {
            cmd.arg("-C").arg(d);
        }
        cmd.args(["-c", &format!("user.name={}", self.author.0)])
            .args(["-c", &format!("user.email={}", self.author.1)])
            .args(["-c", "commit.gpgsign=false"])
            .args(args)
            .env("LC_ALL", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = cmd.output().await.map_err(GitError::Spawn)?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            scrub(String::from_utf8_lossy(&out.stderr).trim()),
        ))
    }

    /// Runs `git -C dir ARGS`, its stdout on success.
    ///
    /// # Errors
    /// The command failed: its error output.
    pub async fn run(&self, args: &[&str]) -> Result<String, GitError> {
        let (ok, out, err) = self.raw(Some(&self.dir), args).await?;
        if ok {
            Ok(out)
        } else {
            Err(GitError::Failed {
                command: args.first().copied().unwrap_or_default().to_owned(),
                message: if err.is_empty() {
                    out.trim().to_owned()
                } else {
                    err
                },
            })
        }
    }

    fn remote_ref(&self) -> String {
        format!("refs/remotes/origin/{}", self.branch)
    }

    /// Clones on first use, else fetches the branch.
    ///
    /// # Errors
    /// The repository or branch cannot be reached.
    pub async fn fetch(&self) -> Result<(), GitError> {
        if !self.dir.join(".git").exists() {
            if let Some(parent) = self.dir.parent() {
                std::fs::create_dir_all(parent).map_err(GitError::Spawn)?;
            }
            let dir = self.dir.to_string_lossy().into_owned();
            let (ok, _, err) = self
                .raw(
                    None,
                    &[
                        "clone",
                        "--quiet",
                        "--no-tags",
                        "--single-branch",
                        "--branch",
                        &self.branch,
                        "--",
                        &self.remote,
                        &dir,
                    ],
                )
                .await?;
            if !ok {
                return Err(failure(
                    &format!("clone of {} (branch {})", scrub(&self.remote), self.branch),
                    err,
                ));
            }
            return Ok(());
        }
        let spec = format!("+refs/heads/{}:{}", self.branch, self.remote_ref());
        self.run(&["fetch", "--quiet", "--no-tags", "origin", &spec])
            .await
            .map(|_| ())
    }

    /// The remote branch's tip (as last fetched).
    ///
    /// # Errors
    /// Not fetched yet.
    pub async fn remote_tip(&self) -> Result<String, GitError> {
        Ok(self
            .run(&["rev-parse", "--verify", &self.remote_ref()])
            .await?
            .trim()
            .to_owned())
    }

    /// The work tree and the local branch, exactly at the remote tip.
    ///
    /// # Errors
    /// git failed.
    pub async fn reset_to_remote(&self) -> Result<(), GitError> {
        self.run(&[
            "checkout",
            "--quiet",
            "-f",
            "-B",
            &self.branch,
            &self.remote_ref(),
        ])
        .await?;
        self.run(&["clean", "-fdq"]).await.map(|_| ())
    }

    /// Commits everything changed under `path`; `None` when nothing changed.
    ///
    /// # Errors
    /// git failed.
    pub async fn commit(&self, path: &str, message: &str) -> Result<Option<String>, GitError> {
        self.run(&["add", "-A", "--", path]).await?;
        let (unchanged, _, _) = self
            .raw(Some(&self.dir), &["diff", "--cached", "--quiet"])
            .await?;
        if unchanged {
            return Ok(None);
        }
        self.run(&["commit", "--quiet", "--no-verify", "-m", message])
            .await?;
        self.head().await.map(Some)
    }

    /// The sha of HEAD.
    ///
    /// # Errors
    /// git failed.
    pub async fn head(&self) -> Result<String, GitError> {
        Ok(self.run(&["rev-parse", "HEAD"]).await?.trim().to_owned())
    }

    /// Whether `sha` is a commit here, and its first parent.
    pub async fn parent_of(&self, sha: &str) -> Option<String> {
        let p = self
            .run(&["rev-parse", "--verify", &format!("{sha}^")])
            .await
            .ok()?;
        Some(p.trim().to_owned())
    }

    /// Points the branch and work tree at `sha` (a commit made earlier).
    ///
    /// # Errors
    /// git failed.
    pub async fn checkout(&self, sha: &str) -> Result<(), GitError> {
        self.run(&["checkout", "--quiet", "-f", "-B", &self.branch, sha])
            .await
            .map(|_| ())
    }

    /// Pushes HEAD to the branch; never forced.
    ///
    /// # Errors
    /// [`GitError::Moved`] when the branch moved, [`GitError::Rejected`]
    /// when the remote refused.
    pub async fn push(&self) -> Result<(), GitError> {
        let dest = format!("HEAD:refs/heads/{}", self.branch);
        let (ok, out, err) = self
            .raw(Some(&self.dir), &["push", "--porcelain", "origin", &dest])
            .await?;
        if ok {
            return Ok(());
        }
        let all = format!("{out}\n{err}");
        if let e @ GitError::Auth { .. } = failure("push", err.clone()) {
            return Err(e);
        }
        // The branch moved: before our push (fetch first, non-fast-forward),
        // or while the remote was updating it (another push won the race
        // for the ref lock: "cannot lock ref … is at X but expected Y").
        let raced = all.contains("cannot lock ref") && all.contains("but expected");
        if all.contains("(fetch first)")
            || all.contains("(non-fast-forward)")
            || all.contains("stale info")
            || raced
        {
            return Err(GitError::Moved {
                branch: self.branch.clone(),
            });
        }
        let remote: Vec<&str> = all
            .lines()
            .filter_map(|l| l.strip_prefix("remote: "))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let reason = all
            .lines()
            .find(|l| l.contains("[remote rejected]") || l.contains("[rejected]"))
            .map(|l| l.rsplit_once('\t').map_or(l, |(_, r)| r).trim().to_owned());
        let mut message = remote.join("; ");
        if let Some(r) = reason {
            if !message.is_empty() {
                message.push_str(" — ");
            }
            message.push_str(&r);
        }
        if message.is_empty() {
            message = err;
        }
        Err(GitError::Rejected {
            branch: self.branch.clone(),
            message,
        })
    }

    /// Whether `ancestor` is `sha` or one of its ancestors (both known here).
    pub async fn contains(&self, sha: &str, ancestor: &str) -> bool {
        if sha == ancestor {
            return true;
        }
        let (ok, _, _) = self
            .raw(Some(&self.dir), &["merge-base", "--is-ancestor", ancestor, sha])
            .await
            .unwrap_or((false, String::new(), String::new()));
        ok
    }

    /// The commits `run` made on the remote branch, newest first.
    ///
    /// # Errors
    /// git failed.
    pub async fn run_commits(&self, run: &str) -> Result<Vec<RunCommit>, GitError> {
        let grep = format!("--grep=Rollwright-Run: {run}");
        let out = self
            .run(&[
                "log",
                "--fixed-strings",
                &grep,
                "--format=%H%x1f%B%x1e",
                &self.remote_ref(),
            ])
            .await?;
        Ok(out
            .split('\x1e')
            .filter_map(|entry| {
                let (sha, body) = entry.trim().split_once('\x1f')?;
                let trailer = |key: &str| -> Vec<String> {
                    body.lines()
                        .filter_map(|l| l.strip_prefix(key))
                        .filter_map(|l| l.strip_prefix(": "))
                        .map(|v| v.trim().to_owned())
                        .collect()
                };
                if trailer("Rollwright-Run").first().map(String::as_str) != Some(run) {
                    return None;
                }
                Some(RunCommit {
                    sha: sha.trim().to_owned(),
                    step: trailer("Rollwright-Step").into_iter().next().unwrap_or_default(),
                    action: trailer("Rollwright-Action")
                        .into_iter()
                        .next()
                        .unwrap_or_default(),
                    reverts: trailer("Rollwright-Reverts"),
                })
            })
            .collect())
    }

    /// Stages the reverse of `shas`, in the order given.
    ///
    /// # Errors
    /// [`GitError::Conflict`] (the work tree is left clean).
    pub async fn revert(&self, shas: &[String]) -> Result<(), GitError> {
        let mut args = vec!["revert", "--no-commit", "--no-edit"];
        args.extend(shas.iter().map(String::as_str));
        if self.run(&args).await.is_ok() {
            return Ok(());
        }
        let files = self
            .run(&["diff", "--name-only", "--diff-filter=U"])
            .await
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(", ");
        let _ = self.run(&["revert", "--abort"]).await;
        let _ = self.reset_to_remote().await;
        Err(GitError::Conflict {
            commits: shas.iter().map(|s| short(s)).collect::<Vec<_>>().join(", "),
            files: if files.is_empty() {
                "files of the run".into()
            } else {
                files
            },
        })
    }
}

/// Whether a remote is a repository on this machine (a path or `file://`).
#[must_use]
pub fn is_local(remote: &str) -> bool {
    remote.starts_with("file://") || (!remote.contains("://") && !remote.contains('@'))
}

/// A failed command: [`GitError::Auth`] when git says the credentials
/// were refused or missing, else [`GitError::Failed`].
fn failure(command: &str, message: String) -> GitError {
    const AUTH: &[&str] = &[
        "Authentication failed",
        "could not read Username",
        "could not read Password",
        "Permission denied (publickey",
        "The requested URL returned error: 401",
        "The requested URL returned error: 403",
        "terminal prompts disabled",
    ];
    if AUTH.iter().any(|a| message.contains(a)) {
        GitError::Auth {
            command: command.to_owned(),
            message: message.lines().last().unwrap_or_default().trim().to_owned(),
        }
    } else {
        GitError::Failed {
            command: command.to_owned(),
            message,
        }
    }
}

/// The first 8 characters of a sha.
#[must_use]
pub fn short(sha: &str) -> &str {
    sha.get(..8).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authors_and_credentials_stay_off_the_command_line() {
        assert_eq!(
            author_of(Some("Platform Bot <bot@example.com>")),
            ("Platform Bot".into(), "bot@example.com".into())
        );
        assert_eq!(author_of(None).0, "rollwright");
        let mut g = Git::new(
            "/tmp/x".into(),
            "https://git.example.com/r.git",
            "main",
            None,
            Path::new("/"),
        );
        g.set_credentials(&Credentials {
            token: Some((
                "x-access-token".into(),
                Secret::from_resolved("ghp_sekrit-value".into()),
            )),
            ssh_key: Some("/keys/id".into()),
            temporary_key: false,
        });
        let env = format!("{:?}", g.env());
        assert!(env.contains("http.extraHeader"), "{env}");
        assert!(
            !env.contains("ghp_sekrit-value"),
            "only the encoded header: {env}"
        );
        assert!(env.contains("ssh -i '/keys/id'"), "{env}");
        // The encoded header is scrubbed like the token itself.
        let header = g.env()[2].1.clone();
        assert_eq!(scrub(&header), "Authorization: Basic [redacted]");
    }

    #[test]
    fn relative_local_remotes_start_at_the_spec() {
        let g = Git::new(
            "/tmp/x".into(),
            "repos/gitops.git",
            "main",
            None,
            Path::new("/specs"),
        );
        assert_eq!(g.remote, "/specs/repos/gitops.git");
        let g = Git::new(
            "/tmp/x".into(),
            "git@github.com:o/r.git",
            "main",
            None,
            Path::new("/specs"),
        );
        assert_eq!(g.remote, "git@github.com:o/r.git");
    }
}
