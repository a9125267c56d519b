//! Dispatch: which held jobs go now, grouped into one event through which function of the
//! pool, and the invokes that carry them (results and health checks included).

use qo_core::ports::{
    Invoker, JobSink, JobSource, LeaseStore, Message, RecordKey, RecordStore, update_record,
};
use qo_core::quota::Route;
use qo_core::{
    BatchEvent, Circuit, HealthCheckEvent, JobEvent, Observation, Timestamp, WorkerEvent,
};
use tracing::{Instrument, info, info_span, warn};

use crate::error::OrchestratorError;
use crate::step::{batch_limit, cap_free_at, full_functions, group_of, is_due};

use super::{Loop, names_of};

impl<'a, Q, S, I> Loop<'a, Q, S, I>
where
    Q: JobSource + JobSink + ?Sized,
    S: RecordStore + LeaseStore + ?Sized,
    I: Invoker + ?Sized,
{
    /// The held job the pool can call first through a function not `full`, and from when
    /// ([`WorkerPool::first_ready`]).
    pub(super) fn pool_ready(&self, now: Timestamp, full: &[String]) -> Option<(usize, Timestamp)> {
        let ask = now.plus(self.config.dispatch_lead / 2);
        let avoids = self
            .held
            .iter()
            .map(|h| h.message.origin.function.as_deref());
        self.pool.first_ready(ask, avoids, full)
    }

    /// When the pool's concurrency cap lets another event go, if it is reached
    /// ([`cap_free_at`]).
    pub(super) fn pool_cap_free_at(&self, now: Timestamp) -> Option<Timestamp> {
        cap_free_at(
            self.config.worker_concurrency_cap,
            self.busy_until.iter().map(|(_, t)| *t),
            now,
        )
    }

    /// The functions at their own concurrency cap at `now`, each with when it takes an event
    /// again ([`full_functions`]).
    pub(super) fn full_functions(&self, now: Timestamp) -> Vec<(String, Timestamp)> {
        full_functions(
            self.config.worker_function_concurrency_cap,
            self.busy_until.iter().map(|(f, t)| (f.as_str(), *t)),
            now,
        )
    }

    /// Hands the first held jobs out at `slots` (the pacer's, in order): grouped into
    /// invocations of up to `batch_max_jobs` ([`group_len`]), each sent now, at its first
    /// slot's send time; a later invocation of the pass goes only at a due slot and while the
    /// invokes in flight and the worker concurrency cap allow (the first was checked by the
    /// decision). Slots not sent are not taken: the next pass asks again.
    pub(super) fn dispatch(&mut self, slots: &[Timestamp], now: Timestamp) {
        self.report.dispatch_passes += 1;
        // The held job the pool can call first goes first (the decision's slot is its).
        if let Some((i, _)) = self.pool_ready(now, &names_of(&self.full_functions(now)))
            && i > 0
            && let Some(h) = self.held.remove(i)
        {
            self.held.push_front(h);
        }
        let mut next = 0;
        while next < slots.len() && !self.held.is_empty() {
            if next > 0 && !self.may_send_another(slots[next], now) {
                break;
            }
            let events = self.next_group(&slots[next..], now);
            if events.is_empty() {
                break;
            }
            let n = events.len();
            let messages: Vec<Message> = self.held.drain(..n).map(|h| h.message).collect();
            next += n;
            self.send(events, messages, now);
        }
    }

    /// Whether a later invocation of the pass may go at `slot`: the slot is due, and the
    /// invokes in flight and the worker concurrency cap allow one more.
    pub(super) fn may_send_another(&self, slot: Timestamp, now: Timestamp) -> bool {
        let cfg = self.config;
        is_due(cfg, slot, now)
            && self.in_flight.len() < cfg.max_in_flight
            && self.pool_cap_free_at(now).is_none()
    }

    /// The next invocation's events: the first held jobs at `slots`, as many as one
    /// invocation takes ([`group_len`]), and only while a function of the pool allows each
    /// slot by its own tiers after the slots before it in the group (with per-function tiers
    /// and room for more than one job, tried on a copy of the pool, taken as [`Self::send`]
    /// takes them, so that the pool then takes exactly that slot), never through a function
    /// at its own concurrency cap. Empty when no function allows the first.
    pub(super) fn next_group(&self, slots: &[Timestamp], now: Timestamp) -> Vec<JobEvent> {
        let full = names_of(&self.full_functions(now));
        let batch_max = batch_limit(self.config, &self.pacer, now);
        let look = slots.len().min(batch_max).min(self.held.len());
        let mut events: Vec<JobEvent> = self
            .held
            .iter()
            .zip(slots)
            .take(look)
            .map(|(h, slot)| JobEvent {
                job: h.job.clone(),
                origin: h.message.origin.clone(),
                slot_at: *slot,
                epoch: self.circuit.epoch,
                dispatched_at: now,
            })
            .collect();
        let n = group_of(
            &events,
            &self.pool,
            &self.pacer,
            &full,
            batch_max,
            self.config.batch_window,
        );
        events.truncate(n);
        events
    }

    /// Records `events`' slots in the shared pacer and the pool, and sends them: one
    /// invocation per function the pool routes the group's jobs to, each with its jobs in slot
    /// order (a single job as a job event).
    pub(super) fn send(&mut self, events: Vec<JobEvent>, messages: Vec<Message>, now: Timestamp) {
        let mut runs: Vec<(String, Vec<JobEvent>, Vec<Message>)> = Vec::new();
        let mut last: Option<String> = None;
        let full = names_of(&self.full_functions(now));
        for (mut e, m) in events.into_iter().zip(messages) {
            // The slots are the pacer's answers on this same state, taken in order, and a
            // function not at its cap allows each (checked by `next_group`): each is taken as
            // it is, by the function that took the previous slot when it allows it too, so
            // that the group stays in as few invocations as the functions' own tiers allow.
            let route = Route {
                avoid: e.origin.function.as_deref(),
                prefer: last.as_deref(),
                full: &full,
            };
            let taken = match self.pool.take_routed(&mut self.pacer, e.slot_at, route) {
                Some(taken) => taken,
                // Unreachable (`next_group` found a function not full for it): the job goes
                // over a function's cap rather than being dropped.
                None => {
                    debug_assert!(false, "no function for a slot next_group allowed");
                    let anywhere = Route { full: &[], ..route };
                    match self.pool.take_routed(&mut self.pacer, e.slot_at, anywhere) {
                        Some(taken) => taken,
                        None => continue,
                    }
                }
            };
            debug_assert_eq!(taken.at(), e.slot_at, "the decision's slot");
            e.slot_at = taken.at();
            last = Some(taken.function().to_string());
            match runs.iter_mut().find(|(f, _, _)| f == taken.function()) {
                Some((_, evs, ms)) => {
                    evs.push(e);
                    ms.push(m);
                }
                None => runs.push((taken.function().to_string(), vec![e], vec![m])),
            }
        }
        for (function, events, messages) in runs {
            self.invoke_through(function, events, messages, now);
        }
    }

    /// Sends `events` (their slots taken) in one invocation of `function`.
    pub(super) fn invoke_through(
        &mut self,
        function: String,
        mut events: Vec<JobEvent>,
        messages: Vec<Message>,
        now: Timestamp,
    ) {
        let rate = self.pacer.spec().pacing_rate_per_s();
        for e in &mut events {
            let slot = e.slot_at;
            self.slots.push(slot);
            self.meter.record(slot, rate);
            self.ports.observer.observe(Observation::Dispatched {
                message_id: e.origin.message_id.clone(),
                slot,
            });
        }
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return;
        };
        let (first_slot, last_slot) = (first.slot_at, last.slot_at);
        let span = info_span!(
            "dispatch",
            message_id = %first.origin.message_id,
            slot = %first_slot,
            jobs = events.len()
        );
        if self.config.worker_concurrency_cap.is_some()
            || self.config.worker_function_concurrency_cap.is_some()
        {
            // One event per invocation, busy until its last slot; those that stopped counting
            // against the caps are forgotten.
            self.busy_until.retain(|(_, t)| *t > now);
            self.busy_until
                .push_back((function.clone(), last_slot.plus(self.config.worker_busy)));
        }
        self.report.dispatched += events.len() as u64;
        self.report.invocations += 1;
        let event = if events.len() == 1 {
            match events.pop() {
                Some(job) => WorkerEvent::Job(job),
                None => return,
            }
        } else {
            WorkerEvent::Batch(BatchEvent { jobs: events })
        };
        let invoker = self.ports.invoker;
        self.in_flight.push(Box::pin(
            async move {
                let result = invoker.invoke_on(&function, &event).await;
                (messages, result)
            }
            .instrument(span),
        ));
    }

    /// Hands a result back to the worker to deliver again: one it dead-lettered when its
    /// destination kept refusing, brought back by `qo redrive`. It calls nothing and takes no
    /// slot; the message is deleted once Lambda accepts the event, as a job's is.
    pub(super) fn redeliver(&mut self, m: Message) {
        let Ok(result) = serde_json::from_str::<qo_core::result::JobResult>(&m.body) else {
            return;
        };
        info!(job_id = %result.job_id, "a dead-lettered result: handed to the worker to deliver again");
        let origin = m.origin.clone();
        self.hand_over(result, origin, vec![m]);
    }

    /// Tells whoever waits on a refused message's destination that it was refused: its
    /// failure result, handed to the worker to deliver (no slot, no call).
    pub(super) fn tell_refused(&mut self, m: &Message, reason: &qo_core::Reason) {
        let now = self.ports.clock.now();
        let destinations = &self.config.destinations;
        let (id, text) = (&m.origin.message_id, reason.to_string());
        if let Some((result, _)) =
            qo_core::result::JobResult::of_refused(&m.body, id, destinations, &text, now)
        {
            self.hand_over(result, m.origin.clone(), Vec::new());
        }
    }

    /// Invokes the worker with `result` to deliver; `messages` are deleted once Lambda
    /// accepts the event (released if it refuses), as a job's are.
    pub(super) fn hand_over(
        &mut self,
        result: qo_core::result::JobResult,
        origin: qo_core::Origin,
        messages: Vec<Message>,
    ) {
        let function = self.pool.health_check_function(1).to_string();
        let span = info_span!("deliver", job_id = %result.job_id);
        let event = WorkerEvent::Deliver(qo_core::event::DeliverEvent { result, origin });
        self.report.invocations += 1;
        let invoker = self.ports.invoker;
        self.in_flight.push(Box::pin(
            async move {
                let result = invoker.invoke_on(&function, &event).await;
                (messages, result)
            }
            .instrument(span),
        ));
    }

    pub(super) async fn send_health_check(
        &mut self,
        now: Timestamp,
    ) -> Result<(), OrchestratorError> {
        let policy = self.config.circuit;
        let epoch = self.circuit.epoch;
        let updated = update_record::<Circuit, _>(self.ports.store, RecordKey::Circuit, |c| {
            if c.epoch != epoch {
                return None;
            }
            c.record_probe_sent(now, &policy).ok()
        })
        .await?;
        let probe = match updated.value.state {
            qo_core::CircuitState::HalfOpen {
                probe_sent_at,
                probes,
                ..
            } if updated.value.epoch == epoch && probe_sent_at == now => Some(probes),
            _ => None,
        };
        self.apply_circuit(updated.value);
        let Some(probe) = probe else {
            return Ok(());
        };
        // The check is a call the API counts: it takes its quota slot a dispatch lead ahead
        // (the step waited until there was one), and the worker calls at that slot.
        let slot_at = self
            .pacer
            .take_first_from(now.plus(self.config.dispatch_lead))
            .at();
        let event = WorkerEvent::HealthCheck(HealthCheckEvent {
            epoch,
            sent_at: now,
            slot_at: Some(slot_at),
        });
        let function = self.pool.health_check_function(probe).to_string();
        match self.ports.invoker.invoke_on(&function, &event).await {
            Ok(()) => {
                self.report.health_checks += 1;
                self.ports
                    .observer
                    .observe(Observation::HealthCheckSent { epoch });
                info!(epoch, probe, function, "health check sent");
            }
            Err(e) => {
                warn!(error = %e, "health check invoke failed; the next one follows its timeout")
            }
        }
        Ok(())
    }
}
