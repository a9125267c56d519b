//! [`MemoryStore`]: the state table in memory: versioned records ([`RecordStore`]), the
//! orchestrator lease ([`LeaseStore`]) and idempotency records ([`IdempotencyStore`]), with the
//! same conditions the DynamoDB adapter writes.
//!
//! - A record save succeeds only at the expected version (0: the record must not exist) and, with
//!   a fence, only while the lease's token is that fence; the new version is the old plus one.
//!   As in the DynamoDB adapter the lease lives on the quota record's item, so a quota save is
//!   billed as one update of that item, and another record's fenced save as a transaction.
//! - The lease is taken when free, expired, or already the taker's; each take's token is one more
//!   than the largest token ever issued, so a taken-over holder's writes are fenced off. A renew
//!   needs the token to be current (an expired lease nobody took can still be renewed).
//! - A job claim is refused while another claim younger than the claim TTL stands
//!   ([`Claim::InProgress`]) or while a completed record exists ([`Claim::AlreadyDone`]).
//!   A claim made for a batch names it and is kept for the done records' time; the batch's
//!   one done record lists its jobs that succeeded, and a claim that finds such a job's claim
//!   reads it ([`Claim::AlreadyDone`], whatever the claim's age).
//! - TTL is lazy, as DynamoDB's is: an item past its TTL stays readable (a done record still
//!   answers [`Claim::AlreadyDone`]) until it is swept, which DynamoDB does within days and
//!   this store does only when [`MemoryStore::sweep_expired`] is called.
//!
//! Fault injection for tests: [`MemoryStore::fail_next_saves`] makes the next saves lose their
//! race ([`StoreError::Conflict`]), to exercise retry loops.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use qo_core::ports::{
    Claim, IdempotencyStore, Lease, LeaseStore, RecordKey, RecordStore, StoreError, Versioned,
};
use qo_core::time::Timestamp;

/// Where a job's idempotency record stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Claimed at this time and not completed.
    InProgress {
        /// When it was claimed.
        claimed_at: Timestamp,
    },
    /// Completed; the record is kept until `expires_at`.
    Done {
        /// When the record expires.
        expires_at: Timestamp,
    },
}

/// What the store was asked, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Record loads.
    pub loads: u64,
    /// Record saves that were written.
    pub saves: u64,
    /// Record saves refused: version conflicts (injected ones included) and fenced writes.
    pub refused: u64,
    /// Read request units DynamoDB on demand would bill for these operations: a strongly
    /// consistent `GetItem` costs one per 4 KB of the item, at least one (a missing item too).
    pub read_units: u64,
    /// Write request units it would bill: one per 1 KB of the item for a put, update or
    /// delete (a failed conditional write too), twice that for each item of a transaction.
    pub write_units: u64,
}

/// Bytes an item carries beside a record's document (key, version and the names of its
/// attributes), for the request units.
const ITEM_OVERHEAD_BYTES: usize = 64;

/// Read units of a strongly consistent read of an item of `bytes`.
fn read_units(bytes: usize) -> u64 {
    bytes.div_ceil(4096).max(1) as u64
}

/// Write units of a write of an item of `bytes`.
fn write_units(bytes: usize) -> u64 {
    bytes.div_ceil(1024).max(1) as u64
}

/// Bytes the lease's attributes add to the quota record's item, which carries them.
const LEASE_BYTES: usize = 64;

/// The size of a record's item.
fn record_bytes(value: &serde_json::Value) -> usize {
    value.to_string().len() + ITEM_OVERHEAD_BYTES
}

/// A claim made for a batch: the batch it names, and until when the item is kept.
#[derive(Clone, Debug)]
struct BatchClaim {
    batch: String,
    keep_until: Timestamp,
}

/// A batch's done record: its jobs that succeeded, and when it expires.
#[derive(Clone, Debug)]
struct BatchDone {
    jobs: HashSet<String>,
    expires_at: Timestamp,
}

#[derive(Debug, Default)]
struct State {
    records: HashMap<RecordKey, Versioned<serde_json::Value>>,
    lease: Option<Lease>,
    /// The largest token ever issued: tokens never go back, even after a release.
    max_token: u64,
    jobs: HashMap<String, JobStatus>,
    /// The batch a standing claim names (claims made with `claim_in_batch`).
    batch_claims: HashMap<String, BatchClaim>,
    /// Batches' done records, by batch key.
    batches: HashMap<String, BatchDone>,
    fail_saves: u32,
    stats: StoreStats,
    latency: Duration,
}

impl State {
    /// The size of the item that carries the lease: the quota record's, with the lease's
    /// attributes.
    fn lease_item_bytes(&self) -> usize {
        self.records
            .get(&RecordKey::Quota)
            .map_or(ITEM_OVERHEAD_BYTES, |v| record_bytes(&v.value))
            + LEASE_BYTES
    }

    /// A job's record, with a batch claim's done record read as a claim reads it.
    fn status(&self, job_id: &str) -> Option<JobStatus> {
        let status = *self.jobs.get(job_id)?;
        if let JobStatus::InProgress { .. } = status
            && let Some(done) = self.batch_done(job_id)
        {
            return Some(JobStatus::Done {
                expires_at: done.expires_at,
            });
        }
        Some(status)
    }

    /// The done record of the batch a job's claim names, when it lists the job.
    fn batch_done(&self, job_id: &str) -> Option<&BatchDone> {
        let claim = self.batch_claims.get(job_id)?;
        self.batches
            .get(&claim.batch)
            .filter(|done| done.jobs.contains(job_id))
    }

    /// The claim of `job_id` at `now` (the conditional put, and the reads when it finds a
    /// claim standing), billed as the DynamoDB adapter's requests are; `batch` is the batch
    /// the claim names and until when it is kept.
    fn claim(
        &mut self,
        job_id: &str,
        now: Timestamp,
        claim_ttl: Duration,
        batch: Option<BatchClaim>,
    ) -> Claim {
        // A conditional put, which also takes over a stale claim that names no batch; when its
        // condition fails, a read of the item that is there, and of its batch's done record
        // when it names a batch; a stale one not listed there is taken over by a second put.
        self.stats.write_units += 1;
        if let Some(status) = self.jobs.get(job_id).copied() {
            let stale = match status {
                JobStatus::InProgress { claimed_at } => claimed_at.plus(claim_ttl) <= now,
                JobStatus::Done { .. } => false,
            };
            let of_batch = self.batch_claims.contains_key(job_id);
            if !stale || of_batch {
                self.stats.read_units += 1 + u64::from(of_batch);
                match (self.status(job_id), status) {
                    // Past its TTL but not swept: still there, as in DynamoDB.
                    (Some(JobStatus::Done { .. }), _) => return Claim::AlreadyDone,
                    (_, JobStatus::InProgress { claimed_at }) if !stale => {
                        return Claim::InProgress { since: claimed_at };
                    }
                    _ => self.stats.write_units += 1,
                }
            }
        }
        self.jobs.insert(
            job_id.to_string(),
            JobStatus::InProgress { claimed_at: now },
        );
        match batch {
            Some(b) => self.batch_claims.insert(job_id.to_string(), b),
            None => self.batch_claims.remove(job_id),
        };
        Claim::Claimed
    }
}

/// The state table in memory. Cloning shares it, so the orchestrator, the worker and `qo` see
/// one table.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes the idempotency records past their TTL at `now`, as DynamoDB's TTL sweep does
    /// some time (often days) after they expire: a done record past `expires_at`, and a claim
    /// past `claim_ttl` (the DynamoDB adapter writes a claim's TTL that far ahead). Returns how
    /// many went.
    /// A claim made for a batch is kept until its `keep`, and a batch's done record until its
    /// TTL; those go too, uncounted.
    pub fn sweep_expired(&self, now: Timestamp, claim_ttl: Duration) -> usize {
        let mut st = self.lock();
        let st = &mut *st;
        let before = st.jobs.len();
        let batch_claims = &st.batch_claims;
        st.jobs.retain(|id, status| match status {
            JobStatus::Done { expires_at } => *expires_at > now,
            JobStatus::InProgress { claimed_at } => match batch_claims.get(id) {
                Some(c) => c.keep_until > now,
                None => claimed_at.plus(claim_ttl) > now,
            },
        });
        let jobs = &st.jobs;
        st.batch_claims.retain(|id, _| jobs.contains_key(id));
        st.batches.retain(|_, b| b.expires_at > now);
        before - st.jobs.len()
    }

    /// Makes every call take `latency` (on tokio's clock, so paused time jumps it), as a
    /// DynamoDB round trip does: a loop that stops its other work while it waits shows.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Waits out the configured latency.
    async fn round_trip(&self) {
        let latency = self.lock().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// Makes the next `n` record saves fail with [`StoreError::Conflict`] without writing, as if
    /// another writer had won each race (replaces any count still pending; 0 turns it off).
    pub fn fail_next_saves(&self, n: u32) {
        self.lock().fail_saves = n;
    }

    /// A record as stored, without counting a load.
    pub fn record(&self, key: RecordKey) -> Option<Versioned<serde_json::Value>> {
        self.lock().records.get(&key).cloned()
    }

    /// The lease as stored (expired or not).
    pub fn lease(&self) -> Option<Lease> {
        self.lock().lease.clone()
    }

    /// A job's idempotency record as stored (expired or not), read as a claim reads it: a
    /// claim for a batch whose done record lists the job is [`JobStatus::Done`], until that
    /// record expires.
    pub fn job_status(&self, job_id: &str) -> Option<JobStatus> {
        self.lock().status(job_id)
    }

    /// How many jobs are done, as [`MemoryStore::job_status`] reads them (expired or not).
    pub fn done_count(&self) -> usize {
        let st = self.lock();
        st.jobs
            .keys()
            .filter(|id| matches!(st.status(id), Some(JobStatus::Done { .. })))
            .count()
    }

    /// Counts of loads and saves so far.
    pub fn stats(&self) -> StoreStats {
        self.lock().stats
    }
}

#[async_trait]
impl RecordStore for MemoryStore {
    async fn load(
        &self,
        key: RecordKey,
    ) -> Result<Option<Versioned<serde_json::Value>>, StoreError> {
        self.round_trip().await;
        let mut st = self.lock();
        st.stats.loads += 1;
        let found = st.records.get(&key).cloned();
        st.stats.read_units += read_units(found.as_ref().map_or(0, |v| record_bytes(&v.value)));
        Ok(found)
    }

    async fn save(
        &self,
        key: RecordKey,
        value: serde_json::Value,
        expected: u64,
        fence: Option<u64>,
    ) -> Result<u64, StoreError> {
        self.round_trip().await;
        let mut st = self.lock();
        // The quota record shares the lease's item: its save, fenced or not, is one update
        // of that item. Another record's fenced save is a transaction: a condition check on
        // the lease's item and the put, each item billed twice.
        let put = write_units(record_bytes(&value));
        st.stats.write_units += match fence {
            _ if key == RecordKey::Quota => write_units(record_bytes(&value) + LEASE_BYTES),
            Some(_) => 2 * (put + write_units(st.lease_item_bytes())),
            None => put,
        };
        let conflict = StoreError::Conflict {
            key: key.as_str(),
            expected,
        };
        if st.fail_saves > 0 {
            st.fail_saves -= 1;
            st.stats.refused += 1;
            return Err(conflict);
        }
        if let Some(token) = fence
            && st.lease.as_ref().map(|l| l.token) != Some(token)
        {
            st.stats.refused += 1;
            return Err(StoreError::Fenced {
                key: key.as_str(),
                token,
            });
        }
        let current = st.records.get(&key).map_or(0, |v| v.version);
        if current != expected {
            st.stats.refused += 1;
            return Err(conflict);
        }
        let version = expected + 1;
        st.records.insert(key, Versioned { value, version });
        st.stats.saves += 1;
        Ok(version)
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn take(&self, owner: &str, now: Timestamp, ttl: Duration) -> Result<Lease, StoreError> {
        self.round_trip().await;
        let mut st = self.lock();
        // The lease's item is read, then updated on a condition.
        st.stats.read_units += read_units(st.lease_item_bytes());
        if let Some(held) = &st.lease
            && held.owner != owner
            && held.expires_at > now
        {
            return Err(StoreError::LeaseHeld {
                owner: held.owner.clone(),
                until: held.expires_at,
            });
        }
        st.stats.write_units += write_units(st.lease_item_bytes());
        st.max_token += 1;
        let lease = Lease {
            owner: owner.to_string(),
            token: st.max_token,
            expires_at: now.plus(ttl),
        };
        st.lease = Some(lease.clone());
        Ok(lease)
    }

    async fn renew(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.round_trip().await;
        let mut st = self.lock();
        st.stats.write_units += write_units(st.lease_item_bytes());
        match &mut st.lease {
            Some(held) if held.token == lease.token => {
                held.expires_at = now.plus(ttl);
                Ok(held.clone())
            }
            _ => Err(StoreError::LeaseLost { token: lease.token }),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.round_trip().await;
        let mut st = self.lock();
        st.stats.write_units += write_units(st.lease_item_bytes());
        if st.lease.as_ref().is_some_and(|l| l.token == lease.token) {
            st.lease = None;
        }
        Ok(())
    }

    async fn current(&self) -> Result<Option<Lease>, StoreError> {
        self.round_trip().await;
        {
            let mut st = self.lock();
            st.stats.read_units += read_units(st.lease_item_bytes());
        }
        Ok(self.lease())
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(
        &self,
        job_id: &str,
        now: Timestamp,
        claim_ttl: Duration,
    ) -> Result<Claim, StoreError> {
        self.round_trip().await;
        Ok(self.lock().claim(job_id, now, claim_ttl, None))
    }

    async fn claim_in_batch(
        &self,
        job_id: &str,
        batch: &str,
        now: Timestamp,
        claim_ttl: Duration,
        keep: Duration,
    ) -> Result<Claim, StoreError> {
        self.round_trip().await;
        let claim = BatchClaim {
            batch: batch.to_string(),
            keep_until: now.plus(keep.max(claim_ttl)),
        };
        Ok(self.lock().claim(job_id, now, claim_ttl, Some(claim)))
    }

    async fn complete_batch(
        &self,
        batch: &str,
        job_ids: &[&str],
        now: Timestamp,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.round_trip().await;
        let mut st = self.lock();
        // One update that adds the jobs' ids to the batch's set (DynamoDB's `ADD` on a string
        // set: a union), so that two deliveries of the batch that split its claims keep each
        // other's successes. Billed on the item after the update.
        let done = st
            .batches
            .entry(batch.to_string())
            .or_insert_with(|| BatchDone {
                jobs: Default::default(),
                expires_at: now.plus(ttl),
            });
        done.jobs.extend(job_ids.iter().map(|id| id.to_string()));
        done.expires_at = now.plus(ttl);
        let bytes = batch.len() + done.jobs.iter().map(String::len).sum::<usize>();
        st.stats.write_units += write_units(bytes + ITEM_OVERHEAD_BYTES);
        Ok(())
    }

    async fn complete(
        &self,
        job_id: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.round_trip().await;
        let mut st = self.lock();
        st.stats.write_units += 1;
        st.jobs.insert(
            job_id.to_string(),
            JobStatus::Done {
                expires_at: now.plus(ttl),
            },
        );
        st.batch_claims.remove(job_id);
        Ok(())
    }

    async fn abandon(&self, job_id: &str) -> Result<(), StoreError> {
        self.round_trip().await;
        let mut st = self.lock();
        st.stats.write_units += 1;
        if matches!(st.status(job_id), Some(JobStatus::InProgress { .. })) {
            st.jobs.remove(job_id);
            st.batch_claims.remove(job_id);
        }
        Ok(())
    }

    async fn is_done(&self, job_id: &str) -> Result<bool, StoreError> {
        self.round_trip().await;
        let mut st = self.lock();
        // A read of the job's item, and of its batch's done record when the claim names one.
        let of_batch = st.batch_claims.contains_key(job_id);
        st.stats.read_units += 1 + u64::from(of_batch);
        Ok(matches!(st.status(job_id), Some(JobStatus::Done { .. })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qo_core::ports::update_record;
    use serde_json::json;

    const TTL: Duration = Duration::from_secs(30);

    fn t(s: u64) -> Timestamp {
        Timestamp::from_secs(s)
    }

    #[tokio::test]
    async fn request_units_are_counted_as_dynamodb_bills_them() {
        let s = MemoryStore::new();
        let units = |s: &MemoryStore| (s.stats().write_units, s.stats().read_units);
        // A read of a missing item costs one unit; a small put one write unit.
        s.load(RecordKey::Quota).await.expect("load");
        s.save(RecordKey::Quota, json!({"n": 1}), 0, None)
            .await
            .expect("save");
        assert_eq!(units(&s), (1, 1));
        // The quota record carries the lease: a take reads and updates its item, and a fenced
        // save of the quota is one update; another record's is a transaction of two items,
        // each billed twice.
        let lease = s.take("me", t(0), TTL).await.expect("take");
        assert_eq!(units(&s), (2, 2));
        s.save(RecordKey::Quota, json!({"n": 2}), 1, Some(lease.token))
            .await
            .expect("fenced save");
        assert_eq!(units(&s), (3, 2));
        s.save(RecordKey::Sweep, json!({"n": 1}), 0, Some(lease.token))
            .await
            .expect("fenced save");
        assert_eq!(units(&s), (7, 2));
        // A record of under 3 KB (2,900 bytes of padding): three units to write, one to read.
        let big = json!({ "pad": "x".repeat(2900) });
        s.save(RecordKey::Control, big, 0, None)
            .await
            .expect("save");
        s.load(RecordKey::Control).await.expect("load");
        assert_eq!(units(&s), (10, 3));
        // A claim that finds the job in progress: the failed put, then a read.
        s.claim("j", t(0), TTL).await.expect("claim");
        s.claim("j", t(1), TTL).await.expect("claim");
        assert_eq!(units(&s), (12, 4));
    }

    #[tokio::test]
    async fn conditional_save_conflicts_on_a_stale_version() {
        let s = MemoryStore::new();
        assert_eq!(s.load(RecordKey::Quota).await.expect("load"), None);
        let v1 = s
            .save(RecordKey::Quota, json!({"n": 1}), 0, None)
            .await
            .expect("create");
        assert_eq!(v1, 1);
        // Creating again (expected 0) loses: the record exists.
        let e = s.save(RecordKey::Quota, json!({"n": 9}), 0, None).await;
        assert!(
            matches!(
                e,
                Err(StoreError::Conflict {
                    key: "quota",
                    expected: 0
                })
            ),
            "{e:?}"
        );
        let v2 = s
            .save(RecordKey::Quota, json!({"n": 2}), 1, None)
            .await
            .expect("update at v1");
        assert_eq!(v2, 2);
        let e = s.save(RecordKey::Quota, json!({"n": 3}), 1, None).await;
        assert!(
            matches!(e, Err(StoreError::Conflict { expected: 1, .. })),
            "{e:?}"
        );
        let got = s
            .load(RecordKey::Quota)
            .await
            .expect("load")
            .expect("exists");
        assert_eq!(
            got,
            Versioned {
                value: json!({"n": 2}),
                version: 2
            }
        );
        assert_eq!(s.record(RecordKey::Circuit), None, "records are separate");
        let stats = s.stats();
        assert_eq!((stats.loads, stats.saves, stats.refused), (2, 2, 2));
    }

    #[tokio::test]
    async fn injected_conflicts_are_retried_by_update_record() {
        let s = MemoryStore::new();
        s.fail_next_saves(3);
        let got = update_record::<serde_json::Value, _>(&s, RecordKey::Control, |_| {
            Some(json!({"paused": true}))
        })
        .await
        .expect("succeeds on the fourth try");
        assert_eq!(got.version, 1);
        assert_eq!(s.stats().refused, 3);
        // More injected failures than the loop's attempts: the conflict comes out.
        s.fail_next_saves(100);
        let e = update_record::<serde_json::Value, _>(&s, RecordKey::Control, |_| {
            Some(json!({"paused": false}))
        })
        .await;
        assert!(matches!(e, Err(StoreError::Conflict { .. })), "{e:?}");
        s.fail_next_saves(0);
        assert_eq!(
            s.record(RecordKey::Control).expect("kept").value,
            json!({"paused": true})
        );
    }

    #[tokio::test]
    async fn fenced_save_is_refused_after_take_over() {
        let s = MemoryStore::new();
        let a = s.take("a", t(0), TTL).await.expect("take");
        s.save(RecordKey::Quota, json!(1), 0, Some(a.token))
            .await
            .expect("holder writes");
        let b = s
            .take("b", t(31), TTL)
            .await
            .expect("take over after expiry");
        let e = s.save(RecordKey::Quota, json!(2), 1, Some(a.token)).await;
        assert!(
            matches!(e, Err(StoreError::Fenced { key: "quota", token }) if token == a.token),
            "{e:?}"
        );
        assert_eq!(s.record(RecordKey::Quota).expect("kept").value, json!(1));
        s.save(RecordKey::Quota, json!(2), 1, Some(b.token))
            .await
            .expect("new holder writes");
        // Unfenced writes (the worker's) are not affected by the lease.
        s.save(RecordKey::Quota, json!(3), 2, None)
            .await
            .expect("unfenced");
        // After a release no fence holds.
        s.release(&b).await.expect("release");
        let e = s.save(RecordKey::Quota, json!(4), 3, Some(b.token)).await;
        assert!(matches!(e, Err(StoreError::Fenced { .. })), "{e:?}");
    }

    #[tokio::test]
    async fn lease_take_over_after_expiry_gives_a_bigger_token() {
        let s = MemoryStore::new();
        let a = s.take("a", t(0), TTL).await.expect("take");
        let e = s.take("b", t(10), TTL).await;
        assert!(
            matches!(&e, Err(StoreError::LeaseHeld { owner, until }) if owner == "a" && *until == t(30)),
            "{e:?}"
        );
        // The holder renews before expiry.
        let a = s.renew(&a, t(20), TTL).await.expect("renew");
        assert_eq!(a.expires_at, t(50));
        assert!(
            s.take("b", t(40), TTL).await.is_err(),
            "renewed lease holds"
        );
        let b = s.take("b", t(50), TTL).await.expect("expired: take over");
        assert!(b.token > a.token);
        assert_eq!(b.owner, "b");
        let e = s.renew(&a, t(51), TTL).await;
        assert!(
            matches!(e, Err(StoreError::LeaseLost { token }) if token == a.token),
            "{e:?}"
        );
        // The old holder's release does not free the new holder's lease.
        s.release(&a).await.expect("no-op");
        assert_eq!(s.current().await.expect("current"), Some(b.clone()));
    }

    #[tokio::test]
    async fn same_owner_retakes_with_a_bigger_token_and_tokens_survive_release() {
        let s = MemoryStore::new();
        let a1 = s.take("a", t(0), TTL).await.expect("take");
        let a2 = s.take("a", t(1), TTL).await.expect("own lease");
        assert!(a2.token > a1.token);
        assert!(s.renew(&a1, t(2), TTL).await.is_err(), "older token lost");
        s.release(&a2).await.expect("release");
        assert_eq!(s.current().await.expect("current"), None);
        assert!(
            s.renew(&a2, t(3), TTL).await.is_err(),
            "released lease is lost"
        );
        let b = s.take("b", t(3), TTL).await.expect("free");
        assert!(b.token > a2.token);
    }

    #[tokio::test]
    async fn expired_lease_nobody_took_can_be_renewed() {
        let s = MemoryStore::new();
        let a = s.take("a", t(0), TTL).await.expect("take");
        let a2 = s.renew(&a, t(100), TTL).await.expect("still current");
        assert_eq!((a2.token, a2.expires_at), (a.token, t(130)));
    }

    #[tokio::test]
    async fn idempotency_claim_done_in_progress_expiry_and_abandon() {
        let s = MemoryStore::new();
        let claim_ttl = Duration::from_secs(120);
        let keep = Duration::from_secs(86_400);

        assert_eq!(
            s.claim("j1", t(0), claim_ttl).await.expect("claim"),
            Claim::Claimed
        );
        // A concurrent delivery sees the claim.
        assert_eq!(
            s.claim("j1", t(5), claim_ttl).await.expect("claim"),
            Claim::InProgress { since: t(0) }
        );
        s.complete("j1", t(6), keep).await.expect("complete");
        assert_eq!(
            s.claim("j1", t(7), claim_ttl).await.expect("claim"),
            Claim::AlreadyDone
        );
        assert_eq!(s.done_count(), 1);
        // Abandoning a done job changes nothing.
        s.abandon("j1").await.expect("abandon");
        assert_eq!(
            s.claim("j1", t(8), claim_ttl).await.expect("claim"),
            Claim::AlreadyDone
        );
        // Past its TTL the done record stays until swept (DynamoDB's TTL is lazy)...
        assert_eq!(
            s.claim("j1", t(6 + 86_400), claim_ttl)
                .await
                .expect("claim"),
            Claim::AlreadyDone
        );
        // ...and is gone once swept.
        assert_eq!(s.sweep_expired(t(6 + 86_400), claim_ttl), 1);
        assert_eq!(
            s.claim("j1", t(7 + 86_400), claim_ttl)
                .await
                .expect("claim"),
            Claim::Claimed
        );

        // An expired claim can be claimed again.
        assert_eq!(
            s.claim("j2", t(0), claim_ttl).await.expect("claim"),
            Claim::Claimed
        );
        assert_eq!(
            s.claim("j2", t(119), claim_ttl).await.expect("claim"),
            Claim::InProgress { since: t(0) }
        );
        assert_eq!(
            s.claim("j2", t(120), claim_ttl).await.expect("claim"),
            Claim::Claimed
        );
        assert_eq!(
            s.job_status("j2"),
            Some(JobStatus::InProgress { claimed_at: t(120) })
        );

        // Abandon allows a re-claim at once.
        assert_eq!(
            s.claim("j3", t(0), claim_ttl).await.expect("claim"),
            Claim::Claimed
        );
        s.abandon("j3").await.expect("abandon");
        assert_eq!(s.job_status("j3"), None);
        assert_eq!(
            s.claim("j3", t(1), claim_ttl).await.expect("claim"),
            Claim::Claimed
        );
    }

    /// Two deliveries of one batch event that split its claims: each records its own
    /// successes, and neither erases the other's (a union, as DynamoDB's `ADD` on a set).
    #[tokio::test]
    async fn is_done_reads_lone_and_batch_records_and_claims_nothing() {
        let s = MemoryStore::new();
        let day = Duration::from_secs(86_400);
        s.claim("alone", t(1), TTL).await.expect("claim");
        s.complete("alone", t(2), day).await.expect("done");
        for id in ["listed", "claimed"] {
            s.claim_in_batch(id, "b", t(1), TTL, day)
                .await
                .expect("claim");
        }
        s.complete_batch("b", &["listed"], t(2), day)
            .await
            .expect("batch done");
        let mut got = Vec::new();
        for id in ["alone", "listed", "claimed", "unknown"] {
            got.push(s.is_done(id).await.expect("read"));
        }
        assert_eq!(got, [true, true, false, false]);
        // A read claims nothing: the unknown job is claimed afresh afterwards.
        assert_eq!(
            s.claim("unknown", t(3), TTL).await.expect("claim"),
            Claim::Claimed
        );
    }

    #[tokio::test]
    async fn two_completes_of_one_batch_keep_both_sets_of_jobs_done() {
        let s = MemoryStore::new();
        let claim_ttl = Duration::from_secs(120);
        let keep = Duration::from_secs(86_400);
        for id in ["j1", "j2", "j3", "j4"] {
            assert_eq!(
                s.claim_in_batch(id, "j1@0", t(0), claim_ttl, keep)
                    .await
                    .expect("claim"),
                Claim::Claimed
            );
        }
        s.complete_batch("j1@0", &["j1", "j3"], t(1), keep)
            .await
            .expect("complete");
        s.complete_batch("j1@0", &["j2", "j4"], t(2), keep)
            .await
            .expect("complete");
        // Long past the claim TTL (when a copy of each would take over a claim the batch's
        // record does not list), all four are done.
        for id in ["j1", "j2", "j3", "j4"] {
            assert_eq!(
                s.claim(id, t(1_000), claim_ttl).await.expect("claim"),
                Claim::AlreadyDone,
                "{id}"
            );
        }
        assert_eq!(s.done_count(), 4);
        // The same delivery's write again (a retried request) changes nothing.
        s.complete_batch("j1@0", &["j1", "j3"], t(3), keep)
            .await
            .expect("complete");
        assert_eq!(s.done_count(), 4);
    }

    #[tokio::test]
    async fn a_batch_claim_is_done_through_its_batch_record_or_taken_over_when_stale() {
        let s = MemoryStore::new();
        let claim_ttl = Duration::from_secs(120);
        let keep = Duration::from_secs(86_400);
        for id in ["a", "b"] {
            assert_eq!(
                s.claim_in_batch(id, "a@0", t(0), claim_ttl, keep)
                    .await
                    .expect("claim"),
                Claim::Claimed
            );
        }
        // While the batch runs, its jobs are in progress to any other delivery.
        assert_eq!(
            s.claim("a", t(1), claim_ttl).await.expect("claim"),
            Claim::InProgress { since: t(0) }
        );
        let before = s.stats().write_units;
        s.complete_batch("a@0", &["a"], t(2), keep)
            .await
            .expect("complete");
        assert_eq!(s.stats().write_units - before, 1, "one write for the batch");
        // "a" is done for any delivery, a batch's or a lone one's, long after the claim TTL.
        assert_eq!(
            s.claim("a", t(3), claim_ttl).await.expect("claim"),
            Claim::AlreadyDone
        );
        assert_eq!(
            s.claim_in_batch("a", "a@9", t(500), claim_ttl, keep)
                .await
                .expect("claim"),
            Claim::AlreadyDone
        );
        assert_eq!(s.done_count(), 1);
        // "b" was not listed: its delivery died; once stale, its claim is taken over.
        assert_eq!(
            s.claim("b", t(119), claim_ttl).await.expect("claim"),
            Claim::InProgress { since: t(0) }
        );
        assert_eq!(
            s.claim("b", t(120), claim_ttl).await.expect("claim"),
            Claim::Claimed
        );
        // A sweep after the claim TTL keeps a done batch claim for the done records' time
        // (it takes the lone claim "b" is now).
        assert_eq!(s.sweep_expired(t(1_000), claim_ttl), 1);
        assert_eq!(
            s.claim("a", t(1_001), claim_ttl).await.expect("claim"),
            Claim::AlreadyDone
        );
        assert_eq!(s.sweep_expired(t(2 + 86_400), claim_ttl), 1);
        assert_eq!(s.job_status("a"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_let_exactly_one_through() {
        let s = MemoryStore::new();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.claim("same", t(0), Duration::from_secs(60))
                    .await
                    .expect("claim")
            }));
        }
        let mut claimed = 0;
        for task in tasks {
            if task.await.expect("task") == Claim::Claimed {
                claimed += 1;
            }
        }
        assert_eq!(claimed, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_updates_lose_no_increment() {
        let s = MemoryStore::new();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    // Retry whole updates: under contention one update_record may run out
                    // of attempts, which is the caller's to handle.
                    while update_record::<u64, _>(&s, RecordKey::Quota, |n| Some(n + 1))
                        .await
                        .is_err()
                    {}
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let got = s.record(RecordKey::Quota).expect("exists");
        assert_eq!(got.value, json!(200));
        assert_eq!(got.version, 200);
    }
}
