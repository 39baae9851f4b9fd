//! kubectl against the sim: kubectl is the conformance check.

use std::path::Path;
use std::process::Command;

fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl is on the machine");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn kubectl_works_against_the_sim() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sim = rt.block_on(rollwright_sim::Sim::start(0)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kc).unwrap();

    let (ok, out, err) = kubectl(&kc, &["version", "-o", "json"]);
    assert!(ok, "{err}");
    assert!(out.contains("v1.33.0-rollwright-sim"), "{out}");

    let (ok, out, err) = kubectl(&kc, &["get", "namespaces", "-o", "name"]);
    assert!(ok, "{err}");
    assert_eq!(out, "namespace/default\nnamespace/kube-system\n");

    // (kubectl's typed `create namespace` sends protobuf, which the sim
    // refuses with 415; manifests go through JSON like every other client.)
    let ns = dir.path().join("ns.yaml");
    std::fs::write(&ns, "apiVersion: v1\nkind: Namespace\nmetadata: {name: risk}\n").unwrap();
    let (ok, out, err) = kubectl(&kc, &["create", "--validate=false", "-f", ns.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out, "namespace/risk created\n");
    let cm = dir.path().join("cm.yaml");
    std::fs::write(&cm, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm1, namespace: risk, labels: {app: fraud}}\ndata: {k: v1}\n").unwrap();
    let (ok, out, err) = kubectl(&kc, &["apply", "--validate=false", "-f", cm.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out, "configmap/cm1 created\n");
    std::fs::write(&cm, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm1, namespace: risk, labels: {app: fraud}}\ndata: {k: v2}\n").unwrap();
    let (ok, out, err) = kubectl(&kc, &["apply", "--validate=false", "-f", cm.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out, "configmap/cm1 configured\n");
    let (_, out, _) = kubectl(
        &kc,
        &[
            "get",
            "configmap",
            "cm1",
            "-n",
            "risk",
            "-o",
            "jsonpath={.data.k}",
        ],
    );
    assert_eq!(out, "v2");

    let (ok, _, err) = kubectl(
        &kc,
        &[
            "patch",
            "configmap",
            "cm1",
            "-n",
            "risk",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"k":"v3"}}"#,
        ],
    );
    assert!(ok, "{err}");
    let (_, out, _) = kubectl(
        &kc,
        &[
            "get",
            "cm",
            "-n",
            "risk",
            "-l",
            "app=fraud",
            "-o",
            "jsonpath={.items[0].data.k}",
        ],
    );
    assert_eq!(out, "v3");
    let (_, out, _) = kubectl(&kc, &["get", "cm", "-n", "risk", "-l", "app=other", "-o", "name"]);
    assert_eq!(out, "");

    // `get -w` receives events.
    let watcher = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["get", "configmaps", "-n", "risk", "-w", "-o", "name"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let cm2 = dir.path().join("cm2.yaml");
    std::fs::write(
        &cm2,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm2, namespace: risk}\n",
    )
    .unwrap();
    assert!(kubectl(&kc, &["create", "--validate=false", "-f", cm2.to_str().unwrap()]).0);
    std::thread::sleep(std::time::Duration::from_millis(700));
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(watcher.id() as i32, libc::SIGTERM);
    }
    let seen = watcher.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&seen.stdout);
    assert!(seen.contains("configmap/cm1"), "initial state: {seen}");
    assert!(seen.contains("configmap/cm2"), "live event: {seen}");

    // JSON patch.
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "patch",
            "configmap",
            "cm1",
            "-n",
            "risk",
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/data/k","value":"v4"},{"op":"add","path":"/data/n","value":"1"}]"#,
        ],
    );
    assert!(ok, "{err}");
    let (_, out, _) = kubectl(
        &kc,
        &[
            "get",
            "cm",
            "cm1",
            "-n",
            "risk",
            "-o",
            "jsonpath={.data.k} {.data.n}",
        ],
    );
    assert_eq!(out, "v4 1");
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "patch",
            "configmap",
            "cm1",
            "-n",
            "risk",
            "--type",
            "json",
            "-p",
            r#"[{"op":"test","path":"/data/k","value":"nope"}]"#,
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("failed at path '/data/k': value did not match"),
        "{err}"
    );

    // The status subresource, and generation bumped on spec changes only
    // (on a kind no simulated controller touches).
    let sd = dir.path().join("sd.yaml");
    std::fs::write(&sd, "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: sd, namespace: risk}\nspec: {replicas: 1}\n").unwrap();
    assert!(kubectl(&kc, &["create", "--validate=false", "-f", sd.to_str().unwrap()]).0);
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "patch",
            "virtualservice",
            "sd",
            "-n",
            "risk",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"state":"Available"}}"#,
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "patch",
            "virtualservice",
            "sd",
            "-n",
            "risk",
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"replicas":1},"spec":{"replicas":7}}"#,
        ],
    );
    assert!(ok, "{err}");
    let (_, out, _) = kubectl(
        &kc,
        &[
            "get",
            "virtualservice",
            "sd",
            "-n",
            "risk",
            "-o",
            "jsonpath={.status.state}/{.status.replicas}/{.spec.replicas}/{.metadata.generation}",
        ],
    );
    assert_eq!(
        out, "/1/1/1",
        "the main resource does not write status; status writes nothing else"
    );
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "patch",
            "virtualservice",
            "sd",
            "-n",
            "risk",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"replicas":3}}"#,
        ],
    );
    assert!(ok, "{err}");
    let (_, out, _) = kubectl(
        &kc,
        &[
            "get",
            "virtualservice",
            "sd",
            "-n",
            "risk",
            "-o",
            "jsonpath={.spec.replicas}/{.metadata.generation}",
        ],
    );
    assert_eq!(out, "3/2");

    // The Deployment controller: ReplicaSet, Pods that become Ready, status
    // that `kubectl rollout status` accepts; a new template rolls out again.
    let dep = dir.path().join("dep.yaml");
    std::fs::write(&dep, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: risk}\nspec: {replicas: 2, selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c, image: 'model:7'}]}}}\n").unwrap();
    assert!(kubectl(&kc, &["create", "--validate=false", "-f", dep.to_str().unwrap()]).0);
    let (ok, out, err) = kubectl(
        &kc,
        &[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            "risk",
            "--timeout=20s",
        ],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("successfully rolled out"), "{out}");
    let (_, out, _) = kubectl(
        &kc,
        &[
            "get",
            "pods",
            "-n",
            "risk",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
    );
    assert_eq!(out, "Running Running");
    let (ok, _, err) = kubectl(
        &kc,
        &["set", "image", "deployment/web", "c=model:8", "-n", "risk"],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = kubectl(
        &kc,
        &[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            "risk",
            "--timeout=20s",
        ],
    );
    assert!(ok, "{out}{err}");
    let (_, out, _) = kubectl(
        &kc,
        &[
            "get",
            "pods",
            "-n",
            "risk",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ],
    );
    assert_eq!(out, "model:8 model:8", "old pods are gone");

    // Faults through the admin endpoint: a new image that crash-loops.
    let faults = dir.path().join("faults.json");
    std::fs::write(&faults, r#"[{"image": "model:9", "crash-loop": true}]"#).unwrap();
    let (ok, out, err) = kubectl(
        &kc,
        &["replace", "--raw", "/sim/faults", "-f", faults.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    assert!(out.contains("crash-loop"), "{out}");
    assert!(
        kubectl(
            &kc,
            &["set", "image", "deployment/web", "c=model:9", "-n", "risk"]
        )
        .0
    );
    let (ok, out, _) = kubectl(
        &kc,
        &[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            "risk",
            "--timeout=3s",
        ],
    );
    assert!(!ok, "a crash-looping rollout never completes: {out}");
    let (_, out, _) = kubectl(
        &kc,
        &[
            "get",
            "pods",
            "-n",
            "risk",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.spec.containers[0].image} {.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].restartCount}{\"\\n\"}{end}",
        ],
    );
    let crashing: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("model:9 CrashLoopBackOff"))
        .collect();
    assert_eq!(crashing.len(), 2, "{out}");
    assert!(
        crashing.iter().all(|l| l
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 1)),
        "restarts grow: {out}"
    );

    // Server-side apply: ownership, a conflict, and --force-conflicts.
    let ssa = dir.path().join("ssa.yaml");
    std::fs::write(&ssa, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm3, namespace: risk}\ndata: {owner: alice, shared: a}\n").unwrap();
    let (ok, out, err) = kubectl(
        &kc,
        &[
            "apply",
            "--validate=false",
            "--server-side",
            "--field-manager=alice",
            "-f",
            ssa.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "configmap/cm3 serverside-applied\n");
    std::fs::write(&ssa, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm3, namespace: risk}\ndata: {shared: b, mine: bob}\n").unwrap();
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "apply",
            "--validate=false",
            "--server-side",
            "--field-manager=bob",
            "-f",
            ssa.to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("conflict with \"alice\"") && err.contains(".data.shared"),
        "{err}"
    );
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "apply",
            "--validate=false",
            "--server-side",
            "--field-manager=bob",
            "--force-conflicts",
            "-f",
            ssa.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let (_, out, _) = kubectl(
        &kc,
        &[
            "get",
            "cm",
            "cm3",
            "-n",
            "risk",
            "-o",
            "jsonpath={.data.owner}/{.data.shared}/{.data.mine}",
        ],
    );
    assert_eq!(out, "alice/b/bob", "bob took `shared`, alice keeps `owner`");
    let (_, out, _) = kubectl(
        &kc,
        &[
            "get",
            "cm",
            "cm3",
            "-n",
            "risk",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ],
    );
    assert_eq!(out, "alice bob");

    // CRD-backed kinds resolve through discovery.
    let (ok, out, err) = kubectl(&kc, &["get", "inferenceservices", "-n", "risk", "-o", "name"]);
    assert!(ok, "{err}");
    assert_eq!(out, "");
    // An InferenceService becomes Ready (`kubectl wait --for=condition=Ready`)
    // and gets a URL and traffic.
    let isvc = dir.path().join("isvc.yaml");
    std::fs::write(
        &isvc,
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: fraud, namespace: risk}\nspec:\n  predictor:\n    model: {modelFormat: {name: sklearn}, storageUri: \"models:/fraud/7\"}\n",
    )
    .unwrap();
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "apply",
            "--server-side",
            "--validate=false",
            "-f",
            isvc.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = kubectl(
        &kc,
        &[
            "wait",
            "--for=condition=Ready",
            "isvc/fraud",
            "-n",
            "risk",
            "--timeout=30s",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("condition met"), "{out}");
    let (_, out, _) = kubectl(
        &kc,
        &[
            "get",
            "isvc",
            "fraud",
            "-n",
            "risk",
            "-o",
            "jsonpath={.status.url} {.status.components.predictor.traffic[0].percent}",
        ],
    );
    assert_eq!(out, "http://fraud.risk.example.com 100");
    // A user's CustomResourceDefinition is served at once.
    let crd = dir.path().join("crd.yaml");
    std::fs::write(
        &crd,
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: kustomizations.kustomize.toolkit.fluxcd.io}\nspec:\n  group: kustomize.toolkit.fluxcd.io\n  scope: Namespaced\n  names: {kind: Kustomization, plural: kustomizations, singular: kustomization, shortNames: [ks]}\n  versions: [{name: v1, served: true, storage: true}]\n",
    )
    .unwrap();
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "apply",
            "--server-side",
            "--validate=false",
            "-f",
            crd.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = kubectl(&kc, &["get", "kustomizations", "-A", "-o", "name"]);
    assert!(ok, "{err}");
    assert_eq!(out, "");

    // A missing namespace is a 404, as on a real server.
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: nope}\n",
    )
    .unwrap();
    let (ok, _, err) = kubectl(&kc, &["create", "--validate=false", "-f", cm.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("namespaces \"nope\" not found"), "{err}");

    let (ok, out, err) = kubectl(&kc, &["delete", "configmap", "cm1", "-n", "risk"]);
    assert!(ok, "{err}");
    assert_eq!(out, "configmap \"cm1\" deleted\n");
    let (ok, _, err) = kubectl(&kc, &["get", "configmap", "cm1", "-n", "risk"]);
    assert!(!ok);
    assert!(err.contains("configmaps \"cm1\" not found"), "{err}");

    // Without the token: 401.
    let bad = dir.path().join("bad");
    std::fs::write(&bad, sim.kubeconfig().replace(sim.token(), "wrong")).unwrap();
    let (ok, _, err) = kubectl(&bad, &["get", "namespaces"]);
    assert!(!ok);
    assert!(
        err.contains("Unauthorized") || err.contains("provide credentials"),
        "{err}"
    );
    drop(sim);
}
