//! rollwright's engine: everything between a spec file and a plan, knowing
//! no concrete step.
//!
//! Start here:
//! 1. [`yaml`] loads YAML into a `serde_json::Value` plus a JSON-pointer →
//!    `line:col` map, refusing hostile input (alias bombs, deep nesting,
//!    oversized or non-UTF-8 files, several documents, duplicate keys).
//! 2. [`schema`] validates the value against the JSON Schema assembled from
//!    the envelope and every registered step kind, and phrases violations.
//! 3. [`spec`] is the typed model (`rollwright.dev/v1alpha1`).
//! 4. [`validate`] runs the semantic rules a schema cannot express: ids,
//!    `needs`, cycles, gate dominance, canary order, secrets, timeouts.
//! 5. [`expand`] turns `uses`, params, `customize`, `for-each` and templates
//!    into one flat spec that remembers where every step was written.
//! 6. [`lint`] ties these together for one file; the CLI fans it out.
//! 7. [`plan`] shows the expanded DAG with its timing budget.
//! 8. [`exec`] runs a DAG of [`exec::Step`]s: retries, timeouts,
//!    compensation in reverse order (the journal and the CLI come next).
//!
//! Step kinds are described to the engine through [`registry::StepKind`];
//! the `steps` crate provides them. Every finding is a [`diag::Diagnostic`]
//! with a stable code and a span; rendering happens at the CLI edge.

pub mod diag;
pub mod digest;
pub mod duration;
pub mod exec;
pub mod expand;
pub mod fsread;
pub mod journal;
pub mod lint;
pub mod plan;
pub mod policy;
pub mod registry;
pub mod render;
pub mod report;
pub mod retry;
pub mod schema;
pub mod secrets;
pub mod spec;
pub mod validate;
pub mod words;
pub mod yaml;

pub use diag::{Code, Diagnostic, Severity};
pub use lint::{FileLint, Linter};
pub use registry::{Registry, Role, StepKind};
pub use yaml::Limits;
