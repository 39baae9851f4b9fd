//! Expansion: `uses` chains, typed params, `customize`, `for-each` groups
//! and templates → one flat spec whose every step remembers where it was
//! written.
//!
//! The order is fixed and each stage reports all its problems, located in
//! the file that caused them:
//! 1. follow `uses` from the Rollout through its Strategies (a cycle is an
//!    error that prints the chain);
//! 2. merge parameter declarations (outer strategies override inner ones)
//!    and check the Rollout's values and `--set` overrides against them;
//! 3. start from the innermost strategy's steps and apply each outer
//!    layer's `customize` (`remove`, `with`, `add`), rewiring `needs` of
//!    removed steps to what those steps needed;
//! 4. unroll `for-each` groups into sequential chains with deterministic ids
//!    (`ramp[20].hold`);
//! 5. render templates in values with handlebars in strict mode. A value
//!    that is exactly one `{{path}}` keeps the type of what it names (so
//!    `canary: "{{item}}"` becomes the integer 20); runtime references
//!    `{{steps.<id>.outputs.<key>}}` are checked and left for the executor.
//!
//! [`Expanded`] implements [`Locate`]: pointers into the flat spec map back
//! to the strategy or rollout line they came from.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::diag::{Code, Diagnostic, Loc, Locate, Span, did_you_mean};
use crate::registry::Registry;
use crate::schema::show;
use crate::yaml::{self, Document, Limits, push_pointer_segment};

/// A file taking part in an expansion.
#[derive(Debug)]
pub struct Source {
    /// The path as shown to users (relative to where rollwright runs).
    pub display: Arc<str>,
    /// The path on disk.
    pub path: PathBuf,
    /// Its content.
    pub doc: Document,
}

/// Where an expanded step came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Index into [`Expanded::sources`].
    pub source: usize,
    /// Pointer of the step object in that source.
    pub pointer: String,
    /// The for-each item, for steps of a group.
    pub item: Option<Value>,
    /// Where `with` was changed, when a `customize.with` or
    /// `customize.replace` changed it.
    pub with: Option<(usize, String)>,
}

/// A manifest template rendered for an `apply` step.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The expanded step id.
    pub step: String,
    /// The template path as shown.
    pub path: String,
    /// The rendered text.
    pub text: String,
}

/// The result of expanding a spec.
#[derive(Debug)]
pub struct Expanded {
    /// The flat spec: no `uses`, `params`, `customize` or groups left.
    pub value: Value,
    /// `sources[0]` is the spec itself, then the strategies in `uses` order.
    pub sources: Vec<Source>,
    /// Origin of each `/steps/i`.
    pub steps: Vec<Origin>,
    /// Origin of each `/on-failure/i`.
    pub handlers: Vec<Origin>,
    /// Which source defined each other top-level field.
    pub fields: HashMap<String, usize>,
    /// Resolved parameter values.
    pub params: Map<String, Value>,
    /// Rendered manifest templates.
    pub manifests: Vec<Manifest>,
}

impl Expanded {
    fn origin_of<'a>(&'a self, pointer: &'a str) -> (usize, String) {
        let mut segs = pointer.splitn(4, '/');
        segs.next();
        let top = segs.next().unwrap_or("");
        let idx = segs.next().and_then(|i| i.parse::<usize>().ok());
        let rest = segs.next().map(|r| format!("/{r}")).unwrap_or_default();
        let list = match top {
            "steps" => Some(&self.steps),
            "on-failure" => Some(&self.handlers),
            _ => None,
        };
        if let (Some(list), Some(i)) = (list, idx)
            && let Some(o) = list.get(i)
        {
            if let (Some((src, ptr)), Some(tail)) = (&o.with, rest.strip_prefix("/with")) {
                // A merged `with`: a value is where it was written — the
                // customization when it wrote it, else the strategy; what
                // neither has is located at the customization.
                let written = format!("{ptr}{tail}");
                let original = format!("{}{rest}", o.pointer);
                let here = |s: usize, p: &str| self.sources[s].doc.value.pointer(p).is_some();
                let replaced = ptr.starts_with("/customize/replace/");
                if replaced || tail.is_empty() || here(*src, &written) || !here(o.source, &original) {
                    return (*src, written);
                }
                return (o.source, original);
            }
            return (o.source, format!("{}{rest}", o.pointer));
        }
        (self.fields.get(top).copied().unwrap_or(0), pointer.to_owned())
    }

    fn loc(&self, source: usize, span: Span) -> Loc {
        Loc {
            file: (source != 0).then(|| self.sources[source].display.clone()),
            span,
        }
    }
}

impl Locate for Expanded {
    fn locate(&self, pointer: &str) -> Loc {
        let (s, p) = self.origin_of(pointer);
        self.loc(s, self.sources[s].doc.locate(&p))
    }
    fn locate_key(&self, pointer: &str) -> Loc {
        let (s, p) = self.origin_of(pointer);
        self.loc(s, self.sources[s].doc.locate_key(&p))
    }
}

/// What expansion needs besides the spec.
pub struct Env<'a> {
    /// Step kinds (their runtime outputs).
    pub registry: &'a Registry,
    /// Loader limits for strategy files.
    pub limits: &'a Limits,
    /// `--set key=value` overrides, already parsed.
    pub overrides: &'a [(String, Value)],
    /// Render manifest templates of `apply` steps.
    pub render_manifests: bool,
    /// The directory every strategy and template must stay inside (default:
    /// the repository holding the spec — see [`crate::fsread::repository_root`]).
    pub root: Option<&'a Path>,
}

/// Whether a spec needs expanding at all: no `uses`, no group, no template
/// means the flat spec is the document itself (the fast path of lint).
#[must_use]
pub fn needed(v: &Value) -> bool {
    fn has_template(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains("{{"),
            Value::Array(a) => a.iter().any(has_template),
            Value::Object(o) => o.values().any(has_template),
            _ => false,
        }
    }
    // A manifest template is rendered (and checked as `run` would) by expansion.
    let renders = v.get("kind").and_then(Value::as_str) == Some("Rollout")
        && v.get("steps").and_then(Value::as_array).is_some_and(|s| {
            s.iter()
                .any(|x| x.get("with").and_then(|w| w.get("template")).is_some())
        });
    renders
        || v.get("uses").is_some()
        || v.get("customize").is_some()
        || v.get("steps")
            .and_then(Value::as_array)
            .is_some_and(|s| s.iter().any(|x| x.get("for-each").is_some()))
        || has_template(v)
}

/// One step (or group) waiting to be placed, with its origin.
#[derive(Clone)]
struct Item {
    value: Value,
    source: usize,
    pointer: String,
    with: Option<(usize, String)>,
    /// For a group: where `customize` changed an inner step's `with`, by
    /// inner id.
    inner_with: Vec<(String, (usize, String))>,
}

struct Ctx<'a> {
    env: &'a Env<'a>,
    sources: Vec<Source>,
    errors: Vec<Diagnostic>,
    /// Where strategies and templates must stay.
    root: PathBuf,
}

impl Ctx<'_> {
    fn at(&self, source: usize, pointer: &str) -> Loc {
        Loc {
            file: (source != 0).then(|| self.sources[source].display.clone()),
            span: self.sources[source].doc.locate(pointer),
        }
    }
    fn key_at(&self, source: usize, pointer: &str) -> Loc {
        Loc {
            file: (source != 0).then(|| self.sources[source].display.clone()),
            span: self.sources[source].doc.locate_key(pointer),
        }
    }
    fn error(&mut self, code: Code, at: Loc, msg: impl Into<String>) -> &mut Diagnostic {
        self.errors.push(Diagnostic::new(code, at, msg));
        let last = self.errors.len() - 1;
        &mut self.errors[last]
    }
}

/// A path as shown to users: without a leading `./`.
#[must_use]
pub fn display_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    s.strip_prefix("./").unwrap_or(&s).to_owned()
}

/// Joins `rel` to the directory of `file`, lexically (`..` pops a component).
#[must_use]
pub fn resolve_relative(file: &Path, rel: &str) -> PathBuf {
    let mut out = file.parent().map(Path::to_path_buf).unwrap_or_default();
    for comp in Path::new(rel).components() {
        match comp {
            std::path::Component::ParentDir => match out.components().next_back() {
                Some(std::path::Component::Normal(_)) => {
                    out.pop();
                }
                _ => out.push(".."),
            },
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Expands `root` (already loaded from `path`). Returns the expansion when
/// one could be built, and every problem found on the way.
#[must_use]
pub fn expand(path: &Path, root: Document, env: &Env<'_>) -> (Option<Expanded>, Vec<Diagnostic>) {
    let repo = env.root.map_or_else(
        || {
            crate::fsread::repository_root(
                path.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new(".")),
            )
        },
        Path::to_path_buf,
    );
    let mut cx = Ctx {
        env,
        sources: vec![Source {
            display: display_path(path).into(),
            path: path.to_path_buf(),
            doc: root,
        }],
        errors: Vec::new(),
        root: repo,
    };
    let ok = follow_uses(&mut cx);
    if !ok {
        return (None, cx.errors);
    }
    let param_errors = cx.errors.len();
    let params = resolve_params(&mut cx);
    let params_ok = cx.errors.len() == param_errors;
    let (items, handlers) = assemble(&mut cx);
    let (steps, origins) = unroll(&mut cx, items, &params);
    if steps.len() > MAX_STEPS {
        let at = cx.at(0, "/steps");
        cx.error(
            Code::Template,
            at,
            format!("the expanded plan has {} steps; at most {MAX_STEPS}", steps.len()),
        );
        return (None, cx.errors);
    }
    let layers = cx.sources.len();
    let root = &cx.sources[0].doc.value;
    let mut flat = Map::new();
    let mut fields = HashMap::new();
    for key in ["apiVersion", "kind", "metadata", "model", "target"] {
        if let Some(v) = root.get(key) {
            flat.insert(key.into(), v.clone());
        }
    }
    // serving: the outermost layer that sets it; defaults: merged, outer wins per field.
    for (i, s) in cx.sources.iter().enumerate() {
        if let Some(v) = s.doc.value.get("serving") {
            flat.insert("serving".into(), v.clone());
            fields.insert("serving".to_owned(), i);
            break;
        }
    }
    let mut defaults = Map::new();
    for i in (0..layers).rev() {
        if let Some(Value::Object(d)) = cx.sources[i].doc.value.get("defaults") {
            for (k, v) in d {
                defaults.insert(k.clone(), v.clone());
            }
            fields.insert("defaults".to_owned(), i);
        }
    }
    if !defaults.is_empty() {
        flat.insert("defaults".into(), Value::Object(defaults));
    }
    flat.insert("steps".into(), Value::Array(steps));
    let handler_values: Vec<Value> = handlers.iter().map(|h| h.value.clone()).collect();
    if !handler_values.is_empty() {
        flat.insert("on-failure".into(), Value::Array(handler_values));
    }
    let mut expanded = Expanded {
        value: Value::Object(flat),
        sources: std::mem::take(&mut cx.sources),
        steps: origins,
        handlers: handlers
            .into_iter()
            .map(|h| Origin {
                source: h.source,
                pointer: h.pointer,
                item: None,
                with: None,
            })
            .collect(),
        fields,
        params,
        manifests: Vec::new(),
    };
    render_values(&mut expanded, env, &mut cx.errors);
    // Manifest paths often come from parameters: with a parameter missing
    // or wrong, reading them would only repeat that error.
    if env.render_manifests && params_ok {
        render_manifests(&mut expanded, &cx.root, env.registry, env.limits, &mut cx.errors);
    }
    (Some(expanded), cx.errors)
}

/// Loads the chain of strategies. Returns false when it cannot continue.
fn follow_uses(cx: &mut Ctx<'_>) -> bool {
    let mut seen: Vec<PathBuf> = vec![canonical(&cx.sources[0].path)];
    loop {
        let cur = cx.sources.len() - 1;
        let Some(uses) = cx.sources[cur]
            .doc
            .value
            .get("uses")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return true;
        };
        let path = resolve_relative(&cx.sources[cur].path, &uses);
        let canon = canonical(&path);
        if let Some(first) = seen.iter().position(|p| *p == canon) {
            let mut chain: Vec<String> = cx.sources[first..]
                .iter()
                .map(|s| s.display.to_string())
                .collect();
            chain.push(display_path(&path));
            let at = cx.at(cur, "/uses");
            cx.error(
                Code::UsesCycle,
                at,
                format!("`uses` cycle: {}", chain.join(" -> ")),
            )
            .help = Some("a strategy cannot use itself, directly or through others".into());
            return false;
        }
        if let Err(e) = crate::fsread::confine(&cx.root, &path) {
            let at = cx.at(cur, "/uses");
            cx.error(
                Code::UnknownStrategy,
                at,
                format!("strategy `{}` {e}", display_path(&path)),
            )
            .help =
                Some("strategies and templates must live in the spec's repository (or under --root)".into());
            return false;
        }
        let bytes = match crate::fsread::read(&path, cx.env.limits.max_bytes as u64) {
            Ok(b) => b,
            Err(e) => {
                let at = cx.at(cur, "/uses");
                cx.error(
                    Code::UnknownStrategy,
                    at,
                    format!("cannot read strategy `{}`: {e}", display_path(&path)),
                )
                .help = Some("`uses` is a path relative to the file that contains it".into());
                return false;
            }
        };
        let doc = match yaml::load_bytes(&bytes, cx.env.limits) {
            Ok(d) => d,
            Err(diags) => {
                let display: Arc<str> = display_path(&path).into();
                for mut d in diags {
                    d.file = Some(display.clone());
                    cx.errors.push(d);
                }
                return false;
            }
        };
        if doc.value.get("kind").and_then(Value::as_str) != Some("Strategy") {
            let at = cx.at(cur, "/uses");
            cx.error(
                Code::UnknownStrategy,
                at,
                format!("`{}` is not a Strategy (`kind: Strategy`)", display_path(&path)),
            );
            return false;
        }
        seen.push(canon);
        cx.sources.push(Source {
            display: display_path(&path).into(),
            path,
            doc,
        });
    }
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

const PARAM_TYPES: &[&str] = &["string", "integer", "number", "boolean", "duration", "array"];

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "duration" => v.as_str().is_some_and(|s| crate::duration::parse(s).is_ok()),
        "array" => v.is_array(),
        _ => true,
    }
}

/// Declarations (innermost first, outer overriding) checked against values.
fn resolve_params(cx: &mut Ctx<'_>) -> Map<String, Value> {
    let mut decls: BTreeMap<String, (usize, Map<String, Value>)> = BTreeMap::new();
    let is_rollout = cx.sources[0].doc.value.get("kind").and_then(Value::as_str) == Some("Rollout");
    // A Strategy checked on its own declares parameters itself.
    let first = usize::from(is_rollout);
    for i in (first..cx.sources.len()).rev() {
        let Some(Value::Object(ps)) = cx.sources[i].doc.value.get("params").cloned() else {
            continue;
        };
        for (name, d) in ps {
            let mut ptr = String::from("/params");
            push_pointer_segment(&mut ptr, &name);
            let Value::Object(d) = d else {
                let at = cx.at(i, &ptr);
                cx.error(Code::InvalidParam, at, format!("parameter `{name}` must be declared as a mapping: {{type, default, enum, required, description}}"));
                continue;
            };
            let ty = d
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("string")
                .to_owned();
            if !PARAM_TYPES.contains(&ty.as_str()) {
                let at = cx.at(i, &format!("{ptr}/type"));
                cx.error(
                    Code::InvalidParam,
                    at,
                    format!(
                        "parameter `{name}` has unknown type `{ty}`; use one of {}",
                        PARAM_TYPES.join(", ")
                    ),
                );
            }
            for k in d.keys() {
                if !matches!(
                    k.as_str(),
                    "type" | "default" | "enum" | "required" | "description"
                ) {
                    let mut kp = ptr.clone();
                    push_pointer_segment(&mut kp, k);
                    let at = cx.key_at(i, &kp);
                    cx.error(
                        Code::InvalidParam,
                        at,
                        format!("unknown field `{k}` in the declaration of parameter `{name}`"),
                    )
                    .help = Some("known fields: type, default, enum, required, description".into());
                }
            }
            if let Some(def) = d.get("default")
                && !type_ok(&ty, def)
            {
                let at = cx.at(i, &format!("{ptr}/default"));
                cx.error(
                    Code::InvalidParam,
                    at,
                    format!("default of parameter `{name}` is {}, not a {ty}", show(def)),
                );
            }
            decls.insert(name, (i, d));
        }
    }
    let mut values = Map::new();
    let given: Vec<(String, Value, Option<String>)> = {
        let mut g: Vec<(String, Value, Option<String>)> = Vec::new();
        if is_rollout && let Some(Value::Object(ps)) = cx.sources[0].doc.value.get("params") {
            for (k, v) in ps {
                let mut ptr = String::from("/params");
                push_pointer_segment(&mut ptr, k);
                g.push((k.clone(), v.clone(), Some(ptr)));
            }
        }
        for (k, v) in cx.env.overrides {
            g.retain(|(n, _, _)| n != k);
            g.push((k.clone(), v.clone(), None));
        }
        g
    };
    let uses_chain = cx.sources.len() > 1;
    for (name, v, ptr) in given {
        let where_ = |cx: &Ctx<'_>, key: bool| match &ptr {
            Some(p) if key => cx.key_at(0, p),
            Some(p) => cx.at(0, p),
            None => Loc {
                file: Some("--set".into()),
                span: Span::point(crate::diag::Pos { line: 1, col: 1 }),
            },
        };
        match decls.get(&name) {
            None if uses_chain => {
                let known: Vec<&str> = decls.keys().map(String::as_str).collect();
                let at = where_(cx, true);
                let d = cx.error(
                    Code::InvalidParam,
                    at,
                    format!("unknown parameter `{name}`: the strategy does not declare it"),
                );
                d.help = Some(match did_you_mean(&name, known.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if known.is_empty() => "the strategy declares no parameters".into(),
                    None => format!("declared parameters: {}", known.join(", ")),
                });
            }
            None => {
                values.insert(name, v);
            }
            Some((src, d)) => {
                let ty = d.get("type").and_then(Value::as_str).unwrap_or("string");
                let decl_at = cx.key_at(*src, &format!("/params/{name}"));
                if !type_ok(ty, &v) {
                    let at = where_(cx, false);
                    cx.error(
                        Code::InvalidParam,
                        at,
                        format!("parameter `{name}` must be a {ty}, found {}", show(&v)),
                    )
                    .related
                    .push(crate::diag::Related {
                        file: decl_at.file,
                        span: decl_at.span,
                        label: "declared here".into(),
                    });
                    continue;
                }
                if let Some(Value::Array(allowed)) = d.get("enum")
                    && !allowed.contains(&v)
                {
                    let opts: Vec<String> = allowed.iter().map(show).collect();
                    let at = where_(cx, false);
                    cx.error(
                        Code::InvalidParam,
                        at,
                        format!(
                            "parameter `{name}` must be one of {}, found {}",
                            opts.join(", "),
                            show(&v)
                        ),
                    );
                    continue;
                }
                values.insert(name, v);
            }
        }
    }
    for (name, (src, d)) in &decls {
        if values.contains_key(name) {
            continue;
        }
        if let Some(def) = d.get("default") {
            values.insert(name.clone(), def.clone());
            continue;
        }
        let required = d.get("required").and_then(Value::as_bool).unwrap_or(true);
        if is_rollout && !required {
            continue;
        }
        // A typed placeholder stands in for a value only a Rollout can give
        // (checking a Strategy alone), or that is missing (reported once
        // here, not again by every template that uses it).
        let placeholder = match d.get("type").and_then(Value::as_str).unwrap_or("string") {
            "integer" | "number" => json!(1),
            "boolean" => json!(false),
            "duration" => json!("1s"),
            "array" => json!([]),
            _ => json!(name),
        };
        values.insert(name.clone(), placeholder);
        if is_rollout {
            let decl_at = cx.key_at(*src, &format!("/params/{name}"));
            let at = cx.key_at(0, "/uses");
            cx.error(
                Code::InvalidParam,
                at,
                format!("missing required parameter `{name}`"),
            )
            .with_related_mut(decl_at, "declared here");
        }
    }
    values
}

impl Diagnostic {
    fn with_related_mut(&mut self, at: Loc, label: &str) -> &mut Self {
        self.related.push(crate::diag::Related {
            file: at.file,
            span: at.span,
            label: label.into(),
        });
        self
    }
}

/// The step list after every layer's `customize`, plus the handlers.
fn assemble(cx: &mut Ctx<'_>) -> (Vec<Item>, Vec<Item>) {
    let last = cx.sources.len() - 1;
    let list = |cx: &Ctx<'_>, i: usize, key: &str| -> Vec<Item> {
        cx.sources[i]
            .doc
            .value
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(j, v)| Item {
                        value: v.clone(),
                        source: i,
                        pointer: format!("/{key}/{j}"),
                        with: None,
                        inner_with: Vec::new(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut items = list(cx, last, "steps");
    let mut handlers = Vec::new();
    for i in (0..=last).rev() {
        handlers.extend(list(cx, i, "on-failure"));
        if i < last && cx.sources[i].doc.value.get("steps").is_some() {
            let at = cx.key_at(i, "/steps");
            cx.error(
                Code::InvalidCustomize,
                at,
                "a spec with `uses` takes its steps from the strategy; add steps with `customize.add`",
            );
        }
        let Some(Value::Object(c)) = cx.sources[i].doc.value.get("customize").cloned() else {
            continue;
        };
        if i == last {
            let at = cx.key_at(i, "/customize");
            cx.error(
                Code::InvalidCustomize,
                at,
                "`customize` changes a strategy, but this spec has no `uses`",
            )
            .help = Some("edit the steps directly, or add `uses:`".into());
            continue;
        }
        if let Some(Value::Array(remove)) = c.get("remove") {
            for (j, id) in remove.iter().enumerate() {
                let id = id.as_str().unwrap_or_default();
                match items.iter().position(|it| item_id(it) == id) {
                    Some(pos) => {
                        let gone = items.remove(pos);
                        let needs = needs_of(&gone.value);
                        for it in &mut items {
                            rewire(&mut it.value, id, &needs);
                        }
                    }
                    None => unknown_id(cx, &items, i, &format!("/customize/remove/{j}"), id, "remove"),
                }
            }
        }
        let mut changes: Vec<(&str, &String, &Value)> = Vec::new();
        for key in ["with", "replace"] {
            if let Some(Value::Object(m)) = c.get(key) {
                changes.extend(m.iter().map(|(id, w)| (key, id, w)));
            }
        }
        if let (Some(Value::Object(w)), Some(Value::Object(r))) = (c.get("with"), c.get("replace")) {
            for id in r.keys().filter(|id| w.contains_key(*id)) {
                let mut ptr = String::from("/customize/replace");
                push_pointer_segment(&mut ptr, id);
                let at = cx.key_at(i, &ptr);
                cx.error(
                    Code::InvalidCustomize,
                    at,
                    format!(
                        "step `{id}` is in both `customize.with` (merge) and `customize.replace`; choose one"
                    ),
                );
            }
        }
        for (key, id, w) in changes {
            let mut ptr = format!("/customize/{key}");
            push_pointer_segment(&mut ptr, id);
            // `group.inner` addresses a step inside a for-each group.
            let (outer, inner) = id
                .split_once('.')
                .map_or((id.as_str(), None), |(a, b)| (a, Some(b)));
            let Some(it) = items.iter_mut().find(|it| item_id(it) == outer) else {
                unknown_id(cx, &items, i, &ptr, id, key);
                continue;
            };
            let target = match inner {
                None => Some(&mut it.value),
                Some(inner) => it
                    .value
                    .get_mut("steps")
                    .and_then(Value::as_array_mut)
                    .and_then(|a| {
                        a.iter_mut()
                            .find(|s| s.get("id").and_then(Value::as_str) == Some(inner))
                    }),
            };
            match target {
                Some(t) => {
                    if key == "replace" || !t["with"].is_object() {
                        t["with"] = w.clone();
                    } else {
                        merge_patch(&mut t["with"], w);
                    }
                    // The changed `with` is written here: locate it here.
                    match inner {
                        None => it.with = Some((i, ptr.clone())),
                        Some(inner) => {
                            it.inner_with.retain(|(id, _)| id != inner);
                            it.inner_with.push((inner.to_owned(), (i, ptr.clone())));
                        }
                    }
                }
                None => unknown_id(cx, &items, i, &ptr, id, key),
            }
        }
        if let Some(Value::Object(needs)) = c.get("needs") {
            for (id, n) in needs {
                let mut ptr = String::from("/customize/needs");
                push_pointer_segment(&mut ptr, id);
                match items.iter_mut().find(|it| item_id(it) == id) {
                    Some(it) => it.value["needs"] = n.clone(),
                    None => unknown_id(cx, &items, i, &ptr, id, "needs"),
                }
            }
        }
        if let Some(Value::Array(add)) = c.get("add") {
            for (j, v) in add.iter().enumerate() {
                items.push(Item {
                    value: v.clone(),
                    source: i,
                    pointer: format!("/customize/add/{j}"),
                    with: None,
                    inner_with: Vec::new(),
                });
            }
        }
    }
    (items, handlers)
}

/// RFC 7396 merge: objects merge key by key, `null` removes a key, any
/// other value (a list included) replaces.
/// (The `json-patch` crate's.)
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

fn item_id(it: &Item) -> &str {
    it.value.get("id").and_then(Value::as_str).unwrap_or_default()
}

fn needs_of(v: &Value) -> Vec<Value> {
    v.get("needs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Replaces `id` in `needs` by `with` (what a removed step needed).
fn rewire(v: &mut Value, id: &str, with: &[Value]) {
    let Some(needs) = v.get_mut("needs").and_then(Value::as_array_mut) else {
        return;
    };
    if let Some(pos) = needs.iter().position(|n| n.as_str() == Some(id)) {
        needs.remove(pos);
        for w in with {
            if !needs.contains(w) {
                needs.push(w.clone());
            }
        }
    }
}

fn unknown_id(cx: &mut Ctx<'_>, items: &[Item], layer: usize, ptr: &str, id: &str, what: &str) {
    let known: Vec<&str> = items.iter().map(item_id).collect();
    let at = if what == "remove" {
        cx.at(layer, ptr)
    } else {
        cx.key_at(layer, ptr)
    };
    let d = cx.error(
        Code::InvalidCustomize,
        at,
        format!("`customize.{what}` names step `{id}`, but the strategy has no such step"),
    );
    d.help = Some(match did_you_mean(id, known.iter().copied()) {
        Some(s) => format!("did you mean `{s}`?"),
        None => format!("steps: {}", known.join(", ")),
    });
}

/// The most items a `for-each` group repeats over.
pub const MAX_ITEMS: usize = 1_000;
/// The most steps an expanded plan may have.
pub const MAX_STEPS: usize = 20_000;

/// Unrolls `for-each` groups. Returns the flat steps and their origins.
fn unroll(cx: &mut Ctx<'_>, items: Vec<Item>, params: &Map<String, Value>) -> (Vec<Value>, Vec<Origin>) {
    // Exit ids of each group, for outer `needs: [group]`.
    let mut exits: HashMap<String, Vec<String>> = HashMap::new();
    let mut steps = Vec::new();
    let mut origins = Vec::new();
    for it in &items {
        let Some(each) = it.value.get("for-each") else {
            steps.push(it.value.clone());
            origins.push(Origin {
                source: it.source,
                pointer: it.pointer.clone(),
                item: None,
                with: it.with.clone(),
            });
            continue;
        };
        let gid = item_id(it).to_owned();
        let values = match each {
            Value::Array(a) => Some(a.clone()),
            Value::String(s) => match lookup_template(s, params) {
                Some(Value::Array(a)) => Some(a),
                Some(other) => {
                    let at = cx.at(it.source, &format!("{}/for-each", it.pointer));
                    cx.error(
                        Code::Template,
                        at,
                        format!("`for-each` must be a list, and `{s}` is {}", show(&other)),
                    );
                    None
                }
                None => {
                    let at = cx.at(it.source, &format!("{}/for-each", it.pointer));
                    cx.error(
                        Code::Template,
                        at,
                        format!(
                            "`for-each: {s}` must name a list parameter, e.g. \"{{{{params.weights}}}}\""
                        ),
                    );
                    None
                }
            },
            _ => None,
        };
        let Some(values) = values else { continue };
        if values.len() > MAX_ITEMS {
            let at = cx.at(it.source, &format!("{}/for-each", it.pointer));
            cx.error(
                Code::Template,
                at,
                format!(
                    "`for-each` has {} items; a group repeats at most {MAX_ITEMS} times",
                    values.len()
                ),
            );
            continue;
        }
        let inner: Vec<Value> = it
            .value
            .get("steps")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let inner_ids: Vec<String> = inner
            .iter()
            .filter_map(|s| s.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect();
        if let Some((j, _)) = inner
            .iter()
            .enumerate()
            .find(|(_, s)| s.get("for-each").is_some())
        {
            let at = cx.at(it.source, &format!("{}/steps/{j}/for-each", it.pointer));
            cx.error(Code::Template, at, "for-each groups cannot be nested");
            continue;
        }
        // Inner steps that another inner step needs are not exits.
        let needed_inside: HashSet<String> = inner
            .iter()
            .flat_map(needs_of)
            .filter_map(|n| n.as_str().map(str::to_owned))
            .filter(|n| inner_ids.contains(n))
            .collect();
        let entry: Vec<usize> = inner
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                !needs_of(s)
                    .iter()
                    .any(|n| n.as_str().is_some_and(|n| inner_ids.iter().any(|i| i == n)))
            })
            .map(|(j, _)| j)
            .collect();
        let exit_idx: Vec<usize> = (0..inner.len())
            .filter(|j| inner_ids.get(*j).is_some_and(|id| !needed_inside.contains(id)))
            .collect();
        let mut prev_exits: Vec<Value> = needs_of(&it.value);
        for v in &values {
            let label = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let name = |id: &str| format!("{gid}[{label}].{id}");
            let mut this_exits = Vec::new();
            for (j, s) in inner.iter().enumerate() {
                let mut s = s.clone();
                let id = s.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                s["id"] = Value::String(name(&id));
                let mut needs: Vec<Value> = needs_of(&s)
                    .into_iter()
                    .map(|n| match n.as_str() {
                        Some(n) if inner_ids.iter().any(|i| i == n) => Value::String(name(n)),
                        _ => n,
                    })
                    .collect();
                if entry.contains(&j) {
                    for p in &prev_exits {
                        if !needs.contains(p) {
                            needs.push(p.clone());
                        }
                    }
                }
                if needs.is_empty() {
                    if let Some(m) = s.as_object_mut() {
                        m.remove("needs");
                    }
                } else {
                    s["needs"] = Value::Array(needs);
                }
                // Templates see `item`: bind it now by rendering later with this item.
                if let Some(m) = s.as_object_mut() {
                    m.insert("__item".into(), v.clone());
                }
                if exit_idx.contains(&j) {
                    this_exits.push(Value::String(name(&id)));
                }
                steps.push(s);
                origins.push(Origin {
                    source: it.source,
                    pointer: format!("{}/steps/{j}", it.pointer),
                    item: Some(v.clone()),
                    with: it
                        .inner_with
                        .iter()
                        .find(|(i, _)| *i == id)
                        .map(|(_, w)| w.clone()),
                });
            }
            prev_exits = this_exits;
        }
        exits.insert(
            gid,
            prev_exits
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        );
    }
    // Outer `needs: [group]` → the last iteration's exits.
    for s in &mut steps {
        if let Some(needs) = s.get_mut("needs").and_then(Value::as_array_mut) {
            let mut out: Vec<Value> = Vec::new();
            for n in needs.drain(..) {
                match n.as_str().and_then(|n| exits.get(n)) {
                    Some(ex) => out.extend(ex.iter().cloned().map(Value::String)),
                    None => out.push(n),
                }
            }
            *needs = out;
        }
    }
    (steps, origins)
}

/// The value a whole-value template `{{a.b.c}}` names, if it is one.
fn lookup_template(s: &str, ctx: &Map<String, Value>) -> Option<Value> {
    let path = whole_path(s)?;
    let mut segs = path.split('.');
    let first = segs.next()?;
    // `params.x` against a params map, or a full context.
    let mut v = if first == "params" && !ctx.contains_key("params") {
        Value::Object(ctx.clone())
    } else {
        ctx.get(first)?.clone()
    };
    for seg in segs {
        v = match &v {
            Value::Object(m) => m.get(seg)?.clone(),
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?.clone(),
            _ => return None,
        };
    }
    Some(v)
}

/// `{{ a.b }}` → `a.b` when the string is exactly one simple expression.
fn whole_path(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?.trim();
    (!inner.is_empty()
        && !inner.contains("{{")
        && !inner.contains("}}")
        && inner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
    .then_some(inner)
}

/// The template context shared by values and manifests (without `steps`).
fn context(exp: &Expanded, item: Option<&Value>) -> Map<String, Value> {
    let v = &exp.value;
    let mut ctx = Map::new();
    ctx.insert("params".into(), Value::Object(exp.params.clone()));
    for key in ["model", "target", "serving", "metadata"] {
        ctx.insert(key.into(), v.get(key).cloned().unwrap_or_else(|| json!({})));
    }
    if let Some(i) = item {
        ctx.insert("item".into(), i.clone());
    }
    ctx
}

/// `steps.<id>.outputs.<key>` of every step: runtime references render to
/// themselves (the executor resolves them). Kept apart from the context and
/// joined only for templates that name `steps.`, so that rendering stays
/// linear in the number of steps.
fn step_outputs(exp: &Expanded, registry: &Registry) -> Value {
    let v = &exp.value;
    let mut steps = Map::new();
    for s in v.get("steps").and_then(Value::as_array).into_iter().flatten() {
        let (Some(id), Some(kind)) = (
            s.get("id").and_then(Value::as_str),
            s.get("type").and_then(Value::as_str),
        ) else {
            continue;
        };
        let outputs: Map<String, Value> = registry
            .get(kind)
            .map(|k| k.outputs())
            .unwrap_or_default()
            .iter()
            .map(|o| {
                (
                    (*o).to_owned(),
                    Value::String(format!("{{{{steps.{id}.outputs.{o}}}}}")),
                )
            })
            .collect();
        steps.insert(id.to_owned(), json!({"outputs": outputs}));
    }
    Value::Object(steps)
}

/// Renders every templated string of the flat spec in place.
fn render_values(exp: &mut Expanded, env: &Env<'_>, errors: &mut Vec<Diagnostic>) {
    let mut base = context(exp, None);
    let steps = step_outputs(exp, env.registry);
    let mut value = std::mem::take(&mut exp.value);
    for key in ["model", "target", "serving", "defaults", "metadata"] {
        if let Some(v) = value.get_mut(key) {
            let ptr = format!("/{key}");
            render_in(v, &ptr, &base, &steps, exp, errors);
        }
    }
    for list in ["steps", "on-failure"] {
        let Some(Value::Array(items)) = value.get_mut(list) else {
            continue;
        };
        for (i, s) in items.iter_mut().enumerate() {
            match s.as_object_mut().and_then(|m| m.remove("__item")) {
                Some(it) => base.insert("item".into(), it),
                None => base.remove("item"),
            };
            let Some(m) = s.as_object_mut() else { continue };
            for (k, v) in m.iter_mut() {
                if matches!(k.as_str(), "id" | "needs" | "type") {
                    continue;
                }
                let ptr = format!("/{list}/{i}/{k}");
                render_in(v, &ptr, &base, &steps, exp, errors);
            }
        }
    }
    exp.value = value;
}

fn render_in(
    v: &mut Value,
    ptr: &str,
    base: &Map<String, Value>,
    steps: &Value,
    exp: &Expanded,
    errors: &mut Vec<Diagnostic>,
) {
    match v {
        Value::String(s) if s.contains("{{") => {
            // Only a template naming `steps.` sees them, and only the steps
            // it names (copying every step per value would be quadratic).
            let with_steps;
            let ctx = if s.contains("steps.") {
                let mut named = Map::new();
                for (i, _) in s.match_indices("steps.") {
                    // Ids may hold dots (`ramp[20].hold`): up to `.outputs`.
                    let rest = &s[i + 6..];
                    let id = rest.split(".outputs").next().unwrap_or(rest);
                    let id: String = id
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '}')
                        .collect();
                    if let Some(v) = steps.get(&id) {
                        named.insert(id, v.clone());
                    }
                }
                let mut c = base.clone();
                c.insert("steps".into(), Value::Object(named));
                with_steps = c;
                &with_steps
            } else {
                base
            };
            if let Some(path) = whole_path(s) {
                if path.starts_with("steps.") {
                    // A runtime reference: known step and output, resolved by the executor.
                    if lookup_template(s, ctx).is_none() {
                        errors.push(bad_runtime_ref(exp, ptr, path, ctx));
                    }
                    return;
                }
                match lookup_template(s, ctx) {
                    Some(found) => *v = found,
                    None => errors.push(unknown_variable(exp, ptr, path, ctx)),
                }
                return;
            }
            match crate::render::render_str(s, &Value::Object(ctx.clone())) {
                Ok(out) => *s = out,
                Err(e) => {
                    errors.push(match e.missing {
                        Some(p) if p.starts_with("steps.") => bad_runtime_ref(exp, ptr, &p, ctx),
                        Some(p) => unknown_variable(exp, ptr, &p, ctx),
                        None => Diagnostic::new(
                            Code::Template,
                            exp.locate(ptr),
                            format!("invalid template: {}", e.message),
                        ),
                    });
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                render_in(x, &format!("{ptr}/{i}"), base, steps, exp, errors);
            }
        }
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                let mut p = ptr.to_owned();
                push_pointer_segment(&mut p, k);
                render_in(x, &p, base, steps, exp, errors);
            }
        }
        _ => {}
    }
}

fn unknown_variable(exp: &Expanded, ptr: &str, path: &str, ctx: &Map<String, Value>) -> Diagnostic {
    let head = path.split('.').next().unwrap_or_default();
    let help = match (head, ctx.get(head)) {
        ("params", Some(Value::Object(p))) => {
            let names: Vec<&str> = p.keys().map(String::as_str).collect();
            let wanted = path.split('.').nth(1).unwrap_or_default();
            match did_you_mean(wanted, names.iter().copied()) {
                Some(s) => format!("did you mean `params.{s}`?"),
                None if names.is_empty() => "no parameters are declared".into(),
                None => format!("parameters: {}", names.join(", ")),
            }
        }
        ("item", None) => "`item` exists only inside a for-each group".into(),
        _ => "variables: params.*, model.name, model.version, model.registry, target.context, target.namespace, target.environment, serving.*, metadata.name, item (in for-each), steps.<id>.outputs.<key>".into(),
    };
    Diagnostic::new(
        Code::Template,
        exp.locate(ptr),
        format!("unknown variable `{path}` in template"),
    )
    .with_help(help)
}

fn bad_runtime_ref(exp: &Expanded, ptr: &str, path: &str, ctx: &Map<String, Value>) -> Diagnostic {
    let mut it = path.split('.');
    let _ = it.next();
    let id = it.next().unwrap_or_default();
    let steps = ctx.get("steps").and_then(Value::as_object);
    let msg = match steps.and_then(|s| s.get(id)) {
        None => format!("runtime reference `{path}` names step `{id}`, which does not exist"),
        Some(s) => {
            let outs: Vec<&str> = s["outputs"]
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            if outs.is_empty() {
                format!("runtime reference `{path}`: step `{id}` has no outputs")
            } else {
                format!(
                    "runtime reference `{path}`: step `{id}` outputs {}",
                    outs.join(", ")
                )
            }
        }
    };
    Diagnostic::new(Code::Template, exp.locate(ptr), msg)
}

/// Renders `apply` manifest templates with the shared context: each
/// template confined to the repository, read with the size cap, rendered
/// within the budget, its values proven to be data, and its own text
/// scanned for literal secrets like a spec.
fn render_manifests(
    exp: &mut Expanded,
    root: &Path,
    registry: &Registry,
    limits: &Limits,
    errors: &mut Vec<Diagnostic>,
) {
    let ctx = Value::Object(context(exp, None));
    let steps: Vec<(usize, String, String)> = exp
        .value
        .get("steps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, s)| {
            let kind = registry.get(s.get("type")?.as_str()?)?;
            Some((
                i,
                s.get("id")?.as_str()?.to_owned(),
                kind.template(s.get("with")?)?.to_owned(),
            ))
        })
        .collect();
    for (i, id, rel) in steps {
        // A path written in a file is relative to that file; a path given as
        // a parameter (`{{params.manifest}}`) is relative to the Rollout.
        let (src, ptr) = exp.origin_of(&format!("/steps/{i}/with/template"));
        let templated = exp.sources[src]
            .doc
            .value
            .pointer(&ptr)
            .and_then(Value::as_str)
            .is_some_and(|t| t.contains("{{"));
        let base = if templated { 0 } else { src };
        let path = resolve_relative(&exp.sources[base].path, &rel);
        let ptr = format!("/steps/{i}/with/template");
        let shown = display_path(&path);
        let refuse = |errors: &mut Vec<Diagnostic>, msg: String, help: &str| {
            errors.push(Diagnostic::new(Code::Template, exp.locate(&ptr), msg).with_help(help));
        };
        if let Err(e) = crate::fsread::confine(root, &path) {
            refuse(
                errors,
                format!("manifest template `{shown}` {e}"),
                "strategies and templates must live in the spec's repository (or under --root)",
            );
            continue;
        }
        let text = match crate::fsread::read_string(&path, limits.max_bytes as u64) {
            Ok(t) => t,
            Err(e) => {
                refuse(
                    errors,
                    format!("cannot read manifest template `{shown}`: {e}"),
                    "`template` is a path relative to the file that contains it",
                );
                continue;
            }
        };
        let at = |line: Option<usize>, col: Option<usize>| Loc {
            file: Some(shown.clone().into()),
            span: Span::point(crate::diag::Pos {
                line: u32::try_from(line.unwrap_or(1)).unwrap_or(1),
                col: u32::try_from(col.unwrap_or(1)).unwrap_or(1),
            }),
        };
        let rendered = crate::render::compile(&text).and_then(|t| crate::render::render_manifest(&t, &ctx));
        match rendered {
            Ok(m) => {
                // The template's own text (values masked) holds no secret.
                for (offset, doc) in crate::yaml::split_documents(&m.skeleton) {
                    if let Ok(d) = crate::yaml::load_str(&doc, limits) {
                        for mut f in crate::validate::secrets(&d).0 {
                            f.file = Some(shown.clone().into());
                            f.span.start.line += offset;
                            f.span.end.line += offset;
                            f.related.push(crate::diag::Related {
                                file: None,
                                span: exp.locate(&ptr).span,
                                label: "rendered for this step".into(),
                            });
                            errors.push(f);
                        }
                    }
                }
                exp.manifests.push(Manifest {
                    step: id,
                    path: shown,
                    text: m.text,
                });
            }
            Err(e) => {
                let msg = match &e.missing {
                    Some(p) => format!("unknown variable `{p}` in manifest template"),
                    None => format!("manifest template does not render: {}", e.message),
                };
                errors.push(
                    Diagnostic::new(Code::Template, at(e.line, e.col), msg)
                        .with_related(exp.locate(&ptr), "used here"),
                );
            }
        }
    }
}
