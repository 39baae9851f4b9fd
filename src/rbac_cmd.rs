//! `rollwright rbac SPEC`: the least-privilege Role and RoleBinding a run
//! of the spec needs, derived from its steps.

use crate::error::{CliError, CliResult};
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

/// What the run needs: `(apiGroup, resource, name)` → verbs and the steps
/// that need them. `name` is `None` where the object is not known from the
/// files (list and watch, or an object found at run time).
#[derive(Default)]
struct Grants {
    map: BTreeMap<Object, (BTreeSet<&'static str>, BTreeSet<String>)>,
}

/// `(apiGroup, resource, name)`.
type Object = (String, String, Option<String>);

/// One rule: apiGroup, resource, resourceNames, verbs, the steps that need it.
struct Rule {
    group: String,
    resource: String,
    names: Vec<String>,
    verbs: Vec<&'static str>,
    steps: BTreeSet<String>,
}

impl Grants {
    fn grant(
        &mut self,
        step: &str,
        api_version: &str,
        kind: &str,
        name: Option<&str>,
        verbs: &[&'static str],
    ) {
        // RBAC cannot restrict `create` by name (the API server authorizes
        // a create before the object has one): a named `create` would never
        // match, so it is granted on the resource.
        if name.is_some() && verbs.contains(&"create") {
            self.grant(step, api_version, kind, None, &["create"]);
            let rest: Vec<&'static str> = verbs.iter().copied().filter(|v| *v != "create").collect();
            if !rest.is_empty() {
                self.grant(step, api_version, kind, name, &rest);
            }
            return;
        }
        let e = self
            .map
            .entry((group(api_version), plural(kind), name.map(str::to_owned)))
            .or_default();
        e.0.extend(verbs.iter().copied());
        e.1.insert(step.to_owned());
    }

    /// Rules: objects with the same verbs share one rule (`resourceNames`);
    /// unnamed grants are rules of their own.
    fn rules(&self) -> Vec<Rule> {
        type Key = (String, String, bool, Vec<&'static str>);
        let mut out: BTreeMap<Key, (Vec<String>, BTreeSet<String>)> = BTreeMap::new();
        for ((g, r, name), (verbs, steps)) in &self.map {
            let e = out
                .entry((
                    g.clone(),
                    r.clone(),
                    name.is_none(),
                    verbs.iter().copied().collect(),
                ))
                .or_default();
            e.0.extend(name.clone());
            e.1.extend(steps.iter().cloned());
        }
        out.into_iter()
            .map(|((group, resource, _, verbs), (names, steps))| Rule {
                group,
                resource,
                names,
                verbs,
                steps,
            })
            .collect()
    }
}

pub(crate) fn plural(kind: &str) -> String {
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

pub fn run(args: &RbacArgs) -> CliResult {
    let overrides: Vec<(String, Value)> =
        match args.set.iter().map(|s| crate::plan_cmd::parse_set(s)).collect() {
            Ok(o) => o,
            Err(e) => return Err(CliError::usage(e.to_string())),
        };
    let policy = crate::run_cmd::discover_policy(args.policy.as_deref())?;
    let linter = crate::run_cmd::linter(policy, args.root.as_deref())?;
    let (_, spec) = crate::run_cmd::prepare(&linter, &args.spec, &overrides)?;
    let Some(target) = &spec.target else {
        return Err(CliError::usage(format!(
            "{}: the spec has no `target`: nothing to grant",
            args.spec.display()
        )));
    };
    // A GitOps target is changed through Git: the steps only read the cluster.
    let cx = rollwright_engine::registry::BuildContext::of_spec(&spec, false, &args.spec);
    let gitops = rollwright_steps::target::gitops(&cx);
    let gitops = gitops.as_ref();
    let mut g = Grants::default();
    let mut cluster_scoped = BTreeSet::new();
    let mut notes = BTreeSet::new();
    let steps: Vec<(String, String, Value)> = spec
        .steps
        .iter()
        .map(|s| (s.id.clone(), s.kind.clone(), s.with.clone()))
        .collect();
    // Steps, then the compensations that undo them (they restore what the
    // steps changed): each kind says what it needs.
    let reg = rollwright_steps::registry();
    let work = spec.steps.iter().map(|s| (s, &s.kind, &s.with, false)).chain(
        spec.steps
            .iter()
            .filter_map(|s| s.compensate.as_ref().map(|c| (s, &c.kind, &c.with, true))),
    );
    for (step, kind, with, compensation) in work {
        let Some(k) = reg.get(kind) else { continue };
        let mut build = cx.clone();
        build.step.clone_from(&step.id);
        let acx = rollwright_engine::registry::AccessContext {
            build: &build,
            steps: &steps,
            compensation,
        };
        let label = if compensation {
            format!("{} (compensation)", step.id)
        } else {
            step.id.clone()
        };
        for a in k.access(with, &acx) {
            // A Role cannot grant cluster-scoped kinds: said once, below.
            if rollwright_steps::apply::CLUSTER_SCOPED.contains(&a.kind.as_str()) {
                cluster_scoped.insert(a.kind.clone());
            }
            notes.extend(a.note.clone());
            g.grant(&label, &a.api_version, &a.kind, a.name.as_deref(), &a.verbs);
        }
    }
    // One run per target: the run lock.
    g.grant(
        "(run lock)",
        "coordination.k8s.io/v1",
        "Lease",
        Some(rollwright_steps::lease::LEASE_NAME),
        &["get", "create", "update", "delete"],
    );
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
    for s in &spec.steps {
        secret_refs(&s.with, &mut secret_names);
        if let Some(c) = &s.compensate {
            secret_refs(&c.with, &mut secret_names);
        }
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
    for n in &notes {
        out.push_str(&format!("# NOTE: {n}\n"));
    }
    out.push_str(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {name}\n  namespace: {ns}\nrules:\n"
    ));
    if g.map.is_empty() && secret_names.is_empty() {
        out.push_str("  []\n");
    }
    for Rule {
        group,
        resource,
        names,
        verbs,
        steps,
    } in g.rules()
    {
        let names = if names.is_empty() {
            String::new()
        } else {
            format!("\n    resourceNames: [{}]", names.join(", "))
        };
        out.push_str(&format!(
            "  - apiGroups: [\"{group}\"]\n    resources: [{resource}]{names}\n    verbs: [{}]  # {}\n",
            verbs.join(", "),
            steps.into_iter().collect::<Vec<_>>().join(", ")
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
        let (api_version, kind, _) = g.sync_kind();
        let (group, resource) = (group(api_version), plural(kind));
        out.push_str(&format!(
            "---\n# GitOps: apply, shift-traffic and rollback push to {} ({}); the run only reads the sync status.\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {name}\n  namespace: {app_ns}\nrules:\n  - apiGroups: [\"{group}\"]\n    resources: [{resource}]\n    resourceNames: [{}]\n    verbs: [get]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: {name}\n  namespace: {app_ns}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: {name}\nsubjects:\n  - kind: ServiceAccount\n    name: {}\n    namespace: {ns}\n",
            g.repo, g.branch, g.app, args.service_account
        ));
    }
    print!("{out}");
    Ok(exit::OK)
}
