//! rollwright against a real Kubernetes control plane: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok, built from Go modules by
//! `scripts/setup-kube` (`scripts/test` sets `ROLLWRIGHT_KUBE_BIN`).
//!
//! One control plane serves every test of this binary (each test works in
//! namespaces of its own); it is stopped when the test process ends.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use rollwright_sim::control_plane::ControlPlane;

use crate::stderr;

pub fn kube_bin() -> PathBuf {
    PathBuf::from(std::env::var_os("ROLLWRIGHT_KUBE_BIN").expect(
        "ROLLWRIGHT_KUBE_BIN is not set: run the suite with scripts/test, which builds the control plane (scripts/setup-kube)",
    ))
}

/// The control plane this test binary shares.
pub fn control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| ControlPlane::start(&kube_bin()).unwrap_or_else(|e| panic!("{e}")))
}

/// A namespace of one test on the shared control plane, with a working
/// directory holding the admin kubeconfig (context `prod-east`).
pub struct KubeWorld {
    pub ns: String,
    dir: tempfile::TempDir,
}

impl KubeWorld {
    pub fn new(prefix: &str) -> KubeWorld {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let ns = format!(
            "{prefix}-{}",
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let cp = control_plane();
        let dir = tempfile::tempdir().unwrap();
        cp.write_kubeconfig_for(&dir.path().join("admin.kubeconfig"), "prod-east")
            .unwrap();
        cp.kubectl(&["create", "namespace", &ns], None).unwrap();
        KubeWorld { ns, dir }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path().join(name), text).unwrap();
    }

    /// kubectl as admin in the test's namespace; panics on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.try_kubectl(args, None)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    pub fn try_kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        control_plane().kubectl(&all, stdin)
    }

    /// `rollwright ARGS…` in the test's directory with `kubeconfig`.
    pub fn rollwright(&self, kubeconfig: &str, args: &[&str]) -> Output {
        Command::new(assert_cmd::cargo::cargo_bin("rollwright"))
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .env("KUBECONFIG", self.path().join(kubeconfig))
            .args(args)
            .output()
            .unwrap()
    }
}

/// The Istio world of the embedded-cluster tests (stable Deployment,
/// Service, DestinationRule, VirtualService at 100/0) in namespace `ns`.
fn istio_world_objects(ns: &str) -> String {
    let scenario = rollwright_sim::Scenario::from_yaml(crate::k8s::ISTIO_WORLD, "istio world").unwrap();
    let mut items = Vec::new();
    for o in &scenario.objects {
        if o["kind"] == "Namespace" {
            continue;
        }
        let mut o = o.clone();
        o["metadata"]["namespace"] = ns.into();
        items.push(o);
    }
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// The Istio canary spec of the embedded-cluster tests, in namespace `ns`.
fn istio_spec(ns: &str) -> String {
    crate::k8s::ISTIO_SPEC.replace("namespace: ml", &format!("namespace: {ns}"))
}

/// A world with the stable version serving, ready for the Istio canary.
fn istio_world(prefix: &str) -> KubeWorld {
    let w = KubeWorld::new(prefix);
    w.try_kubectl(
        &["apply", "--server-side", "-f", "-"],
        Some(&istio_world_objects(&w.ns)),
    )
    .unwrap();
    w.kubectl(&["rollout", "status", "deployment/fraud-stable", "--timeout=60s"]);
    w.write("canary.yaml.hbs", crate::k8s::CANARY_MANIFEST);
    w.write("registry.yaml", crate::k8s::REGISTRY);
    w.write("spec.yaml", &istio_spec(&w.ns));
    w
}

/// A kubeconfig for ServiceAccount `sa` of the world's namespace (a token
/// from the TokenRequest API), context `prod-east`.
fn service_account_kubeconfig(w: &KubeWorld, sa: &str, file: &str) {
    let token = w.kubectl(&["create", "token", sa, "--duration=1h"]);
    let cp = control_plane();
    let ca = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, cp.ca_pem());
    w.write(
        file,
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{}\", certificate-authority-data: \"{ca}\"}}\nusers:\n- name: u\n  user: {{token: \"{}\"}}\ncontexts:\n- name: prod-east\n  context: {{cluster: c, user: u, namespace: {}}}\ncurrent-context: prod-east\n",
            cp.url(),
            token.trim(),
            w.ns
        ),
    );
}

/// The Role `rollwright rbac` prints for the world's spec, with the
/// ServiceAccount `deployer` bound to it.
fn rbac_role(w: &KubeWorld) -> String {
    let out = w.rollwright(
        "admin.kubeconfig",
        &["rbac", "spec.yaml", "--service-account", "deployer"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Role's rules: the text of each `  - apiGroups:` item.
fn rules(yaml: &str) -> Vec<String> {
    let role = yaml.split("\n---").next().unwrap();
    role.split("\n  - apiGroups:")
        .skip(1)
        .map(|r| format!("\n  - apiGroups:{r}"))
        .collect()
}

fn vs_weights(w: &KubeWorld) -> String {
    w.kubectl(&[
        "get",
        "virtualservice",
        "fraud",
        "-o",
        "jsonpath={.spec.http[0].route[*].weight}",
    ])
}

/// The Role `rollwright rbac` derives is enough, on a real API server with
/// RBAC: a run as a ServiceAccount bound to exactly that Role promotes the
/// canary to 100 %.
#[test]
fn a_run_succeeds_with_exactly_the_role_rbac_prints() {
    let w = istio_world("rbac-ok");
    let rbac = rbac_role(&w);
    w.kubectl(&["create", "serviceaccount", "deployer"]);
    w.try_kubectl(&["apply", "-f", "-"], Some(&rbac)).unwrap();
    service_account_kubeconfig(&w, "deployer", "deployer.kubeconfig");
    let out = w.rollwright("deployer.kubeconfig", &["run", "spec.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}\n---\n{rbac}", stderr(&out));
    assert_eq!(vs_weights(&w), "0 100");
    // The canary's pods were made by the real controllers and Ready through kwok.
    w.kubectl(&["rollout", "status", "deployment/fraud-canary", "--timeout=30s"]);
}

/// Every rule is needed: with any one removed the run fails, and says which
/// permission is missing and how to get the Role it needs.
#[test]
fn a_run_fails_without_any_one_rule_of_the_role() {
    let probe = istio_world("rbac-probe");
    let full = rbac_role(&probe);
    let n = rules(&full).len();
    assert!(n >= 5, "{full}");
    let handles: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let w = istio_world(&format!("rbac-no{i}"));
                let full = rbac_role(&w);
                let rule = rules(&full)[i].clone();
                let reduced = full.replacen(&rule, "", 1);
                w.kubectl(&["create", "serviceaccount", "deployer"]);
                w.try_kubectl(&["apply", "-f", "-"], Some(&reduced)).unwrap();
                service_account_kubeconfig(&w, "deployer", "deployer.kubeconfig");
                let out = w.rollwright("deployer.kubeconfig", &["run", "spec.yaml"]);
                (rule, out)
            })
        })
        .collect();
    for h in handles {
        let (rule, out) = h.join().unwrap();
        let err = stderr(&out);
        // Refused before any change (5), or failed and rolled back (3) or
        // not (4: the same permission is missing to undo): never a usage
        // error, never a success.
        assert!(
            matches!(out.status.code(), Some(3..=5)),
            "without{rule}\nexit {:?}: {err}",
            out.status.code()
        );
        assert!(
            err.contains("forbidden") && err.contains("rollwright rbac"),
            "without{rule}\nthe failure does not name the missing permission and point to `rollwright rbac`:\n{err}"
        );
        eprintln!(
            "without{rule}\n  -> exit {:?}: {}",
            out.status.code(),
            err.lines().find(|l| l.contains("forbidden")).unwrap_or_default()
        );
    }
}

/// `rollwright sim --control-plane kube-apiserver` stops everything it
/// started on SIGTERM and on SIGINT, and nothing outlives it when it is
/// killed with SIGKILL.
#[test]
fn the_control_plane_leaves_no_process_behind() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGKILL] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("rollwright"))
            .current_dir(dir.path())
            .args(["sim", "--control-plane", "kube-apiserver", "--kube-bin"])
            .arg(kube_bin())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut pids = Vec::new();
        {
            use std::io::BufRead;
            let out = std::io::BufReader::new(child.stdout.take().unwrap());
            for line in out.lines() {
                let line = line.unwrap();
                if let Some((_, pid)) = line.split_once(" pid ") {
                    pids.push(pid.trim().parse::<i32>().unwrap());
                }
                if line.starts_with("Ctrl-C") {
                    break;
                }
            }
        }
        assert_eq!(
            pids.len(),
            5,
            "etcd, apiserver, controller-manager, scheduler, kwok"
        );
        let alive = |p: i32| unsafe { libc::kill(p, 0) } == 0;
        assert!(pids.iter().all(|p| alive(*p)));
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let status = child.wait().unwrap();
        if signal != libc::SIGKILL {
            assert!(status.success(), "{status:?}");
        }
        // Reaped by their parent (init, or this process's subreaper) once dead.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while pids.iter().any(|p| alive(*p) && !is_zombie(*p)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let left: Vec<_> = pids.iter().filter(|p| alive(**p) && !is_zombie(**p)).collect();
        assert!(left.is_empty(), "signal {signal}: still running: {left:?}");
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(true)
}

/// The same kubectl session against the embedded cluster and kube-apiserver
/// prints the same (after normalising what differs by nature: ages, the
/// hashes in generated names). Every future difference of the embedded API
/// shows up here as a failing line.
#[test]
fn kubectl_prints_the_same_on_both_backends() {
    let embedded = crate::k8s::World::new("time-scale: 20\nstartup: 2s\n");
    let embedded_out = kubectl_session(&embedded.path().join("kubeconfig"));
    let w = KubeWorld::new("conformance");
    let real_out = kubectl_session(&w.path().join("admin.kubeconfig"));
    eprintln!("{real_out}");
    // Not vacuous: the session did what it says on both.
    for want in [
        "deployment.apps/web serverside-applied",
        "deployment \"web\" successfully rolled out",
        "NAME READY UP-TO-DATE AVAILABLE AGE\nweb 3/3 3 3 <age>",
        "NAME READY STATUS RESTARTS AGE\nweb-<hash>-<pod> 1/1 Running 0 <age>",
        "3 3\n",
    ] {
        assert!(real_out.contains(want), "{want}\n{real_out}");
    }
    let (a, b): (Vec<&str>, Vec<&str>) = (embedded_out.lines().collect(), real_out.lines().collect());
    let mut diff = Vec::new();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or("<none>"),
            b.get(i).copied().unwrap_or("<none>"),
        );
        if x != y {
            diff.push(format!("  embedded:       {x}\n  kube-apiserver: {y}"));
        }
    }
    assert!(
        diff.is_empty(),
        "the embedded API differs from kube-apiserver:\n{}\n--- embedded\n{embedded_out}\n--- kube-apiserver\n{real_out}",
        diff.join("\n")
    );
}

const CONFORMANCE_OBJECTS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: conf}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: conf, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: server, image: models/web:1}]}
";

const CONFORMANCE_VS: &str = "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: web, namespace: conf}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: web, subset: stable}, weight: 100}]}]
";

const ROLLOUT_STATUS: &[&str] = &[
    "rollout",
    "status",
    "deployment/web",
    "-n",
    "conf",
    "--timeout=60s",
];

/// A kubectl session a new user would type; each command's stdout and
/// stderr, normalised.
fn kubectl_session(kubeconfig: &std::path::Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("objects.yaml"), CONFORMANCE_OBJECTS).unwrap();
    std::fs::write(dir.path().join("vs.yaml"), CONFORMANCE_VS).unwrap();
    std::fs::write(
        dir.path().join("bad-service.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: conf}\nspec: {selector: {app: web}}\n",
    )
    .unwrap();
    let run = |args: &[&str]| -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        format!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // `rollout status` prints progress lines that depend on timing: the verdict only.
    let settled = |args: &[&str]| -> String {
        let text = run(args);
        let mut lines = text.lines();
        let cmd = lines.next().unwrap_or_default().to_owned();
        format!("{cmd}\n{}\n", lines.last().unwrap_or_default())
    };
    let mut s = String::new();
    s += &run(&["apply", "--server-side", "--validate=false", "-f", "objects.yaml"]);
    s += &settled(ROLLOUT_STATUS);
    s += &run(&["get", "deployments", "-n", "conf"]);
    s += &run(&["scale", "deployment", "web", "--replicas=3", "-n", "conf"]);
    s += &settled(ROLLOUT_STATUS);
    s += &run(&["get", "deployment", "web", "-n", "conf"]);
    s += &run(&[
        "get",
        "deployment",
        "web",
        "-n",
        "conf",
        "-o",
        "jsonpath={.spec.replicas} {.status.readyReplicas}",
    ]);
    s += "\n";
    s += &run(&["get", "replicasets", "-n", "conf"]);
    s += &run(&["get", "pods", "-n", "conf", "-l", "app=web"]);
    s += &run(&["get", "namespace", "conf"]);
    s += &run(&["apply", "--server-side", "--validate=false", "-f", "vs.yaml"]);
    s += &run(&["get", "virtualservices", "-n", "conf"]);
    s += &run(&[
        "get",
        "vs",
        "web",
        "-n",
        "conf",
        "-o",
        "jsonpath={.spec.http[0].route[0].weight}",
    ]);
    s += "\n";
    // What validation refuses (a Service needs ports), through apply and create.
    s += &run(&[
        "apply",
        "--server-side",
        "--validate=false",
        "-f",
        "bad-service.yaml",
    ]);
    s += &run(&["create", "--validate=false", "-f", "bad-service.yaml"]);
    s += &run(&["delete", "deployment", "web", "-n", "conf"]);
    s += &run(&["get", "deployments", "-n", "conf"]);
    s += &run(&["get", "deployment", "nothing", "-n", "conf"]);
    normalise(&s)
}

/// Ages become `<age>`, generated names lose their hashes.
fn normalise(s: &str) -> String {
    let mut out = String::new();
    for line in s.lines() {
        let mut words: Vec<String> = Vec::new();
        for (i, w) in line.split_inclusive(' ').enumerate() {
            let t = w.trim_end();
            let pad = &w[t.len()..];
            let age = t.len() > 1
                && t.chars().next().is_some_and(|c| c.is_ascii_digit())
                && t.chars().all(|c| c.is_ascii_alphanumeric())
                && t.ends_with(['s', 'm', 'h', 'd'])
                && t.chars().any(|c| c.is_ascii_alphabetic());
            let generated = i == 0 && t.starts_with("web-") && t.len() > 4;
            let t = if age && !line.starts_with('$') {
                "<age>".to_owned()
            } else if generated {
                // web-<template hash>[-<pod suffix>]
                if t.matches('-').count() >= 2 {
                    "web-<hash>-<pod>".to_owned()
                } else {
                    "web-<hash>".to_owned()
                }
            } else {
                t.to_owned()
            };
            words.push(format!("{t}{pad}"));
        }
        // Column alignment follows the widest cell: compare cells, not spaces.
        out.push_str(
            &words
                .iter()
                .map(|w| w.trim())
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        );
        out.push('\n');
    }
    out
}

/// A `RolloutRun` from `rollwright plan --format rolloutrun` on the real API
/// server: the CRD (`rollwright schema --crd`, generated from the types) is
/// accepted as structural, the object is created as printed, `kubectl get`
/// shows its model and version, its plan is refused any change (the CRD's
/// CEL rule, enforced by kube-apiserver), and its intent may change.
#[test]
fn a_rolloutrun_from_plan_is_accepted_and_its_plan_is_immutable() {
    let w = KubeWorld::new("rr");
    let crd = w.rollwright("admin.kubeconfig", &["schema", "--crd"]);
    assert_eq!(crd.status.code(), Some(0), "{}", stderr(&crd));
    let crd = String::from_utf8_lossy(&crd.stdout).into_owned();
    assert_eq!(
        crd,
        format!(
            "{}---\n{}",
            std::fs::read_to_string(crate::root().join("crds/rolloutrun.yaml")).unwrap(),
            std::fs::read_to_string(crate::root().join("crds/approvals-policy.yaml")).unwrap()
        )
    );
    control_plane()
        .kubectl(&["apply", "--server-side", "-f", "-"], Some(&crd))
        .unwrap();
    control_plane()
        .kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "crd/rolloutruns.rollwright.dev",
                "--timeout=30s",
            ],
            None,
        )
        .unwrap();
    // The quickstart's plan, moved to this test's namespace.
    let out = crate::rollwright_in(
        &crate::root(),
        &[
            "plan",
            "specs/examples/kserve-canary.yaml",
            "--format",
            "rolloutrun",
            "--submitter",
            "admin",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let yaml =
        String::from_utf8_lossy(&out.stdout).replace("namespace: risk", &format!("namespace: {}", w.ns));
    assert!(
        yaml.starts_with("apiVersion: rollwright.dev/v1alpha1\nkind: RolloutRun\n"),
        "{yaml}"
    );
    let created = w
        .try_kubectl(&["create", "-f", "-", "-o", "name"], Some(&yaml))
        .unwrap();
    let name = created.trim().to_owned();
    assert!(
        name.starts_with("rolloutrun.rollwright.dev/fraud-detector-"),
        "{name}"
    );
    let table = w.kubectl(&["get", "rr"]);
    assert!(
        table.contains("fraud-detector") && table.contains("   7  "),
        "{table}"
    );
    // The same plan again is the same object.
    let again = w.try_kubectl(&["create", "-f", "-"], Some(&yaml)).unwrap_err();
    assert!(again.contains("AlreadyExists"), "{again}");
    // The plan cannot change; the intent can.
    let refused = w
        .try_kubectl(
            &[
                "patch",
                &name,
                "--type=merge",
                "-p",
                r#"{"spec":{"plan":{"digest":"sha256:forged"}}}"#,
            ],
            None,
        )
        .unwrap_err();
    assert!(
        refused.contains("the plan of a RolloutRun is immutable"),
        "{refused}"
    );
    w.kubectl(&[
        "patch",
        &name,
        "--type=merge",
        "-p",
        r#"{"spec":{"intent":{"abort":{"by":"admin","reason":"test"}}}}"#,
    ]);
    let intent = w.kubectl(&["get", &name, "-o", "jsonpath={.spec.intent.abort.by}"]);
    assert_eq!(intent, "admin");

    // Approvals are authenticated by the API server (the admission policy
    // installed with the CRD): alice and bob may patch the run's intent.
    let cp = control_plane();
    let role = format!(
        r#"{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{{"name":"approvers","namespace":"{ns}"}},"rules":[{{"apiGroups":["rollwright.dev"],"resources":["rolloutruns"],"verbs":["get","patch","update"]}}]}}
{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{{"name":"approvers","namespace":"{ns}"}},"roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"approvers"}},"subjects":[{{"kind":"User","name":"alice"}},{{"kind":"User","name":"bob"}}]}}"#,
        ns = w.ns
    );
    cp.kubectl(&["apply", "-f", "-"], Some(&role)).unwrap();
    for who in ["alice", "bob"] {
        w.write(
            &format!("{who}.kubeconfig"),
            &cp.kubeconfig_for_user("prod-east", who),
        );
    }
    let as_user = |who: &str, patch: &str| {
        let kc = w.path().join(format!("{who}.kubeconfig"));
        let kc = kc.to_string_lossy();
        w.try_kubectl(
            &["--kubeconfig", &kc, "patch", &name, "--type=json", "-p", patch],
            None,
        )
    };
    let add = |step: &str, by: &str| {
        format!(
            r#"[{{"op":"add","path":"/spec/intent/approvals","value":[{{"step":"{step}","by":"{by}"}}]}}]"#
        )
    };
    // The API server loads a new policy within moments: wait for it with
    // a server-side dry run (admission runs for those too, nothing is kept).
    let kc = w.path().join("bob.kubeconfig");
    let kc = kc.to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while w
        .try_kubectl(
            &[
                "--kubeconfig",
                &kc,
                "patch",
                &name,
                "--dry-run=server",
                "--type=json",
                "-p",
                &add("sign-off", "alice"),
            ],
            None,
        )
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the admission policy is never enforced"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Bob cannot approve in alice's name.
    let forged = as_user("bob", &add("sign-off", "alice")).unwrap_err();
    assert!(
        forged.contains("an approval must be made by the user who sends it (bob)"),
        "{forged}"
    );
    // Alice approves as herself.
    as_user("alice", &add("sign-off", "alice")).unwrap();
    // Bob adds his own next to hers; he cannot rewrite hers.
    as_user(
        "bob",
        r#"[{"op":"add","path":"/spec/intent/approvals/-","value":{"step":"sign-off","by":"bob"}}]"#,
    )
    .unwrap();
    let rewritten = as_user(
        "bob",
        r#"[{"op":"replace","path":"/spec/intent/approvals/0/step","value":"other-step"}]"#,
    )
    .unwrap_err();
    assert!(
        rewritten.contains("an approval must be made by the user who sends it (bob)"),
        "{rewritten}"
    );
    // Nor abort in alice's name.
    let abort = as_user(
        "bob",
        r#"[{"op":"replace","path":"/spec/intent/abort","value":{"by":"alice","reason":"x"}}]"#,
    )
    .unwrap_err();
    assert!(
        abort.contains("an abort must be made by the user who sends it (bob)"),
        "{abort}"
    );
    let by = w.kubectl(&["get", &name, "-o", "jsonpath={.spec.intent.approvals[*].by}"]);
    assert_eq!(by, "alice bob");
    // Nobody creates a run in another's name: the submitter (whose
    // approvals the controller refuses) is who created it.
    let role = format!(
        r#"{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{{"name":"submitters","namespace":"{ns}"}},"rules":[{{"apiGroups":["rollwright.dev"],"resources":["rolloutruns"],"verbs":["create"]}}]}}
{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{{"name":"submitters","namespace":"{ns}"}},"roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"submitters"}},"subjects":[{{"kind":"User","name":"bob"}}]}}"#,
        ns = w.ns
    );
    cp.kubectl(&["apply", "-f", "-"], Some(&role)).unwrap();
    let as_alice = yaml
        .replace("submitter: admin", "submitter: alice")
        .replace("name: fraud-detector-", "name: other-");
    let forged = w
        .try_kubectl(&["--kubeconfig", &kc, "create", "-f", "-"], Some(&as_alice))
        .unwrap_err();
    assert!(
        forged.contains("spec.plan.submitter must be the user who creates the RolloutRun (bob)"),
        "{forged}"
    );
}
