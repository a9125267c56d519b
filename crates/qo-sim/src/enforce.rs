//! Quota enforcement: the admission decision for one call at one instant.
//!
//! Pure logic over [`Timestamp`]s: the server hands in each call's arrival time. A rolling tier
//! `LIMIT/PERIOD` accepts a call at `t` iff fewer than `LIMIT` accepted calls lie in
//! `(t - PERIOD, t]`; a calendar tier accepts it iff fewer than `LIMIT` accepted calls lie in
//! `t`'s UTC period. Bursts in the spec are ignored: the window count is the truth. Only
//! accepted calls are counted.
//!
//! The limit enforced can follow a [`LimitSchedule`]: at each change's instant the tiers in
//! force switch, while the log of accepted calls (and each calendar period's count) carries
//! over, so a rolling window that spans the switch counts the calls before it against the new
//! limit, and a calendar period keeps what it counted.
//!
//! Another client can share the limit ([`Enforcer::with_other_client`]): it makes calls at
//! evenly spaced instants `start + k / rate` (`k = 1, 2, ...`), computed from the arrival times
//! handed in, so it is deterministic. A call of its that finds a window full waits and is
//! admitted the moment the windows have room, ahead of any call of ours then: it takes its
//! rate out of the limit, and our share is what is left.

use std::collections::VecDeque;
use std::time::Duration;

use qo_core::quota::{Period, Tier, WindowKind};
use qo_core::{QuotaSpec, Timestamp};

use crate::calendar::{next_start, period_start};
use crate::limiter::{Limiter, Meter, WindowView};
use crate::schedule::LimitSchedule;

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
    /// The start of the period counted.
    start: Timestamp,
    count: usize,
}

/// The other client sharing the limit.
#[derive(Debug)]
struct OtherClient {
    rate_per_s: f64,
    /// The `k` of its next call not yet due.
    next_k: u64,
    /// Its calls due but not admitted: the instant each may next try, oldest first.
    pending: VecDeque<Timestamp>,
    /// Calls it gave up because too many were waiting.
    dropped: u64,
}

/// At most this many of the other client's calls wait; older ones are given up.
const OTHER_PENDING_MAX: usize = 10_000;

/// The admission state for a whole limit schedule.
#[derive(Debug)]
pub struct Enforcer {
    schedule: LimitSchedule,
    /// The instant the schedule's seconds count from.
    start: Timestamp,
    /// Which segment of the schedule is in force.
    segment: usize,
    /// `(limit, period length)` of each rolling tier in force.
    rolling: Vec<(usize, Duration)>,
    /// `(period, limit)` of each calendar tier in force.
    calendar_limits: Vec<(Period, usize)>,
    /// The longest rolling period of any segment: older entries can be dropped.
    horizon: Duration,
    /// Whether any segment has a rolling tier (else no log is kept).
    keep_log: bool,
    /// Accepted call times (ours and the other client's) within the horizon, oldest first.
    log: VecDeque<Timestamp>,
    /// One count per calendar period of any segment.
    calendar: Vec<CalendarCount>,
    other: Option<OtherClient>,
    /// The other client's admissions not yet taken by [`Enforcer::take_other_admissions`].
    other_admitted: Vec<Timestamp>,
    /// The latest instant decided on: time never goes back.
    last: Option<Timestamp>,
    /// How rolling tiers are counted.
    limiter: Limiter,
    /// Per rolling period, its meter under a bucket or fixed-window limiter (kept across
    /// changes of the limit).
    meters: Vec<(Duration, Meter)>,
}

fn limit(t: &Tier) -> usize {
    usize::try_from(t.limit.get()).unwrap_or(usize::MAX)
}

/// The tier whose rate is lowest among the pacing tiers (second, minute), or among all tiers
/// when there is no pacing tier: the one an API's headers describe.
pub fn tightest_tier(spec: &QuotaSpec) -> &Tier {
    let pacing = spec.tiers().iter().filter(|t| t.period.is_pacing());
    let pool: Vec<&Tier> = if pacing.clone().next().is_some() {
        pacing.collect()
    } else {
        spec.tiers().iter().collect()
    };
    pool.into_iter()
        .min_by(|a, b| a.rate_per_s().total_cmp(&b.rate_per_s()))
        .unwrap_or(&spec.tiers()[0])
}

impl Enforcer {
    /// An enforcer of one spec throughout, with no calls yet. (Its start is the epoch: give
    /// [`Enforcer::with_other_client`] one from [`Enforcer::scheduled`].)
    pub fn new(spec: &QuotaSpec) -> Self {
        Self::scheduled(
            LimitSchedule::constant(spec.clone()),
            Timestamp::from_secs(0),
        )
    }

    /// An enforcer of `schedule`, whose seconds count from `start`, with no calls yet.
    pub fn scheduled(schedule: LimitSchedule, start: Timestamp) -> Self {
        let all: Vec<Tier> = schedule
            .segments()
            .flat_map(|(_, s)| s.tiers().iter().copied())
            .collect();
        let horizon = all
            .iter()
            .filter(|t| t.window == WindowKind::Rolling)
            .map(|t| t.period.duration())
            .max();
        let mut periods: Vec<Period> = all
            .iter()
            .filter(|t| t.window == WindowKind::Calendar)
            .map(|t| t.period)
            .collect();
        periods.sort_unstable();
        periods.dedup();
        let mut e = Enforcer {
            schedule,
            start,
            segment: usize::MAX,
            rolling: Vec::new(),
            calendar_limits: Vec::new(),
            horizon: horizon.unwrap_or_default(),
            keep_log: horizon.is_some(),
            log: VecDeque::new(),
            calendar: periods
                .into_iter()
                .map(|period| CalendarCount {
                    period,
                    start: Timestamp::EPOCH,
                    count: 0,
                })
                .collect(),
            other: None,
            other_admitted: Vec::new(),
            last: None,
            limiter: Limiter::SlidingLog,
            meters: Vec::new(),
        };
        e.switch_to(0);
        e
    }

    /// Adds another client taking `rate_per_s` calls per second of the same limit (see the
    /// module's doc); 0 or less adds none.
    pub fn with_other_client(mut self, rate_per_s: f64) -> Self {
        self.other = (rate_per_s > 0.0 && rate_per_s.is_finite()).then_some(OtherClient {
            rate_per_s,
            next_k: 1,
            pending: VecDeque::new(),
            dropped: 0,
        });
        self
    }

    /// Counts rolling tiers as `limiter` does (see [`crate::limiter`]); the default is the
    /// sliding log.
    pub fn with_limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = limiter;
        self.meters.clear();
        self
    }

    /// How rolling tiers are counted.
    pub fn limiter(&self) -> Limiter {
        self.limiter
    }

    /// The spec in force (after the last instant decided on).
    pub fn spec_in_force(&self) -> &QuotaSpec {
        self.schedule
            .segments()
            .nth(self.segment)
            .map_or_else(|| self.schedule.spec_at(Duration::ZERO), |(_, s)| s)
    }

    /// Calls of the other client given up because too many of them were waiting.
    pub fn other_dropped(&self) -> u64 {
        self.other.as_ref().map_or(0, |o| o.dropped)
    }

    /// The other client's admissions since the last call, in order.
    pub fn take_other_admissions(&mut self) -> Vec<Timestamp> {
        std::mem::take(&mut self.other_admitted)
    }

    /// Switches the tiers in force to the schedule's at `t`, if they changed.
    fn switch_at(&mut self, t: Timestamp) {
        let since = t.since(self.start);
        let segment = self
            .schedule
            .segments()
            .take_while(|(from, _)| *from <= since)
            .count()
            .saturating_sub(1);
        self.switch_to(segment);
    }

    fn switch_to(&mut self, segment: usize) {
        if segment == self.segment {
            return;
        }
        let Some((_, spec)) = self.schedule.segments().nth(segment) else {
            return;
        };
        self.rolling = spec
            .tiers()
            .iter()
            .filter(|t| t.window == WindowKind::Rolling)
            .map(|t| (limit(t), t.period.duration()))
            .collect();
        self.calendar_limits = spec
            .tiers()
            .iter()
            .filter(|t| t.window == WindowKind::Calendar)
            .map(|t| (t.period, limit(t)))
            .collect();
        self.segment = segment;
    }

    /// The wait until the tiers in force accept a call at `now` (zero: accepted now).
    fn wait_at(&mut self, now: Timestamp) -> Duration {
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
            if let Some(meter) = meter_for(&mut self.meters, self.limiter, period) {
                wait = wait.max(meter.wait(self.limiter, limit as u64, period, now));
                continue;
            }
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
            let start = period_start(c.period, now);
            if start != c.start {
                c.start = start;
                c.count = 0;
            }
        }
        for &(period, limit) in &self.calendar_limits {
            let Some(c) = self.calendar.iter().find(|c| c.period == period) else {
                continue;
            };
            if c.count >= limit {
                let next = next_start(period, c.start);
                wait = wait.max(next.since(now));
            }
        }
        wait
    }

    fn count(&mut self, now: Timestamp) {
        if self.keep_log {
            self.log.push_back(now);
        }
        for &(limit, period) in &self.rolling {
            if let Some(meter) = meter_for(&mut self.meters, self.limiter, period) {
                meter.count(limit as u64, period, now);
            }
        }
        for c in &mut self.calendar {
            c.count += 1;
        }
    }

    /// Brings the schedule and the other client up to `now` (not beyond), and returns `now`
    /// moved up to the latest instant already decided on.
    fn catch_up(&mut self, now: Timestamp) -> Timestamp {
        let now = self.last.map_or(now, |l| l.max(now));
        if let Some(o) = &mut self.other {
            // Far behind (a start long before now): skip to the calls that may still wait.
            let due_by_now = (now.since(self.start).as_secs_f64() * o.rate_per_s).floor() as u64;
            let keep = OTHER_PENDING_MAX as u64;
            if due_by_now.saturating_sub(o.next_k) > keep {
                let skip = due_by_now - keep - o.next_k;
                o.dropped += skip;
                o.next_k += skip;
            }
            loop {
                let due = self
                    .start
                    .plus(Duration::from_secs_f64(o.next_k as f64 / o.rate_per_s));
                if due > now {
                    break;
                }
                o.pending.push_back(due);
                o.next_k += 1;
                if o.pending.len() > OTHER_PENDING_MAX {
                    o.pending.pop_front();
                    o.dropped += 1;
                }
            }
        }
        while let Some(mut t) = self.other.as_ref().and_then(|o| o.pending.front().copied()) {
            t = self.last.map_or(t, |l| l.max(t));
            self.switch_at(t);
            let wait = self.wait_at(t);
            let o = self
                .other
                .as_mut()
                .expect("the other client has a call pending");
            if wait.is_zero() {
                o.pending.pop_front();
                self.count(t);
                self.other_admitted.push(t);
                self.last = Some(t);
            } else {
                // It tries again once the windows have room (never deciding beyond now).
                let retry = t.plus(wait);
                if let Some(front) = o.pending.front_mut() {
                    *front = retry;
                }
                if retry > now {
                    break;
                }
            }
        }
        self.switch_at(now);
        self.last = Some(now);
        now
    }

    /// Decides on a call arriving at `now` and, if accepted, counts it.
    ///
    /// Arrival times must not go backwards (the server takes them under one lock from a
    /// monotonic clock); a call earlier than the latest instant decided on is treated as
    /// arriving with it. The schedule's change and the other client's calls due by `now` are
    /// applied first.
    pub fn admit(&mut self, now: Timestamp) -> Admission {
        let now = self.catch_up(now);
        let wait = self.wait_at(now);
        if !wait.is_zero() {
            return Admission::Throttled { retry_after: wait };
        }
        self.count(now);
        Admission::Accepted
    }

    /// [`Enforcer::admit`] for a call that must also fit `own`, the tiers of its source alone
    /// (an API that limits per source address): counted in both only when both accept; the
    /// wait is the longer of the two.
    pub fn admit_with(&mut self, own: &mut Enforcer, now: Timestamp) -> Admission {
        let now = self.catch_up(now);
        let own_now = own.catch_up(now);
        let wait = self.wait_at(now).max(own.wait_at(own_now));
        if !wait.is_zero() {
            return Admission::Throttled { retry_after: wait };
        }
        self.count(now);
        own.count(own_now);
        Admission::Accepted
    }

    /// Applies the schedule's changes and the other client's calls up to `now`, without a
    /// call of ours (e.g. before reading [`Enforcer::window`] or the stats).
    pub fn advance(&mut self, now: Timestamp) {
        self.catch_up(now);
    }

    /// What rate-limit headers say at `t` (the latest instant decided on, or after it) about
    /// the tightest tier in force ([`tightest_tier`]): its limit, remaining calls and reset.
    pub fn window(&self, t: Timestamp) -> WindowView {
        let tier = tightest_tier(self.spec_in_force());
        let limit = u64::from(tier.limit.get());
        let period = tier.period.duration();
        let meter = (tier.window == WindowKind::Rolling)
            .then(|| self.meters.iter().find(|(p, _)| *p == period))
            .flatten()
            .map(|(_, m)| *m)
            .or_else(|| {
                (tier.window == WindowKind::Rolling)
                    .then(|| Meter::new(self.limiter))
                    .flatten()
            });
        if let Some(m) = meter {
            return m.view(self.limiter, limit, period, t);
        }
        match tier.window {
            WindowKind::Rolling => {
                let first_in = self.log.partition_point(|&e| t.since(e) >= period);
                let in_window = (self.log.len() - first_in) as u64;
                let reset = self
                    .log
                    .get(first_in)
                    .map_or(Duration::ZERO, |&oldest| oldest.plus(period).since(t));
                WindowView {
                    limit,
                    remaining: limit.saturating_sub(in_window),
                    reset,
                    period,
                }
            }
            WindowKind::Calendar => {
                let start = period_start(tier.period, t);
                let count = self
                    .calendar
                    .iter()
                    .find(|c| c.period == tier.period && c.start == start)
                    .map_or(0, |c| c.count) as u64;
                WindowView {
                    limit,
                    remaining: limit.saturating_sub(count),
                    reset: next_start(tier.period, t).since(t),
                    period,
                }
            }
        }
    }
}

/// The meter of the rolling tier of `period` under `limiter`, made on first use; `None` for
/// the sliding log (which counts on the log).
fn meter_for(
    meters: &mut Vec<(Duration, Meter)>,
    limiter: Limiter,
    period: Duration,
) -> Option<&mut Meter> {
    let i = match meters.iter().position(|(p, _)| *p == period) {
        Some(i) => i,
        None => {
            meters.push((period, Meter::new(limiter)?));
            meters.len() - 1
        }
    };
    meters.get_mut(i).map(|(_, m)| m)
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

    #[test]
    fn a_call_counts_only_where_both_its_source_s_tiers_and_the_shared_ones_accept_it() {
        let mut shared = enforcer("3/s");
        let (mut a, mut b) = (enforcer("2/s"), enforcer("2/s"));
        assert_eq!(shared.admit_with(&mut a, at_ms(0)), Admission::Accepted);
        assert_eq!(shared.admit_with(&mut a, at_ms(100)), Admission::Accepted);
        // Source `a` is full until its first call leaves its window; the shared tier is not.
        assert_eq!(
            shared.admit_with(&mut a, at_ms(200)),
            Admission::Throttled {
                retry_after: Duration::from_millis(800)
            }
        );
        // The refused call took nothing of the shared tier: `b` gets its third call.
        assert_eq!(shared.admit_with(&mut b, at_ms(300)), Admission::Accepted);
        assert_eq!(
            shared.admit_with(&mut b, at_ms(400)),
            Admission::Throttled {
                retry_after: Duration::from_millis(600)
            }
        );
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

    fn scheduled(spec: &str) -> Enforcer {
        Enforcer::scheduled(spec.parse().expect("schedule"), T0)
    }

    #[test]
    fn the_limit_switches_at_the_schedule_s_instants() {
        let mut e = scheduled("3/s;1/s@2;3/s@4");
        for ms in [1_500, 1_600, 1_700] {
            assert_eq!(e.admit(at_ms(ms)), Admission::Accepted, "{ms}");
        }
        assert!(matches!(e.admit(at_ms(1_800)), Admission::Throttled { .. }));
        assert_eq!(e.spec_in_force().to_string(), "3/s");
        // At 2 s the limit is 1/s, and the window (1 s, 2 s] already holds 3: full until the
        // newest of them (1.7 s) leaves it.
        assert_eq!(
            throttled_for(e.admit(at_ms(2_000))),
            Duration::from_millis(700)
        );
        assert_eq!(e.spec_in_force().to_string(), "1/s");
        assert_eq!(e.admit(at_ms(2_700)), Admission::Accepted);
        assert_eq!(
            throttled_for(e.admit(at_ms(2_800))),
            Duration::from_millis(900)
        );
        assert_eq!(e.admit(at_ms(3_700)), Admission::Accepted);
        // Back to 3/s at 4 s: (3 s, 4 s] holds 3.7 s, so two more fit.
        assert_eq!(e.admit(at_ms(4_000)), Admission::Accepted);
        assert_eq!(e.admit(at_ms(4_000)), Admission::Accepted);
        assert_eq!(
            throttled_for(e.admit(at_ms(4_001))),
            Duration::from_millis(699)
        );
    }

    #[test]
    fn a_window_spanning_the_switch_counts_the_calls_before_it() {
        // 5/s, then 2 per minute from second 10: the log reaches back a minute although the
        // first spec needs only a second of it.
        let mut e = scheduled("5/s;2/min@10");
        for ms in [9_000, 9_100, 9_200, 9_300, 9_400] {
            assert_eq!(e.admit(at_ms(ms)), Admission::Accepted);
        }
        // Full until the call at 9.3 s (two places from the newest) is a minute old.
        assert_eq!(
            throttled_for(e.admit(at_ms(10_000))),
            Duration::from_millis(59_300)
        );
        assert_eq!(e.admit(at_ms(69_400)), Admission::Accepted);
    }

    #[test]
    fn a_calendar_count_carries_over_the_switch() {
        let midnight = Timestamp::from_secs(19_999 * 86_400);
        let start = midnight.minus(Duration::from_secs(3_600));
        let mut e = Enforcer::scheduled(
            "3/day@calendar;2/day@calendar@10"
                .parse()
                .expect("schedule"),
            start,
        );
        let at = |s: u64| start.plus(Duration::from_secs(s));
        assert_eq!(e.admit(at(1)), Admission::Accepted);
        assert_eq!(e.admit(at(2)), Admission::Accepted);
        assert_eq!(
            throttled_for(e.admit(at(10))),
            Duration::from_secs(3_600 - 10)
        );
        assert_eq!(e.admit(at(3_600)), Admission::Accepted);
    }

    /// Our calls at every millisecond for 20 s against 20/s with another client at 5/s: the
    /// API admits at most 20 in any second, the other client gets its 5 every second, and we
    /// get the 15 left once the first second's burst (ours alone, before its first call was
    /// due) has left the window.
    #[test]
    fn another_client_takes_its_share_of_the_limit() {
        let mut e = scheduled("20/s").with_other_client(5.0);
        let mut ours = Vec::new();
        let mut other = Vec::new();
        for ms in 0..20_000 {
            if e.admit(at_ms(ms)) == Admission::Accepted {
                ours.push(Duration::from_millis(ms));
            }
            other.extend(e.take_other_admissions().iter().map(|t| t.since(T0)));
        }
        let mut all: Vec<Duration> = ours.iter().chain(&other).copied().collect();
        all.sort_unstable();
        let sec = Duration::from_secs(1);
        assert_eq!(crate::window::max_in_window(&all, sec), 20);
        // Due at 0.2 s, 0.4 s, ... 20 s: 99 by 19.999 s, none waiting more than a second.
        assert!(other.len() >= 98, "{}", other.len());
        for (k, t) in other.iter().enumerate() {
            let due = Duration::from_millis(200 * (k as u64 + 1));
            assert!(
                *t >= due && *t - due <= sec,
                "call {k} due {due:?} at {t:?}"
            );
        }
        let after_warmup: Vec<Duration> = ours
            .iter()
            .filter(|t| **t >= Duration::from_secs(2))
            .copied()
            .collect();
        assert_eq!(crate::window::max_in_window(&after_warmup, sec), 15);
        assert_eq!(e.other_dropped(), 0);
    }

    #[test]
    fn an_other_client_far_behind_gives_up_its_oldest_calls_at_once() {
        // Started at the epoch: billions of calls due, skipped without being computed.
        let mut e = enforcer("20/s").with_other_client(5.0);
        // The last 10,000 due, 5 a second, leave room in the second before T0.
        assert_eq!(e.admit(T0), Admission::Accepted);
        assert_eq!(e.take_other_admissions().len(), OTHER_PENDING_MAX);
        assert!(e.other_dropped() > 8_000_000_000, "{}", e.other_dropped());
    }

    #[test]
    fn the_window_view_of_a_rolling_tier() {
        let mut e = enforcer("3/s");
        let empty = e.window(at_ms(0));
        assert_eq!(
            (empty.limit, empty.remaining, empty.reset),
            (3, 3, Duration::ZERO)
        );
        assert_eq!(empty.reset_secs(), 0);
        assert_eq!(e.admit(at_ms(0)), Admission::Accepted);
        assert_eq!(e.admit(at_ms(400)), Admission::Accepted);
        let v = e.window(at_ms(400));
        assert_eq!(
            (v.limit, v.remaining, v.reset, v.period),
            (3, 1, Duration::from_millis(600), Duration::from_secs(1))
        );
        assert_eq!(v.reset_secs(), 1);
        assert_eq!(e.admit(at_ms(500)), Admission::Accepted);
        assert!(matches!(e.admit(at_ms(600)), Admission::Throttled { .. }));
        assert_eq!(e.window(at_ms(600)).remaining, 0);
        // At 1.2 s the call at 0 has left: 400 and 500 remain, the oldest leaves at 1.4 s.
        let v = e.window(at_ms(1_200));
        assert_eq!((v.remaining, v.reset), (1, Duration::from_millis(200)));
    }

    #[test]
    fn the_window_view_follows_the_tightest_tier_in_force() {
        // 100/min (1.67/s) is tighter than 10/s.
        let mut e = enforcer("10/s,100/min,1000/day@calendar");
        for ms in [0, 10, 20] {
            assert_eq!(e.admit(at_ms(ms)), Admission::Accepted);
        }
        let v = e.window(at_ms(30_000));
        assert_eq!(
            (v.limit, v.remaining, v.reset, v.period),
            (100, 97, Duration::from_secs(30), Duration::from_secs(60))
        );
        // Only budgets: the tightest of those, calendar, resetting at UTC midnight.
        let midnight = Timestamp::from_secs(19_999 * 86_400);
        let mut e = Enforcer::new(&"5/day@calendar,1000/month@calendar".parse().expect("spec"));
        let t = midnight.minus(Duration::from_millis(1_500));
        assert_eq!(e.admit(t), Admission::Accepted);
        let v = e.window(t);
        assert_eq!((v.limit, v.remaining), (5, 4));
        assert_eq!((v.reset, v.reset_secs()), (Duration::from_millis(1_500), 2));
        // After a switch, the spec then in force.
        let mut e = scheduled("20/s;10/s@5");
        assert_eq!(e.admit(at_ms(4_900)), Admission::Accepted);
        assert_eq!(e.window(at_ms(4_900)).limit, 20);
        e.advance(at_ms(5_000));
        let v = e.window(at_ms(5_000));
        assert_eq!((v.limit, v.remaining), (10, 9));
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
