//! Analysis against real servers: a real Prometheus (Debian `prometheus`,
//! installed by `scripts/setup-prometheus`) scraping the sim's `/metrics`,
//! and a real KServe ModelServer (PyPI `kserve`, `scripts/setup-kserve`)
//! serving a tiny model on 127.0.0.1.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::stderr;

/// A server process, killed with its process group when dropped.
struct Server {
    _child: crate::ProcessGroup,
    port: u16,
    _dir: tempfile::TempDir,
}

use crate::free_port;

fn wait_http(port: u16, path: &str, what: &str) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what} did not become ready on 127.0.0.1:{port}");
}

impl Server {
    /// Starts `cmd` in its own process group, serving on `port`, and waits
    /// until `ready_path` answers 200.
    fn start(mut cmd: Command, port: u16, dir: tempfile::TempDir, ready_path: &str, what: &str) -> Server {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Server {
            _child: crate::ProcessGroup(child),
            port,
            _dir: dir,
        };
        wait_http(port, ready_path, what);
        s
    }
}

fn env_path(var: &str, script: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run the suite with scripts/test, which installs it ({script})")
    }))
}

/// Prometheus scraping `target` (host:port) every second.
fn prometheus(target: &str) -> Server {
    let bin = env_path("ROLLWRIGHT_PROMETHEUS", "scripts/setup-prometheus");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: sim\n    static_configs: [{{targets: ['{target}']}}]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    Server::start(cmd, port, dir, "/-/ready", "Prometheus")
}

/// The same error-rate regression as the sim test, judged through real PromQL.
#[test]
fn an_error_rate_regression_judged_by_a_real_prometheus() {
    let w = crate::k8s::istio_world(
        "models:\n  fraud:\n    versions:\n      \"8\":\n        phases:\n          - {after: 100s, error-rate: 60%}\n",
    );
    // The background traffic generator feeds the counters Prometheus scrapes.
    w.world().set_scenario(
        &rollwright_sim::Scenario::from_yaml(
            "traffic: {rate: 200}\nmodels:\n  fraud:\n    versions:\n      \"8\":\n        phases:\n          - {after: 100s, error-rate: 60%}\n",
            "live",
        )
        .unwrap(),
    );
    let models = w.world().models_url().trim_start_matches("http://").to_owned();
    let prom = prometheus(&models);
    // `or vector(0)`: a version that never failed has no 5xx series at all.
    let query = "(sum(rate(sim_model_requests_total{model=\\\"{{model.name}}\\\",code=~\\\"5..\\\",${selector}}[4s])) or vector(0)) / sum(rate(sim_model_requests_total{model=\\\"{{model.name}}\\\",${selector}}[4s]))";
    let metrics = format!(
        "        on-no-data: hold\n        failure-limit: 2\n        metrics:\n          - {{name: error-rate, provider: prometheus, address: \"http://127.0.0.1:{}\", query: \"{query}\", max-increase-over-stable: 0.05, max: 0.9}}",
        prom.port
    );
    w.write("spec.yaml", &crate::k8s::analysed_spec(&w, "60s", &metrics));
    let out = w.rollwright(&["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("analysis failed: error-rate: canary 0."), "{err}");
    assert!(
        err.contains("> stable 0.000 + 0.050 (max-increase-over-stable) (2 consecutive breaches, limit 2)"),
        "{err}"
    );
    // Caught by the analysis during the hold, not by a deadline.
    assert!(!err.contains("deadline"), "{err}");
    w.wait_split("fraud", &[("7", 100)]);
}

/// The tiny model on a real KServe ModelServer.
fn model_server(delay: f64, output: f64) -> Server {
    let venv = env_path("ROLLWRIGHT_KSERVE_VENV", "scripts/setup-kserve");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(crate::root().join("tests/kserve_model.py"))
        .args([port.to_string(), delay.to_string(), output.to_string()])
        .current_dir(dir.path());
    Server::start(cmd, port, dir, "/v2/health/ready", "the KServe ModelServer")
}

fn verify_spec(port: u16, steps: &str) -> String {
    format!(
        "apiVersion: rollwright.dev/v1alpha1\nkind: Rollout\nmetadata: {{name: fraud}}\nmodel: {{name: fraud, version: \"8\"}}\ntarget: {{context: staging, namespace: ml, environment: staging}}\nserving: {{platform: kserve, endpoint: \"http://127.0.0.1:{port}\"}}\ndefaults: {{timeout: 1m, retry: 1}}\nsteps:\n{steps}"
    )
}

fn run_spec(spec: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), spec).unwrap();
    crate::rollwright_in(dir.path(), &["run", "spec.yaml"])
}

#[test]
fn verify_inference_against_a_real_kserve_model_server() {
    let server = model_server(0.0, 0.42);
    // Both protocols, with value assertions.
    let ok = verify_spec(
        server.port,
        "  - {id: v1, type: verify-inference, with: {protocol: kserve-v1, requests: 3, expect: {status: 200, latency: 2s, json: [{path: \"$.predictions[0]\", equals: 0.42, tolerance: 0.001}]}}}\n  - {id: v2, type: verify-inference, needs: [v1], with: {protocol: v2, requests: 3, expect: {json: [{path: \"$.outputs[0].data[0]\", equals: 0.42, tolerance: 0.001}, {path: \"$.model_name\", equals: fraud}]}}}\n",
    );
    let out = run_spec(&ok);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A failing assertion.
    let bad = verify_spec(
        server.port,
        "  - {id: v2, type: verify-inference, with: {protocol: v2, expect: {json: [{path: \"$.outputs[0].data[0]\", equals: 0.9, tolerance: 0.05}]}}}\n",
    );
    let out = run_spec(&bad);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("$.outputs[0].data[0] is 0.41999998688697815, expected 0.9 ± 0.05"),
        "{}",
        stderr(&out)
    );
    drop(server);
    // A slow model misses the latency budget.
    let slow = model_server(0.4, 0.42);
    let spec = verify_spec(
        slow.port,
        "  - {id: v1, type: verify-inference, with: {protocol: kserve-v1, requests: 2, expect: {latency: 150ms}}}\n",
    );
    let out = run_spec(&spec);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("(budget 150ms)"), "{}", stderr(&out));
}
