//! `notify`: POST a JSON summary to a webhook given by reference.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rollwright_engine::exec::{BoxFuture, Progress, Step, StepContext, StepError};
use rollwright_engine::registry::{BuildContext, BuildError, Finding, Role, StepKind};
use rollwright_engine::secrets;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::common::{SecretRef, config};

/// POSTs a JSON summary of the run to a webhook whose URL is a secret
/// reference.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "notify")]
pub struct NotifyConfig {
    /// Webhook URL, by reference.
    #[schemars(schema_with = "crate::schema::secret_ref")]
    pub webhook: SecretRef,
    /// Extra headers, each by reference.
    #[serde(default)]
    #[schemars(schema_with = "crate::schema::secret_refs")]
    pub headers: BTreeMap<String, SecretRef>,
    /// Text included in the payload.
    #[serde(default)]
    pub message: Option<String>,
    /// A failed notification fails the run (default false).
    #[serde(default)]
    pub fail_run: bool,
}

/// The notify kind.
pub struct Notify;

impl StepKind for Notify {
    fn name(&self) -> &'static str {
        "notify"
    }
    fn summary(&self) -> &'static str {
        "POSTs a JSON summary of the run to a webhook"
    }
    fn schema(&self) -> &'static str {
        include_str!("../schemas/notify.schema.json")
    }
    fn generated_schema(&self) -> Option<Value> {
        Some(crate::schema::of::<NotifyConfig>())
    }
    fn role(&self) -> Role {
        Role::Observe
    }
    fn tolerates_failure(&self, with: &Value) -> bool {
        !with.get("fail-run").and_then(Value::as_bool).unwrap_or(false)
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["status"]
    }
    fn build(&self, with: &Value, cx: &BuildContext) -> Result<Arc<dyn Step>, BuildError> {
        // One TLS provider for the process (ring; never aws-lc).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config: NotifyConfig = serde_json::from_value(with.clone())?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| BuildError::Unavailable(format!("cannot build the HTTP client: {e}")))?;
        Ok(Arc::new(NotifyStep {
            webhook: with.get("webhook").cloned().unwrap_or(Value::Null),
            headers: with
                .get("headers")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            message: config.message,
            base: cx.spec_dir.clone(),
            cluster: crate::cluster::Cluster::of(cx).ok(),
            run_id: cx.run_id.clone(),
            client,
        }))
    }
    fn check(&self, with: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let Some(c) = config::<NotifyConfig>(with, &mut out) else {
            return out;
        };
        c.webhook.check("/webhook", &mut out);
        for (name, r) in &c.headers {
            let mut p = String::from("/headers");
            rollwright_engine::yaml::push_pointer_segment(&mut p, name);
            r.check(&p, &mut out);
        }
        out
    }
}

struct NotifyStep {
    webhook: Value,
    headers: Map<String, Value>,
    message: Option<String>,
    base: PathBuf,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    run_id: String,
    client: reqwest::Client,
}

impl Step for NotifyStep {
    fn run<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Progress, StepError>> {
        Box::pin(async move {
            // Resolved at the moment of use, registered for redaction.
            let url =
                crate::cluster::resolve_secret(self.cluster.as_deref(), &self.webhook, &self.base).await?;
            let payload = json!({
                "run": self.run_id,
                "step": cx.step_id,
                "message": self.message,
                "outcome": cx.outputs.read().ok().and_then(|o| o.get("run").cloned()),
            });
            let mut req = self.client.post(url.expose()).json(&payload);
            for (name, r) in &self.headers {
                let v = crate::cluster::resolve_secret(self.cluster.as_deref(), r, &self.base).await?;
                req = req.header(name.as_str(), v.expose());
            }
            let resp = req.send().await.map_err(|e| {
                // The URL is the secret of a webhook: never in a message,
                // whatever form the client put it in (and scrubbed anyway).
                StepError::transient(secrets::scrub(&format!(
                    "webhook not reached: {}",
                    e.without_url()
                )))
            })?;
            let status = resp.status();
            if status.is_success() {
                let mut outputs = Map::new();
                outputs.insert("status".into(), Value::from(status.as_u16()));
                return Ok(Progress::Done { outputs });
            }
            let msg = format!("webhook answered {status}");
            Err(if status.is_server_error() || status.as_u16() == 429 {
                StepError::transient(msg)
            } else {
                StepError::failed(msg)
            })
        })
    }
}
