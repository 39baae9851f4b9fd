//! `rollwright sim [--scenario FILE] [--port N] [--models-port N] [--kubeconfig OUT]`:
//! the embedded cluster in the foreground, until Ctrl-C.

use std::path::PathBuf;

use clap::Args;

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
}

pub fn run(args: &SimArgs) -> u8 {
    let scenario_registry = |s: &rollwright_sim::Scenario| s.registry.clone();
    let scenario = match &args.scenario {
        Some(path) => match rollwright_sim::Scenario::load(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        },
        None => rollwright_sim::Scenario::default(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::USAGE;
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
                eprintln!("error: {shown}{e}");
                return exit::USAGE;
            }
        };
        if let Some(dir) = args.kubeconfig.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = sim.write_kubeconfig(&args.kubeconfig) {
            eprintln!("error: cannot write {}: {e}", args.kubeconfig.display());
            return exit::USAGE;
        }
        let registry_file = match &registry {
            Some(r) => {
                let p = args.attach.with_extension("registry.yaml");
                if let Err(e) = crate::sim_run::write_registry(&p, r) {
                    eprintln!("error: {e}");
                    return exit::USAGE;
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
            eprintln!("error: {e}");
            return exit::USAGE;
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
        exit::OK
    })
}
