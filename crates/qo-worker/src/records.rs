//! A job's idempotency records at the end of its handling: marked done after a success,
//! released after a dead letter. Each write is tried twice, and a failure is logged, never
//! returned: the job's fate is already settled by then.

use std::time::Duration;

use qo_core::Timestamp;
use qo_core::ports::IdempotencyStore;
use tracing::error;

/// Marks a job done as soon as it succeeded, trying twice: alone, on its own claim; in a
/// batch, by adding it to the batch's done record (a set union, so deliveries of one batch
/// never erase each other's jobs), which a later claim of it reads through its claim. A
/// crash can then repeat one job's call at most, never the calls a batch made before it, and
/// no write is left for after the batch's last call. A failure is logged, not returned:
/// failing the event would have Lambda retry it, which after the claim expires could call the
/// API a second time.
pub(crate) async fn mark_done(
    store: &impl IdempotencyStore,
    ttl: Duration,
    job_id: &str,
    batch: Option<&str>,
    now: Timestamp,
) -> bool {
    let mut last = None;
    for _ in 0..2 {
        let written = match batch {
            None => store.complete(job_id, now, ttl).await,
            Some(key) => store.complete_batch(key, &[job_id], now, ttl).await,
        };
        match written {
            Ok(()) => return true,
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        error!(
            error = %e,
            "could not mark the job done: a duplicate delivery after the claim expires may call \
             again"
        );
    }
    false
}

/// Drops the claim of a dead-lettered job, trying twice. A failure is logged, not returned:
/// the job is already on the dead-letter queue, and the claim expires after `CLAIM_TTL_S` (a
/// redrive before then is re-queued until it does).
pub(crate) async fn release_claim(store: &impl IdempotencyStore, job_id: &str) {
    let mut last = None;
    for _ in 0..2 {
        match store.abandon(job_id).await {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        error!(error = %e, "could not drop the claim of a dead-lettered job: it expires after CLAIM_TTL_S");
    }
}
