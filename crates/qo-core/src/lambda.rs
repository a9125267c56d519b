//! The worker function's asynchronous-invocation settings as `template.yaml` deploys them with
//! its defaults, in one place for the in-memory invoker, `qo local` and the tests (a test reads
//! the template).

use std::time::Duration;

/// The worker function's settings that shape asynchronous delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerFunction {
    /// Reserved concurrency (`WorkerConcurrency`; `None`: unreserved, capped by the orchestrator
    /// with `WORKER_CONCURRENCY_CAP`).
    pub reserved_concurrency: Option<usize>,
    /// `MaximumEventAgeInSeconds` (`WorkerMaxEventAgeSeconds`): a throttled event older than
    /// this goes to the on-failure destination.
    pub maximum_event_age: Duration,
    /// `MaximumRetryAttempts`: retries after a function error.
    pub maximum_retry_attempts: u32,
}

impl WorkerFunction {
    /// The template's defaults.
    pub const TEMPLATE: WorkerFunction = WorkerFunction {
        reserved_concurrency: Some(50),
        maximum_event_age: Duration::from_secs(300),
        maximum_retry_attempts: 2,
    };
}
