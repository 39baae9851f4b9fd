//! Stage 5: templates in values and `apply` manifests rendered (handlebars,
//! strict), runtime references checked and left for the executor.

use super::*;

/// The value a whole-value template `{{a.b.c}}` names, if it is one.
pub(super) fn lookup_template(s: &str, ctx: &Map<String, Value>) -> Option<Value> {
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
pub(super) fn whole_path(s: &str) -> Option<&str> {
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
pub(super) fn context(exp: &Expanded, item: Option<&Value>) -> Map<String, Value> {
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
pub(super) fn step_outputs(exp: &Expanded, registry: &Registry) -> Value {
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
pub(super) fn render_values(exp: &mut Expanded, env: &Env<'_>, errors: &mut Vec<Diagnostic>) {
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

pub(super) fn render_in(
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

pub(super) fn unknown_variable(
    exp: &Expanded,
    ptr: &str,
    path: &str,
    ctx: &Map<String, Value>,
) -> Diagnostic {
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

pub(super) fn bad_runtime_ref(exp: &Expanded, ptr: &str, path: &str, ctx: &Map<String, Value>) -> Diagnostic {
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
pub(super) fn render_manifests(exp: &mut Expanded, root: &Path, env: &Env<'_>, errors: &mut Vec<Diagnostic>) {
    let (registry, limits) = (env.registry, env.limits);
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
        let read = || {
            crate::fsread::read_string(&path, limits.max_bytes as u64)
                .map(|text| Arc::new(crate::render::compile(&text)))
                .map_err(|e| e.to_string())
        };
        let compiled = match env.cache {
            Some(cache) => cache.template(&super::uses::canonical(&path), read),
            None => read(),
        };
        let compiled = match compiled {
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
        let rendered = match compiled.as_ref() {
            Ok(t) => crate::render::render_manifest(t, &ctx),
            Err(e) => Err(e.clone()),
        };
        match rendered {
            Ok(m) => {
                // The template's own text (values masked) holds no secret.
                for (offset, d) in &m.skeleton_docs {
                    let offset = *offset;
                    {
                        for mut f in crate::validate::secrets(d).0 {
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
                    docs: m.docs.map(std::sync::Arc::new),
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
