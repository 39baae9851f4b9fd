//! Server-side apply: field ownership per manager, managedFields, conflicts and force.

use super::*;

impl State {
    /// Server-side apply: create or merge the applied fields, tracking which
    /// manager owns which field; a field owned by another manager with a
    /// different value is a conflict (409) unless `force`, which takes it.
    pub(super) fn apply(&self, t: &Target, applied: Value, manager: &str, force: bool) -> Response {
        let Some(name) = t.name.clone() else {
            return name_required();
        };
        let k = key(t.kind, t.namespace.as_deref(), &name);
        let new_leaves = leaves(&applied);
        let (current, owners) = {
            let Ok(store) = self.store.lock() else {
                return store_unavailable();
            };
            (
                store.objects.get(&k).cloned(),
                store.owners.get(&k).cloned().unwrap_or_default(),
            )
        };
        let with_managed = |obj: &mut Value,
                            owners: &std::collections::BTreeMap<
            String,
            std::collections::BTreeSet<String>,
        >| {
            let entries: Vec<Value> = owners
                .iter()
                .filter(|(_, l)| !l.is_empty())
                .map(|(m, l)| json!({"manager": m, "operation": "Apply", "apiVersion": kinds::api_version(t.kind), "fieldsType": "FieldsV1", "fieldsV1": fields_v1(l)}))
                .collect();
            obj["metadata"]["managedFields"] = Value::Array(entries);
        };
        let Some(mut obj) = current else {
            let mut owners = std::collections::BTreeMap::new();
            owners.insert(manager.to_owned(), new_leaves);
            let mut obj = applied;
            obj["metadata"]["name"] = Value::from(name.clone());
            with_managed(&mut obj, &owners);
            let resp = self.create(t.kind, t.namespace.as_deref(), obj);
            if resp.status() == StatusCode::CREATED
                && let Ok(mut store) = self.store.lock()
            {
                store.owners.insert(k, owners);
            }
            return resp;
        };
        let mut conflicts = Vec::new();
        for leaf in &new_leaves {
            for (m, owned) in &owners {
                if m != manager && owned.contains(leaf) && obj.pointer(leaf) != applied.pointer(leaf) {
                    conflicts.push((m.clone(), leaf.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !force {
            let field = |p: &str| p.replace('/', ".");
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": field(p)}))
                .collect();
            let list: Vec<String> = conflicts
                .iter()
                .map(|(m, p)| format!("conflict with \"{m}\": {}", field(p)))
                .collect();
            return reply(
                StatusCode::CONFLICT,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Conflict", "code": 409,
                       "message": format!("Apply failed with {} conflict{}: {}", conflicts.len(), if conflicts.len() == 1 { "" } else { "s" }, list.join("; ")),
                       "details": {"name": name, "kind": t.kind.plural, "causes": causes}}),
            );
        }
        let mut owners = owners;
        // Fields this manager owned and no longer applies are removed, unless someone else owns them.
        let previous = owners.get(manager).cloned().unwrap_or_default();
        for gone in previous.difference(&new_leaves) {
            if !owners.iter().any(|(m, l)| m != manager && l.contains(gone)) {
                remove_at(&mut obj, gone);
            }
        }
        for leaf in &new_leaves {
            if let Some(v) = applied.pointer(leaf) {
                set_at(&mut obj, leaf, v.clone());
            }
            for (m, owned) in owners.iter_mut() {
                if m != manager {
                    owned.remove(leaf);
                }
            }
        }
        owners.insert(manager.to_owned(), new_leaves);
        with_managed(&mut obj, &owners);
        let resp = self.store_update(t, obj, false);
        if resp.status() == StatusCode::OK
            && let Ok(mut store) = self.store.lock()
        {
            store.owners.insert(k, owners);
        }
        resp
    }
}
