//! The command line's one error type. It owns the documented exit codes
//! ([`crate::exit`]): a command returns `Ok(code)` for an outcome (a run that
//! succeeded, rolled back, …) and `Err(CliError)` when it could not do what
//! it was asked; `main` prints the error and its causes once and exits with
//! the error's code. Call sites say *what* went wrong, never which number.

use std::error::Error;
use std::fmt;

use crate::exit;

/// What kind of failure, which decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad arguments, a missing or unreadable file, another I/O error.
    Usage,
    /// The spec has errors (already printed as located diagnostics).
    Findings,
    /// Refused before any change: nothing on the target was changed.
    Refused,
    /// The run's state cannot be trusted or written.
    State,
    /// Another run holds the target.
    Locked,
}

/// A command that could not do what it was asked. An empty message means
/// the failure was already shown (lint's findings, a file's diagnostics):
/// only the exit code is left to give.
#[derive(Debug)]
pub struct CliError {
    kind: Kind,
    message: String,
    source: Option<Box<dyn Error + Send + Sync>>,
}

/// A command's result: the exit code of its outcome, or why it failed.
pub type CliResult<T = u8> = Result<T, CliError>;

impl CliError {
    fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }
    /// Bad arguments or input, or an I/O error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Kind::Usage, message)
    }
    /// The spec has errors, already shown (exit 1).
    pub fn findings(message: impl Into<String>) -> Self {
        Self::new(Kind::Findings, message)
    }
    /// Refused before any change (exit 5).
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(Kind::Refused, message)
    }
    /// State that cannot be trusted or written (exit 6).
    pub fn state(message: impl Into<String>) -> Self {
        Self::new(Kind::State, message)
    }
    /// The target is held by another run (exit 7).
    pub fn locked(message: impl Into<String>) -> Self {
        Self::new(Kind::Locked, message)
    }
    /// The error that caused this one, printed after it.
    #[must_use]
    pub fn because(mut self, cause: impl Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(cause));
        self
    }
    /// The documented exit code of this failure.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            Kind::Usage => exit::USAGE,
            Kind::Findings => exit::FINDINGS,
            Kind::Refused => exit::REFUSED,
            Kind::State => exit::STATE,
            Kind::Locked => exit::LOCKED,
        }
    }
    /// `error: …` and one `caused by: …` line per cause, each once (a
    /// cause whose text the message already holds is not repeated).
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = format!("error: {}", self.message);
        let mut seen = self.message.clone();
        let mut cause: Option<&(dyn Error + 'static)> =
            self.source.as_deref().map(|e| e as &(dyn Error + 'static));
        while let Some(c) = cause {
            let text = c.to_string();
            if !seen.contains(&text) {
                out.push_str("\n  caused by: ");
                out.push_str(&text);
                seen.push_str(&text);
            }
            cause = c.source();
        }
        out
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for CliError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// Exits as a command's result says, printing a failure on stderr.
#[must_use]
pub fn finish(result: CliResult) -> u8 {
    match result {
        Ok(code) => code,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("{}", e.render());
            }
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "outer: {}", self.0)
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_kind_has_its_documented_code_and_causes_print_once() {
        assert_eq!(CliError::usage("x").exit_code(), 2);
        assert_eq!(CliError::findings("x").exit_code(), 1);
        assert_eq!(CliError::refused("x").exit_code(), 5);
        assert_eq!(CliError::state("x").exit_code(), 6);
        assert_eq!(CliError::locked("x").exit_code(), 7);
        let io = std::io::Error::other("disk full");
        let e = CliError::state("cannot write the journal").because(Outer(io));
        assert_eq!(
            e.render(),
            "error: cannot write the journal\n  caused by: outer: disk full"
        );
        // A message that already says its cause does not repeat it.
        let e =
            CliError::usage("cannot read `a.yaml`: disk full").because(std::io::Error::other("disk full"));
        assert_eq!(e.render(), "error: cannot read `a.yaml`: disk full");
    }
}
