//! End to end over the real AWS SDK, locally: the orchestrator loop (in this process) reads
//! SQS and DynamoDB on moto and invokes the worker through the Lambda Invoke API served by
//! `cargo lambda watch`, which runs the real `worker` binary; the worker calls a
//! quota-enforcing API simulator (in this process) and records its outcomes on moto.
//!
//! Checked: the API never sees more calls than the quota allows in any window and never has
//! to answer 429; every job ends called successfully exactly once, with the queues drained
//! and the dead-letter queue empty; and through an outage of the API the circuit opens in
//! DynamoDB, health checks go out, the circuit closes again and the backlog drains.
//!
//! Without moto or cargo-lambda (no `bash tests/setup.sh` yet) the tests skip, except in CI
//! (`CI=true`), where they fail.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_config::{Region, SdkConfig};
use qo_aws::{
    DynamoStore, InvokeSettings, LOCAL_CREDENTIALS, LambdaInvoker, LocalStack, QueueDepth,
    SdkSettings, SqsQueue, local_config,
};
use qo_core::ports::{IdempotencyStore, Invoker, RecordKey, load_record};
use qo_core::sqs::QueueAttributes;
use qo_core::{
    Circuit, CircuitPhase, Clock, Job, JobEvent, NoObserver, Origin, QuotaSpec, TokioClock,
    WorkerEvent,
};
use qo_orchestrator::{OrchestratorConfig, Ports, RunReport, run};
use qo_sim::{CallKind, SimConfig, SimServer, max_in_window};
use qo_testkit::{LambdaWatch, LambdaWatchOptions, MotoServer, require};

/// Jobs sent to the main queue, with paths `/items/0` to `/items/29`.
const JOBS: usize = 30;
/// The quota the API enforces and the orchestrator paces to.
const QUOTA: &str = "5/s";
/// The quota's one tier: its limit and window.
const LIMIT: usize = 5;
const WINDOW: Duration = Duration::from_secs(1);
/// How late after its slot the worker may still call (the orchestrator widens its windows by
/// as much). A debug worker under `cargo lambda watch` on a loaded machine may wake late; a
/// late event is re-queued untried, which only slows the drain.
const TOLERANCE: Duration = Duration::from_millis(50);
/// Function instances `cargo lambda watch` may run at once: it answers an `Event` invoke only
/// after the function returns, so the orchestrator keeps this many invokes in flight.
const CONCURRENCY: u32 = 8;
/// The length of one orchestrator run (its "Lambda timeout").
const RUN_LENGTH: Duration = Duration::from_secs(30);
/// Runs follow each other until the jobs are done or this much time has passed.
const DRAIN_BOUND: Duration = Duration::from_secs(180);
/// The first health check's delay after the circuit opens (it doubles after each failure).
const HEALTH_CHECK_INITIAL: Duration = Duration::from_secs(1);
/// Failures within the window that open the circuit (the default).
const FAILURE_THRESHOLD: usize = 3;
/// The static credentials and the region of every client, the worker's included.
const KEY_ID: &str = LOCAL_CREDENTIALS.0;
const SECRET: &str = LOCAL_CREDENTIALS.1;
const REGION: &str = "us-east-1";
const TABLE: &str = "qo-e2e";
const QUEUE_PREFIX: &str = "qo-e2e-jobs";

/// The tests start a debug worker several times over and measure timing: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// moto, `cargo lambda watch` with the worker, and the orchestrator's adapters over them.
struct Stack {
    // Fields drop in order: the watch and its function instances stop before moto does.
    watch: LambdaWatch,
    _moto: MotoServer,
    queue: SqsQueue,
    store: DynamoStore,
    invoker: LambdaInvoker,
    /// Where the worker expects the API simulator.
    api_addr: SocketAddr,
    /// Holds that port from before the worker learns it until the simulator starts.
    api_port: Option<TcpListener>,
}

impl Stack {
    /// Starts moto, creates the table and queues on it, and starts `cargo lambda watch`
    /// serving the worker, configured for a simulator on a port reserved now. `None` when a
    /// tool is missing outside CI.
    async fn start() -> Option<Stack> {
        init_tracing();
        let moto = require(MotoServer::start().await, "moto server")?;
        let aws = sdk_config(
            &moto.endpoint,
            SdkSettings {
                connect_timeout: Duration::from_secs(2),
                read_timeout: Duration::from_secs(5),
                max_attempts: 3,
            },
        )
        .await;
        let local = LocalStack::create(aws, TABLE, QUEUE_PREFIX, QueueAttributes::TEMPLATE)
            .await
            .expect("create the table and queues on moto");
        let urls = local.urls.clone();
        let retry_url = urls.retry.clone().expect("LocalStack makes a retry queue");
        let (store, queue) = (local.store(), local.queue());

        let api_port =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("reserve a port for the API");
        let api_addr = api_port.local_addr().expect("the reserved port");
        let api_url = format!("http://{api_addr}");
        let opts = LambdaWatchOptions::new("qo-lambda", "worker")
            .concurrency(CONCURRENCY)
            .env("TABLE_NAME", TABLE)
            .env("QUEUE_URL", &urls.main)
            .env("RETRY_QUEUE_URL", retry_url)
            .env("DLQ_URL", &urls.dlq)
            .env("API_BASE_URL", api_url)
            .env("AWS_ENDPOINT_URL", &moto.endpoint)
            .env("AWS_REGION", REGION)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("RETRY_DELAY_S", "1")
            // The template's WorkerTimeout. Without it the worker would check the first
            // invocation's deadline, and cargo-lambda 1.9.2 sends one in 1970
            // (`Lambda-Runtime-Deadline-Ms: 600000`): it would refuse every event.
            .env("FUNCTION_TIMEOUT_S", "150")
            .env(
                "HEALTH_CHECK_INITIAL_S",
                HEALTH_CHECK_INITIAL.as_secs().to_string(),
            )
            .env("CALL_TOLERANCE_MS", TOLERANCE.as_millis().to_string())
            .env("RUST_LOG", "info");
        let started = Instant::now();
        let watch = require(LambdaWatch::start(opts).await, "cargo lambda watch")?;
        eprintln!(
            "cargo lambda watch ready at {} after {:.1} s",
            watch.endpoint,
            started.elapsed().as_secs_f64()
        );

        // The Lambda client talks to the watch; an Event invoke there lasts as long as the
        // worker waits for its slot and calls, so its read timeout is long.
        let lambda = sdk_config(
            &watch.endpoint,
            SdkSettings {
                connect_timeout: Duration::from_secs(3),
                read_timeout: Duration::from_secs(30),
                max_attempts: 1,
            },
        )
        .await;
        let invoker = LambdaInvoker::new(&lambda, "worker", &InvokeSettings::default())
            .expect("invoker settings");
        let stack = Stack {
            watch,
            _moto: moto,
            queue,
            store,
            invoker,
            api_addr,
            api_port: Some(api_port),
        };
        stack.warm_up().await;
        Some(stack)
    }

    /// Starts the worker's instances before anything is timed. Under `cargo lambda watch` the
    /// first invoke starts every instance with `cargo run`, which waits for any other build
    /// in the target directory: far longer than a job may wait for its slot. The warm-up
    /// event is a job already marked done, which the worker skips as a duplicate without
    /// calling the API or touching a queue.
    async fn warm_up(&self) {
        const ID: &str = "warm-up";
        let started = Instant::now();
        let clock = TokioClock::system();
        self.store
            .complete(ID, clock.now(), Duration::from_secs(3600))
            .await
            .expect("mark the warm-up job done");
        let patient = sdk_config(
            &self.watch.endpoint,
            SdkSettings {
                connect_timeout: Duration::from_secs(3),
                read_timeout: Duration::from_secs(600),
                max_attempts: 1,
            },
        )
        .await;
        let invoker = LambdaInvoker::new(&patient, "worker", &InvokeSettings::default())
            .expect("invoker settings");
        let now = clock.now();
        let event = WorkerEvent::Job(JobEvent {
            job: Job {
                id: Some(ID.to_string()),
                path: "/warm-up".to_string(),
                ..Job::default()
            },
            origin: Origin {
                message_id: ID.to_string(),
                ..Origin::default()
            },
            slot_at: now,
            epoch: 0,
            dispatched_at: now,
        });
        invoker.invoke(&event).await.expect("the warm-up invoke");
        // Every instance logs this line once it has read its configuration and waits for
        // events; they all start on the first invoke.
        let ready = |log: &str| log.matches("worker ready").count();
        let mut count = 0;
        while started.elapsed() < Duration::from_secs(300) {
            let log = std::fs::read_to_string(self.watch.log_path()).unwrap_or_default();
            count = ready(&log);
            if count >= CONCURRENCY as usize {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "worker warmed up: {count} of {CONCURRENCY} instances ready after {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    /// Starts the API simulator on the reserved port.
    async fn start_api(&mut self, outage: Option<Range<Duration>>) -> SimServer {
        drop(self.api_port.take());
        let mut config = SimConfig::new(quota());
        config.outage = outage;
        SimServer::start_on(self.api_addr, config)
            .await
            .expect("start the API simulator on the reserved port")
    }

    /// Sends the jobs to the main queue.
    async fn send_jobs(&self) {
        let clock = TokioClock::system();
        for i in 0..JOBS {
            self.queue
                .send_job(&format!(r#"{{"path":"/items/{i}"}}"#), clock.now())
                .await
                .expect("send a job");
        }
    }

    /// Runs the orchestrator, one run after another, until the API has accepted every job
    /// and the queues are empty, or [`DRAIN_BOUND`] has passed.
    async fn drain(&self, sim: &SimServer, config: &OrchestratorConfig) -> Vec<RunReport> {
        let started = Instant::now();
        let mut reports = Vec::new();
        loop {
            let clock = TokioClock::system();
            let deadline = clock.now().plus(RUN_LENGTH);
            let ports = Ports {
                queue: &self.queue,
                store: &self.store,
                invoker: &self.invoker,
                clock: &clock,
                observer: &NoObserver,
            };
            let report = run(ports, config, deadline)
                .await
                .expect("an orchestrator run over SQS, DynamoDB and Lambda");
            eprintln!(
                "run {} ended at {:.1} s: {report:?}",
                reports.len() + 1,
                started.elapsed().as_secs_f64()
            );
            reports.push(report);
            let accepted = sim.stats().accepted;
            if accepted >= JOBS as u64 && all_empty(&self.depths().await) {
                eprintln!(
                    "drained in {:.1} s over {} run(s)",
                    started.elapsed().as_secs_f64(),
                    reports.len()
                );
                return reports;
            }
            if started.elapsed() >= DRAIN_BOUND {
                eprintln!(
                    "not drained after {} s: {accepted} of {JOBS} accepted",
                    DRAIN_BOUND.as_secs()
                );
                return reports;
            }
        }
    }

    async fn depths(&self) -> Vec<QueueDepth> {
        self.queue.depths().await.expect("queue depths")
    }

    async fn circuit(&self) -> Circuit {
        load_record::<Circuit>(&self.store, RecordKey::Circuit)
            .await
            .expect("read the circuit record")
            .value
    }
}

fn quota() -> QuotaSpec {
    QUOTA.parse().expect("quota spec")
}

/// The orchestrator's configuration for these tests.
fn orchestrator_config() -> OrchestratorConfig {
    let mut c = OrchestratorConfig::with_quota(quota());
    c.pacing.call_tolerance = TOLERANCE;
    c.dispatch_lead = Duration::from_millis(500);
    c.idle_exit = Some(Duration::from_secs(3));
    c.stop_margin = Duration::from_secs(1);
    c.max_in_flight = CONCURRENCY as usize;
    c.circuit.probe_initial = HEALTH_CHECK_INITIAL;
    c.owner = "e2e-orchestrator".to_string();
    c
}

/// The local SDK configuration for `endpoint` ([`local_config`]: the static credentials) in
/// the worker's region.
async fn sdk_config(endpoint: &str, settings: SdkSettings) -> SdkConfig {
    local_config(&settings, endpoint)
        .await
        .to_builder()
        .region(Region::from_static(REGION))
        .build()
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn all_empty(depths: &[QueueDepth]) -> bool {
    depths
        .iter()
        .all(|d| d.visible == 0 && d.in_flight == 0 && d.delayed == 0)
}

fn total(reports: &[RunReport], field: impl Fn(&RunReport) -> u64) -> u64 {
    reports.iter().map(field).sum()
}

/// What holds after any drain: the quota was kept in every window with no 429, every job was
/// called successfully exactly once, and every queue, the dead-letter queue included, is
/// empty.
async fn assert_quota_kept_and_jobs_accounted(stack: &Stack, sim: &SimServer) {
    let stats = sim.stats();
    eprintln!("API stats: {stats:?}");
    assert_eq!(stats.throttled, 0, "the API answered 429: {stats:?}");
    let max = stats.max_for(QUOTA).expect("the simulator counts the tier");
    assert!(max <= LIMIT as u64, "{max} calls in one window: {stats:?}");
    let times = sim.accepted_times();
    let densest = max_in_window(&times, WINDOW);
    assert!(densest <= LIMIT, "{densest} accepted calls within 1 s");
    assert_eq!(stats.unauthorized, 0, "{stats:?}");

    let succeeded: Vec<String> = sim
        .records()
        .into_iter()
        .filter(|r| r.kind == CallKind::Api && (200..300).contains(&r.status))
        .map(|r| r.path)
        .collect();
    let distinct: BTreeSet<&String> = succeeded.iter().collect();
    let expected: BTreeSet<String> = (0..JOBS).map(|i| format!("/items/{i}")).collect();
    assert_eq!(
        distinct,
        expected.iter().collect::<BTreeSet<_>>(),
        "every job, and nothing else, is called successfully"
    );
    assert_eq!(
        succeeded.len(),
        JOBS,
        "no job is called successfully twice: {succeeded:?}"
    );

    let depths = stack.depths().await;
    assert!(
        depths.iter().any(|d| d.name == "dlq"),
        "the dead-letter queue is among the depths: {depths:?}"
    );
    assert!(
        all_empty(&depths),
        "queues not drained (the dead-letter queue must be empty too): {depths:?}"
    );
}

/// A healthy API: the orchestrator paces 30 jobs through the real worker within 5/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_flow_through_the_real_worker_within_the_quota() {
    let _serial = SERIAL.lock().await;
    let Some(mut stack) = Stack::start().await else {
        return;
    };
    let config = orchestrator_config();
    stack.send_jobs().await;
    let sim = stack.start_api(None).await;
    let started = Instant::now();
    let reports = stack.drain(&sim, &config).await;
    let took = started.elapsed();

    assert_quota_kept_and_jobs_accounted(&stack, &sim).await;
    let stats = sim.stats();
    assert_eq!(stats.faulted, 0, "{stats:?}");
    assert_eq!(
        stats.health_checks, 0,
        "a closed circuit sends no health checks"
    );
    assert_eq!(total(&reports, |r| r.health_checks), 0, "{reports:?}");
    assert_eq!(total(&reports, |r| r.dead_lettered), 0, "{reports:?}");
    assert_eq!(
        total(&reports, |r| r.invoke_failures),
        0,
        "every invoke was accepted: {reports:?}"
    );
    assert!(
        total(&reports, |r| r.dispatched) >= JOBS as u64,
        "{reports:?}"
    );
    let circuit = stack.circuit().await;
    assert!(circuit.is_closed(), "{circuit:?}");
    assert_eq!(circuit.epoch, 0, "the circuit never opened: {circuit:?}");
    // 30 jobs at 5/s take at least 5 s (the first window's 5 go at once).
    assert!(took >= Duration::from_secs(5), "{took:?}");
    eprintln!(
        "healthy API: {JOBS} jobs in {:.1} s; worker log at {}",
        took.as_secs_f64(),
        stack.watch.log_path().display()
    );
}

/// The API fails from 2 s to 5 s after it starts: the worker's failures open the circuit in
/// DynamoDB, the orchestrator stops dispatching and sends health checks, a passing one closes
/// the circuit, and the backlog drains with every job done once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_circuit_and_the_backlog_drains_after_it() {
    let _serial = SERIAL.lock().await;
    let Some(mut stack) = Stack::start().await else {
        return;
    };
    let config = orchestrator_config();
    stack.send_jobs().await;
    let outage = Duration::from_secs(2)..Duration::from_secs(5);
    let sim = stack.start_api(Some(outage.clone())).await;
    let sim_started = Instant::now();

    // Watch the circuit record in DynamoDB while the orchestrator runs.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let store = stack.store.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut seen: Vec<(Duration, CircuitPhase, u64)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(c) = load_record::<Circuit>(&store, RecordKey::Circuit).await {
                    let (phase, epoch) = (c.value.phase(), c.value.epoch);
                    if seen
                        .last()
                        .is_none_or(|&(_, p, e)| (p, e) != (phase, epoch))
                    {
                        seen.push((sim_started.elapsed(), phase, epoch));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        })
    };
    let reports = stack.drain(&sim, &config).await;
    let took = sim_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.await.expect("circuit watcher");
    eprintln!("circuit transitions seen (time since the API started, phase, epoch): {seen:?}");

    assert_quota_kept_and_jobs_accounted(&stack, &sim).await;
    let stats = sim.stats();
    let records = sim.records();
    assert!(
        stats.faulted >= 1,
        "calls reached the API during the outage: {stats:?}"
    );
    let in_outage = records
        .iter()
        .filter(|r| r.kind == CallKind::Api && outage.contains(&r.at))
        .count();
    eprintln!("API calls during the outage: {in_outage}");
    assert!(
        seen.iter()
            .any(|&(_, p, e)| p != CircuitPhase::Closed && e >= 1),
        "the circuit was seen open in DynamoDB: {seen:?}"
    );
    // Once open, nothing is dispatched: after the orchestrator's next read of the circuit (at
    // least every second) and the slots already handed out (half a second ahead, plus the
    // tolerance), the API hears nothing until a health check has passed.
    let (opened_at, _, _) = *seen
        .iter()
        .find(|&&(_, p, e)| p != CircuitPhase::Closed && e >= 1)
        .expect("seen open");
    let healed_at = records
        .iter()
        .find(|r| r.kind == CallKind::Health && r.status == 200)
        .map(|r| r.at)
        .expect("a health check passed after the outage");
    let quiet = (opened_at + Duration::from_secs(2))..healed_at;
    let during_quiet: Vec<_> = records
        .iter()
        .filter(|r| r.kind == CallKind::Api && quiet.contains(&r.at))
        .collect();
    assert!(
        during_quiet.is_empty(),
        "API calls while the circuit was open ({quiet:?} since the API started): {during_quiet:?}"
    );
    let bound = FAILURE_THRESHOLD + LIMIT * 2;
    assert!(
        in_outage <= bound,
        "{in_outage} calls during the outage; at most {bound} expected with the circuit open"
    );
    assert!(
        total(&reports, |r| r.health_checks) >= 1,
        "health checks went out: {reports:?}"
    );
    let circuit = stack.circuit().await;
    assert!(circuit.is_closed(), "the circuit closed again: {circuit:?}");
    assert!(circuit.epoch >= 1, "{circuit:?}");
    assert_eq!(total(&reports, |r| r.dead_lettered), 0, "{reports:?}");
    eprintln!(
        "outage: {JOBS} jobs in {:.1} s; {} faulted calls, {} health checks",
        took.as_secs_f64(),
        stats.faulted,
        stats.health_checks
    );
}
