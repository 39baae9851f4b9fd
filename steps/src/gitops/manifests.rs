//! Manifests in the repository: an object that already lives in a file
//! under the target's path is changed there (scalar by scalar when only
//! values change, so comments and layout stay), otherwise written to a new
//! file listed in the kustomization.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cluster::ObjRef;

/// Why the repository's manifests cannot be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or directory cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A YAML document that does not parse.
    #[error("{}:{at}: {message}", path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// `line:col` in the file.
        at: String,
        /// What is wrong there.
        message: String,
    },
    /// An object that cannot be written as YAML.
    #[error("{0}")]
    Serialize(String),
    /// An object without apiVersion, kind or name.
    #[error("an object needs apiVersion, kind and metadata.name")]
    Unnamed,
    /// The change a step makes cannot be made to what the repository holds.
    #[error("{0}")]
    Change(String),
}

/// An I/O error on `path`.
fn io(path: &Path) -> impl Fn(std::io::Error) -> ManifestError + '_ {
    move |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One YAML document of a file under the target's path.
#[derive(Debug, Clone)]
pub struct RepoDoc {
    /// The file.
    pub file: PathBuf,
    /// Its lines `[start, end)` (0-based; separators excluded).
    pub lines: (usize, usize),
    /// The document.
    pub value: Value,
}

/// Every object document in the YAML files under `root` (recursively).
///
/// # Errors
/// A file that cannot be read or parsed (located).
pub fn docs_in(root: &Path) -> Result<Vec<RepoDoc>, ManifestError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != ".git") {
                    stack.push(p);
                }
                continue;
            }
            if !p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                continue;
            }
            let text = std::fs::read_to_string(&p).map_err(io(&p))?;
            for (lines, chunk) in chunks(&text) {
                if chunk
                    .lines()
                    .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
                {
                    continue;
                }
                let doc = rollwright_engine::yaml::load_str(&chunk, &rollwright_engine::Limits::default())
                    .map_err(|d| {
                        let d = &d[0];
                        ManifestError::Yaml {
                            path: p.clone(),
                            at: format!("{}:{}", d.span.start.line as usize + lines.0, d.span.start.col),
                            message: d.message.clone(),
                        }
                    })?;
                if doc.value.is_object() {
                    out.push(RepoDoc {
                        file: p.clone(),
                        lines,
                        value: doc.value,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The documents of a file: line ranges and text, split at `---` lines.
fn chunks(text: &str) -> Vec<((usize, usize), String)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chunk = String::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            out.push(((start, i), std::mem::take(&mut chunk)));
            start = i + 1;
        } else {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    out.push(((start, lines.len()), chunk));
    out
}

/// Whether a document is the object `r` names (any version of its group;
/// a document without a namespace is in `namespace`).
fn same_object(doc: &Value, r: &ObjRef, namespace: &str) -> bool {
    let group = |av: &str| av.rsplit_once('/').map_or("", |(g, _)| g).to_owned();
    ObjRef::of(doc, namespace).is_some_and(|d| {
        group(&d.api_version) == group(&r.api_version)
            && d.kind == r.kind
            && d.name == r.name
            && d.namespace == r.namespace
    })
}

/// Finds the document holding the object `r` names.
///
/// # Errors
/// The files cannot be read.
pub fn find_doc(root: &Path, r: &ObjRef, namespace: &str) -> Result<Option<RepoDoc>, ManifestError> {
    Ok(docs_in(root)?
        .into_iter()
        .find(|d| same_object(&d.value, r, namespace)))
}

/// Writes `object` into the repository: in place of the document that holds
/// it, else as a new file. Nothing is written when it is already there.
///
/// # Errors
/// The files cannot be read or written.
pub fn upsert(root: &Path, object: &Value, namespace: &str) -> Result<(), ManifestError> {
    let r = ObjRef::of(object, namespace).ok_or(ManifestError::Unnamed)?;
    match find_doc(root, &r, namespace)? {
        Some(doc) => {
            // Keep the file's own habit about namespaces.
            let mut want = object.clone();
            if doc.value["metadata"]["namespace"].is_null()
                && want["metadata"]["namespace"].as_str() == Some(namespace)
                && let Some(m) = want["metadata"].as_object_mut()
            {
                m.remove("namespace");
            }
            rewrite(&doc, &want)
        }
        None => {
            std::fs::create_dir_all(root).map_err(io(root))?;
            let name = format!(
                "{}-{}.yaml",
                object["kind"].as_str().unwrap_or("object").to_lowercase(),
                object["metadata"]["name"].as_str().unwrap_or("unnamed")
            );
            let text =
                serde_saphyr::to_string(object).map_err(|e| ManifestError::Serialize(e.to_string()))?;
            let path = root.join(&name);
            std::fs::write(&path, text).map_err(io(&path))?;
            add_to_kustomization(root, &name)
        }
    }
}

/// When `root` holds a kustomization, lists `file` in its `resources`
/// (kustomize — and so Flux, and Argo CD on such a path — builds only
/// what is listed): a line added to a block list, in place; otherwise the
/// file is re-serialised with it.
///
/// # Errors
/// The kustomization cannot be read, parsed or written.
pub fn add_to_kustomization(root: &Path, file: &str) -> Result<(), ManifestError> {
    let Some(k) = ["kustomization.yaml", "kustomization.yml", "Kustomization"]
        .iter()
        .map(|n| root.join(n))
        .find(|p| p.is_file())
    else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&k).map_err(io(&k))?;
    let limits = rollwright_engine::Limits::default();
    let parse = |t: &str| {
        rollwright_engine::yaml::load_str(t, &limits)
            .map(|d| d.value)
            .map_err(|d| ManifestError::Yaml {
                path: k.clone(),
                at: d[0].span.start.to_string(),
                message: d[0].message.clone(),
            })
    };
    let listed = |v: &Value| {
        v["resources"].as_array().is_some_and(|rs| {
            rs.iter()
                .any(|r| r.as_str().map(|r| r.trim_start_matches("./")) == Some(file))
        })
    };
    let mut value = parse(&text)?;
    if listed(&value) {
        return Ok(());
    }
    let lines: Vec<&str> = text.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.trim_end() == "resources:") {
        let mut end = i + 1;
        let mut indent = String::new();
        while let Some(l) = lines.get(end) {
            let item = l.trim_start();
            if !item.starts_with("- ") {
                break;
            }
            indent = l[..l.len() - item.len()].to_owned();
            end += 1;
        }
        let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        out.insert(end, format!("{indent}- {file}"));
        let edited = out.join("\n") + "\n";
        if parse(&edited).is_ok_and(|v| listed(&v)) {
            return std::fs::write(&k, edited).map_err(io(&k));
        }
    } else if value.get("resources").is_none() {
        let sep = if text.ends_with('\n') || text.is_empty() {
            ""
        } else {
            "\n"
        };
        let edited = format!("{text}{sep}resources:\n- {file}\n");
        if parse(&edited).is_ok_and(|v| listed(&v)) {
            return std::fs::write(&k, edited).map_err(io(&k));
        }
    }
    // A flow list or an unusual layout: the document, re-serialised.
    match value.get_mut("resources") {
        Some(Value::Array(rs)) => rs.push(Value::from(file)),
        _ => value["resources"] = serde_json::json!([file]),
    }
    let y = serde_saphyr::to_string(&value).map_err(|e| ManifestError::Serialize(e.to_string()))?;
    std::fs::write(&k, y).map_err(io(&k))
}

/// Replaces a document with `want`: scalar by scalar when only values
/// differ (comments and layout stay), else re-serialised.
///
/// # Errors
/// The file cannot be read or written.
pub fn rewrite(doc: &RepoDoc, want: &Value) -> Result<(), ManifestError> {
    if doc.value == *want {
        return Ok(());
    }
    let text = std::fs::read_to_string(&doc.file).map_err(io(&doc.file))?;
    let lines: Vec<&str> = text.lines().collect();
    let (a, b) = doc.lines;
    let old: String = lines[a..b].iter().map(|l| format!("{l}\n")).collect();
    let new = edit_scalars(&old, &doc.value, want).map_or_else(
        || {
            let lead: String = lines[a..b]
                .iter()
                .take_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
                .map(|l| format!("{l}\n"))
                .collect();
            serde_saphyr::to_string(want).map(|y| format!("{lead}{y}"))
        },
        Ok,
    );
    let new = new.map_err(|e| ManifestError::Serialize(e.to_string()))?;
    let mut out = String::new();
    for l in &lines[..a] {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(&new);
    if !new.ends_with('\n') {
        out.push('\n');
    }
    for l in &lines[b..] {
        out.push_str(l);
        out.push('\n');
    }
    std::fs::write(&doc.file, out).map_err(io(&doc.file))
}

/// Pointers of scalars whose value differs, when the two values have the
/// same shape (same keys, same lengths); `None` otherwise.
fn changed_scalars(old: &Value, new: &Value, at: &str, out: &mut Vec<(String, Value)>) -> bool {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter().all(|(k, v)| {
                    b.get(k).is_some_and(|w| {
                        changed_scalars(
                            v,
                            w,
                            &format!("{at}/{}", rollwright_engine::yaml::escape_segment(k)),
                            out,
                        )
                    })
                })
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .enumerate()
                    .all(|(i, (v, w))| changed_scalars(v, w, &format!("{at}/{i}"), out))
        }
        (Value::Object(_) | Value::Array(_), _) | (_, Value::Object(_) | Value::Array(_)) => false,
        (a, b) => {
            if a != b {
                out.push((at.to_owned(), b.clone()));
            }
            true
        }
    }
}

/// The document with only its changed scalars rewritten, checked by
/// loading it again; `None` when that is not possible.
fn edit_scalars(text: &str, old: &Value, new: &Value) -> Option<String> {
    let mut changes = Vec::new();
    if !changed_scalars(old, new, "", &mut changes) {
        return None;
    }
    let doc = rollwright_engine::yaml::load_str(text, &rollwright_engine::Limits::default()).ok()?;
    let offset = |line: u32, col: u32| -> Option<usize> {
        let start: usize = text
            .split_inclusive('\n')
            .take(line.checked_sub(1)? as usize)
            .map(str::len)
            .sum();
        let rest = &text[start..];
        let byte = rest
            .char_indices()
            .nth(col.checked_sub(1)? as usize)
            .map_or(rest.len(), |(b, _)| b);
        Some(start + byte)
    };
    let mut edits = Vec::new();
    for (ptr, value) in changes {
        let span = doc.node(&ptr)?.span;
        let (s, e) = (
            offset(span.start.line, span.start.col)?,
            offset(span.end.line, span.end.col)?,
        );
        let quoted = text[s..].starts_with(['"', '\'']);
        let rendered = match &value {
            Value::String(v) if !quoted && plain_safe(v) => v.clone(),
            Value::String(_) => value.to_string(),
            Value::Null => "null".into(),
            other => other.to_string(),
        };
        edits.push((s, e, rendered));
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = text.to_owned();
    for (s, e, r) in edits {
        out.replace_range(s..e, &r);
    }
    let again = rollwright_engine::yaml::load_str(&out, &rollwright_engine::Limits::default()).ok()?;
    (again.value == *new).then_some(out)
}

fn plain_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && s.parse::<f64>().is_err()
        && !matches!(s, "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const VS: &str = "# The route of the fraud model.\napiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata:\n  name: fraud  # same as the Service\nspec:\n  hosts: [fraud]\n  http:\n    - route:\n        - destination: {host: fraud, subset: stable}\n          weight: 100 # stable\n        - destination: {host: fraud, subset: canary}\n          weight: 0\n";

    #[test]
    fn weights_change_in_place_and_comments_stay() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("routes.yaml");
        std::fs::write(
            &f,
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: fraud}}\n---\n{VS}"),
        )
        .unwrap();
        let vs = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "fraud", "namespace": "ml"}});
        let doc = find_doc(dir.path(), &ObjRef::of(&vs, "ml").unwrap(), "ml")
            .unwrap()
            .unwrap();
        assert_eq!(doc.lines, (4, 17));
        let mut want = doc.value.clone();
        want["spec"]["http"][0]["route"][0]["weight"] = json!(80);
        want["spec"]["http"][0]["route"][1]["weight"] = json!(20);
        rewrite(&doc, &want).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains("          weight: 80 # stable\n"), "{text}");
        assert!(text.contains("          weight: 20\n"), "{text}");
        assert!(text.contains("name: fraud  # same as the Service"), "{text}");
        assert!(text.starts_with("apiVersion: v1\nkind: Service\n"), "{text}");
    }

    #[test]
    fn new_shapes_are_reserialised_and_new_objects_get_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vs.yaml"), VS).unwrap();
        let doc = find_doc(
            dir.path(),
            &ObjRef::new("networking.istio.io/v1beta1", "VirtualService", "ml", "fraud"),
            "ml",
        )
        .unwrap()
        .unwrap();
        let mut want = doc.value.clone();
        want["spec"]["http"][0]["mirror"] = json!({"host": "fraud", "subset": "canary"});
        rewrite(&doc, &want).unwrap();
        let again = find_doc(dir.path(), &ObjRef::of(&want, "ml").unwrap(), "ml")
            .unwrap()
            .unwrap();
        assert_eq!(again.value, want);
        assert!(
            std::fs::read_to_string(dir.path().join("vs.yaml"))
                .unwrap()
                .starts_with("# The route")
        );
        let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fraud-canary", "namespace": "ml"}, "spec": {"replicas": 2}});
        upsert(dir.path(), &dep, "ml").unwrap();
        let written = find_doc(dir.path(), &ObjRef::of(&dep, "ml").unwrap(), "ml")
            .unwrap()
            .unwrap();
        assert_eq!(written.file, dir.path().join("deployment-fraud-canary.yaml"));
        assert_eq!(written.value, dep);
        // Writing the same object again changes nothing.
        let before = std::fs::read_to_string(&written.file).unwrap();
        upsert(dir.path(), &dep, "ml").unwrap();
        assert_eq!(std::fs::read_to_string(&written.file).unwrap(), before);
    }

    #[test]
    fn new_files_are_listed_in_the_kustomization() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kustomization.yaml");
        std::fs::write(&k, "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - fraud.yaml # stable\n  - routes.yaml\nnamespace: ml\n").unwrap();
        let dep =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fraud-canary"}});
        upsert(dir.path(), &dep, "ml").unwrap();
        assert_eq!(
            std::fs::read_to_string(&k).unwrap(),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - fraud.yaml # stable\n  - routes.yaml\n  - deployment-fraud-canary.yaml\nnamespace: ml\n"
        );
        // Listed once, however often it is written.
        add_to_kustomization(dir.path(), "deployment-fraud-canary.yaml").unwrap();
        assert_eq!(
            std::fs::read_to_string(&k)
                .unwrap()
                .matches("deployment-fraud-canary")
                .count(),
            1
        );
        // A flow list is re-serialised with the file; no list gets one.
        std::fs::write(&k, "resources: [a.yaml]\n").unwrap();
        add_to_kustomization(dir.path(), "b.yaml").unwrap();
        let v = rollwright_engine::yaml::load_str(
            &std::fs::read_to_string(&k).unwrap(),
            &rollwright_engine::Limits::default(),
        )
        .unwrap()
        .value;
        assert_eq!(v["resources"], json!(["a.yaml", "b.yaml"]));
        std::fs::write(&k, "namespace: ml\n").unwrap();
        add_to_kustomization(dir.path(), "c.yaml").unwrap();
        assert_eq!(
            std::fs::read_to_string(&k).unwrap(),
            "namespace: ml\nresources:\n- c.yaml\n"
        );
    }

    #[test]
    fn strings_keep_their_quoting() {
        let text = "metadata:\n  labels: {version: \"7\", track: stable}\n";
        let old = json!({"metadata": {"labels": {"version": "7", "track": "stable"}}});
        let new = json!({"metadata": {"labels": {"version": "8", "track": "canary"}}});
        let out = edit_scalars(text, &old, &new).unwrap();
        assert_eq!(out, "metadata:\n  labels: {version: \"8\", track: canary}\n");
    }
}
