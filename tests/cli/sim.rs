//! `rollwright sim`: foreground, kubeconfig written, kubectl works, Ctrl-C stops it.

#[test]
fn sim_runs_in_the_foreground_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc");
    let bin = assert_cmd::cargo::cargo_bin("rollwright");
    let mut child = std::process::Command::new(&bin)
        .args(["sim", "--kubeconfig"])
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
        "namespace/default\nnamespace/kube-system\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    assert!(text.trim_end().ends_with("sim stopped"), "{text}");
}
