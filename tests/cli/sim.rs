//! `rollwright sim`: foreground, kubeconfig written, kubectl works, Ctrl-C stops it.

#[test]
fn sim_runs_in_the_foreground_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc");
    let bin = assert_cmd::cargo::cargo_bin("rollwright");
    let scenario = dir.path().join("scenario.yaml");
    std::fs::write(
        &scenario,
        "time-scale: 60\nobjects:\n  - {apiVersion: v1, kind: Namespace, metadata: {name: ml}}\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(&bin)
        .args(["sim", "--scenario"])
        .arg(&scenario)
        .arg("--kubeconfig")
        .arg(&kc)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if kc.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["get", "namespaces", "-o", "name"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "namespace/default\nnamespace/kube-system\nnamespace/ml\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The live parts of the scenario change through the admin endpoint.
    let live = dir.path().join("live.yaml");
    std::fs::write(&live, "pods:\n  - {version: \"8\", crash-loop: true}\n").unwrap();
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["replace", "--raw", "/sim/scenario", "-f"])
        .arg(&live)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""crash-loop":true"#));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kc).unwrap().permissions().mode() & 0o777,
        0o600,
        "the kubeconfig holds a token"
    );
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut text).unwrap();
    assert!(text.starts_with("sim API server: https://127.0.0.1:"), "{text}");
    assert!(text.contains("/metrics"), "{text}");
    assert!(text.contains("time scale:     60x"), "{text}");
    assert!(text.trim_end().ends_with("sim stopped"), "{text}");
}

#[test]
fn a_bad_scenario_is_refused_with_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("bad.yaml");
    std::fs::write(
        &scenario,
        "models:\n  fraud:\n    versions:\n      \"8\": {error-rate: 120%}\n",
    )
    .unwrap();
    let out = assert_cmd::Command::cargo_bin("rollwright")
        .unwrap()
        .args(["sim", "--scenario"])
        .arg(&scenario)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml: error: line 4 column 25"), "{err}");
    assert!(err.contains("between 0 and 1"), "{err}");
    let missing = assert_cmd::Command::cargo_bin("rollwright")
        .unwrap()
        .args(["sim", "--scenario", "/nonexistent/s.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/s.yaml"));
}
