//! `qo local`: the whole system on this machine.
//!
//! The real orchestrator loop and the real worker logic run over the in-memory adapters; the
//! worker calls a real HTTP API over loopback: the built-in simulator, which enforces the same
//! quota (429 with Retry-After past it), or any API given with `--api-url`. The invoker hands
//! each event to the worker on its own task after a delivery delay, as Lambda's asynchronous
//! queue does. The orchestrator runs as successive runs of at most `--run-seconds`, each one
//! hydrating from the state store as a new Lambda invocation would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tracing::warn;

use qo_core::ports::{IdempotencyStore, JobSink, JobSource, LeaseStore, QueueError, RecordStore};
use qo_core::result::Destinations;
use qo_core::sqs::QueueAttributes;
use qo_core::{Clock, QuotaSpec, Timestamp, TokioClock};
use qo_memory::{
    InvokerOptions, MemoryQueue, MemoryResults, MemoryStore, QueueOptions, SqsRequests,
};
use qo_orchestrator::{OrchestratorConfig, StopReason};
use qo_sim::{HeaderScheme, LimitSchedule, Limiter, SimConfig, SimServer};
use qo_worker::{ApiClient, WorkerConfig};

#[cfg(feature = "aws")]
mod aws;
#[cfg(not(feature = "aws"))]
#[path = "local/no_aws.rs"]
mod aws;

use crate::args::Range;
use crate::cost::{Bill, PRICES, Usage};
use crate::report::{ApiSide, Collector, DispatchStats, Elsewhere, Report, ResultsSeen};
use crate::system::{Parts, System};

/// Options of `qo local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Jobs to enqueue.
    #[arg(long, default_value_t = 200)]
    jobs: u64,
    /// The quota, e.g. `10/s,500/min,20000/day@calendar`.
    #[arg(long, default_value = "20/s")]
    quota: QuotaSpec,
    /// Call this API instead of the built-in simulator.
    #[arg(long)]
    api_url: Option<String>,
    /// Built-in API: the limit it enforces instead of `--quota` (a shared key, a misdocumented
    /// limit), and when it changes: `SPEC` or `SPEC;SPEC@SECOND;...`, e.g. `20/s;10/s@30;20/s@60`
    /// (seconds from the start). Default: the quota.
    #[arg(long, conflicts_with = "api_url")]
    api_limit: Option<LimitSchedule>,
    /// Built-in API: rate-limit headers on its 2xx and 429 answers: `none`, `x-ratelimit`
    /// (X-RateLimit-Limit/-Remaining/-Reset, delta seconds) or `ietf` (RateLimit-Policy and
    /// RateLimit).
    #[arg(long, default_value = "none", conflicts_with = "api_url")]
    api_headers: HeaderScheme,
    /// Built-in API: how it counts each rolling tier of its limit: `sliding-log` (a strict
    /// rolling window), `fixed-window` (windows that reset on whole seconds or minutes),
    /// `token-bucket[:CAPACITY]` (API Gateway, Stripe; capacity default the limit) or
    /// `gcra[:BURST]` (a leaky bucket: nginx `limit_req`, Envoy, Kong; burst default 0).
    #[arg(long, default_value = "sliding-log", conflicts_with = "api_url")]
    api_limiter: Limiter,
    /// Built-in API: whether its 429s carry `Retry-After` (`false`: as many leaky buckets,
    /// they say nothing of when to come back).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, conflicts_with = "api_url")]
    api_retry_after: bool,
    /// Built-in API: calls per second another client on the same key takes out of its limit.
    #[arg(long, default_value_t = 0.0, conflicts_with = "api_url")]
    api_other_rate: f64,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Each orchestrator run lasts at most this long, then the next one hydrates.
    #[arg(long, default_value_t = 60.0)]
    run_seconds: f64,
    /// Delivery delay from invoke to worker, in milliseconds, e.g. `5..50`.
    #[arg(long, default_value = "2..40")]
    delivery_delay_ms: Range,
    /// Dispatch this long ahead of each slot (must exceed the delivery delay plus the
    /// worker's claim of the job); default 250, or 1000 with `--aws-endpoint`.
    #[arg(long)]
    dispatch_lead_ms: Option<u64>,
    /// Built-in API: fraction of calls answered 500.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Built-in API: seconds from the start during which it answers 503, e.g. `5..10`.
    #[arg(long)]
    outage: Option<Range>,
    /// Built-in API: answer the first call 429 with this `Retry-After`, in seconds (an API
    /// whose limit another client used up).
    #[arg(long)]
    first_429_retry_after_s: Option<u64>,
    /// Built-in API: latency of each answer, in milliseconds, e.g. `5..50`.
    #[arg(long, default_value = "1..5")]
    latency_ms: Range,
    /// Greedy or spread use of day/month budgets.
    #[arg(long, default_value = "greedy")]
    budget_mode: qo_core::BudgetMode,
    /// Seed of the random delays and faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600.0)]
    timeout_s: f64,
    /// The queues' redrive policy: a message received this many times moves to the
    /// dead-letter queue at its next receive (default: the template's, 10).
    #[arg(long)]
    max_receive_count: Option<u32>,
    /// Use the AWS adapters (SQS, DynamoDB) against this endpoint (e.g. a moto server)
    /// instead of the in-memory ones; the queues and the table are created there.
    #[arg(long)]
    aws_endpoint: Option<String>,
    /// Lambda: the fraction of worker events delivered twice (asynchronous delivery is at least
    /// once), each copy after its own delay.
    #[arg(long, default_value_t = 0.0)]
    duplicate_rate: f64,
    /// Jobs in one worker invocation at most (the orchestrator's BATCH_MAX_JOBS).
    #[arg(long, default_value_t = qo_orchestrator::config::DEFAULT_BATCH_MAX_JOBS as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    batch_max_jobs: u64,
    /// A batch takes the jobs whose slots fall within this many milliseconds of its first
    /// (BATCH_WINDOW_MS).
    #[arg(long, default_value_t = qo_core::job::DEFAULT_BATCH_WINDOW.as_millis() as u64)]
    batch_window_ms: u64,
    /// Each worker function's execution environments at most (its reserved concurrency; 0:
    /// unbounded), and the orchestrator's cap on each function's events in progress
    /// (WORKER_FUNCTION_CONCURRENCY_CAP), as the template sets both from `WorkerConcurrency`.
    /// Default: the template's sizing rule for this quota (the events a second x (the
    /// dispatch lead + WORKER_BUSY_MS or the slowest call, if longer), with half again to
    /// spare; in batches, while the pace is settled, fewer events hold one a window longer,
    /// and the larger count of the two is taken), at least the template's 50.
    #[arg(long)]
    worker_concurrency: Option<usize>,
    /// Worker functions in the pool (the template's WorkerFunctionCount, 1 to 4), each with
    /// its own execution environments (`--worker-concurrency` each) and, against the built-in
    /// API, its own source address (127.0.0.2, 127.0.0.3, ...), so that a tier ending in
    /// ` per function` in the API's limit holds per function as an API that limits per
    /// address enforces it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
    worker_functions: u8,
    /// Deliver every job's result (the API's answer, or why the job was given up on) to a
    /// local destination, and write each as one JSON line to FILE. The report sets results
    /// beside calls, and the run fails when a success has no result.
    #[arg(long, value_name = "FILE")]
    results: Option<std::path::PathBuf>,
    /// With `--results`: the destination refuses every delivery for this many seconds from
    /// the start, as one down for a while. Each result is kept on the queue and handed back
    /// after 60 s, then 120, 240, 480 and 900 s (no slot, no call), so the run lasts until
    /// the destination took them all.
    #[arg(
        long,
        value_name = "SECONDS",
        requires = "results",
        default_value_t = 0
    )]
    results_refuse_for: u64,
    /// With `--aws-endpoint`: serve for this many seconds (0: until Ctrl-C) instead of running
    /// a backlog. Jobs sent to the queues (`qo send`, `qo call`) are paced and called, and
    /// their results delivered to a results queue of the run's own; the variables `qo call`
    /// needs are printed first.
    #[arg(long, value_name = "SECONDS", requires = "aws_endpoint")]
    serve: Option<u64>,
}

/// Where a run delivers results over the AWS adapters (`--serve`): the sink and its
/// destinations.
pub(crate) type ServedResults = (Arc<dyn qo_core::ports::ResultSink>, Destinations);

/// The destination `--results` delivers to: one SQS queue, the default of every job.
pub const LOCAL_RESULTS_ARN: &str = "arn:aws:sqs:local:000000000000:qo-local-results";

/// One API client per worker function; with several against the built-in API (`own_address`),
/// each calls from its own loopback address (function k from 127.0.0.(k + 1)), as functions
/// behind their own NAT gateways call from their own.
fn function_clients(
    config: &WorkerConfig,
    functions: u8,
    own_address: bool,
) -> Result<Vec<ApiClient>, qo_worker::WorkerError> {
    (1..=functions)
        .map(|k| {
            let mut config = config.clone();
            if own_address && functions > 1 {
                config.local_address = Some(std::net::IpAddr::from([127, 0, 0, k + 1]));
            }
            ApiClient::new(&config, None)
        })
        .collect()
}

/// The template's sizing rule for the worker's reserved concurrency: `rate` calls a second in
/// events of up to `batch` jobs, each holding an environment for `busy`, with half again to
/// spare.
fn sized_concurrency(rate: f64, batch: usize, busy: Duration) -> usize {
    let events_per_s = rate / batch.max(1) as f64;
    (events_per_s * busy.as_secs_f64() * 1.5).ceil() as usize
}

/// Jobs of the backlog a request: SQS's most entries of a SendMessageBatch, as `qo send` sends.
const BACKLOG_BATCH: usize = qo_core::sqs::MAX_BATCH;

/// What the local run needs of a backend beyond the ports: filling and measuring the backlog.
#[async_trait::async_trait]
trait Backlog: JobSource + JobSink + Send + Sync {
    /// Enqueues new jobs as the producer (`qo send`) does: with SendMessageBatch, up to
    /// [`BACKLOG_BATCH`] a request (fewer where their payload would pass SQS's limit). Any
    /// body not enqueued is an error.
    async fn enqueue_batch(&self, bodies: Vec<String>, now: Timestamp) -> Result<(), QueueError>;
    /// Messages still on the main and retry queues (visible, in flight or delayed).
    async fn pending(&self) -> Result<u64, QueueError>;
    /// Jobs the queue ended by itself: moved to the dead-letter queue by the redrive policy
    /// (`reasoned` of the dead letters were sent there with a reason), and deleted by retention.
    async fn ended_by_queue(&self, reasoned: u64) -> Result<(u64, u64), QueueError>;
    /// The requests SQS would bill for the run so far, when the backend counts them.
    fn sqs_requests(&self) -> Option<SqsRequests> {
        None
    }
}

/// A state store that counts the request units DynamoDB would bill.
trait Metered {
    /// (write units, read units) so far, when the store counts them.
    fn request_units(&self) -> Option<(u64, u64)>;
}

impl Metered for MemoryStore {
    fn request_units(&self) -> Option<(u64, u64)> {
        let s = self.stats();
        Some((s.write_units, s.read_units))
    }
}

#[async_trait::async_trait]
impl Backlog for MemoryQueue {
    async fn enqueue_batch(&self, bodies: Vec<String>, _now: Timestamp) -> Result<(), QueueError> {
        self.send_batch(bodies);
        Ok(())
    }
    async fn pending(&self) -> Result<u64, QueueError> {
        Ok(self.depths().pending() as u64)
    }
    async fn ended_by_queue(&self, _reasoned: u64) -> Result<(u64, u64), QueueError> {
        Ok((self.redriven().len() as u64, self.expired().len() as u64))
    }
    fn sqs_requests(&self) -> Option<SqsRequests> {
        Some(self.requests())
    }
}

impl LocalArgs {
    /// `--dispatch-lead-ms`, or its default: 250 ms in memory, 1000 ms over `--aws-endpoint`
    /// (an SDK round trip to the endpoint comes before each call).
    fn dispatch_lead(&self) -> Duration {
        let default = if self.aws_endpoint.is_some() {
            1000
        } else {
            250
        };
        Duration::from_millis(self.dispatch_lead_ms.unwrap_or(default))
    }
}

/// The template's `WorkerTimeout` (s): the worker's claim TTL follows it.
const WORKER_TIMEOUT_S: u64 = 240;

/// Runs the local system and prints the report.
pub async fn run(args: LocalArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.delivery_delay_ms.max >= args.dispatch_lead().as_millis() as f64 {
        warn!(
            "the delivery delay can exceed the dispatch lead: late events are re-queued, not called"
        );
    }
    let clock = Arc::new(TokioClock::system());
    let collector = Arc::new(Collector::default());

    // The API: built in, or given.
    let sim = match &args.api_url {
        Some(_) => None,
        None => {
            let mut config = SimConfig::new(args.quota.clone());
            config.fail_rate = args.fail_rate;
            config.outage = args.outage.map(|r| r.seconds());
            config.latency = args.latency_ms.millis();
            config.seed = args.seed;
            config.first_retry_after = args.first_429_retry_after_s.map(Duration::from_secs);
            config.limit = args.api_limit.clone();
            config.headers = args.api_headers;
            config.limiter = args.api_limiter;
            config.retry_after = args.api_retry_after;
            config.other_client_rate_per_s = args.api_other_rate;
            Some(SimServer::start(config).await?)
        }
    };
    let api_url = match (&args.api_url, &sim) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => s.url(),
        (None, None) => unreachable_api()?,
    };

    match args.aws_endpoint.clone() {
        None => {
            // The adapters: in memory, shared by the orchestrator and the worker.
            let queue = MemoryQueue::with_options(
                clock.clone(),
                QueueOptions {
                    attributes: queue_attributes(&args),
                    ..QueueOptions::template()
                },
            );
            drive(
                args,
                clock,
                collector,
                sim,
                api_url,
                queue,
                MemoryStore::new(),
                None,
            )
            .await
        }
        Some(endpoint) => aws::run(args, clock, collector, sim, api_url, endpoint).await,
    }
}

/// Runs the orchestrator and the worker over `queue` and `store` until every job ended.
#[allow(clippy::too_many_arguments)]
async fn drive<Q, S>(
    args: LocalArgs,
    clock: Arc<TokioClock>,
    collector: Arc<Collector>,
    sim: Option<SimServer>,
    api_url: String,
    queue: Q,
    store: S,
    served: Option<ServedResults>,
) -> Result<(), Box<dyn std::error::Error>>
where
    Q: Backlog + Clone + 'static,
    S: RecordStore + LeaseStore + IdempotencyStore + Metered + Clone + 'static,
{
    // The worker's settings: a deployment's defaults, with a short retry delay and fast
    // health checks; the claim TTL follows the template's WorkerTimeout, as in a deployment.
    let mut worker_config = WorkerConfig::new(qo_worker::config::api_base_url(&api_url)?)
        .with_function_timeout(Duration::from_secs(WORKER_TIMEOUT_S));
    worker_config.retry_delay = Duration::from_secs(1);
    worker_config.circuit.probe_initial = Duration::from_secs(1);
    worker_config.circuit.probe_max = Duration::from_secs(8);
    // The orchestrator's: the defaults a deployment has, with the local flags.
    let mut config = OrchestratorConfig::with_quota(args.quota.clone());
    config.pacing.mode = args.budget_mode;
    config.dispatch_lead = args.dispatch_lead();
    config.stop_margin = Duration::from_millis(500);
    config.idle_exit = Some(Duration::from_secs(2));
    config.owner = "qo-local".to_string();
    config.batch_max_jobs = usize::try_from(args.batch_max_jobs).unwrap_or(usize::MAX);
    config.batch_window = Duration::from_millis(args.batch_window_ms);
    let template = InvokerOptions::template();
    let worker_concurrency = match args.worker_concurrency {
        None => template.concurrency.map(|least| {
            // Batches go only while the pace is settled, so the unbatched sizing holds too.
            let (rate, slowest) = (
                args.quota.pacing_rate_per_s(),
                Duration::from_secs_f64(args.latency_ms.max / 1000.0),
            );
            // An event counts against the orchestrator's cap from its dispatch until
            // WORKER_BUSY_MS after its last slot, and holds its environment until its last
            // call ends: the longer of the two.
            let hold = slowest.max(config.worker_busy);
            let alone = sized_concurrency(rate, 1, config.dispatch_lead + hold);
            let batched = sized_concurrency(
                rate,
                config.batch_max_jobs,
                config.dispatch_lead + config.batch_window + hold,
            );
            least.max(alone).max(batched)
        }),
        Some(0) => None,
        Some(n) => Some(n),
    };
    // Each function reserves that many, and the orchestrator keeps each within it, as the
    // template sets WORKER_FUNCTION_CONCURRENCY_CAP.
    config.worker_function_concurrency_cap = worker_concurrency;
    // --results: every job's result to one local queue, the default destination.
    let results = args.results.as_ref().map(|_| MemoryResults::new());
    if let Some(r) = &results
        && args.results_refuse_for > 0
    {
        let until = clock
            .now()
            .plus(Duration::from_secs(args.results_refuse_for));
        r.refuse_until(clock.clone(), until);
    }
    if results.is_some() {
        let destinations = Destinations::parse(LOCAL_RESULTS_ARN, "qo-local-results")?;
        worker_config.destinations = destinations.clone();
        config.destinations = destinations;
    }
    let mut sink: Option<Arc<dyn qo_core::ports::ResultSink>> = results
        .clone()
        .map(|r| Arc::new(r) as Arc<dyn qo_core::ports::ResultSink>);
    if let Some((served, destinations)) = served {
        worker_config.destinations = destinations.clone();
        config.destinations = destinations;
        sink = Some(served);
    }
    let mut dispatch = DispatchStats {
        batch_max_jobs: config.batch_max_jobs,
        batch_window_ms: args.batch_window_ms,
        worker_concurrency,
        ..DispatchStats::default()
    };
    let system = System::assemble(Parts {
        clock: clock.clone(),
        queue: queue.clone(),
        store: store.clone(),
        http: function_clients(&worker_config, args.worker_functions, sim.is_some())?,
        worker: worker_config,
        orchestrator: config,
        invoker: InvokerOptions {
            delay: args.delivery_delay_ms.millis(),
            seed: args.seed,
            concurrency: worker_concurrency,
            duplicate_rate: args.duplicate_rate,
            ..template
        },
        observer: collector.clone(),
        results: sink,
        around: None,
    })?;

    if let Some(secs) = args.serve {
        return serve(&system, &clock, &collector, secs, args.run_seconds).await;
    }

    // The backlog, sent as `qo send` sends it: 10 jobs a SendMessageBatch.
    let bodies: Vec<String> = (0..args.jobs)
        .map(|i| format!(r#"{{"path":"/items/{i}"}}"#))
        .collect();
    for group in bodies.chunks(BACKLOG_BATCH) {
        queue.enqueue_batch(group.to_vec(), clock.now()).await?;
    }

    let bar = progress_bar(args.jobs);
    let started = Instant::now();
    let give_up = started + Duration::from_secs_f64(args.timeout_s);
    let mut runs = 0u64;
    let mut orchestrator_ms = 0u64;
    let ticker = {
        let bar = bar.clone();
        let collector = collector.clone();
        tokio::spawn(async move {
            loop {
                let c = collector.counts();
                bar.set_position(c.succeeded + c.dead_lettered);
                let rate = recent_rate(&c.success_times);
                let circuit = c.circuit.map_or("closed", |p| p.as_str());
                bar.set_message(format!(
                    "{rate:.1}/s  circuit {circuit}  429s {}",
                    c.throttled
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let elsewhere = |reasoned: u64| {
        let queue = queue.clone();
        let failures = system.failures().len() as u64;
        async move {
            let (by_sqs, expired) = queue.ended_by_queue(reasoned).await?;
            Ok::<_, QueueError>(Elsewhere {
                dead_lettered_by_sqs: by_sqs,
                expired,
                worker_failures: failures,
                pending: queue.pending().await?,
            })
        }
    };
    // With results, kept ones wait on the queue for a later delivery: the run goes on until
    // none is left.
    let with_results = args.results.is_some();
    while (collector.finished() + elsewhere(collector.counts().dead_lettered).await?.ended()
        < args.jobs
        || (with_results && queue.pending().await? > 0))
        && Instant::now() < give_up
    {
        runs += 1;
        let run_started = clock.now();
        let deadline = run_started.plus(Duration::from_secs_f64(args.run_seconds));
        let report = system.run_until(deadline).await?;
        dispatch.add(&report);
        orchestrator_ms += clock.now().since(run_started).as_millis() as u64;
        if let StopReason::Exhausted { until } = report.stopped {
            bar.println(format!("a budget is used up until {until}; stopping"));
            break;
        }
        if report.dispatched == 0 && queue.pending().await? == 0 {
            // Nothing left anywhere: wait for the last deliveries.
            system.wait_idle().await;
            if queue.pending().await? == 0 {
                break;
            }
        }
    }
    system.wait_idle().await;
    ticker.abort();
    let counts = collector.counts();
    bar.set_position(counts.succeeded + counts.dead_lettered);
    bar.finish_and_clear();

    let mut report = Report::new(args.jobs, &counts, started.elapsed(), &args.quota, runs);
    report.account(elsewhere(counts.dead_lettered).await?);
    report.dispatch = Some(dispatch);
    let mut result_sizes = Vec::new();
    if let (Some(path), Some(sink)) = (&args.results, &results) {
        let delivered = sink.delivered();
        let mut lines = String::new();
        for d in &delivered {
            let line = d.result.to_json();
            result_sizes.push(line.len());
            lines.push_str(&line);
            lines.push('\n');
        }
        std::fs::write(path, lines).map_err(|e| format!("writing {}: {e}", path.display()))?;
        report.results = Some(ResultsSeen::of(&delivered, &counts, path));
    }
    if let (Some(sqs), Some(units)) = (queue.sqs_requests(), store.request_units()) {
        let invoker = system.invoker_stats();
        let usage = Usage::new(
            invoker.delivered,
            invoker.billed_ms,
            runs,
            orchestrator_ms,
            sqs,
            units,
        );
        let usage = usage.with_results(result_sizes);
        report.bill = Some(Bill::price(usage, counts.succeeded, &PRICES));
    }
    if let Some(sim) = &sim {
        let api = ApiSide {
            limit: sim.limit().clone(),
            other_rate_per_s: sim.config().other_client_rate_per_s,
            stats: sim.stats(),
            records: sim.records(),
        };
        report.api_side(&api, sim.started_at(), &args.quota, &counts);
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.human());
        if let Some(sim) = &sim {
            println!(
                "  API at {} answered {} calls, {} of them 429",
                sim.url(),
                sim.stats().calls,
                sim.stats().throttled
            );
        }
    }
    match report.lost() {
        None => Ok(()),
        Some(why) => Err(format!("not every job ended as a job should: {why}").into()),
    }
}

/// `--serve`: orchestrator runs one after another until `secs` have passed (0: until Ctrl-C),
/// each hydrating as a new Lambda invocation does; then a one-line account.
async fn serve<Q, S>(
    system: &System<Q, S>,
    clock: &Arc<TokioClock>,
    collector: &Collector,
    secs: u64,
    run_seconds: f64,
) -> Result<(), Box<dyn std::error::Error>>
where
    Q: Backlog + Clone + 'static,
    S: RecordStore + LeaseStore + IdempotencyStore + Metered + Clone + 'static,
{
    let until = (secs > 0).then(|| clock.now().plus(Duration::from_secs(secs)));
    loop {
        let now = clock.now();
        if until.is_some_and(|t| now >= t) {
            break;
        }
        let mut deadline = now.plus(Duration::from_secs_f64(run_seconds));
        if let Some(t) = until {
            deadline = deadline.min(t);
        }
        tokio::select! {
            report = system.run_until(deadline) => { report?; }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    system.wait_idle().await;
    let c = collector.counts();
    eprintln!(
        "qo local: served {} call(s): {} succeeded, {} dead-lettered, {} result(s) delivered",
        c.calls, c.succeeded, c.dead_lettered, c.results_delivered
    );
    Ok(())
}

/// The job and retry queues' attributes: the template's, with `--max-receive-count`.
fn queue_attributes(args: &LocalArgs) -> QueueAttributes {
    QueueAttributes {
        max_receive_count: args
            .max_receive_count
            .or(QueueAttributes::TEMPLATE.max_receive_count),
        ..QueueAttributes::TEMPLATE
    }
}

fn unreachable_api() -> Result<String, Box<dyn std::error::Error>> {
    Err("no API: give --api-url or let the built-in one start".into())
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} done  {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Successes per second over the last two seconds of calls.
fn recent_rate(times: &[qo_core::Timestamp]) -> f64 {
    let Some(last) = times.iter().max() else {
        return 0.0;
    };
    let from = last.minus(Duration::from_secs(2));
    times.iter().filter(|t| **t > from).count() as f64 / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_is_sized_by_the_template_s_rule() {
        // 1000 calls/s, one per event, each holding an environment 0.3 s: 300, +50%.
        assert_eq!(
            sized_concurrency(1000.0, 1, Duration::from_millis(300)),
            450
        );
        // In batches of 10 held 1.3 s: 100 events/s x 1.3 s x 1.5.
        assert_eq!(
            sized_concurrency(1000.0, 10, Duration::from_millis(1_300)),
            195
        );
        // 10/s: a handful (the template's 50 is the floor, applied by the caller).
        assert_eq!(sized_concurrency(10.0, 1, Duration::from_millis(300)), 5);
    }
}
