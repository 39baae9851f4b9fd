//! `rollwright rbac SPEC`: the least-privilege Role and RoleBinding a run
//! of the spec needs, derived from its steps.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

use crate::exit;

#[derive(Args)]
pub struct RbacArgs {
    /// The Rollout spec.
    #[arg(value_name = "SPEC")]
    spec: PathBuf,
    /// Override a parameter; the value is read as YAML.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// The service account the run uses.
    #[arg(long, value_name = "NAME", default_value = "rollwright")]
    service_account: String,
    /// Platform policy (default: $ROLLWRIGHT_POLICY, else /etc/rollwright/policy.yaml).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The directory strategies and templates must stay inside (default:
    /// the spec's repository — the nearest directory with `.git` — else the
    /// spec's own directory).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
}

/// `(apiGroup, resource)` → verbs.
type Rules = BTreeMap<(String, String), BTreeSet<&'static str>>;

fn plural(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    if k.ends_with("ss") || k.ends_with('x') {
        format!("{k}es")
    } else if let Some(stem) = k.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{k}s")
    }
}

fn group(api_version: &str) -> String {
    api_version.split_once('/').map_or("", |(g, _)| g).to_owned()
}

fn allow(rules: &mut Rules, api_version: &str, kind: &str, verbs: &[&'static str]) {
    rules
        .entry((group(api_version), plural(kind)))
        .or_default()
        .extend(verbs.iter().copied());
}

/// The route kind each provider patches.
fn route_kind(provider: &str) -> Option<(&'static str, &'static str)> {
    rollwright_steps::traffic::Provider::parse(provider).map(rollwright_steps::traffic::Provider::route_kind)
}

pub fn run(args: &RbacArgs) -> u8 {
    let overrides: Vec<(String, Value)> =
        match args.set.iter().map(|s| crate::plan_cmd::parse_set(s)).collect() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::USAGE;
            }
        };
    let policy = match crate::run_cmd::discover_policy(args.policy.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let linter = match crate::run_cmd::linter(policy, args.root.as_deref()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let (_, spec) = match crate::run_cmd::prepare(&linter, &args.spec, &overrides) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let Some(target) = &spec.target else {
        eprintln!(
            "error: {}: the spec has no `target`: nothing to grant",
            args.spec.display()
        );
        return exit::USAGE;
    };
    // A GitOps target is changed through Git: the steps only read the cluster.
    let gitops = target.gitops.as_ref();
    let mut rules = Rules::new();
    let mut cluster_scoped = BTreeSet::new();
    let mut applied: Vec<(String, String)> = Vec::new();
    let mut why: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let provider = spec
        .serving
        .as_ref()
        .and_then(|s| s.traffic.clone().or_else(|| Some(s.platform.clone())));
    // Steps, then the compensations that undo them (they restore what the steps changed).
    let mut work: Vec<(String, String, Value)> = spec
        .steps
        .iter()
        .map(|s| (s.id.clone(), s.kind.clone(), s.with.clone()))
        .collect();
    work.extend(spec.steps.iter().filter_map(|s| {
        s.compensate
            .as_ref()
            .map(|c| (format!("{} (compensation)", s.id), c.kind.clone(), c.with.clone()))
    }));
    for (id, kind, with) in &work {
        let before = rules.clone();
        match kind.as_str() {
            "apply" => {
                let mut kinds = Vec::new();
                for m in spec.manifests.iter().filter(|m| m.step == *id) {
                    match rollwright_steps::apply::manifest_kinds(&m.path, &m.text) {
                        Ok(k) => kinds.extend(k),
                        Err(e) => {
                            eprintln!("error: {e}");
                            return exit::FINDINGS;
                        }
                    }
                }
                for o in with
                    .get("manifests")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let (Some(a), Some(k)) = (o["apiVersion"].as_str(), o["kind"].as_str()) {
                        kinds.push((a.to_owned(), k.to_owned()));
                    }
                }
                for (a, k) in kinds {
                    if rollwright_steps::apply::CLUSTER_SCOPED.contains(&k.as_str()) {
                        cluster_scoped.insert(k.clone());
                    }
                    // get: record the last known-good state; patch: server-side
                    // apply (create included); update/delete: restore it.
                    if gitops.is_none() {
                        allow(
                            &mut rules,
                            &a,
                            &k,
                            &["get", "patch", "create", "update", "delete"],
                        );
                    }
                    applied.push((a, k));
                }
            }
            "wait-ready" => {
                let listed: Vec<(String, String)> = with
                    .get("resources")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter_map(|r| r.split_once('/'))
                    .filter_map(|(k, _)| {
                        rollwright_steps::wait_ready::api_version_of(k)
                            .map(|av| (av.to_owned(), k.to_owned()))
                    })
                    .collect();
                let targets = if listed.is_empty() {
                    applied.clone()
                } else {
                    listed
                };
                for (a, k) in targets {
                    allow(&mut rules, &a, &k, &["get", "list", "watch"]);
                }
                allow(&mut rules, "v1", "Pod", &["get", "list", "watch"]);
            }
            "shift-traffic" => {
                let p = with
                    .get("provider")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .or_else(|| provider.clone());
                if let Some((a, k)) = p.as_deref().and_then(route_kind) {
                    let verbs: &[&'static str] = if gitops.is_some() {
                        &["get"]
                    } else {
                        &["get", "patch"]
                    };
                    allow(&mut rules, a, k, verbs);
                }
                // Readiness of the canary before routing to it.
                match p.as_deref() {
                    Some("istio") => {
                        allow(
                            &mut rules,
                            "networking.istio.io/v1beta1",
                            "DestinationRule",
                            &["list"],
                        );
                        allow(&mut rules, "v1", "Service", &["get"]);
                        allow(&mut rules, "v1", "Pod", &["list"]);
                    }
                    Some("seldon") => allow(&mut rules, "apps/v1", "Deployment", &["get"]),
                    Some("kserve") | None => {}
                    Some(_) => {
                        allow(&mut rules, "v1", "Service", &["get"]);
                        allow(&mut rules, "v1", "Pod", &["list"]);
                    }
                }
            }
            "rollback" if gitops.is_some() => {}
            "rollback" => {
                if let Some((a, k)) = provider.as_deref().and_then(route_kind) {
                    allow(&mut rules, a, k, &["get", "patch"]);
                }
                for (a, k) in applied.clone() {
                    allow(&mut rules, &a, &k, &["get", "update", "create", "delete"]);
                }
            }
            _ => {}
        }
        for (key, verbs) in &rules {
            if before.get(key) != Some(verbs) {
                why.entry(key.clone()).or_default().insert(id.clone());
            }
        }
    }
    // Secrets the steps read (`secretRef`), by name only.
    let mut secret_names = BTreeSet::new();
    fn secret_refs(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(n) = m.get("secretRef").and_then(Value::as_str) {
                    out.insert(n.to_owned());
                }
                m.values().for_each(|x| secret_refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| secret_refs(x, out)),
            _ => {}
        }
    }
    for (_, _, with) in &work {
        secret_refs(with, &mut secret_names);
    }
    for h in &spec.on_failure {
        secret_refs(&h.with, &mut secret_names);
    }
    if let Some(c) = gitops.and_then(|g| g.credentials.as_ref()) {
        for r in [&c.token, &c.ssh_key].into_iter().flatten() {
            secret_refs(r, &mut secret_names);
        }
    }
    let name = format!("rollwright-{}", spec.metadata.name);
    let ns = &target.namespace;
    let mut out = String::new();
    out.push_str(&format!(
        "# Least privilege for `rollwright run {}` in {}/{} (derived from its steps).\n",
        args.spec.display(),
        target.context,
        ns
    ));
    if !cluster_scoped.is_empty() {
        out.push_str(&format!(
            "# NOTE: the manifests include cluster-scoped kinds ({}); a Role cannot grant them: use a ClusterRole.\n",
            cluster_scoped.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    out.push_str(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {name}\n  namespace: {ns}\nrules:\n"
    ));
    if rules.is_empty() && secret_names.is_empty() {
        out.push_str("  []\n");
    }
    for ((g, r), verbs) in &rules {
        let steps = why.get(&(g.clone(), r.clone())).map_or_else(String::new, |s| {
            format!("  # {}", s.iter().cloned().collect::<Vec<_>>().join(", "))
        });
        out.push_str(&format!(
            "  - apiGroups: [\"{g}\"]\n    resources: [{r}]\n    verbs: [{}]{steps}\n",
            verbs.iter().copied().collect::<Vec<_>>().join(", ")
        ));
    }
    if !secret_names.is_empty() {
        out.push_str(&format!(
            "  - apiGroups: [\"\"]\n    resources: [secrets]\n    resourceNames: [{}]\n    verbs: [get]  # secretRef\n",
            secret_names.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    out.push_str(&format!(
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {name}\n  namespace: {ns}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: {name}\nsubjects:\n  - kind: ServiceAccount\n    name: {}\n    namespace: {ns}\n",
        args.service_account
    ));
    if let Some(g) = gitops {
        // Reading the sync status of the one Application / Kustomization.
        let app_ns = g.app_namespace();
        let (group, resource) = match g.controller {
            rollwright_engine::spec::Controller::Argocd => ("argoproj.io", "applications"),
            rollwright_engine::spec::Controller::Flux => ("kustomize.toolkit.fluxcd.io", "kustomizations"),
        };
        out.push_str(&format!(
            "---\n# GitOps: apply, shift-traffic and rollback push to {} ({}); the run only reads the sync status.\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {name}\n  namespace: {app_ns}\nrules:\n  - apiGroups: [\"{group}\"]\n    resources: [{resource}]\n    resourceNames: [{}]\n    verbs: [get]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {name}\n  namespace: {app_ns}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: {name}\nsubjects:\n  - kind: ServiceAccount\n    name: {}\n    namespace: {ns}\n",
            g.repo, g.branch, g.app, args.service_account
        ));
    }
    print!("{out}");
    exit::OK
}
