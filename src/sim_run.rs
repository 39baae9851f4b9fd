//! The embedded cluster of a `--sim` run: started in this process, or a sim
//! another process runs (`rollwright test`, `rollwright sim`) that the run
//! attaches to with `--attach FILE` after proving the API server is that
//! sim. Either way the result is a [`Reach`] whose `sim` part carries the
//! simulation inputs (model servers, registry, time scale) — the only way
//! such inputs reach a run.

use std::path::{Path, PathBuf};

use rollwright_engine::spec::Spec;
use rollwright_steps::reach::{ATTACH_KIND, Attach, Reach};
use serde_json::Value;

/// Starts the simulated cluster for `run --sim` on a thread of its own (it
/// lives as long as the process), on the embedded API server or on
/// kube-apiserver: the scenario's objects, the target namespace, a
/// kubeconfig whose context is the spec's, the scenario's model registry.
/// Returns the attach description of it.
pub fn start(
    api: &rollwright_sim::ApiServer,
    scenario_file: Option<&Path>,
    time_scale: Option<f64>,
    spec: &Spec,
    dir: &Path,
) -> Result<Attach, String> {
    let mut scenario = match scenario_file {
        Some(p) => rollwright_sim::Scenario::load(p).map_err(|e| e.to_string())?,
        None => rollwright_sim::Scenario::default(),
    };
    if let Some(t) = time_scale {
        if !(t.is_finite() && (0.001..=100_000.0).contains(&t)) {
            return Err(format!("--time-scale must be between 0.001 and 100000, not {t}"));
        }
        scenario.time_scale = rollwright_sim::scenario::TimeScale(t);
    }
    let target = spec.target.clone().ok_or("--sim needs the spec's `target`")?;
    scenario.ensure_namespace(&target.namespace);
    let time_scale = scenario.time_scale.0;
    let registry = scenario.registry.clone();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let kc_path = dir.join("kubeconfig");
    let (tx, rx) = std::sync::mpsc::channel();
    let (context, kc) = (target.context.clone(), kc_path.clone());
    let repos_dir = dir.join("repos");
    let api = api.clone();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            let options = rollwright_sim::SimOptions {
                scenario,
                // Kept after the run, to look at its history.
                repositories_dir: Some(repos_dir),
                ..rollwright_sim::SimOptions::default()
            };
            match rollwright_sim::Simulation::start(&api, options).await {
                Ok(sim) => {
                    // The scenario's world (the stable version) is up before the run starts.
                    let _ = sim.settled(std::time::Duration::from_secs(60)).await;
                    let written = sim
                        .write_kubeconfig_for(&kc, &context)
                        .map(|()| {
                            (
                                sim.world().models_url(),
                                sim.url(),
                                sim.identity().to_owned(),
                                sim.world().repositories(),
                            )
                        })
                        .map_err(|e| format!("{}: {e}", kc.display()));
                    let _ = tx.send(written);
                    // Lives as long as the process (a control plane's
                    // processes die with it: they are bound to it).
                    std::future::pending::<()>().await;
                    drop(sim);
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
    });
    let (models, api, identity, repositories) = rx.recv().map_err(|e| e.to_string())??;
    let registry_file = match registry {
        Some(r) => {
            let p = dir.join("registry.yaml");
            write_registry(&p, &r)?;
            Some(p)
        }
        None => None,
    };
    eprintln!("simulated cluster: {api} (time scale {time_scale}x), model servers {models}");
    eprintln!(
        "watch it:  kubectl --kubeconfig {} get all -n {}",
        kc_path.display(),
        target.namespace
    );
    Ok(Attach {
        kind: ATTACH_KIND.into(),
        kubeconfig: kc_path,
        context: target.context,
        identity,
        endpoint: models,
        registry: registry_file,
        time_scale,
        repositories,
    })
}

/// The reach of a run on `attach`'s sim: the spec's GitOps repository
/// replaced by the sim's (the sim never pushes anywhere else).
pub fn reach_of(attach: &Attach, file: Option<&Path>, spec: &Spec) -> Result<Reach, String> {
    let gitops = spec.target.as_ref().and_then(|t| t.gitops.as_ref());
    let repo = match gitops {
        Some(g) => Some(
            attach
                .repository_for(g["repo"].as_str().unwrap_or_default())
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    if let Some(r) = &repo {
        eprintln!(
            "GitOps repository (the sim's, kept after the run): git -C {} log --oneline",
            r.display()
        );
    }
    Ok(attached_reach(attach, file, repo))
}

/// The reach of a run on `attach`'s sim, with the sim's API server for the
/// record (the policy never calls it production by URL).
pub fn attached_reach(attach: &Attach, file: Option<&Path>, repo: Option<PathBuf>) -> Reach {
    let mut reach = attach.reach(file, repo);
    reach.server = reach.kubeconfig().ok().flatten().and_then(|kc| {
        kc.clusters
            .first()
            .and_then(|c| c.cluster.as_ref()?.server.clone())
    });
    reach
}

/// Reads an attach file and proves its API server is that sim.
pub fn attach(file: &Path, runtime: &tokio::runtime::Runtime) -> Result<Attach, String> {
    let a = Attach::load(file).map_err(|e| e.to_string())?;
    runtime.block_on(a.verify()).map_err(|e| e.to_string())?;
    Ok(a)
}

/// Writes an attach file (0600: it names the sim's kubeconfig).
pub fn write_attach(path: &Path, a: &Attach) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = serde_json::to_vec_pretty(a).map_err(|e| e.to_string())?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(&text))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes a file model registry: `registry` is `{models: [...]}` or the list itself.
pub fn write_registry(path: &Path, registry: &Value) -> Result<(), String> {
    let mut doc = serde_json::json!({"apiVersion": "rollwright.dev/v1alpha1", "kind": "ModelRegistry"});
    doc["models"] = registry
        .get("models")
        .cloned()
        .unwrap_or_else(|| registry.clone());
    std::fs::write(path, doc.to_string()).map_err(|e| format!("{}: {e}", path.display()))
}

/// The attach description of a simulation running in this process.
pub fn describe(
    sim: &rollwright_sim::Simulation,
    kubeconfig: PathBuf,
    context: &str,
    registry: Option<PathBuf>,
) -> Attach {
    Attach {
        kind: ATTACH_KIND.into(),
        kubeconfig,
        context: context.to_owned(),
        identity: sim.identity().to_owned(),
        endpoint: sim.world().models_url(),
        registry,
        time_scale: sim.world().time_scale(),
        repositories: sim.world().repositories(),
    }
}
