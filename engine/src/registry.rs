//! The registry of step kinds.
//!
//! The engine knows no concrete step. What the semantic rules need to know
//! about a kind (is it a gate? does it change what production serves? what
//! canary weight does it set? how long does it hold?) is asked through the
//! [`StepKind`] trait; the `steps` crate implements one kind per module and
//! builds the one [`Registry`] the CLI passes in. Adding a kind is one module
//! there plus one schema file, registered in one place.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::diag::Code;

/// What a step kind does to the target, as far as the safety rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Checks that the model version may be deployed.
    Gate,
    /// Changes what the target serves (apply, shift-traffic): in production
    /// it must be dominated by a passing gate.
    Promote,
    /// Returns the target to its last known-good state (rollback).
    Restore,
    /// Reads or waits only (hold, wait-ready, verify, approval, notify).
    Observe,
}

impl Role {
    /// Whether steps of this role change the target (and so have something
    /// to roll back).
    #[must_use]
    pub fn changes_target(self) -> bool {
        matches!(self, Role::Promote | Role::Restore)
    }
}

/// How a step is drawn in the plan's graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A box: a step that acts.
    Step,
    /// A diamond: a decision (a gate, an approval).
    Decision,
    /// A rounded node: time passes (a hold).
    Wait,
}

/// A step-kind-specific finding, located relative to the step's `with`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// JSON pointer relative to `with` (`""` for `with` itself).
    pub pointer: String,
    /// Stable code.
    pub code: Code,
    /// Message.
    pub message: String,
    /// Optional help.
    pub help: Option<String>,
    /// Where it is when that is not in the spec (a manifest template line):
    /// `(file, line, column)`.
    pub at: Option<(String, u32, u32)>,
}

impl Finding {
    /// A finding at `pointer` (relative to `with`).
    #[must_use]
    pub fn new(pointer: impl Into<String>, code: Code, message: impl Into<String>) -> Self {
        Finding {
            pointer: pointer.into(),
            code,
            message: message.into(),
            help: None,
            at: None,
        }
    }

    /// A finding in another file (a manifest template).
    #[must_use]
    pub fn in_file(
        file: impl Into<String>,
        line: u32,
        col: u32,
        code: Code,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            at: Some((file.into(), line, col)),
            ..Finding::new("", code, message)
        }
    }

    /// Adds a help line.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Why a step cannot be built for a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Its `with` cannot be used as written (lint says the same, located).
    #[error("{0}")]
    Config(String),
    /// The run lacks what the step needs: a target, a cluster it reaches,
    /// an endpoint, credentials, a backend this build does not have.
    #[error("{0}")]
    Unavailable(String),
}

impl From<serde_json::Error> for BuildError {
    fn from(e: serde_json::Error) -> Self {
        BuildError::Config(e.to_string())
    }
}

/// A kind of step. Implementations live in the `steps` crate.
pub trait StepKind: Send + Sync + 'static {
    /// The `type:` name, e.g. `shift-traffic`.
    fn name(&self) -> &'static str;
    /// One line for `rollwright schema` and the README.
    fn summary(&self) -> &'static str;
    /// The JSON Schema (draft 2020-12) of `with`, as committed in `steps/schemas/` (published, accepting templates, in `schemas/steps/`).
    fn schema(&self) -> &'static str;
    /// The schema generated from the kind's typed config (`None` when the
    /// kind has no typed config). A test holds it equal to [`schema`](Self::schema):
    /// the committed file is generated, never written by hand.
    fn generated_schema(&self) -> Option<Value> {
        None
    }
    /// What the kind does to the target.
    fn role(&self) -> Role;
    /// Semantic checks of a schema-valid `with` (durations, cross-field rules).
    fn check(&self, with: &Value) -> Vec<Finding>;
    /// The canary weight this step sets, when it sets one.
    fn canary_weight(&self, _with: &Value) -> Option<u64> {
        None
    }
    /// A recorded justification for going straight to 100 %.
    fn justification<'a>(&self, _with: &'a Value) -> Option<&'a str> {
        None
    }
    /// How long the step holds at least (a hold's `duration`).
    fn min_duration(&self, _with: &Value) -> Option<Duration> {
        None
    }
    /// What a finished step's outputs mean, in one line of words for the
    /// report (no JSON). Default: the outputs as `key: value` pairs.
    fn describe(&self, outputs: &Map<String, Value>) -> String {
        crate::words::plain(outputs)
    }
    /// Keys of the outputs a run of this kind records, which later steps
    /// may reference as `{{steps.<id>.outputs.<key>}}`.
    fn outputs(&self) -> &'static [&'static str] {
        &[]
    }
    /// Builds the runnable step from a validated `with`. Kinds whose
    /// backends are not built yet say so: a spec using them cannot run (it
    /// still lints and plans).
    ///
    /// # Errors
    /// Why the step cannot be built.
    fn build(
        &self,
        _with: &Value,
        _cx: &BuildContext,
    ) -> Result<std::sync::Arc<dyn crate::exec::Step>, BuildError> {
        Err(BuildError::Unavailable(format!(
            "step kind `{}` cannot run in this build yet",
            self.name()
        )))
    }
    /// Whether a failure of this step is tolerated by default (a
    /// notification never fails a run unless its spec says so).
    fn tolerates_failure(&self, _with: &Value) -> bool {
        false
    }
    /// Step ids this step refers to, with their pointers relative to `with`
    /// (e.g. a rollback's `restore: [deploy]`).
    fn step_refs(&self, _with: &Value) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Checks that need the spec around the step and what it renders (its
    /// manifests, the serving platform, the environment): the *same* checks
    /// `build` refuses on, so that `lint` and `plan` find everything `run`
    /// would refuse for a reason knowable from the files. `cx` carries the
    /// target (with the effective environment), serving, model and rendered
    /// manifests; it reaches no cluster.
    fn check_rendered(&self, _with: &Value, _cx: &BuildContext) -> Vec<Finding> {
        Vec::new()
    }
    /// The manifest template this step renders (a path relative to the file
    /// that names it), which expansion renders and lint requires to exist.
    fn template<'a>(&self, _with: &'a Value) -> Option<&'a str> {
        None
    }
    /// The longest a failing canary can go unnoticed by this step (a hold's
    /// analysis interval × failure limit), for the plan's timing budget.
    fn detection_bound(&self, _with: &Value) -> Option<Duration> {
        None
    }
    /// Where this step's `with` is weaker than the policy's minimum gate,
    /// as `(pointer relative to with, why)`. Only gates answer.
    fn shortfall(&self, _with: &Value, _min: &crate::policy::MinGate) -> Vec<(String, String)> {
        Vec::new()
    }
    /// The stricter of this step's `with` and the policy's minimum gate:
    /// what a run checks. Only gates change it.
    fn harden(&self, with: &Value, _min: &crate::policy::MinGate) -> Value {
        with.clone()
    }
    /// Whether a person approves this step (`rollwright approve RUN STEP`).
    fn approvable(&self) -> bool {
        false
    }
    /// How `plan --format dot|mermaid` draws the step.
    fn shape(&self) -> Shape {
        match self.role() {
            Role::Gate => Shape::Decision,
            _ => Shape::Step,
        }
    }
    /// A short detail shown with the step in drawings (`20%`, `10m`).
    fn detail(&self, _with: &Value) -> Option<String> {
        None
    }
    /// What a run of this step reads and changes on the target — for
    /// `rollwright rbac`, which prints the least privilege a run needs.
    /// Asked for each step and for each compensation (`cx.compensation`).
    fn access(&self, _with: &Value, _cx: &AccessContext) -> Vec<Access> {
        Vec::new()
    }
}

/// One permission a step needs on the target: `verbs` on objects of
/// `api_version`/`kind`, the one named `name` when the files name it. Opaque
/// to the engine (the steps crate knows what these are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// `group/version` (`v1` for the core group).
    pub api_version: String,
    /// The kind.
    pub kind: String,
    /// The object, when known from the files; `None` for any.
    pub name: Option<String>,
    /// The verbs.
    pub verbs: Vec<&'static str>,
    /// A note for the reader (why the grant is wider than it could be).
    pub note: Option<String>,
}

impl Access {
    /// `verbs` on `api_version`/`kind` `name` (or any, with `None`).
    #[must_use]
    pub fn new(api_version: &str, kind: &str, name: Option<&str>, verbs: &[&'static str]) -> Self {
        Access {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            name: name.map(str::to_owned),
            verbs: verbs.to_vec(),
            note: None,
        }
    }

    /// With a note for the reader.
    #[must_use]
    pub fn noting(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// What [`StepKind::access`] may look at: the spec's context, the other
/// steps, and whether the step is a compensation.
#[derive(Debug, Clone, Copy)]
pub struct AccessContext<'a> {
    /// The spec's target, serving and rendered manifests.
    pub build: &'a BuildContext,
    /// Every step of the spec: `(id, type, with)`.
    pub steps: &'a [(String, String, Value)],
    /// Whether the step asked about runs as a compensation (it restores
    /// what its step changed).
    pub compensation: bool,
}

/// What a step builder may use.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// Directory of the spec file (relative paths in `with` start here).
    pub spec_dir: std::path::PathBuf,
    /// The run's directory (`.rollwright/runs/<id>/`).
    pub run_dir: std::path::PathBuf,
    /// Who started the run (they may not approve it).
    pub started_by: String,
    /// The run id.
    pub run_id: String,
    /// The model the run deploys: `(registry, name, version)`.
    pub model: Option<(String, String, String)>,
    /// Where the run deploys.
    pub target: Option<TargetInfo>,
    /// Serving platform and routing (`serving:`).
    pub serving: Option<serde_json::Value>,
    /// Manifest templates rendered for `apply` steps.
    pub manifests: Vec<crate::spec::Manifest>,
    /// How the run reaches its target (the steps crate's `Reach`: client configuration,
    /// context and API server, or the embedded cluster). Opaque here: the
    /// engine knows no cluster.
    pub reach: serde_json::Value,
    /// The id of the step being built (for a compensation, the step it undoes).
    pub step: String,
    /// The key of the run's integrity chain (approvals recorded in the run
    /// directory are signed with it).
    pub run_key: Option<std::sync::Arc<crate::journal::Key>>,
}

/// The target of a run, as the spec names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// The context of the target cluster (in the client configuration).
    pub context: String,
    /// Namespace.
    pub namespace: String,
    /// Production: every safety rule applies. The *effective* environment:
    /// the spec's, or production when the policy says the cluster reached is.
    pub production: bool,
    /// Set when a GitOps controller manages the target.
    pub gitops: Option<serde_json::Value>,
}

impl BuildContext {
    /// A context for checking `spec` outside a run: its target (with
    /// `production` as the effective environment), serving, model and
    /// rendered manifests, relative paths from `dir`.
    #[must_use]
    pub fn of_spec(spec: &crate::spec::Spec, production: bool, dir: &std::path::Path) -> Self {
        BuildContext {
            target: spec.target.as_ref().map(|t| TargetInfo {
                context: t.context.clone(),
                namespace: t.namespace.clone(),
                production,
                gitops: t.gitops.clone(),
            }),
            serving: spec.serving.clone(),
            manifests: spec.manifests.clone(),
            model: spec
                .model
                .as_ref()
                .map(|m| (m.registry.clone(), m.name.clone(), m.version.clone())),
            ..BuildContext::detached(dir)
        }
    }

    /// A context for building steps outside a run (tests, checks).
    #[must_use]
    pub fn detached(dir: &std::path::Path) -> Self {
        BuildContext {
            spec_dir: dir.to_path_buf(),
            run_dir: dir.to_path_buf(),
            started_by: String::new(),
            run_id: String::new(),
            model: None,
            target: None,
            serving: None,
            manifests: Vec::new(),
            reach: serde_json::Value::Null,
            step: String::new(),
            run_key: None,
        }
    }
}

/// The set of known step kinds, in registration order.
#[derive(Default)]
pub struct Registry {
    kinds: Vec<std::sync::Arc<dyn StepKind>>,
    /// Schemas of the spec's parts the steps own (`serving`, `gitops`),
    /// by name: filled into the envelope's `$defs`.
    defs: Vec<(&'static str, &'static str)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.kinds.iter().map(|k| k.name()))
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers the schema of a part of the spec the steps own (`serving`,
    /// `gitops`): the envelope refers to it as `#/$defs/<name>`.
    #[must_use]
    pub fn with_def(mut self, name: &'static str, schema: &'static str) -> Self {
        self.defs.push((name, schema));
        self
    }

    /// The schemas of the spec's parts the steps own: `(name, JSON)`.
    pub fn defs(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.defs.iter().copied()
    }

    /// Registers a kind.
    ///
    /// # Panics
    /// When a kind with the same name is already registered: two modules
    /// claiming one `type:` is a programming error caught by the tests.
    #[must_use]
    pub fn with(mut self, kind: impl StepKind) -> Self {
        assert!(
            self.get(kind.name()).is_none(),
            "step kind `{}` registered twice",
            kind.name()
        );
        self.kinds.push(std::sync::Arc::new(kind));
        self
    }

    /// The kind named `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&dyn StepKind> {
        self.kinds.iter().find(|k| k.name() == name).map(|k| &**k)
    }

    /// The kind named `name`, shared (for what outlives the registry's
    /// borrow: a step built when its inputs exist).
    #[must_use]
    pub fn shared(&self, name: &str) -> Option<std::sync::Arc<dyn StepKind>> {
        self.kinds.iter().find(|k| k.name() == name).cloned()
    }

    /// All kinds, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &dyn StepKind> {
        self.kinds.iter().map(|k| &**k)
    }

    /// All kind names.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.iter().map(|k| k.name())
    }
}
