//! The node agent: what a kubelet reports of the pods scheduled to a node.
//! A pod becomes Running and Ready after the startup delay (scaled by the
//! time scale), unless a pod fault says otherwise: it crash-loops
//! (restartCount grows, waiting in CrashLoopBackOff), never becomes Ready,
//! or starts slowly. It writes pod status through the API only, so it
//! plays the kubelet on the embedded API server and, beside kwok's node
//! heartbeat, on kube-apiserver.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::cluster::Cluster;
use crate::faults::Behaviour;

/// When the agent first saw each pod (by uid): its start.
#[derive(Default)]
pub(crate) struct Kubelet {
    seen: HashMap<String, Instant>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Kubelet {
    /// One pass over every scheduled pod: the status changes it wants,
    /// `(namespace, name, status)`, not yet written (see [`Kubelet::write`]).
    pub fn plan(&mut self, cluster: &Cluster) -> Vec<(String, String, Value)> {
        let pods = cluster.snapshot("", "pods");
        let now = Instant::now();
        let mut alive = std::collections::HashSet::new();
        let mut changes = Vec::new();
        for pod in &pods {
            let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
            if pod["metadata"]["deletionTimestamp"].is_string() || !pod["spec"]["nodeName"].is_string() {
                continue;
            }
            let started = *self.seen.entry(uid.clone()).or_insert(now);
            alive.insert(uid);
            let status = desired(cluster, pod, now.duration_since(started));
            if summary(&pod["status"]) != summary(&status) {
                let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
                let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                changes.push((ns.to_owned(), name.to_owned(), status));
            }
        }
        self.seen.retain(|uid, _| alive.contains(uid));
        changes
    }

    /// Writes the planned statuses.
    pub fn write(cluster: &Cluster, changes: Vec<(String, String, Value)>) {
        for (ns, name, status) in changes {
            cluster.set_status("", "pods", &ns, &name, status);
        }
    }
}

/// The status the pod should report after running `elapsed`.
fn desired(cluster: &Cluster, pod: &Value, elapsed: Duration) -> Value {
    let fault = cluster.pod_fault(pod).map(|f| f.behaviour);
    let delay = match &fault {
        Some(Behaviour::SlowStart { seconds }) => {
            cluster.live.scale.to_real(Duration::from_secs_f64(*seconds))
        }
        _ => cluster.live.startup,
    };
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let old = &pod["status"];
    let ready = match fault {
        Some(Behaviour::CrashLoop | Behaviour::NeverReady) => false,
        _ => elapsed >= delay,
    };
    let containers: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default();
            let mut s = json!({"name": name, "image": c["image"], "imageID": "", "ready": ready, "started": ready, "restartCount": 0});
            match fault {
                Some(Behaviour::CrashLoop) => {
                    // A restart a second, waiting in CrashLoopBackOff in between.
                    s["restartCount"] = Value::from(elapsed.as_secs());
                    s["started"] = Value::Bool(false);
                    s["state"] = json!({"waiting": {"reason": "CrashLoopBackOff",
                        "message": format!("back-off restarting failed container {name} in pod {pod_name}")}});
                    s["lastState"] = json!({"terminated": {"exitCode": 1, "reason": "Error"}});
                }
                _ => {
                    // Keep the first start time: status changes only when something does.
                    let since = old["containerStatuses"]
                        .as_array()
                        .and_then(|cs| cs.iter().find(|o| o["name"] == name))
                        .and_then(|o| o["state"]["running"]["startedAt"].as_str())
                        .map_or_else(now_rfc3339, str::to_owned);
                    s["started"] = Value::Bool(true);
                    s["state"] = json!({"running": {"startedAt": since}});
                }
            }
            s
        })
        .collect();
    let mut status = if old.is_object() { old.clone() } else { json!({}) };
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let condition = |kind: &str, ok: bool| {
        super::serving::condition(
            old,
            kind,
            ok,
            "ContainersNotReady",
            &format!("containers with unready status: [{}]", names.join(" ")),
        )
    };
    let mut conditions: Vec<Value> = old["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            !matches!(
                c["type"].as_str(),
                Some("Ready" | "ContainersReady" | "Initialized")
            )
        })
        .cloned()
        .collect();
    conditions.push(condition("Initialized", true));
    conditions.push(condition("Ready", ready));
    conditions.push(condition("ContainersReady", ready));
    status["phase"] = Value::from("Running");
    status["conditions"] = Value::Array(conditions);
    status["containerStatuses"] = Value::Array(containers);
    if !status["startTime"].is_string() {
        status["startTime"] = Value::from(now_rfc3339());
    }
    if !status["podIP"].is_string() {
        let ip = pod_ip(pod);
        status["podIP"] = Value::from(ip.clone());
        status["podIPs"] = json!([{"ip": ip}]);
        status["hostIP"] = Value::from("127.0.0.1");
        status["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
    }
    status
}

/// What a status says, without what an API server adds or drops (empty
/// fields, defaults): compared to decide whether to write.
fn summary(status: &Value) -> Value {
    let conditions: std::collections::BTreeMap<&str, &str> = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["type"].as_str()?, c["status"].as_str()?)))
        .collect();
    let containers: Vec<Value> = status["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let state: Vec<&String> = c["state"]
                .as_object()
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            json!([c["name"], c["ready"], c["restartCount"], state])
        })
        .collect();
    json!([status["phase"], conditions, containers, status["podIP"]])
}

/// A stable address in 10.244.0.0/16 for a pod (from its uid).
fn pod_ip(pod: &Value) -> String {
    let h = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .bytes()
        .fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
    format!("10.244.{}.{}", (h >> 8) & 0xff, (h & 0xff).clamp(2, 254))
}
