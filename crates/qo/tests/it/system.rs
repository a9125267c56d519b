//! The whole system on tokio's paused clock: the real orchestrator loop and the real worker,
//! wired by `qo::system`, over the in-memory adapters with the template's queue and function
//! settings, against a strict rolling-window API in memory. Minutes of dispatching run in
//! milliseconds, deterministically, with Lambda's duplicate deliveries and failed invokes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use qo_core::result::{Destinations, ResultOutcome};
use qo_core::{Clock, Job, NoObserver, QuotaSpec, Timestamp, TokioClock};
use qo_memory::{InvokerOptions, MemoryQueue, MemoryResults, MemoryStore, QueueOptions};
use qo_orchestrator::OrchestratorConfig;
use qo_worker::{ApiResponse, HttpCall, HttpError, WorkerConfig, WorkerError};

use qo::system::{Parts, System};

/// A strict API: at most `limit` accepted calls in any second, `Retry-After: 1` past it.
struct StrictApi {
    clock: Arc<TokioClock>,
    limit: usize,
    accepted: Mutex<VecDeque<Timestamp>>,
    /// Every call: when, and the job's path.
    calls: Mutex<Vec<(Timestamp, String, u16)>>,
    /// When set, the `n`th call (from 0) is answered 429 with this `Retry-After`.
    retry_after_at: Mutex<Option<(usize, &'static str)>>,
}

impl StrictApi {
    fn answer(&self, path: &str) -> ApiResponse {
        let now = self.clock.now();
        let mut accepted = self.accepted.lock().expect("accepted");
        while accepted
            .front()
            .is_some_and(|a| a.plus(Duration::from_secs(1)) <= now)
        {
            accepted.pop_front();
        }
        let n = self.calls.lock().expect("calls").len();
        let wait = match *self.retry_after_at.lock().expect("retry after") {
            Some((at, wait)) if at == n => Some(wait),
            _ => None,
        };
        let response = if let Some(wait) = wait {
            ApiResponse {
                retry_after: Some(wait.to_string()),
                ..ApiResponse::status(429)
            }
        } else if accepted.len() < self.limit {
            accepted.push_back(now);
            ApiResponse::status(200)
        } else {
            ApiResponse {
                retry_after: Some("1".to_string()),
                ..ApiResponse::status(429)
            }
        };
        self.calls
            .lock()
            .expect("calls")
            .push((now, path.to_string(), response.status));
        response
    }

    /// How many times each path was answered 2xx.
    fn successes(&self) -> BTreeMap<String, usize> {
        let mut by_path = BTreeMap::new();
        for (_, path, status) in self.calls.lock().expect("calls").iter() {
            if *status == 200 {
                *by_path.entry(path.clone()).or_insert(0) += 1;
            }
        }
        by_path
    }

    fn accepted_times(&self) -> Vec<Timestamp> {
        let calls = self.calls.lock().expect("calls");
        calls.iter().filter(|c| c.2 == 200).map(|c| c.0).collect()
    }

    fn throttled(&self) -> usize {
        let calls = self.calls.lock().expect("calls");
        calls.iter().filter(|c| c.2 == 429).count()
    }
}

#[async_trait]
impl HttpCall for StrictApi {
    async fn call(&self, job: &Job) -> Result<ApiResponse, HttpError> {
        Ok(self.answer(&job.path))
    }

    async fn health(&self) -> Result<ApiResponse, HttpError> {
        Ok(self.answer("/health"))
    }

    fn set_api_key(&self, _key: Option<&str>) -> Result<bool, WorkerError> {
        Ok(false)
    }
}

type Rig = System<MemoryQueue, MemoryStore>;

/// The system at a quota of 20/s against an API that allows `limit` a second, with Lambda
/// delivering 5% of events twice and failing 2% of invokes.
fn rig(limit: usize) -> (Rig, Arc<StrictApi>) {
    rig_batched(limit, qo_orchestrator::config::DEFAULT_BATCH_MAX_JOBS)
}

/// As [`rig`], with up to `batch_max_jobs` jobs in one worker invocation.
fn rig_batched(limit: usize, batch_max_jobs: usize) -> (Rig, Arc<StrictApi>) {
    rig_with(limit, batch_max_jobs, None)
}

/// As [`rig_batched`], every job's result delivered to `results` when given (the stack's one
/// destination, `orders`, the default).
fn rig_with(
    limit: usize,
    batch_max_jobs: usize,
    results: Option<MemoryResults>,
) -> (Rig, Arc<StrictApi>) {
    let clock = Arc::new(TokioClock::system());
    let api = Arc::new(StrictApi {
        clock: clock.clone(),
        limit,
        accepted: Mutex::default(),
        calls: Mutex::default(),
        retry_after_at: Mutex::default(),
    });
    let mut worker = WorkerConfig::new("http://api.invalid".parse().expect("url"));
    let mut orchestrator =
        OrchestratorConfig::with_quota("20/s".parse::<QuotaSpec>().expect("quota"));
    orchestrator.idle_exit = Some(Duration::from_secs(2));
    orchestrator.batch_max_jobs = batch_max_jobs;
    if results.is_some() {
        let d = Destinations::parse("arn:aws:sqs:us-east-1:123456789012:orders", "orders");
        worker.destinations = d.expect("destinations");
        orchestrator.destinations = worker.destinations.clone();
    }
    let system = System::assemble(Parts {
        clock: clock.clone(),
        queue: MemoryQueue::with_options(clock.clone(), QueueOptions::template()),
        store: MemoryStore::new(),
        http: vec![api.clone()],
        worker,
        orchestrator,
        invoker: InvokerOptions {
            duplicate_rate: 0.05,
            fail_rate: 0.02,
            seed: 7,
            ..InvokerOptions::template()
        },
        observer: Arc::new(NoObserver),
        results: results.map(|r| Arc::new(r) as Arc<dyn qo_core::ports::ResultSink>),
        around: None,
    })
    .expect("system");
    (system, api)
}

/// Enqueues `jobs` jobs and runs minute-long orchestrator runs until the API accepted every
/// job or `limit` passed.
async fn drive(system: &Rig, api: &StrictApi, jobs: usize, limit: Duration) {
    let clock = system.clock().clone();
    for i in 0..jobs {
        system.queue().send(format!(r#"{{"path":"/items/{i}"}}"#));
    }
    let give_up = clock.now().plus(limit);
    while api.successes().len() < jobs && clock.now() < give_up {
        let deadline = clock.now().plus(Duration::from_secs(60));
        system.run_until(deadline).await.expect("run");
    }
    system.wait_idle().await;
}

/// The most of `times` (sorted) in any window of length `w`.
fn max_in_window(times: &[Timestamp], w: Duration) -> usize {
    let Some(first) = times.first() else {
        return 0;
    };
    let offsets: Vec<Duration> = times.iter().map(|t| t.since(*first)).collect();
    qo_sim::max_in_window(&offsets, w)
}

#[tokio::test(start_paused = true)]
async fn every_job_is_called_once_within_the_quota_despite_duplicates_and_failed_invokes() {
    let _one = crate::ONE_AT_A_TIME.lock().await;
    let (system, api) = rig(20);
    drive(&system, &api, 400, Duration::from_secs(600)).await;
    let successes = api.successes();
    assert_eq!(successes.len(), 400, "every job reached the API");
    assert!(
        successes.values().all(|n| *n == 1),
        "a job called twice: {:?}",
        successes
            .iter()
            .filter(|(_, n)| **n > 1)
            .collect::<Vec<_>>()
    );
    assert_eq!(api.throttled(), 0, "no 429 at the API's own limit");
    let ok = api.accepted_times();
    assert!(max_in_window(&ok, Duration::from_secs(1)) <= 20);
    let span = ok[ok.len() - 1].since(ok[0]).as_secs_f64();
    let rate = (ok.len() - 1) as f64 / span;
    assert!(rate >= 0.95 * 20.0, "{rate:.2}/s");
}

/// The results' destination refuses every delivery for its first 5 minutes: each result is
/// kept on the queue and handed back (no slot, no call) until the destination recovers, so
/// every job's result arrives, and the API was called once per job.
#[tokio::test(start_paused = true)]
async fn a_destination_down_for_a_while_gets_every_result_once_it_recovers() {
    let _one = crate::ONE_AT_A_TIME.lock().await;
    let results = MemoryResults::new();
    let (system, api) = rig_with(
        20,
        qo_orchestrator::config::DEFAULT_BATCH_MAX_JOBS,
        Some(results.clone()),
    );
    let clock = system.clock().clone();
    let recovers = clock.now().plus(Duration::from_secs(300));
    results.refuse_until(clock.clone(), recovers);
    drive(&system, &api, 100, Duration::from_secs(120)).await;
    assert_eq!(api.successes().len(), 100, "every job was called");
    assert!(
        results.delivered().is_empty(),
        "nothing is delivered while it is down"
    );
    let give_up = clock.now().plus(Duration::from_secs(3_600));
    while results.delivered().len() < 100 && clock.now() < give_up {
        let deadline = clock.now().plus(Duration::from_secs(60));
        system.run_until(deadline).await.expect("run");
    }
    system.wait_idle().await;
    let delivered = results.delivered();
    let mut ids: Vec<&str> = delivered.iter().map(|d| d.result.job_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 100, "every job's result arrived");
    assert!(
        delivered
            .iter()
            .all(|d| d.result.outcome == ResultOutcome::Succeeded)
    );
    assert!(
        results.refused() >= 100,
        "each was refused first: {}",
        results.refused()
    );
    assert!(
        api.successes().values().all(|n| *n == 1),
        "the API was called once per job"
    );
    assert!(
        system.queue().dead_letters().is_empty(),
        "none was given up on"
    );
}

#[tokio::test(start_paused = true)]
async fn the_real_worker_and_orchestrator_learn_a_tighter_limit() {
    let _one = crate::ONE_AT_A_TIME.lock().await;
    // Quota 20/s, the API allows 15/s: the worker's 429s steer the orchestrator's pace, one
    // job an invocation.
    learn_a_tighter_limit(rig_batched(15, 1)).await;
}

#[tokio::test(start_paused = true)]
async fn the_real_worker_in_batches_learns_a_tighter_limit_too() {
    let _one = crate::ONE_AT_A_TIME.lock().await;
    // As above with the default, batches of up to 20 in 2 s while the pace is settled: the
    // first batch's later slots are already sent when a 429 comes.
    learn_a_tighter_limit(rig(15)).await;
}

/// 600 jobs through `rig` (quota 20/s, the API's limit 15/s): each succeeds once, at most 3%
/// of calls are answered 429, and the rate is at least 90% of the limit.
async fn learn_a_tighter_limit((system, api): (Rig, Arc<StrictApi>)) {
    drive(&system, &api, 600, Duration::from_secs(900)).await;
    let successes = api.successes();
    assert_eq!(successes.len(), 600);
    assert!(successes.values().all(|n| *n == 1));
    let calls = api.calls.lock().expect("calls").len();
    let throttled = api.throttled();
    let ok = api.accepted_times();
    let rate = (ok.len() - 1) as f64 / ok[ok.len() - 1].since(ok[0]).as_secs_f64();
    eprintln!("limit 15/s, quota 20/s: {rate:.2}/s, {throttled} of {calls} calls throttled");
    assert!(
        throttled as f64 <= 0.03 * calls as f64,
        "{throttled} of {calls}"
    );
    assert!(rate >= 0.9 * 15.0, "{rate:.2}/s");
}

#[tokio::test(start_paused = true)]
async fn a_long_retry_after_holds_back_every_batch_already_sent() {
    let _one = crate::ONE_AT_A_TIME.lock().await;
    // The 200th call is answered 429 with `Retry-After: 150`, in full flow; batches of 10
    // commit their slots up to a second ahead, in invocations the 429 never reached: each
    // reads the shared back-off before its later slots and holds them back.
    let (system, api) = rig_batched(20, 10);
    *api.retry_after_at.lock().expect("retry after") = Some((200, "150"));
    drive(&system, &api, 400, Duration::from_secs(900)).await;
    let successes = api.successes();
    assert_eq!(successes.len(), 400, "every job reached the API");
    assert!(successes.values().all(|n| *n == 1));
    let calls = api.calls.lock().expect("calls").clone();
    let throttled_at = calls[200].0;
    let through: Vec<f64> = calls[201..]
        .iter()
        .map(|c| c.0.since(throttled_at))
        .filter(|after| *after > Duration::from_millis(1_300) && *after < Duration::from_secs(150))
        .map(|after| after.as_secs_f64())
        .collect();
    // Only the first slots of invocations sent before the orchestrator read the back-off
    // (within its 1 s refresh and the 250 ms dispatch lead) may come after the 429: without
    // the batches' own reads, their later slots called 1.3 to 1.5 s after it.
    assert!(
        through.is_empty(),
        "calls through the Retry-After, at {through:?} s"
    );
}
