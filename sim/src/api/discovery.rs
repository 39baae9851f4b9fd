//! Discovery: the API groups and the resources of a group version.

use super::*;

pub(super) fn groups(all: &[&'static Kind]) -> Value {
    let mut names: Vec<&str> = all.iter().map(|k| k.group).filter(|g| !g.is_empty()).collect();
    let mut seen = std::collections::HashSet::new();
    names.retain(|g| seen.insert(*g));
    let groups: Vec<Value> = names
        .iter()
        .map(|g| {
            let v = all.iter().find(|k| k.group == *g).map_or("v1", |k| k.version);
            json!({"name": g, "versions": [{"groupVersion": format!("{g}/{v}"), "version": v}], "preferredVersion": {"groupVersion": format!("{g}/{v}"), "version": v}})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub(super) fn resources(all: &[&'static Kind], group: &str, version: &str) -> Value {
    let list: Vec<Value> = all
        .iter()
        .filter(|k| k.group == group && k.version == version)
        .map(|k| {
            json!({"name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": k.namespaced, "kind": k.kind,
                   "verbs": ["create", "delete", "get", "list", "patch", "update"], "shortNames": k.short})
        })
        .chain(
            all.iter()
                .filter(|k| k.group == group && k.version == version && matches!(k.kind, "Deployment" | "ReplicaSet"))
                .map(|k| {
                    json!({"name": format!("{}/scale", k.plural), "singularName": "", "namespaced": true,
                           "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]})
                }),
        )
        .collect();
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
}
