//! `rollback`: traffic back to stable, then restore the recorded objects.
//! The default compensation of every step that changes the target.

use std::sync::Arc;
use std::time::Duration;

use rollwright_engine::exec::{BoxFuture, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::{Access, AccessContext, BuildContext, BuildError, Finding, Role, StepKind};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::cluster::Cluster;

use crate::common::config;

/// Sends 100% of traffic to the stable version, then restores the last
/// known-good objects recorded by earlier steps, and verifies the result.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "rollback")]
pub struct RollbackConfig {
    /// Ids of the steps whose recorded state to restore (default: every step
    /// that changed the target).
    #[serde(default)]
    #[schemars(inner(length(min = 1)), extend("uniqueItems" = true))]
    pub restore: Vec<String>,
    /// Remove the canary workload after traffic is back on stable (default
    /// true).
    #[serde(default = "yes")]
    pub scale_down_canary: bool,
}

fn yes() -> bool {
    true
}

/// The rollback kind.
pub struct Rollback;

impl StepKind for Rollback {
    fn name(&self) -> &'static str {
        "rollback"
    }
    fn access(&self, with: &Value, cx: &AccessContext) -> Vec<Access> {
        if !crate::access::changes(cx) {
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Some(r) = crate::access::router(cx, with) {
            out.push(crate::access::on_route(&r, &["get", "patch"]));
        }
        for (a, k, n) in crate::access::applied(cx) {
            out.push(Access::new(
                &a,
                &k,
                Some(&n),
                &["get", "update", "create", "delete"],
            ));
        }
        // A promote's stable workload, as it was before.
        for (_, _, p) in cx.steps.iter().filter(|s| s.1 == crate::promote::NAME) {
            if let Some(r) = crate::access::router(cx, p)
                && r.provider.platform().is_some()
            {
                out.push(crate::access::on_route(&r, &["get", "update"]));
                continue;
            }
            match p
                .get("stable")
                .and_then(Value::as_str)
                .and_then(|s| s.split_once('/'))
            {
                Some((k, n)) => {
                    let a = crate::wait_ready::api_version_of(k).unwrap_or("apps/v1");
                    out.push(Access::new(a, k, Some(n), &["get", "update", "create"]));
                }
                None => out.push(Access::new(
                    "apps/v1",
                    "Deployment",
                    None,
                    &["get", "update", "create"],
                )),
            }
        }
        out
    }
    fn summary(&self) -> &'static str {
        "sends all traffic to stable and restores the last known-good objects"
    }
    fn schema(&self) -> &'static str {
        include_str!("../schemas/rollback.schema.json")
    }
    fn generated_schema(&self) -> Option<Value> {
        Some(crate::schema::of::<RollbackConfig>())
    }
    fn role(&self) -> Role {
        Role::Restore
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let _ = config::<RollbackConfig>(with, &mut out);
        out
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["restored"]
    }
    fn build(&self, with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        let c: RollbackConfig = serde_json::from_value(with.clone())?;
        Ok(Arc::new(RollbackStep {
            restore: c.restore,
            delete_created: c.scale_down_canary,
            gitops: crate::gitops::GitOpsTarget::of(cx)?,
            cluster: Cluster::of(cx)?,
        }))
    }
    fn step_refs(&self, with: &Value) -> Vec<(String, String)> {
        with.get("restore")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.as_str().map(|s| (format!("/restore/{i}"), s.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Traffic first (every recorded route back to its original split), then
/// the recorded objects (restored, or deleted when they did not exist),
/// then waits until that holds and the restored workloads are Ready.
struct RollbackStep {
    restore: Vec<String>,
    delete_created: bool,
    gitops: Option<Arc<crate::gitops::GitOpsTarget>>,
    cluster: Arc<Cluster>,
}

impl RollbackStep {
    /// Whose objects to restore: `restore`, else as a compensation the step
    /// it undoes, else (an explicit rollback step) every step.
    fn scope(&self, cx: &StepContext) -> Option<Vec<String>> {
        if !self.restore.is_empty() {
            Some(self.restore.clone())
        } else if cx.step_id != cx.owner {
            Some(vec![cx.owner.clone()])
        } else {
            None
        }
    }

    async fn restore(&self, cx: &StepContext) -> Result<Vec<String>, StepError> {
        let mut done = crate::restore::traffic(&self.cluster, cx, crate::shift_traffic::MANAGER).await?;
        let scope = self.scope(cx);
        done.extend(crate::restore::objects(&self.cluster, cx, scope.as_deref(), self.delete_created).await?);
        crate::restore::report(cx, &done);
        Ok(done)
    }

    async fn verify(&self, cx: &StepContext) -> Result<Progress, StepError> {
        crate::restore::settled(
            &self.cluster,
            cx,
            self.scope(cx).as_deref(),
            Duration::from_millis(500),
        )
        .await
    }
}

impl Step for RollbackStep {
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            if let Some(g) = &self.gitops {
                // An explicit rollback reverts the commits of the steps it
                // restores (and every traffic shift); as a compensation, all
                // of the run's commits.
                let scope = if self.restore.is_empty() {
                    None
                } else {
                    Some(self.restore.clone())
                };
                return g.revert_and_sync(cx, scope.as_deref()).await;
            }
            let done = self.restore(cx).await?;
            match self.verify(cx).await? {
                Progress::Done { .. } => {
                    let mut outputs = Map::new();
                    outputs.insert("restored".into(), json!(done));
                    Ok(Progress::Done { outputs })
                }
                wait => Ok(wait),
            }
        })
    }

    fn compensate<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            if let Some(g) = &self.gitops {
                return g.revert_run(cx, None).await.map(|_| ());
            }
            self.restore(cx).await.map(|_| ())
        })
    }

    fn settle<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            match &self.gitops {
                Some(g) => g.revert_settled(cx).await,
                None => self.verify(cx).await,
            }
        })
    }
}
