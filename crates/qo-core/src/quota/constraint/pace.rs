//! A GCRA pace: calls `interval` apart, `burst` of them back to back.
//!
//! The state is one instant, the theoretical arrival time (`tat`) of the next call. A call at
//! `t` conforms when `t >= tat - (burst - 1) * interval`; recording it moves `tat` to
//! `max(tat, t) + interval`. The interval is `(window + tolerance) / limit`, less headroom, and
//! for a short-term tier scaled down by the pace fraction (slow start, the learned rate).

use super::{Binding, Constraint};
use crate::quota::policy::PacingPolicy;
use crate::quota::spec::Tier;
use crate::quota::state::TierUsage;
use crate::time::{Timestamp, duration_micros};

/// The pace of one tier.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pace {
    /// `(window + tolerance) / limit / (1 - headroom)`, in microseconds, before scaling.
    base_interval: f64,
    /// The interval unscaled (at a pace fraction of 1), rounded up.
    full_interval: u64,
    /// Whether the pace fraction scales it (short-term tiers).
    scales: bool,
    /// Calls allowed back to back.
    burst: u64,
    /// The period's length in microseconds (for reports).
    period: u64,
    /// The tier's limit (for reports).
    limit: u64,
}

impl Pace {
    pub(super) fn new(tier: &Tier, policy: &PacingPolicy) -> Self {
        let period = duration_micros(tier.period.duration());
        let window = period + duration_micros(policy.call_tolerance);
        let base = window as f64 / f64::from(tier.limit.get());
        let headroom = 1.0 - policy.headroom.clamp(0.0, 0.5);
        let base_interval = base / headroom;
        Pace {
            base_interval,
            full_interval: base_interval.ceil() as u64,
            scales: tier.period.is_pacing(),
            burst: u64::from(tier.burst.get()),
            period,
            limit: u64::from(tier.limit.get()),
        }
    }

    /// Whether the pace fraction scales the interval.
    pub(super) fn scales(&self) -> bool {
        self.scales
    }

    /// The emission interval in microseconds, at pace fraction `fraction`.
    #[inline]
    fn interval(&self, fraction: f64) -> u64 {
        // At the full pace `base / 1.0` is `base`: the interval computed once.
        if !self.scales || fraction == 1.0 {
            return self.full_interval;
        }
        (self.base_interval / fraction.max(1e-6)).ceil() as u64
    }
}

impl Constraint for Pace {
    #[inline]
    fn earliest(
        &self,
        usage: &TierUsage,
        t: Timestamp,
        fraction: f64,
    ) -> (Timestamp, Option<Binding>) {
        let slack = self.interval(fraction).saturating_mul(self.burst - 1);
        let allowed = Timestamp::from_micros(usage.tat.as_micros().saturating_sub(slack));
        (t.max(allowed), None)
    }

    #[inline]
    fn record(&self, usage: &mut TierUsage, at: Timestamp, fraction: f64) {
        usage.tat = Timestamp::from_micros(usage.tat.max(at).as_micros() + self.interval(fraction));
    }

    /// The pace moves on by one interval from the horizon, however many calls are assumed:
    /// the count of them is the windows' business.
    fn assume(&self, usage: &mut TierUsage, horizon: Timestamp, _n: u32, fraction: f64) {
        self.record(usage, horizon, fraction);
    }

    /// Paced only: the calls in the window follow from the pace, one per interval up to the
    /// theoretical arrival time.
    fn report(&self, usage: &TierUsage, t: Timestamp, fraction: f64) -> (u64, Option<Timestamp>) {
        let interval = self.interval(fraction).max(1);
        let window_start = t.as_micros().saturating_sub(self.period);
        let used = usage
            .tat
            .as_micros()
            .saturating_sub(window_start)
            .div_ceil(interval)
            .min(self.limit);
        let resets = (used > 0).then(|| usage.tat.max(t));
        (used, resets)
    }
}
