//! `promote`: the end of a successful rollout — the new version becomes
//! *stable*, so that the next rollout starts from the same shape as this
//! one did (one stable workload serving 100 %, no canary).
//!
//! Without it, the canary workload keeps serving at 100 % and the "stable"
//! one keeps the previous version: the next rollout's apply overwrites the
//! live canary in place and its "5 %" step sends 95 % of traffic back to
//! the version before. What promote does, per platform:
//! - **Deployment** (Istio, Gateway API, SMI, NGINX): the stable workload
//!   (the one the route's stable backend selects, or `with.stable`) takes
//!   the canary's pod template (keeping its own selector labels), rolls out
//!   and becomes Ready; then the route sends 100 % to stable; then the
//!   canary workload is removed (or scaled to 0).
//! - **KServe**: `canaryTrafficPercent` is removed, so the latest revision
//!   is the only one; done when the InferenceService serves it at 100 %.
//! - **Seldon**: the stable predictor takes the canary predictor's graph and
//!   components at 100 % traffic and the canary predictor is removed.
//!
//! It is a change (gated in production). Each phase checks the world
//! before acting, so a retry or a resume picks up where it was. It records
//! the stable workload as it was before; its compensation restores that
//! (traffic and the canary are restored by the compensations of the steps
//! that changed them).

use std::sync::Arc;
use std::time::Duration;

use rollwright_engine::Code;
use rollwright_engine::exec::{BoxFuture, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::{Access, AccessContext, BuildContext, BuildError, Finding, Role, StepKind};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::cluster::{Cluster, ObjRef, restorable, selector};
use crate::common::config;
use crate::traffic::{Router, merge_patch_of};

/// Makes the new version stable at the end of a rollout: the stable workload
/// takes the canary's version and becomes Ready, 100% of traffic goes to
/// stable, the canary is removed (KServe: canaryTrafficPercent removed, the
/// latest revision the only one; Seldon: the stable predictor takes the
/// canary's model and the canary predictor is removed). The next rollout
/// starts from the same shape.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "promote")]
pub struct PromoteConfig {
    /// Remove the canary workload (default true); false scales it to 0
    /// replicas.
    #[serde(default = "yes")]
    pub remove_canary: bool,
    /// The stable workload, `Deployment/NAME` or `StatefulSet/NAME`
    /// (default: the one the route's stable backend selects).
    #[serde(default)]
    #[schemars(regex(pattern = "^(Deployment|StatefulSet)/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub stable: Option<String>,
    /// Traffic provider (default: serving.traffic).
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::traffic_provider")]
    pub provider: Option<String>,
}

fn yes() -> bool {
    true
}

/// The `type:` of this kind.
pub const NAME: &str = "promote";

/// The promote kind.
pub struct Promote;

impl StepKind for Promote {
    fn describe(&self, o: &serde_json::Map<String, Value>) -> String {
        use rollwright_engine::words::scalar;
        match (o.get("stable"), o.get("version")) {
            (Some(s), Some(v)) => format!("{} is stable on version {}", scalar(s), scalar(v)),
            _ => rollwright_engine::words::plain(o),
        }
    }
    fn name(&self) -> &'static str {
        NAME
    }
    fn access(&self, with: &Value, cx: &AccessContext) -> Vec<Access> {
        let Some(r) = crate::access::router(cx, with) else {
            return Vec::new();
        };
        let changing = |v: &'static [&'static str]| crate::access::verbs_if_changing(cx, v);
        match r.provider.platform() {
            // The InferenceService (a patch) / SeldonDeployment (an update)
            // itself; the compensation restores it.
            Some("kserve") => vec![crate::access::on_route(&r, changing(&["get", "patch", "update"]))],
            Some(_) => vec![crate::access::on_route(&r, changing(&["get", "update"]))],
            None => {
                let mut out = vec![crate::access::on_route(&r, changing(&["get", "patch"]))];
                if !cx.compensation {
                    // Removed, or scaled to 0.
                    let workloads = crate::access::applied(cx);
                    if let Some((a, k, n)) = workloads
                        .iter()
                        .find(|(_, k, _)| matches!(k.as_str(), "Deployment" | "StatefulSet"))
                    {
                        out.push(Access::new(a, k, Some(n), changing(&["get", "patch", "delete"])));
                    }
                    out.extend(r.provider.selection_access(&r, &r.stable));
                }
                // The stable workload: named by `with.stable`, else found
                // through the route's stable backend.
                match with
                    .get("stable")
                    .and_then(Value::as_str)
                    .and_then(|s| s.split_once('/'))
                {
                    Some((k, n)) => {
                        let a = crate::wait_ready::api_version_of(k).unwrap_or("apps/v1");
                        out.push(Access::new(a, k, Some(n), changing(&["get", "update"])));
                    }
                    None => {
                        out.push(Access::new("apps/v1", "Deployment", None, &["list"]));
                        out.push(
                            Access::new("apps/v1", "Deployment", None, changing(&["get", "update"])).noting(format!(
                                "`{}` finds the stable workload through the route at run time, so it may update any Deployment here; name it (`stable: Deployment/NAME` in its `with`, e.g. through `customize.with`) to grant that one only.",
                                cx.build.step
                            )),
                        );
                    }
                }
                out
            }
        }
    }
    fn summary(&self) -> &'static str {
        "makes the new version stable: stable workload updated and Ready, 100 % to stable, canary removed"
    }
    fn schema(&self) -> &'static str {
        include_str!("../schemas/promote.schema.json")
    }
    fn generated_schema(&self) -> Option<Value> {
        Some(crate::schema::of::<PromoteConfig>())
    }
    fn role(&self) -> Role {
        Role::Promote
    }
    /// The new version serves everything.
    fn canary_weight(&self, _with: &Value) -> Option<u64> {
        Some(100)
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["stable", "version"]
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        if let Some(c) = config::<PromoteConfig>(with, &mut out)
            && let Some(s) = &c.stable
            && !s.starts_with("Deployment/")
            && !s.starts_with("StatefulSet/")
        {
            out.push(Finding::new(
                "/stable",
                Code::InvalidStepConfig,
                format!("`stable` is `Deployment/NAME` or `StatefulSet/NAME`, not `{s}`"),
            ));
        }
        out
    }
    fn check_rendered(&self, with: &Value, cx: &BuildContext) -> Vec<Finding> {
        let Ok(c) = serde_json::from_value::<PromoteConfig>(with.clone()) else {
            return Vec::new();
        };
        match Router::of(cx, c.provider.as_deref()) {
            Ok(_) => Vec::new(),
            Err(e) => vec![Finding::new("/provider", Code::InvalidStepConfig, e.to_string())],
        }
    }
    fn build(&self, with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        let c: PromoteConfig = serde_json::from_value(with.clone())?;
        let router = Router::of(cx, c.provider.as_deref()).map_err(|e| BuildError::Config(e.to_string()))?;
        let cluster = Cluster::of(cx)?;
        let stable = c.stable.as_deref().map(|s| {
            let (kind, name) = s.split_once('/').unwrap_or(("Deployment", s));
            ObjRef::new("apps/v1", kind, &cluster.namespace, name)
        });
        cluster.allow([router.object()]);
        cluster.allow(stable.clone());
        let (_, _, version) = cx
            .model
            .clone()
            .ok_or_else(|| BuildError::Config("promote needs the spec's `model`".into()))?;
        Ok(Arc::new(PromoteStep {
            platform: crate::target::serving(cx).map_or_else(String::new, |s| s.platform),
            router,
            cluster,
            remove_canary: c.remove_canary,
            stable,
            version,
        }))
    }
}

struct PromoteStep {
    platform: String,
    router: Router,
    cluster: Arc<Cluster>,
    remove_canary: bool,
    stable: Option<ObjRef>,
    version: String,
}

const POLL: Duration = Duration::from_millis(300);

fn wait(reason: String) -> Progress {
    Progress::Wait { after: POLL, reason }
}

fn done(stable: &ObjRef, version: &str) -> Progress {
    let mut outputs = Map::new();
    outputs.insert("stable".into(), Value::from(stable.to_string()));
    outputs.insert("version".into(), Value::from(version.to_owned()));
    Progress::Done { outputs }
}

impl PromoteStep {
    /// The workload this run applied as the canary (from the apply
    /// records): exactly one Deployment or StatefulSet.
    fn canary(&self, cx: &StepContext) -> Result<ObjRef, StepError> {
        let mut found: Vec<ObjRef> = Vec::new();
        for m in cx
            .all_records()
            .iter()
            .filter(|m| m.key == "objects" && m.step != cx.owner)
        {
            for o in m.value.as_array().into_iter().flatten() {
                if let Ok(r) = serde_json::from_value::<ObjRef>(o["ref"].clone())
                    && matches!(r.kind.as_str(), "Deployment" | "StatefulSet")
                    && !found.contains(&r)
                {
                    found.push(r);
                }
            }
        }
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(StepError::failed(
                "promote found no canary workload applied by this run (an `apply` of a Deployment comes first)",
            )),
            many => Err(StepError::failed(format!(
                "promote needs one canary workload; this run applied {}",
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The stable workload: `with.stable`, else the one Deployment the
    /// route's stable backend selects (the canary excluded).
    async fn stable_of(&self, canary: &ObjRef) -> Result<ObjRef, StepError> {
        let want = self.router.stable_selector(&self.cluster).await?;
        let want = want.as_object().cloned().unwrap_or_default();
        let serves = |d: &Value| {
            let labels = &d["spec"]["template"]["metadata"]["labels"];
            !want.is_empty() && want.iter().all(|(k, v)| &labels[k] == v)
        };
        if let Some(s) = &self.stable {
            // A named stable workload must be the one the stable backend
            // serves: updating another one would leave stable on the old
            // version once the route goes back to it.
            let obj = self
                .cluster
                .get(s)
                .await?
                .ok_or_else(|| StepError::failed(format!("{s} (`stable`) does not exist")))?;
            if s.name == canary.name || !serves(&obj) {
                return Err(StepError::rejected(format!(
                    "{s} (`stable`) is not what the route's stable backend serves ({})",
                    selector(&Value::Object(want))
                )));
            }
            self.cluster.allow([s.clone()]);
            return Ok(s.clone());
        }
        let all = self.cluster.list(&canary.api_version, &canary.kind, "").await?;
        let matches: Vec<ObjRef> = all
            .iter()
            .filter(|d| serves(d))
            .filter_map(|d| ObjRef::of(d, &self.cluster.namespace))
            .filter(|r| r.name != canary.name)
            .collect();
        match matches.as_slice() {
            [one] => {
                self.cluster.allow([one.clone()]);
                Ok(one.clone())
            }
            [] => Err(StepError::failed(format!(
                "no {} is selected by the stable backend ({}): name it with `stable: {}/NAME`",
                canary.kind,
                selector(&Value::Object(want)),
                canary.kind
            ))),
            many => Err(StepError::failed(format!(
                "the stable backend selects several workloads ({}): name one with `stable`",
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    async fn deployment(&self, cx: &StepContext) -> Result<Progress, StepError> {
        let canary = self.canary(cx)?;
        let stable = self.stable_of(&canary).await?;
        let st = self
            .cluster
            .get(&stable)
            .await?
            .ok_or_else(|| StepError::failed(format!("{stable} does not exist")))?;
        if cx.recalled("stable").is_none() {
            cx.remember("stable", json!({"ref": stable, "object": restorable(&st)}))?;
        }
        // 1. The stable workload takes the canary's pod template (once the
        // canary is gone this phase is done: it only ever happens before).
        if let Some(c) = self.cluster.get(&canary).await? {
            let mut template = c["spec"]["template"].clone();
            let own = st["spec"]["selector"]["matchLabels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
                labels.extend(own);
            }
            if st["spec"]["template"] != template {
                let mut next = st.clone();
                next["spec"]["template"] = template;
                if let Some(m) = next.as_object_mut() {
                    m.remove("status");
                }
                self.cluster.replace(&stable, &next).await?;
                return Ok(wait(format!("{stable} rolling out version {}", self.version)));
            }
        }
        // 2. Ready before it takes traffic.
        if let Some(why) = crate::restore::not_ready(&st) {
            return Ok(wait(format!("{stable} (version {}): {why}", self.version)));
        }
        // 3. All traffic to stable (the new version now).
        let r = self.router.object();
        let route = self
            .cluster
            .get(&r)
            .await?
            .ok_or_else(|| StepError::failed(format!("{r} does not exist")))?;
        if self.router.canary_weight(&route) != Some(0) {
            let fields = self.router.fields_for(&route, 0).map_err(StepError::failed)?;
            let mut patch = merge_patch_of(&fields);
            patch["metadata"]["resourceVersion"] = route["metadata"]["resourceVersion"].clone();
            self.cluster
                .merge_patch(&r, &patch, crate::shift_traffic::MANAGER)
                .await?;
            return Ok(wait(format!("{r}: 100 % to {stable}")));
        }
        // 4. No canary left.
        if self.cluster.get(&canary).await?.is_some() {
            if self.remove_canary {
                self.cluster.delete(&canary).await?;
            } else {
                self.cluster
                    .merge_patch(
                        &canary,
                        &json!({"spec": {"replicas": 0}}),
                        crate::shift_traffic::MANAGER,
                    )
                    .await?;
                return Ok(done(&stable, &self.version));
            }
            return Ok(wait(format!("{canary} being removed")));
        }
        Ok(done(&stable, &self.version))
    }

    async fn kserve(&self) -> Result<Progress, StepError> {
        let r = self.router.object();
        let isvc = self
            .cluster
            .get(&r)
            .await?
            .ok_or_else(|| StepError::failed(format!("{r} does not exist")))?;
        if !isvc["spec"]["predictor"]["canaryTrafficPercent"].is_null() {
            let patch = json!({"metadata": {"resourceVersion": isvc["metadata"]["resourceVersion"]},
                               "spec": {"predictor": {"canaryTrafficPercent": null}}});
            self.cluster
                .merge_patch(&r, &patch, crate::shift_traffic::MANAGER)
                .await?;
            return Ok(wait(format!("{r}: the latest revision becomes the only one")));
        }
        let p = &isvc["status"]["components"]["predictor"];
        let latest = p["latestCreatedRevision"].as_str();
        let traffic = p["traffic"].as_array().cloned().unwrap_or_default();
        let serving: Vec<&Value> = traffic
            .iter()
            .filter(|t| t["percent"].as_u64().unwrap_or(0) > 0)
            .collect();
        let only_latest = serving.len() == 1
            && serving[0]["percent"].as_u64() == Some(100)
            && serving[0]["revisionName"].as_str() == latest
            && p["latestReadyRevision"].as_str() == latest;
        if only_latest {
            Ok(done(&r, &self.version))
        } else {
            Ok(wait(format!(
                "{r}: revision {} to serve 100 % alone",
                latest.unwrap_or("(none)")
            )))
        }
    }

    async fn seldon(&self, cx: &StepContext) -> Result<Progress, StepError> {
        let r = self.router.object();
        let sdep = self
            .cluster
            .get(&r)
            .await?
            .ok_or_else(|| StepError::failed(format!("{r} does not exist")))?;
        let predictors = sdep["spec"]["predictors"].as_array().cloned().unwrap_or_default();
        let canary = predictors
            .iter()
            .find(|p| p["name"].as_str() == Some(&self.router.canary));
        if let Some(canary) = canary {
            if cx.recalled("stable").is_none() {
                cx.remember("stable", json!({"ref": r, "object": restorable(&sdep)}))?;
            }
            let mut main = canary.clone();
            main["name"] = Value::from(self.router.stable.clone());
            main["traffic"] = Value::from(100);
            let mut next = sdep.clone();
            next["spec"]["predictors"] = json!([main]);
            if let Some(m) = next.as_object_mut() {
                m.remove("status");
            }
            self.cluster.replace(&r, &next).await?;
            return Ok(wait(format!(
                "{r}: predictor {} takes version {}",
                self.router.stable, self.version
            )));
        }
        match crate::restore::not_ready(&sdep) {
            Some(why) => Ok(wait(format!("{r}: {why}"))),
            None => Ok(done(&r, &self.version)),
        }
    }
}

impl Step for PromoteStep {
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            match (self.platform.as_str(), self.router.provider.platform()) {
                ("kserve", _) | (_, Some("kserve")) => self.kserve().await,
                ("seldon", _) | (_, Some("seldon")) => self.seldon(cx).await,
                _ => self.deployment(cx).await,
            }
        })
    }

    /// Contract: puts the stable workload back as it was before this step
    /// (its record); idempotent; does nothing when the step never recorded.
    /// Traffic and the canary are restored by the steps that changed them.
    fn compensate<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            let Some(rec) = cx.recalled("stable") else {
                return Ok(());
            };
            let r: ObjRef = serde_json::from_value(rec["ref"].clone())
                .map_err(|e| StepError::failed(format!("the stable record: {e}")))?;
            let current = self.cluster.get(&r).await?;
            if current
                .as_ref()
                .is_some_and(|c| c["spec"] == rec["object"]["spec"])
            {
                return Ok(());
            }
            // Only a workload this step itself changed, in the target namespace.
            if !matches!(r.kind.as_str(), "Deployment" | "StatefulSet" | "SeldonDeployment") {
                return Err(StepError::failed(format!(
                    "refusing to restore {r}: promote changes workloads only"
                )));
            }
            self.cluster.allow([r.clone()]);
            self.cluster.check_restorable(&r)?;
            self.cluster.restore(&r, &rec["object"]).await?;
            crate::restore::report(cx, &[format!("{r} restored to the version it served before")]);
            Ok(())
        })
    }
}
