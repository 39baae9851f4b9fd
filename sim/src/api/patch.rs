//! RFC 6902 JSON patch, by the `json-patch` crate (atomic: a failing
//! operation leaves the object as it was).

use super::*;

/// Applies the operations `ops` to `target`.
///
/// # Errors
/// Operations that are not a JSON patch, or one that fails (a `test`, a
/// path that does not exist).
pub(super) fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let patch: json_patch::Patch =
        serde_json::from_value(ops.clone()).map_err(|e| format!("not a JSON patch: {e}"))?;
    json_patch::patch(target, &patch).map_err(|e| e.to_string())
}
