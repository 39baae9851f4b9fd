//! Values as words, for people: what the report and the display print
//! instead of JSON.

use serde_json::{Map, Value};

/// Outputs as words when a step kind says nothing better: `key: value`
/// pairs, nested keys dotted, lists joined — never JSON.
#[must_use]
pub fn plain(outputs: &Map<String, Value>) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Object(_) | Value::Null => {}
            Value::String(t) if t.trim().is_empty() => {}
            Value::Array(a) => {
                let items: Vec<String> = a.iter().map(scalar).collect();
                out.push(format!("{prefix}: {}", items.join(", ")));
            }
            other => out.push(format!("{prefix}: {}", scalar(other))),
        }
    }
    let mut out = Vec::new();
    walk("", &Value::Object(outputs.clone()), &mut out);
    out.join("; ")
}

/// A value as words (objects as `k v` pairs).
#[must_use]
pub fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        Value::Object(m) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k} {}", scalar(v)))
            .collect::<Vec<_>>()
            .join(" "),
        Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// A measured number as people read it: three decimals, four below 0.01
/// (so that a 0.5 % error rate is not shown as 0.005 next to 0.000).
#[must_use]
pub fn number(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.4}")
    } else {
        format!("{v:.3}")
    }
}
