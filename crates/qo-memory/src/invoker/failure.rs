//! The on-failure destination: what Lambda sends an asynchronous event to when it gives up.

use qo_core::event::WorkerEvent;
use qo_core::time::Timestamp;

/// Why Lambda gave up on an event: the `requestContext.condition` of its invocation record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureCondition {
    /// The event stayed in the queue past `MaximumEventAgeInSeconds` (throttled, or waiting for
    /// a retry) before a run could succeed.
    EventAgeExceeded,
    /// The handler returned an error on the first run and on each of the
    /// `MaximumRetryAttempts` retries.
    RetriesExhausted,
}

impl FailureCondition {
    /// The name Lambda gives the condition in an invocation record.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCondition::EventAgeExceeded => "EventAgeExceeded",
            FailureCondition::RetriesExhausted => "RetriesExhausted",
        }
    }
}

impl std::fmt::Display for FailureCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One record in the worker's on-failure destination: the original event and what happened
/// to it, as Lambda's invocation record carries them.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureRecord {
    /// The event as it was invoked (after its JSON round trip).
    pub event: WorkerEvent,
    /// Why Lambda gave up.
    pub condition: FailureCondition,
    /// Handler runs (Lambda's `approximateInvokeCount`); throttled attempts are not runs.
    pub attempts: u32,
    /// Attempts that found the function saturated and went back to the queue.
    pub throttles: u32,
    /// The last run's function error, if any run failed.
    pub last_error: Option<String>,
    /// When the invoke was accepted (the event's age counts from here).
    pub accepted_at: Timestamp,
    /// When Lambda gave up: the last failed run's end, or the moment the event's age passed
    /// `MaximumEventAgeInSeconds`.
    pub failed_at: Timestamp,
}
