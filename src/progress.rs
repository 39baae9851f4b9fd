//! The progress display of `run`, `resume` and `abort`: one event stream,
//! three renderings. On a terminal, a live line per step (indicatif) with
//! its state, attempt and what it waits for; otherwise plain timestamped
//! lines on stderr; with `--output json`, one JSON object per event on
//! stdout. Every text passes through secret redaction first.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rollwright_engine::duration::Display;
use rollwright_engine::exec::{Event, FinalState};
use rollwright_engine::journal::scrub_line;
use serde_json::{Value, json};

/// How progress is shown.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Live lines on a terminal, plain lines otherwise.
    Text,
    /// One JSON event per line on stdout.
    Json,
}

enum Mode {
    Lines,
    Live(MultiProgress),
    Json,
}

/// Renders executor events.
pub struct Progress {
    mode: Mode,
    bars: Mutex<HashMap<String, ProgressBar>>,
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
    pub fn new(output: Output) -> Self {
        let mode = match output {
            Output::Json => Mode::Json,
            Output::Text if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() => {
                Mode::Live(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
            }
            Output::Text => Mode::Lines,
        };
        Progress {
            mode,
            bars: Mutex::default(),
            started: Instant::now(),
        }
    }

    /// A line that is not about one step (summaries, errors).
    pub fn note(&self, line: &str) {
        let line = scrub_line(line);
        match &self.mode {
            Mode::Live(m) => {
                let _ = m.println(line);
            }
            Mode::Lines | Mode::Json => eprintln!("{line}"),
        }
    }

    pub fn event(&self, e: &Event) {
        let t = self.started.elapsed().as_secs_f64();
        match &self.mode {
            Mode::Json => println!("{}", scrub_line(&json_of(e, t).to_string())),
            Mode::Lines => eprintln!("[{t:>7.1}s] {}", scrub_line(&describe(e))),
            Mode::Live(m) => self.live(m, e),
        }
    }

    fn live(&self, m: &MultiProgress, e: &Event) {
        let Ok(mut bars) = self.bars.lock() else { return };
        let (step, msg, done) = match e {
            Event::Started { step, attempt } => (step, format!("running (attempt {attempt})"), None),
            Event::Waiting { step, after, reason } => {
                (step, format!("{reason}; next check in {}", Display(*after)), None)
            }
            Event::Retrying {
                step,
                attempt,
                delay,
                error,
            } => (
                step,
                format!(
                    "attempt {attempt} failed: {error}; retrying in {}",
                    Display(*delay)
                ),
                None,
            ),
            Event::Succeeded { step, .. } => (step, "succeeded".into(), Some(true)),
            Event::Failed {
                step,
                error,
                tolerated,
            } => (
                step,
                format!("failed{}: {error}", if *tolerated { " (tolerated)" } else { "" }),
                Some(false),
            ),
            Event::Cancelled { step } => (step, "cancelled".into(), Some(false)),
            other => {
                let _ = m.println(scrub_line(&describe(other)));
                return;
            }
        };
        let bar = bars.entry(step.clone()).or_insert_with(|| {
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<24} {elapsed:>5} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_prefix(step.clone());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        let msg = scrub_line(&msg);
        match done {
            None => bar.set_message(msg),
            Some(ok) => bar.finish_with_message(format!("{} {msg}", if ok { "✓" } else { "✗" })),
        }
    }
}

pub fn describe(e: &Event) -> String {
    match e {
        Event::Started { step, attempt } => format!("{step}: started (attempt {attempt})"),
        Event::Waiting { step, after, reason } => format!("{step}: waiting {} ({reason})", Display(*after)),
        Event::Retrying {
            step,
            attempt,
            delay,
            error,
        } => {
            format!(
                "{step}: attempt {attempt} failed: {error}; retrying in {}",
                Display(*delay)
            )
        }
        Event::Succeeded { step, .. } => format!("{step}: succeeded"),
        Event::Failed {
            step,
            error,
            tolerated,
        } => {
            format!(
                "{step}: failed{}: {error}",
                if *tolerated { " (continue-on-failure)" } else { "" }
            )
        }
        Event::Cancelled { step } => format!("{step}: cancelled"),
        Event::Recorded { step, key, value } if key == "restored" => {
            format!("{step}: restored {}", value.as_str().unwrap_or_default())
        }
        Event::Recorded { step, key, value } if key == "gitops-commit" => {
            let sha = value["sha"].as_str().unwrap_or_default();
            format!(
                "{step}: committed {} (journaled before the push)",
                sha.get(..8).unwrap_or(sha)
            )
        }
        Event::Recorded { step, key, value } if key == "gitops-pushed" || key == "gitops-revert" => {
            let sha = value["sha"].as_str().unwrap_or_default();
            let what = if key == "gitops-revert" { "revert " } else { "" };
            format!("{step}: pushed {what}{}", sha.get(..8).unwrap_or(sha))
        }
        Event::Recorded { step, key, .. } => {
            format!("{step}: recorded {key} (journaled before changing anything)")
        }
        Event::Compensated { step, error: None } => format!("{step}: compensated"),
        Event::Compensated { step, error: Some(e) } => format!("{step}: compensation FAILED: {e}"),
        Event::Handled { handler, error: None } => format!("{handler}: on-failure handler done"),
        Event::Handled {
            handler,
            error: Some(e),
        } => format!("{handler}: on-failure handler failed: {e}"),
        Event::Finished { state } => format!("run {}", state_name(*state)),
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
        Event::Finished { state } => json!({"event": "finished", "state": state_name(*state)}),
    };
    v["t"] = json!((t * 1000.0).round() / 1000.0);
    v
}
