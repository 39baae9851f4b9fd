//! Secret references and redaction.
//!
//! Specs never hold secrets, only references: `{secretRef: NAME, key: KEY}`
//! (a Kubernetes Secret), `{env: VARIABLE}` or `{file: PATH}`. [`resolve`]
//! turns a reference into a [`Secret`] at the moment a step needs it, and
//! registers the value so that [`scrub`] removes it from every text that
//! leaves the process: log lines, journal records, reports.

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// A resolved secret. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A value resolved elsewhere (a Kubernetes Secret): registered for
    /// redaction before anything else sees it.
    #[must_use]
    pub fn from_resolved(value: String) -> Self {
        register(&value);
        Secret(value)
    }

    /// The value, for the one place that must send it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

fn registry() -> &'static Mutex<Vec<String>> {
    static VALUES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    VALUES.get_or_init(Mutex::default)
}

/// Registers a value to be scrubbed from every output from now on.
pub fn register(value: &str) {
    // Very short values would scrub innocent text; they are weak secrets anyway.
    if value.len() < 4 {
        return;
    }
    if let Ok(mut v) = registry().lock()
        && !v.iter().any(|x| x == value)
    {
        v.push(value.to_owned());
        // Longest first, so that a secret containing another is removed whole.
        v.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Replaces every registered secret in `text` by `[redacted]`.
#[must_use]
pub fn scrub(text: &str) -> String {
    let Ok(values) = registry().lock() else {
        return "[redacted: secret registry unavailable]".into();
    };
    let mut out = text.to_owned();
    for v in values.iter() {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), "[redacted]");
        }
    }
    out
}

/// Scrubs every string inside a JSON value.
pub fn scrub_value(v: &mut Value) {
    match v {
        Value::String(s) => {
            let clean = scrub(s);
            if clean != *s {
                *s = clean;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(scrub_value),
        Value::Object(m) => m.values_mut().for_each(scrub_value),
        _ => {}
    }
}

/// Resolves a reference. `base` is where relative `file` paths start.
///
/// # Errors
/// What is missing, never the value.
pub fn resolve(reference: &Value, base: &Path) -> Result<Secret, String> {
    let get = |k: &str| reference.get(k).and_then(Value::as_str);
    let value = if let Some(var) = get("env") {
        std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))?
    } else if let Some(file) = get("file") {
        let path = base.join(file);
        std::fs::read_to_string(&path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("cannot read secret file `{}`: {e}", path.display()))?
    } else if let Some(name) = get("secretRef") {
        return Err(format!(
            "Kubernetes Secret `{name}` is read by the step that uses it, from the target cluster; here it cannot be: use `env` or `file`"
        ));
    } else {
        return Err("not a secret reference: expected `secretRef`, `env` or `file`".into());
    };
    register(&value);
    Ok(Secret(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resolve_register_and_scrub() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "file-secret-value\n").unwrap();
        let s = resolve(&json!({"file": "tok"}), dir.path()).unwrap();
        assert_eq!(s.expose(), "file-secret-value");
        assert_eq!(format!("{s} {s:?}"), "[redacted] Secret([redacted])");
        assert_eq!(
            scrub("GET https://x/?t=file-secret-value ok"),
            "GET https://x/?t=[redacted] ok"
        );
        let mut v = json!({"a": ["file-secret-value"]});
        scrub_value(&mut v);
        assert_eq!(v, json!({"a": ["[redacted]"]}));
        let e = resolve(&json!({"env": "ROLLWRIGHT_SURELY_UNSET_VAR"}), dir.path()).unwrap_err();
        assert_eq!(e, "environment variable `ROLLWRIGHT_SURELY_UNSET_VAR` is not set");
        assert!(
            resolve(&json!({"secretRef": "hook"}), dir.path())
                .unwrap_err()
                .contains("`env` or `file`")
        );
    }
}
