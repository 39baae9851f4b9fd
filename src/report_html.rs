//! `rollwright report RUN --format html`: the report as one self-contained
//! page (no script, no external file) — the traffic split over time and
//! each analysed metric over time against its threshold as inline SVG, the
//! rollback moment marked on every chart, then the report's five sections.

use std::fmt::Write as _;

use rollwright_engine::report::Report;

const W: f64 = 720.0;
const H: f64 = 180.0;
const PAD_L: f64 = 56.0;
const PAD_B: f64 = 26.0;
const PAD_T: f64 = 12.0;

/// Text safe in HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The time axis: from the run's start to its end (or the last point).
struct Axis {
    t0: u64,
    t1: u64,
}

impl Axis {
    fn x(&self, t: u64) -> f64 {
        let span = self.t1.saturating_sub(self.t0).max(1) as f64;
        PAD_L + (t.saturating_sub(self.t0) as f64 / span) * (W - PAD_L - 8.0)
    }

    fn label(&self, t: u64) -> String {
        let d = std::time::Duration::from_millis(t.saturating_sub(self.t0));
        format!("+{}", rollwright_engine::duration::Display(d))
    }
}

fn y(v: f64, lo: f64, hi: f64) -> f64 {
    let span = (hi - lo).max(f64::EPSILON);
    PAD_T + (1.0 - (v - lo) / span) * (H - PAD_T - PAD_B)
}

/// The frame of a chart: axes, y labels, x labels at both ends, and the
/// rollback moment.
fn frame(out: &mut String, title: &str, axis: &Axis, lo: f64, hi: f64, unit: &str, rollback: Option<u64>) {
    let _ = write!(
        out,
        r##"<figure><figcaption>{}</figcaption><svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}">"##,
        esc(title),
        esc(title)
    );
    let _ = write!(
        out,
        r##"<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{}" class="axis"/><line x1="{PAD_L}" y1="{}" x2="{}" y2="{}" class="axis"/>"##,
        H - PAD_B,
        H - PAD_B,
        W - 8.0,
        H - PAD_B
    );
    for v in [lo, (lo + hi) / 2.0, hi] {
        let _ = write!(
            out,
            r##"<text x="{}" y="{:.1}" class="tick" text-anchor="end">{}{unit}</text>"##,
            PAD_L - 4.0,
            y(v, lo, hi) + 4.0,
            trim(v)
        );
    }
    let _ = write!(
        out,
        r##"<text x="{PAD_L}" y="{}" class="tick">{}</text><text x="{}" y="{}" class="tick" text-anchor="end">{}</text>"##,
        H - 8.0,
        axis.label(axis.t0),
        W - 8.0,
        H - 8.0,
        axis.label(axis.t1)
    );
    if let Some(t) = rollback {
        let x = axis.x(t);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{PAD_T}" x2="{x:.1}" y2="{}" class="rollback"/><text x="{:.1}" y="{}" class="rollback-label">rollback {}</text>"##,
            H - PAD_B,
            x + 3.0,
            PAD_T + 10.0,
            axis.label(t)
        );
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// One evaluation of one metric.
struct Point {
    at: u64,
    value: Option<f64>,
    /// Upper and lower threshold at that evaluation.
    bounds: [Option<f64>; 2],
    breach: bool,
}

/// The page.
#[must_use]
pub fn render(report: &Report) -> String {
    let end = report
        .summary
        .finished_ms
        .or_else(|| report.traffic.last().map(|t| t.0))
        .unwrap_or(report.summary.started_ms + 1);
    let axis = Axis {
        t0: report.summary.started_ms,
        t1: end.max(report.summary.started_ms + 1),
    };
    let rollback = report
        .rollback
        .failure
        .as_ref()
        .map(|_| report.rollback.failed_ms)
        .filter(|t| *t > 0);
    let mut charts = String::new();
    // Traffic: a step line from 0 % at the start.
    frame(
        &mut charts,
        "Canary traffic share",
        &axis,
        0.0,
        100.0,
        " %",
        rollback,
    );
    let mut pts = vec![(axis.t0, 0.0)];
    for (t, p) in &report.traffic {
        let last = pts.last().map_or(0.0, |l| l.1);
        pts.push((*t, last));
        pts.push((*t, *p));
    }
    pts.push((axis.t1, pts.last().map_or(0.0, |l| l.1)));
    let line: Vec<String> = pts
        .iter()
        .map(|(t, p)| format!("{:.1},{:.1}", axis.x(*t), y(*p, 0.0, 100.0)))
        .collect();
    let _ = write!(
        charts,
        r##"<polyline points="{}" class="traffic"/></svg></figure>"##,
        line.join(" ")
    );
    // Each metric of each hold, against its threshold.
    for check in &report.verification {
        let Some(first) = check.evaluations.first() else {
            continue;
        };
        for (i, m) in first.metrics.iter().enumerate() {
            let series: Vec<Point> = check
                .evaluations
                .iter()
                .filter_map(|e| {
                    e.metrics.get(i).map(|x| Point {
                        at: e.at_ms,
                        value: x.value,
                        bounds: [x.upper, x.lower],
                        breach: x.verdict == "breach",
                    })
                })
                .collect();
            let values = series
                .iter()
                .flat_map(|p| [p.value, p.bounds[0], p.bounds[1]])
                .flatten();
            let hi = values.clone().fold(f64::MIN, f64::max).max(0.0);
            let lo = values.fold(f64::MAX, f64::min).min(0.0);
            let hi = if hi <= lo { lo + 1.0 } else { hi * 1.1 };
            let title = format!("{} — {} ({})", check.step.id, m.name, m.threshold);
            frame(&mut charts, &title, &axis, lo, hi, "", rollback);
            for bound in 0..2 {
                let pts: Vec<String> = series
                    .iter()
                    .filter_map(|p| {
                        p.bounds[bound].map(|b| format!("{:.1},{:.1}", axis.x(p.at), y(b, lo, hi)))
                    })
                    .collect();
                if !pts.is_empty() {
                    let _ = write!(
                        charts,
                        r##"<polyline points="{}" class="threshold"/>"##,
                        pts.join(" ")
                    );
                }
            }
            let pts: Vec<String> = series
                .iter()
                .filter_map(|p| {
                    p.value
                        .map(|v| format!("{:.1},{:.1}", axis.x(p.at), y(v, lo, hi)))
                })
                .collect();
            let _ = write!(
                charts,
                r##"<polyline points="{}" class="value"/>"##,
                pts.join(" ")
            );
            for s in series.iter().filter(|p| p.breach) {
                if let Some(v) = s.value {
                    let _ = write!(
                        charts,
                        r##"<circle cx="{:.1}" cy="{:.1}" r="4" class="breach"><title>breach: {}</title></circle>"##,
                        axis.x(s.at),
                        y(v, lo, hi),
                        trim(v)
                    );
                }
            }
            charts.push_str("</svg></figure>");
        }
    }
    let md = report.to_markdown();
    // The title and the banner first, then the summary and the charts, then the sections.
    let (head, rest) = md.split_at(md.find("\n## Plan").unwrap_or(0));
    let head = format!("{head}\n\n**Summary:** {}\n", report.summary.text);
    let (head, body) = (markdown(&head), markdown(rest));
    format!(
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Rollout report: {title}</title>
<style>{STYLE}</style></head><body>
{head}<section id="charts"><h2>Over time</h2>
<p>Blue: the canary's share of traffic. Green: a metric's value at each evaluation; dashed orange: its threshold; red dots: breaches; red line: the rollback.</p>
{charts}</section>
{body}</body></html>
"##,
        title = esc(&report.run),
    )
}

const STYLE: &str = "
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #1b1f24; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #d0d7de; padding: .2em .5em; }
code { background: #f3f4f6; padding: 0 .2em; } blockquote { background: #fff8c5; margin: 0; padding: .5em 1em; }
figure { margin: 1em 0; } figcaption { font-weight: 600; margin-bottom: .3em; }
svg { background: #fafbfc; border: 1px solid #d0d7de; }
.axis { stroke: #57606a; stroke-width: 1; } .tick { font-size: 11px; fill: #57606a; }
.traffic { fill: none; stroke: #0969da; stroke-width: 2.5; }
.value { fill: none; stroke: #1a7f37; stroke-width: 2; }
.threshold { fill: none; stroke: #bc4c00; stroke-width: 1.5; stroke-dasharray: 5 4; }
.breach { fill: #cf222e; } .rollback { stroke: #cf222e; stroke-width: 2; }
.rollback-label { font-size: 11px; fill: #cf222e; }
";

/// Markdown as HTML. Raw HTML in it (an error message, a model name) is
/// shown as text, never interpreted: the page has no way to run anything.
fn markdown(md: &str) -> String {
    let mut out = String::new();
    use pulldown_cmark::{Event, Tag, TagEnd};
    // Links and images in a message are not followed or fetched either:
    // their text stays, their target goes.
    let parser =
        pulldown_cmark::Parser::new_ext(md, pulldown_cmark::Options::ENABLE_TABLES).filter_map(|e| match e {
            Event::Html(h) | Event::InlineHtml(h) => Some(Event::Text(h)),
            Event::Start(Tag::Link { .. } | Tag::Image { .. }) | Event::End(TagEnd::Link | TagEnd::Image) => {
                None
            }
            other => Some(other),
        });
    pulldown_cmark::html::push_html(&mut out, parser);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn html_in_a_message_is_text() {
        let html = super::markdown(
            "- failed: <script>alert(1)</script> <img src=x onerror=alert(2)> [click](javascript:alert(3)) ![x](http://tracker/p.png)\n\n<iframe src=\"http://x\"></iframe>\n",
        );
        for bad in ["<script", "<img", "<iframe", "<a ", "javascript:"] {
            assert!(!html.contains(bad), "{bad}: {html}");
        }
        assert!(html.contains("click"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
    }
}
