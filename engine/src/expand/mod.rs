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
use std::sync::{Arc, RwLock};

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
    /// Its content (a strategy's is shared by every spec that uses it).
    pub doc: Arc<Document>,
    /// Its canonical path, for a strategy (what caches key on).
    pub canonical: Option<PathBuf>,
}

/// How reading a strategy file failed.
#[derive(Debug, Clone)]
pub(crate) enum StrategyFailure {
    /// It could not be read (the message).
    Read(String),
    /// It is not valid YAML (the diagnostics, not yet naming the file).
    Parse(Vec<Diagnostic>),
}

/// A file's secret findings and the values they found.
pub(crate) type SecretScan = Arc<(Vec<Diagnostic>, Vec<String>)>;

/// A manifest template as read and compiled, or why it could not be read.
type TemplateEntry = Result<Arc<Result<handlebars::template::Template, crate::render::Failure>>, String>;

/// Strategy files and manifest templates, read and parsed (compiled) once
/// per [`crate::Linter`] — one `lint`, `plan` or `run` — and shared by every
/// spec that uses them, on every thread. Keyed by canonical path; bounded
/// (past [`Cache::MAX`] entries a file is read each time, so memory stays
/// flat whatever the repository holds).
#[derive(Debug, Default)]
pub struct Cache {
    strategies: RwLock<HashMap<PathBuf, Result<Arc<Document>, StrategyFailure>>>,
    templates: RwLock<HashMap<PathBuf, TemplateEntry>>,
    /// The repository root of each spec directory.
    roots: RwLock<HashMap<PathBuf, PathBuf>>,
    /// A strategy's secret findings and values, by its canonical path.
    secrets: RwLock<HashMap<PathBuf, SecretScan>>,
}

impl Cache {
    /// The most files of each sort kept.
    pub const MAX: usize = 4096;

    fn get_or<V: Clone>(map: &RwLock<HashMap<PathBuf, V>>, key: &Path, make: impl FnOnce() -> V) -> V {
        if let Some(v) = map.read().ok().and_then(|m| m.get(key).cloned()) {
            return v;
        }
        let v = make();
        if let Ok(mut m) = map.write()
            && m.len() < Self::MAX
        {
            m.entry(key.to_path_buf()).or_insert_with(|| v.clone());
        }
        v
    }

    pub(crate) fn strategy(
        &self,
        canonical: &Path,
        make: impl FnOnce() -> Result<Arc<Document>, StrategyFailure>,
    ) -> Result<Arc<Document>, StrategyFailure> {
        Self::get_or(&self.strategies, canonical, make)
    }

    pub(crate) fn template(&self, canonical: &Path, make: impl FnOnce() -> TemplateEntry) -> TemplateEntry {
        Self::get_or(&self.templates, canonical, make)
    }

    /// [`crate::fsread::repository_root`] of a directory, found once.
    pub(crate) fn repository_root(&self, dir: &Path) -> PathBuf {
        Self::get_or(&self.roots, dir, || crate::fsread::repository_root(dir))
    }

    /// The secret scan of a strategy (a source other than the spec), once.
    pub(crate) fn secrets(&self, src: &Source) -> SecretScan {
        let scan = || Arc::new(crate::validate::secrets(&src.doc));
        match &src.canonical {
            Some(c) => Self::get_or(&self.secrets, c, scan),
            None => scan(),
        }
    }
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

pub use crate::spec::Manifest;

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
    /// Strategies and templates already read (none: read each time).
    pub cache: Option<&'a Cache>,
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
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            match env.cache {
                Some(c) => c.repository_root(dir),
                None => crate::fsread::repository_root(dir),
            }
        },
        Path::to_path_buf,
    );
    let mut cx = Ctx {
        env,
        sources: vec![Source {
            display: display_path(path).into(),
            path: path.to_path_buf(),
            doc: Arc::new(root),
            canonical: None,
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
        render_manifests(&mut expanded, &cx.root, env, &mut cx.errors);
    }
    (Some(expanded), cx.errors)
}

/// The most items a `for-each` group repeats over.
pub const MAX_ITEMS: usize = 1_000;
/// The most steps an expanded plan may have.
pub const MAX_STEPS: usize = 20_000;

mod customize;
mod params;
mod render;
mod unroll;
mod uses;

pub use customize::merge_patch;
use customize::{assemble, item_id, needs_of};
use params::resolve_params;
use render::{lookup_template, render_manifests, render_values};
use unroll::unroll;
use uses::follow_uses;

#[cfg(test)]
mod tests {
    use super::*;

    /// One read per file for every spec of a linter; a bounded map.
    #[test]
    fn the_cache_reads_a_file_once_and_stays_bounded() {
        let cache = Cache::default();
        let reads = std::cell::Cell::new(0);
        let load = || {
            reads.set(reads.get() + 1);
            yaml::load_str("kind: Strategy\n", &Limits::default())
                .map(Arc::new)
                .map_err(StrategyFailure::Parse)
        };
        let a = cache.strategy(Path::new("/s/canary.yaml"), load).unwrap();
        let b = cache.strategy(Path::new("/s/canary.yaml"), load).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the same parsed document");
        assert_eq!(reads.get(), 1);
        // A failure is remembered too: a broken strategy is not re-read per spec.
        let broken = || {
            reads.set(reads.get() + 1);
            Err(StrategyFailure::Read("gone".into()))
        };
        assert!(cache.strategy(Path::new("/s/broken.yaml"), broken).is_err());
        assert!(cache.strategy(Path::new("/s/broken.yaml"), broken).is_err());
        assert_eq!(reads.get(), 2);
        for i in 0..Cache::MAX + 10 {
            let _ = cache.template(&PathBuf::from(format!("/t/{i}.hbs")), || Err("x".into()));
        }
        assert_eq!(cache.templates.read().unwrap().len(), Cache::MAX);
    }
}
