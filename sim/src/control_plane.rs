//! A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok (fake nodes that make
//! scheduled pods Running and Ready), built from Go modules by
//! `scripts/setup-kube` into a directory this module is given.
//!
//! What it sets up, like controller-runtime's envtest:
//! - TLS with a certificate made here (for `127.0.0.1` and `localhost`),
//!   token authentication for several users ([`USERS`]; `admin` is in
//!   `system:masters`), RBAC authorization, ServiceAccount token signing;
//! - free ports only, every process bound to 127.0.0.1;
//! - the custom resources rollwright drives (`sim/crds/crds.yaml`), and one
//!   Node kwok manages.
//!
//! Processes are started by a supervisor thread that lives as long as the
//! [`ControlPlane`]: each child is asked (Linux `PR_SET_PDEATHSIG`) to be
//! killed when that thread ends, so nothing outlives this process even when
//! it is killed with SIGKILL; dropping the value stops them in reverse order
//! (SIGTERM, then SIGKILL after 5 s) and removes the working directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The custom resource definitions installed before anything else.
pub const CRDS: &str = include_str!("../crds/crds.yaml");

/// The users the API server authenticates by token: `(name, groups)`.
/// `admin` may do anything; the others start with no permission at all
/// (RBAC), like a fresh user of a real cluster.
pub const USERS: &[(&str, &[&str])] = &[
    ("admin", &["system:masters"]),
    ("alice", &[]),
    ("bob", &[]),
    ("carol", &[]),
    ("ci", &[]),
];

/// The common name of a simulated control plane's certificate, before its
/// identity. Nothing else makes certificates so named: a run that finds its
/// API server certified so (TLS verified against that certificate alone),
/// with the identity its attach file holds, knows it is on this simulated
/// cluster and not on a real one.
pub const SIM_CA_NAME: &str = "rollwright simulated control plane ";

/// The binaries a control plane needs, in the directory `scripts/setup-kube` prints.
pub const BINARIES: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kubectl",
];

/// Why a control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// A binary is missing.
    #[error(
        "{0} not found (build the control plane with scripts/setup-kube and pass the directory it prints)"
    )]
    Missing(PathBuf),
    /// Files could not be written or processes started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A component did not come up; the tail of its log.
    #[error("{component} did not become ready: {detail}")]
    NotReady {
        /// The component.
        component: String,
        /// What happened, with the end of its log.
        detail: String,
    },
    /// Keys or certificates could not be made.
    #[error("cannot make keys: {0}")]
    Keys(String),
}

/// What a started control plane offers.
#[derive(Debug, Clone)]
struct Info {
    url: String,
    identity: String,
    ca_pem: String,
    tokens: BTreeMap<String, String>,
    dir: PathBuf,
    pids: Vec<(String, u32)>,
}

/// A running control plane. Dropping it stops every process it started.
pub struct ControlPlane {
    info: Info,
    bin: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    supervisor: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.info.url)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler
    /// and kwok from the binaries in `bin`, installs the CRDs and a node, and
    /// returns when the API server is ready and the CRDs are established.
    ///
    /// # Errors
    /// A missing binary, a component that does not come up (with the end of
    /// its log), or I/O.
    pub fn start(bin: &Path) -> Result<ControlPlane, ControlPlaneError> {
        ControlPlane::launch(bin, true)
    }

    /// Like [`ControlPlane::start`], but kwok only runs the node (heartbeat)
    /// and finishes deleted pods: pods' status is left to the simulated
    /// world's node agent ([`crate::World`]), which honours the scenario's
    /// pod faults. Start a world over it, or pods stay Pending.
    ///
    /// # Errors
    /// As [`ControlPlane::start`].
    pub fn start_for_world(bin: &Path) -> Result<ControlPlane, ControlPlaneError> {
        ControlPlane::launch(bin, false)
    }

    /// Free ports are picked by binding port 0 and letting go: another
    /// process may take one before the component binds it. That start is
    /// tried again (everything it started is stopped first), a few times.
    fn launch(bin: &Path, kwok_pods: bool) -> Result<ControlPlane, ControlPlaneError> {
        let mut tries = 0;
        loop {
            match ControlPlane::launch_once(bin, kwok_pods) {
                Err(ControlPlaneError::NotReady { detail, .. })
                    if detail.contains("address already in use") && tries < 3 =>
                {
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    fn launch_once(bin: &Path, kwok_pods: bool) -> Result<ControlPlane, ControlPlaneError> {
        for b in BINARIES {
            let p = bin.join(b);
            if !p.is_file() {
                return Err(ControlPlaneError::Missing(p));
            }
        }
        let bin = std::fs::canonicalize(bin).map_err(|source| ControlPlaneError::Io {
            what: format!("{}", bin.display()),
            source,
        })?;
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let b = bin.clone();
        let supervisor = std::thread::Builder::new()
            .name("control-plane".into())
            .spawn(move || supervise(&b, kwok_pods, &ready_tx, &stop_rx))
            .map_err(|source| ControlPlaneError::Io {
                what: "cannot start the supervisor thread".into(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok(info)) => Ok(ControlPlane {
                info,
                bin,
                stop: Some(stop_tx),
                supervisor: Some(supervisor),
            }),
            Ok(Err(e)) => {
                let _ = supervisor.join();
                Err(e)
            }
            Err(_) => {
                let _ = supervisor.join();
                Err(ControlPlaneError::NotReady {
                    component: "control plane".into(),
                    detail: "the supervisor thread ended".into(),
                })
            }
        }
    }

    /// `https://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.info.url
    }

    /// Random per control plane: its certificate's subject is
    /// [`SIM_CA_NAME`] followed by it, which is how a run attached to this
    /// simulated cluster proves its API server is this one.
    #[must_use]
    pub fn identity(&self) -> &str {
        &self.info.identity
    }

    /// The CA (PEM) clients trust.
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        &self.info.ca_pem
    }

    /// The bearer token of one of [`USERS`].
    #[must_use]
    pub fn token(&self, user: &str) -> Option<&str> {
        self.info.tokens.get(user).map(String::as_str)
    }

    /// The directory holding the binaries.
    #[must_use]
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The processes started: `(component, pid)`.
    #[must_use]
    pub fn pids(&self) -> &[(String, u32)] {
        &self.info.pids
    }

    /// A kubeconfig for `user` (one of [`USERS`]) whose context is `context`.
    ///
    /// # Panics
    /// When `user` is not one of [`USERS`].
    #[must_use]
    pub fn kubeconfig_for_user(&self, context: &str, user: &str) -> String {
        let token = self.token(user).unwrap_or_else(|| panic!("no user {user}"));
        crate::kubeconfig_text(&self.info.url, &self.info.ca_pem, token, context)
    }

    /// The administrator's kubeconfig, context `context`.
    #[must_use]
    pub fn kubeconfig_for(&self, context: &str) -> String {
        self.kubeconfig_for_user(context, "admin")
    }

    /// Writes the administrator's kubeconfig (mode 0600).
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_kubeconfig_for(&self, path: &Path, context: &str) -> std::io::Result<()> {
        crate::write_private(path, &self.kubeconfig_for(context))
    }

    /// Runs the control plane's own kubectl as `admin` with `args`, `stdin`
    /// fed when given; returns stdout, or stderr as the error.
    ///
    /// # Errors
    /// kubectl's stderr when it fails.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        kubectl(&self.bin, &self.info.dir.join("admin.kubeconfig"), args, stdin)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(s) = self.supervisor.take() {
            let _ = s.join();
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlPlaneError {
    let what = what.into();
    move |source| ControlPlaneError::Io { what, source }
}

/// A free TCP port on 127.0.0.1 (bound and released: another process could
/// take it in between, which start-up reports as a component not ready).
fn free_port() -> Result<u16, ControlPlaneError> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(io("cannot find a free port"))?;
    Ok(l.local_addr().map_err(io("cannot find a free port"))?.port())
}

fn kubectl(bin: &Path, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut c = Command::new(bin.join("kubectl"));
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| format!("kubectl: {e}"))?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        let _ = w.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| format!("kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The children, stopped in reverse order of start.
struct Children(Vec<(String, Child)>);

impl Children {
    fn stop(&mut self) {
        while let Some((_, mut child)) = self.0.pop() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: signalling a child we started and have not reaped.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

fn supervise(
    bin: &Path,
    kwok_pods: bool,
    ready: &mpsc::Sender<Result<Info, ControlPlaneError>>,
    stop: &mpsc::Receiver<()>,
) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rollwright-kube-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    remove_stale_dirs();
    let mut children = Children(Vec::new());
    let started = bring_up(bin, kwok_pods, &dir, &mut children);
    let ok = started.is_ok();
    let _ = ready.send(started);
    if ok {
        // Until the ControlPlane is dropped (the sender goes away).
        let _ = stop.recv();
    }
    children.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Removes the working directories of control planes whose process is gone
/// (killed, or a test binary whose shared control plane is never dropped).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("rollwright-kube-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn spawn(
    children: &mut Children,
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[String],
) -> Result<(), ControlPlaneError> {
    let log = dir.join(format!("logs/{name}.log"));
    let out = std::fs::File::create(&log).map_err(io(format!("cannot create {}", log.display())))?;
    let err = out.try_clone().map_err(io("log file"))?;
    let mut c = Command::new(program);
    c.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            c.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = c
        .spawn()
        .map_err(io(format!("cannot start {}", program.display())))?;
    children.0.push((name.to_owned(), child));
    Ok(())
}

/// Waits until `check` passes, failing early when the component exited.
fn wait_until(
    children: &mut Children,
    dir: &Path,
    name: &str,
    max: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), ControlPlaneError> {
    let deadline = Instant::now() + max;
    loop {
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if let Some((_, child)) = children.0.iter_mut().find(|(n, _)| n == name)
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(ControlPlaneError::NotReady {
                component: name.to_owned(),
                detail: format!(
                    "exited ({status}):\n{}",
                    log_tail(&dir.join(format!("logs/{name}.log")))
                ),
            });
        }
        if Instant::now() >= deadline {
            return Err(ControlPlaneError::NotReady {
                component: name.to_owned(),
                detail: format!(
                    "not ready after {}s ({last}):\n{}",
                    max.as_secs(),
                    log_tail(&dir.join(format!("logs/{name}.log")))
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn bring_up(
    bin: &Path,
    kwok_pods: bool,
    dir: &Path,
    children: &mut Children,
) -> Result<Info, ControlPlaneError> {
    let keys = |e: rcgen::Error| ControlPlaneError::Keys(e.to_string());
    std::fs::create_dir_all(dir.join("logs")).map_err(io(format!("cannot create {}", dir.display())))?;
    let s = |p: PathBuf| p.to_string_lossy().into_owned();

    // TLS (a self-signed certificate named for this control plane: how a
    // run proves its API server is this simulated cluster) and
    // ServiceAccount keys.
    let identity = crate::random_hex();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).map_err(keys)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{SIM_CA_NAME}{identity}"));
    let tls_key = rcgen::KeyPair::generate().map_err(keys)?;
    let cert = params.self_signed(&tls_key).map_err(keys)?;
    let ca_pem = cert.pem();
    crate::write_private(&dir.join("tls.crt"), &ca_pem).map_err(io("tls.crt"))?;
    crate::write_private(&dir.join("tls.key"), &tls_key.serialize_pem()).map_err(io("tls.key"))?;
    let sa = rcgen::KeyPair::generate().map_err(keys)?;
    crate::write_private(&dir.join("sa.key"), &sa.serialize_pem()).map_err(io("sa.key"))?;
    crate::write_private(&dir.join("sa.pub"), &sa.public_key_pem()).map_err(io("sa.pub"))?;

    // Token authentication.
    let mut tokens = BTreeMap::new();
    let mut file = String::new();
    for (i, (user, groups)) in USERS.iter().enumerate() {
        let t = crate::random_hex();
        file.push_str(&format!("{t},{user},uid-{i},\"{}\"\n", groups.join(",")));
        tokens.insert((*user).to_owned(), t);
    }
    crate::write_private(&dir.join("tokens.csv"), &file).map_err(io("tokens.csv"))?;

    // etcd.
    let etcd_port = free_port()?;
    let peer_port = free_port()?;
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    spawn(
        children,
        dir,
        "etcd",
        &bin.join("etcd"),
        &[
            "--name=default".into(),
            format!("--data-dir={}", s(dir.join("etcd"))),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ],
    )?;
    wait_until(children, dir, "etcd", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", etcd_port))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?;

    // kube-apiserver.
    let port = free_port()?;
    let url = format!("https://127.0.0.1:{port}");
    spawn(
        children,
        dir,
        "kube-apiserver",
        &bin.join("kube-apiserver"),
        &[
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", s(dir.join("certs"))),
            format!("--tls-cert-file={}", s(dir.join("tls.crt"))),
            format!("--tls-private-key-file={}", s(dir.join("tls.key"))),
            format!("--token-auth-file={}", s(dir.join("tokens.csv"))),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", s(dir.join("sa.pub"))),
            format!("--service-account-signing-key-file={}", s(dir.join("sa.key"))),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            // The `kubernetes` Service's endpoints may not be a loopback address.
            "--endpoint-reconciler-type=none".into(),
            "--enable-priority-and-fairness=false".into(),
            "--v=1".into(),
        ],
    )?;
    let admin = crate::kubeconfig_text(&url, &ca_pem, &tokens["admin"], "admin");
    let admin_kc = dir.join("admin.kubeconfig");
    crate::write_private(&admin_kc, &admin).map_err(io("admin.kubeconfig"))?;
    wait_until(children, dir, "kube-apiserver", Duration::from_secs(90), || {
        kubectl(bin, &admin_kc, &["get", "--raw", "/readyz"], None).map(|_| ())
    })?;

    // The custom resources, established before anything uses them.
    kubectl(bin, &admin_kc, &["apply", "--server-side", "-f", "-"], Some(CRDS)).map_err(|e| {
        ControlPlaneError::NotReady {
            component: "CRDs".into(),
            detail: e,
        }
    })?;
    kubectl(
        bin,
        &admin_kc,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
        None,
    )
    .map_err(|e| ControlPlaneError::NotReady {
        component: "CRDs".into(),
        detail: e,
    })?;

    // kube-controller-manager: Deployments, ReplicaSets, garbage collection,
    // ServiceAccounts (pods are admitted only once `default` exists).
    spawn(
        children,
        dir,
        "kube-controller-manager",
        &bin.join("kube-controller-manager"),
        &[
            format!("--kubeconfig={}", s(admin_kc.clone())),
            "--leader-elect=false".into(),
            "--controllers=*".into(),
            format!("--service-account-private-key-file={}", s(dir.join("sa.key"))),
            format!("--root-ca-file={}", s(dir.join("tls.crt"))),
            "--secure-port=0".into(),
            "--concurrent-deployment-syncs=10".into(),
            "--v=1".into(),
        ],
    )?;
    let sched_port = free_port()?;
    spawn(
        children,
        dir,
        "kube-scheduler",
        &bin.join("kube-scheduler"),
        &[
            format!("--kubeconfig={}", s(admin_kc.clone())),
            format!("--authentication-kubeconfig={}", s(admin_kc.clone())),
            format!("--authorization-kubeconfig={}", s(admin_kc.clone())),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={sched_port}"),
            "--v=1".into(),
        ],
    )?;

    // kwok and the node it manages.
    let stages_dir = bin.parent().map(|p| p.join("kwok-stages")).unwrap_or_default();
    let mut stages = String::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&stages_dir)
        .map_err(io(format!("kwok stages in {}", stages_dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        // With a simulated world, its node agent makes pods Ready (or not).
        .filter(|p| kwok_pods || !p.to_string_lossy().ends_with("pod-ready.yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(io(format!("{}", f.display())))?;
        stages.push_str("---\n");
        stages.push_str(&text);
        stages.push('\n');
    }
    crate::write_private(&dir.join("kwok.yaml"), &stages).map_err(io("kwok.yaml"))?;
    let kwok_port = free_port()?;
    spawn(
        children,
        dir,
        "kwok",
        &bin.join("kwok"),
        &[
            format!("--kubeconfig={}", s(admin_kc.clone())),
            format!("--config={}", s(dir.join("kwok.yaml"))),
            "--manage-all-nodes=false".into(),
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
            format!("--server-address=127.0.0.1:{kwok_port}"),
            "--node-ip=127.0.0.1".into(),
            "--cidr=10.244.0.0/16".into(),
        ],
    )?;
    // Room for every scenario: fifty models of a few 1-CPU replicas each
    // must fit (a real cluster would have many nodes).
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: kwok-node-0\n  annotations:\n    kwok.x-k8s.io/node: fake\n    node.alpha.kubernetes.io/ttl: \"0\"\n  labels:\n    kubernetes.io/hostname: kwok-node-0\n    kubernetes.io/os: linux\n    kubernetes.io/arch: amd64\n    type: kwok\nstatus:\n  allocatable: {cpu: \"2000\", memory: 8Ti, pods: \"5000\"}\n  capacity: {cpu: \"2000\", memory: 8Ti, pods: \"5000\"}\n";
    kubectl(bin, &admin_kc, &["apply", "-f", "-"], Some(node)).map_err(|e| ControlPlaneError::NotReady {
        component: "node".into(),
        detail: e,
    })?;
    wait_until(children, dir, "kwok", Duration::from_secs(60), || {
        kubectl(
            bin,
            &admin_kc,
            &[
                "wait",
                "--for=condition=Ready",
                "--timeout=1s",
                "node/kwok-node-0",
            ],
            None,
        )
        .map(|_| ())
    })?;
    // Pods are admitted once the ServiceAccount controller made `default`.
    wait_until(
        children,
        dir,
        "kube-controller-manager",
        Duration::from_secs(60),
        || {
            kubectl(
                bin,
                &admin_kc,
                &["get", "serviceaccount", "default", "-n", "default"],
                None,
            )
            .map(|_| ())
        },
    )?;

    Ok(Info {
        url,
        identity,
        ca_pem,
        tokens,
        dir: dir.to_owned(),
        pids: children.0.iter().map(|(n, c)| (n.clone(), c.id())).collect(),
    })
}
