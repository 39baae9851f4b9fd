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
    /// Server-side apply: the leaf fields each manager owns, per object.
    pub owners: BTreeMap<Key, BTreeMap<String, std::collections::BTreeSet<String>>>,
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

    /// Every object of one resource, in key order.
    pub fn of_kind<'a>(&'a self, group: &str, plural: &str) -> impl Iterator<Item = &'a Value> + 'a {
        let (g, p) = (group.to_owned(), plural.to_owned());
        self.objects
            .range((g.clone(), p.clone(), String::new(), String::new())..)
            .take_while(move |((kg, kp, _, _), _)| *kg == g && *kp == p)
            .map(|(_, v)| v)
    }

    /// A new uid.
    pub fn next_uid(&mut self) -> String {
        self.uids += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uids)
    }
}

/// One JSON pointer segment, escaped (`~` → `~0`, `/` → `~1`).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// One JSON pointer segment as written, unescaped.
fn unescape(raw: &str) -> String {
    raw.replace("~1", "/").replace("~0", "~")
}

/// RFC 7396 JSON merge patch (the `json-patch` crate's).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// The leaf fields an applied object sets, as JSON pointers. Lists are
/// atomic (one leaf); `metadata` contributes labels and annotations only.
#[must_use]
pub fn leaves(obj: &Value) -> std::collections::BTreeSet<String> {
    fn walk(v: &Value, at: &mut String, out: &mut std::collections::BTreeSet<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    let len = at.len();
                    at.push('/');
                    at.push_str(&escape(k));
                    walk(child, at, out);
                    at.truncate(len);
                }
            }
            _ => {
                out.insert(at.clone());
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    if let Value::Object(m) = obj {
        for (k, v) in m {
            match k.as_str() {
                "apiVersion" | "kind" | "status" => {}
                "metadata" => {
                    for sub in ["labels", "annotations"] {
                        if let Some(x) = v.get(sub) {
                            let mut at = format!("/metadata/{sub}");
                            walk(x, &mut at, &mut out);
                        }
                    }
                }
                _ => {
                    let mut at = format!("/{}", escape(k));
                    walk(v, &mut at, &mut out);
                }
            }
        }
    }
    out
}

/// Sets the value at a JSON pointer, creating objects on the way.
pub fn set_at(target: &mut Value, pointer: &str, value: Value) {
    let mut cur = target;
    let segs: Vec<String> = pointer.split('/').skip(1).map(unescape).collect();
    for (i, seg) in segs.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(serde_json::Map::new());
        }
        let Value::Object(m) = cur else { return };
        if i + 1 == segs.len() {
            m.insert(seg.clone(), value);
            return;
        }
        cur = m
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
}

/// Removes the value at a JSON pointer (and objects it leaves empty).
pub fn remove_at(target: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = unescape(last);
    if let Some(Value::Object(m)) = target.pointer_mut(parent) {
        m.remove(&last);
        if m.is_empty() && !parent.is_empty() && parent.matches('/').count() > 1 {
            remove_at(target, parent);
        }
    }
}

/// `managedFields` `fieldsV1` for a set of leaves (`{"f:spec": {"f:replicas": {}}}`).
#[must_use]
pub fn fields_v1(leaves: &std::collections::BTreeSet<String>) -> Value {
    let mut root = Value::Object(serde_json::Map::new());
    for l in leaves {
        let mut cur = &mut root;
        for seg in l.split('/').skip(1) {
            let key = format!("f:{}", unescape(seg));
            if let Value::Object(m) = cur {
                cur = m
                    .entry(key)
                    .or_insert_with(|| Value::Object(serde_json::Map::new()));
            }
        }
    }
    root
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
