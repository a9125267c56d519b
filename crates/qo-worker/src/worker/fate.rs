//! A job's fate written to the ports: done (its result delivered), throttled and re-queued,
//! failed and re-queued or given up on, dead-lettered, or given back untried.

use std::time::Duration;

use qo_core::ports::{DeadLetter, IdempotencyStore, JobSink, RecordStore};
use qo_core::result::JobResult;
use qo_core::retry::Retry;
use qo_core::{ApiWindow, Clock, JobEvent, Observation, Reason, Timestamp};
use tracing::{debug, error, info, warn};

use crate::error::WorkerError;
use crate::http::HttpCall;
use crate::outcome::Outcome;
use crate::plan::{Failure, Throttle};
use crate::records;
use crate::results::ResultPath;

use super::{MAX_REQUEUE_DELAY, Worker, millis, requeue_body};

impl<S, Q, C, H> Worker<S, Q, C, H>
where
    S: RecordStore + IdempotencyStore,
    Q: JobSink,
    C: Clock,
    H: HttpCall,
{
    /// 2xx: marks the job done at once (a batch's job in the batch's done record, see
    /// [`Worker::mark_done`]) and reports a low window. `at` and `now`: the call's time and the
    /// answer's.
    pub(super) async fn succeeded(
        &self,
        job_id: String,
        status: u16,
        window: Option<ApiWindow>,
        (at, now): (Timestamp, Timestamp),
        batch: Option<&str>,
    ) -> Outcome {
        self.rereads.clear();
        let ttl = self.config.idempotency_ttl;
        let recorded = records::mark_done(&self.store, ttl, &job_id, batch, now).await;
        if let Some(w) = window {
            let every = self.config.api_window_report;
            self.windows.report_low(&self.store, every, w, now).await;
        }
        // DEBUG, not INFO: a line per successful job is most of a job's log bytes, and the
        // EMF line already counts it (Succeeded, JobWait). Failures stay at INFO.
        debug!(status, took_ms = millis(now.since(at)), "call succeeded");
        self.observe(Observation::Succeeded {
            job_id: job_id.clone(),
        });
        Outcome::Succeeded {
            job_id,
            status,
            recorded,
        }
    }

    /// 429: drops the claim, records the back-off and the throttle, then re-queues the job
    /// (its attempt kept) or dead-letters it at `MAX_THROTTLED`.
    pub(super) async fn throttled(
        &self,
        ev: &JobEvent,
        job_id: String,
        throttle: Throttle,
        window: Option<ApiWindow>,
        now: Timestamp,
    ) -> Result<Outcome, WorkerError> {
        let until = now.plus(throttle.pause());
        let Throttle {
            retry_after,
            header,
            retry,
            reason,
        } = throttle;
        self.store.abandon(&job_id).await?;
        self.observe(Observation::Throttled {
            job_id: job_id.clone(),
            retry_after: header,
        });
        // A lost throttle write is logged, not returned: under a 429 storm from many
        // environments the control item's read-modify-write can lose every race, and failing
        // the event would have Lambda retry the whole batch late. The job is re-queued all the
        // same, and the storm's other 429s reach the record.
        if let Err(e) = self.record_throttle(ev.slot_at, until, window, now).await {
            warn!(error = %e, "could not record the 429 in the control record");
        }
        warn!(
            retry_after_ms = millis(retry_after),
            %until,
            throttled = ev.origin.throttled.saturating_add(1),
            "throttled by the API"
        );
        // A 429 is the pacer's signal, not the job's failure: its attempt count stays, its
        // 429 count rises, and only MAX_THROTTLED of them give up on it.
        let requeued = self
            .retry_or_dead_letter(ev, &job_id, retry, retry_after, &reason)
            .await?;
        Ok(Outcome::Throttled {
            job_id,
            retry_after_ms: millis(retry_after),
            requeued,
        })
    }

    /// 5xx, 408, timeout, no connection: drops the claim, counts a failure against the
    /// circuit (which may open it), then re-queues the job (its attempt raised) or
    /// dead-letters it at `MAX_ATTEMPTS`.
    pub(super) async fn failed(
        &self,
        ev: &JobEvent,
        job_id: String,
        failure: Failure,
        now: Timestamp,
    ) -> Result<Outcome, WorkerError> {
        let Failure {
            status,
            retry,
            delay,
            reason,
        } = failure;
        self.store.abandon(&job_id).await?;
        let opened = self.record_failure(ev.epoch, now).await?;
        warn!(?status, %reason, "call failed");
        let requeued = self
            .retry_or_dead_letter(ev, &job_id, retry, delay, &reason)
            .await?;
        Ok(Outcome::Failed {
            job_id,
            status,
            opened_circuit: opened,
            requeued,
        })
    }

    /// 401 or 403: the credential was refused, not the job. Re-reads the key if a re-read is
    /// due; unless it changed, backs calls off (the control record) until the next re-read;
    /// re-queues the job untried either way.
    pub(super) async fn credential_rejected(
        &self,
        ev: &JobEvent,
        job_id: String,
        status: u16,
        now: Timestamp,
    ) -> Result<Outcome, WorkerError> {
        self.store.abandon(&job_id).await?;
        self.rereads.refused(status);
        let key_changed = self.reread_credential(now).await;
        if key_changed {
            // A new key, not known to be refused: the next delivery calls with it.
            self.rereads.clear();
        }
        self.observe(Observation::CredentialRejected {
            job_id: job_id.clone(),
            status,
            key_changed,
        });
        let delay = if key_changed {
            Duration::ZERO
        } else {
            let until = self.rereads.next_at(now);
            self.back_off_for_credential(status, until, now).await?;
            until.since(now)
        };
        error!(
            status,
            key_changed,
            backoff_ms = millis(delay),
            "the API refused the credential: the job goes back untried"
        );
        let why = Reason::CredentialRefused { status };
        let requeued = self.requeue_untried(ev, &job_id, delay, &why).await?;
        Ok(Outcome::CredentialRejected {
            job_id,
            status,
            key_changed,
            backoff_ms: millis(delay),
            requeued,
        })
    }

    /// Dead-letters a job that cannot succeed, then drops its claim: it is not marked done,
    /// so a redrive of the dead-letter queue gets it called again. (A duplicate delivery of
    /// the same event calls again too, and dead-letters a second copy; it cannot succeed
    /// twice.)
    pub(super) async fn dead_letter(
        &self,
        ev: &JobEvent,
        job_id: String,
        reason: Reason,
    ) -> Result<Outcome, WorkerError> {
        let body = serde_json::to_string(&ev.job).map_err(WorkerError::Encode)?;
        self.sink
            .dead_letter(DeadLetter {
                body,
                reason: reason.clone(),
                origin: ev.origin.clone(),
            })
            .await?;
        warn!(reason = %reason, "dead-lettered");
        self.observe(Observation::DeadLettered {
            message_id: ev.origin.message_id.clone(),
            reason: reason.clone(),
        });
        records::release_claim(&self.store, &job_id).await;
        let now = self.clock.now();
        self.deliver(ev, || ResultPath::dead_lettered(ev, &job_id, &reason, now))
            .await;
        Ok(Outcome::DeadLettered { job_id, reason })
    }

    /// A job it did not call: releases the claim and re-queues it untried, at once.
    pub(super) async fn release_untried(
        &self,
        ev: &JobEvent,
        job_id: &str,
        why: &Reason,
    ) -> Result<bool, WorkerError> {
        self.store.abandon(job_id).await?;
        self.requeue_untried(ev, job_id, Duration::ZERO, why).await
    }

    /// Re-queues a job that was not tried (late, too early, claimed elsewhere): its attempt
    /// count stays, so that delivery timing alone never sends a job to the dead-letter queue.
    pub(super) async fn requeue_untried(
        &self,
        ev: &JobEvent,
        job_id: &str,
        delay: Duration,
        why: &Reason,
    ) -> Result<bool, WorkerError> {
        let body = requeue_body(ev, job_id)?;
        self.sink
            .requeue(&body, &ev.origin, delay.min(MAX_REQUEUE_DELAY))
            .await?;
        info!(delay_ms = millis(delay), reason = %why, "re-queued untried");
        self.observe(Observation::Requeued {
            job_id: job_id.to_string(),
            reason: why.clone(),
        });
        Ok(true)
    }

    /// Carries out a [`Retry`]: re-queues the job after `delay` (capped at SQS's limit) or
    /// dead-letters it with its [`qo_core::reason::GiveUp`] reason. Returns whether it was
    /// re-queued.
    pub(super) async fn retry_or_dead_letter(
        &self,
        ev: &JobEvent,
        job_id: &str,
        retry: Retry,
        delay: Duration,
        why: &Reason,
    ) -> Result<bool, WorkerError> {
        let body = requeue_body(ev, job_id)?;
        let given_up = retry
            .tried_by(self.config.function_name.as_deref())
            .apply(&self.sink, &body, delay.min(MAX_REQUEUE_DELAY))
            .await?;
        match given_up {
            None => {
                info!(delay_ms = millis(delay), reason = %why, "re-queued");
                self.observe(Observation::Requeued {
                    job_id: job_id.to_string(),
                    reason: why.clone(),
                });
                Ok(true)
            }
            Some(reason) => {
                let reason = Reason::GaveUp(reason);
                warn!(reason = %reason, "dead-lettered");
                self.observe(Observation::DeadLettered {
                    message_id: ev.origin.message_id.clone(),
                    reason: reason.clone(),
                });
                let now = self.clock.now();
                self.deliver(ev, || ResultPath::dead_lettered(ev, job_id, &reason, now))
                    .await;
                Ok(false)
            }
        }
    }

    /// Delivers the result `result` builds to `ev`'s destination, when it has one
    /// ([`crate::results`]).
    pub(super) async fn deliver(&self, ev: &JobEvent, result: impl FnOnce() -> JobResult) {
        let Some(path) = &self.results else {
            return;
        };
        if let Some(to) = path.destination(ev) {
            let observer = self.observer.as_ref();
            let budget = self.config.result_budget;
            // A result's own deliveries count from 0, whatever the job's attempts were.
            let origin = &qo_core::Origin {
                attempt: 0,
                throttled: 0,
                ..ev.origin.clone()
            };
            path.deliver(
                to,
                result(),
                origin,
                budget,
                &self.clock,
                &self.sink,
                observer,
            )
            .await;
        }
    }
}
