//! Batches and deadlines: a batch event's jobs claimed and called concurrently, each at its
//! slot, the back-off a sibling's 429 asks for shared, and the jobs the invocation's remaining
//! time cannot cover given back untried.

use std::time::Duration;

use qo_core::ports::{IdempotencyStore, JobSink, RecordKey, RecordStore, load_record};
use qo_core::{BatchEvent, Clock, Control, JobEvent, Reason, Timestamp, WorkerEvent};
use tracing::{Instrument, error, info, info_span, warn};

use crate::error::WorkerError;
use crate::http::HttpCall;
use crate::outcome::Outcome;

use super::{
    BACKOFF_LOOKAHEAD, BACKOFF_READ_MARGIN, BatchHold, MAX_REQUEUE_DELAY, Worker, job_span, millis,
};

impl<S, Q, C, H> Worker<S, Q, C, H>
where
    S: RecordStore + IdempotencyStore,
    Q: JobSink,
    C: Clock,
    H: HttpCall,
{
    /// Handles a batch: every job at its own slot, concurrently, each in its own span, each
    /// fate its own (see [`Worker::handle_until`]).
    pub(super) async fn handle_batch(
        &self,
        batch: &BatchEvent,
        cover: Option<(Timestamp, Duration)>,
    ) -> Result<Outcome, WorkerError> {
        let Some(key) = batch.key() else {
            return Ok(Outcome::Batch {
                outcomes: Vec::new(),
            });
        };
        let first_slot = (batch.jobs.iter().map(|ev| ev.slot_at).min()).unwrap_or(self.clock.now());
        let hold = BatchHold::new(key, first_slot);
        let hold = &hold;
        let results = futures::future::join_all(
            batch
                .jobs
                .iter()
                .map(|ev| self.batch_job(ev, cover, hold).instrument(job_span(ev))),
        )
        .await;
        let jobs = results.len();
        let mut outcomes = Vec::with_capacity(jobs);
        let mut failed = Vec::new();
        for (ev, r) in batch.jobs.iter().zip(results) {
            match r {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    error!(
                        job_id = %ev.job_id(),
                        error = %e,
                        "could not record the fate of a job of the batch"
                    );
                    failed.push((ev.job_id().to_string(), e));
                }
            }
        }
        let mut failed = failed.into_iter();
        match failed.next() {
            None => Ok(Outcome::Batch { outcomes }),
            Some((job_id, first)) => {
                let settled = serde_json::to_string(&outcomes).unwrap_or_default();
                // The settled jobs' outcomes stay in the log: the error is all Lambda keeps.
                warn!(
                    settled = %settled,
                    "the batch fails for Lambda to retry it; its settled jobs are listed here"
                );
                Err(WorkerError::Batch {
                    failed: 1 + failed.len(),
                    jobs,
                    job_id,
                    first: Box::new(first),
                })
            }
        }
    }

    /// One job of a batch: handed back untried when the invocation's remaining time (until
    /// `cover`'s deadline, less its margin) cannot cover its slot wait and its call, else
    /// handled as a job event.
    pub(super) async fn batch_job(
        &self,
        ev: &JobEvent,
        cover: Option<(Timestamp, Duration)>,
        hold: &BatchHold,
    ) -> Result<Outcome, WorkerError> {
        if let Some((deadline, margin)) = cover
            && let Some(short) = self.job_shortfall(deadline, ev, margin)
        {
            return self.out_of_time(ev, short).await;
        }
        self.handle_job(ev, Some(hold)).await
    }

    /// Handles `event` in an invocation that ends at `deadline` (Lambda's), keeping `margin`
    /// after each call for its writes. A job event and a health check are handled as by
    /// [`Worker::handle`] (a single job that cannot be covered is only warned about by the
    /// handler); in a batch, each job whose slot wait and call the remaining time cannot cover
    /// is re-queued untried at once ([`Outcome::OutOfTime`], its attempt kept), so that the
    /// invocation is neither killed mid-call nor failed for the jobs it can call.
    ///
    /// A batch's jobs are handled concurrently and each fate is its own: a failure, a dead
    /// letter or a late slot of one job changes nothing for the others; a 429 holds back the
    /// siblings whose slots come before its back-off ends ([`Outcome::HeldBack`], see the
    /// module's documentation), and only those. When the fate of
    /// one job cannot be recorded (a queue or store error), the others are still carried out
    /// to the end, their outcomes logged, and then the event fails ([`WorkerError::Batch`]) so
    /// that Lambda retries it: that is the only way the unrecorded job is not lost. The retry
    /// comes a minute or more later (Lambda's asynchronous retries), so it calls nothing that
    /// was settled: done jobs are skipped by their idempotency claims, and every other job's
    /// slot is past its tolerance, so it is re-queued untried ([`Outcome::Late`]); a job that
    /// was re-queued the first time then has a second copy on the queue, which the claims
    /// keep from succeeding twice (it costs a slot, never a second successful call).
    pub async fn handle_until(
        &self,
        event: WorkerEvent,
        deadline: Timestamp,
        margin: Duration,
    ) -> Result<Outcome, WorkerError> {
        match event {
            WorkerEvent::Batch(batch) => {
                let span = info_span!("batch", jobs = batch.jobs.len());
                self.handle_batch(&batch, Some((deadline, margin)))
                    .instrument(span)
                    .await
            }
            other => self.handle(other).await,
        }
    }

    /// How much the remaining time until `deadline` falls short of one job's slot wait, its
    /// call and `margin`. `None` when it is enough.
    pub(super) fn job_shortfall(
        &self,
        deadline: Timestamp,
        ev: &JobEvent,
        margin: Duration,
    ) -> Option<Duration> {
        let now = self.clock.now();
        let needed = ev
            .slot_at
            .since(now)
            .min(self.config.max_slot_wait)
            .saturating_add(self.config.call_budget())
            .saturating_add(margin);
        let remaining = deadline.since(now);
        (remaining < needed).then(|| needed - remaining)
    }

    /// Gives back, untried and unclaimed, a job of a batch whose slot the invocation cannot
    /// cover: re-queued at once, its attempt count kept.
    pub(super) async fn out_of_time(
        &self,
        ev: &JobEvent,
        short: Duration,
    ) -> Result<Outcome, WorkerError> {
        let job_id = ev.job_id().to_string();
        warn!(
            short_ms = millis(short),
            "the invocation's remaining time cannot cover this job's slot and call: given back \
             untried (raise the function timeout, or lower BATCH_WINDOW_MS)"
        );
        let reason = Reason::OutOfTime { short };
        let requeued = self
            .requeue_untried(ev, &job_id, Duration::ZERO, &reason)
            .await?;
        Ok(Outcome::OutOfTime {
            job_id,
            short_by_ms: millis(short),
            requeued,
        })
    }

    /// How much a Lambda invocation's remaining time (until `deadline`) falls short of what
    /// `event` may need: the wait for its slot, one call (connect + read timeouts) and
    /// `margin` for the writes after it; for a batch, what its first slot needs (its later
    /// jobs that cannot be covered are given back by [`Worker::handle_until`]). `None` when
    /// it is enough.
    pub fn deadline_shortfall(
        &self,
        deadline: Timestamp,
        event: &WorkerEvent,
        margin: Duration,
    ) -> Option<Duration> {
        let now = self.clock.now();
        let wait = match event {
            WorkerEvent::Job(ev) => ev.slot_at.since(now).min(self.config.max_slot_wait),
            WorkerEvent::Batch(b) => b
                .jobs
                .iter()
                .map(|ev| ev.slot_at.since(now).min(self.config.max_slot_wait))
                .min()
                .unwrap_or_default(),
            WorkerEvent::HealthCheck(_) | WorkerEvent::Deliver(_) => Duration::ZERO,
        };
        let needed = wait
            .saturating_add(self.config.call_budget())
            .saturating_add(margin);
        let remaining = deadline.since(now);
        (remaining < needed).then(|| needed - remaining)
    }

    /// Reads the shared back-off (the control record's `backoff_until`) shortly before a batch
    /// job's slot, at most once per [`BACKOFF_REREAD`] for the batch, and holds the batch
    /// back until it ends. A batch commits its slots up to `BATCH_WINDOW_MS` ahead: a 429
    /// (or a refused key) answered to another invocation meanwhile reaches the orchestrator
    /// within its refresh, but not the slots already sent, which would otherwise call through
    /// the `Retry-After`. A failed read, or one not answered [`BACKOFF_READ_MARGIN`] before the
    /// slot (a slow store, a cold connection), is logged and changes nothing: the slot is called
    /// as paced, never made late by the read.
    pub(super) async fn watch_backoff(&self, slot: Timestamp, hold: &BatchHold) {
        self.clock.sleep_until(slot.minus(BACKOFF_LOOKAHEAD)).await;
        if !hold.read_due(self.clock.now()) {
            return;
        }
        let read = load_record::<Control>(&self.store, RecordKey::Control);
        let give_up = self.clock.sleep_until(slot.minus(BACKOFF_READ_MARGIN));
        tokio::select! {
            r = read => match r {
                Ok(c) => {
                    if let Some(until) = c.value.backoff_until {
                        hold.throttle(until);
                    }
                }
                Err(e) => warn!(error = %e, "could not read the shared back-off before a slot"),
            },
            () = give_up => warn!("the shared back-off was not read in time: the slot is called as paced"),
        }
    }

    /// Gives back, untried, a job of a batch a sibling's 429 holds back: its claim dropped,
    /// re-queued for when the back-off ends (`left` from now, capped at SQS's limit), its
    /// attempt and 429 counts kept: it was never called.
    pub(super) async fn held_back(
        &self,
        ev: &JobEvent,
        job_id: String,
        left: Duration,
    ) -> Result<Outcome, WorkerError> {
        info!(
            backoff_ms = millis(left),
            "a 429 (a sibling's, or another invocation's in the shared back-off) holds the \
             batch back: held back untried until its back-off ends"
        );
        self.store.abandon(&job_id).await?;
        let reason = Reason::HeldBack { backoff: left };
        let requeued = self.requeue_untried(ev, &job_id, left, &reason).await?;
        Ok(Outcome::HeldBack {
            job_id,
            backoff_ms: millis(left.min(MAX_REQUEUE_DELAY)),
            requeued,
        })
    }
}
