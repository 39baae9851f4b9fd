//! The loader: YAML text → `serde_json::Value` plus a map from every JSON
//! pointer to the `line:col` span it came from.
//!
//! Why drive `saphyr-parser`'s event stream by hand instead of using a
//! serde YAML crate: every later check (JSON Schema, semantic rules,
//! templating) speaks JSON pointers, and every diagnostic must point at the
//! exact text. Building the value and the span map in one pass over the
//! events gives both, and lets us refuse hostile input *while* parsing: the
//! depth is checked on every collection start (a 20,000-level `- - - …`
//! never builds a tree), aliases are expanded against a node budget (billion
//! laughs), the byte size is capped before parsing, and exactly one document
//! is accepted. The serde forks of `serde_yaml` silently keep the last of
//! duplicate keys; here a duplicate key is an error that points at both.
//!
//! Scalars resolve with the YAML 1.2 core schema: `no`, `on`, `yes` are
//! strings, `0755` is the integer 755, anything quoted is a string. Merge
//! keys (`<<`, a YAML 1.1 feature), complex (collection) keys and custom tags
//! are rejected.

// Loader errors are a cold path and a located `Diagnostic` is what callers want.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Span as YSpan, Tag};
use serde_json::{Map, Number, Value};

use crate::diag::{Code, Diagnostic, Pos, Span};

/// Limits that protect the loader from hostile or accidental input.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted file, in bytes (default 1 MiB).
    pub max_bytes: usize,
    /// Deepest accepted nesting of collections (default 64).
    pub max_depth: usize,
    /// Most nodes that aliases may expand to in one file (default 10,000).
    pub max_alias_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1024 * 1024,
            max_depth: 64,
            max_alias_nodes: 10_000,
        }
    }
}

/// Where a node is: its own span and, for mapping values, the key's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSpan {
    /// The node's text (for collections, from the first to the last token).
    pub span: Span,
    /// The key that introduced it, for values of a mapping.
    pub key: Option<Span>,
}

/// Where every node of a loaded document came from: a tree of spans
/// parallel to the value (children in the value's order), so that loading
/// allocates nothing per node for positions; pointers are resolved only
/// when a diagnostic needs a location.
#[derive(Debug, Default, Clone)]
pub struct SpanMap {
    nodes: Vec<SpanNode>,
    kids: Vec<u32>,
    root: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct SpanNode {
    at: NodeSpan,
    first_kid: u32,
    n_kids: u32,
}

impl SpanMap {
    /// Number of recorded nodes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// A loaded document: the value and where each part of it came from.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document as JSON.
    pub value: Value,
    /// Positions, parallel to `value`.
    pub spans: SpanMap,
}

impl Document {
    /// The span recorded for exactly this pointer, if the node exists and
    /// has its own position (nodes inside an alias expansion do not).
    #[must_use]
    pub fn node(&self, pointer: &str) -> Option<NodeSpan> {
        let (n, exact) = self.walk(pointer);
        exact.then(|| self.spans.nodes[n as usize].at)
    }

    /// The span of the node at `pointer`, or of its nearest recorded
    /// ancestor (a missing field, a node inside an alias expansion).
    #[must_use]
    pub fn locate(&self, pointer: &str) -> Span {
        self.nearest(pointer).span
    }

    /// For a mapping value, the span of its key; otherwise as [`Self::locate`].
    /// Used for "unknown field" and similar findings about the field itself.
    #[must_use]
    pub fn locate_key(&self, pointer: &str) -> Span {
        let n = self.nearest(pointer);
        n.key.unwrap_or(n.span)
    }

    fn nearest(&self, pointer: &str) -> NodeSpan {
        if self.spans.root.is_none() {
            return NodeSpan {
                span: Span::point(Pos { line: 1, col: 1 }),
                key: None,
            };
        }
        let (n, _) = self.walk(pointer);
        self.spans.nodes[n as usize].at
    }

    /// Follows `pointer` as far as nodes exist; returns the last node and
    /// whether the whole pointer was found.
    fn walk(&self, pointer: &str) -> (u32, bool) {
        let Some(mut n) = self.spans.root else {
            return (0, false);
        };
        let mut v = &self.value;
        if pointer.is_empty() {
            return (n, true);
        }
        for raw in pointer.split('/').skip(1) {
            let seg = unescape_segment(raw);
            let (idx, child) = match v {
                Value::Object(m) => match m.iter().position(|(k, _)| *k == *seg) {
                    Some(i) => (i, &m[&*seg]),
                    None => return (n, false),
                },
                Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get(i).map(|c| (i, c))) {
                    Some(found) => found,
                    None => return (n, false),
                },
                _ => return (n, false),
            };
            let node = self.spans.nodes[n as usize];
            if idx >= node.n_kids as usize {
                return (n, false);
            }
            n = self.spans.kids[node.first_kid as usize + idx];
            v = child;
        }
        (n, true)
    }
}

impl crate::diag::Locate for Document {
    fn locate(&self, pointer: &str) -> crate::diag::Loc {
        Document::locate(self, pointer).into()
    }
    fn locate_key(&self, pointer: &str) -> crate::diag::Loc {
        Document::locate_key(self, pointer).into()
    }
}

/// One JSON pointer segment, escaped (`~` → `~0`, `/` → `~1`).
#[must_use]
pub fn escape_segment(segment: &str) -> std::borrow::Cow<'_, str> {
    if segment.contains(['~', '/']) {
        std::borrow::Cow::Owned(segment.replace('~', "~0").replace('/', "~1"))
    } else {
        std::borrow::Cow::Borrowed(segment)
    }
}

/// One JSON pointer segment as written in the pointer, unescaped.
#[must_use]
pub fn unescape_segment(raw: &str) -> std::borrow::Cow<'_, str> {
    if raw.contains('~') {
        std::borrow::Cow::Owned(raw.replace("~1", "/").replace("~0", "~"))
    } else {
        std::borrow::Cow::Borrowed(raw)
    }
}

/// Appends `/segment`, escaped, to a JSON pointer.
pub fn push_pointer_segment(ptr: &mut String, segment: &str) {
    ptr.push('/');
    ptr.push_str(&escape_segment(segment));
}

/// Loads raw bytes: checks size and UTF-8 before parsing.
///
/// # Errors
/// Every problem found, each located (loading stops at the first syntax
/// error, but reports all duplicate keys).
pub fn load_bytes(bytes: &[u8], limits: &Limits) -> Result<Document, Vec<Diagnostic>> {
    if bytes.len() > limits.max_bytes {
        return Err(vec![
            Diagnostic::new(
                Code::TooLarge,
                Span::point(Pos { line: 1, col: 1 }),
                format!(
                    "file is {} bytes, over the limit of {} bytes",
                    bytes.len(),
                    limits.max_bytes
                ),
            )
            .with_help("split the spec, or raise the limit with --max-file-size"),
        ]);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => load_str(text, limits),
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            // The prefix is valid UTF-8 by construction.
            let prefix = std::str::from_utf8(valid).unwrap_or_default();
            let line = prefix.matches('\n').count() + 1;
            let col = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            Err(vec![
                Diagnostic::new(
                    Code::NotUtf8,
                    Span::point(Pos {
                        line: to_u32(line),
                        col: to_u32(col),
                    }),
                    format!(
                        "file is not valid UTF-8 (invalid byte 0x{:02x} at offset {})",
                        bytes[e.valid_up_to()],
                        e.valid_up_to()
                    ),
                )
                .with_help("save the file as UTF-8"),
            ])
        }
    }
}

/// Loads YAML text into a [`Document`].
///
/// # Errors
/// As [`load_bytes`].
pub fn load_str(text: &str, limits: &Limits) -> Result<Document, Vec<Diagnostic>> {
    if text.len() > limits.max_bytes {
        return load_bytes(text.as_bytes(), limits);
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    Builder::new(limits).run(text)
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn pos(m: &Marker) -> Pos {
    Pos {
        line: to_u32(m.line()),
        col: to_u32(m.col() + 1),
    }
}

fn span(s: &YSpan) -> Span {
    Span {
        start: pos(&s.start),
        end: pos(&s.end),
    }
}

enum Frame {
    Seq {
        items: Vec<Value>,
        start: Pos,
        anchor: usize,
        key: Option<Span>,
        /// Length of `Builder::pending` when this collection started.
        mark: usize,
    },
    Map {
        map: Map<String, Value>,
        start: Pos,
        anchor: usize,
        key: Option<Span>,
        mark: usize,
        /// The key read, waiting for its value; `dup` when it repeats a key.
        pending: Option<(String, Span, bool)>,
    },
}

struct Builder<'l> {
    limits: &'l Limits,
    stack: Vec<Frame>,
    nodes: Vec<SpanNode>,
    kids: Vec<u32>,
    /// Span nodes of completed children of the open collections.
    pending: Vec<u32>,
    anchors: HashMap<usize, (Value, usize)>,
    alias_nodes: usize,
    root: Option<(Value, u32)>,
    errors: Vec<Diagnostic>,
}

/// What the next node is, relative to its parent.
enum Slot {
    /// The root, a sequence item or a mapping value, with the key's span.
    Value(Option<Span>),
    /// A mapping key.
    Key,
}

impl<'l> Builder<'l> {
    fn new(limits: &'l Limits) -> Self {
        Builder {
            limits,
            stack: Vec::new(),
            nodes: Vec::new(),
            kids: Vec::new(),
            pending: Vec::new(),
            anchors: HashMap::new(),
            alias_nodes: 0,
            root: None,
            errors: Vec::new(),
        }
    }

    fn run(mut self, text: &str) -> Result<Document, Vec<Diagnostic>> {
        let mut parser = Parser::new_from_str(text);
        let mut documents = 0usize;
        let mut last = Span::point(Pos { line: 1, col: 1 });
        while let Some(item) = parser.next_event() {
            let (event, ysp) = match item {
                Ok(ev) => ev,
                Err(e) => {
                    let at = Span::point(pos(e.marker()));
                    // saphyr-parser guards flow collections with its own limit.
                    self.errors.push(if e.info().contains("recursion limit") {
                        Diagnostic::new(
                            Code::TooDeep,
                            at,
                            format!("nesting deeper than the parser's limit ({})", e.info()),
                        )
                    } else {
                        Diagnostic::new(Code::Syntax, at, format!("YAML syntax error: {}", e.info()))
                    });
                    return Err(self.errors);
                }
            };
            let sp = span(&ysp);
            last = sp;
            let fatal = match event {
                Event::StreamStart | Event::Nothing | Event::DocumentEnd => None,
                Event::StreamEnd => break,
                Event::DocumentStart(_) => {
                    documents += 1;
                    (documents > 1).then(|| {
                        Diagnostic::new(
                            Code::MultiDocument,
                            sp,
                            "a spec file holds exactly one YAML document; found a second one here",
                        )
                        .with_help("put each spec in its own file")
                    })
                }
                Event::Scalar(value, style, anchor, tag) => {
                    self.scalar(value, style, anchor, tag.as_deref(), sp)
                }
                Event::Alias(id) => self.alias(id, sp),
                Event::SequenceStart(anchor, tag) => self.start(false, anchor, tag.as_deref(), sp),
                Event::MappingStart(anchor, tag) => self.start(true, anchor, tag.as_deref(), sp),
                Event::SequenceEnd | Event::MappingEnd => self.end(sp),
            };
            if let Some(d) = fatal {
                self.errors.push(d);
                return Err(self.errors);
            }
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        match self.root {
            None | Some((Value::Null, _)) => Err(vec![
                Diagnostic::new(
                    Code::Empty,
                    Span::point(last.start),
                    "file is empty: expected a rollwright spec",
                )
                .with_help("a spec starts with `apiVersion: rollwright.dev/v1alpha1`"),
            ]),
            Some((value, root)) => Ok(Document {
                value,
                spans: SpanMap {
                    nodes: self.nodes,
                    kids: self.kids,
                    root: Some(root),
                },
            }),
        }
    }

    /// Says what the next node is.
    fn slot(&self) -> Slot {
        match self.stack.last() {
            None | Some(Frame::Seq { .. }) => Slot::Value(None),
            Some(Frame::Map { pending, .. }) => match pending {
                None => Slot::Key,
                Some((_, ks, _)) => Slot::Value(Some(*ks)),
            },
        }
    }

    fn start(&mut self, is_map: bool, anchor: usize, tag: Option<&Tag>, sp: Span) -> Option<Diagnostic> {
        if let Some(t) = tag {
            let ok = t.is_yaml_core_schema() && t.suffix == if is_map { "map" } else { "seq" };
            if !ok {
                return Some(unsupported_tag(t, sp));
            }
        }
        if self.stack.len() >= self.limits.max_depth {
            return Some(
                Diagnostic::new(
                    Code::TooDeep,
                    sp,
                    format!("nesting deeper than {} levels", self.limits.max_depth),
                )
                .with_help("a rollout spec never needs this depth; is the file generated?"),
            );
        }
        let key = match self.slot() {
            Slot::Key => {
                return Some(
                    Diagnostic::new(
                        Code::UnsupportedYaml,
                        sp,
                        "complex mapping keys (a sequence or mapping used as a key) are not supported",
                    )
                    .with_help("use a plain string as the key"),
                );
            }
            Slot::Value(k) => k,
        };
        let mark = self.pending.len();
        self.stack.push(if is_map {
            Frame::Map {
                map: Map::new(),
                start: sp.start,
                anchor,
                key,
                mark,
                pending: None,
            }
        } else {
            Frame::Seq {
                items: Vec::new(),
                start: sp.start,
                anchor,
                key,
                mark,
            }
        });
        None
    }

    fn end(&mut self, sp: Span) -> Option<Diagnostic> {
        let frame = self.stack.pop()?;
        let (value, start, anchor, key, mark) = match frame {
            Frame::Seq {
                items,
                start,
                anchor,
                key,
                mark,
            } => (Value::Array(items), start, anchor, key, mark),
            Frame::Map {
                map,
                start,
                anchor,
                key,
                mark,
                ..
            } => (Value::Object(map), start, anchor, key, mark),
        };
        let first_kid = to_u32(self.kids.len());
        self.kids.extend(self.pending.drain(mark..));
        let node = SpanNode {
            at: NodeSpan {
                span: Span { start, end: sp.end },
                key,
            },
            first_kid,
            n_kids: to_u32(self.kids.len()) - first_kid,
        };
        if anchor != 0 {
            let n = count_nodes(&value);
            self.anchors.insert(anchor, (value.clone(), n));
        }
        self.attach(value, node);
        None
    }

    fn scalar(
        &mut self,
        text: std::borrow::Cow<'_, str>,
        style: ScalarStyle,
        anchor: usize,
        tag: Option<&Tag>,
        sp: Span,
    ) -> Option<Diagnostic> {
        match self.slot() {
            Slot::Key => {
                if style == ScalarStyle::Plain && text == "<<" {
                    return Some(
                        Diagnostic::new(
                            Code::UnsupportedYaml,
                            sp,
                            "merge keys (`<<`) are a YAML 1.1 feature and are not supported",
                        )
                        .with_help("write the fields out, or share them through a strategy (`uses:`)"),
                    );
                }
                if let Some(t) = tag.filter(|t| !(t.is_yaml_core_schema() && t.suffix == "str")) {
                    return Some(unsupported_tag(t, sp));
                }
                if anchor != 0 {
                    self.anchors.insert(anchor, (Value::String(text.to_string()), 1));
                }
                self.key(text.into_owned(), sp);
                None
            }
            Slot::Value(key) => {
                let value = match resolve_scalar(text, style, tag, sp) {
                    Ok(v) => v,
                    Err(d) => return Some(d),
                };
                if anchor != 0 {
                    self.anchors.insert(anchor, (value.clone(), 1));
                }
                self.attach(value, leaf(sp, key));
                None
            }
        }
    }

    fn alias(&mut self, id: usize, sp: Span) -> Option<Diagnostic> {
        let Some((value, n)) = self.anchors.get(&id) else {
            return Some(Diagnostic::new(
                Code::UnsupportedYaml,
                sp,
                "alias refers to an anchor that is not complete here (recursive alias)",
            ));
        };
        self.alias_nodes += n;
        if self.alias_nodes > self.limits.max_alias_nodes {
            return Some(
                Diagnostic::new(
                    Code::AliasBudget,
                    sp,
                    format!(
                        "aliases expand to more than {} nodes (possible billion-laughs attack)",
                        self.limits.max_alias_nodes
                    ),
                )
                .with_help("write the values out instead of nesting aliases"),
            );
        }
        let value = value.clone();
        match self.slot() {
            Slot::Key => match value {
                Value::String(s) => {
                    self.key(s, sp);
                    None
                }
                _ => Some(Diagnostic::new(
                    Code::UnsupportedYaml,
                    sp,
                    "an alias used as a key must refer to a string",
                )),
            },
            Slot::Value(key) => {
                self.attach(value, leaf(sp, key));
                None
            }
        }
    }

    fn key(&mut self, k: String, sp: Span) {
        let Some(Frame::Map {
            map, pending, mark, ..
        }) = self.stack.last_mut()
        else {
            return;
        };
        let dup = match map.keys().position(|seen| *seen == k) {
            Some(i) => {
                let first = self.nodes[self.pending[*mark + i] as usize].at.key.unwrap_or(sp);
                self.errors.push(
                    Diagnostic::new(
                        Code::DuplicateKey,
                        sp,
                        format!("duplicate key `{k}` (first defined at {})", first.start),
                    )
                    .with_label("defined again here")
                    .with_related(first, "first defined here")
                    .with_help("remove one of them; YAML keys must be unique"),
                );
                true
            }
            None => false,
        };
        *pending = Some((k, sp, dup));
    }

    /// Hangs a completed node under its parent (or makes it the root).
    fn attach(&mut self, value: Value, node: SpanNode) {
        let id = to_u32(self.nodes.len());
        self.nodes.push(node);
        match self.stack.last_mut() {
            None => self.root = Some((value, id)),
            Some(Frame::Seq { items, .. }) => {
                items.push(value);
                self.pending.push(id);
            }
            Some(Frame::Map { map, pending, .. }) => {
                if let Some((k, _, dup)) = pending.take() {
                    // On a duplicate key the first value stays (an error is reported anyway).
                    if !dup {
                        map.insert(k, value);
                        self.pending.push(id);
                    }
                }
            }
        }
    }
}

fn leaf(span: Span, key: Option<Span>) -> SpanNode {
    SpanNode {
        at: NodeSpan { span, key },
        first_kid: 0,
        n_kids: 0,
    }
}

fn count_nodes(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(count_nodes).sum::<usize>(),
        Value::Object(o) => 1 + o.values().map(count_nodes).sum::<usize>(),
        _ => 1,
    }
}

fn unsupported_tag(t: &Tag, sp: Span) -> Diagnostic {
    Diagnostic::new(
        Code::UnsupportedYaml,
        sp,
        format!("YAML tag `{t}` is not supported"),
    )
    .with_help("remove the tag; quote the value if it must be a string")
}

/// Resolves a scalar with the YAML 1.2 core schema.
fn resolve_scalar(
    text: std::borrow::Cow<'_, str>,
    style: ScalarStyle,
    tag: Option<&Tag>,
    sp: Span,
) -> Result<Value, Diagnostic> {
    if let Some(t) = tag {
        // The non-specific tag `! value` forces a string.
        if (t.handle.is_empty() && t.suffix == "!") || (t.handle == "!" && t.suffix.is_empty()) {
            return Ok(Value::String(text.into_owned()));
        }
        if !t.is_yaml_core_schema() {
            return Err(unsupported_tag(t, sp));
        }
        let bad = |what: &str| {
            Diagnostic::new(
                Code::SchemaType,
                sp,
                format!("`{text}` is not a valid {what} (tagged `!!{}`)", t.suffix),
            )
        };
        return match t.suffix.as_str() {
            "str" => Ok(Value::String(text.into_owned())),
            "null" => resolve_null(&text).ok_or_else(|| bad("null")),
            "bool" => resolve_bool(&text).ok_or_else(|| bad("boolean")),
            "int" => resolve_int(&text).ok_or_else(|| bad("integer")),
            "float" => match resolve_int(&text).or_else(|| resolve_float(&text)) {
                Some(Value::Number(n)) => Ok(Value::Number(
                    Number::from_f64(n.as_f64().unwrap_or(0.0)).unwrap_or(n),
                )),
                Some(v) => Ok(v),
                None => Err(bad("float")),
            },
            _ => Err(unsupported_tag(t, sp)),
        };
    }
    if style != ScalarStyle::Plain {
        return Ok(Value::String(text.into_owned()));
    }
    // Only scalars starting like a number, a boolean or null can be one.
    let maybe_special = text.bytes().next().is_none_or(|b| {
        b.is_ascii_digit()
            || matches!(
                b,
                b'-' | b'+' | b'.' | b'~' | b'n' | b'N' | b't' | b'T' | b'f' | b'F'
            )
    });
    if !maybe_special {
        return Ok(Value::String(text.into_owned()));
    }
    if let Some(v) = resolve_null(&text).or_else(|| resolve_bool(&text)) {
        return Ok(v);
    }
    if let Some(v) = resolve_int(&text) {
        return Ok(v);
    }
    match &*text {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF" | ".nan"
        | ".NaN" | ".NAN" => {
            return Err(Diagnostic::new(
                Code::UnsupportedYaml,
                sp,
                format!("non-finite number `{text}` is not supported"),
            )
            .with_help("quote it if you meant a string"));
        }
        _ => {}
    }
    Ok(match resolve_float(&text) {
        Some(v) => v,
        None => Value::String(text.into_owned()),
    })
}

/// What a plain (unquoted) scalar `text` means under the YAML 1.2 core
/// schema (`None` for a non-finite float, which the loader refuses).
#[must_use]
pub fn resolve_plain(text: &str) -> Option<Value> {
    resolve_scalar(
        std::borrow::Cow::Borrowed(text),
        ScalarStyle::Plain,
        None,
        Span::default(),
    )
    .ok()
}

/// The documents of a multi-document YAML text, split on `---` lines:
/// `(line offset of the document's first line, its text)`. Documents
/// holding only comments and blank lines are left out.
#[must_use]
pub fn split_documents(text: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let mut start = 0u32;
    let mut chunk = String::new();
    let flush = |chunk: &str, first: u32, out: &mut Vec<(u32, String)>| {
        if !chunk
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            out.push((first, chunk.to_owned()));
        }
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" {
            flush(&chunk, start, &mut out);
            chunk.clear();
            start = u32::try_from(i + 1).unwrap_or(u32::MAX);
        } else {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    flush(&chunk, start, &mut out);
    out
}

fn resolve_null(text: &str) -> Option<Value> {
    matches!(text, "" | "~" | "null" | "Null" | "NULL").then_some(Value::Null)
}

fn resolve_bool(text: &str) -> Option<Value> {
    match text {
        "true" | "True" | "TRUE" => Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => Some(Value::Bool(false)),
        _ => None,
    }
}

fn resolve_int(text: &str) -> Option<Value> {
    let b = text.as_bytes();
    let (radix, digits, neg) = if let Some(rest) = text.strip_prefix("0o") {
        (8, rest, false)
    } else if let Some(rest) = text.strip_prefix("0x") {
        (16, rest, false)
    } else {
        let (neg, rest) = match b.first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        (10, rest, neg)
    };
    if digits.is_empty() || !digits.bytes().all(|c| (c as char).is_digit(radix)) {
        return None;
    }
    let n = match u64::from_str_radix(digits, radix) {
        Ok(n) => n,
        // Too large for 64 bits: keep it as a float, as JSON would.
        Err(_) => {
            return text
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number);
        }
    };
    Some(Value::Number(if neg {
        match i64::try_from(n) {
            Ok(i) => Number::from(-i),
            Err(_) => Number::from_f64(-(n as f64))?,
        }
    } else {
        Number::from(n)
    }))
}

fn resolve_float(text: &str) -> Option<Value> {
    // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let b = text.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'-' | b'+')));
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - f;
    }
    if digits == 0 {
        return None;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let e = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == e {
            return None;
        }
    }
    if i != b.len() {
        return None;
    }
    text.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(s: &str) -> Document {
        load_str(s, &Limits::default()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn err(s: &str) -> Diagnostic {
        load_str(s, &Limits::default()).expect_err("must fail").remove(0)
    }

    #[test]
    fn yaml_1_2_scalars() {
        let d = load(
            "a: no\nb: yes\nc: on\nd: true\ne: 0755\nf: '12'\ng: 1.5\nh: ~\ni: 0x1F\nj: 0o17\nk: -3\nl: 1e3\nm: 30s\nn: .5\n",
        );
        assert_eq!(
            d.value,
            json!({"a":"no","b":"yes","c":"on","d":true,"e":755,"f":"12","g":1.5,"h":null,"i":31,"j":15,"k":-3,"l":1000.0,"m":"30s","n":0.5})
        );
    }

    #[test]
    fn spans_for_every_pointer() {
        let d = load("apiVersion: v1\nsteps:\n  - id: gate\n    needs: [a, b]\n");
        let s = d.node("/steps/0/id").unwrap();
        assert_eq!(s.span.start, Pos { line: 3, col: 9 });
        assert_eq!(s.key.unwrap().start, Pos { line: 3, col: 5 });
        assert_eq!(
            d.node("/steps/0/needs/1").unwrap().span.start,
            Pos { line: 4, col: 16 }
        );
        // Missing nodes fall back to the nearest ancestor.
        assert_eq!(
            d.locate("/steps/0/needs/7"),
            d.node("/steps/0/needs").unwrap().span
        );
        assert_eq!(d.locate("/nope").start, Pos { line: 1, col: 1 });
        assert_eq!(d.locate_key("/steps/0/needs").start, Pos { line: 4, col: 5 });
        assert_eq!(d.spans.len(), 8);
    }

    #[test]
    fn pointer_segments_are_escaped() {
        let d = load("\"a/b\": {\"c~d\": 1}\n");
        assert!(d.node("/a~1b/c~0d").is_some());
        assert!(d.node("/a~1b/zz").is_none());
    }

    #[test]
    fn duplicate_keys_point_at_both() {
        let e = load_str("a: 1\nb: 2\na: 3\n", &Limits::default()).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].code, Code::DuplicateKey);
        assert_eq!(e[0].span.start, Pos { line: 3, col: 1 });
        assert_eq!(e[0].related[0].span.start, Pos { line: 1, col: 1 });
        assert_eq!(e[0].message, "duplicate key `a` (first defined at 1:1)");
    }

    #[test]
    fn rejections() {
        assert_eq!(err("").code, Code::Empty);
        assert_eq!(err("# only a comment\n").code, Code::Empty);
        assert_eq!(err("a: 1\n---\nb: 2\n").code, Code::MultiDocument);
        assert_eq!(err("a: [1, 2\n").code, Code::Syntax);
        assert_eq!(err("<<: {a: 1}\n").code, Code::UnsupportedYaml);
        assert_eq!(err("? [a, b]\n: 1\n").code, Code::UnsupportedYaml);
        assert_eq!(err("a: !custom 1\n").code, Code::UnsupportedYaml);
        assert_eq!(err("a: .nan\n").code, Code::UnsupportedYaml);
        let e = load_bytes(b"a: 1\nb: \xff\n", &Limits::default()).unwrap_err();
        assert_eq!(e[0].code, Code::NotUtf8);
        assert_eq!(e[0].span.start, Pos { line: 2, col: 4 });
        let small = Limits {
            max_bytes: 4,
            ..Limits::default()
        };
        assert_eq!(
            load_str("a: 12345\n", &small).unwrap_err()[0].code,
            Code::TooLarge
        );
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let deep = "- ".repeat(20_000) + "x\n";
        let e = err(&deep);
        assert_eq!(e.code, Code::TooDeep);
        let flow = "[".repeat(100_000);
        assert_eq!(err(&flow).code, Code::TooDeep);
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            s.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert_eq!(err(&s).code, Code::AliasBudget);
    }

    #[test]
    fn small_aliases_work() {
        let d = load("base: &b {cpu: 1}\nother: *b\n");
        assert_eq!(d.value["other"], json!({"cpu": 1}));
    }

    #[test]
    fn tags_of_the_core_schema() {
        let d = load("a: !!str 12\nb: !!int \"7\"\nc: ! 5\n");
        assert_eq!(d.value, json!({"a": "12", "b": 7, "c": "5"}));
        assert_eq!(err("a: !!int abc\n").code, Code::SchemaType);
    }
}
