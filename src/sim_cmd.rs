//! `rollwright sim [--scenario FILE] [--port N] [--models-port N] [--kubeconfig OUT]`:
//! a simulated cluster in the foreground, until Ctrl-C or SIGTERM.
//!
//! `--control-plane kube-apiserver [--kube-bin DIR]`: a real control plane
//! (etcd, kube-apiserver, controller-manager, scheduler, kwok; built by
//! `scripts/setup-kube`) instead of the embedded API server, with the
//! simulated world running over it the same way; everything it started is
//! stopped on the way out.

use crate::error::{CliError, CliResult};
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use rollwright_sim::ApiServer;

use crate::exit;

#[derive(Args)]
pub struct SimArgs {
    /// Scenario file (YAML): model behaviour, pod and API faults, time scale.
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// API server port on 127.0.0.1 (0 picks a free one; embedded only).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Model server port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    models_port: u16,
    /// Where to write the kubeconfig (mode 0600).
    #[arg(long, value_name = "OUT", default_value = ".rollwright/sim.kubeconfig")]
    kubeconfig: PathBuf,
    /// Where to write the attach file for `rollwright run SPEC --sim --attach FILE`
    /// (mode 0600; runs attached to this sim can be resumed while it runs).
    #[arg(long, value_name = "OUT", default_value = ".rollwright/sim.attach.json")]
    attach: PathBuf,
    #[command(flatten)]
    api: ApiServerArgs,
}

/// Which API server a simulated cluster runs on (`sim`, `run --sim`, `test`).
#[derive(Args, Clone)]
pub struct ApiServerArgs {
    /// Which API server: rollwright's embedded one, or a real Kubernetes
    /// control plane built from source by `scripts/setup-kube`; the
    /// simulated world runs over either.
    #[arg(long, value_enum, default_value_t = ControlPlaneKind::Embedded)]
    control_plane: ControlPlaneKind,
    /// Directory of the control plane's binaries (what `scripts/setup-kube`
    /// prints); default `$ROLLWRIGHT_KUBE_BIN`.
    #[arg(long, value_name = "DIR")]
    kube_bin: Option<PathBuf>,
}

/// The API server a simulation starts.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ControlPlaneKind {
    /// rollwright's embedded API server.
    Embedded,
    /// etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok.
    KubeApiserver,
}

impl ApiServerArgs {
    /// Whether anything but the default was asked for.
    pub fn is_default(&self) -> bool {
        self.control_plane == ControlPlaneKind::Embedded && self.kube_bin.is_none()
    }

    /// The API server asked for; kube-apiserver needs its binaries
    /// (`--kube-bin`, else `$ROLLWRIGHT_KUBE_BIN`).
    pub fn api_server(&self) -> CliResult<ApiServer> {
        match self.control_plane {
            ControlPlaneKind::Embedded if self.kube_bin.is_some() => Err(CliError::usage(
                "--kube-bin is for --control-plane kube-apiserver",
            )),
            ControlPlaneKind::Embedded => Ok(ApiServer::Embedded),
            ControlPlaneKind::KubeApiserver => {
                let bin = self
                    .kube_bin
                    .clone()
                    .or_else(|| std::env::var_os("ROLLWRIGHT_KUBE_BIN").map(PathBuf::from))
                    .ok_or_else(|| {
                        CliError::usage(
                            "--control-plane kube-apiserver needs the control plane's binaries: build them with scripts/setup-kube and pass the directory it prints as --kube-bin (or $ROLLWRIGHT_KUBE_BIN)",
                        )
                    })?;
                Ok(ApiServer::KubeApiserver { bin })
            }
        }
    }
}

pub fn run(args: &SimArgs) -> CliResult {
    let api = args.api.api_server()?;
    let scenario = load_scenario(args)?;
    let registry = scenario.registry.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("cannot start the runtime: {e}")))?;
    // Signals are taken before anything starts, so that a SIGTERM or SIGINT
    // at any time after this stops what was started (before this, a
    // control plane's processes die with this one: they are bound to it).
    let signals = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
    });
    let (mut interrupt, mut terminate) =
        signals.map_err(|e| CliError::usage(format!("cannot handle signals: {e}")))?;
    if let ApiServer::KubeApiserver { bin } = &api {
        eprintln!(
            "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok from {}",
            bin.display()
        );
    }
    let options = rollwright_sim::SimOptions {
        port: args.port,
        models_port: args.models_port,
        scenario,
        repositories_dir: None,
    };
    let sim = runtime
        .block_on(rollwright_sim::Simulation::start(&api, options))
        .map_err(|e| {
            let shown = args
                .scenario
                .as_ref()
                .map_or_else(String::new, |p| format!("{}: ", p.display()));
            CliError::usage(format!("{shown}{e}"))
        })?;
    if let Some(dir) = args.kubeconfig.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    sim.write_kubeconfig_for(&args.kubeconfig, "sim")
        .map_err(|e| CliError::usage(format!("cannot write {}: {e}", args.kubeconfig.display())))?;
    let registry_file = match &registry {
        Some(r) => {
            let p = args.attach.with_extension("registry.yaml");
            crate::sim_run::write_registry(&p, r).map_err(CliError::usage)?;
            Some(std::fs::canonicalize(&p).unwrap_or(p))
        }
        None => None,
    };
    let kc_abs = std::fs::canonicalize(&args.kubeconfig).unwrap_or_else(|_| args.kubeconfig.clone());
    let attach = crate::sim_run::describe(&sim, kc_abs, "sim", registry_file);
    if let Some(dir) = args.attach.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    crate::sim_run::write_attach(&args.attach, &attach).map_err(CliError::usage)?;
    let kc = args.kubeconfig.display();
    let world = sim.world();
    match sim.control_plane() {
        None => println!("sim API server: {}", sim.url()),
        Some(cp) => {
            println!("kube-apiserver: {}", sim.url());
            for (name, pid) in cp.pids() {
                println!("{name:<24}pid {pid}");
            }
        }
    }
    match sim.control_plane() {
        None => println!("kubeconfig:     {kc}"),
        Some(_) => println!(
            "kubeconfig:     {kc} (user admin; users {} have no permission until granted)",
            rollwright_sim::control_plane::USERS
                .iter()
                .skip(1)
                .map(|u| u.0)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    println!(
        "model servers:  {}/v1/models/<model>:predict, {}/v2/models/<model>/infer",
        world.models_url(),
        world.models_url()
    );
    println!("metrics:        {}/metrics", world.models_url());
    println!("traffic split:  {}/routes", world.models_url());
    println!("time scale:     {}x", world.time_scale());
    for (name, path) in world.repositories() {
        println!(
            "repository:     sim://{name} = {} (removed at exit)",
            path.display()
        );
    }
    println!("try:            kubectl --kubeconfig {kc} get namespaces");
    println!(
        "run on it:      rollwright run SPEC --sim --attach {}",
        args.attach.display()
    );
    if sim.embedded().is_some() {
        println!("change faults:  kubectl --kubeconfig {kc} replace --raw /sim/scenario -f scenario.yaml");
    }
    println!("Ctrl-C (or SIGTERM) stops everything it started.");
    runtime.block_on(async {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    });
    drop(sim);
    // Not println!: whoever read the output may be gone by now.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), b"sim stopped\n");
    Ok(exit::OK)
}

/// `--scenario`, or an empty one; a bad file is a usage error, said with its place.
fn load_scenario(args: &SimArgs) -> CliResult<rollwright_sim::Scenario> {
    match &args.scenario {
        Some(path) => rollwright_sim::Scenario::load(path).map_err(|e| CliError::usage(e.to_string())),
        None => Ok(rollwright_sim::Scenario::default()),
    }
}
