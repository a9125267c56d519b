//! The worker pool: jobs spread across the functions of `WORKER_FUNCTION_NAMES`, a job one
//! function had answered 429 or failed is next called through another, and a per-function
//! tier (`5/s per function`) holds for each function while the shared tiers hold for all.
//!
//! Each function is its own [`LocalInvoker`] (its own execution environments) behind a
//! [`PoolInvoker`]; its stand-in worker waits for the slot, records the call with the
//! function's name, and re-queues a failed or throttled job naming itself in
//! `Origin::function`, as the worker does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use qo_core::ports::{JobSink, PoolInvoker};
use qo_core::{Clock, Origin, Timestamp, TokioClock, WorkerEvent};
use qo_memory::{InvokerOptions, LocalInvoker, MemoryQueue, MemoryStore, QueueOptions};
use qo_orchestrator::{OrchestratorConfig, RunReport};

use crate::support::{
    close_on_health_check, config, max_in_window, open_circuit, ports, record_throttle, run_for,
    start,
};

/// One call: the function that made it, when, the job's path.
#[derive(Clone, Debug)]
struct Call {
    function: String,
    at: Timestamp,
    path: String,
}

/// What the API does with a call.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Ok,
    /// A 5xx: re-queued after 1 s, attempt raised.
    Fail,
    /// A 429 with Retry-After 1 s: the back-off in the control record, re-queued after it.
    Throttle,
}

type Verdict = Arc<dyn Fn(&str, &Call, &[Call]) -> Answer + Send + Sync>;

struct Pool {
    clock: Arc<TokioClock>,
    queue: MemoryQueue,
    store: MemoryStore,
    invoker: PoolInvoker<LocalInvoker>,
    calls: Arc<Mutex<Vec<Call>>>,
    names: Vec<String>,
    /// Worker events delivered (a batch counts once).
    events: Arc<std::sync::atomic::AtomicUsize>,
    /// The function each health check went through, in order.
    health: Arc<Mutex<Vec<String>>>,
}

impl Pool {
    /// A pool of `n` functions whose API answers as `verdict` says (given the function, the
    /// call, and every call before it).
    fn new(n: usize, verdict: Verdict) -> Pool {
        Pool::with_options(n, verdict, InvokerOptions::template())
    }

    /// [`Pool::new`], each function's Lambda behaving as `options` say.
    fn with_options(n: usize, verdict: Verdict, options: InvokerOptions) -> Pool {
        let clock = Arc::new(TokioClock::starting_at(start()));
        let queue = MemoryQueue::with_options(clock.clone(), QueueOptions::template());
        let store = MemoryStore::new();
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let names: Vec<String> = (1..=n).map(|i| format!("qo-worker-{i}")).collect();
        let events: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let health: Arc<Mutex<Vec<String>>> = Arc::default();
        let members = names
            .iter()
            .map(|name| {
                let handler = stand_in(
                    name.clone(),
                    clock.clone(),
                    queue.clone(),
                    store.clone(),
                    calls.clone(),
                    verdict.clone(),
                    events.clone(),
                    health.clone(),
                );
                let invoker =
                    LocalInvoker::with_options(clock.clone(), Arc::new(handler), options.clone())
                        .expect("options");
                (name.clone(), invoker)
            })
            .collect();
        Pool {
            clock,
            queue,
            store,
            invoker: PoolInvoker::new(members),
            calls,
            names,
            events,
            health,
        }
    }

    fn config(&self, quota: &str) -> OrchestratorConfig {
        let mut c = config(quota);
        c.worker_functions = self.names.clone();
        c
    }

    fn enqueue(&self, n: usize) {
        for i in 0..n {
            self.queue.send(format!(r#"{{"path":"/items/{i}"}}"#));
        }
    }

    async fn run_for(&self, config: &OrchestratorConfig, d: Duration) -> RunReport {
        let ports = ports(&self.queue, &self.store, &self.invoker, &self.clock);
        let report = run_for(ports, config, d).await;
        for (_, member) in self.invoker.members() {
            member.wait_idle().await;
        }
        report
    }

    /// `jobs` jobs on the queue, then a run of `d` at `quota`; every call made, by time.
    async fn drive(&self, jobs: usize, quota: &str, d: Duration) -> Vec<Call> {
        self.enqueue(jobs);
        self.run_for(&self.config(quota), d).await;
        self.calls()
    }

    fn calls(&self) -> Vec<Call> {
        let mut c = self.calls.lock().expect("calls").clone();
        c.sort_by_key(|c| c.at);
        c
    }
}

/// The stand-in worker of function `name`. A health check through the first function
/// (`qo-worker-1`) gets no answer, as if the API blocked its address; through any other it
/// closes the circuit.
#[allow(clippy::too_many_arguments)]
fn stand_in(
    name: String,
    clock: Arc<TokioClock>,
    queue: MemoryQueue,
    store: MemoryStore,
    calls: Arc<Mutex<Vec<Call>>>,
    verdict: Verdict,
    events: Arc<std::sync::atomic::AtomicUsize>,
    health: Arc<Mutex<Vec<String>>>,
) -> impl Fn(WorkerEvent) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
+ Send
+ Sync
+ 'static {
    move |ev: WorkerEvent| {
        let (name, clock, queue, store, calls, verdict, events, health) = (
            name.clone(),
            clock.clone(),
            queue.clone(),
            store.clone(),
            calls.clone(),
            verdict.clone(),
            events.clone(),
            health.clone(),
        );
        Box::pin(async move {
            // A batch's jobs in slot order, each at its own slot.
            let jobs = match ev {
                WorkerEvent::Job(job) => vec![job],
                WorkerEvent::Batch(batch) => batch.jobs,
                WorkerEvent::HealthCheck(h) => {
                    health.lock().expect("health").push(name.clone());
                    if name != "qo-worker-1" {
                        close_on_health_check(&store, h.epoch, clock.now()).await;
                    }
                    return;
                }
                WorkerEvent::Deliver(_) => return,
            };
            events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for job in jobs {
                clock.sleep_until(job.slot_at).await;
                let call = Call {
                    function: name.clone(),
                    at: clock.now(),
                    path: job.job.path.clone(),
                };
                let answer = {
                    let mut all = calls.lock().expect("calls");
                    let answer = verdict(&name, &call, &all);
                    all.push(call.clone());
                    answer
                };
                let next = match answer {
                    Answer::Ok => continue,
                    Answer::Fail => Origin {
                        attempt: job.origin.attempt + 1,
                        ..job.origin.clone()
                    },
                    Answer::Throttle => {
                        let now = clock.now();
                        let until = now.plus(Duration::from_secs(1));
                        record_throttle(&store, now, until, job.slot_at).await;
                        Origin {
                            throttled: job.origin.throttled + 1,
                            ..job.origin.clone()
                        }
                    }
                };
                // As the worker does (Retry::tried_by): the re-queue names this function.
                let next = Origin {
                    function: Some(name.clone()),
                    ..next
                };
                let body = serde_json::to_string(&job.job).expect("json");
                queue
                    .requeue(&body, &next, Duration::from_secs(1))
                    .await
                    .expect("requeue");
            }
        })
    }
}

/// The times of the calls through `function`.
fn times_of(calls: &[Call], function: &str) -> Vec<Timestamp> {
    calls
        .iter()
        .filter(|c| c.function == function)
        .map(|c| c.at)
        .collect()
}

/// Whether `call` is its job's first.
fn first_call(call: &Call, before: &[Call]) -> bool {
    !before.iter().any(|c| c.path == call.path)
}

#[tokio::test(start_paused = true)]
async fn a_job_throttled_or_failed_by_one_function_is_next_called_through_another() {
    // Every job's first call fails (every third one: a 429); its second succeeds.
    let verdict: Verdict = Arc::new(|_, call, before| {
        if !first_call(call, before) {
            Answer::Ok
        } else if call.path.ends_with('0') || call.path.ends_with('3') {
            Answer::Throttle
        } else {
            Answer::Fail
        }
    });
    let pool = Pool::new(3, verdict);
    let calls = pool.drive(60, "10/s", Duration::from_secs(120)).await;
    assert_eq!(calls.len(), 120, "each job twice");
    for job in 0..60 {
        let path = format!("/items/{job}");
        let tries: Vec<&Call> = calls.iter().filter(|c| c.path == path).collect();
        assert_eq!(tries.len(), 2, "{path}: {tries:?}");
        assert_ne!(
            tries[0].function, tries[1].function,
            "{path} was retried through the function that failed it"
        );
    }
    // Spread across the pool: each function made a third of the calls, give or take a few.
    for name in &pool.names {
        let n = calls.iter().filter(|c| &c.function == name).count();
        assert!((35..=45).contains(&n), "{name} made {n} of 120 calls");
    }
    assert!(pool.queue.is_drained(), "{:?}", pool.queue.depths());
}

/// The pace of `calls` from the first to the last, calls a second.
fn rate_of(calls: &[Call]) -> f64 {
    let (Some(first), Some(last)) = (calls.first(), calls.last()) else {
        return 0.0;
    };
    (calls.len() - 1) as f64 / last.at.since(first.at).as_secs_f64()
}

#[tokio::test(start_paused = true)]
async fn each_function_keeps_to_its_own_concurrency_cap_and_the_pool_adds_them_up() {
    // Two functions, each reserving 2 (its Lambda runs at most 2 events at once;
    // WORKER_FUNCTION_CONCURRENCY_CAP 2). An event counts from its dispatch until a second
    // after its slot, so each function has at most 2 slots in any second, and the pool, with
    // 4 events in progress, about twice what the same cap over the whole pool allows. One job
    // per event, so that events are calls.
    let ok: Verdict = Arc::new(|_, _, _| Answer::Ok);
    let reserved = InvokerOptions {
        concurrency: Some(2),
        ..InvokerOptions::template()
    };
    let run = async |per_function: bool| {
        let pool = Pool::with_options(2, ok.clone(), reserved.clone());
        let mut c = pool.config("20/s");
        c.batch_max_jobs = 1;
        if per_function {
            c.worker_function_concurrency_cap = Some(2);
        } else {
            c.worker_concurrency_cap = Some(2);
        }
        pool.enqueue(40);
        pool.run_for(&c, Duration::from_secs(60)).await;
        let calls = pool.calls();
        assert_eq!(calls.len(), 40, "every job called once");
        assert!(pool.queue.is_drained(), "{:?}", pool.queue.depths());
        for (name, member) in pool.invoker.members() {
            let stats = member.stats();
            assert_eq!(stats.throttled, 0, "{name}: {stats:?}");
            let most = max_in_window(&times_of(&calls, name), Duration::from_secs(1));
            assert!(most <= 2, "{name}: {most} slots in a second");
        }
        rate_of(&calls)
    };
    let per_function = run(true).await;
    let whole_pool = run(false).await;
    println!("per function: {per_function:.3}/s; the same cap over the pool: {whole_pool:.3}/s");
    // Each function under 2 a second (the cap's own bound), and together over 3.
    assert!((3.0..4.0).contains(&per_function), "{per_function:.3}/s");
    assert!(
        per_function > 1.6 * whole_pool,
        "{per_function:.3}/s against {whole_pool:.3}/s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_for_another_function_to_have_room_rather_than_go_back() {
    // Two functions reserving 1 each; every first call through qo-worker-1 fails. Its jobs'
    // retries must go through qo-worker-2 and wait while it is busy, while fresh jobs keep
    // qo-worker-1 busy.
    let verdict: Verdict = Arc::new(|function, call, before| {
        if function == "qo-worker-1" && first_call(call, before) {
            Answer::Fail
        } else {
            Answer::Ok
        }
    });
    let reserved = InvokerOptions {
        concurrency: Some(1),
        ..InvokerOptions::template()
    };
    let pool = Pool::with_options(2, verdict, reserved);
    let mut c = pool.config("20/s");
    c.batch_max_jobs = 1;
    c.worker_function_concurrency_cap = Some(1);
    pool.enqueue(20);
    pool.run_for(&c, Duration::from_secs(120)).await;
    let calls = pool.calls();
    for job in 0..20 {
        let path = format!("/items/{job}");
        let tries: Vec<&Call> = calls.iter().filter(|c| c.path == path).collect();
        let last = tries.last().expect("called");
        assert_eq!(last.function, "qo-worker-2", "{path}: {tries:?}");
        assert!(tries.len() <= 2, "{path}: {tries:?}");
    }
    for (name, member) in pool.invoker.members() {
        assert_eq!(member.stats().throttled, 0, "{name}: {:?}", member.stats());
    }
    assert!(pool.queue.is_drained(), "{:?}", pool.queue.depths());
}

#[tokio::test(start_paused = true)]
async fn a_per_function_tier_holds_for_each_function_and_the_shared_tier_for_all() {
    // Per function 5/s, shared 8/s, two functions. Every job's first call through
    // qo-worker-1 fails, so its retry must go through qo-worker-2: the second function has
    // more to do than half the pace, and its own tier binds.
    let verdict: Verdict = Arc::new(|function, call, before| {
        if function == "qo-worker-1" && first_call(call, before) {
            Answer::Fail
        } else {
            Answer::Ok
        }
    });
    let pool = Pool::new(2, verdict);
    let calls = pool
        .drive(300, "8/s,5/s per function", Duration::from_secs(300))
        .await;
    let times: Vec<Timestamp> = calls.iter().map(|c| c.at).collect();
    let second = Duration::from_secs(1);
    // The shared tier, over all calls.
    let total = max_in_window(&times, second);
    assert!(total <= 8, "{total} calls in a second across the pool");
    // Each function's own tier.
    for name in &pool.names {
        let most = max_in_window(&times_of(&calls, name), second);
        assert!(most <= 5, "{name}: {most} calls in a second");
    }
    // Every job done; the retries all went through the second function.
    let done: std::collections::BTreeSet<&str> = calls.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(done.len(), 300);
    let by_second = calls.iter().filter(|c| c.function == "qo-worker-2").count();
    assert!(
        by_second > calls.len() / 2,
        "{by_second} of {} calls",
        calls.len()
    );
    // The shared pace used: at least 99% of 8/s while fresh jobs were waiting (from the first
    // call to the last job's first call; after it only the retries are left, and they may go
    // through the second function only, at its 5/s).
    let last_fresh = calls
        .iter()
        .enumerate()
        .filter(|(i, c)| first_call(c, &calls[..*i]))
        .map(|(_, c)| c.at)
        .max()
        .expect("calls");
    let busy = times.iter().filter(|t| **t <= last_fresh).count();
    let span = last_fresh.since(times[0]).as_secs_f64();
    let rate = (busy - 1) as f64 / span;
    println!(
        "{} calls; {busy} in {span:.3} s while fresh jobs waited: {rate:.3}/s; most in a second: {total} in all, per function {per:?}",
        calls.len(),
        per = pool
            .names
            .iter()
            .map(|n| max_in_window(&times_of(&calls, n), second))
            .collect::<Vec<_>>()
    );
    assert!(rate >= 0.99 * 8.0, "rate {rate:.3}/s over {busy} calls");
    assert!(pool.queue.is_drained(), "{:?}", pool.queue.depths());
}

#[tokio::test(start_paused = true)]
async fn batches_through_a_pool_keep_each_function_s_tier() {
    // Batches of up to 10 within the window, two functions at 5/s each under a shared 8/s: a
    // batch goes through one function, and each of its slots conforms to that function's own
    // tier as well as to the shared one.
    let pool = Pool::new(2, Arc::new(|_, _, _| Answer::Ok));
    pool.enqueue(200);
    let mut cfg = pool.config("8/s,5/s per function");
    cfg.batch_max_jobs = 10;
    pool.run_for(&cfg, Duration::from_secs(120)).await;
    let calls = pool.calls();
    let second = Duration::from_secs(1);
    let times: Vec<Timestamp> = calls.iter().map(|c| c.at).collect();
    assert!(max_in_window(&times, second) <= 8);
    for name in &pool.names {
        let own = times_of(&calls, name);
        let most = max_in_window(&own, second);
        assert!(most <= 5, "{name}: {most} calls in a second");
        assert!(own.len() >= 80, "{name}: {} calls", own.len());
    }
    assert_eq!(calls.len(), 200, "each job called once");
    let events = pool.events.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        events <= calls.len() / 2,
        "{events} events for {} calls",
        calls.len()
    );
    let rate = (times.len() - 1) as f64 / times[times.len() - 1].since(times[0]).as_secs_f64();
    assert!(rate >= 0.99 * 8.0, "rate {rate:.3}/s");
    assert!(pool.queue.is_drained(), "{:?}", pool.queue.depths());
}

#[tokio::test(start_paused = true)]
async fn batches_through_a_pool_whose_own_tiers_bind_move_no_slot() {
    // Two functions at 8/s each under a shared 20/s: the functions' tiers are the bound, so a
    // group's later slots must fit the function its earlier ones went through. The loop
    // asserts (in a debug build) that the pool takes each slot exactly as the decision gave
    // it; a group built on the pool's state before its own slots moved them later.
    let pool = Pool::new(2, Arc::new(|_, _, _| Answer::Ok));
    pool.enqueue(320);
    let mut cfg = pool.config("20/s,8/s per function");
    cfg.batch_max_jobs = 10;
    pool.run_for(&cfg, Duration::from_secs(120)).await;
    let calls = pool.calls();
    let second = Duration::from_secs(1);
    let times: Vec<Timestamp> = calls.iter().map(|c| c.at).collect();
    assert_eq!(calls.len(), 320, "each job called once");
    for name in &pool.names {
        let most = max_in_window(&times_of(&calls, name), second);
        assert!(most <= 8, "{name}: {most} calls in a second");
    }
    let rate = (times.len() - 1) as f64 / times[times.len() - 1].since(times[0]).as_secs_f64();
    assert!(rate >= 0.99 * 16.0, "rate {rate:.3}/s");
}

#[tokio::test(start_paused = true)]
async fn health_checks_go_through_the_pool_in_turn() {
    // The circuit is open; a health check through the first function gets no answer (its
    // address blocked), so the next goes through the second, which closes the circuit.
    let pool = Pool::new(2, Arc::new(|_, _, _| Answer::Ok));
    pool.enqueue(20);
    open_circuit(&pool.store, pool.clock.now()).await;
    let report = pool
        .run_for(&pool.config("10/s"), Duration::from_secs(120))
        .await;
    let health = pool.health.lock().expect("health").clone();
    assert_eq!(health, ["qo-worker-1", "qo-worker-2"], "{health:?}");
    assert_eq!(report.health_checks, 2);
    assert_eq!(
        report.dispatched, 20,
        "the circuit closed and the backlog drained"
    );
}
