//! The orchestrator: paces a queue of jobs into asynchronous worker invocations, within every
//! tier of the quota, while the circuit is closed; sends health checks while it is open.
//!
//! # Layout
//! - [`config`] - [`OrchestratorConfig`], read once from the environment.
//! - [`run`] - one run of the dispatch loop, generic over the ports: it performs the steps.
//! - [`ports`] - [`ports::Ports`], what a run and the sweep are given to work with.
//! - [`step`] - the loop's decision, pure: [`step::next_step`] from a [`step::Snapshot`], and
//!   why a run stops ([`step::StopReason`]).
//! - [`pool`] - the worker pool at dispatch: which function a job goes through, within each
//!   function's own tiers, never the one that last failed it.
//! - [`slots`] - [`slots::SlotLog`], recent slots, to judge the API's limit when it throttles.
//! - [`sweep`] - the retention sweep: waiting messages re-sent as fresh copies before SQS's
//!   retention deletes them.
//! - [`handler`] - the Lambda handler (scheduled event or control event).
//! - [`error`] - [`OrchestratorError`].
//!
//! The Lambda `main` over the AWS adapters is the `orchestrator` binary of `qo-lambda`: this
//! library depends on no AWS SDK crate.

pub mod config;
pub mod error;
pub mod handler;
pub mod pool;
pub mod ports;
pub mod run;
pub mod slots;
pub mod step;
pub mod sweep;

pub use config::{OrchestratorConfig, circuit_policy};
pub use error::OrchestratorError;
pub use handler::{
    CONTINUATION_SOURCE, OrchestratorEvent, OrchestratorResponse, continuation_event, handle,
};
pub use run::{Ports, RunReport, StopReason, WaitTally, Waits, run};
