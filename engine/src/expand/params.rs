//! Stage 2: parameter declarations merged (outer strategies override inner
//! ones), the Rollout's values and `--set` overrides checked against them.

use super::*;

const PARAM_TYPES: &[&str] = &["string", "integer", "number", "boolean", "duration", "array"];

pub(super) fn type_ok(ty: &str, v: &Value) -> bool {
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
pub(super) fn resolve_params(cx: &mut Ctx<'_>) -> Map<String, Value> {
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
    const SET_PREFIX: &str = crate::diag::SET_FILE_PREFIX;
    for (name, v, ptr) in given {
        let where_ = |cx: &Ctx<'_>, key: bool| match &ptr {
            Some(p) if key => cx.key_at(0, p),
            Some(p) => cx.at(0, p),
            // The override itself is the "file": `--set KEY` (the value is
            // not echoed: it may be a credential), the key underlined.
            None => Loc {
                file: Some(format!("{SET_PREFIX}{name}").into()),
                span: Span {
                    start: crate::diag::Pos { line: 1, col: 1 },
                    end: crate::diag::Pos {
                        line: 1,
                        col: u32::try_from(name.chars().count())
                            .unwrap_or(u32::MAX)
                            .saturating_add(1),
                    },
                },
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
