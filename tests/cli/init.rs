//! `rollwright init`: with flags (non-interactive), through a pseudo-terminal,
//! and its refusals; what it writes lints clean and plans.

use crate::{rollwright_in, root, stderr, stdout};

fn strategies() -> String {
    root().join("specs/strategies").to_string_lossy().into_owned()
}

#[test]
fn init_with_flags_writes_a_spec_that_lints_and_plans() {
    let dir = tempfile::tempdir().unwrap();
    let s = strategies();
    let out = rollwright_in(
        dir.path(),
        &[
            "init",
            "--model",
            "churn",
            "--model-version",
            "12",
            "--registry",
            "file",
            "--context",
            "prod-west",
            "--namespace",
            "growth",
            "--platform",
            "deployment",
            "--traffic",
            "gateway-api",
            "--strategy",
            "canary",
            "--weights",
            "10,50",
            "--hold",
            "5m",
            "--cpu",
            "500m",
            "--memory",
            "1Gi",
            "--gpu",
            "1",
            "--replicas",
            "3",
            "--endpoint",
            "https://churn.example.com",
            "--auth-secret",
            "churn-token",
            "--strategies",
            &s,
            "--dir",
            "rollouts",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "wrote rollouts/churn.yaml\nwrote rollouts/churn.yaml.hbs\n"
    );
    let spec = std::fs::read_to_string(dir.path().join("rollouts/churn.yaml")).unwrap();
    for want in [
        "weights: [10, 50]\n  hold: 5m",
        "model: {registry: file, name: churn, version: \"12\"}",
        "serving: {platform: deployment, traffic: gateway-api, endpoint: \"https://churn.example.com\"}",
        "target: {context: prod-west, namespace: growth, environment: production}",
        "auth: {secretRef: churn-token}",
    ] {
        assert!(spec.contains(want), "{want}\n{spec}");
    }
    let manifest = std::fs::read_to_string(dir.path().join("rollouts/churn.yaml.hbs")).unwrap();
    assert!(manifest.contains("replicas: 3"), "{manifest}");
    assert!(
        manifest.contains("requests: {cpu: \"500m\", memory: 1Gi}\n            limits: {cpu: \"1000m\", memory: 2Gi, nvidia.com/gpu: 1}"),
        "{manifest}"
    );
    let lint = rollwright_in(dir.path(), &["lint", "--root", "/", "rollouts/"]);
    assert_eq!(lint.status.code(), Some(0), "{}{}", stdout(&lint), stderr(&lint));
    let plan = rollwright_in(dir.path(), &["plan", "--root", "/", "rollouts/churn.yaml"]);
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));
    assert!(stdout(&plan).contains("ramp[50].hold"), "{}", stdout(&plan));

    // Never overwritten without --force.
    let again = rollwright_in(
        dir.path(),
        &[
            "init",
            "--model",
            "churn",
            "--model-version",
            "13",
            "--context",
            "c",
            "--namespace",
            "growth",
            "--strategies",
            &s,
            "--dir",
            "rollouts",
        ],
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("rollouts/churn.yaml exists (--force overwrites it)"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn init_without_a_terminal_asks_nothing_and_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = rollwright_in(
        dir.path(),
        &["init", "--model", "fraud", "--strategies", &strategies()],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("model version: required (pass it as a flag; not on a terminal, nothing is asked)"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.path().join("fraud.yaml").exists());
    let bad = rollwright_in(
        dir.path(),
        &[
            "init",
            "--model",
            "fraud",
            "--model-version",
            "1",
            "--context",
            "c",
            "--namespace",
            "n",
            "--platform",
            "lambda",
            "--strategies",
            &strategies(),
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("serving platform: `lambda` is not one of kserve, deployment, seldon"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn init_asks_on_a_terminal_for_what_flags_leave_open() {
    let dir = tempfile::tempdir().unwrap();
    // model name, version, registry, rollout name, context, namespace,
    // environment (a wrong answer first), then defaults for the rest.
    std::fs::write(
        dir.path().join("answers"),
        "fraud\n9\n\n\nprod-east\nrisk\nprod\nstaging\n\n\n\n\n\n\n\n\n\n\n\n",
    )
    .unwrap();
    let bin = assert_cmd::cargo::cargo_bin("rollwright");
    let out = std::process::Command::new("python3")
        .current_dir(dir.path())
        .arg(root().join("tests/pty_run.py"))
        .arg("answers")
        .arg(&bin)
        .args(["init", "--strategies", &strategies(), "--hold", "2m"])
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{screen}");
    assert!(screen.contains("model name: "), "{screen}");
    assert!(
        screen.contains("model registry (file/mlflow) [mlflow]: "),
        "{screen}"
    );
    assert!(
        screen.contains("environment: `prod` is not one of production, staging, dev"),
        "{screen}"
    );
    assert!(
        !screen.contains("hold at each weight"),
        "flags are not asked again: {screen}"
    );
    let spec = std::fs::read_to_string(dir.path().join("fraud.yaml")).unwrap();
    assert!(
        spec.contains("target: {context: prod-east, namespace: risk, environment: staging}"),
        "{spec}"
    );
    assert!(
        spec.contains("uses: ") && spec.contains("kserve-canary.yaml"),
        "{spec}"
    );
    assert!(spec.contains("hold: 2m"), "{spec}");
    let lint = rollwright_in(dir.path(), &["lint", "--root", "/", "fraud.yaml"]);
    assert_eq!(lint.status.code(), Some(0), "{}{}", stdout(&lint), stderr(&lint));
}

#[test]
fn init_for_a_gitops_target_declares_it_and_lints_clean() {
    let dir = tempfile::tempdir().unwrap();
    let s = strategies();
    let out = rollwright_in(
        dir.path(),
        &[
            "init",
            "--model",
            "fraud",
            "--model-version",
            "8",
            "--registry",
            "file",
            "--context",
            "prod-east",
            "--namespace",
            "ml",
            "--gitops-repo",
            "git@git.example.com:platform/deploy.git",
            "--gitops-controller",
            "flux",
            "--strategies",
            &s,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let spec = std::fs::read_to_string(dir.path().join("fraud.yaml")).unwrap();
    assert!(
        spec.contains("  gitops: {repo: \"git@git.example.com:platform/deploy.git\", branch: main, path: \"deploy/ml/fraud\", controller: flux, app: fraud}}"),
        "{spec}"
    );
    let out = rollwright_in(dir.path(), &["lint", "--root", "/", "fraud.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // A wrong controller is refused off a terminal, naming the choices.
    let out = rollwright_in(
        dir.path(),
        &[
            "init",
            "--model",
            "x",
            "--model-version",
            "1",
            "--context",
            "c",
            "--namespace",
            "n",
            "--gitops-repo",
            "r",
            "--gitops-controller",
            "jenkins",
            "--dir",
            "other",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("argocd"), "{}", stderr(&out));
}

/// What a user types is data: a value that looks like YAML syntax
/// (`, environment: dev`, a quote, a newline) never changes another field of
/// the generated spec — above all not the environment. It is written as
/// typed (quoted) or refused; the environment stays what was chosen.
#[test]
fn init_values_cannot_inject_yaml() {
    let s = strategies();
    let mut planned = Vec::new();
    for (flag, value) in [
        ("--context", "prod-east, environment: dev"),
        ("--context", "prod-east}\nenvironment: dev\nx: {"),
        ("--model-version", "8\", environment: dev, x: \""),
        ("--endpoint", "https://x.example.com\", environment: dev, y: \""),
        ("--cpu", "1\"}, environment: dev, z: {a: \""),
        ("--name", "churn\nenvironment: dev"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "init",
            "--model",
            "churn",
            "--registry",
            "file",
            "--namespace",
            "growth",
            "--platform",
            "deployment",
            "--traffic",
            "istio",
            "--environment",
            "production",
            "--strategy",
            "canary",
            "--strategies",
            &s,
            "--dir",
            "out",
        ];
        for (f, default) in [
            ("--context", "prod-east"),
            ("--model-version", "8"),
            ("--endpoint", "https://churn.example.com"),
            ("--cpu", "500m"),
            ("--name", "churn"),
        ] {
            args.push(f);
            args.push(if f == flag { value } else { default });
        }
        let out = rollwright_in(dir.path(), &args);
        let Ok(spec) = std::fs::read_to_string(dir.path().join("out/churn.yaml")) else {
            // Refused: with a reason, nothing written.
            assert_ne!(out.status.code(), Some(0), "{flag}: {}", stderr(&out));
            assert!(!stderr(&out).is_empty());
            continue;
        };
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", stderr(&out));
        let plan = rollwright_in(
            dir.path(),
            &["plan", "--format", "json", "--root", "/", "out/churn.yaml"],
        );
        if plan.status.code() != Some(0) {
            // Written as typed, and refused where it cannot be data (a quote
            // in a manifest value): located, and nothing can run it.
            assert!(stderr(&plan).contains("error["), "{flag}: {}", stderr(&plan));
            continue;
        }
        let p: serde_json::Value = serde_json::from_slice(&plan.stdout)
            .unwrap_or_else(|_| panic!("{flag}: plan: {}\n{spec}", stderr(&plan)));
        assert_eq!(
            p["target"]["environment"], "production",
            "{flag} = {value:?} changed the environment:\n{spec}"
        );
        planned.push(flag);
        match flag {
            "--context" => assert_eq!(p["target"]["context"], value, "{spec}"),
            "--model-version" => assert_eq!(p["model"]["version"], value, "{spec}"),
            "--endpoint" => assert_eq!(p["serving"]["endpoint"], value, "{spec}"),
            _ => {}
        }
    }
    // The contexts and the endpoint are written as typed and plan.
    assert_eq!(planned, ["--context", "--context", "--endpoint"]);
}
