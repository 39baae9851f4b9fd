//! Engine overhead on no-op steps: `cargo bench --bench executor`.
//!
//! A 10,000-step chain and a 10,000-step fan-out, each run without a
//! journal and with the group-committed journal (every record durable via
//! `fdatasync`, batched). Prints wall time, µs per step and peak RSS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rollwright_engine::exec::{
    self, BoxFuture, Limits, Node, Options, Progress, Sink, Step, StepContext, StepError,
};
use rollwright_engine::journal::{self, GroupCommit, Journal, Record};
use serde_json::Map;

struct NoOp;

impl Step for NoOp {
    fn run<'a>(&'a self, _cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async { Ok(Progress::Done { outputs: Map::new() }) })
    }
}

fn nodes(n: usize, chain: bool) -> Vec<Node> {
    let step: Arc<dyn Step> = Arc::new(NoOp);
    (0..n)
        .map(|i| Node {
            id: format!("s{i}"),
            needs: if chain && i > 0 {
                vec![format!("s{}", i - 1)]
            } else {
                Vec::new()
            },
            step: step.clone(),
            limits: Limits::default(),
            compensation: None,
            continue_on_failure: false,
        })
        .collect()
}

fn max_rss_mib() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_maxrss as f64 / 1024.0
    }
}

/// The bench's journal key (the integrity chain costs what it costs in a run).
fn key() -> Arc<journal::Key> {
    Arc::new(journal::Key::from_bytes(&[7u8; 32]))
}

fn run(n: usize, chain: bool, journal_dir: Option<&std::path::Path>) -> (Duration, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sink, writer): (Sink, Option<Arc<GroupCommit>>) = match journal_dir {
        None => (Arc::new(|_: &exec::Event| Ok(())), None),
        Some(dir) => {
            let path = dir.join(format!("{}-{n}.jsonl", if chain { "chain" } else { "fan" }));
            let _ = std::fs::remove_file(&path);
            let gc = Arc::new(GroupCommit::start(Journal::create(&path, key()).unwrap()));
            gc.append(Record::RunStarted {
                run: "bench".into(),
                digest: "0".into(),
                spec: "bench".into(),
                at_ms: 0,
                overrides: Vec::new(),
                started_by: String::new(),
                policy: serde_json::Value::Null,
                reach: serde_json::Value::Null,
                root: String::new(),
            });
            let w = gc.clone();
            (
                Arc::new(move |e: &exec::Event| {
                    if let Some(r) = journal::record_of(e) {
                        w.append(r);
                    }
                    Ok(())
                }),
                Some(gc),
            )
        }
    };
    let nodes = nodes(n, chain);
    let start = Instant::now();
    let out = rt.block_on(exec::execute(nodes, Vec::new(), Options::default(), sink));
    if let Some(w) = &writer {
        w.flush().unwrap();
    }
    let took = start.elapsed();
    assert_eq!(out.completed.len(), n);
    let records = journal_dir.map_or(0, |d| {
        journal::read(
            &d.join(format!("{}-{n}.jsonl", if chain { "chain" } else { "fan" })),
            &key(),
        )
        .unwrap()
        .len()
    });
    (took, records)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = 10_000;
    let dir = tempfile::tempdir().unwrap();
    for chain in [true, false] {
        let shape = if chain { "chain  " } else { "fan-out" };
        let best =
            |j: Option<&std::path::Path>| (0..5).map(|_| run(n, chain, j)).min_by_key(|r| r.0).unwrap();
        let (t, _) = best(None);
        println!(
            "{shape} {n} steps, no journal:  {:>7.1} ms  {:>5.1} µs/step",
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e6 / n as f64
        );
        let (t, records) = best(Some(dir.path()));
        println!(
            "{shape} {n} steps, journaled:   {:>7.1} ms  {:>5.1} µs/step  ({records} records, all durable)",
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() * 1e6 / n as f64
        );
    }
    println!("peak RSS: {:.1} MiB", max_rss_mib());
}
