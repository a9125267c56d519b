//! The state store ports: [`RecordStore`] (versioned JSON records with conditional writes,
//! and the typed helpers over it), [`LeaseStore`] (one dispatching orchestrator) and
//! [`IdempotencyStore`] (one successful call per job).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Serialize, de::DeserializeOwned};

use super::BoxError;
use crate::time::Timestamp;

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
    /// Takes the lease if it is free, expired, or already `owner`'s; its token is larger than
    /// any issued before, a released lease's included.
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
    /// Claims `job_id` for a delivery of the batch `batch` ([`crate::BatchEvent::key`]): as
    /// [`IdempotencyStore::claim`], but the claim names the batch and is kept for `keep` (the
    /// done records' time), because the batch's one done record
    /// ([`IdempotencyStore::complete_batch`]) is found through it. A claim standing is then
    /// [`Claim::AlreadyDone`] when its batch's done record lists the job, whatever its age;
    /// otherwise it is taken again once older than `claim_ttl`, as a lone claim is.
    async fn claim_in_batch(
        &self,
        job_id: &str,
        batch: &str,
        now: Timestamp,
        claim_ttl: Duration,
        keep: Duration,
    ) -> Result<Claim, StoreError>;
    /// Marks `job_id` done; the record is kept for `ttl`.
    async fn complete(&self, job_id: &str, now: Timestamp, ttl: Duration)
    -> Result<(), StoreError>;
    /// Marks the jobs `job_ids` of the batch `batch`, each claimed with
    /// [`IdempotencyStore::claim_in_batch`], done in one record kept for `ttl`: one write for
    /// the batch instead of one a job.
    async fn complete_batch(
        &self,
        batch: &str,
        job_ids: &[&str],
        now: Timestamp,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// Drops a claim whose call did not succeed, so a retry may claim it.
    async fn abandon(&self, job_id: &str) -> Result<(), StoreError>;
    /// Whether `job_id` is recorded done, alone or in its batch's done record: a read, which
    /// claims nothing. `false` once the record has expired and been deleted, so it answers
    /// only within the done records' time (`IDEMPOTENCY_TTL_S`).
    async fn is_done(&self, job_id: &str) -> Result<bool, StoreError>;
}
