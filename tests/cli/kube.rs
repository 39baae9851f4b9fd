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
        assert_ne!(out.status.code(), Some(0), "succeeded without{rule}\n{err}");
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
