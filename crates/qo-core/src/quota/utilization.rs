//! Quota utilization: of the calls the quota's pace allowed while work was waiting, how many
//! were made.
//!
//! The meter counts in slot time. A stretch of backlog opens with its first slot (one call
//! allowed); every later slot adds the calls the pace allowed since the previous one
//! (`rate x gap`). The loop closes the stretch when the backlog ends (an empty receive) or
//! dispatch stops for a reason outside its control (pause, open circuit, Retry-After back-off,
//! an exhausted budget, a quota change), so idle time is not counted against it. Slots spaced
//! exactly at the pace give 1.0; time lost between batches (a slow receive, a late loop) shows
//! as less. With a burst above 1, a stretch can briefly read above 1.0.

use crate::time::Timestamp;

/// Calls made and calls allowed over some stretch of time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Utilization {
    /// Calls dispatched.
    pub calls: u64,
    /// Calls the pace allowed over the same slots.
    pub allowed: f64,
}

impl Utilization {
    /// Adds another stretch's counts.
    pub fn add(&mut self, other: Utilization) {
        self.calls += other.calls;
        self.allowed += other.allowed;
    }

    /// `calls / allowed`, or `None` when nothing was allowed (no backlog).
    pub fn fraction(&self) -> Option<f64> {
        (self.allowed > 0.0).then(|| self.calls as f64 / self.allowed)
    }
}

/// Counts dispatched slots against the pace; see the module doc.
#[derive(Clone, Debug, Default)]
pub struct UtilizationMeter {
    open: Option<Stretch>,
    pending: Utilization,
}

#[derive(Clone, Copy, Debug)]
struct Stretch {
    rate_per_s: f64,
    counted_to: Timestamp,
}

impl UtilizationMeter {
    /// An empty meter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a call dispatched for `slot` while the pace was `rate_per_s` calls a second.
    pub fn record(&mut self, slot: Timestamp, rate_per_s: f64) {
        match &mut self.open {
            None => {
                self.open = Some(Stretch {
                    rate_per_s,
                    counted_to: slot,
                });
                self.pending.allowed += 1.0;
            }
            Some(stretch) => {
                if slot > stretch.counted_to {
                    let gap = slot.since(stretch.counted_to).as_secs_f64();
                    self.pending.allowed += stretch.rate_per_s * gap;
                    stretch.counted_to = slot;
                }
            }
        }
        self.pending.calls += 1;
    }

    /// Ends the current stretch of backlog: the time until the next recorded slot is not
    /// counted.
    pub fn close(&mut self) {
        self.open = None;
    }

    /// Whether a stretch is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The counts since the last take (an open stretch stays open).
    pub fn take(&mut self) -> Utilization {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at_ms(ms: u64) -> Timestamp {
        Timestamp::from_millis(1_000_000 + ms)
    }

    #[test]
    fn slots_at_the_pace_use_all_of_it() {
        let mut m = UtilizationMeter::new();
        for i in 0..100 {
            m.record(at_ms(i * 50), 20.0);
        }
        let u = m.take();
        assert_eq!(u.calls, 100);
        assert!((u.fraction().unwrap() - 1.0).abs() < 1e-9, "{u:?}");
    }

    #[test]
    fn gaps_inside_a_stretch_count_against_it() {
        let mut m = UtilizationMeter::new();
        // 10 calls at 20/s, then a 500 ms hole (10 slots lost), then 10 more.
        for i in 0..10 {
            m.record(at_ms(i * 50), 20.0);
        }
        for i in 0..10 {
            m.record(at_ms(450 + 550 + i * 50), 20.0);
        }
        let u = m.take();
        assert_eq!(u.calls, 20);
        // Allowed: 1 + 9 + 11 (the 550 ms step) + 9 = 30.
        assert!((u.allowed - 30.0).abs() < 1e-9, "{u:?}");
    }

    #[test]
    fn a_closed_stretch_does_not_count_the_idle_time() {
        let mut m = UtilizationMeter::new();
        m.record(at_ms(0), 20.0);
        m.record(at_ms(50), 20.0);
        m.close();
        assert!(!m.is_open());
        m.record(at_ms(60_000), 20.0);
        m.record(at_ms(60_050), 20.0);
        let u = m.take();
        assert_eq!(u.calls, 4);
        assert!((u.allowed - 4.0).abs() < 1e-9, "{u:?}");
    }

    #[test]
    fn take_resets_the_counts_but_keeps_the_stretch() {
        let mut m = UtilizationMeter::new();
        m.record(at_ms(0), 10.0);
        m.record(at_ms(100), 10.0);
        let first = m.take();
        assert_eq!(first.calls, 2);
        assert!(m.is_open());
        assert_eq!(m.take(), Utilization::default());
        assert_eq!(m.take().fraction(), None);
        // The stretch goes on: the next slot 300 ms later allowed 3 calls, made 1.
        m.record(at_ms(400), 10.0);
        let second = m.take();
        assert_eq!(second.calls, 1);
        assert!((second.allowed - 3.0).abs() < 1e-9, "{second:?}");
        let mut total = first;
        total.add(second);
        assert!((total.fraction().unwrap() - 3.0 / 5.0).abs() < 1e-9);
    }

    #[test]
    fn a_slot_in_the_past_of_the_stretch_adds_a_call_only() {
        let mut m = UtilizationMeter::new();
        m.record(at_ms(100), 20.0);
        m.record(at_ms(100).minus(Duration::from_millis(10)), 20.0);
        let u = m.take();
        assert_eq!(u.calls, 2);
        assert!((u.allowed - 1.0).abs() < 1e-9);
    }
}
