//! The worker function's asynchronous-invocation settings as `template.yaml` deploys them with
//! its defaults, in one place for the in-memory invoker, `qo local` and the tests (a test reads
//! the template); and what an invocation's deadline means ([`invocation_deadline`]).

use std::time::Duration;

use crate::time::Timestamp;

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

/// The invocation's deadline from the runtime's `Lambda-Runtime-Deadline-Ms` (`deadline_ms`),
/// read at `now`, the invocation's start: `None` when there is none to keep. Lambda's is the
/// start plus the function timeout; zero (a test's `Context::default()`) is none, and so is one
/// already past at the start, which Lambda never sends: `cargo lambda watch` sends a constant
/// 600,000 (ten minutes after the Unix epoch), and keeping it would give back every job of a
/// batch as out of time.
pub fn invocation_deadline(deadline_ms: u64, now: Timestamp) -> Option<Timestamp> {
    let deadline = Timestamp::from_millis(deadline_ms);
    (deadline > now).then_some(deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_already_past_at_the_start_is_none_to_keep() {
        let now = Timestamp::from_millis(1_796_414_126_181);
        assert_eq!(invocation_deadline(0, now), None, "no deadline");
        assert_eq!(
            invocation_deadline(600_000, now),
            None,
            "cargo lambda watch's constant"
        );
        assert_eq!(invocation_deadline(now.as_millis(), now), None);
        let lambda = now.plus(Duration::from_secs(150));
        assert_eq!(invocation_deadline(lambda.as_millis(), now), Some(lambda));
    }
}
