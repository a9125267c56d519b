//! Lambda's two retry schedules for an asynchronous event, as AWS documents them
//! ("How Lambda handles errors and retries with asynchronous invocation"):
//!
//! - a **throttled** event (the function had no concurrency free) goes back to the queue and is
//!   tried again after an interval that "increases exponentially from 1 second after the first
//!   attempt to a maximum of 5 minutes": [`throttle_backoff`];
//! - an event whose handler returned a **function error** is run again "with a one-minute wait
//!   between the first two attempts, and two minutes between the second and third":
//!   [`function_error_retry_delay`].
//!
//! Throttled attempts do not count against `MaximumRetryAttempts`; both kinds stop at
//! `MaximumEventAgeInSeconds`.

use std::time::Duration;

/// The first throttling back-off: 1 s after the first throttled attempt.
pub const THROTTLE_BACKOFF_FIRST: Duration = Duration::from_secs(1);

/// The longest throttling back-off: 5 minutes.
pub const THROTTLE_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);

/// How long Lambda waits after the `n`th throttled attempt in a row (`n` from 1) before it
/// tries the event again: 1 s, 2 s, 4 s, 8 s, ... doubling, capped at 5 minutes (from `n` = 10:
/// 2^9 s = 512 s is past the cap). `n` = 0 counts as 1.
///
/// So an event that keeps finding the function saturated is tried at about 1, 3, 7, 15, 31,
/// 63, 127, 255, 511, 811, 1111, ... seconds after its first attempt, until its age passes
/// `MaximumEventAgeInSeconds`.
pub fn throttle_backoff(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(31);
    THROTTLE_BACKOFF_FIRST
        .saturating_mul(1u32 << doublings)
        .min(THROTTLE_BACKOFF_MAX)
}

/// How long Lambda waits before the `retry`th retry of an event whose handler returned an
/// error (`retry` from 1): 1 minute before the first retry, 2 minutes before the second.
/// `MaximumRetryAttempts` is at most 2, so no third retry exists; `retry` = 0 counts as 1 and
/// anything past 2 as 2.
pub fn function_error_retry_delay(retry: u32) -> Duration {
    match retry {
        0 | 1 => Duration::from_secs(60),
        _ => Duration::from_secs(120),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_backoff_doubles_from_one_second_to_five_minutes() {
        let secs: Vec<u64> = (1..=12).map(|n| throttle_backoff(n).as_secs()).collect();
        assert_eq!(
            secs,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300],
            "1 s doubling, capped at 300 s"
        );
        assert_eq!(throttle_backoff(0), Duration::from_secs(1));
        assert_eq!(throttle_backoff(u32::MAX), THROTTLE_BACKOFF_MAX);
    }

    #[test]
    fn function_errors_wait_one_then_two_minutes() {
        assert_eq!(function_error_retry_delay(1), Duration::from_secs(60));
        assert_eq!(function_error_retry_delay(2), Duration::from_secs(120));
        assert_eq!(function_error_retry_delay(0), Duration::from_secs(60));
        assert_eq!(function_error_retry_delay(9), Duration::from_secs(120));
    }
}
