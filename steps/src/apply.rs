//! `apply`: render manifests and server-side apply them, recording the last
//! known-good state first. Its role is [`Role::Promote`]: in production a
//! gate-check must dominate it.

use std::sync::Arc;

use rollwright_engine::Code;
use rollwright_engine::exec::{BoxFuture, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::{BuildContext, Finding, Role, StepKind};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::cluster::{Cluster, ObjRef, restorable};
use crate::common::config;

/// `with` of an apply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApplyConfig {
    /// Manifest template path.
    #[serde(default)]
    pub template: Option<String>,
    /// Inline objects.
    #[serde(default)]
    pub manifests: Vec<Value>,
    /// SSA field manager.
    #[serde(default = "field_manager")]
    pub field_manager: String,
    /// Minimum replicas in production.
    #[serde(default = "two")]
    pub min_replicas: u32,
    /// Auth policy protecting exposed endpoints.
    #[serde(default)]
    pub auth_policy: Option<String>,
    /// Change objects a GitOps controller tracks directly anyway.
    #[serde(default)]
    pub allow_gitops_managed: bool,
}

fn field_manager() -> String {
    "rollwright".into()
}
fn two() -> u32 {
    2
}

/// The apply kind.
pub struct Apply;

impl StepKind for Apply {
    fn name(&self) -> &'static str {
        "apply"
    }
    fn summary(&self) -> &'static str {
        "renders, policy-checks and server-side applies manifests, recording what it replaces"
    }
    fn schema(&self) -> &'static str {
        include_str!("../../schemas/steps/apply.schema.json")
    }
    fn role(&self) -> Role {
        Role::Promote
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["objects", "revision"]
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(c) = config::<ApplyConfig>(with, &mut out) else {
            return out;
        };
        match (&c.template, c.manifests.is_empty()) {
            (None, true) => out.push(
                Finding::new(
                    "",
                    Code::InvalidStepConfig,
                    "apply needs `template` or `manifests`",
                )
                .with_help("e.g. `template: manifests/isvc.yaml.hbs`"),
            ),
            (Some(_), false) => out.push(Finding::new(
                "/manifests",
                Code::InvalidStepConfig,
                "apply takes either `template` or `manifests`, not both",
            )),
            _ => {}
        }
        out
    }
    fn build(&self, with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, String> {
        let c: ApplyConfig = serde_json::from_value(with.clone()).map_err(|e| e.to_string())?;
        let cluster = Cluster::of(cx)?;
        let production = cx.target.as_ref().is_some_and(|t| t.production);
        let mut objects = Vec::new();
        if c.template.is_some() {
            let m = cx
                .manifests
                .iter()
                .find(|m| m.step == cx.step)
                .ok_or_else(|| format!("the manifest template of `{}` was not rendered", cx.step))?;
            objects.extend(parse_manifests(&m.path, &m.text)?);
        }
        for (i, o) in c.manifests.iter().enumerate() {
            objects.push(Placed {
                origin: format!("with.manifests[{i}]"),
                line_of: None,
                object: o.clone(),
            });
        }
        for p in &mut objects {
            if !CLUSTER_SCOPED.contains(&p.object["kind"].as_str().unwrap_or_default())
                && p.object["metadata"]["namespace"].is_null()
                && p.object["metadata"].is_object()
            {
                p.object["metadata"]["namespace"] = Value::from(cluster.namespace.clone());
            }
        }
        let problems = policy(&objects, &c, production, &cluster.namespace);
        if !problems.is_empty() {
            return Err(format!(
                "the manifests break the deployment policy (nothing was sent to the cluster):\n  {}",
                problems.join("\n  ")
            ));
        }
        Ok(Arc::new(ApplyStep {
            objects: objects.into_iter().map(|p| p.object).collect(),
            gitops: crate::gitops::GitOpsTarget::of(cx)?,
            allow_gitops_managed: c.allow_gitops_managed,
            cluster,
            manager: c.field_manager,
        }))
    }
}

/// `(apiVersion, kind)` of every object of a rendered manifest.
///
/// # Errors
/// The manifest does not parse (located).
pub fn manifest_kinds(path: &str, text: &str) -> Result<Vec<(String, String)>, String> {
    Ok(parse_manifests(path, text)?
        .into_iter()
        .map(|p| {
            (
                p.object["apiVersion"].as_str().unwrap_or_default().to_owned(),
                p.object["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// Kinds without a namespace.
pub const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
];

/// An object and where it was written.
struct Placed {
    /// `path` of the template, or `with.manifests[i]`.
    origin: String,
    /// Positions in the rendered document, with the line offset of the document.
    line_of: Option<(rollwright_engine::yaml::Document, u32)>,
    object: Value,
}

impl Placed {
    fn at(&self, pointer: &str) -> String {
        match &self.line_of {
            Some((doc, offset)) => {
                let span = doc.locate(pointer);
                format!("{}:{}:{}", self.origin, span.start.line + offset, span.start.col)
            }
            None => format!("{}{}", self.origin, pointer.replace('/', ".")),
        }
    }
}

/// The objects of a rendered manifest (documents separated by `---`).
fn parse_manifests(path: &str, text: &str) -> Result<Vec<Placed>, String> {
    let mut out = Vec::new();
    let mut start_line = 0u32;
    let mut chunk = String::new();
    let flush = |chunk: &str, first: u32, out: &mut Vec<Placed>| -> Result<(), String> {
        if chunk
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Ok(());
        }
        let doc =
            rollwright_engine::yaml::load_str(chunk, &rollwright_engine::Limits::default()).map_err(|d| {
                let first_diag = d.first().map_or_else(String::new, |d| {
                    format!(
                        "{}:{}: {}",
                        d.span.start.line + first,
                        d.span.start.col,
                        d.message
                    )
                });
                format!("rendered manifest {path}:{first_diag}")
            })?;
        match &doc.value {
            Value::Object(_) => {
                let object = doc.value.clone();
                out.push(Placed {
                    origin: path.to_owned(),
                    line_of: Some((doc, first)),
                    object,
                });
            }
            Value::Array(items) => {
                for o in items {
                    out.push(Placed {
                        origin: path.to_owned(),
                        line_of: None,
                        object: o.clone(),
                    });
                }
            }
            _ => return Err(format!("rendered manifest {path}: a document is not an object")),
        }
        Ok(())
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" {
            flush(&chunk, start_line, &mut out)?;
            chunk.clear();
            start_line = u32::try_from(i + 1).unwrap_or(0);
        } else {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    flush(&chunk, start_line, &mut out)?;
    for p in &out {
        for f in ["apiVersion", "kind"] {
            if !p.object[f].is_string() {
                return Err(format!("{}: an object needs `{f}`", p.at("")));
            }
        }
        if !p.object["metadata"]["name"].is_string() {
            return Err(format!("{}: an object needs `metadata.name`", p.at("/metadata")));
        }
    }
    Ok(out)
}

/// Env names whose literal values would be credentials.
fn sensitive(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "APIKEY",
        "CREDENTIAL",
        "PRIVATE_KEY",
        "ACCESS_KEY",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// The pod specs of an object: (pointer, spec).
fn pod_specs(obj: &Value) -> Vec<(String, &Value)> {
    match obj["kind"].as_str().unwrap_or_default() {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            vec![("/spec/template/spec".into(), &obj["spec"]["template"]["spec"])]
        }
        "Pod" => vec![("/spec".into(), &obj["spec"])],
        "InferenceService" => vec![("/spec/predictor".into(), &obj["spec"]["predictor"])],
        "SeldonDeployment" => obj["spec"]["predictors"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .flat_map(|(i, p)| {
                p["componentSpecs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(move |(j, c)| {
                        (
                            format!("/spec/predictors/{i}/componentSpecs/{j}/spec"),
                            &c["spec"],
                        )
                    })
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The containers of a pod spec (an InferenceService predictor's model counts as one).
fn containers<'a>(base: &str, spec: &'a Value) -> Vec<(String, &'a Value)> {
    let mut out = Vec::new();
    for list in ["containers", "initContainers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            out.push((format!("{base}/{list}/{i}"), c));
        }
    }
    if spec["model"].is_object() {
        out.push((format!("{base}/model"), &spec["model"]));
    }
    out
}

/// The deployment policy: every violation, located.
fn policy(objects: &[Placed], c: &ApplyConfig, production: bool, namespace: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in objects {
        let o = &p.object;
        let kind = o["kind"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let what = format!("{kind} {name}");
        if kind == "Secret" {
            out.push(format!(
                "{}: {what}: rollwright does not manage Secrets (their data would be journaled); create them out of band and reference them",
                p.at("/kind")
            ));
        }
        if let Some(ns) = o["metadata"]["namespace"].as_str()
            && ns != namespace
        {
            out.push(format!(
                "{}: {what} is in namespace `{ns}`, not the target's `{namespace}`",
                p.at("/metadata/namespace")
            ));
        }
        for (base, spec) in pod_specs(o) {
            for (at, container) in containers(&base, spec) {
                for (i, e) in container["env"].as_array().into_iter().flatten().enumerate() {
                    let env = e["name"].as_str().unwrap_or_default();
                    if sensitive(env) && e["value"].as_str().is_some_and(|v| !v.is_empty()) {
                        out.push(format!(
                            "{}: {what}: env {env} has a literal value; use `valueFrom.secretKeyRef`",
                            p.at(&format!("{at}/env/{i}/value"))
                        ));
                    }
                }
                if production {
                    let r = &container["resources"];
                    let missing: Vec<String> = [
                        ("requests", "cpu"),
                        ("requests", "memory"),
                        ("limits", "cpu"),
                        ("limits", "memory"),
                    ]
                    .iter()
                    .filter(|(a, b)| r[a][b].is_null())
                    .map(|(a, b)| format!("{a}.{b}"))
                    .collect();
                    if !missing.is_empty() {
                        out.push(format!(
                            "{}: {what}: production containers need CPU and memory requests and limits (missing {})",
                            p.at(&at),
                            missing.join(", ")
                        ));
                    }
                }
            }
            if production {
                let sa = spec["serviceAccountName"].as_str();
                if sa.is_none_or(|s| s.is_empty() || s == "default") {
                    out.push(format!(
                        "{}: {what}: production workloads need a dedicated service account (`serviceAccountName`, not `default`)",
                        p.at(&base)
                    ));
                }
            }
        }
        if production {
            let replicas = match kind {
                "Deployment" | "StatefulSet" => {
                    Some(("/spec/replicas", o["spec"]["replicas"].as_u64().unwrap_or(1)))
                }
                "InferenceService" => Some((
                    "/spec/predictor/minReplicas",
                    o["spec"]["predictor"]["minReplicas"].as_u64().unwrap_or(1),
                )),
                _ => None,
            };
            if let Some((at, n)) = replicas
                && n < u64::from(c.min_replicas)
            {
                out.push(format!(
                    "{}: {what}: {n} replica(s), production needs at least {} (`min-replicas`)",
                    p.at(at),
                    c.min_replicas
                ));
            }
            let exposed = match kind {
                "Service" => matches!(o["spec"]["type"].as_str(), Some("LoadBalancer" | "NodePort")),
                "Ingress" => true,
                _ => false,
            };
            let declared = c.auth_policy.as_deref();
            let annotated = o["metadata"]["annotations"]["rollwright.dev/auth-policy"].as_str();
            if exposed && (declared.is_none() || annotated != declared) {
                out.push(format!(
                    "{}: {what} exposes the model outside the cluster; declare `auth-policy: NAME` on the apply and annotate the object `rollwright.dev/auth-policy: NAME`",
                    p.at("/kind")
                ));
            }
        }
    }
    out
}

struct ApplyStep {
    objects: Vec<Value>,
    gitops: Option<Arc<crate::gitops::GitOpsTarget>>,
    allow_gitops_managed: bool,
    cluster: Arc<Cluster>,
    manager: String,
}

impl ApplyStep {
    /// GitOps: the rendered objects written into the repository, committed,
    /// pushed and synced.
    async fn commit(&self, g: &crate::gitops::GitOpsTarget, cx: &StepContext) -> Result<Progress, StepError> {
        let names: Vec<String> = self
            .objects
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    o["kind"].as_str().unwrap_or_default(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        let summary = format!("apply {}", names.join(", "));
        let progress = g
            .commit_and_sync(cx, "apply", &summary, |root| {
                self.objects
                    .iter()
                    .try_for_each(|o| crate::gitops::upsert(root, o, g.namespace()))
            })
            .await?;
        Ok(match progress {
            Progress::Done { mut outputs } => {
                outputs.insert("revision".into(), outputs["commit"].clone());
                outputs.insert(
                    "objects".into(),
                    Value::Array(names.into_iter().map(Value::from).collect()),
                );
                Progress::Done { outputs }
            }
            wait => wait,
        })
    }
}

impl Step for ApplyStep {
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            if let Some(g) = &self.gitops {
                return self.commit(g, cx).await;
            }
            // The last known-good state of everything this step touches,
            // recorded (and journaled) before the first change.
            if cx.recalled("objects").is_none() {
                let mut before = Vec::new();
                for o in &self.objects {
                    let r = ObjRef::of(o, &self.cluster.namespace).ok_or_else(|| {
                        StepError::failed("an object needs apiVersion, kind and metadata.name")
                    })?;
                    let current = self.cluster.get(&r).await?;
                    if let Some(by) = current.as_ref().and_then(crate::gitops::managed_by)
                        && !self.allow_gitops_managed
                    {
                        return Err(StepError::failed(format!(
                            "{r} is managed by {by}: applying it directly would fight the controller; declare `target.gitops` so the change goes through Git (or `allow-gitops-managed: true` if the controller ignores these fields)"
                        )));
                    }
                    before.push(json!({"ref": r, "existed": current.is_some(), "object": current.as_ref().map(restorable)}));
                }
                cx.remember("objects", Value::Array(before))?;
            }
            let mut applied = Vec::new();
            for o in &self.objects {
                let out = self.cluster.apply(o, &self.manager).await?;
                applied.push(json!({
                    "apiVersion": out["apiVersion"], "kind": out["kind"],
                    "namespace": out["metadata"]["namespace"], "name": out["metadata"]["name"],
                    "resourceVersion": out["metadata"]["resourceVersion"], "generation": out["metadata"]["generation"],
                }));
            }
            let mut outputs = Map::new();
            outputs.insert(
                "revision".into(),
                applied
                    .last()
                    .map_or(Value::Null, |a| a["resourceVersion"].clone()),
            );
            outputs.insert("objects".into(), Value::Array(applied));
            Ok(Progress::Done { outputs })
        })
    }

    fn compensate<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            if let Some(g) = &self.gitops {
                return g.revert_run(cx, None).await.map(|_| ());
            }
            let owner = [cx.owner.clone()];
            let done = crate::restore::objects(&self.cluster, cx, Some(&owner), true).await?;
            crate::restore::report(cx, &done);
            Ok(())
        })
    }

    fn settle<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            if let Some(g) = &self.gitops {
                return g.revert_settled(cx).await;
            }
            let owner = [cx.owner.clone()];
            crate::restore::settled(
                &self.cluster,
                cx,
                Some(&owner),
                std::time::Duration::from_millis(500),
            )
            .await
        })
    }
}
