//! The pure core of quota-orchestrator: no AWS SDK, no system clock.
//!
//! It decides when a call may happen ([`quota`]), whether calls may happen at all
//! ([`circuit`]), what a job and a worker event are ([`job`], [`event`]), and defines the ports the
//! orchestrator loop and the worker are generic over ([`ports`]).
//!
//! # Layout
//! - [`time`]: [`Timestamp`] and the [`Clock`] port; [`TokioClock`] doubles as a virtual clock
//!   under tokio's paused time.
//! - [`quota`]: quotas and pacing, by concept:
//!   - [`quota::spec`]: the [`QuotaSpec`] grammar, [`quota::TierId`], and the UTC calendar
//!     arithmetic on [`quota::Period`];
//!   - [`quota::policy`]: the [`PacingPolicy`] (greedy or spread budgets, call tolerance,
//!     headroom, slow start);
//!   - [`quota::state`]: the persisted [`QuotaState`], usage per tier;
//!   - `quota::constraint` (private): each constraint kind a tier puts on calls, its rules
//!     written once: the GCRA pace, the rolling window count, the calendar count;
//!   - [`quota::pacer`]: the [`Pacer`], the thin combinator over the tiers, with one call
//!     that checks and records ([`Pacer::take`], [`Pacer::take_first_from`]) and a read-only
//!     [`Pacer::peek`];
//!   - [`quota::feedback`]: what the API told the worker (its 429s, its rate-limit window);
//!   - [`quota::adaptive`]: the rate learned from the API's throttles;
//!     [`quota::utilization`]: the utilization meter.
//! - [`circuit`]: the circuit breaker with epochs.
//! - [`job`]: the job contract; [`event`]: what the orchestrator sends the worker;
//!   [`allow`]: the methods and path prefixes a stack lets jobs use.
//! - [`control`]: the operator control record.
//! - [`ports`]: the port traits, one module each: [`ports::queue`] (job source and sink,
//!   redrive), [`ports::store`] (records, lease, idempotency), [`ports::invoker`].
//! - [`result`]: what comes after the call: a job's [`result::JobResult`] and the named
//!   [`result::Destinations`] it is delivered to.
//! - [`reason`]: [`Reason`], why a job was re-queued or dead-lettered, printed as the text
//!   logs and the dead-letter queue carry, grouped by its [`ReasonKind`].
//! - [`retry`]: what becomes of a job tried and not done: re-queued, or given up on past the
//!   attempt or 429 bound.
//! - [`batch`]: the refusals of a batched queue operation, summed into one partial failure.
//! - [`observe`]: observations for metrics and reports.
//! - [`config`]: environment variables, with errors that name the variable, and the AWS SDK
//!   calls' timeouts and attempts as plain settings.
//! - [`secret`]: the API key, which never prints itself.
//! - [`sqs`]: what SQS allows and the queue attributes the template deploys; [`lambda`]: the
//!   worker function's asynchronous settings the template deploys.

pub mod allow;
pub mod batch;
pub mod circuit;
pub mod config;
pub mod control;
pub mod event;
pub mod job;
pub mod lambda;
pub mod observe;
pub mod ports;
pub mod quota;
pub mod reason;
pub mod result;
pub mod retry;
pub mod secret;
pub mod sqs;
pub mod time;

pub use circuit::{Circuit, CircuitPhase, CircuitPolicy, CircuitRefusal, CircuitState};
pub use control::{
    ApiWindow, BackoffReason, Control, ControlCommand, ControlOutcome, Throttles, apply_command,
};
pub use event::{BatchEvent, DeliverEvent, HealthCheckEvent, JobEvent, WorkerEvent};
pub use job::{Job, JobError, Method, Origin};
pub use observe::{NoObserver, Observation, Observer};
pub use quota::{
    Availability, BudgetMode, NotNow, Pacer, PacingPolicy, QuotaSpec, QuotaState, Slot, TierId,
};
pub use reason::{Reason, ReasonKind, TransportKind};
pub use time::{Clock, Timestamp, TokioClock};
