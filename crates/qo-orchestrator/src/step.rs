//! The dispatch loop's decision: from what the loop knows at one instant ([`Snapshot`]), the
//! one thing to do next ([`Step`]). Pure: no I/O, no clock, no runtime; the loop in
//! [`crate::run`] performs the step and asks again.
//!
//! The order of the rules is the order of the checks: the run's end, the refresh and save
//! timers, then standby (paused or circuit not closed), then, with nothing held, whether to
//! receive, and with something held, its visibility, its slot, the saved horizon, the worker
//! concurrency cap and the invokes in flight.

use std::time::Duration;

use qo_core::quota::{NotNow, TierId};
use qo_core::{Circuit, Pacer, Timestamp};

use crate::config::OrchestratorConfig;
use crate::run::StopReason;

/// The loop's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// The deadline less the stop margin: the run stops here, leaving the margin to finish.
    pub stop_at: Timestamp,
    /// When controls and the circuit are next re-read (and the lease renewed when due).
    pub next_refresh: Timestamp,
    /// When usage is next saved (and deletes flushed).
    pub next_persist: Timestamp,
    /// Since when nothing was received: the idle exit counts from here.
    pub idle_since: Timestamp,
}

impl Timers {
    /// The timers of a run starting at `now` that stops at `stop_at`: refresh and save at once.
    pub fn start(now: Timestamp, stop_at: Timestamp) -> Timers {
        Timers {
            stop_at,
            next_refresh: now,
            next_persist: now,
            idle_since: now,
        }
    }

    /// The next timer: refresh, save or stop, whichever comes first.
    pub fn wake(&self) -> Timestamp {
        self.next_refresh.min(self.next_persist).min(self.stop_at)
    }
}

/// What the decision reads: the loop's state at `now`, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    /// The instant of the decision.
    pub now: Timestamp,
    /// The run's settings.
    pub config: &'a OrchestratorConfig,
    /// The loop's timers.
    pub timers: &'a Timers,
    /// The pacer, only asked (never recorded into).
    pub pacer: &'a Pacer,
    /// The circuit as last read.
    pub circuit: &'a Circuit,
    /// Whether an operator paused dispatch.
    pub paused: bool,
    /// Received messages waiting for their slot.
    pub held: usize,
    /// When the first held message's visibility needs extending (`None`: nothing held).
    pub visibility_due: Option<Timestamp>,
    /// The earliest time the worker pool's per-function tiers allow the first held job a call
    /// (`None`: nothing held); the decision asks the shared pacer from there.
    pub pool_free_at: Option<Timestamp>,
    /// When an event stops counting against the worker concurrency cap, if the cap is
    /// reached (see [`cap_free_at`]).
    pub worker_free_at: Option<Timestamp>,
    /// Invokes not yet answered.
    pub in_flight: usize,
}

/// The next thing the loop does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Stop the run.
    Stop(StopReason),
    /// Re-read controls and the circuit; renew the lease when due.
    Refresh,
    /// Save usage (and flush deletes).
    Persist,
    /// Not dispatching (paused, or the circuit not closed): give back what is held, send a
    /// health check when `probe_now`, then wait until `wake`.
    Standby {
        /// A health check is due.
        probe_now: bool,
        /// Until when to wait.
        wake: Timestamp,
    },
    /// A budget is used up past this run's end: give back what is held and stop.
    Exhausted {
        /// The budget's reset.
        until: Timestamp,
        /// The tier used up.
        tier: TierId,
    },
    /// Wait until `until` (invokes in flight keep going).
    Wait {
        /// Until when.
        until: Timestamp,
        /// The wait is a back-off or a used-up budget, not counted against utilization.
        uncounted: bool,
    },
    /// Long-poll the queue for at most `wait`.
    Receive {
        /// The longest wait.
        wait: Duration,
    },
    /// Extend the visibility of what is held before it runs out.
    ExtendVisibility,
    /// Save first: the slot lies beyond the saved horizon.
    SaveFirst {
        /// As in [`Step::Wait`].
        uncounted: bool,
    },
    /// Hand the first held job to the worker for `slot`.
    Dispatch {
        /// The call's slot.
        slot: Timestamp,
        /// As in [`Step::Wait`].
        uncounted: bool,
    },
}

/// The next step at `s.now`.
pub fn next_step(s: &Snapshot<'_>) -> Step {
    let (now, t) = (s.now, s.timers);
    if now >= t.stop_at {
        return Step::Stop(StopReason::Deadline);
    }
    if now >= t.next_refresh {
        return Step::Refresh;
    }
    if now >= t.next_persist {
        return Step::Persist;
    }
    if s.paused || !s.circuit.is_closed() {
        return standby(s);
    }
    if s.held == 0 {
        return receive_or_wait(s);
    }
    dispatch_or_wait(s)
}

/// Paused or circuit not closed: a health check when one is due (never while paused).
fn standby(s: &Snapshot<'_>) -> Step {
    let mut wake = s.timers.wake();
    let mut probe_now = false;
    if !s.paused
        && let Some(due) = s.circuit.probe_due(&s.config.circuit)
    {
        if due <= s.now {
            probe_now = true;
        } else {
            wake = wake.min(due);
        }
    }
    Step::Standby { probe_now, wake }
}

/// Nothing held: receive only what can be dispatched soon (every receive counts toward the
/// redrive policy's maxReceiveCount, and a held message is invisible for nothing).
fn receive_or_wait(s: &Snapshot<'_>) -> Step {
    let cfg = s.config;
    let ask = s.now.plus(cfg.dispatch_lead / 2);
    let answer = s.pacer.peek(ask);
    let slot = match answer {
        Ok(()) => ask,
        Err(NotNow::ExhaustedUntil { until, tier }) if until >= s.timers.stop_at => {
            return Step::Exhausted { until, tier };
        }
        Err(not_now) => not_now.earliest(),
    };
    let wake = s.timers.wake();
    let receive_at = slot.minus(cfg.dispatch_lead).minus(cfg.receive_ahead);
    if receive_at > s.now {
        return Step::Wait {
            until: receive_at.min(wake),
            uncounted: !matches!(answer, Err(NotNow::NotBefore { .. })),
        };
    }
    Step::Receive {
        wait: wake.since(s.now).min(Duration::from_secs(1)),
    }
}

/// Something held: keep it visible, then hand the first out at its slot, within the saved
/// horizon, the worker concurrency cap and the invokes in flight.
fn dispatch_or_wait(s: &Snapshot<'_>) -> Step {
    let cfg = s.config;
    let wake = match s.visibility_due {
        Some(due) if due <= s.now => return Step::ExtendVisibility,
        Some(due) => s.timers.wake().min(due),
        None => s.timers.wake(),
    };
    // Ask at least half the lead ahead: a loop that wakes a little late (timers have
    // millisecond grain, schedulers jitter) keeps the pace's slot instead of pushing every
    // later slot back.
    let ask = s.now.plus(cfg.dispatch_lead / 2);
    let ask = s.pool_free_at.map_or(ask, |free| ask.max(free));
    let (slot, uncounted) = match s.pacer.peek(ask) {
        Ok(()) => (ask, false),
        Err(NotNow::NotBefore { at, .. }) => (at, false),
        // The API asked for the wait: not counted against the run's utilization.
        Err(NotNow::BackingOff { until }) => (until, true),
        Err(NotNow::ExhaustedUntil { until, tier }) if until >= s.timers.stop_at => {
            return Step::Exhausted { until, tier };
        }
        Err(NotNow::ExhaustedUntil { until, .. }) => (until, true),
    };
    let send_at = slot.minus(cfg.dispatch_lead);
    if send_at > s.now {
        return Step::Wait {
            until: send_at.min(wake),
            uncounted,
        };
    }
    if s.pacer.state().horizon.is_some_and(|h| slot > h) {
        return Step::SaveFirst { uncounted };
    }
    if let Some(free_at) = s.worker_free_at {
        return Step::Wait {
            until: free_at.min(wake),
            uncounted,
        };
    }
    if s.in_flight >= cfg.max_in_flight {
        return Step::Wait {
            until: wake,
            uncounted,
        };
    }
    Step::Dispatch { slot, uncounted }
}

/// With a worker concurrency cap of `cap` and `busy_until` (when each dispatched event stops
/// counting, oldest first): `None` when another event may go at `now`, else when the oldest
/// event still counting stops.
pub fn cap_free_at(
    cap: Option<usize>,
    busy_until: impl IntoIterator<Item = Timestamp>,
    now: Timestamp,
) -> Option<Timestamp> {
    let cap = cap?;
    let mut busy = busy_until.into_iter().filter(|t| *t > now);
    let first = busy.next()?;
    (1 + busy.count() >= cap).then_some(first)
}

/// Whether a run with nothing received since `idle_since` and `in_flight` invokes unanswered
/// has been idle long enough to stop at `now`.
pub fn idle_long_enough(
    config: &OrchestratorConfig,
    in_flight: usize,
    idle_since: Timestamp,
    now: Timestamp,
) -> bool {
    config
        .idle_exit
        .is_some_and(|idle| in_flight == 0 && now.since(idle_since) >= idle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qo_core::{PacingPolicy, QuotaSpec, QuotaState};

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(1_000_000 + ms)
    }

    struct World {
        config: OrchestratorConfig,
        timers: Timers,
        pacer: Pacer,
        circuit: Circuit,
    }

    impl World {
        fn new(quota: &str) -> World {
            let spec: QuotaSpec = quota.parse().expect("quota");
            let config = OrchestratorConfig::with_quota(spec.clone());
            let mut pacer = Pacer::hydrate(spec, PacingPolicy::default(), QuotaState::default());
            pacer.set_horizon(at(0), Some(at(60_000)));
            World {
                config,
                timers: Timers {
                    stop_at: at(60_000),
                    next_refresh: at(1_000),
                    next_persist: at(5_000),
                    idle_since: at(0),
                },
                pacer,
                circuit: Circuit::default(),
            }
        }

        fn at(&self, now: Timestamp, held: usize) -> Snapshot<'_> {
            Snapshot {
                now,
                config: &self.config,
                timers: &self.timers,
                pacer: &self.pacer,
                circuit: &self.circuit,
                paused: false,
                held,
                visibility_due: (held > 0).then(|| now.plus(Duration::from_secs(60))),
                pool_free_at: None,
                worker_free_at: None,
                in_flight: 0,
            }
        }
    }

    #[test]
    fn the_timers_come_first_in_order() {
        let w = World::new("10/s");
        assert_eq!(
            next_step(&w.at(at(60_000), 3)),
            Step::Stop(StopReason::Deadline)
        );
        assert_eq!(next_step(&w.at(at(1_000), 3)), Step::Refresh);
        let mut w = w;
        w.timers.next_refresh = at(10_000);
        assert_eq!(next_step(&w.at(at(5_000), 3)), Step::Persist);
    }

    #[test]
    fn nothing_held_and_a_free_slot_receives_for_at_most_a_second() {
        let w = World::new("10/s");
        assert_eq!(
            next_step(&w.at(at(0), 0)),
            Step::Receive {
                wait: Duration::from_secs(1)
            }
        );
        // A timer half a second away bounds the poll.
        let mut w = w;
        w.timers.next_refresh = at(500);
        assert_eq!(
            next_step(&w.at(at(0), 0)),
            Step::Receive {
                wait: Duration::from_millis(500)
            }
        );
    }

    #[test]
    fn a_held_job_with_a_free_slot_is_dispatched_half_a_lead_ahead() {
        let w = World::new("10/s");
        let now = at(100);
        assert_eq!(
            next_step(&w.at(now, 1)),
            Step::Dispatch {
                slot: now.plus(w.config.dispatch_lead / 2),
                uncounted: false
            }
        );
    }

    #[test]
    fn a_slot_further_than_the_lead_waits_until_its_send_time() {
        let mut w = World::new("1/s");
        let first = w.pacer.take_first_from(at(0)).at();
        let now = first.plus(Duration::from_millis(1));
        let ask = now.plus(w.config.dispatch_lead / 2);
        let next = w.pacer.peek(ask).expect_err("the next slot is a second on");
        assert!(next.earliest() >= first.plus(Duration::from_secs(1)));
        match next_step(&w.at(now, 1)) {
            Step::Wait { until, uncounted } => {
                assert_eq!(until, next.earliest().minus(w.config.dispatch_lead));
                assert!(!uncounted);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_back_off_waits_uncounted() {
        let mut w = World::new("10/s");
        w.pacer.back_off_until(at(30_000));
        match next_step(&w.at(at(0), 1)) {
            Step::Wait { until, uncounted } => {
                assert!(uncounted);
                assert_eq!(until, at(1_000), "bounded by the next refresh");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_budget_used_up_past_the_run_s_end_stops_held_or_not() {
        let mut w = World::new("2/day");
        let _ = w.pacer.take_first_from(at(0));
        let _ = w.pacer.take_first_from(at(0));
        for held in [0, 2] {
            match next_step(&w.at(at(10), held)) {
                Step::Exhausted { until, .. } => assert!(until >= w.timers.stop_at),
                other => panic!("{held}: {other:?}"),
            }
        }
    }

    #[test]
    fn paused_or_open_stands_by_and_probes_only_when_open_and_due() {
        let mut w = World::new("10/s");
        let mut s = w.at(at(0), 2);
        s.paused = true;
        assert_eq!(
            next_step(&s),
            Step::Standby {
                probe_now: false,
                wake: at(1_000)
            }
        );
        let policy = w.config.circuit;
        for i in 0..u64::from(policy.failure_threshold.get()) {
            w.circuit = w
                .circuit
                .record_failure(w.circuit.epoch, at(i), &policy)
                .expect("closed until the threshold");
        }
        assert!(!w.circuit.is_closed());
        let due = w.circuit.probe_due(&policy).expect("a probe is due");
        let mut later = w.timers;
        later.next_refresh = due.plus(Duration::from_secs(1));
        later.next_persist = later.next_refresh;
        let before = Snapshot {
            timers: &later,
            ..w.at(due.minus(Duration::from_millis(1)), 0)
        };
        assert_eq!(
            next_step(&before),
            Step::Standby {
                probe_now: false,
                wake: due
            }
        );
        let s = Snapshot {
            timers: &later,
            ..w.at(due, 0)
        };
        assert!(matches!(
            next_step(&s),
            Step::Standby {
                probe_now: true,
                ..
            }
        ));
    }

    #[test]
    fn visibility_due_is_extended_before_anything_is_dispatched() {
        let w = World::new("10/s");
        let mut s = w.at(at(0), 1);
        s.visibility_due = Some(at(0));
        assert_eq!(next_step(&s), Step::ExtendVisibility);
    }

    #[test]
    fn the_worker_cap_and_the_invokes_in_flight_hold_a_dispatch_back() {
        let w = World::new("10/s");
        let mut s = w.at(at(0), 1);
        s.worker_free_at = Some(at(300));
        assert_eq!(
            next_step(&s),
            Step::Wait {
                until: at(300),
                uncounted: false
            }
        );
        let mut s = w.at(at(0), 1);
        s.in_flight = w.config.max_in_flight;
        assert_eq!(
            next_step(&s),
            Step::Wait {
                until: at(1_000),
                uncounted: false
            }
        );
    }

    #[test]
    fn a_slot_past_the_saved_horizon_saves_first() {
        let mut w = World::new("10/s");
        w.pacer.set_horizon(at(0), Some(at(10)));
        assert_eq!(
            next_step(&w.at(at(0), 1)),
            Step::SaveFirst { uncounted: false }
        );
    }

    #[test]
    fn the_cap_frees_when_the_oldest_busy_event_stops_counting() {
        let busy = [at(100), at(200), at(300)];
        assert_eq!(cap_free_at(None, busy, at(0)), None);
        assert_eq!(cap_free_at(Some(3), busy, at(0)), Some(at(100)));
        assert_eq!(cap_free_at(Some(3), busy, at(100)), None);
        assert_eq!(cap_free_at(Some(2), busy, at(100)), Some(at(200)));
        assert_eq!(cap_free_at(Some(1), [], at(0)), None);
    }

    #[test]
    fn idle_needs_the_idle_exit_nothing_in_flight_and_the_time() {
        let mut config = OrchestratorConfig::with_quota("1/s".parse().expect("quota"));
        config.idle_exit = Some(Duration::from_secs(2));
        assert!(idle_long_enough(&config, 0, at(0), at(2_000)));
        assert!(!idle_long_enough(&config, 0, at(0), at(1_999)));
        assert!(!idle_long_enough(&config, 1, at(0), at(5_000)));
        config.idle_exit = None;
        assert!(!idle_long_enough(&config, 0, at(0), at(5_000)));
    }
}
