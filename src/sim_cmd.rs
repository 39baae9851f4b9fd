//! `rollwright sim [--port N] [--kubeconfig OUT]`: the embedded cluster in
//! the foreground, until Ctrl-C.

use std::path::PathBuf;

use clap::Args;

use crate::exit;

#[derive(Args)]
pub struct SimArgs {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Where to write the kubeconfig (mode 0600).
    #[arg(long, value_name = "OUT", default_value = ".rollwright/sim.kubeconfig")]
    kubeconfig: PathBuf,
}

pub fn run(args: &SimArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::USAGE;
        }
    };
    runtime.block_on(async {
        let sim = match rollwright_sim::Sim::start(args.port).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
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
        println!("sim API server: {}", sim.url());
        println!("kubeconfig:     {}", args.kubeconfig.display());
        println!(
            "try:            kubectl --kubeconfig {} get namespaces",
            args.kubeconfig.display()
        );
        println!("Ctrl-C stops it.");
        let _ = tokio::signal::ctrl_c().await;
        println!("sim stopped");
        exit::OK
    })
}
