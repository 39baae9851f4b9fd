//! The gate-bypass table: every way found (or imagined) to get an
//! unapproved or ungated version into production, each tried against the
//! binary on the embedded cluster and each asserting that *nothing changed*
//! in the cluster — the route still sends everything to stable, no canary
//! workload exists, nothing appeared where the run has no business.

use crate::k8s::{ISTIO_SPEC, World, istio_world, only_run_dir, vs_weights};
use crate::{stderr, stdout};

/// Nothing changed: all traffic on stable, no canary, nothing created
/// outside the run's namespace.
pub fn untouched(w: &World, case: &str) {
    assert_eq!(vs_weights(w), "100 0", "{case}: the route moved");
    assert_eq!(
        w.deployments(),
        "deployment.apps/fraud-stable\n",
        "{case}: a canary exists"
    );
    assert_eq!(
        w.kubectl(&["get", "secrets,configmaps", "-n", "kube-system", "-o", "name"]),
        "",
        "{case}: something appeared in kube-system"
    );
    assert_eq!(
        w.kubectl(&["get", "configmaps", "-n", "default", "-o", "name"]),
        "",
        "{case}: something appeared in default"
    );
    assert!(
        !w.kubectl(&["get", "namespaces", "-o", "name"])
            .contains("namespace/pwned"),
        "{case}: a namespace was created"
    );
}

/// Runs `rollwright ARGS` in the world and checks it was refused and
/// changed nothing; returns stderr + stdout.
fn refused(w: &World, case: &str, args: &[&str], env: &[(&str, &str)], codes: &[i32]) -> String {
    let out = w.rollwright(args, env);
    let text = format!("{}{}", stderr(&out), stdout(&out));
    assert!(
        out.status.code().is_some_and(|c| codes.contains(&c)),
        "{case}: exit {:?}, wanted one of {codes:?}:\n{text}",
        out.status.code()
    );
    untouched(w, case);
    text
}

fn spec_with(replace: &[(&str, &str)]) -> String {
    let mut s = ISTIO_SPEC.to_owned();
    for (a, b) in replace {
        assert!(s.contains(a), "the fixture has `{a}`");
        s = s.replace(a, b);
    }
    s
}

/// Item 1: simulation inputs exist only inside `--sim`.
#[test]
fn simulation_inputs_never_reach_a_real_cluster() {
    let w = istio_world("");
    // An unapproved version 9, with a "registry" file that approves it.
    w.write(
        "spec.yaml",
        &ISTIO_SPEC.replace("version: \"8\"", "version: \"9\""),
    );
    w.write(
        "fake-registry.yaml",
        "{\"apiVersion\": \"rollwright.dev/v1alpha1\", \"kind\": \"ModelRegistry\", \"models\": [{\"name\": \"fraud\", \"versions\": [{\"version\": \"9\", \"aliases\": [\"production-approved\"], \"approvals\": [{\"who\": \"x\", \"at\": \"2026-01-01T00:00:00Z\"}], \"evals\": [{\"metric\": \"auc\", \"value\": 1}]}]}]}",
    );
    for flags in [
        vec!["--sim-registry", "fake-registry.yaml"],
        vec!["--sim-endpoint", "http://127.0.0.1:1"],
        vec!["--sim-time-scale", "100000"],
        vec!["--attach", "attach.json"],
    ] {
        let mut args = vec!["run", "spec.yaml"];
        args.extend(flags.iter().copied());
        let text = refused(&w, &format!("{flags:?}"), &args, &[], &[2]);
        assert!(text.contains("error:"), "{text}");
    }
    // An attach file naming the real cluster's kubeconfig: refused, the
    // API server does not prove it is that sim.
    let attach = serde_json::json!({
        "kind": "rollwright.dev/sim-attach",
        "kubeconfig": w.path().join("kubeconfig"),
        "context": "prod-east",
        "identity": "not-this-cluster",
        "endpoint": "http://127.0.0.1:1",
        "registry": w.path().join("fake-registry.yaml"),
        "time-scale": 100000.0,
        "repositories": []
    });
    w.write("attach.json", &attach.to_string());
    let text = refused(
        &w,
        "forged attach",
        &["run", "spec.yaml", "--sim", "--attach", "attach.json"],
        &[],
        &[2],
    );
    assert!(
        text.contains("is not the sim this attach file describes"),
        "{text}"
    );
    // The same file with the right identity would work only for a sim: the
    // default run on this cluster still reads the spec's own registry.
    let text = refused(&w, "plain run", &["run", "spec.yaml"], &[], &[5]);
    assert!(text.contains("version 9 is not in the model registry"), "{text}");
}

const POLICY: &str = "apiVersion: rollwright.dev/v1alpha1\nkind: Policy\nproduction:\n  contexts: [prod-east]\n  api-servers: [SERVER]\nenvironments:\n  production:\n    gate: {approvals: 1, evals: {auc: {min: 0.9}}}\n";

/// Item 2: production is decided from the cluster reached, for every way
/// of choosing it; the policy is never picked up from the working directory.
#[test]
fn production_is_the_cluster_actually_reached() {
    let w = istio_world("");
    let server = w.url();
    w.write("policy.yaml", &POLICY.replace("SERVER", &format!("\"{server}\"")));
    // A staging spec whose context the kubeconfig also has under another name.
    let staging = spec_with(&[
        ("environment: production", "environment: staging"),
        ("context: prod-east", "context: staging-east"),
        (
            "{approvals: 1, alias: production-approved, evals: {auc: {min: 0.9}}}",
            "{approvals: 0}",
        ),
    ]);
    w.write("staging.yaml", &staging);
    w.write("staging.kubeconfig", &w.kubeconfig_for("staging-east"));
    let policy = w.path().join("policy.yaml").display().to_string();
    // `--context prod-east`: the policy makes it production: refused.
    let text = refused(
        &w,
        "--context prod-east on staging",
        &[
            "run",
            "staging.yaml",
            "--policy",
            &policy,
            "--context",
            "prod-east",
        ],
        &[],
        &[1],
    );
    assert!(text.contains("RW055") || text.contains("is production"), "{text}");
    // `--kubeconfig FILE` whose context points at the production API server.
    let text = refused(
        &w,
        "--kubeconfig to the production server",
        &[
            "run",
            "staging.yaml",
            "--policy",
            &policy,
            "--kubeconfig",
            "staging.kubeconfig",
        ],
        &[],
        &[1],
    );
    assert!(
        text.contains(&format!("production API server {server}")),
        "{text}"
    );
    // A policy in the working directory is not read: a repository cannot
    // bring a weaker one. (Here it would make prod-east non-production.)
    std::fs::create_dir_all(w.path().join(".rollwright")).unwrap();
    w.write(
        ".rollwright/policy.yaml",
        "apiVersion: rollwright.dev/v1alpha1\nkind: Policy\nenvironments:\n  production:\n    gate: {approvals: 0}\n",
    );
    w.write(
        "weak.yaml",
        &spec_with(&[(
            "{approvals: 1, alias: production-approved, evals: {auc: {min: 0.9}}}",
            "{approvals: 0}",
        )]),
    );
    let text = refused(
        &w,
        "policy from the working directory",
        &["run", "weak.yaml"],
        &[],
        &[1],
    );
    assert!(text.contains("is not read implicitly"), "{text}");
    assert!(
        text.contains("RW058"),
        "the default production gate applies: {text}"
    );
}

/// Item 3: nothing in the run directory is trusted on resume.
#[test]
fn resume_trusts_nothing_a_user_can_edit_in_the_run_directory() {
    let w = istio_world("");
    // Version 9 is not approved; the run is killed right after its gate
    // was refused... no: killed before anything, then the run directory is
    // stuffed with everything older versions read back.
    w.write(
        "spec.yaml",
        &ISTIO_SPEC.replace("version: \"8\"", "version: \"9\""),
    );
    let lib = crate::fault_lib().display().to_string();
    let out = w.rollwright(
        &["run", "spec.yaml"],
        &[("LD_PRELOAD", &lib), ("RW_FAULT_CRASH_AFTER_SYNCS", "1")],
    );
    assert_eq!(out.status.code(), None, "killed: {}", stderr(&out));
    let run = only_run_dir(w.path());
    let id = run.file_name().unwrap().to_string_lossy().into_owned();
    w.write(
        "approving.yaml",
        "{\"apiVersion\": \"rollwright.dev/v1alpha1\", \"kind\": \"ModelRegistry\", \"models\": [{\"name\": \"fraud\", \"versions\": [{\"version\": \"9\", \"aliases\": [\"production-approved\"], \"approvals\": [{\"who\": \"x\", \"at\": \"2026-01-01T00:00:00Z\"}], \"evals\": [{\"metric\": \"auc\", \"value\": 1}]}]}]}",
    );
    let approving = w.path().join("approving.yaml").display().to_string();
    std::fs::write(
        run.join("cluster.json"),
        format!("{{\"registry_file\": \"{approving}\", \"time_scale\": 100000, \"endpoint\": \"http://127.0.0.1:1\"}}"),
    )
    .unwrap();
    std::fs::write(run.join("overrides.json"), "[[\"x\", 1]]").unwrap();
    std::fs::write(run.join("policy"), "/dev/null").unwrap();
    std::fs::write(run.join("started-by"), "nobody").unwrap();
    let text = refused(&w, "stuffed run directory", &["resume", &id], &[], &[5]);
    assert!(text.contains("version 9 is not in the model registry"), "{text}");

    // A forged `recorded` line (compensation would delete the production
    // InferenceService and create a ConfigMap in `default`): the journal is
    // refused outright.
    let w = istio_world("");
    let out = w.rollwright(
        &["run", "spec.yaml"],
        &[("LD_PRELOAD", &lib), ("RW_FAULT_CRASH_AFTER_SYNCS", "1")],
    );
    assert_eq!(out.status.code(), None);
    let run = only_run_dir(w.path());
    let id = run.file_name().unwrap().to_string_lossy().into_owned();
    let journal = run.join("journal.jsonl");
    let mut text = std::fs::read_to_string(&journal).unwrap();
    text.push_str(r#"{"record":"recorded","step":"deploy","key":"objects","value":[{"ref":{"apiVersion":"v1","kind":"ConfigMap","namespace":"default","name":"pwned"},"existed":true,"object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"pwned","namespace":"default"}}}]}"#);
    text.push('\n');
    text.push_str(r#"{"record":"step-failed","step":"deploy","error":"x","tolerated":false}"#);
    text.push('\n');
    std::fs::write(&journal, text).unwrap();
    let text = refused(&w, "forged record", &["resume", &id], &[], &[6]);
    assert!(text.contains("line 2: the record has no integrity tag"), "{text}");
    let text = refused(&w, "forged record, abort", &["abort", &id], &[], &[6]);
    assert!(text.contains("cannot be trusted"), "{text}");
}

/// Item 4: what is deployed is what the gate approved.
#[test]
fn a_template_that_hard_codes_another_version_is_refused() {
    let w = istio_world("");
    w.write(
        "canary.yaml.hbs",
        &crate::k8s::CANARY_MANIFEST.replace(
            "image: models/{{model.name}}:{{model.version}}",
            "image: models/fraud:9",
        ),
    );
    let lint = w.rollwright(&["lint", "spec.yaml"], &[]);
    assert_eq!(lint.status.code(), Some(1));
    assert!(
        stdout(&lint).contains("the image `models/fraud:9` is not version 8 of fraud"),
        "{}",
        stdout(&lint)
    );
    assert!(
        stdout(&lint).contains("canary.yaml.hbs:17:18"),
        "located: {}",
        stdout(&lint)
    );
    refused(&w, "hard-coded version", &["run", "spec.yaml"], &[], &[1]);
}

/// Item 4, at run time: the registry's artifact URI is bound to the
/// rendered storage URI (a template pinned to version 8's path but another
/// artifact).
#[test]
fn the_registry_artifact_is_bound_to_the_rendered_manifest() {
    let w = World::new(crate::k8s::KSERVE_WORLD);
    w.write(
        "isvc.yaml.hbs",
        &crate::k8s::ISVC_MANIFEST.replace(
            "models:/{{model.name}}/{{model.version}}",
            "s3://elsewhere/fraud/{{model.version}}",
        ),
    );
    w.write("spec.yaml", &crate::k8s::kserve_spec());
    w.wait_split("fraud", &[("7", 100)]);
    let out = w.rollwright(&["run", "spec.yaml"], &[]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "refused before any change: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out)
            .contains("is not the artifact the gate approved for fraud version 8 (`models:/fraud/8`)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.isvc_storage_uri(), "models:/fraud/7");
}

/// Item 5: values are data, never structure; no cluster-scoped kinds, nothing
/// outside the target namespace.
#[test]
fn template_values_cannot_add_objects_or_leave_the_namespace() {
    let w = istio_world("");
    let spec = spec_with(&[(
        "with: {template: canary.yaml.hbs}",
        "with: {template: canary.yaml.hbs, min-replicas: 2}",
    )])
    .replace(
        "model: {registry: file, name: fraud, version: \"8\"}",
        "model: {registry: file, name: fraud, version: \"8\"}\nuses_param: x",
    )
    .replace("uses_param: x\n", "");
    w.write("spec.yaml", &spec);
    // The model name reaches the manifest: make it carry a document.
    w.write(
        "canary.yaml.hbs",
        &crate::k8s::CANARY_MANIFEST.replace(
            "  name: {{model.name}}-canary",
            "  name: {{model.name}}-canary\n  annotations: {note: \"{{metadata.description}}\"}",
        ),
    );
    let injected = spec.replace(
        "metadata: {name: fraud}",
        "metadata:\n  name: fraud\n  description: \"x\\\"}\\n---\\napiVersion: v1\\nkind: Secret\\nmetadata: {name: s, namespace: kube-system}\\ndata: {x: eA==}\\n#\"",
    );
    w.write("spec.yaml", &injected);
    let text = refused(&w, "injected document", &["run", "spec.yaml"], &[], &[1]);
    assert!(text.contains("changes the manifest's structure"), "{text}");
    let plan = w.rollwright(&["plan", "spec.yaml"], &[]);
    assert_eq!(plan.status.code(), Some(1), "plan refuses it too");
    assert!(
        !stdout(&plan).contains("kind: Secret"),
        "the injected object is never shown as planned"
    );
    // A Namespace and an object in another namespace, written in the template.
    w.write("spec.yaml", ISTIO_SPEC);
    w.write(
        "canary.yaml.hbs",
        &format!(
            "{}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: pwned}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x, namespace: default}}\n",
            crate::k8s::CANARY_MANIFEST
        ),
    );
    let text = refused(
        &w,
        "cluster-scoped and foreign objects",
        &["run", "spec.yaml"],
        &[],
        &[1],
    );
    assert!(text.contains("Namespace pwned is cluster-scoped"), "{text}");
    assert!(
        text.contains("is in namespace `default`, not the target's `ml`"),
        "{text}"
    );
}

/// Item 6: probes go only to the serving endpoint.
#[test]
fn a_probe_cannot_be_turned_into_a_request_elsewhere() {
    let w = istio_world("");
    for path in [
        "@127.0.0.1:1/api/v1/namespaces/default/configmaps",
        "/../../api/v1/namespaces/default/configmaps",
        "//evil.example.com/x",
        "/%2e%2e/api",
        "http://127.0.0.1:1/api",
    ] {
        let spec = spec_with(&[("serving: {platform: deployment, traffic: istio}", "serving: {platform: deployment, traffic: istio, endpoint: \"http://127.0.0.1:9\"}")])
            .replace(
                "  - id: gate\n",
                &format!("  - id: peek\n    type: verify-inference\n    with: {{protocol: http, path: \"{path}\", request: {{kind: ConfigMap}}}}\n  - id: gate\n    needs: [peek]\n"),
            );
        w.write("spec.yaml", &spec);
        let text = refused(&w, path, &["run", "spec.yaml"], &[], &[1]);
        assert!(
            text.contains("probes only call `serving.endpoint`")
                || text.contains("does not match the pattern `^/`"),
            "{path}: {text}"
        );
    }
}

/// Item 7: a production gate must require something.
#[test]
fn a_production_gate_that_requires_nothing_is_refused() {
    let w = istio_world("");
    w.write(
        "spec.yaml",
        &spec_with(&[(
            "{approvals: 1, alias: production-approved, evals: {auc: {min: 0.9}}}",
            "{approvals: 0}",
        )]),
    );
    let text = refused(&w, "approvals: 0", &["run", "spec.yaml"], &[], &[1]);
    assert!(text.contains("requires no approval and no alias"), "{text}");
    assert!(text.contains("checks no eval"), "{text}");
}

/// Items 9 and the rest of the table: concurrent runs on one target, and
/// the shapes that held already (kept, so they keep holding).
#[test]
fn structural_bypasses_are_refused_before_anything_runs() {
    let w = istio_world("");
    let gate = "  - id: gate\n    type: gate-check\n    with: {approvals: 1, alias: production-approved, evals: {auc: {min: 0.9}}}\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "side branch around the gate",
            ISTIO_SPEC.replace(
                "  - id: deploy\n    type: apply\n    needs: [gate]\n",
                "  - id: deploy\n    type: apply\n",
            ),
            "RW050",
        ),
        (
            "continue-on-failure gate",
            ISTIO_SPEC.replace(gate, &format!("{gate}    continue-on-failure: true\n")),
            "RW054",
        ),
        (
            "a gate only on the failure path",
            ISTIO_SPEC.replace(gate, "").replace("    needs: [gate]\n", "")
                + "on-failure:\n  - {id: late-gate, type: gate-check, with: {approvals: 1, evals: {auc: {min: 0.9}}}}\n",
            "RW050",
        ),
        (
            "exec before the gate",
            ISTIO_SPEC.replace(
                gate,
                &format!(
                    "  - {{id: sneak, type: exec, with: {{command: [kubectl, apply, -f, x.yaml]}}}}\n{}",
                    gate.replace("type: gate-check\n", "type: gate-check\n    needs: [sneak]\n")
                ),
            ),
            "RW050",
        ),
    ];
    for (case, spec, code) in cases {
        w.write("spec.yaml", &spec);
        let text = refused(&w, case, &["run", "spec.yaml"], &[], &[1]);
        assert!(text.contains(code), "{case}: {text}");
    }
}

/// `customize` removing the gate of a shipped strategy.
#[test]
fn customize_cannot_remove_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    let root = crate::root();
    for d in ["strategies", "manifests"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
        for e in std::fs::read_dir(root.join("specs").join(d)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join(d).join(e.file_name())).unwrap();
        }
    }
    std::fs::create_dir(dir.path().join("rollouts")).unwrap();
    let spec = std::fs::read_to_string(root.join("specs/examples/kserve-canary.yaml"))
        .unwrap()
        .replace(
            "customize:\n  with:\n    gate:",
            "customize:\n  remove: [gate]\n  with:\n    deploy-x:",
        );
    std::fs::write(dir.path().join("rollouts/spec.yaml"), spec).unwrap();
    let out = crate::rollwright_in(dir.path(), &["lint", "rollouts/spec.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("RW050") || text.contains("RW083"), "{text}");
}

/// Item 8: approvals are who the cluster says, signed; a file written by
/// hand does not count, nor does the starter.
#[test]
fn approvals_are_authenticated_by_the_cluster() {
    let w = istio_world("");
    let spec = ISTIO_SPEC.replace(
        "  - id: promote\n    type: shift-traffic\n    needs: [shift-50]",
        "  - {id: sign-off, type: approval, needs: [shift-50], with: {approvers: 1, expires: 1m}}\n  - id: promote\n    type: shift-traffic\n    needs: [sign-off]",
    );
    w.write("spec.yaml", &spec);
    w.write(
        "alice.kubeconfig",
        &w.sim().kubeconfig_for_user("prod-east", "alice"),
    );
    let child = w.spawn(&["run", "spec.yaml"]);
    let run = crate::wait_for_journal(w.path(), r#""step":"sign-off","key":"opened-ms""#);
    // A claimed identity on a cluster run: refused.
    let claimed = w.rollwright(&["approve", &run, "sign-off", "--as", "bob"], &[]);
    assert_eq!(claimed.status.code(), Some(2), "{}", stderr(&claimed));
    assert!(
        stderr(&claimed).contains("to the cluster, not `bob`"),
        "{}",
        stderr(&claimed)
    );
    // The starter (sim-admin, through the run's own credentials): refused.
    let own = w.rollwright(&["approve", &run, "sign-off"], &[]);
    assert!(
        stderr(&own).contains("started this run and cannot approve it"),
        "{}",
        stderr(&own)
    );
    // A forged approval file: does not count.
    let d = w
        .path()
        .join(".rollwright/runs")
        .join(&run)
        .join("approvals/sign-off");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("mallory.json"),
        r#"{"who":"mallory","at_ms":1,"trust":"cluster","server":"x","sig":"00"}"#,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(vs_weights(&w), "50 50", "a forged approval does not count");
    // Alice, authenticated by the API server with her own credentials.
    let ok = w.rollwright(
        &["approve", &run, "sign-off", "--kubeconfig", "alice.kubeconfig"],
        &[],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("recorded: alice approves"),
        "{}",
        stdout(&ok)
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(vs_weights(&w), "0 100");
}

/// Item 9: one run per target, whatever the state directory or the machine:
/// the cluster's Lease decides.
#[test]
fn concurrent_runs_on_one_target_take_turns() {
    let w = istio_world("");
    w.write(
        "spec.yaml",
        &ISTIO_SPEC.replace(
            "  - id: promote\n    type: shift-traffic\n    needs: [shift-50]",
            "  - {id: sign-off, type: approval, needs: [shift-50], with: {approvers: 1, expires: 20s}}\n  - id: promote\n    type: shift-traffic\n    needs: [sign-off]",
        ),
    );
    let bin = assert_cmd::cargo::cargo_bin("rollwright");
    let first = std::process::Command::new(&bin)
        .current_dir(w.path())
        .env("KUBECONFIG", w.path().join("kubeconfig"))
        .args(["run", "spec.yaml", "--state-dir", "a"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = crate::ProcessGroup(first);
    for _ in 0..200 {
        if vs_weights(&w) == "50 50" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(vs_weights(&w), "50 50");
    for state in ["b", "c"] {
        let out = w.rollwright(&["run", "spec.yaml", "--state-dir", state], &[]);
        assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("locked in the cluster by another run"),
            "{}",
            stderr(&out)
        );
        assert_eq!(vs_weights(&w), "50 50", "the second run changed nothing");
    }
    let lease = w.kubectl(&[
        "get",
        "lease",
        "rollwright-run-lock",
        "-n",
        "ml",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert!(lease.starts_with("fraud-"), "{lease}");
    drop(guard);
}

/// A simulated kube-apiserver proves itself by its certificate's name. An
/// attach file cannot pass a control plane off as the sim with a forged
/// identity, a certificate of its own making (TLS then fails), or a
/// kubeconfig that skips TLS verification; nothing changes in the cluster.
#[test]
fn a_forged_attach_cannot_pass_a_control_plane_off_as_the_sim() {
    use base64::Engine as _;
    let w = crate::k8s::istio_world_on(crate::k8s::Backend::KubeApiserver, "");
    w.write(
        "spec.yaml",
        &ISTIO_SPEC.replace("version: \"8\"", "version: \"9\""),
    );
    w.write(
        "fake-registry.yaml",
        "{\"apiVersion\": \"rollwright.dev/v1alpha1\", \"kind\": \"ModelRegistry\", \"models\": [{\"name\": \"fraud\", \"versions\": [{\"version\": \"9\", \"aliases\": [\"production-approved\"], \"approvals\": [{\"who\": \"x\", \"at\": \"2026-01-01T00:00:00Z\"}], \"evals\": [{\"metric\": \"auc\", \"value\": 1}]}]}]}",
    );
    let kubeconfig = std::fs::read_to_string(w.path().join("kubeconfig")).unwrap();
    let ca_data = kubeconfig
        .split("certificate-authority-data: \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    // A certificate named as a sim's, made by the attacker.
    let status = std::process::Command::new("openssl")
        .current_dir(w.path())
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "forged.key",
            "-out",
            "forged.crt",
            "-days",
            "1",
            "-subj",
            "/CN=rollwright simulated control plane forged-identity",
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "openssl made a certificate");
    let forged =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(w.path().join("forged.crt")).unwrap());
    let cases = [
        (
            "the control plane's own kubeconfig, another identity",
            kubeconfig.clone(),
            "not-this-cluster",
            "is not the sim this attach file describes (its certificate is not that sim's)",
        ),
        (
            "a certificate named as the sim's, not the server's",
            kubeconfig.replace(&ca_data, &forged),
            "forged-identity",
            // TLS fails before anything is asked.
            "is not a rollwright sim (GET /sim/identity",
        ),
        (
            "TLS verification skipped",
            kubeconfig.replace(
                &format!("certificate-authority-data: \"{ca_data}\""),
                "insecure-skip-tls-verify: true",
            ),
            "forged-identity",
            "is not the sim this attach file describes (its kubeconfig skips TLS verification)",
        ),
    ];
    for (case, kc, identity, why) in cases {
        w.write("attack.kubeconfig", &kc);
        let attach = serde_json::json!({
            "kind": "rollwright.dev/sim-attach",
            "kubeconfig": w.path().join("attack.kubeconfig"),
            "context": "prod-east",
            "identity": identity,
            "endpoint": "http://127.0.0.1:1",
            "registry": w.path().join("fake-registry.yaml"),
            "time-scale": 100000.0,
            "repositories": []
        });
        w.write("attach.json", &attach.to_string());
        let out = w.rollwright(&["run", "spec.yaml", "--sim", "--attach", "attach.json"], &[]);
        let text = format!("{}{}", stderr(&out), stdout(&out));
        assert_eq!(out.status.code(), Some(2), "{case}:\n{text}");
        assert!(text.contains(why), "{case}: wanted `{why}`:\n{text}");
        assert_eq!(vs_weights(&w), "100 0", "{case}: the route moved");
        assert_eq!(
            w.deployments(),
            "deployment.apps/fraud-stable\n",
            "{case}: a canary exists"
        );
    }
}
