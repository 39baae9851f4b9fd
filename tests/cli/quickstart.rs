//! The README's main commands and the shipped scenarios, as tests.

use crate::{rollwright_in, root, stderr, stdout};

/// `rollwright run SPEC --sim --scenario SCENARIO --state-dir STATE [EXTRA…]` from the repository root.
fn run_sim(spec: &str, scenario: &str, state: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let state = state.to_string_lossy();
    let mut args = vec![
        "run",
        spec,
        "--sim",
        "--scenario",
        scenario,
        "--state-dir",
        &state,
    ];
    args.extend_from_slice(extra);
    rollwright_in(&root(), &args)
}

/// `rollwright run specs/examples/kserve-canary.yaml --sim --scenario …`:
/// promoted on the healthy world, rolled back on the regressing one.
#[test]
fn the_quickstart_promotes_then_rolls_back() {
    let state = tempfile::tempdir().unwrap();
    let run = |scenario: &str| {
        run_sim(
            "specs/examples/kserve-canary.yaml",
            scenario,
            state.path(),
            &["--time-scale", "240"],
        )
    };
    let out = run("specs/sim/fraud-healthy.yaml");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("simulated cluster: https://127.0.0.1:"), "{err}");
    assert!(err.contains("watch it:  kubectl --kubeconfig "), "{err}");
    assert!(err.contains("promote: succeeded"), "{err}");
    let out = run("specs/sim/fraud-regression.yaml");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("failed at `ramp[5].hold`: analysis failed: error-rate"),
        "{}",
        stderr(&out)
    );
}

/// The GitOps quickstart: the sim's Argo CD follows a repository seeded
/// from `specs/sim/gitops-repo`; the run commits, and the repository is kept.
#[test]
fn the_gitops_quickstart_promotes_through_commits() {
    let state = tempfile::tempdir().unwrap();
    let out = run_sim(
        "specs/examples/kserve-canary-gitops.yaml",
        "specs/sim/fraud-gitops.yaml",
        state.path(),
        &["--time-scale", "240"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("GitOps repository (the sim's, kept after the run)"),
        "{err}"
    );
    let repo = std::fs::read_dir(state.path().join("sim"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("repos/deploy.git");
    let log = std::process::Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["log", "--reverse", "--format=%an: %s", "main"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 6, "{log}");
    assert!(
        lines[1].starts_with("rollwright bot: rollwright: apply InferenceService fraud-detector"),
        "{log}"
    );
    assert!(
        lines[5].starts_with("rollwright bot: rollwright: shift 100% of traffic"),
        "{log}"
    ); // A world without a repository: refused (the sim never pushes to the
    // spec's real remote), nothing left behind.
    let other = tempfile::tempdir().unwrap();
    let out = run_sim(
        "specs/examples/kserve-canary-gitops.yaml",
        "specs/sim/fraud-healthy.yaml",
        other.path(),
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs a scenario repository"),
        "{}",
        stderr(&out)
    );
    let left = std::fs::read_dir(other.path().join("sim")).map_or(0, Iterator::count);
    assert_eq!(left, 0, "nothing half-made");
}

#[test]
fn every_shipped_scenario_passes_with_junit_output() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = rollwright_in(
        &root(),
        &["test", "specs/scenarios", "--junit", &junit.to_string_lossy()],
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).trim_end().ends_with("20 passed, 0 failed"),
        "{}",
        stdout(&out)
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(r#"<testsuite name="rollout scenarios" tests="20" skipped="0" errors="0" failures="0""#),
        "{xml}"
    );
    assert!(xml.contains(r#"<testcase name="killed-and-resumed""#));
}

/// The same scenarios on a real control plane with the simulated world over
/// it; the one that needs API faults (the embedded API server's own) is
/// skipped, and says why.
#[test]
fn every_shipped_scenario_passes_on_kube_apiserver() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let bin = crate::kube::kube_bin();
    let out = rollwright_in(
        &root(),
        &[
            "test",
            "specs/scenarios",
            "--control-plane",
            "kube-apiserver",
            "--kube-bin",
            &bin.to_string_lossy(),
            "--junit",
            &junit.to_string_lossy(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out)
            .trim_end()
            .ends_with("19 passed, 0 failed, 1 skipped"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("SKIP api-server-flakiness (0.0s): the scenario's `api` faults are injected by the embedded API server only"),
        "{}",
        stdout(&out)
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(r#"<testsuite name="rollout scenarios" tests="20" skipped="1" errors="0" failures="0""#),
        "{xml}"
    );
}

/// `run --sim --control-plane kube-apiserver`: the quickstart on a real
/// control plane, started and stopped by the run; the flag means nothing
/// without `--sim`.
#[test]
fn run_sim_on_kube_apiserver() {
    let dir = tempfile::tempdir().unwrap();
    let bin = crate::kube::kube_bin();
    let out = rollwright_in(
        &root(),
        &[
            "run",
            "specs/examples/kserve-canary.yaml",
            "--sim",
            "--scenario",
            "specs/sim/fraud-healthy.yaml",
            "--control-plane",
            "kube-apiserver",
            "--kube-bin",
            &bin.to_string_lossy(),
            "--state-dir",
            &dir.path().to_string_lossy(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("simulated cluster: https://127.0.0.1:"),
        "{}",
        stderr(&out)
    );
    let out = rollwright_in(
        &root(),
        &[
            "run",
            "specs/examples/kserve-canary.yaml",
            "--control-plane",
            "kube-apiserver",
            "--state-dir",
            &dir.path().to_string_lossy(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("choose the API server `run --sim` starts"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_wrong_expectation_fails_the_test_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let scenarios = root().join("specs");
    std::fs::write(
        dir.path().join("wrong.yaml"),
        format!(
            "apiVersion: rollwright.dev/v1alpha1\nkind: RolloutTest\nmetadata: {{name: wrong}}\nspec: {}/examples/kserve-canary.yaml\nscenario:\n  extends: {}/sim/fraud-healthy.yaml\n  registry: {{models: []}}\ntime-scale: 240\nexpect:\n  outcome: promoted\n  split: {{\"7\": 100}}\n",
            scenarios.display(),
            scenarios.display()
        ),
    )
    .unwrap();
    let junit = dir.path().join("junit.xml");
    let out = rollwright_in(dir.path(), &["test", "wrong.yaml", "--junit", "junit.xml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("FAIL wrong"), "{}", stdout(&out));
    assert!(stdout(&out).trim_end().ends_with("0 passed, 1 failed"));
    let err = stderr(&out);
    assert!(
        err.contains("expected promoted, got refused (exit Some(5))"),
        "{err}"
    );
    assert!(
        err.contains(r#"expected the traffic split {"7": 100}, got {"6": 100}"#),
        "{err}"
    );
    let xml = std::fs::read_to_string(junit).unwrap();
    assert!(
        xml.contains(r#"failures="1""#) && xml.contains("<failure message=\"expected promoted"),
        "{xml}"
    );
    // Not a test file: a usage error, located.
    std::fs::write(dir.path().join("bad.yaml"), "apiVersion: rollwright.dev/v1alpha1\nkind: RolloutTest\nmetadata: {name: bad}\nspec: x.yaml\nscenario: y.yaml\nexpect: {outcome: sideways}\n").unwrap();
    let out = rollwright_in(dir.path(), &["test", "bad.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("bad.yaml: 6:19: unknown variant `sideways`"),
        "{}",
        stderr(&out)
    );
}

/// Relative paths of a test file — its `spec`, `scenario.extends` — start
/// at the test file's directory, wherever `rollwright test` runs from
/// (an inline `extends` used to resolve against the working directory's
/// parent).
#[test]
fn paths_in_a_test_file_start_at_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::copy(
        root().join("specs/sim/fraud-healthy.yaml"),
        dir.path().join("a/world.yaml"),
    )
    .unwrap();
    std::fs::write(
        nested.join("t.yaml"),
        format!(
            "apiVersion: rollwright.dev/v1alpha1\nkind: RolloutTest\nmetadata: {{name: nested}}\nspec: {}/specs/examples/kserve-canary.yaml\nscenario:\n  extends: ../world.yaml\ntime-scale: 240\nexpect:\n  outcome: promoted\n  split: {{\"7\": 100}}\n",
            root().display()
        ),
    )
    .unwrap();
    let out = rollwright_in(dir.path(), &["test", "a/b/t.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
    // And from inside the directory, named without one.
    let out = rollwright_in(&nested, &["test", "t.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
}

/// Every shipped example is the spec of a shipped scenario that promotes it
/// (run by `every_shipped_scenario_passes_with_junit_output`): an example
/// that cannot run green on the embedded cluster is not shipped.
#[test]
fn every_shipped_example_has_a_scenario() {
    let scenarios = root().join("specs/scenarios");
    let mut promoted = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(&scenarios).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let v = rollwright_engine::yaml::load_str(&text, &rollwright_engine::Limits::default())
            .unwrap()
            .value;
        let outcomes: Vec<&str> = match v["releases"].as_array() {
            Some(rs) => rs
                .iter()
                .filter_map(|r| r["expect"]["outcome"].as_str())
                .collect(),
            None => v["expect"]["outcome"].as_str().into_iter().collect(),
        };
        if outcomes.contains(&"promoted") {
            let spec = scenarios.join(v["spec"].as_str().unwrap());
            promoted.insert(std::fs::canonicalize(spec).unwrap());
        }
    }
    let mut examples = Vec::new();
    let mut dirs = vec![root().join("specs/examples")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                examples.push(std::fs::canonicalize(p).unwrap());
            }
        }
    }
    assert!(examples.len() >= 11, "{examples:?}");
    let missing: Vec<_> = examples.iter().filter(|e| !promoted.contains(*e)).collect();
    assert!(
        missing.is_empty(),
        "examples without a promoting scenario: {missing:?}"
    );
}
