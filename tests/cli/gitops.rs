//! GitOps targets end to end: a local bare repository, the sim's Argo CD /
//! Flux controller applying what is committed, and `rollwright run` changing
//! only Git.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::k8s::{
    Backend, CANARY_MANIFEST, ISTIO_SPEC, PROBE_METRICS, World, analysed_spec, journal_of, only_run_dir,
};
use crate::stderr;

/// The stable version 7 behind Istio, as the platform team committed it.
const REPO_MANIFESTS: &str = "# fraud model, stable track\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: fraud-stable}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: fraud, track: stable}}\n  template:\n    metadata: {labels: {app: fraud, track: stable, version: \"7\"}}\n    spec: {serviceAccountName: fraud, containers: [{name: server, image: \"models/fraud:7\"}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: fraud}\nspec: {selector: {app: fraud}, ports: [{port: 8080}]}\n---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: fraud}\nspec:\n  host: fraud\n  subsets:\n    - {name: stable, labels: {track: stable}}\n    - {name: canary, labels: {track: canary}}\n---\n# Traffic between the tracks; rollwright moves the weights.\napiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: fraud}\nspec:\n  hosts: [fraud]\n  http:\n    - route:\n        - destination: {host: fraud, subset: stable}\n          weight: 100 # stable\n        - destination: {host: fraud, subset: canary}\n          weight: 0\n";

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Someone Else",
            "-c",
            "user.email=else@example.com",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct GitWorld {
    w: World,
    bare: PathBuf,
    /// A teammate's clone.
    other: PathBuf,
    initial: String,
    _repos: tempfile::TempDir,
}

/// A bare repository with the stable world at `envs/prod`, an Argo CD
/// Application (or a Flux Kustomization) following it, and the istio spec
/// pointed at it.
fn git_world(controller: &str, extra_scenario: &str) -> GitWorld {
    git_world_on(Backend::Embedded, controller, extra_scenario)
}

fn git_world_on(backend: Backend, controller: &str, extra_scenario: &str) -> GitWorld {
    let repos = tempfile::tempdir().unwrap();
    let bare = repos.path().join("gitops.git");
    git(
        repos.path(),
        &["init", "--quiet", "--bare", "-b", "main", "gitops.git"],
    );
    let other = repos.path().join("other");
    git(
        repos.path(),
        &["clone", "--quiet", bare.to_str().unwrap(), "other"],
    );
    std::fs::create_dir_all(other.join("envs/prod")).unwrap();
    std::fs::write(other.join("envs/prod/fraud.yaml"), REPO_MANIFESTS).unwrap();
    std::fs::write(other.join("README.md"), "platform repo\n").unwrap();
    git(&other, &["add", "-A"]);
    git(&other, &["commit", "--quiet", "-m", "fraud: stable v7"]);
    git(&other, &["push", "--quiet", "origin", "HEAD:main"]);
    let initial = git(&bare, &["rev-parse", "main"]).trim().to_owned();
    let app = if controller == "argocd" {
        format!(
            "  - {{apiVersion: v1, kind: Namespace, metadata: {{name: argocd}}}}\n  - apiVersion: argoproj.io/v1alpha1\n    kind: Application\n    metadata: {{name: fraud, namespace: argocd}}\n    spec:\n      source: {{repoURL: \"file://{}\", targetRevision: main, path: envs/prod}}\n      destination: {{server: \"https://kubernetes.default.svc\", namespace: ml}}\n      syncPolicy: {{automated: {{prune: true}}}}\n",
            bare.display()
        )
    } else {
        format!(
            "  - {{apiVersion: v1, kind: Namespace, metadata: {{name: flux-system}}}}\n  - apiVersion: source.toolkit.fluxcd.io/v1\n    kind: GitRepository\n    metadata: {{name: platform, namespace: flux-system}}\n    spec: {{url: \"file://{}\", ref: {{branch: main}}, interval: 1m}}\n  - apiVersion: kustomize.toolkit.fluxcd.io/v1\n    kind: Kustomization\n    metadata: {{name: fraud, namespace: flux-system}}\n    spec: {{sourceRef: {{kind: GitRepository, name: platform}}, path: ./envs/prod, prune: true, wait: true, targetNamespace: ml, interval: 5m}}\n",
            bare.display()
        )
    };
    let w = World::on(
        backend,
        &format!(
            "time-scale: 20\nstartup: 4s\ntraffic: {{rate: 0}}\n{extra_scenario}objects:\n  - {{apiVersion: v1, kind: Namespace, metadata: {{name: ml}}}}\n  - {{apiVersion: v1, kind: ServiceAccount, metadata: {{name: fraud, namespace: ml}}}}\n{app}"
        ),
    );
    w.write("canary.yaml.hbs", CANARY_MANIFEST);
    w.write("spec.yaml", &gitops_spec(ISTIO_SPEC, &bare, controller));
    w.wait_split("fraud", &[("7", 100)]);
    GitWorld {
        w,
        bare,
        other,
        initial,
        _repos: repos,
    }
}

fn gitops_spec(spec: &str, bare: &Path, controller: &str) -> String {
    spec.replace(
        "target: {context: prod-east, namespace: ml, environment: production}",
        &format!(
            "target:\n  context: prod-east\n  namespace: ml\n  environment: production\n  gitops: {{repo: \"{}\", branch: main, path: envs/prod, controller: {controller}, app: fraud}}",
            bare.display()
        ),
    )
}

impl GitWorld {
    /// `subject` of every commit on main, oldest first.
    fn subjects(&self) -> Vec<String> {
        git(&self.bare, &["log", "--reverse", "--format=%s", "main"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn vs_weights(&self) -> String {
        crate::k8s::vs_weights(&self.w)
    }

    fn head(&self) -> String {
        git(&self.bare, &["rev-parse", "main"]).trim().to_owned()
    }

    fn committed_vs(&self) -> String {
        git(&self.bare, &["show", "main:envs/prod/fraud.yaml"])
    }
}

on_both_backends! {
fn a_canary_is_promoted_through_commits_argo_cd_syncs(backend) {
    let g = git_world_on(backend, "argocd", "");
    let out = g.w.rollwright(&["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let subjects = g.subjects();
    assert_eq!(
        subjects[1..],
        [
            "rollwright: apply Deployment fraud-canary (fraud version 8)",
            "rollwright: shift 20% of traffic to the canary (VirtualService ml/fraud) (fraud version 8)",
            "rollwright: shift 50% of traffic to the canary (VirtualService ml/fraud) (fraud version 8)",
            "rollwright: shift 100% of traffic to the canary (VirtualService ml/fraud) (fraud version 8)",
        ],
        "{subjects:#?}"
    );
    let run = only_run_dir(g.w.path());
    let id = run.file_name().unwrap().to_string_lossy().into_owned();
    let body = git(&g.bare, &["log", "-1", "--format=%B", "main"]);
    assert!(body.contains(&format!("Rollwright-Run: {id}")), "{body}");
    assert!(body.contains("Rollwright-Step: promote"), "{body}");
    // Only the weights changed; the comments stayed.
    let vs = g.committed_vs();
    assert!(vs.contains("          weight: 0 # stable\n"), "{vs}");
    assert!(vs.contains("          weight: 100\n"), "{vs}");
    assert!(vs.contains("# Traffic between the tracks"), "{vs}");
    // The cluster followed Git, through the controller.
    assert_eq!(g.vs_weights(), "0 100");
    g.w.wait_split("fraud", &[("8", 100)]);
    let labels = g.w.kubectl(&[
        "get",
        "deploy",
        "fraud-canary",
        "-n",
        "ml",
        "-o",
        "jsonpath={.metadata.labels.argocd\\.argoproj\\.io/instance}",
    ]);
    assert_eq!(labels, "fraud", "applied by the controller, not by rollwright");
    let head = g.head();
    let app = g.w.kubectl(&[
        "get",
        "application",
        "fraud",
        "-n",
        "argocd",
        "-o",
        "jsonpath={.status.sync.status}/{.status.health.status}/{.status.sync.revision}",
    ]);
    assert_eq!(app, format!("Synced/Healthy/{head}"));
    // The shas are journaled; no object was applied directly.
    let journal = journal_of(g.w.path());
    assert!(
        journal.contains(&format!(r#""key":"gitops-pushed","value":{{"sha":"{head}""#)),
        "{journal}"
    );
    assert!(!journal.contains(r#""key":"objects""#), "{journal}");
}
}

#[test]
fn a_regression_is_rolled_back_by_a_revert_commit() {
    let g = git_world(
        "argocd",
        "models:\n  fraud:\n    versions:\n      \"7\": {latency: {p50: 5ms, p99: 20ms}}\n      \"8\": {error-rate: 60%, latency: {p50: 5ms, p99: 20ms}}\n",
    );
    g.w.write(
        "spec.yaml",
        &gitops_spec(
            &analysed_spec(&g.w, "3s", &PROBE_METRICS.replace("max: 0.25", "max: 2")),
            &g.bare,
            "argocd",
        ),
    );
    let out = g.w.rollwright(&["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("error-rate"), "{}", stderr(&out));
    let subjects = g.subjects();
    assert_eq!(subjects.len(), 4, "{subjects:#?}");
    assert!(subjects[1].starts_with("rollwright: apply Deployment fraud-canary"));
    assert!(subjects[2].starts_with("rollwright: shift 20%"));
    assert!(
        subjects[3].starts_with("rollwright: revert run "),
        "{subjects:#?}"
    );
    assert!(subjects[3].contains("(2 commits: "), "{subjects:#?}");
    // Exactly the run's commits, newest first.
    let shas: Vec<String> = git(&g.bare, &["log", "--format=%H", "main"])
        .lines()
        .map(str::to_owned)
        .collect();
    let body = git(&g.bare, &["log", "-1", "--format=%B", "main"]);
    let reverts: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("Rollwright-Reverts: "))
        .collect();
    assert_eq!(reverts, [shas[1].as_str(), shas[2].as_str()], "{body}");
    // Said in the progress stream and the report.
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "restored reverted 2 commits of this run ({}, {}) as {} on main",
            &shas[1][..8],
            &shas[2][..8],
            &shas[0][..8]
        )),
        "{err}"
    );
    let report = std::fs::read_to_string(only_run_dir(g.w.path()).join("report.md")).unwrap();
    assert!(report.contains("reverted 2 commits of this run"), "{report}");
    // The tree is back to what it was; so is the cluster.
    assert_eq!(git(&g.bare, &["diff", &g.initial, "main"]), "");
    assert_eq!(g.vs_weights(), "100 0");
    g.w.wait_split("fraud", &[("7", 100)]);
    assert_eq!(
        g.w.deployments(),
        "deployment.apps/fraud-stable\n",
        "the canary was pruned by the controller"
    );
}

#[test]
fn someone_elses_commit_to_the_branch_is_kept() {
    let g = git_world("argocd", "");
    // Right before shift-20 pushes, a teammate pushes a change to the same
    // file (a timeout on the route): rollwright's push is refused, it
    // fetches and makes its change again on top, never forcing.
    // Git's own hook, through the user's global configuration: a pre-push
    // hook that, before shift-20's push, pushes the teammate's change.
    let marker = g.other.join(".moved");
    let hooks = g.w.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let hook = hooks.join("pre-push");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nwhile read lref lsha rref rsha; do\n  if git log -1 --format=%B \"$lsha\" | grep -q 'Rollwright-Step: shift-20' && [ ! -e '{m}' ]; then\n    touch '{m}'\n    unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE\n    cd '{o}' && git pull --quiet origin main && sed -i 's/^  hosts: \\[fraud\\]$/  hosts: [fraud]\\n  # owned by the platform team/' envs/prod/fraud.yaml && git -c user.name=Else -c user.email=e@x commit --quiet -am 'platform: annotate route' && git push --quiet origin HEAD:main\n  fi\ndone\nexit 0\n",
            m = marker.display(),
            o = g.other.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let gitconfig = g.w.path().join("gitconfig");
    std::fs::write(&gitconfig, format!("[core]\n\thooksPath = {}\n", hooks.display())).unwrap();
    let gitconfig = gitconfig.display().to_string();
    let out =
        g.w.rollwright(&["run", "spec.yaml"], &[("GIT_CONFIG_GLOBAL", &gitconfig)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(marker.exists(), "the concurrent push happened");
    let subjects = g.subjects();
    assert_eq!(subjects.len(), 6, "{subjects:#?}");
    assert_eq!(subjects[2], "platform: annotate route", "{subjects:#?}");
    assert!(subjects[3].starts_with("rollwright: shift 20%"), "{subjects:#?}");
    let vs = g.committed_vs();
    assert!(vs.contains("# owned by the platform team"), "{vs}");
    assert!(vs.contains("          weight: 100\n"), "{vs}");
    // shift-20 committed twice locally (the first was refused), pushed once.
    let journal = journal_of(g.w.path());
    assert_eq!(
        journal
            .matches(r#""step":"shift-20","key":"gitops-commit""#)
            .count(),
        2,
        "{journal}"
    );
    assert_eq!(g.vs_weights(), "0 100");
}

#[test]
fn a_push_the_remote_rejects_fails_the_step_and_the_run_is_reverted() {
    let g = git_world("argocd", "");
    let hook = g.bare.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\nwhile read old new ref; do\n  if git log --format=%s \"$old..$new\" | grep -q 'shift 50%'; then\n    echo 'policy: more than 20% of production traffic needs change ticket CHG-1' >&2\n    exit 1\n  fi\ndone\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = g.w.rollwright(&["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("rejected by the remote"), "{err}");
    assert!(err.contains("needs change ticket CHG-1"), "{err}");
    let subjects = g.subjects();
    assert_eq!(subjects.len(), 4, "{subjects:#?}");
    assert!(
        subjects[3].starts_with("rollwright: revert run "),
        "{subjects:#?}"
    );
    assert!(!subjects.iter().any(|s| s.contains("shift 50%")));
    assert_eq!(git(&g.bare, &["diff", &g.initial, "main"]), "");
    assert_eq!(g.vs_weights(), "100 0");
}

#[test]
fn killed_between_commit_and_push_then_resumed_commits_once() {
    let g = git_world("argocd", "");
    let lib = crate::fault_lib().display().to_string();
    let out = g.w.rollwright(
        &["run", "spec.yaml"],
        &[
            ("LD_PRELOAD", &lib),
            ("RW_FAULT_CRASH_AT", r#""step":"shift-20","key":"gitops-commit""#),
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    let run = only_run_dir(g.w.path());
    let journal = journal_of(g.w.path());
    let sha = journal
        .split(r#""step":"shift-20","key":"gitops-commit","value":{"sha":""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    assert_eq!(g.subjects().len(), 2, "the commit was not pushed");
    let id = run.file_name().unwrap().to_string_lossy().into_owned();
    let out = g.w.rollwright(&["resume", &id], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shift20: Vec<String> = git(
        &g.bare,
        &["log", "--format=%H", "--grep=Rollwright-Step: shift-20", "main"],
    )
    .lines()
    .map(str::to_owned)
    .collect();
    assert_eq!(shift20, [sha], "the journaled commit, pushed as it was, once");
    assert_eq!(g.subjects().len(), 5);
    assert_eq!(g.vs_weights(), "0 100");
}

on_both_backends! {
fn flux_kustomization_follows_the_commits(backend) {
    let g = git_world_on(backend, "flux", "");
    let out = g.w.rollwright(&["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let head = g.head();
    let ks = g.w.kubectl(&[
        "get",
        "kustomization",
        "fraud",
        "-n",
        "flux-system",
        "-o",
        "jsonpath={.status.lastAppliedRevision}",
    ]);
    assert_eq!(ks, format!("main@sha1:{head}"));
    assert_eq!(g.vs_weights(), "0 100");
}
}

on_both_backends! {
fn a_crash_looping_canary_makes_the_application_degraded_and_is_reverted(backend) {
    let g = git_world_on(backend, "argocd", "pods:\n  - {image: \"fraud:8\", crash-loop: true}\n");
    let out = g.w.rollwright(&["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("Argo CD Application `fraud` is Degraded"), "{err}");
    assert!(err.contains("CrashLoopBackOff"), "{err}");
    assert_eq!(git(&g.bare, &["diff", &g.initial, "main"]), "");
    assert_eq!(g.w.deployments(), "deployment.apps/fraud-stable\n");
}
}

#[test]
fn aborting_a_killed_run_reverts_only_what_was_pushed() {
    let g = git_world("argocd", "");
    let lib = crate::fault_lib().display().to_string();
    let out = g.w.rollwright(
        &["run", "spec.yaml"],
        &[
            ("LD_PRELOAD", &lib),
            ("RW_FAULT_CRASH_AT", r#""step":"shift-50","key":"gitops-commit""#),
        ],
    );
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(
        g.subjects().len(),
        3,
        "apply and shift-20 pushed, shift-50 only committed locally"
    );
    let run = only_run_dir(g.w.path());
    let id = run.file_name().unwrap().to_string_lossy().into_owned();
    let out = g.w.rollwright(&["abort", &id], &[]);
    assert_eq!(out.status.code(), Some(3), "rolled back: {}", stderr(&out));
    let subjects = g.subjects();
    assert_eq!(subjects.len(), 4, "{subjects:#?}");
    assert!(subjects[3].contains("(2 commits: "), "{subjects:#?}");
    assert_eq!(git(&g.bare, &["diff", &g.initial, "main"]), "");
    assert_eq!(g.vs_weights(), "100 0");
    g.w.wait_split("fraud", &[("7", 100)]);
}

#[test]
fn a_direct_spec_on_an_argo_managed_target_is_refused_at_run_time() {
    let g = git_world("argocd", "");
    // The spec does not declare the target GitOps-managed; the live route
    // carries Argo CD's tracking label, so rollwright will not patch it.
    g.w.write("spec.yaml", ISTIO_SPEC);
    let out = g.w.rollwright(&["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("VirtualService ml/fraud is managed by Argo CD Application `fraud`"),
        "{err}"
    );
    assert!(err.contains("declare `target.gitops`"), "{err}");
    assert_eq!(g.vs_weights(), "100 0");
    assert_eq!(g.subjects().len(), 1, "nothing was committed");
    // When the controller is told to ignore the weights, the spec may say so.
    g.w.write(
        "spec.yaml",
        &ISTIO_SPEC.replace("with: {canary: ", "with: {allow-gitops-managed: true, canary: "),
    );
    let out = g.w.rollwright(&["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(g.vs_weights(), "0 100");
}

#[test]
fn rbac_for_a_gitops_target_grants_reads_only() {
    let g = git_world("argocd", "");
    let out = g.w.rollwright(&["rbac", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Reads only — but for the run lock, a Lease in the cluster.
    let rules = text
        .replace(
            "    resources: [leases]\n    resourceNames: [rollwright-run-lock]\n    verbs: [delete, get, update]",
            "",
        )
        .replace("    resources: [leases]\n    verbs: [create]", "");
    assert!(!rules.contains("patch") && !rules.contains("update"), "{text}");
    assert!(!rules.contains("delete") && !rules.contains("create"), "{text}");
    assert!(
        text.contains("  namespace: argocd\nrules:\n  - apiGroups: [\"argoproj.io\"]\n    resources: [applications]\n    resourceNames: [fraud]\n    verbs: [get]\n"),
        "{text}"
    );
    g.w.write("rbac.yaml", &text);
    let applied = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(g.w.path().join("kubeconfig"))
        .args(["apply", "--validate=false", "-f", "rbac.yaml"])
        .current_dir(g.w.path())
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
}

on_both_backends! {
fn a_sync_error_fails_the_step_with_argo_cds_message(backend) {
    let g = git_world_on(backend, "argocd", "");
    // The canary comes with a PodMonitor, a kind this cluster does not serve.
    g.w.write(
        "canary.yaml.hbs",
        &format!(
            "{CANARY_MANIFEST}---\napiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: {{name: fraud-canary}}\nspec: {{selector: {{matchLabels: {{app: fraud}}}}}}\n"
        ),
    );
    let out = g.w.rollwright(&["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("Argo CD Application `fraud` failed to sync"),
        "{err}"
    );
    assert!(
        err.contains("PodMonitor fraud-canary: the server could not find the requested resource"),
        "{err}"
    );
    assert_eq!(git(&g.bare, &["diff", &g.initial, "main"]), "", "reverted");
    assert_eq!(g.vs_weights(), "100 0");
}
}

on_both_backends! {
fn a_flux_health_check_failure_is_reverted(backend) {
    let g = git_world_on(backend, "flux", "pods:\n  - {image: \"fraud:8\", crash-loop: true}\n");
    let out = g.w.rollwright(&["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("Flux Kustomization `fraud` failed at"), "{err}");
    assert!(err.contains("HealthCheckFailed"), "{err}");
    assert!(err.contains("CrashLoopBackOff"), "{err}");
    assert_eq!(git(&g.bare, &["diff", &g.initial, "main"]), "");
    assert_eq!(
        g.w.deployments(),
        "deployment.apps/fraud-stable\n",
        "pruned by Flux after the revert"
    );
}
}

/// A smart-HTTP remote behind basic auth (`tests/git_http.py` in front of
/// `git http-backend`), serving the bare repository's directory.
fn https_remote(root: &Path, token: &str) -> (crate::ProcessGroup, u16) {
    use std::os::unix::process::CommandExt;
    let port = crate::free_port();
    let child = Command::new("python3")
        .arg(crate::root().join("tests/git_http.py"))
        .arg(port.to_string())
        .arg(root)
        .arg(token)
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = crate::ProcessGroup(child);
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200") {
                return (guard, port);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the git HTTP server did not start on 127.0.0.1:{port}");
}

#[test]
fn an_http_remote_gets_the_token_by_reference_and_never_shows_it() {
    let g = git_world("argocd", "");
    let root = g.bare.parent().unwrap().to_path_buf();
    let token = "gho-test-token-5f2d9c41";
    let (_server, port) = https_remote(&root, token);
    let spec = gitops_spec(ISTIO_SPEC, &g.bare, "argocd").replace(
        &format!("repo: \"{}\"", g.bare.display()),
        &format!(
            "repo: \"http://127.0.0.1:{port}/gitops.git\", credentials: {{token: {{env: DEPLOY_TOKEN}}}}"
        ),
    );
    assert!(spec.contains("credentials"), "{spec}");
    g.w.write("spec.yaml", &spec);
    // A wrong token: refused by the remote, named as such, nothing to revert.
    let out =
        g.w.rollwright(&["run", "spec.yaml"], &[("DEPLOY_TOKEN", "wrong-token-value")]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "failed before any change: {}",
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("the remote refused the credentials"), "{err}");
    assert!(err.contains("check `target.gitops.credentials`"), "{err}");
    assert!(!err.contains("wrong-token-value"), "{err}");
    assert_eq!(g.subjects().len(), 1);
    // The right one: promoted through the HTTP remote.
    std::fs::remove_dir_all(g.w.path().join(".rollwright/runs")).unwrap();
    let out = g.w.rollwright(&["run", "spec.yaml"], &[("DEPLOY_TOKEN", token)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(g.subjects().len(), 5);
    assert_eq!(g.vs_weights(), "0 100");
    let log = std::fs::read_to_string(root.join("auth.log")).unwrap();
    assert!(
        log.lines().filter(|l| *l == "ok").count() >= 8,
        "every request authenticated: {log}"
    );
    // The token is nowhere: output, journal, report, the clone's config.
    let run = only_run_dir(g.w.path());
    let mut seen = stderr(&out);
    for f in ["journal.jsonl", "report.md", "gitops/.git/config"] {
        seen.push_str(&std::fs::read_to_string(run.join(f)).unwrap_or_default());
    }
    assert!(!seen.contains(token), "the token leaked");
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
    assert!(!seen.contains(&basic), "the encoded header leaked");
}

#[test]
fn with_a_kustomization_new_files_are_listed_so_flux_builds_them() {
    let g = git_world("flux", "");
    // The platform team's path is a kustomization (as Flux repos usually are).
    std::fs::write(
        g.other.join("envs/prod/kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: ml\nresources:\n  - fraud.yaml\n",
    )
    .unwrap();
    git(&g.other, &["add", "-A"]);
    git(&g.other, &["commit", "--quiet", "-m", "platform: kustomize"]);
    git(&g.other, &["push", "--quiet", "origin", "HEAD:main"]);
    let out = g.w.rollwright(&["run", "spec.yaml"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let k = git(&g.bare, &["show", "main:envs/prod/kustomization.yaml"]);
    assert_eq!(
        k,
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: ml\nresources:\n  - fraud.yaml\n  - deployment-fraud-canary.yaml\n"
    );
    assert_eq!(g.vs_weights(), "0 100");
    g.w.wait_split("fraud", &[("8", 100)]);
}

#[test]
fn a_manual_sync_application_is_waited_for_until_someone_syncs_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let g = git_world("argocd", "");
    g.w.kubectl(&[
        "patch",
        "application",
        "fraud",
        "-n",
        "argocd",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"syncPolicy":{"automated":null}}}"#,
    ]);
    // An operator who syncs whenever the Application is OutOfSync, as
    // `argocd app sync` does (it writes `operation.sync`).
    let stop = Arc::new(AtomicBool::new(false));
    let syncs = Arc::new(AtomicU32::new(0));
    let kubeconfig = g.w.path().join("kubeconfig");
    let operator = {
        let (stop, syncs) = (stop.clone(), syncs.clone());
        std::thread::spawn(move || {
            let kubectl = |args: &[&str]| crate::k8s::kubectl_with(&kubeconfig, args);
            while !stop.load(Ordering::Relaxed) {
                let state = kubectl(&[
                    "get",
                    "application",
                    "fraud",
                    "-n",
                    "argocd",
                    "-o",
                    "jsonpath={.status.sync.status}/{.operation}",
                ]);
                if state == "OutOfSync/" {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    kubectl(&[
                        "patch",
                        "application",
                        "fraud",
                        "-n",
                        "argocd",
                        "--type",
                        "merge",
                        "-p",
                        r#"{"operation":{"sync":{"prune":true}}}"#,
                    ]);
                    syncs.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let out = g.w.rollwright(&["run", "spec.yaml"], &[]);
    stop.store(true, Ordering::Relaxed);
    operator.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("someone to sync Argo CD Application `fraud` (no automated sync policy)"),
        "{}",
        stderr(&out)
    );
    assert!(syncs.load(Ordering::Relaxed) >= 4, "one sync per commit at least");
    assert_eq!(g.vs_weights(), "0 100");
}
