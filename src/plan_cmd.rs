//! `rollwright plan SPEC [--set key=value]… [--format text|json|dot|mermaid]`.

use crate::error::{CliError, CliResult};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use rollwright_engine::Limits;
use rollwright_engine::duration::Display;
use rollwright_engine::plan::{Plan, PlanStep};
use rollwright_engine::registry::Shape;
use serde_json::Value;

use crate::{exit, render};

/// Output format.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// A readable report: steps, gates, rollback path, manifests, budget.
    Text,
    /// The whole plan as JSON.
    Json,
    /// Graphviz.
    Dot,
    /// Mermaid flowchart (for docs and pull requests).
    Mermaid,
    /// The `RolloutRun` object (YAML) the in-cluster controller runs: the
    /// fully expanded plan, for GitOps (commit it; Argo CD or Flux applies it).
    Rolloutrun,
}

#[derive(Args)]
pub struct PlanArgs {
    /// The Rollout (or Strategy) to plan.
    #[arg(value_name = "SPEC")]
    spec: PathBuf,
    /// Override a parameter; the value is read as YAML (`weights=[5, 50]`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Platform policy (default: $ROLLWRIGHT_POLICY, else /etc/rollwright/policy.yaml).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The directory strategies and templates must stay inside (default:
    /// the spec's repository — the nearest directory with `.git` — else the
    /// spec's own directory).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// With `--format rolloutrun`: who will create the object (e.g. the
    /// GitOps controller's service account,
    /// `system:serviceaccount:argocd:argocd-application-controller`); the
    /// API server refuses a create by anyone else.
    #[arg(long, value_name = "USER")]
    submitter: Option<String>,
}

pub fn parse_set(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("--set `{s}`: expected KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("--set `{s}`: the key is empty"));
    }
    let value = if v.trim().is_empty() {
        Value::String(String::new())
    } else {
        rollwright_engine::yaml::load_str(v, &Limits::default())
            .map(|d| d.value)
            .map_err(|e| format!("--set {k}: `{v}` is not a YAML value: {}", e[0].message))?
    };
    Ok((k.to_owned(), value))
}

pub fn run(args: &PlanArgs) -> CliResult {
    let overrides: Vec<(String, Value)> = match args.set.iter().map(|s| parse_set(s)).collect() {
        Ok(o) => o,
        Err(e) => return Err(CliError::usage(e.to_string())),
    };
    let bytes = rollwright_engine::fsread::read(&args.spec, rollwright_engine::fsread::DEFAULT_MAX)
        .map_err(|e| CliError::usage(format!("cannot read `{}`: {e}", args.spec.display())))?;
    let policy = crate::run_cmd::discover_policy(args.policy.as_deref())?;
    let linter = crate::run_cmd::linter(policy, args.root.as_deref())?;
    let path = args.spec.to_string_lossy().into_owned();
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let human = render::Human::new(color);
    if args.format == Format::Rolloutrun {
        return rolloutrun(&linter, args, &bytes, &overrides, &human);
    }
    let (plan, warnings) = match linter.plan(&args.spec, &bytes, &overrides) {
        Ok(p) => p,
        Err(diags) => {
            eprint!("{}", human.render_file(&path, &bytes, &diags));
            return Err(CliError::findings(format!(
                "`{path}` has errors; nothing to plan"
            )));
        }
    };
    if !warnings.is_empty() {
        eprint!("{}", human.render_file(&path, &bytes, &warnings));
    }
    let text = match args.format {
        Format::Text => text(&plan),
        Format::Json => serde_json::to_string_pretty(&plan)
            .map(|s| s + "\n")
            .unwrap_or_default(),
        Format::Dot => dot(&plan),
        Format::Mermaid => mermaid(&plan),
        Format::Rolloutrun => unreachable!("handled above"),
    };
    if std::io::stdout().lock().write_all(text.as_bytes()).is_err() {
        return Err(CliError::usage("cannot write the plan to stdout"));
    }
    Ok(exit::OK)
}

/// `--format rolloutrun`: the RolloutRun of the plan, in the spec's
/// target namespace.
fn rolloutrun(
    linter: &rollwright_engine::lint::Linter,
    args: &PlanArgs,
    bytes: &[u8],
    overrides: &[(String, Value)],
    human: &render::Human,
) -> CliResult {
    let path = args.spec.to_string_lossy().into_owned();
    let (exp, spec, warnings) = match linter.prepare(&args.spec, bytes, overrides) {
        Ok(p) => p,
        Err(diags) => {
            eprint!("{}", human.render_file(&path, bytes, &diags));
            return Err(CliError::findings(format!(
                "`{path}` has errors; nothing to plan"
            )));
        }
    };
    if !warnings.is_empty() {
        eprint!("{}", human.render_file(&path, bytes, &warnings));
    }
    let Some(target) = &spec.target else {
        return Err(CliError::usage(format!(
            "`{path}` has no `target`: a RolloutRun lives in its target namespace"
        )));
    };
    let plan = rollwright_engine::plan::build(&exp, &spec, &crate::run_cmd::registry());
    let run = crate::rolloutrun::of(
        &plan,
        &exp,
        &target.namespace,
        args.submitter.as_deref().unwrap_or_default(),
    );
    let yaml = serde_saphyr::to_string(&run)
        .map_err(|e| CliError::usage(format!("cannot write the RolloutRun: {e}")))?;
    if std::io::stdout().lock().write_all(yaml.as_bytes()).is_err() {
        return Err(CliError::usage("cannot write the plan to stdout"));
    }
    Ok(exit::OK)
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn opt(d: Option<std::time::Duration>) -> String {
    d.map_or_else(|| "none".into(), |d| Display(d).to_string())
}

fn text(p: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Plan: {}", p.name);
    let _ = writeln!(s, "  spec:    {}", p.sources[0]);
    if p.sources.len() > 1 {
        let _ = writeln!(s, "  uses:    {}", p.sources[1..].join(" -> "));
    }
    let _ = writeln!(s, "  model:   {}", compact(&p.model));
    let _ = writeln!(s, "  target:  {}", compact(&p.target));
    if let Some(g) = p.target.get("gitops").filter(|g| g.is_object()) {
        let controller = if g["controller"] == "flux" {
            "Flux Kustomization"
        } else {
            "Argo CD Application"
        };
        let _ = writeln!(
            s,
            "  gitops:  apply, shift-traffic and rollback commit to {} ({}) at {}; the run waits for {controller} `{}` to sync",
            g["repo"].as_str().unwrap_or_default(),
            g["branch"].as_str().unwrap_or("main"),
            g["path"].as_str().unwrap_or_default(),
            g["app"].as_str().unwrap_or_default(),
        );
    }
    let _ = writeln!(s, "  serving: {}", compact(&p.serving));
    if !p.params.is_empty() {
        let _ = writeln!(s, "  params:  {}", compact(&Value::Object(p.params.clone())));
    }
    let _ = writeln!(
        s,
        "\nSteps ({}, in execution order; t+ is the earliest start):",
        p.steps.len()
    );
    for (i, st) in p.steps.iter().enumerate() {
        step_line(&mut s, i + 1, st);
    }
    if !p.on_failure.is_empty() {
        let _ = writeln!(s, "\nOn failure, after compensation:");
        for (i, st) in p.on_failure.iter().enumerate() {
            step_line(&mut s, i + 1, st);
        }
    }
    let _ = writeln!(s, "\nGates:");
    if p.gates.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for g in &p.gates {
        let _ = writeln!(
            s,
            "  {} guards {}",
            g.step,
            if g.guards.is_empty() {
                "nothing".into()
            } else {
                g.guards.join(", ")
            }
        );
    }
    let _ = writeln!(s, "\nRollback path (compensations in reverse completion order):");
    if p.rollback_path.is_empty() {
        let _ = writeln!(s, "  none: no step has a compensation");
    } else {
        let _ = writeln!(s, "  {}", p.rollback_path.join(" -> "));
    }
    let b = &p.budget;
    let _ = writeln!(s, "\nTiming budget:");
    let _ = writeln!(
        s,
        "  minimum time to 100%:        {}{}",
        opt(b.to_full_promotion),
        if b.critical_path.is_empty() {
            String::new()
        } else {
            format!(" (holds: {})", b.critical_path.join(" + "))
        }
    );
    let _ = writeln!(s, "  minimum time to completion:  {}", Display(b.to_completion));
    let _ = writeln!(s, "  worst-case detection:        {}", opt(b.detection));
    let _ = writeln!(s, "  worst-case rollback:         {}", opt(b.rollback));
    let _ = writeln!(
        s,
        "  worst-case reaction:         {}{}",
        opt(b.reaction),
        b.worst_hold
            .as_ref()
            .map(|h| format!(" (a regression during {h})"))
            .unwrap_or_default()
    );
    for n in &b.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    for m in &p.manifests {
        let _ = writeln!(s, "\nManifest of {} ({}):", m.step, m.template);
        for line in m.text.lines() {
            let _ = writeln!(s, "  | {line}");
        }
    }
    s
}

fn step_line(s: &mut String, n: usize, st: &PlanStep) {
    let _ = writeln!(
        s,
        "  {n:>2}. {:<24} {:<17} t+{}",
        st.id,
        st.kind,
        Display(st.earliest_start)
    );
    if !st.needs.is_empty() {
        let _ = writeln!(s, "        needs:      {}", st.needs.join(", "));
    }
    if st.with.as_object().is_some_and(|m| !m.is_empty()) {
        let _ = writeln!(s, "        with:       {}", compact(&st.with));
    }
    let _ = writeln!(
        s,
        "        timeout:    {}   attempts: {}",
        opt(st.timeout),
        st.attempts
    );
    if let Some(c) = &st.compensate {
        let _ = writeln!(s, "        compensate: {c}");
    }
    if st.continue_on_failure {
        let _ = writeln!(s, "        continue-on-failure");
    }
    let _ = writeln!(s, "        from:       {}", st.source);
}

fn label(st: &PlanStep) -> String {
    let detail = kind_of(st).and_then(|k| k.detail(&st.with));
    match detail {
        Some(d) => format!("{}\\n{} {d}", st.id, st.kind),
        None => format!("{}\\n{}", st.id, st.kind),
    }
}

fn kind_of(st: &PlanStep) -> Option<&'static dyn rollwright_engine::StepKind> {
    static REGISTRY: std::sync::OnceLock<rollwright_engine::Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(rollwright_steps::registry).get(&st.kind)
}

fn shape(st: &PlanStep) -> Shape {
    kind_of(st).map_or(Shape::Step, |k| k.shape())
}

fn dot_escape(s: &str) -> String {
    s.replace('"', "\\\"")
}

fn dot(p: &Plan) -> String {
    let mut s = String::from("digraph plan {\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n");
    for st in &p.steps {
        let shape = match shape(st) {
            Shape::Decision => "diamond",
            Shape::Wait => "ellipse",
            Shape::Step => "box",
        };
        let _ = writeln!(
            s,
            "  \"{}\" [label=\"{}\", shape={shape}];",
            dot_escape(&st.id),
            dot_escape(&label(st))
        );
    }
    for st in &p.steps {
        for n in &st.needs {
            let _ = writeln!(s, "  \"{}\" -> \"{}\";", dot_escape(n), dot_escape(&st.id));
        }
        if let Some(c) = &st.compensate {
            let undo = format!("undo {}", st.id);
            let _ = writeln!(
                s,
                "  \"{}\" [label=\"{c}\", shape=box, style=dashed];",
                dot_escape(&undo)
            );
            let _ = writeln!(
                s,
                "  \"{}\" -> \"{}\" [style=dashed, label=\"compensate\"];",
                dot_escape(&st.id),
                dot_escape(&undo)
            );
        }
    }
    s.push_str("}\n");
    s
}

fn mermaid(p: &Plan) -> String {
    let ids: std::collections::HashMap<&str, String> = p
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| (st.id.as_str(), format!("s{i}")))
        .collect();
    let mut s = String::from("flowchart LR\n");
    for (i, st) in p.steps.iter().enumerate() {
        let text = label(st).replace("\\n", "<br/>").replace('"', "#quot;");
        let node = match shape(st) {
            Shape::Decision => format!("s{i}{{\"{text}\"}}"),
            Shape::Wait => format!("s{i}([\"{text}\"])"),
            Shape::Step => format!("s{i}[\"{text}\"]"),
        };
        let _ = writeln!(s, "  {node}");
    }
    for (i, st) in p.steps.iter().enumerate() {
        for n in &st.needs {
            if let Some(from) = ids.get(n.as_str()) {
                let _ = writeln!(s, "  {from} --> s{i}");
            }
        }
        if let Some(c) = &st.compensate {
            let _ = writeln!(s, "  s{i} -. compensate .-> u{i}[/\"{c}\"/]");
        }
    }
    s
}
