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
    let mut g = Grants::default();
    let mut cluster_scoped = BTreeSet::new();
    // The objects the applies render: (apiVersion, kind, name).
    let mut applied: Vec<(String, String, String)> = Vec::new();
    let cx = rollwright_engine::registry::BuildContext::of_spec(&spec, false, &args.spec);
    let router = |with: &Value| {
        rollwright_steps::traffic::Router::of(&cx, with.get("provider").and_then(Value::as_str)).ok()
    };
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
    for (id, _, with) in spec
        .steps
        .iter()
        .map(|s| (&s.id, &s.kind, &s.with))
        .filter(|s| s.1 == "apply")
    {
        for m in spec.manifests.iter().filter(|m| m.step == *id) {
            match rollwright_steps::apply::manifest_objects(&m.path, &m.text) {
                Ok(o) => applied.extend(o),
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
            if let (Some(a), Some(k), Some(n)) = (
                o["apiVersion"].as_str(),
                o["kind"].as_str(),
                o["metadata"]["name"].as_str(),
            ) {
                applied.push((a.to_owned(), k.to_owned(), n.to_owned()));
            }
        }
    }
    let canary_workload = applied
        .iter()
        .find(|(_, k, _)| matches!(k.as_str(), "Deployment" | "StatefulSet"))
        .cloned();
    let route = |g: &mut Grants, id: &str, with: &Value, verbs: &[&'static str]| {
        if let Some(r) = router(with) {
            let o = r.object();
            g.grant(id, &o.api_version, &o.kind, Some(&o.name), verbs);
        }
    };
    let changes = gitops.is_none();
    let mut unnamed_stable: BTreeSet<String> = BTreeSet::new();
    for (id, kind, with) in &work {
        match kind.as_str() {
            "apply" => {
                for (a, k, n) in applied.iter().filter(|_| !id.ends_with("(compensation)")) {
                    if rollwright_steps::apply::CLUSTER_SCOPED.contains(&k.as_str()) {
                        cluster_scoped.insert(k.clone());
                    }
                    // get: record the last known-good state (and who manages
                    // it); patch: server-side apply, create when it is new.
                    let verbs: &[&'static str] = if changes {
                        &["get", "patch", "create"]
                    } else {
                        &["get"]
                    };
                    g.grant(id, a, k, Some(n), verbs);
                }
            }
            "wait-ready" => {
                let listed: Vec<(String, String, String)> = with
                    .get("resources")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter_map(|r| r.split_once('/'))
                    .filter_map(|(k, n)| {
                        rollwright_steps::wait_ready::api_version_of(k)
                            .map(|av| (av.to_owned(), k.to_owned(), n.to_owned()))
                    })
                    .collect();
                let targets = if listed.is_empty() {
                    applied.clone()
                } else {
                    listed
                };
                for (a, k, n) in targets {
                    g.grant(id, &a, &k, Some(&n), &["get"]);
                    // Waiting for the next change is a watch on the kind.
                    g.grant(id, &a, &k, None, &["list", "watch"]);
                }
                g.grant(id, "v1", "Pod", None, &["list"]);
            }
            "shift-traffic" => {
                route(
                    &mut g,
                    id,
                    with,
                    if changes { &["get", "patch"] } else { &["get"] },
                );
                // Readiness of the canary before routing to it.
                if let Some(r) = router(with) {
                    use rollwright_steps::traffic::Provider;
                    match r.provider {
                        Provider::Istio => {
                            g.grant(
                                id,
                                "networking.istio.io/v1beta1",
                                "DestinationRule",
                                None,
                                &["list"],
                            );
                            // The Service is the route's host, read at run time.
                            g.grant(id, "v1", "Service", None, &["get"]);
                            g.grant(id, "v1", "Pod", None, &["list"]);
                        }
                        Provider::Seldon => {
                            let d = format!("{}-{}", r.route, r.canary);
                            g.grant(id, "apps/v1", "Deployment", Some(&d), &["get"]);
                        }
                        Provider::Kserve => {}
                        _ => {
                            g.grant(id, "v1", "Service", Some(&r.canary), &["get"]);
                            g.grant(id, "v1", "Pod", None, &["list"]);
                        }
                    }
                }
            }
            "promote" => {
                let compensation = id.ends_with("(compensation)");
                use rollwright_steps::traffic::Provider;
                let Some(r) = router(with) else { continue };
                match r.provider {
                    // The InferenceService (a patch) / SeldonDeployment (an
                    // update) itself; the compensation restores it.
                    Provider::Kserve => route(
                        &mut g,
                        id,
                        with,
                        if changes {
                            &["get", "patch", "update"]
                        } else {
                            &["get"]
                        },
                    ),
                    Provider::Seldon => route(
                        &mut g,
                        id,
                        with,
                        if changes { &["get", "update"] } else { &["get"] },
                    ),
                    _ => {
                        route(
                            &mut g,
                            id,
                            with,
                            if changes { &["get", "patch"] } else { &["get"] },
                        );
                        if !compensation {
                            // Removed, or scaled to 0.
                            if let Some((a, k, n)) = &canary_workload {
                                g.grant(
                                    id,
                                    a,
                                    k,
                                    Some(n),
                                    if changes {
                                        &["get", "patch", "delete"]
                                    } else {
                                        &["get"]
                                    },
                                );
                            }
                            if r.provider == Provider::Istio {
                                g.grant(
                                    id,
                                    "networking.istio.io/v1beta1",
                                    "DestinationRule",
                                    None,
                                    &["list"],
                                );
                            } else {
                                g.grant(id, "v1", "Service", Some(&r.stable), &["get"]);
                            }
                        }
                        // The stable workload: named by `with.stable`, else
                        // found through the route's stable backend.
                        let stable = with
                            .get("stable")
                            .and_then(Value::as_str)
                            .and_then(|s| s.split_once('/'));
                        match stable {
                            Some((k, n)) => {
                                let a = rollwright_steps::wait_ready::api_version_of(k).unwrap_or("apps/v1");
                                g.grant(
                                    id,
                                    a,
                                    k,
                                    Some(n),
                                    if changes { &["get", "update"] } else { &["get"] },
                                );
                            }
                            None => {
                                unnamed_stable.insert(id.trim_end_matches(" (compensation)").to_owned());
                                g.grant(id, "apps/v1", "Deployment", None, &["list"]);
                                g.grant(
                                    id,
                                    "apps/v1",
                                    "Deployment",
                                    None,
                                    if changes { &["get", "update"] } else { &["get"] },
                                );
                            }
                        }
                    }
                }
            }
            "rollback" if gitops.is_some() => {}
            "rollback" => {
                route(&mut g, id, with, &["get", "patch"]);
                for (a, k, n) in &applied {
                    g.grant(id, a, k, Some(n), &["get", "update", "create", "delete"]);
                }
                // A promote's stable workload, as it was before.
                for p in spec.steps.iter().filter(|s| s.kind == "promote") {
                    if router(&p.with).is_some_and(|r| {
                        matches!(
                            r.provider,
                            rollwright_steps::traffic::Provider::Kserve
                                | rollwright_steps::traffic::Provider::Seldon
                        )
                    }) {
                        route(&mut g, id, &p.with, &["get", "update"]);
                        continue;
                    }
                    match p
                        .with
                        .get("stable")
                        .and_then(Value::as_str)
                        .and_then(|s| s.split_once('/'))
                    {
                        Some((k, n)) => {
                            let a = rollwright_steps::wait_ready::api_version_of(k).unwrap_or("apps/v1");
                            g.grant(id, a, k, Some(n), &["get", "update", "create"]);
                        }
                        None => g.grant(id, "apps/v1", "Deployment", None, &["get", "update", "create"]),
                    }
                }
            }
            "hold" => {
                let pods = with["analysis"]["metrics"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["provider"] == "kubernetes"));
                if pods {
                    g.grant(id, "v1", "Pod", None, &["list"]);
                }
            }
            _ => {}
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
    for id in &unnamed_stable {
        out.push_str(&format!(
            "# NOTE: `{id}` finds the stable workload through the route at run time, so it may update any Deployment here; name it (`stable: Deployment/NAME` in its `with`, e.g. through `customize.with`) to grant that one only.\n"
        ));
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
