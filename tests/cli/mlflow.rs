//! Gates against a real MLflow server (PyPI `mlflow`, installed by
//! `scripts/setup-mlflow` into a project venv, started here on 127.0.0.1
//! with a SQLite backend): approved, unapproved, missing evals, too few
//! approvals, expired approval, and an approval revoked mid-run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{stderr, stdout};

struct Server {
    _child: crate::ProcessGroup,
    uri: String,
    venv: PathBuf,
    _dir: tempfile::TempDir,
}

fn venv() -> PathBuf {
    let v = std::env::var_os("ROLLWRIGHT_MLFLOW_VENV").expect(
        "ROLLWRIGHT_MLFLOW_VENV is not set: run the suite with scripts/test, which installs MLflow (scripts/setup-mlflow)",
    );
    PathBuf::from(v)
}

fn start() -> Server {
    use std::os::unix::process::CommandExt;
    let venv = venv();
    let dir = tempfile::tempdir().unwrap();
    let port = crate::free_port();
    let child = Command::new(venv.join("bin/mlflow"))
        .args([
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--workers",
            "1",
        ])
        .arg("--backend-store-uri")
        .arg(format!("sqlite:///{}", dir.path().join("mlflow.db").display()))
        .arg("--default-artifact-root")
        .arg(dir.path().join("artifacts"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let uri = format!("http://127.0.0.1:{port}");
    let server = Server {
        _child: crate::ProcessGroup(child),
        uri,
        venv,
        _dir: dir,
    };
    let started = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && Command::new(server.venv.join("bin/python"))
                .args([
                    "-c",
                    &format!(
                        "import urllib.request; urllib.request.urlopen('{}/health', timeout=2)",
                        server.uri
                    ),
                ])
                .status()
                .is_ok_and(|s| s.success())
        {
            return server;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "MLflow did not start"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn python(server: &Server, script: &str, args: &[&str]) {
    let out = Command::new(server.venv.join("bin/python"))
        .arg(crate::root().join("tests").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn seed(server: &Server, model: &str, alias: Option<&str>, tags: &[(&str, &str)], metrics: &[(&str, f64)]) {
    let spec = serde_json::json!({
        "model": model,
        "alias": alias,
        "tags": tags.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
        "metrics": metrics.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
    });
    python(server, "mlflow_setup.py", &[&server.uri, &spec.to_string()]);
}

fn spec(model: &str, extra_steps: &str) -> String {
    format!(
        r#"apiVersion: rollwright.dev/v1alpha1
kind: Rollout
metadata: {{name: {model}}}
model: {{registry: mlflow, name: {model}, version: "1"}}
target: {{context: prod-east, namespace: {model}, environment: production}}
defaults: {{timeout: 1m, retry: 2}}
steps:
  - id: gate
    type: gate-check
    with: {{approvals: 2, roles: [ml-lead], alias: production-approved, evals: {{auc: {{min: 0.9}}}}}}
{extra_steps}"#
    )
}

const SHIP: &str =
    "  - {id: ship, type: exec, needs: [gate], with: {command: [sh, -c, \"echo shipped >> effects\"]}}\n";

fn run(server: &Server, dir: &Path, spec_text: &str) -> std::process::Output {
    std::fs::write(dir.join("spec.yaml"), spec_text).unwrap();
    assert_cmd::Command::cargo_bin("rollwright")
        .unwrap()
        .current_dir(dir)
        .env("MLFLOW_TRACKING_URI", &server.uri)
        .env("ROLLWRIGHT_MLFLOW_VENV", &server.venv)
        .env("NO_COLOR", "1")
        .args(["run", "spec.yaml"])
        .output()
        .unwrap()
}

/// A model seeded one way, and the unmet condition the gate must report.
type Case = (
    &'static str,
    Option<&'static str>,
    Vec<(&'static str, &'static str)>,
    Vec<(&'static str, f64)>,
    &'static str,
);

fn effects(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("effects")).unwrap_or_default()
}

#[test]
fn gates_against_a_real_mlflow_server() {
    let server = start();
    let ok_tags = [
        ("approval.alice", "ml-lead"),
        ("approval.bob", "engineer"),
        ("rollwright.digest", "sha256:feed"),
    ];

    // Approved.
    let dir = tempfile::tempdir().unwrap();
    seed(
        &server,
        "approved",
        Some("production-approved"),
        &ok_tags,
        &[("auc", 0.95)],
    );
    let out = run(&server, dir.path(), &spec("approved", SHIP));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(effects(dir.path()), "shipped\n");
    let report = std::fs::read_dir(dir.path().join(".rollwright/runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["verification"][0]["outputs"]["digest"], "sha256:feed");
    assert_eq!(report["verification"][0]["outputs"]["evals"]["auc"], 0.95);

    // Each way of not being approved: rejected, nothing shipped.
    let cases: [Case; 4] = [
        (
            "unapproved",
            None,
            ok_tags.to_vec(),
            vec![("auc", 0.95)],
            "(1) lacks alias `production-approved` (has: none)",
        ),
        (
            "no-evals",
            Some("production-approved"),
            ok_tags.to_vec(),
            vec![],
            "(1) eval `auc` is missing",
        ),
        (
            "one-approval",
            Some("production-approved"),
            vec![("approval.alice", "ml-lead")],
            vec![("auc", 0.95)],
            "(1) has 1 valid approval(s) from distinct people, 2 required",
        ),
        (
            "expired",
            Some("production-approved"),
            vec![
                ("approval.alice", "ml-lead"),
                ("approval.bob", "engineer"),
                ("approval.bob.expires", "2020-01-01T00:00:00Z"),
            ],
            vec![("auc", 0.95)],
            "(1) has 1 valid approval(s) from distinct people, 2 required (1 expired)",
        ),
    ];
    for (model, alias, tags, metrics, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        seed(&server, model, alias, &tags, &metrics);
        let out = run(&server, dir.path(), &spec(model, SHIP));
        assert_eq!(out.status.code(), Some(5), "{model}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("gate closed for {model} version 1: {expected}")),
            "{model}: {}",
            stderr(&out)
        );
        assert_eq!(effects(dir.path()), "", "{model}: nothing shipped");
        let _ = stdout(&out);
    }

    // Revoked mid-run: after `first`, the alias and bob's approval go away.
    let dir = tempfile::tempdir().unwrap();
    seed(
        &server,
        "revoked",
        Some("production-approved"),
        &ok_tags,
        &[("auc", 0.95)],
    );
    let revoke = format!(
        "  - id: first\n    type: exec\n    needs: [gate]\n    with:\n      command: [sh, -c, \"echo first >> effects; \\\"$ROLLWRIGHT_MLFLOW_VENV/bin/python\\\" {} {} revoked production-approved approval.bob\"]\n      undo: [sh, -c, \"echo undo-first >> effects\"]\n  - {{id: second, type: exec, needs: [first], with: {{command: [sh, -c, \"echo second >> effects\"]}}}}\n",
        crate::root().join("tests/mlflow_revoke.py").display(),
        server.uri
    );
    let out = run(&server, dir.path(), &spec("revoked", &revoke));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("failed at `second`: gate re-check before changing production"),
        "{}",
        stderr(&out)
    );
    assert_eq!(effects(dir.path()), "first\nundo-first\n");
}
