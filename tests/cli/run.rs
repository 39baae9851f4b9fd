//! `rollwright run`, `resume`, `status`: real DAGs of `exec` steps, the
//! journal, and crash recovery at every journal record boundary.

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;

use crate::{stderr, stdout};

/// A DAG whose every effect appends a line to `effects` unless its marker
/// exists: idempotent, so "exactly once" is checkable after any crash.
const SPEC: &str = r#"apiVersion: rollwright.dev/v1alpha1
kind: Rollout
metadata: {name: effects}
model: {name: m, version: "1"}
target: {context: dev, namespace: ns, environment: dev}
defaults: {timeout: 1m}
steps:
  - {id: a, type: exec, with: {command: [sh, -c, "test -e m.a || { echo a >> effects; touch m.a; }"], undo: [sh, -c, "test -e u.a || { echo undo-a >> effects; touch u.a; }"]}}
  - {id: b, type: exec, needs: [a], with: {command: [sh, -c, "test -e m.b || { echo b >> effects; touch m.b; }"], undo: [sh, -c, "test -e u.b || { echo undo-b >> effects; touch u.b; }"]}}
  - {id: c, type: exec, needs: [a], with: {command: [sh, -c, "test -e m.c || { echo c >> effects; touch m.c; }"]}}
  - {id: d, type: exec, needs: [b, c], with: {command: [sh, -c, "test -e m.d || { echo d >> effects; touch m.d; }; exit ${FAIL_D:-0}"]}}
"#;

fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::cargo_bin("rollwright").unwrap();
    cmd.current_dir(dir).env("NO_COLOR", "1").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Environment that kills the run (SIGKILL) right after its `n`th durable
/// journal batch, through the fault-injection library.
pub fn crash_after(n: usize) -> Vec<(&'static str, String)> {
    vec![
        ("LD_PRELOAD", crate::fault_lib().display().to_string()),
        ("RW_FAULT_CRASH_AFTER_SYNCS", n.to_string()),
    ]
}

/// `run_in` with owned environment values.
pub fn run_env(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_in(dir, args, &env)
}

fn effects(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("effects"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn only_run(dir: &Path) -> String {
    let runs: Vec<_> = std::fs::read_dir(dir.join(".rollwright/runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(runs.len(), 1);
    runs[0].to_string_lossy().into_owned()
}

#[test]
fn a_run_succeeds_and_a_failed_run_rolls_back_in_reverse_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), SPEC).unwrap();
    let out = run_in(dir.path(), &["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(": succeeded"));
    let mut e = effects(dir.path());
    e[1..3].sort(); // b and c run concurrently
    assert_eq!(e, ["a", "b", "c", "d"]);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), SPEC).unwrap();
    let out = run_in(dir.path(), &["run", "spec.yaml"], &[("FAIL_D", "3")]);
    assert_eq!(out.status.code(), Some(3), "rolled back: {}", stderr(&out));
    assert!(
        stderr(&out).contains("failed at `d`: `sh` exited with 3"),
        "{}",
        stderr(&out)
    );
    let e = effects(dir.path());
    assert_eq!(
        &e[e.len() - 2..],
        ["undo-b", "undo-a"],
        "compensation in reverse completion order"
    );
    let status = run_in(dir.path(), &["status", "--format", "json"], &[]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(v[0]["state"], "rolled-back");
    assert_eq!(v[0]["failed"][0]["step"], "d");
}

#[test]
fn steps_that_cannot_be_built_are_refused_before_anything_happens() {
    // The shipped example without its inference endpoint: the smoke test
    // and the probe analysis cannot call the model.
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(crate::root().join("specs/examples/deployment-canary.yaml"))
        .unwrap()
        .replace(
            "uses: ../strategies/canary.yaml",
            &format!(
                "uses: {}",
                crate::root().join("specs/strategies/canary.yaml").display()
            ),
        )
        .replace(
            "manifest: ../manifests/",
            &format!("manifest: {}/", crate::root().join("specs/manifests").display()),
        )
        .replace(
            "  endpoint: http://churn-scorer.growth.svc.cluster.local:8080\n",
            "",
        );
    std::fs::write(dir.path().join("spec.yaml"), example).unwrap();
    let out = run_in(dir.path(), &["run", "--root", "/", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Refused by the same check lint makes, located in the strategy.
    let err = stderr(&out);
    assert!(
        err.contains("error[RW071]: this step calls the model: set `serving.endpoint`"),
        "{err}"
    );
    assert!(err.contains("specs/strategies/canary.yaml:"), "{err}");
    assert!(
        !dir.path().join(".rollwright/runs").exists(),
        "no run was created"
    );
}

/// Kill the process (SIGKILL: no cleanup) right after each durable journal
/// batch — every boundary, until a run gets to its end — resume, and check
/// that every effect happened exactly once and the run ends as an
/// uninterrupted one would.
#[test]
fn resume_after_a_crash_at_every_journal_record() {
    for fail in ["0", "3"] {
        for k in 1..=40 {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("spec.yaml"), SPEC).unwrap();
            let mut env = crash_after(k);
            env.push(("FAIL_D", fail.to_owned()));
            let crashed = run_env(dir.path(), &["run", "spec.yaml"], &env);
            let run = only_run(dir.path());
            let reached_the_end = crashed.status.code().is_some();
            let mut code = crashed.status.code();
            let mut resumes = 0;
            while code.is_none() && resumes < 20 {
                // Killed: resume (and maybe crash again at the same count).
                let out = run_in(dir.path(), &["resume", &run], &[("FAIL_D", fail)]);
                code = out.status.code();
                resumes += 1;
                assert!(
                    code.is_some(),
                    "resume without the hook finishes: {}",
                    stderr(&out)
                );
            }
            let expected = if fail == "0" { Some(0) } else { Some(3) };
            assert_eq!(code, expected, "crash after record {k}, fail={fail}");
            let mut e = effects(dir.path());
            for step in ["a", "b", "c", "d"] {
                assert_eq!(
                    e.iter().filter(|l| *l == step).count(),
                    1,
                    "{step} exactly once (crash after {k}): {e:?}"
                );
            }
            if fail == "3" {
                assert_eq!(
                    e.iter().filter(|l| *l == "undo-a").count(),
                    1,
                    "crash after {k}: {e:?}"
                );
                assert_eq!(
                    e.iter().filter(|l| *l == "undo-b").count(),
                    1,
                    "crash after {k}: {e:?}"
                );
            }
            e.clear();
            // A finished run says so on resume.
            let again = run_in(dir.path(), &["resume", &run], &[]);
            assert_eq!(again.status.code(), expected);
            assert!(stdout(&again).contains("already"), "{}", stdout(&again));
            if reached_the_end {
                assert!(k > 3, "every boundary of a whole run was tried ({k})");
                break;
            }
        }
    }
}

#[test]
fn resume_refuses_a_changed_spec() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), SPEC).unwrap();
    let crashed = run_env(dir.path(), &["run", "spec.yaml"], &crash_after(2));
    assert_eq!(crashed.status.code(), None, "killed");
    std::fs::write(dir.path().join("spec.yaml"), SPEC.replace("echo d", "echo D")).unwrap();
    let out = run_in(dir.path(), &["resume", &only_run(dir.path())], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("changed since run"), "{}", stderr(&out));
}

const APPROVAL: &str = r#"apiVersion: rollwright.dev/v1alpha1
kind: Rollout
metadata: {name: approved}
model: {name: m, version: "1"}
target: {context: dev, namespace: ns2, environment: dev}
defaults: {timeout: 1m}
steps:
  - {id: before, type: exec, with: {command: [sh, -c, "echo before >> effects"]}}
  - id: sign-off
    type: approval
    needs: [before]
    with: {approvers: 2, from: [alice, bob, carol], expires: EXPIRES}
  - {id: after, type: exec, needs: [sign-off], with: {command: [sh, -c, "echo after >> effects"]}}
"#;

#[test]
fn approval_waits_for_distinct_approvers_other_than_the_starter() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), APPROVAL.replace("EXPIRES", "1m")).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("rollwright");
    let child = std::process::Command::new(&bin)
        .current_dir(dir.path())
        .env("ROLLWRIGHT_USER", "carol")
        .args(["run", "spec.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = crate::wait_for_journal(dir.path(), r#""step":"sign-off","attempt":1"#);
    let approve = |who: &str| run_in(dir.path(), &["approve", &run, "sign-off", "--as", who], &[]);
    let own = approve("carol");
    assert_eq!(own.status.code(), Some(2));
    assert!(
        stderr(&own).contains("carol started this run and cannot approve it"),
        "{}",
        stderr(&own)
    );
    let stranger = approve("mallory");
    assert_eq!(stranger.status.code(), Some(2));
    assert!(stderr(&stranger).contains("mallory may not approve `sign-off`"));
    let wrong = run_in(dir.path(), &["approve", &run, "before", "--as", "alice"], &[]);
    assert!(
        stderr(&wrong).contains("is a exec, not an approval"),
        "{}",
        stderr(&wrong)
    );
    assert_eq!(approve("alice").status.code(), Some(0));
    assert_eq!(
        approve("alice").status.code(),
        Some(0),
        "approving twice counts once"
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        !effects(dir.path()).contains(&"after".to_owned()),
        "one distinct approval is not two"
    );
    assert_eq!(approve("bob").status.code(), Some(0));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(effects(dir.path()), ["before", "after"]);
}

#[test]
fn an_expired_approval_rolls_the_run_back() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), APPROVAL.replace("EXPIRES", "1s")).unwrap();
    let out = run_in(dir.path(), &["run", "spec.yaml"], &[("ROLLWRIGHT_USER", "carol")]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("approval expired after 1s with 0 of 2 approvals"),
        "{}",
        stderr(&out)
    );
    assert_eq!(effects(dir.path()), ["before"]);
}

#[test]
fn abort_a_running_run_and_an_interrupted_one() {
    // Running: the approval waits; abort from another process.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), APPROVAL.replace("EXPIRES", "1m").replace(
        r#"with: {command: [sh, -c, "echo before >> effects"]}"#,
        r#"with: {command: [sh, -c, "echo before >> effects"], undo: [sh, -c, "echo undo-before >> effects"]}"#,
    ))
    .unwrap();
    let bin = assert_cmd::cargo::cargo_bin("rollwright");
    let child = std::process::Command::new(&bin)
        .current_dir(dir.path())
        .args(["run", "spec.yaml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = crate::wait_for_journal(dir.path(), r#""step":"sign-off","attempt":1"#);
    let out = run_in(dir.path(), &["abort", &run, "--as", "dave"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("is compensating"));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed at `abort`: aborted by dave"));
    assert_eq!(effects(dir.path()), ["before", "undo-before"]);

    // Interrupted (killed once `a` ran, before `b` or `c` started): abort
    // compensates right away.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), SPEC).unwrap();
    let mut env = crash_after(0);
    env[1] = (
        "RW_FAULT_CRASH_AT",
        r#""record":"step-succeeded","step":"a""#.to_owned(),
    );
    let crashed = run_env(dir.path(), &["run", "spec.yaml"], &env);
    assert_eq!(crashed.status.code(), None);
    let run = only_run(dir.path());
    let out = run_in(dir.path(), &["abort", &run], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let e = effects(dir.path());
    assert_eq!(&e[..1], ["a"], "{e:?}");
    assert_eq!(e.iter().filter(|l| *l == "undo-a").count(), 1, "{e:?}");
    assert!(
        !e.iter().any(|l| ["b", "c", "d"].contains(&l.as_str())),
        "nothing after the kill ran: {e:?}"
    );
    let again = run_in(dir.path(), &["abort", &run], &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("has already finished (rolled-back)"));
}

#[test]
fn every_run_writes_a_report_in_the_charter_format() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), SPEC).unwrap();
    let out = run_in(dir.path(), &["run", "spec.yaml"], &[("FAIL_D", "3")]);
    assert_eq!(out.status.code(), Some(3));
    let run = only_run(dir.path());
    let md =
        std::fs::read_to_string(dir.path().join(".rollwright/runs").join(&run).join("report.md")).unwrap();
    let headings: Vec<&str> = md.lines().filter(|l| l.starts_with("## ")).collect();
    assert_eq!(
        headings,
        [
            "## Plan",
            "## Changes",
            "## Verification",
            "## Rollback",
            "## Summary"
        ]
    );
    assert!(md.contains(" by `d`: `sh` exited with 3"), "{md}");
    assert!(md.contains("**Triggered** at 20"), "{md}");
    assert!(md.contains("- rolled back `b`: done"), "{md}");
    assert!(
        md.contains("The rollout of m version 1 to dev/ns was stopped and rolled back in "),
        "{md}"
    );
    assert!(md.contains("It stopped at `d`: `sh` exited with 3."), "{md}");
    assert!(!md.contains("{\""), "no raw JSON:\n{md}");
    let json = run_in(dir.path(), &["report", &run, "--format", "json"], &[]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(v["summary"]["state"], "rolled-back");
    assert_eq!(v["summary"]["succeeded"], 3);
    assert_eq!(v["rollback"]["failure"][0], "d");
    // An interrupted run has a report too, rebuilt from its journal.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), SPEC).unwrap();
    run_env(dir.path(), &["run", "spec.yaml"], &crash_after(3));
    let md = run_in(dir.path(), &["report", &only_run(dir.path())], &[]);
    assert!(
        stdout(&md).contains("was interrupted; `rollwright resume "),
        "{}",
        stdout(&md)
    );
    assert!(
        stdout(&md).contains("| interrupted |") || stdout(&md).contains("| not run |"),
        "{}",
        stdout(&md)
    );
}

/// A one-thread HTTP server on 127.0.0.1 that answers the given statuses in
/// turn and hands back every request it read.
pub fn webhook_server(statuses: Vec<u16>) -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for status in statuses {
            let Ok((mut s, _)) = listener.accept() else { return };
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read headers, then the body by Content-Length.
            loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&buf).to_string());
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (format!("http://{addr}/hooks/T0KEN-IN-URL-12345"), rx)
}

#[test]
fn notify_posts_the_outcome_retries_and_never_leaks_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (url, requests) = webhook_server(vec![503, 200]);
    let spec = SPEC.to_owned()
        + r#"on-failure:
  - id: page
    type: notify
    retry: {attempts: 3, backoff: constant, initial: 100ms}
    with:
      webhook: {env: HOOK_URL}
      headers: {Authorization: {env: HOOK_AUTH}}
      message: effects rolled back
"#;
    std::fs::write(dir.path().join("spec.yaml"), spec).unwrap();
    let out = run_in(
        dir.path(),
        &["run", "spec.yaml"],
        &[
            ("FAIL_D", "3"),
            ("HOOK_URL", &url),
            ("HOOK_AUTH", "Bearer sup3r-s3cret-t0ken"),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let first = requests.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
    let second = requests.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
    assert!(
        first.starts_with("POST /hooks/T0KEN-IN-URL-12345 HTTP/1.1"),
        "{first}"
    );
    assert!(
        second
            .to_ascii_lowercase()
            .contains("authorization: bearer sup3r-s3cret-t0ken"),
        "{second}"
    );
    let body: serde_json::Value = serde_json::from_str(second.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["step"], "page");
    assert_eq!(body["message"], "effects rolled back");
    assert_eq!(body["outcome"]["failed-step"], "d");
    assert_eq!(body["outcome"]["state"], "rolled-back");
    // The secrets appear nowhere: not on the terminal, not in the journal or the report.
    let run = only_run(dir.path());
    let rdir = dir.path().join(".rollwright/runs").join(&run);
    let mut everything = stdout(&out) + &stderr(&out);
    for f in ["journal.jsonl", "report.md", "report.json"] {
        everything += &std::fs::read_to_string(rdir.join(f)).unwrap();
    }
    assert!(
        everything.contains("page: on-failure handler done"),
        "{everything}"
    );
    for secret in ["sup3r-s3cret-t0ken", "T0KEN-IN-URL-12345"] {
        assert!(!everything.contains(secret), "{secret} leaked:\n{everything}");
    }
}

#[test]
fn a_notify_step_that_cannot_deliver_does_not_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _requests) = webhook_server(vec![404]);
    let spec = SPEC.to_owned().replace(
        "  - {id: d,",
        "  - {id: tell, type: notify, needs: [a], with: {webhook: {env: HOOK_URL}}}\n  - {id: d,",
    );
    std::fs::write(dir.path().join("spec.yaml"), spec).unwrap();
    let out = run_in(dir.path(), &["run", "spec.yaml"], &[("HOOK_URL", &url)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("tell: failed (continue-on-failure): webhook answered 404 Not Found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn progress_as_json_events_and_live_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), SPEC).unwrap();
    let out = run_in(dir.path(), &["run", "spec.yaml", "--output", "json"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let events: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["event"], "started");
    assert_eq!(events.last().unwrap()["event"], "finished");
    assert_eq!(events.last().unwrap()["state"], "succeeded");
    assert_eq!(events.iter().filter(|e| e["event"] == "succeeded").count(), 4);

    // Under a pseudo-terminal (40 columns: narrower than the lines) the
    // live view is drawn in place; what the terminal shows at the end is
    // each step once, nothing wrapped, and the summary.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), SPEC).unwrap();
    let (code, shown) = crate::view::pty(dir.path(), "rollwright run spec.yaml", 40, 40, &[]);
    assert_eq!(code, Some(0));
    let rows: Vec<String> = shown.into_iter().map(|(r, _)| r.trim_end().to_owned()).collect();
    let screen = rows.join("\n");
    for step in ["a", "b", "c", "d"] {
        let drawn = rows
            .iter()
            .filter(|r| r.starts_with(&format!("✓ {step} ")))
            .count();
        assert_eq!(drawn, 1, "`{step}` once on the screen:\n{screen}");
    }
    assert!(rows.iter().any(|r| r.starts_with("run succeeded")), "{screen}");
    assert!(rows.iter().any(|r| r.starts_with("report: ")), "{screen}");
    assert!(!screen.contains("(attempt"), "{screen}");
}

/// A real SIGKILL in the middle of a waiting step, then resume.
#[test]
fn sigkill_during_a_wait_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SPEC.replace(
        "  - {id: d, type: exec, needs: [b, c],",
        "  - {id: nap, type: exec, needs: [b, c], with: {command: [sleep, \"2\"]}}\n  - {id: d, type: exec, needs: [nap],",
    );
    std::fs::write(dir.path().join("spec.yaml"), spec).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("rollwright");
    let mut child = std::process::Command::new(&bin)
        .current_dir(dir.path())
        .args(["run", "spec.yaml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run = crate::wait_for_journal(dir.path(), r#""step":"nap","attempt":1"#);
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let out = run_in(dir.path(), &["resume", &run], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("already done"), "{}", stderr(&out));
    let e = effects(dir.path());
    for step in ["a", "b", "c", "d"] {
        assert_eq!(e.iter().filter(|l| *l == step).count(), 1, "{step}: {e:?}");
    }
}

const GATED: &str = r#"apiVersion: rollwright.dev/v1alpha1
kind: Rollout
metadata: {name: gated}
model: {registry: file, name: fraud-detector, version: "7"}
target: {context: prod-east, namespace: risk, environment: production}
defaults: {timeout: 1m, retry: 3}
steps:
  - id: gate
    type: gate-check
    with: {approvals: 2, roles: [ml-lead], alias: production-approved, evals: {auc: {min: 0.92}}}
  - {id: ship, type: exec, needs: [gate], with: {command: [sh, -c, "echo shipped >> effects"]}}
"#;

const REGISTRY: &str = r#"apiVersion: rollwright.dev/v1alpha1
kind: ModelRegistry
models:
  - name: fraud-detector
    versions:
      - version: "7"
        artifact: {uri: "s3://models/fraud/7", digest: "sha256:0f1e"}
        aliases: [production-approved]
        approvals:
          - {who: alice, role: ml-lead, at: "2026-11-01T10:00:00Z"}
          - {who: bob, role: engineer, at: "2026-11-02T10:00:00Z", expires: "2099-01-01T00:00:00Z"}
        evals:
          - {metric: auc, value: 0.94, dataset: holdout, evaluator: ci}
"#;

#[test]
fn the_gate_reads_the_file_registry_and_lists_every_unmet_condition() {
    // Approved: the gate passes, records its evidence, and the change happens.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), GATED).unwrap();
    std::fs::write(dir.path().join("registry.yaml"), REGISTRY).unwrap();
    let out = run_in(dir.path(), &["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(effects(dir.path()), ["shipped"]);
    let report = run_in(
        dir.path(),
        &["report", &only_run(dir.path()), "--format", "json"],
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&report)).unwrap();
    let gate = &v["verification"][0];
    assert_eq!(gate["id"], "gate");
    assert_eq!(gate["outputs"]["digest"], "sha256:0f1e");
    assert_eq!(gate["outputs"]["approvers"], serde_json::json!(["alice", "bob"]));
    assert_eq!(gate["outputs"]["evals"]["auc"], 0.94);
    assert_eq!(gate["outputs"]["approvals"][0]["who"], "alice");
    assert!(
        gate["what"].as_str().unwrap().contains("approved by alice ("),
        "{gate}"
    );

    // Not approved: rejected at once (no retry), every problem listed, nothing changed.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), GATED).unwrap();
    let weak = REGISTRY
        .replace("aliases: [production-approved]", "aliases: []")
        .replace("2099-01-01T00:00:00Z", "2020-01-01T00:00:00Z")
        .replace("value: 0.94", "value: 0.90");
    std::fs::write(dir.path().join("registry.yaml"), weak).unwrap();
    let out = run_in(dir.path(), &["run", "spec.yaml"], &[]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "refused, nothing changed: {}",
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains(
            "failed at `gate`: gate closed for fraud-detector version 7: (1) lacks alias `production-approved` (has: none); \
             (2) has 1 valid approval(s) from distinct people, 2 required (1 expired); (3) eval `auc` = 0.9 is below the minimum 0.92"
        ),
        "{err}"
    );
    assert_eq!(
        err.matches("✗ gate: failed: gate closed").count(),
        1,
        "a rejection is never retried: {err}"
    );
    assert!(!err.contains("↻ gate"), "a rejection is never retried: {err}");
    assert!(
        err.contains(
            "fraud-detector version 7 to prod-east/risk was refused at `gate` before anything changed."
        ),
        "{err}"
    );
    assert!(effects(dir.path()).is_empty());

    // Unknown version.
    std::fs::write(
        dir.path().join("spec.yaml"),
        GATED.replace("version: \"7\"", "version: \"8\""),
    )
    .unwrap();
    let out = run_in(dir.path(), &["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("gate closed: fraud-detector version 8 is not in the model registry"));
}

#[test]
fn resume_re_checks_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let spec = GATED.replace(
        "  - {id: ship,",
        "  - {id: wait, type: exec, needs: [gate], with: {command: [sh, -c, \"echo waited >> effects\"]}}\n  - {id: ship,",
    )
    .replace("needs: [gate], with: {command: [sh, -c, \"echo shipped", "needs: [wait], with: {command: [sh, -c, \"echo shipped");
    std::fs::write(dir.path().join("spec.yaml"), spec).unwrap();
    std::fs::write(dir.path().join("registry.yaml"), REGISTRY).unwrap();
    // Crash right after the step after the gate began changing things.
    let mut env = crash_after(0);
    env[1] = ("RW_FAULT_CRASH_AT", r#""step":"wait","key":"ran""#.to_owned());
    let crashed = run_env(dir.path(), &["run", "spec.yaml"], &env);
    assert_eq!(crashed.status.code(), None);
    // Meanwhile alice's approval is revoked.
    std::fs::write(
        dir.path().join("registry.yaml"),
        REGISTRY.replace(
            "          - {who: alice, role: ml-lead, at: \"2026-11-01T10:00:00Z\"}\n",
            "",
        ),
    )
    .unwrap();
    let out = run_in(dir.path(), &["resume", &only_run(dir.path())], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("gate closed for fraud-detector version 7"),
        "{}",
        stderr(&out)
    );
    assert!(!effects(dir.path()).contains(&"shipped".to_owned()));
}

#[test]
fn an_approval_revoked_mid_rollout_stops_the_next_production_change() {
    let dir = tempfile::tempdir().unwrap();
    // `first` ships, then (as someone revoking in the registry would) removes
    // alice's approval; `second` must not happen, and `first` is undone.
    let spec = GATED.replace(
        "  - {id: ship, type: exec, needs: [gate], with: {command: [sh, -c, \"echo shipped >> effects\"]}}\n",
        "",
    ) + r#"  - id: first
    type: exec
    needs: [gate]
    with:
      command: [sh, -c, "echo first >> effects; grep -v 'who: alice' registry.yaml > r.tmp && mv r.tmp registry.yaml"]
      undo: [sh, -c, "echo undo-first >> effects"]
  - {id: second, type: exec, needs: [first], with: {command: [sh, -c, "echo second >> effects"]}}
"#;
    std::fs::write(dir.path().join("spec.yaml"), spec).unwrap();
    std::fs::write(dir.path().join("registry.yaml"), REGISTRY).unwrap();
    let out = run_in(dir.path(), &["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("failed at `second`: gate re-check before changing production: gate closed for fraud-detector version 7"),
        "{}",
        stderr(&out)
    );
    assert_eq!(effects(dir.path()), ["first", "undo-first"]);
}

#[test]
fn a_changed_artifact_digest_or_a_forged_journal_record_never_ships() {
    // The digest changes after the gate passed: the next production change is refused.
    let dir = tempfile::tempdir().unwrap();
    let spec = GATED.replace(
        "  - {id: ship, type: exec, needs: [gate], with: {command: [sh, -c, \"echo shipped >> effects\"]}}\n",
        "  - {id: swap, type: exec, needs: [gate], with: {command: [sh, -c, \"sed -i s/0f1e/beef/ registry.yaml\"]}}\n  - {id: ship, type: exec, needs: [swap], with: {command: [sh, -c, \"echo shipped >> effects\"]}}\n",
    );
    std::fs::write(dir.path().join("spec.yaml"), &spec).unwrap();
    std::fs::write(dir.path().join("registry.yaml"), REGISTRY).unwrap();
    let out = run_in(dir.path(), &["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the artifact digest of fraud-detector version 7 changed since the gate passed (\"sha256:0f1e\" -> \"sha256:beef\")"),
        "{}",
        stderr(&out)
    );
    assert!(effects(dir.path()).is_empty());

    // A forged "gate succeeded" record in the journal: the journal is
    // refused outright (its integrity chain breaks), nothing ships.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), GATED).unwrap();
    std::fs::write(
        dir.path().join("registry.yaml"),
        REGISTRY.replace("aliases: [production-approved]", "aliases: []"),
    )
    .unwrap();
    let crashed = run_env(dir.path(), &["run", "spec.yaml"], &crash_after(1));
    assert_eq!(crashed.status.code(), None);
    let run = only_run(dir.path());
    let journal = dir
        .path()
        .join(".rollwright/runs")
        .join(&run)
        .join("journal.jsonl");
    let forged = r#"{"record":"step-succeeded","step":"gate","outputs":{"gate":true,"model":"fraud-detector","version":"7","digest":"sha256:0f1e"}}"#;
    let mut text = std::fs::read_to_string(&journal).unwrap();
    text.push_str(forged);
    text.push('\n');
    std::fs::write(&journal, text).unwrap();
    let out = run_in(dir.path(), &["resume", &run], &[]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 2: the record has no integrity tag"),
        "{}",
        stderr(&out)
    );
    assert!(effects(dir.path()).is_empty());
}

/// `{{steps.ID.outputs.KEY}}` is resolved by the executor, as documented:
/// a later step gets the earlier one's output — also when the run was
/// killed between the two and finished by `resume` (the output comes back
/// from the journal). Before, the reference reached the step as literal
/// text.
#[test]
fn runtime_references_reach_later_steps_also_after_resume() {
    const REFS: &str = r#"apiVersion: rollwright.dev/v1alpha1
kind: Rollout
metadata: {name: refs}
model: {name: m, version: "1"}
target: {context: dev, namespace: ns, environment: dev}
defaults: {timeout: 1m}
steps:
  - {id: make, type: exec, with: {command: [sh, -c, "printf v7-build-42"]}}
  - {id: use, type: exec, needs: [make], with: {command: [sh, -c, "echo \"got={{steps.make.outputs.stdout}}\" >> effects"]}}
"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), REFS).unwrap();
    let out = run_in(dir.path(), &["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(effects(dir.path()), ["got=v7-build-42"]);

    // Killed after each journal boundary in turn, then resumed.
    let mut resumed = 0;
    for n in 1..=12 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spec.yaml"), REFS).unwrap();
        let out = run_env(dir.path(), &["run", "spec.yaml"], &crash_after(n));
        if out.status.code() == Some(0) {
            break;
        }
        let id = only_run(dir.path());
        let out = run_in(dir.path(), &["resume", &id], &[]);
        assert_eq!(out.status.code(), Some(0), "n={n}: {}", stderr(&out));
        let got = effects(dir.path());
        assert!(
            got.iter().all(|l| l == "got=v7-build-42") && !got.is_empty(),
            "n={n}: {got:?}"
        );
        resumed += 1;
    }
    assert!(resumed >= 3, "killed at {resumed} boundaries");
}
