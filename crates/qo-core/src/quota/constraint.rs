//! The constraints a tier puts on calls, each kind owning its rules once.
//!
//! - [`pace`]: a GCRA pace, `window / limit` between calls with `burst` back to back.
//!   Short-term tiers (second, minute) pace; in `spread` mode rolling budget tiers pace too.
//! - [`rolling`]: a count of the calls in a rolling window, kept in buckets, for a rolling
//!   tier whose pace alone does not bound its window (a burst, or a budget in `greedy` mode).
//! - [`calendar`]: a count of the calls since the last UTC boundary of a calendar tier (in
//!   `spread` mode, a budget tier also paces what is left over what is left of the period).
//!
//! Each kind answers the same four questions ([`Constraint`]): when the next call conforms,
//! record a call, count calls assumed after a crash, and report the usage. A [`TierRule`]
//! combines the kinds that apply to one tier, in a fixed order (pace, rolling, calendar); the
//! [`super::Pacer`] combines the tiers.
//!
//! Windows are widened by the policy's call tolerance: the worker calls at its slot or up to
//! that much later, and even a late call stays inside the quota.

mod calendar;
mod pace;
mod rolling;

use calendar::Calendar;
use pace::Pace;
use rolling::Rolling;

use super::policy::{BudgetMode, PacingPolicy};
use super::spec::{Tier, WindowKind};
use super::state::TierUsage;
use crate::time::Timestamp;

/// What kind of limit moved a call later: a pace (or a window's count) frees a slot soon, a
/// budget is used up until its reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Binding {
    /// A pace, or a short window: not before the returned instant.
    Pace,
    /// A budget: exhausted until the returned instant.
    Budget,
}

/// One kind of constraint over one tier's usage.
///
/// `fraction` is the fraction of the configured pace allowed at the time the method is given
/// (the slow-start ramp or the learned rate); only a short-term pace scales by it.
pub(crate) trait Constraint {
    /// The earliest instant at or after `t` this constraint lets a call happen, and the
    /// binding it sets (`None`: it leaves the tier's binding as it was).
    fn earliest(
        &self,
        usage: &TierUsage,
        t: Timestamp,
        fraction: f64,
    ) -> (Timestamp, Option<Binding>);

    /// Records one call at `at`.
    fn record(&self, usage: &mut TierUsage, at: Timestamp, fraction: f64);

    /// Counts `n` calls that may have happened up to `horizon` unrecorded (a crashed run).
    fn assume(&self, usage: &mut TierUsage, horizon: Timestamp, n: u32, fraction: f64);

    /// The calls counted in the window at `t`, and when it resets (or its oldest call leaves).
    fn report(&self, usage: &TierUsage, t: Timestamp, fraction: f64) -> (u64, Option<Timestamp>);
}

/// One step of [`TierRule::earliest`]: constraint `c` from `(at, binding)`.
#[inline(always)]
fn then<C: Constraint>(
    c: &C,
    usage: &TierUsage,
    (at, binding): (Timestamp, Binding),
    fraction: f64,
) -> (Timestamp, Binding) {
    let (e, b) = c.earliest(usage, at, fraction);
    (e, b.unwrap_or(binding))
}

/// The constraints of one tier under one policy.
#[derive(Clone, Debug)]
pub(crate) struct TierRule {
    pace: Option<Pace>,
    rolling: Option<Rolling>,
    calendar: Option<Calendar>,
}

impl TierRule {
    /// The constraints `tier` puts on calls under `policy`.
    pub(crate) fn new(tier: &Tier, policy: &PacingPolicy) -> Self {
        let paces = tier.period.is_pacing()
            || (policy.mode == BudgetMode::Spread && tier.window == WindowKind::Rolling);
        let counts_rolling =
            tier.window == WindowKind::Rolling && !(paces && tier.burst.get() == 1);
        TierRule {
            pace: paces.then(|| Pace::new(tier, policy)),
            rolling: counts_rolling.then(|| Rolling::new(tier, policy)),
            calendar: (tier.window == WindowKind::Calendar).then(|| Calendar::new(tier, policy)),
        }
    }

    /// Whether the answers depend on the pace fraction (else any `fraction` gives the same).
    #[inline]
    pub(crate) fn scales(&self) -> bool {
        self.pace.as_ref().is_some_and(Pace::scales)
    }

    /// The earliest instant at or after `t` the tier allows, and what kind of limit set it.
    /// Each kind that applies (pace, rolling, calendar, in that order) starts from where the
    /// previous one moved the call.
    #[inline]
    pub(crate) fn earliest(
        &self,
        usage: &TierUsage,
        t: Timestamp,
        fraction: f64,
    ) -> (Timestamp, Binding) {
        let mut now = (t, Binding::Pace);
        if let Some(c) = &self.pace {
            now = then(c, usage, now, fraction);
        }
        if let Some(c) = &self.rolling {
            now = then(c, usage, now, fraction);
        }
        if let Some(c) = &self.calendar {
            now = then(c, usage, now, fraction);
        }
        now
    }

    /// Records one call at `at` in each kind that applies.
    #[inline]
    pub(crate) fn record(&self, usage: &mut TierUsage, at: Timestamp, fraction: f64) {
        if let Some(c) = &self.pace {
            c.record(usage, at, fraction);
        }
        if let Some(c) = &self.rolling {
            c.record(usage, at, fraction);
        }
        if let Some(c) = &self.calendar {
            c.record(usage, at, fraction);
        }
    }

    /// Counts `n` calls assumed made up to `horizon` without being recorded.
    pub(crate) fn assume(&self, usage: &mut TierUsage, horizon: Timestamp, n: u32, fraction: f64) {
        if let Some(c) = &self.pace {
            c.assume(usage, horizon, n, fraction);
        }
        if let Some(c) = &self.rolling {
            c.assume(usage, horizon, n, fraction);
        }
        if let Some(c) = &self.calendar {
            c.assume(usage, horizon, n, fraction);
        }
    }

    /// The tier's usage at `t`: a calendar tier reports its period's count, a counted rolling
    /// tier its buckets, a paced-only one what follows from its pace.
    pub(crate) fn report(
        &self,
        usage: &TierUsage,
        t: Timestamp,
        fraction: f64,
    ) -> (u64, Option<Timestamp>) {
        let by: Option<&dyn Constraint> = match (&self.calendar, &self.rolling, &self.pace) {
            (Some(c), _, _) => Some(c),
            (None, Some(r), _) => Some(r),
            (None, None, Some(p)) => Some(p),
            (None, None, None) => None,
        };
        by.map_or((0, None), |c| c.report(usage, t, fraction))
    }
}
