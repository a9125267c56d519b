//! A calendar count: at most `limit` calls between two UTC boundaries of the period
//! ([`crate::quota::Period::calendar_index`]).
//!
//! A call so close to the period's end that the tolerance could carry it past the boundary
//! waits for the boundary. In `spread` mode a budget tier (hour, day, month) also paces: each
//! call leaves the rest of the period to the calls left, evenly.

use std::time::Duration;

use super::{Binding, Constraint};
use crate::quota::policy::{BudgetMode, PacingPolicy};
use crate::quota::spec::{Period, Tier};
use crate::quota::state::TierUsage;
use crate::time::Timestamp;

/// The calendar count of one calendar tier.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Calendar {
    period: Period,
    limit: u32,
    tolerance: Duration,
    /// A budget tier in spread mode: paced over what is left of the period.
    spread: bool,
}

impl Calendar {
    pub(super) fn new(tier: &Tier, policy: &PacingPolicy) -> Self {
        Calendar {
            period: tier.period,
            limit: tier.limit.get(),
            tolerance: policy.call_tolerance,
            spread: policy.mode == BudgetMode::Spread && !tier.period.is_pacing(),
        }
    }

    /// The calls counted in period `idx`.
    #[inline]
    fn used(usage: &TierUsage, idx: u64) -> u32 {
        match usage.calendar {
            Some((i, c)) if i == idx => c,
            _ => 0,
        }
    }
}

impl Constraint for Calendar {
    #[inline]
    fn earliest(
        &self,
        usage: &TierUsage,
        t: Timestamp,
        _fraction: f64,
    ) -> (Timestamp, Option<Binding>) {
        let idx = self.period.calendar_index(t);
        let end = self.period.calendar_start(idx + 1);
        if Self::used(usage, idx) >= self.limit {
            (end, Some(Binding::Budget))
        } else if t.plus(self.tolerance) >= end {
            // A call this close to the boundary could land after it, in the next period.
            (end, Some(Binding::Pace))
        } else if self.spread {
            (t.max(usage.tat), None)
        } else {
            (t, None)
        }
    }

    fn record(&self, usage: &mut TierUsage, at: Timestamp, _fraction: f64) {
        let idx = self.period.calendar_index(at);
        let used = match usage.calendar {
            Some((i, c)) if i == idx => c + 1,
            _ => 1,
        };
        usage.calendar = Some((idx, used));
        if self.spread {
            let end = self.period.calendar_start(idx + 1);
            let remaining = u64::from(self.limit.saturating_sub(used)).max(1);
            usage.tat = at.plus(Duration::from_micros(
                end.since(at).as_micros() as u64 / remaining,
            ));
        }
    }

    fn assume(&self, usage: &mut TierUsage, horizon: Timestamp, n: u32, _fraction: f64) {
        let idx = self.period.calendar_index(horizon);
        let used = match usage.calendar {
            Some((i, c)) if i == idx => c.saturating_add(n),
            _ => n,
        };
        usage.calendar = Some((idx, used));
    }

    fn report(&self, usage: &TierUsage, t: Timestamp, _fraction: f64) -> (u64, Option<Timestamp>) {
        let idx = self.period.calendar_index(t);
        let used = u64::from(Self::used(usage, idx));
        (used, Some(self.period.calendar_start(idx + 1)))
    }
}
