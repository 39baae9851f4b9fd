//! JSON Schema: assembling the rollout schema and turning violations into
//! located, readable diagnostics.
//!
//! The schemas are hand-written (they give better messages than generated
//! ones): the envelope lives in `engine/src/envelope.schema.json`, shared
//! definitions in `schemas/common.schema.json`, and each step kind's `with`
//! in `schemas/steps/<type>.schema.json` (owned by that kind's module). The
//! committed `schemas/rollout.schema.json` is *generated*: the envelope with
//! the step-type enum and the per-type `with` dispatch filled in from the
//! registry, so the list of kinds exists in exactly one place. It refers to
//! the other files by relative path, so editors (yaml-language-server) can
//! use it straight from a checkout; in the binary the same files are
//! registered under [`BASE_URI`] and nothing is fetched.
//!
//! The validator is compiled once (`Schemas::new`) and shared across
//! threads: compiling per document is ~60× slower.

use std::collections::HashMap;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{JsonType, Validator};
use serde_json::{Value, json};

use crate::diag::{Code, Diagnostic, Locate, did_you_mean};
use crate::duration;
use crate::registry::Registry;
use crate::yaml::Document;

/// Base URI under which the embedded schemas are registered.
pub const BASE_URI: &str = "https://rollwright.dev/schemas/";

/// Shared definitions (`schemas/common.schema.json`).
pub const COMMON: &str = include_str!("../../schemas/common.schema.json");
const ENVELOPE: &str = include_str!("envelope.schema.json");

/// A schema that does not compile: a bug in the shipped files.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Not JSON.
    #[error("schema {name} is not valid JSON: {source}")]
    Json {
        /// Which file.
        name: String,
        /// Why.
        source: serde_json::Error,
    },
    /// Does not compile.
    #[error("schema {name} does not compile: {message}")]
    Compile {
        /// Which file.
        name: String,
        /// Why.
        message: String,
    },
}

fn parse(name: &str, text: &str) -> Result<Value, SchemaError> {
    serde_json::from_str(text).map_err(|source| SchemaError::Json {
        name: name.into(),
        source,
    })
}

/// The generated `rollout.schema.json` for a registry.
///
/// # Errors
/// When a shipped schema is not valid JSON.
pub fn rollout_schema(registry: &Registry) -> Result<Value, SchemaError> {
    let mut schema = parse("envelope.schema.json", ENVELOPE)?;
    let names: Vec<Value> = registry.names().map(Value::from).collect();
    let dispatch: Vec<Value> = registry
        .names()
        .map(|n| {
            json!({
                "if": {"properties": {"type": {"const": n}}, "required": ["type"]},
                "then": {"properties": {"with": {"$ref": format!("steps/{n}.schema.json")}}}
            })
        })
        .collect();
    let defs = &mut schema["$defs"];
    defs["step-type"]["enum"] = Value::Array(names);
    defs["with-by-type"]["allOf"] = Value::Array(dispatch);
    Ok(schema)
}

/// Pretty JSON with a trailing newline, as committed.
#[must_use]
pub fn to_pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// The compiled validator plus the schema documents (for "did you mean").
pub struct Schemas {
    validator: Validator,
    docs: HashMap<String, Value>,
}

impl std::fmt::Debug for Schemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schemas")
            .field("docs", &self.docs.keys())
            .finish()
    }
}

impl Schemas {
    /// Compiles the rollout schema for `registry`.
    ///
    /// # Errors
    /// When a shipped schema is invalid (a bug, caught by the tests).
    pub fn new(registry: &Registry) -> Result<Self, SchemaError> {
        let rollout = rollout_schema(registry)?;
        let mut docs = HashMap::new();
        docs.insert(
            format!("{BASE_URI}common.schema.json"),
            parse("common.schema.json", COMMON)?,
        );
        for k in registry.iter() {
            let name = format!("steps/{}.schema.json", k.name());
            docs.insert(format!("{BASE_URI}{name}"), parse(&name, k.schema())?);
        }
        let compile = |message: String| SchemaError::Compile {
            name: "rollout.schema.json".into(),
            message,
        };
        let mut builder = jsonschema::Registry::new();
        for (uri, doc) in &docs {
            builder = builder
                .add(uri, doc.clone())
                .map_err(|e| compile(e.to_string()))?;
        }
        let prepared = builder.prepare().map_err(|e| compile(e.to_string()))?;
        let validator = jsonschema::options()
            .offline()
            // What a pattern cannot say: a duration within range (`366d` at most).
            .with_format("rollwright-duration", |s: &str| duration::parse(s).is_ok())
            .should_validate_formats(true)
            .with_base_uri(format!("{BASE_URI}rollout.schema.json"))
            .with_registry(&prepared)
            .build(&rollout)
            .map_err(|e| compile(e.to_string()))?;
        docs.insert(format!("{BASE_URI}rollout.schema.json"), rollout);
        Ok(Schemas { validator, docs })
    }

    /// Validates a loaded document; every violation becomes a diagnostic.
    /// Also returns the instance pointers that failed, so later rules can
    /// skip what is already reported.
    #[must_use]
    pub fn check(&self, doc: &Document) -> (Vec<Diagnostic>, Vec<String>) {
        self.check_value(&doc.value, doc, false)
    }

    /// Validates any spec value, locating through `locate`. With
    /// `tolerate_templates`, a string holding `{{…}}` where another type or
    /// value is expected is not reported: it is checked after expansion.
    #[must_use]
    pub fn check_value(
        &self,
        value: &Value,
        locate: &dyn Locate,
        tolerate_templates: bool,
    ) -> (Vec<Diagnostic>, Vec<String>) {
        if self.validator.is_valid(value) {
            return (Vec::new(), Vec::new());
        }
        let mut out = Vec::new();
        let mut pointers = Vec::new();
        for err in self.validator.iter_errors(value) {
            let pointer = err.instance_path().as_str();
            // Rules skip what lies under a reported (or tolerated) problem.
            pointers.push(pointer.to_owned());
            if tolerate_templates
                && err.instance().as_str().is_some_and(|s| s.contains("{{"))
                && !matches!(
                    err.kind(),
                    ValidationErrorKind::AdditionalProperties { .. } | ValidationErrorKind::Required { .. }
                )
            {
                continue;
            }
            let keyword_at = err
                .absolute_keyword_location()
                .map(|u| u.as_str().to_owned())
                .unwrap_or_default();
            self.convert(locate, pointer, &keyword_at, err.kind(), err.instance(), &mut out);
        }
        out.sort_by(|a, b| a.span.cmp(&b.span).then(a.message.cmp(&b.message)));
        out.dedup_by(|a, b| a.span == b.span && a.message == b.message);
        (out, pointers)
    }

    /// The sibling `properties` of the failing keyword, for suggestions.
    fn known_properties(&self, keyword_at: &str) -> Vec<&str> {
        let Some((uri, frag)) = keyword_at.split_once('#') else {
            return Vec::new();
        };
        let Some(doc) = self.docs.get(uri) else {
            return Vec::new();
        };
        let parent = frag.rsplit_once('/').map_or("", |(p, _)| p);
        doc.pointer(parent)
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object)
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    fn convert(
        &self,
        doc: &dyn Locate,
        pointer: &str,
        keyword_at: &str,
        kind: &ValidationErrorKind,
        instance: &Value,
        out: &mut Vec<Diagnostic>,
    ) {
        let field = describe(pointer);
        let at = doc.locate(pointer);
        let is_duration = keyword_at.contains("/$defs/duration/");
        let d = match kind {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let known = self.known_properties(keyword_at);
                for name in unexpected {
                    let mut child = pointer.to_owned();
                    crate::yaml::push_pointer_segment(&mut child, name);
                    let mut d = Diagnostic::new(
                        Code::SchemaUnknownField,
                        doc.locate_key(&child),
                        format!("unknown field `{name}` in {field}"),
                    )
                    .with_label("not a known field");
                    d.help = Some(match did_you_mean(name, known.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None if known.is_empty() => "remove it".into(),
                        None => format!("known fields: {}", known.join(", ")),
                    });
                    out.push(d);
                }
                return;
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                Diagnostic::new(
                    Code::SchemaRequired,
                    doc.locate_key(pointer),
                    format!("missing required field `{name}` in {field}"),
                )
            }
            ValidationErrorKind::Type { .. } if is_duration && instance.is_number() => Diagnostic::new(
                Code::InvalidDuration,
                at,
                format!("{field}: a duration needs a unit, found the number `{instance}`"),
            )
            .with_help(format!("write e.g. `{instance}s` or `{instance}m`")),
            ValidationErrorKind::Type { kind } => {
                let expected = match kind {
                    TypeKind::Single(t) => type_name(*t).to_owned(),
                    TypeKind::Multiple(ts) => ts.iter().map(type_name).collect::<Vec<_>>().join(" or "),
                };
                let mut d = Diagnostic::new(
                    Code::SchemaType,
                    at,
                    format!("{field} must be {expected}, found {}", show(instance)),
                );
                if expected == "a string" && instance.is_number() {
                    d.help = Some(format!("quote it: \"{instance}\""));
                }
                if expected == "a boolean"
                    && instance.as_str().is_some_and(|s| {
                        matches!(
                            s.to_ascii_lowercase().as_str(),
                            "yes" | "no" | "on" | "off" | "y" | "n"
                        )
                    })
                {
                    d.help = Some("YAML 1.2 reads yes/no/on/off as strings: write `true` or `false`".into());
                }
                d
            }
            ValidationErrorKind::Enum { options } => {
                let opts: Vec<&str> = options
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut d = Diagnostic::new(
                    Code::SchemaValue,
                    at,
                    format!("{field} must be one of {}, found {}", list(&opts), show(instance)),
                );
                if let Some(s) = instance
                    .as_str()
                    .and_then(|v| did_you_mean(v, opts.iter().copied()))
                {
                    d.help = Some(format!("did you mean `{s}`?"));
                }
                d
            }
            ValidationErrorKind::Constant { expected_value } => Diagnostic::new(
                Code::SchemaValue,
                at,
                format!(
                    "{field} must be {}, found {}",
                    show(expected_value),
                    show(instance)
                ),
            ),
            ValidationErrorKind::Pattern { .. }
            | ValidationErrorKind::MinLength { .. }
            | ValidationErrorKind::Format { .. }
                if is_duration =>
            {
                let msg = match instance.as_str().map(duration::parse) {
                    Some(Err(e)) => e.to_string(),
                    _ => format!("{} is not a duration", show(instance)),
                };
                Diagnostic::new(Code::InvalidDuration, at, format!("{field}: {msg}"))
            }
            ValidationErrorKind::Pattern { pattern } => Diagnostic::new(
                Code::SchemaValue,
                at,
                format!(
                    "{field} {} does not match the pattern `{pattern}`",
                    show(instance)
                ),
            ),
            ValidationErrorKind::Minimum { limit } => Diagnostic::new(
                Code::SchemaRange,
                at,
                format!("{field} is {instance}, below the minimum of {limit}"),
            ),
            ValidationErrorKind::Maximum { limit } => Diagnostic::new(
                Code::SchemaRange,
                at,
                format!("{field} is {instance}, above the maximum of {limit}"),
            ),
            ValidationErrorKind::ExclusiveMinimum { limit } => Diagnostic::new(
                Code::SchemaRange,
                at,
                format!("{field} is {instance}, must be greater than {limit}"),
            ),
            ValidationErrorKind::ExclusiveMaximum { limit } => Diagnostic::new(
                Code::SchemaRange,
                at,
                format!("{field} is {instance}, must be less than {limit}"),
            ),
            ValidationErrorKind::MinLength { limit } => Diagnostic::new(
                Code::SchemaRange,
                at,
                if *limit == 1 {
                    format!("{field} must not be empty")
                } else {
                    format!("{field} must be at least {limit} characters long")
                },
            ),
            ValidationErrorKind::MaxLength { limit } => Diagnostic::new(
                Code::SchemaRange,
                at,
                format!("{field} must be at most {limit} characters long"),
            ),
            ValidationErrorKind::MinItems { limit } => Diagnostic::new(
                Code::SchemaRange,
                at,
                format!("{field} must have at least {limit} item{}", plural(*limit)),
            ),
            ValidationErrorKind::MaxItems { limit } => Diagnostic::new(
                Code::SchemaRange,
                at,
                format!("{field} must have at most {limit} item{}", plural(*limit)),
            ),
            ValidationErrorKind::MinProperties { limit } => Diagnostic::new(
                Code::SchemaRange,
                at,
                format!("{field} must have at least {limit} field{}", plural(*limit)),
            ),
            ValidationErrorKind::UniqueItems => {
                Diagnostic::new(Code::SchemaValue, at, format!("{field} has duplicate items"))
            }
            ValidationErrorKind::FalseSchema => Diagnostic::new(
                Code::SchemaUnknownField,
                doc.locate_key(pointer),
                format!("{field} is not allowed here"),
            ),
            other => Diagnostic::new(Code::Schema, at, format!("{field}: {}", other_message(other))),
        };
        out.push(d);
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn other_message(kind: &ValidationErrorKind) -> String {
    match kind {
        ValidationErrorKind::Custom { message, .. } => message.clone(),
        other => format!("{other:?}"),
    }
}

fn type_name(t: JsonType) -> &'static str {
    match t {
        JsonType::Array => "a list",
        JsonType::Boolean => "a boolean",
        JsonType::Integer => "an integer",
        JsonType::Null => "null",
        JsonType::Number => "a number",
        JsonType::Object => "a mapping",
        JsonType::String => "a string",
    }
}

/// A value as it appears in a message.
#[must_use]
pub fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        Value::Null => "null".into(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) if n.is_f64() => format!("the number `{n}`"),
        Value::Number(n) => format!("the integer `{n}`"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

fn list(opts: &[&str]) -> String {
    match opts {
        [] => String::new(),
        [one] => format!("`{one}`"),
        _ => {
            let (last, rest) = opts.split_last().unwrap_or((&"", &[]));
            let rest: Vec<String> = rest.iter().map(|o| format!("`{o}`")).collect();
            format!("{} or `{last}`", rest.join(", "))
        }
    }
}

/// A JSON pointer as users read it: `/steps/2/with/canary` → `` `steps[2].with.canary` ``.
#[must_use]
pub fn describe(pointer: &str) -> String {
    if pointer.is_empty() {
        return "the spec".into();
    }
    let mut s = String::from("`");
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) && !seg.is_empty() {
            s.push('[');
            s.push_str(&seg);
            s.push(']');
        } else {
            if s.len() > 1 {
                s.push('.');
            }
            s.push_str(&seg);
        }
    }
    s.push('`');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_read_like_paths() {
        assert_eq!(describe("/steps/2/with/canary"), "`steps[2].with.canary`");
        assert_eq!(describe(""), "the spec");
        assert_eq!(describe("/metadata/a~1b"), "`metadata.a/b`");
    }
}
