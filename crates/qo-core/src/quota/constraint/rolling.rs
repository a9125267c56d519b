//! A rolling window's count: at most `limit` calls in any window of the period's length
//! (widened by the call tolerance).
//!
//! Calls are counted in buckets of a sixtieth of the period; a bucket stays live until its
//! last possible call has left the window ([`Rolling::is_live`], the one liveness test).

use super::{Binding, Constraint};
use crate::quota::policy::PacingPolicy;
use crate::quota::spec::Tier;
use crate::quota::state::TierUsage;
use crate::time::{Timestamp, duration_micros};

/// Number of buckets a rolling window is counted in.
const BUCKETS_PER_WINDOW: u64 = 60;

/// The window count of one rolling tier.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rolling {
    /// A bucket's width in microseconds.
    width: u64,
    /// The window's length plus the call tolerance, in microseconds.
    span: u64,
    /// Calls allowed in a window.
    limit: u64,
    /// A short-term tier's full window frees a slot soon (a pace); a budget's is exhausted.
    binding: Binding,
}

impl Rolling {
    pub(super) fn new(tier: &Tier, policy: &PacingPolicy) -> Self {
        let period = duration_micros(tier.period.duration());
        Rolling {
            width: (period / BUCKETS_PER_WINDOW).max(1),
            span: period + duration_micros(policy.call_tolerance),
            limit: u64::from(tier.limit.get()),
            binding: if tier.period.is_pacing() {
                Binding::Pace
            } else {
                Binding::Budget
            },
        }
    }

    /// When the calls of `bucket` have all left the window.
    #[inline]
    fn leaves_at(&self, bucket: u64) -> u64 {
        (bucket + 1) * self.width + self.span
    }

    /// Whether calls of `bucket` may still be inside the window of a call at `t`.
    #[inline]
    fn is_live(&self, bucket: u64, t: Timestamp) -> bool {
        self.leaves_at(bucket) > t.as_micros()
    }

    /// The buckets live at `t`.
    #[inline]
    fn live<'a>(
        &'a self,
        usage: &'a TierUsage,
        t: Timestamp,
    ) -> impl Iterator<Item = (u64, u32)> + 'a {
        usage
            .buckets
            .iter()
            .copied()
            .filter(move |&(b, _)| self.is_live(b, t))
    }
}

impl Constraint for Rolling {
    #[inline]
    fn earliest(
        &self,
        usage: &TierUsage,
        t: Timestamp,
        _fraction: f64,
    ) -> (Timestamp, Option<Binding>) {
        let mut count: u64 = self.live(usage, t).map(|(_, c)| u64::from(c)).sum();
        if count >= self.limit {
            // The window has room once enough of the oldest live buckets have left it.
            for (b, c) in self.live(usage, t) {
                count -= u64::from(c);
                if count < self.limit {
                    let at = t.max(Timestamp::from_micros(self.leaves_at(b)));
                    return (at, Some(self.binding));
                }
            }
        }
        (t, None)
    }

    fn record(&self, usage: &mut TierUsage, at: Timestamp, _fraction: f64) {
        let b = at.as_micros() / self.width;
        while usage
            .buckets
            .front()
            .is_some_and(|&(ob, _)| !self.is_live(ob, at))
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

    fn assume(&self, usage: &mut TierUsage, horizon: Timestamp, n: u32, _fraction: f64) {
        let b = horizon.as_micros() / self.width;
        match usage.buckets.back_mut() {
            // Count them in the latest bucket: at or after the horizon's, so they leave the
            // window no earlier than the real calls did.
            Some((lb, c)) if *lb >= b => *c += n,
            _ => usage.buckets.push_back((b, n)),
        }
    }

    fn report(&self, usage: &TierUsage, t: Timestamp, _fraction: f64) -> (u64, Option<Timestamp>) {
        let used = self.live(usage, t).map(|(_, c)| u64::from(c)).sum();
        let reset = self
            .live(usage, t)
            .next()
            .map(|(b, _)| Timestamp::from_micros(self.leaves_at(b)));
        (used, reset)
    }
}
