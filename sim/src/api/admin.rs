//! `/sim/faults` and `/sim/scenario`: what a test or a user changes while the sim runs.

use super::*;

impl State {
    /// `GET /sim/faults` lists the pod faults; `PUT /sim/faults` replaces
    /// them with a JSON list (the admin endpoint, same token).
    pub(super) fn admin_faults(&self, method: &Method, body: &[u8]) -> Response {
        let Ok(mut faults) = self.faults.lock() else {
            return store_unavailable();
        };
        if *method == Method::PUT {
            match serde_json::from_slice::<Vec<crate::faults::PodFault>>(body) {
                Ok(list) => faults.clone_from(&list),
                Err(e) => {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        format!("expected a list of pod faults: {e}"),
                    );
                }
            }
        }
        reply(StatusCode::OK, serde_json::to_value(&*faults).unwrap_or_default())
    }

    /// `GET /sim/scenario` shows the scenario in force; `PUT` (YAML or
    /// JSON) replaces its live parts: models, pods, api and traffic.
    /// time-scale, startup, seed and objects are fixed at start.
    pub(super) fn admin_scenario(&self, method: &Method, body: &[u8]) -> Response {
        if *method == Method::PUT {
            let text = String::from_utf8_lossy(body);
            let next = match Scenario::from_yaml(&text, "PUT /sim/scenario") {
                Ok(s) => s,
                Err(e) => return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string()),
            };
            self.set_live(&next);
        }
        let Ok(mut sc) = self.scenario.lock() else {
            return store_unavailable();
        };
        sc.pods = self.faults.lock().map(|f| f.clone()).unwrap_or_default();
        sc.api = self.api_faults.lock().map(|f| f.clone()).unwrap_or_default();
        let (models, rate) = self.models.behaviour();
        sc.models = models;
        sc.traffic.rate = rate;
        reply(StatusCode::OK, serde_json::to_value(&*sc).unwrap_or_default())
    }

    /// Replaces the parts of the scenario that can change while running.
    pub fn set_live(&self, next: &Scenario) {
        self.set_faults(next.pods.clone());
        if let Ok(mut a) = self.api_faults.lock() {
            a.clone_from(&next.api);
        }
        self.models.set_behaviour(next.models.clone(), next.traffic.rate);
    }

    /// Replaces the pod faults.
    pub fn set_faults(&self, faults: Vec<crate::faults::PodFault>) {
        if let Ok(mut f) = self.faults.lock() {
            *f = faults;
        }
    }
}
