//! `qo redrive`: moves dead-lettered jobs back to the job queue (their attempt count reset),
//! or with `--dry-run` only counts them.

use std::fmt;

use clap::Args;
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

/// Runs the redrive and prints the counts.
pub async fn run(args: RedriveArgs) -> Result<(), OpsError> {
    let conn = Connection::open(&args.target, &ProcessEnv).await?;
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
