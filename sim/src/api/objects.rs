//! The object API the sim's own controllers use (in-process, no HTTP).

use super::*;

impl State {
    /// Every object of a resource (controllers read through this).
    pub fn snapshot(&self, group: &str, plural: &str) -> Vec<Value> {
        self.store
            .lock()
            .map(|s| {
                s.objects
                    .iter()
                    .filter(|((g, p, _, _), _)| g == group && p == plural)
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn target(
        &self,
        group: &str,
        plural: &str,
        ns: &str,
        name: &str,
        status: bool,
    ) -> Option<Target> {
        let kind = self
            .kinds()
            .into_iter()
            .find(|k| k.group == group && k.plural == plural)?;
        Some(Target {
            kind,
            namespace: kind.namespaced.then(|| ns.to_owned()),
            name: Some(name.to_owned()),
            status,
            scale: false,
        })
    }

    /// Creates the object, or updates it when its spec or labels differ (controllers).
    pub fn ensure(&self, group: &str, plural: &str, ns: &str, name: &str, obj: Value) {
        let Some(t) = self.target(group, plural, ns, name, false) else {
            return;
        };
        let current = self
            .store
            .lock()
            .ok()
            .and_then(|s| s.objects.get(&key(t.kind, t.namespace.as_deref(), name)).cloned());
        match current {
            None => {
                let _ = self.create(t.kind, t.namespace.as_deref(), obj);
            }
            Some(cur)
                if cur.get("spec") != obj.get("spec")
                    || cur["metadata"]["labels"] != obj["metadata"]["labels"] =>
            {
                let mut next = cur.clone();
                next["spec"] = obj["spec"].clone();
                next["metadata"]["labels"] = obj["metadata"]["labels"].clone();
                let _ = self.store_update(&t, next, false);
            }
            Some(_) => {}
        }
    }

    pub(super) fn kind_by(&self, api_version: &str, kind: &str) -> Option<&'static Kind> {
        self.kinds()
            .into_iter()
            .find(|k| kinds::api_version(k) == api_version && k.kind == kind)
    }

    /// An object by apiVersion, kind, namespace and name (controllers).
    pub fn get_object(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let k = self.kind_by(api_version, kind)?;
        let store = self.store.lock().ok()?;
        store
            .objects
            .get(&key(k, k.namespaced.then_some(ns), name))
            .cloned()
    }

    /// Writes an object's status (controllers).
    pub fn set_status(&self, group: &str, plural: &str, ns: &str, name: &str, status: Value) {
        let Some(t) = self.target(group, plural, ns, name, true) else {
            return;
        };
        let _ = self.store_update(&t, json!({"status": status}), false);
    }

    /// Deletes an object (controllers).
    pub fn remove(&self, group: &str, plural: &str, ns: &str, name: &str) {
        if let Some(t) = self.target(group, plural, ns, name, false) {
            let _ = self.delete(&t);
        }
    }
}
