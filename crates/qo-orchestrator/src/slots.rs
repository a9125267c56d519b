//! [`SlotLog`]: the slots this run handed out lately, to judge the API's limit when it throttles.
//!
//! When the API throttles a call paced at the current rate, the calls it accepted just before
//! tell its limit: the slots handed out in the pacing tier's period before the throttled one,
//! less those it throttled. Calls of an earlier run are not in the log, so the count can only
//! be too low: a rate under the API's limit, never over it.

use std::collections::VecDeque;
use std::time::Duration;

use qo_core::Timestamp;
use qo_core::quota::LimitEstimate;

/// The most slots kept (a per-minute tier of 10,000 calls needs no more).
const MAX_SLOTS: usize = 10_000;

/// Slots are kept for this many periods before the latest one. A report is counted against
/// the window ending at its observation, which the orchestrator reads up to a refresh later
/// (about a second), while slots are handed out up to a dispatch lead ahead of now: two
/// periods pruned the start of a one-second window read that late, so our own calls were
/// taken for another client's and the pace went down for nothing.
const KEEP_PERIODS: u32 = 4;

/// Recent slots, oldest first.
#[derive(Debug)]
pub struct SlotLog {
    slots: VecDeque<Timestamp>,
    /// The period counted over: the pacing tier's.
    period: Duration,
    /// Added to the period when counting: the pacer spaces calls over the period widened by
    /// its call tolerance, so a period alone holds one slot fewer than the API's window.
    slack: Duration,
    /// The log holds every slot handed out from here on (just after an earlier run's last
    /// slot): a window that starts earlier also holds that run's calls, which are not here.
    complete_from: Timestamp,
}

impl SlotLog {
    /// An empty log, complete from `start` on (just after an earlier run's last slot),
    /// counting over `period` widened by `slack` (the call
    /// tolerance).
    pub fn new(period: Duration, slack: Duration, start: Timestamp) -> Self {
        SlotLog {
            slots: VecDeque::new(),
            period,
            slack,
            complete_from: start,
        }
    }

    /// Counts over `period` from now on (the quota changed).
    pub fn set_period(&mut self, period: Duration) {
        self.period = period;
    }

    /// Records a slot handed out.
    pub fn push(&mut self, slot: Timestamp) {
        self.slots.push_back(slot);
        let keep_from = slot.minus(self.period.saturating_mul(KEEP_PERIODS));
        while self.slots.len() > MAX_SLOTS || self.slots.front().is_some_and(|s| *s < keep_from) {
            self.slots.pop_front();
        }
    }

    /// How many slots lie in the window of `length` (widened by the slack) ending at `to`;
    /// `None` when the window starts before the log does (a new run's first seconds: the
    /// previous run's calls in it would be taken for another client's).
    pub fn count_ending_at(&self, to: Timestamp, length: Duration) -> Option<u64> {
        let from = to.minus(length + self.slack);
        (from >= self.complete_from).then(|| {
            self.slots
                .iter()
                .filter(|s| **s >= from && **s <= to)
                .count() as u64
        })
    }

    /// The API's limit as the calls before `slot` tell it, calls per second: the slots in
    /// `[slot - period - slack, slot)` that were not `throttled`, over the period. `None` when
    /// none counts, or when the period starts before the log does.
    pub fn estimate_per_s(&self, slot: Timestamp, throttled: &[Timestamp]) -> Option<f64> {
        let from = slot.minus(self.period + self.slack);
        if from < self.complete_from {
            return None;
        }
        let within = |s: &&Timestamp| **s >= from && **s < slot;
        let sent = self.slots.iter().filter(within).count();
        let refused = throttled.iter().filter(within).count();
        let n = sent.saturating_sub(refused);
        let period = self.period.as_secs_f64();
        (n > 0 && period > 0.0).then(|| n as f64 / period)
    }

    /// What our slots tell of the API's limit when `slot` is the first throttled one paced at
    /// the current rate (see [`LimitEstimate`]): the window's count before it
    /// ([`SlotLog::estimate_per_s`]), whether our calls filled only part of that window, and
    /// the rate it accepted of our calls from `slot` to the latest throttled slot.
    pub fn estimate(&self, slot: Timestamp, throttled: &[Timestamp]) -> LimitEstimate {
        let window = self.estimate_per_s(slot, throttled);
        let from = slot.minus(self.period + self.slack);
        let first = self.slots.iter().find(|s| **s >= from && **s < slot);
        // Our calls began well into the window: a count under the limit may only say we
        // had not used it yet (a bucket), not that it is full.
        let partial = first.is_none_or(|f| f.since(from) > self.period / 10 + self.slack);
        LimitEstimate {
            window,
            partial,
            share: self.accepted_between_throttles(slot, throttled),
        }
    }

    /// The rate the API accepted of our calls from the throttled `first` to the latest
    /// throttled slot after it: `None` with fewer than two throttled slots, or when it
    /// accepted none in between (a full window says nothing of a rate).
    fn accepted_between_throttles(&self, first: Timestamp, throttled: &[Timestamp]) -> Option<f64> {
        let refused: Vec<&Timestamp> = throttled.iter().filter(|t| **t >= first).collect();
        let last = **refused.iter().max()?;
        let span = last.since(first).as_secs_f64();
        if refused.len() < 2 || span <= 0.0 {
            return None;
        }
        let sent = self
            .slots
            .iter()
            .filter(|s| **s >= first && **s <= last)
            .count();
        // The last throttled slot closes the span: the accepted calls lie between the two.
        let accepted = sent.saturating_sub(refused.len());
        (accepted > 0).then(|| accepted as f64 / span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(1_000_000 + ms)
    }

    /// A leaky bucket of 15/s met at 20/s: a quarter of our calls refused, evenly. The
    /// calls before the first 429 cover part of the window only, so their count says little;
    /// the calls accepted between the 429s say 15.
    #[test]
    fn a_bucket_s_rate_is_what_it_accepts_between_its_throttles() {
        let mut log = SlotLog::new(Duration::from_secs(1), Duration::ZERO, Timestamp::EPOCH);
        for i in 0..30 {
            log.push(t(500 + i * 50));
        }
        // Throttled: every fourth slot from 900 ms.
        let refused: Vec<Timestamp> = (0..5).map(|i| t(900 + i * 200)).collect();
        let e = log.estimate(t(900), &refused);
        assert!(e.partial, "{e:?}");
        assert_eq!(e.window, Some(8.0));
        let share = e.share.expect("a share");
        assert!((share - 15.0).abs() < 1e-9, "{share}");
        // A full window refuses everything between: no share.
        let all: Vec<Timestamp> = (0..6).map(|i| t(900 + i * 50)).collect();
        assert_eq!(log.estimate(t(900), &all).share, None);
        // One throttle alone: no span.
        assert_eq!(log.estimate(t(900), &refused[..1]).share, None);
        // A window our calls filled from its start is not partial.
        assert!(!log.estimate(t(1_600), &[t(1_600)]).partial);
    }

    #[test]
    fn counts_the_accepted_calls_of_the_period_before_the_throttled_slot() {
        let mut log = SlotLog::new(Duration::from_secs(1), Duration::ZERO, Timestamp::EPOCH);
        for i in 0..40 {
            log.push(t(i * 50)); // 20/s
        }
        // Throttled at 0.75 s: 15 calls before it since the start.
        assert_eq!(log.estimate_per_s(t(750), &[]), Some(15.0));
        // Later, a second of 20/s before it, 5 of them throttled: 15 accepted.
        let refused: Vec<Timestamp> = (0..5).map(|i| t(800 + i * 200)).collect();
        assert_eq!(log.estimate_per_s(t(1800), &refused), Some(15.0));
        assert_eq!(log.estimate_per_s(t(0), &[]), None);
    }

    #[test]
    fn a_window_read_a_refresh_late_still_holds_all_our_slots() {
        // 15/s for 5 s. A report observed at 3.0 s is read when slots are already handed out
        // up to 4.25 s (a refresh later, a dispatch lead ahead): its window must still hold
        // the 15 slots of (2.0 s, 3.0 s].
        let mut log = SlotLog::new(Duration::from_secs(1), Duration::ZERO, Timestamp::EPOCH);
        for i in 0..=(4250 / 66) {
            log.push(t(i * 66 + 1));
        }
        assert_eq!(
            log.count_ending_at(t(3000), Duration::from_secs(1)),
            Some(15)
        );
    }

    #[test]
    fn a_window_before_the_run_started_is_not_counted() {
        // A new run from 10 s: the first second's reports would count only its own calls.
        let mut log = SlotLog::new(Duration::from_secs(1), Duration::ZERO, t(10_000));
        for i in 0..30 {
            log.push(t(10_000 + i * 66));
        }
        assert_eq!(log.count_ending_at(t(10_500), Duration::from_secs(1)), None);
        assert_eq!(log.estimate_per_s(t(10_500), &[]), None);
        assert_eq!(
            log.count_ending_at(t(11_000), Duration::from_secs(1)),
            Some(16)
        );
    }

    #[test]
    fn the_slack_counts_the_slots_the_call_tolerance_spreads_past_the_period() {
        // 20/s paced at (1000 + 5) / 20 = 50.25 ms: a plain second before a slot holds 19 of
        // them, the API's window 20 (each call may come up to 5 ms late).
        let mut log = SlotLog::new(
            Duration::from_secs(1),
            Duration::from_millis(5),
            Timestamp::EPOCH,
        );
        let slots: Vec<Timestamp> = (0..40u64)
            .map(|i| Timestamp::from_micros(1_000_000_000 + i * 50_250))
            .collect();
        for s in &slots {
            log.push(*s);
        }
        assert_eq!(log.estimate_per_s(slots[30], &[]), Some(20.0));
        let plain = {
            let mut l = SlotLog::new(Duration::from_secs(1), Duration::ZERO, Timestamp::EPOCH);
            for s in &slots {
                l.push(*s);
            }
            l.estimate_per_s(slots[30], &[])
        };
        assert_eq!(plain, Some(19.0));
    }
}
