//! The ports: narrow traits the loop and the worker are generic over. Each has an AWS adapter
//! (`qo-aws`) and an in-memory adapter (`qo-memory`).
//!
//! | port | orchestrator | worker |
//! |---|---|---|
//! | [`JobSource`] receive, delete, release, re-send fresh copies | yes | |
//! | [`JobSink`] dead-letter, re-queue | yes | yes |
//! | [`RecordStore`] quota, circuit, control records | yes | yes |
//! | [`LeaseStore`] one dispatching orchestrator | yes | |
//! | [`IdempotencyStore`] one successful call per job | | yes |
//! | [`Invoker`] async invoke of the worker | yes | |
//! | [`crate::time::Clock`] | yes | yes |

use std::time::Duration;

use async_trait::async_trait;
use serde::{Serialize, de::DeserializeOwned};

use crate::job::{Origin, WorkerEvent};
use crate::time::Timestamp;

/// A boxed error from an adapter's backend, kept as the source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which queue a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRole {
    /// The main job queue.
    Main,
    /// The retry queue (polled first).
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
    },
}

impl QueueError {
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
    /// which goes through one queue at a time.
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
    /// originals' receipts.
    async fn resend(&self, messages: &[Message], delay: Duration) -> Result<(), QueueError>;
}

/// A job that cannot succeed, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The job's body as received.
    pub body: String,
    /// Why it was dead-lettered (goes in a message attribute).
    pub reason: String,
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

/// Why a job is given up on and dead-lettered instead of re-queued. A failed attempt and a
/// 429 have bounds of their own: a 429 is the pacer's signal, not the job's failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// The job failed `MAX_ATTEMPTS` times (5xx, timeout, no connection).
    Attempts {
        /// Attempts made, this one included.
        attempts: u32,
        /// Why the last one failed.
        last: String,
    },
    /// The API answered 429 `MAX_THROTTLED` times.
    Throttled {
        /// 429s answered, this one included.
        times: u32,
        /// The last 429's retry delay.
        last_retry_after: Duration,
    },
}

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GiveUp::Attempts { attempts, last } => {
                write!(f, "gave up after {attempts} attempts; last: {last}")
            }
            GiveUp::Throttled {
                times,
                last_retry_after,
            } => write!(
                f,
                "answered HTTP 429 {times} times (MAX_THROTTLED); last retry after {} ms",
                last_retry_after.as_millis()
            ),
        }
    }
}

/// What becomes of a job that was tried and not done: back on a queue with its new origin,
/// or dead-lettered past its bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Re-queue it with this origin.
    Requeue(Origin),
    /// Dead-letter it with this origin, for this reason.
    DeadLetter(Origin, GiveUp),
}

impl Retry {
    /// After a failed attempt (`why`): the attempt count raised; dead-lettered when it reaches
    /// `max_attempts`. The 429 count is kept.
    pub fn after_failure(origin: &Origin, max_attempts: u32, why: &str) -> Retry {
        let next = Origin {
            attempt: origin.attempt.saturating_add(1),
            ..origin.clone()
        };
        if next.attempt >= max_attempts {
            let attempts = next.attempt;
            Retry::DeadLetter(
                next,
                GiveUp::Attempts {
                    attempts,
                    last: why.to_string(),
                },
            )
        } else {
            Retry::Requeue(next)
        }
    }

    /// After a 429 whose retry delay is `retry_after`: the attempt count unchanged, the 429
    /// count raised; dead-lettered when that reaches `max_throttled`.
    pub fn after_throttle(origin: &Origin, max_throttled: u32, retry_after: Duration) -> Retry {
        let next = Origin {
            throttled: origin.throttled.saturating_add(1),
            ..origin.clone()
        };
        if next.throttled >= max_throttled {
            let times = next.throttled;
            Retry::DeadLetter(
                next,
                GiveUp::Throttled {
                    times,
                    last_retry_after: retry_after,
                },
            )
        } else {
            Retry::Requeue(next)
        }
    }

    /// Carries the choice out: re-queues `body` after `delay`, or dead-letters it with the
    /// reason. Returns the reason when it was dead-lettered.
    pub async fn apply(
        self,
        sink: &(impl JobSink + ?Sized),
        body: &str,
        delay: Duration,
    ) -> Result<Option<GiveUp>, QueueError> {
        match self {
            Retry::Requeue(origin) => {
                sink.requeue(body, &origin, delay).await?;
                Ok(None)
            }
            Retry::DeadLetter(origin, why) => {
                sink.dead_letter(DeadLetter {
                    body: body.to_string(),
                    reason: why.to_string(),
                    origin,
                })
                .await?;
                Ok(Some(why))
            }
        }
    }
}

/// Re-queues a job with its attempt count raised, or dead-letters it past `max_attempts`.
/// Returns true when it was re-queued.
pub async fn requeue_or_dead_letter(
    sink: &(impl JobSink + ?Sized),
    body: &str,
    origin: &Origin,
    delay: Duration,
    max_attempts: u32,
    why: &str,
) -> Result<bool, QueueError> {
    let given_up = Retry::after_failure(origin, max_attempts, why)
        .apply(sink, body, delay)
        .await?;
    Ok(given_up.is_none())
}

/// The records of shared state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKey {
    /// Quota usage ([`crate::quota::QuotaState`]).
    Quota,
    /// The circuit ([`crate::circuit::Circuit`]).
    Circuit,
    /// Operator controls and the API's back-off ([`crate::control::Control`]).
    Control,
    /// The orchestrator's retention sweep: its pass in progress and the last one completed.
    Sweep,
}

impl RecordKey {
    /// The record's name (the DynamoDB partition key).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKey::Quota => "quota",
            RecordKey::Circuit => "circuit",
            RecordKey::Control => "control",
            RecordKey::Sweep => "sweep",
        }
    }
}

/// A value with the version it was read at (0: the record did not exist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// The version.
    pub version: u64,
}

/// A state store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write lost a race: the record changed since it was read.
    #[error("conditional write on `{key}` lost a race (expected version {expected})")]
    Conflict {
        /// The record.
        key: &'static str,
        /// The version the write expected.
        expected: u64,
    },
    /// A write carried a fencing token that is no longer the lease's.
    #[error("write on `{key}` fenced off: lease token {token} is no longer current")]
    Fenced {
        /// The record.
        key: &'static str,
        /// The stale token.
        token: u64,
    },
    /// The lease is held by another orchestrator.
    #[error("lease held by `{owner}` until {until}")]
    LeaseHeld {
        /// Its holder.
        owner: String,
        /// Its expiry.
        until: Timestamp,
    },
    /// The lease was taken over or expired.
    #[error("lease lost: token {token} is no longer current")]
    LeaseLost {
        /// The lost token.
        token: u64,
    },
    /// A stored record could not be read.
    #[error("record `{key}` is corrupt: {reason}")]
    Corrupt {
        /// The record.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The backend refused or could not be reached.
    #[error("state store {op} failed: {source}")]
    Backend {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

/// Versioned JSON records with conditional writes.
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Reads a record; `None` when it does not exist.
    async fn load(
        &self,
        key: RecordKey,
    ) -> Result<Option<Versioned<serde_json::Value>>, StoreError>;
    /// Writes a record if its stored version is `expected` (0: must not exist yet) and, with
    /// `fence`, if the lease's token is still `fence`. Returns the new version.
    async fn save(
        &self,
        key: RecordKey,
        value: serde_json::Value,
        expected: u64,
        fence: Option<u64>,
    ) -> Result<u64, StoreError>;
}

/// Reads a typed record, the default when absent.
pub async fn load_record<T: DeserializeOwned + Default>(
    store: &(impl RecordStore + ?Sized),
    key: RecordKey,
) -> Result<Versioned<T>, StoreError> {
    match store.load(key).await? {
        None => Ok(Versioned {
            value: T::default(),
            version: 0,
        }),
        Some(v) => Ok(Versioned {
            value: serde_json::from_value(v.value).map_err(|e| StoreError::Corrupt {
                key: key.as_str(),
                reason: e.to_string(),
            })?,
            version: v.version,
        }),
    }
}

/// Writes a typed record conditionally on `expected`.
pub async fn save_record<T: Serialize>(
    store: &(impl RecordStore + ?Sized),
    key: RecordKey,
    value: &T,
    expected: u64,
    fence: Option<u64>,
) -> Result<u64, StoreError> {
    let json = serde_json::to_value(value).map_err(|e| StoreError::Corrupt {
        key: key.as_str(),
        reason: e.to_string(),
    })?;
    store.save(key, json, expected, fence).await
}

/// How many times [`update_record`] retries a lost race.
pub const UPDATE_ATTEMPTS: u32 = 8;

/// Read-modify-write with optimistic concurrency: reads the record, applies `f`, writes it
/// conditionally; a lost race is retried from a fresh read, never overwritten blindly.
/// `f` returns `None` to leave the record as it is. Returns the value now stored.
pub async fn update_record<T, F>(
    store: &(impl RecordStore + ?Sized),
    key: RecordKey,
    mut f: F,
) -> Result<Versioned<T>, StoreError>
where
    T: Serialize + DeserializeOwned + Default,
    F: FnMut(&T) -> Option<T> + Send,
{
    let mut last = None;
    for _ in 0..UPDATE_ATTEMPTS {
        let current: Versioned<T> = load_record(store, key).await?;
        let Some(next) = f(&current.value) else {
            return Ok(current);
        };
        match save_record(store, key, &next, current.version, None).await {
            Ok(version) => {
                return Ok(Versioned {
                    value: next,
                    version,
                });
            }
            Err(e @ StoreError::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(StoreError::Conflict {
        key: key.as_str(),
        expected: 0,
    }))
}

/// The orchestrator lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it.
    pub owner: String,
    /// The fencing token: grows at every take.
    pub token: u64,
    /// When it expires unless renewed.
    pub expires_at: Timestamp,
}

/// One dispatching orchestrator at a time.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes the lease if it is free, expired, or already `owner`'s; the token grows.
    /// [`StoreError::LeaseHeld`] when another holds it.
    async fn take(&self, owner: &str, now: Timestamp, ttl: Duration) -> Result<Lease, StoreError>;
    /// Extends a held lease; [`StoreError::LeaseLost`] if its token is no longer current.
    async fn renew(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError>;
    /// Gives the lease up (no-op if it was lost).
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;
    /// The current lease, if any (for status).
    async fn current(&self) -> Result<Option<Lease>, StoreError>;
}

/// The answer to claiming a job id before calling the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This delivery may call the API.
    Claimed,
    /// The job was already done: a duplicate delivery.
    AlreadyDone,
    /// Another delivery is calling the API right now (claimed at `since`).
    InProgress {
        /// When the other claim was made.
        since: Timestamp,
    },
}

/// One successful call per job, even when Lambda delivers an event twice.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `job_id`. A claim older than `claim_ttl` that never completed may be taken again.
    async fn claim(
        &self,
        job_id: &str,
        now: Timestamp,
        claim_ttl: Duration,
    ) -> Result<Claim, StoreError>;
    /// Marks `job_id` done; the record is kept for `ttl`.
    async fn complete(&self, job_id: &str, now: Timestamp, ttl: Duration)
    -> Result<(), StoreError>;
    /// Drops a claim whose call did not succeed, so a retry may claim it.
    async fn abandon(&self, job_id: &str) -> Result<(), StoreError>;
}

/// Invoking the worker failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// Lambda throttled the invoke (TooManyRequestsException).
    #[error("invoke throttled ({reason}); retry after {retry_after:?}")]
    Throttled {
        /// Lambda's reason.
        reason: String,
        /// Lambda's `retryAfterSeconds`.
        retry_after: Option<Duration>,
    },
    /// Lambda refused the event for good (bad payload, missing function, no permission).
    #[error("invoke rejected: {0}")]
    Rejected(String),
    /// The invoke could not be completed (network, 5xx after retries).
    #[error("invoke failed: {0}")]
    Transport(String),
}

impl InvokeError {
    /// How long to wait before trying again, when Lambda said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InvokeError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Hands an event to the worker asynchronously (InvocationType=Event).
#[async_trait]
pub trait Invoker: Send + Sync {
    /// Returns once the event is accepted for delivery.
    async fn invoke(&self, event: &WorkerEvent) -> Result<(), InvokeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(attempt: u32, throttled: u32) -> Origin {
        Origin {
            message_id: "m-1".into(),
            attempt,
            throttled,
            ..Origin::default()
        }
    }

    #[test]
    fn a_failure_raises_the_attempt_and_gives_up_at_max_attempts() {
        assert_eq!(
            Retry::after_failure(&origin(3, 7), 5, "HTTP 503"),
            Retry::Requeue(origin(4, 7))
        );
        let Retry::DeadLetter(o, why) = Retry::after_failure(&origin(4, 7), 5, "HTTP 503") else {
            panic!("the fifth attempt gives up")
        };
        assert_eq!(o, origin(5, 7));
        assert_eq!(why.to_string(), "gave up after 5 attempts; last: HTTP 503");
    }

    #[test]
    fn a_throttle_keeps_the_attempt_and_has_a_bound_of_its_own() {
        assert_eq!(
            Retry::after_throttle(&origin(4, 0), 100, Duration::from_secs(3)),
            Retry::Requeue(origin(4, 1)),
            "a 429 is not a failed attempt, even one short of MAX_ATTEMPTS"
        );
        let Retry::DeadLetter(o, why) =
            Retry::after_throttle(&origin(0, 99), 100, Duration::from_secs(3))
        else {
            panic!("the 100th 429 gives up")
        };
        assert_eq!(o, origin(0, 100));
        assert_eq!(
            why,
            GiveUp::Throttled {
                times: 100,
                last_retry_after: Duration::from_secs(3)
            }
        );
        assert_eq!(
            why.to_string(),
            "answered HTTP 429 100 times (MAX_THROTTLED); last retry after 3000 ms"
        );
    }
}
