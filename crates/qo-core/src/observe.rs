//! What happened, as structured observations: the loop and the worker report them to an
//! [`Observer`]; adapters turn them into CloudWatch metrics (EMF) or a local report.

use std::time::Duration;

use crate::circuit::CircuitPhase;
use crate::quota::Utilization;
use crate::reason::Reason;
use crate::time::Timestamp;

/// One thing that happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A job was handed to the worker for `slot`.
    Dispatched {
        /// Message id.
        message_id: String,
        /// The slot it must call at.
        slot: Timestamp,
    },
    /// An invoke failed and the job was released.
    InvokeFailed {
        /// Message id.
        message_id: String,
        /// Why.
        reason: String,
    },
    /// The worker called the API.
    Called {
        /// Job id.
        job_id: String,
        /// When it called.
        at: Timestamp,
        /// HTTP status, or `None` for a timeout or connection error.
        status: Option<u16>,
        /// From enqueue to call, when the enqueue time is known.
        wait: Option<Duration>,
    },
    /// The job succeeded.
    Succeeded {
        /// Job id.
        job_id: String,
    },
    /// The API answered 429.
    Throttled {
        /// Job id.
        job_id: String,
        /// Its Retry-After.
        retry_after: Option<Duration>,
    },
    /// The API's own count of the calls left in its window, from its rate-limit headers
    /// (read on every answer that carries them; no write to shared state).
    ApiRemaining {
        /// Calls left.
        remaining: u64,
        /// The window's limit, when the API says it.
        limit: Option<u64>,
    },
    /// The API answered 401 or 403: the credential, not the job, was refused. The job went
    /// back untried; an alarm should page (a rotated or revoked key).
    CredentialRejected {
        /// Job id.
        job_id: String,
        /// The HTTP status (401 or 403).
        status: u16,
        /// Whether the credential, re-read after the refusal, had changed (a rotation the
        /// worker had not seen yet): the job is then retried at once, with no back-off.
        key_changed: bool,
    },
    /// A job was put back on a queue.
    Requeued {
        /// Job id.
        job_id: String,
        /// Why.
        reason: Reason,
    },
    /// A job went to the dead-letter queue.
    DeadLettered {
        /// Message id.
        message_id: String,
        /// Why.
        reason: Reason,
    },
    /// A duplicate delivery was skipped.
    Duplicate {
        /// Job id.
        job_id: String,
    },
    /// The circuit changed.
    Circuit {
        /// New phase.
        phase: CircuitPhase,
        /// Its epoch.
        epoch: u64,
    },
    /// A health check was sent.
    HealthCheckSent {
        /// The epoch.
        epoch: u64,
    },
    /// A health check answered.
    HealthCheck {
        /// The epoch.
        epoch: u64,
        /// Whether the API was healthy.
        healthy: bool,
    },
    /// A budget tier (hour, day, month) is used up until its reset.
    BudgetExhausted {
        /// The tier, as spec text.
        tier: String,
        /// Its reset.
        until: Timestamp,
    },
    /// The backlog seen by the orchestrator (messages held, approximately).
    Backlog {
        /// Messages held.
        held: usize,
    },
    /// The pace now: the rate learned from the API's throttles against the configured one.
    Pace {
        /// The rate paced at, calls per second (at most the ceiling).
        rate_per_s: f64,
        /// The configured quota's pace, calls per second.
        ceiling_per_s: f64,
    },
    /// The pace went down: the API throttled a call paced at the current rate, or its
    /// rate-limit headers said less was left.
    PaceDecreased(crate::quota::Decrease),
    /// A job's result reached its destination.
    ResultDelivered {
        /// The job's idempotency key.
        job_id: String,
        /// The destination's name.
        destination: String,
    },
    /// A job's result could not be delivered after every try: it went to the dead-letter
    /// queue instead.
    ResultUndelivered {
        /// The job's idempotency key.
        job_id: String,
        /// The destination's name.
        destination: String,
    },
    /// The orchestrator's retention sweep re-sent waiting messages as fresh copies (so that
    /// none is deleted by the queue's retention while nobody receives it).
    Swept {
        /// Copies made by this run's part of the pass.
        resent: u64,
        /// Whether the pass completed in this run.
        completed: bool,
        /// How long ago the pass still in progress began (`None` when it completed, or when
        /// the run failed before it knew): a pass that keeps failing grows it.
        pass_age: Option<Duration>,
    },
    /// Calls dispatched against the calls the pace allowed while work was waiting, since the
    /// last such observation ([`crate::quota::UtilizationMeter`]).
    Utilization(Utilization),
}

/// Receives observations. Must be cheap: it is called on the hot path.
pub trait Observer: Send + Sync {
    /// Records one observation.
    fn observe(&self, o: Observation);
}

/// Drops every observation.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn observe(&self, _o: Observation) {}
}

impl<F: Fn(Observation) + Send + Sync> Observer for F {
    fn observe(&self, o: Observation) {
        self(o)
    }
}
