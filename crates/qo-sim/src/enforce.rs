//! Quota enforcement: the admission decision for one call at one instant.
//!
//! Pure logic over [`Timestamp`]s: the server hands in each call's arrival time. A rolling tier
//! `LIMIT/PERIOD` accepts a call at `t` iff fewer than `LIMIT` accepted calls lie in
//! `(t - PERIOD, t]`; a calendar tier accepts it iff fewer than `LIMIT` accepted calls lie in
//! `t`'s UTC period. Bursts in the spec are ignored: the window count is the truth. Only
//! accepted calls are counted.

use std::collections::VecDeque;
use std::time::Duration;

use qo_core::quota::pacer::{calendar_index, calendar_start};
use qo_core::quota::{Period, Tier, WindowKind};
use qo_core::{QuotaSpec, Timestamp};

/// The answer to one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The call is accepted and counted.
    Accepted,
    /// The call is refused; `retry_after` is the wait until every full tier would accept one
    /// more (ignoring calls accepted meanwhile).
    Throttled {
        /// Time until the windows would accept a call.
        retry_after: Duration,
    },
}

#[derive(Debug)]
struct CalendarCount {
    period: Period,
    limit: usize,
    index: u64,
    count: usize,
}

/// The admission state for a whole quota spec.
#[derive(Debug)]
pub struct Enforcer {
    /// `(limit, period length)` of each rolling tier.
    rolling: Vec<(usize, Duration)>,
    /// The longest rolling period: older entries can be dropped.
    horizon: Duration,
    /// Accepted call times within the horizon, oldest first.
    log: VecDeque<Timestamp>,
    calendar: Vec<CalendarCount>,
}

fn limit(t: &Tier) -> usize {
    usize::try_from(t.limit.get()).unwrap_or(usize::MAX)
}

impl Enforcer {
    /// An enforcer with no calls yet.
    pub fn new(spec: &QuotaSpec) -> Self {
        let rolling: Vec<(usize, Duration)> = spec
            .tiers()
            .iter()
            .filter(|t| t.window == WindowKind::Rolling)
            .map(|t| (limit(t), t.period.duration()))
            .collect();
        let calendar = spec
            .tiers()
            .iter()
            .filter(|t| t.window == WindowKind::Calendar)
            .map(|t| CalendarCount {
                period: t.period,
                limit: limit(t),
                index: 0,
                count: 0,
            })
            .collect();
        Enforcer {
            horizon: rolling.iter().map(|r| r.1).max().unwrap_or_default(),
            rolling,
            log: VecDeque::new(),
            calendar,
        }
    }

    /// Decides on a call arriving at `now` and, if accepted, counts it.
    ///
    /// Arrival times must not go backwards (the server takes them under one lock from a
    /// monotonic clock); a call earlier than the latest accepted one is treated as arriving
    /// with it.
    pub fn admit(&mut self, now: Timestamp) -> Admission {
        let now = match self.log.back() {
            Some(&last) if last > now => last,
            _ => now,
        };
        // Entries at or before now - horizon are outside every rolling window.
        while self
            .log
            .front()
            .is_some_and(|&t| now.since(t) >= self.horizon)
        {
            self.log.pop_front();
        }
        let mut wait = Duration::ZERO;
        for &(limit, period) in &self.rolling {
            // In the window iff t > now - period, i.e. now - t < period.
            let first_in = self.log.partition_point(|&t| now.since(t) >= period);
            let in_window = self.log.len() - first_in;
            if in_window >= limit {
                // The window accepts again once the entry `limit` places from the newest leaves.
                let blocker = self.log[self.log.len() - limit];
                wait = wait.max(blocker.plus(period).since(now));
            }
        }
        for c in &mut self.calendar {
            let idx = calendar_index(c.period, now);
            if idx != c.index {
                c.index = idx;
                c.count = 0;
            }
            if c.count >= c.limit {
                let next = calendar_start(c.period, idx.saturating_add(1));
                wait = wait.max(next.since(now));
            }
        }
        if !wait.is_zero() {
            return Admission::Throttled { retry_after: wait };
        }
        if !self.rolling.is_empty() {
            self.log.push_back(now);
        }
        for c in &mut self.calendar {
            c.count += 1;
        }
        Admission::Accepted
    }
}

/// `Retry-After` in whole seconds: the wait rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

    fn at_ms(ms: u64) -> Timestamp {
        T0.plus(Duration::from_millis(ms))
    }

    fn enforcer(spec: &str) -> Enforcer {
        Enforcer::new(&spec.parse().expect("spec"))
    }

    fn throttled_for(a: Admission) -> Duration {
        match a {
            Admission::Throttled { retry_after } => retry_after,
            Admission::Accepted => panic!("expected a throttle"),
        }
    }

    #[test]
    fn rolling_limit_and_exact_retry_after() {
        let mut e = enforcer("3/s");
        assert_eq!(e.admit(at_ms(0)), Admission::Accepted);
        assert_eq!(e.admit(at_ms(100)), Admission::Accepted);
        assert_eq!(e.admit(at_ms(200)), Admission::Accepted);
        // Full until the call at 0 leaves the window, at 1000.
        assert_eq!(
            throttled_for(e.admit(at_ms(300))),
            Duration::from_millis(700)
        );
        assert_eq!(throttled_for(e.admit(at_ms(999))), Duration::from_millis(1));
        // Half-open window: at 1000 the call at 0 is out.
        assert_eq!(e.admit(at_ms(1_000)), Admission::Accepted);
        // Now 100, 200, 1000 are in (t - 1 s, t]: next room at 1100.
        assert_eq!(
            throttled_for(e.admit(at_ms(1_050))),
            Duration::from_millis(50)
        );
        assert_eq!(e.admit(at_ms(1_100)), Admission::Accepted);
    }

    #[test]
    fn throttled_calls_do_not_count() {
        let mut e = enforcer("1/s");
        assert_eq!(e.admit(at_ms(0)), Admission::Accepted);
        for ms in (1..1_000).step_by(37) {
            assert!(matches!(e.admit(at_ms(ms)), Admission::Throttled { .. }));
        }
        assert_eq!(e.admit(at_ms(1_000)), Admission::Accepted);
    }

    #[test]
    fn paced_at_the_limit_is_never_throttled() {
        let mut e = enforcer("20/s");
        for k in 0..200 {
            assert_eq!(e.admit(at_ms(k * 50)), Admission::Accepted, "call {k}");
        }
        // One more in between is one too many.
        assert!(matches!(
            e.admit(at_ms(199 * 50 + 1)),
            Admission::Throttled { .. }
        ));
    }

    #[test]
    fn every_tier_must_hold_and_the_longest_wait_wins() {
        let mut e = enforcer("2/s,3/min");
        assert_eq!(e.admit(at_ms(0)), Admission::Accepted);
        assert_eq!(e.admit(at_ms(10)), Admission::Accepted);
        // Per-second tier full until 1000.
        assert_eq!(
            throttled_for(e.admit(at_ms(20))),
            Duration::from_millis(980)
        );
        assert_eq!(e.admit(at_ms(1_000)), Admission::Accepted);
        // Per-minute tier full until the call at 0 is a minute old.
        assert_eq!(
            throttled_for(e.admit(at_ms(5_000))),
            Duration::from_millis(55_000)
        );
        assert_eq!(
            throttled_for(e.admit(at_ms(59_999))),
            Duration::from_millis(1)
        );
        assert_eq!(e.admit(at_ms(60_000)), Admission::Accepted);
        // Per-minute tier full again (10, 1000, 60_000) until the call at 10 is a minute old.
        assert_eq!(
            throttled_for(e.admit(at_ms(60_005))),
            Duration::from_millis(5)
        );
        assert_eq!(e.admit(at_ms(60_010)), Admission::Accepted);
        assert_eq!(
            throttled_for(e.admit(at_ms(60_011))),
            Duration::from_millis(989)
        );
    }

    #[test]
    fn long_rolling_tiers_keep_a_bounded_log() {
        let mut e = enforcer("5/s,1000/h");
        for k in 0..10_000u64 {
            let _ = e.admit(at_ms(k * 10));
        }
        // At most 1000 accepted in the last hour are retained.
        assert!(e.log.len() <= 1_000, "{}", e.log.len());
    }

    #[test]
    fn calendar_day_resets_at_utc_midnight() {
        let midnight = Timestamp::from_secs(19_999 * 86_400);
        let mut e = enforcer("2/day@calendar");
        let before = midnight.minus(Duration::from_millis(1_500));
        assert_eq!(e.admit(before), Admission::Accepted);
        assert_eq!(e.admit(before), Admission::Accepted);
        assert_eq!(
            throttled_for(e.admit(midnight.minus(Duration::from_millis(1)))),
            Duration::from_millis(1)
        );
        // A rolling day would still be full; the calendar day is new.
        assert_eq!(e.admit(midnight), Admission::Accepted);
        assert_eq!(e.admit(midnight), Admission::Accepted);
        assert_eq!(
            throttled_for(e.admit(midnight.plus(Duration::from_secs(3_600)))),
            Duration::from_secs(86_400 - 3_600)
        );
    }

    #[test]
    fn calendar_month_resets_on_the_first() {
        // 2024-03-01T00:00:00Z.
        let march = Timestamp::from_secs(1_709_251_200);
        let mut e = enforcer("1/month@calendar");
        let feb_end = march.minus(Duration::from_secs(10));
        assert_eq!(e.admit(feb_end), Admission::Accepted);
        assert_eq!(
            throttled_for(e.admit(feb_end.plus(Duration::from_secs(1)))),
            Duration::from_secs(9)
        );
        assert_eq!(e.admit(march), Admission::Accepted);
    }

    #[test]
    fn mixed_rolling_and_calendar() {
        let mut e = enforcer("10/s,3/day@calendar");
        for ms in [0, 1, 2] {
            assert_eq!(e.admit(at_ms(ms)), Admission::Accepted);
        }
        assert!(matches!(e.admit(at_ms(3)), Admission::Throttled { .. }));
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(55)), 55);
    }
}
