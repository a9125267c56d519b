//! The in-memory Lambda async invoke against what AWS documents: reserved concurrency with the
//! throttling back-off, the event age, function-error retries, the on-failure destination,
//! cold starts and warm reuse, duplicates; and the older delivery, fault and payload checks.
//!
//! Times are asserted in milliseconds from the clock's start, on tokio's paused clock.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qo_core::event::{HealthCheckEvent, WorkerEvent};
use qo_core::ports::{InvokeError, Invoker};
use qo_core::time::{Clock, Timestamp, TokioClock};
use qo_memory::invoker::{MAX_EVENT_BYTES, THROTTLE_REASON};
use qo_memory::{
    EventHandler, FailureCondition, InvokerOptions, InvokerStats, LocalInvoker, MemoryError,
};

const START: Timestamp = Timestamp::from_secs(1_000);

fn clock() -> Arc<dyn Clock> {
    Arc::new(TokioClock::starting_at(START))
}

/// Milliseconds from the start.
fn ms(t: Timestamp) -> u64 {
    u64::try_from(t.since(START).as_millis()).expect("small")
}

fn event(epoch: u64) -> WorkerEvent {
    WorkerEvent::HealthCheck(HealthCheckEvent {
        epoch,
        sent_at: START,
        slot_at: None,
    })
}

fn epoch_of(ev: &WorkerEvent) -> u64 {
    match ev {
        WorkerEvent::HealthCheck(h) => h.epoch,
        WorkerEvent::Job(j) => j.epoch,
        WorkerEvent::Batch(b) => b.jobs.first().map_or(0, |j| j.epoch),
        WorkerEvent::Deliver(_) => 0,
    }
}

/// A fixed queue delay of 10 ms, so times can be asserted exactly.
fn fixed(options: InvokerOptions) -> InvokerOptions {
    InvokerOptions {
        delay: Duration::from_millis(10)..=Duration::from_millis(10),
        // The times below count from the accepted invoke.
        api_latency: Duration::ZERO,
        ..options
    }
}

/// What a probe handler saw.
#[derive(Debug, Default)]
struct Log {
    /// (epoch, ms from the start) of each run's start.
    runs: Vec<(u64, u64)>,
    running: usize,
    peak: usize,
}

type Shared = Arc<Mutex<Log>>;

impl Log {
    fn times_of(log: &Shared, epoch: u64) -> Vec<u64> {
        let l = log.lock().expect("log");
        l.runs
            .iter()
            .filter(|r| r.0 == epoch)
            .map(|r| r.1)
            .collect()
    }
    fn all_times(log: &Shared) -> Vec<u64> {
        let mut t: Vec<u64> = log.lock().expect("log").runs.iter().map(|r| r.1).collect();
        t.sort_unstable();
        t
    }
}

/// A handler that logs each run, stays busy `busy(epoch)`, and fails run `n` (from 0) of an
/// epoch when `fails(epoch, n)`.
fn probe(
    clock: Arc<dyn Clock>,
    busy: impl Fn(u64) -> Duration + Send + Sync + 'static,
    fails: impl Fn(u64, usize) -> bool + Send + Sync + 'static,
) -> (Shared, Arc<dyn EventHandler>) {
    let log: Shared = Arc::default();
    let busy = Arc::new(busy);
    let fails = Arc::new(fails);
    let l = log.clone();
    let handler = move |ev: WorkerEvent| {
        let (log, clock, busy, fails) = (l.clone(), clock.clone(), busy.clone(), fails.clone());
        async move {
            let epoch = epoch_of(&ev);
            let n = {
                let mut g = log.lock().expect("log");
                let n = g.runs.iter().filter(|r| r.0 == epoch).count();
                g.runs.push((epoch, ms(clock.now())));
                g.running += 1;
                g.peak = g.peak.max(g.running);
                n
            };
            clock.sleep(busy(epoch)).await;
            log.lock().expect("log").running -= 1;
            if fails(epoch, n) {
                Err(format!("boom {epoch}/{n}"))
            } else {
                Ok(())
            }
        }
    };
    (log, Arc::new(handler))
}

fn never(_: u64, _: usize) -> bool {
    false
}

// ---- Reserved concurrency and the throttling back-off -------------------------------------

#[tokio::test(start_paused = true)]
async fn concurrency_two_runs_two_at_once_and_the_rest_after_lambdas_backoff() {
    let c = clock();
    let (log, handler) = probe(c.clone(), |_| Duration::from_secs(10), never);
    let options = fixed(InvokerOptions {
        concurrency: Some(2),
        ..InvokerOptions::default()
    });
    let inv = LocalInvoker::with_options(c.clone(), handler, options).expect("options");
    inv.invoke(&event(0)).await.expect("accepted");
    inv.invoke(&event(1)).await.expect("accepted");
    c.sleep(Duration::from_secs(1)).await;
    assert_eq!(inv.busy(), 2, "saturated");
    for i in 2..5 {
        // Accepted (202) although the function is saturated: async events are queued, not
        // refused.
        inv.invoke(&event(i))
            .await
            .expect("accepted while saturated");
    }
    assert_eq!(ms(c.now()), 1_000, "invoke does not wait");
    inv.wait_idle().await;

    // Two cold starts at 10 ms + 22 ms init, running until 10.032 s. The other three, invoked
    // at 1 s, are throttled at 1.010 s and tried again 1, 2, 4, 8 s later (2.010, 4.010,
    // 8.010, 16.010 s): at 16.010 s two run in the two warm environments (no init); the last
    // is throttled once more and runs 16 s later, at 32.010 s.
    assert_eq!(Log::all_times(&log), [32, 32, 16_010, 16_010, 32_010]);
    assert_eq!(
        log.lock().expect("log").peak,
        2,
        "never more than two at once"
    );
    let s = inv.stats();
    assert_eq!(s.peak_concurrency, 2);
    assert_eq!(s.throttled, 3 * 4 + 1);
    assert_eq!(
        s.cold_starts, 2,
        "the later runs reuse the two warm environments"
    );
    assert_eq!(
        (s.accepted, s.failed, s.delivered, s.completed),
        (5, 0, 5, 5)
    );
    // Five throttles in a row spent none of the two retries: nothing failed.
    assert!(inv.failures().is_empty(), "{:?}", inv.failures());
    assert_eq!(s.on_failure, 0);
    assert_eq!(ms(c.now()), 42_010);
}

#[tokio::test(start_paused = true)]
async fn throttling_does_not_spend_the_retry_attempts() {
    let c = clock();
    let (log, handler) = probe(
        c.clone(),
        |e| {
            if e == 0 {
                Duration::from_secs(20)
            } else {
                Duration::ZERO
            }
        },
        never,
    );
    let options = fixed(InvokerOptions {
        concurrency: Some(1),
        maximum_retry_attempts: 0,
        ..InvokerOptions::default()
    });
    let inv = LocalInvoker::with_options(c.clone(), handler, options).expect("options");
    inv.invoke(&event(0)).await.expect("accepted");
    inv.invoke(&event(1)).await.expect("accepted");
    inv.wait_idle().await;
    // Throttled at 0.010, 1.010, 3.010, 7.010 and 15.010 s (the first runs until 20.032 s);
    // run at 31.010 s although no retry was allowed.
    assert_eq!(Log::times_of(&log, 1), [31_010]);
    assert_eq!(inv.stats().throttled, 5);
    assert!(inv.failures().is_empty());
}

#[tokio::test(start_paused = true)]
async fn wait_idle_waits_for_an_event_queued_for_a_throttling_retry() {
    let c = clock();
    let (log, handler) = probe(c.clone(), |_| Duration::from_secs(5), never);
    let options = fixed(InvokerOptions {
        concurrency: Some(1),
        ..InvokerOptions::default()
    });
    let inv = LocalInvoker::with_options(c.clone(), handler, options).expect("options");
    inv.invoke(&event(0)).await.expect("accepted");
    inv.invoke(&event(1)).await.expect("accepted");
    assert_eq!(inv.outstanding(), 2);
    inv.wait_idle().await;
    // The second was throttled at 0.010, 1.010 and 3.010 s, ran warm at 7.010 s for 5 s.
    assert_eq!(Log::all_times(&log), [32, 7_010]);
    assert_eq!(ms(c.now()), 12_010);
    assert_eq!((inv.outstanding(), inv.busy()), (0, 0));
}

// ---- The event age --------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_event_throttled_past_its_maximum_age_goes_to_on_failure_undelivered() {
    let c = clock();
    let (log, handler) = probe(c.clone(), |_| Duration::from_secs(600), never);
    let options = fixed(InvokerOptions {
        concurrency: Some(1),
        maximum_event_age: Duration::from_secs(60),
        ..InvokerOptions::default()
    });
    let inv = LocalInvoker::with_options(c.clone(), handler, options).expect("options");
    inv.invoke(&event(0)).await.expect("accepted");
    c.sleep(Duration::from_secs(1)).await;
    inv.invoke(&event(1)).await.expect("accepted");
    inv.wait_idle().await;

    assert_eq!(Log::times_of(&log, 1), Vec::<u64>::new(), "never delivered");
    let failures = inv.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let f = &failures[0];
    assert_eq!(f.event, event(1));
    assert_eq!(f.condition, FailureCondition::EventAgeExceeded);
    assert_eq!(f.condition.to_string(), "EventAgeExceeded");
    assert_eq!(f.attempts, 0, "no run");
    // Tried at 1.010, 2.010, 4.010, 8.010, 16.010 and 32.010 s; the next (64.010 s) is past
    // its 60 s age, so it fails when the age is reached.
    assert_eq!(f.throttles, 6);
    assert_eq!(f.last_error, None);
    assert_eq!(ms(f.accepted_at), 1_000);
    assert_eq!(ms(f.failed_at), 61_000);
    let s = inv.stats();
    assert_eq!((s.on_failure, s.delivered, s.completed), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_function_error_retry_past_the_event_age_is_an_age_failure() {
    let c = clock();
    let (log, handler) = probe(c.clone(), |_| Duration::ZERO, |_, _| true);
    let options = fixed(InvokerOptions {
        maximum_event_age: Duration::from_secs(60),
        ..InvokerOptions::default()
    });
    let inv = LocalInvoker::with_options(c.clone(), handler, options).expect("options");
    inv.invoke(&event(3)).await.expect("accepted");
    inv.wait_idle().await;
    // One run at 32 ms; its retry would come at 60.032 s, past the 60 s age.
    assert_eq!(Log::times_of(&log, 3), [32]);
    let f = inv.failures();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].condition, FailureCondition::EventAgeExceeded);
    assert_eq!(f[0].attempts, 1);
    assert_eq!(f[0].last_error.as_deref(), Some("boom 3/0"));
    assert_eq!(ms(f[0].failed_at), 60_000);
}

// ---- Function errors ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_handler_error_is_retried_twice_then_retries_exhausted() {
    let c = clock();
    let (log, handler) = probe(c.clone(), |_| Duration::ZERO, |e, _| e == 7);
    let inv = LocalInvoker::with_options(c.clone(), handler, fixed(InvokerOptions::default()))
        .expect("options");
    inv.invoke(&event(7)).await.expect("accepted");
    inv.invoke(&event(8)).await.expect("accepted");
    inv.wait_idle().await;

    // Run at 32 ms (cold), retried 1 min later, then 2 min after that, in the warm
    // environment.
    assert_eq!(Log::times_of(&log, 7), [32, 60_032, 180_032]);
    assert_eq!(Log::times_of(&log, 8), [32], "the other event ran once");
    let failures = inv.failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let f = &failures[0];
    assert_eq!(f.event, event(7));
    assert_eq!(f.condition, FailureCondition::RetriesExhausted);
    assert_eq!(f.attempts, 3);
    assert_eq!(f.throttles, 0);
    assert_eq!(f.last_error.as_deref(), Some("boom 7/2"));
    assert_eq!((ms(f.accepted_at), ms(f.failed_at)), (0, 180_032));
    let s = inv.stats();
    assert_eq!(
        (s.delivered, s.completed, s.function_errors, s.on_failure),
        (4, 1, 3, 1)
    );
    assert_eq!(s.cold_starts, 2);

    // take_failures empties the destination, as a redrive reads the queue.
    assert_eq!(inv.take_failures().len(), 1);
    assert!(inv.failures().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_recovers_on_its_retry_is_not_a_failure() {
    let c = clock();
    let (log, handler) = probe(c.clone(), |_| Duration::ZERO, |_, n| n == 0);
    let inv = LocalInvoker::with_options(c.clone(), handler, fixed(InvokerOptions::default()))
        .expect("options");
    inv.invoke(&event(1)).await.expect("accepted");
    inv.wait_idle().await;
    assert_eq!(Log::times_of(&log, 1), [32, 60_032]);
    assert!(inv.failures().is_empty());
    assert_eq!(inv.stats().completed, 1);
}

#[tokio::test(start_paused = true)]
async fn no_retries_means_one_run() {
    let c = clock();
    let (log, handler) = probe(c.clone(), |_| Duration::ZERO, |_, _| true);
    let options = fixed(InvokerOptions {
        maximum_retry_attempts: 0,
        ..InvokerOptions::default()
    });
    let inv = LocalInvoker::with_options(c.clone(), handler, options).expect("options");
    inv.invoke(&event(1)).await.expect("accepted");
    inv.wait_idle().await;
    assert_eq!(Log::times_of(&log, 1), [32]);
    let f = inv.failures();
    assert_eq!(f[0].condition, FailureCondition::RetriesExhausted);
    assert_eq!((f[0].attempts, ms(f[0].failed_at)), (1, 32));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_a_function_error_and_loses_its_environment() {
    let c = clock();
    let c2 = c.clone();
    let runs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let r = runs.clone();
    let handler = move |_ev: WorkerEvent| {
        let (c2, r) = (c2.clone(), r.clone());
        async move {
            let mut runs = r.lock().expect("runs");
            runs.push(ms(c2.now()));
            if !runs.is_empty() {
                drop(runs);
                panic!("worker crashed");
            }
        }
    };
    let options = fixed(InvokerOptions {
        maximum_retry_attempts: 1,
        ..InvokerOptions::default()
    });
    let inv = LocalInvoker::with_options(c.clone(), Arc::new(handler), options).expect("options");
    inv.invoke(&event(1)).await.expect("accepted");
    inv.wait_idle().await;
    // The retry 1 min later starts a new environment: 60.032 s + 22 ms init.
    assert_eq!(*runs.lock().expect("runs"), [32, 60_054]);
    let f = inv.failures();
    assert_eq!(f[0].condition, FailureCondition::RetriesExhausted);
    let err = f[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("panicked: worker crashed"), "{err}");
    assert_eq!(inv.stats().cold_starts, 2);
}

// ---- Cold starts and warm reuse -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_new_environment_waits_its_init_and_a_warm_one_does_not() {
    let c = clock();
    let (log, handler) = probe(c.clone(), |_| Duration::ZERO, never);
    let options = fixed(InvokerOptions {
        cold_start: Duration::from_millis(500),
        keep_warm: Duration::from_secs(60),
        ..InvokerOptions::default()
    });
    let inv = LocalInvoker::with_options(c.clone(), handler, options).expect("options");
    // First: a new environment, 10 ms queue delay + 500 ms init.
    inv.invoke(&event(1)).await.expect("accepted");
    inv.wait_idle().await;
    assert_eq!(Log::times_of(&log, 1), [510]);
    // Second, right after: the warm environment, 10 ms only.
    inv.invoke(&event(2)).await.expect("accepted");
    inv.wait_idle().await;
    assert_eq!(Log::times_of(&log, 2), [520]);
    assert_eq!(inv.stats().cold_starts, 1);
    // Idle 60 s: the environment is dropped, so the next one is cold again.
    c.sleep(Duration::from_secs(60)).await;
    inv.invoke(&event(3)).await.expect("accepted");
    inv.wait_idle().await;
    assert_eq!(Log::times_of(&log, 3), [60_520 + 10 + 500]);
    // Two at once with one warm environment: one reuses it, the other starts a new one.
    inv.invoke(&event(4)).await.expect("accepted");
    inv.invoke(&event(5)).await.expect("accepted");
    inv.wait_idle().await;
    let mut pair = [Log::times_of(&log, 4)[0], Log::times_of(&log, 5)[0]];
    pair.sort_unstable();
    assert_eq!(pair, [61_040, 61_540]);
    assert_eq!(inv.stats().cold_starts, 3);
}

#[tokio::test(start_paused = true)]
async fn the_default_cold_start_is_the_published_rust_init() {
    let c = clock();
    let (log, handler) = probe(c.clone(), |_| Duration::ZERO, never);
    let inv = LocalInvoker::with_options(c.clone(), handler, fixed(InvokerOptions::default()))
        .expect("options");
    inv.invoke(&event(1)).await.expect("accepted");
    inv.wait_idle().await;
    assert_eq!(Log::times_of(&log, 1), [10 + 22]);
}

// ---- Duplicates -----------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn duplicates_arrive_at_the_configured_rate_and_repeat_with_the_seed() {
    let run = |seed: u64| async move {
        let c = clock();
        let (log, handler) = probe(c.clone(), |_| Duration::ZERO, never);
        let options = InvokerOptions {
            duplicate_rate: 0.25,
            seed,
            ..InvokerOptions::default()
        };
        let inv = LocalInvoker::with_options(c, handler, options).expect("options");
        for i in 0..1_000 {
            inv.invoke(&event(i)).await.expect("accepted");
        }
        inv.wait_idle().await;
        let mut count: HashMap<u64, usize> = HashMap::new();
        for (epoch, _) in &log.lock().expect("log").runs {
            *count.entry(*epoch).or_default() += 1;
        }
        assert_eq!(count.len(), 1_000, "every event arrives");
        assert!(count.values().all(|&k| k == 1 || k == 2));
        let twice: BTreeSet<u64> = count
            .iter()
            .filter(|(_, k)| **k == 2)
            .map(|(e, _)| *e)
            .collect();
        let s = inv.stats();
        assert_eq!(s.duplicates, twice.len() as u64);
        assert_eq!(s.delivered, 1_000 + s.duplicates);
        twice
    };
    let a = run(5).await;
    assert!((200..=300).contains(&a.len()), "{} of 1000 twice", a.len());
    assert_eq!(a, run(5).await, "same seed, same duplicates");
    assert_ne!(a, run(6).await, "another seed, others");
}

#[tokio::test(start_paused = true)]
async fn duplicate_rate_one_delivers_each_event_twice() {
    let c = clock();
    let (log, handler) = probe(c.clone(), |_| Duration::ZERO, never);
    let options = InvokerOptions {
        duplicate_rate: 1.0,
        ..InvokerOptions::default()
    };
    let inv = LocalInvoker::with_options(c, handler, options).expect("options");
    for i in 0..10 {
        inv.invoke(&event(i)).await.expect("accepted");
    }
    inv.wait_idle().await;
    let mut epochs: Vec<u64> = log.lock().expect("log").runs.iter().map(|r| r.0).collect();
    epochs.sort_unstable();
    let want: Vec<u64> = (0..10).flat_map(|i| [i, i]).collect();
    assert_eq!(epochs, want);
    assert_eq!(inv.stats().delivered, 20);
}

// ---- Delivery delay, invoke faults, payloads ------------------------------------------------

#[tokio::test(start_paused = true)]
async fn delivers_every_event_exactly_once_within_the_delay_range() {
    let c = clock();
    let (log, handler) = probe(c.clone(), |_| Duration::ZERO, never);
    let options = InvokerOptions {
        delay: Duration::from_millis(100)..=Duration::from_millis(300),
        cold_start: Duration::ZERO,
        api_latency: Duration::ZERO,
        seed: 7,
        ..InvokerOptions::default()
    };
    let inv = LocalInvoker::with_options(c.clone(), handler, options).expect("options");
    let n = 500;
    for i in 0..n {
        inv.invoke(&event(i)).await.expect("accepted");
    }
    assert_eq!(c.now(), START, "invoke does not wait for delivery");
    assert!(
        log.lock().expect("log").runs.is_empty(),
        "nothing before the delay"
    );
    inv.wait_idle().await;
    let runs = log.lock().expect("log").runs.clone();
    let mut count: HashMap<u64, usize> = HashMap::new();
    for (epoch, at) in &runs {
        *count.entry(*epoch).or_default() += 1;
        assert!((100..=300).contains(at), "{at} ms");
    }
    assert_eq!(count.len(), n as usize);
    assert!(count.values().all(|&k| k == 1));
    // The delays vary, so deliveries come out of order.
    assert!(runs.windows(2).any(|w| w[0].0 > w[1].0), "some reordering");
    assert_eq!(
        inv.stats(),
        InvokerStats {
            invokes: n,
            accepted: n,
            delivered: n,
            completed: n,
            cold_starts: inv.stats().cold_starts,
            peak_concurrency: inv.stats().peak_concurrency,
            ..InvokerStats::default()
        }
    );
    assert_eq!(inv.outstanding(), 0);
}

#[tokio::test(start_paused = true)]
async fn wait_idle_waits_for_a_running_handler() {
    let c = clock();
    let c2 = c.clone();
    let done = Arc::new(Mutex::new(false));
    let d = done.clone();
    let inv = LocalInvoker::new(c.clone(), move |_ev: WorkerEvent| {
        let c2 = c2.clone();
        let d = d.clone();
        async move {
            c2.sleep(Duration::from_secs(5)).await;
            *d.lock().expect("lock") = true;
        }
    });
    inv.invoke(&event(1)).await.expect("accepted");
    assert_eq!(inv.outstanding(), 1);
    inv.wait_idle().await;
    assert!(*done.lock().expect("lock"));
    assert!(c.now().since(START) >= Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn fail_rate_fails_that_fraction_deterministically() {
    let run = |seed| async move {
        let c = clock();
        let (log, handler) = probe(c.clone(), |_| Duration::ZERO, never);
        let options = InvokerOptions {
            fail_rate: 0.3,
            seed,
            ..InvokerOptions::default()
        };
        let inv = LocalInvoker::with_options(c, handler, options).expect("options");
        let mut outcomes = Vec::new();
        for i in 0..1_000 {
            outcomes.push(match inv.invoke(&event(i)).await {
                Ok(()) => 0,
                Err(InvokeError::Throttled { reason, .. }) => {
                    assert_eq!(reason, THROTTLE_REASON);
                    1
                }
                Err(InvokeError::Transport { .. }) => 2,
                Err(e) => panic!("unexpected {e}"),
            });
        }
        inv.wait_idle().await;
        let stats = inv.stats();
        assert_eq!(
            stats.delivered, stats.accepted,
            "only accepted events arrive"
        );
        assert_eq!(log.lock().expect("log").runs.len() as u64, stats.accepted);
        (outcomes, stats)
    };
    let (a, stats) = run(42).await;
    let (b, _) = run(42).await;
    let (c, _) = run(43).await;
    assert_eq!(a, b, "same seed, same faults");
    assert_ne!(a, c, "another seed, other faults");
    assert!((250..=350).contains(&stats.failed), "{stats:?}");
    assert_eq!(stats.failed + stats.accepted, 1_000);
    assert!(a.contains(&1) && a.contains(&2), "both kinds occur");
}

#[tokio::test(start_paused = true)]
async fn oversized_payload_is_rejected() {
    use qo_core::{
        event::JobEvent,
        job::{Job, Origin},
    };
    let c = clock();
    let (log, handler) = probe(c.clone(), |_| Duration::ZERO, never);
    let inv = LocalInvoker::with_options(c, handler, InvokerOptions::default()).expect("ok");
    let big = WorkerEvent::Job(JobEvent {
        job: Job {
            path: "/x".into(),
            body: Some(serde_json::Value::String("a".repeat(MAX_EVENT_BYTES))),
            ..Job::default()
        },
        origin: Origin::default(),
        slot_at: Timestamp::EPOCH,
        epoch: 0,
        dispatched_at: Timestamp::EPOCH,
    });
    let e = inv.invoke(&big).await.expect_err("too big");
    assert!(
        matches!(&e, InvokeError::Rejected { detail: m, .. } if m.contains("limit")),
        "{e}"
    );
    inv.wait_idle().await;
    assert!(log.lock().expect("log").runs.is_empty());
    assert_eq!(inv.stats().failed, 1);
}

#[test]
fn bad_options_are_refused_by_the_constructor() {
    let c = Arc::new(TokioClock::starting_at(START));
    let handler: Arc<dyn EventHandler> = Arc::new(|_ev: WorkerEvent| async {});
    let e = LocalInvoker::with_options(
        c,
        handler,
        InvokerOptions {
            maximum_retry_attempts: 5,
            ..InvokerOptions::default()
        },
    )
    .expect_err("refused");
    assert!(
        matches!(
            e,
            MemoryError::InvalidOption {
                name: "maximum_retry_attempts",
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_invokes_on_a_real_runtime() {
    let c: Arc<dyn Clock> = Arc::new(TokioClock::system());
    let (log, handler) = probe(c.clone(), |_| Duration::ZERO, never);
    let options = InvokerOptions {
        delay: Duration::ZERO..=Duration::from_millis(5),
        ..InvokerOptions::default()
    };
    let inv = LocalInvoker::with_options(c, handler, options).expect("options");
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let inv = inv.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                inv.invoke(&event(t * 1_000 + i)).await.expect("accepted");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    inv.wait_idle().await;
    let mut epochs: Vec<u64> = log.lock().expect("log").runs.iter().map(|r| r.0).collect();
    epochs.sort_unstable();
    epochs.dedup();
    assert_eq!(epochs.len(), 2_000);
    assert_eq!(inv.stats().completed, 2_000);
}

// ---- The callers' handler shapes still compile ----------------------------------------------

/// The shapes `qo local`, the ops tests and the dispatch tests pass: closures returning `()`,
/// given to `new` and, boxed, to `with_options`; and a closure returning the worker's
/// `Result`, whose errors become function errors.
#[tokio::test(start_paused = true)]
async fn closures_returning_unit_or_a_result_are_handlers() {
    let c = clock();
    let unit = LocalInvoker::new(c.clone(), |_event: WorkerEvent| async {});
    let boxed = LocalInvoker::with_options(
        c.clone(),
        Arc::new(move |ev: WorkerEvent| async move {
            let _ = ev;
        }),
        InvokerOptions::default(),
    )
    .expect("options");
    let fallible = LocalInvoker::with_options(
        c.clone(),
        Arc::new(|_ev: WorkerEvent| async { Err::<u32, _>(std::fmt::Error) }),
        InvokerOptions {
            maximum_retry_attempts: 0,
            ..InvokerOptions::default()
        },
    )
    .expect("options");
    for inv in [&unit, &boxed, &fallible] {
        inv.invoke(&event(1)).await.expect("accepted");
        inv.wait_idle().await;
    }
    assert_eq!(unit.stats().completed, 1);
    assert_eq!(boxed.stats().completed, 1);
    assert_eq!(fallible.stats().function_errors, 1);
    assert_eq!(
        fallible.failures()[0].last_error.as_deref(),
        Some("an error occurred when formatting an argument")
    );
}

#[tokio::test(start_paused = true)]
async fn an_invoke_takes_the_api_latency_before_it_is_accepted() {
    let c = clock();
    let (_log, handler) = probe(c.clone(), |_| Duration::ZERO, never);
    let inv =
        LocalInvoker::with_options(c.clone(), handler, InvokerOptions::default()).expect("options");
    inv.invoke(&event(1)).await.expect("accepted");
    assert_eq!(
        c.now().since(START),
        qo_memory::invoker::DEFAULT_API_LATENCY,
        "the caller waited for the 202"
    );
}

// ---- Batches ------------------------------------------------------------------------------

fn batch(epoch: u64, jobs: usize) -> WorkerEvent {
    use qo_core::{
        event::{BatchEvent, JobEvent},
        job::{Job, Origin},
    };
    WorkerEvent::Batch(BatchEvent {
        jobs: (0..jobs)
            .map(|i| JobEvent {
                job: Job::parse(r#"{"path":"/x"}"#).expect("job"),
                origin: Origin {
                    message_id: format!("m-{i}"),
                    attempt: 0,
                    throttled: 0,
                    enqueued_at: None,
                    group_id: None,
                    dedup_id: None,
                    function: None,
                },
                slot_at: START.plus(Duration::from_millis(1_000 * i as u64)),
                epoch,
                dispatched_at: START,
            })
            .collect(),
    })
}

#[tokio::test(start_paused = true)]
async fn a_batch_holds_one_environment_until_its_handler_returns_and_is_billed_once() {
    let c = clock();
    // The batch's handler runs 3 s (its last slot); a health check takes no time.
    let (log, handler) = probe(
        c.clone(),
        |epoch| {
            if epoch == 7 {
                Duration::from_secs(3)
            } else {
                Duration::ZERO
            }
        },
        never,
    );
    let options = fixed(InvokerOptions {
        concurrency: Some(1),
        ..InvokerOptions::default()
    });
    let inv = LocalInvoker::with_options(c.clone(), handler, options).expect("options");
    inv.invoke(&batch(7, 4)).await.expect("accepted");
    inv.invoke(&event(8)).await.expect("accepted");
    inv.wait_idle().await;
    // One run for the four jobs: 10 ms queue delay + 22 ms init, then 3 s. The health check,
    // tried at 10 ms, is throttled while the batch holds the only environment, and runs only
    // after the batch's handler has returned (3.032 s).
    assert_eq!(Log::times_of(&log, 7), [32]);
    let after = Log::times_of(&log, 8);
    assert_eq!(after.len(), 1);
    assert!(
        after[0] >= 3_032,
        "ran while the batch held the environment: {after:?}"
    );
    let s = inv.stats();
    assert_eq!((s.delivered, s.completed, s.cold_starts), (2, 2, 1));
    // Billed once for the batch (init included: 22 + 3000 ms) and once for the check (0 ms).
    assert_eq!(s.billed_ms, 3_022);
}
