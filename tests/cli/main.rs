//! End-to-end tests of the `rollwright` binary: stdout, stderr, exit code.
//! One integration test binary, organised by modules.

mod fixtures;
mod lint;
mod schema;

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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
