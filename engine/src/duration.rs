//! Durations as specs write them: `500ms`, `30s`, `10m`, `1h30m`, `2d`.
//!
//! The grammar is deliberately strict (units from largest to smallest, each
//! at most once, integers only, no spaces) so that one duration has one
//! spelling in a monorepo and a typo such as `10` (no unit) or `1.5h` is an
//! error with a fix in the message, rather than a surprise at run time.
//! `humantime` accepts far more (`1hour 5min`), which is why it is not used.

use std::fmt;
use std::time::Duration;

/// Why a duration did not parse. The `Display` text is the user-facing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing to parse.
    #[error("empty duration: write e.g. `30s`, `10m` or `1h30m`")]
    Empty,
    /// A number without a unit.
    #[error("missing unit in `{0}`: write e.g. `{0}s` or `{0}m`")]
    MissingUnit(String),
    /// An unknown unit.
    #[error("unknown unit `{unit}` in `{text}`: use ms, s, m, h or d")]
    UnknownUnit {
        /// The whole input.
        text: String,
        /// The unit found.
        unit: String,
    },
    /// A fraction (`1.5h`).
    #[error("fractions are not supported in `{0}`: combine units instead, e.g. `1h30m`")]
    Fraction(String),
    /// Units not in descending order, or repeated.
    #[error("units out of order or repeated in `{0}`: write larger units first, each once, e.g. `1h30m`")]
    Order(String),
    /// A sign, space or other stray character.
    #[error("unexpected `{ch}` in `{text}`: a duration is digits followed by a unit, e.g. `1h30m`")]
    Unexpected {
        /// The whole input.
        text: String,
        /// The offending character.
        ch: char,
    },
    /// Longer than [`MAX`] (and so too large for any deadline or hold).
    #[error("duration `{0}` is longer than 366d, the longest rollwright accepts")]
    Overflow(String),
}

/// The longest duration a spec may write: a year and a day. Anything longer
/// is a typo, and would overflow deadlines.
pub const MAX: Duration = Duration::from_secs(366 * 86_400);

/// Parses a duration in the spec grammar.
///
/// # Errors
/// [`DurationError`] with a message that says how to write it.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let b = text.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    let mut last_rank = usize::MAX;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            let ch = text[i..].chars().next().unwrap_or(' ');
            return Err(DurationError::Unexpected {
                text: text.into(),
                ch,
            });
        }
        let n: u64 = text[start..i]
            .parse()
            .map_err(|_| DurationError::Overflow(text.into()))?;
        if i < b.len() && b[i] == b'.' {
            return Err(DurationError::Fraction(text.into()));
        }
        let u_start = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &text[u_start..i];
        let (rank, ms) = match unit {
            "" => return Err(DurationError::MissingUnit(text.into())),
            "d" => (0, 86_400_000),
            "h" => (1, 3_600_000),
            "m" => (2, 60_000),
            "s" => (3, 1_000),
            "ms" => (4, 1),
            _ => {
                return Err(DurationError::UnknownUnit {
                    text: text.into(),
                    unit: unit.into(),
                });
            }
        };
        if last_rank != usize::MAX && rank <= last_rank {
            return Err(DurationError::Order(text.into()));
        }
        last_rank = rank;
        total = n
            .checked_mul(ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| DurationError::Overflow(text.into()))?;
    }
    let d = Duration::from_millis(total);
    if d > MAX {
        return Err(DurationError::Overflow(text.into()));
    }
    Ok(d)
}

/// Formats a duration in the spec grammar (`1h30m`, `500ms`, `0s`).
pub struct Display(pub Duration);

impl fmt::Display for Display {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good() {
        for (t, ms) in [
            ("30s", 30_000),
            ("10m", 600_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("1m30s500ms", 90_500),
            ("2d", 172_800_000),
            ("0s", 0),
        ] {
            assert_eq!(parse(t), Ok(Duration::from_millis(ms)), "{t}");
            assert_eq!(Display(Duration::from_millis(ms)).to_string(), t);
        }
    }

    #[test]
    fn bad_with_exact_messages() {
        let table = [
            ("", "empty duration: write e.g. `30s`, `10m` or `1h30m`"),
            ("10", "missing unit in `10`: write e.g. `10s` or `10m`"),
            ("10x", "unknown unit `x` in `10x`: use ms, s, m, h or d"),
            ("5min", "unknown unit `min` in `5min`: use ms, s, m, h or d"),
            (
                "1.5h",
                "fractions are not supported in `1.5h`: combine units instead, e.g. `1h30m`",
            ),
            (
                "30m1h",
                "units out of order or repeated in `30m1h`: write larger units first, each once, e.g. `1h30m`",
            ),
            (
                "1m1m",
                "units out of order or repeated in `1m1m`: write larger units first, each once, e.g. `1h30m`",
            ),
            (
                "-5s",
                "unexpected `-` in `-5s`: a duration is digits followed by a unit, e.g. `1h30m`",
            ),
            (
                "1h 30m",
                "unexpected ` ` in `1h 30m`: a duration is digits followed by a unit, e.g. `1h30m`",
            ),
            (
                "99999999999999999999s",
                "duration `99999999999999999999s` is longer than 366d, the longest rollwright accepts",
            ),
        ];
        for (input, msg) in table {
            assert_eq!(parse(input).unwrap_err().to_string(), msg, "{input:?}");
        }
    }
}
