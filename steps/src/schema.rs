//! Each kind's schema is generated from its typed config.
//!
//! A kind's `XxxConfig` derives [`JsonSchema`]: its doc comments are the
//! schema's descriptions and its `#[schemars(…)]` attributes the constraints
//! serde cannot express (patterns, ranges, lengths). [`of`] turns the type
//! into the strict schema committed as `steps/schemas/<kind>.schema.json`
//! (which the binary embeds, so nothing is generated at run time); a test
//! regenerates every kind's and fails when a committed file has drifted.
//!
//! The output is shaped for good diagnostics rather than left as schemars
//! writes it: subschemas are inlined (no `$defs` to resolve inside the
//! rollout schema), an optional field is its type, not "T or null" (an
//! `anyOf` degrades every error to "not valid under any of the schemas"),
//! and the integer formats schemars adds (`uint32`) are dropped.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value};

/// Where the shared definitions live, relative to a published step schema.
const COMMON: &str = "../common.schema.json#/$defs";

/// The strict schema of `T`, as committed for its kind.
#[must_use]
pub fn of<T: JsonSchema>() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.inline_subschemas = true;
    let mut v = settings.into_generator().into_root_schema_for::<T>().to_value();
    tidy(&mut v);
    v
}

/// The strict schema of `T`, a part of the spec's envelope (which sits
/// next to the shared definitions, not one directory below).
#[must_use]
pub fn of_envelope<T: JsonSchema>() -> Value {
    let mut v = of::<T>();
    rebase_refs(&mut v);
    v
}

/// `../common.schema.json#…` → `common.schema.json#…` in every `$ref`.
fn rebase_refs(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("$ref")
                && let Some(rest) = r.strip_prefix("../")
            {
                *r = rest.to_owned();
            }
            o.values_mut().for_each(rebase_refs);
        }
        Value::Array(a) => a.iter_mut().for_each(rebase_refs),
        _ => {}
    }
}

/// A field holding a duration (`30s`, `1h30m`).
pub fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"$ref": format!("{COMMON}/duration")})
}

/// A field holding a secret reference.
pub fn secret_ref(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"$ref": format!("{COMMON}/secret-ref")})
}

/// A map whose values are secret references.
pub fn secret_refs(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "additionalProperties": {"$ref": format!("{COMMON}/secret-ref")}})
}

/// A field naming a traffic provider.
pub fn traffic_provider(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "enum": crate::traffic::names()})
}

/// Integer formats schemars adds for Rust's integer widths; the ranges it
/// adds with them say the same in terms every validator checks.
const INTEGER_FORMATS: &[&str] = &[
    "uint", "uint8", "uint16", "uint32", "uint64", "int", "int8", "int16", "int32", "int64", "double",
    "float",
];

/// The order keys are written in: what a reader looks for first.
const KEY_ORDER: &[&str] = &[
    "$schema",
    "title",
    "description",
    "type",
    "additionalProperties",
    "required",
];

fn tidy(v: &mut Value) {
    match v {
        Value::Object(o) => {
            drop_null(o);
            consts_to_enum(o);
            if o.get("default") == Some(&Value::Null) {
                o.remove("default");
            }
            if o.get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| INTEGER_FORMATS.contains(&f))
            {
                o.remove("format");
            }
            if let Some(Value::String(d)) = o.get_mut("description") {
                *d = unwrap_lines(d);
            }
            for (_, child) in o.iter_mut() {
                tidy(child);
            }
            let mut ordered = Map::new();
            for k in KEY_ORDER {
                if let Some(v) = o.remove(*k) {
                    ordered.insert((*k).to_owned(), v);
                }
            }
            ordered.append(o);
            *o = ordered;
        }
        Value::Array(a) => a.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// `"type": ["T", "null"]` → `"type": "T"`; `anyOf: [S, {type: null}]` → S.
fn drop_null(o: &mut Map<String, Value>) {
    if let Some(Value::Array(types)) = o.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            o.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(enums)) = o.get_mut("enum") {
        enums.retain(|e| !e.is_null());
    }
    let single = match o.get("anyOf") {
        Some(Value::Array(alts)) => {
            let kept: Vec<&Value> = alts
                .iter()
                .filter(|a| a.get("type") != Some(&Value::from("null")))
                .collect();
            (kept.len() == 1 && alts.len() == 2).then(|| kept[0].clone())
        }
        _ => None,
    };
    if let Some(Value::Object(inner)) = single {
        o.remove("anyOf");
        for (k, v) in inner {
            o.entry(k).or_insert(v);
        }
    }
}

/// A unit enum whose variants carry docs comes out as `oneOf` of `const`s;
/// an `enum` says the same and reads "expected one of …" in diagnostics.
fn consts_to_enum(o: &mut Map<String, Value>) {
    let Some(Value::Array(alts)) = o.get("oneOf") else {
        return;
    };
    let consts: Option<Vec<Value>> = alts
        .iter()
        .map(|a| {
            let a = a.as_object()?;
            let only_const = a
                .keys()
                .all(|k| ["type", "const", "description"].contains(&k.as_str()));
            (only_const && a.get("type") == Some(&Value::from("string"))).then(|| a.get("const").cloned())?
        })
        .collect();
    if let Some(values) = consts {
        o.remove("oneOf");
        o.insert("type".into(), "string".into());
        o.insert("enum".into(), Value::Array(values));
    }
}

/// Doc comments wrap; a description is one paragraph per blank line.
fn unwrap_lines(d: &str) -> String {
    d.split("\n\n")
        .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}
