//! The progress display of `run`, `resume` and `abort`: one model of the
//! run (the [`Board`]: every step's state, the current split, the last
//! analysis), three renderings of it.
//!
//! - On a terminal: one screen redrawn in place — the plan's steps as a
//!   tree with state and elapsed time, a bar and the remaining time of a
//!   hold, the split, each analysed metric against its threshold with its
//!   breach count, and the next step. Every line is cut to the terminal's
//!   width at each redraw, so a narrow or resized terminal never wraps.
//! - Otherwise (CI): one line per state change, never per poll; a hold
//!   prints its first evaluation, then every [`EVERY`]th, and each change
//!   of verdict.
//! - `--output json`: the same state changes as one JSON object per line
//!   on stdout (schema in `docs/events.md`).
//!
//! Every text passes through secret redaction first.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rollwright_engine::duration::Display;
use rollwright_engine::exec::{Event, FinalState, Observation};
use rollwright_engine::journal::scrub_line;
use serde_json::{Value, json};

/// A hold prints a summary line every this many evaluations (and on every
/// change of verdict).
pub const EVERY: u32 = 10;

/// How progress is shown.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// A live view on a terminal, one line per state change otherwise.
    Text,
    /// One JSON event per state change on stdout.
    Json,
}

enum Mode {
    Lines,
    Live(ProgressBar),
    Json,
}

/// A step of the plan, as the display shows it.
#[derive(Debug, Clone)]
pub struct PlanStep {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// Whether it changes the target (only those are "rolled back").
    pub changes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Pending,
    Running,
    Waiting,
    Retrying,
    Succeeded,
    Failed,
    Tolerated,
    Cancelled,
    RollingBack,
    RolledBack,
    RollbackFailed,
}

impl State {
    fn mark(self) -> &'static str {
        match self {
            State::Pending => "·",
            State::Running | State::Waiting => "▸",
            State::Retrying => "↻",
            State::Succeeded => "✓",
            State::Failed | State::RollbackFailed => "✗",
            State::Tolerated => "!",
            State::Cancelled => "–",
            State::RollingBack | State::RolledBack => "↺",
        }
    }

    fn word(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Waiting => "waiting",
            State::Retrying => "retrying",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Tolerated => "failed (tolerated)",
            State::Cancelled => "cancelled",
            State::RollingBack => "rolling back",
            State::RolledBack => "rolled back",
            State::RollbackFailed => "rollback FAILED",
        }
    }

    fn active(self) -> bool {
        matches!(
            self,
            State::Running | State::Waiting | State::Retrying | State::RollingBack
        )
    }
}

#[derive(Debug, Default)]
struct StepView {
    state: State,
    since: Option<Instant>,
    took: Option<Duration>,
    reason: String,
    /// The last waiting reason printed, digits removed: a new line only
    /// when what it waits for changes, not when a number does.
    shape: String,
    observation: Option<Observation>,
    evaluations: u32,
    verdicts: String,
    /// Lines mode: its start is not printed yet (a step that ends at once
    /// gets one line).
    start_pending: bool,
}

/// Everything the display knows about the run.
#[derive(Debug, Default)]
pub struct Board {
    title: String,
    plan: Vec<PlanStep>,
    steps: HashMap<String, StepView>,
    split: Option<f64>,
    canary: Option<String>,
    finished: Option<FinalState>,
    resumed: Vec<String>,
}

/// Whether an event is a state change worth a line (and a JSON event).
enum Say {
    Nothing,
    Line(String),
}

fn shape(reason: &str) -> String {
    reason.chars().filter(|c| !c.is_ascii_digit()).collect()
}

fn elapsed(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// One metric as a line: `error-rate 0.000 (stable 0.000) <= stable + 0.005 pass, 0/1 breaches`.
fn measured(m: &rollwright_engine::exec::Measurement) -> String {
    format!(
        "{} {} {} {}, {}/{} breaches",
        m.name,
        m.value_text(),
        m.threshold,
        m.verdict,
        m.breaches,
        m.limit
    )
}

impl Board {
    /// A board for a plan (`title`: the run and the model).
    #[must_use]
    pub fn new(title: String, plan: Vec<PlanStep>, canary: Option<String>) -> Self {
        Board {
            title,
            plan,
            canary,
            ..Board::default()
        }
    }

    /// Steps a resumed run completed before it was interrupted (they do
    /// not run again, so no event will say so).
    #[must_use]
    pub fn resumed(mut self, done: &[String]) -> Self {
        for id in done {
            let v = self.view(id);
            v.state = State::Succeeded;
            v.reason = "before the interruption".into();
        }
        self.resumed = done.to_vec();
        self
    }

    fn changes(&self, id: &str) -> bool {
        self.plan.iter().find(|p| p.id == id).is_none_or(|p| p.changes)
    }

    fn view(&mut self, id: &str) -> &mut StepView {
        self.steps.entry(id.to_owned()).or_default()
    }

    /// Folds an event in; says what a line-oriented output prints for it.
    fn update(&mut self, e: &Event, now: Instant) -> Say {
        match e {
            Event::Started { step, attempt } => {
                if let Some(undone) = step.strip_suffix(" (undo)") {
                    let v = self.view(undone);
                    v.state = State::RollingBack;
                    v.since = Some(now);
                    return Say::Nothing;
                }
                let v = self.view(step);
                v.state = State::Running;
                // A retry continues the step: its clock and its line go on.
                if *attempt == 1 {
                    v.since = Some(now);
                    v.start_pending = true;
                }
                Say::Nothing
            }
            Event::Waiting { step, reason, .. } => {
                let v = self.view(step);
                v.state = State::Waiting;
                v.reason.clone_from(reason);
                // A step that reports evaluations is followed by them.
                let observing = v.observation.as_ref().is_some_and(|o| !o.metrics.is_empty());
                let sh = shape(reason);
                if observing || sh == v.shape {
                    return Say::Nothing;
                }
                v.shape = sh;
                v.start_pending = false;
                Say::Line(format!("▸ {step}: {reason}"))
            }
            Event::Retrying {
                step,
                attempt,
                delay,
                error,
            } => {
                let v = self.view(step);
                v.state = State::Retrying;
                v.start_pending = false;
                Say::Line(format!(
                    "↻ {step}: attempt {attempt} failed: {error}; retrying in {}",
                    Display(*delay)
                ))
            }
            Event::Succeeded { step, .. } => {
                let v = self.view(step);
                v.state = State::Succeeded;
                v.start_pending = false;
                let took = v
                    .since
                    .map(|s| now.saturating_duration_since(s))
                    .unwrap_or_default();
                v.took = Some(took);
                let mut extra = String::new();
                if let Some(o) = &v.observation {
                    if let Some(s) = &o.split {
                        extra = format!(" — canary at {} %", s.canary_percent);
                    } else if !o.metrics.is_empty() {
                        extra = format!(" — {} evaluations within thresholds", v.evaluations);
                    }
                }
                Say::Line(format!("✓ {step}: succeeded in {}{extra}", elapsed(took)))
            }
            Event::Failed {
                step,
                error,
                tolerated,
            } => {
                let v = self.view(step);
                v.state = if *tolerated {
                    State::Tolerated
                } else {
                    State::Failed
                };
                v.start_pending = false;
                v.took = v.since.map(|s| now.saturating_duration_since(s));
                v.reason.clone_from(error);
                let how = if *tolerated { " (continue-on-failure)" } else { "" };
                Say::Line(format!("✗ {step}: failed{how}: {error}"))
            }
            Event::Cancelled { step } => {
                let v = self.view(step);
                v.state = State::Cancelled;
                v.start_pending = false;
                Say::Line(format!("– {step}: cancelled"))
            }
            Event::Recorded { step, key, value } => match key.as_str() {
                "restored" => Say::Line(format!(
                    "↺ {step}: restored {}",
                    value.as_str().unwrap_or_default()
                )),
                "gitops-commit" => {
                    let sha = value["sha"].as_str().unwrap_or_default();
                    Say::Line(format!(
                        "▸ {step}: committed {} (journaled before the push)",
                        sha.get(..8).unwrap_or(sha)
                    ))
                }
                "gitops-pushed" | "gitops-revert" => {
                    let sha = value["sha"].as_str().unwrap_or_default();
                    let what = if key == "gitops-revert" { "revert " } else { "" };
                    Say::Line(format!("▸ {step}: pushed {what}{}", sha.get(..8).unwrap_or(sha)))
                }
                _ => Say::Nothing,
            },
            Event::Compensated { step, error } => {
                if !self.changes(step) {
                    // A read-only step has nothing to undo: it keeps its state.
                    if let Some(v) = self.steps.get_mut(step)
                        && v.state == State::RollingBack
                    {
                        v.state = State::Succeeded;
                    }
                    return Say::Nothing;
                }
                let v = self.view(step);
                match error {
                    None => {
                        v.state = State::RolledBack;
                        Say::Line(format!("↺ {step}: rolled back"))
                    }
                    Some(e) => {
                        v.state = State::RollbackFailed;
                        v.reason.clone_from(e);
                        Say::Line(format!("✗ {step}: rollback FAILED: {e}"))
                    }
                }
            }
            Event::Handled { handler, error } => Say::Line(match error {
                None => format!("✓ {handler}: on-failure handler done"),
                Some(e) => format!("✗ {handler}: on-failure handler failed: {e}"),
            }),
            Event::Observed { step, observation } => {
                if let Some(s) = &observation.split {
                    self.split = Some(s.canary_percent);
                }
                let v = self.view(step);
                v.observation = Some(observation.clone());
                if observation.metrics.is_empty() {
                    return Say::Nothing;
                }
                v.evaluations += 1;
                let verdicts: String = observation
                    .metrics
                    .iter()
                    .map(|m| format!("{}={}:{};", m.name, m.verdict, m.breaches))
                    .collect();
                let changed = verdicts != v.verdicts;
                v.verdicts = verdicts;
                if !(changed || v.evaluations == 1 || v.evaluations.is_multiple_of(EVERY)) {
                    return Say::Nothing;
                }
                v.start_pending = false;
                let left = observation
                    .elapsed_ms
                    .map(|(e, t)| format!(" · {} left", Display(Duration::from_millis(t.saturating_sub(e)))))
                    .unwrap_or_default();
                let ms: Vec<String> = observation.metrics.iter().map(measured).collect();
                Say::Line(format!(
                    "▸ {step}: evaluation {}: {}{left}",
                    v.evaluations,
                    ms.join("; ")
                ))
            }
            Event::Finished { state } => {
                self.finished = Some(*state);
                Say::Nothing
            }
        }
    }

    /// The start lines not printed yet (in plan order): printed before any
    /// other step's line, so the log's order stays true.
    fn pending_starts(&mut self, except: &str) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.plan {
            if p.id == except {
                continue;
            }
            if let Some(v) = self.steps.get_mut(&p.id)
                && v.start_pending
            {
                v.start_pending = false;
                out.push(format!("▸ {}: started", p.id));
            }
        }
        out
    }

    /// The live view: one frame, every line at most `width` columns.
    #[must_use]
    pub fn frame(&self, now: Instant, width: usize) -> Vec<String> {
        let mut lines = vec![self.title.clone()];
        if let Some(p) = self.split {
            let canary = self
                .canary
                .as_deref()
                .map(|c| format!(" {c}"))
                .unwrap_or_default();
            lines.push(format!(
                "traffic: stable {} % · canary{canary} {} %",
                100.0 - p,
                p
            ));
        }
        let id_w = self
            .plan
            .iter()
            .map(|p| p.id.chars().count())
            .max()
            .unwrap_or(4)
            .min(32);
        let kind_w = self.plan.iter().map(|p| p.kind.len()).max().unwrap_or(4).min(18);
        let mut next = None;
        for p in &self.plan {
            let v = self.steps.get(&p.id);
            let state = v.map(|v| v.state).unwrap_or_default();
            let took = match v {
                Some(v) if state.active() => v.since.map(|s| elapsed(now.saturating_duration_since(s))),
                Some(v) => v.took.map(elapsed),
                None => None,
            }
            .unwrap_or_default();
            if state == State::Pending && next.is_none() && self.finished.is_none() {
                next = Some(p.id.clone());
            }
            let mut line = format!(
                "{} {:<id_w$}  {:<kind_w$}  {:>7}  {}",
                state.mark(),
                p.id,
                p.kind,
                took,
                state.word()
            );
            let Some(v) = v else {
                lines.push(line);
                continue;
            };
            if let Some((e, t)) = v
                .observation
                .as_ref()
                .and_then(|o| o.elapsed_ms)
                .filter(|_| state.active())
            {
                line.push_str(&format!(
                    "  {} {} left",
                    bar(e, t, 20),
                    Display(Duration::from_millis(t.saturating_sub(e)))
                ));
            } else if state.active() || matches!(state, State::Failed | State::RollbackFailed) {
                if !v.reason.is_empty() {
                    line.push_str(&format!(": {}", v.reason));
                }
            } else if let Some(s) = v.observation.as_ref().and_then(|o| o.split.as_ref()) {
                line.push_str(&format!(": canary at {} %", s.canary_percent));
            } else if state == State::Succeeded && v.took.is_none() && !v.reason.is_empty() {
                line.push_str(&format!(" {}", v.reason));
            }
            lines.push(line);
            if (state.active() || matches!(state, State::Failed))
                && let Some(o) = &v.observation
            {
                for m in &o.metrics {
                    lines.push(format!("    {}", measured(m)));
                }
            }
        }
        match (self.finished, next) {
            (Some(s), _) => lines.push(format!("run {}", state_name(s))),
            (None, Some(n)) => lines.push(format!("next: {n}")),
            (None, None) => {}
        }
        lines
            .into_iter()
            .map(|l| console::truncate_str(&scrub_line(&l), width.max(10), "…").into_owned())
            .collect()
    }
}

/// A text progress bar of `width` cells.
fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        usize::try_from(u128::from(done.min(total)) * width as u128 / u128::from(total)).unwrap_or(width)
    };
    format!("[{}{}]", "█".repeat(filled), "░".repeat(width - filled))
}

/// Renders executor events.
pub struct Progress {
    mode: Mode,
    board: Mutex<Board>,
    started: Instant,
}

pub fn state_name(s: FinalState) -> &'static str {
    match s {
        FinalState::Succeeded => "succeeded",
        FinalState::RolledBack => "rolled-back",
        FinalState::RollbackFailed => "rollback-failed",
    }
}

impl Progress {
    pub fn new(output: Output, board: Board) -> Self {
        let mode = match output {
            Output::Json => Mode::Json,
            Output::Text if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
                bar.set_style(
                    ProgressStyle::with_template("{msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                Mode::Live(bar)
            }
            Output::Text => Mode::Lines,
        };
        if !board.resumed.is_empty() && !matches!(mode, Mode::Live(_)) {
            let line = format!(
                "↺ resumed: {} done before the interruption",
                board.resumed.join(", ")
            );
            match mode {
                Mode::Json => println!("{}", json!({"event": "resumed", "done": board.resumed, "t": 0.0})),
                _ => eprintln!("[{:>7.1}s] {}", 0.0, scrub_line(&line)),
            }
        }
        let p = Progress {
            mode,
            board: Mutex::new(board),
            started: Instant::now(),
        };
        p.redraw();
        p
    }

    /// Redraws the live view (elapsed times move even without events).
    pub fn redraw(&self) {
        if let (Mode::Live(bar), Ok(b)) = (&self.mode, self.board.lock()) {
            let width = console::Term::stderr()
                .size_checked()
                .map_or(100, |(_, w)| usize::from(w));
            bar.set_message(b.frame(Instant::now(), width).join("\n"));
        }
    }

    /// Whether the live view is on (the caller then ticks [`redraw`](Self::redraw)).
    #[must_use]
    pub fn is_live(&self) -> bool {
        matches!(self.mode, Mode::Live(_))
    }

    /// Ends the live view, leaving its last frame on the screen.
    pub fn finish(&self) {
        self.redraw();
        if let Mode::Live(bar) = &self.mode {
            bar.finish();
        }
    }

    /// A line that is not about one step (summaries, errors).
    pub fn note(&self, line: &str) {
        let line = scrub_line(line);
        match &self.mode {
            // After the last frame, lines go below it.
            Mode::Live(bar) if bar.is_finished() => eprintln!("{line}"),
            Mode::Live(bar) => bar.suspend(|| eprintln!("{line}")),
            Mode::Lines | Mode::Json => eprintln!("{line}"),
        }
    }

    pub fn event(&self, e: &Event) {
        let t = self.started.elapsed().as_secs_f64();
        let Ok(mut board) = self.board.lock() else { return };
        let said = board.update(e, Instant::now());
        match &self.mode {
            Mode::Live(_) => {
                drop(board);
                self.redraw();
            }
            Mode::Json => {
                let print = match e {
                    Event::Started { .. } | Event::Finished { .. } => true,
                    Event::Recorded { .. } => true,
                    _ => matches!(said, Say::Line(_)),
                };
                if print {
                    println!("{}", scrub_line(&json_of(e, t).to_string()));
                }
            }
            Mode::Lines => {
                let Say::Line(line) = said else { return };
                let step = step_of(e);
                for l in board.pending_starts(step) {
                    eprintln!("[{t:>7.1}s] {}", scrub_line(&l));
                }
                eprintln!("[{t:>7.1}s] {}", scrub_line(&line));
            }
        }
    }
}

fn step_of(e: &Event) -> &str {
    match e {
        Event::Started { step, .. }
        | Event::Waiting { step, .. }
        | Event::Retrying { step, .. }
        | Event::Succeeded { step, .. }
        | Event::Failed { step, .. }
        | Event::Cancelled { step }
        | Event::Recorded { step, .. }
        | Event::Compensated { step, .. }
        | Event::Observed { step, .. } => step,
        Event::Handled { handler, .. } => handler,
        Event::Finished { .. } => "",
    }
}

fn json_of(e: &Event, t: f64) -> Value {
    let ms = |d: &Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut v = match e {
        Event::Started { step, attempt } => json!({"event": "started", "step": step, "attempt": attempt}),
        Event::Waiting { step, after, reason } => {
            json!({"event": "waiting", "step": step, "after_ms": ms(after), "reason": reason})
        }
        Event::Retrying {
            step,
            attempt,
            delay,
            error,
        } => {
            json!({"event": "retrying", "step": step, "attempt": attempt, "delay_ms": ms(delay), "error": error})
        }
        Event::Succeeded { step, outputs } => json!({"event": "succeeded", "step": step, "outputs": outputs}),
        Event::Failed {
            step,
            error,
            tolerated,
        } => json!({"event": "failed", "step": step, "error": error, "tolerated": tolerated}),
        Event::Cancelled { step } => json!({"event": "cancelled", "step": step}),
        Event::Recorded { step, key, value } if key == "restored" => {
            json!({"event": "restored", "step": step, "what": value})
        }
        Event::Recorded { step, key, .. } => json!({"event": "recorded", "step": step, "key": key}),
        Event::Compensated { step, error } => json!({"event": "compensated", "step": step, "error": error}),
        Event::Handled { handler, error } => json!({"event": "handled", "handler": handler, "error": error}),
        Event::Observed { step, observation } => {
            json!({"event": "observed", "step": step, "observation": observation})
        }
        Event::Finished { state } => json!({"event": "finished", "state": state_name(*state)}),
    };
    v["t"] = json!((t * 1000.0).round() / 1000.0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollwright_engine::exec::{Measurement, Split};

    fn board() -> Board {
        let plan = [
            ("gate", "gate-check", false),
            ("shift", "shift-traffic", true),
            ("hold", "hold", false),
        ]
        .iter()
        .map(|(i, k, c)| PlanStep {
            id: (*i).into(),
            kind: (*k).into(),
            changes: *c,
        })
        .collect();
        Board::new("rollout r · model m v7".into(), plan, Some("v7".into()))
    }

    fn obs(verdict: &str, breaches: u32) -> Event {
        Event::Observed {
            step: "hold".into(),
            observation: Observation {
                metrics: vec![Measurement {
                    name: "error-rate".into(),
                    value: Some(0.001),
                    baseline: Some(0.0),
                    threshold: "<= stable + 0.005".into(),
                    upper: Some(0.005),
                    lower: None,
                    verdict: verdict.into(),
                    breaches,
                    limit: 3,
                }],
                split: None,
                elapsed_ms: Some((1_000, 4_000)),
            },
        }
    }

    fn lines(b: &mut Board, events: &[Event]) -> Vec<String> {
        let now = Instant::now();
        let mut out = Vec::new();
        for e in events {
            if let Say::Line(l) = b.update(e, now) {
                out.extend(b.pending_starts(step_of(e)));
                out.push(l);
            }
        }
        out
    }

    #[test]
    fn polls_print_nothing_and_a_hold_prints_its_verdict_changes_and_every_tenth_evaluation() {
        let mut b = board();
        let mut events = vec![Event::Started {
            step: "hold".into(),
            attempt: 1,
        }];
        for i in 0..25 {
            events.push(obs(if i == 12 { "breach" } else { "pass" }, u32::from(i == 12)));
            events.push(Event::Waiting {
                step: "hold".into(),
                after: Duration::from_millis(100),
                reason: format!("holding {i}s more"),
            });
        }
        let out = lines(&mut b, &events);
        let evals: Vec<&str> = out
            .iter()
            .map(|l| l.split(':').nth(1).unwrap_or_default().trim())
            .collect();
        assert_eq!(
            evals,
            [
                "evaluation 1",
                "evaluation 10",
                "evaluation 13",
                "evaluation 14",
                "evaluation 20"
            ],
            "{out:#?}"
        );
    }

    #[test]
    fn a_step_that_ends_at_once_is_one_line_and_a_wait_is_printed_once_per_reason() {
        let mut b = board();
        let out = lines(
            &mut b,
            &[
                Event::Started {
                    step: "gate".into(),
                    attempt: 1,
                },
                Event::Succeeded {
                    step: "gate".into(),
                    outputs: serde_json::Map::new(),
                },
                Event::Started {
                    step: "shift".into(),
                    attempt: 1,
                },
                Event::Waiting {
                    step: "shift".into(),
                    after: Duration::from_millis(100),
                    reason: "route to serve 5 % to the canary".into(),
                },
                Event::Waiting {
                    step: "shift".into(),
                    after: Duration::from_millis(100),
                    reason: "route to serve 5 % to the canary".into(),
                },
                Event::Observed {
                    step: "shift".into(),
                    observation: Observation {
                        split: Some(Split {
                            canary_percent: 5.0,
                            route: "r".into(),
                        }),
                        ..Observation::default()
                    },
                },
                Event::Succeeded {
                    step: "shift".into(),
                    outputs: serde_json::Map::new(),
                },
                Event::Compensated {
                    step: "gate".into(),
                    error: None,
                },
            ],
        );
        assert_eq!(out.len(), 3, "{out:#?}");
        assert!(out[0].starts_with("✓ gate: succeeded in"), "{out:#?}");
        assert_eq!(out[1], "▸ shift: route to serve 5 % to the canary");
        assert!(out[2].ends_with("— canary at 5 %"), "{out:#?}");
    }

    #[test]
    fn every_line_of_the_live_view_fits_the_terminal() {
        let mut b = board();
        let now = Instant::now();
        for e in [
            Event::Started {
                step: "shift".into(),
                attempt: 1,
            },
            Event::Observed {
                step: "shift".into(),
                observation: Observation {
                    split: Some(Split {
                        canary_percent: 5.0,
                        route: "r".into(),
                    }),
                    ..Observation::default()
                },
            },
            Event::Succeeded {
                step: "shift".into(),
                outputs: serde_json::Map::new(),
            },
            Event::Started {
                step: "hold".into(),
                attempt: 1,
            },
            obs("pass", 0),
        ] {
            b.update(&e, now);
        }
        for width in [12, 40, 200] {
            let f = b.frame(now, width);
            assert!(
                f.iter().all(|l| console::measure_text_width(l) <= width),
                "{width}: {f:#?}"
            );
        }
        let f = b.frame(now, 200);
        assert!(
            f.iter().any(|l| l == "traffic: stable 95 % · canary v7 5 %"),
            "{f:#?}"
        );
        assert!(
            f.iter().any(|l| l.contains("[█████░░░░░░░░░░░░░░░] 3s left")),
            "{f:#?}"
        );
        assert!(
            f.iter().any(|l| l
                .trim_start()
                .starts_with("error-rate 0.0010 (stable 0.000) <= stable + 0.005 pass, 0/3 breaches")),
            "{f:#?}"
        );
        assert!(f.iter().any(|l| l.starts_with("· gate")), "{f:#?}");
    }
}
