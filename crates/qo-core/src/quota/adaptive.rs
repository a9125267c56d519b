//! Closed-loop pacing: a rate under the configured quota, learned from the API's 429s.
//!
//! The configured quota is a ceiling, not a fact: a key shared with another client, a limit that
//! differs from the documentation or a provider that counts differently all make the API's real
//! limit tighter. [`Adaptive`] lowers the paced rate when the API throttles a call that was paced
//! at the current rate, and climbs back toward the ceiling when it stops:
//!
//! - **decrease**: when the calls just before the throttled slot tell the API's limit (the
//!   slots handed out in the tier's period before it, counted from the end of the last
//!   back-off), the rate becomes `margin x` that estimate; otherwise it becomes `decrease x` the
//!   rate that was throttled (multiplicative decrease, as the AWS SDKs' adaptive retry mode);
//! - **hold**: for `hold` the rate stays where the decrease put it (the API's limit is rarely
//!   a moving target, and each new throttle costs a `Retry-After` pause);
//! - **probe**: then it climbs on a convex (cubic) curve that reaches the ceiling after `probe`,
//!   slowly at first, as TCP CUBIC probes past its last maximum.
//!
//! Only throttles of slots paced wholly at the current rate count: a slot within one window of
//! a call paced at the old rate (the calls already dispatched when the rate went down) was bound
//! to be throttled too, and must not lower the rate again. The state is
//! saved with the quota usage, so a new run starts at the rate the last one learned.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::quota::feedback::{ApiWindow, Throttles};
use crate::time::Timestamp;

/// How the rate adapts to the API's throttles.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaptivePolicy {
    /// Off: pace at the configured quota (a 429 still pauses until its `Retry-After`).
    pub enabled: bool,
    /// With no estimate of the API's limit, the rate after a decrease is this fraction of the
    /// rate that was throttled, in (0, 1).
    pub decrease: f64,
    /// With an estimate, the rate after a decrease is this fraction of it, in (0, 1]: room for
    /// the jitter of call times.
    pub margin: f64,
    /// The rate never goes below this fraction of the ceiling, in (0, 1].
    pub floor: f64,
    /// How long the rate stays at its decreased value before probing upward.
    pub hold: Duration,
    /// How long the probe takes from the decreased rate to the ceiling.
    pub probe: Duration,
}

impl Default for AdaptivePolicy {
    fn default() -> Self {
        AdaptivePolicy {
            enabled: true,
            decrease: 0.7,
            margin: 0.98,
            floor: 0.02,
            hold: Duration::from_secs(20),
            probe: Duration::from_secs(10),
        }
    }
}

/// What our calls tell of the API's limit when it throttles one paced at the current rate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LimitEstimate {
    /// The calls it accepted in the tier's period before the throttled one, a second. Exact
    /// for a window that our calls filled; for a bucket it says what we sent, not its rate.
    pub window: Option<f64>,
    /// Our calls began well into that period: a count under the limit may only mean the
    /// limit was not reached yet.
    pub partial: bool,
    /// The rate it accepted of our calls from the first throttled one to the latest: a
    /// bucket's drain rate (the limit) while we paced above it. `None` when it accepted none
    /// in between (a full window) or with one throttle only.
    pub share: Option<f64>,
}

impl From<Option<f64>> for LimitEstimate {
    fn from(window: Option<f64>) -> Self {
        LimitEstimate {
            window,
            ..LimitEstimate::default()
        }
    }
}

impl LimitEstimate {
    /// The estimate to act on: the window's count, unless our calls filled only part of the
    /// window and the API accepted some of them between its throttles (a bucket met early:
    /// the count is what we had sent, not its rate), then the larger of the two. Over a whole
    /// window the count is kept: the share of a short span is noisy (a sliding window frees
    /// its room in bursts, another client's calls come and go).
    pub fn choose(&self, rate: f64) -> Option<f64> {
        let ok = |e: &f64| e.is_finite() && *e > 0.0;
        let window = self.window.filter(ok);
        match self.share.filter(ok) {
            Some(s) if self.partial => Some(window.map_or(s, |w| w.max(s))),
            // Every call of ours in the window was accepted: its count tells nothing of the
            // limit (a full bucket's burst, a limit that just fell); the share does.
            Some(s) if window.is_none_or(|w| w >= rate) => Some(s),
            _ => window,
        }
    }
}

/// How the rate after a decrease was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecreaseBasis {
    /// From the calls accepted in the period before the throttled one: `margin x` estimate.
    Estimate,
    /// No estimate (too little history): `decrease x` rate.
    Multiplicative,
    /// Our own calls alone filled the period before the throttled one (at the current rate,
    /// its tolerance included): the API refused a call it should have taken if its limit were
    /// what we pace to, so a call arrived late (the network, a busy machine) or the API
    /// counts a slightly longer window. Nothing says its limit is lower: `margin x` rate,
    /// not `decrease x` rate.
    FullWindow,
    /// The API's rate-limit headers: its limit less what other clients of the key used in its
    /// window, `margin x` that.
    ApiWindow,
    /// Either would go under the floor: the floor.
    Floor,
}

/// A decrease of the rate: where it started, what it was based on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decrease {
    /// When it was decided: slots from here on are paced at the new rate.
    pub at: Timestamp,
    /// The first slot whose window holds no call paced at the old rate (the last slot handed
    /// out before the decrease, plus the window): a throttle of an earlier slot is the old
    /// rate's.
    pub paced_from: Timestamp,
    /// The rate that was throttled, calls per second.
    pub from_per_s: f64,
    /// The rate it set, calls per second.
    pub to_per_s: f64,
    /// The estimate of the API's limit it used, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate_per_s: Option<f64>,
    /// How `to_per_s` was chosen.
    pub basis: DecreaseBasis,
}

/// What the controller made of the control record's throttle counter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reaction {
    /// No throttle it had not seen.
    Unchanged,
    /// New throttles, all of slots paced before the last decrease: no further decrease.
    AlreadyDecreased {
        /// How many new throttles.
        new: u64,
    },
    /// New throttles while adaptation is off: counted, the rate stays.
    Disabled {
        /// How many new throttles.
        new: u64,
    },
    /// The rate went down.
    Decreased(Decrease),
    /// The API's headers report a higher limit than before (the limit came back): the rate
    /// went up to what its window leaves, at once, without waiting out the hold.
    Raised {
        /// The rate before, calls per second.
        from_per_s: f64,
        /// The rate now, calls per second (the ceiling when the window leaves that much).
        to_per_s: f64,
    },
}

/// The learned rate: persisted with the quota usage ([`crate::QuotaState`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Adaptive {
    /// The control record's throttle count already reacted to.
    #[serde(default)]
    pub seen: u64,
    /// The last decrease, while its curve is below the ceiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Decrease>,
    /// The API's latest window report already reacted to (its `observed_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seen: Option<Timestamp>,
    /// The limit the API's latest window report gave: a report of a higher one means the
    /// limit came back, and the rate goes up without probing for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_limit: Option<u64>,
}

impl Adaptive {
    /// The rate allowed at `t`, calls per second, at most `ceiling` (the configured pace).
    pub fn rate_per_s(&self, t: Timestamp, ceiling: f64, policy: &AdaptivePolicy) -> f64 {
        let Some(d) = self.last.filter(|_| policy.enabled) else {
            return ceiling;
        };
        let floor = ceiling * policy.floor.clamp(0.0, 1.0);
        let low = d.to_per_s.clamp(floor, ceiling);
        let since = t.since(d.at);
        if since <= policy.hold {
            return low;
        }
        let probe = policy.probe.as_secs_f64();
        if probe <= 0.0 {
            return ceiling;
        }
        let x = ((since - policy.hold).as_secs_f64() / probe).min(1.0);
        low + (ceiling - low) * x * x * x
    }

    /// Whether the rate is below `ceiling` at `t` (a decrease still in force).
    pub fn is_limiting(&self, t: Timestamp, ceiling: f64, policy: &AdaptivePolicy) -> bool {
        self.rate_per_s(t, ceiling, policy) < ceiling
    }

    /// Reacts to the control record's throttle counter at `now`. `paced_from` is where a
    /// decrease made now takes full effect (see [`Decrease::paced_from`]); `estimate(slot)` is
    /// the API's limit judged from the calls it accepted in the window before `slot`, asked for
    /// the first throttled slot paced at the current rate.
    pub fn on_throttles<E: Into<LimitEstimate>>(
        &mut self,
        throttles: &Throttles,
        now: Timestamp,
        paced_from: Timestamp,
        ceiling: f64,
        policy: &AdaptivePolicy,
        estimate: impl FnOnce(Timestamp) -> E,
    ) -> Reaction {
        if throttles.count <= self.seen {
            // A counter lower than the one seen: the record was reset; start from it.
            self.seen = self.seen.min(throttles.count);
            return Reaction::Unchanged;
        }
        let new = throttles.count - self.seen;
        self.seen = throttles.count;
        if !policy.enabled {
            return Reaction::Disabled { new };
        }
        // Only the new throttles count: an old one kept in the record (from before the last
        // decrease was settled) is not news of the pace now.
        let recent = &throttles.recent_slots;
        let fresh = usize::try_from(new)
            .ok()
            .and_then(|n| recent.len().checked_sub(n))
            .and_then(|i| recent.get(i).copied());
        let from = match (self.last.map(|d| d.paced_from), fresh) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let Some(slot) = throttles.first_slot_from(from) else {
            return Reaction::AlreadyDecreased { new };
        };
        let rate = self.rate_per_s(slot.min(now), ceiling, policy);
        let floor = ceiling * policy.floor.clamp(0.0, 1.0);
        let judged: LimitEstimate = estimate(slot).into();
        let estimate = judged.choose(rate);
        // A window our calls only began to fill gives a lower bound (the API took at least
        // that many), not the limit: it may not cut deeper than the multiplicative decrease
        // a 429 with no estimate makes. A bucket met early counts 7 of its 15 there.
        let lower_bound = judged.partial && judged.share.is_none();
        let (to, basis) = match estimate {
            Some(e) if lower_bound && e * policy.margin < rate * policy.decrease => {
                (rate * policy.decrease, DecreaseBasis::Multiplicative)
            }
            Some(e) if e < rate => (e * policy.margin, DecreaseBasis::Estimate),
            Some(_) => (rate * policy.margin, DecreaseBasis::FullWindow),
            None => (rate * policy.decrease, DecreaseBasis::Multiplicative),
        };
        let estimate = estimate.filter(|e| *e < rate);
        let (to, basis) = if to < floor {
            (floor, DecreaseBasis::Floor)
        } else {
            (to, basis)
        };
        let d = Decrease {
            at: now,
            paced_from: paced_from.max(now),
            from_per_s: rate,
            to_per_s: to,
            estimate_per_s: estimate,
            basis,
        };
        self.last = Some(d);
        Reaction::Decreased(d)
    }

    /// Reacts to the API's own count of its window (its rate-limit headers), reported at
    /// `window.observed_at`: `ours` of the calls it counted were this orchestrator's (its slots
    /// in the window), the rest another client's. When the API's limit less the others' use is
    /// under the current rate, the rate becomes `margin x` that. `period` is the window's length
    /// when the API does not say it.
    #[allow(clippy::too_many_arguments)]
    pub fn on_api_window(
        &mut self,
        window: &ApiWindow,
        ours: u64,
        period: Duration,
        now: Timestamp,
        paced_from: Timestamp,
        ceiling: f64,
        policy: &AdaptivePolicy,
    ) -> Reaction {
        if self.window_seen.is_some_and(|s| s >= window.observed_at) {
            return Reaction::Unchanged;
        }
        self.window_seen = Some(window.observed_at);
        let Some(limit) = window.limit else {
            return Reaction::Unchanged;
        };
        if !policy.enabled {
            return Reaction::Disabled { new: 1 };
        }
        let length = window
            .window_s
            .map_or(period, Duration::from_secs)
            .as_secs_f64();
        if length <= 0.0 {
            return Reaction::Unchanged;
        }
        // More of our calls in the window than its whole limit: the report is not of the
        // window we count (a bucket's headers give its capacity, a few calls, and no window;
        // read as a limit per period they would take the pace to a fraction of the real
        // one). Only 429s tell this API's limit.
        if ours as f64 > limit as f64 * 1.5 + 1.0 {
            return Reaction::Unchanged;
        }
        let used = limit.saturating_sub(window.remaining);
        let others = used.saturating_sub(ours);
        let available = limit.saturating_sub(others) as f64 / length;
        let rate = self.rate_per_s(now, ceiling, policy);
        let to = (available * policy.margin).max(ceiling * policy.floor.clamp(0.0, 1.0));
        let previous_limit = self.window_limit.replace(limit);
        let d = Decrease {
            at: now,
            paced_from: paced_from.max(now),
            from_per_s: rate,
            to_per_s: to,
            estimate_per_s: Some(available),
            basis: DecreaseBasis::ApiWindow,
        };
        if previous_limit.is_some_and(|p| limit > p) && to > rate * 1.01 {
            // The API's limit itself went up: no need to probe for what it says is there.
            // (Room in one report alone is not enough: another client's calls come and go.)
            // When the window leaves the whole quota, the pace is back at the ceiling.
            let whole = available >= ceiling;
            self.last = (!whole).then_some(d);
            return Reaction::Raised {
                from_per_s: rate,
                to_per_s: if whole { ceiling } else { to },
            };
        }
        // The window leaves the whole quota: the configured pace already fits it (its
        // windows are widened by the call tolerance), so no margin under it. Within 1% of the
        // rate: the pace already follows the API's count (a probe that has barely started).
        if available >= ceiling || to >= rate * 0.99 {
            return Reaction::Unchanged;
        }
        self.last = Some(d);
        Reaction::Decreased(d)
    }

    /// Whether a decrease is in force at `t`: adaptation is on and the last decrease's hold and
    /// probe are not over (its curve is still below the ceiling).
    pub fn decrease_in_force(&self, t: Timestamp, policy: &AdaptivePolicy) -> bool {
        policy.enabled
            && self
                .last
                .is_some_and(|d| t.since(d.at) < policy.hold + policy.probe)
    }

    /// Forgets a decrease whose curve has reached the ceiling (keeps the saved state small).
    pub fn settle(&mut self, t: Timestamp, policy: &AdaptivePolicy) {
        if !self.decrease_in_force(t, policy) {
            self.last = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: f64) -> Timestamp {
        Timestamp::from_millis((1_000_000.0 + s * 1000.0) as u64)
    }

    fn throttled(count: u64, slots: &[f64]) -> Throttles {
        let mut th: Option<Throttles> = None;
        for s in slots {
            th = Some(Throttles::record(th.as_ref(), t(*s), t(*s)));
        }
        let mut th = th.expect("slots");
        th.count = count;
        th
    }

    #[test]
    fn an_estimate_sets_the_rate_just_under_it() {
        let p = AdaptivePolicy::default();
        let mut a = Adaptive::default();
        let r = a.on_throttles(
            &throttled(3, &[0.75, 0.8, 0.85]),
            t(1.0),
            t(1.0),
            20.0,
            &p,
            |slot| {
                assert_eq!(slot, t(0.75), "asked for the first throttled slot");
                Some(15.0)
            },
        );
        let Reaction::Decreased(d) = r else {
            panic!("{r:?}")
        };
        assert_eq!(d.basis, DecreaseBasis::Estimate);
        assert!((d.to_per_s - 14.7).abs() < 1e-9, "{d:?}");
        assert!((a.rate_per_s(t(20.0), 20.0, &p) - 14.7).abs() < 1e-9);
    }

    /// A leaky bucket met at the start of a run: our calls filled part of the window when
    /// it refused one, so their count (8) says what we sent, not its rate; what it accepted
    /// between its 429s (15 a second) does. Over a whole window the count is kept.
    #[test]
    fn a_bucket_met_early_is_judged_by_what_it_accepts_between_its_throttles() {
        let p = AdaptivePolicy::default();
        let early = LimitEstimate {
            window: Some(8.0),
            partial: true,
            share: Some(15.0),
        };
        let mut a = Adaptive::default();
        let r = a.on_throttles(
            &throttled(3, &[0.4, 0.6, 0.8]),
            t(1.0),
            t(1.0),
            20.0,
            &p,
            |_| early,
        );
        let Reaction::Decreased(d) = r else {
            panic!("{r:?}")
        };
        assert!((d.to_per_s - 15.0 * p.margin).abs() < 1e-9, "{d:?}");
        let whole = LimitEstimate {
            partial: false,
            ..early
        };
        let mut b = Adaptive::default();
        b.on_throttles(
            &throttled(3, &[0.4, 0.6, 0.8]),
            t(1.0),
            t(1.0),
            20.0,
            &p,
            |_| whole,
        );
        assert!((b.rate_per_s(t(2.0), 20.0, &p) - 8.0 * p.margin).abs() < 1e-9);
        // A window count above the share (another client's retries took the room between
        // our 429s) is not thrown away.
        let mut c = Adaptive::default();
        c.on_throttles(
            &throttled(3, &[0.4, 0.6, 0.8]),
            t(1.0),
            t(1.0),
            20.0,
            &p,
            |_| LimitEstimate {
                window: Some(12.0),
                partial: true,
                share: Some(7.5),
            },
        );
        assert!((c.rate_per_s(t(2.0), 20.0, &p) - 12.0 * p.margin).abs() < 1e-9);
        // A full bucket's burst: every call of ours in the window was accepted, so the
        // count says nothing; the share between the 429s is the rate.
        let mut d = Adaptive::default();
        d.on_throttles(
            &throttled(3, &[4.0, 4.2, 4.4]),
            t(5.0),
            t(5.0),
            20.0,
            &p,
            |_| LimitEstimate {
                window: Some(20.0),
                partial: false,
                share: Some(15.0),
            },
        );
        assert!((d.rate_per_s(t(6.0), 20.0, &p) - 15.0 * p.margin).abs() < 1e-9);
    }

    /// A window our calls only began to fill, with nothing accepted between 429s (a
    /// Retry-After pause stopped every call): its count is a lower bound. It sets the rate
    /// when it is near the pace (a strict window met early: 15 of 20 is its limit), but may
    /// not cut deeper than the multiplicative decrease (a bucket met early: 7 of its 15).
    #[test]
    fn a_partial_window_is_a_lower_bound_that_cuts_no_deeper_than_the_decrease() {
        let p = AdaptivePolicy::default();
        let partial = |w: f64| LimitEstimate {
            window: Some(w),
            partial: true,
            share: None,
        };
        let mut a = Adaptive::default();
        let r = a.on_throttles(&throttled(1, &[0.35]), t(1.0), t(1.0), 20.0, &p, |_| {
            partial(7.0)
        });
        let Reaction::Decreased(d) = r else {
            panic!("{r:?}")
        };
        assert_eq!(d.basis, DecreaseBasis::Multiplicative);
        assert!((d.to_per_s - 20.0 * p.decrease).abs() < 1e-9, "{d:?}");
        let mut b = Adaptive::default();
        b.on_throttles(&throttled(1, &[0.75]), t(1.0), t(1.0), 20.0, &p, |_| {
            partial(15.0)
        });
        assert!((b.rate_per_s(t(2.0), 20.0, &p) - 15.0 * p.margin).abs() < 1e-9);
    }

    /// The record keeps the last 32 throttled slots. Once a decrease is settled, a new 429
    /// is judged from its own slot, not from the oldest slot the record still holds.
    #[test]
    fn only_the_new_throttles_are_judged() {
        let p = AdaptivePolicy::default();
        let mut a = Adaptive {
            seen: 2,
            ..Adaptive::default()
        };
        let r = a.on_throttles(
            &throttled(3, &[3.0, 3.1, 37.0]),
            t(37.5),
            t(37.5),
            20.0,
            &p,
            |slot| {
                assert_eq!(slot, t(37.0), "judged from the new throttle's slot");
                Some(15.0)
            },
        );
        assert!(matches!(r, Reaction::Decreased(_)), "{r:?}");
    }

    #[test]
    fn no_estimate_decreases_multiplicatively() {
        let p = AdaptivePolicy::default();
        let mut a = Adaptive::default();
        let r = a.on_throttles(&throttled(1, &[5.0]), t(5.5), t(5.5), 20.0, &p, |_| None);
        let Reaction::Decreased(d) = r else {
            panic!("{r:?}")
        };
        assert_eq!(d.basis, DecreaseBasis::Multiplicative);
        assert!((d.to_per_s - 14.0).abs() < 1e-9, "{d:?}");
    }

    /// A 429 of a call whose period before held a whole window of our own calls (20 of a
    /// 20/s pace, or more with the tolerance) says a call arrived late, not that the limit is
    /// lower: the rate steps just below the pace instead of dropping by the decrease factor.
    #[test]
    fn a_429_after_a_full_window_of_our_calls_steps_just_below_the_rate() {
        let p = AdaptivePolicy::default();
        for full in [20.0, 21.0] {
            let mut a = Adaptive::default();
            let r = a.on_throttles(&throttled(1, &[5.0]), t(5.5), t(5.5), 20.0, &p, |_| {
                Some(full)
            });
            let Reaction::Decreased(d) = r else {
                panic!("{r:?}")
            };
            assert_eq!(d.basis, DecreaseBasis::FullWindow);
            assert!((d.to_per_s - 19.6).abs() < 1e-9, "{d:?}");
            assert_eq!(d.estimate_per_s, None);
        }
    }

    #[test]
    fn throttles_of_slots_paced_before_the_decrease_do_not_decrease_again() {
        let p = AdaptivePolicy::default();
        let mut a = Adaptive::default();
        a.on_throttles(&throttled(1, &[1.0]), t(1.2), t(1.2), 20.0, &p, |_| None);
        let after = a.rate_per_s(t(1.3), 20.0, &p);
        let r = a.on_throttles(
            &throttled(4, &[1.0, 1.05, 1.1, 1.15]),
            t(2.0),
            t(2.0),
            20.0,
            &p,
            |_| None,
        );
        assert_eq!(r, Reaction::AlreadyDecreased { new: 3 });
        assert_eq!(a.rate_per_s(t(2.0), 20.0, &p), after);
        // A slot paced after the decrease, throttled: down again.
        let r = a.on_throttles(
            &throttled(5, &[1.0, 1.05, 1.1, 1.15, 2.5]),
            t(3.0),
            t(3.0),
            20.0,
            &p,
            |_| None,
        );
        assert!(matches!(r, Reaction::Decreased(_)), "{r:?}");
        assert!(a.rate_per_s(t(3.0), 20.0, &p) < after);
    }

    #[test]
    fn holds_then_probes_back_to_the_ceiling() {
        let p = AdaptivePolicy::default();
        let mut a = Adaptive::default();
        a.on_throttles(&throttled(1, &[0.0]), t(0.0), t(0.0), 20.0, &p, |_| {
            Some(10.0)
        });
        let at = |s| a.rate_per_s(t(s), 20.0, &p);
        let (hold, probe) = (p.hold.as_secs_f64(), p.probe.as_secs_f64());
        assert!((at(hold - 1.0) - 9.8).abs() < 1e-9);
        let early = hold + 0.15 * probe;
        assert!(
            at(early) > 9.8 && at(early) < 10.0,
            "slow at first: {}",
            at(early)
        );
        assert!(at(hold + 0.7 * probe) > at(hold + 0.4 * probe));
        assert_eq!(at(hold + probe), 20.0);
        assert_eq!(at(600.0), 20.0);
        let mut settled = a;
        settled.settle(t(hold + probe - 1.0), &p);
        assert!(settled.last.is_some());
        settled.settle(t(hold + probe), &p);
        assert_eq!(settled.last, None);
    }

    #[test]
    fn never_under_the_floor_nor_over_the_ceiling() {
        let p = AdaptivePolicy::default();
        let mut a = Adaptive::default();
        for i in 1..50u64 {
            let s = i as f64 * 2.0;
            let th = throttled(i, &[s]);
            a.on_throttles(&th, t(s + 0.1), t(s + 0.1), 20.0, &p, |_| None);
            let r = a.rate_per_s(t(s + 0.2), 20.0, &p);
            assert!(r >= 20.0 * p.floor - 1e-9 && r <= 20.0, "{r}");
        }
        assert!((a.rate_per_s(t(100.0), 20.0, &p) - 0.4).abs() < 1e-9);
        // A lower ceiling (an operator's change) caps the learned rate.
        assert!(a.rate_per_s(t(1000.0), 5.0, &p) <= 5.0);
    }

    #[test]
    fn the_api_window_tells_what_another_client_uses() {
        let p = AdaptivePolicy::default();
        let mut a = Adaptive::default();
        // Limit 20 a second; 19 used, 14 of them ours: another client takes 5.
        let w = ApiWindow {
            limit: Some(20),
            window_s: Some(1),
            remaining: 1,
            reset_at: t(1.0),
            observed_at: t(0.9),
        };
        let r = a.on_api_window(&w, 14, Duration::from_secs(1), t(1.0), t(2.0), 20.0, &p);
        let Reaction::Decreased(d) = r else {
            panic!("{r:?}")
        };
        assert_eq!(d.basis, DecreaseBasis::ApiWindow);
        assert!((d.to_per_s - 15.0 * 0.98).abs() < 1e-9, "{d:?}");
        // The same report again changes nothing; one that leaves room changes nothing either.
        assert_eq!(
            a.on_api_window(&w, 14, Duration::from_secs(1), t(1.1), t(2.0), 20.0, &p),
            Reaction::Unchanged
        );
        let roomy = ApiWindow {
            remaining: 10,
            observed_at: t(1.5),
            ..w
        };
        assert_eq!(
            a.on_api_window(&roomy, 10, Duration::from_secs(1), t(1.5), t(2.0), 20.0, &p),
            Reaction::Unchanged
        );
    }

    /// A leaky bucket's `X-RateLimit-Limit` is its capacity (3 for a burst of 2), with no
    /// window: read as 3 a second it took the pace from 15/s to 2.9/s. With 15 of our calls
    /// in the second before it, the report cannot be of that window, and is left alone.
    #[test]
    fn a_report_whose_limit_our_own_calls_exceed_is_not_of_our_window() {
        let p = AdaptivePolicy::default();
        let mut a = Adaptive::default();
        let bucket = ApiWindow {
            limit: Some(3),
            window_s: None,
            remaining: 1,
            reset_at: t(1.0),
            observed_at: t(0.9),
        };
        let sec = Duration::from_secs(1);
        assert_eq!(
            a.on_api_window(&bucket, 15, sec, t(1.0), t(2.0), 20.0, &p),
            Reaction::Unchanged
        );
        assert_eq!(a.rate_per_s(t(2.0), 20.0, &p), 20.0);
        // The same report with 2 of ours in the window is of it: another client took one.
        let r = a.on_api_window(
            &ApiWindow {
                observed_at: t(1.5),
                remaining: 0,
                ..bucket
            },
            2,
            sec,
            t(1.5),
            t(2.5),
            20.0,
            &p,
        );
        assert!(matches!(r, Reaction::Decreased(_)), "{r:?}");
    }

    #[test]
    fn a_higher_limit_in_the_headers_raises_the_rate_at_once() {
        let p = AdaptivePolicy::default();
        let mut a = Adaptive::default();
        let sec = Duration::from_secs(1);
        // The limit halves to 10 a second: the rate follows it.
        let halved = ApiWindow {
            limit: Some(10),
            window_s: Some(1),
            remaining: 0,
            reset_at: t(1.0),
            observed_at: t(0.9),
        };
        let r = a.on_api_window(&halved, 10, sec, t(1.0), t(2.0), 20.0, &p);
        assert!(matches!(r, Reaction::Decreased(_)), "{r:?}");
        assert!((a.rate_per_s(t(5.0), 20.0, &p) - 9.8).abs() < 1e-9);
        // Room in a report of the same limit is not a reason to go up.
        let roomy = ApiWindow {
            remaining: 6,
            observed_at: t(5.0),
            ..halved
        };
        assert_eq!(
            a.on_api_window(&roomy, 4, sec, t(5.0), t(6.0), 20.0, &p),
            Reaction::Unchanged
        );
        // Back to 20 a second, 10 used, all ours: straight back to the ceiling, in the hold.
        let back = ApiWindow {
            limit: Some(20),
            remaining: 10,
            observed_at: t(6.0),
            ..halved
        };
        let r = a.on_api_window(&back, 10, sec, t(6.0), t(7.0), 20.0, &p);
        assert_eq!(
            r,
            Reaction::Raised {
                from_per_s: 10.0 * 0.98,
                to_per_s: 20.0
            }
        );
        assert_eq!(a.rate_per_s(t(6.0), 20.0, &p), 20.0);
        // Up to 16 with another client taking 4 of it: to what that leaves, not the ceiling.
        let mut b = Adaptive::default();
        b.on_api_window(&halved, 10, sec, t(1.0), t(2.0), 20.0, &p);
        let shared = ApiWindow {
            limit: Some(16),
            remaining: 2,
            observed_at: t(6.0),
            ..halved
        };
        let Reaction::Raised { to_per_s, .. } =
            b.on_api_window(&shared, 10, sec, t(6.0), t(7.0), 20.0, &p)
        else {
            panic!("not raised")
        };
        assert!((to_per_s - 12.0 * 0.98).abs() < 1e-9, "{to_per_s}");
        assert!((b.rate_per_s(t(7.0), 20.0, &p) - to_per_s).abs() < 1e-9);
    }

    #[test]
    fn disabled_counts_but_keeps_the_ceiling() {
        let p = AdaptivePolicy {
            enabled: false,
            ..AdaptivePolicy::default()
        };
        let mut a = Adaptive::default();
        let r = a.on_throttles(&throttled(2, &[1.0, 1.1]), t(2.0), t(2.0), 20.0, &p, |_| {
            Some(5.0)
        });
        assert_eq!(r, Reaction::Disabled { new: 2 });
        assert_eq!(a.rate_per_s(t(2.0), 20.0, &p), 20.0);
    }
}
