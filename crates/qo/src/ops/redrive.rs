//! `qo redrive`: moves dead-lettered jobs back to the job queue (their attempt count reset),
//! or with `--dry-run` only counts them. `qo redrive --worker-failures` brings back what
//! reached the worker's on-failure queue instead (Lambda's invocation records): job events go
//! back to the job queue unless recorded done, health checks are deleted, anything else stays
//! and is reported.

use std::fmt;
use std::time::{Duration, SystemTime};

use clap::Args;
use qo_aws::worker_failures::{
    LeftRecord, RedriveOptions, WorkerFailuresReport, redrive_worker_failures,
};
use qo_core::Timestamp;
use qo_core::config::ProcessEnv;
use qo_core::ports::{Redrive, RedriveReport};
use serde::Serialize;

use super::error::OpsError;
use super::output::emit;
use super::target::{Connection, TargetArgs};

/// Options of `qo redrive`.
#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// Only count the dead-lettered jobs; move nothing.
    #[arg(long)]
    dry_run: bool,
    /// Move at most this many (default: all).
    #[arg(long, value_name = "N")]
    max: Option<u64>,
    /// Bring back the worker's on-failure queue (events Lambda gave up on) instead of the
    /// dead-letter queue.
    #[arg(long)]
    worker_failures: bool,
    /// The worker's on-failure queue [env: WORKER_FAILURE_QUEUE_URL; stack output
    /// WorkerFailureQueueUrl].
    #[arg(
        long,
        value_name = "URL",
        requires = "worker_failures",
        conflicts_with = "stack"
    )]
    worker_failure_queue_url: Option<String>,
    /// How long the worker keeps done records (its `IDEMPOTENCY_TTL_S`): a record older than
    /// this cannot be checked for jobs that succeeded, and is left unless `--unchecked`.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "IDEMPOTENCY_TTL_S",
        default_value_t = qo_worker::config::DEFAULT_IDEMPOTENCY_TTL.as_secs(),
        requires = "worker_failures"
    )]
    idempotency_ttl_s: u64,
    /// Send back the jobs of records too old to check against the done records, though a job
    /// that succeeded is then called again.
    #[arg(long, requires = "worker_failures")]
    unchecked: bool,
    #[command(flatten)]
    target: TargetArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// What the redrive did.
#[derive(Clone, Debug, Serialize)]
pub struct RedriveOutput {
    /// The dead-letter queue.
    pub dlq_url: String,
    /// The job queue.
    pub queue_url: String,
    /// Messages on the dead-letter queue before (SQS's approximate count).
    pub dead: u64,
    /// Messages moved to the job queue.
    pub moved: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl fmt::Display for RedriveOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dead-letter queue: {} message(s)", self.dead)?;
        if self.dry_run {
            writeln!(f, "dry run: nothing moved")
        } else {
            writeln!(f, "moved {} to the job queue", self.moved)
        }
    }
}

impl RedriveOutput {
    fn new(report: RedriveReport, queue_url: &str, dlq_url: &str) -> Self {
        RedriveOutput {
            dlq_url: dlq_url.to_string(),
            queue_url: queue_url.to_string(),
            dead: report.dead,
            moved: report.moved,
            dry_run: report.dry_run,
        }
    }
}

/// What `qo redrive --worker-failures` did.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerFailuresOutput {
    /// The worker's on-failure queue.
    pub worker_failure_queue_url: String,
    /// The job queue.
    pub queue_url: String,
    /// Records read.
    pub records: u64,
    /// Jobs sent back to the job queue (a dry run: that would be).
    pub jobs: u64,
    /// Jobs not sent because they are recorded done.
    pub already_done: u64,
    /// Health-check records deleted (a dry run: that would be).
    pub health_checks: u64,
    /// Records left on the queue, and why.
    pub left: Vec<LeftRecord>,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl WorkerFailuresOutput {
    fn new(report: WorkerFailuresReport, queue_url: &str, failure_url: &str) -> Self {
        WorkerFailuresOutput {
            worker_failure_queue_url: failure_url.to_string(),
            queue_url: queue_url.to_string(),
            records: report.records,
            jobs: report.jobs,
            already_done: report.already_done,
            health_checks: report.health_checks,
            left: report.left,
            dry_run: report.dry_run,
        }
    }
}

impl fmt::Display for WorkerFailuresOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "worker-failure queue: {} record(s)", self.records)?;
        if self.dry_run {
            writeln!(
                f,
                "dry run: {} job(s) would go back to the job queue, {} health-check record(s) \
                 would be deleted",
                self.jobs, self.health_checks
            )?;
        } else {
            writeln!(
                f,
                "sent {} job(s) back to the job queue, deleted {} health-check record(s)",
                self.jobs, self.health_checks
            )?;
        }
        if self.already_done > 0 {
            writeln!(
                f,
                "skipped {} job(s) recorded done (their call succeeded)",
                self.already_done
            )?;
        }
        if !self.left.is_empty() {
            writeln!(f, "left {} record(s) on the queue:", self.left.len())?;
            for l in &self.left {
                writeln!(f, "  {}: {}", l.message_id, l.reason)?;
            }
        }
        Ok(())
    }
}

/// Runs the redrive and prints the counts.
pub async fn run(args: RedriveArgs) -> Result<(), OpsError> {
    let conn = Connection::open(&args.target, &ProcessEnv).await?;
    if args.worker_failures {
        let failure_url = match args
            .worker_failure_queue_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        {
            Some(u) => u.to_string(),
            None => conn.target().worker_failure_url()?.to_string(),
        };
        let queues = conn.queues(false)?;
        let main = queues.urls().main.clone();
        let store = conn.store()?;
        let opts = RedriveOptions {
            max: args.max,
            dry_run: args.dry_run,
            checked_within: Duration::from_secs(args.idempotency_ttl_s),
            unchecked: args.unchecked,
            now: Timestamp::from_system(SystemTime::now()),
        };
        let report = redrive_worker_failures(&queues, &store, &failure_url, opts)
            .await
            .map_err(|source| OpsError::Queue {
                what: format!("redriving {failure_url} to {main}"),
                source,
            })?;
        return emit(
            &WorkerFailuresOutput::new(report, &main, &failure_url),
            args.json,
        );
    }
    let queues = conn.queues(true)?;
    let (main, dlq) = (queues.urls().main.clone(), queues.urls().dlq.clone());
    let report = queues
        .redrive(args.max, args.dry_run)
        .await
        .map_err(|source| OpsError::Queue {
            what: format!("redriving {dlq} to {main}"),
            source,
        })?;
    emit(&RedriveOutput::new(report, &main, &dlq), args.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_says_nothing_moved() {
        let r = RedriveReport {
            dead: 2,
            moved: 0,
            dry_run: true,
        };
        let text = RedriveOutput::new(r, "q", "d").to_string();
        assert_eq!(
            text,
            "dead-letter queue: 2 message(s)\ndry run: nothing moved\n"
        );
        let r = RedriveReport {
            dead: 2,
            moved: 2,
            dry_run: false,
        };
        assert!(
            RedriveOutput::new(r, "q", "d")
                .to_string()
                .contains("moved 2")
        );
    }
}
