//! get, list, create, replace, patch and delete, with API-server metadata.

use super::*;

impl State {
    pub(super) fn namespace_exists(store: &Store, ns: &str) -> bool {
        store
            .objects
            .contains_key(&(String::new(), "namespaces".into(), String::new(), ns.to_owned()))
    }

    pub(super) fn get(&self, t: &Target, name: &str) -> Response {
        let Ok(store) = self.store.lock() else {
            return store_unavailable();
        };
        match store.objects.get(&key(t.kind, t.namespace.as_deref(), name)) {
            Some(o) => reply(StatusCode::OK, o.clone()),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(t.kind)),
            ),
        }
    }

    /// The objects a list of `t` returns (its kind, its namespace or all,
    /// the query's label selector).
    pub(super) fn matching(store: &Store, t: &Target, query: &ApiQuery) -> Vec<Value> {
        let selector = query.label_selector.as_deref().unwrap_or_default();
        store
            .objects
            .iter()
            .filter(|((g, p, ns, _), _)| {
                *g == t.kind.group && *p == t.kind.plural && t.namespace.as_deref().is_none_or(|n| n == ns)
            })
            .map(|(_, o)| o)
            .filter(|o| selected(o, selector))
            .cloned()
            .collect()
    }

    /// The object `t` names, or the response saying why there is none.
    pub(super) fn current(&self, t: &Target) -> Result<(String, Value), Box<Response>> {
        let Some(name) = t.name.clone() else {
            return Err(Box::new(name_required()));
        };
        let Ok(store) = self.store.lock() else {
            return Err(Box::new(store_unavailable()));
        };
        match store.objects.get(&key(t.kind, t.namespace.as_deref(), &name)) {
            Some(o) => Ok((name, o.clone())),
            None => Err(Box::new(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(t.kind)),
            ))),
        }
    }

    pub(super) fn list(&self, t: &Target, query: &ApiQuery) -> Response {
        let Ok(store) = self.store.lock() else {
            return store_unavailable();
        };
        let items = Self::matching(&store, t, query);
        reply(
            StatusCode::OK,
            json!({"kind": format!("{}List", t.kind.kind), "apiVersion": kinds::api_version(t.kind), "metadata": {"resourceVersion": store.revision.to_string()}, "items": items}),
        )
    }

    pub(super) fn create(&self, kind: &'static Kind, namespace: Option<&str>, mut obj: Value) -> Response {
        let Ok(mut store) = self.store.lock() else {
            return store_unavailable();
        };
        let Some(name) = obj["metadata"]["name"].as_str().map(str::to_owned) else {
            return invalid(
                kind,
                "",
                "metadata.name",
                "FieldValueRequired",
                "Required value: name is required",
            );
        };
        if !valid_name(&name) {
            return invalid(
                kind,
                &name,
                "metadata.name",
                "FieldValueInvalid",
                &format!(
                    "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            );
        }
        if let Some(r) = invalid_spec(kind, &name, &obj) {
            return r;
        }
        if let (Some(url_ns), Some(body_ns)) = (namespace, obj["metadata"]["namespace"].as_str())
            && kind.namespaced
            && url_ns != body_ns
        {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request"
                    .into(),
            );
        }
        let ns = if kind.namespaced {
            Some(
                namespace
                    .or(obj["metadata"]["namespace"].as_str())
                    .unwrap_or("default")
                    .to_owned(),
            )
        } else {
            None
        };
        if let Some(ns) = &ns
            && !Self::namespace_exists(&store, ns)
        {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("namespaces \"{ns}\" not found"),
            );
        }
        let k = key(kind, ns.as_deref(), &name);
        if store.objects.contains_key(&k) {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", kind.plural),
            );
        }
        obj["apiVersion"] = Value::from(kinds::api_version(kind));
        obj["kind"] = Value::from(kind.kind);
        let rv = store.next_revision();
        let uid = store.next_uid();
        let meta = obj["metadata"]
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut meta: Map<String, Value> = meta;
        if let Some(ns) = &ns {
            meta.insert("namespace".into(), Value::from(ns.clone()));
        }
        meta.insert("uid".into(), Value::from(uid));
        meta.insert("resourceVersion".into(), Value::from(rv));
        meta.insert("generation".into(), Value::from(1));
        meta.insert("creationTimestamp".into(), Value::from(now()));
        obj["metadata"] = Value::Object(meta);
        if kind.kind == "Namespace" {
            obj["status"] = json!({"phase": "Active"});
        }
        store.objects.insert(k.clone(), obj.clone());
        let change = store.record("ADDED", k, obj.clone());
        let _ = self.changes.send(change);
        drop(store);
        if kind.kind == "CustomResourceDefinition" {
            self.register_crd(&obj);
        }
        // Every namespace gets its `default` ServiceAccount, as the
        // controller-manager's ServiceAccount controller makes it (pods
        // without a ServiceAccount of their own run as it).
        if kind.kind == "Namespace"
            && let Some(sa) = kinds::find("", "v1", "serviceaccounts")
        {
            let _ = self.create(sa, Some(&name), json!({"metadata": {"name": "default"}}));
        }
        reply(StatusCode::CREATED, obj)
    }

    pub(super) fn store_update(&self, t: &Target, mut obj: Value, check_rv: bool) -> Response {
        let Some(name) = t.name.clone() else {
            return name_required();
        };
        if !t.status
            && let Some(r) = invalid_spec(t.kind, &name, &obj)
        {
            return r;
        }
        let Ok(mut store) = self.store.lock() else {
            return store_unavailable();
        };
        let k = key(t.kind, t.namespace.as_deref(), &name);
        let Some(old) = store.objects.get(&k).cloned() else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(t.kind)),
            );
        };
        let old_rv = old["metadata"]["resourceVersion"].clone();
        if check_rv
            && obj["metadata"]["resourceVersion"]
                .as_str()
                .is_some_and(|rv| Some(rv) != old_rv.as_str())
        {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    t.kind.plural
                ),
            );
        }
        // The status subresource changes only `status`; the main resource
        // never changes `status`, as on a real API server.
        if t.status {
            let status = obj.get("status").cloned();
            obj = old.clone();
            match status {
                Some(s) => obj["status"] = s,
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        } else if let Some(m) = obj.as_object_mut() {
            match old.get("status") {
                Some(s) => {
                    m.insert("status".into(), s.clone());
                }
                None => {
                    m.remove("status");
                }
            }
        }
        let generation = old["metadata"]["generation"].as_u64().unwrap_or(1);
        let bumped = if obj.get("spec") != old.get("spec") {
            generation + 1
        } else {
            generation
        };
        obj["apiVersion"] = Value::from(kinds::api_version(t.kind));
        obj["kind"] = Value::from(t.kind.kind);
        let rv = store.next_revision();
        for f in ["uid", "creationTimestamp", "namespace", "name"] {
            obj["metadata"][f] = old["metadata"][f].clone();
        }
        obj["metadata"]["resourceVersion"] = Value::from(rv);
        obj["metadata"]["generation"] = Value::from(bumped);
        store.objects.insert(k.clone(), obj.clone());
        let change = store.record("MODIFIED", k, obj.clone());
        let _ = self.changes.send(change);
        drop(store);
        if t.kind.kind == "CustomResourceDefinition" {
            self.register_crd(&obj);
        }
        reply(StatusCode::OK, obj)
    }

    pub(super) fn replace(&self, t: &Target, obj: Value) -> Response {
        self.store_update(t, obj, true)
    }

    pub(super) fn patch(&self, t: &Target, apply: impl FnOnce(&mut Value) -> Result<(), String>) -> Response {
        let mut obj = match self.current(t) {
            Ok((_, o)) => o,
            Err(r) => return *r,
        };
        if let Err(e) = apply(&mut obj) {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("the patch cannot be applied: {e}"),
            );
        }
        self.store_update(t, obj, false)
    }

    pub(super) fn delete(&self, t: &Target) -> Response {
        let Some(name) = &t.name else {
            return name_required();
        };
        let Ok(mut store) = self.store.lock() else {
            return store_unavailable();
        };
        let k = key(t.kind, t.namespace.as_deref(), name);
        match store.objects.remove(&k) {
            Some(mut o) => {
                if t.kind.kind == "Namespace" {
                    store.objects.retain(|(_, _, ns, _), _| ns != name);
                }
                o["metadata"]["resourceVersion"] = Value::from(store.next_revision());
                let change = store.record("DELETED", k, o.clone());
                let _ = self.changes.send(change);
                reply(StatusCode::OK, o)
            }
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(t.kind)),
            ),
        }
    }
}

/// What kube-apiserver's validation refuses in a spec, for the kinds where
/// the embedded cluster has been caught accepting it.
fn invalid_spec(kind: &Kind, name: &str, obj: &Value) -> Option<Response> {
    if kind.kind == "Service" {
        let spec = &obj["spec"];
        let headless = spec["clusterIP"] == "None";
        let external = spec["type"] == "ExternalName";
        let no_ports = spec["ports"].as_array().is_none_or(Vec::is_empty);
        if no_ports && !headless && !external {
            return Some(invalid(
                kind,
                name,
                "spec.ports",
                "FieldValueRequired",
                "Required value",
            ));
        }
    }
    // A container without an image (a SeldonDeployment's graph node names
    // its server by `implementation`, not by image: its controller fills it in).
    let pod_spec = match kind.kind {
        "Pod" => Some(&obj["spec"]),
        "Deployment" | "ReplicaSet" => Some(&obj["spec"]["template"]["spec"]),
        _ => None,
    };
    if let Some(spec) = pod_spec {
        let field = if kind.kind == "Pod" {
            "spec"
        } else {
            "spec.template.spec"
        };
        for (i, c) in spec["containers"].as_array().into_iter().flatten().enumerate() {
            if c["image"].as_str().is_none_or(str::is_empty) {
                return Some(invalid(
                    kind,
                    name,
                    &format!("{field}.containers[{i}].image"),
                    "FieldValueRequired",
                    "Required value",
                ));
            }
        }
    }
    None
}
