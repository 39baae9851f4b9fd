//! `rollwright lint`: formats, exit codes, path handling, loader limits.

use serde_json::Value;

use crate::{rollwright, rollwright_in, stderr, stdout};

const GOOD: &str = "apiVersion: rollwright.dev/v1alpha1
kind: Rollout
metadata: {name: ok}
model: {name: m, version: \"1\"}
target: {context: dev, namespace: ns, environment: dev}
steps:
  - {id: deploy, type: apply, with: {template: x.yaml.hbs}}
";

#[test]
fn shipped_specs_lint_clean() {
    let out = rollwright(&["lint", "specs"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).starts_with("checked "), "{}", stdout(&out));
    assert!(stdout(&out).contains(": 0 errors, 0 warnings"));
    assert!(stderr(&out).is_empty());
}

#[test]
fn human_output_is_a_located_snippet() {
    let out = rollwright(&["lint", "tests/fixtures/lint/unknown-needs.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let expected = "\
error[RW041]: step `deploy` needs `gat`, but no step has that id
  --> tests/fixtures/lint/unknown-needs.yaml:11:13
   |
11 |     needs: [gat]
   |             ^^^ unknown step
   |
   = help: did you mean `gate`?
";
    assert!(text.starts_with(expected), "{text}");
    assert!(text.ends_with("checked 1 file: 2 errors, 0 warnings\n"), "{text}");
}

#[test]
fn json_format() {
    let out = rollwright(&[
        "lint",
        "--format",
        "json",
        "tests/fixtures/lint/cycle.yaml",
        "specs/examples",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["files"], 12);
    assert_eq!(v["errors"], 2);
    assert_eq!(v["warnings"], 0);
    let d = &v["diagnostics"][0];
    assert_eq!(d["file"], "tests/fixtures/lint/cycle.yaml");
    assert_eq!(d["line"], 9);
    assert_eq!(d["column"], 13);
    assert_eq!(d["severity"], "error");
    assert_eq!(d["code"], "RW042");
    assert_eq!(d["message"], "dependency cycle: a -> c -> b -> a");
}

#[test]
fn sarif_format() {
    let out = rollwright(&[
        "lint",
        "--format",
        "sarif",
        "tests/fixtures/lint/justified-100.yaml",
        "tests/fixtures/lint/no-gate.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["version"], "2.1.0");
    let run = &v["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "rollwright");
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for r in results {
        let idx = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[idx]["id"], r["ruleId"]);
        let region = &r["locations"][0]["physicalLocation"]["region"];
        assert!(region["startLine"].as_u64().unwrap() > 0);
    }
    assert_eq!(results[0]["ruleId"], "RW052");
    assert_eq!(results[0]["level"], "warning");
    assert_eq!(
        results[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "tests/fixtures/lint/justified-100.yaml"
    );
}

#[test]
fn github_format() {
    let out = rollwright(&[
        "lint",
        "--format",
        "github",
        "tests/fixtures/lint/justified-100.yaml",
    ]);
    assert_eq!(out.status.code(), Some(0), "a warning alone passes");
    let text = stdout(&out);
    assert!(
        text.starts_with("::warning file=tests/fixtures/lint/justified-100.yaml,line=18,col=20,endLine=18,endColumn=23,title=RW052::step `all-in` sends 100%25 of production traffic"),
        "{text}"
    );
    assert!(text.ends_with("rollwright lint: 1 files, 0 errors, 1 warnings\n"));
}

#[test]
fn deny_warnings_turns_warnings_into_failure() {
    let out = rollwright(&[
        "lint",
        "--deny-warnings",
        "tests/fixtures/lint/justified-100.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn missing_path_is_a_usage_error_not_a_pass() {
    let out = rollwright(&["lint", "specs/nope.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: cannot read `specs/nope.yaml`: No such file or directory"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
    let out = rollwright(&["lint", "specs/**/*.yml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out), "error: pattern `specs/**/*.yml` matched no files\n");
    let out = rollwright(&["lint", "--format", "xml", "specs"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn globs_and_directories() {
    let out = rollwright(&["lint", "--format", "json", "specs/examples/*.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["files"], 5);
}

#[test]
fn directory_walks_skip_foreign_yaml_and_hidden_directories() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("deep/er")).unwrap();
    std::fs::create_dir_all(p.join(".git")).unwrap();
    std::fs::write(p.join("deep/er/spec.yml"), GOOD).unwrap();
    std::fs::write(p.join("deep/er/x.yaml.hbs"), "kind: ConfigMap\n").unwrap();
    std::fs::write(p.join("deep/k8s.yaml"), "apiVersion: apps/v1\nkind: Deployment\n").unwrap();
    std::fs::write(p.join(".git/bad.yaml"), "{{{").unwrap();
    std::fs::write(p.join("notes.txt"), "{{{").unwrap();
    let out = rollwright_in(p, &["lint", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        stdout(&out),
        "checked 1 file: 0 errors, 0 warnings (1 YAML file skipped: not rollwright specs)\n"
    );
    // Named explicitly, a foreign file is linted.
    let out = rollwright_in(p, &["lint", "deep/k8s.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("RW023"), "{}", stdout(&out));
}

#[test]
fn dangling_symlink_in_a_directory_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone.yaml"), dir.path().join("b.yaml")).unwrap();
    let out = rollwright_in(dir.path(), &["lint", "."]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("gone.yaml") || stderr(&out).contains("b.yaml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn hostile_files_are_refused_quickly_and_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("deep.yaml"), "- ".repeat(20_000) + "x\n").unwrap();
    std::fs::write(
        p.join("latin1.yaml"),
        b"apiVersion: rollwright.dev/v1alpha1\nkind: Rollout # caf\xe9\n",
    )
    .unwrap();
    std::fs::write(p.join("big.yaml"), format!("{GOOD}# {}\n", "x".repeat(2000))).unwrap();
    let codes = |args: &[&str]| -> (Value, Vec<(String, String, u64, u64)>) {
        let out = rollwright_in(p, args);
        assert_eq!(out.status.code(), Some(1));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        let got = v["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["file"].as_str().unwrap().to_owned(),
                    d["code"].as_str().unwrap().to_owned(),
                    d["line"].as_u64().unwrap(),
                    d["column"].as_u64().unwrap(),
                )
            })
            .collect();
        (v, got)
    };
    let (_, got) = codes(&["lint", "--format", "json", "deep.yaml", "latin1.yaml"]);
    assert_eq!(
        got,
        vec![
            ("deep.yaml".into(), "RW006".into(), 1, 129),
            ("latin1.yaml".into(), "RW003".into(), 2, 20)
        ]
    );
    let (v, got) = codes(&["lint", "--format", "json", "--max-file-size", "1000", "big.yaml"]);
    assert_eq!(got, vec![("big.yaml".into(), "RW002".into(), 1, 1)]);
    assert!(
        v["diagnostics"][0]["message"]
            .as_str()
            .unwrap()
            .contains("over the limit of 1000 bytes")
    );
}

#[test]
fn secrets_never_reach_any_output() {
    let fixture = "tests/fixtures/lint/literal-secrets.yaml";
    for format in ["human", "json", "sarif", "github"] {
        let out = rollwright(&["lint", "--format", format, fixture]);
        assert_eq!(out.status.code(), Some(1));
        let all = stdout(&out) + &stderr(&out);
        for secret in [
            "hunter2-but-longer",
            "abcdef123456",
            "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB",
        ] {
            assert!(!all.contains(secret), "{format} leaks {secret}:\n{all}");
        }
        assert!(all.contains("RW060") && all.contains("RW061"), "{format}: {all}");
    }
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let one = rollwright(&["lint", "-j", "1", "--format", "json", "tests/fixtures/lint"]);
    let many = rollwright(&["lint", "-j", "4", "--format", "json", "tests/fixtures/lint"]);
    assert_eq!(stdout(&one), stdout(&many));
}

const POLICY: &str = "apiVersion: rollwright.dev/v1alpha1
kind: Policy
production:
  contexts: [prod-east]
environments:
  production:
    gate: {approvals: 2, roles: [ml-lead], evals: {auc: {min: 0.9}}}
";

/// A spec cannot dodge the gate by calling a production cluster `dev`, and
/// its gate may be stricter than the policy, never weaker.
#[test]
fn the_policy_decides_what_is_production_and_the_minimum_gate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    std::fs::write(dir.path().join("x.yaml.hbs"), "kind: ConfigMap\n").unwrap();
    let dodge = "apiVersion: rollwright.dev/v1alpha1
kind: Rollout
metadata: {name: dodge}
model: {name: m, version: \"1\"}
target: {context: prod-east, namespace: ns, environment: dev}
steps:
  - {id: deploy, type: apply, with: {template: x.yaml.hbs}}
";
    std::fs::write(dir.path().join("dodge.yaml"), dodge).unwrap();
    let weak = dodge
        .replace("environment: dev", "environment: production")
        .replace("name: dodge", "name: weak")
        .replace("  - {id: deploy, type: apply,", "  - {id: gate, type: gate-check, with: {approvals: 1, evals: {auc: {min: 0.8}}}}\n  - {id: deploy, type: apply, needs: [gate],");
    std::fs::write(dir.path().join("weak.yaml"), weak).unwrap();
    let out = rollwright_in(
        dir.path(),
        &[
            "lint",
            "--format",
            "json",
            "--policy",
            "policy.yaml",
            "dodge.yaml",
            "weak.yaml",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let got = diagnostic_lines(&out);
    assert_eq!(
        got,
        [
            "dodge.yaml 5:9 RW056 the policy requires a gate-check in production, and this rollout has none",
            "dodge.yaml 5:58 RW055 the spec declares `environment: dev`, but this target is production: context `prod-east` is production (policy policy.yaml)",
            "dodge.yaml 7:24 RW050 step `deploy` (apply) changes production, but this rollout has no gate-check",
            "weak.yaml 7:22 RW056 gate-check `gate` is weaker than the production policy: the policy requires an approval from a `ml-lead`",
            "weak.yaml 7:52 RW056 gate-check `gate` is weaker than the production policy: the policy requires at least 2 approvals, the gate asks 1",
            "weak.yaml 7:68 RW056 gate-check `gate` is weaker than the production policy: the policy requires `auc` min ≥ 0.9",
        ]
    );
    // Without the policy the dodge lints clean: the policy is what closes it.
    let out = rollwright_in(dir.path(), &["lint", "dodge.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // And `run` refuses it before anything happens.
    let out = rollwright_in(dir.path(), &["run", "--policy", "policy.yaml", "dodge.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.path().join(".rollwright/runs").exists());
}

/// A target the policy declares GitOps-managed refuses steps that would
/// change the cluster directly; `target.gitops` makes the same spec clean,
/// and a repository URL with a password is refused (as every credential-shaped value).
#[test]
fn gitops_managed_targets_refuse_imperative_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        "apiVersion: rollwright.dev/v1alpha1\nkind: Policy\ngitops:\n  namespaces: [payments]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("x.yaml.hbs"), "kind: ConfigMap\n").unwrap();
    let direct = "apiVersion: rollwright.dev/v1alpha1
kind: Rollout
metadata: {name: direct}
model: {name: m, version: \"1\"}
target: {context: stage, namespace: payments, environment: staging}
serving: {platform: deployment, traffic: istio}
steps:
  - {id: deploy, type: apply, with: {template: x.yaml.hbs}, compensate: {type: rollback}}
  - {id: shift, type: shift-traffic, needs: [deploy], with: {canary: 20}}
";
    std::fs::write(dir.path().join("direct.yaml"), direct).unwrap();
    let declared = direct.replace(
        "environment: staging}",
        "environment: staging,\n  gitops: {repo: \"https://ci:hunter2hunter2@git.example.com/platform.git\", path: envs/stage, controller: argocd, app: m}}",
    );
    std::fs::write(dir.path().join("declared.yaml"), declared).unwrap();
    let out = rollwright_in(
        dir.path(),
        &[
            "lint",
            "--format",
            "json",
            "--policy",
            "policy.yaml",
            "direct.yaml",
            "declared.yaml",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let got = diagnostic_lines(&out);
    assert_eq!(
        got,
        [
            "declared.yaml 6:18 RW061 value looks like a URL with an embedded password",
            "direct.yaml 8:24 RW057 step `apply` would change the cluster directly, but namespace `payments` is GitOps-managed (policy policy.yaml): the controller would undo it or fight it",
            "direct.yaml 8:80 RW057 compensation `rollback` would change the cluster directly, but namespace `payments` is GitOps-managed (policy policy.yaml): the controller would undo it or fight it",
            "direct.yaml 9:23 RW057 step `shift-traffic` would change the cluster directly, but namespace `payments` is GitOps-managed (policy policy.yaml): the controller would undo it or fight it",
        ]
    );
    assert!(!stdout(&out).contains("hunter2hunter2"), "{}", stdout(&out));
}

/// `file line:col code message` of each diagnostic of a `--format json` lint.
fn diagnostic_lines(out: &std::process::Output) -> Vec<String> {
    let v: Value = serde_json::from_str(&stdout(out)).unwrap();
    v["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{} {}:{} {} {}",
                d["file"].as_str().unwrap(),
                d["line"],
                d["column"],
                d["code"].as_str().unwrap(),
                d["message"].as_str().unwrap()
            )
        })
        .collect()
}
