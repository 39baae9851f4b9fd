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
