//! The pure core of quota-orchestrator: no AWS SDK, no system clock.
//!
//! It decides when a call may happen ([`quota`]), whether calls may happen at all
//! ([`circuit`]), what a job and a worker event are ([`job`]), and defines the ports the
//! orchestrator loop and the worker are generic over ([`ports`]).
//!
//! # Layout
//! - [`time`]: [`Timestamp`] and the [`Clock`] port; [`TokioClock`] doubles as a virtual clock
//!   under tokio's paused time.
//! - [`quota`]: the quota spec and the [`Pacer`] (GCRA pacing, window counts, calendar resets,
//!   greedy or spread budgets, slow start) and the utilization meter.
//! - [`circuit`]: the circuit breaker with epochs.
//! - [`job`]: the job contract and the worker events.
//! - [`control`]: the operator control record.
//! - [`ports`]: queue, state store, lease, idempotency and invoker traits.
//! - [`batch`]: the refusals of a batched queue operation, summed into one partial failure.
//! - [`observe`]: observations for metrics and reports.
//! - [`config`]: environment variables, with errors that name the variable, and the AWS SDK
//!   calls' timeouts and attempts as plain settings.
//! - [`secret`]: the API key, which never prints itself.
//! - [`sqs`]: what SQS allows and the queue attributes the template deploys; [`lambda`]: the
//!   worker function's asynchronous settings the template deploys.

pub mod batch;
pub mod circuit;
pub mod config;
pub mod control;
pub mod job;
pub mod lambda;
pub mod observe;
pub mod ports;
pub mod quota;
pub mod secret;
pub mod sqs;
pub mod time;

pub use circuit::{Circuit, CircuitPhase, CircuitPolicy, CircuitRefusal, CircuitState};
pub use control::{
    ApiWindow, BackoffReason, Control, ControlCommand, ControlOutcome, Throttles, apply_command,
};
pub use job::{HealthCheckEvent, Job, JobError, JobEvent, Method, Origin, WorkerEvent};
pub use observe::{NoObserver, Observation, Observer};
pub use quota::{Availability, BudgetMode, Pacer, PacingPolicy, QuotaSpec, QuotaState};
pub use time::{Clock, Timestamp, TokioClock};
