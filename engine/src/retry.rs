//! Retry policies: `retry: 3` or
//! `retry: {attempts, backoff: constant|exponential, initial, max, jitter}`.
//!
//! The shape is checked by the JSON Schema; this module owns the meaning:
//! defaults, duration parsing and the cross-field rules a schema cannot say
//! ("max cannot be less than initial"). `attempts` counts every try, the
//! first included, so `retry: 1` means "no retry".

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::duration;

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// The same delay (`initial`) every time.
    Constant,
    /// `initial`, doubled after each attempt, capped at `max`.
    #[default]
    Exponential,
}

/// A validated retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries, the first included (≥ 1).
    pub attempts: u32,
    /// Growth of the delay.
    pub backoff: Backoff,
    /// First delay.
    pub initial: Duration,
    /// Largest delay (exponential only).
    pub max: Duration,
    /// Randomise each delay (full jitter) so that parallel runs spread out.
    pub jitter: bool,
}

/// Default first delay.
pub const DEFAULT_INITIAL: Duration = Duration::from_secs(1);
/// Default cap.
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            backoff: Backoff::Exponential,
            initial: DEFAULT_INITIAL,
            max: DEFAULT_MAX,
            jitter: true,
        }
    }
}

/// The serde shadow of the long form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    attempts: Option<u32>,
    backoff: Option<Backoff>,
    initial: Option<String>,
    max: Option<String>,
    jitter: Option<bool>,
}

/// A problem in a retry policy, at a field relative to the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryError {
    /// JSON pointer relative to the `retry` value (`""`, `/max`, …).
    pub pointer: &'static str,
    /// The message.
    pub message: String,
}

impl RetryPolicy {
    /// Parses a `retry` value. All problems are returned, not only the first.
    ///
    /// # Errors
    /// Each problem with the field it concerns.
    pub fn from_value(v: &Value) -> Result<RetryPolicy, Vec<RetryError>> {
        let err = |pointer, message: String| RetryError { pointer, message };
        if let Some(n) = v.as_u64() {
            return match u32::try_from(n) {
                Ok(attempts) if attempts >= 1 => Ok(RetryPolicy {
                    attempts,
                    ..RetryPolicy::default()
                }),
                _ => Err(vec![err(
                    "",
                    format!("retry attempts must be between 1 and {}, found {n}", u32::MAX),
                )]),
            };
        }
        let raw: Raw = match Raw::deserialize(v) {
            Ok(r) => r,
            Err(e) => {
                return Err(vec![err(
                    "",
                    format!(
                        "retry must be a number of attempts or {{attempts, backoff, initial, max, jitter}}: {e}"
                    ),
                )]);
            }
        };
        let mut errors = Vec::new();
        let mut policy = RetryPolicy {
            attempts: raw.attempts.unwrap_or(3),
            backoff: raw.backoff.unwrap_or_default(),
            jitter: raw.jitter.unwrap_or(true),
            ..RetryPolicy::default()
        };
        if policy.attempts == 0 {
            errors.push(err(
                "/attempts",
                "retry attempts must be at least 1 (1 means no retry)".into(),
            ));
        }
        if let Some(s) = &raw.initial {
            match duration::parse(s) {
                Ok(d) => policy.initial = d,
                Err(e) => errors.push(err("/initial", format!("invalid `initial`: {e}"))),
            }
        }
        if let Some(s) = &raw.max {
            match duration::parse(s) {
                Ok(d) => policy.max = d,
                Err(e) => errors.push(err("/max", format!("invalid `max`: {e}"))),
            }
            if policy.backoff == Backoff::Constant {
                errors.push(err(
                    "/max",
                    "`max` only applies to exponential backoff; a constant backoff always waits `initial`"
                        .into(),
                ));
            }
        } else if policy.initial > policy.max {
            policy.max = policy.initial;
        }
        if errors.is_empty() && policy.max < policy.initial {
            errors.push(err(
                "/max",
                format!(
                    "`max` ({}) cannot be less than `initial` ({})",
                    duration::Display(policy.max),
                    duration::Display(policy.initial)
                ),
            ));
        }
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(errors)
        }
    }

    /// The delay before attempt `n + 1`, after `n` failed attempts (n ≥ 1),
    /// before jitter.
    #[must_use]
    pub fn delay_after(&self, failed: u32) -> Duration {
        match self.backoff {
            Backoff::Constant => self.initial,
            Backoff::Exponential => {
                let factor = 2u32.saturating_pow(failed.saturating_sub(1));
                self.initial.saturating_mul(factor).min(self.max)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shorthand_and_defaults() {
        let p = RetryPolicy::from_value(&json!(3)).unwrap();
        assert_eq!(p.attempts, 3);
        assert_eq!(p.backoff, Backoff::Exponential);
        let p = RetryPolicy::from_value(&json!({"backoff": "exponential", "initial": "2s", "max": "1m"}))
            .unwrap();
        assert_eq!(p.attempts, 3);
        assert_eq!(p.delay_after(1), Duration::from_secs(2));
        assert_eq!(p.delay_after(3), Duration::from_secs(8));
        assert_eq!(p.delay_after(10), Duration::from_secs(60));
        let p = RetryPolicy::from_value(&json!({"initial": "1m"})).unwrap();
        assert_eq!(p.max, Duration::from_secs(60), "max follows a large initial");
    }

    #[test]
    fn bad_inputs_with_exact_messages() {
        let table = [
            (
                json!(0),
                "",
                "retry attempts must be between 1 and 4294967295, found 0",
            ),
            (
                json!({"attempts": 0}),
                "/attempts",
                "retry attempts must be at least 1 (1 means no retry)",
            ),
            (
                json!({"initial": "5s", "max": "1s"}),
                "/max",
                "`max` (1s) cannot be less than `initial` (5s)",
            ),
            (
                json!({"initial": "5"}),
                "/initial",
                "invalid `initial`: missing unit in `5`: write e.g. `5s` or `5m`",
            ),
            (
                json!({"backoff": "constant", "max": "1m"}),
                "/max",
                "`max` only applies to exponential backoff; a constant backoff always waits `initial`",
            ),
        ];
        for (input, ptr, msg) in table {
            let e = RetryPolicy::from_value(&input).unwrap_err();
            assert_eq!(e[0].pointer, ptr, "{input}");
            assert_eq!(e[0].message, msg, "{input}");
        }
    }
}
