//! Diagnostics: what every check in the engine produces.
//!
//! A [`Diagnostic`] carries a stable [`Code`], a severity, a message phrased
//! as the user thinks of the spec, the [`Span`] it points at, optional
//! related places ("first defined here") and a help line. Checks *collect*
//! diagnostics and keep going; nothing in the engine stops at the first
//! problem. Rendering (rustc-like snippets, JSON, SARIF, GitHub annotations)
//! happens at the CLI edge, which is why a diagnostic may carry a
//! [`Diagnostic::redact`] span: the text there (a literal secret) must never
//! be echoed into a CI log.

use std::fmt;
use std::sync::Arc;

/// A position in a source file: 1-based line and 1-based column, counted in
/// characters (not bytes), as editors show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// The file name of a diagnostic about a `--set` override: this prefix and
/// the override's key, which is also its text (line 1).
pub const SET_FILE_PREFIX: &str = "--set ";

/// A range `[start, end)` in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Span {
    /// First character.
    pub start: Pos,
    /// One past the last character (may be on a later line).
    pub end: Pos,
}

impl Span {
    /// A span covering a single character at `pos`.
    #[must_use]
    pub fn point(pos: Pos) -> Self {
        Span {
            start: pos,
            end: Pos {
                line: pos.line,
                col: pos.col + 1,
            },
        }
    }
}

/// A place: a span in a file. `file: None` is the file being checked; a
/// finding caused by a strategy names the strategy's file instead.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Loc {
    /// Another file than the one being checked.
    pub file: Option<Arc<str>>,
    /// Where in it.
    pub span: Span,
}

impl From<Span> for Loc {
    fn from(span: Span) -> Self {
        Loc { file: None, span }
    }
}

/// Maps a JSON pointer of a checked value to the place it came from.
/// A loaded [`crate::yaml::Document`] locates in its own file; an expanded
/// plan locates each step in the file (strategy or rollout) that wrote it.
pub trait Locate {
    /// The node at `pointer`, or its nearest located ancestor.
    fn locate(&self, pointer: &str) -> Loc;
    /// For a mapping value, its key; otherwise as [`Locate::locate`].
    fn locate_key(&self, pointer: &str) -> Loc;
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Fails lint (exit code 1).
    Error,
    /// Reported; fails lint only with `--deny-warnings`.
    Warning,
}

impl Severity {
    /// `error` or `warning`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $sev:ident, $title:literal; )*) => {
        /// Stable diagnostic codes. The numbers never change meaning once
        /// released; the README's table is checked against this list.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code {
            $( $(#[$doc])* $variant, )*
        }

        impl Code {
            /// Every code, in numeric order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The stable identifier, e.g. `RW041`.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }

            /// The severity findings with this code have.
            #[must_use]
            pub fn severity(self) -> Severity {
                match self { $(Code::$variant => Severity::$sev,)* }
            }

            /// A one-line description, used in docs and SARIF rules.
            #[must_use]
            pub fn title(self) -> &'static str {
                match self { $(Code::$variant => $title,)* }
            }
        }
    };
}

codes! {
    /// The file could not be read.
    Io = "RW000", Error, "file could not be read";
    /// YAML syntax error.
    Syntax = "RW001", Error, "YAML syntax error";
    /// The file is larger than the configured limit.
    TooLarge = "RW002", Error, "file exceeds the size limit";
    /// The file is not valid UTF-8.
    NotUtf8 = "RW003", Error, "file is not valid UTF-8";
    /// The file holds no document.
    Empty = "RW004", Error, "file is empty";
    /// More than one YAML document in one file.
    MultiDocument = "RW005", Error, "more than one YAML document";
    /// Nesting deeper than the limit.
    TooDeep = "RW006", Error, "nesting exceeds the depth limit";
    /// Aliases expand to more nodes than the budget (billion laughs).
    AliasBudget = "RW007", Error, "aliases expand beyond the budget";
    /// The same key twice in one mapping.
    DuplicateKey = "RW008", Error, "duplicate mapping key";
    /// A YAML feature the spec format does not accept (complex keys, merge keys, custom tags).
    UnsupportedYaml = "RW009", Error, "unsupported YAML feature";
    /// A value has the wrong type.
    SchemaType = "RW020", Error, "value has the wrong type";
    /// A required field is missing.
    SchemaRequired = "RW021", Error, "required field is missing";
    /// A field that the schema does not know.
    SchemaUnknownField = "RW022", Error, "unknown field";
    /// A value outside the allowed set or pattern.
    SchemaValue = "RW023", Error, "value is not allowed";
    /// A number or length outside its bounds.
    SchemaRange = "RW024", Error, "value is out of range";
    /// Any other schema violation.
    Schema = "RW025", Error, "schema violation";
    /// A duration that does not parse.
    InvalidDuration = "RW030", Error, "invalid duration";
    /// A retry policy that is inconsistent.
    InvalidRetry = "RW031", Error, "invalid retry policy";
    /// Two steps share an id.
    DuplicateStepId = "RW040", Error, "duplicate step id";
    /// `needs` names a step that does not exist.
    UnknownNeeds = "RW041", Error, "unknown step in needs";
    /// The `needs` graph has a cycle.
    Cycle = "RW042", Error, "dependency cycle";
    /// A compensation (or rollback restore list) names something unknown.
    UnknownCompensation = "RW043", Error, "unknown compensation target";
    /// Canary weight decreases along a path.
    CanaryDecreases = "RW044", Error, "canary weight decreases along a path";
    /// A production mutation that no gate-check dominates.
    UngatedProductionChange = "RW050", Error, "production change not guarded by a gate-check";
    /// Straight to 100 % in production without a justification.
    StraightToFull = "RW051", Error, "production traffic goes straight to 100% without justification";
    /// Straight to 100 % in production, justified (reported, allowed).
    JustifiedStraightToFull = "RW052", Warning, "production traffic goes straight to 100% (justified)";
    /// A compensation or `on-failure` handler that would promote in production.
    MutatingFailureHandler = "RW053", Error, "failure path changes production";
    /// A production gate-check with `continue-on-failure`.
    GateCannotStop = "RW054", Error, "gate-check cannot stop the rollout";
    /// The spec declares a non-production environment for a target the policy calls production.
    EnvironmentDodge = "RW055", Error, "target is production by policy";
    /// A gate weaker than the policy's minimum for the environment.
    GateBelowPolicy = "RW056", Error, "gate weaker than the policy";
    /// A step that would change directly a target the policy declares GitOps-managed.
    ImperativeOnGitOps = "RW057", Error, "imperative change on a GitOps-managed target";
    /// A production gate-check that requires nothing (no approval or alias, or no eval).
    GateRequiresNothing = "RW058", Error, "production gate requires too little";
    /// A production hold that judges nothing, without a justification.
    UnanalysedProductionHold = "RW059", Error, "production hold without analysis";
    /// A literal secret value where a reference is required.
    LiteralSecret = "RW060", Error, "literal secret value";
    /// A value shaped like a well-known credential.
    TokenShapedValue = "RW061", Error, "value looks like a credential";
    /// A step timeout shorter than the hold it bounds.
    TimeoutShorterThanHold = "RW070", Error, "timeout shorter than the hold duration";
    /// A step's `with` has a value the step kind rejects beyond its schema.
    InvalidStepConfig = "RW071", Error, "invalid step configuration";
    /// A metric judged only relative to stable, with no absolute ceiling.
    RelativeOnlyMetric = "RW072", Warning, "metric judged only against stable";
    /// `uses` names a file that cannot be read or is not a Strategy.
    UnknownStrategy = "RW080", Error, "strategy cannot be used";
    /// `uses` chains form a cycle.
    UsesCycle = "RW081", Error, "`uses` cycle";
    /// A parameter value or declaration is wrong (unknown, missing, mistyped).
    InvalidParam = "RW082", Error, "invalid parameter";
    /// `customize` names a step that does not exist, or is misused.
    InvalidCustomize = "RW083", Error, "invalid customization";
    /// A template names an unknown variable, or does not render.
    Template = "RW084", Error, "template error";
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secondary place a diagnostic refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Related {
    /// In which file, when not the one being checked.
    pub file: Option<Arc<str>>,
    /// Where.
    pub span: Span,
    /// What is there ("first defined here").
    pub label: String,
}

/// One finding, located in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Stable code.
    pub code: Code,
    /// Severity (normally the code's own).
    pub severity: Severity,
    /// The message, one sentence, no trailing period.
    pub message: String,
    /// The file of the offending text, when not the one being checked.
    pub file: Option<Arc<str>>,
    /// The offending text.
    pub span: Span,
    /// A short label under the caret.
    pub label: Option<String>,
    /// Other places that explain the finding.
    pub related: Vec<Related>,
    /// How to fix it.
    pub help: Option<String>,
    /// Text in this span must be masked when the source line is shown.
    pub redact: Option<Span>,
}

impl Diagnostic {
    /// A diagnostic with the code's severity.
    #[must_use]
    pub fn new(code: Code, at: impl Into<Loc>, message: impl Into<String>) -> Self {
        let at = at.into();
        Diagnostic {
            code,
            severity: code.severity(),
            message: message.into(),
            file: at.file,
            span: at.span,
            label: None,
            related: Vec::new(),
            help: None,
            redact: None,
        }
    }

    /// Adds a label under the caret.
    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Adds a help line.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a related place.
    #[must_use]
    pub fn with_related(mut self, at: impl Into<Loc>, label: impl Into<String>) -> Self {
        let at = at.into();
        self.related.push(Related {
            file: at.file,
            span: at.span,
            label: label.into(),
        });
        self
    }

    /// Where the diagnostic points.
    #[must_use]
    pub fn loc(&self) -> Loc {
        Loc {
            file: self.file.clone(),
            span: self.span,
        }
    }

    /// Marks a span whose text must never be shown.
    #[must_use]
    pub fn with_redaction(mut self, span: Span) -> Self {
        self.redact = Some(span);
        self
    }
}

/// Suggests the closest known name, if one is close enough to be a typo.
#[must_use]
pub fn did_you_mean<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(wanted, k), k))
        .filter(|(d, k)| *d <= (k.len().max(wanted.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_ordered() {
        let mut seen: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        let sorted = {
            let mut s = seen.clone();
            s.sort_unstable();
            s
        };
        assert_eq!(seen, sorted, "codes must be listed in numeric order");
        seen.dedup();
        assert_eq!(seen.len(), Code::ALL.len(), "codes must be unique");
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("gat", ["gate", "deploy"]), Some("gate"));
        assert_eq!(did_you_mean("aply", ["apply", "hold"]), Some("apply"));
        assert_eq!(did_you_mean("zzzzzz", ["apply", "hold"]), None);
    }
}
