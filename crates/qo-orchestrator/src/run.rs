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
    DeadLetter, Invoker, JobSink, JobSource, Lease, LeaseStore, Message, QueueError, QueueRole,
    RecordKey, RecordStore, StoreError, load_record, save_record, update_record,
};
use qo_core::quota::{Reaction, Route, TierId, Utilization, UtilizationMeter};
use qo_core::sqs;
use qo_core::{
    BatchEvent, Circuit, Control, HealthCheckEvent, Job, JobEvent, Observation, Pacer, QuotaState,
    Timestamp, WorkerEvent,
};

use crate::config::OrchestratorConfig;
use crate::error::OrchestratorError;
use crate::pool::WorkerPool;
pub use crate::ports::Ports;
use crate::slots::SlotLog;
pub use crate::step::StopReason;
use crate::step::{
    Candidate, MAX_INVOKE_PAYLOAD, Snapshot, Step, Timers, WaitReason, batch_limit, cap_free_at,
    full_functions, group_len, is_due, may_join_batch, next_step,
};

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
    /// Held messages given back as fresh copies (re-sent, original deleted) because they had
    /// been received [`sqs::ROTATE_AFTER_RECEIVES`] times or were near their retention.
    #[serde(default)]
    pub rotated: u64,
    /// Visibility extensions of held messages.
    #[serde(default)]
    pub extended: u64,
    /// Whether the next run should start at once rather than at the next schedule tick: the
    /// run reached its deadline with dispatch allowed (not paused), so work is likely waiting.
    #[serde(default)]
    pub continue_now: bool,
    /// Batch entries the queue still refused after [`BATCH_ATTEMPTS`] tries (a refused delete
    /// brings the message back after its visibility: the worker's idempotency record then
    /// skips it; a refused release leaves it invisible until its timeout).
    #[serde(default)]
    pub refused_entries: u64,
    /// Decreases of the learned rate: the API throttled a call paced at the current rate.
    #[serde(default)]
    pub pace_decreases: u64,
    /// The learned rate at the stop, calls per second, when it was under the configured pace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pace_per_s: Option<f64>,
    /// This run's part of a retention sweep pass ([`crate::sweep`]); `None` when none was due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<crate::sweep::SweepReport>,
    /// Worker invocations sent (a batch of jobs is one; `dispatched` counts the jobs).
    #[serde(default)]
    pub invocations: u64,
    /// Dispatch passes: each hands out every slot due before the next tick, in one or more
    /// invocations (`invocations / dispatch_passes` invokes per pass).
    #[serde(default)]
    pub dispatch_passes: u64,
    /// Why dispatch waited: what bounds the rate.
    #[serde(default)]
    pub waits: Waits,
}

/// How often, and how long, the loop waited for each reason ([`WaitReason`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waits {
    /// For the next slot's send time: the pace itself.
    pub slot: WaitTally,
    /// For an invoke in flight to answer (`MAX_IN_FLIGHT` reached).
    pub in_flight: WaitTally,
    /// For the worker concurrency cap.
    pub worker_cap: WaitTally,
    /// With nothing held: for a receive.
    pub receive: WaitTally,
}

/// Waits of one reason: how many, and their time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitTally {
    /// Waits.
    pub count: u64,
    /// Their total time, milliseconds.
    pub ms: u64,
}

impl Waits {
    fn tally(&mut self, why: WaitReason) -> &mut WaitTally {
        match why {
            WaitReason::Slot => &mut self.slot,
            WaitReason::InFlight => &mut self.in_flight,
            WaitReason::WorkerCap => &mut self.worker_cap,
            WaitReason::Receive => &mut self.receive,
        }
    }
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
            rotated: 0,
            extended: 0,
            continue_now: false,
            refused_entries: 0,
            pace_decreases: 0,
            pace_per_s: None,
            sweep: None,
            invocations: 0,
            dispatch_passes: 0,
            waits: Waits::default(),
        }
    }
}

/// How many times a batch call is tried for the entries the queue refused.
pub const BATCH_ATTEMPTS: u32 = 3;

/// A received message waiting for its slot.
struct Held {
    message: Message,
    job: Job,
    /// When its visibility runs out (it comes back on the queue then).
    visible_until: Timestamp,
}

/// What one pass of a batch call left: the entries the queue refused by receipt, those it
/// refused without naming them, and the last refusal's text.
#[derive(Default)]
struct Refused {
    refused: Vec<Message>,
    unnamed: usize,
    last: Option<String>,
}

/// A batch call on received messages.
#[derive(Clone, Copy, Debug)]
enum BatchCall {
    Delete,
    Release(Duration),
}

/// What an invoke in flight ends with: its messages (one per job) and the invoke's result.
type Done = (Vec<Message>, Result<(), qo_core::ports::InvokeError>);

type InFlight<'a> = Pin<Box<dyn Future<Output = Done> + Send + 'a>>;

/// A receive under way.
type Receiving<'a> = Pin<Box<dyn Future<Output = Result<Vec<Message>, QueueError>> + Send + 'a>>;

/// What woke a wait.
enum Woke {
    Timer,
    Invoke(Done),
    Received(Result<Vec<Message>, QueueError>),
}

/// One run's state: what the decision ([`next_step`]) reads and the effects change.
struct Loop<'a, Q: ?Sized, S: ?Sized, I: ?Sized> {
    /// The queue, store, invoker, clock and observer.
    ports: Ports<'a, Q, S, I>,
    /// The run's settings.
    config: &'a OrchestratorConfig,
    /// Quota usage and the learned rate: asked for slots, recorded into at each dispatch, and
    /// saved (fenced by the lease) so that the next run starts where this one ended.
    pacer: Pacer,
    /// The worker functions and each one's usage of its own tiers ([`crate::pool`]), saved
    /// with the quota state.
    pool: WorkerPool,
    /// The version of the quota record last read or written: saves are conditional on it.
    quota_version: u64,
    /// The circuit as last read (the worker writes it): dispatch only while closed.
    circuit: Circuit,
    /// The operator controls and the worker's reports (pause, quota override, back-off,
    /// throttles, the API's window) as last read.
    control: Control,
    /// This run's lease: renewed at refreshes; losing it stops the run.
    lease: Lease,
    /// Received messages waiting for their slot, oldest first (at most `max_held`, and what
    /// the pace dispatches within the hold horizon: receiving more would hold messages
    /// invisible for nothing and count receives toward the redrive policy).
    held: VecDeque<Held>,
    /// Invokes not yet answered: a message is deleted only once its invoke was accepted.
    in_flight: FuturesUnordered<InFlight<'a>>,
    /// The receive under way, polled alongside the invokes: dispatch never waits on it.
    receiving: Option<Receiving<'a>>,
    /// The last receive brought nothing.
    receive_empty: bool,
    /// The receive under way, or else the last one, polled the retry queue first (the idle
    /// exit reads it only when no receive is under way).
    retry_checked: bool,
    /// Each dispatched worker event's function and when the event stops counting against the
    /// concurrency caps (its last slot plus `worker_busy`), oldest first.
    busy_until: VecDeque<(String, Timestamp)>,
    /// Messages whose invoke was accepted, deleted in batches of up to 10 (and at each save).
    to_delete: Vec<Message>,
    /// At the stop: the messages of invokes that failed while the loop waited for the last
    /// answers, given back in one round with what is held (see [`Loop::finish`]).
    to_release: Vec<Message>,
    /// Whether the run is finishing: deletes and releases then wait for one concurrent round
    /// each, so the finish takes two SQS calls' time however many invokes were in flight.
    finishing: bool,
    /// Counts dispatches against what the pace allowed while work was waiting.
    meter: UtilizationMeter,
    /// The meter's last reading, observed at each save.
    utilization: Utilization,
    /// Recent slots, to judge the API's limit when it throttles.
    slots: SlotLog,
    /// Whether the last refresh published the pace (it was under the quota).
    pace_shown: bool,
    /// The loop's timers: stop, refresh, save, idle.
    timers: Timers,
    /// What the run did, returned at its end.
    report: RunReport,
}

/// The names of [`full_functions`]' functions.
fn names_of(full: &[(String, Timestamp)]) -> Vec<String> {
    full.iter().map(|(f, _)| f.clone()).collect()
}

/// The pacer from the saved usage, under the quota in force (the operator's override or the
/// configured one), and the log of this run's slots. A horizon left in the state means the
/// last run stopped without saving: its horizon is counted as used.
fn hydrate_pacer(
    config: &OrchestratorConfig,
    control: &Control,
    state: QuotaState,
) -> (Pacer, SlotLog) {
    let spec = control
        .quota
        .clone()
        .unwrap_or_else(|| config.quota.clone());
    let mut pacer = Pacer::hydrate(spec, config.pacing, state);
    if pacer.state().horizon.is_some() {
        warn!("the previous run stopped without saving its usage; counting its horizon as used");
        pacer.assume_unrecorded_until();
    }
    // Slots after the last one an earlier run handed out are all in this run's log.
    let complete_from = pacer
        .state()
        .last_slot
        .map_or(Timestamp::EPOCH, |s| s.plus(Duration::from_micros(1)));
    let slots = SlotLog::new(
        pacer.spec().pacing_period(),
        config.pacing.call_tolerance,
        complete_from,
    );
    (pacer, slots)
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

    // The retention sweep, when a pass is due or in progress (its own module; bounded, and
    // never an error of the run).
    let mut lease = lease;
    report.sweep = crate::sweep::run_if_due(
        &ports,
        config,
        &mut lease,
        deadline.minus(config.stop_margin),
    )
    .await;

    // 2. Hydrate quota usage, circuit and controls. The sweep may have taken up to
    // `SWEEP_RUN_S`: the time is read again after it, and the throttles hydrated are judged at
    // the time after hydration, so that a decrease's hold and probe count from now, not from
    // before the sweep (when they would already be over).
    let now = ports.clock.now();
    let mut lp = Loop::hydrate(ports, config, lease, report, now, deadline).await?;
    let now = lp.now();
    lp.react_to_throttles(now);
    let result = lp.dispatch_until(deadline).await;
    let stop = lp.finish(result.as_ref().ok().cloned()).await;
    match (result, stop) {
        (Ok(reason), Ok(())) => {
            lp.report.continue_now = reason == StopReason::Deadline && !lp.control.paused;
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
    /// Hydrates a run that holds `lease`: the quota usage, the circuit and the controls as
    /// the last run (or the worker, or an operator) left them.
    async fn hydrate(
        ports: Ports<'a, Q, S, I>,
        config: &'a OrchestratorConfig,
        lease: Lease,
        report: RunReport,
        now: Timestamp,
        deadline: Timestamp,
    ) -> Result<Loop<'a, Q, S, I>, OrchestratorError> {
        let control = load_record::<Control>(ports.store, RecordKey::Control)
            .await?
            .value;
        let circuit = load_record::<Circuit>(ports.store, RecordKey::Circuit)
            .await?
            .value;
        let quota = load_record::<QuotaState>(ports.store, RecordKey::Quota).await?;
        let pool = WorkerPool::hydrate(config, &control, &quota.value);
        let (mut pacer, slots) = hydrate_pacer(config, &control, quota.value);
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
            pool,
            quota_version: quota.version,
            circuit: Circuit::default(),
            control,
            lease,
            held: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            receiving: None,
            receive_empty: false,
            retry_checked: false,
            busy_until: VecDeque::new(),
            to_delete: Vec::new(),
            to_release: Vec::new(),
            finishing: false,
            meter: UtilizationMeter::new(),
            utilization: Utilization::default(),
            slots,
            pace_shown: false,
            timers: Timers::start(now, deadline.minus(config.stop_margin)),
            report,
        };
        lp.apply_circuit(circuit);
        Ok(lp)
    }

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

    /// When the first held message's visibility needs extending.
    fn visibility_due(&self) -> Option<Timestamp> {
        let margin = self.extend_margin();
        self.held
            .iter()
            .map(|h| h.visible_until.minus(margin))
            .min()
    }

    /// How long before its visibility runs out a held message is extended.
    fn extend_margin(&self) -> Duration {
        (self.config.visibility_timeout / 3).min(Duration::from_secs(30))
    }

    /// The loop: decide the next step from the state ([`next_step`]), perform it, again,
    /// until a step stops the run.
    async fn dispatch_until(
        &mut self,
        deadline: Timestamp,
    ) -> Result<StopReason, OrchestratorError> {
        self.timers = Timers::start(self.now(), deadline.minus(self.config.stop_margin));
        loop {
            // In-memory ports never suspend: give the runtime a turn on every pass.
            tokio::task::yield_now().await;
            let now = self.now();
            let step = next_step(&self.snapshot(now));
            if let Some(stop) = self.perform(step, now).await? {
                return Ok(stop);
            }
        }
    }

    /// What the decision reads at `now`.
    fn snapshot(&self, now: Timestamp) -> Snapshot<'_> {
        let full = self.full_functions(now);
        let ready = self.pool_ready(now, &names_of(&full));
        Snapshot {
            now,
            config: self.config,
            timers: &self.timers,
            pacer: &self.pacer,
            circuit: &self.circuit,
            paused: self.control.paused,
            held: self.held.len(),
            visibility_due: self.visibility_due(),
            pool_free_at: ready.map(|(_, at)| at),
            // The pool's cap, or, when every held job may only go through functions at their
            // own cap, the first time one of those takes an event again.
            worker_free_at: self.pool_cap_free_at(now).or_else(|| {
                (ready.is_none() && !self.held.is_empty())
                    .then(|| full.iter().map(|(_, at)| *at).min())
                    .flatten()
            }),
            in_flight: self.in_flight.len(),
            receiving: self.receiving.is_some(),
            receive_empty: self.receive_empty,
            retry_checked: self.retry_checked,
        }
    }

    /// Performs one step: its effect, one per arm. `Some` stops the run.
    async fn perform(
        &mut self,
        step: Step,
        now: Timestamp,
    ) -> Result<Option<StopReason>, OrchestratorError> {
        match step {
            Step::Stop(reason) => return Ok(Some(reason)),
            Step::Refresh => {
                let stop = self.refresh(now).await?;
                self.timers.next_refresh = now.plus(self.config.refresh_interval);
                return Ok(stop);
            }
            Step::Persist => self.save(now).await?,
            Step::Standby { probe_now, wake } => self.stand_by(now, probe_now, wake).await?,
            Step::Exhausted { until, tier } => return self.stop_exhausted(until, tier).await,
            Step::Wait {
                until,
                uncounted,
                why,
            } => {
                self.close_meter_if(uncounted);
                self.wait_until(until).await?;
                let waited = self.now().since(now).as_millis() as u64;
                let tally = self.report.waits.tally(why);
                tally.count += 1;
                tally.ms += waited;
            }
            Step::Receive {
                wait,
                max,
                retry_first,
            } => self.start_receive(wait, max, retry_first),
            Step::ExtendVisibility => self.extend_held(now).await?,
            Step::SaveFirst { uncounted } => {
                // No slot beyond the saved horizon is handed out: save on the next pass.
                self.close_meter_if(uncounted);
                self.timers.next_persist = now;
            }
            Step::Dispatch { slots, uncounted } => {
                self.close_meter_if(uncounted);
                self.dispatch(&slots, now);
            }
        }
        Ok(None)
    }

    /// A wait the API asked for, or a used-up budget, is not counted against utilization.
    fn close_meter_if(&mut self, uncounted: bool) {
        if uncounted {
            self.meter.close();
        }
    }

    /// Saves usage with a horizon two saves and a lead ahead, after the deletes.
    async fn save(&mut self, now: Timestamp) -> Result<(), OrchestratorError> {
        let cfg = self.config;
        self.observe_utilization();
        self.flush_deletes().await?;
        self.persist(Some(now.plus(cfg.persist_interval * 2 + cfg.dispatch_lead)))
            .await?;
        self.timers.next_persist = now.plus(cfg.persist_interval);
        Ok(())
    }

    /// Paused or circuit not closed: what is held goes back, a due health check goes out,
    /// and the loop waits until `wake`.
    async fn stand_by(
        &mut self,
        now: Timestamp,
        probe_now: bool,
        wake: Timestamp,
    ) -> Result<(), OrchestratorError> {
        self.meter.close();
        self.release_held(Duration::ZERO).await?;
        if probe_now {
            self.send_health_check(now).await?;
        }
        self.timers.idle_since = now;
        self.wait_until(wake).await
    }

    /// A budget used up past this run's end: what is held goes back at once (SQS refuses a
    /// visibility past 12 h from the receive; the next runs do not receive before the
    /// reset), and the run stops.
    async fn stop_exhausted(
        &mut self,
        until: Timestamp,
        tier: TierId,
    ) -> Result<Option<StopReason>, OrchestratorError> {
        self.meter.close();
        let tier = self
            .pacer
            .spec()
            .tier(tier)
            .map(ToString::to_string)
            .unwrap_or_default();
        info!(%tier, %until, "budget exhausted until its reset; stopping");
        self.ports
            .observer
            .observe(Observation::BudgetExhausted { tier, until });
        self.release_held(Duration::ZERO).await?;
        Ok(Some(StopReason::Exhausted { until }))
    }

    /// Starts a long poll for at most `wait` and `max` messages. It runs alongside dispatch
    /// (a future that is not polled sends nothing: the waits poll it with the invokes); its
    /// answer is handled by [`Self::received`].
    /// With `retry_first`, the retry queue is polled before the main queue; otherwise the
    /// main queue alone (see [`OrchestratorConfig::retry_poll_interval`]).
    fn start_receive(&mut self, wait: Duration, max: u8, retry_first: bool) {
        let queue = self.ports.queue;
        self.retry_checked = retry_first;
        self.receiving = Some(if retry_first {
            queue.receive(max, wait)
        } else {
            queue.receive_from(QueueRole::Main, max, wait)
        });
    }

    /// A receive's answer: what comes is held; nothing means the backlog is gone (with nothing
    /// held, the time until the next job is not counted; the idle exit may apply).
    async fn received(
        &mut self,
        result: Result<Vec<Message>, QueueError>,
    ) -> Result<(), OrchestratorError> {
        let messages = result?;
        if self.retry_checked {
            // Re-queued jobs found: more may be waiting, so the next receive polls again.
            let found = messages.iter().any(|m| m.queue == QueueRole::Retry);
            let now = self.now();
            self.timers.next_retry_poll = if found {
                now
            } else {
                now.plus(self.config.retry_poll_interval)
            };
        }
        if messages.is_empty() {
            self.receive_empty = true;
            if self.held.is_empty() {
                self.meter.close();
            }
            return Ok(());
        }
        self.receive_empty = false;
        self.timers.idle_since = self.now();
        self.accept(messages).await?;
        self.ports.observer.observe(Observation::Backlog {
            held: self.held.len(),
        });
        Ok(())
    }

    /// Awaits `work` (a queue or store call that does not borrow the loop) while the invokes
    /// in flight keep going, then handles those that finished meanwhile.
    async fn while_invoking<T>(
        &mut self,
        work: impl Future<Output = T>,
    ) -> Result<T, OrchestratorError> {
        tokio::pin!(work);
        let mut finished = Vec::new();
        let out = loop {
            tokio::select! {
                r = &mut work => break r,
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    finished.push(done);
                }
            }
        };
        for done in finished {
            self.complete(done).await?;
        }
        Ok(out)
    }

    /// The held job the pool can call first through a function not `full`, and from when
    /// ([`WorkerPool::first_ready`]).
    fn pool_ready(&self, now: Timestamp, full: &[String]) -> Option<(usize, Timestamp)> {
        let ask = now.plus(self.config.dispatch_lead / 2);
        let avoids = self
            .held
            .iter()
            .map(|h| h.message.origin.function.as_deref());
        self.pool.first_ready(ask, avoids, full)
    }

    /// When the pool's concurrency cap lets another event go, if it is reached
    /// ([`cap_free_at`]).
    fn pool_cap_free_at(&self, now: Timestamp) -> Option<Timestamp> {
        cap_free_at(
            self.config.worker_concurrency_cap,
            self.busy_until.iter().map(|(_, t)| *t),
            now,
        )
    }

    /// The functions at their own concurrency cap at `now`, each with when it takes an event
    /// again ([`full_functions`]).
    fn full_functions(&self, now: Timestamp) -> Vec<(String, Timestamp)> {
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
    fn dispatch(&mut self, slots: &[Timestamp], now: Timestamp) {
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
    fn may_send_another(&self, slot: Timestamp, now: Timestamp) -> bool {
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
    fn next_group(&self, slots: &[Timestamp], now: Timestamp) -> Vec<JobEvent> {
        let cfg = self.config;
        let full = names_of(&self.full_functions(now));
        let batch_max = batch_limit(cfg, &self.pacer, now);
        let look = slots.len().min(batch_max).min(self.held.len());
        let mut trial = (look > 1 && self.pool.has_own_tiers())
            .then(|| (self.pool.clone(), self.pacer.clone()));
        let mut last: Option<String> = None;
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
            .take_while(|e| {
                let avoid = e.origin.function.as_deref();
                if self
                    .pool
                    .free_at(e.slot_at, avoid, &full)
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
                    full: &full,
                };
                let Some(taken) = pool.take_routed(pacer, e.slot_at, route) else {
                    return false;
                };
                last = Some(taken.function().to_string());
                taken.at() == e.slot_at
            })
            .collect();
        if events.len() > 1 {
            let candidates: Vec<Candidate> = events
                .iter()
                .map(|e| Candidate {
                    slot: e.slot_at,
                    size: serde_json::to_vec(e).map_or(MAX_INVOKE_PAYLOAD, |v| v.len()),
                    may_join: may_join_batch(&e.origin),
                })
                .collect();
            let n = group_len(&candidates, batch_max, cfg.batch_window).max(1);
            events.truncate(n);
        }
        events
    }

    /// Records `events`' slots in the shared pacer and the pool, and sends them: one
    /// invocation per function the pool routes the group's jobs to, each with its jobs in slot
    /// order (a single job as a job event).
    fn send(&mut self, events: Vec<JobEvent>, messages: Vec<Message>, now: Timestamp) {
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
    fn invoke_through(
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
    fn redeliver(&mut self, m: Message) {
        let Ok(result) = serde_json::from_str::<qo_core::result::JobResult>(&m.body) else {
            return;
        };
        info!(job_id = %result.job_id, "a dead-lettered result: handed to the worker to deliver again");
        let origin = m.origin.clone();
        self.hand_over(result, origin, vec![m]);
    }

    /// Tells whoever waits on a refused message's destination that it was refused: its
    /// failure result, handed to the worker to deliver (no slot, no call).
    fn tell_refused(&mut self, m: &Message, reason: &qo_core::Reason) {
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
    fn hand_over(
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

    /// Validates received messages: a bad one goes to the dead-letter queue with the reason.
    async fn accept(&mut self, messages: Vec<Message>) -> Result<(), OrchestratorError> {
        for m in messages {
            // A job naming a result destination the stack does not declare, or asking for a
            // request the stack does not allow, is refused here, before it takes a slot.
            let job = Job::parse(&m.body).and_then(|job| {
                self.config.destinations.for_job(&job)?;
                self.config.allow.check(&job)?;
                Ok(job)
            });
            match job {
                Ok(job) => {
                    let visible_until = m.received_at.plus(self.config.visibility_timeout);
                    self.held.push_back(Held {
                        message: m,
                        job,
                        visible_until,
                    });
                }
                Err(_) if is_result(&m.body) => self.redeliver(m),
                Err(e) => {
                    let reason = qo_core::Reason::InvalidJob(e);
                    warn!(message_id = %m.origin.message_id, %reason, "invalid job: dead-lettered");
                    self.ports
                        .queue
                        .dead_letter(DeadLetter {
                            body: m.body.clone(),
                            reason: reason.clone(),
                            origin: m.origin.clone(),
                        })
                        .await?;
                    self.tell_refused(&m, &reason);
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

    /// Re-reads controls and the circuit, and renews the lease once a third of its time to
    /// live has passed (not at every refresh: a write a second is most of an idle run's cost,
    /// and the quota saves are fenced by the lease's token anyway). The invokes in flight keep
    /// going meanwhile.
    async fn refresh(&mut self, now: Timestamp) -> Result<Option<StopReason>, OrchestratorError> {
        let ttl = self.config.lease_ttl;
        let renew = (now >= self.lease.expires_at.minus(ttl * 2 / 3)).then(|| self.lease.clone());
        let store = self.ports.store;
        let (renewed, control, circuit) = self
            .while_invoking(async move {
                let renewed = match renew {
                    Some(lease) => Some(store.renew(&lease, now, ttl).await),
                    None => None,
                };
                let control = load_record::<Control>(store, RecordKey::Control).await;
                let circuit = load_record::<Circuit>(store, RecordKey::Circuit).await;
                (renewed, control, circuit)
            })
            .await?;
        match renewed {
            None => {}
            Some(Ok(lease)) => self.lease = lease,
            Some(Err(StoreError::LeaseLost { .. })) => {
                warn!(
                    token = self.lease.token,
                    "lease lost: another orchestrator took over"
                );
                return Ok(Some(StopReason::LeaseLost));
            }
            Some(Err(e)) => return Err(e.into()),
        }
        self.adopt_control(control?.value, now);
        self.apply_circuit(circuit?.value);
        self.poll_completions().await?;
        Ok(None)
    }

    /// Adopts freshly read controls: a quota override, the API's back-off, the pause, and
    /// the worker's reports of throttles and of the API's window; publishes the pace while
    /// it is under the quota.
    fn adopt_control(&mut self, control: Control, now: Timestamp) {
        let spec = control
            .quota
            .clone()
            .unwrap_or_else(|| self.config.quota.clone());
        if &spec != self.pacer.spec() {
            info!(from = %self.pacer.spec(), to = %spec, "quota changed");
            self.meter.close();
            self.slots.set_period(spec.pacing_period());
            self.pool.set_spec(&spec, self.config);
            self.pacer.set_spec(spec);
        }
        if let Some(until) = control.backoff_until {
            self.pacer.back_off_until(until);
        }
        if control.paused != self.control.paused {
            info!(paused = control.paused, "pause control changed");
        }
        self.control = control;
        self.react_to_throttles(now);
        let limited = self.pacer.adaptive_fraction(now) < 1.0;
        if limited || self.pace_shown {
            // While the learned rate is under the quota, and once more when it is back (the
            // metric is a gauge: it would keep the last lowered value). At the quota nothing
            // is published: each metric costs by the hour.
            self.ports.observer.observe(Observation::Pace {
                rate_per_s: self.pacer.target_rate_per_s(now),
                ceiling_per_s: self.pacer.spec().pacing_rate_per_s(),
            });
        }
        self.pace_shown = limited;
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

    /// Handles finished invokes, and the receive if it answered, without waiting.
    async fn poll_completions(&mut self) -> Result<(), OrchestratorError> {
        if let Some(r) = self
            .receiving
            .as_mut()
            .and_then(futures::FutureExt::now_or_never)
        {
            self.receiving = None;
            self.received(r).await?;
        }
        loop {
            let next = futures::FutureExt::now_or_never(self.in_flight.next());
            match next {
                Some(Some(done)) => self.complete(done).await?,
                _ => return Ok(()),
            }
        }
    }

    /// Waits until `t`, or until an invoke in flight or the receive under way answers (then
    /// handled): the loop decides again at once.
    async fn wait_until(&mut self, t: Timestamp) -> Result<(), OrchestratorError> {
        let woke = {
            let clock = self.ports.clock;
            let in_flight = &mut self.in_flight;
            let receiving = &mut self.receiving;
            let has_invokes = !in_flight.is_empty();
            let has_receive = receiving.is_some();
            tokio::select! {
                _ = clock.sleep_until(t) => Woke::Timer,
                Some(done) = in_flight.next(), if has_invokes => Woke::Invoke(done),
                r = async {
                    match receiving.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if has_receive => Woke::Received(r),
            }
        };
        match woke {
            Woke::Timer => Ok(()),
            Woke::Invoke(done) => self.complete(done).await,
            Woke::Received(r) => {
                self.receiving = None;
                self.received(r).await
            }
        }
    }

    async fn complete(&mut self, (messages, result): Done) -> Result<(), OrchestratorError> {
        match result {
            Ok(()) => {
                self.to_delete.extend(messages);
                if !self.finishing && self.to_delete.len() >= 10 {
                    self.flush_deletes().await?;
                }
            }
            Err(e) => {
                warn!(
                    jobs = messages.len(),
                    message_id = %messages.first().map_or("", |m| m.origin.message_id.as_str()),
                    error = %e,
                    "invoke failed; its jobs released"
                );
                self.report.invoke_failures += 1;
                for m in &messages {
                    self.ports.observer.observe(Observation::InvokeFailed {
                        message_id: m.origin.message_id.clone(),
                        reason: e.to_string(),
                    });
                }
                if self.finishing {
                    self.to_release.extend(messages);
                } else {
                    let delay = e.retry_after().unwrap_or(Duration::ZERO);
                    self.give_back(messages, delay).await?;
                }
            }
        }
        Ok(())
    }

    async fn flush_deletes(&mut self) -> Result<(), OrchestratorError> {
        if self.to_delete.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.to_delete);
        let count = batch.len();
        self.settle(BatchCall::Delete, batch).await?;
        debug!(count, "deleted dispatched messages");
        Ok(())
    }

    async fn release_held(&mut self, after: Duration) -> Result<(), OrchestratorError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let messages: Vec<Message> = self.held.drain(..).map(|h| h.message).collect();
        self.give_back(messages, after).await
    }

    /// Whether a message must go back as a fresh copy: received often enough that a release
    /// would bring it toward the redrive policy's count, or near its retention.
    fn must_rotate(&self, m: &Message, now: Timestamp) -> bool {
        m.receive_count >= sqs::ROTATE_AFTER_RECEIVES
            || now.since(m.sent_at) + sqs::ROTATE_BEFORE_EXPIRY >= self.config.retention
    }

    /// Gives undispatched messages back to the queue, visible after `after`: released, or,
    /// where [`Self::must_rotate`] says so, re-sent as a new message (receive count 0, a new
    /// retention period; same body, job id and attempt) and the original deleted.
    async fn give_back(
        &mut self,
        messages: Vec<Message>,
        after: Duration,
    ) -> Result<(), OrchestratorError> {
        let now = self.now();
        self.report.released += messages.len() as u64;
        let (rotate, mut release): (Vec<Message>, Vec<Message>) =
            messages.into_iter().partition(|m| self.must_rotate(m, now));
        release.extend(self.resend_fresh(rotate, after).await?);
        self.settle(BatchCall::Release(after), release).await
    }

    /// Re-sends each message as a fresh copy (receive count 0, a new retention period; same
    /// job, idempotency key and attempt) visible after `after`, then deletes the originals.
    /// Returns the messages it could not re-send, still held, for the caller to release.
    ///
    /// The copies go in SendMessageBatch calls of at most ten and 1 MiB ([`sqs::send_batches`]),
    /// made concurrently: one call's time for up to `MAX_HELD` messages, where a SendMessage
    /// each took a call's time per message.
    async fn resend_fresh(
        &mut self,
        messages: Vec<Message>,
        after: Duration,
    ) -> Result<Vec<Message>, OrchestratorError> {
        if messages.is_empty() {
            return Ok(messages);
        }
        let delay = after.min(sqs::MAX_DELAY);
        // The copy gets a new message id: the key goes in its body.
        let copies: Vec<Message> = messages
            .iter()
            .map(|m| Message {
                body: qo_core::job::pin_key(&m.body, &m.origin.message_id).into_owned(),
                ..m.clone()
            })
            .collect();
        let sizes: Vec<usize> = copies
            .iter()
            .map(|m| sqs::job_message_bytes(&m.body, &m.origin))
            .collect();
        let queue = self.ports.queue;
        let groups = sqs::send_batches(&sizes).into_iter().map(|range| {
            let group = &copies[range];
            async move { (group, queue.resend(group, delay).await) }
        });
        // Not under `while_invoking`: an invoke's completion can give messages back itself.
        let answers = futures::future::join_all(groups).await;
        let mut not_copied: Vec<&str> = Vec::new();
        for (group, answer) in &answers {
            match answer {
                Ok(()) => {}
                Err(e @ QueueError::Partial { .. }) => {
                    warn!(error = %e, "some fresh copies were refused; releasing their originals");
                    not_copied.extend(e.refused().iter().map(String::as_str));
                }
                Err(e) => {
                    warn!(count = group.len(), error = %e, "could not re-send fresh copies; releasing them");
                    not_copied.extend(group.iter().map(|m| m.receipt.as_str()));
                }
            }
        }
        let (failed, resent): (Vec<Message>, Vec<Message>) = messages
            .into_iter()
            .partition(|m| not_copied.contains(&m.receipt.as_str()));
        if !resent.is_empty() {
            info!(
                count = resent.len(),
                "gave back messages as fresh copies (receive count, age or 12 h held)"
            );
            self.report.rotated += resent.len() as u64;
            self.settle(BatchCall::Delete, resent).await?;
        }
        Ok(failed)
    }

    /// Extends the visibility of the held messages that are near its end, up to SQS's 12 h
    /// from their receive; one that cannot be extended enough goes back as a fresh copy.
    async fn extend_held(&mut self, now: Timestamp) -> Result<(), OrchestratorError> {
        let margin = self.extend_margin();
        if self
            .held
            .iter()
            .all(|h| h.visible_until.minus(margin) > now)
        {
            return Ok(());
        }
        // Once one is due, those due within half a visibility timeout go with it: one batch
        // call for what would otherwise be a call each, a few seconds apart.
        let soon = now.plus(self.config.visibility_timeout / 2);
        let mut extend = Vec::new();
        let mut give_back = Vec::new();
        let mut keep = VecDeque::with_capacity(self.held.len());
        for mut h in self.held.drain(..) {
            if h.visible_until.minus(margin) > soon {
                keep.push_back(h);
                continue;
            }
            let left = sqs::MAX_VISIBILITY
                .saturating_sub(now.since(h.message.received_at))
                .saturating_sub(Duration::from_secs(1));
            let by = self.config.visibility_timeout.min(left);
            if by <= margin {
                give_back.push(h.message);
            } else {
                h.visible_until = now.plus(by);
                extend.push((h.message.clone(), by));
                keep.push_back(h);
            }
        }
        self.held = keep;
        // One ChangeMessageVisibilityBatch round per extension length (almost always one),
        // not a call per message.
        let mut by_length: std::collections::BTreeMap<Duration, Vec<Message>> = Default::default();
        for (m, by) in extend {
            by_length.entry(by).or_default().push(m);
        }
        for (by, messages) in by_length {
            self.report.extended += messages.len() as u64;
            self.settle(BatchCall::Release(by), messages).await?;
        }
        if !give_back.is_empty() {
            // Held for 12 h since the receive: SQS allows no more visibility.
            self.report.released += give_back.len() as u64;
            let failed = self.resend_fresh(give_back, Duration::ZERO).await?;
            self.settle(BatchCall::Release(Duration::ZERO), failed)
                .await?;
        }
        Ok(())
    }

    /// One pass of a batch call over `messages`, ten at a time, the calls made concurrently
    /// (a release of `MAX_HELD` messages at the stop takes one call's time: see
    /// [`crate::config::FinishBudget::batches`]): the entries the queue refused. A failure of a
    /// whole call is an error.
    async fn settle_once(
        &self,
        call: BatchCall,
        messages: &[Message],
    ) -> Result<Refused, OrchestratorError> {
        let queue = self.ports.queue;
        let mut out = Refused::default();
        let results =
            futures::future::join_all(messages.chunks(sqs::MAX_BATCH).map(|chunk| async move {
                let result = match call {
                    BatchCall::Delete => queue.delete(chunk).await,
                    BatchCall::Release(after) => queue.release(chunk, after).await,
                };
                (chunk, result)
            }))
            .await;
        for (chunk, result) in results {
            match result {
                Ok(()) => {}
                Err(e @ QueueError::Partial { .. }) => {
                    let named = e.refused();
                    let before = out.refused.len();
                    out.refused
                        .extend(chunk.iter().filter(|m| named.contains(&m.receipt)).cloned());
                    if let QueueError::Partial { failed, .. } = &e {
                        out.unnamed += failed.saturating_sub(out.refused.len() - before);
                    }
                    out.last = Some(e.to_string());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Runs a batch call in batches of ten and tries the entries the queue refused again, up to
    /// [`BATCH_ATTEMPTS`] times (SQS can refuse single entries while the call succeeds). What is
    /// still refused is counted and logged, and the run goes on: only a failure of a whole call
    /// is an error.
    async fn settle(
        &mut self,
        call: BatchCall,
        mut messages: Vec<Message>,
    ) -> Result<(), OrchestratorError> {
        for attempt in 1..=BATCH_ATTEMPTS {
            if messages.is_empty() {
                return Ok(());
            }
            let Refused {
                refused,
                unnamed,
                last,
            } = self.settle_once(call, &messages).await?;
            if unnamed > 0 {
                self.report.refused_entries += unnamed as u64;
            }
            if refused.is_empty() {
                return Ok(());
            }
            if attempt == BATCH_ATTEMPTS {
                warn!(
                    ?call,
                    count = refused.len(),
                    last = last.as_deref().unwrap_or(""),
                    "queue still refused entries after {BATCH_ATTEMPTS} tries; carrying on"
                );
                self.report.refused_entries += refused.len() as u64;
                return Ok(());
            }
            debug!(
                ?call,
                count = refused.len(),
                "queue refused entries; trying them again"
            );
            self.ports
                .clock
                .sleep(Duration::from_millis(20 * u64::from(attempt)))
                .await;
            messages = refused;
        }
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

    /// Lowers the pace when the API throttled a call paced at the current rate (the control
    /// record's counter, written by the worker on each 429; see [`qo_core::quota::adaptive`]).
    fn react_to_throttles(&mut self, now: Timestamp) {
        if let Some(window) = self.control.api_window {
            // The API's own count: the calls of its window that were not ours were another
            // client's. Its window is the one it says, or the pacing tier's, taken as ending at
            // the observation (its reset is rounded to whole seconds, so counting from the
            // reset back would miss most of ours and blame them on another client).
            let length = window
                .window_s
                .map_or(self.pacer.spec().pacing_period(), Duration::from_secs);
            // A window that began before this run holds calls of the last run's that the log
            // has not: wait for a report this run saw all of.
            if let Some(ours) = self.slots.count_ending_at(window.observed_at, length) {
                let reaction = self.pacer.on_api_window(&window, ours, now);
                self.record_reaction(reaction);
            }
        }
        let Some(throttles) = self.control.throttles.clone() else {
            return;
        };
        let slots = &self.slots;
        let reaction = self.pacer.on_throttles(&throttles, now, |slot| {
            slots.estimate(slot, &throttles.recent_slots)
        });
        self.record_reaction(reaction);
    }

    fn record_reaction(&mut self, reaction: Reaction) {
        match reaction {
            Reaction::Unchanged => {}
            Reaction::AlreadyDecreased { new } | Reaction::Disabled { new } => {
                debug!(new, "throttles of slots paced at the previous rate");
            }
            Reaction::Raised {
                from_per_s,
                to_per_s,
            } => {
                info!(
                    from_per_s,
                    to_per_s, "pace raised: the API's rate-limit headers report a higher limit"
                );
            }
            Reaction::Decreased(d) => {
                warn!(
                    from_per_s = d.from_per_s,
                    to_per_s = d.to_per_s,
                    estimate_per_s = d.estimate_per_s,
                    basis = ?d.basis,
                    "pace lowered to the API's limit (a 429 of a call paced at the current rate, or its rate-limit headers)"
                );
                self.report.pace_decreases += 1;
                self.ports.observer.observe(Observation::PaceDecreased(d));
            }
        }
    }

    /// Saves usage, fenced by the lease: a run that lost its lease cannot overwrite.
    async fn persist(&mut self, horizon: Option<Timestamp>) -> Result<(), OrchestratorError> {
        let now = self.now();
        self.pacer.settle_adaptive(now);
        self.pacer.set_horizon(now, horizon);
        let store = self.ports.store;
        let mut state = self.pacer.state().clone();
        self.pool.save_into(&mut state, now, horizon);
        let (expected, token) = (self.quota_version, self.lease.token);
        let version = self
            .while_invoking(async move {
                save_record(store, RecordKey::Quota, &state, expected, Some(token)).await
            })
            .await??;
        self.quota_version = version;
        Ok(())
    }

    /// Hands everything back: waits for invokes in flight, deletes what was dispatched,
    /// releases what was not, saves usage with no horizon (a clean stop), gives up the lease.
    async fn finish(&mut self, stop: Option<StopReason>) -> Result<(), OrchestratorError> {
        // A receive under way is awaited (at most its long poll): what it brings is released
        // below rather than left invisible.
        if let Some(receiving) = self.receiving.take() {
            let r = self.while_invoking(receiving).await?;
            self.received(r).await?;
        }
        // The last answers: their deletes (and the releases of failed invokes) wait for one
        // concurrent round each ([`crate::config::FinishBudget::batches`]).
        self.finishing = true;
        while let Some(done) = self.in_flight.next().await {
            self.complete(done).await?;
        }
        self.flush_deletes().await?;
        let mut back: Vec<Message> = self.held.drain(..).map(|h| h.message).collect();
        back.append(&mut self.to_release);
        if !back.is_empty() {
            self.give_back(back, Duration::ZERO).await?;
        }
        self.observe_utilization();
        self.report.quota_utilization = self.utilization.fraction();
        let now = self.now();
        self.report.pace_per_s =
            (self.pacer.adaptive_fraction(now) < 1.0).then(|| self.pacer.target_rate_per_s(now));
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

/// Whether a message body is a job's result to deliver (it names its destination), not a job.
fn is_result(body: &str) -> bool {
    serde_json::from_str::<qo_core::result::JobResult>(body).is_ok_and(|r| r.destination.is_some())
}
