//! `wait-ready`: wait until workloads are ready, failing fast on crash loops.

use std::sync::Arc;
use std::time::Duration;

use rollwright_engine::exec::{BoxFuture, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::{Access, AccessContext, BuildContext, BuildError, Finding, Role, StepKind};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::cluster::{Cluster, ObjRef, pod_trouble, selector};

use crate::common::config;

/// Waits until the workloads are ready (Deployment rollout complete, Pods
/// Ready, InferenceService Ready), failing fast on crash loops.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "wait-ready")]
pub struct WaitReadyConfig {
    /// Objects to wait for, as `kind/name` (default: what the preceding
    /// apply applied).
    #[serde(default)]
    #[schemars(inner(regex(pattern = r"^[A-Za-z][A-Za-z0-9.]*/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")))]
    pub resources: Vec<String>,
    /// Container restarts tolerated before failing as a crash loop (default 2).
    #[serde(default = "two")]
    pub max_restarts: u32,
}

fn two() -> u32 {
    2
}

/// The wait-ready kind.
pub struct WaitReady;

impl StepKind for WaitReady {
    fn describe(&self, o: &serde_json::Map<String, Value>) -> String {
        let ready: Vec<String> = o
            .get("ready")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(rollwright_engine::words::scalar)
            .collect();
        format!("ready: {}", ready.join(", "))
    }
    fn name(&self) -> &'static str {
        "wait-ready"
    }
    fn access(&self, with: &Value, cx: &AccessContext) -> Vec<Access> {
        let listed: Vec<(String, String, String)> = with
            .get("resources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|r| r.split_once('/'))
            .filter_map(|(k, n)| api_version_of(k).map(|av| (av.to_owned(), k.to_owned(), n.to_owned())))
            .collect();
        let targets = if listed.is_empty() {
            crate::access::applied(cx)
        } else {
            listed
        };
        let mut out = Vec::new();
        for (a, k, n) in targets {
            out.push(Access::new(&a, &k, Some(&n), &["get"]));
            // Waiting for the next change is a watch on the kind.
            out.push(Access::new(&a, &k, None, &["list", "watch"]));
        }
        out.push(Access::new("v1", "Pod", None, &["list"]));
        out
    }
    fn summary(&self) -> &'static str {
        "waits for Deployments, Pods and InferenceServices to be ready; fails fast on crash loops"
    }
    fn schema(&self) -> &'static str {
        include_str!("../schemas/wait-ready.schema.json")
    }
    fn generated_schema(&self) -> Option<Value> {
        Some(crate::schema::of::<WaitReadyConfig>())
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let _ = config::<WaitReadyConfig>(with, &mut out);
        out
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["ready"]
    }
    fn build(&self, with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        let c: WaitReadyConfig = serde_json::from_value(with.clone())?;
        let cluster = Cluster::of(cx)?;
        let resources = c
            .resources
            .iter()
            .map(|r| {
                let (kind, name) = r.split_once('/').ok_or_else(|| format!("`{r}` is not KIND/NAME"))?;
                let api_version = api_version_of(kind)
                    .ok_or_else(|| format!("wait-ready knows Deployment, StatefulSet, Pod, InferenceService and SeldonDeployment, not `{kind}`"))?;
                Ok(ObjRef::new(api_version, kind, &cluster.namespace, name))
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(BuildError::Config)?;
        Ok(Arc::new(WaitReadyStep {
            resources,
            cluster,
            max_restarts: c.max_restarts,
        }))
    }
}

/// The apiVersion of a kind wait-ready knows.
#[must_use]
pub fn api_version_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" | "StatefulSet" => "apps/v1",
        "Pod" => "v1",
        "InferenceService" => "serving.kserve.io/v1beta1",
        "SeldonDeployment" => "machinelearning.seldon.io/v1",
        _ => return None,
    })
}

struct WaitReadyStep {
    resources: Vec<ObjRef>,
    cluster: Arc<Cluster>,
    max_restarts: u32,
}

impl WaitReadyStep {
    /// Without `resources`: the workloads the completed apply steps applied.
    fn targets(&self, cx: &StepContext) -> Vec<ObjRef> {
        if !self.resources.is_empty() {
            return self.resources.clone();
        }
        let Ok(outputs) = cx.outputs.read() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for o in outputs.values() {
            for obj in o.get("objects").and_then(Value::as_array).into_iter().flatten() {
                let kind = obj["kind"].as_str().unwrap_or_default();
                if api_version_of(kind).is_some()
                    && let Ok(r) = serde_json::from_value::<ObjRef>(obj.clone())
                    && !out.contains(&r)
                {
                    out.push(r);
                }
            }
        }
        out
    }

    /// The label selector of a workload's pods.
    fn pods_of(obj: &Value) -> String {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        match obj["kind"].as_str() {
            Some("Deployment" | "StatefulSet") => selector(&obj["spec"]["selector"]["matchLabels"]),
            Some("InferenceService") => format!("serving.kserve.io/inferenceservice={name}"),
            Some("SeldonDeployment") => format!("seldon-deployment-id={name}"),
            _ => String::new(),
        }
    }
}

impl Step for WaitReadyStep {
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            let targets = self.targets(cx);
            if targets.is_empty() {
                return Err(StepError::failed(
                    "nothing to wait for: name `resources` (KIND/NAME) or run after an apply of a workload",
                ));
            }
            let mut waiting = Vec::new();
            let mut watch: Option<(ObjRef, String)> = None;
            for r in &targets {
                let Some(obj) = self.cluster.get(r).await? else {
                    waiting.push(format!("{r} does not exist yet"));
                    continue;
                };
                // Crash loops fail the step now, not at the timeout.
                let sel = if r.kind == "Pod" {
                    String::new()
                } else {
                    Self::pods_of(&obj)
                };
                let pods = if r.kind == "Pod" {
                    vec![obj.clone()]
                } else if sel.is_empty() {
                    Vec::new()
                } else {
                    self.cluster.list("v1", "Pod", &sel).await?
                };
                for p in &pods {
                    if let Some(why) = pod_trouble(p, self.max_restarts) {
                        return Err(StepError::rejected(format!("{r} cannot become ready: {why}")));
                    }
                }
                if let Some(why) = crate::restore::not_ready(&obj) {
                    waiting.push(format!("{r}: {why}"));
                    if watch.is_none() {
                        let rv = obj["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or("0")
                            .to_owned();
                        watch = Some((r.clone(), rv));
                    }
                }
            }
            if waiting.is_empty() {
                let mut outputs = Map::new();
                outputs.insert(
                    "ready".into(),
                    json!(targets.iter().map(ToString::to_string).collect::<Vec<_>>()),
                );
                return Ok(Progress::Done { outputs });
            }
            // Watch for the next change of what is not ready instead of polling.
            match &watch {
                Some((r, rv)) => {
                    self.cluster
                        .next_change(&r.api_version, &r.kind, rv, Duration::from_secs(2))
                        .await;
                }
                None => tokio::time::sleep(Duration::from_millis(500)).await,
            }
            Ok(Progress::Wait {
                after: Duration::from_millis(50),
                reason: waiting.join("; "),
            })
        })
    }
}
