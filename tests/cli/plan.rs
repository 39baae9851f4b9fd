//! `rollwright plan`: expansion snapshots, the timing budget, formats.

use serde_json::Value;

use crate::{rollwright, stderr, stdout};

/// Every shipped example and strategy plans, and its text plan matches the
/// committed snapshot (`UPDATE_EXPECT=1` rewrites them; review the diff).
#[test]
fn expansion_snapshots_of_every_example_and_strategy() {
    let mut failures = Vec::new();
    let mut n = 0;
    for dir in ["specs/examples", "specs/strategies"] {
        let mut files: Vec<_> = std::fs::read_dir(crate::root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for f in files {
            let rel = format!("{dir}/{}", f.file_name().unwrap().to_string_lossy());
            let out = rollwright(&["plan", &rel]);
            assert_eq!(out.status.code(), Some(0), "{rel}: {}", stderr(&out));
            let name = rel.replace('/', "__").replace(".yaml", ".txt");
            let snap = crate::root().join("tests/snapshots/plan").join(name);
            if std::env::var_os("UPDATE_EXPECT").is_some() {
                std::fs::write(&snap, stdout(&out)).unwrap();
            }
            if std::fs::read_to_string(&snap).unwrap_or_default() != stdout(&out) {
                failures.push(format!(
                    "{rel}: plan differs from {}:\n{}",
                    snap.display(),
                    stdout(&out)
                ));
            }
            n += 1;
        }
    }
    assert!(n >= 8, "four examples and four strategies");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The worked example (`tests/fixtures/plan/budget.yaml`), by hand:
/// - to 100 %: h10 (10m) then h50 (5m) precede `full`; approval counts as
///   instant: 15m.
/// - detection: h10 judges every 30s and fails after 3 breaches (1m30s);
///   h50 every 1m after 2 (2m). Worst: 2m.
/// - rollback after h50 fails: the distinct compensations of its ancestors
///   deploy, s10 and s50 (three different `restore` lists) each take at most
///   2 attempts × 2m (defaults.timeout) + one constant 5s wait = 4m5s;
///   3 × 4m5s = 12m15s. (`full` has not run yet, so its rollback is not due.)
/// - reaction at h50: 2m + 12m15s = 14m15s; at h10: 1m30s + 2 × 4m5s =
///   9m40s. Worst: 14m15s, during h50.
#[test]
fn timing_budget_of_the_worked_example() {
    let out = rollwright(&["plan", "--format", "json", "tests/fixtures/plan/budget.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let b = &plan["budget"];
    assert_eq!(b["to_full_promotion"], "15m");
    assert_eq!(b["critical_path"], serde_json::json!(["h10", "h50"]));
    assert_eq!(b["to_completion"], "15m");
    assert_eq!(b["detection"], "2m");
    assert_eq!(b["rollback"], "12m15s");
    assert_eq!(b["reaction"], "14m15s");
    assert_eq!(b["worst_hold"], "h50");
    // Rendered manifest with the same context as values.
    assert_eq!(
        plan["manifests"][0]["text"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: \"m-1\", namespace: \"n\"}\n"
    );
    let order: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["gate", "deploy", "s10", "h10", "s50", "h50", "approve", "full"]
    );
    assert_eq!(plan["steps"][2]["earliest_start"], "0s");
    assert_eq!(plan["steps"][4]["earliest_start"], "10m");
    assert_eq!(plan["rollback_path"][0], "full (rollback)");
}

#[test]
fn for_each_ids_and_set_overrides() {
    let out = rollwright(&[
        "plan",
        "--format",
        "json",
        "--set",
        "weights=[10, 30]",
        "--set",
        "hold=2m",
        "specs/examples/kserve-canary.yaml",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let ids: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "gate",
            "deploy",
            "ready",
            "smoke",
            "ramp[10].shift",
            "ramp[10].hold",
            "ramp[30].shift",
            "ramp[30].hold",
            "promote",
            "finalize"
        ]
    );
    let step = |id: &str| {
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        step("ramp[30].shift")["needs"],
        serde_json::json!(["ramp[10].hold"])
    );
    assert_eq!(
        step("ramp[30].shift")["with"]["canary"],
        30,
        "{{item}} keeps its type"
    );
    assert_eq!(
        step("promote")["needs"],
        serde_json::json!(["ramp[30].hold"]),
        "needs on the group means its last iteration"
    );
    assert_eq!(step("ramp[10].hold")["with"]["duration"], "2m");
    assert_eq!(plan["budget"]["to_full_promotion"], "4m");
    assert!(
        step("ramp[10].shift")["source"]
            .as_str()
            .unwrap()
            .starts_with("specs/strategies/canary.yaml:")
    );
}

#[test]
fn bad_overrides_and_bad_specs() {
    let out = rollwright(&[
        "plan",
        "--set",
        "weightz=[1]",
        "specs/examples/kserve-canary.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("error[RW082]: unknown parameter `weightz`"),
        "{}",
        stderr(&out)
    );
    // The snippet is the override's key (never its value), underlined.
    assert!(
        stderr(&out).contains(" --> --set weightz:1:1\n  |\n1 | weightz\n  | ^^^^^^^"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("[1]"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    let out = rollwright(&["plan", "--set", "weights", "specs/examples/kserve-canary.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out), "error: --set `weights`: expected KEY=VALUE\n");
    let out = rollwright(&["plan", "tests/fixtures/lint/uses-cycle.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("`uses` cycle"), "{}", stderr(&out));
    let out = rollwright(&["plan", "specs/nope.yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn dot_and_mermaid_draw_the_graph_with_compensations() {
    let out = rollwright(&["plan", "--format", "dot", "tests/fixtures/plan/budget.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    let dot = stdout(&out);
    assert!(dot.starts_with("digraph plan {"), "{dot}");
    assert!(dot.contains("\"gate\" -> \"deploy\";"));
    assert!(dot.contains("\"deploy\" -> \"undo deploy\" [style=dashed, label=\"compensate\"];"));
    assert!(dot.trim_end().ends_with('}'));
    let out = rollwright(&["plan", "--format", "mermaid", "tests/fixtures/plan/budget.yaml"]);
    let mm = stdout(&out);
    assert!(mm.starts_with("flowchart LR\n"), "{mm}");
    assert!(mm.contains("  s0{\"gate<br/>gate-check\"}"), "{mm}");
    assert!(mm.contains("  s0 --> s1"));
    assert!(mm.contains("  s1 -. compensate .-> u1[/\"rollback\"/]"));
}
