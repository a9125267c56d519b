//! Pacing: when may the next call happen, given every tier, the usage so far and the policy.
//!
//! Each tier adds constraints:
//! - a *pace* (GCRA): short-term tiers (second, minute) space calls evenly at `window / limit`,
//!   allowing `burst` back to back; in `spread` mode budget tiers pace too, so the budget lasts
//!   to the reset;
//! - a *window count*: a rolling tier whose pace alone does not bound its window (a burst, or a
//!   budget tier in `greedy` mode) counts calls in buckets; a calendar tier counts calls since
//!   its last UTC boundary.
//!
//! The worker calls at the slot the pacer handed out, or up to `call_tolerance` later. Every
//! window is therefore widened by that tolerance, so even a late call stays inside the quota.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::adaptive::{Adaptive, AdaptivePolicy, Reaction};
use super::spec::{Period, QuotaSpec, Tier, WindowKind};
use crate::control::{ApiWindow, Throttles};
use crate::time::{Timestamp, duration_micros};

/// How budget tiers (hour, day, month) are used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetMode {
    /// Use the budget as fast as the short tiers allow, then wait for the reset.
    #[default]
    Greedy,
    /// Pace so that the budget lasts until the reset.
    Spread,
}

impl std::str::FromStr for BudgetMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "greedy" => Ok(BudgetMode::Greedy),
            "spread" => Ok(BudgetMode::Spread),
            other => Err(format!("`{other}` is not a budget mode (greedy or spread)")),
        }
    }
}

/// After the circuit closes, the rate ramps from `from_fraction` to the full quota over `duration`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlowStart {
    /// How long the ramp lasts (zero disables slow start).
    pub duration: Duration,
    /// The fraction of the full rate the ramp starts at, in (0, 1].
    pub from_fraction: f64,
}

impl Default for SlowStart {
    fn default() -> Self {
        SlowStart {
            duration: Duration::from_secs(30),
            from_fraction: 0.1,
        }
    }
}

/// How the quota is used.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PacingPolicy {
    /// Greedy or spread use of budget tiers.
    pub mode: BudgetMode,
    /// The most a worker may call after its slot; windows are widened by it.
    pub call_tolerance: Duration,
    /// A fraction of the quota left unused, in [0, 0.5): a fallback, normally 0.
    pub headroom: f64,
    /// The ramp after the circuit closes.
    pub slow_start: SlowStart,
    /// The rate learned from the API's throttles, under the configured quota.
    #[serde(default)]
    pub adaptive: AdaptivePolicy,
}

impl Default for PacingPolicy {
    fn default() -> Self {
        PacingPolicy {
            mode: BudgetMode::Greedy,
            call_tolerance: Duration::from_millis(5),
            headroom: 0.0,
            slow_start: SlowStart::default(),
            adaptive: AdaptivePolicy::default(),
        }
    }
}

/// The answer to "may I call at `t`?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Yes, at the time asked.
    Now,
    /// Not before `at`: a pace or a window frees a slot then (index of the binding tier).
    NotBefore {
        /// The earliest time.
        at: Timestamp,
        /// Index of the tier that binds.
        tier: usize,
    },
    /// A budget is used up until its reset at `until` (index of the exhausted tier).
    ExhaustedUntil {
        /// The reset.
        until: Timestamp,
        /// Index of the tier that binds.
        tier: usize,
    },
    /// The API asked us to back off (HTTP 429 Retry-After) until `until`.
    BackingOff {
        /// The end of the back-off.
        until: Timestamp,
    },
}

impl Availability {
    /// The earliest time a call may happen, given it was asked at `t`.
    pub fn earliest(&self, t: Timestamp) -> Timestamp {
        match *self {
            Availability::Now => t,
            Availability::NotBefore { at, .. } => at,
            Availability::ExhaustedUntil { until, .. } | Availability::BackingOff { until } => {
                until
            }
        }
    }
}

/// Number of buckets a rolling window is counted in.
const BUCKETS_PER_WINDOW: u64 = 60;

/// The usage of one tier: everything needed to pace it after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierUsage {
    /// The tier's period (matches usage to a tier when the spec changes).
    pub period: Period,
    /// The tier's window kind.
    pub window: WindowKind,
    /// GCRA theoretical arrival time of the next call.
    #[serde(default)]
    pub tat: Timestamp,
    /// Rolling window counts: (bucket index, calls).
    #[serde(default)]
    pub buckets: VecDeque<(u64, u32)>,
    /// Calendar count: (period index, calls in it).
    #[serde(default)]
    pub calendar: Option<(u64, u32)>,
}

/// The persisted quota state: usage per tier, the slow-start ramp, and the API's back-off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaState {
    /// Usage, one entry per tier of the spec, in order.
    pub tiers: Vec<TierUsage>,
    /// When the current slow-start ramp began (the circuit's last closing).
    #[serde(default)]
    pub ramp_from: Option<Timestamp>,
    /// No call before this (the API's Retry-After).
    #[serde(default)]
    pub backoff_until: Option<Timestamp>,
    /// The latest slot handed out.
    #[serde(default)]
    pub last_slot: Option<Timestamp>,
    /// Slots handed out since the state was created.
    #[serde(default)]
    pub reserved_total: u64,
    /// Set while a run is dispatching: no slot after this is handed out before a later save.
    /// Found set at hydration, it means the last run stopped without saving its final usage.
    #[serde(default)]
    pub horizon: Option<Timestamp>,
    /// When the horizon was set (the save): calls before it are recorded in this state.
    #[serde(default)]
    pub saved_at: Option<Timestamp>,
    /// The rate learned from the API's throttles, so a new run starts where the last ended.
    #[serde(default)]
    pub adaptive: Adaptive,
}

/// Usage of one tier, for status reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierReport {
    /// The tier, as spec text.
    pub tier: String,
    /// Calls counted in the current window.
    pub used: u64,
    /// The tier's limit.
    pub limit: u32,
    /// When the window resets (calendar) or the oldest counted call leaves it (rolling).
    pub resets_at: Option<Timestamp>,
}

/// The pacer: a spec, a policy, and the usage state. Pure: every method takes the time.
#[derive(Clone, Debug)]
pub struct Pacer {
    spec: QuotaSpec,
    policy: PacingPolicy,
    state: QuotaState,
}

enum Binding {
    Pace,
    Budget,
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
        Pacer {
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
        let ss = self.policy.slow_start;
        match self.state.ramp_from {
            Some(from) if !ss.duration.is_zero() => {
                let progress = (t.since(from).as_secs_f64() / ss.duration.as_secs_f64()).min(1.0);
                let f0 = ss.from_fraction.clamp(0.01, 1.0);
                f0 + (1.0 - f0) * progress
            }
            _ => 1.0,
        }
    }

    /// The fraction of the configured pace the learned rate allows at `t` ([`Adaptive`]).
    pub fn adaptive_fraction(&self, t: Timestamp) -> f64 {
        let ceiling = self.spec.pacing_rate_per_s();
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

    /// The fraction of the configured pace allowed at `t`: the lower of the slow-start ramp and
    /// the learned rate.
    pub fn pace_fraction(&self, t: Timestamp) -> f64 {
        self.ramp_fraction(t).min(self.adaptive_fraction(t))
    }

    /// The rate (calls per second) pacing aims at now: the tightest short-term tier, less
    /// headroom, scaled by the slow-start ramp or the learned rate, whichever is lower.
    pub fn target_rate_per_s(&self, t: Timestamp) -> f64 {
        self.spec.pacing_rate_per_s() * (1.0 - self.policy.headroom) * self.pace_fraction(t)
    }

    /// Reacts at `now` to the control record's throttle counter (see [`Adaptive::on_throttles`]);
    /// `estimate(slot)` is the API's limit judged from the calls before `slot`, if known.
    pub fn on_throttles(
        &mut self,
        throttles: &Throttles,
        now: Timestamp,
        estimate: impl FnOnce(Timestamp) -> Option<f64>,
    ) -> Reaction {
        let ceiling = self.spec.pacing_rate_per_s();
        let policy = self.policy.adaptive;
        let paced_from = self.paced_from(now);
        self.state
            .adaptive
            .on_throttles(throttles, now, paced_from, ceiling, &policy, estimate)
    }

    /// Reacts at `now` to the API's report of its window (see [`Adaptive::on_api_window`]);
    /// `ours` is how many of this orchestrator's slots fell in that window. The rate follows
    /// it; the window's reset (whole seconds, rounded up, and for a rolling window only when
    /// the oldest call leaves it) does not pause dispatch: a 429's `Retry-After` does.
    pub fn on_api_window(&mut self, window: &ApiWindow, ours: u64, now: Timestamp) -> Reaction {
        let ceiling = self.spec.pacing_rate_per_s();
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

    fn window_micros(&self, tier: &Tier) -> u64 {
        duration_micros(tier.period.duration()) + duration_micros(self.policy.call_tolerance)
    }

    fn paces(&self, tier: &Tier) -> bool {
        tier.period.is_pacing()
            || (self.policy.mode == BudgetMode::Spread && tier.window == WindowKind::Rolling)
    }

    fn counts_rolling(&self, tier: &Tier) -> bool {
        tier.window == WindowKind::Rolling && !(self.paces(tier) && tier.burst.get() == 1)
    }

    /// The GCRA emission interval of a pacing tier at `t`, in microseconds.
    fn interval(&self, tier: &Tier, t: Timestamp) -> u64 {
        let base = self.window_micros(tier) as f64 / f64::from(tier.limit.get());
        let headroom = 1.0 - self.policy.headroom.clamp(0.0, 0.5);
        let ramp = if tier.period.is_pacing() {
            self.pace_fraction(t).max(1e-6)
        } else {
            1.0
        };
        (base / headroom / ramp).ceil() as u64
    }

    fn bucket_width(&self, tier: &Tier) -> u64 {
        (duration_micros(tier.period.duration()) / BUCKETS_PER_WINDOW).max(1)
    }

    /// Earliest time `>= t` this tier allows, and what kind of constraint set it.
    fn tier_earliest(&self, i: usize, t: Timestamp) -> (Timestamp, Binding) {
        let tier = &self.spec.tiers()[i];
        let usage = &self.state.tiers[i];
        let tol = duration_micros(self.policy.call_tolerance);
        let mut at = t;
        let mut binding = Binding::Pace;

        if self.paces(tier) {
            let interval = self.interval(tier, t);
            let slack = interval.saturating_mul(u64::from(tier.burst.get() - 1));
            let allowed = Timestamp::from_micros(usage.tat.as_micros().saturating_sub(slack));
            at = at.max(allowed);
        }

        if self.counts_rolling(tier) {
            let width = self.bucket_width(tier);
            let span = duration_micros(tier.period.duration()) + tol;
            let limit = u64::from(tier.limit.get());
            // Calls that may still be inside the window of a call at `at`.
            let live: Vec<(u64, u32)> = usage
                .buckets
                .iter()
                .copied()
                .filter(|(b, _)| (b + 1) * width + span > at.as_micros())
                .collect();
            let mut count: u64 = live.iter().map(|(_, c)| u64::from(*c)).sum();
            if count >= limit {
                for (b, c) in &live {
                    count -= u64::from(*c);
                    if count < limit {
                        at = at.max(Timestamp::from_micros((b + 1) * width + span));
                        binding = if tier.period.is_pacing() {
                            Binding::Pace
                        } else {
                            Binding::Budget
                        };
                        break;
                    }
                }
            }
        }

        if tier.window == WindowKind::Calendar {
            let idx = tier.period.calendar_index(at);
            let used = match usage.calendar {
                Some((i, c)) if i == idx => c,
                _ => 0,
            };
            let end = tier.period.calendar_start(idx + 1);
            if used >= tier.limit.get() {
                at = end;
                binding = Binding::Budget;
            } else if at.plus(self.policy.call_tolerance) >= end {
                // A call this close to the boundary could land after it, in the next period.
                at = end;
                binding = Binding::Pace;
            } else if self.policy.mode == BudgetMode::Spread && !tier.period.is_pacing() {
                at = at.max(usage.tat);
            }
        }
        (at, binding)
    }

    /// May a call happen at `t`? Rich: now, not before T, exhausted until the reset at T, or
    /// backing off until T.
    ///
    /// During a back-off the answer is the first slot the tiers allow from its end: the calls
    /// after it are paced (at the learned rate) from there, not sent in a burst at its end.
    pub fn check(&self, t: Timestamp) -> Availability {
        if let Some(until) = self.state.backoff_until
            && until > t
        {
            return Availability::BackingOff {
                until: self.check_tiers(until).earliest(until),
            };
        }
        self.check_tiers(t)
    }

    /// The tiers' answer at `t`, the back-off aside.
    fn check_tiers(&self, t: Timestamp) -> Availability {
        let mut at = t;
        let mut result = Availability::Now;
        // Constraints are monotone; a few passes reach the fixed point.
        for _ in 0..8 {
            let mut moved = false;
            for i in 0..self.spec.tiers().len() {
                let (e, binding) = self.tier_earliest(i, at);
                if e > at {
                    at = e;
                    moved = true;
                    result = match binding {
                        Binding::Pace => Availability::NotBefore { at, tier: i },
                        Binding::Budget => Availability::ExhaustedUntil { until: at, tier: i },
                    };
                }
            }
            if !moved {
                break;
            }
        }
        match result {
            Availability::NotBefore { tier, .. } => Availability::NotBefore { at, tier },
            Availability::ExhaustedUntil { tier, .. } => {
                Availability::ExhaustedUntil { until: at, tier }
            }
            other => other,
        }
    }

    /// The earliest slot at or after `t`.
    pub fn next_slot(&self, t: Timestamp) -> Timestamp {
        self.check(t).earliest(t)
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
        let rate = self.spec.pacing_rate_per_s();
        let n = (horizon.since(from).as_secs_f64() * rate).ceil() as u32 + 1;
        for i in 0..self.spec.tiers().len() {
            let tier = self.spec.tiers()[i];
            let interval = self.interval(&tier, horizon);
            let paces = self.paces(&tier);
            let counts = self.counts_rolling(&tier);
            let width = self.bucket_width(&tier);
            let usage = &mut self.state.tiers[i];
            if paces {
                usage.tat = Timestamp::from_micros(usage.tat.max(horizon).as_micros() + interval);
            }
            if counts {
                let b = horizon.as_micros() / width;
                match usage.buckets.back_mut() {
                    // Count them in the latest bucket: at or after the horizon's, so they
                    // leave the window no earlier than the real calls did.
                    Some((lb, c)) if *lb >= b => *c += n,
                    _ => usage.buckets.push_back((b, n)),
                }
            }
            if tier.window == WindowKind::Calendar {
                let idx = tier.period.calendar_index(horizon);
                let used = match usage.calendar {
                    Some((i, c)) if i == idx => c.saturating_add(n),
                    _ => n,
                };
                usage.calendar = Some((idx, used));
            }
        }
        self.state.last_slot = Some(horizon);
    }

    /// Records a call at slot `at` (which should come from [`Pacer::next_slot`]).
    pub fn reserve(&mut self, at: Timestamp) {
        let tol = duration_micros(self.policy.call_tolerance);
        for i in 0..self.spec.tiers().len() {
            let tier = self.spec.tiers()[i];
            let interval = self.interval(&tier, at);
            let paces = self.paces(&tier);
            let counts = self.counts_rolling(&tier);
            let width = self.bucket_width(&tier);
            let span = duration_micros(tier.period.duration()) + tol;
            let spread = self.policy.mode == BudgetMode::Spread;
            let usage = &mut self.state.tiers[i];
            if paces {
                usage.tat = Timestamp::from_micros(usage.tat.max(at).as_micros() + interval);
            }
            if counts {
                let b = at.as_micros() / width;
                while usage
                    .buckets
                    .front()
                    .is_some_and(|(ob, _)| (ob + 1) * width + span <= at.as_micros())
                {
                    usage.buckets.pop_front();
                }
                match usage.buckets.back_mut() {
                    Some((lb, c)) if *lb == b => *c += 1,
                    _ => {
                        // Slots are handed out in order, but keep the deque sorted regardless.
                        let pos = usage.buckets.partition_point(|(ob, _)| *ob < b);
                        if usage.buckets.get(pos).is_some_and(|(ob, _)| *ob == b) {
                            usage.buckets[pos].1 += 1;
                        } else {
                            usage.buckets.insert(pos, (b, 1));
                        }
                    }
                }
            }
            if tier.window == WindowKind::Calendar {
                let idx = tier.period.calendar_index(at);
                let used = match usage.calendar {
                    Some((i, c)) if i == idx => c + 1,
                    _ => 1,
                };
                usage.calendar = Some((idx, used));
                if spread && !tier.period.is_pacing() {
                    let end = tier.period.calendar_start(idx + 1);
                    let remaining = u64::from(tier.limit.get().saturating_sub(used)).max(1);
                    usage.tat = at.plus(Duration::from_micros(
                        end.since(at).as_micros() as u64 / remaining,
                    ));
                }
            }
        }
        self.state.last_slot = Some(self.state.last_slot.map_or(at, |l| l.max(at)));
        self.state.reserved_total += 1;
    }

    /// Usage of each tier at `t`, for status reports.
    pub fn report(&self, t: Timestamp) -> Vec<TierReport> {
        let tol = duration_micros(self.policy.call_tolerance);
        self.spec
            .tiers()
            .iter()
            .zip(&self.state.tiers)
            .map(|(tier, usage)| {
                let (used, resets_at) = match tier.window {
                    WindowKind::Calendar => {
                        let idx = tier.period.calendar_index(t);
                        let used = match usage.calendar {
                            Some((i, c)) if i == idx => u64::from(c),
                            _ => 0,
                        };
                        (used, Some(tier.period.calendar_start(idx + 1)))
                    }
                    WindowKind::Rolling if !self.counts_rolling(tier) => {
                        // Paced only: the calls in the window follow from the pace, one per
                        // interval up to the theoretical arrival time.
                        let interval = self.interval(tier, t).max(1);
                        let window_start = t
                            .as_micros()
                            .saturating_sub(duration_micros(tier.period.duration()));
                        let used = usage
                            .tat
                            .as_micros()
                            .saturating_sub(window_start)
                            .div_ceil(interval)
                            .min(u64::from(tier.limit.get()));
                        let resets = (used > 0).then(|| usage.tat.max(t));
                        (used, resets)
                    }
                    WindowKind::Rolling => {
                        let width = self.bucket_width(tier);
                        let span = duration_micros(tier.period.duration()) + tol;
                        let live: Vec<_> = usage
                            .buckets
                            .iter()
                            .filter(|(b, _)| (b + 1) * width + span > t.as_micros())
                            .collect();
                        let used = live.iter().map(|(_, c)| u64::from(*c)).sum();
                        let reset = live
                            .first()
                            .map(|(b, _)| Timestamp::from_micros((b + 1) * width + span));
                        (used, reset)
                    }
                };
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
    use super::*;

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

    /// Hands out `n` slots as fast as allowed from `start`; returns them.
    fn drain(p: &mut Pacer, start: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n);
        let mut now = start;
        for _ in 0..n {
            let slot = p.next_slot(now);
            p.reserve(slot);
            out.push(slot);
            now = slot;
        }
        out
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
            p.check(slots[4]),
            Availability::NotBefore {
                at: slots[4].plus(Duration::from_millis(50)),
                tier: 0
            }
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
            p.check(slots[24]),
            Availability::ExhaustedUntil {
                until: midnight,
                tier: 1
            }
        );
    }

    #[test]
    fn rolling_budget_frees_as_old_calls_leave_the_window() {
        let mut p = pacer("10/s,5/h");
        let slots = drain(&mut p, t(0), 5);
        match p.check(slots[4]) {
            Availability::ExhaustedUntil { until, tier: 1 } => {
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
        assert_eq!(p.check(t(0)), Availability::BackingOff { until: t(5_000) });
        assert_eq!(p.check(t(5_000)), Availability::Now);
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
