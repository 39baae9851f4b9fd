//! rollwright's step kinds: one module per `type:`.
//!
//! Each module has the kind's `XxxConfig` (the serde and schemars model of
//! its `with`, `deny_unknown_fields`; `steps/schemas/<type>.schema.json` is
//! generated from it, see [`schema`]), a unit struct implementing [`rollwright_engine::StepKind`] (role, semantic
//! checks, the facts the engine's rules ask about), and its tests. The one
//! place where kinds are registered is [`registry`].

use rollwright_engine::Registry;

mod common;

pub mod access;
pub mod apply;
pub mod approval;
pub mod cluster;
pub mod exec;
pub mod gate_check;
pub mod git;
pub mod gitops;
pub mod hold;
pub mod inference;
pub mod lease;
pub mod model_registry;
pub mod notify;
pub mod promote;
pub mod reach;
pub mod restore;
pub mod rollback;
pub mod runnable;
pub mod schema;
pub mod shift_traffic;
pub mod target;
pub mod traffic;
pub mod verify_inference;
pub mod wait_ready;

pub use common::SecretRef;

/// Every step kind this build knows, in the order the docs list them.
#[must_use]
pub fn registry() -> Registry {
    Registry::new()
        .with_def("serving", include_str!("../envelope/serving.schema.json"))
        .with_def("gitops", include_str!("../envelope/gitops.schema.json"))
        .with(gate_check::GateCheck)
        .with(apply::Apply)
        .with(wait_ready::WaitReady)
        .with(shift_traffic::ShiftTraffic)
        .with(hold::Hold)
        .with(verify_inference::VerifyInference)
        .with(rollback::Rollback)
        .with(promote::Promote)
        .with(approval::Approval)
        .with(notify::Notify)
        .with(exec::Exec)
}
