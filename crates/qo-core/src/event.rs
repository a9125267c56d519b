//! What the orchestrator sends the worker: a job with its slot ([`JobEvent`]), several
//! ([`BatchEvent`]), a health check ([`HealthCheckEvent`]) or a result to deliver again
//! ([`DeliverEvent`]), one [`WorkerEvent`] per asynchronous invocation.

use serde::{Deserialize, Serialize};

use crate::job::{Job, Origin};
use crate::time::Timestamp;

/// A job dispatched to the worker, with the slot it must call at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub job: Job,
    /// Its message and attempt.
    pub origin: Origin,
    /// Call the API at this time, not before; the pacer counted it there.
    pub slot_at: Timestamp,
    /// The circuit's epoch at dispatch: a failure report carries it.
    pub epoch: u64,
    /// When the orchestrator sent the event.
    pub dispatched_at: Timestamp,
}

impl JobEvent {
    /// The idempotency key: the job's id, or its message id.
    pub fn job_id(&self) -> &str {
        self.job.id.as_deref().unwrap_or(&self.origin.message_id)
    }
}

/// A health check of the API, sent while the circuit is open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckEvent {
    /// The circuit's epoch: success closes the circuit only at this epoch.
    pub epoch: u64,
    /// When the orchestrator sent it.
    pub sent_at: Timestamp,
    /// The quota slot the orchestrator took for it: the worker calls the API's health path at
    /// this time, not before, as it calls a job at its slot, so that the check counts against
    /// the quota where the pacer counted it. Absent in events from before it was added: the
    /// worker then calls at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_at: Option<Timestamp>,
}

/// Several jobs in one worker invocation (`BATCH_MAX_JOBS`), each with its own slot: the
/// worker calls each at its slot, concurrently, and each job's fate is its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchEvent {
    /// The jobs, in slot order.
    pub jobs: Vec<JobEvent>,
}

impl BatchEvent {
    /// The batch's name in the idempotency store: its first job's id and slot
    /// (`<job id>@<slot ms>`), the same for every delivery of this event (Lambda may deliver
    /// it twice) and different for any other batch (a job is given a slot once per
    /// dispatch). `None` for an empty batch.
    pub fn key(&self) -> Option<String> {
        self.jobs
            .first()
            .map(|ev| format!("{}@{}", ev.job_id(), ev.slot_at.as_millis()))
    }
}

/// What the orchestrator sends to the worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // built once per dispatch and moved, never stored in bulk
pub enum WorkerEvent {
    /// Call the API for a job.
    Job(JobEvent),
    /// Call the API for several jobs, each at its own slot.
    Batch(BatchEvent),
    /// Check the API's health.
    HealthCheck(HealthCheckEvent),
    /// Deliver a result again: one the worker dead-lettered when its destination kept
    /// refusing it, brought back to the job queue by `qo redrive`. No API call, no slot.
    Deliver(DeliverEvent),
}

/// A result to deliver again ([`WorkerEvent::Deliver`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverEvent {
    /// The result, its `destination` set.
    pub result: crate::result::JobResult,
    /// The message it came on.
    pub origin: Origin,
}
