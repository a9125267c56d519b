//! [`SystemClock`]: the [`Clock`] the worker binary runs on.

use std::time::SystemTime;

use async_trait::async_trait;
use qo_core::{Clock, Timestamp};

/// Reads the system clock at every `now`, and sleeps with tokio for the difference.
///
/// The slot an event carries is a wall-clock time set by the orchestrator, so the worker
/// compares it with the (NTP-synchronised) system clock each time. A
/// [`qo_core::TokioClock`] anchored once at cold start would follow the monotonic clock from
/// there, which need not keep pace with wall time while a Lambda execution environment is
/// frozen between invocations.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system(SystemTime::now())
    }

    async fn sleep_until(&self, t: Timestamp) {
        let d = t.since(self.now());
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn follows_the_system_clock_and_sleeps_until_a_time() {
        let c = SystemClock;
        let before = Timestamp::from_system(SystemTime::now());
        let target = c.now().plus(Duration::from_millis(30));
        c.sleep_until(target).await;
        assert!(c.now() >= target);
        assert!(c.now().since(before) < Duration::from_secs(5));
        // A time in the past returns at once.
        c.sleep_until(before).await;
    }
}
