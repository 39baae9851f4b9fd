//! The in-cluster controller on kube-apiserver:
//! `cargo bench --bench controller` (needs `ROLLWRIGHT_KUBE_BIN`, from
//! `scripts/setup-kube`).
//!
//! - **Per-step overhead**: a RolloutRun of 200 chained 1 ms holds; the
//!   journal's timestamps give the time per step beyond the step itself
//!   (scheduling, journal, status and Events through the API server).
//! - **Status size** of that run (the largest here).
//! - **Idle runs**: `CONTROLLER_BENCH_RUNS` (default 1,000) RolloutRuns,
//!   each holding for an hour in its own namespace: the leader's memory,
//!   its CPU per idle run, reconcile time per reconcile (controller-runtime's
//!   histogram).
//! - **Fail-over**: the leader killed (SIGKILL); time until the other
//!   replica's first reconcile, and until it has taken over every run.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_rollwright");

fn kubectl(kc: &Path, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kc)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A RolloutRun of a flat spec, with the digest the controller checks.
fn rolloutrun(name: &str, ns: &str, steps: Value) -> Value {
    let spec = json!({
        "apiVersion": "rollwright.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "model": {"registry": "file", "name": name, "version": "1"},
        "target": {"context": "bench", "namespace": ns, "environment": "staging"},
        "steps": steps,
    });
    json!({
        "apiVersion": "rollwright.dev/v1alpha1",
        "kind": "RolloutRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "plan": {
                "name": name,
                "submitter": "admin",
                "digest": rollwright_engine::digest::canonical(&spec),
                "sources": [],
                "model": {"name": name, "version": "1", "registry": "file"},
                "spec": spec,
                "manifests": [],
            },
            "intent": {},
        }
    })
}

struct Replica {
    child: Child,
    log: PathBuf,
}

impl Replica {
    fn start(dir: &Path, id: &str) -> Replica {
        let log = dir.join(format!("{id}.log"));
        let child = Command::new(BIN)
            .current_dir(dir)
            .args([
                "controller",
                "--kubeconfig",
                "kubeconfig",
                "--identity",
                id,
                "--lease-duration",
                "4s",
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
            ])
            .arg(dir.join(format!("state-{id}")))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("controller");
        Replica { child, log }
    }

    fn metrics_url(&self) -> String {
        for _ in 0..100 {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(url) = log
                .lines()
                .find_map(|l| l.split("/readyz on ").nth(1).map(str::to_owned))
            {
                return format!("{}/metrics", url.trim());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no metrics address in {}", self.log.display());
    }

    fn proc_field(&self, file: &str, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// utime + stime, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let rest = stat.rsplit(')').next().unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric(url: &str, name: &str) -> f64 {
    let out = Command::new("curl").args(["-s", url]).output().expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait(what: &str, max: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < max, "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    t.elapsed()
}

fn phases(kc: &Path) -> Vec<(String, String)> {
    let out = kubectl(
        kc,
        &[
            "get",
            "rolloutruns",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.status.holder.identity}{\"\\n\"}{end}",
        ],
        "",
    );
    out.lines()
        .map(|l| {
            let mut p = l.split(' ');
            let _ = p.next();
            (
                p.next().unwrap_or_default().to_owned(),
                p.next().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn main() {
    let bin = std::env::var_os("ROLLWRIGHT_KUBE_BIN").expect("ROLLWRIGHT_KUBE_BIN (scripts/setup-kube)");
    let runs: usize = std::env::var("CONTROLLER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let cp = rollwright_sim::control_plane::ControlPlane::start(Path::new(&bin)).expect("control plane");
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = dir.path().join("kubeconfig");
    cp.write_kubeconfig_for(&kc, "bench").expect("kubeconfig");
    kubectl(
        &kc,
        &["apply", "--server-side", "-f", "-"],
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/rolloutrun.yaml"))
            .expect("crd"),
    );
    kubectl(
        &kc,
        &[
            "wait",
            "--for=condition=Established",
            "crd/rolloutruns.rollwright.dev",
            "--timeout=30s",
        ],
        "",
    );
    let a = Replica::start(dir.path(), "ctl-a");
    let a_url = a.metrics_url();
    wait("ctl-a leads", Duration::from_secs(30), || {
        metric(&a_url, "rollwright_leader") >= 1.0
    });
    let b = Replica::start(dir.path(), "ctl-b");
    let b_url = b.metrics_url();

    // Per-step overhead and status size: 200 chained 1 ms holds.
    kubectl(&kc, &["create", "namespace", "chain"], "");
    let steps: Vec<Value> = (0..200)
        .map(|i| {
            let mut s = json!({"id": format!("s{i:03}"), "type": "hold", "with": {"duration": "1ms"}});
            if i > 0 {
                s["needs"] = json!([format!("s{:03}", i - 1)]);
            }
            s
        })
        .collect();
    kubectl(
        &kc,
        &["create", "-f", "-"],
        &rolloutrun("chain", "chain", Value::Array(steps)).to_string(),
    );
    wait("the chain ends", Duration::from_secs(300), || {
        kubectl(
            &kc,
            &[
                "get",
                "rolloutrun",
                "chain",
                "-n",
                "chain",
                "-o",
                "jsonpath={.status.phase}",
            ],
            "",
        ) == "Succeeded"
    });
    let names = kubectl(
        &kc,
        &[
            "get",
            "configmap",
            "-n",
            "chain",
            "-o",
            "name",
            "-l",
            "rollwright.dev/journal-of",
        ],
        "",
    );
    let mut journal = String::new();
    for n in names.lines() {
        journal.push_str(&kubectl(
            &kc,
            &["get", n, "-n", "chain", "-o", "jsonpath={.data.journal\\.jsonl}"],
            "",
        ));
    }
    let at: Vec<(String, u64)> = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            (
                v["record"].as_str().unwrap_or_default().to_owned(),
                v["at_ms"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let first = at.iter().find(|(r, _)| r == "step-started").map_or(0, |x| x.1);
    let last = at
        .iter()
        .rev()
        .find(|(r, _)| r == "run-finished")
        .map_or(0, |x| x.1);
    let per_step = (last.saturating_sub(first)) as f64 / 200.0 - 1.0;
    let status = kubectl(
        &kc,
        &[
            "get",
            "rolloutrun",
            "chain",
            "-n",
            "chain",
            "-o",
            "jsonpath={.status}",
        ],
        "",
    );
    println!("per-step overhead (200 chained 1 ms holds): {per_step:.1} ms/step");
    println!("status size of that run: {} bytes ({} steps)", status.len(), 200);

    // Idle runs: each a one-hour hold in its own namespace.
    let t = Instant::now();
    for chunk in (0..runs).collect::<Vec<_>>().chunks(200) {
        let ns: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("idle-{i}")}}))
            .collect();
        kubectl(
            &kc,
            &["create", "-f", "-"],
            &json!({"apiVersion": "v1", "kind": "List", "items": ns}).to_string(),
        );
        let rr: Vec<Value> = chunk
            .iter()
            .map(|i| {
                rolloutrun(
                    &format!("idle-{i}"),
                    &format!("idle-{i}"),
                    json!([{"id": "wait", "type": "hold", "with": {"duration": "1h"}}]),
                )
            })
            .collect();
        kubectl(
            &kc,
            &["create", "-f", "-"],
            &json!({"apiVersion": "v1", "kind": "List", "items": rr}).to_string(),
        );
    }
    let created = t.elapsed();
    let all_running = wait("every idle run holds", Duration::from_secs(900), || {
        phases(&kc).iter().filter(|(p, _)| p == "Running").count() >= runs
    });
    println!(
        "{runs} idle runs: created in {:.1} s, all running {:.1} s later",
        created.as_secs_f64(),
        all_running.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(5));
    let (t0, c0) = (Instant::now(), a.cpu_ticks());
    let (r0, s0) = (
        metric(&a_url, "controller_runtime_reconcile_time_seconds_count"),
        metric(&a_url, "controller_runtime_reconcile_time_seconds_sum"),
    );
    std::thread::sleep(Duration::from_secs(30));
    let ticks = a.cpu_ticks().saturating_sub(c0) as f64;
    let secs = t0.elapsed().as_secs_f64();
    let (r1, s1) = (
        metric(&a_url, "controller_runtime_reconcile_time_seconds_count"),
        metric(&a_url, "controller_runtime_reconcile_time_seconds_sum"),
    );
    let hz = 100.0;
    println!(
        "leader with {runs} idle runs: RSS {} MiB (peak {} MiB), CPU {:.1} % of a core ({:.3} ms of CPU per idle run per second)",
        a.proc_field("status", "VmRSS:") / 1024,
        a.proc_field("status", "VmHWM:") / 1024,
        ticks / hz / secs * 100.0,
        ticks / hz / secs / runs as f64 * 1000.0,
    );
    println!(
        "reconciles while idle: {:.1}/s, {:.3} ms each (controller_runtime_reconcile_time_seconds)",
        (r1 - r0) / secs,
        if r1 > r0 {
            (s1 - s0) / (r1 - r0) * 1000.0
        } else {
            0.0
        }
    );

    // Fail-over.
    let killed = Instant::now();
    unsafe {
        libc::kill(i32::try_from(a.child.id()).expect("pid"), libc::SIGKILL);
    }
    let first = wait("ctl-b reconciles", Duration::from_secs(120), || {
        metric(&b_url, "controller_runtime_reconcile_total") > 0.0
    });
    let every = wait("ctl-b holds every run", Duration::from_secs(900), || {
        phases(&kc).iter().filter(|(_, h)| h == "ctl-b").count() >= runs
    });
    println!(
        "leader killed: first reconcile of the new leader after {:.2} s (Lease 4 s); every run taken over after {:.1} s",
        first.as_secs_f64(),
        (first + every).as_secs_f64()
    );
    let _ = killed;
    std::thread::sleep(Duration::from_secs(5));
    let mut b = b;
    match b.child.try_wait() {
        Ok(None) => println!(
            "new leader with {runs} runs: RSS {} MiB",
            b.proc_field("status", "VmRSS:") / 1024
        ),
        other => {
            let log = std::fs::read_to_string(&b.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            panic!("the new leader exited ({other:?}): {tail:#?}");
        }
    }
}
