//! [`FaultyStore`]: DynamoDB's faults around any state store. A call may be throttled (refused
//! before it does anything) or lose its answer (it takes effect, and the caller sees an
//! error), as a request that timed out after DynamoDB applied it does. Conditional failures
//! from a racing writer need no injection: the runs and deliveries the simulation overlaps
//! race for real.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use qo_core::Timestamp;
use qo_core::ports::{
    Claim, IdempotencyStore, Lease, LeaseStore, RecordKey, RecordStore, StoreError, Versioned,
};

/// What a call drew.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Pass,
    Throttle,
    LoseAnswer,
}

/// A done record that was not written: the jobs it was for, and when.
#[derive(Clone, Debug)]
pub struct Unrecorded {
    /// When the write failed.
    pub at: Timestamp,
    /// The jobs' idempotency keys.
    pub keys: Vec<String>,
}

struct Inner {
    throttle: f64,
    lose_answer: f64,
    rng: Mutex<StdRng>,
    unrecorded: Mutex<Vec<Unrecorded>>,
}

/// A store whose calls fail as DynamoDB's can. Cloning shares it.
#[derive(Clone)]
pub struct FaultyStore<S> {
    store: S,
    inner: Arc<Inner>,
}

impl<S> FaultyStore<S> {
    /// `store` with a fraction `throttle` of calls refused and `lose_answer` answered with an
    /// error after they took effect, drawn from `seed`.
    pub fn new(store: S, throttle: f64, lose_answer: f64, seed: u64) -> Self {
        FaultyStore {
            store,
            inner: Arc::new(Inner {
                throttle,
                lose_answer,
                rng: Mutex::new(StdRng::seed_from_u64(seed)),
                unrecorded: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The done records that were refused (throttled): their jobs were not recorded done.
    pub fn unrecorded(&self) -> Vec<Unrecorded> {
        self.inner
            .unrecorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn draw(&self) -> Fate {
        let mut rng = self
            .inner
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let x = rng.random::<f64>();
        if x < self.inner.throttle {
            Fate::Throttle
        } else if x < self.inner.throttle + self.inner.lose_answer {
            Fate::LoseAnswer
        } else {
            Fate::Pass
        }
    }

    /// Runs `call` under a drawn fate; `done` names the jobs a done record is for.
    async fn faulty<T, F>(
        &self,
        op: &'static str,
        done: Option<(Timestamp, Vec<String>)>,
        call: F,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        match self.draw() {
            Fate::Pass => call.await,
            Fate::Throttle => {
                if let Some((at, keys)) = done {
                    self.inner
                        .unrecorded
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Unrecorded { at, keys });
                }
                Err(error(
                    op,
                    "ProvisionedThroughputExceededException (injected)",
                ))
            }
            Fate::LoseAnswer => {
                call.await?;
                Err(error(op, "the answer was lost after the write (injected)"))
            }
        }
    }
}

fn error(op: &'static str, what: &str) -> StoreError {
    StoreError::Backend {
        op,
        source: what.to_string().into(),
    }
}

#[async_trait]
impl<S: RecordStore> RecordStore for FaultyStore<S> {
    async fn load(
        &self,
        key: RecordKey,
    ) -> Result<Option<Versioned<serde_json::Value>>, StoreError> {
        self.faulty("load", None, self.store.load(key)).await
    }

    async fn save(
        &self,
        key: RecordKey,
        value: serde_json::Value,
        expected: u64,
        fence: Option<u64>,
    ) -> Result<u64, StoreError> {
        let call = self.store.save(key, value, expected, fence);
        self.faulty("save", None, call).await
    }
}

#[async_trait]
impl<S: LeaseStore> LeaseStore for FaultyStore<S> {
    async fn take(&self, owner: &str, now: Timestamp, ttl: Duration) -> Result<Lease, StoreError> {
        self.faulty("take", None, self.store.take(owner, now, ttl))
            .await
    }

    async fn renew(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        self.faulty("renew", None, self.store.renew(lease, now, ttl))
            .await
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.faulty("release", None, self.store.release(lease))
            .await
    }

    async fn current(&self) -> Result<Option<Lease>, StoreError> {
        self.faulty("current", None, self.store.current()).await
    }
}

#[async_trait]
impl<S: IdempotencyStore> IdempotencyStore for FaultyStore<S> {
    async fn claim(
        &self,
        job_id: &str,
        now: Timestamp,
        claim_ttl: Duration,
    ) -> Result<Claim, StoreError> {
        self.faulty("claim", None, self.store.claim(job_id, now, claim_ttl))
            .await
    }

    async fn claim_in_batch(
        &self,
        job_id: &str,
        batch: &str,
        now: Timestamp,
        claim_ttl: Duration,
        keep: Duration,
    ) -> Result<Claim, StoreError> {
        let call = self
            .store
            .claim_in_batch(job_id, batch, now, claim_ttl, keep);
        self.faulty("claim_in_batch", None, call).await
    }

    async fn complete(
        &self,
        job_id: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let done = Some((now, vec![job_id.to_string()]));
        self.faulty("complete", done, self.store.complete(job_id, now, ttl))
            .await
    }

    async fn complete_batch(
        &self,
        batch: &str,
        job_ids: &[&str],
        now: Timestamp,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let keys = job_ids.iter().map(|k| k.to_string()).collect();
        let call = self.store.complete_batch(batch, job_ids, now, ttl);
        self.faulty("complete_batch", Some((now, keys)), call).await
    }

    async fn abandon(&self, job_id: &str) -> Result<(), StoreError> {
        self.faulty("abandon", None, self.store.abandon(job_id))
            .await
    }

    async fn is_done(&self, job_id: &str) -> Result<bool, StoreError> {
        self.faulty("is_done", None, self.store.is_done(job_id))
            .await
    }
}
