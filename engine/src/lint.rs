//! Linting one file: load → schema → typed model → semantic rules.
//!
//! [`Linter`] is built once (it owns the compiled schema) and is shared by
//! every thread of a lint run; [`Linter::lint`] is pure and allocation-light
//! so that a monorepo of ten thousand specs lints in well under a second.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::diag::{Code, Diagnostic, Locate, Related};
use crate::expand::{self, Env, Expanded};
use crate::plan::{self, Plan};
use crate::policy::Policy;
use crate::registry::Registry;
use crate::schema::{SchemaError, Schemas, describe};
use crate::spec::Spec;
use crate::validate;
use crate::yaml::{self, Limits};

/// What linting one file found.
#[derive(Debug, Default)]
pub struct FileLint {
    /// Findings, ordered by position.
    pub diagnostics: Vec<Diagnostic>,
    /// The file is YAML but not a rollwright spec (only when asked to skip those).
    pub skipped: bool,
}

/// A reusable linter: registry, compiled schema and loader limits.
pub struct Linter {
    registry: Registry,
    schemas: Schemas,
    limits: Limits,
    policy: Option<Policy>,
    resolver: Option<Resolver>,
    root: Option<std::path::PathBuf>,
    /// Strategies and templates read once for every spec this linter sees.
    cache: expand::Cache,
}

/// The API server a cluster context points at, when it can be known
/// (the CLI reads the client configuration; the engine knows none).
pub type Resolver = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

impl std::fmt::Debug for Linter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linter")
            .field("registry", &self.registry)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Linter {
    /// Compiles the schema for `registry`.
    ///
    /// # Errors
    /// When a shipped schema is broken (a bug caught by the tests).
    pub fn new(registry: Registry, limits: Limits) -> Result<Self, SchemaError> {
        let schemas = Schemas::new(&registry)?;
        Ok(Linter {
            registry,
            schemas,
            limits,
            policy: None,
            resolver: None,
            root: None,
            cache: expand::Cache::default(),
        })
    }

    /// The directory strategies and templates must stay inside (`--root`);
    /// default: the repository holding each spec.
    #[must_use]
    pub fn with_root(mut self, root: Option<std::path::PathBuf>) -> Self {
        self.root = root;
        self
    }

    /// How to find the API server of a context, so that the policy's
    /// `api-servers` apply to lint and plan as to run.
    #[must_use]
    pub fn with_resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    fn reached_of(&self, spec: &Spec) -> Option<crate::policy::Reached> {
        let t = spec.target.as_ref()?;
        // The server is only worth looking up when the policy names servers.
        let wanted = self
            .policy
            .as_ref()
            .is_some_and(|p| !p.production.api_servers.is_empty() || !p.gitops.api_servers.is_empty());
        Some(crate::policy::Reached {
            context: t.context.clone(),
            server: self
                .resolver
                .as_ref()
                .filter(|_| wanted)
                .and_then(|r| r(&t.context)),
        })
    }

    /// The semantic rules again, for the cluster a run actually reaches
    /// (its context and API server): what `run` checks once it knows them.
    #[must_use]
    pub fn check_reached(
        &self,
        exp: &Expanded,
        spec: &Spec,
        reached: &crate::policy::Reached,
    ) -> Vec<Diagnostic> {
        let cx = validate::Context {
            spec,
            locate: exp,
            registry: &self.registry,
            schema_errors: &[],
            policy: self.policy.as_ref(),
            reached: Some(reached),
        };
        validate::check(&cx)
    }

    /// Applies the platform policy (environments, minimum gates).
    #[must_use]
    pub fn with_policy(mut self, policy: Option<Policy>) -> Self {
        self.policy = policy;
        self
    }

    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    /// The loader limits.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The step registry.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Lints the contents of one file. `path` locates the strategies and
    /// templates it refers to. With `skip_foreign`, a YAML document that is
    /// not a rollwright spec (no `rollwright.dev/` apiVersion and no
    /// Rollout/Strategy kind) is reported as skipped instead of linted: what
    /// directory walks in a monorepo want.
    #[must_use]
    pub fn lint(&self, path: &Path, bytes: &[u8], skip_foreign: bool) -> FileLint {
        self.lint_with(path, bytes, skip_foreign, &[])
    }

    /// Plans a spec: lints it (with `--set` overrides) and, when it is
    /// clean of errors, builds the expanded plan.
    ///
    /// # Errors
    /// Every diagnostic when the spec has errors.
    pub fn plan(
        &self,
        path: &Path,
        bytes: &[u8],
        overrides: &[(String, Value)],
    ) -> Result<(Plan, Vec<Diagnostic>), Vec<Diagnostic>> {
        let (exp, spec, warnings) = self.prepare(path, bytes, overrides)?;
        Ok((plan::build(&exp, &spec, &self.registry), warnings))
    }

    /// Lints a spec and, when it is clean of errors, returns its expansion
    /// and typed model (what `plan` shows and `run` executes), with the
    /// warnings lint found.
    ///
    /// # Errors
    /// Every diagnostic when the spec has errors.
    pub fn prepare(
        &self,
        path: &Path,
        bytes: &[u8],
        overrides: &[(String, Value)],
    ) -> Result<(Expanded, Spec, Vec<Diagnostic>), Vec<Diagnostic>> {
        let lint = self.lint_with(path, bytes, false, overrides);
        if lint
            .diagnostics
            .iter()
            .any(|d| d.severity == crate::Severity::Error)
        {
            return Err(lint.diagnostics);
        }
        let doc = yaml::load_bytes(bytes, &self.limits)?;
        let env = Env {
            registry: &self.registry,
            limits: &self.limits,
            overrides,
            render_manifests: doc.value.get("kind").and_then(Value::as_str) == Some("Rollout"),
            root: self.root.as_deref(),
            cache: Some(&self.cache),
        };
        let (exp, errors) = expand::expand(path, doc, &env);
        let exp = match exp {
            Some(e) if errors.is_empty() => e,
            _ => return Err(errors),
        };
        let spec = typed_expansion(&exp)?;
        Ok((exp, spec, lint.diagnostics))
    }

    /// The checks of [`Self::prepare`] on a plan that is already expanded
    /// (what a RolloutRun carries, and the in-cluster controller runs): the
    /// flat spec as `value`, the manifests as rendered `(step, template,
    /// text)`. Schema, semantic rules, the policy, secrets and the checks
    /// of each rendered manifest are the same code as lint's; nothing is
    /// read from a file. `label` names the plan in diagnostics.
    ///
    /// # Errors
    /// Every diagnostic when the plan has errors, or when it is not fully
    /// expanded (a `uses`, `params` or template left, or a value expansion
    /// would still change).
    pub fn prepare_planned(
        &self,
        label: &Path,
        value: &Value,
        manifests: &[(String, String, String)],
    ) -> Result<(Expanded, Spec, Vec<Diagnostic>), Vec<Diagnostic>> {
        let text = serde_json::to_string_pretty(value).unwrap_or_default();
        let doc = yaml::load_bytes(text.as_bytes(), &self.limits)?;
        let not_flat = |why: &str| {
            vec![Diagnostic::new(
                Code::Schema,
                crate::diag::Loc {
                    file: None,
                    span: crate::diag::Span::point(crate::diag::Pos { line: 1, col: 1 }),
                },
                format!(
                    "the plan is not fully expanded ({why}): make it with `rollwright plan --format rolloutrun`"
                ),
            )]
        };
        for key in ["uses", "params", "customize"] {
            if doc.value.get(key).is_some() {
                return Err(not_flat(&format!("it has `{key}`")));
            }
        }
        let (mut diagnostics, mut secrets) = validate::secrets(&doc);
        let env = Env {
            registry: &self.registry,
            limits: &self.limits,
            overrides: &[],
            render_manifests: false,
            root: Some(Path::new("/nonexistent")),
            cache: None,
        };
        let (exp, errors) = expand::expand(label, doc, &env);
        diagnostics.extend(errors);
        let Some(mut exp) = exp else {
            return Err(diagnostics);
        };
        if exp.value != *value {
            return Err(not_flat("expanding it again changes it"));
        }
        for (step, template, text) in manifests {
            let docs = crate::render::parse_rendered(text, &self.limits);
            if docs.is_none() {
                diagnostics.push(Diagnostic::new(
                    Code::Template,
                    exp.locate(""),
                    format!("the manifest rendered for step `{step}` ({template}) is not YAML"),
                ));
            }
            exp.manifests.push(crate::spec::Manifest {
                step: step.clone(),
                path: template.clone(),
                text: text.clone(),
                docs: docs.map(std::sync::Arc::new),
            });
        }
        self.check_expanded(&exp, &mut diagnostics, &mut secrets);
        if !secrets.is_empty() {
            for d in &mut diagnostics {
                scrub(d, &secrets);
            }
        }
        if diagnostics.iter().any(|d| d.severity == crate::Severity::Error) {
            return Err(diagnostics);
        }
        let spec = typed_expansion(&exp)?;
        Ok((exp, spec, diagnostics))
    }

    /// As [`Self::lint`], with `--set` parameter overrides.
    #[must_use]
    pub fn lint_with(
        &self,
        path: &Path,
        bytes: &[u8],
        skip_foreign: bool,
        overrides: &[(String, Value)],
    ) -> FileLint {
        let doc = match yaml::load_bytes(bytes, &self.limits) {
            Ok(d) => d,
            Err(diagnostics) => {
                return FileLint {
                    diagnostics,
                    skipped: false,
                };
            }
        };
        if skip_foreign && !looks_like_spec(&doc.value) {
            return FileLint {
                diagnostics: Vec::new(),
                skipped: true,
            };
        }
        let needs_expansion = !overrides.is_empty() || expand::needed(&doc.value);
        let (mut diagnostics, schema_errors) = self.schemas.check_value(&doc.value, &doc, needs_expansion);
        let (secret_findings, mut secrets) = validate::secrets(&doc);
        diagnostics.extend(secret_findings);
        if needs_expansion {
            let env = Env {
                registry: &self.registry,
                limits: &self.limits,
                overrides,
                // A Strategy's manifest paths come from the Rollout's parameters.
                render_manifests: doc.value.get("kind").and_then(Value::as_str) == Some("Rollout"),
                root: self.root.as_deref(),
                cache: Some(&self.cache),
            };
            let (expanded, errors) = expand::expand(path, doc, &env);
            diagnostics.extend(errors);
            if let Some(exp) = expanded {
                self.check_expanded(&exp, &mut diagnostics, &mut secrets);
            }
        } else {
            let spec = self.typed(&doc.value, &doc, &schema_errors, &mut diagnostics);
            let reached = self.reached_of(&spec);
            let cx = validate::Context {
                spec: &spec,
                locate: &doc,
                registry: &self.registry,
                schema_errors: &schema_errors,
                policy: self.policy.as_ref(),
                reached: reached.as_ref(),
            };
            diagnostics.extend(validate::check(&cx));
            if spec.kind == crate::spec::Kind::Rollout {
                missing_templates(path, &spec, &self.registry, &doc, &mut diagnostics);
            }
        }
        if !secrets.is_empty() {
            for d in &mut diagnostics {
                scrub(d, &secrets);
            }
        }
        diagnostics.sort_by(|a, b| a.loc().cmp(&b.loc()).then(a.code.cmp(&b.code)));
        diagnostics.dedup_by(|a, b| a.loc() == b.loc() && a.code == b.code);
        FileLint {
            diagnostics,
            skipped: false,
        }
    }

    /// Checks an expanded plan: schema of the resolved values, semantic
    /// rules, secrets of every strategy file; findings in a strategy get an
    /// "instantiated here" note pointing at `uses`.
    fn check_expanded(&self, exp: &Expanded, diagnostics: &mut Vec<Diagnostic>, secrets: &mut Vec<String>) {
        let before = diagnostics.len();
        // A value still holding `{{…}}` is a runtime reference (checked by
        // expansion) or a template that failed (already reported).
        let (schema_diags, schema_errors) = self.schemas.check_value(&exp.value, exp, true);
        diagnostics.extend(schema_diags);
        for src in exp.sources.iter().skip(1) {
            let scanned = self.cache.secrets(src);
            let (found, values) = &*scanned;
            secrets.extend(values.iter().cloned());
            for d in found {
                let mut d = d.clone();
                d.file = Some(src.display.clone());
                diagnostics.push(d);
            }
        }
        let mut spec = self.typed(&exp.value, exp, &schema_errors, diagnostics);
        spec.manifests.clone_from(&exp.manifests);
        let reached = self.reached_of(&spec);
        let cx = validate::Context {
            spec: &spec,
            locate: exp,
            registry: &self.registry,
            schema_errors: &schema_errors,
            policy: self.policy.as_ref(),
            reached: reached.as_ref(),
        };
        diagnostics.extend(validate::check(&cx));
        // The instantiation chain: every `uses` from this spec down to the
        // strategy that holds the problem.
        for d in &mut diagnostics[before..] {
            let Some(file) = d.file.clone() else { continue };
            let Some(k) = exp.sources.iter().position(|s| s.display == file) else {
                continue;
            };
            for (j, src) in exp.sources[..k].iter().enumerate() {
                if let Some(n) = src.doc.node("/uses") {
                    d.related.push(Related {
                        file: (j != 0).then(|| src.display.clone()),
                        span: n.key.unwrap_or(n.span),
                        label: format!("instantiated by this `uses` ({})", exp.sources[j + 1].display),
                    });
                }
            }
        }
    }

    /// The typed model of a checked value: strict when possible, lenient
    /// (so that rules still run) when the schema already complained.
    fn typed(
        &self,
        value: &Value,
        locate: &dyn Locate,
        schema_errors: &[String],
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Spec {
        // Fast path without path tracking; re-run with it only to explain a failure.
        match Spec::deserialize(value).or_else(|_| serde_path_to_error::deserialize::<_, Spec>(value)) {
            Ok(spec) => spec,
            Err(e) if schema_errors.is_empty() => {
                // The schema accepted what the types refuse: report it rather than hide it.
                let mut ptr = String::new();
                for seg in e.path().iter() {
                    match seg {
                        serde_path_to_error::Segment::Seq { index } => {
                            ptr.push('/');
                            ptr.push_str(&index.to_string());
                        }
                        serde_path_to_error::Segment::Map { key } => {
                            yaml::push_pointer_segment(&mut ptr, key)
                        }
                        _ => {}
                    }
                }
                diagnostics.push(Diagnostic::new(
                    Code::Schema,
                    locate.locate(&ptr),
                    format!("{}: {}", describe(&ptr), e.inner()),
                ));
                Spec::lenient(value)
            }
            Err(_) => Spec::lenient(value),
        }
    }
}

/// The typed model of an expansion, with its rendered manifests.
fn typed_expansion(exp: &Expanded) -> Result<Spec, Vec<Diagnostic>> {
    let mut spec = Spec::deserialize(&exp.value).map_err(|e| {
        vec![Diagnostic::new(
            Code::Schema,
            exp.locate(""),
            format!("the expanded spec does not fit the model: {e}"),
        )]
    })?;
    spec.manifests.clone_from(&exp.manifests);
    Ok(spec)
}

/// Without expansion there is nothing to render, but a manifest template
/// that does not exist is still an error (expansion renders them all).
fn missing_templates(
    path: &Path,
    spec: &Spec,
    registry: &Registry,
    doc: &yaml::Document,
    out: &mut Vec<Diagnostic>,
) {
    for (i, s) in spec.steps.iter().enumerate() {
        let Some(t) = registry.get(&s.kind).and_then(|k| k.template(&s.with)) else {
            continue;
        };
        let file = expand::resolve_relative(path, t);
        if !file.is_file() {
            out.push(
                Diagnostic::new(
                    Code::Template,
                    doc.locate(&format!("/steps/{i}/with/template")),
                    format!(
                        "cannot read manifest template `{}`: no such file",
                        expand::display_path(&file)
                    ),
                )
                .with_help("`template` is a path relative to the file that contains it"),
            );
        }
    }
}

fn looks_like_spec(v: &serde_json::Value) -> bool {
    let api = v.get("apiVersion").and_then(|a| a.as_str());
    let kind = v.get("kind").and_then(|k| k.as_str());
    // Other rollwright documents (scenario tests, file model registries) are
    // not specs; a misspelt kind still is, so that it gets reported.
    if matches!(kind, Some("RolloutTest" | "ModelRegistry" | "SimScenario")) {
        return false;
    }
    api.is_some_and(|a| a.starts_with("rollwright.dev/")) || matches!(kind, Some("Rollout" | "Strategy"))
}

/// Removes secret values from every text of a diagnostic.
fn scrub(d: &mut Diagnostic, secrets: &[String]) {
    let clean = |s: &mut String| {
        for secret in secrets {
            if s.contains(secret.as_str()) {
                *s = s.replace(secret.as_str(), "[redacted]");
            }
        }
    };
    clean(&mut d.message);
    if let Some(l) = &mut d.label {
        clean(l);
    }
    if let Some(h) = &mut d.help {
        clean(h);
    }
    for r in &mut d.related {
        clean(&mut r.label);
    }
}
