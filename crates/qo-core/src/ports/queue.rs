//! The queue ports: [`JobSource`] (the orchestrator receives, deletes, releases and re-sends
//! messages), [`JobSink`] (the worker and the orchestrator dead-letter and re-queue jobs) and
//! [`Redrive`] (the operator moves dead-lettered jobs back), with the messages and errors they
//! share.

use std::time::Duration;

use async_trait::async_trait;

use super::BoxError;
use crate::job::Origin;
use crate::reason::Reason;
use crate::time::Timestamp;

/// Which queue a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRole {
    /// The main job queue.
    Main,
    /// The retry queue (polled first when the orchestrator polls it).
    Retry,
}

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Receipt handle for delete and release.
    pub receipt: String,
    /// The queue it came from.
    pub queue: QueueRole,
    /// The raw body.
    pub body: String,
    /// Message id, attempt count, enqueue time, FIFO ids.
    pub origin: Origin,
    /// SQS's `ApproximateReceiveCount`: this receive included, so at least 1. Past the redrive
    /// policy's `maxReceiveCount`, SQS moves the message to the dead-letter queue at its next
    /// receive.
    pub receive_count: u32,
    /// When this receive happened: SQS counts its 12 h visibility limit from here.
    pub received_at: Timestamp,
    /// When this SQS message was sent (`SentTimestamp`): its retention counts from here, and a
    /// release does not reset it. A re-queue is a new message with a new time; the job's first
    /// enqueue stays in `origin.enqueued_at`.
    pub sent_at: Timestamp,
}

/// A queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend refused or could not be reached.
    #[error("queue {op} failed: {source}")]
    Backend {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// Some entries of a batch were refused; the others were done.
    #[error("queue {op}: {failed} of the batch failed: {detail}")]
    Partial {
        /// The operation.
        op: &'static str,
        /// How many failed.
        failed: usize,
        /// The first failure's message.
        detail: String,
        /// The receipt handles of the refused entries (empty when the entries were sends).
        refused: Vec<String>,
        /// The first failure, when it is an error of its own.
        #[source]
        source: Option<BoxError>,
    },
}

impl QueueError {
    /// [`QueueError::Partial`] whose first failure was `first`: its text is the detail, and it
    /// is kept as the source.
    pub fn partial(
        op: &'static str,
        failed: usize,
        refused: Vec<String>,
        first: impl std::error::Error + Send + Sync + 'static,
    ) -> QueueError {
        QueueError::Partial {
            op,
            failed,
            detail: first.to_string(),
            refused,
            source: Some(Box::new(first)),
        }
    }

    /// The receipts a batch call refused: the entries worth trying again. Empty for an error
    /// of the whole call.
    pub fn refused(&self) -> &[String] {
        match self {
            QueueError::Partial { refused, .. } => refused,
            QueueError::Backend { .. } => &[],
        }
    }
}

/// Where jobs come from: the orchestrator's side of the queue.
#[async_trait]
pub trait JobSource: Send + Sync {
    /// Up to `max` (1 to 10) messages, the retry queue first; waits up to `wait` (long poll)
    /// when none is ready. The messages stay invisible to others until deleted or released.
    async fn receive(&self, max: u8, wait: Duration) -> Result<Vec<Message>, QueueError>;
    /// Deletes messages whose jobs were handed to the worker.
    async fn delete(&self, messages: &[Message]) -> Result<(), QueueError>;
    /// Makes messages visible again after `after` (zero: at once).
    async fn release(&self, messages: &[Message], after: Duration) -> Result<(), QueueError>;
    /// Up to `max` (1 to 10) messages of the `role` queue only (the retry queue is not polled
    /// first), waiting up to `wait`; no retry queue answers empty. For the retention sweep,
    /// which goes through one queue at a time, and the dispatch loop's receives of the main
    /// queue alone (while the retry queue's poll is not due).
    async fn receive_from(
        &self,
        role: QueueRole,
        max: u8,
        wait: Duration,
    ) -> Result<Vec<Message>, QueueError>;
    /// Re-sends received messages as fresh copies, each on the queue it came from: a new
    /// message (receive count 0, its retention counted from now) with the same body and what
    /// its `origin` carries (attempt, first enqueue time, FIFO group), invisible for `delay`
    /// (at most 900 s). The originals are left as they are: the caller deletes those whose
    /// copy was accepted. Copies refused are reported as [`QueueError::Partial`] with the
    /// originals' receipts. SQS takes at most 1 MiB in one SendMessageBatch (bodies and
    /// attributes, [`crate::sqs::job_message_bytes`]) and refuses a larger call whole: the SQS
    /// adapter splits a call by size, the in-memory queue refuses one over 1 MiB, so a caller
    /// groups with [`crate::sqs::send_batches`].
    async fn resend(&self, messages: &[Message], delay: Duration) -> Result<(), QueueError>;
}

/// A job that cannot succeed, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The job's body as received.
    pub body: String,
    /// Why it was dead-lettered (its text goes in a message attribute).
    pub reason: Reason,
    /// Where it came from.
    pub origin: Origin,
}

/// Where jobs go when they are not done: the dead-letter queue or back on a queue.
#[async_trait]
pub trait JobSink: Send + Sync {
    /// Sends a job to the dead-letter queue with the reason.
    async fn dead_letter(&self, letter: DeadLetter) -> Result<(), QueueError>;
    /// Puts a job back (on the retry queue if there is one) to be seen after `delay`; `origin`
    /// carries the new attempt count and the FIFO ids to keep.
    async fn requeue(&self, body: &str, origin: &Origin, delay: Duration)
    -> Result<(), QueueError>;
}

/// What a redrive of the dead-letter queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RedriveReport {
    /// Messages in the dead-letter queue before the redrive (approximate on SQS).
    pub dead: u64,
    /// Messages moved back to the job queue (0 on a dry run).
    pub moved: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// Moving dead-lettered jobs back to the job queue (attempt count reset).
#[async_trait]
pub trait Redrive: Send + Sync {
    /// Moves up to `max` (all when `None`) messages; with `dry_run`, only counts them.
    async fn redrive(&self, max: Option<u64>, dry_run: bool) -> Result<RedriveReport, QueueError>;
}
