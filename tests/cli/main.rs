//! End-to-end tests of the `rollwright` binary: stdout, stderr, exit code.
//! One integration test binary, organised by modules.

/// Declares a test that runs on both backends: `NAME::embedded` and
/// `NAME::kube_apiserver`, the same body given the [`Backend`].
macro_rules! on_both_backends {
    ($(#[doc = $doc:expr])* fn $name:ident($b:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($b: crate::k8s::Backend) $body
            #[test]
            fn embedded() {
                body(crate::k8s::Backend::Embedded);
            }
            #[test]
            fn kube_apiserver() {
                body(crate::k8s::Backend::KubeApiserver);
            }
        }
    };
}

mod analysis;
mod attacks;
mod controller;
mod crash;
mod fixtures;
mod gitops;
mod init;
mod k8s;
mod knowable;
mod kube;
mod lint;
mod mlflow;
mod plan;
mod quickstart;
mod run;
mod schema;
mod sim;
mod view;

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The id of the run under `dir` (`.rollwright/runs/`) whose journal shows
/// `what`, waiting up to 20 s for it.
pub fn journal_shows(dir: &Path, what: &str) -> Option<String> {
    for _ in 0..400 {
        if let Ok(runs) = std::fs::read_dir(dir.join(".rollwright/runs")) {
            for r in runs.flatten() {
                let j = std::fs::read_to_string(r.path().join("journal.jsonl")).unwrap_or_default();
                if j.contains(what) {
                    return Some(r.file_name().to_string_lossy().into_owned());
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}

/// As [`journal_shows`], failing the test when it never does.
pub fn wait_for_journal(dir: &Path, what: &str) -> String {
    journal_shows(dir, what).unwrap_or_else(|| panic!("journal never showed {what}"))
}

/// Runs `rollwright ARGS…` in the repository root.
pub fn rollwright(args: &[&str]) -> Output {
    rollwright_in(&root(), args)
}

pub fn rollwright_in(dir: &Path, args: &[&str]) -> Output {
    Command::cargo_bin("rollwright")
        .unwrap()
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[path = "../../benches/corpus.rs"]
mod corpus;

/// The benchmark's generator makes 80–150-line specs, and lint flags exactly
/// the ones it broke.
#[test]
fn corpus_generator_and_lint_agree() {
    let dir = tempfile::tempdir().unwrap();
    let n = 400;
    let invalid = corpus::write(dir.path(), n, 7).unwrap();
    let mut lines = Vec::new();
    for i in 0..n {
        let g = corpus::spec(7, i, 50);
        lines.push(g.text.lines().count());
    }
    let (min, max) = (lines.iter().min().unwrap(), lines.iter().max().unwrap());
    assert!(*min >= 80 && *max <= 150, "spec lengths {min}..{max}");
    assert!((5..=40).contains(&invalid), "about 5% invalid: {invalid}");
    let out = rollwright_in(dir.path(), &["lint", "--format", "json", "."]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let flagged: std::collections::BTreeSet<&str> = v["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["file"].as_str().unwrap())
        .collect();
    assert_eq!(flagged.len() as u64, invalid);
    assert_eq!(v["files"].as_u64(), Some(n));
}

/// No test hook ships: the binary names none of the environment variables
/// earlier versions read to crash, to run shell commands before a push, or
/// to enable test-only step kinds, and none of the hidden simulation flags.
#[test]
fn the_binary_carries_no_test_hook() {
    let bin = assert_cmd::cargo::cargo_bin("rollwright");
    for needle in [
        "ROLLWRIGHT_TEST_",
        "--sim-registry",
        "--sim-endpoint",
        "--sim-time-scale",
        "sim-registry",
        "sim_time_scale",
    ] {
        // grep: a fast byte search over a large debug binary.
        let found = std::process::Command::new("grep")
            .args(["-a", "-q", "-F", "-e", needle])
            .arg(&bin)
            .status()
            .unwrap();
        assert_eq!(found.code(), Some(1), "the binary contains `{needle}`");
    }
}

/// The README's code table lists every diagnostic code, with its severity.
#[test]
fn readme_documents_every_diagnostic_code() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for code in rollwright_engine::Code::ALL {
        let row = format!("| {} | {} |", code.as_str(), code.severity().as_str());
        assert!(readme.contains(&row), "README lacks `{row}`");
    }
}

/// A child process started in its own process group, killed with the whole
/// group when dropped (servers fork workers).
pub struct ProcessGroup(pub std::process::Child);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: signalling a process group we created.
        unsafe {
            libc::kill(-(self.0.id() as i32), libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

/// The journal fault-injection library (`tests/fault/journal_faults.c`),
/// compiled once per test run: loaded with `LD_PRELOAD`, it kills the
/// process after a chosen durable journal batch, or makes journal writes
/// fail. The shipped binary carries no test hook; faults come from outside.
pub fn fault_lib() -> &'static Path {
    static LIB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LIB.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("journal_faults.so");
        let tmp = out.with_extension(format!("{}.so", std::process::id()));
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = std::process::Command::new(cc)
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&tmp)
            .arg(root().join("tests/fault/journal_faults.c"))
            .arg("-ldl")
            .status()
            .expect("a C compiler (cc) builds the fault-injection library");
        assert!(status.success(), "compiling tests/fault/journal_faults.c failed");
        std::fs::rename(&tmp, &out).unwrap();
        out
    })
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
