//! [`InvokerOptions`]: how the in-memory Lambda delivers, throttles, retries and fails, with
//! AWS's values as the defaults.

use std::ops::RangeInclusive;
use std::time::Duration;

use qo_core::lambda::WorkerFunction;

use crate::error::MemoryError;

/// Lambda's default `MaximumEventAgeInSeconds`, also its largest: 6 hours.
pub const DEFAULT_MAXIMUM_EVENT_AGE: Duration = Duration::from_secs(6 * 3600);

/// The shortest `MaximumEventAgeInSeconds` Lambda accepts: 60 s.
pub const MIN_MAXIMUM_EVENT_AGE: Duration = Duration::from_secs(60);

/// Lambda's default `MaximumRetryAttempts`, also its largest: 2 retries after a function error.
pub const DEFAULT_MAXIMUM_RETRY_ATTEMPTS: u32 = 2;

/// Init delay of a new execution environment: the top of the published Rust init duration on
/// arm64 (about 16 to 22 ms), so no test gets a faster start than
/// a deployment.
pub const DEFAULT_COLD_START: Duration = Duration::from_millis(22);

/// How long an idle environment stays warm. AWS keeps one "for a non-deterministic period of
/// time" and documents no figure; 5 minutes errs on the short side (more cold starts).
pub const DEFAULT_KEEP_WARM: Duration = Duration::from_secs(5 * 60);

/// How long the Invoke API takes to answer (202) once called: a round trip to Lambda's
/// regional endpoint, tens of milliseconds.
pub const DEFAULT_API_LATENCY: Duration = Duration::from_millis(20);

/// How the invoker delivers, throttles, retries and fails. Each field's default is AWS's own
/// value (or, where AWS gives none, the less friendly choice).
#[derive(Clone, Debug)]
pub struct InvokerOptions {
    /// How long [`Invoker::invoke`](qo_core::ports::Invoker::invoke) takes before the event is
    /// accepted (default 20 ms): the caller's future must be polled that long, as an HTTP call
    /// to the Invoke API must.
    pub api_latency: Duration,
    /// Delay from the accepted invoke to the first attempt, drawn uniformly per delivery
    /// (default 2 to 20 ms: "usually milliseconds").
    pub delay: RangeInclusive<Duration>,
    /// Fraction of invokes that fail at the API, 0 to 1 (default 0): `Throttled` or
    /// `Transport`, half each.
    pub fail_rate: f64,
    /// Fraction of accepted events delivered twice, 0 to 1 (default 0).
    pub duplicate_rate: f64,
    /// Fraction of accepted invokes whose answer is lost, 0 to 1 (default 0): the event is
    /// queued and delivered, but the caller sees a transport error, as a client whose request
    /// timed out after Lambda accepted it does.
    pub lost_answer_rate: f64,
    /// Fraction of handler runs killed part-way, 0 to 1 (default 0): a timeout, an
    /// out-of-memory kill or a lost environment stops the run at whatever await it has
    /// reached, drawn uniformly within `kill_within` of its start. A kill is a function error
    /// (retried as one) and discards the environment; [`crate::LocalInvoker::kills`] lists them.
    pub kill_rate: f64,
    /// How far into a run a kill may fall (default 10 s).
    pub kill_within: Duration,
    /// Seed of the random draws (default 0).
    pub seed: u64,
    /// The function's reserved concurrency: at most this many environments are busy (in init or
    /// running the handler) at once; an attempt that finds them all busy is throttled and
    /// retried with back-off. `None` (the default) is unbounded; the template reserves
    /// `WorkerConcurrency` (50). Zero is refused (Lambda then sends every event to the
    /// on-failure destination, which this model does not do).
    pub concurrency: Option<usize>,
    /// `MaximumEventAgeInSeconds`: an event not run successfully within this age of its invoke
    /// goes to the on-failure destination (default and most 6 h, least 60 s).
    pub maximum_event_age: Duration,
    /// `MaximumRetryAttempts`: retries after a function error before the event goes to the
    /// on-failure destination (default and most 2, least 0). Throttling does not count.
    pub maximum_retry_attempts: u32,
    /// Init delay before the first run in a new execution environment (default 22 ms).
    pub cold_start: Duration,
    /// An idle environment is reused (no init) until it has been idle this long, then dropped
    /// (default 5 minutes).
    pub keep_warm: Duration,
}

impl Default for InvokerOptions {
    fn default() -> Self {
        InvokerOptions {
            api_latency: DEFAULT_API_LATENCY,
            delay: Duration::from_millis(2)..=Duration::from_millis(20),
            fail_rate: 0.0,
            duplicate_rate: 0.0,
            lost_answer_rate: 0.0,
            kill_rate: 0.0,
            kill_within: Duration::from_secs(10),
            seed: 0,
            concurrency: None,
            maximum_event_age: DEFAULT_MAXIMUM_EVENT_AGE,
            maximum_retry_attempts: DEFAULT_MAXIMUM_RETRY_ATTEMPTS,
            cold_start: DEFAULT_COLD_START,
            keep_warm: DEFAULT_KEEP_WARM,
        }
    }
}

impl InvokerOptions {
    /// The worker function as the template deploys it ([`WorkerFunction::TEMPLATE`]): its
    /// reserved concurrency, event age and retries; the other fields as [`Default`].
    pub fn template() -> Self {
        let w = WorkerFunction::TEMPLATE;
        InvokerOptions {
            concurrency: w.reserved_concurrency,
            maximum_event_age: w.maximum_event_age,
            maximum_retry_attempts: w.maximum_retry_attempts,
            ..InvokerOptions::default()
        }
    }

    /// Checks the rates, the delay range, and the values Lambda itself would refuse.
    pub fn validate(&self) -> Result<(), MemoryError> {
        for (name, rate) in [
            ("fail_rate", self.fail_rate),
            ("duplicate_rate", self.duplicate_rate),
            ("lost_answer_rate", self.lost_answer_rate),
            ("kill_rate", self.kill_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(MemoryError::InvalidOption {
                    name,
                    value: rate.to_string(),
                    reason: "must be a fraction from 0 to 1",
                });
            }
        }
        if self.delay.start() > self.delay.end() {
            return Err(MemoryError::InvalidOption {
                name: "delay",
                value: format!("{:?}", self.delay),
                reason: "the range's start is after its end",
            });
        }
        if self.concurrency == Some(0) {
            return Err(MemoryError::InvalidOption {
                name: "concurrency",
                value: "0".to_string(),
                reason: "a function with no concurrency runs nothing; use None for unbounded",
            });
        }
        if !(MIN_MAXIMUM_EVENT_AGE..=DEFAULT_MAXIMUM_EVENT_AGE).contains(&self.maximum_event_age) {
            return Err(MemoryError::InvalidOption {
                name: "maximum_event_age",
                value: format!("{:?}", self.maximum_event_age),
                reason: "Lambda accepts 60 s to 6 h",
            });
        }
        if self.maximum_retry_attempts > DEFAULT_MAXIMUM_RETRY_ATTEMPTS {
            return Err(MemoryError::InvalidOption {
                name: "maximum_retry_attempts",
                value: self.maximum_retry_attempts.to_string(),
                reason: "Lambda accepts 0 to 2",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_are_refused_by_name() {
        let d = InvokerOptions::default;
        for (o, name) in [
            (
                InvokerOptions {
                    fail_rate: 1.5,
                    ..d()
                },
                "fail_rate=1.5",
            ),
            (
                InvokerOptions {
                    duplicate_rate: f64::NAN,
                    ..d()
                },
                "duplicate_rate=NaN",
            ),
            (
                InvokerOptions {
                    delay: Duration::from_secs(2)..=Duration::from_secs(1),
                    ..d()
                },
                "delay=",
            ),
            (
                InvokerOptions {
                    concurrency: Some(0),
                    ..d()
                },
                "concurrency=0",
            ),
            (
                InvokerOptions {
                    maximum_event_age: Duration::from_secs(59),
                    ..d()
                },
                "maximum_event_age=59s",
            ),
            (
                InvokerOptions {
                    maximum_event_age: Duration::from_secs(6 * 3600 + 1),
                    ..d()
                },
                "maximum_event_age=",
            ),
            (
                InvokerOptions {
                    maximum_retry_attempts: 3,
                    ..d()
                },
                "maximum_retry_attempts=3",
            ),
        ] {
            let e = o.validate().expect_err("invalid");
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn the_defaults_are_lambdas_and_valid() {
        let o = InvokerOptions::default();
        o.validate().expect("defaults are valid");
        assert_eq!(o.concurrency, None);
        assert_eq!(o.maximum_event_age, Duration::from_secs(21_600));
        assert_eq!(o.maximum_retry_attempts, 2);
        assert_eq!(o.cold_start, Duration::from_millis(22));
        for edge in [
            InvokerOptions {
                maximum_event_age: Duration::from_secs(60),
                maximum_retry_attempts: 0,
                concurrency: Some(1),
                ..o.clone()
            },
            InvokerOptions {
                concurrency: Some(50),
                ..o
            },
        ] {
            edge.validate().expect("Lambda's edge values are valid");
        }
    }
}
