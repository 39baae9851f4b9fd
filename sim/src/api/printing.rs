//! `kubectl get`: the objects as a Table of printer columns (see `crate::table`).

use super::*;

impl State {
    /// `kubectl get`: the objects as a Table of the kind's printer columns.
    pub(super) fn table(&self, t: &Target, query: &ApiQuery) -> Response {
        let Ok(store) = self.store.lock() else {
            return store_unavailable();
        };
        let objects: Vec<Value> = match &t.name {
            Some(name) => match store.objects.get(&key(t.kind, t.namespace.as_deref(), name)) {
                Some(o) => vec![o.clone()],
                None => {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{} \"{name}\" not found", qualified(t.kind)),
                    );
                }
            },
            None => Self::matching(&store, t, query),
        };
        // A custom resource prints its CRD's columns.
        let crd = store.objects.get(&(
            "apiextensions.k8s.io".to_owned(),
            "customresourcedefinitions".to_owned(),
            String::new(),
            format!("{}.{}", t.kind.plural, t.kind.group),
        ));
        let columns: Option<Vec<Value>> = crd.and_then(|c| {
            c["spec"]["versions"]
                .as_array()?
                .iter()
                .find(|v| v["name"] == t.kind.version)?["additionalPrinterColumns"]
                .as_array()
                .cloned()
        });
        let full = query.include_object.as_deref() == Some("Object");
        reply(
            StatusCode::OK,
            crate::table::of(
                t.kind,
                &objects,
                &store.revision.to_string(),
                columns.as_deref(),
                full,
                std::time::SystemTime::now(),
            ),
        )
    }
}
