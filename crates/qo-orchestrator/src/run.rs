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
//!
//! This file holds the loop's state, its run from hydration to finish, and how it carries out
//! each [`Step`]; what a step does is split by concern: `dispatch` (grouping held jobs into
//! events and invoking), `held` (receiving, accepting, extending and giving back messages),
//! `settle` (invokes in flight, deletes and releases), `records` (controls, the circuit, the
//! lease, the pace and the quota's save).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use qo_core::ports::{
    Invoker, JobSink, JobSource, Lease, LeaseStore, Message, QueueError, RecordKey, RecordStore,
    StoreError, load_record,
};
use qo_core::quota::{TierId, Utilization, UtilizationMeter};
use qo_core::{Circuit, Control, Job, Observation, Pacer, QuotaState, Timestamp};

use crate::config::OrchestratorConfig;
use crate::error::OrchestratorError;
use crate::pool::WorkerPool;
pub use crate::ports::Ports;
use crate::slots::SlotLog;
pub use crate::step::StopReason;
use crate::step::{Snapshot, Step, Timers, WaitReason, next_step};

mod dispatch;
mod held;
mod records;
mod settle;

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
