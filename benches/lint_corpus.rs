//! Lint throughput on a realistic monorepo: `cargo bench --bench lint_corpus`.
//!
//! Generates 10,000 specs of 80–150 lines (~5 % with one mistake each) under
//! `target/bench-corpus/`, then measures:
//! - the end-to-end CLI, `rollwright lint --format json DIR`, wall time over
//!   several runs (files/s), checking that exactly the broken files are
//!   flagged and every diagnostic is located;
//! - peak RSS of the CLI at 10,000 and 40,000 files (memory must stay flat);
//! - the floor: merely reading the same files;
//! - the in-process cost per file on one thread.
//!
//! Then the same on a monorepo-shaped corpus (`corpus::write_monorepo`):
//! ~55 % of the specs on a shared strategy with `params` and `customize`,
//! every spec rendering one of two shared manifest templates, nested team
//! directories, ~5 % with one mistake — wall time, RSS at 10,000 and 40,000
//! files, one file alone, and the peer: schema-only validation of the same
//! files with js-yaml + Ajv on Node (`benches/peer/lint-peer.mjs`, its
//! packages installed with npm into `target/bench-node/` on first use), as
//! a ratio, when `node` and `npm` are on the PATH.
//!
//! Set `LINT_BENCH_FILES` to change the corpus size, `LINT_BENCH_RUNS` the
//! number of timed runs.

#[path = "corpus.rs"]
mod corpus;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn corpus_dir(n: u64) -> (PathBuf, u64) {
    // The generator's source is part of the cache key: a changed generator
    // never reuses a stale corpus.
    let version = include_str!("corpus.rs")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-corpus/{version:016x}/n{n}"));
    let marker = dir.join(".invalid-count");
    if let Some(k) = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return (dir, k);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    let invalid = corpus::write(&dir, n, 42).expect("write corpus");
    std::fs::write(&marker, invalid.to_string()).expect("write marker");
    (dir, invalid)
}

/// Peak RSS (KiB) of the largest child waited for so far.
/// The monorepo corpus of `n` specs (cached like [`corpus_dir`]) and its
/// invalid specs, relative to it.
fn monorepo_dir(n: u64) -> (PathBuf, Vec<String>) {
    let version = include_str!("corpus.rs")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-corpus/{version:016x}/mono{n}"));
    let marker = dir.join(".invalid");
    if let Ok(list) = std::fs::read_to_string(&marker) {
        return (dir, list.lines().map(str::to_owned).collect());
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    let invalid: Vec<String> = corpus::write_monorepo(&dir, n, 7)
        .expect("write corpus")
        .iter()
        .map(|p| p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned())
        .collect();
    std::fs::write(&marker, invalid.join("\n")).expect("write marker");
    (dir, invalid)
}

/// The Node peer, when Node and npm are here: its packages installed once
/// into `target/bench-node/`. Returns the command to run it.
fn node_peer() -> Option<Command> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let node_dir = root.join("target/bench-node");
    let ready = node_dir.join("node_modules/ajv/package.json").is_file()
        && node_dir.join("node_modules/js-yaml/package.json").is_file();
    if !ready {
        std::fs::create_dir_all(&node_dir).ok()?;
        let ok = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "js-yaml@4",
                "ajv@8",
            ])
            .current_dir(&node_dir)
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
    }
    let script = node_dir.join("lint-peer.mjs");
    std::fs::copy(root.join("benches/peer/lint-peer.mjs"), &script).ok()?;
    let mut cmd = Command::new("node");
    cmd.arg(script).arg(root.join("schemas"));
    Some(cmd)
}

fn children_max_rss_kib() -> i64 {
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru.ru_maxrss
    }
}

fn run_lint(dir: &Path) -> (Duration, serde_json::Value) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rollwright"))
        .args(["lint", "--format", "json"])
        .arg(dir)
        .output()
        .expect("run rollwright");
    let took = start.elapsed();
    assert!(out.status.code() == Some(1), "lint must report the broken files");
    (took, serde_json::from_slice(&out.stdout).expect("json report"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_u64("LINT_BENCH_FILES", 10_000);
    let runs = env_u64("LINT_BENCH_RUNS", 7).max(1);
    let (dir, invalid) = corpus_dir(n);
    let lines: usize = walk(&dir)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum();
    println!(
        "corpus: {n} files in {} ({} lines on average), {invalid} with a mistake",
        dir.display(),
        lines as u64 / n
    );

    // Floor: read every file.
    let files = walk(&dir);
    let start = Instant::now();
    let mut bytes = 0usize;
    for f in &files {
        bytes += std::fs::read(f).unwrap().len();
    }
    let read = start.elapsed();
    println!(
        "read only:        {:>8.1} ms  {:>8.0} files/s  ({} MiB)",
        read.as_secs_f64() * 1e3,
        n as f64 / read.as_secs_f64(),
        bytes / (1 << 20)
    );

    // End to end.
    let (_, warm) = run_lint(&dir);
    let flagged: std::collections::BTreeSet<&str> = warm["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert!(
                d["line"].as_u64().unwrap() >= 1 && d["column"].as_u64().unwrap() >= 1,
                "located: {d}"
            );
            d["file"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        flagged.len() as u64,
        invalid,
        "exactly the broken files are flagged"
    );
    assert_eq!(warm["files"].as_u64(), Some(n));
    let times: Vec<Duration> = (0..runs).map(|_| run_lint(&dir).0).collect();
    let med = median(times.clone());
    let best = times.iter().min().copied().unwrap_or(med);
    println!(
        "rollwright lint:  {:>8.1} ms  {:>8.0} files/s  (median of {runs}; best {:.1} ms; {} diagnostics)",
        med.as_secs_f64() * 1e3,
        n as f64 / med.as_secs_f64(),
        best.as_secs_f64() * 1e3,
        warm["diagnostics"].as_array().unwrap().len()
    );
    let rss_n = children_max_rss_kib();
    println!("peak RSS at {n} files: {:.1} MiB", rss_n as f64 / 1024.0);

    // Memory flat in the number of files: 4x the corpus.
    if std::env::var_os("LINT_BENCH_SKIP_SCALE").is_none() {
        let (big, _) = corpus_dir(n * 4);
        let (t, _) = run_lint(&big);
        println!(
            "peak RSS at {} files: {:.1} MiB  ({:.1} ms, {:.0} files/s)",
            n * 4,
            children_max_rss_kib() as f64 / 1024.0,
            t.as_secs_f64() * 1e3,
            (n * 4) as f64 / t.as_secs_f64()
        );
    }

    monorepo(n, runs);

    // In process, one thread: the cost of one file.
    let linter =
        rollwright_engine::Linter::new(rollwright_steps::registry(), rollwright_engine::Limits::default())
            .expect("schemas compile");
    let texts: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let start = Instant::now();
    let mut diags = 0usize;
    for (f, t) in files.iter().zip(&texts) {
        diags += linter.lint(f, t, true).diagnostics.len();
    }
    let one = start.elapsed();
    println!(
        "in-process, 1 thread: {:.1} µs/file ({:.0} files/s/core, {diags} diagnostics)",
        one.as_secs_f64() * 1e6 / n as f64,
        n as f64 / one.as_secs_f64()
    );
}

/// The monorepo shape: strategies, params, customize and templates.
fn monorepo(n: u64, runs: u64) {
    let (dir, invalid) = monorepo_dir(n);
    let files = walk(&dir.join("teams"));
    let lines: usize = files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum();
    println!(
        "\nmonorepo corpus: {n} specs in {} ({} lines on average, 2 strategies, 2 templates), {} with a mistake",
        dir.display(),
        lines as u64 / n,
        invalid.len()
    );
    let (_, warm) = run_lint(&dir);
    let flagged: std::collections::BTreeSet<String> = warm["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["severity"] == "error")
        .map(|d| {
            assert!(
                d["line"].as_u64().unwrap() >= 1 && d["column"].as_u64().unwrap() >= 1,
                "located: {d}"
            );
            // A finding in the strategy names the spec that instantiated it.
            d["spec"].as_str().or(d["file"].as_str()).unwrap().to_owned()
        })
        .collect();
    let flagged_specs: std::collections::BTreeSet<String> = flagged
        .iter()
        .map(|f| {
            let at = f
                .find("teams/")
                .unwrap_or_else(|| panic!("a diagnostic outside the specs: {f}"));
            f[at..].to_owned()
        })
        .collect();
    let want: std::collections::BTreeSet<String> = invalid.iter().cloned().collect();
    assert_eq!(
        flagged_specs, want,
        "exactly the broken specs are flagged, in the spec"
    );
    assert_eq!(warm["files"].as_u64(), Some(n + 2));
    let times: Vec<Duration> = (0..runs).map(|_| run_lint(&dir).0).collect();
    let med = median(times);
    println!(
        "rollwright lint:  {:>8.1} ms  {:>8.0} files/s  (median of {runs}; {} diagnostics)",
        med.as_secs_f64() * 1e3,
        n as f64 / med.as_secs_f64(),
        warm["diagnostics"].as_array().unwrap().len()
    );
    println!(
        "peak RSS at {n} files: {:.1} MiB",
        children_max_rss_kib() as f64 / 1024.0
    );
    // One file alone (the editor's and the pre-commit hook's case).
    let one = &files[0];
    let singles: Vec<Duration> = (0..runs.max(5))
        .map(|_| {
            let start = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_rollwright"))
                .args(["lint", "--format", "json"])
                .arg(one)
                .output()
                .expect("run rollwright");
            assert!(out.status.code().is_some_and(|c| c <= 1));
            start.elapsed()
        })
        .collect();
    println!(
        "one file:         {:>8.1} ms",
        median(singles).as_secs_f64() * 1e3
    );
    if std::env::var_os("LINT_BENCH_SKIP_SCALE").is_none() {
        let (big, _) = monorepo_dir(n * 4);
        let (t, _) = run_lint(&big);
        println!(
            "peak RSS at {} files: {:.1} MiB  ({:.1} ms, {:.0} files/s)",
            n * 4,
            children_max_rss_kib() as f64 / 1024.0,
            t.as_secs_f64() * 1e3,
            (n * 4) as f64 / t.as_secs_f64()
        );
    }
    match node_peer() {
        None => println!("peer (js-yaml + Ajv on Node): not run (node or npm missing)"),
        Some(mut peer) => {
            let teams = dir.join("teams");
            let times: Vec<Duration> = (0..runs)
                .map(|_| {
                    let start = Instant::now();
                    let out = peer.arg(&teams).output().expect("run node");
                    let took = start.elapsed();
                    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                    // The next run gets the directory again.
                    peer = node_peer().expect("peer");
                    took
                })
                .collect();
            let peer_med = median(times);
            println!(
                "peer (js-yaml + Ajv, schema only, 1 thread): {:>8.1} ms  -> rollwright is {:.2}x the peer",
                peer_med.as_secs_f64() * 1e3,
                peer_med.as_secs_f64() / med.as_secs_f64()
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
    out.sort();
    out
}
