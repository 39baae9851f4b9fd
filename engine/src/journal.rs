//! The run journal: append-only JSON lines, one record per state change,
//! each written with `fdatasync` before the executor moves on.
//!
//! A process killed at any point leaves at worst a torn last line, which
//! [`read`] tolerates; everything before it is intact. Resume rebuilds the
//! run from the records: completed steps (with their outputs) are not run
//! again, the step that was running is run again (steps are idempotent), and
//! compensation continues where it stopped. A resume refuses a spec whose
//! digest differs from the one the run started with.
//!
//! One run per target at a time: [`TargetLock`] holds an OS file lock on a
//! file that names the holder, so a second run gets a clear error naming it.
//!
//! **Integrity.** Nothing in a run directory is trusted because it is there:
//! every line carries a MAC (HMAC-SHA-256) chained over all the lines before
//! it, keyed by a [`Key`] kept *outside* the run directory (in the user's
//! configuration directory, mode 0600). A record edited, inserted, removed
//! or reordered — a forged `recorded` line naming another object, a forged
//! gate pass, an edited header — breaks the chain and the journal is refused
//! with the line. What a run needs on resume (spec path, `--set` values, the
//! policy's location, how it reached its cluster, who started it) lives in
//! the first record, under the same chain. A journal cut short at the end is
//! indistinguishable from a crash at that point, which resume handles by
//! design (steps are idempotent; gates are checked again). A run directory
//! copied from elsewhere (a CI cache, another machine) cannot be resumed
//! without that machine's key — on purpose.

use crate::digest::hex;
pub use crate::digest::{digest, digest_bytes};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
pub enum Record {
    /// The first record of a run.
    RunStarted {
        /// Run id.
        run: String,
        /// SHA-256 of the expanded spec (see [`digest`]).
        digest: String,
        /// The spec's path (absolute).
        spec: String,
        /// Unix time in milliseconds.
        at_ms: u64,
        /// `--set` overrides, as given.
        #[serde(default)]
        overrides: Vec<(String, Value)>,
        /// Who started the run (they may not approve it).
        #[serde(default)]
        started_by: String,
        /// The policy in force: `{path, digest}`, or null.
        #[serde(default)]
        policy: Value,
        /// How the run reaches its target (the CLI's description: client configuration,
        /// context, API server, or the embedded cluster). Opaque to the engine.
        #[serde(default)]
        reach: Value,
        /// The directory every file the spec names must stay inside.
        #[serde(default)]
        root: String,
    },
    /// An attempt of a step started.
    StepStarted {
        /// Step id.
        step: String,
        /// Attempt number.
        attempt: u32,
        /// Unix time in milliseconds (0 in journals of older versions).
        #[serde(default, skip_serializing_if = "is_zero")]
        at_ms: u64,
    },
    /// A step succeeded.
    StepSucceeded {
        /// Step id.
        step: String,
        /// Its outputs.
        outputs: Map<String, Value>,
        /// Unix time in milliseconds.
        #[serde(default, skip_serializing_if = "is_zero")]
        at_ms: u64,
    },
    /// A step failed for good.
    StepFailed {
        /// Step id.
        step: String,
        /// The last real error.
        error: String,
        /// With `continue-on-failure`.
        tolerated: bool,
        /// Unix time in milliseconds.
        #[serde(default, skip_serializing_if = "is_zero")]
        at_ms: u64,
    },
    /// A step recorded what it needs to undo itself, before changing anything.
    Recorded {
        /// Step id.
        step: String,
        /// What it is.
        key: String,
        /// The value (secrets scrubbed).
        value: Value,
        /// Unix time in milliseconds.
        #[serde(default, skip_serializing_if = "is_zero")]
        at_ms: u64,
    },
    /// What a step measured (display and report only: resume ignores it).
    Observed {
        /// Step id.
        step: String,
        /// Unix time in milliseconds.
        at_ms: u64,
        /// The measurement.
        observation: crate::exec::Observation,
    },
    /// An on-failure handler ran.
    Handled {
        /// The handler's id.
        handler: String,
        /// Its error, if it failed (secrets scrubbed).
        error: Option<String>,
        /// Unix time in milliseconds.
        #[serde(default, skip_serializing_if = "is_zero")]
        at_ms: u64,
    },
    /// A compensation finished.
    Compensated {
        /// The step it undid.
        step: String,
        /// Its error, if it failed.
        error: Option<String>,
        /// Unix time in milliseconds.
        #[serde(default, skip_serializing_if = "is_zero")]
        at_ms: u64,
    },
    /// The run ended.
    RunFinished {
        /// `succeeded`, `rolled-back` or `rollback-failed`.
        state: String,
        /// Unix time in milliseconds.
        #[serde(default)]
        at_ms: u64,
    },
}

/// Why a journal cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A record other than the last one is not valid.
    #[error(
        "journal {path}, line {line}: not a valid record ({reason}); the journal was edited or is corrupt"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Parser message.
        reason: String,
    },
    /// The journal does not start with `run-started`.
    #[error("journal {0}: does not start with a run-started record")]
    NoHeader(PathBuf),
    /// A record's integrity tag does not match: the journal was changed.
    #[error(
        "journal {path}, line {line}: {reason}; the journal was changed outside rollwright (or written with another key) and cannot be trusted"
    )]
    Tampered {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The key cannot be read or made.
    #[error("journal key {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The target is locked by another run.
    #[error("target {target} is locked by another run ({holder}); wait for it, or resume it")]
    Locked {
        /// The target.
        target: String,
        /// What the lock file says about its holder.
        holder: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The key of the journals' integrity chain. Kept outside every run
/// directory; whoever edits a run directory without it cannot forge records.
pub struct Key(ring::hmac::Key);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key([redacted])")
    }
}

impl Key {
    /// `$XDG_CONFIG_HOME/rollwright/journal.key`, else
    /// `$HOME/.config/rollwright/journal.key`.
    #[must_use]
    pub fn default_path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| Path::new(&h).join(".config"))
            })?;
        Some(base.join("rollwright").join("journal.key"))
    }

    /// A key from raw bytes (tests, benchmarks).
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Key(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    /// The key at [`Key::default_path`], made on first use.
    ///
    /// # Errors
    /// No home directory, or the key cannot be read or made.
    pub fn load_default() -> Result<Self, JournalError> {
        let path = Key::default_path().ok_or_else(|| JournalError::Key {
            path: PathBuf::from("$HOME/.config/rollwright/journal.key"),
            reason: "neither XDG_CONFIG_HOME nor HOME is set".into(),
        })?;
        Key::load_or_create(&path)
    }

    /// Reads the key at `path`, or makes one (32 random bytes, mode 0600).
    /// A key others may read or write is refused.
    ///
    /// # Errors
    /// I/O errors, a key of the wrong size or with loose permissions.
    pub fn load_or_create(path: &Path) -> Result<Self, JournalError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let err = |reason: String| JournalError::Key {
            path: path.to_path_buf(),
            reason,
        };
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| err(e.to_string()))?;
            }
            let mut bytes = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| err("no randomness available".into()))?;
            // Written aside, then linked into place: two processes racing to
            // make the key both end up reading the one complete file.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| err(e.to_string()))?;
            f.write_all(&bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| err(e.to_string()))?;
            drop(f);
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(e.to_string())),
            }
        }
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(format!(
                "others may read or change it (mode {:o}); `chmod 600` it",
                meta.permissions().mode() & 0o777
            )));
        }
        let bytes = crate::fsread::read(path, 64).map_err(|e| err(e.to_string()))?;
        if bytes.len() < 32 {
            return Err(err(format!("{} bytes; a key has 32", bytes.len())));
        }
        Ok(Key::from_bytes(&bytes))
    }

    /// A MAC over `parts` (for records kept beside the journal, such as
    /// approvals): hex.
    #[must_use]
    pub fn sign(&self, parts: &[&str]) -> String {
        hex(&self.sign_raw(parts))
    }

    /// Whether `sig` is [`Key::sign`] of `parts` (constant time).
    #[must_use]
    pub fn verify(&self, parts: &[&str], sig: &str) -> bool {
        unhex(sig).is_some_and(|tag| {
            let want = self.sign_raw(parts);
            want.iter().zip(tag.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
        })
    }

    fn sign_raw(&self, parts: &[&str]) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        for p in parts {
            ctx.update(&(p.len() as u64).to_le_bytes());
            ctx.update(p.as_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn tag(&self, chain: &[u8; 32], body: &[u8]) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        ctx.update(chain);
        ctx.update(body);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

const MAC_FIELD: &str = ",\"mac\":\"";

/// One record as a journal line: its JSON with the chained MAC as a last
/// field (`…,"mac":"<hex>"}`), so the record's text stays greppable.
fn seal(key: &Key, chain: &mut [u8; 32], r: &Record, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let body = serde_json::to_vec(r)?;
    let tag = key.tag(chain, &body);
    out.extend_from_slice(&body[..body.len() - 1]);
    out.extend_from_slice(MAC_FIELD.as_bytes());
    out.extend_from_slice(hex(&tag).as_bytes());
    out.extend_from_slice(b"\"}\n");
    *chain = tag;
    Ok(())
}

/// Checks one line against the chain; returns its record body.
fn unseal(key: &Key, chain: &mut [u8; 32], line: &str) -> Result<String, String> {
    let line = line.trim_end_matches('\n');
    let at = line
        .rfind(MAC_FIELD)
        .ok_or("the record has no integrity tag (written by hand or by an older rollwright)")?;
    let tag = line[at + MAC_FIELD.len()..]
        .strip_suffix("\"}")
        .and_then(unhex)
        .ok_or("the record's integrity tag is malformed")?;
    let body = format!("{}}}", &line[..at]);
    let want = key.tag(chain, body.as_bytes());
    // Constant time: the comparison does not say how much of a guess was right.
    if want.iter().zip(tag.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
        return Err("integrity check failed (a record was changed, inserted, removed or reordered)".into());
    }
    *chain = tag;
    Ok(body)
}

/// An open journal, appending.
pub struct Journal {
    path: PathBuf,
    file: File,
    key: std::sync::Arc<Key>,
    chain: [u8; 32],
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Creates the journal of a new run (fails if it exists).
    ///
    /// # Errors
    /// I/O errors.
    pub fn create(path: &Path, key: std::sync::Arc<Key>) -> Result<Self, JournalError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(path))?;
        }
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            key,
            chain: [0; 32],
        })
    }

    /// Reopens a journal to continue it, after checking every record, and
    /// cuts a torn last line.
    ///
    /// # Errors
    /// I/O errors, a tampered journal.
    pub fn reopen(path: &Path, key: std::sync::Arc<Key>) -> Result<Self, JournalError> {
        let (_, chain, keep) = read_chain(path, &key)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if keep < len {
            file.set_len(keep).map_err(io_err(path))?;
        }
        file.seek(io::SeekFrom::End(0)).map_err(io_err(path))?;
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            key,
            chain,
        })
    }

    /// Appends a record and makes it durable (`fdatasync`) before returning.
    ///
    /// # Errors
    /// I/O errors.
    pub fn append(&mut self, r: &Record) -> Result<(), JournalError> {
        self.append_all(std::slice::from_ref(r))
    }

    /// Appends several records with one write and one `fdatasync`: group
    /// commit for events that happen together; durable when it returns.
    ///
    /// # Errors
    /// I/O errors.
    pub fn append_all(&mut self, records: &[Record]) -> Result<(), JournalError> {
        let mut buf = Vec::with_capacity(records.len() * 160);
        let mut chain = self.chain;
        for r in records {
            seal(&self.key, &mut chain, r, &mut buf).map_err(|e| io_err(&self.path)(io::Error::other(e)))?;
        }
        self.file.write_all(&buf).map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;
        // Only a durable batch moves the chain on: a failed write is not part of it.
        self.chain = chain;
        Ok(())
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The journal record of an executor event (events that change no state,
/// like waits and retries, are not journaled).
#[must_use]
pub fn record_of(e: &crate::exec::Event) -> Option<Record> {
    use crate::exec::{Event, FinalState};
    use crate::secrets::{scrub, scrub_value};
    let outputs = |o: &Map<String, Value>| {
        let mut v = Value::Object(o.clone());
        scrub_value(&mut v);
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    };
    let at_ms = now_ms();
    Some(match e {
        Event::Started { step, attempt } => Record::StepStarted {
            step: step.clone(),
            attempt: *attempt,
            at_ms,
        },
        Event::Succeeded { step, outputs: o } => Record::StepSucceeded {
            step: step.clone(),
            outputs: outputs(o),
            at_ms,
        },
        Event::Failed {
            step,
            error,
            tolerated,
        } => Record::StepFailed {
            step: step.clone(),
            error: scrub(error),
            tolerated: *tolerated,
            at_ms,
        },
        Event::Recorded { step, key, value } => Record::Recorded {
            step: step.clone(),
            key: key.clone(),
            value: {
                let mut v = value.clone();
                scrub_value(&mut v);
                v
            },
            at_ms,
        },
        Event::Compensated { step, error } => Record::Compensated {
            step: step.clone(),
            error: error.as_deref().map(scrub),
            at_ms,
        },
        Event::Observed { step, observation } => Record::Observed {
            step: step.clone(),
            at_ms,
            observation: observation.clone(),
        },
        Event::Handled { handler, error } => Record::Handled {
            handler: handler.clone(),
            error: error.as_deref().map(scrub),
            at_ms,
        },
        Event::Finished { state } => Record::RunFinished {
            at_ms,
            state: match state {
                FinalState::Succeeded => "succeeded",
                FinalState::RolledBack => "rolled-back",
                FinalState::RollbackFailed => "rollback-failed",
            }
            .into(),
        },
        Event::Waiting { .. } | Event::Retrying { .. } | Event::Cancelled { .. } => {
            return None;
        }
    })
}

/// Unix time in milliseconds.
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A log line with every registered secret removed.
#[must_use]
pub fn scrub_line(s: &str) -> String {
    crate::secrets::scrub(s)
}

enum Msg {
    Record(Box<Record>),
    Flush(std::sync::mpsc::Sender<Result<(), CommitError>>),
}

/// Why queued records are not durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// A write failed; nothing after it was written.
    #[error(transparent)]
    Write(std::sync::Arc<JournalError>),
    /// The writer thread is gone.
    #[error("the journal writer stopped")]
    Stopped,
}

/// Group commit: records are queued without blocking the executor and a
/// writer thread appends everything queued with one write and one
/// `fdatasync`, in order. A record is durable within one fsync of being
/// queued; [`GroupCommit::flush`] waits until everything queued so far is.
/// A crash loses at most the last unsynced batch: resume then runs those
/// steps again, which the step contract (idempotence) makes safe.
pub struct GroupCommit {
    tx: Option<std::sync::mpsc::Sender<Msg>>,
    writer: Option<std::thread::JoinHandle<()>>,
    error: std::sync::Arc<std::sync::Mutex<Option<CommitError>>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts the writer thread.
    #[must_use]
    pub fn start(mut journal: Journal) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Msg>();
        let error = std::sync::Arc::new(std::sync::Mutex::new(None::<CommitError>));
        let err = error.clone();
        let writer = std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while let Ok(m) = rx.try_recv() {
                    batch.push(m);
                }
                let mut records = Vec::new();
                let mut acks = Vec::new();
                for m in batch {
                    match m {
                        Msg::Record(r) => records.push(*r),
                        Msg::Flush(ack) => acks.push(ack),
                    }
                }
                // After a failed write nothing more is written: the file may
                // end in half a batch, and a record after it would make the
                // journal lie about what is durable.
                let failed = err.lock().map_or(true, |e| e.is_some());
                if !records.is_empty()
                    && !failed
                    && let Err(e) = journal.append_all(&records)
                    && let Ok(mut slot) = err.lock()
                {
                    slot.get_or_insert_with(|| CommitError::Write(std::sync::Arc::new(e)));
                }
                let status = err.lock().ok().and_then(|s| s.clone()).map_or(Ok(()), Err);
                for a in acks {
                    let _ = a.send(status.clone());
                }
            }
        });
        GroupCommit {
            tx: Some(tx),
            writer: Some(writer),
            error,
        }
    }

    /// Queues a record.
    pub fn append(&self, r: Record) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Record(Box::new(r)));
        }
    }

    /// Waits until every queued record is durable.
    ///
    /// # Errors
    /// The first write error, if any happened.
    pub fn flush(&self) -> Result<(), CommitError> {
        let (ack, done) = std::sync::mpsc::channel();
        if let Some(tx) = &self.tx {
            tx.send(Msg::Flush(ack)).map_err(|_| CommitError::Stopped)?;
        }
        done.recv().map_err(|_| CommitError::Stopped)?
    }

    /// The first write error, if any.
    #[must_use]
    pub fn error(&self) -> Option<CommitError> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Reads a journal, checking every record's integrity tag. A torn
/// (unterminated) last line is dropped; a bad line anywhere else, or any
/// line whose tag does not match, refuses the whole journal.
///
/// # Errors
/// I/O errors, corruption, tampering, a missing header.
pub fn read(path: &Path, key: &Key) -> Result<Vec<Record>, JournalError> {
    read_chain(path, key).map(|(r, _, _)| r)
}

/// The records, the chain value after the last one, and the length of the
/// intact prefix (what a reopen keeps).
fn read_chain(path: &Path, key: &Key) -> Result<(Vec<Record>, [u8; 32], u64), JournalError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut chain = [0u8; 32];
    let mut kept = 0u64;
    let mut line = String::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(io_err(path))?;
        if read == 0 {
            break;
        }
        n += 1;
        if !line.ends_with('\n') {
            // Only the last line can lack its newline: torn by a crash.
            break;
        }
        let body = unseal(key, &mut chain, &line).map_err(|reason| JournalError::Tampered {
            path: path.to_path_buf(),
            line: n,
            reason,
        })?;
        let r = serde_json::from_str::<Record>(&body).map_err(|e| JournalError::Corrupt {
            path: path.to_path_buf(),
            line: n,
            reason: e.to_string(),
        })?;
        records.push(r);
        kept += read as u64;
    }
    match records.first() {
        Some(Record::RunStarted { .. }) => Ok((records, chain, kept)),
        _ => Err(JournalError::NoHeader(path.to_path_buf())),
    }
}

/// What a journal says about a run, for resume.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// Digest the run started with.
    pub digest: String,
    /// Completed steps, in completion order, with outputs.
    pub completed: Vec<(String, Map<String, Value>)>,
    /// Steps that failed for good.
    pub failed: Vec<(String, String)>,
    /// Steps whose compensation finished successfully.
    pub compensated: Vec<String>,
    /// Steps that started, in first-start order.
    pub started: Vec<String>,
    /// Records, oldest first.
    pub recorded: Vec<crate::exec::Memo>,
    /// The final state, if the run finished.
    pub finished: Option<String>,
}

/// Folds records into a [`State`].
#[must_use]
pub fn state(records: &[Record]) -> State {
    let mut s = State::default();
    for r in records {
        match r {
            Record::RunStarted { digest, .. } => s.digest.clone_from(digest),
            Record::StepStarted { step, .. } if !s.started.contains(step) && !step.ends_with(" (undo)") => {
                s.started.push(step.clone());
            }
            Record::Recorded { step, key, value, .. } => s.recorded.push(crate::exec::Memo {
                step: step.clone(),
                key: key.clone(),
                value: value.clone(),
            }),
            Record::StepSucceeded { step, outputs, .. } if !s.completed.iter().any(|(id, _)| id == step) => {
                s.completed.push((step.clone(), outputs.clone()));
            }
            Record::StepFailed {
                step,
                error,
                tolerated,
                ..
            } if !tolerated => s.failed.push((step.clone(), error.clone())),
            Record::Compensated {
                step, error: None, ..
            } => s.compensated.push(step.clone()),
            Record::RunFinished { state, .. } => s.finished = Some(state.clone()),
            _ => {}
        }
    }
    s
}

/// An exclusive, OS-level lock on a target, released when dropped (or when
/// the process dies).
#[derive(Debug)]
pub struct TargetLock {
    _file: File,
}

impl TargetLock {
    /// Takes the lock of `target` in `dir`, writing `holder` into it.
    ///
    /// # Errors
    /// [`JournalError::Locked`] naming the holder, or I/O errors.
    pub fn acquire(dir: &Path, target: &str, holder: &str) -> Result<Self, JournalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let name: String = target
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{name}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut who = String::new();
                let _ = file.read_to_string(&mut who);
                return Err(JournalError::Locked {
                    target: target.to_owned(),
                    holder: if who.trim().is_empty() {
                        "unknown holder".into()
                    } else {
                        who.trim().to_owned()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        file.set_len(0).map_err(io_err(&path))?;
        file.write_all(holder.as_bytes()).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))?;
        Ok(TargetLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn started() -> Record {
        Record::RunStarted {
            run: "r1".into(),
            digest: "d".into(),
            spec: "s.yaml".into(),
            at_ms: 1,
            overrides: Vec::new(),
            started_by: "carol".into(),
            policy: Value::Null,
            reach: Value::Null,
            root: String::new(),
        }
    }

    fn key() -> std::sync::Arc<Key> {
        std::sync::Arc::new(Key::from_bytes(b"0123456789abcdef0123456789abcdef"))
    }

    #[test]
    fn round_trip_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runs/r1/journal.jsonl");
        let mut j = Journal::create(&p, key()).unwrap();
        let ok = |s: &str| Record::StepSucceeded {
            step: s.into(),
            outputs: json!({"rev": 3}).as_object().unwrap().clone(),
            at_ms: 0,
        };
        j.append(&started()).unwrap();
        j.append_all(&[
            ok("a"),
            Record::StepStarted {
                step: "b".into(),
                attempt: 1,
                at_ms: 0,
            },
            ok("b"),
        ])
        .unwrap();
        j.append(&Record::StepFailed {
            step: "c".into(),
            error: "boom".into(),
            tolerated: false,
            at_ms: 0,
        })
        .unwrap();
        j.append(&Record::Compensated {
            step: "b".into(),
            error: None,
            at_ms: 0,
        })
        .unwrap();
        let recs = read(&p, &key()).unwrap();
        assert_eq!(recs.len(), 6);
        let s = state(&recs);
        assert_eq!(s.digest, "d");
        assert_eq!(
            s.completed.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(s.completed[0].1["rev"], 3);
        assert_eq!(s.failed, [("c".to_owned(), "boom".to_owned())]);
        assert_eq!(s.compensated, ["b"]);
        assert!(Journal::create(&p, key()).is_err(), "a run id is never reused");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains(r#"{"record":"step-succeeded","step":"a","outputs":{"rev":3},"mac":""#),
            "records stay greppable: {text}"
        );
    }

    #[test]
    fn a_torn_last_line_is_tolerated_and_cut_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        let mut j = Journal::create(&p, key()).unwrap();
        j.append(&started()).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"record":"step-succeeded","step":"a","outp"#)
            .unwrap();
        drop(f);
        assert_eq!(read(&p, &key()).unwrap().len(), 1);
        let mut j = Journal::reopen(&p, key()).unwrap();
        j.append(&Record::StepStarted {
            step: "a".into(),
            attempt: 1,
            at_ms: 0,
        })
        .unwrap();
        assert_eq!(read(&p, &key()).unwrap().len(), 2);
    }

    /// Every way of editing a journal by hand is refused, with the line.
    #[test]
    fn edited_forged_reordered_or_rekeyed_journals_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        let mut j = Journal::create(&p, key()).unwrap();
        j.append(&started()).unwrap();
        for s in ["gate", "deploy"] {
            j.append(&Record::StepSucceeded {
                step: s.into(),
                outputs: Map::new(),
                at_ms: 0,
            })
            .unwrap();
        }
        j.append(&Record::RunFinished {
            state: "succeeded".into(),
            at_ms: 2,
        })
        .unwrap();
        drop(j);
        let good = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = good.lines().collect();
        let attempt = |text: String| {
            std::fs::write(&p, text).unwrap();
            read(&p, &key()).unwrap_err().to_string()
        };
        // A value changed.
        let e = attempt(good.replace(r#""step":"deploy""#, r#""step":"gate2""#));
        assert!(e.contains("line 3: integrity check failed"), "{e}");
        // A forged line inserted, copying a real tag.
        let forged = lines[1].replace("gate", "smoke");
        let e = attempt(format!("{}\n{forged}\n{}\n", lines[0], lines[1..].join("\n")));
        assert!(e.contains("line 2: integrity check failed"), "{e}");
        // Two lines swapped.
        let e = attempt(format!(
            "{}\n{}\n{}\n{}\n",
            lines[0], lines[2], lines[1], lines[3]
        ));
        assert!(e.contains("line 2"), "{e}");
        // A line removed from the middle.
        let e = attempt(format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]));
        assert!(e.contains("line 2"), "{e}");
        // A record without a tag (hand-written).
        let e = attempt(format!(
            "{good}{{\"record\":\"step-succeeded\",\"step\":\"x\",\"outputs\":{{}}}}\n"
        ));
        assert!(e.contains("line 5: the record has no integrity tag"), "{e}");
        // The right journal under another key.
        std::fs::write(&p, &good).unwrap();
        let other = Key::from_bytes(b"another key entirely, 32 bytes!!");
        assert!(matches!(
            read(&p, &other),
            Err(JournalError::Tampered { line: 1, .. })
        ));
        // And the untouched journal reads.
        assert_eq!(read(&p, &key()).unwrap().len(), 4);
    }

    #[test]
    fn the_key_is_made_once_private_and_loose_ones_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cfg/rollwright/journal.key");
        let k1 = Key::load_or_create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let k2 = Key::load_or_create(&p).unwrap();
        let chain = [7u8; 32];
        assert_eq!(
            k1.tag(&chain, b"x"),
            k2.tag(&chain, b"x"),
            "the same key is read back"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Key::load_or_create(&p).unwrap_err().to_string();
        assert!(e.contains("others may read or change it (mode 644)"), "{e}");
    }

    #[test]
    fn one_run_per_target() {
        let dir = tempfile::tempdir().unwrap();
        let first = TargetLock::acquire(dir.path(), "prod-east/risk", "run r1 (pid 42)").unwrap();
        let e = TargetLock::acquire(dir.path(), "prod-east/risk", "run r2").unwrap_err();
        assert_eq!(
            e.to_string(),
            "target prod-east/risk is locked by another run (run r1 (pid 42)); wait for it, or resume it"
        );
        drop(first);
        TargetLock::acquire(dir.path(), "prod-east/risk", "run r2").unwrap();
    }

    #[test]
    fn group_commit_keeps_order_and_flush_means_durable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        let j = Journal::create(&p, key()).unwrap();
        let gc = GroupCommit::start(j);
        gc.append(started());
        for i in 0..500 {
            gc.append(Record::StepStarted {
                step: format!("s{i}"),
                attempt: 1,
                at_ms: 0,
            });
        }
        gc.flush().unwrap();
        let recs = read(&p, &key()).unwrap();
        assert_eq!(recs.len(), 501);
        assert_eq!(
            recs[500],
            Record::StepStarted {
                step: "s499".into(),
                attempt: 1,
                at_ms: 0,
            }
        );
        assert!(gc.error().is_none());
    }

    #[test]
    fn digests_differ_when_the_spec_does() {
        assert_eq!(digest(&json!({"a": 1})), digest(&json!({"a": 1})));
        assert_ne!(digest(&json!({"a": 1})), digest(&json!({"a": 2})));
        assert_eq!(
            digest(&json!(null)),
            "sha256:74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b"
        );
    }
}
