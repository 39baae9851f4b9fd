//! `shift-traffic`: set the canary's share of traffic.

use std::sync::Arc;
use std::time::Duration;

use rollwright_engine::Code;
use rollwright_engine::exec::{BoxFuture, Observation, Progress, Split, Step, StepContext, StepError};
use rollwright_engine::registry::{Access, AccessContext, BuildContext, BuildError, Finding, Role, StepKind};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::cluster::Cluster;
use crate::gitops::ManifestError;
use crate::traffic::{Router, apply_merge_patch, merge_patch_of};

use crate::common::config;

/// Sets the share of traffic the canary (new version) receives; the stable
/// version gets the rest.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "shift-traffic")]
pub struct ShiftTrafficConfig {
    /// Percent of traffic to the canary, 0 to 100.
    #[schemars(range(max = 100))]
    pub canary: u8,
    /// Router (default `serving.traffic`).
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::traffic_provider")]
    pub provider: Option<String>,
    /// Why production may go straight to 100% without a canary. Reported by
    /// lint.
    #[serde(default)]
    #[schemars(length(min = 10))]
    pub justification: Option<String>,
    /// Percent of traffic copied (shadowed) to the canary; its responses are
    /// discarded. Default 0.
    #[serde(default)]
    #[schemars(range(max = 100))]
    pub mirror: u8,
    /// Change objects that carry Argo CD or Flux tracking labels directly
    /// anyway (refused by default: the controller would revert the change).
    /// Only for fields the controller is told to ignore (Argo CD
    /// `ignoreDifferences`, Flux `kustomize.toolkit.fluxcd.io/ssa:
    /// IfNotPresent`). Without effect on a `target.gitops` target, which
    /// always goes through Git.
    #[serde(default, rename = "allow-gitops-managed")]
    pub allow_gitops_managed: bool,
}

/// The shift-traffic kind.
pub struct ShiftTraffic;

impl StepKind for ShiftTraffic {
    fn describe(&self, o: &Map<String, Value>) -> String {
        use rollwright_engine::words::scalar;
        match o.get("route") {
            Some(r) => format!(
                "canary at {} % on {}",
                o.get("canary").map(scalar).unwrap_or_default(),
                scalar(r)
            ),
            None => rollwright_engine::words::plain(o),
        }
    }
    fn name(&self) -> &'static str {
        "shift-traffic"
    }
    fn detail(&self, with: &Value) -> Option<String> {
        self.canary_weight(with).map(|w| format!("{w}%"))
    }
    fn access(&self, with: &Value, cx: &AccessContext) -> Vec<Access> {
        let Some(r) = crate::access::router(cx, with) else {
            return Vec::new();
        };
        let mut out = vec![crate::access::on_route(
            &r,
            crate::access::verbs_if_changing(cx, &["get", "patch"]),
        )];
        // Readiness of the canary before routing to it.
        out.extend(r.provider.readiness_access(&r));
        out
    }
    fn summary(&self) -> &'static str {
        "sets the canary's share of traffic (Istio, Gateway API, KServe, SMI, NGINX, Seldon)"
    }
    fn schema(&self) -> &'static str {
        include_str!("../schemas/shift-traffic.schema.json")
    }
    fn generated_schema(&self) -> Option<Value> {
        Some(crate::schema::of::<ShiftTrafficConfig>())
    }
    fn role(&self) -> Role {
        Role::Promote
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let _ = config::<ShiftTrafficConfig>(with, &mut out);
        out
    }
    fn outputs(&self) -> &'static [&'static str] {
        // `previous-split`: the routing object's weights before the change
        // (the cluster's; a GitOps target records its commit instead).
        &["canary", "route", "previous-split"]
    }
    fn canary_weight(&self, with: &Value) -> Option<u64> {
        with.get("canary").and_then(Value::as_u64)
    }
    fn justification<'a>(&self, with: &'a Value) -> Option<&'a str> {
        with.get("justification").and_then(Value::as_str)
    }
    fn check_rendered(&self, with: &Value, cx: &BuildContext) -> Vec<Finding> {
        let Ok(c) = serde_json::from_value::<ShiftTrafficConfig>(with.clone()) else {
            return Vec::new();
        };
        match route_of(&c, cx) {
            Ok(_) => Vec::new(),
            Err((pointer, e)) => vec![Finding::new(pointer, Code::InvalidStepConfig, e)],
        }
    }
    fn build(&self, with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        let c: ShiftTrafficConfig = serde_json::from_value(with.clone())?;
        let router = route_of(&c, cx).map_err(|(_, e)| BuildError::Config(e))?;
        let cluster = Cluster::of(cx)?;
        cluster.allow([router.object()]);
        Ok(Arc::new(ShiftTrafficStep {
            canary: c.canary,
            mirror: c.mirror,
            router,
            gitops: crate::gitops::GitOpsTarget::of(cx)?,
            allow_gitops_managed: c.allow_gitops_managed,
            cluster,
        }))
    }
}

/// The router of a shift, or why it cannot be made (with the pointer in
/// `with` to blame): the one check `lint` and `run` share.
fn route_of(c: &ShiftTrafficConfig, cx: &BuildContext) -> Result<Router, (&'static str, String)> {
    let router = Router::of(cx, c.provider.as_deref()).map_err(|e| ("/provider", e.to_string()))?;
    if c.mirror > 0 && !router.provider.mirrors() {
        return Err((
            "/mirror",
            format!(
                "`mirror` needs the istio provider; {} cannot mirror traffic",
                router.provider.name()
            ),
        ));
    }
    Ok(router)
}

/// Field manager of traffic changes.
pub const MANAGER: &str = "rollwright-traffic";

struct ShiftTrafficStep {
    canary: u8,
    mirror: u8,
    router: Router,
    gitops: Option<Arc<crate::gitops::GitOpsTarget>>,
    allow_gitops_managed: bool,
    cluster: Arc<Cluster>,
}

impl ShiftTrafficStep {
    /// The fields this step sets on the routing object `current`.
    fn want(&self, current: &Value) -> Result<Map<String, Value>, String> {
        let mut want = self.router.fields_for(current, self.canary)?;
        if self.mirror > 0 {
            self.router.provider.mirror(&self.router, &mut want, self.mirror);
        }
        Ok(want)
    }

    /// GitOps: the routing object's fields changed in the repository,
    /// committed, pushed and synced.
    async fn commit(&self, g: &crate::gitops::GitOpsTarget, cx: &StepContext) -> Result<Progress, StepError> {
        let r = self.router.object();
        if self.canary > 0
            && cx.recalled("gitops-pushed").is_none()
            && let Some(live) = self.cluster.get(&r).await?
        {
            self.router.canary_ready(&self.cluster, &live).await?;
        }
        let summary = format!("shift {}% of traffic to the canary ({r})", self.canary);
        let path = g.config.path.clone();
        let progress = g
            .commit_and_sync(cx, "shift-traffic", &summary, |root| {
                let doc = crate::gitops::find_doc(root, &r, g.namespace())?
                    .ok_or_else(|| ManifestError::Change(format!("{r} is not in the repository under `{path}`: the routing object must be committed before traffic is shifted")))?;
                // The same change a merge patch makes in the cluster.
                let mut next = doc.value.clone();
                apply_merge_patch(&mut next, &merge_patch_of(&self.want(&doc.value).map_err(ManifestError::Change)?));
                crate::gitops::rewrite(&doc, &next)
            })
            .await?;
        Ok(match progress {
            Progress::Done { mut outputs } => {
                self.observe(cx, &r.to_string());
                outputs.insert("canary".into(), json!(self.canary));
                outputs.insert("route".into(), json!(r.to_string()));
                Progress::Done { outputs }
            }
            wait => wait,
        })
    }
}

impl ShiftTrafficStep {
    /// The split is served: what the live view and the report show.
    fn observe(&self, cx: &StepContext, route: &str) {
        cx.observe(Observation {
            split: Some(Split {
                canary_percent: f64::from(self.canary),
                route: route.to_owned(),
            }),
            ..Observation::default()
        });
    }
}

impl Step for ShiftTrafficStep {
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            if let Some(g) = &self.gitops {
                return self.commit(g, cx).await;
            }
            let r = self.router.object();
            let Some(current) = self.cluster.get(&r).await? else {
                return Err(StepError::failed(format!(
                    "{r} does not exist: the routing object must be applied before traffic is shifted"
                )));
            };
            // The split before this step changes it, journaled first.
            let before = match cx.recalled("traffic") {
                Some(b) => b["fields"].clone(),
                None => {
                    let fields = Value::Object(self.router.fields(&current));
                    cx.remember("traffic", json!({"ref": r, "fields": fields}))?;
                    fields
                }
            };
            if let Some(by) = crate::gitops::managed_by(&current)
                && !self.allow_gitops_managed
            {
                return Err(StepError::failed(format!(
                    "{r} is managed by {by}: changing it directly would fight the controller; declare `target.gitops` so the change goes through Git (or `allow-gitops-managed: true` if the controller ignores the weights)"
                )));
            }
            let want = self.want(&current).map_err(StepError::failed)?;
            let unchanged = want
                .iter()
                .all(|(p, v)| current.pointer(p).unwrap_or(&Value::Null) == v);
            if !unchanged {
                if self.canary > 0 {
                    self.router.canary_ready(&self.cluster, &current).await?;
                }
                let mut patch = merge_patch_of(&want);
                patch["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
                self.cluster.merge_patch(&r, &patch, MANAGER).await?;
                return Ok(Progress::Wait {
                    after: Duration::from_millis(100),
                    reason: format!("{r} to serve {} % to the canary", self.canary),
                });
            }
            // Done when the router serves the split set, not when the
            // object says it: what the hold after this step judges.
            if let Some(why) = self.router.not_served(&current, self.canary) {
                return Ok(Progress::Wait {
                    after: Duration::from_millis(200),
                    reason: why,
                });
            }
            self.observe(cx, &r.to_string());
            let mut outputs = Map::new();
            outputs.insert("previous-split".into(), before);
            outputs.insert("canary".into(), json!(self.canary));
            outputs.insert("route".into(), json!(r.to_string()));
            Ok(Progress::Done { outputs })
        })
    }

    fn compensate<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            if let Some(g) = &self.gitops {
                return g.revert_run(cx, None).await.map(|_| ());
            }
            let done = crate::restore::traffic(&self.cluster, cx, MANAGER).await?;
            crate::restore::report(cx, &done);
            Ok(())
        })
    }

    fn settle<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            if let Some(g) = &self.gitops {
                return g.revert_settled(cx).await;
            }
            crate::restore::settled(&self.cluster, cx, Some(&[]), Duration::from_millis(200)).await
        })
    }
}
