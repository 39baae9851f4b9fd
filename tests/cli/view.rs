//! What a person sees, pinned: the terminal's live view (through a
//! pseudo-terminal, as the terminal shows it at the end), the CI lines, the
//! JSON event stream and both report formats, for a promoted, a rolled-back
//! and a resumed run. Times, ids and paths are normalised; everything else
//! is compared with `tests/snapshots/view/` (`UPDATE_EXPECT=1` rewrites
//! them: review the diff).

use std::path::Path;
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

/// Three steps in a line, so that the order of everything is fixed.
const SEQ: &str = r#"apiVersion: rollwright.dev/v1alpha1
kind: Rollout
metadata: {name: seq}
model: {name: m, version: "2"}
target: {context: dev, namespace: ns, environment: dev}
defaults: {timeout: 1m}
steps:
  - {id: deploy, type: exec, with: {command: [sh, -c, "echo deploy >> effects"], undo: [sh, -c, "echo undo-deploy >> effects"]}}
  - {id: shift, type: exec, needs: [deploy], with: {command: [sh, -c, "echo shift >> effects"], undo: [sh, -c, "echo undo-shift >> effects"]}}
  - {id: verify, type: exec, needs: [shift], with: {command: [sh, -c, "exit ${FAIL_VERIFY:-0}"]}}
"#;

fn normalise(text: &str, dir: &Path) -> String {
    let rules: [(&str, &str); 9] = [
        (r"seq-\d{8}T\d{6}-[0-9a-f]{4}", "<run>"),
        (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC", "<time>"),
        (r"\[\s*\d+\.\d+s\]", "[t]"),
        (
            r#""(t|at_ms|started_ms|ended_ms|finished_ms|failed_ms)": ?[0-9.]+"#,
            "\"$1\": 0",
        ),
        (r"\+?\b\d+(\.\d+)?(ms|s)(\d+ms)?\b", "<d>"),
        (r"(\*\*Started by:\*\* ).+? at ", "${1}<user> at "),
        (r#""started_by": "[^"]*""#, "\"started_by\": \"<user>\""),
        (r"uid \d+", "<user>"),
        (r" +\n", "\n"),
    ];
    let mut s = text.replace(&dir.display().to_string(), "<dir>");
    for (re, with) in rules {
        s = regex::Regex::new(re).unwrap().replace_all(&s, with).into_owned();
    }
    s
}

fn check(name: &str, actual: &str, failures: &mut Vec<String>) {
    let snap = crate::root()
        .join("tests/snapshots/view")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
        std::fs::write(&snap, actual).unwrap();
    }
    let want = std::fs::read_to_string(&snap).unwrap_or_default();
    if want != actual {
        failures.push(format!("{name} differs from {}:\n{actual}", snap.display()));
    }
}

fn rollwright(dir: &Path, args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::cargo_bin("rollwright").unwrap();
    cmd.current_dir(dir).env("NO_COLOR", "1").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Runs `sh -c "stty cols COLS rows ROWS; SCRIPT"` in a pseudo-terminal
/// (`script`), where `rollwright` in SCRIPT is this build; returns its exit
/// code and what a COLS×ROWS terminal shows at the end, row by row (with
/// whether the terminal wrapped the row).
pub fn pty(
    dir: &Path,
    script: &str,
    cols: u16,
    rows: u16,
    env: &[(&str, String)],
) -> (Option<i32>, Vec<(String, bool)>) {
    let bin = assert_cmd::cargo::cargo_bin("rollwright");
    let script = script.replace("rollwright ", &format!("{} ", bin.display()));
    let mut cmd = Command::new("script");
    cmd.current_dir(dir).env_remove("NO_COLOR").args([
        "-qec",
        &format!("stty cols {cols} rows {rows}; {script}"),
        "/dev/null",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let mut term = vt100::Parser::new(rows, cols, 0);
    term.process(&out.stdout);
    let screen = term.screen();
    let shown = screen
        .rows(0, cols)
        .enumerate()
        .map(|(i, r)| (r, screen.row_wrapped(u16::try_from(i).unwrap())))
        .collect();
    (out.status.code(), shown)
}

/// The screen of an 80×30 terminal (80 columns: also what a program
/// assumes when it cannot read the size, so a slow `stty` changes nothing)
/// after `rollwright ARGS` ran in it. A line the terminal wrapped is one
/// line again (its length depends on the durations and paths normalised
/// later); a row padded with spaces to the edge, as the live view draws
/// its rows, is not wrapped.
fn terminal(dir: &Path, args: &str, env: &[(&str, String)]) -> String {
    let (_, rows) = pty(dir, &format!("rollwright {args}"), 80, 30, env);
    let mut text = String::new();
    for (row, wrapped) in rows {
        let joined = wrapped && row.trim_end().chars().count() >= 79;
        text.push_str(if joined { &row } else { row.trim_end() });
        if !joined {
            text.push('\n');
        }
    }
    text.trim_end().to_owned() + "\n"
}

fn only_run(dir: &Path) -> String {
    let mut runs: Vec<String> = std::fs::read_dir(dir.join(".rollwright/runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs.remove(0)
}

/// One case, run three times (CI lines, JSON, terminal), each in its own
/// directory; the report of the first.
fn case(name: &str, env: &[(&str, String)], crash_first: bool, failures: &mut Vec<String>) {
    let start = |dir: &Path, extra: &[&str]| -> (std::process::Output, String) {
        std::fs::write(dir.join("spec.yaml"), SEQ).unwrap();
        let mut args = vec!["run", "spec.yaml"];
        args.extend_from_slice(extra);
        if crash_first {
            // Killed right after the run's first record: `resume` does everything.
            let out = rollwright(dir, &["run", "spec.yaml"], &crate::run::crash_after(1));
            assert_eq!(out.status.code(), None, "killed");
            let id = only_run(dir);
            let mut args = vec!["resume", id.as_str()];
            args.extend_from_slice(extra);
            (rollwright(dir, &args, env), id)
        } else {
            let out = rollwright(dir, &args, env);
            let id = only_run(dir);
            (out, id)
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (out, id) = start(dir.path(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code();
    check(
        &format!("{name}.ci"),
        &normalise(
            &format!("exit {code:?}\n--- stdout\n{stdout}--- stderr\n{stderr}"),
            dir.path(),
        ),
        failures,
    );
    let run_dir = dir.path().join(".rollwright/runs").join(&id);
    let md = std::fs::read_to_string(run_dir.join("report.md")).unwrap();
    check(
        &format!("{name}.report.md"),
        &normalise(&md, dir.path()),
        failures,
    );
    let json = rollwright(dir.path(), &["report", &id, "--format", "json"], &[]);
    check(
        &format!("{name}.report.json"),
        &normalise(&String::from_utf8_lossy(&json.stdout), dir.path()),
        failures,
    );

    let dir = tempfile::tempdir().unwrap();
    let (out, _) = start(dir.path(), &["--output", "json"]);
    let events: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(v["t"].is_number(), "{l}");
            serde_json::to_string(&v).unwrap()
        })
        .collect();
    check(
        &format!("{name}.json"),
        &normalise(&(events.join("\n") + "\n"), dir.path()),
        failures,
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.yaml"), SEQ).unwrap();
    let screen = if crash_first {
        let out = rollwright(dir.path(), &["run", "spec.yaml"], &crate::run::crash_after(1));
        assert_eq!(out.status.code(), None, "killed");
        terminal(dir.path(), &format!("resume {}", only_run(dir.path())), env)
    } else {
        terminal(dir.path(), "run spec.yaml", env)
    };
    check(
        &format!("{name}.terminal"),
        &normalise(&screen, dir.path()),
        failures,
    );
}

#[test]
fn what_a_promoted_a_rolled_back_and_a_resumed_run_show() {
    let mut failures = Vec::new();
    let user = [("USER", "snapshot-user".to_owned())];
    case("promoted", &user, false, &mut failures);
    case(
        "rolled-back",
        &[
            ("USER", "snapshot-user".to_owned()),
            ("FAIL_VERIFY", "3".to_owned()),
        ],
        false,
        &mut failures,
    );
    case("resumed", &user, true, &mut failures);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The terminal is resized while the live view runs (40 columns, then
/// 120): the view is redrawn at the new width — the title no longer cut —
/// and no step's row is left behind twice.
#[test]
fn the_live_view_follows_a_resized_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SEQ.replace(
        "with: {command: [sh, -c, \"exit ${FAIL_VERIFY:-0}\"]}",
        "with: {command: [sh, -c, \"sleep 2\"]}",
    );
    std::fs::write(dir.path().join("spec.yaml"), spec).unwrap();
    let (code, shown) = pty(
        dir.path(),
        "(sleep 1; stty cols 120 </dev/tty) & rollwright run spec.yaml; wait",
        120,
        30,
        &[],
    );
    assert_eq!(code, Some(0));
    let rows: Vec<String> = shown.into_iter().map(|(r, _)| r.trim_end().to_owned()).collect();
    let text = rows.join("\n");
    for step in ["deploy", "shift", "verify"] {
        let n = rows
            .iter()
            .filter(|r| r.starts_with(&format!("✓ {step} ")))
            .count();
        assert_eq!(n, 1, "`{step}` once:\n{text}");
    }
    let title = rows.iter().find(|r| r.starts_with("rollout seq-")).expect(&text);
    assert!(
        title.ends_with("m v2 → dev/ns"),
        "drawn at the new width: {title}\n{text}"
    );
}
