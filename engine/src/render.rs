//! Rendering templates safely: values are data, never structure, and every
//! render is bounded.
//!
//! Handlebars templates render spec values (`canary: "{{item}}"`) and
//! manifest templates (`*.yaml.hbs`). A parameter is input too, so:
//! - **Budgets.** Every render has an iteration budget (a `{{#each}}` of ours
//!   replaces the built-in one and counts), an output cap and a time limit:
//!   four nested `{{#each}}` over 300 items, or one that yields nothing,
//!   stop with a located error instead of running for minutes.
//! - **No partials, decorators or raw (`{{{…}}}`/`{{&…}}`) expressions** in
//!   templates: nothing renders around the checks below.
//! - **Values cannot change a manifest's structure.** A manifest renders
//!   twice: once with every substituted value replaced by an inert token,
//!   once for real. Both are parsed as YAML and must have the same shape —
//!   the same documents, keys and list lengths, each token's scalar holding
//!   exactly the value substituted into it. A parameter carrying
//!   `}\n---\nkind: Secret…` adds a document (or a key) in the real render
//!   only, and is refused, located at the template line it was substituted
//!   into. (Escaping cannot do this in YAML: the same value is safe in one
//!   position and structure in another.)

use std::cell::RefCell;
use std::time::{Duration, Instant};

use handlebars::template::{Template, TemplateElement};
use handlebars::{
    BlockContext, BlockParams, Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext,
    RenderError, RenderErrorReason, Renderable, to_json,
};
use serde_json::Value;

/// Limits of one render.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// `{{#each}}` iterations, all loops together.
    pub iterations: u64,
    /// Bytes of output.
    pub output: usize,
    /// Wall time.
    pub time: Duration,
}

/// The budget of a manifest template or a spec value.
pub const BUDGET: Budget = Budget {
    iterations: 100_000,
    output: 1024 * 1024,
    time: Duration::from_secs(2),
};

/// Why a template did not render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// 1-based line in the template, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub col: Option<usize>,
    /// What went wrong, for people.
    pub message: String,
    /// A strict-mode unknown variable (its path).
    pub missing: Option<String>,
}

impl Failure {
    fn at(line: Option<usize>, col: Option<usize>, message: impl Into<String>) -> Self {
        Failure {
            line,
            col,
            message: message.into(),
            missing: None,
        }
    }
}

#[derive(Default)]
struct State {
    /// Set while a render with a budget runs.
    budget: Option<(u64, Instant, Duration)>,
    /// `Some` while tokenizing: the values substituted, in order.
    tokens: Option<Vec<String>>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// The token standing for the `i`th substituted value: inert in any YAML
/// position (letters and digits only).
fn token(i: usize) -> String {
    format!("rwTok{i:06}x")
}

fn escape(value: &str) -> String {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        match &mut s.tokens {
            Some(t) => {
                t.push(value.to_owned());
                token(t.len() - 1)
            }
            None => value.to_owned(),
        }
    })
}

/// Charges `n` iterations; fails when the budget is spent or time is up.
fn charge(n: u64) -> Result<(), RenderError> {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if let Some((left, start, limit)) = &mut s.budget {
            if *left < n {
                return Err(RenderErrorReason::Other(format!(
                    "the template iterates more than {} times (nested `each` over large lists?)",
                    BUDGET.iterations
                ))
                .into());
            }
            *left -= n;
            if start.elapsed() > *limit {
                return Err(RenderErrorReason::Other(format!(
                    "the template took longer than {} to render",
                    crate::duration::Display(*limit)
                ))
                .into());
            }
        }
        Ok(())
    })
}

/// `{{#each}}` with the iteration budget: the built-in's behaviour (arrays
/// and objects, `@index`, `@first`, `@last`, `@key`, block params, `else`).
struct Each;

impl HelperDef for Each {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let value = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("each", 0))?;
        let Some(t) = h.template() else {
            return Ok(());
        };
        let items: Vec<(Value, &Value)> = match value.value() {
            Value::Array(list) => list.iter().enumerate().map(|(i, v)| (to_json(i), v)).collect(),
            Value::Object(obj) => obj.iter().map(|(k, v)| (to_json(k), v)).collect(),
            _ => Vec::new(),
        };
        if items.is_empty() {
            return match h.inverse() {
                Some(e) => e.render(r, ctx, rc, out),
                None if r.strict_mode() && !value.value().is_array() && !value.value().is_object() => {
                    Err(RenderError::strict_error(value.relative_path()))
                }
                None => Ok(()),
            };
        }
        let is_object = value.value().is_object();
        let mut block = BlockContext::new();
        if let Some(p) = value.context_path() {
            *block.base_path_mut() = p.clone();
        } else {
            block.set_base_value(value.value().clone());
        }
        rc.push_block(block);
        let base = value.context_path().cloned();
        let len = items.len();
        for (i, (key, v)) in items.into_iter().enumerate() {
            charge(1)?;
            if let Some(block) = rc.block_mut() {
                block.set_local_var("first", to_json(i == 0));
                block.set_local_var("last", to_json(i + 1 == len));
                block.set_local_var("index", to_json(i));
                if is_object {
                    block.set_local_var("key", key.clone());
                }
                let relative = key.as_str().map_or_else(|| i.to_string(), str::to_owned);
                match &base {
                    Some(p) => {
                        let mut path = p.clone();
                        path.push(relative);
                        *block.base_path_mut() = path;
                    }
                    None => block.set_base_value(v.clone()),
                }
                let mut params = BlockParams::new();
                if let Some(name) = h.block_param() {
                    if base.is_some() {
                        params.add_path(name, Vec::new())?;
                    } else {
                        params.add_value(name, v.clone())?;
                    }
                    block.set_block_params(params);
                } else if let Some((name, idx)) = h.block_param_pair() {
                    if base.is_some() {
                        params.add_path(name, Vec::new())?;
                    } else {
                        params.add_value(name, v.clone())?;
                    }
                    params.add_value(idx, key.clone())?;
                    block.set_block_params(params);
                }
            }
            t.render(r, ctx, rc, out)?;
        }
        rc.pop_block();
        Ok(())
    }
}

/// Output with a byte cap.
struct Capped {
    text: String,
    cap: usize,
}

impl Output for Capped {
    fn write(&mut self, seg: &str) -> Result<(), std::io::Error> {
        if self.text.len() + seg.len() > self.cap {
            return Err(std::io::Error::other(format!(
                "the template renders more than {}",
                crate::fsread::human(self.cap as u64)
            )));
        }
        self.text.push_str(seg);
        charge(0).map_err(|e| std::io::Error::other(e.reason().to_string()))
    }
}

fn registry() -> &'static Handlebars<'static> {
    static HB: std::sync::OnceLock<Handlebars<'static>> = std::sync::OnceLock::new();
    HB.get_or_init(|| {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(escape);
        hb.register_helper("each", Box::new(Each));
        hb
    })
}

/// Compiles a template, refusing what would render around the checks:
/// partials, decorators, and raw (`{{{…}}}`, `{{&…}}`) expressions.
///
/// # Errors
/// A syntax error or a forbidden construct, located.
pub fn compile(text: &str) -> Result<Template, Failure> {
    let t = Template::compile(text).map_err(|e| {
        let pos = e.pos();
        Failure::at(pos.map(|p| p.0), pos.map(|p| p.1), e.reason().to_string())
    })?;
    forbidden(&t)?;
    Ok(t)
}

fn forbidden(t: &Template) -> Result<(), Failure> {
    for (i, el) in t.elements.iter().enumerate() {
        let what = match el {
            TemplateElement::HtmlExpression(_) => {
                Some("raw expressions (`{{{…}}}`, `{{&…}}`) bypass the value checks: use `{{…}}`")
            }
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                Some("partials are not supported in rollwright templates")
            }
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                Some("decorators (`{{*…}}`) are not supported in rollwright templates")
            }
            TemplateElement::HelperBlock(h) => {
                for inner in [&h.template, &h.inverse].into_iter().flatten() {
                    forbidden(inner)?;
                }
                None
            }
            _ => None,
        };
        if let Some(what) = what {
            let m = t.mapping.get(i);
            return Err(Failure::at(m.map(|m| m.0), m.map(|m| m.1), what));
        }
    }
    Ok(())
}

/// Renders with the budget; `tokenize` replaces each substituted value
/// by a token and returns the values.
fn render_with(t: &Template, data: &Value, tokenize: bool) -> Result<(String, Vec<String>), Failure> {
    let ctx = Context::wraps(data).map_err(|e| Failure::at(None, None, e.to_string()))?;
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.budget = Some((BUDGET.iterations, Instant::now(), BUDGET.time));
        s.tokens = tokenize.then(Vec::new);
    });
    let mut out = Capped {
        text: String::new(),
        cap: BUDGET.output,
    };
    let hb = registry();
    let mut rc = RenderContext::new(None);
    let result = t.render(hb, &ctx, &mut rc, &mut out);
    let tokens = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.budget = None;
        s.tokens.take().unwrap_or_default()
    });
    match result {
        Ok(()) => Ok((out.text, tokens)),
        Err(e) => {
            let missing = match e.reason() {
                RenderErrorReason::MissingVariable(Some(p)) => Some(p.clone()),
                _ => None,
            };
            let message = match e.reason() {
                RenderErrorReason::MissingVariable(Some(p)) => format!("unknown variable `{p}`"),
                RenderErrorReason::IOError(io) => io.to_string(),
                other => other.to_string(),
            };
            Err(Failure {
                line: e.line_no,
                col: e.column_no,
                message,
                missing,
            })
        }
    }
}

/// Renders a template (a spec value), within the budget.
///
/// # Errors
/// Unknown variables, budget exhausted.
pub fn render(t: &Template, data: &Value) -> Result<String, Failure> {
    render_with(t, data, false).map(|(s, _)| s)
}

/// Compiles and renders a spec value.
///
/// # Errors
/// As [`compile`] and [`render`].
pub fn render_str(text: &str, data: &Value) -> Result<String, Failure> {
    render(&compile(text)?, data)
}

/// A rendered manifest template whose substituted values were proven to be
/// data: the text, and the same render with each value as a token (what
/// the template itself says, for scanning and locating).
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The real render.
    pub text: String,
    /// The render with tokens (values masked).
    pub skeleton: String,
    /// The skeleton's documents as parsed (the line each starts at, 0-based).
    pub skeleton_docs: Vec<(u32, crate::yaml::Document)>,
    /// The real render's documents as parsed (the line each starts at),
    /// when every one of them was: what steps read instead of parsing the
    /// text again.
    pub docs: Option<Vec<(u32, crate::yaml::Document)>>,
}

/// Renders a manifest template twice and checks that no substituted value
/// changed its YAML structure.
///
/// # Errors
/// A render failure, or the location where a value became structure.
pub fn render_manifest(t: &Template, data: &Value) -> Result<Manifest, Failure> {
    let (skeleton, values) = render_with(t, data, true)?;
    let (text, _) = render_with(t, data, false)?;
    let a = crate::yaml::split_documents(&skeleton);
    let b = crate::yaml::split_documents(&text);
    let limits = crate::yaml::Limits::default();
    let detok = |s: &str| -> String {
        let mut out = s.to_owned();
        for (i, v) in values.iter().enumerate().rev() {
            out = out.replace(&token(i), v);
        }
        out
    };
    // Where in the template a pointer of document `d` is (line, col).
    let located = |d: usize, doc: &crate::yaml::Document, ptr: &str| -> (usize, usize) {
        let span = doc.locate(ptr);
        (
            a[d].0 as usize + span.start.line as usize,
            span.start.col as usize,
        )
    };
    let structure = |line: usize, col: usize, what: &str| {
        Failure::at(
            Some(line),
            Some(col),
            format!(
                "a substituted value changes the manifest's structure ({what}): values are data, never structure"
            ),
        )
    };
    // Where the first value that looks like YAML syntax was substituted:
    // what the message points at when the real render is not YAML.
    let suspect = |skeleton: &str, base: usize| -> Option<(usize, usize)> {
        let syntax = |v: &str| {
            v.contains([
                '\n', ':', '{', '}', '[', ']', ',', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '`',
            ])
        };
        skeleton.lines().enumerate().find_map(|(n, line)| {
            values.iter().enumerate().find_map(|(i, v)| {
                line.find(&token(i))
                    .filter(|_| syntax(v))
                    .map(|col| (base + n + 1, col + 1))
            })
        })
    };
    if a.len() != b.len() {
        let (line, col) = suspect(&skeleton, 0).unwrap_or((a.last().map_or(1, |(l, _)| *l as usize + 1), 1));
        return Err(structure(
            line,
            col,
            &format!(
                "{} document(s) in the template, {} once rendered",
                a.len(),
                b.len()
            ),
        ));
    }
    let mut skeleton_docs = Vec::with_capacity(a.len());
    let mut docs = Some(Vec::with_capacity(b.len()));
    for (d, ((_, ta), (_, tb))) in a.iter().zip(b.iter()).enumerate() {
        let Ok(da) = crate::yaml::load_str(ta, &limits) else {
            // The template itself is not YAML: the real render says where.
            docs = None;
            continue;
        };
        let db = match crate::yaml::load_str(tb, &limits) {
            Ok(db) => db,
            Err(diags) => {
                let first = diags.first();
                let parsed = first.map_or((a[d].0 as usize + 1, 1), |x| {
                    (
                        a[d].0 as usize + x.span.start.line as usize,
                        x.span.start.col as usize,
                    )
                });
                let (line, col) = suspect(ta, a[d].0 as usize).unwrap_or(parsed);
                return Err(structure(line, col, "the rendered YAML does not parse"));
            }
        };
        if let Err(ptr) = same_shape(&da.value, &db.value, "", &detok) {
            let (line, col) = located(d, &da, &ptr);
            return Err(structure(
                line,
                col,
                &format!("at `{}`", if ptr.is_empty() { "/" } else { &ptr }),
            ));
        }
        skeleton_docs.push((a[d].0, da));
        if let Some(docs) = docs.as_mut() {
            docs.push((b[d].0, db));
        }
    }
    Ok(Manifest {
        text,
        skeleton,
        skeleton_docs,
        docs,
    })
}

/// The documents of a manifest already rendered (each with the line it
/// starts at, 0-based), as [`render_manifest`] parses them; `None` when one
/// is not YAML.
#[must_use]
pub fn parse_rendered(text: &str, limits: &crate::yaml::Limits) -> Option<Vec<(u32, crate::yaml::Document)>> {
    crate::yaml::split_documents(text)
        .into_iter()
        .map(|(line, t)| crate::yaml::load_str(&t, limits).ok().map(|d| (line, d)))
        .collect()
}

/// Compares the tokenized render `a` with the real one `b`; the pointer of
/// the first difference.
fn same_shape(a: &Value, b: &Value, ptr: &str, detok: &dyn Fn(&str) -> String) -> Result<(), String> {
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            if ma.len() != mb.len() {
                return Err(ptr.to_owned());
            }
            for (k, va) in ma {
                let kb = detok(k);
                let mut p = ptr.to_owned();
                crate::yaml::push_pointer_segment(&mut p, k);
                let vb = mb.get(&kb).ok_or_else(|| p.clone())?;
                same_shape(va, vb, &p, detok)?;
            }
            Ok(())
        }
        (Value::Array(la), Value::Array(lb)) => {
            if la.len() != lb.len() {
                return Err(ptr.to_owned());
            }
            for (i, (va, vb)) in la.iter().zip(lb).enumerate() {
                same_shape(va, vb, &format!("{ptr}/{i}"), detok)?;
            }
            Ok(())
        }
        (Value::String(sa), b) if sa.contains("rwTok") => {
            let want = detok(sa);
            let ok = match b {
                Value::String(sb) => *sb == want,
                Value::Object(_) | Value::Array(_) => false,
                scalar => crate::yaml::resolve_plain(&want).as_ref() == Some(scalar),
            };
            if ok { Ok(()) } else { Err(ptr.to_owned()) }
        }
        (a, b) if a == b => Ok(()),
        _ => Err(ptr.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(t: &str, data: Value) -> Result<Manifest, Failure> {
        render_manifest(&compile(t).unwrap(), &data)
    }

    const TPL: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{params.name}}-canary\n  labels: {version: \"{{model.version}}\"}\ndata:\n  replicas: {{params.n}}\n  image: registry/m:{{model.version}}\n";

    #[test]
    fn values_render_as_data() {
        let m = manifest(
            TPL,
            json!({"params": {"name": "fraud", "n": 3}, "model": {"version": "7"}}),
        )
        .unwrap();
        assert!(m.text.contains("name: fraud-canary") && m.text.contains("image: registry/m:7"));
        assert!(m.skeleton.contains("name: rwTok000000x-canary"), "{}", m.skeleton);
    }

    #[test]
    fn a_value_that_adds_structure_is_refused_at_its_line() {
        for (name, why) in [
            (
                "x\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: kube-system}",
                "document",
            ),
            ("x\n  namespace: kube-system", "at `/metadata`"),
            ("x, extra: y}", "does not parse"),
        ] {
            let e = manifest(
                TPL,
                json!({"params": {"name": name, "n": 3}, "model": {"version": "7"}}),
            )
            .unwrap_err();
            assert!(
                e.message.contains("changes the manifest's structure"),
                "{name:?}: {e:?}"
            );
            assert!(e.message.contains(why), "{name:?}: {e:?}");
        }
        let e = manifest(
            TPL,
            json!({"params": {"name": "f", "n": 3}, "model": {"version": "7\"}\n  x: {y: \"1"}}),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(5), "{e:?}");
        // A value that is only data in a quoted position passes.
        let ok = manifest(
            TPL,
            json!({"params": {"name": "f", "n": 3}, "model": {"version": "7: eight"}}),
        );
        assert!(ok.is_err(), "`: ` makes the unquoted image a mapping");
    }

    #[test]
    fn raw_expressions_partials_and_decorators_are_refused() {
        for t in [
            "a: {{{params.x}}}",
            "a: {{&params.x}}",
            "{{> other}}",
            "{{#*inline \"p\"}}x{{/inline}}",
            "{{#if x}}{{{y}}}{{/if}}",
        ] {
            assert!(compile(t).is_err(), "{t}");
        }
    }

    #[test]
    fn every_render_is_bounded() {
        let big: Vec<u32> = (0..300).collect();
        let t = compile("{{#each a}}{{#each ../a}}{{#each ../../a}}{{#each ../../../a}}{{/each}}{{/each}}{{/each}}{{/each}}").unwrap();
        let start = Instant::now();
        let e = render(&t, &json!({"a": big})).unwrap_err();
        assert!(e.message.contains("iterates more than 100000 times"), "{e:?}");
        assert!(start.elapsed() < Duration::from_secs(20), "stopped early");
        let t =
            compile("{{#each a}}{{#each ../a}}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{{/each}}{{/each}}").unwrap();
        let e = render(&t, &json!({"a": big})).unwrap_err();
        assert!(e.message.contains("renders more than 1 MiB"), "{e:?}");
        // The built-in behaviour is kept.
        let t = compile("{{#each a}}{{@index}}{{this}}{{#if @last}}.{{/if}}{{/each}}{{#each o}}{{@key}}={{this}}{{/each}}{{#each e}}x{{else}}empty{{/each}}{{#each a as |v i|}}{{i}}{{v}}{{/each}}").unwrap();
        assert_eq!(
            render(&t, &json!({"a": ["p", "q"], "o": {"k": 1}, "e": []})).unwrap(),
            "0p1q.k=1empty0p1q"
        );
    }
}
