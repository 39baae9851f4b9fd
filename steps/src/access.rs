//! What the step kinds' [`StepKind::access`](rollwright_engine::StepKind::access)
//! share: the objects the spec's applies render, whether the run changes the
//! cluster itself (not through Git), and the route a traffic step moves.

use rollwright_engine::registry::{Access, AccessContext};
use serde_json::Value;

use crate::traffic::Router;

/// `(apiVersion, kind, name)` of every object the spec's `apply` steps
/// render (templates and inline manifests). Manifests that do not parse are
/// left out: lint reports them before anything asks.
#[must_use]
pub fn applied(cx: &AccessContext) -> Vec<(String, String, String)> {
    cx.steps
        .iter()
        .filter(|(_, kind, _)| kind == crate::apply::NAME)
        .flat_map(|(id, _, with)| applied_by(cx, id, with))
        .collect()
}

/// The objects one `apply` step renders.
#[must_use]
pub fn applied_by(cx: &AccessContext, id: &str, with: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for m in cx.build.manifests.iter().filter(|m| m.step == id) {
        out.extend(crate::apply::manifest_objects(m).unwrap_or_default());
    }
    for o in with
        .get("manifests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(a), Some(k), Some(n)) = (
            o["apiVersion"].as_str(),
            o["kind"].as_str(),
            o["metadata"]["name"].as_str(),
        ) {
            out.push((a.to_owned(), k.to_owned(), n.to_owned()));
        }
    }
    out
}

/// Whether the run changes the cluster itself (a GitOps target is changed
/// through Git: the steps only read the cluster).
#[must_use]
pub fn changes(cx: &AccessContext) -> bool {
    cx.build.target.as_ref().is_none_or(|t| t.gitops.is_none())
}

/// The route a traffic step (`with.provider`, else the spec's serving) moves.
#[must_use]
pub fn router(cx: &AccessContext, with: &Value) -> Option<Router> {
    Router::of(cx.build, with.get("provider").and_then(Value::as_str)).ok()
}

/// `verbs` on the routing object of `router`.
#[must_use]
pub fn on_route(router: &Router, verbs: &[&'static str]) -> Access {
    let o = router.object();
    Access::new(&o.api_version, &o.kind, Some(&o.name), verbs)
}

/// `changing` when the run changes the cluster, else only `get`.
#[must_use]
pub fn verbs_if_changing(cx: &AccessContext, changing: &'static [&'static str]) -> &'static [&'static str] {
    if changes(cx) { changing } else { &["get"] }
}
