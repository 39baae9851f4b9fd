//! `rollwright init`: scaffolds a Rollout on a shipped strategy, and the
//! manifest template it deploys. What flags leave open is asked for — only
//! on a terminal; without one, missing answers take their defaults, and the
//! required ones (model name and version, target context and namespace)
//! are an error. The written spec lints clean and plans.

use crate::error::{CliError, CliResult};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;

use crate::exit;

#[derive(Args, Default)]
pub struct InitArgs {
    /// Rollout name (default: the model name).
    #[arg(long)]
    name: Option<String>,
    /// Model name in the registry.
    #[arg(long)]
    model: Option<String>,
    /// Model version to roll out.
    #[arg(long)]
    model_version: Option<String>,
    /// Model registry: file or mlflow.
    #[arg(long)]
    registry: Option<String>,
    /// kubeconfig context of the target.
    #[arg(long)]
    context: Option<String>,
    /// Target namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// production, staging or dev.
    #[arg(long)]
    environment: Option<String>,
    /// Serving platform: kserve, deployment or seldon.
    #[arg(long)]
    platform: Option<String>,
    /// Traffic router: istio, gateway-api, kserve, smi, nginx or seldon.
    #[arg(long)]
    traffic: Option<String>,
    /// Inference endpoint URL (what smoke tests and probes call).
    #[arg(long)]
    endpoint: Option<String>,
    /// Kubernetes Secret holding the endpoint's Authorization header, if it needs one.
    #[arg(long, value_name = "SECRET")]
    auth_secret: Option<String>,
    /// Strategy: canary, kserve-canary, shadow-then-canary or blue-green.
    #[arg(long)]
    strategy: Option<String>,
    /// Canary weights before 100 %, e.g. 5,20,50.
    #[arg(long)]
    weights: Option<String>,
    /// Hold at each weight, e.g. 10m.
    #[arg(long)]
    hold: Option<String>,
    /// CPU request (the limit is twice it).
    #[arg(long)]
    cpu: Option<String>,
    /// Memory request (the limit is twice it), e.g. 2Gi.
    #[arg(long)]
    memory: Option<String>,
    /// GPUs per replica (nvidia.com/gpu).
    #[arg(long)]
    gpu: Option<u32>,
    /// Minimum replicas.
    #[arg(long)]
    replicas: Option<u32>,
    /// The target is GitOps-managed: apply, shift-traffic and rollback
    /// commit to a repository and wait for Argo CD / Flux (asks for the rest).
    #[arg(long)]
    gitops: bool,
    /// GitOps repository (path or URL); implies --gitops.
    #[arg(long, value_name = "URL")]
    gitops_repo: Option<String>,
    /// Branch the controller follows.
    #[arg(long, value_name = "BRANCH")]
    gitops_branch: Option<String>,
    /// Directory of the target's manifests in the repository.
    #[arg(long, value_name = "PATH")]
    gitops_path: Option<String>,
    /// argocd or flux.
    #[arg(long, value_name = "CONTROLLER")]
    gitops_controller: Option<String>,
    /// The Argo CD Application / Flux Kustomization name.
    #[arg(long, value_name = "NAME")]
    gitops_app: Option<String>,
    /// Where the shipped strategies are.
    #[arg(long, value_name = "DIR", default_value = "specs/strategies")]
    strategies: PathBuf,
    /// Directory to write the spec and its manifest template into.
    #[arg(long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
    /// An eval threshold the gate checks, `METRIC=MIN` (repeatable; a
    /// production gate needs one; default `auc=0.9`).
    #[arg(long = "eval", value_name = "METRIC=MIN")]
    evals: Vec<String>,
}

/// Asks on a terminal; elsewhere takes the default (or fails when there is none).
struct Asker<'a> {
    tty: bool,
    input: Box<dyn BufRead + 'a>,
}

impl Asker<'_> {
    fn ask(
        &mut self,
        given: Option<String>,
        question: &str,
        default: Option<&str>,
        allowed: &[&str],
    ) -> Result<String, String> {
        if let Some(v) = given {
            return check(&v, question, allowed);
        }
        if !self.tty {
            return default.map(str::to_owned).ok_or_else(|| {
                format!("{question}: required (pass it as a flag; not on a terminal, nothing is asked)")
            });
        }
        loop {
            let hint = if allowed.is_empty() {
                String::new()
            } else {
                format!(" ({})", allowed.join("/"))
            };
            let dflt = default.map_or(String::new(), |d| format!(" [{d}]"));
            print!("{question}{hint}{dflt}: ");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            if self.input.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                return default
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{question}: no answer"));
            }
            let answer = line.trim();
            let answer = if answer.is_empty() {
                default.unwrap_or("")
            } else {
                answer
            };
            match check(answer, question, allowed) {
                // An empty default (an optional answer) takes an empty line.
                Ok(v) if !v.is_empty() || default.is_some() => return Ok(v),
                Ok(_) => println!("  an answer is needed"),
                Err(e) => println!("  {e}"),
            }
        }
    }
}

fn check(v: &str, question: &str, allowed: &[&str]) -> Result<String, String> {
    if allowed.is_empty() || allowed.contains(&v) {
        Ok(v.to_owned())
    } else {
        Err(format!("{question}: `{v}` is not one of {}", allowed.join(", ")))
    }
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kubernetes resource quantity as `init` writes it: a decimal number
/// and an optional suffix.
fn quantity(s: &str) -> bool {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    n.parse::<f64>().is_ok_and(|n| n > 0.0)
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&unit)
}

/// A value typed by the user, as a YAML scalar: double-quoted (a JSON
/// string is a valid YAML one), so no character of it is YAML syntax.
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Like [`q`], but plain when plain reads the same (`prod-west`, `main`):
/// a name of letters, digits, `.`, `_`, `/` and `-` that YAML would not
/// read as a number, a boolean or null.
fn scalar(s: &str) -> String {
    let plain = s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        && !["true", "false", "null", "yes", "no", "on", "off", "y", "n"]
            .contains(&s.to_ascii_lowercase().as_str());
    if plain { s.to_owned() } else { q(s) }
}

/// `1` → `2`, `500m` → `1000m`, `2Gi` → `4Gi`.
fn twice(q: &str) -> String {
    let split = q
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    n.parse::<f64>().map_or_else(
        |_| q.to_owned(),
        |n| {
            let d = n * 2.0;
            if d.fract() == 0.0 {
                format!("{}{unit}", d as u64)
            } else {
                format!("{d}{unit}")
            }
        },
    )
}

/// A path to `to`, relative to the directory `from`.
fn relative(to: &Path, from: &Path) -> PathBuf {
    let to = std::fs::canonicalize(to).unwrap_or_else(|_| to.to_path_buf());
    let from = std::fs::canonicalize(from).unwrap_or_else(|_| from.to_path_buf());
    let common = to
        .components()
        .zip(from.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in from.components().skip(common) {
        out.push("..");
    }
    for c in to.components().skip(common) {
        out.push(c);
    }
    out
}

pub fn run(args: InitArgs) -> CliResult {
    let stdin = std::io::stdin();
    let mut asker = Asker {
        tty: stdin.is_terminal(),
        input: Box::new(stdin.lock()),
    };
    match scaffold(args, &mut asker) {
        Ok(written) => {
            for w in written {
                println!("wrote {}", w.display());
            }
            Ok(exit::OK)
        }
        Err(e) => Err(CliError::usage(e.to_string())),
    }
}

fn scaffold(args: InitArgs, a: &mut Asker<'_>) -> Result<Vec<PathBuf>, String> {
    let gitops = args.gitops
        || args.gitops_repo.is_some()
        || args.gitops_path.is_some()
        || args.gitops_controller.is_some()
        || args.gitops_app.is_some()
        || args.gitops_branch.is_some();
    let model = a.ask(args.model, "model name", None, &[])?;
    if !dns_label(&model) {
        return Err(format!(
            "model name `{model}`: use lowercase letters, digits and `-` (it names Kubernetes objects)"
        ));
    }
    let version = a.ask(args.model_version, "model version", None, &[])?;
    let registry = a.ask(
        args.registry,
        "model registry",
        Some("mlflow"),
        &["file", "mlflow"],
    )?;
    let name = a.ask(args.name, "rollout name", Some(&model), &[])?;
    if !dns_label(&name) {
        return Err(format!(
            "rollout name `{name}`: use lowercase letters, digits and `-` (it names the files and the run)"
        ));
    }
    let context = a.ask(args.context, "target kubeconfig context", None, &[])?;
    let namespace = a.ask(args.namespace, "target namespace", None, &[])?;
    if !dns_label(&namespace) {
        return Err(format!(
            "namespace `{namespace}` is not a valid Kubernetes namespace"
        ));
    }
    let environment = a.ask(
        args.environment,
        "environment",
        Some("production"),
        &["production", "staging", "dev"],
    )?;
    let platform = a.ask(
        args.platform,
        "serving platform",
        Some("kserve"),
        rollwright_steps::target::PLATFORMS,
    )?;
    // A platform whose own object splits traffic routes itself; a
    // Deployment needs a router in front (Istio by default).
    let providers = rollwright_steps::traffic::names();
    let default_traffic = providers
        .iter()
        .copied()
        .find(|p| {
            rollwright_steps::traffic::provider(p).and_then(|p| p.platform()) == Some(platform.as_str())
        })
        .unwrap_or("istio");
    let traffic = a.ask(args.traffic, "traffic router", Some(default_traffic), &providers)?;
    let default_endpoint = format!("http://{model}.{namespace}.svc.cluster.local");
    let endpoint = a.ask(
        args.endpoint,
        "inference endpoint URL",
        Some(&default_endpoint),
        &[],
    )?;
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(format!(
            "endpoint `{endpoint}` must start with http:// or https://"
        ));
    }
    let gitops = if gitops {
        let repo = a.ask(args.gitops_repo, "GitOps repository (path or URL)", None, &[])?;
        let branch = a.ask(
            args.gitops_branch,
            "branch the controller follows",
            Some("main"),
            &[],
        )?;
        let default_path = format!("deploy/{namespace}/{model}");
        let path = a.ask(
            args.gitops_path,
            "directory of the manifests in the repository",
            Some(&default_path),
            &[],
        )?;
        let controller = a.ask(
            args.gitops_controller,
            "GitOps controller",
            Some("argocd"),
            &["argocd", "flux"],
        )?;
        let app = a.ask(
            args.gitops_app,
            "Application / Kustomization name",
            Some(&model),
            &[],
        )?;
        Some(format!(
            ",\n  gitops: {{repo: {}, branch: {}, path: {}, controller: {controller}, app: {}}}",
            q(&repo),
            scalar(&branch),
            q(&path),
            scalar(&app)
        ))
    } else {
        None
    };
    let auth = a.ask(
        args.auth_secret,
        "Secret with the endpoint's Authorization header (empty: none)",
        Some(""),
        &[],
    );
    let auth = auth.unwrap_or_default();
    let default_strategy = if platform == "kserve" {
        "kserve-canary"
    } else {
        "canary"
    };
    let strategy = a.ask(
        args.strategy,
        "strategy",
        Some(default_strategy),
        &["canary", "kserve-canary", "shadow-then-canary", "blue-green"],
    )?;
    let ramps = strategy != "blue-green";
    let (weights, hold) = if ramps {
        let w = a.ask(args.weights, "canary weights before 100 %", Some("5,20,50"), &[])?;
        let weights: Vec<u32> = w
            .split(',')
            .map(|x| {
                x.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("weights `{w}`: numbers separated by commas"))
            })
            .collect::<Result<_, _>>()?;
        if weights.windows(2).any(|p| p[0] >= p[1]) || weights.iter().any(|x| *x == 0 || *x >= 100) {
            return Err(format!("weights `{w}` must increase, each between 1 and 99"));
        }
        let hold = a.ask(args.hold, "hold at each weight", Some("10m"), &[])?;
        rollwright_engine::duration::parse(&hold).map_err(|e| format!("hold `{hold}`: {e}"))?;
        (weights, hold)
    } else {
        (Vec::new(), String::new())
    };
    let cpu = a.ask(args.cpu, "CPU request per replica", Some("1"), &[])?;
    let memory = a.ask(args.memory, "memory request per replica", Some("2Gi"), &[])?;
    for (what, v) in [("cpu", &cpu), ("memory", &memory)] {
        if !quantity(v) {
            return Err(format!(
                "{what} `{v}` is not a Kubernetes quantity (e.g. 500m, 2, 1.5, 512Mi, 2Gi)"
            ));
        }
    }
    let gpu: u32 = a
        .ask(
            args.gpu.map(|g| g.to_string()),
            "GPUs per replica",
            Some("0"),
            &[],
        )?
        .parse()
        .map_err(|_| "GPUs: a whole number".to_owned())?;
    let replicas: u32 = a
        .ask(
            args.replicas.map(|r| r.to_string()),
            "minimum replicas",
            Some("2"),
            &[],
        )?
        .parse()
        .map_err(|_| "replicas: a whole number".to_owned())?;
    if environment == "production" && replicas < 2 {
        return Err("production needs at least 2 replicas".into());
    }

    let strategy_file = args.strategies.join(format!("{strategy}.yaml"));
    if !strategy_file.is_file() {
        return Err(format!(
            "strategy {} not found (pass --strategies DIR, the directory of the shipped strategies)",
            strategy_file.display()
        ));
    }
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let spec_path = args.dir.join(format!("{name}.yaml"));
    let manifest_name = format!("{name}.yaml.hbs");
    let manifest_path = args.dir.join(&manifest_name);
    for p in [&spec_path, &manifest_path] {
        if p.exists() && !args.force {
            return Err(format!("{} exists (--force overwrites it)", p.display()));
        }
    }
    let uses = relative(&strategy_file, &args.dir);
    let mut resources = format!(
        "        requests: {{cpu: \"{cpu}\", memory: {memory}}}\n        limits: {{cpu: \"{}\", memory: {}",
        twice(&cpu),
        twice(&memory)
    );
    if gpu > 0 {
        resources.push_str(&format!(", nvidia.com/gpu: {gpu}"));
    }
    resources.push('}');
    let manifest = if platform == "kserve" {
        format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: {{{{model.name}}}}\n  namespace: {{{{target.namespace}}}}\n  labels: {{version: \"{{{{model.version}}}}\"}}\nspec:\n  predictor:\n    serviceAccountName: {{{{model.name}}}}-predictor\n    canaryTrafficPercent: 0\n    minReplicas: {replicas}\n    model:\n      modelFormat: {{name: sklearn}}\n      storageUri: models:/{{{{model.name}}}}/{{{{model.version}}}}\n      resources:\n{resources}\n"
        )
    } else {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{{{model.name}}}}-canary\n  namespace: {{{{target.namespace}}}}\n  labels: {{app: {{{{model.name}}}}, track: canary}}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: {{{{model.name}}}}, track: canary}}\n  template:\n    metadata:\n      labels: {{app: {{{{model.name}}}}, track: canary, version: \"{{{{model.version}}}}\"}}\n    spec:\n      serviceAccountName: {{{{model.name}}}}\n      containers:\n        - name: server\n          image: registry.example.com/models/{{{{model.name}}}}:{{{{model.version}}}}\n          ports: [{{containerPort: 8080}}]\n          resources:\n{}\n",
            resources.replace("        ", "            ")
        )
    };
    let mut spec = format!(
        "# Generated by `rollwright init`: a {strategy} rollout of {model}. Edit freely;\n# `rollwright plan {name}.yaml` shows exactly what it will do.\napiVersion: rollwright.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: {name}\nuses: {}\nparams:\n  manifest: {manifest_name}\n",
        uses.display()
    );
    if strategy == "kserve-canary" {
        spec.push_str(&format!("  resource: {model}\n"));
    }
    if ramps {
        spec.push_str(&format!(
            "  weights: [{}]\n  hold: {hold}\n",
            weights
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    spec.push_str(&format!(
        "model: {{registry: {registry}, name: {model}, version: {}}}\nserving: {{platform: {platform}, traffic: {traffic}, endpoint: {}}}\ntarget: {{context: {}, namespace: {namespace}, environment: {environment}{}}}\n",
        q(&version),
        q(&endpoint),
        scalar(&context),
        gitops.unwrap_or_default()
    ));
    let mut evals: Vec<(String, f64)> = Vec::new();
    for e in &args.evals {
        let (m, v) = e
            .split_once('=')
            .and_then(|(m, v)| Some((m.trim(), v.trim().parse::<f64>().ok()?)))
            .filter(|(m, _)| {
                !m.is_empty()
                    && m.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .ok_or_else(|| format!("--eval `{e}`: expected METRIC=MIN, e.g. auc=0.9"))?;
        evals.push((m.to_owned(), v));
    }
    if evals.is_empty() && environment == "production" {
        evals.push(("auc".into(), 0.9));
    }
    if !evals.is_empty() || !auth.is_empty() {
        spec.push_str("customize:\n  with:\n");
    }
    if !evals.is_empty() {
        // The gate checks the model's evaluation too (set the metrics your registry records).
        spec.push_str("    gate:\n      approvals: \"{{params.approvals}}\"\n      alias: production-approved\n      evals:\n");
        for (m, v) in &evals {
            spec.push_str(&format!("        {m}: {{min: {v}}}\n"));
        }
    }
    if !auth.is_empty() {
        // `customize.with` replaces a step's `with`: the whole smoke test, plus auth.
        spec.push_str(&format!(
            "    smoke:\n      protocol: \"{{{{params.protocol}}}}\"\n      target: canary\n      requests: 10\n      success-ratio: 1.0\n      expect: {{status: 200, latency: 1s}}\n      auth: {{secretRef: {}}}\n",
            scalar(&auth)
        ));
    }
    std::fs::write(&manifest_path, manifest).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    std::fs::write(&spec_path, spec).map_err(|e| format!("{}: {e}", spec_path.display()))?;
    Ok(vec![spec_path, manifest_path])
}
