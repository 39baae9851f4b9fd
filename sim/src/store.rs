//! The object store: one map, one resourceVersion counter.

use std::collections::BTreeMap;

use serde_json::Value;

/// `(group, plural, namespace, name)`.
pub type Key = (String, String, String, String);

/// A change, as watchers see it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the change produced.
    pub revision: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// Where.
    pub key: Key,
    /// The object (as it was last, for `DELETED`).
    pub object: Value,
}

/// How many past changes a watch may resume from; older is `410 Gone`.
pub const HISTORY: usize = 4096;

/// All objects.
#[derive(Default)]
pub struct Store {
    pub objects: BTreeMap<Key, Value>,
    pub revision: u64,
    pub uids: u64,
    /// Recent changes, oldest first.
    pub history: std::collections::VecDeque<Change>,
}

impl Store {
    /// The next resourceVersion.
    pub fn next_revision(&mut self) -> String {
        self.revision += 1;
        self.revision.to_string()
    }

    /// Records a change for watchers.
    pub fn record(&mut self, kind: &'static str, key: Key, object: Value) -> Change {
        let revision = object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(self.revision);
        let change = Change {
            revision,
            kind,
            key,
            object,
        };
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(change.clone());
        change
    }

    /// A new uid.
    pub fn next_uid(&mut self) -> String {
        self.uids += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uids)
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }
}
