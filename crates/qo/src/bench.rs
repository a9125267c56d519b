//! `qo bench`: how fast one orchestrator paces dispatches, on the real clock.
//!
//! Each step runs the real orchestrator loop and the real worker ([`crate::system`]) over the
//! in-memory queue and store (`--adapters memory`), or over the AWS adapters, the real SQS and
//! DynamoDB SDKs, against a local endpoint such as a moto server (`--adapters aws
//! --aws-endpoint URL`, with a table and queues of the step's own; `qo` built with the `aws`
//! feature), for a few seconds at one quota rate, with a backlog larger than the step can
//! use. The invoker takes `--invoke-latency-ms` (default 20 ms) per Invoke call
//! before it accepts an event, as the Invoke API's round trip does, then delivers as Lambda's
//! asynchronous queue does (2 to 20 ms, unbounded concurrency). The API is a stand-in in
//! memory that answers 200 at once and records when each call was made, so the bench measures
//! the dispatch path and nothing else.
//!
//! Per step it reports:
//! - **pacing error**: `|calls made - calls the pace allowed| / allowed`, over the measured
//!   window: from `--warmup-s` after the step's first call to the step's end (the last instant
//!   whose slots were all dispatched); allowed is `rate x window`. A loop that cannot keep up
//!   makes fewer calls than allowed; one that overshot the quota would make more.
//! - **late share**: the share of dispatched jobs the worker gave back untried because they
//!   arrived past their slot plus `CALL_TOLERANCE_MS` (a dispatch too slow for its lead).
//! - **CPU per dispatch**: user + system time of the whole process (`getrusage(RUSAGE_SELF)`:
//!   the orchestrator, the invoker and the worker together) over the step, divided by the
//!   jobs dispatched.
//! - **peak RSS**: `VmHWM` of `/proc/self/status` after the step (the process's peak so far).
//!
//! A rate is *sustained* when its pacing error and its late share are both under 1%; the
//! report names the highest such rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use clap::{Args, ValueEnum};
use serde::Serialize;

use qo_core::job::Job;
use qo_core::ports::{IdempotencyStore, JobSink, JobSource, LeaseStore, RecordStore};
use qo_core::reason::ReasonKind;
use qo_core::{Clock, Observation, Observer, QuotaSpec, Timestamp, TokioClock};
use qo_memory::{InvokerOptions, MemoryQueue, MemoryStore, QueueOptions};
use qo_orchestrator::OrchestratorConfig;
use qo_worker::{ApiResponse, HttpCall, HttpError, WorkerConfig, WorkerError};

use crate::system::{Parts, System};

/// The dispatch lead over the AWS adapters against a local endpoint.
const AWS_DISPATCH_LEAD: Duration = Duration::from_millis(1_000);

/// The pacing error and late share a sustained rate stays under.
pub const SUSTAINED_BELOW: f64 = 0.01;

/// Which adapters the bench runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Adapters {
    /// The in-memory queue, store and invoker.
    Memory,
    /// The SQS and DynamoDB adapters (the AWS SDK) against `--aws-endpoint`; the invoker
    /// stays in memory.
    Aws,
}

/// Options of `qo bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The quota rates to step through, per second, e.g. `250,500,1000,2000,4000`.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000,4000")]
    rates: Vec<u32>,
    /// How long each step runs, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// The part of each step not measured, from its first call, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup_s: f64,
    /// How long an Invoke call takes before the event is accepted, in milliseconds.
    #[arg(long, default_value_t = 20.0)]
    invoke_latency_ms: f64,
    /// The orchestrator's `MAX_IN_FLIGHT` (invokes in flight at most); default: its default.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// The orchestrator's `BATCH_MAX_JOBS`. Default 1: every slot its own invoke, the most
    /// work a dispatch is (as while the pace follows the API, when a deployment's batches of
    /// up to 10 go one job at a time).
    #[arg(long, default_value_t = 1)]
    batch_max_jobs: usize,
    /// Which adapters: `memory` (the in-memory ports) or `aws` (SQS and DynamoDB over the
    /// AWS SDK against `--aws-endpoint`).
    #[arg(long, value_enum, default_value = "memory")]
    adapters: Adapters,
    /// With `--adapters aws`: the endpoint (e.g. a moto server, `http://127.0.0.1:5000`).
    #[arg(long)]
    aws_endpoint: Option<String>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Run at the CPU share Lambda gives a function of this many MB (MB / 1,769 of one CPU),
    /// capped by a cgroup of the process's own (needs a writable cgroup file system: root on
    /// a host that exposes it). The report adds what a month of one orchestrator costs at
    /// that size.
    #[arg(long, value_parser = clap::value_parser!(u32).range(128..=10_240))]
    memory_mb: Option<u32>,
    /// Instead of the rate steps: run each limiter kind, with and without `Retry-After`,
    /// through the limit scenarios on a virtual clock, and print the share of the real limit
    /// reached and the share of 429s ([`crate::limiters`]).
    #[arg(long)]
    limiters: bool,
    #[command(flatten)]
    matrix: crate::limiters::LimitersArgs,
    /// Instead of the rate steps: the CPU each AWS SDK call on the dispatch path costs
    /// (ReceiveMessage, DeleteMessageBatch, Invoke) against a stub on a loopback port, and the
    /// jobs a second each Lambda memory size's CPU share pays those calls for
    /// ([`crate::sdk_calls`]; needs `qo` built with the `aws` feature).
    #[arg(long)]
    sdk_calls: bool,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag is out of range.
    #[error("--{flag}: {why}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        why: String,
    },
    /// `--adapters aws` in a `qo` built without the AWS SDK.
    #[error("{0}")]
    AwsNotBuilt(String),
    /// The system could not be assembled or run.
    #[error("the bench's system failed: {0}")]
    System(String),
}

/// One step of the bench.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepReport {
    /// The quota rate, per second.
    pub rate_per_s: u32,
    /// The measured window, in seconds.
    pub window_s: f64,
    /// Calls the pace allowed in the window: rate x window.
    pub allowed: f64,
    /// Calls made in the window.
    pub calls: u64,
    /// `|calls - allowed| / allowed`.
    pub pacing_error: f64,
    /// Jobs the orchestrator dispatched in the step.
    pub dispatched: u64,
    /// Jobs given back untried as late.
    pub late: u64,
    /// `late / dispatched`.
    pub late_share: f64,
    /// Process CPU time (user + system) over the step, in milliseconds.
    pub cpu_ms: f64,
    /// CPU time per dispatched job, in microseconds.
    pub cpu_us_per_dispatch: f64,
    /// `VmHWM` after the step, in KiB.
    pub peak_rss_kib: u64,
    /// Pacing error and late share both under 1%.
    pub sustained: bool,
    /// Why the orchestrator's run ended (its `StopReason`, as debug text).
    pub stopped: String,
}

/// The whole bench.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    /// The adapters benched.
    pub adapters: Adapters,
    /// The invoke latency, in milliseconds.
    pub invoke_latency_ms: f64,
    /// Seconds per step.
    pub seconds_per_step: f64,
    /// `--max-in-flight`, when given.
    pub max_in_flight: Option<usize>,
    /// `--batch-max-jobs`.
    pub batch_max_jobs: usize,
    /// Each step.
    pub steps: Vec<StepReport>,
    /// The highest rate sustained (pacing error and late share under 1%); `None` if none was.
    pub max_sustained_rate_per_s: Option<u32>,
    /// The process's peak RSS, in KiB.
    pub peak_rss_kib: u64,
    /// CPU per dispatch over all steps, in microseconds.
    pub cpu_us_per_dispatch: f64,
    /// `--memory-mb`, when given: the process ran at its CPU share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// The share of one CPU the process had (`None`: not capped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_share: Option<f64>,
    /// With `--memory-mb`: one orchestrator running the whole month at that size, in USD at
    /// list prices (Arm, per GB-second).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub month_usd: Option<f64>,
}

/// Runs the bench and prints its report.
pub async fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.sdk_calls {
        return sdk_calls(&args).await;
    }
    if args.limiters {
        let matrix = args.matrix.clone();
        let cells = tokio::task::spawn_blocking(move || crate::limiters::run_matrix(&matrix))
            .await?
            .map_err(BenchError::System)?;
        if args.json {
            println!("{}", serde_json::to_string(&cells)?);
        } else {
            print!("{}", crate::limiters::table(&cells));
        }
        if cells.iter().any(|c| !c.met) {
            return Err("some cells miss their targets (marked `!`)".into());
        }
        return Ok(());
    }
    // Capped before the first step; the guard puts the process back when the bench ends.
    let cap = args
        .memory_mb
        .map(|mb| crate::cpu_share::CpuCap::apply(crate::cpu_share::share_for_memory_mb(mb)))
        .transpose()?;
    let mut report = bench(&args).await?;
    if let (Some(mb), Some(cap)) = (args.memory_mb, &cap) {
        report.memory_mb = Some(mb);
        report.cpu_share = Some(cap.share());
        report.month_usd = Some(month_usd(mb));
    }
    drop(cap);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", human(&report));
    }
    Ok(())
}

/// Runs every step of `args`.
pub async fn bench(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    if args.adapters == Adapters::Aws && args.aws_endpoint.is_none() {
        return Err(BenchError::Flag {
            flag: "aws-endpoint",
            why: "--adapters aws needs the endpoint to bench against, e.g. a moto server"
                .to_string(),
        });
    }
    if args.adapters == Adapters::Memory && args.aws_endpoint.is_some() {
        return Err(BenchError::Flag {
            flag: "aws-endpoint",
            why: "only with --adapters aws".to_string(),
        });
    }
    if cfg!(not(feature = "aws")) && args.adapters == Adapters::Aws {
        return Err(BenchError::AwsNotBuilt(crate::without_aws(
            "bench --adapters aws",
            args.aws_endpoint.as_deref().unwrap_or_default(),
        )));
    }
    let positive = |flag, v: f64| {
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(BenchError::Flag {
                flag,
                why: format!("{v} is not a non-negative number"),
            })
        }
    };
    positive("invoke-latency-ms", args.invoke_latency_ms)?;
    positive("warmup-s", args.warmup_s)?;
    if positive("seconds", args.seconds)? <= args.warmup_s {
        return Err(BenchError::Flag {
            flag: "seconds",
            why: format!("{} must be longer than --warmup-s", args.seconds),
        });
    }
    if args.rates.is_empty() || args.rates.contains(&0) {
        return Err(BenchError::Flag {
            flag: "rates",
            why: "give one or more rates above 0".to_string(),
        });
    }
    let mut steps = Vec::with_capacity(args.rates.len());
    for &rate in &args.rates {
        steps.push(step(rate, args).await?);
    }
    let max_sustained_rate_per_s = steps
        .iter()
        .filter(|s| s.sustained)
        .map(|s| s.rate_per_s)
        .max();
    let dispatched: u64 = steps.iter().map(|s| s.dispatched).sum();
    let cpu_ms: f64 = steps.iter().map(|s| s.cpu_ms).sum();
    Ok(BenchReport {
        adapters: args.adapters,
        invoke_latency_ms: args.invoke_latency_ms,
        seconds_per_step: args.seconds,
        max_in_flight: args.max_in_flight,
        batch_max_jobs: args.batch_max_jobs,
        peak_rss_kib: steps.iter().map(|s| s.peak_rss_kib).max().unwrap_or(0),
        cpu_us_per_dispatch: per_dispatch_us(cpu_ms, dispatched),
        steps,
        max_sustained_rate_per_s,
        memory_mb: None,
        cpu_share: None,
        month_usd: None,
    })
}

/// `--sdk-calls`: the SDK calls' CPU, printed.
#[cfg(feature = "aws")]
async fn sdk_calls(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let batch = u32::try_from(args.batch_max_jobs).unwrap_or(u32::MAX);
    let report = tokio::task::spawn_blocking(move || crate::sdk_calls::run(batch)).await??;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", crate::sdk_calls::table(&report));
    }
    Ok(())
}

/// `--sdk-calls` in a `qo` built without the AWS SDK.
#[cfg(not(feature = "aws"))]
async fn sdk_calls(_args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    Err("bench --sdk-calls needs the AWS SDK: build qo with `--features aws`".into())
}

/// One step at `rate` per second, over the adapters `args` names.
async fn step(rate: u32, args: &BenchArgs) -> Result<StepReport, BenchError> {
    let clock = Arc::new(TokioClock::system());
    // More jobs than the step can call: the pacer never waits for work.
    let jobs = (f64::from(rate) * (args.seconds + 2.0)).ceil() as u64;
    match (args.adapters, args.aws_endpoint.as_deref()) {
        #[cfg(feature = "aws")]
        (Adapters::Aws, Some(endpoint)) => {
            let (queue, store) = aws::stack(endpoint, jobs).await?;
            measure(rate, args, clock, queue, store).await
        }
        _ => {
            let queue = MemoryQueue::with_options(clock.clone(), QueueOptions::template());
            for i in 0..jobs {
                queue.send(job_body(i));
            }
            measure(rate, args, clock, queue, MemoryStore::new()).await
        }
    }
}

/// The body of the backlog's `i`th job.
fn job_body(i: u64) -> String {
    format!(r#"{{"path":"/items/{i}"}}"#)
}

/// Runs one step at `rate` over `queue` (its backlog already in) and `store`, and measures it.
async fn measure<Q, S>(
    rate: u32,
    args: &BenchArgs,
    clock: Arc<TokioClock>,
    queue: Q,
    store: S,
) -> Result<StepReport, BenchError>
where
    Q: JobSource + JobSink + Clone + 'static,
    S: RecordStore + LeaseStore + IdempotencyStore + Clone + 'static,
{
    let system_err = |e: &dyn std::fmt::Display| BenchError::System(e.to_string());
    let api = Arc::new(StandIn::new(clock.clone()));
    let seen = Arc::new(Seen::default());
    let url =
        qo_worker::config::api_base_url("http://bench.invalid/").map_err(|e| system_err(&e))?;
    let worker = WorkerConfig::new(url).with_function_timeout(Duration::from_secs(150));
    let quota: QuotaSpec = format!("{rate}/s").parse().map_err(|e| system_err(&e))?;
    let mut orchestrator = OrchestratorConfig::with_quota(quota);
    orchestrator.stop_margin = Duration::from_millis(500);
    orchestrator.owner = "qo-bench".to_string();
    orchestrator.batch_max_jobs = args.batch_max_jobs.max(1);
    if args.adapters == Adapters::Aws {
        // As `qo local --aws-endpoint`: a local endpoint answers slower than DynamoDB, and
        // the worker's claim must be made before the slot.
        orchestrator.dispatch_lead = AWS_DISPATCH_LEAD;
    }
    if let Some(n) = args.max_in_flight {
        orchestrator.max_in_flight = n.max(1);
    }
    let system = System::assemble(Parts {
        clock: clock.clone(),
        queue,
        store,
        http: vec![api.clone()],
        worker,
        orchestrator,
        invoker: InvokerOptions {
            api_latency: Duration::from_secs_f64(args.invoke_latency_ms / 1000.0),
            concurrency: None,
            ..InvokerOptions::default()
        },
        observer: seen.clone(),
        results: None,
        around: None,
    })
    .map_err(|e| system_err(&e))?;
    let margin = system.orchestrator_config().stop_margin;
    let cpu_before = cpu_time();
    let started = clock.now();
    let end = started.plus(Duration::from_secs_f64(args.seconds));
    let report = system
        .run_until(end.plus(margin))
        .await
        .map_err(|e| system_err(&e))?;
    system.wait_idle().await;
    let cpu = cpu_time().saturating_sub(cpu_before);
    let calls = api.calls();
    let window = calls
        .iter()
        .min()
        .map(|first| (first.plus(Duration::from_secs_f64(args.warmup_s)), end));
    let (window_s, made) = match window {
        Some((from, to)) if to > from => (
            to.since(from).as_secs_f64(),
            calls.iter().filter(|t| **t >= from && **t < to).count() as u64,
        ),
        _ => (0.0, 0),
    };
    let allowed = f64::from(rate) * window_s;
    let pacing_error = pacing_error(made, allowed);
    let late = seen.late.load(Ordering::Relaxed);
    let late_share = share(late, report.dispatched);
    let cpu_ms = cpu.as_secs_f64() * 1000.0;
    Ok(StepReport {
        rate_per_s: rate,
        window_s,
        allowed,
        calls: made,
        pacing_error,
        dispatched: report.dispatched,
        late,
        late_share,
        cpu_ms,
        cpu_us_per_dispatch: per_dispatch_us(cpu_ms, report.dispatched),
        peak_rss_kib: peak_rss_kib().unwrap_or(0),
        sustained: pacing_error < SUSTAINED_BELOW && late_share < SUSTAINED_BELOW,
        stopped: format!("{:?}", report.stopped),
    })
}

/// What one function of `mb` MB running a whole 30-day month costs at list prices.
pub fn month_usd(mb: u32) -> f64 {
    f64::from(mb) / 1024.0 * 30.0 * 86_400.0 * crate::cost::PRICES.lambda_gb_s
}

/// `|made - allowed| / allowed`; 1 (all wrong) when nothing was allowed.
pub fn pacing_error(made: u64, allowed: f64) -> f64 {
    if allowed <= 0.0 {
        return 1.0;
    }
    (made as f64 - allowed).abs() / allowed
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn per_dispatch_us(cpu_ms: f64, dispatched: u64) -> f64 {
    if dispatched == 0 {
        0.0
    } else {
        cpu_ms * 1000.0 / dispatched as f64
    }
}

/// The process's user + system CPU time so far (zero if `getrusage` fails).
fn cpu_time() -> Duration {
    // SAFETY: `getrusage` writes a `rusage` into the zeroed struct it is given and reads
    // nothing else; RUSAGE_SELF is a valid `who`.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// `VmHWM` of `/proc/self/status`, in KiB (`None` off Linux or if unreadable).
fn peak_rss_kib() -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// The `VmHWM:` line of a `/proc/<pid>/status` text, in KiB.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut words = line["VmHWM:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(n),
        Some(_) => None,
    }
}

/// The report as a table.
pub fn human(r: &BenchReport) -> String {
    let mut out = format!(
        "qo bench: {:?} adapters, invoke latency {} ms, {} s per step\n\
         {:>7} {:>8} {:>9} {:>8} {:>9} {:>6} {:>9} {:>11} {:>9}  sustained\n",
        r.adapters,
        r.invoke_latency_ms,
        r.seconds_per_step,
        "rate/s",
        "calls",
        "allowed",
        "error",
        "dispatch",
        "late",
        "cpu ms",
        "cpu us/disp",
        "RSS KiB",
    );
    for s in &r.steps {
        out.push_str(&format!(
            "{:>7} {:>8} {:>9.0} {:>7.2}% {:>9} {:>6} {:>9.0} {:>11.1} {:>9}  {}\n",
            s.rate_per_s,
            s.calls,
            s.allowed,
            s.pacing_error * 100.0,
            s.dispatched,
            s.late,
            s.cpu_ms,
            s.cpu_us_per_dispatch,
            s.peak_rss_kib,
            if s.sustained { "yes" } else { "no" },
        ));
    }
    if let (Some(mb), Some(share), Some(usd)) = (r.memory_mb, r.cpu_share, r.month_usd) {
        out.push_str(&format!(
            "at {mb} MB: {:.1}% of one CPU; one orchestrator all month at this size ${usd:.2}\n",
            share * 100.0
        ));
    }
    out.push_str(&format!(
        "highest rate sustained (pacing error and late share under 1%): {}\n\
         CPU per dispatch {:.1} us, peak RSS {} KiB\n",
        r.max_sustained_rate_per_s
            .map_or_else(|| "none".to_string(), |v| format!("{v}/s")),
        r.cpu_us_per_dispatch,
        r.peak_rss_kib,
    ));
    out
}

/// The stand-in API: 200 at once, each call's time recorded.
struct StandIn {
    clock: Arc<TokioClock>,
    calls: Mutex<Vec<Timestamp>>,
}

impl StandIn {
    fn new(clock: Arc<TokioClock>) -> Self {
        StandIn {
            clock,
            calls: Mutex::default(),
        }
    }

    fn calls(&self) -> Vec<Timestamp> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl HttpCall for StandIn {
    async fn call(&self, _job: &Job) -> Result<ApiResponse, HttpError> {
        let now = self.clock.now();
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(now);
        Ok(ApiResponse::status(200))
    }

    async fn health(&self) -> Result<ApiResponse, HttpError> {
        Ok(ApiResponse::status(200))
    }

    fn set_api_key(&self, _key: Option<&str>) -> Result<bool, WorkerError> {
        Ok(false)
    }
}

/// Counts the jobs given back as late.
#[derive(Default)]
struct Seen {
    late: AtomicU64,
}

impl Observer for Seen {
    fn observe(&self, o: Observation) {
        if let Observation::Requeued { reason, .. } = o
            && reason.kind() == ReasonKind::Late
        {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_hwm_from_proc_status() {
        let status = "Name:\tqo\nVmPeak:\t  123456 kB\nVmHWM:\t   28412 kB\nVmRSS:\t   20000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(28_412));
        assert_eq!(parse_vm_hwm("Name:\tqo\nVmRSS:\t 1 kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t lots kB\n"), None);
        assert_eq!(parse_vm_hwm("VmHWM:\t 12 MB\n"), None);
        // This process's own status has one.
        if cfg!(target_os = "linux") {
            assert!(peak_rss_kib().is_some_and(|k| k > 0));
        }
    }

    #[test]
    fn the_pacing_error_is_the_distance_to_the_allowed_calls() {
        assert_eq!(pacing_error(1_000, 1_000.0), 0.0);
        assert!((pacing_error(990, 1_000.0) - 0.01).abs() < 1e-12);
        assert!(
            (pacing_error(1_020, 1_000.0) - 0.02).abs() < 1e-12,
            "too many counts too"
        );
        assert!((pacing_error(572, 1_000.0) - 0.428).abs() < 1e-12);
        assert_eq!(pacing_error(5, 0.0), 1.0);
        assert_eq!(share(3, 0), 0.0);
        assert!((share(1, 200) - 0.005).abs() < 1e-12);
        assert!((per_dispatch_us(2.0, 1_000) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn cpu_time_advances() {
        let before = cpu_time();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_time() > before);
    }
}

/// The step's table and queues at a local endpoint, the backlog sent.
#[cfg(feature = "aws")]
mod aws {
    use futures::{StreamExt, TryStreamExt};
    use qo_aws::{DynamoStore, LocalStack, SdkSettings, SqsQueue, local_config};
    use qo_core::Timestamp;
    use qo_core::sqs::QueueAttributes;

    use super::{BenchError, job_body};

    /// Sends in flight at once while the backlog is filled.
    const SENDS_IN_FLIGHT: usize = 16;

    /// Creates a table and queues of the step's own at `endpoint` (the template's queue
    /// attributes) and sends `jobs` jobs to the job queue.
    pub(super) async fn stack(
        endpoint: &str,
        jobs: u64,
    ) -> Result<(SqsQueue, DynamoStore), BenchError> {
        let err = |e: &dyn std::fmt::Display| BenchError::System(e.to_string());
        let prefix = format!(
            "qo-bench-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let config = local_config(&SdkSettings::default(), endpoint).await;
        let stack = LocalStack::create(config, &prefix, &prefix, QueueAttributes::TEMPLATE)
            .await
            .map_err(|e| err(&e))?;
        let queue = stack.queue();
        futures::stream::iter(0..jobs)
            .map(|i| {
                let queue = &queue;
                async move {
                    queue
                        .send_job(
                            &job_body(i),
                            Timestamp::from_system(std::time::SystemTime::now()),
                        )
                        .await
                }
            })
            .buffer_unordered(SENDS_IN_FLIGHT)
            .try_for_each(|_| async { Ok(()) })
            .await
            .map_err(|e| err(&e))?;
        Ok((queue, stack.store()))
    }
}
