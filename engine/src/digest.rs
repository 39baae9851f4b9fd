//! SHA-256 digests of specs and files, as journals and policies record them.

use serde_json::Value;

/// SHA-256 of a value's JSON (hex): what identifies an expanded spec.
#[must_use]
pub fn digest(v: &Value) -> String {
    let text = serde_json::to_vec(v).unwrap_or_default();
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, &text).as_ref())
    )
}

/// SHA-256 of a value's JSON with every object's keys in sorted order and
/// every whole number written as an integer: the same for the same value
/// however it was written — what a value that travels through an API
/// server (which sorts keys and writes `1.0` as `1`) keeps.
#[must_use]
pub fn canonical(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 =>
                {
                    #[allow(clippy::cast_possible_truncation)]
                    Value::from(f as i64)
                }
                _ => v.clone(),
            },
            other => other.clone(),
        }
    }
    digest(&sorted(v))
}

/// SHA-256 of bytes (hex), e.g. of a policy file.
#[must_use]
pub fn digest_bytes(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    )
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_canonical_digest_ignores_key_order() {
        let a = serde_json::json!({"b": 1.0, "a": {"y": [1, {"q": 1, "p": 2.5}], "x": 2}});
        let b = serde_json::json!({"a": {"x": 2, "y": [1, {"p": 2.5, "q": 1}]}, "b": 1});
        assert_eq!(super::canonical(&a), super::canonical(&b));
        assert_ne!(super::digest(&a), super::digest(&b));
        assert_ne!(
            super::canonical(&a),
            super::canonical(&serde_json::json!({"b": 2, "a": {}}))
        );
    }
}
