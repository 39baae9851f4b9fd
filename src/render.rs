//! Rendering diagnostics: rustc-like snippets (annotate-snippets, the
//! renderer rustc itself uses), JSON, SARIF 2.1.0 and GitHub workflow
//! commands. Text inside a diagnostic's redaction span (a literal secret)
//! is replaced before any source line is printed.

use std::collections::HashMap;
use std::io::{self, Write};

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use rollwright_engine::diag::{Code, Diagnostic, Severity, Span};
use serde::Serialize;

/// Totals of a lint run.
pub struct Summary {
    pub files: usize,
    pub skipped: usize,
    pub errors: usize,
    pub warnings: usize,
}

/// A diagnostic with its file, for the collected formats.
pub struct Record {
    /// Where the diagnostic points.
    pub file: String,
    /// The spec being linted (differs from `file` for a strategy's problem).
    pub spec: String,
    pub d: Diagnostic,
}

/// The human renderer.
pub struct Human {
    renderer: Renderer,
}

impl Human {
    pub fn new(color: bool) -> Self {
        let renderer = if color {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        Human { renderer }
    }

    /// Renders every diagnostic of one file. Diagnostics may point into
    /// other files (a strategy it uses); those are read for their snippets.
    pub fn render_file(&self, path: &str, bytes: &[u8], diags: &[Diagnostic]) -> String {
        let mut texts: HashMap<Option<&str>, String> = HashMap::new();
        texts.insert(None, String::from_utf8_lossy(bytes).into_owned());
        for d in diags {
            for f in std::iter::once(d.file.as_deref()).chain(d.related.iter().map(|r| r.file.as_deref())) {
                texts.entry(f).or_insert_with(|| match f {
                    // A `--set` override: its key is its text.
                    Some(f) if f.starts_with(rollwright_engine::diag::SET_FILE_PREFIX) => {
                        f[rollwright_engine::diag::SET_FILE_PREFIX.len()..].to_owned()
                    }
                    f => f
                        .and_then(|f| std::fs::read_to_string(f).ok())
                        .unwrap_or_default(),
                });
            }
        }
        let lines: HashMap<Option<&str>, Vec<&str>> =
            texts.iter().map(|(k, t)| (*k, t.split('\n').collect())).collect();
        let mut s = String::new();
        for d in diags {
            s.push_str(&self.render(path, &lines, diags, d));
            s.push_str("\n\n");
        }
        s
    }

    fn render(
        &self,
        path: &str,
        files: &HashMap<Option<&str>, Vec<&str>>,
        all: &[Diagnostic],
        d: &Diagnostic,
    ) -> String {
        let empty: Vec<&str> = Vec::new();
        // Redactions apply to the file they were found in.
        let redactions_for = |file: Option<&str>| -> Vec<Span> {
            all.iter()
                .filter(|x| x.file.as_deref() == file)
                .filter_map(|x| x.redact)
                .collect()
        };
        let lines = files.get(&d.file.as_deref()).unwrap_or(&empty);
        let redactions = redactions_for(d.file.as_deref());
        let dpath = d.file.as_deref().unwrap_or(path);
        let level = match d.severity {
            Severity::Error => Level::ERROR,
            Severity::Warning => Level::WARNING,
        };
        let (src, range) = line_snippet(lines, d.span, &redactions);
        let mut primary = AnnotationKind::Primary.span(range);
        if let Some(l) = &d.label {
            primary = primary.label(l.as_str());
        }
        let mut group: Group<'_> = level
            .primary_title(d.message.as_str())
            .id(d.code.as_str())
            .element(
                Snippet::source(src)
                    .line_start(d.span.start.line as usize)
                    .path(dpath)
                    .annotation(primary),
            );
        for r in &d.related {
            let rlines = files.get(&r.file.as_deref()).unwrap_or(&empty);
            let (rsrc, rrange) = line_snippet(rlines, r.span, &redactions_for(r.file.as_deref()));
            group = group.element(
                Snippet::source(rsrc)
                    .line_start(r.span.start.line as usize)
                    .path(r.file.as_deref().unwrap_or(path))
                    .annotation(AnnotationKind::Context.span(rrange).label(r.label.as_str())),
            );
        }
        if let Some(h) = &d.help {
            group = group.element(Level::HELP.message(h.as_str()));
        }
        self.renderer.render(&[group])
    }
}

/// The source line of `span`'s start, with every redaction on it masked
/// (character for character, so columns stay right), and the byte range to
/// underline (clamped to that line).
fn line_snippet(lines: &[&str], span: Span, redactions: &[Span]) -> (String, std::ops::Range<usize>) {
    let li = (span.start.line as usize).saturating_sub(1);
    let line = lines.get(li).copied().unwrap_or("").trim_end_matches('\r');
    let mut text = String::with_capacity(line.len());
    for (i, ch) in line.chars().enumerate() {
        let col = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let masked = redactions.iter().any(|r| {
            let after_start = (r.start.line, r.start.col) <= (span.start.line, col);
            let before_end =
                r.end.line > span.start.line || (r.end.line == span.start.line && col < r.end.col);
            after_start && before_end
        });
        text.push(if masked { '*' } else { ch });
    }
    let byte_at = |col: u32| -> usize {
        text.char_indices()
            .nth((col as usize).saturating_sub(1))
            .map_or(text.len(), |(b, _)| b)
    };
    let start = byte_at(span.start.col);
    let mut end = if span.end.line == span.start.line && span.end.col > span.start.col {
        byte_at(span.end.col)
    } else {
        // A multi-line node: underline to the end of its first line.
        text.len()
    };
    if end <= start {
        end = start + 1;
    }
    (text, start..end)
}

pub fn human_summary(out: &mut impl Write, s: &Summary, color: bool) -> io::Result<()> {
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    let skipped = if s.skipped > 0 {
        format!(
            " ({} skipped: not rollwright specs)",
            plural(s.skipped, "YAML file")
        )
    } else {
        String::new()
    };
    let line = format!(
        "checked {}: {}, {}{skipped}",
        plural(s.files, "file"),
        plural(s.errors, "error"),
        plural(s.warnings, "warning")
    );
    if color {
        let style = if s.errors > 0 { "\x1b[1;31m" } else { "\x1b[1;32m" };
        writeln!(out, "{style}{line}\x1b[0m")
    } else {
        writeln!(out, "{line}")
    }
}

#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    file: &'a str,
    spec: &'a str,
    line: u32,
    column: u32,
    end_line: u32,
    end_column: u32,
    severity: &'static str,
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    help: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    files: usize,
    skipped: usize,
    errors: usize,
    warnings: usize,
    diagnostics: Vec<JsonDiagnostic<'a>>,
}

pub fn json(out: &mut impl Write, s: &Summary, records: &[Record]) -> io::Result<()> {
    let report = JsonReport {
        files: s.files,
        skipped: s.skipped,
        errors: s.errors,
        warnings: s.warnings,
        diagnostics: records
            .iter()
            .map(|r| JsonDiagnostic {
                file: &r.file,
                spec: &r.spec,
                line: r.d.span.start.line,
                column: r.d.span.start.col,
                end_line: r.d.span.end.line,
                end_column: r.d.span.end.col,
                severity: r.d.severity.as_str(),
                code: r.d.code.as_str(),
                message: &r.d.message,
                help: r.d.help.as_deref(),
            })
            .collect(),
    };
    serde_json::to_writer(&mut *out, &report)?;
    writeln!(out)
}

// SARIF 2.1.0: the subset code-scanning consumers read.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifLog<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    version: &'static str,
    runs: Vec<SarifRun<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifRun<'a> {
    tool: SarifTool,
    results: Vec<SarifResult<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifTool {
    driver: SarifDriver,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifDriver {
    name: &'static str,
    version: &'static str,
    information_uri: &'static str,
    rules: Vec<SarifRule>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifRule {
    id: &'static str,
    name: String,
    short_description: SarifText<String>,
    default_configuration: SarifConfig,
}

#[derive(Serialize)]
struct SarifConfig {
    level: &'static str,
}

#[derive(Serialize)]
struct SarifText<T> {
    text: T,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifResult<'a> {
    rule_id: &'static str,
    rule_index: usize,
    level: &'static str,
    message: SarifText<String>,
    locations: Vec<SarifLocation<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifLocation<'a> {
    physical_location: SarifPhysical<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifPhysical<'a> {
    artifact_location: SarifArtifact<'a>,
    region: SarifRegion,
}

#[derive(Serialize)]
struct SarifArtifact<'a> {
    uri: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifRegion {
    start_line: u32,
    start_column: u32,
    end_line: u32,
    end_column: u32,
}

fn sarif_level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

pub fn sarif(out: &mut impl Write, records: &[Record]) -> io::Result<()> {
    let rules = Code::ALL
        .iter()
        .map(|c| SarifRule {
            id: c.as_str(),
            name: format!("{c:?}"),
            short_description: SarifText {
                text: c.title().to_owned(),
            },
            default_configuration: SarifConfig {
                level: sarif_level(c.severity()),
            },
        })
        .collect();
    let results = records
        .iter()
        .map(|r| SarifResult {
            rule_id: r.d.code.as_str(),
            rule_index: Code::ALL.iter().position(|c| *c == r.d.code).unwrap_or(0),
            level: sarif_level(r.d.severity),
            message: SarifText {
                text: match &r.d.help {
                    Some(h) => format!("{} (help: {h})", r.d.message),
                    None => r.d.message.clone(),
                },
            },
            locations: vec![SarifLocation {
                physical_location: SarifPhysical {
                    artifact_location: SarifArtifact { uri: &r.file },
                    region: SarifRegion {
                        start_line: r.d.span.start.line,
                        start_column: r.d.span.start.col,
                        end_line: r.d.span.end.line.max(r.d.span.start.line),
                        end_column: r.d.span.end.col,
                    },
                },
            }],
        })
        .collect();
    let log = SarifLog {
        schema: "https://json.schemastore.org/sarif-2.1.0.json",
        version: "2.1.0",
        runs: vec![SarifRun {
            tool: SarifTool {
                driver: SarifDriver {
                    name: "rollwright",
                    version: env!("CARGO_PKG_VERSION"),
                    information_uri: "https://rollwright.dev",
                    rules,
                },
            },
            results,
        }],
    };
    serde_json::to_writer(&mut *out, &log)?;
    writeln!(out)
}

/// Escapes workflow-command data (`%`, CR, LF).
fn gh_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes workflow-command properties (also `:` and `,`).
fn gh_prop(s: &str) -> String {
    gh_data(s).replace(':', "%3A").replace(',', "%2C")
}

pub fn github(out: &mut impl Write, file: &str, diags: &[Diagnostic]) -> io::Result<()> {
    for d in diags {
        let cmd = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let msg = match &d.help {
            Some(h) => format!("{} (help: {h})", d.message),
            None => d.message.clone(),
        };
        writeln!(
            out,
            "::{cmd} file={},line={},col={},endLine={},endColumn={},title={}::{}",
            gh_prop(d.file.as_deref().unwrap_or(file)),
            d.span.start.line,
            d.span.start.col,
            d.span.end.line.max(d.span.start.line),
            d.span.end.col,
            d.code,
            gh_data(&msg)
        )?;
    }
    Ok(())
}

pub fn github_summary(out: &mut impl Write, s: &Summary) -> io::Result<()> {
    writeln!(
        out,
        "rollwright lint: {} files, {} errors, {} warnings",
        s.files, s.errors, s.warnings
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollwright_engine::diag::Pos;

    fn sp(l: u32, c1: u32, c2: u32) -> Span {
        Span {
            start: Pos { line: l, col: c1 },
            end: Pos { line: l, col: c2 },
        }
    }

    #[test]
    fn redaction_hides_the_secret_and_keeps_the_caret_on_it() {
        let lines = ["a: 1", "    password: hunter2hunter2"];
        let (text, range) = line_snippet(&lines, sp(2, 5, 13), &[sp(2, 15, 29)]);
        assert_eq!(text, "    password: **************");
        assert_eq!(&text[range], "password");
    }

    #[test]
    fn github_escaping() {
        assert_eq!(gh_prop("a,b:c%"), "a%2Cb%3Ac%25");
        assert_eq!(gh_data("x\ny"), "x%0Ay");
    }
}
