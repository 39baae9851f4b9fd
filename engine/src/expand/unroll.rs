//! Stage 4: `for-each` groups unrolled into sequential chains with
//! deterministic ids (`ramp[20].hold`).

use super::*;

/// Unrolls `for-each` groups. Returns the flat steps and their origins.
pub(super) fn unroll(
    cx: &mut Ctx<'_>,
    items: Vec<Item>,
    params: &Map<String, Value>,
) -> (Vec<Value>, Vec<Origin>) {
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
