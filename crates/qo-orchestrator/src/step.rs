//! The dispatch loop's decision: from what the loop knows at one instant ([`Snapshot`]), the
//! one thing to do next ([`Step`]). Pure: no I/O, no clock, no runtime; the loop in
//! [`crate::run`] performs the step and asks again.
//!
//! The order of the rules is the order of the checks: the run's end, the refresh and save
//! timers, then standby (paused or circuit not closed), then, with nothing held, whether to
//! receive, and with something held, its visibility, its slot, the saved horizon, the worker
//! concurrency cap and the invokes in flight.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use qo_core::quota::{NotNow, Route, TierId};
use qo_core::{Circuit, JobEvent, Pacer, Timestamp};

use crate::config::OrchestratorConfig;
use crate::pool::WorkerPool;

/// Why a run stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum StopReason {
    /// The deadline (less the margin) came.
    Deadline,
    /// Nothing to do for the idle time.
    Idle,
    /// Another orchestrator holds the lease.
    LeaseHeld {
        /// Its holder.
        owner: String,
        /// Its expiry.
        until: Timestamp,
    },
    /// The lease was taken over while running.
    LeaseLost,
    /// A budget tier is used up until its reset.
    Exhausted {
        /// The reset.
        until: Timestamp,
    },
}

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
    /// From when a receive polls the retry queue first again (see
    /// [`OrchestratorConfig::retry_poll_interval`]); not a wake-up: it is only asked when a
    /// receive starts.
    pub next_retry_poll: Timestamp,
}

impl Timers {
    /// The timers of a run starting at `now` that stops at `stop_at`: refresh and save at once.
    pub fn start(now: Timestamp, stop_at: Timestamp) -> Timers {
        Timers {
            stop_at,
            next_refresh: now,
            next_persist: now,
            idle_since: now,
            next_retry_poll: now,
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
    /// A receive is under way (it runs alongside dispatch; its answer wakes the loop).
    pub receiving: bool,
    /// The last receive brought nothing (the backlog is gone): the idle exit may apply.
    pub receive_empty: bool,
    /// The last receive polled the retry queue too: a run stops idle only after an empty
    /// receive of both queues.
    pub retry_checked: bool,
}

/// Why the loop waited instead of dispatching (counted in [`crate::RunReport`]'s `waits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// For the next slot's send time (the pace, a back-off, a used-up budget).
    Slot,
    /// For an invoke in flight to answer (`MAX_IN_FLIGHT` reached).
    InFlight,
    /// For a worker event to stop counting against the concurrency cap.
    WorkerCap,
    /// With nothing held: for a receive to answer, or until the next receive is due.
    Receive,
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
    /// Wait until `until`, or until an invoke or the receive under way answers (invokes in
    /// flight keep going).
    Wait {
        /// Until when.
        until: Timestamp,
        /// The wait is a back-off or a used-up budget, not counted against utilization.
        uncounted: bool,
        /// What the loop waits for.
        why: WaitReason,
    },
    /// Start a long poll of the queue for at most `wait` and `max` messages; it runs in the
    /// background while the loop dispatches.
    Receive {
        /// The longest wait.
        wait: Duration,
        /// Messages to ask for (1 to 10).
        max: u8,
        /// Whether the retry queue is polled first (its poll is due); otherwise only the main
        /// queue is.
        retry_first: bool,
    },
    /// Extend the visibility of what is held before it runs out.
    ExtendVisibility,
    /// Save first: the slot lies beyond the saved horizon.
    SaveFirst {
        /// As in [`Step::Wait`].
        uncounted: bool,
    },
    /// Hand the first held jobs to the worker, one per slot: every slot whose send time comes
    /// before the next tick (the pacer's slots, in order; at most one per held job).
    Dispatch {
        /// The calls' slots, ascending.
        slots: Vec<Timestamp>,
        /// As in [`Step::Wait`].
        uncounted: bool,
    },
}

/// A slot is dispatched in this pass when its send time comes within this of now: the timer's
/// grain, so that a pass takes every slot the next wake would.
pub const DISPATCH_TICK: Duration = Duration::from_millis(1);

/// The largest payload of an asynchronous Lambda invoke this loop sends: Lambda's 256 KB
/// limit for the `Event` invocation type. A batch stops before its JSON would pass it.
pub const MAX_INVOKE_PAYLOAD: usize = 256 * 1024;

/// The largest batch payload this loop sends: 16 KiB under [`MAX_INVOKE_PAYLOAD`]. When a
/// batch fails for good, Lambda sends its on-failure destination a record that wraps the event
/// in a request context, a response context and the function's error; a batch filled to the
/// invoke limit would leave that record no room, and Lambda drops the payload of a record it
/// cannot deliver: the batch's jobs, already deleted from the queue, would be lost.
pub const MAX_BATCH_PAYLOAD: usize = MAX_INVOKE_PAYLOAD - 16 * 1024;

/// What a batch's JSON adds around its jobs' events: `{"kind":"batch","jobs":[...]}`.
const BATCH_ENVELOPE: usize = 32;

/// One held job as the grouping sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Its slot.
    pub slot: Timestamp,
    /// Its event's serialized size, bytes.
    pub size: usize,
    /// Whether it may share an invocation ([`may_join_batch`]).
    pub may_join: bool,
}

/// Whether a job may share a worker invocation with others: not one that a pool function
/// already tried (`origin.function` set), which goes on its own so that the pool can route it.
pub fn may_join_batch(origin: &qo_core::Origin) -> bool {
    origin.function.is_none()
}

/// Jobs one invocation may carry at `now`: `BATCH_MAX_JOBS` while the pace is settled
/// ([`Pacer::is_settled`]), else 1. While the pace follows the API (a decrease of the learned
/// rate in force, a back-off, the slow-start ramp), each slot goes in its own invocation, so
/// that a lower pace reaches the very next slot instead of the ones after a batch's window.
pub fn batch_limit(config: &OrchestratorConfig, pacer: &Pacer, now: Timestamp) -> usize {
    if config.batch_max_jobs > 1 && pacer.is_settled(now) {
        config.batch_max_jobs
    } else {
        1
    }
}

/// How many of `candidates` (in slot order) go in the invocation of the first: the following
/// ones while each may join, its slot lies within `window` of the first's, the group stays at
/// most `max_jobs` and its JSON under [`MAX_BATCH_PAYLOAD`]. At least 1 (when any).
pub fn group_len(candidates: &[Candidate], max_jobs: usize, window: Duration) -> usize {
    let Some(first) = candidates.first() else {
        return 0;
    };
    if !first.may_join {
        return 1;
    }
    let mut size = BATCH_ENVELOPE + first.size;
    let mut n = 1;
    for c in &candidates[1..] {
        if n >= max_jobs || !c.may_join || c.slot.since(first.slot) > window {
            break;
        }
        // One comma between events.
        if size + 1 + c.size > MAX_BATCH_PAYLOAD {
            break;
        }
        size += 1 + c.size;
        n += 1;
    }
    n
}

/// How many of `events` (held jobs at their slots, in order, at most the batch's size) go in
/// the next invocation. Each must go through a function of `pool` not `full` whose own tiers
/// allow its slot; when functions have tiers of their own, each is taken on a copy of the pool
/// and `pacer` as dispatch takes it (through the function of the previous slot when it allows
/// it), at exactly its slot. Of those, [`group_len`] keeps the ones that fit one invocation.
/// Pure: the pool and the pacer are copied, never changed. 0 when no function allows the first.
pub fn group_of(
    events: &[JobEvent],
    pool: &WorkerPool,
    pacer: &Pacer,
    full: &[String],
    batch_max: usize,
    window: Duration,
) -> usize {
    let mut trial =
        (events.len() > 1 && pool.has_own_tiers()).then(|| (pool.clone(), pacer.clone()));
    let mut last: Option<String> = None;
    let routable = events
        .iter()
        .take_while(|e| {
            let avoid = e.origin.function.as_deref();
            if pool
                .free_at(e.slot_at, avoid, full)
                .is_none_or(|free| free > e.slot_at)
            {
                return false;
            }
            let Some((pool, pacer)) = trial.as_mut() else {
                return true;
            };
            let route = Route {
                avoid,
                prefer: last.as_deref(),
                full,
            };
            let Some(taken) = pool.take_routed(pacer, e.slot_at, route) else {
                return false;
            };
            last = Some(taken.function().to_string());
            taken.at() == e.slot_at
        })
        .count();
    if routable <= 1 {
        return routable;
    }
    let candidates: Vec<Candidate> = events[..routable]
        .iter()
        .map(|e| Candidate {
            slot: e.slot_at,
            size: serde_json::to_vec(e).map_or(MAX_INVOKE_PAYLOAD, |v| v.len()),
            may_join: may_join_batch(&e.origin),
        })
        .collect();
    group_len(&candidates, batch_max, window).max(1)
}

/// How many messages the loop wants held at `now`: the slots the pacer would hand out within
/// the dispatch lead and the hold horizon, counted on a copy of the pacer (so every constraint
/// sizes it: spread budgets, slow start, back-off, used-up tiers), at most `max_held`, at
/// least 1.
pub fn hold_target(pacer: &Pacer, config: &OrchestratorConfig, now: Timestamp) -> usize {
    let horizon = now.plus(config.dispatch_lead + config.hold_horizon);
    let mut pacer = pacer.clone();
    let mut t = now.plus(config.dispatch_lead / 2);
    let mut n = 0;
    while n < config.max_held {
        let slot = pacer.take_first_from(t).at();
        if slot > horizon {
            break;
        }
        n += 1;
        t = slot;
    }
    n.max(1)
}

/// The slots of this pass from `first` on (already checked): the pacer's next ones (on a
/// copy), each either due (its send time within [`DISPATCH_TICK`] of `now`) or, with batching,
/// within `batch_window` of its group's first slot while the group has room (it then rides in
/// that group's invocation, sent now; the slot itself never moves). All within the saved
/// horizon, at most `max` in all. Grouping may end a group sooner ([`group_len`]): the loop
/// then starts the next group only at a due slot.
fn due_slots(s: &Snapshot<'_>, first: Timestamp, max: usize) -> Vec<Timestamp> {
    let cfg = s.config;
    let mut pacer = s.pacer.clone();
    let horizon = pacer.state().horizon;
    let first = pacer.take_first_from(first).at();
    let mut slots = vec![first];
    let (mut group_first, mut group_len) = (first, 1);
    let batch_max = batch_limit(cfg, s.pacer, s.now);
    while slots.len() < max {
        let Some(&last) = slots.last() else { break };
        let next = match pacer.peek(last) {
            Ok(()) => last,
            Err(NotNow::NotBefore { at, .. }) => at,
            Err(_) => break,
        };
        if horizon.is_some_and(|h| next > h) {
            break;
        }
        if group_len < batch_max && next.since(group_first) <= cfg.batch_window {
            group_len += 1;
        } else if is_due(cfg, next, s.now) {
            (group_first, group_len) = (next, 1);
        } else {
            break;
        }
        slots.push(pacer.take_first_from(next).at());
    }
    slots
}

/// Whether a slot's send time has come, within [`DISPATCH_TICK`]: a new invocation starts
/// only at such a slot.
pub fn is_due(config: &OrchestratorConfig, slot: Timestamp, now: Timestamp) -> bool {
    slot.minus(config.dispatch_lead) <= now.plus(DISPATCH_TICK)
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
    if s.held == 0
        && s.receive_empty
        && !s.receiving
        && idle_long_enough(s.config, s.in_flight, t.idle_since, now)
    {
        if s.retry_checked {
            return Step::Stop(StopReason::Idle);
        }
        // The job queue is empty but the retry queue was not polled with it (its poll was not
        // due): poll both once more before stopping, if a receive is due at all (not while a
        // back-off or a used-up budget holds the next slot far off).
        return match receive_or_wait(s) {
            Step::Receive { wait, max, .. } => Step::Receive {
                wait,
                max,
                retry_first: true,
            },
            _ => Step::Stop(StopReason::Idle),
        };
    }
    if s.held == 0 {
        return receive_or_wait(s);
    }
    dispatch_or_wait(s)
}

/// Paused or circuit not closed: a health check when one is due (never while paused) and the
/// quota has a slot for it a dispatch lead ahead: a health check is a call the API counts.
fn standby(s: &Snapshot<'_>) -> Step {
    let mut wake = s.timers.wake();
    let mut probe_now = false;
    if !s.paused
        && let Some(due) = s.circuit.probe_due(&s.config.circuit)
    {
        let lead = s.config.dispatch_lead;
        let slot = match s.pacer.peek(s.now.plus(lead)) {
            Ok(()) => s.now,
            Err(not_now) => not_now.earliest().minus(lead),
        };
        let due = due.max(slot);
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
    let uncounted = !matches!(answer, Err(NotNow::NotBefore { .. }));
    if s.receiving {
        return Step::Wait {
            until: wake,
            uncounted,
            why: WaitReason::Receive,
        };
    }
    let receive_at = slot.minus(cfg.dispatch_lead).minus(cfg.receive_ahead);
    if receive_at > s.now {
        return Step::Wait {
            until: receive_at.min(wake),
            uncounted,
            why: WaitReason::Receive,
        };
    }
    receive(s, 0)
}

/// A receive of what the hold target still wants, beyond the `held` messages (1 to 10).
fn receive(s: &Snapshot<'_>, held: usize) -> Step {
    let want = hold_target(s.pacer, s.config, s.now).saturating_sub(held);
    Step::Receive {
        wait: s.timers.wake().since(s.now).min(Duration::from_secs(1)),
        max: u8::try_from(want.clamp(1, qo_core::sqs::MAX_BATCH)).unwrap_or(1),
        retry_first: s.timers.next_retry_poll <= s.now,
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
    if let Some(top_up) = top_up(s) {
        return top_up;
    }
    let (slot, uncounted) = match first_slot(s) {
        Ok(first) => first,
        Err(exhausted) => return exhausted,
    };
    let send_at = slot.minus(cfg.dispatch_lead);
    if send_at > s.now {
        return Step::Wait {
            until: send_at.min(wake),
            uncounted,
            why: WaitReason::Slot,
        };
    }
    if s.pacer.state().horizon.is_some_and(|h| slot > h) {
        return Step::SaveFirst { uncounted };
    }
    if let Some(free_at) = s.worker_free_at {
        return Step::Wait {
            until: free_at.min(wake),
            uncounted,
            why: WaitReason::WorkerCap,
        };
    }
    if s.in_flight >= cfg.max_in_flight {
        // Woken by the first invoke that answers, or the next timer.
        return Step::Wait {
            until: wake,
            uncounted,
            why: WaitReason::InFlight,
        };
    }
    Step::Dispatch {
        slots: due_slots(s, slot, s.held),
        uncounted,
    }
}

/// Keep the hold supplied: a receive runs alongside dispatch, up to the hold target, once a
/// full batch (or half the target, when that is less) is wanted: SQS bills each receive, and
/// topping up one message at a time would cost a receive per dispatch.
fn top_up(s: &Snapshot<'_>) -> Option<Step> {
    if s.receiving || s.held >= s.config.max_held {
        return None;
    }
    let target = hold_target(s.pacer, s.config, s.now);
    let want = target.saturating_sub(s.held);
    (want > 0 && want >= target.div_ceil(2).min(qo_core::sqs::MAX_BATCH))
        .then(|| receive(s, s.held))
}

/// The first held job's slot, and whether the wait for it is the API's or a budget's (not
/// counted against the run's utilization); `Err` with [`Step::Exhausted`] when a budget is
/// used up past the run's stop.
fn first_slot(s: &Snapshot<'_>) -> Result<(Timestamp, bool), Step> {
    // Ask at least half the lead ahead: a loop that wakes a little late (timers have
    // millisecond grain, schedulers jitter) keeps the pace's slot instead of pushing every
    // later slot back.
    let ask = s.now.plus(s.config.dispatch_lead / 2);
    let ask = s.pool_free_at.map_or(ask, |free| ask.max(free));
    match s.pacer.peek(ask) {
        Ok(()) => Ok((ask, false)),
        Err(NotNow::NotBefore { at, .. }) => Ok((at, false)),
        // The API asked for the wait: not counted against the run's utilization.
        Err(NotNow::BackingOff { until }) => Ok((until, true)),
        Err(NotNow::ExhaustedUntil { until, tier }) if until >= s.timers.stop_at => {
            Err(Step::Exhausted { until, tier })
        }
        Err(NotNow::ExhaustedUntil { until, .. }) => Ok((until, true)),
    }
}

/// With a worker concurrency cap of `cap` and `busy_until` (when each dispatched event stops
/// counting, in any order: a batch counts until its last slot): `None` when another event may
/// go at `now`, else when the first event still counting stops.
pub fn cap_free_at(
    cap: Option<usize>,
    busy_until: impl IntoIterator<Item = Timestamp>,
    now: Timestamp,
) -> Option<Timestamp> {
    let cap = cap?;
    let (count, first) = busy_until
        .into_iter()
        .filter(|t| *t > now)
        .fold((0usize, None::<Timestamp>), |(n, min), t| {
            (n + 1, Some(min.map_or(t, |m| m.min(t))))
        });
    (count >= cap).then_some(first).flatten()
}

/// The functions whose worker events in progress at `now` (`busy`: each event's function and
/// when it stops counting) reach `cap` each, with when each takes an event again (its count
/// falls under the cap). Empty without a cap.
pub fn full_functions<'b>(
    cap: Option<usize>,
    busy: impl IntoIterator<Item = (&'b str, Timestamp)>,
    now: Timestamp,
) -> Vec<(String, Timestamp)> {
    let Some(cap) = cap else {
        return Vec::new();
    };
    let mut by_function: std::collections::BTreeMap<&str, Vec<Timestamp>> = Default::default();
    for (function, until) in busy {
        if until > now {
            by_function.entry(function).or_default().push(until);
        }
    }
    by_function
        .into_iter()
        .filter(|(_, ends)| ends.len() >= cap)
        .map(|(function, mut ends)| {
            ends.sort_unstable();
            (function.to_string(), ends[ends.len() - cap])
        })
        .collect()
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
                    next_retry_poll: at(0),
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
                // With something held, a receive is under way (else the first step would be
                // to start one: see `a_hold_under_its_target_receives_alongside_dispatch`).
                receiving: held > 0,
                receive_empty: false,
                retry_checked: true,
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
                wait: Duration::from_secs(1),
                max: 10,
                retry_first: true,
            }
        );
        // A timer half a second away bounds the poll.
        let mut w = w;
        w.timers.next_refresh = at(500);
        assert_eq!(
            next_step(&w.at(at(0), 0)),
            Step::Receive {
                wait: Duration::from_millis(500),
                max: 10,
                retry_first: true,
            }
        );
    }

    #[test]
    fn the_retry_queue_is_polled_first_only_once_its_poll_is_due() {
        let mut w = World::new("10/s");
        w.timers.next_retry_poll = at(5_000);
        let receive = |w: &World, t: u64| match next_step(&w.at(at(t), 0)) {
            Step::Receive { retry_first, .. } => retry_first,
            other => panic!("expected a receive at {t} ms, got {other:?}"),
        };
        assert!(!receive(&w, 0), "not due: the main queue alone");
        w.timers.next_refresh = at(6_000);
        w.timers.next_persist = at(6_000);
        assert!(receive(&w, 5_000), "due: the retry queue first");
    }

    #[test]
    fn a_held_job_with_a_free_slot_is_dispatched_half_a_lead_ahead() {
        let w = World::new("10/s");
        let now = at(100);
        assert_eq!(
            next_step(&w.at(now, 1)),
            Step::Dispatch {
                slots: vec![now.plus(w.config.dispatch_lead / 2)],
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
            Step::Wait {
                until, uncounted, ..
            } => {
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
            Step::Wait {
                until, uncounted, ..
            } => {
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
        // A health check is a call: with the quota's window full, it waits for a slot.
        let mut full = w.pacer.clone();
        while full.take(due.plus(w.config.dispatch_lead)).is_ok() {}
        let s = Snapshot {
            timers: &later,
            pacer: &full,
            ..w.at(due, 0)
        };
        match next_step(&s) {
            Step::Standby {
                probe_now: false,
                wake,
            } => assert!(wake > due, "{wake} after {due}"),
            other => panic!("{other:?}"),
        }
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
                uncounted: false,
                why: WaitReason::WorkerCap
            }
        );
        let mut s = w.at(at(0), 1);
        s.in_flight = w.config.max_in_flight;
        assert_eq!(
            next_step(&s),
            Step::Wait {
                until: at(1_000),
                uncounted: false,
                why: WaitReason::InFlight
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
        // A batch counts until its last slot: the busy times come in any order, and the cap
        // frees at the earliest of them.
        let busy = [at(900), at(200), at(500)];
        assert_eq!(cap_free_at(Some(3), busy, at(0)), Some(at(200)));
        assert_eq!(cap_free_at(Some(2), busy, at(200)), Some(at(500)));
    }

    #[test]
    fn a_function_is_full_at_its_own_cap_and_takes_an_event_again_when_one_of_its_own_ends() {
        let busy = [
            ("a", at(300)),
            ("b", at(900)),
            ("a", at(100)),
            ("b", at(50)),
            ("a", at(700)),
        ];
        assert_eq!(full_functions(None, busy, at(0)), vec![]);
        // a: 3 in progress, b: 2.
        assert_eq!(
            full_functions(Some(3), busy, at(0)),
            vec![("a".into(), at(100))]
        );
        assert_eq!(
            full_functions(Some(2), busy, at(0)),
            vec![("a".into(), at(300)), ("b".into(), at(50))]
        );
        // At 100 ms: a has 2 left (300, 700), b 1 (900).
        assert_eq!(
            full_functions(Some(2), busy, at(100)),
            vec![("a".into(), at(300))]
        );
        assert_eq!(full_functions(Some(3), busy, at(100)), vec![]);
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

    #[test]
    fn a_hold_under_its_target_receives_alongside_dispatch() {
        let w = World::new("10/s");
        let mut s = w.at(at(100), 3);
        s.receiving = false;
        // 10/s over the lead and the 10 s horizon: 100 slots wanted, 3 held, 10 at a time.
        assert_eq!(
            next_step(&s),
            Step::Receive {
                wait: Duration::from_millis(900),
                max: 10,
                retry_first: true,
            }
        );
        // At the target, no receive: dispatch.
        let mut s = w.at(at(100), 100);
        s.receiving = false;
        assert!(matches!(next_step(&s), Step::Dispatch { .. }));
    }

    #[test]
    fn the_hold_is_topped_up_a_full_batch_at_a_time() {
        let w = World::new("10/s");
        // 100 wanted: 95 held want 5, fewer than a batch: no receive (each is billed).
        let mut s = w.at(at(100), 95);
        s.receiving = false;
        assert!(matches!(next_step(&s), Step::Dispatch { .. }));
        // 90 held want a full batch.
        let mut s = w.at(at(100), 90);
        s.receiving = false;
        assert!(matches!(next_step(&s), Step::Receive { max: 10, .. }));
    }

    #[test]
    fn a_pass_dispatches_every_slot_due_before_the_next_tick() {
        // One job per invoke: the slots due, none riding in a batch.
        let mut w = World::new("1000/s");
        w.config.batch_max_jobs = 1;
        let now = at(100);
        let lead = w.config.dispatch_lead;
        match next_step(&w.at(now, 500)) {
            Step::Dispatch { slots, uncounted } => {
                assert!(!uncounted);
                assert_eq!(slots[0], now.plus(lead / 2));
                // The pacer's slots (a millisecond apart, widened by the call tolerance), from
                // half a lead ahead up to a lead and a tick ahead: 126 of them.
                assert_eq!(slots.len(), 126, "{:?}", slots.last());
                let mut pacer = w.pacer.clone();
                for slot in &slots {
                    assert_eq!(pacer.take_first_from(*slot).at(), *slot, "the pacer's slot");
                }
                let last = slots.last().copied().expect("slots");
                assert!(last.minus(lead) <= now.plus(DISPATCH_TICK));
                // The next one is for the next pass.
                let next = pacer.take_first_from(last).at();
                assert!(next.minus(lead) > now.plus(DISPATCH_TICK), "{next:?}");
            }
            other => panic!("{other:?}"),
        }
        // Never more slots than jobs held.
        match next_step(&w.at(now, 5)) {
            Step::Dispatch { slots, .. } => assert_eq!(slots.len(), 5),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_held_while_a_receive_is_under_way_waits_for_it() {
        let w = World::new("10/s");
        let mut s = w.at(at(0), 0);
        s.receiving = true;
        assert_eq!(
            next_step(&s),
            Step::Wait {
                until: at(1_000),
                uncounted: true,
                why: WaitReason::Receive
            }
        );
    }

    #[test]
    fn the_idle_exit_needs_an_empty_receive() {
        let mut w = World::new("10/s");
        w.config.idle_exit = Some(Duration::from_secs(2));
        w.timers.next_refresh = at(10_000);
        w.timers.next_persist = at(10_000);
        let mut s = w.at(at(3_000), 0);
        assert!(matches!(next_step(&s), Step::Receive { .. }));
        s.receive_empty = true;
        assert_eq!(next_step(&s), Step::Stop(StopReason::Idle));
        s.in_flight = 1;
        assert!(matches!(next_step(&s), Step::Receive { .. }));
    }

    #[test]
    fn the_idle_exit_needs_the_retry_queue_polled_with_the_empty_receive() {
        let mut w = World::new("10/s");
        w.config.idle_exit = Some(Duration::from_secs(2));
        w.timers.next_refresh = at(10_000);
        w.timers.next_persist = at(10_000);
        // The retry queue's poll is not due: the empty receive was of the job queue alone.
        w.timers.next_retry_poll = at(5_000);
        let mut s = w.at(at(3_000), 0);
        s.receive_empty = true;
        s.retry_checked = false;
        assert!(
            matches!(
                next_step(&s),
                Step::Receive {
                    retry_first: true,
                    ..
                }
            ),
            "both queues once more before the idle stop"
        );
        s.retry_checked = true;
        assert_eq!(next_step(&s), Step::Stop(StopReason::Idle));
    }

    fn candidates(slots_ms: &[u64]) -> Vec<Candidate> {
        slots_ms
            .iter()
            .map(|ms| Candidate {
                slot: at(*ms),
                size: 300,
                may_join: true,
            })
            .collect()
    }

    #[test]
    fn a_group_takes_slots_within_the_window_up_to_the_max() {
        let window = Duration::from_millis(1_000);
        // 20/s: slots 50 ms apart; ten fit the max.
        let c = candidates(&(0..30).map(|i| i * 50).collect::<Vec<_>>());
        assert_eq!(group_len(&c, 10, window), 10);
        assert_eq!(group_len(&c, 1, window), 1);
        // 2/s: the window takes the slots up to 1000 ms after the first (inclusive).
        let c = candidates(&[0, 500, 1_000, 1_500]);
        assert_eq!(group_len(&c, 10, window), 3);
        assert_eq!(group_len(&c, 10, Duration::from_millis(999)), 2);
        assert_eq!(group_len(&[], 10, window), 0);
    }

    #[test]
    fn a_group_ends_at_a_job_that_may_not_join_and_before_the_payload_limit() {
        let window = Duration::from_secs(10);
        let mut c = candidates(&[0, 10, 20, 30]);
        c[2].may_join = false;
        assert_eq!(group_len(&c, 10, window), 2);
        // A first job that may not join goes alone.
        assert_eq!(group_len(&c[2..], 10, window), 1);
        // Payload: 100 KB events, two fit under 240 KB, three do not.
        let mut c = candidates(&[0, 10, 20, 30]);
        for x in &mut c {
            x.size = 100 * 1024;
        }
        assert_eq!(group_len(&c, 10, window), 2);
        // The limit itself: an envelope, two events and a comma exactly at it fit; 16 KiB
        // stay free under the invoke limit for the on-failure record's envelope.
        assert_eq!(MAX_INVOKE_PAYLOAD - MAX_BATCH_PAYLOAD, 16 * 1024);
        let half = (MAX_BATCH_PAYLOAD - BATCH_ENVELOPE - 1) / 2;
        let mut c = candidates(&[0, 10, 20]);
        c[0].size = half;
        c[1].size = MAX_BATCH_PAYLOAD - BATCH_ENVELOPE - 1 - half;
        c[2].size = 1;
        assert_eq!(group_len(&c, 10, window), 2);
        c[1].size += 1;
        assert_eq!(group_len(&c, 10, window), 1);
    }

    #[test]
    fn only_a_job_no_pool_function_tried_may_join() {
        let mut o = qo_core::Origin::default();
        assert!(may_join_batch(&o));
        o.function = Some("worker-2".into());
        assert!(!may_join_batch(&o));
    }

    #[test]
    fn with_batching_a_pass_takes_the_slots_a_group_can_carry_and_no_more() {
        let mut w = World::new("20/s");
        w.config.batch_max_jobs = 10;
        w.config.batch_window = Duration::from_millis(1_000);
        let now = at(100);
        let Step::Dispatch { slots, .. } = next_step(&w.at(now, 50)) else {
            panic!("a dispatch");
        };
        // One group: ten slots, 50 ms apart (the pacer's, not moved), within the window.
        assert_eq!(slots.len(), 10);
        let mut pacer = w.pacer.clone();
        for slot in &slots {
            assert_eq!(pacer.take_first_from(*slot).at(), *slot);
        }
        assert!(slots[9].since(slots[0]) <= w.config.batch_window);
        // Unbatched, only the due slots: from half a lead ahead (225 ms) to a lead and a tick
        // (351 ms), 50 ms apart (and the call tolerance's quarter millisecond).
        w.config.batch_max_jobs = 1;
        let Step::Dispatch { slots, .. } = next_step(&w.at(now, 50)) else {
            panic!("a dispatch");
        };
        let us = |ms: u64, us: u64| at(ms).plus(Duration::from_micros(us));
        assert_eq!(slots, vec![at(225), us(275, 250), us(325, 500)]);
    }

    #[test]
    fn while_a_decrease_of_the_pace_is_in_force_a_pass_takes_only_the_due_slots() {
        let mut w = World::new("20/s");
        w.config.batch_max_jobs = 10;
        w.config.batch_window = Duration::from_millis(1_000);
        let spec = w.pacer.spec().clone();
        let mut state = w.pacer.state().clone();
        state.adaptive.last = Some(qo_core::quota::Decrease {
            at: at(0),
            paced_from: at(0),
            from_per_s: 20.0,
            to_per_s: 14.0,
            estimate_per_s: None,
            basis: qo_core::quota::DecreaseBasis::Multiplicative,
        });
        w.pacer = Pacer::hydrate(spec, PacingPolicy::default(), state);
        w.timers.next_refresh = at(600_000);
        w.timers.next_persist = at(600_000);
        w.timers.stop_at = at(600_000);
        let pass = |w: &World, now: Timestamp| {
            let Step::Dispatch { slots, .. } = next_step(&w.at(now, 50)) else {
                panic!("a dispatch");
            };
            slots
        };
        let now = at(100);
        assert!(!w.pacer.is_settled(now));
        let batched = pass(&w, now);
        w.config.batch_max_jobs = 1;
        let alone = pass(&w, now);
        assert_eq!(
            batched, alone,
            "the slots of an unbatched pass: each goes on its own"
        );
        assert!(batched.iter().all(|s| is_due(&w.config, *s, now)));
        // Once the decrease's hold and probe are over, the pass groups again.
        w.config.batch_max_jobs = 10;
        let adaptive = PacingPolicy::default().adaptive;
        let later = at(0).plus(adaptive.hold + adaptive.probe);
        w.pacer
            .set_horizon(later, Some(later.plus(Duration::from_secs(60))));
        assert!(w.pacer.is_settled(later));
        assert_eq!(pass(&w, later).len(), 10);
    }

    fn events(slots_ms: &[u64], tried_by: Option<(usize, &str)>) -> Vec<JobEvent> {
        slots_ms
            .iter()
            .enumerate()
            .map(|(i, ms)| JobEvent {
                job: qo_core::Job {
                    path: format!("/items/{i}"),
                    ..qo_core::Job::default()
                },
                origin: qo_core::Origin {
                    message_id: format!("m-{i}"),
                    function: tried_by
                        .filter(|(at, _)| *at == i)
                        .map(|(_, f)| f.to_string()),
                    ..qo_core::Origin::default()
                },
                slot_at: at(*ms),
                epoch: 0,
                dispatched_at: at(0),
            })
            .collect()
    }

    fn pool_and_pacer(quota: &str, functions: &[&str]) -> (WorkerPool, Pacer) {
        let spec: QuotaSpec = quota.parse().expect("quota");
        let mut config = OrchestratorConfig::with_quota(spec.clone());
        config.worker_functions = functions.iter().map(|f| f.to_string()).collect();
        let state = QuotaState::default();
        let pool = WorkerPool::hydrate(&config, &qo_core::Control::default(), &state);
        let mut pacer = Pacer::hydrate(spec, PacingPolicy::default(), state);
        pacer.set_horizon(at(0), Some(at(60_000)));
        (pool, pacer)
    }

    #[test]
    fn a_group_is_the_jobs_one_function_may_take_in_one_invocation() {
        let (pool, pacer) = pool_and_pacer("20/s", &[]);
        let window = Duration::from_secs(2);
        let evs = events(&[0, 50, 100, 150, 200], None);
        assert_eq!(group_of(&evs, &pool, &pacer, &[], 20, window), 5);
        assert_eq!(group_of(&evs, &pool, &pacer, &[], 3, window), 3);
        // A job a function already tried goes on its own: the group ends before it.
        let tried = events(&[0, 50, 100, 150], Some((2, "worker")));
        assert_eq!(group_of(&tried, &pool, &pacer, &[], 20, window), 2);
        // Every function at its cap: nothing goes.
        let full = vec![crate::pool::UNNAMED.to_string()];
        assert_eq!(group_of(&evs, &pool, &pacer, &full, 20, window), 0);
        assert_eq!(group_of(&[], &pool, &pacer, &[], 20, window), 0);
    }

    #[test]
    fn a_group_stops_where_no_function_s_own_tier_allows_the_slot() {
        // Each function of two may call once a second: the slots at 0 and 300 ms go through
        // one each, the one at 600 ms through neither, so the group is two. The pool and the
        // pacer are tried on copies and left as they were.
        let (pool, pacer) = pool_and_pacer("20/s,1/s per function", &["a", "b"]);
        let evs = events(&[0, 300, 600], None);
        let window = Duration::from_secs(2);
        assert_eq!(group_of(&evs, &pool, &pacer, &[], 20, window), 2);
        assert_eq!(group_of(&evs, &pool, &pacer, &[], 20, window), 2);
        // With one of them at its concurrency cap, one job goes.
        assert_eq!(
            group_of(&evs, &pool, &pacer, &["b".to_string()], 20, window),
            1
        );
    }
}
