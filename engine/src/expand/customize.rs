//! Stage 3: the innermost strategy's steps with each outer layer's
//! `customize` applied (`remove`, `with`, `add`), `needs` of removed steps
//! rewired to what those steps needed.

use super::*;

/// The step list after every layer's `customize`, plus the handlers.
pub(super) fn assemble(cx: &mut Ctx<'_>) -> (Vec<Item>, Vec<Item>) {
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

pub(super) fn item_id(it: &Item) -> &str {
    it.value.get("id").and_then(Value::as_str).unwrap_or_default()
}

pub(super) fn needs_of(v: &Value) -> Vec<Value> {
    v.get("needs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Replaces `id` in `needs` by `with` (what a removed step needed).
pub(super) fn rewire(v: &mut Value, id: &str, with: &[Value]) {
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

pub(super) fn unknown_id(cx: &mut Ctx<'_>, items: &[Item], layer: usize, ptr: &str, id: &str, what: &str) {
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
