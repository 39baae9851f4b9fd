//! Pod faults a scenario (or the admin endpoint) injects.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::scenario::Dur;

/// What a matching pod does.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Restarts forever: restartCount grows, waiting in CrashLoopBackOff.
    CrashLoop,
    /// Runs but never becomes Ready.
    NeverReady,
    /// Becomes Ready after this many seconds (sim time).
    SlowStart {
        /// Startup delay.
        seconds: f64,
    },
}

/// A pod fault: pods whose first container image contains `image`, or
/// whose `version` label is `version`, behave so.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawPodFault", into = "RawPodFault")]
pub struct PodFault {
    /// Substring of the image.
    pub image: Option<String>,
    /// The pods' `version` label.
    pub version: Option<String>,
    /// Behaviour.
    pub behaviour: Behaviour,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPodFault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    crash_loop: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    never_ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slow_start: Option<Dur>,
}

impl TryFrom<RawPodFault> for PodFault {
    type Error = String;
    fn try_from(r: RawPodFault) -> Result<Self, String> {
        if r.image.as_deref().is_none_or(str::is_empty) && r.version.is_none() {
            return Err(
                "a pod fault needs `image` (a substring) or `version` (the pods' version label)".into(),
            );
        }
        let behaviour = match (r.crash_loop, r.never_ready, r.slow_start) {
            (true, false, None) => Behaviour::CrashLoop,
            (false, true, None) => Behaviour::NeverReady,
            (false, false, Some(d)) => Behaviour::SlowStart {
                seconds: d.0.as_secs_f64(),
            },
            _ => {
                return Err(
                    "a pod fault needs exactly one of `crash-loop: true`, `never-ready: true`, `slow-start: DURATION`"
                        .into(),
                );
            }
        };
        Ok(PodFault {
            image: r.image,
            version: r.version,
            behaviour,
        })
    }
}

impl From<PodFault> for RawPodFault {
    fn from(f: PodFault) -> Self {
        RawPodFault {
            image: f.image,
            version: f.version,
            crash_loop: f.behaviour == Behaviour::CrashLoop,
            never_ready: f.behaviour == Behaviour::NeverReady,
            slow_start: match f.behaviour {
                Behaviour::SlowStart { seconds } => Some(Dur(std::time::Duration::from_secs_f64(seconds))),
                _ => None,
            },
        }
    }
}

impl PodFault {
    /// From `{"image": "model:8", "crash-loop": true}`, `{"version": "8", "never-ready": true}`
    /// or `{"image": …, "slow-start": "30s"}`.
    ///
    /// # Errors
    /// What is wrong with the description.
    pub fn from_json(v: &Value) -> Result<PodFault, String> {
        serde_json::from_value(v.clone()).map_err(|e| e.to_string())
    }

    /// Whether the fault applies to a pod.
    #[must_use]
    pub fn matches(&self, pod: &Value) -> bool {
        let image_ok = self.image.as_deref().is_none_or(|i| {
            pod["spec"]["containers"][0]["image"]
                .as_str()
                .is_some_and(|img| img.contains(i))
        });
        let version_ok = self
            .version
            .as_deref()
            .is_none_or(|v| crate::routing::version_label(&pod["metadata"]["labels"]) == Some(v));
        image_ok && version_ok
    }
}
