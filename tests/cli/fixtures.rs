//! The table of bad specs: every file in `tests/fixtures/lint/` has a
//! `.expected` file with exactly the diagnostics lint must report
//! (`line:col severity code message`). `UPDATE_EXPECT=1` rewrites them;
//! review the diff before committing.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{rollwright, stdout};

#[test]
fn every_fixture_reports_exactly_its_expected_diagnostics() {
    let out = rollwright(&["lint", "--format", "json", "tests/fixtures/lint"]);
    assert_eq!(out.status.code(), Some(1), "{}", crate::stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mut by_file: BTreeMap<String, String> = BTreeMap::new();
    for d in report["diagnostics"].as_array().unwrap() {
        let (file, spec) = (d["file"].as_str().unwrap(), d["spec"].as_str().unwrap());
        // A problem located in another file (a strategy) names that file.
        let other = if file == spec {
            String::new()
        } else {
            format!("{file}:")
        };
        let line = format!(
            "{other}{}:{} {} {} {}\n",
            d["line"],
            d["column"],
            d["severity"].as_str().unwrap(),
            d["code"].as_str().unwrap(),
            d["message"].as_str().unwrap()
        );
        by_file.entry(spec.to_owned()).or_default().push_str(&line);
    }
    let dir = crate::root().join("tests/fixtures/lint");
    let mut fixtures: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 30, "the table covers every rule");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for f in &fixtures {
        let rel = format!("tests/fixtures/lint/{}", f.file_name().unwrap().to_string_lossy());
        let actual = by_file.get(&rel).cloned().unwrap_or_default();
        assert!(
            !actual.is_empty(),
            "{rel}: a bad fixture must produce diagnostics"
        );
        let expected_path = f.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &actual).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!("--- {rel}\nexpected:\n{expected}actual:\n{actual}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(report["files"].as_u64().unwrap() as usize, fixtures.len());
}
