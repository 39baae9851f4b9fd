//! Flux: a `Kustomization` is synced when it is `Ready` with
//! `lastAppliedRevision` at the pushed revision (or a later one holding
//! it); `Ready=False` at that revision fails the step; a suspended one waits.

use rollwright_engine::exec::{Progress, StepError};
use serde_json::Value;

use super::{GitOpsTarget, done, wait};
use crate::git::short;

/// Whether `app` has applied `revision` and is ready.
pub(super) async fn synced(
    t: &GitOpsTarget,
    app: &Value,
    name: &str,
    revision: &str,
) -> Result<Progress, StepError> {
    let status = &app["status"];
    let ready = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or(Value::Null);
    let applied = flux_sha(status["lastAppliedRevision"].as_str().unwrap_or_default());
    let attempted = flux_sha(status["lastAttemptedRevision"].as_str().unwrap_or_default());
    let observed = app["metadata"]["generation"] == status["observedGeneration"];
    if app["spec"]["suspend"] == true {
        return wait(format!(
            "{name} is suspended: waiting for it to be resumed to apply {}",
            short(revision)
        ));
    }
    if ready["status"] == "False" && ready["reason"] != "Progressing" && t.holds(attempted, revision).await {
        return Err(StepError::failed(format!(
            "{name} failed at {}: {}: {}",
            short(revision),
            ready["reason"].as_str().unwrap_or_default(),
            ready["message"].as_str().unwrap_or_default()
        )));
    }
    if ready["status"] == "True" && observed && t.holds(applied, revision).await {
        return Ok(done(revision, applied));
    }
    wait(format!(
        "{name} to apply {} (applied {})",
        short(revision),
        short(applied)
    ))
}

/// `main@sha1:abc…` (Flux ≥ 2), `main/abc…` (older) or a bare sha.
fn flux_sha(rev: &str) -> &str {
    rev.rsplit([':', '/']).next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn revisions_in_every_flux_format_name_the_sha() {
        assert_eq!(super::flux_sha("main@sha1:abc123"), "abc123");
        assert_eq!(super::flux_sha("main/abc123"), "abc123");
        assert_eq!(super::flux_sha("abc123"), "abc123");
    }
}
