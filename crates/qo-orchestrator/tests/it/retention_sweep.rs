//! The retention sweep over queues with the template's attributes (14 days' retention, a
//! redrive policy at 10 receives) on tokio's paused clock: a backlog that waits a month for its
//! budget loses nothing to retention and dead-letters nothing; without the sweep the same
//! backlog expires (so the model bites). And one pass copies each waiting job once, keeping its
//! attempt and first enqueue time, across runs.

use std::sync::Arc;
use std::time::Duration;

use crate::support::{Harness, Verdict, config};
use async_trait::async_trait;
use qo_core::ports::LeaseStore;
use qo_core::ports::{
    JobSink, JobSource, Message, QueueError, QueueRole, RecordKey, load_record, save_record,
};
use qo_core::{Clock, NoObserver, Origin, TokioClock};
use qo_memory::{
    InvokerOptions, LocalInvoker, MemoryQueue, MemoryStore, QueueFaults, QueueOptions,
};
use qo_orchestrator::sweep::{SweepRecord, run_if_due};
use qo_orchestrator::{OrchestratorConfig, Ports};

const DAY: Duration = Duration::from_secs(86_400);
const JOBS: usize = 15;

/// 15 jobs behind a budget of 5 a month (rolling 30 days): 5 go at once, 5 wait 30 days, 5 more.
async fn month_behind_budget(sweep: bool) -> (Harness, Vec<qo_orchestrator::RunReport>) {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(JOBS);
    let mut c = config("5/month");
    if !sweep {
        c.sweep_interval = None;
    }
    let reports = h.drive(&c, Duration::from_secs(60), JOBS, DAY * 31).await;
    (h, reports)
}

#[tokio::test(start_paused = true)]
async fn a_backlog_waiting_a_month_for_its_budget_loses_nothing_to_retention() {
    let (h, reports) = month_behind_budget(true).await;
    assert!(
        h.queue.expired().is_empty(),
        "expired: {:?}",
        h.queue.expired()
    );
    assert_eq!(h.dead(), 0, "dead letters: {:?}", h.queue.redriven());
    let mut done = h.succeeded();
    assert_eq!(
        done.len(),
        10,
        "5 at once, 5 when the month rolled: {done:?}"
    );
    done.dedup();
    assert_eq!(done.len(), 10, "each once");
    assert_eq!(h.queue.depths().pending(), 5, "{:?}", h.queue.depths());
    assert!(
        h.queue.peak_receive_count() <= 2,
        "{}",
        h.queue.peak_receive_count()
    );
    // The first run writes the sweep record; passes every 7 days after: days 7, 14, 21, 28.
    let passes = reports
        .iter()
        .filter(|r| r.sweep.as_ref().is_some_and(|s| s.completed))
        .count();
    assert_eq!(passes, 4, "completed passes");
    let resent: u64 = reports
        .iter()
        .filter_map(|r| r.sweep.as_ref())
        .map(|s| s.resent)
        .sum();
    // Each of the four passes copies the 10 waiting.
    assert_eq!(resent, 4 * 10, "copies");
}

#[tokio::test(start_paused = true)]
async fn without_the_sweep_the_same_backlog_expires() {
    let (h, _) = month_behind_budget(false).await;
    assert_eq!(
        h.queue.expired().len(),
        JOBS - 5,
        "retention deleted the waiting jobs"
    );
}

/// A deployment whose last pass began 7 days before `now`: one is due.
async fn a_pass_is_due(store: &MemoryStore, now: qo_core::Timestamp) {
    let last = SweepRecord {
        last_started_at: Some(now.minus(DAY * 7)),
        ..SweepRecord::default()
    };
    save_record(store, RecordKey::Sweep, &last, 0, None)
        .await
        .expect("sweep record");
}

/// A queue whose every call takes SQS's tens of milliseconds, so that a pass bounded by
/// `SWEEP_RUN_S` ends its run's part with work left.
struct Slow {
    inner: MemoryQueue,
    clock: Arc<TokioClock>,
}

const LATENCY: Duration = Duration::from_millis(200);

#[async_trait]
impl JobSource for Slow {
    async fn receive(&self, max: u8, wait: Duration) -> Result<Vec<Message>, QueueError> {
        self.clock.sleep(LATENCY).await;
        self.inner.receive(max, wait).await
    }
    async fn delete(&self, messages: &[Message]) -> Result<(), QueueError> {
        self.clock.sleep(LATENCY).await;
        self.inner.delete(messages).await
    }
    async fn release(&self, messages: &[Message], after: Duration) -> Result<(), QueueError> {
        self.clock.sleep(LATENCY).await;
        self.inner.release(messages, after).await
    }
    async fn receive_from(
        &self,
        role: QueueRole,
        max: u8,
        wait: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        self.clock.sleep(LATENCY).await;
        self.inner.receive_from(role, max, wait).await
    }
    async fn resend(&self, messages: &[Message], delay: Duration) -> Result<(), QueueError> {
        self.clock.sleep(LATENCY).await;
        self.inner.resend(messages, delay).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_pass_over_several_runs_copies_each_job_once_keeping_its_attempt() {
    let clock = Arc::new(TokioClock::starting_at(crate::support::start()));
    // Every short poll misses what is there, as one that asks a subset of SQS's servers may:
    // the sweep must never take an empty short poll for the end of a queue.
    let queue = MemoryQueue::with_options(
        clock.clone(),
        QueueOptions {
            faults: QueueFaults {
                short_poll_miss_rate: 1.0,
                ..QueueFaults::default()
            },
            ..QueueOptions::template()
        },
    );
    let store = MemoryStore::new();
    let invoker = LocalInvoker::new(clock.clone(), |_: qo_core::WorkerEvent| async {});
    // 30 jobs on the main queue and 12 re-queued ones (attempt 1 to 3, throttled once) on the
    // retry queue, all a day old.
    for i in 0..30 {
        queue.send(format!(r#"{{"path":"/main/{i}"}}"#));
    }
    for i in 0..12u32 {
        let origin = Origin {
            attempt: 1 + i % 3,
            throttled: 1,
            enqueued_at: Some(crate::support::start()),
            ..Origin::default()
        };
        queue
            .requeue(
                &format!(r#"{{"path":"/retry/{i}"}}"#),
                &origin,
                Duration::ZERO,
            )
            .await
            .expect("requeue");
    }
    clock.sleep(DAY).await;
    let slow = Slow {
        inner: queue.clone(),
        clock: clock.clone(),
    };
    let mut c = OrchestratorConfig::with_quota("1/s".parse().expect("quota"));
    c.sweep_run = Duration::from_secs(1);
    let ports = Ports {
        queue: &slow,
        store: &store,
        invoker: &invoker,
        clock: clock.as_ref(),
        observer: &NoObserver,
    };

    a_pass_is_due(&store, clock.now()).await;

    let mut parts = Vec::new();
    for _ in 0..20 {
        let mut lease = store
            .take("test", clock.now(), c.lease_ttl)
            .await
            .expect("lease");
        let stop = clock.now().plus(Duration::from_secs(600));
        let part = run_if_due(&ports, &c, &mut lease, stop).await;
        store.release(&lease).await.expect("release");
        let Some(part) = part else { break };
        let completed = part.completed;
        parts.push(part);
        if completed {
            break;
        }
        // The next minute's run; the copies made so far are visible meanwhile.
        clock.sleep(Duration::from_secs(60)).await;
    }
    assert!(parts.len() >= 3, "the pass spanned runs: {parts:?}");
    assert!(parts.last().is_some_and(|p| p.completed), "{parts:?}");
    let resent: u64 = parts.iter().map(|p| p.resent).sum();
    assert_eq!(resent, 42, "each waiting job copied once: {parts:?}");
    assert!(parts.iter().all(|p| p.refused == 0 && p.undeleted == 0));
    let record = load_record::<SweepRecord>(&store, RecordKey::Sweep)
        .await
        .expect("record")
        .value;
    assert_eq!(record.started_at, None, "no pass in progress");
    assert_eq!(record.last_resent, 42);
    assert_eq!(record.last_started_at, parts[0].started_at);

    // Every job is there once, as a message sent during the pass, its origin kept.
    let pass_began = parts[0].started_at.expect("began");
    let mut seen = Vec::new();
    // Long polls of each queue: a short one misses here.
    for role in [QueueRole::Retry, QueueRole::Main]
        .into_iter()
        .cycle()
        .take(40)
    {
        let got = queue
            .receive_from(role, 10, Duration::from_secs(1))
            .await
            .expect("receive");
        if got.is_empty() {
            continue;
        }
        for m in &got {
            assert!(m.sent_at >= pass_began, "a fresh copy: {m:?}");
            // This receive, plus at most one per run's part of the pass that met it as a
            // copy (held, then released): far from the redrive policy's 10.
            assert!(m.receive_count <= 1 + parts.len() as u32, "{m:?}");
            assert!(m.receive_count <= 3, "{m:?}");
            if m.body.contains("/retry/") {
                assert_eq!(m.queue, QueueRole::Retry, "stays on its queue");
                assert!((1..=3).contains(&m.origin.attempt), "{m:?}");
                assert_eq!(m.origin.throttled, 1);
            } else {
                assert_eq!(m.origin.attempt, 0);
            }
            assert_eq!(
                m.origin.enqueued_at,
                Some(crate::support::start()),
                "first enqueue kept"
            );
            seen.push(m.body.clone());
        }
        queue.delete(&got).await.expect("delete");
    }
    seen.sort();
    let n = seen.len();
    seen.dedup();
    assert_eq!((n, seen.len()), (42, 42), "each job once");
    assert!(queue.expired().is_empty() && queue.depths().dead == 0);

    // Not due again until 7 days after the pass began.
    let mut lease = store
        .take("test", clock.now(), c.lease_ttl)
        .await
        .expect("lease");
    let stop = clock.now().plus(Duration::from_secs(600));
    assert_eq!(run_if_due(&ports, &c, &mut lease, stop).await, None);
}

#[async_trait]
impl JobSink for Slow {
    async fn dead_letter(&self, letter: qo_core::ports::DeadLetter) -> Result<(), QueueError> {
        self.clock.sleep(LATENCY).await;
        self.inner.dead_letter(letter).await
    }
    async fn requeue(
        &self,
        body: &str,
        origin: &Origin,
        delay: Duration,
    ) -> Result<(), QueueError> {
        self.clock.sleep(LATENCY).await;
        self.inner.requeue(body, origin, delay).await
    }
}

/// Keeps the pace decreases a run reports, and the ages of the sweep's pass in progress.
#[derive(Default)]
struct Decreases(
    std::sync::Mutex<Vec<qo_core::quota::Decrease>>,
    std::sync::Mutex<Vec<Option<Duration>>>,
);

impl qo_core::Observer for Decreases {
    fn observe(&self, o: qo_core::Observation) {
        match o {
            qo_core::Observation::PaceDecreased(d) => {
                if let Ok(mut seen) = self.0.lock() {
                    seen.push(d);
                }
            }
            qo_core::Observation::Swept { pass_age, .. } => {
                if let Ok(mut seen) = self.1.lock() {
                    seen.push(pass_age);
                }
            }
            _ => {}
        }
    }
}

/// A run that sweeps first judges the 429s it hydrates at the time after the sweep: a decrease
/// stamped at the run's start, up to `SWEEP_RUN_S` earlier, would have its hold and probe over
/// at once, and the pace would go straight back to the ceiling.
#[tokio::test(start_paused = true)]
async fn throttles_read_after_a_sweep_are_judged_at_the_time_after_it() {
    let clock = Arc::new(TokioClock::starting_at(crate::support::start()));
    let queue = MemoryQueue::with_options(clock.clone(), QueueOptions::template());
    let store = MemoryStore::new();
    let invoker = LocalInvoker::new(clock.clone(), |_: qo_core::WorkerEvent| async {});
    // A day-old backlog larger than a 30 s part of a pass gets through (Slow: 0.6 s a batch).
    queue.send_batch((0..1_000).map(|i| format!(r#"{{"path":"/main/{i}"}}"#)));
    clock.sleep(DAY).await;
    let began = clock.now();
    // The worker counted a 429 of a slot just before this run.
    let control = qo_core::Control {
        throttles: Some(qo_core::control::Throttles::record(
            None,
            began.minus(Duration::from_secs(1)),
            began.minus(Duration::from_secs(2)),
        )),
        ..qo_core::Control::default()
    };
    save_record(&store, RecordKey::Control, &control, 0, None)
        .await
        .expect("control record");
    a_pass_is_due(&store, began).await;
    let slow = Slow {
        inner: queue.clone(),
        clock: clock.clone(),
    };
    let mut c = config("10/s");
    c.sweep_run = Duration::from_secs(30);
    let seen = Decreases::default();
    let ports = Ports {
        queue: &slow,
        store: &store,
        invoker: &invoker,
        clock: clock.as_ref(),
        observer: &seen,
    };
    let report = qo_orchestrator::run(ports, &c, began.plus(Duration::from_secs(90)))
        .await
        .expect("run");
    let sweep = report.sweep.expect("a sweep part ran");
    assert!(!sweep.completed && sweep.resent > 0, "{sweep:?}");
    // The pass goes on: its age is reported (the metric an alarm watches), about the part's
    // 30 s.
    let ages = seen.1.lock().expect("lock").clone();
    assert!(
        matches!(ages[..], [Some(a)] if a >= Duration::from_secs(29) && a <= c.sweep_run),
        "{ages:?}"
    );
    let decreases = seen.0.lock().expect("lock").clone();
    let first = decreases.first().expect("the 429 lowered the pace");
    // The sweep's part ends when less than a long poll's wait is left of it.
    let sweep_end = began.plus(c.sweep_run - qo_orchestrator::sweep::MIN_RECEIVE_WAIT);
    assert!(
        first.at >= sweep_end,
        "decided at {} s into the run, before the sweep's {} s ended",
        first.at.since(began).as_secs_f64(),
        c.sweep_run.as_secs()
    );
}

/// Ten jobs of about 110 KB are over SendMessageBatch's 1 MiB together: the sweep copies them
/// in groups SQS takes (the in-memory queue refuses a larger call whole, as SQS does), and the
/// pass completes instead of stopping at the same ten every run.
#[tokio::test(start_paused = true)]
async fn large_jobs_are_copied_in_calls_under_one_mib() {
    let clock = Arc::new(TokioClock::starting_at(crate::support::start()));
    let queue = MemoryQueue::with_options(clock.clone(), QueueOptions::template());
    let store = MemoryStore::new();
    let invoker = LocalInvoker::new(clock.clone(), |_: qo_core::WorkerEvent| async {});
    let pad = "x".repeat(110_000);
    for i in 0..10 {
        queue.send(format!(r#"{{"path":"/big/{i}","body":"{pad}"}}"#));
    }
    clock.sleep(DAY).await;
    let c = OrchestratorConfig::with_quota("1/s".parse().expect("quota"));
    let ports = Ports {
        queue: &queue,
        store: &store,
        invoker: &invoker,
        clock: clock.as_ref(),
        observer: &NoObserver,
    };
    a_pass_is_due(&store, clock.now()).await;
    let mut lease = store
        .take("test", clock.now(), c.lease_ttl)
        .await
        .expect("lease");
    let stop = clock.now().plus(Duration::from_secs(600));
    let part = run_if_due(&ports, &c, &mut lease, stop)
        .await
        .expect("a pass was due");
    assert!(part.completed, "{part:?}");
    assert_eq!((part.resent, part.refused), (10, 0), "{part:?}");
    let d = queue.depths();
    assert_eq!(d.pending(), 10, "each job once: {d:?}");
    assert!(queue.expired().is_empty() && d.dead == 0);
}
