//! `rollwright schema`.

use serde_json::Value;

use crate::{rollwright, stderr, stdout};

#[test]
fn prints_the_committed_rollout_schema() {
    let out = rollwright(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let committed = std::fs::read_to_string(crate::root().join("schemas/rollout.schema.json")).unwrap();
    assert_eq!(stdout(&out), committed);
}

#[test]
fn prints_a_step_schema() {
    let out = rollwright(&["schema", "--step", "shift-traffic"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["properties"]["canary"]["maximum"], 100);
}

#[test]
fn unknown_step_is_a_usage_error_with_a_suggestion() {
    let out = rollwright(&["schema", "--step", "shift-trafic"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown step type `shift-trafic` (did you mean `shift-traffic`?)"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}
