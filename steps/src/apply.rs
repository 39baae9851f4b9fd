//! `apply`: render manifests and server-side apply them, recording the last
//! known-good state first. Its role is [`Role::Promote`]: in production a
//! gate-check must dominate it.

use std::sync::Arc;

use rollwright_engine::Code;
use rollwright_engine::exec::{BoxFuture, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::{Access, AccessContext, BuildContext, BuildError, Finding, Role, StepKind};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::cluster::{Cluster, ObjRef, restorable};
use crate::common::config;

/// Renders manifests, policy-checks them, records the last known-good state
/// of every object it touches, then server-side applies them. Exactly one of
/// `template` and `manifests`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "apply")]
pub struct ApplyConfig {
    /// Path of a manifest template (`*.yaml.hbs`), relative to the spec.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub template: Option<String>,
    /// Inline Kubernetes objects.
    #[serde(default)]
    #[schemars(length(min = 1), schema_with = "manifests")]
    pub manifests: Vec<Value>,
    /// Server-side apply field manager (default `rollwright`).
    #[serde(default = "field_manager")]
    #[schemars(length(min = 1))]
    pub field_manager: String,
    /// Smallest replica count accepted in production (default 2).
    #[serde(default = "two")]
    pub min_replicas: u32,
    /// Name of the auth policy that protects exposed endpoints (required to
    /// expose a Service or Ingress).
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub auth_policy: Option<String>,
    /// Change objects that carry Argo CD or Flux tracking labels directly
    /// anyway (refused by default: the controller would revert the change).
    /// Only for fields the controller is told to ignore (Argo CD
    /// `ignoreDifferences`, Flux `kustomize.toolkit.fluxcd.io/ssa:
    /// IfNotPresent`). Without effect on a `target.gitops` target, which
    /// always goes through Git.
    #[serde(default)]
    pub allow_gitops_managed: bool,
}

/// Inline objects: each names at least its apiVersion and kind.
fn manifests(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "items": {"type": "object", "required": ["apiVersion", "kind"]}
    })
}

fn field_manager() -> String {
    "rollwright".into()
}
fn two() -> u32 {
    2
}

/// The `type:` of this kind.
pub const NAME: &str = "apply";

/// The apply kind.
pub struct Apply;

impl StepKind for Apply {
    fn describe(&self, o: &Map<String, Value>) -> String {
        use rollwright_engine::words::scalar;
        let generations: Vec<String> = o
            .get("objects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| {
                a["generation"]
                    .as_i64()
                    .map(|g| format!("{} {} generation {g}", scalar(&a["kind"]), scalar(&a["name"])))
            })
            .collect();
        let changed: Vec<String> = o
            .get("changed")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(scalar)
            .collect();
        let mut out = if changed.is_empty() {
            rollwright_engine::words::plain(o)
        } else {
            changed.join("; ")
        };
        if !generations.is_empty() {
            out.push_str(&format!(" ({})", generations.join(", ")));
        }
        out
    }
    fn name(&self) -> &'static str {
        NAME
    }
    fn template<'a>(&self, with: &'a Value) -> Option<&'a str> {
        with.get("template").and_then(Value::as_str)
    }
    fn access(&self, with: &Value, cx: &AccessContext) -> Vec<Access> {
        if cx.compensation {
            return Vec::new();
        }
        // get: record the last known-good state (and who manages it);
        // patch: server-side apply, create when it is new.
        let verbs = crate::access::verbs_if_changing(cx, &["get", "patch", "create"]);
        crate::access::applied_by(cx, &cx.build.step, with)
            .into_iter()
            .map(|(a, k, n)| Access::new(&a, &k, Some(&n), verbs))
            .collect()
    }
    fn summary(&self) -> &'static str {
        "renders, policy-checks and server-side applies manifests, recording what it replaces"
    }
    fn schema(&self) -> &'static str {
        include_str!("../schemas/apply.schema.json")
    }
    fn generated_schema(&self) -> Option<Value> {
        Some(crate::schema::of::<ApplyConfig>())
    }
    fn role(&self) -> Role {
        Role::Promote
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["objects", "revision", "changed", "previous-version"]
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
    fn build(&self, with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        let c: ApplyConfig = serde_json::from_value(with.clone())?;
        let cluster = Cluster::of(cx)?;
        let objects = placed(&c, cx).map_err(BuildError::Config)?;
        let rules = Rules::of(cx);
        let problems = policy(&objects, &c, &rules);
        if !problems.is_empty() {
            return Err(BuildError::Config(format!(
                "the manifests break the deployment policy (nothing was sent to the cluster):\n  {}",
                problems
                    .iter()
                    .map(Problem::shown)
                    .collect::<Vec<_>>()
                    .join("\n  ")
            )));
        }
        cluster.allow(
            objects
                .iter()
                .filter_map(|p| ObjRef::of(&p.object, &cluster.namespace)),
        );
        Ok(Arc::new(ApplyStep {
            objects: objects.into_iter().map(|p| p.object).collect(),
            gitops: crate::gitops::GitOpsTarget::of(cx)?,
            allow_gitops_managed: c.allow_gitops_managed,
            cluster,
            manager: c.field_manager,
            model: cx.model.clone().map(|(_, name, version)| (name, version)),
            platform: rules.platform,
            canary: rules.canary,
        }))
    }
    fn check_rendered(&self, with: &Value, cx: &BuildContext) -> Vec<Finding> {
        let Ok(c) = serde_json::from_value::<ApplyConfig>(with.clone()) else {
            return Vec::new();
        };
        let objects = match placed(&c, cx) {
            Ok(o) => o,
            // Not rendered (a template error is reported by expansion).
            Err(_) => return Vec::new(),
        };
        policy(&objects, &c, &Rules::of(cx))
            .into_iter()
            .map(|p| match p.at {
                Some((file, line, col)) => {
                    Finding::in_file(file, line, col, Code::InvalidStepConfig, p.message)
                }
                None => Finding::new(p.with_pointer, Code::InvalidStepConfig, p.message),
            })
            .collect()
    }
}

/// The objects an apply sends, placed in the target namespace when they
/// name none, each with where it was written.
fn placed(c: &ApplyConfig, cx: &BuildContext) -> Result<Vec<Placed>, String> {
    let namespace = cx.target.as_ref().map_or("default", |t| t.namespace.as_str());
    let mut objects = Vec::new();
    if c.template.is_some() {
        let m = cx
            .manifests
            .iter()
            .find(|m| m.step == cx.step)
            .ok_or_else(|| format!("the manifest template of `{}` was not rendered", cx.step))?;
        objects.extend(rendered(m)?);
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
            p.object["metadata"]["namespace"] = Value::from(namespace.to_owned());
        }
    }
    Ok(objects)
}

/// `(apiVersion, kind, name)` of every object of a rendered manifest.
///
/// # Errors
/// The manifest does not parse (located).
pub fn manifest_objects(
    m: &rollwright_engine::spec::Manifest,
) -> Result<Vec<(String, String, String)>, String> {
    Ok(rendered(m)?
        .into_iter()
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                s(&p.object["apiVersion"]),
                s(&p.object["kind"]),
                s(&p.object["metadata"]["name"]),
            )
        })
        .collect())
}

/// Kinds without a namespace (a model rollout never creates one; the
/// cluster's discovery is asked again at run time for kinds not listed).
pub const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
    "Node",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "APIService",
    "IngressClass",
    "RuntimeClass",
    "CSIDriver",
    "ClusterIssuer",
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
        match self.loc(pointer) {
            Some((file, line, col)) => format!("{file}:{line}:{col}"),
            None => format!("{}{}", self.origin, pointer.replace('/', ".")),
        }
    }

    /// `(file, line, column)` of `pointer` in the template, when it came from one.
    fn loc(&self, pointer: &str) -> Option<(String, u32, u32)> {
        let (doc, offset) = self.line_of.as_ref()?;
        let span = doc.locate(pointer);
        Some((self.origin.clone(), span.start.line + offset, span.start.col))
    }

    fn problem(&self, pointer: &str, message: String) -> Problem {
        match self.loc(pointer) {
            Some(at) => Problem {
                at: Some(at),
                with_pointer: String::new(),
                message,
            },
            None => {
                // Inline: `with.manifests[i]` → `/manifests/i` in `with`.
                let index = self
                    .origin
                    .strip_prefix("with.manifests[")
                    .and_then(|r| r.strip_suffix(']'))
                    .unwrap_or("0");
                Problem {
                    at: None,
                    with_pointer: format!("/manifests/{index}{pointer}"),
                    message,
                }
            }
        }
    }
}

/// A policy violation, located in the template when it came from one, else
/// at a pointer in the step's `with`.
struct Problem {
    at: Option<(String, u32, u32)>,
    with_pointer: String,
    message: String,
}

impl Problem {
    fn shown(&self) -> String {
        match &self.at {
            Some((f, l, c)) => format!("{f}:{l}:{c}: {}", self.message),
            None => format!("with{}: {}", self.with_pointer.replace('/', "."), self.message),
        }
    }
}

/// What the deployment policy depends on besides the objects.
struct Rules {
    namespace: String,
    production: bool,
    platform: String,
    /// The Seldon predictor that is the canary.
    canary: String,
    /// `(name, version)` of the model the gate approves.
    model: Option<(String, String)>,
    /// How traffic is split (when it is).
    router: Option<crate::traffic::Router>,
}

impl Rules {
    fn of(cx: &BuildContext) -> Rules {
        let serving = crate::target::serving(cx);
        let serving = serving.as_ref();
        Rules {
            router: crate::traffic::Router::of(cx, None).ok(),
            namespace: cx
                .target
                .as_ref()
                .map_or_else(|| "default".into(), |t| t.namespace.clone()),
            production: cx.target.as_ref().is_some_and(|t| t.production),
            platform: serving.map_or_else(String::new, |s| s.platform.clone()),
            canary: serving
                .and_then(|s| s.canary.clone())
                .unwrap_or_else(|| "canary".into()),
            model: cx.model.clone().map(|(_, n, v)| (n, v)),
        }
    }
}

/// The objects of a rendered manifest: its documents as parsed when it was
/// rendered, else its text parsed now.
fn rendered(m: &rollwright_engine::spec::Manifest) -> Result<Vec<Placed>, String> {
    match &m.docs {
        Some(docs) => manifest_docs(&m.path, docs.iter().map(|(first, d)| Ok((*first, d.clone())))),
        None => parse_manifests(&m.path, &m.text),
    }
}

/// The objects of a rendered manifest (documents separated by `---`).
fn parse_manifests(path: &str, text: &str) -> Result<Vec<Placed>, String> {
    manifest_docs(
        path,
        rollwright_engine::yaml::split_documents(text)
            .into_iter()
            .map(|(first, chunk)| {
                rollwright_engine::yaml::load_str(&chunk, &rollwright_engine::Limits::default())
                    .map(|doc| (first, doc))
                    .map_err(|d| {
                        let first_diag = d.first().map_or_else(String::new, |d| {
                            format!(
                                "{}:{}: {}",
                                d.span.start.line + first,
                                d.span.start.col,
                                d.message
                            )
                        });
                        format!("rendered manifest {path}:{first_diag}")
                    })
            }),
    )
}

/// The objects of a rendered manifest's documents (each with the line it
/// starts at), checked.
fn manifest_docs(
    path: &str,
    docs: impl Iterator<Item = Result<(u32, rollwright_engine::yaml::Document), String>>,
) -> Result<Vec<Placed>, String> {
    let mut out = Vec::new();
    for doc in docs {
        let (first, doc) = doc?;
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
    }
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

/// Env names whose literal values would be credentials (the engine's
/// rule for specs and templates, plus substrings).
fn sensitive(name: &str) -> bool {
    if rollwright_engine::validate::sensitive_env_name(name) {
        return true;
    }
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

/// The deployment policy: every violation, located. The same function
/// refuses a run (`build`) and reports in lint and plan (`check_rendered`).
fn policy(objects: &[Placed], c: &ApplyConfig, rules: &Rules) -> Vec<Problem> {
    let (production, namespace) = (rules.production, rules.namespace.as_str());
    let mut out = Vec::new();
    for p in objects {
        let o = &p.object;
        let kind = o["kind"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let what = format!("{kind} {name}");
        if kind == "Secret" {
            out.push(p.problem(
                "/kind",
                format!(
                    "{what}: rollwright does not manage Secrets (their data would be journaled); create them out of band and reference them"
                ),
            ));
        }
        if CLUSTER_SCOPED.contains(&kind) {
            out.push(p.problem(
                "/kind",
                format!(
                    "{what} is cluster-scoped: a model rollout changes objects in the target namespace only"
                ),
            ));
        }
        if let Some(ns) = o["metadata"]["namespace"].as_str()
            && ns != namespace
        {
            out.push(p.problem(
                "/metadata/namespace",
                format!("{what} is in namespace `{ns}`, not the target's `{namespace}`"),
            ));
        }
        for (base, spec) in pod_specs(o) {
            for (at, container) in containers(&base, spec) {
                for (i, e) in container["env"].as_array().into_iter().flatten().enumerate() {
                    let env = e["name"].as_str().unwrap_or_default();
                    if sensitive(env) && e["value"].as_str().is_some_and(|v| !v.is_empty()) {
                        out.push(p.problem(
                            &format!("{at}/env/{i}/value"),
                            format!("{what}: env {env} has a literal value; use `valueFrom.secretKeyRef`"),
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
                        out.push(p.problem(
                            &at,
                            format!(
                                "{what}: production containers need CPU and memory requests and limits (missing {})",
                                missing.join(", ")
                            ),
                        ));
                    }
                }
            }
            if production {
                let sa = spec["serviceAccountName"].as_str();
                if sa.is_none_or(|s| s.is_empty() || s == "default") {
                    out.push(p.problem(
                        &base,
                        format!(
                            "{what}: production workloads need a dedicated service account (`serviceAccountName`, not `default`)"
                        ),
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
                out.push(p.problem(
                    at,
                    format!(
                        "{what}: {n} replica(s), production needs at least {} (`min-replicas`)",
                        c.min_replicas
                    ),
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
                out.push(p.problem(
                    "/kind",
                    format!(
                        "{what} exposes the model outside the cluster; declare `auth-policy: NAME` on the apply and annotate the object `rollwright.dev/auth-policy: NAME`"
                    ),
                ));
            }
        }
        // A canary starts at 0 %: applying it never sends traffic to it.
        if let Some(router) = &rules.router {
            let is_route = ObjRef::of(o, namespace)
                .is_some_and(|r| r.kind == router.object().kind && r.name == router.object().name);
            if router.provider.platform() == Some("kserve") && kind == "InferenceService" {
                let pct = &o["spec"]["predictor"]["canaryTrafficPercent"];
                if pct.as_u64() != Some(0) {
                    out.push(p.problem(
                        if pct.is_null() { "/spec/predictor" } else { "/spec/predictor/canaryTrafficPercent" },
                        format!(
                            "{what}: the new revision would get {} at once; set `canaryTrafficPercent: 0` so the canary starts at 0 % and the shifts decide",
                            if pct.is_null() { "100 %".to_owned() } else { format!("{pct} %") }
                        ),
                    ));
                }
            } else if is_route && router.canary_weight(o).is_some_and(|w| w > 0) {
                out.push(p.problem(
                    "/spec",
                    format!(
                        "{what} routes {} % to the canary as it is applied; the canary starts at 0 % and the shifts decide",
                        router.canary_weight(o).unwrap_or(0)
                    ),
                ));
            }
        }
        if let Some((model, version)) = &rules.model {
            for r in model_refs(o, model, &rules.platform, &rules.canary) {
                if !names_version(&r.value, version) {
                    out.push(p.problem(
                        &r.pointer,
                        format!(
                            "{what}: the {} `{}` is not version {version} of {model}, the version the gate approves; render it from `{{{{model.version}}}}`",
                            r.what, r.value
                        ),
                    ));
                }
            }
        }
    }
    out
}

/// A reference to a model artifact in a manifest: what `apply` deploys.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    /// JSON pointer in the object.
    pub pointer: String,
    /// `storage URI`, `model URI` or `image`.
    pub what: &'static str,
    /// The reference.
    pub value: String,
}

/// The model references of an object, per platform: an InferenceService's
/// predictor `storageUri`s (and its containers' images), the canary
/// predictor's `modelUri`s of a SeldonDeployment (other predictors serve
/// the stable version), and the images of a workload's model containers
/// (a container named like the model, or whose image is).
#[must_use]
pub fn model_refs(o: &Value, model: &str, platform: &str, seldon_canary: &str) -> Vec<ModelRef> {
    let mut out = Vec::new();
    let push = |out: &mut Vec<ModelRef>, pointer: String, what: &'static str, v: &Value| {
        if let Some(s) = v.as_str() {
            out.push(ModelRef {
                pointer,
                what,
                value: s.to_owned(),
            });
        }
    };
    match o["kind"].as_str().unwrap_or_default() {
        "InferenceService" => {
            if let Some(pred) = o["spec"]["predictor"].as_object() {
                for (k, v) in pred {
                    if v.get("storageUri").is_some() {
                        push(
                            &mut out,
                            format!("/spec/predictor/{k}/storageUri"),
                            "storage URI",
                            &v["storageUri"],
                        );
                    }
                }
                for (i, c) in o["spec"]["predictor"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    push(
                        &mut out,
                        format!("/spec/predictor/containers/{i}/image"),
                        "image",
                        &c["image"],
                    );
                }
            }
        }
        "SeldonDeployment" => {
            for (i, p) in o["spec"]["predictors"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                if platform == "seldon" && p["name"].as_str() != Some(seldon_canary) {
                    continue;
                }
                let mut stack = vec![(format!("/spec/predictors/{i}/graph"), &p["graph"])];
                while let Some((ptr, g)) = stack.pop() {
                    push(&mut out, format!("{ptr}/modelUri"), "model URI", &g["modelUri"]);
                    for (j, c) in g["children"].as_array().into_iter().flatten().enumerate() {
                        stack.push((format!("{ptr}/children/{j}"), c));
                    }
                }
            }
        }
        _ => {
            for (base, spec) in pod_specs(o) {
                for (at, c) in containers(&base, spec) {
                    let image = c["image"].as_str().unwrap_or_default();
                    let repo = image.split(['@']).next().unwrap_or(image);
                    let repo = repo
                        .rsplit_once(':')
                        .filter(|(_, t)| !t.contains('/'))
                        .map_or(repo, |(r, _)| r);
                    let last = repo.rsplit('/').next().unwrap_or(repo);
                    if c["name"].as_str() == Some(model) || last == model {
                        push(&mut out, format!("{at}/image"), "image", &c["image"]);
                    }
                }
            }
        }
    }
    out
}

/// Whether a model reference names `version`: an image tagged `V` or `vV`
/// (a digest is checked against the registry's at run time), a URI with a
/// path segment `V` or `vV`.
#[must_use]
pub fn names_version(reference: &str, version: &str) -> bool {
    let v_version = format!("v{version}");
    let matches = |s: &str| s == version || s == v_version;
    if reference.contains("://") || reference.starts_with("models:/") {
        let path = reference.split_once(":/").map_or(reference, |(_, p)| p);
        let path = path.split(['?', '#']).next().unwrap_or(path);
        return path.split(['/', '@']).any(matches);
    }
    // An image: `repo[:tag][@digest]`.
    if reference.contains("@sha256:") {
        return true;
    }
    reference
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .is_some_and(|(_, tag)| matches(tag))
}

struct ApplyStep {
    objects: Vec<Value>,
    gitops: Option<Arc<crate::gitops::GitOpsTarget>>,
    allow_gitops_managed: bool,
    cluster: Arc<Cluster>,
    manager: String,
    /// `(name, version)` the gate approves.
    model: Option<(String, String)>,
    /// Serving platform and the Seldon canary predictor.
    platform: String,
    canary: String,
}

/// The artifact this run's gate approved for `version`: `(uri, digest)`
/// from its evidence (outputs), when a gate ran.
fn approved(cx: &StepContext, version: &str) -> Option<(Option<String>, Option<String>)> {
    let outputs = cx.outputs.read().ok()?;
    outputs.values().find_map(|o| {
        (o.get("gate") == Some(&Value::Bool(true))
            && o.get("version").and_then(Value::as_str) == Some(version))
        .then(|| {
            (
                o.get("uri").and_then(Value::as_str).map(str::to_owned),
                o.get("digest").and_then(Value::as_str).map(str::to_owned),
            )
        })
    })
}

impl ApplyStep {
    /// The objects to apply now. A Seldon template describes the canary
    /// predictor only: the predictors serving now (stable) are kept as the
    /// cluster has them (a list is replaced whole by server-side apply).
    async fn objects_now(&self) -> Result<Vec<Value>, StepError> {
        let mut out = self.objects.clone();
        if self.platform != "seldon" {
            return Ok(out);
        }
        for o in &mut out {
            if o["kind"] != "SeldonDeployment" {
                continue;
            }
            let Some(r) = ObjRef::of(o, &self.cluster.namespace) else {
                continue;
            };
            let Some(live) = self.cluster.get(&r).await? else {
                continue;
            };
            let rendered: Vec<Value> = o["spec"]["predictors"].as_array().cloned().unwrap_or_default();
            let names: Vec<&str> = rendered.iter().filter_map(|p| p["name"].as_str()).collect();
            let mut predictors: Vec<Value> = live["spec"]["predictors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| {
                    let n = p["name"].as_str().unwrap_or_default();
                    n != self.canary && !names.contains(&n)
                })
                .cloned()
                .collect();
            predictors.extend(rendered);
            o["spec"]["predictors"] = Value::Array(predictors);
        }
        Ok(out)
    }

    /// The gated artifact bound to what is about to be applied: every model
    /// reference is the approved artifact (the registry's URI, or its digest
    /// for an image pinned by digest), a Seldon predictor that is not the
    /// canary keeps what it serves now, and no object is cluster-scoped —
    /// checked before anything is recorded or changed.
    async fn bind(&self, cx: &StepContext, objects: &[Value]) -> Result<(), StepError> {
        // (Through GitOps the controller applies, and the cluster need not
        // serve the kind to rollwright: the static list was checked.)
        for o in objects.iter().filter(|_| self.gitops.is_none()) {
            let r = ObjRef::of(o, &self.cluster.namespace)
                .ok_or_else(|| StepError::failed("an object needs apiVersion, kind and metadata.name"))?;
            if !self.cluster.is_namespaced(&r.api_version, &r.kind).await? {
                return Err(StepError::failed(format!(
                    "{} {} is cluster-scoped: a model rollout changes objects in the target namespace only",
                    r.kind, r.name
                )));
            }
        }
        let Some((model, version)) = &self.model else {
            return Ok(());
        };
        let (uri, digest) = approved(cx, version).unwrap_or_default();
        let trim = |s: &str| s.trim_end_matches('/').to_owned();
        for o in objects {
            let what = format!(
                "{} {}",
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            );
            for m in model_refs(o, model, &self.platform, &self.canary) {
                if m.what != "image"
                    && let Some(u) = &uri
                    && trim(&m.value) != trim(u)
                {
                    return Err(StepError::rejected(format!(
                        "refusing to apply {what}: its {} `{}` is not the artifact the gate approved for {model} version {version} (`{u}`)",
                        m.what, m.value
                    )));
                }
                if m.what == "image"
                    && let (Some((_, pinned)), Some(d)) = (m.value.split_once('@'), &digest)
                    && pinned != d
                {
                    return Err(StepError::rejected(format!(
                        "refusing to apply {what}: its image `{}` is not the artifact the gate approved for {model} version {version} (digest {d})",
                        m.value
                    )));
                }
            }
            if o["kind"] == "SeldonDeployment" && self.platform == "seldon" {
                let r = ObjRef::of(o, &self.cluster.namespace)
                    .ok_or_else(|| StepError::failed("an object needs apiVersion, kind and metadata.name"))?;
                let live = self.cluster.get(&r).await?;
                for p in o["spec"]["predictors"].as_array().into_iter().flatten() {
                    let name = p["name"].as_str().unwrap_or_default();
                    if name == self.canary {
                        continue;
                    }
                    let mut solo = o.clone();
                    solo["spec"]["predictors"] = json!([p]);
                    let want: Vec<String> = model_refs(&solo, model, "", "")
                        .into_iter()
                        .map(|m| m.value)
                        .collect();
                    let now: Option<Vec<String>> = live.as_ref().and_then(|l| {
                        l["spec"]["predictors"]
                            .as_array()?
                            .iter()
                            .find(|q| q["name"] == p["name"])
                            .map(|q| {
                                let mut solo = l.clone();
                                solo["spec"]["predictors"] = json!([q]);
                                model_refs(&solo, model, "", "")
                                    .into_iter()
                                    .map(|m| m.value)
                                    .collect()
                            })
                    });
                    let ok = match now {
                        Some(now) => now == want,
                        None => want.iter().all(|w| names_version(w, version)),
                    };
                    if !ok {
                        return Err(StepError::rejected(format!(
                            "refusing to apply {what}: predictor `{name}` is not the canary (`{}`) and would change what it serves to {}; only the canary gets the gated version",
                            self.canary,
                            want.join(", ")
                        )));
                    }
                }
            }
        }
        Ok(())
    }
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

/// At most this many changed fields are named per object.
const CHANGED_PER_OBJECT: usize = 8;

/// What applying `objects` changed against what was recorded before (`kind
/// ns/name: field old → new`, or `created`), and the model version the
/// objects served before, when a changed field names the new version where
/// it named another one (`models:/m/6` → `models:/m/7`).
fn changed(
    objects: &[Value],
    before: Option<&Value>,
    model: Option<&(String, String)>,
) -> (Vec<String>, Option<String>) {
    let mut out = Vec::new();
    let mut previous = None;
    for (i, o) in objects.iter().enumerate() {
        let name = format!(
            "{} {}",
            o["kind"].as_str().unwrap_or("object"),
            o["metadata"]["name"].as_str().unwrap_or_default()
        );
        let old = before
            .and_then(|b| b.get(i))
            .map(|b| &b["object"])
            .filter(|v| v.is_object());
        let Some(old) = old else {
            out.push(format!("{name}: created"));
            continue;
        };
        let mut fields = Vec::new();
        leaves(o, old, String::new(), &mut fields);
        fields.retain(|(p, _, _)| !p.starts_with("metadata.") || p.starts_with("metadata.labels"));
        for (path, from, to) in fields.iter().take(CHANGED_PER_OBJECT) {
            if previous.is_none()
                && from != "(none)"
                && let Some((_, v)) = model
            {
                previous = replaced_version(from, to, v);
            }
            out.push(format!("{name}: {path} {from} → {to}"));
        }
        if fields.len() > CHANGED_PER_OBJECT {
            out.push(format!(
                "{name}: and {} more field(s)",
                fields.len() - CHANGED_PER_OBJECT
            ));
        }
        if fields.is_empty() {
            out.push(format!("{name}: unchanged"));
        }
    }
    (out, previous)
}

fn short(v: &Value) -> String {
    let s = match v {
        Value::Null => "(none)".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// The leaves of `new` that differ in `old`, as `(dotted.path, old, new)`.
fn leaves(new: &Value, old: &Value, path: String, out: &mut Vec<(String, String, String)>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match new {
        Value::Object(m) => {
            for (k, v) in m {
                if path.is_empty() && k == "status" {
                    continue;
                }
                leaves(v, old.get(k).unwrap_or(&Value::Null), join(k), out);
            }
        }
        Value::Array(a) if old.as_array().is_some_and(|o| o.len() == a.len()) => {
            for (i, v) in a.iter().enumerate() {
                leaves(v, &old[i], format!("{path}[{i}]"), out);
            }
        }
        _ if new != old && hidden_field(&path) => out.push((path, "(not shown)".into(), "(changed)".into())),
        _ if new != old => out.push((path, short(old), short(new))),
        _ => {}
    }
}

/// A field whose value a report must not show: container environment
/// values, arguments and commands (they may hold credentials, however bad a
/// practice), and any field named like a credential (the policy's rule for
/// environment names).
fn hidden_field(path: &str) -> bool {
    path.contains(".env[")
        || path.contains(".args[")
        || path.contains(".command[")
        || path
            .split('.')
            .any(|seg| sensitive(seg.split('[').next().unwrap_or(seg)))
}

/// `from` with the part where `to` says `version` (`models:/m/6` for
/// `models:/m/7` and version 7): the version it replaced.
fn replaced_version(from: &str, to: &str, version: &str) -> Option<String> {
    let at = to.rfind(version)?;
    let (prefix, suffix) = (&to[..at], &to[at + version.len()..]);
    let middle = from.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (!middle.is_empty() && middle != version && middle.len() <= 64).then(|| middle.to_owned())
}

impl Step for ApplyStep {
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            let objects = self.objects_now().await?;
            if cx.recalled("objects").is_none() && cx.recalled("gitops-pushed").is_none() {
                self.bind(cx, &objects).await?;
            }
            if let Some(g) = &self.gitops {
                return self.commit(g, cx).await;
            }
            // The last known-good state of everything this step touches,
            // recorded (and journaled) before the first change.
            if cx.recalled("objects").is_none() {
                let mut before = Vec::new();
                for o in &objects {
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
            for o in &objects {
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
            let (changed, previous) = changed(&objects, cx.recalled("objects").as_ref(), self.model.as_ref());
            outputs.insert("changed".into(), Value::from(changed));
            if let Some(v) = previous {
                outputs.insert("previous-version".into(), Value::from(v));
            }
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

#[cfg(test)]
mod tests {
    use super::changed;

    #[test]
    fn what_changed_is_said_in_words_and_never_shows_an_environment_value() {
        let before = serde_json::json!([{"object": {
            "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"template": {"spec": {"containers": [{"image": "m:6", "env": [{"name": "API_KEY", "value": "sk-old"}], "args": ["--token=abc"]}]}}}
        }}]);
        let after = [serde_json::json!({
            "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"template": {"spec": {"containers": [{"image": "m:7", "env": [{"name": "API_KEY", "value": "sk-new"}], "args": ["--token=xyz"]}]}}}
        })];
        let (changed_fields, previous) = changed(&after, Some(&before), Some(&("m".into(), "7".into())));
        let text = changed_fields.join("\n");
        assert!(
            text.contains("Deployment d: spec.template.spec.containers[0].image m:6 → m:7"),
            "{text}"
        );
        assert_eq!(previous.as_deref(), Some("6"));
        for leaked in ["sk-old", "sk-new", "abc", "xyz"] {
            assert!(!text.contains(leaked), "{leaked}: {text}");
        }
        let (created, _) = changed(&after, None, None);
        assert_eq!(created, ["Deployment d: created"]);
    }
}
