//! Crash safety of a real canary on the embedded cluster, from outside the
//! binary: a kill -9 after *every* durable journal batch (then `resume`), a
//! journal that stops being writable after every batch (a full disk), and
//! signals. Faults come from the LD_PRELOAD library (`tests/fault`); the
//! shipped binary has no hook.

use std::collections::BTreeMap;

use crate::k8s::{ISTIO_SPEC, World, istio_world_on, journal_of, only_run_dir, vs_weights};
use crate::stderr;

/// A short canary: deploy, ready, 50 %, 100 %.
fn short_spec() -> String {
    ISTIO_SPEC.replace(
        "  - id: shift-20\n    type: shift-traffic\n    needs: [ready]\n    with: {canary: 20}\n    compensate: {type: rollback, timeout: 30s}\n  - id: shift-50\n    type: shift-traffic\n    needs: [shift-20]",
        "  - id: shift-50\n    type: shift-traffic\n    needs: [ready]",
    )
}

fn fault(vars: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut env = vec![("LD_PRELOAD", crate::fault_lib().display().to_string())];
    env.extend(vars.iter().cloned());
    env
}

fn run_with(w: &World, args: &[&str], env: &[(&'static str, String)]) -> std::process::Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    w.rollwright(args, &env)
}

/// `step → (succeeded records, started records after it succeeded)`.
fn exactly_once(journal: &str) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for line in journal.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_str().unwrap_or_default().to_owned();
        match v["record"].as_str() {
            Some("step-succeeded") => out.entry(step).or_default().0 += 1,
            Some("step-started") if out.get(&step).is_some_and(|e| e.0 > 0) => {
                out.entry(step).or_default().1 += 1;
            }
            _ => {}
        }
    }
    out
}

/// The only splits the plan ever sets: 100/0, 50/50, 0/100 — anything else
/// (a canary reset to 0 after 50, traffic on a third version) is a bug.
fn planned(split: &str) -> bool {
    matches!(split, "100 0" | "50 50" | "0 100")
}

on_both_backends! {
fn a_canary_killed_at_every_journal_boundary_resumes_exactly_once(backend) {
    let mut boundaries = 0;
    for k in 1..=60 {
        let w = istio_world_on(backend, "");
        w.write("spec.yaml", &short_spec());
        let out = run_with(
            &w,
            &["run", "spec.yaml"],
            &fault(&[("RW_FAULT_CRASH_AFTER_SYNCS", k.to_string())]),
        );
        if out.status.code() == Some(0) {
            boundaries = k - 1;
            break;
        }
        assert_eq!(
            out.status.code(),
            None,
            "k={k}: killed, not {:?}: {}",
            out.status.code(),
            stderr(&out)
        );
        let at_crash = vs_weights(&w);
        assert!(planned(&at_crash), "k={k}: the split at the crash was {at_crash}");
        let id = only_run_dir(w.path())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let out = w.rollwright(&["resume", &id], &[]);
        assert_eq!(out.status.code(), Some(0), "k={k}: resume: {}", stderr(&out));
        assert_eq!(vs_weights(&w), "0 100", "k={k}");
        w.wait_split("fraud", &[("8", 100)]);
        let journal = journal_of(w.path());
        for (step, (done, again)) in exactly_once(&journal) {
            // The gate is checked again on resume (read-only, by design).
            if step == "gate" {
                continue;
            }
            assert_eq!(done, 1, "k={k}: `{step}` completed {done} times:\n{journal}");
            assert_eq!(
                again, 0,
                "k={k}: `{step}` ran again after it completed:\n{journal}"
            );
        }
        for step in ["deploy", "ready", "shift-50", "promote"] {
            assert!(
                journal.contains(&format!(r#""record":"step-succeeded","step":"{step}""#)),
                "k={k}: {step}"
            );
        }
    }
    eprintln!("killed at each of {boundaries} journal boundaries, resumed each time");
    assert!(
        boundaries >= 8,
        "every boundary of the run was tried ({boundaries})"
    );
}
}

on_both_backends! {
fn a_journal_that_cannot_be_written_stops_the_run_and_it_compensates(backend) {
    let mut tried = 0;
    for k in 0..=60 {
        let w = istio_world_on(backend, "");
        w.write("spec.yaml", &short_spec());
        let out = run_with(
            &w,
            &["run", "spec.yaml"],
            &fault(&[("RW_FAULT_FAIL_AFTER_SYNCS", k.to_string())]),
        );
        let err = stderr(&out);
        if out.status.code() == Some(0) {
            tried = k;
            break;
        }
        assert_eq!(
            out.status.code(),
            Some(6),
            "k={k}: the journal failure has its own exit code: {err}"
        );
        assert!(err.contains("journal"), "k={k}: says so: {err}");
        // No change without a durable record: either nothing changed or the
        // run stood where its last durable record put it, and compensation
        // brought it back — never a split left half-way.
        let split = vs_weights(&w);
        assert!(
            split == "100 0" || split == "0 100",
            "k={k}: traffic left at {split}: {err}"
        );
        if split == "100 0" {
            assert_eq!(
                w.deployments(),
                "deployment.apps/fraud-stable\n",
                "k={k}: the canary was removed"
            );
        } else {
            assert!(
                err.contains("succeeded, but its end could not be journaled"),
                "k={k}: {err}"
            );
        }
    }
    eprintln!("the journal failed after each of {tried} boundaries");
    assert!(tried >= 8, "every boundary was tried ({tried})");
}
}

/// A held run: the approval waits, so a signal arrives at a known point.
fn held(w: &World) -> (std::process::Child, String) {
    w.write(
        "spec.yaml",
        &short_spec().replace(
            "  - id: promote\n    type: shift-traffic\n    needs: [shift-50]",
            "  - {id: sign-off, type: approval, needs: [shift-50], with: {approvers: 1, expires: 2m}}\n  - id: promote\n    type: shift-traffic\n    needs: [sign-off]",
        ),
    );
    let mut child = w.spawn(&["run", "spec.yaml"]);
    if let Some(run) = crate::journal_shows(w.path(), r#""step":"sign-off","key":"opened-ms""#) {
        return (child, run);
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the run never reached its approval");
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: signalling a child we started.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

on_both_backends! {
fn sigterm_stops_at_a_safe_point_and_rolls_back(backend) {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let w = istio_world_on(backend, "");
        let (child, _) = held(&w);
        assert_eq!(vs_weights(&w), "50 50");
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(3), "rolled back: {err}");
        assert!(
            err.contains("stopping at the next safe point and rolling back"),
            "{err}"
        );
        assert_eq!(vs_weights(&w), "100 0", "traffic back on stable");
        assert_eq!(w.deployments(), "deployment.apps/fraud-stable\n");
        assert!(journal_of(w.path()).contains("interrupted by SIG"), "journaled");
    }
}
}

on_both_backends! {
fn a_second_signal_exits_at_once_and_resume_finishes_the_rollback(backend) {
    let w = istio_world_on(backend, "");
    let (child, id) = held(&w);
    signal(&child, libc::SIGTERM);
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code() == Some(130) || out.status.code() == Some(3),
        "exit at once (or it had already rolled back): {:?} {err}",
        out.status.code()
    );
    let resumed = w.rollwright(&["resume", &id], &[]);
    assert!(matches!(resumed.status.code(), Some(3)), "{}", stderr(&resumed));
    assert_eq!(vs_weights(&w), "100 0");
    assert_eq!(w.deployments(), "deployment.apps/fraud-stable\n");
}
}
