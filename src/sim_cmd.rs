//! `rollwright sim [--scenario FILE] [--port N] [--models-port N] [--kubeconfig OUT]`:
//! the embedded cluster in the foreground, until Ctrl-C.
//!
//! `rollwright sim --control-plane kube-apiserver [--kube-bin DIR]`: a real
//! control plane instead (etcd, kube-apiserver, controller-manager,
//! scheduler, kwok; built by `scripts/setup-kube`), with the scenario's
//! objects created in it, until Ctrl-C or SIGTERM; everything it started is
//! stopped on the way out.

use crate::error::{CliError, CliResult};
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::exit;

#[derive(Args)]
pub struct SimArgs {
    /// Scenario file (YAML): model behaviour, pod and API faults, time scale.
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// API server port on 127.0.0.1 (0 picks a free one).
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
    /// Which API server: rollwright's embedded one, or a real Kubernetes
    /// control plane built from source by `scripts/setup-kube`.
    #[arg(long, value_enum, default_value_t = ControlPlaneKind::Embedded)]
    control_plane: ControlPlaneKind,
    /// Directory of the control plane's binaries (what `scripts/setup-kube`
    /// prints); default `$ROLLWRIGHT_KUBE_BIN`.
    #[arg(long, value_name = "DIR")]
    kube_bin: Option<PathBuf>,
}

/// The API server `sim` starts.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ControlPlaneKind {
    /// rollwright's embedded API server and simulated world.
    Embedded,
    /// etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok.
    KubeApiserver,
}

pub fn run(args: &SimArgs) -> CliResult {
    if args.control_plane == ControlPlaneKind::KubeApiserver {
        return run_kube_apiserver(args);
    }
    let scenario_registry = |s: &rollwright_sim::Scenario| s.registry.clone();
    let scenario = load_scenario(args)?;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return Err(CliError::usage(format!("cannot start the runtime: {e}")));
        }
    };
    let registry = scenario_registry(&scenario);
    runtime.block_on(async {
        let options = rollwright_sim::SimOptions {
            port: args.port,
            models_port: args.models_port,
            scenario,
            repositories_dir: None,
        };
        let sim = match rollwright_sim::Sim::start_with(options).await {
            Ok(s) => s,
            Err(e) => {
                let shown = args
                    .scenario
                    .as_ref()
                    .map_or_else(String::new, |p| format!("{}: ", p.display()));
                return Err(CliError::usage(format!("{shown}{e}")));
            }
        };
        if let Some(dir) = args.kubeconfig.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = sim.write_kubeconfig(&args.kubeconfig) {
            return Err(CliError::usage(format!(
                "cannot write {}: {e}",
                args.kubeconfig.display()
            )));
        }
        let registry_file = match &registry {
            Some(r) => {
                let p = args.attach.with_extension("registry.yaml");
                if let Err(e) = crate::sim_run::write_registry(&p, r) {
                    return Err(CliError::usage(e.to_string()));
                }
                Some(std::fs::canonicalize(&p).unwrap_or(p))
            }
            None => None,
        };
        let kc_abs = std::fs::canonicalize(&args.kubeconfig).unwrap_or_else(|_| args.kubeconfig.clone());
        let attach = crate::sim_run::describe(&sim, kc_abs, "sim", registry_file);
        if let Some(dir) = args.attach.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = crate::sim_run::write_attach(&args.attach, &attach) {
            return Err(CliError::usage(e.to_string()));
        }
        let kc = args.kubeconfig.display();
        println!("sim API server: {}", sim.url());
        println!("kubeconfig:     {kc}");
        println!(
            "model servers:  {}/v1/models/<model>:predict, {}/v2/models/<model>/infer",
            sim.models_url(),
            sim.models_url()
        );
        println!("metrics:        {}/metrics", sim.models_url());
        println!("traffic split:  {}/routes", sim.models_url());
        println!("time scale:     {}x", sim.time_scale());
        for (name, path) in sim.repositories() {
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
        println!("change faults:  kubectl --kubeconfig {kc} replace --raw /sim/scenario -f scenario.yaml");
        println!("Ctrl-C stops it.");
        let _ = tokio::signal::ctrl_c().await;
        println!("sim stopped");
        Ok(exit::OK)
    })
}

/// `--scenario`, or an empty one; a bad file is a usage error, said with its place.
fn load_scenario(args: &SimArgs) -> CliResult<rollwright_sim::Scenario> {
    match &args.scenario {
        Some(path) => rollwright_sim::Scenario::load(path).map_err(|e| CliError::usage(e.to_string())),
        None => Ok(rollwright_sim::Scenario::default()),
    }
}

/// The kube-bin directory: `--kube-bin`, else `$ROLLWRIGHT_KUBE_BIN`.
fn kube_bin(flag: Option<&PathBuf>) -> Result<PathBuf, String> {
    flag.cloned()
        .or_else(|| std::env::var_os("ROLLWRIGHT_KUBE_BIN").map(PathBuf::from))
        .ok_or_else(|| {
            "--control-plane kube-apiserver needs the control plane's binaries: build them with scripts/setup-kube and pass the directory it prints as --kube-bin (or $ROLLWRIGHT_KUBE_BIN)".to_owned()
        })
}

fn run_kube_apiserver(args: &SimArgs) -> CliResult {
    let scenario = load_scenario(args)?;
    if args.port != 0 || args.models_port != 0 {
        return Err(CliError::usage(
            "--port and --models-port are the embedded cluster's; kube-apiserver takes a free port of its own (printed below)",
        ));
    }
    // What only the simulated world does is said, not silently dropped.
    let unsimulated: Vec<&str> = [
        ("models", !scenario.models.is_empty()),
        ("pods (faults)", !scenario.pods.is_empty()),
        ("api (faults)", !scenario.api.is_empty()),
        ("repositories", !scenario.repositories.is_empty()),
        ("registry", scenario.registry.is_some()),
    ]
    .into_iter()
    .filter_map(|(what, set)| set.then_some(what))
    .collect();
    if !unsimulated.is_empty() {
        eprintln!(
            "warning: the scenario's {} run on the embedded cluster only (--control-plane embedded); here only its objects are created",
            unsimulated.join(", ")
        );
    }
    let bin = kube_bin(args.kube_bin.as_ref()).map_err(|e| CliError::usage(e.to_string()))?;
    eprintln!(
        "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok from {}",
        bin.display()
    );
    // Signals are taken before anything starts, so that a SIGTERM or SIGINT
    // at any time after this stops what was started (before this, the
    // children die with the process: they are bound to it).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("cannot start the runtime: {e}")))?;
    let signals = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?))
    });
    let (mut interrupt, mut terminate) = match signals {
        Ok(s) => s,
        Err(e) => {
            return Err(CliError::usage(format!("cannot handle signals: {e}")));
        }
    };
    let cp = rollwright_sim::control_plane::ControlPlane::start(&bin)
        .map_err(|e| CliError::usage(e.to_string()))?;
    if !scenario.objects.is_empty() {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": scenario.objects});
        if let Err(e) = cp.kubectl(&["apply", "--server-side", "-f", "-"], Some(&list.to_string())) {
            return Err(CliError::usage(format!("the scenario's objects: {e}")));
        }
    }
    if let Some(dir) = args.kubeconfig.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = cp.write_kubeconfig_for(&args.kubeconfig, "sim") {
        return Err(CliError::usage(format!(
            "cannot write {}: {e}",
            args.kubeconfig.display()
        )));
    }
    let kc = args.kubeconfig.display();
    println!("kube-apiserver: {}", cp.url());
    println!(
        "kubeconfig:     {kc} (user admin; users {} have no permission until granted)",
        rollwright_sim::control_plane::USERS
            .iter()
            .skip(1)
            .map(|u| u.0)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (name, pid) in cp.pids() {
        println!("{name:<24}pid {pid}");
    }
    println!("try:            kubectl --kubeconfig {kc} get nodes");
    println!("Ctrl-C (or SIGTERM) stops everything it started.");
    runtime.block_on(async {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    });
    drop(cp);
    // Not println!: whoever read the output may be gone by now.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), b"control plane stopped\n");
    Ok(exit::OK)
}
