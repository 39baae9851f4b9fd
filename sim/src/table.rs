//! Server-side printing: what `kubectl get` shows. kubectl asks for
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`; kube-apiserver
//! answers with a `Table` whose columns are the kind's printer columns (for a
//! custom resource, the CRD's `additionalPrinterColumns`, else Name and
//! Age). The columns here are kube-apiserver's own for the kinds the sim
//! serves, so `kubectl get` prints the same on both.

use serde_json::{Value, json};

use crate::kinds::Kind;

/// Whether the request asks for a Table.
#[must_use]
pub fn wanted(accept: &str) -> bool {
    accept.contains("as=Table")
}

/// How a column's cell is computed from the object.
type Cell = Box<dyn Fn(&Value) -> Value>;

fn column(name: &str, kind: &str, format: &str) -> Value {
    json!({"name": name, "type": kind, "format": format, "description": "", "priority": 0})
}

/// `objects` of `kind` as a Table. `printer_columns`: a CRD's
/// `additionalPrinterColumns`. `full`: rows carry the whole object
/// (`includeObject=Object`), else its metadata.
#[must_use]
pub fn of(
    kind: &Kind,
    objects: &[Value],
    resource_version: &str,
    printer_columns: Option<&[Value]>,
    full: bool,
    now: std::time::SystemTime,
) -> Value {
    let mut columns = vec![column("Name", "string", "name")];
    let extra: Vec<(Value, Cell)> = match (kind.group, kind.kind) {
        ("apps", "Deployment") => vec![
            (
                column("Ready", "string", ""),
                Box::new(|o: &Value| {
                    json!(format!(
                        "{}/{}",
                        n(&o["status"]["readyReplicas"]),
                        n(&o["spec"]["replicas"])
                    ))
                }),
            ),
            (
                column("Up-to-date", "string", ""),
                Box::new(|o: &Value| json!(n(&o["status"]["updatedReplicas"]))),
            ),
            (
                column("Available", "string", ""),
                Box::new(|o: &Value| json!(n(&o["status"]["availableReplicas"]))),
            ),
        ],
        ("apps", "ReplicaSet") => vec![
            (
                column("Desired", "integer", ""),
                Box::new(|o: &Value| json!(n(&o["spec"]["replicas"]))),
            ),
            (
                column("Current", "integer", ""),
                Box::new(|o: &Value| json!(n(&o["status"]["replicas"]))),
            ),
            (
                column("Ready", "integer", ""),
                Box::new(|o: &Value| json!(n(&o["status"]["readyReplicas"]))),
            ),
        ],
        ("", "Pod") => vec![
            (
                column("Ready", "string", ""),
                Box::new(|o: &Value| {
                    let containers = o["spec"]["containers"].as_array().map_or(0, Vec::len);
                    let ready = o["status"]["containerStatuses"]
                        .as_array()
                        .map_or(0, |cs| cs.iter().filter(|c| c["ready"] == true).count());
                    json!(format!("{ready}/{containers}"))
                }),
            ),
            (
                column("Status", "string", ""),
                Box::new(|o: &Value| json!(o["status"]["phase"].as_str().unwrap_or("Pending"))),
            ),
            (
                column("Restarts", "string", ""),
                Box::new(|o: &Value| {
                    let restarts: u64 = o["status"]["containerStatuses"]
                        .as_array()
                        .map_or(0, |cs| cs.iter().filter_map(|c| c["restartCount"].as_u64()).sum());
                    json!(restarts.to_string())
                }),
            ),
        ],
        ("", "Namespace") => vec![(
            column("Status", "string", ""),
            Box::new(|o: &Value| json!(o["status"]["phase"].as_str().unwrap_or("Active"))),
        )],
        ("", "ConfigMap") => vec![(
            column("Data", "string", ""),
            Box::new(|o: &Value| {
                json!(
                    o["data"].as_object().map_or(0, serde_json::Map::len)
                        + o["binaryData"].as_object().map_or(0, serde_json::Map::len)
                )
            }),
        )],
        ("", "Secret") => vec![
            (
                column("Type", "string", ""),
                Box::new(|o: &Value| json!(o["type"].as_str().unwrap_or("Opaque"))),
            ),
            (
                column("Data", "string", ""),
                Box::new(|o: &Value| json!(o["data"].as_object().map_or(0, serde_json::Map::len))),
            ),
        ],
        _ => printer_columns
            .unwrap_or_default()
            .iter()
            .filter(|c| c["name"].as_str().is_some_and(|n| !n.eq_ignore_ascii_case("age")))
            .map(|c| {
                let path = c["jsonPath"].as_str().unwrap_or_default().to_owned();
                let def = column(
                    c["name"].as_str().unwrap_or_default(),
                    c["type"].as_str().unwrap_or("string"),
                    c["format"].as_str().unwrap_or(""),
                );
                (
                    def,
                    Box::new(move |o: &Value| json_path(o, &path)) as Box<dyn Fn(&Value) -> Value>,
                )
            })
            .collect(),
    };
    columns.extend(extra.iter().map(|(c, _)| c.clone()));
    columns.push(column("Age", "string", ""));
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            cells.extend(extra.iter().map(|(_, f)| f(o)));
            cells.push(json!(age(o["metadata"]["creationTimestamp"].as_str(), now)));
            let object = if full {
                o.clone()
            } else {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]})
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A printer column's `jsonPath` (`.status.phase`): dotted fields only.
fn json_path(o: &Value, path: &str) -> Value {
    let mut cur = o;
    for seg in path.trim_start_matches('.').split('.').filter(|s| !s.is_empty()) {
        cur = &cur[seg];
    }
    cur.clone()
}

/// kube-apiserver's age: `45s`, `5m3s`, `12m`, `3h15m`, `5d`.
fn age(created: Option<&str>, now: std::time::SystemTime) -> String {
    let Some(t) = created.and_then(|c| humantime::parse_rfc3339_weak(c).ok()) else {
        return "<unknown>".into();
    };
    let s = now.duration_since(t).map_or(0, |d| d.as_secs());
    match s {
        0..120 => format!("{s}s"),
        120..600 if !s.is_multiple_of(60) => format!("{}m{}s", s / 60, s % 60),
        120..10800 => format!("{}m", s / 60),
        10800..28800 if !(s / 60).is_multiple_of(60) => format!("{}h{}m", s / 3600, (s / 60) % 60),
        10800..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
