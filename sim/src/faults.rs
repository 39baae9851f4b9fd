//! Faults a scenario (or the admin endpoint) injects.

use serde_json::Value;

/// What a matching pod does.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Restarts forever: restartCount grows, waiting in CrashLoopBackOff.
    CrashLoop,
    /// Runs but never becomes Ready.
    NeverReady,
    /// Becomes Ready after this many seconds.
    SlowStart {
        /// Startup delay.
        seconds: f64,
    },
}

/// A pod fault: pods whose first container image contains `image` behave so.
#[derive(Debug, Clone, PartialEq)]
pub struct PodFault {
    /// Substring of the image.
    pub image: String,
    /// Behaviour.
    pub behaviour: Behaviour,
}

impl PodFault {
    /// From `{"image": "model:8", "crash-loop": true}`, `{"image": …, "never-ready": true}`
    /// or `{"image": …, "slow-start": 30}` (seconds).
    ///
    /// # Errors
    /// What is wrong with the description.
    pub fn from_json(v: &Value) -> Result<PodFault, String> {
        let image = v
            .get("image")
            .and_then(Value::as_str)
            .ok_or("a pod fault needs `image`")?
            .to_owned();
        let behaviour = if v.get("crash-loop").and_then(Value::as_bool) == Some(true) {
            Behaviour::CrashLoop
        } else if v.get("never-ready").and_then(Value::as_bool) == Some(true) {
            Behaviour::NeverReady
        } else if let Some(s) = v.get("slow-start").and_then(Value::as_f64) {
            Behaviour::SlowStart { seconds: s.max(0.0) }
        } else {
            return Err(
                "a pod fault needs `crash-loop: true`, `never-ready: true` or `slow-start: SECONDS`".into(),
            );
        };
        Ok(PodFault { image, behaviour })
    }
}
