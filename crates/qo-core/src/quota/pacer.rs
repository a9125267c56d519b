//! Pacing: when may the next call happen, given every tier, the usage so far and the policy.
//!
//! The [`Pacer`] is the thin combinator over the tiers: each tier's constraints (the private
//! `quota::constraint` module) say when a call conforms to that tier; the pacer moves the
//! call to the first instant every tier allows (a fixed point: the constraints are monotone),
//! names the tier that bound it ([`NotNow`]) and records the call in every tier. The API's
//! back-off, the slow-start ramp, the learned rate and the write-ahead horizon of a crashed
//! run are the pacer's too.
//!
//! A call is recorded only through [`Pacer::take`] (the call at `at`, if it conforms) or
//! [`Pacer::take_first_from`] (the first conforming call at or after `t`): there is no way to
//! record a call the quota does not allow. [`Pacer::peek`] answers without recording.

use std::fmt;

use super::adaptive::Reaction;
use super::constraint::{Binding, TierRule};
use super::policy::PacingPolicy;
use super::spec::{QuotaSpec, TierId};
use super::state::{QuotaState, TierReport, TierUsage};
use crate::quota::feedback::{ApiWindow, Throttles};
use crate::time::Timestamp;

/// Why a call may not happen at the time asked, and the earliest it may: "not before T".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotNow {
    /// Not before `at`: a pace or a window frees a slot then.
    NotBefore {
        /// The earliest time.
        at: Timestamp,
        /// The tier that binds.
        tier: TierId,
    },
    /// A budget is used up until its reset at `until`.
    ExhaustedUntil {
        /// The reset.
        until: Timestamp,
        /// The tier that binds.
        tier: TierId,
    },
    /// The API asked us to back off (HTTP 429 Retry-After); `until` is the first slot the
    /// tiers allow from its end.
    BackingOff {
        /// The end of the back-off.
        until: Timestamp,
    },
}

impl NotNow {
    /// The earliest time a call may happen.
    pub fn earliest(&self) -> Timestamp {
        match *self {
            NotNow::NotBefore { at, .. } => at,
            NotNow::ExhaustedUntil { until, .. } | NotNow::BackingOff { until } => until,
        }
    }

    /// The tier that binds (none for a back-off).
    pub fn tier(&self) -> Option<TierId> {
        match *self {
            NotNow::NotBefore { tier, .. } | NotNow::ExhaustedUntil { tier, .. } => Some(tier),
            NotNow::BackingOff { .. } => None,
        }
    }
}

impl fmt::Display for NotNow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotNow::NotBefore { at, tier } => write!(f, "not before {at} ({tier})"),
            NotNow::ExhaustedUntil { until, tier } => {
                write!(f, "exhausted until {until} ({tier})")
            }
            NotNow::BackingOff { until } => write!(f, "backing off until {until}"),
        }
    }
}

impl std::error::Error for NotNow {}

/// The answer to "may I call at `t`?" ([`Pacer::peek`]): `Ok(())`, or not now and why.
pub type Availability = Result<(), NotNow>;

/// A call the pacer recorded: it conforms to every tier at [`Slot::at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[must_use = "the slot is the time the call may happen"]
pub struct Slot(Timestamp);

impl Slot {
    /// When the call may happen (the worker may call up to the policy's tolerance later).
    pub fn at(self) -> Timestamp {
        self.0
    }
}

impl From<Slot> for Timestamp {
    fn from(s: Slot) -> Timestamp {
        s.0
    }
}

/// The pacer: a spec, a policy, and the usage state. Pure: every method takes the time.
///
/// ```
/// use std::time::Duration;
/// use qo_core::Timestamp;
/// use qo_core::quota::{NotNow, Pacer, PacingPolicy, TierId};
///
/// let policy = PacingPolicy { call_tolerance: Duration::ZERO, ..PacingPolicy::default() };
/// let mut pacer = Pacer::new("2/s,3/h".parse().expect("spec"), policy);
/// let t0 = Timestamp::from_secs(1_800_000_000);
///
/// // A call now conforms, and is recorded.
/// assert_eq!(pacer.take(t0).map(|s| s.at()), Ok(t0));
/// // The next one may not follow at once: the 2/s pace (tier 0) says when it may.
/// let half = t0.plus(Duration::from_millis(500));
/// assert_eq!(pacer.take(t0), Err(NotNow::NotBefore { at: half, tier: TierId::new(0) }));
/// // Or take the first slot that conforms, whenever it is.
/// assert_eq!(pacer.take_first_from(t0).at(), half);
/// assert_eq!(pacer.take_first_from(t0).at(), t0.plus(Duration::from_secs(1)));
/// // Three calls use up the hour (tier 1) until the first has left its window.
/// match pacer.peek(t0.plus(Duration::from_secs(2))) {
///     Err(NotNow::ExhaustedUntil { until, tier }) => {
///         assert_eq!(tier, TierId::new(1));
///         assert!(until >= t0.plus(Duration::from_secs(3_600)));
///     }
///     other => panic!("{other:?}"),
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Pacer {
    spec: QuotaSpec,
    policy: PacingPolicy,
    state: QuotaState,
    /// One per tier of the spec, in order.
    rules: Vec<TierRule>,
    /// Whether any tier's answers depend on the pace fraction.
    scales: bool,
    /// The spec's pacing rate, the learned rate's ceiling.
    ceiling: f64,
}

impl Pacer {
    /// A pacer with no usage yet.
    pub fn new(spec: QuotaSpec, policy: PacingPolicy) -> Self {
        Self::hydrate(spec, policy, QuotaState::default())
    }

    /// A pacer continuing from a persisted state. Usage of tiers that are no longer in the spec
    /// is dropped; tiers new to the spec start empty; a tier whose limit changed keeps its usage.
    pub fn hydrate(spec: QuotaSpec, policy: PacingPolicy, state: QuotaState) -> Self {
        let tiers = spec
            .tiers()
            .iter()
            .map(|t| {
                state
                    .tiers
                    .iter()
                    .find(|u| u.period == t.period && u.window == t.window)
                    .cloned()
                    .unwrap_or(TierUsage {
                        period: t.period,
                        window: t.window,
                        ..TierUsage::default()
                    })
            })
            .collect();
        let rules: Vec<TierRule> = spec
            .tiers()
            .iter()
            .map(|t| TierRule::new(t, &policy))
            .collect();
        Pacer {
            scales: rules.iter().any(TierRule::scales),
            ceiling: spec.pacing_rate_per_s(),
            rules,
            spec,
            policy,
            state: QuotaState { tiers, ..state },
        }
    }

    /// The spec.
    pub fn spec(&self) -> &QuotaSpec {
        &self.spec
    }

    /// The policy.
    pub fn policy(&self) -> &PacingPolicy {
        &self.policy
    }

    /// The state to persist.
    pub fn state(&self) -> &QuotaState {
        &self.state
    }

    /// Replaces the spec (an operator's change), keeping matching usage.
    pub fn set_spec(&mut self, spec: QuotaSpec) {
        let state = std::mem::take(&mut self.state);
        *self = Pacer::hydrate(spec, self.policy, state);
    }

    /// Starts a slow-start ramp at `at` (the circuit just closed).
    pub fn start_ramp(&mut self, at: Timestamp) {
        if !self.policy.slow_start.duration.is_zero() {
            self.state.ramp_from = Some(at);
        }
    }

    /// No call before `until` (the API answered 429 with Retry-After).
    pub fn back_off_until(&mut self, until: Timestamp) {
        if self.state.backoff_until.is_none_or(|b| b < until) {
            self.state.backoff_until = Some(until);
        }
    }

    /// The fraction of the full rate allowed at `t` by the slow-start ramp.
    pub fn ramp_fraction(&self, t: Timestamp) -> f64 {
        self.policy.slow_start.fraction(self.state.ramp_from, t)
    }

    /// The fraction of the configured pace the learned rate allows at `t`
    /// ([`Adaptive`](super::Adaptive)).
    pub fn adaptive_fraction(&self, t: Timestamp) -> f64 {
        let ceiling = self.ceiling;
        if ceiling <= 0.0 {
            return 1.0;
        }
        (self
            .state
            .adaptive
            .rate_per_s(t, ceiling, &self.policy.adaptive)
            / ceiling)
            .clamp(0.0, 1.0)
    }

    /// Whether the pace is settled at `t`: the slow-start ramp is over, no decrease of the
    /// learned rate is in force (none was made, or its hold and probe are over) and no back-off
    /// holds. The orchestrator batches jobs only then: a batch commits its slots up to a window
    /// ahead, which costs nothing at a steady pace and slows the reaction to a moving one.
    pub fn is_settled(&self, t: Timestamp) -> bool {
        self.ramp_fraction(t) >= 1.0
            && !self
                .state
                .adaptive
                .decrease_in_force(t, &self.policy.adaptive)
            && self.state.backoff_until.is_none_or(|b| b <= t)
    }

    /// The fraction of the configured pace allowed at `t`: the lower of the slow-start ramp and
    /// the learned rate.
    pub fn pace_fraction(&self, t: Timestamp) -> f64 {
        self.ramp_fraction(t).min(self.adaptive_fraction(t))
    }

    /// The pace fraction at `t` if any tier scales by it (else any value does: 1).
    #[inline]
    fn fraction(&self, t: Timestamp) -> f64 {
        // No ramp and no learned rate: the full pace, without the arithmetic (which gives
        // exactly 1 then too).
        if !self.scales || (self.state.ramp_from.is_none() && self.state.adaptive.last.is_none()) {
            return 1.0;
        }
        self.pace_fraction(t)
    }

    /// The rate (calls per second) pacing aims at now: the tightest short-term tier, less
    /// headroom, scaled by the slow-start ramp or the learned rate, whichever is lower.
    pub fn target_rate_per_s(&self, t: Timestamp) -> f64 {
        self.ceiling * (1.0 - self.policy.headroom) * self.pace_fraction(t)
    }

    /// Reacts at `now` to the control record's throttle counter (see
    /// [`Adaptive::on_throttles`](super::Adaptive::on_throttles)); `estimate(slot)` is the
    /// API's limit judged from the calls before `slot`, if known.
    pub fn on_throttles<E: Into<super::LimitEstimate>>(
        &mut self,
        throttles: &Throttles,
        now: Timestamp,
        estimate: impl FnOnce(Timestamp) -> E,
    ) -> Reaction {
        let ceiling = self.ceiling;
        let policy = self.policy.adaptive;
        let paced_from = self.paced_from(now);
        self.state
            .adaptive
            .on_throttles(throttles, now, paced_from, ceiling, &policy, estimate)
    }

    /// Reacts at `now` to the API's report of its window (see
    /// [`Adaptive::on_api_window`](super::Adaptive::on_api_window)); `ours` is how many of
    /// this orchestrator's slots fell in that window. The rate follows it; the window's reset
    /// (whole seconds, rounded up, and for a rolling window only when the oldest call leaves
    /// it) does not pause dispatch: a 429's `Retry-After` does.
    pub fn on_api_window(&mut self, window: &ApiWindow, ours: u64, now: Timestamp) -> Reaction {
        let ceiling = self.ceiling;
        let policy = self.policy.adaptive;
        let period = self.spec.pacing_period();
        let paced_from = self.paced_from(now);
        self.state
            .adaptive
            .on_api_window(window, ours, period, now, paced_from, ceiling, &policy)
    }

    /// Where a decrease made at `now` takes full effect: one pacing window after the last
    /// slot already handed out (see [`crate::quota::Decrease::paced_from`]).
    fn paced_from(&self, now: Timestamp) -> Timestamp {
        self.state
            .last_slot
            .unwrap_or(now)
            .max(now)
            .plus(self.spec.pacing_period())
    }

    /// Forgets a learned rate that has climbed back to the ceiling.
    pub fn settle_adaptive(&mut self, t: Timestamp) {
        let policy = self.policy.adaptive;
        self.state.adaptive.settle(t, &policy);
    }

    /// May a call happen at `t`? Records nothing. Rich: yes, or not before T (a pace or a
    /// window), exhausted until the reset at T, or backing off until T.
    ///
    /// During a back-off the answer is the first slot the tiers allow from its end: the calls
    /// after it are paced (at the learned rate) from there, not sent in a burst at its end.
    #[inline]
    pub fn peek(&self, t: Timestamp) -> Availability {
        if let Some(until) = self.state.backoff_until
            && until > t
        {
            let until = match self.check_tiers(until) {
                Ok(()) => until,
                Err(n) => n.earliest(),
            };
            return Err(NotNow::BackingOff { until });
        }
        self.check_tiers(t)
    }

    /// The tiers' answer at `t`, the back-off aside.
    #[inline]
    fn check_tiers(&self, t: Timestamp) -> Availability {
        let mut at = t;
        let mut result: Option<(TierId, Binding)> = None;
        // Constraints are monotone; a few passes reach the fixed point.
        for _ in 0..8 {
            let mut moved = false;
            for (i, (rule, usage)) in self.rules.iter().zip(&self.state.tiers).enumerate() {
                let (e, binding) = rule.earliest(usage, at, self.fraction(at));
                if e > at {
                    at = e;
                    moved = true;
                    result = Some((TierId::new(i), binding));
                }
            }
            if !moved {
                break;
            }
        }
        match result {
            None => Ok(()),
            Some((tier, Binding::Pace)) => Err(NotNow::NotBefore { at, tier }),
            Some((tier, Binding::Budget)) => Err(NotNow::ExhaustedUntil { until: at, tier }),
        }
    }

    /// The earliest slot at or after `t` (records nothing).
    pub fn next_slot(&self, t: Timestamp) -> Timestamp {
        match self.peek(t) {
            Ok(()) => t,
            Err(n) => n.earliest(),
        }
    }

    /// Takes the slot at `at`: records a call then if it conforms to every tier (and no
    /// back-off is in force), else records nothing and says when a call may happen.
    #[inline]
    pub fn take(&mut self, at: Timestamp) -> Result<Slot, NotNow> {
        self.peek(at)?;
        self.reserve(at);
        Ok(Slot(at))
    }

    /// Takes the first slot at or after `t` that conforms ([`Pacer::next_slot`]): records the
    /// call there and returns it.
    pub fn take_first_from(&mut self, t: Timestamp) -> Slot {
        let at = self.next_slot(t);
        self.reserve(at);
        Slot(at)
    }

    /// Sets the write-ahead horizon at a save made at `now` (see [`QuotaState::horizon`]);
    /// `None` on a clean stop.
    pub fn set_horizon(&mut self, now: Timestamp, horizon: Option<Timestamp>) {
        self.state.horizon = horizon;
        self.state.saved_at = horizon.map(|_| now);
    }

    /// The previous run stopped without saving: calls may have been made at full pace between
    /// its last recorded slot and its horizon. Counts them conservatively, so that a restart
    /// after a crash cannot exceed any tier.
    pub fn assume_unrecorded_until(&mut self) {
        let Some(horizon) = self.state.horizon.take() else {
            return;
        };
        let from = self
            .state
            .saved_at
            .take()
            .or(self.state.last_slot)
            .unwrap_or(horizon)
            .min(horizon);
        let n = (horizon.since(from).as_secs_f64() * self.ceiling).ceil() as u32 + 1;
        let fraction = self.fraction(horizon);
        for (rule, usage) in self.rules.iter().zip(&mut self.state.tiers) {
            rule.assume(usage, horizon, n, fraction);
        }
        self.state.last_slot = Some(horizon);
    }

    /// Records a call at `at`, which the caller made sure conforms ([`Pacer::take`]).
    #[inline]
    fn reserve(&mut self, at: Timestamp) {
        let fraction = self.fraction(at);
        for (rule, usage) in self.rules.iter().zip(&mut self.state.tiers) {
            rule.record(usage, at, fraction);
        }
        self.state.last_slot = Some(self.state.last_slot.map_or(at, |l| l.max(at)));
        self.state.reserved_total += 1;
    }

    /// Usage of each tier at `t`, for status reports.
    pub fn report(&self, t: Timestamp) -> Vec<TierReport> {
        let fraction = self.fraction(t);
        self.spec
            .tiers()
            .iter()
            .zip(self.rules.iter().zip(&self.state.tiers))
            .map(|(tier, (rule, usage))| {
                let (used, resets_at) = rule.report(usage, t, fraction);
                TierReport {
                    tier: tier.to_string(),
                    used,
                    limit: tier.limit.get(),
                    resets_at,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::quota::{BudgetMode, SlowStart};

    fn pacer(spec: &str) -> Pacer {
        Pacer::new(
            spec.parse().expect("spec"),
            PacingPolicy {
                call_tolerance: Duration::ZERO,
                slow_start: SlowStart {
                    duration: Duration::ZERO,
                    from_fraction: 1.0,
                },
                ..PacingPolicy::default()
            },
        )
    }

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + ms)
    }

    #[test]
    fn the_pace_is_settled_only_with_no_ramp_no_decrease_in_force_and_no_back_off() {
        let mut p = pacer("20/s");
        assert!(p.is_settled(t(0)));
        p.back_off_until(t(2_000));
        assert!(!p.is_settled(t(1_999)), "a back-off in force");
        assert!(p.is_settled(t(2_000)));
        // A decrease of the learned rate: unsettled through its hold and its probe.
        let adaptive = p.policy().adaptive;
        let mut state = p.state().clone();
        state.adaptive.last = Some(crate::quota::Decrease {
            at: t(3_000),
            paced_from: t(3_000),
            from_per_s: 20.0,
            to_per_s: 14.0,
            estimate_per_s: None,
            basis: crate::quota::DecreaseBasis::Multiplicative,
        });
        let p = Pacer::hydrate(p.spec().clone(), *p.policy(), state);
        let over = t(3_000).plus(adaptive.hold + adaptive.probe);
        assert!(!p.is_settled(t(3_000)));
        assert!(!p.is_settled(over.minus(Duration::from_millis(1))));
        assert!(p.is_settled(over));
        // The slow-start ramp: unsettled until it ends.
        let mut p = Pacer::new(
            "20/s".parse().expect("spec"),
            PacingPolicy {
                slow_start: SlowStart {
                    duration: Duration::from_secs(10),
                    from_fraction: 0.2,
                },
                ..PacingPolicy::default()
            },
        );
        p.start_ramp(t(0));
        assert!(!p.is_settled(t(9_999)));
        assert!(p.is_settled(t(10_000)));
    }

    /// Hands out `n` slots as fast as allowed from `start`; returns them.
    fn drain(p: &mut Pacer, start: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n);
        let mut now = start;
        for _ in 0..n {
            let slot = p.take_first_from(now).at();
            out.push(slot);
            now = slot;
        }
        out
    }

    #[test]
    fn take_records_only_a_conforming_call() {
        let mut p = pacer("20/s");
        assert_eq!(p.take(t(0)).map(Slot::at), Ok(t(0)));
        let before = p.state().clone();
        // 10 ms later does not conform: refused, nothing recorded, and the answer says when.
        let refused = p.take(t(10));
        assert_eq!(
            refused,
            Err(NotNow::NotBefore {
                at: t(50),
                tier: TierId::new(0)
            })
        );
        assert_eq!(refused.map_err(|n| n.tier()), Err(Some(TierId::new(0))));
        assert_eq!(p.state(), &before);
        assert_eq!(p.take(t(50)).map(Slot::at), Ok(t(50)));
        assert_eq!(p.state().reserved_total, 2);
    }

    #[test]
    fn take_first_from_records_the_first_conforming_slot() {
        let mut p = pacer("10/s,2/h@calendar");
        let start = Timestamp::from_secs(3_600 * 500_000);
        let first = p.next_slot(start);
        assert_eq!(p.take_first_from(start).at(), first);
        assert_eq!(
            p.take_first_from(start).at(),
            start.plus(Duration::from_millis(100))
        );
        // The hour is used up: the next slot is its end, and taking it records it there.
        let reset = start.plus(Duration::from_secs(3_600));
        assert_eq!(
            p.take(start.plus(Duration::from_secs(1))),
            Err(NotNow::ExhaustedUntil {
                until: reset,
                tier: TierId::new(1)
            })
        );
        assert_eq!(p.take_first_from(start).at(), reset);
        assert_eq!(p.report(reset)[1].used, 1);
    }

    #[test]
    fn a_back_off_refuses_a_take_until_it_ends() {
        let mut p = pacer("10/s");
        p.back_off_until(t(5_000));
        assert_eq!(p.take(t(0)), Err(NotNow::BackingOff { until: t(5_000) }));
        assert_eq!(p.take_first_from(t(0)).at(), t(5_000));
        assert_eq!(
            NotNow::BackingOff { until: t(5_000) }.to_string(),
            format!("backing off until {}", t(5_000))
        );
    }

    #[test]
    fn spaces_calls_evenly_at_the_rate() {
        let mut p = pacer("20/s");
        let slots = drain(&mut p, t(0), 5);
        let gaps: Vec<u64> = slots
            .windows(2)
            .map(|w| w[1].since(w[0]).as_millis() as u64)
            .collect();
        assert_eq!(gaps, vec![50, 50, 50, 50]);
        assert_eq!(
            p.peek(slots[4]),
            Err(NotNow::NotBefore {
                at: slots[4].plus(Duration::from_millis(50)),
                tier: TierId::new(0)
            })
        );
    }

    #[test]
    fn tightest_short_tier_sets_the_pace() {
        let mut p = pacer("10/s,300/min");
        let slots = drain(&mut p, t(0), 3);
        assert_eq!(slots[1].since(slots[0]), Duration::from_millis(200));
    }

    #[test]
    fn tolerance_widens_the_window() {
        let mut p = Pacer::new("20/s".parse().expect("spec"), PacingPolicy::default());
        let slots = drain(&mut p, t(0), 3);
        // (1000 ms + 5 ms) / 20 = 50.25 ms
        assert_eq!(slots[1].since(slots[0]), Duration::from_micros(50_250));
    }

    #[test]
    fn greedy_day_budget_is_used_then_exhausted_until_the_reset() {
        let mut p = pacer("10/s,25/day@calendar");
        let start = Timestamp::from_secs(86_400 * 20_000 + 3_600);
        let slots = drain(&mut p, start, 25);
        // Used at the pace of 10/s...
        assert_eq!(slots[24].since(slots[0]), Duration::from_millis(2_400));
        // ...then exhausted until midnight UTC.
        let midnight = Timestamp::from_secs(86_400 * 20_001);
        assert_eq!(
            p.peek(slots[24]),
            Err(NotNow::ExhaustedUntil {
                until: midnight,
                tier: TierId::new(1)
            })
        );
    }

    #[test]
    fn rolling_budget_frees_as_old_calls_leave_the_window() {
        let mut p = pacer("10/s,5/h");
        let slots = drain(&mut p, t(0), 5);
        match p.peek(slots[4]) {
            Err(NotNow::ExhaustedUntil { until, tier }) if tier == TierId::new(1) => {
                assert!(until >= slots[0].plus(Duration::from_secs(3_600)));
                assert!(until <= slots[0].plus(Duration::from_secs(3_600 + 61)));
            }
            other => panic!("expected exhausted, got {other:?}"),
        }
    }

    #[test]
    fn spread_makes_the_budget_last() {
        let mut p = Pacer::new(
            "10/s,24/day@calendar".parse().expect("spec"),
            PacingPolicy {
                mode: BudgetMode::Spread,
                call_tolerance: Duration::ZERO,
                ..PacingPolicy::default()
            },
        );
        let start = Timestamp::from_secs(86_400 * 20_000);
        let slots = drain(&mut p, start, 3);
        // 24 calls over a day: about one an hour, not 10 a second.
        assert!(
            slots[1].since(slots[0]) >= Duration::from_secs(3_000),
            "{:?}",
            slots[1].since(slots[0])
        );
    }

    #[test]
    fn burst_allows_back_to_back_but_window_holds() {
        let mut p = pacer("10/s:burst=5");
        let slots = drain(&mut p, t(0), 12);
        assert_eq!(slots[4], slots[0]);
        // Never more than 10 in any 1 s window.
        for (i, s) in slots.iter().enumerate() {
            let in_window = slots[..=i]
                .iter()
                .filter(|x| s.since(**x) < Duration::from_secs(1))
                .count();
            assert!(
                in_window <= 10,
                "{in_window} calls in the window ending at slot {i}"
            );
        }
    }

    #[test]
    fn hydrated_state_paces_exactly_as_a_continuing_one() {
        let mut a = pacer("20/s,1000/min,5000/day");
        let mut slots = drain(&mut a, t(0), 30);
        let json = serde_json::to_string(a.state()).expect("json");
        let state: QuotaState = serde_json::from_str(&json).expect("json");
        let mut b = Pacer::hydrate(a.spec().clone(), *a.policy(), state);
        let last = *slots.last().expect("slots");
        let next_a = drain(&mut a, last, 10);
        let next_b = drain(&mut b, last, 10);
        assert_eq!(next_a, next_b);
        slots.extend(next_a);
        assert_eq!(next_b[0].since(last), Duration::from_millis(60));
    }

    #[test]
    fn a_crash_is_counted_conservatively() {
        let mut p = pacer("20/s,100/h");
        let slots = drain(&mut p, t(0), 10);
        let last = slots[9];
        p.set_horizon(last, Some(last.plus(Duration::from_secs(2))));
        // Saved here; the run then crashed. A new run hydrates the saved state.
        let mut q = Pacer::hydrate(p.spec().clone(), *p.policy(), p.state().clone());
        q.assume_unrecorded_until();
        assert_eq!(q.state().horizon, None);
        // Up to 2 s x 20/s + 1 = 41 unrecorded calls are assumed: the hour has 100 - 10 - 41 left.
        let next = q.next_slot(last);
        assert!(next >= last.plus(Duration::from_millis(2_050)), "{next:?}");
        assert_eq!(q.report(next)[1].used, 51);
    }

    #[test]
    fn slow_start_ramps_up() {
        let mut p = Pacer::new(
            "10/s".parse().expect("spec"),
            PacingPolicy {
                call_tolerance: Duration::ZERO,
                slow_start: SlowStart {
                    duration: Duration::from_secs(30),
                    from_fraction: 0.1,
                },
                ..PacingPolicy::default()
            },
        );
        p.start_ramp(t(0));
        let first = drain(&mut p, t(0), 2);
        assert_eq!(first[1].since(first[0]), Duration::from_secs(1)); // 10% of 10/s
        let late = drain(&mut p, t(60_000), 2);
        assert_eq!(late[1].since(late[0]), Duration::from_millis(100));
    }

    #[test]
    fn back_off_is_distinct() {
        let mut p = pacer("10/s");
        p.back_off_until(t(5_000));
        assert_eq!(p.peek(t(0)), Err(NotNow::BackingOff { until: t(5_000) }));
        assert_eq!(p.peek(t(5_000)), Ok(()));
    }

    #[test]
    fn report_counts_usage() {
        let mut p = pacer("10/s,100/day@calendar,1000/month");
        let start = Timestamp::from_secs(86_400 * 20_000);
        drain(&mut p, start, 7);
        let r = p.report(start.plus(Duration::from_secs(1)));
        assert_eq!(r[1].used, 7);
        assert_eq!(r[2].used, 7);
        assert_eq!(r[1].resets_at, Some(Timestamp::from_secs(86_400 * 20_001)));
        // The paced 10/s tier: 7 calls 100 ms apart, the last 0.4 s before `now`.
        assert_eq!(r[0].used, 7);
        let later = p.report(start.plus(Duration::from_secs(5)));
        assert_eq!(later[0].used, 0);
    }
}
