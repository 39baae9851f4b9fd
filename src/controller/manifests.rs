//! `rollwright controller manifests`: what installs the controller.
//!
//! The CRD and the admission policy (as `rollwright schema --crd`), a
//! namespace, a ServiceAccount, a ClusterRole (a Role with
//! `--watch-namespace`) whose rules are derived from the step kinds and the
//! traffic providers this build has, a Role in the controller's own
//! namespace for its leader Lease and journal key only, a two-replica
//! Deployment (requests and limits, probes on `/healthz` and `/readyz`,
//! read-only root filesystem) and a PodDisruptionBudget that keeps one
//! replica up.

use std::collections::BTreeMap;

use clap::Args;
use serde_json::{Value, json};

use crate::error::{CliError, CliResult};
use crate::exit;

#[derive(Args)]
pub struct ManifestsArgs {
    /// The controller's namespace.
    #[arg(long, value_name = "NS", default_value = "rollwright-system")]
    namespace: String,
    /// The controller's image (built with the Dockerfile in the repository).
    #[arg(long, value_name = "IMAGE", default_value = concat!("rollwright:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Run RolloutRuns of this namespace only (a Role there instead of a ClusterRole).
    #[arg(long, value_name = "NS")]
    watch_namespace: Option<String>,
}

const NAME: &str = "rollwright-controller";

/// `(apiVersion, kind)` → verbs the controller needs on it in the
/// namespaces it runs rollouts in.
fn needs() -> BTreeMap<(String, String), Vec<&'static str>> {
    const CHANGE: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete"];
    let mut m: BTreeMap<(String, String), Vec<&'static str>> = BTreeMap::new();
    let mut add = |api: &str, kind: &str, verbs: &[&'static str]| {
        let e = m.entry((api.to_owned(), kind.to_owned())).or_default();
        for v in verbs {
            if !e.contains(v) {
                e.push(v);
            }
        }
    };
    // RolloutRuns, their status, their journal and their Events.
    // `patch`: the finalizer that keeps a running RolloutRun until its
    // rollback is done.
    add(
        "rollwright.dev/v1alpha1",
        "RolloutRun",
        &["get", "list", "watch", "patch"],
    );
    add(
        "rollwright.dev/v1alpha1",
        "RolloutRun/status",
        &["get", "update", "patch"],
    );
    add("v1", "ConfigMap", &["get", "list", "create", "update"]);
    add("events.k8s.io/v1", "Event", &["create", "patch"]);
    // One run per target.
    add(
        "coordination.k8s.io/v1",
        "Lease",
        &["get", "create", "update", "delete"],
    );
    // What the steps change and watch: the routing object of every traffic
    // provider, the workloads of every serving platform.
    for name in rollwright_steps::traffic::names() {
        if let Some(p) = rollwright_steps::traffic::provider(name) {
            let (api, kind) = p.route_kind();
            add(api, kind, CHANGE);
        }
    }
    add("apps/v1", "Deployment", CHANGE);
    add("v1", "Service", CHANGE);
    add("apps/v1", "ReplicaSet", &["get", "list", "watch"]);
    add("v1", "Pod", &["get", "list", "watch"]);
    m
}

fn rules() -> Vec<Value> {
    needs()
        .into_iter()
        .map(|((api, kind), verbs)| {
            let group = api.split_once('/').map_or("", |(g, _)| g);
            let (kind, sub) = kind
                .split_once('/')
                .map_or((kind.as_str(), None), |(k, s)| (k, Some(s)));
            let mut resource = crate::rbac_cmd::plural(kind);
            if let Some(s) = sub {
                resource = format!("{resource}/{s}");
            }
            json!({"apiGroups": [group], "resources": [resource], "verbs": verbs})
        })
        .collect()
}

fn documents(a: &ManifestsArgs) -> Vec<Value> {
    let ns = &a.namespace;
    let labels = json!({"app.kubernetes.io/name": NAME});
    let scoped = a.watch_namespace.as_deref();
    let (role_kind, binding_kind) = match scoped {
        Some(_) => ("Role", "RoleBinding"),
        None => ("ClusterRole", "ClusterRoleBinding"),
    };
    let mut role_meta = json!({"name": NAME});
    let mut binding_meta = json!({"name": NAME});
    if let Some(w) = scoped {
        role_meta["namespace"] = w.into();
        binding_meta["namespace"] = w.into();
    }
    let mut args = vec![
        "controller".to_owned(),
        "--listen".into(),
        "0.0.0.0:8080".into(),
        "--state-dir".into(),
        "/tmp/rollwright".into(),
    ];
    if let Some(w) = scoped {
        args.extend(["--namespace".into(), w.to_owned()]);
    }
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": ns}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": role_kind, "metadata": role_meta,
               "rules": rules()}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding_kind, "metadata": binding_meta,
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": NAME},
               "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": format!("{NAME}-self"), "namespace": ns},
        "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "resourceNames": [NAME], "verbs": ["get", "update"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"],
             "resourceNames": ["rollwright-journal-key"], "verbs": ["get"]}
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": format!("{NAME}-self"), "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("{NAME}-self")},
               "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}]}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {"labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}}]}},
                    "containers": [{
                        "name": "controller",
                        "image": a.image,
                        "args": args,
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
                        ],
                        "ports": [{"name": "metrics", "containerPort": 8080}],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"cpu": "1", "memory": "512Mi"}},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "scratch", "mountPath": "/tmp/rollwright"}]
                    }],
                    "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}]
                }
            }
        }}),
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
               "metadata": {"name": NAME, "namespace": ns},
               "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}}}),
    ]
}

pub fn print(a: &ManifestsArgs) -> CliResult {
    let mut out = crate::rolloutrun::install_yaml();
    for d in documents(a) {
        let text =
            serde_saphyr::to_string(&d).map_err(|e| CliError::usage(format!("cannot write YAML: {e}")))?;
        out.push_str("---\n");
        out.push_str(&text);
    }
    print!("{out}");
    Ok(exit::OK)
}
