//! Fuzzing the parts that read untrusted input — the spec loader with
//! expansion (strategies, params, for-each, templates, manifests) and the
//! sim's scenario loader — for a bounded time, with a memory cap and a
//! per-input watchdog. Inputs are mutations of the shipped specs and test
//! fixtures (byte flips, YAML syntax spliced in, paths swapped for devices
//! and FIFOs, nested `each`, huge numbers, deep nesting, aliases).
//!
//! `scripts/test` runs it for `ROLLWRIGHT_FUZZ_SECONDS` (default here: 10 s;
//! the script sets it) under `ulimit -v`. A failure prints the seed and the
//! input; `ROLLWRIGHT_FUZZ_SEED=N` replays from that seed. A plain
//! `cargo test` runs it for a couple of seconds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The memory this test may use at once: a loader that grows without bound
/// fails here, naming its input, instead of exhausting the machine.
const CAP: usize = 1536 * 1024 * 1024;

struct Capped;
static USED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = USED.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        if now > CAP {
            USED.fetch_sub(layout.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        USED.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Capped = Capped;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Fragments a mutation splices in.
const SPLICES: &[&str] = &[
    "{{#each params.weights}}{{#each ../params.weights}}{{#each ../../params.weights}}{{this}}{{/each}}{{/each}}{{/each}}",
    "{{{params.manifest}}}",
    "{{> partial}}",
    "}\n---\nkind: Secret\n",
    "&a [*a, *a, *a, *a]",
    "*a",
    "<<: {x: 1}",
    "!!python/object:os.system",
    "99999999999999999999999999",
    "1e999",
    ".nan",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "{{steps.deploy.outputs.revision}}",
    "{{params.nope}}",
    "\t",
    "\u{0}",
    "\u{feff}",
    "- - - - - - - - - -",
    "for-each: [1, 2, 3]",
    "uses: /dev/zero",
    "template: /dev/zero",
    "template: FIFO",
    "template: ../../../../etc/passwd",
    "uses: ../../../../etc/hostname",
    "duration: 99999999999999d",
    "canary: -1",
    "'",
    "\"",
    "?",
    ": :",
];

fn mutate(rng: &mut Rng, text: &str, fifo: &Path) -> String {
    let mut s: Vec<u8> = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        if s.is_empty() {
            break;
        }
        let at = rng.below(s.len());
        match rng.below(6) {
            0 => s[at] ^= 1 << rng.below(8),
            1 => {
                let frag = SPLICES[rng.below(SPLICES.len())].replace("FIFO", &fifo.to_string_lossy());
                s.splice(at..at, frag.bytes());
            }
            2 => {
                let end = (at + rng.below(40)).min(s.len());
                s.drain(at..end);
            }
            3 => {
                // Duplicate a line.
                let text = String::from_utf8_lossy(&s).into_owned();
                let lines: Vec<&str> = text.lines().collect();
                if !lines.is_empty() {
                    let i = rng.below(lines.len());
                    let mut out = lines.clone();
                    out.insert(i, lines[i]);
                    s = out.join("\n").into_bytes();
                }
            }
            4 => {
                // A value replaced by a path that must not be followed.
                let frag = ["/dev/zero", "/dev/urandom", "/proc/self/mem", "/etc/shadow", "."][rng.below(5)];
                s.splice(at..at, frag.bytes());
            }
            _ => {
                let frag = SPLICES[rng.below(SPLICES.len())];
                let end = (at + rng.below(20)).min(s.len());
                s.splice(at..end, frag.bytes());
            }
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

fn corpus(dir: &str, ext: &[&str]) -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root.join(dir)).into_iter().flatten() {
        let p = e.path();
        if p.is_file()
            && p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| ext.contains(&x))
        {
            out.push(std::fs::read_to_string(p).unwrap_or_default());
        }
    }
    out
}

fn budget() -> Duration {
    std::env::var("ROLLWRIGHT_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(2), Duration::from_secs)
}

fn seed() -> u64 {
    std::env::var("ROLLWRIGHT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}

/// Runs `f` on `input` on a thread; a case that does not finish in a minute
/// is a hang (the budgets exist so that none does).
fn watched(what: &str, seed: u64, input: String, f: fn(&str)) {
    let (tx, rx) = std::sync::mpsc::channel();
    let copy = input.clone();
    let h = std::thread::Builder::new()
        .stack_size(8 * 1024 * 1024)
        .spawn(move || {
            f(&copy);
            let _ = tx.send(());
        })
        .unwrap();
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => {
            let _ = h.join();
        }
        Err(_) => panic!("{what}: no answer within a minute (seed {seed}) for:\n{input}"),
    }
}

fn lint_and_expand(input: &str) {
    let dir = work_dir();
    let spec = dir.join("rollouts/fuzz.yaml");
    std::fs::write(&spec, input).unwrap();
    let linter =
        rollwright_engine::Linter::new(rollwright_steps::registry(), rollwright_engine::Limits::default())
            .unwrap();
    let _ = linter.lint(&spec, input.as_bytes(), false);
    let _ = linter.prepare(&spec, input.as_bytes(), &[]);
}

fn scenario(input: &str) {
    let _ = rollwright_sim::Scenario::from_yaml(input, "fuzz");
    let dir = work_dir();
    let p = dir.join("scenario.yaml");
    std::fs::write(&p, input).unwrap();
    let _ = rollwright_sim::Scenario::load(&p);
}

/// A per-thread copy of the shipped strategies and manifests, with a FIFO.
fn work_dir() -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = {
            let d = tempfile::tempdir().unwrap();
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            std::fs::create_dir(d.path().join(".git")).unwrap();
            for sub in ["strategies", "manifests", "sim", "rollouts"] {
                std::fs::create_dir_all(d.path().join(sub)).unwrap();
                if let Ok(rd) = std::fs::read_dir(root.join("specs").join(sub)) {
                    for e in rd.flatten().filter(|e| e.path().is_file()) {
                        std::fs::copy(e.path(), d.path().join(sub).join(e.file_name())).unwrap();
                    }
                }
            }
            d
        };
    }
    DIR.with(|d| d.path().to_path_buf())
}

fn make_fifo(dir: &Path) -> PathBuf {
    let fifo = dir.join("fifo.yaml.hbs");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: a valid, NUL-terminated path.
    unsafe {
        libc::mkfifo(c.as_ptr(), 0o600);
    }
    fifo
}

#[test]
fn the_spec_loader_and_expansion_survive_mutated_specs() {
    let seed = seed();
    eprintln!("spec loader: seed {seed} (ROLLWRIGHT_FUZZ_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let fifo = make_fifo(&work_dir());
    let mut inputs = corpus("specs/examples", &["yaml"]);
    inputs.extend(corpus("specs/strategies", &["yaml"]));
    inputs.extend(corpus("tests/fixtures/lint", &["yaml"]));
    let deadline = Instant::now() + budget();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let base = &inputs[rng.below(inputs.len())];
        // Paths in the corpus are relative to specs/examples: the copy
        // keeps the same layout under `rollouts/`.
        let input = mutate(&mut rng, base, &fifo);
        watched("spec", seed, input, lint_and_expand);
        n += 1;
    }
    eprintln!(
        "spec loader: {n} mutated specs (seed {seed}), peak use under {} MiB",
        CAP >> 20
    );
    assert!(n > 0);
}

#[test]
fn the_scenario_loader_survives_mutated_scenarios() {
    let seed = seed() ^ 0xABCD;
    eprintln!("scenario loader: seed {seed}");
    let mut rng = Rng(seed);
    let fifo = make_fifo(&work_dir());
    let inputs = corpus("specs/sim", &["yaml"]);
    let deadline = Instant::now() + budget() / 2;
    let mut n = 0u64;
    while Instant::now() < deadline {
        let base = &inputs[rng.below(inputs.len())];
        let mut input = mutate(&mut rng, base, &fifo);
        if rng.below(8) == 0 {
            input.push_str("\nextends: /dev/zero\n");
        }
        if rng.below(8) == 0 {
            input.push_str("\nobjects:\n  - {apiVersion: apps/v1, kind: Deployment, metadata: {name: x}, spec: {replicas: 1000000000}}\n");
        }
        watched("scenario", seed, input, scenario);
        n += 1;
    }
    eprintln!("scenario loader: {n} mutated scenarios (seed {seed})");
    assert!(n > 0);
}
