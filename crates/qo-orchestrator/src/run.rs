//! One orchestrator run: hydrate, take the lease, dispatch at the quota's pace until the
//! deadline (or until idle), then hand the state back.
//!
//! The loop is generic over the ports, so the same code runs on Lambda (SQS, DynamoDB, Lambda
//! Invoke), in `qo local` (in memory) and in tests (in memory, on tokio's paused clock).
//!
//! Dispatch ahead, call on time: each job is handed to the worker `dispatch_lead` before its
//! slot and carries the slot; the worker calls at the slot. Invokes are kept in flight
//! concurrently (an emulator may answer only after the function returns), and a message is
//! deleted only once its invoke was accepted: a failed invoke releases it, never loses it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tracing::{Instrument, debug, info, info_span, warn};

use qo_core::ports::{
    DeadLetter, Invoker, JobSink, JobSource, Lease, LeaseStore, Message, RecordKey, RecordStore,
    StoreError, load_record, save_record, update_record,
};
use qo_core::quota::{Availability, Utilization, UtilizationMeter};
use qo_core::{
    Circuit, Clock, Control, HealthCheckEvent, Job, JobEvent, Observation, Observer, Pacer,
    QuotaState, Timestamp, WorkerEvent,
};

use crate::config::OrchestratorConfig;
use crate::error::OrchestratorError;

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

/// What a run did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Why it stopped.
    pub stopped: StopReason,
    /// Jobs handed to the worker.
    pub dispatched: u64,
    /// Messages dead-lettered as invalid.
    pub dead_lettered: u64,
    /// Messages released back to the queue (pause, circuit, stop, failed invoke).
    pub released: u64,
    /// Invokes that failed (their jobs were released).
    pub invoke_failures: u64,
    /// Health checks sent.
    pub health_checks: u64,
    /// The lease's fencing token (0 if none was taken).
    pub lease_token: u64,
    /// Calls dispatched over the calls the quota's pace allowed while work was waiting
    /// ([`UtilizationMeter`]); `None` when nothing waited.
    pub quota_utilization: Option<f64>,
}

impl RunReport {
    fn new() -> Self {
        RunReport {
            stopped: StopReason::Deadline,
            dispatched: 0,
            dead_lettered: 0,
            released: 0,
            invoke_failures: 0,
            health_checks: 0,
            lease_token: 0,
            quota_utilization: None,
        }
    }
}

/// The ports a run uses.
pub struct Ports<'a, Q: ?Sized, S: ?Sized, I: ?Sized> {
    /// The job queue (receive, delete, release; dead-letter).
    pub queue: &'a Q,
    /// The state store (records and lease).
    pub store: &'a S,
    /// The worker invoker.
    pub invoker: &'a I,
    /// The clock.
    pub clock: &'a dyn Clock,
    /// Where observations go.
    pub observer: &'a dyn Observer,
}

type InFlight<'a> =
    Pin<Box<dyn Future<Output = (Message, Result<(), qo_core::ports::InvokeError>)> + Send + 'a>>;

struct Loop<'a, Q: ?Sized, S: ?Sized, I: ?Sized> {
    ports: Ports<'a, Q, S, I>,
    config: &'a OrchestratorConfig,
    pacer: Pacer,
    quota_version: u64,
    circuit: Circuit,
    control: Control,
    lease: Lease,
    held: VecDeque<(Message, Job, Timestamp)>,
    in_flight: FuturesUnordered<InFlight<'a>>,
    to_delete: Vec<Message>,
    meter: UtilizationMeter,
    utilization: Utilization,
    report: RunReport,
}

/// Runs until `deadline` (the Lambda's, say) less the configured stop margin.
pub async fn run<Q, S, I>(
    ports: Ports<'_, Q, S, I>,
    config: &OrchestratorConfig,
    deadline: Timestamp,
) -> Result<RunReport, OrchestratorError>
where
    Q: JobSource + JobSink + ?Sized,
    S: RecordStore + LeaseStore + ?Sized,
    I: Invoker + ?Sized,
{
    let now = ports.clock.now();
    let mut report = RunReport::new();

    // 1. Take the lease: only one orchestrator dispatches.
    let lease = match ports.store.take(&config.owner, now, config.lease_ttl).await {
        Ok(lease) => lease,
        Err(StoreError::LeaseHeld { owner, until }) => {
            info!(%owner, %until, "lease held by another orchestrator; not dispatching");
            report.stopped = StopReason::LeaseHeld { owner, until };
            return Ok(report);
        }
        Err(e) => return Err(e.into()),
    };
    report.lease_token = lease.token;

    // 2. Hydrate quota usage, circuit and controls.
    let control = load_record::<Control>(ports.store, RecordKey::Control)
        .await?
        .value;
    let circuit = load_record::<Circuit>(ports.store, RecordKey::Circuit)
        .await?
        .value;
    let quota = load_record::<QuotaState>(ports.store, RecordKey::Quota).await?;
    let spec = control
        .quota
        .clone()
        .unwrap_or_else(|| config.quota.clone());
    let mut pacer = Pacer::hydrate(spec, config.pacing, quota.value);
    if pacer.state().horizon.is_some() {
        warn!("the previous run stopped without saving its usage; counting its horizon as used");
        pacer.assume_unrecorded_until();
    }
    if let Some(until) = control.backoff_until {
        pacer.back_off_until(until);
    }
    info!(
        token = lease.token,
        quota = %pacer.spec(),
        circuit = circuit.phase().as_str(),
        epoch = circuit.epoch,
        paused = control.paused,
        "run started"
    );
    ports.observer.observe(Observation::Circuit {
        phase: circuit.phase(),
        epoch: circuit.epoch,
    });

    let mut lp = Loop {
        ports,
        config,
        pacer,
        quota_version: quota.version,
        circuit: Circuit::default(),
        control,
        lease,
        held: VecDeque::new(),
        in_flight: FuturesUnordered::new(),
        to_delete: Vec::new(),
        meter: UtilizationMeter::new(),
        utilization: Utilization::default(),
        report,
    };
    lp.apply_circuit(circuit);
    let result = lp.dispatch_until(deadline).await;
    let stop = lp.finish(result.as_ref().ok().cloned()).await;
    match (result, stop) {
        (Ok(reason), Ok(())) => {
            lp.report.stopped = reason;
            info!(?lp.report, "run stopped");
            Ok(lp.report)
        }
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    }
}

impl<'a, Q, S, I> Loop<'a, Q, S, I>
where
    Q: JobSource + JobSink + ?Sized,
    S: RecordStore + LeaseStore + ?Sized,
    I: Invoker + ?Sized,
{
    fn now(&self) -> Timestamp {
        self.ports.clock.now()
    }

    /// Adopts a freshly read circuit: observes a change; starts the slow-start ramp when it
    /// has closed since the pacer last ramped.
    fn apply_circuit(&mut self, circuit: Circuit) {
        if circuit.phase() != self.circuit.phase() || circuit.epoch != self.circuit.epoch {
            self.ports.observer.observe(Observation::Circuit {
                phase: circuit.phase(),
                epoch: circuit.epoch,
            });
            info!(
                phase = circuit.phase().as_str(),
                epoch = circuit.epoch,
                "circuit"
            );
        }
        if let Some(since) = circuit.closed_since()
            && since > Timestamp::EPOCH
            && self.pacer.state().ramp_from.is_none_or(|r| r < since)
        {
            self.pacer.start_ramp(since);
        }
        self.circuit = circuit;
    }

    fn dispatching(&self) -> bool {
        !self.control.paused && self.circuit.is_closed()
    }

    /// Messages to fetch at once: what the pace can dispatch in about ten seconds (1 to 10),
    /// so that held messages are not kept invisible for long.
    fn batch_size(&self) -> u8 {
        let rate = self.pacer.target_rate_per_s(self.now());
        (rate * 10.0).clamp(1.0, 10.0) as u8
    }

    async fn dispatch_until(
        &mut self,
        deadline: Timestamp,
    ) -> Result<StopReason, OrchestratorError> {
        let cfg = self.config;
        let stop_at = deadline.minus(cfg.stop_margin);
        let mut next_refresh = self.now();
        let mut next_persist = self.now();
        let mut idle_since = self.now();
        loop {
            // In-memory ports never suspend: give the runtime a turn on every pass.
            tokio::task::yield_now().await;
            let now = self.now();
            if now >= stop_at {
                return Ok(StopReason::Deadline);
            }
            if now >= next_refresh {
                if let Some(stop) = self.refresh(now).await? {
                    return Ok(stop);
                }
                next_refresh = now.plus(cfg.refresh_interval);
            }
            if now >= next_persist {
                self.observe_utilization();
                self.flush_deletes().await?;
                self.persist(Some(now.plus(cfg.persist_interval * 2 + cfg.dispatch_lead)))
                    .await?;
                next_persist = now.plus(cfg.persist_interval);
            }
            let wake = next_refresh.min(next_persist).min(stop_at);

            if !self.dispatching() {
                self.meter.close();
                self.release_held(Duration::ZERO).await?;
                let mut wake = wake;
                if !self.control.paused
                    && !self.circuit.is_closed()
                    && let Some(due) = self.circuit.probe_due(&cfg.circuit)
                {
                    if due <= now {
                        self.send_health_check(now).await?;
                    } else {
                        wake = wake.min(due);
                    }
                }
                idle_since = now;
                self.wait_until(wake).await?;
                continue;
            }

            if self.held.is_empty() {
                // A budget used up past this run's end: stop without receiving, so that no
                // message is received (and counted by the queue's redrive policy) for nothing.
                if let Availability::ExhaustedUntil { until, .. } =
                    self.pacer.check(now.plus(cfg.dispatch_lead))
                    && until >= stop_at
                {
                    info!(%until, "budget exhausted until its reset; stopping");
                    self.observe_exhausted(until);
                    return Ok(StopReason::Exhausted { until });
                }
                let wait = wake.since(now).min(Duration::from_secs(1));
                let messages = self.receive_while_invoking(wait).await?;
                if messages.is_empty() {
                    // The backlog is gone: the time until the next job is not counted.
                    self.meter.close();
                    self.poll_completions().await?;
                    if let Some(idle) = cfg.idle_exit
                        && self.in_flight.is_empty()
                        && self.now().since(idle_since) >= idle
                    {
                        return Ok(StopReason::Idle);
                    }
                    continue;
                }
                idle_since = self.now();
                self.accept(messages).await?;
                self.ports.observer.observe(Observation::Backlog {
                    held: self.held.len(),
                });
                continue;
            }

            // Release what has been held too long (its visibility is limited).
            if let Some((_, _, at)) = self.held.front()
                && now.since(*at) > cfg.max_hold
            {
                self.release_held(Duration::ZERO).await?;
                continue;
            }

            // Ask for a slot at least half the lead ahead: a loop that wakes a little late
            // (timers have millisecond grain, schedulers jitter) keeps the pace's slot instead
            // of pushing every later slot back.
            let ask = now.plus(cfg.dispatch_lead / 2);
            let slot = match self.pacer.check(ask) {
                Availability::Now => ask,
                Availability::NotBefore { at, .. } => at,
                Availability::BackingOff { until } => {
                    // The API asked for the wait: not counted against the run's utilization.
                    self.meter.close();
                    until
                }
                Availability::ExhaustedUntil { until, tier } => {
                    self.meter.close();
                    if until >= stop_at {
                        let tier = self.pacer.spec().tiers()[tier];
                        info!(%tier, %until, "budget exhausted until its reset; stopping");
                        self.observe_exhausted(until);
                        let hide = until.since(now).min(Duration::from_secs(12 * 3600));
                        self.release_held(hide).await?;
                        return Ok(StopReason::Exhausted { until });
                    }
                    until
                }
            };
            let send_at = slot.minus(cfg.dispatch_lead);
            if send_at > now {
                self.wait_until(send_at.min(wake)).await?;
                continue;
            }
            if self.state_horizon_reached(slot) {
                // Save first: no slot beyond the saved horizon is handed out.
                next_persist = now;
                continue;
            }
            if self.in_flight.len() >= cfg.max_in_flight {
                self.wait_until(wake).await?;
                continue;
            }
            self.dispatch(slot, now);
        }
    }

    fn observe_exhausted(&self, until: Timestamp) {
        let now = self.now();
        let tier = match self.pacer.check(now.plus(self.config.dispatch_lead)) {
            Availability::ExhaustedUntil { tier, .. } => {
                self.pacer.spec().tiers()[tier].to_string()
            }
            _ => String::new(),
        };
        self.ports
            .observer
            .observe(Observation::BudgetExhausted { tier, until });
    }

    /// Long-polls the queue while the invokes in flight keep going: a future that is not
    /// polled sends nothing, and a job dispatched just before an empty poll would otherwise
    /// reach the worker after its slot.
    async fn receive_while_invoking(
        &mut self,
        wait: Duration,
    ) -> Result<Vec<Message>, OrchestratorError> {
        let queue = self.ports.queue;
        let receive = queue.receive(self.batch_size(), wait);
        tokio::pin!(receive);
        let mut finished = Vec::new();
        let messages = loop {
            tokio::select! {
                r = &mut receive => break r?,
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    finished.push(done);
                }
            }
        };
        for done in finished {
            self.complete(done).await?;
        }
        Ok(messages)
    }

    fn state_horizon_reached(&self, slot: Timestamp) -> bool {
        self.pacer.state().horizon.is_some_and(|h| slot > h)
    }

    fn dispatch(&mut self, slot: Timestamp, now: Timestamp) {
        let Some((message, job, _)) = self.held.pop_front() else {
            return;
        };
        self.pacer.reserve(slot);
        self.meter
            .record(slot, self.pacer.spec().pacing_rate_per_s());
        let event = WorkerEvent::Job(JobEvent {
            job,
            origin: message.origin.clone(),
            slot_at: slot,
            epoch: self.circuit.epoch,
            dispatched_at: now,
        });
        self.report.dispatched += 1;
        self.ports.observer.observe(Observation::Dispatched {
            message_id: message.origin.message_id.clone(),
            slot,
        });
        let invoker = self.ports.invoker;
        let span = info_span!("dispatch", message_id = %message.origin.message_id, slot = %slot);
        self.in_flight.push(Box::pin(
            async move {
                let result = invoker.invoke(&event).await;
                (message, result)
            }
            .instrument(span),
        ));
    }

    /// Validates received messages: a bad one goes to the dead-letter queue with the reason.
    async fn accept(&mut self, messages: Vec<Message>) -> Result<(), OrchestratorError> {
        let now = self.now();
        for m in messages {
            match Job::parse(&m.body) {
                Ok(job) => self.held.push_back((m, job, now)),
                Err(e) => {
                    let reason = e.to_string();
                    warn!(message_id = %m.origin.message_id, %reason, "invalid job: dead-lettered");
                    self.ports
                        .queue
                        .dead_letter(DeadLetter {
                            body: m.body.clone(),
                            reason: reason.clone(),
                            origin: m.origin.clone(),
                        })
                        .await?;
                    self.ports.observer.observe(Observation::DeadLettered {
                        message_id: m.origin.message_id.clone(),
                        reason,
                    });
                    self.report.dead_lettered += 1;
                    self.to_delete.push(m);
                }
            }
        }
        Ok(())
    }

    /// Re-reads controls and the circuit, renews the lease.
    async fn refresh(&mut self, now: Timestamp) -> Result<Option<StopReason>, OrchestratorError> {
        match self
            .ports
            .store
            .renew(&self.lease, now, self.config.lease_ttl)
            .await
        {
            Ok(lease) => self.lease = lease,
            Err(StoreError::LeaseLost { .. }) => {
                warn!(
                    token = self.lease.token,
                    "lease lost: another orchestrator took over"
                );
                return Ok(Some(StopReason::LeaseLost));
            }
            Err(e) => return Err(e.into()),
        }
        let control = load_record::<Control>(self.ports.store, RecordKey::Control)
            .await?
            .value;
        let spec = control
            .quota
            .clone()
            .unwrap_or_else(|| self.config.quota.clone());
        if &spec != self.pacer.spec() {
            info!(from = %self.pacer.spec(), to = %spec, "quota changed");
            self.meter.close();
            self.pacer.set_spec(spec);
        }
        if let Some(until) = control.backoff_until {
            self.pacer.back_off_until(until);
        }
        if control.paused != self.control.paused {
            info!(paused = control.paused, "pause control changed");
        }
        self.control = control;
        let circuit = load_record::<Circuit>(self.ports.store, RecordKey::Circuit)
            .await?
            .value;
        self.apply_circuit(circuit);
        self.poll_completions().await?;
        Ok(None)
    }

    async fn send_health_check(&mut self, now: Timestamp) -> Result<(), OrchestratorError> {
        let policy = self.config.circuit;
        let epoch = self.circuit.epoch;
        let updated = update_record::<Circuit, _>(self.ports.store, RecordKey::Circuit, |c| {
            if c.epoch != epoch {
                return None;
            }
            c.record_probe_sent(now, &policy).ok()
        })
        .await?;
        let sent = updated.value.epoch == epoch
            && matches!(updated.value.state, qo_core::CircuitState::HalfOpen { probe_sent_at, .. } if probe_sent_at == now);
        self.apply_circuit(updated.value);
        if !sent {
            return Ok(());
        }
        let event = WorkerEvent::HealthCheck(HealthCheckEvent {
            epoch,
            sent_at: now,
        });
        match self.ports.invoker.invoke(&event).await {
            Ok(()) => {
                self.report.health_checks += 1;
                self.ports
                    .observer
                    .observe(Observation::HealthCheckSent { epoch });
                info!(epoch, "health check sent");
            }
            Err(e) => {
                warn!(error = %e, "health check invoke failed; the next one follows its timeout")
            }
        }
        Ok(())
    }

    /// Handles finished invokes without waiting.
    async fn poll_completions(&mut self) -> Result<(), OrchestratorError> {
        loop {
            let next = futures::FutureExt::now_or_never(self.in_flight.next());
            match next {
                Some(Some(done)) => self.complete(done).await?,
                _ => return Ok(()),
            }
        }
    }

    /// Waits until `t`, handling invokes that finish meanwhile.
    async fn wait_until(&mut self, t: Timestamp) -> Result<(), OrchestratorError> {
        loop {
            if self.in_flight.is_empty() {
                self.ports.clock.sleep_until(t).await;
                return Ok(());
            }
            let done = tokio::select! {
                _ = self.ports.clock.sleep_until(t) => None,
                Some(done) = self.in_flight.next() => Some(done),
            };
            match done {
                Some(done) => self.complete(done).await?,
                None => return Ok(()),
            }
        }
    }

    async fn complete(
        &mut self,
        (message, result): (Message, Result<(), qo_core::ports::InvokeError>),
    ) -> Result<(), OrchestratorError> {
        match result {
            Ok(()) => {
                self.to_delete.push(message);
                if self.to_delete.len() >= 10 {
                    self.flush_deletes().await?;
                }
            }
            Err(e) => {
                warn!(message_id = %message.origin.message_id, error = %e, "invoke failed; job released");
                self.report.invoke_failures += 1;
                self.ports.observer.observe(Observation::InvokeFailed {
                    message_id: message.origin.message_id.clone(),
                    reason: e.to_string(),
                });
                let delay = e.retry_after().unwrap_or(Duration::ZERO);
                self.ports.queue.release(&[message], delay).await?;
                self.report.released += 1;
            }
        }
        Ok(())
    }

    async fn flush_deletes(&mut self) -> Result<(), OrchestratorError> {
        if self.to_delete.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.to_delete);
        for chunk in batch.chunks(10) {
            self.ports.queue.delete(chunk).await?;
        }
        debug!(count = batch.len(), "deleted dispatched messages");
        Ok(())
    }

    async fn release_held(&mut self, after: Duration) -> Result<(), OrchestratorError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let messages: Vec<Message> = self.held.drain(..).map(|(m, _, _)| m).collect();
        for chunk in messages.chunks(10) {
            self.ports.queue.release(chunk, after).await?;
        }
        self.report.released += messages.len() as u64;
        Ok(())
    }

    /// Reports the utilization counted since the last report.
    fn observe_utilization(&mut self) {
        let u = self.meter.take();
        if u.calls > 0 || u.allowed > 0.0 {
            self.utilization.add(u);
            self.ports.observer.observe(Observation::Utilization(u));
        }
    }

    /// Saves usage, fenced by the lease: a run that lost its lease cannot overwrite.
    async fn persist(&mut self, horizon: Option<Timestamp>) -> Result<(), OrchestratorError> {
        self.pacer.set_horizon(self.now(), horizon);
        let version = save_record(
            self.ports.store,
            RecordKey::Quota,
            self.pacer.state(),
            self.quota_version,
            Some(self.lease.token),
        )
        .await?;
        self.quota_version = version;
        Ok(())
    }

    /// Hands everything back: waits for invokes in flight, deletes what was dispatched,
    /// releases what was not, saves usage with no horizon (a clean stop), gives up the lease.
    async fn finish(&mut self, stop: Option<StopReason>) -> Result<(), OrchestratorError> {
        while let Some(done) = self.in_flight.next().await {
            self.complete(done).await?;
        }
        self.flush_deletes().await?;
        self.release_held(Duration::ZERO).await?;
        self.observe_utilization();
        self.report.quota_utilization = self.utilization.fraction();
        if matches!(stop, Some(StopReason::LeaseLost)) {
            return Ok(());
        }
        // A lost race on the last save must not hide the run's result: log it.
        if let Err(e) = self.persist(None).await {
            warn!(error = %e, "could not save usage at stop; the next run counts the horizon");
            return Ok(());
        }
        if let Err(e) = self.ports.store.release(&self.lease).await {
            warn!(error = %e, "could not release the lease; it expires by itself");
        }
        Ok(())
    }
}
