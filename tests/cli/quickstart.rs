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

/// The report's Markdown, with the run directory it was written to.
fn report_of(state: &std::path::Path) -> (String, serde_json::Value) {
    let run = std::fs::read_dir(state.join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    let json = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    (md, json)
}

/// What a person sees of the quickstart, not on a terminal: one line per
/// state change (never per poll, no line twice), under 40 lines, the summary
/// and the report's path at the end; the report in five sections, in words.
#[test]
fn the_quickstart_reads_at_a_glance_and_its_report_is_for_people() {
    let state = tempfile::tempdir().unwrap();
    let out = run_sim(
        "specs/examples/kserve-canary.yaml",
        "specs/sim/fraud-healthy.yaml",
        state.path(),
        &["--time-scale", "240"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() < 40, "{} lines:\n{err}", lines.len());
    assert!(!err.contains("(attempt 1)"), "a poll is not an attempt:\n{err}");
    let mut seen = std::collections::HashSet::new();
    for l in &lines {
        let text = l.split_once("] ").map_or(*l, |(_, t)| t);
        assert!(
            seen.insert(text) || text.is_empty(),
            "printed twice: {text}\n{err}"
        );
    }
    for step in [
        "gate",
        "deploy",
        "ready",
        "smoke",
        "ramp[5].shift",
        "ramp[5].hold",
        "promote",
        "finalize",
    ] {
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains(&format!("✓ {step}: succeeded in ")))
                .count(),
            1,
            "{step}:\n{err}"
        );
    }
    assert!(
        err.contains("✓ ramp[5].shift: succeeded in") && err.contains("— canary at 5 %"),
        "{err}"
    );
    assert!(err.contains("▸ ramp[5].hold: evaluation 1: error-rate "), "{err}");
    let tail: Vec<&str> = lines.iter().rev().take(2).copied().collect();
    assert!(
        tail[0].starts_with("report: ") && tail[0].ends_with("report.md"),
        "{err}"
    );
    assert!(
        tail[1]
            .starts_with("fraud-detector version 7 was rolled out to prod-east/risk (simulated cluster) in "),
        "{err}"
    );
    let (md, json) = report_of(state.path());
    for section in [
        "## Plan",
        "## Changes",
        "## Verification",
        "## Rollback",
        "## Summary",
    ] {
        assert!(md.contains(section), "{section}:\n{md}");
    }
    assert!(
        md.contains("(simulated)") && md.contains("**simulated cluster**"),
        "{md}"
    );
    assert!(
        !md.contains("{\"") && !md.contains("`{"),
        "raw JSON in the report:\n{md}"
    );
    assert!(
        md.contains("approved by alice (ml-lead, "),
        "approvers with roles and times:\n{md}"
    );
    assert!(md.contains("evals auc 0.95 (min 0.92)"), "{md}");
    assert!(
        md.contains("spec.predictor.model.storageUri models:/fraud-detector/6 → models:/fraud-detector/7"),
        "what changed, as a short diff:\n{md}"
    );
    assert!(
        md.contains("- **Ramp:** 5 % (hold 10m) → 20 % (hold 10m) → 50 % (hold 10m) → 100 %"),
        "{md}"
    );
    assert!(
        md.contains("| at | error-rate | p99-latency | verdict |"),
        "a hold's evaluations:\n{md}"
    );
    assert!(md.contains("Not needed: nothing failed."), "{md}");
    assert!(
        md.contains("To back out now: set `model.version: \"6\"` in ") && !md.contains("--set model.version"),
        "how to back out now:\n{md}"
    );
    assert!(
        !md.contains("restored … restored") && !md.contains("`<run>`"),
        "{md}"
    );
    assert_eq!(json["simulated"], true);
    assert_eq!(json["plan"]["previous_version"], "6");
    assert!(
        json["verification"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["evaluations"].as_array().is_some_and(|e| e.len() > 5)),
        "{json:#}"
    );
}

/// A rolled-back run: the report names the trigger with its measured value
/// and threshold, what was restored, and the failed notification; the
/// JSON stream has one event per state change.
#[test]
fn a_rolled_back_quickstart_reports_its_trigger_and_streams_state_changes() {
    let state = tempfile::tempdir().unwrap();
    let out = run_sim(
        "specs/examples/kserve-canary.yaml",
        "specs/sim/fraud-regression.yaml",
        state.path(),
        &["--time-scale", "240", "--output", "json"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let events: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(events.last().unwrap()["event"], "finished");
    assert_eq!(events.last().unwrap()["state"], "rolled-back");
    let waits: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "waiting")
        .map(|e| format!("{} {}", e["step"], e["reason"]))
        .collect();
    assert!(waits.len() < 12, "waits are state changes, not polls: {waits:#?}");
    let breach = events
        .iter()
        .find(|e| e["event"] == "observed" && e["observation"]["metrics"][0]["verdict"] == "breach")
        .expect("the breaching evaluation is an event");
    assert_eq!(breach["step"], "ramp[5].hold");
    assert!(
        breach["observation"]["metrics"][0]["threshold"]
            .as_str()
            .unwrap()
            .contains("<= 0.050")
    );
    let (md, json) = report_of(state.path());
    assert!(md.contains("**Triggered** at "), "{md}");
    assert!(md.contains("- error-rate: measured 0."), "{md}");
    assert!(md.contains("breach 2/2") || md.contains("breach (2/2)"), "{md}");
    assert!(md.contains("- rolled back `deploy`: done"), "{md}");
    assert!(
        !md.contains("rolled back `gate`") && !md.contains("rolled back `smoke`"),
        "read-only steps are not rolled back:\n{md}"
    );
    assert!(
        md.contains("- `page`: done"),
        "the on-failure handler is reported, and its webhook exists in the scenario:\n{md}"
    );
    let handled = events
        .iter()
        .find(|e| e["event"] == "handled")
        .expect("the handler ran");
    assert_eq!(handled["error"], serde_json::Value::Null, "{handled}");
    assert!(
        !stderr(&out).to_lowercase().contains("error:"),
        "no error line in the regression demo: {}",
        stderr(&out)
    );
    assert_eq!(json["summary"]["state"], "rolled-back");
    let journal = std::fs::read_to_string(
        std::fs::read_dir(state.path().join("runs"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join("journal.jsonl"),
    )
    .unwrap();
    assert!(
        journal.contains(r#""record":"handled","handler":"page""#),
        "handlers are journaled"
    );
    let started = journal
        .matches(r#""record":"step-started","step":"ramp[5].hold""#)
        .count();
    assert_eq!(started, 1, "one start per attempt, not per poll");
}

/// `ROLLWRIGHT_CHROMIUM` (set by `scripts/test` from `scripts/setup-chromium`), else `chromium` on PATH.
fn chromium() -> std::path::PathBuf {
    std::env::var_os("ROLLWRIGHT_CHROMIUM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "chromium".into())
}

/// A screenshot of `page` in headless Chromium: the pixels that are not
/// the page's white background, and the image's size.
fn painted_pixels(page: &std::path::Path, shot: &std::path::Path) -> (usize, u32, u32) {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1000,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("headless chromium (scripts/setup-chromium installs it)");
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let painted = buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|p| p.iter().take(3).any(|&c| c < 200))
        .count();
    (painted, info.width, info.height)
}

/// The HTML report of a rolled-back run: one self-contained file (no
/// script, nothing fetched) with the traffic split and each metric over
/// time against its threshold, the rollback marked; rendered in headless
/// Chromium, whose screenshot has charts and text on it — and an error
/// message with HTML in it stays text.
#[test]
fn the_html_report_renders_in_headless_chromium() {
    let state = tempfile::tempdir().unwrap();
    let out = run_sim(
        "specs/examples/kserve-canary.yaml",
        "specs/sim/fraud-regression.yaml",
        state.path(),
        &["--time-scale", "240"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let run = std::fs::read_dir(state.path().join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let id = run.file_name().to_string_lossy().into_owned();
    let out = rollwright_in(
        &root(),
        &[
            "report",
            &id,
            "--format",
            "html",
            "--state-dir",
            &state.path().to_string_lossy(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let html = stdout(&out);
    assert_eq!(
        html,
        std::fs::read_to_string(run.path().join("report.html")).unwrap()
    );
    assert!(html.starts_with("<!doctype html>"), "{html}");
    for absent in ["<script", "src=\"http", "href=\"http", "<link"] {
        assert!(!html.contains(absent), "self-contained: {absent}");
    }
    assert!(html.contains("Canary traffic share"), "{html}");
    assert!(html.contains("ramp[5].hold — error-rate"), "{html}");
    assert!(html.contains(r#"class="rollback""#), "the rollback is marked");
    assert!(html.contains(r#"class="breach""#), "breaches are marked");
    assert!(html.contains(r#"class="threshold""#), "thresholds are drawn");
    assert!(html.contains("<h2>Rollback</h2>"), "{html}");
    let page = state.path().join("report.html");
    std::fs::write(&page, &html).unwrap();
    let (painted, w, h) = painted_pixels(&page, &state.path().join("shot.png"));
    let blank = state.path().join("blank.html");
    std::fs::write(&blank, "<!doctype html><html><body></body></html>").unwrap();
    let (empty, ..) = painted_pixels(&blank, &state.path().join("blank.png"));
    assert_eq!((w, h), (1000, 1400));
    assert!(empty < 100, "a blank page paints nothing ({empty})");
    assert!(
        painted > 20_000,
        "the report paints charts and text ({painted} pixels)"
    );
}
