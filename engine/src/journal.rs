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
        /// SHA-256-like digest of the expanded spec (see [`digest`]).
        digest: String,
        /// The spec's path.
        spec: String,
        /// Unix time in milliseconds.
        at_ms: u64,
    },
    /// An attempt of a step started.
    StepStarted {
        /// Step id.
        step: String,
        /// Attempt number.
        attempt: u32,
    },
    /// A step succeeded.
    StepSucceeded {
        /// Step id.
        step: String,
        /// Its outputs.
        outputs: Map<String, Value>,
    },
    /// A step failed for good.
    StepFailed {
        /// Step id.
        step: String,
        /// The last real error.
        error: String,
        /// With `continue-on-failure`.
        tolerated: bool,
    },
    /// A step recorded what it needs to undo itself, before changing anything.
    Recorded {
        /// Step id.
        step: String,
        /// What it is.
        key: String,
        /// The value (secrets scrubbed).
        value: Value,
    },
    /// A compensation finished.
    Compensated {
        /// The step it undid.
        step: String,
        /// Its error, if it failed.
        error: Option<String>,
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

/// An open journal, appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Creates the journal of a new run (fails if it exists).
    ///
    /// # Errors
    /// I/O errors.
    pub fn create(path: &Path) -> Result<Self, JournalError> {
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
        })
    }

    /// Reopens a journal to continue it, cutting a torn last line first.
    ///
    /// # Errors
    /// I/O errors.
    pub fn reopen(path: &Path) -> Result<Self, JournalError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err(path))?;
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if keep < bytes.len() {
            file.set_len(keep as u64).map_err(io_err(path))?;
        }
        file.seek(io::SeekFrom::End(0)).map_err(io_err(path))?;
        Ok(Journal {
            path: path.to_path_buf(),
            file,
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
        let mut buf = Vec::with_capacity(records.len() * 96);
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(|e| io_err(&self.path)(io::Error::other(e)))?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf).map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))
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
    Some(match e {
        Event::Started { step, attempt } => Record::StepStarted {
            step: step.clone(),
            attempt: *attempt,
        },
        Event::Succeeded { step, outputs: o } => Record::StepSucceeded {
            step: step.clone(),
            outputs: outputs(o),
        },
        Event::Failed {
            step,
            error,
            tolerated,
        } => Record::StepFailed {
            step: step.clone(),
            error: scrub(error),
            tolerated: *tolerated,
        },
        Event::Recorded { step, key, value } => Record::Recorded {
            step: step.clone(),
            key: key.clone(),
            value: {
                let mut v = value.clone();
                scrub_value(&mut v);
                v
            },
        },
        Event::Compensated { step, error } => Record::Compensated {
            step: step.clone(),
            error: error.as_deref().map(scrub),
        },
        Event::Finished { state } => Record::RunFinished {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            state: match state {
                FinalState::Succeeded => "succeeded",
                FinalState::RolledBack => "rolled-back",
                FinalState::RollbackFailed => "rollback-failed",
            }
            .into(),
        },
        Event::Waiting { .. } | Event::Retrying { .. } | Event::Cancelled { .. } | Event::Handled { .. } => {
            return None;
        }
    })
}

/// A log line with every registered secret removed.
#[must_use]
pub fn scrub_line(s: &str) -> String {
    crate::secrets::scrub(s)
}

enum Msg {
    Record(Record),
    Flush(std::sync::mpsc::Sender<Result<(), String>>),
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
    error: std::sync::Arc<std::sync::Mutex<Option<String>>>,
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
        let error = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
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
                        Msg::Record(r) => records.push(r),
                        Msg::Flush(ack) => acks.push(ack),
                    }
                }
                if !records.is_empty()
                    && let Err(e) = journal.append_all(&records)
                    && let Ok(mut slot) = err.lock()
                {
                    slot.get_or_insert_with(|| e.to_string());
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
            let _ = tx.send(Msg::Record(r));
        }
    }

    /// Waits until every queued record is durable.
    ///
    /// # Errors
    /// The first write error, if any happened.
    pub fn flush(&self) -> Result<(), String> {
        let (ack, done) = std::sync::mpsc::channel();
        if let Some(tx) = &self.tx {
            tx.send(Msg::Flush(ack))
                .map_err(|_| "journal writer stopped".to_owned())?;
        }
        done.recv().map_err(|_| "journal writer stopped".to_owned())?
    }

    /// The first write error, if any.
    #[must_use]
    pub fn error(&self) -> Option<String> {
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

/// Reads a journal. A torn (unterminated, unparsable) last line is dropped;
/// a bad line anywhere else is corruption.
///
/// # Errors
/// I/O errors, corruption, a missing header.
pub fn read(path: &Path) -> Result<Vec<Record>, JournalError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut lines: Vec<(String, bool)> = Vec::new();
    let mut reader = BufReader::new(file);
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        let complete = line.ends_with('\n');
        lines.push((line, complete));
    }
    let mut records = Vec::with_capacity(lines.len());
    let last = lines.len().saturating_sub(1);
    for (i, (line, complete)) in lines.iter().enumerate() {
        match serde_json::from_str::<Record>(line.trim_end()) {
            Ok(r) => records.push(r),
            // Only the last line can lack its newline: torn by a crash.
            Err(_) if i == last && !complete => break,
            Err(e) => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: e.to_string(),
                });
            }
        }
    }
    match records.first() {
        Some(Record::RunStarted { .. }) => Ok(records),
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
            Record::Recorded { step, key, value } => s.recorded.push(crate::exec::Memo {
                step: step.clone(),
                key: key.clone(),
                value: value.clone(),
            }),
            Record::StepSucceeded { step, outputs } if !s.completed.iter().any(|(id, _)| id == step) => {
                s.completed.push((step.clone(), outputs.clone()));
            }
            Record::StepFailed {
                step,
                error,
                tolerated,
            } if !tolerated => s.failed.push((step.clone(), error.clone())),
            Record::Compensated { step, error: None } => s.compensated.push(step.clone()),
            Record::RunFinished { state, .. } => s.finished = Some(state.clone()),
            _ => {}
        }
    }
    s
}

/// A stable digest of a value (FNV-1a 64 over its canonical JSON, twice
/// with different offsets: 128 bits). Good enough to detect an edited spec.
#[must_use]
pub fn digest(v: &Value) -> String {
    let text = serde_json::to_string(v).unwrap_or_default();
    let fnv = |offset: u64| {
        text.bytes().fold(offset, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    format!(
        "{:016x}{:016x}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x8422_2325_cbf2_9ce4)
    )
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
        }
    }

    #[test]
    fn round_trip_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runs/r1/journal.jsonl");
        let mut j = Journal::create(&p).unwrap();
        let ok = |s: &str| Record::StepSucceeded {
            step: s.into(),
            outputs: json!({"rev": 3}).as_object().unwrap().clone(),
        };
        j.append(&started()).unwrap();
        j.append_all(&[
            ok("a"),
            Record::StepStarted {
                step: "b".into(),
                attempt: 1,
            },
            ok("b"),
        ])
        .unwrap();
        j.append(&Record::StepFailed {
            step: "c".into(),
            error: "boom".into(),
            tolerated: false,
        })
        .unwrap();
        j.append(&Record::Compensated {
            step: "b".into(),
            error: None,
        })
        .unwrap();
        let recs = read(&p).unwrap();
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
        assert!(Journal::create(&p).is_err(), "a run id is never reused");
    }

    #[test]
    fn a_torn_last_line_is_tolerated_and_cut_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        let mut j = Journal::create(&p).unwrap();
        j.append(&started()).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"record":"step-succeeded","step":"a","outp"#)
            .unwrap();
        drop(f);
        assert_eq!(read(&p).unwrap().len(), 1);
        let mut j = Journal::reopen(&p).unwrap();
        j.append(&Record::StepStarted {
            step: "a".into(),
            attempt: 1,
        })
        .unwrap();
        assert_eq!(read(&p).unwrap().len(), 2);
    }

    #[test]
    fn an_edited_journal_is_corrupt_not_silently_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        std::fs::write(&p, "{\"record\":\"run-started\",\"run\":\"r\",\"digest\":\"d\",\"spec\":\"s\",\"at_ms\":1}\n{\"record\":\"step-passed\"}\n{\"record\":\"run-finished\",\"state\":\"succeeded\"}\n").unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.to_string().contains("line 2: not a valid record"), "{e}");
        std::fs::write(&p, "{\"record\":\"step-started\",\"step\":\"a\",\"attempt\":1}\n").unwrap();
        assert!(matches!(read(&p), Err(JournalError::NoHeader(_))));
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
        let j = Journal::create(&p).unwrap();
        let gc = GroupCommit::start(j);
        gc.append(started());
        for i in 0..500 {
            gc.append(Record::StepStarted {
                step: format!("s{i}"),
                attempt: 1,
            });
        }
        gc.flush().unwrap();
        let recs = read(&p).unwrap();
        assert_eq!(recs.len(), 501);
        assert_eq!(
            recs[500],
            Record::StepStarted {
                step: "s499".into(),
                attempt: 1
            }
        );
        assert!(gc.error().is_none());
    }

    #[test]
    fn digests_differ_when_the_spec_does() {
        assert_eq!(digest(&json!({"a": 1})), digest(&json!({"a": 1})));
        assert_ne!(digest(&json!({"a": 1})), digest(&json!({"a": 2})));
        assert_eq!(digest(&json!(null)).len(), 32);
    }
}
