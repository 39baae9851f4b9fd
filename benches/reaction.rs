//! Reaction time of analysis: from the moment the sim's scenario makes the
//! canary fail to the moment traffic is 100 % on stable, for a canary at
//! 20 % under an analysed hold (probe metrics, failure-limit 1). The bound
//! to meet: one analysis interval plus 1 s.
//!
//! `cargo bench --bench reaction`

use std::time::{Duration, Instant};

use rollwright_sim::{Scenario, Sim, SimOptions};

const WORLD: &str = include_str!("../tests/fixtures/k8s/istio-world.yaml");
const SPEC: &str = include_str!("../tests/fixtures/k8s/istio-spec.yaml");
const MANIFEST: &str = include_str!("../tests/fixtures/k8s/canary.yaml.hbs");
const REGISTRY: &str = include_str!("../tests/fixtures/k8s/registry.yaml");

fn once(rt: &tokio::runtime::Runtime, interval: &str, offset: Duration) -> Duration {
    let sim = rt
        .block_on(Sim::start_with(SimOptions {
            scenario: Scenario::from_yaml(WORLD, "world").expect("world"),
            ..SimOptions::default()
        }))
        .expect("sim");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("kubeconfig"), sim.kubeconfig_for("prod-east")).unwrap();
    std::fs::write(dir.path().join("registry.yaml"), REGISTRY).unwrap();
    std::fs::write(dir.path().join("canary.yaml.hbs"), MANIFEST).unwrap();
    let spec = SPEC
        .replace(
            "serving: {platform: deployment, traffic: istio}",
            &format!("serving: {{platform: deployment, traffic: istio, endpoint: \"{}\"}}", sim.models_url()),
        )
        .replace(
            "  - id: shift-50\n    type: shift-traffic\n    needs: [shift-20]",
            &format!(
                "  - id: hold-20\n    type: hold\n    needs: [shift-20]\n    with:\n      duration: 10m\n      analysis:\n        interval: {interval}\n        failure-limit: 1\n        probe: {{requests: 20}}\n        metrics:\n          - {{name: error-rate, provider: probe, query: error-rate, max-increase-over-stable: 0.05}}\n  - id: shift-50\n    type: shift-traffic\n    needs: [hold-20]"
            ),
        )
        .replace("timeout: 1m", "timeout: 15m");
    std::fs::write(dir.path().join("spec.yaml"), spec).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rollwright"))
        .current_dir(dir.path())
        .env("KUBECONFIG", dir.path().join("kubeconfig"))
        .args(["run", "spec.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("rollwright");
    let runs = dir.path().join(".rollwright/runs");
    let journal = || {
        std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| std::fs::read_to_string(e.path().join("journal.jsonl")).ok())
            .unwrap_or_default()
    };
    while !journal().contains(r#""step":"hold-20","key":"started-ms""#) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let on_stable = || sim.split("fraud") == std::collections::BTreeMap::from([("7".to_owned(), 100)]);
    // The sim routes 20 % to the canary by now.
    while on_stable() {
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(offset);
    // The canary starts failing every request.
    let t0 = Instant::now();
    sim.set_scenario(
        &Scenario::from_yaml(
            "traffic: {rate: 0}\nmodels: {fraud: {versions: {\"8\": {error-rate: 100%}}}}\n",
            "fail",
        )
        .unwrap(),
    );
    while !on_stable() {
        std::thread::sleep(Duration::from_millis(2));
        assert!(t0.elapsed() < Duration::from_secs(120), "no rollback");
    }
    let took = t0.elapsed();
    let _ = child.wait();
    took
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for interval in ["1s", "5s"] {
        let iv = rollwright_engine::duration::parse(interval).unwrap();
        let mut samples = Vec::new();
        // The failure starts at different points of the interval.
        for k in 0..5u32 {
            let offset = iv.mul_f64(f64::from(k) / 5.0) + Duration::from_millis(37);
            samples.push(once(&rt, interval, offset));
        }
        samples.sort();
        let ms = |d: &Duration| d.as_millis();
        println!(
            "interval {interval}: failure -> 100% on stable: min {} ms, median {} ms, max {} ms (bound {} ms) {}",
            ms(&samples[0]),
            ms(&samples[samples.len() / 2]),
            ms(&samples[samples.len() - 1]),
            ms(&(iv + Duration::from_secs(1))),
            if samples[samples.len() - 1] <= iv + Duration::from_secs(1) {
                "OK"
            } else {
                "OVER"
            }
        );
    }
}
