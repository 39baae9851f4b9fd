//! Argo CD: an `Application` is synced when `status.sync` is Synced at the
//! pushed revision (or a later one holding it) and its health Healthy; a
//! Degraded application, a failed sync operation or an error condition fail
//! the step with the controller's message; without an automated sync
//! policy it waits for someone to sync.

use rollwright_engine::exec::{Progress, StepError};
use serde_json::Value;

use super::{GitOpsTarget, done, wait};
use crate::git::short;

/// Whether `app` has synced `revision` and found it healthy.
pub(super) async fn synced(
    t: &GitOpsTarget,
    app: &Value,
    name: &str,
    revision: &str,
) -> Result<Progress, StepError> {
    let status = &app["status"];
    let at = status["sync"]["revision"].as_str().unwrap_or_default();
    let sync = status["sync"]["status"].as_str().unwrap_or("Unknown");
    let automated = app["spec"]["syncPolicy"]["automated"].is_object();
    if !automated && sync == "OutOfSync" && app["operation"].is_null() {
        // Manual sync: someone has to press the button; the step's
        // timeout bounds the wait.
        return wait(format!(
            "someone to sync {name} (no automated sync policy): OutOfSync at {}, waiting for {}",
            short(at),
            short(revision)
        ));
    }
    if !t.holds(at, revision).await {
        return wait(format!("{name} to sync {} (at {})", short(revision), short(at)));
    }
    let op = &status["operationState"];
    if matches!(op["phase"].as_str(), Some("Failed" | "Error")) {
        return Err(StepError::failed(format!(
            "{name} failed to sync {}: {}",
            short(revision),
            op["message"].as_str().unwrap_or("no message")
        )));
    }
    if let Some(c) = status["conditions"].as_array().and_then(|cs| {
        cs.iter()
            .find(|c| c["type"].as_str().is_some_and(|t| t.ends_with("Error")))
    }) {
        return Err(StepError::failed(format!(
            "{name}: {}: {}",
            c["type"].as_str().unwrap_or_default(),
            c["message"].as_str().unwrap_or_default()
        )));
    }
    let health = status["health"]["status"].as_str().unwrap_or("Unknown");
    if health == "Degraded" {
        return Err(StepError::failed(format!(
            "{name} is Degraded at {}: {}",
            short(revision),
            degraded_message(status)
        )));
    }
    if sync == "OutOfSync"
        && op["phase"] == "Succeeded"
        && let Some(prune) = needs_pruning(status)
    {
        return Err(StepError::failed(format!(
            "{name} stays OutOfSync at {}: {prune} must be pruned, and the Application does not prune (set `syncPolicy.automated.prune: true`)",
            short(revision)
        )));
    }
    if sync == "Synced" && health == "Healthy" {
        return Ok(done(revision, at));
    }
    wait(format!("{name}: {sync}, {health} at {}", short(at)))
}

fn degraded_message(status: &Value) -> String {
    let mut parts: Vec<String> = status["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["health"]["status"] == "Degraded")
        .map(|r| {
            format!(
                "{} {}: {}",
                r["kind"].as_str().unwrap_or_default(),
                r["name"].as_str().unwrap_or_default(),
                r["health"]["message"].as_str().unwrap_or("Degraded")
            )
        })
        .collect();
    if parts.is_empty()
        && let Some(m) = status["health"]["message"].as_str()
    {
        parts.push(m.to_owned());
    }
    if parts.is_empty() {
        "no message".into()
    } else {
        parts.join("; ")
    }
}

fn needs_pruning(status: &Value) -> Option<String> {
    let list: Vec<String> = status["resources"]
        .as_array()?
        .iter()
        .filter(|r| r["requiresPruning"] == true)
        .map(|r| {
            format!(
                "{} {}",
                r["kind"].as_str().unwrap_or_default(),
                r["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    (!list.is_empty()).then(|| list.join(", "))
}
