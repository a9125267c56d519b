//! The harness of the loop tests: the dispatch loop over the in-memory adapters (the queues
//! with the template's attributes), a stand-in worker that waits for each slot and does what a
//! test's verdict says, on tokio's paused clock: a day of dispatching runs in milliseconds.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use qo_core::ports::{Invoker, JobSink, RecordKey, update_record};
use qo_core::{
    ApiWindow, Circuit, CircuitPolicy, Clock, Control, NoObserver, QuotaSpec, Throttles, Timestamp,
    TokioClock, WorkerEvent,
};
use qo_memory::{InvokerOptions, LocalInvoker, MemoryQueue, MemoryStore, QueueOptions};
use qo_orchestrator::{OrchestratorConfig, Ports, RunReport, run, run as run_loop};

/// A stand-in for the worker: waits for the slot, records the call time, and does what
/// `verdict` says with the job.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// The call succeeded.
    Succeed,
    /// A failure: re-queued after 1 s with its attempt raised.
    Requeue,
    /// A failure: re-queued after this delay with its attempt raised.
    RequeueAfter(Duration),
    /// A 429 with `Retry-After`: the back-off goes in the control record (as the worker writes
    /// it) and the job is re-queued after the wait (at most SQS's 900 s).
    Throttle(Duration),
    /// The call succeeded and the API's rate-limit headers said little is left: the window
    /// goes in the control record, as the worker reports a low remaining count.
    SucceedLow(ApiWindow),
}

pub struct Harness {
    pub clock: Arc<TokioClock>,
    pub queue: MemoryQueue,
    pub store: MemoryStore,
    pub invoker: LocalInvoker,
    pub calls: Arc<Mutex<Vec<Timestamp>>>,
    pub health: Arc<Mutex<Vec<u64>>>,
    /// Events delivered after their slot, by how much.
    pub late: Arc<Mutex<Vec<Duration>>>,
    /// The paths of the jobs whose call succeeded, once each.
    pub succeeded: Arc<Mutex<Vec<String>>>,
    /// The times of the calls answered 429.
    pub throttled: Arc<Mutex<Vec<Timestamp>>>,
    /// The slots of each batch event the worker got (single job events are not listed).
    pub batches: Arc<Mutex<Vec<Vec<Timestamp>>>>,
    /// The job ids of the results the worker was handed to deliver again.
    pub redelivered: Arc<Mutex<Vec<String>>>,
}

/// The harness's state the stand-in worker writes to: one clone per event it handles.
#[derive(Clone)]
struct Shared {
    clock: Arc<TokioClock>,
    queue: MemoryQueue,
    store: MemoryStore,
    calls: Arc<Mutex<Vec<Timestamp>>>,
    health: Arc<Mutex<Vec<u64>>>,
    late: Arc<Mutex<Vec<Duration>>>,
    succeeded: Arc<Mutex<Vec<String>>>,
    throttled: Arc<Mutex<Vec<Timestamp>>>,
    batches: Arc<Mutex<Vec<Vec<Timestamp>>>>,
    redelivered: Arc<Mutex<Vec<String>>>,
}

/// The most real time one run may take. On the paused clock a run takes milliseconds; a loop
/// that spins without ever sleeping never lets virtual time advance, so no virtual timeout can
/// end it.
pub const WALL_CLOCK_LIMIT: Duration = Duration::from_secs(120);

/// Ends the test process, naming the test, when a run outlasts its wall-clock limit: a
/// spinning loop fails the test instead of hanging the test command.
pub struct Watchdog {
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    pub fn start(limit: Duration) -> Self {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let test = std::thread::current()
            .name()
            .unwrap_or("a dispatch test")
            .to_string();
        let flag = done.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if started.elapsed() > limit {
                    eprintln!(
                        "{test}: the run did not end within {limit:?} of real time \
                         (a loop that never sleeps?); aborting the test process"
                    );
                    std::process::exit(101);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

pub fn start() -> Timestamp {
    // 2026-11-21T00:00:00Z, mid-day of nothing in particular.
    Timestamp::from_secs(1_795_219_200)
}

/// The loop's ports over the in-memory queue and store, `invoker` and `clock`, with no
/// observer.
pub fn ports<'a, I: Invoker + ?Sized>(
    queue: &'a MemoryQueue,
    store: &'a MemoryStore,
    invoker: &'a I,
    clock: &'a TokioClock,
) -> Ports<'a, MemoryQueue, MemoryStore, I> {
    Ports {
        queue,
        store,
        invoker,
        clock,
        observer: &NoObserver,
    }
}

/// One run of the loop over `ports` until `d` from now, under a [`Watchdog`]; it must end
/// without an error.
pub async fn run_for<I: Invoker + ?Sized>(
    ports: Ports<'_, MemoryQueue, MemoryStore, I>,
    config: &OrchestratorConfig,
    d: Duration,
) -> RunReport {
    let deadline = ports.clock.now().plus(d);
    let _watchdog = Watchdog::start(WALL_CLOCK_LIMIT);
    run(ports, config, deadline).await.expect("run")
}

/// What the worker writes for a 429 at `now` of the job slotted at `slot_at`: the back-off
/// until `until` (never shortened) and the 429 in the control record's throttles.
pub async fn record_throttle(
    store: &MemoryStore,
    now: Timestamp,
    until: Timestamp,
    slot_at: Timestamp,
) {
    update_record::<Control, _>(store, RecordKey::Control, |c| {
        let mut c = c.clone();
        c.backoff_until = c.backoff_until.max(Some(until));
        c.throttles = Some(Throttles::record(c.throttles.as_ref(), now, slot_at));
        Some(c)
    })
    .await
    .expect("back-off");
}

/// What the worker writes when the health check of `epoch` succeeds at `now`: the circuit
/// closes (if it is still that episode's).
pub async fn close_on_health_check(store: &MemoryStore, epoch: u64, now: Timestamp) {
    update_record::<Circuit, _>(store, RecordKey::Circuit, |c| {
        c.record_probe_result(epoch, true, now, &CircuitPolicy::default())
            .ok()
    })
    .await
    .expect("close");
}

/// Opens the circuit in `store` at `now`, as three failures in a row do, and returns it.
pub async fn open_circuit(store: &MemoryStore, now: Timestamp) -> Circuit {
    let mut c = Circuit::closed_at(now).force_close(now);
    for i in 0..3 {
        c = c
            .record_failure(
                c.epoch,
                now.plus(Duration::from_millis(i)),
                &CircuitPolicy::default(),
            )
            .expect("fail");
    }
    qo_core::ports::save_record(store, RecordKey::Circuit, &c, 0, None)
        .await
        .expect("save");
    c
}

impl Harness {
    pub fn new(
        verdict: impl Fn(usize) -> Verdict + Send + Sync + 'static,
        options: InvokerOptions,
    ) -> Self {
        Self::starting_at(start(), verdict, options)
    }

    /// A harness whose verdict also sees the call's time (an API with a limit of its own).
    pub fn with_api(
        verdict: impl Fn(usize, Timestamp) -> Verdict + Send + Sync + 'static,
        options: InvokerOptions,
    ) -> Self {
        Self::build_timed(start(), QueueOptions::template(), verdict, options)
    }

    /// A harness whose clock starts at `at`.
    pub fn starting_at(
        at: Timestamp,
        verdict: impl Fn(usize) -> Verdict + Send + Sync + 'static,
        options: InvokerOptions,
    ) -> Self {
        Self::build(at, QueueOptions::template(), verdict, options)
    }

    /// A harness over queues made with `queue_options`.
    pub fn with_queues(
        queue_options: QueueOptions,
        verdict: impl Fn(usize) -> Verdict + Send + Sync + 'static,
        options: InvokerOptions,
    ) -> Self {
        Self::build(start(), queue_options, verdict, options)
    }

    fn build(
        at: Timestamp,
        queue_options: QueueOptions,
        verdict: impl Fn(usize) -> Verdict + Send + Sync + 'static,
        options: InvokerOptions,
    ) -> Self {
        Self::build_timed(at, queue_options, move |n, _| verdict(n), options)
    }

    fn build_timed(
        at: Timestamp,
        queue_options: QueueOptions,
        verdict: impl Fn(usize, Timestamp) -> Verdict + Send + Sync + 'static,
        options: InvokerOptions,
    ) -> Self {
        let clock = Arc::new(TokioClock::starting_at(at));
        // The queues as the template deploys them (redrive policy, retention, visibility).
        let queue = MemoryQueue::with_options(clock.clone(), queue_options);
        let store = MemoryStore::new();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let health = Arc::new(Mutex::new(Vec::new()));
        let late = Arc::new(Mutex::new(Vec::new()));
        let succeeded = Arc::new(Mutex::new(Vec::new()));
        let throttled = Arc::new(Mutex::new(Vec::new()));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let redelivered = Arc::new(Mutex::new(Vec::new()));
        let handler = {
            let shared = Shared {
                clock: clock.clone(),
                queue: queue.clone(),
                store: store.clone(),
                calls: calls.clone(),
                health: health.clone(),
                late: late.clone(),
                succeeded: succeeded.clone(),
                throttled: throttled.clone(),
                batches: batches.clone(),
                redelivered: redelivered.clone(),
            };
            let verdict: Arc<dyn Fn(usize, Timestamp) -> Verdict + Send + Sync> = Arc::new(verdict);
            move |ev: WorkerEvent| {
                let shared = shared.clone();
                let verdict = verdict.clone();
                async move {
                    let Shared {
                        clock,
                        store,
                        health,
                        batches,
                        ..
                    } = shared.clone();
                    match ev {
                        WorkerEvent::Job(job) => {
                            handle_job(&shared, verdict.as_ref(), job).await;
                        }
                        WorkerEvent::Batch(batch) => {
                            // As the worker does: each job at its own slot, concurrently.
                            batches
                                .lock()
                                .expect("batches")
                                .push(batch.jobs.iter().map(|j| j.slot_at).collect());
                            let shared = &shared;
                            let verdict = verdict.as_ref();
                            futures::future::join_all(
                                batch
                                    .jobs
                                    .into_iter()
                                    .map(|job| handle_job(shared, verdict, job)),
                            )
                            .await;
                        }
                        WorkerEvent::HealthCheck(h) => {
                            health.lock().expect("health").push(h.epoch);
                            close_on_health_check(&store, h.epoch, clock.now()).await;
                        }
                        WorkerEvent::Deliver(d) => {
                            shared
                                .redelivered
                                .lock()
                                .expect("redelivered")
                                .push(d.result.job_id);
                        }
                    }
                }
            }
        };
        let invoker =
            LocalInvoker::with_options(clock.clone(), Arc::new(handler), options).expect("options");
        Harness {
            clock,
            queue,
            store,
            invoker,
            calls,
            health,
            late,
            succeeded,
            throttled,
            batches,
            redelivered,
        }
    }

    pub fn enqueue(&self, n: usize) {
        for i in 0..n {
            self.queue.send(format!(r#"{{"path":"/items/{i}"}}"#));
        }
    }

    /// The loop's ports over this harness's adapters.
    pub fn ports(&self) -> Ports<'_, MemoryQueue, MemoryStore, LocalInvoker> {
        ports(&self.queue, &self.store, &self.invoker, &self.clock)
    }

    pub async fn run_for(&self, config: &OrchestratorConfig, d: Duration) -> RunReport {
        let report = run_for(self.ports(), config, d).await;
        self.invoker.wait_idle().await;
        report
    }

    pub fn calls(&self) -> Vec<Timestamp> {
        let mut c = self.calls.lock().expect("calls").clone();
        c.sort();
        c
    }

    /// The harness clock's time.
    pub fn clock_now(&self) -> Timestamp {
        self.clock.now()
    }

    /// How many distinct jobs succeeded (a job called twice counts once).
    pub fn distinct_succeeded(&self) -> usize {
        let mut s = self.succeeded();
        s.dedup();
        s.len()
    }

    /// The paths of the jobs that succeeded, sorted, duplicates kept.
    pub fn succeeded(&self) -> Vec<String> {
        let mut s = self.succeeded.lock().expect("succeeded").clone();
        s.sort();
        s
    }

    /// Runs the orchestrator as a deployment does: a run of at most `run` starts at each
    /// minute tick (a tick that finds a run going is dropped), until `jobs` jobs succeeded or
    /// `limit` passed. Every run must end without an error. Returns the reports.
    pub async fn drive(
        &self,
        config: &OrchestratorConfig,
        run: Duration,
        jobs: usize,
        limit: Duration,
    ) -> Vec<qo_orchestrator::RunReport> {
        let end = self.clock.now().plus(limit);
        let mut reports = Vec::new();
        let _watchdog = Watchdog::start(WALL_CLOCK_LIMIT);
        while self.distinct_succeeded() < jobs && self.clock.now() < end {
            let deadline = self.clock.now().plus(run);
            let report = run_loop(self.ports(), config, deadline)
                .await
                .unwrap_or_else(|e| panic!("run {} ended with an error: {e}", reports.len() + 1));
            reports.push(report);
            // The next tick of the minute schedule.
            let now = self.clock.now().as_millis();
            let next = (now / 60_000 + 1) * 60_000;
            self.clock.sleep_until(Timestamp::from_millis(next)).await;
        }
        self.invoker.wait_idle().await;
        reports
    }

    /// The jobs on the dead-letter queue: sent there with a reason, or moved by the redrive
    /// policy.
    pub fn dead(&self) -> usize {
        self.queue.depths().dead
    }
}

/// The stand-in worker's handling of one job: wait for its slot, call, do what the verdict says.
async fn handle_job(
    shared: &Shared,
    verdict: &(dyn Fn(usize, Timestamp) -> Verdict + Send + Sync),
    job: qo_core::JobEvent,
) {
    let Shared {
        clock,
        queue,
        store,
        calls,
        late,
        succeeded,
        throttled,
        ..
    } = shared;
    if clock.now() > job.slot_at {
        late.lock()
            .expect("late")
            .push(clock.now().since(job.slot_at));
    }
    clock.sleep_until(job.slot_at).await;
    let called_at = clock.now();
    let n = {
        let mut c = calls.lock().expect("calls");
        c.push(called_at);
        c.len()
    };
    let body = serde_json::to_string(&job.job).expect("json");
    let next = qo_core::Origin {
        attempt: job.origin.attempt + 1,
        ..job.origin.clone()
    };
    let verdict = verdict(n, called_at);
    if let Verdict::Succeed | Verdict::SucceedLow(_) = verdict {
        succeeded
            .lock()
            .expect("succeeded")
            .push(job.job.path.clone());
    }
    match verdict {
        Verdict::Succeed => {}
        Verdict::SucceedLow(window) => {
            update_record::<Control, _>(store, RecordKey::Control, |c| {
                if c.api_window
                    .is_some_and(|w| w.observed_at >= window.observed_at)
                {
                    return None;
                }
                Some(Control {
                    api_window: Some(window),
                    ..c.clone()
                })
            })
            .await
            .expect("api window");
        }
        Verdict::Requeue => {
            queue
                .requeue(&body, &next, Duration::from_secs(1))
                .await
                .expect("requeue");
        }
        Verdict::RequeueAfter(delay) => {
            queue.requeue(&body, &next, delay).await.expect("requeue");
        }
        Verdict::Throttle(wait) => {
            let now = clock.now();
            let until = now.plus(wait);
            throttled.lock().expect("throttled").push(called_at);
            record_throttle(store, now, until, job.slot_at).await;
            queue
                .requeue(&body, &next, wait.min(qo_core::sqs::MAX_DELAY))
                .await
                .expect("requeue");
        }
    }
}

pub fn config(quota: &str) -> OrchestratorConfig {
    let mut c = OrchestratorConfig::with_quota(quota.parse::<QuotaSpec>().expect("quota"));
    c.idle_exit = Some(Duration::from_secs(2));
    c.stop_margin = Duration::from_secs(1);
    c
}

/// The most calls in any window of length `w` (qo-sim's count, over the offsets from the
/// first call; `times` sorted).
pub fn max_in_window(times: &[Timestamp], w: Duration) -> usize {
    let Some(first) = times.first() else {
        return 0;
    };
    let offsets: Vec<Duration> = times.iter().map(|t| t.since(*first)).collect();
    qo_sim::max_in_window(&offsets, w)
}
