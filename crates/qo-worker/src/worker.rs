//! [`Worker`]: one event in, one [`Outcome`] out; the job's fate written to the ports.
//!
//! A job event is claimed (one successful call per job), waited on until its slot ("dispatch
//! ahead, call on time"), called, and classified. The decisions are pure functions of
//! `crate::plan` (what to do before the call, whether the call is still on time, what the
//! answer makes of the job); this module carries them out, one effect per variant:
//!
//! | answer | idempotency | shared state | the job |
//! |---|---|---|---|
//! | 2xx | done (a batch's jobs: one record for the batch) | none; control `api_window` only when few calls are left (see below) | finished |
//! | 429 | abandoned | control `backoff_until` from `Retry-After` (kept if later; none without it), `throttles` + 1, `api_window` | re-queued after Retry-After (1 s without), `attempt` kept, `throttled` + 1 (dead-lettered at `MAX_THROTTLED`) |
//! | 401, 403 | abandoned | control `backoff_until` (unless the re-read key changed) | re-queued untried |
//! | 5xx, 408, timeout, no connection | abandoned | circuit failure | re-queued (`RETRY_DELAY_S`), `attempt` + 1 (dead-lettered at `MAX_ATTEMPTS`) |
//! | other status | abandoned | none | dead-lettered with `HTTP <status>: <excerpt>` |
//!
//! Closed-loop pacing: a 429 is the pacer's signal, never a job's failed attempt. Every 429
//! bumps the control record's [`Throttles`] counter (the orchestrator's rate controller lowers
//! the pace on each new one) and re-queues the job with its `attempt` unchanged and its
//! `throttled` count raised; only `MAX_THROTTLED` 429s dead-letter it
//! ([`qo_core::ports::Retry::after_throttle`]). The API's rate-limit headers
//! ([`crate::ratelimit`], `RATE_LIMIT_HEADERS`) are read on every answer and observed
//! ([`Observation::ApiRemaining`]); they reach the control record's `api_window` with every
//! 429, and after a success only when its calls run ahead of an even spend ([`runs_ahead`]) or its limit
//! changed since this environment's previous answer (a limit that came back), at most once
//! per `API_WINDOW_REPORT_MS` per execution environment and never over a newer observation:
//! in normal operation a success writes no shared state.
//!
//! A dead-lettered job is not marked done: `qo redrive` sends it back, and the delivery that
//! follows must call it, not skip it as a duplicate.
//!
//! 401 and 403 mean the credential, not the job: the key is re-read (at most once per
//! `CREDENTIAL_REREAD_S`, through a [`CredentialSource`]); if it changed (a rotation this
//! execution environment had not seen) the job is re-queued at once, otherwise the control
//! record's back-off ([`BackoffReason::CredentialRejected`]) stops calls until the next
//! re-read, and the job waits untried. Every refusal is a
//! [`Observation::CredentialRejected`] (the `CredentialRejected` metric an alarm pages on).
//!
//! A batch event's jobs are each handled as above, concurrently, each at its own slot and
//! each fate its own, but for two things they share. Their claims name the batch
//! ([`BatchEvent::key`]), and each job that succeeds is added at once to one done record for
//! the batch ([`IdempotencyStore::complete_batch`], a set union), which a later claim of any
//! of them reads through its claim: a crash repeats one job's call at most. And a
//! 429. Its back-off (Retry-After, or
//! the default) is held in memory for the one invocation ([`BatchHold`]), and a sibling
//! whose slot comes before that back-off ends is not called: its claim is dropped and it is
//! re-queued untried for when the back-off ends ([`Outcome::HeldBack`], its `attempt` and
//! `throttled` kept). Its slot was committed a window ahead, before the 429 told the pacer to
//! slow down; calling it anyway would earn another 429, or call through a Retry-After. A
//! sibling whose slot comes after the back-off ends is called as usual. See [`Worker::handle_until`] for what an unrecorded fate of one of them
//! does to the event, and for the jobs an invocation's remaining time cannot cover.
//!
//! Shared state is written before the job is re-queued, and the claim is dropped before either:
//! if any of these writes fails the event fails, Lambda retries it, and the retry finds the
//! claim free (or, if even dropping it failed, held: see [`Outcome::Duplicate`]), so the job is
//! never lost.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use qo_core::ports::{
    DeadLetter, IdempotencyStore, JobSink, RecordKey, RecordStore, ResultSink, load_record,
    update_record,
};
use qo_core::result::JobResult;
use qo_core::retry::Retry;
use qo_core::{
    ApiWindow, BackoffReason, BatchEvent, Circuit, Clock, Control, HealthCheckEvent, Job, JobEvent,
    NoObserver, Observation, Observer, Reason, Throttles, Timestamp, WorkerEvent,
};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::around::{AfterCall, Answer, AroundCall, HandlerError, Passthrough};
use crate::client::ApiClient;
use crate::config::WorkerConfig;
use crate::credential::{CredentialSource, Rereads};
use crate::error::WorkerError;
use crate::http::HttpCall;
use crate::outcome::Outcome;
use crate::plan::{
    AtSlot, Decision, Failure, JobPolicy, Plan, Throttle, at_slot, called_status, decide, plan,
};
use crate::records;
use crate::results::{ResultPath, redeliver};
use crate::window::WindowReports;
pub use crate::window::{is_low, runs_ahead};

/// The span of one job's handling, alone or in a batch.
fn job_span(ev: &JobEvent) -> tracing::Span {
    info_span!(
        "job",
        message_id = %ev.origin.message_id,
        job_id = %ev.job_id(),
        attempt = ev.origin.attempt,
        epoch = ev.epoch,
    )
}

/// The longest delay a re-queue asks for (SQS's `DelaySeconds` limit).
pub const MAX_REQUEUE_DELAY: Duration = Duration::from_secs(900);

/// Who the worker says changed the control record.
const CONTROL_WRITER: &str = "worker";

/// How long before a batch job's slot the shared back-off is read.
pub const BACKOFF_LOOKAHEAD: Duration = Duration::from_millis(100);

/// A batch reads the shared back-off at most once in this long (its jobs share the read).
pub const BACKOFF_REREAD: Duration = Duration::from_millis(250);

/// A read of the shared back-off not answered this long before the slot is given up: the slot
/// is called as paced rather than late.
pub const BACKOFF_READ_MARGIN: Duration = Duration::from_millis(10);

/// The worker: generic over its state store, its job sink, its clock and its HTTP seam.
pub struct Worker<S, Q, C, H = ApiClient> {
    config: WorkerConfig,
    http: H,
    store: S,
    sink: Q,
    clock: C,
    observer: Arc<dyn Observer>,
    rereads: Rereads,
    /// What this execution environment read and reported of the API's windows.
    windows: WindowReports,
    /// Where jobs' results go (`None`: nowhere).
    results: Option<ResultPath>,
    /// The user's code around the call ([`Passthrough`] by default).
    around: Arc<dyn AroundCall>,
}

impl<S, Q, C, H> Worker<S, Q, C, H>
where
    S: RecordStore + IdempotencyStore,
    Q: JobSink,
    C: Clock,
    H: HttpCall,
{
    /// A worker that reports to no observer.
    pub fn new(config: WorkerConfig, http: H, store: S, sink: Q, clock: C) -> Self {
        let rereads = Rereads::new(None, config.credential_reread);
        Worker {
            rereads,
            config,
            http,
            store,
            sink,
            clock,
            observer: Arc::new(NoObserver),
            windows: WindowReports::default(),
            results: None,
            around: Arc::new(Passthrough),
        }
    }

    /// Runs `around` before each job's slot and after each 2xx ([`crate::around`]).
    pub fn with_around(mut self, around: Arc<dyn AroundCall>) -> Self {
        self.around = around;
        self
    }

    /// Delivers jobs' results through `sink` to the configured destinations
    /// (`RESULT_DESTINATIONS`); without it, results go nowhere.
    pub fn with_result_sink(mut self, sink: Arc<dyn ResultSink>) -> Self {
        self.results = Some(ResultPath::new(sink, self.config.destinations.clone()));
        self
    }

    /// Reports observations to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Re-reads the API key from `source` after the API refuses it (401/403), at most once
    /// per `CREDENTIAL_REREAD_S`. Without one, a refused key backs calls off by that interval
    /// each time and is never replaced.
    pub fn with_credential_source(mut self, source: Arc<dyn CredentialSource>) -> Self {
        self.rereads.set_source(source);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// The state store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The job sink.
    pub fn sink(&self) -> &Q {
        &self.sink
    }

    /// The clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The HTTP seam.
    pub fn http(&self) -> &H {
        &self.http
    }

    /// Handles one event. An `Err` means the job's fate could not be recorded (a queue or
    /// store failure) and the event should be retried; every answer of the API is an `Ok`.
    pub async fn handle(&self, event: WorkerEvent) -> Result<Outcome, WorkerError> {
        match event {
            WorkerEvent::Job(ev) => self.handle_job(&ev, None).instrument(job_span(&ev)).await,
            WorkerEvent::Batch(batch) => {
                let span = info_span!("batch", jobs = batch.jobs.len());
                self.handle_batch(&batch, None).instrument(span).await
            }
            WorkerEvent::HealthCheck(ev) => {
                let span = info_span!("health_check", epoch = ev.epoch);
                self.handle_health(&ev).instrument(span).await
            }
            WorkerEvent::Deliver(ev) => {
                let span = info_span!("deliver", job_id = %ev.result.job_id);
                let (path, observer) = (self.results.as_ref(), self.observer.as_ref());
                let redelivered =
                    redeliver(path, &self.config, ev, &self.clock, &self.sink, observer);
                Ok(redelivered.instrument(span).await)
            }
        }
    }

    /// Handles a batch: every job at its own slot, concurrently, each in its own span, each
    /// fate its own (see [`Worker::handle_until`]).
    async fn handle_batch(
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
    async fn batch_job(
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
    fn job_shortfall(
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
    async fn out_of_time(&self, ev: &JobEvent, short: Duration) -> Result<Outcome, WorkerError> {
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

    /// Carries out [`plan`]: claims the job, then one effect per [`Plan`]. `hold` is the
    /// back-off the job's batch siblings share (`None` for a single job event).
    async fn handle_job(
        &self,
        ev: &JobEvent,
        hold: Option<&BatchHold>,
    ) -> Result<Outcome, WorkerError> {
        let job_id = ev.job_id().to_string();
        let admitted = (self.config.destinations.for_job(&ev.job))
            .and_then(|_| self.config.allow.check(&ev.job));
        if let Err(e) = admitted {
            return self.dead_letter(ev, job_id, e.into()).await;
        }
        let now = self.clock.now();
        let claim_ttl = self.config.claim_ttl;
        let claim = match hold {
            Some(h) => {
                let keep = self.config.idempotency_ttl;
                (self.store)
                    .claim_in_batch(&job_id, &h.key, now, claim_ttl, keep)
                    .await?
            }
            None => self.store.claim(&job_id, now, claim_ttl).await?,
        };
        let policy = JobPolicy::of(&self.config);
        match plan(claim, ev, now, self.rereads.before_call(now), &policy) {
            Plan::SkipDone => Ok(self.skip_done(job_id)),
            Plan::AfterClaim {
                since,
                delay,
                reason,
            } => {
                self.observe(Observation::Duplicate {
                    job_id: job_id.clone(),
                });
                info!(%since, "job claimed by another delivery: re-queued for after the claim");
                let requeued = self.requeue_untried(ev, &job_id, delay, &reason).await?;
                Ok(Outcome::Duplicate {
                    job_id,
                    in_progress: true,
                    requeued,
                })
            }
            Plan::DeadLetter(reason) => self.dead_letter(ev, job_id, reason).await,
            Plan::TooEarly { early, reason } => {
                warn!(early_ms = millis(early), "{reason}");
                let requeued = self.give_back(ev, &job_id, &reason).await?;
                Ok(Outcome::TooEarly {
                    job_id,
                    early_by_ms: millis(early),
                    requeued,
                })
            }
            Plan::CredentialPending {
                status,
                delay,
                reason,
            } => {
                self.store.abandon(&job_id).await?;
                let requeued = self.requeue_untried(ev, &job_id, delay, &reason).await?;
                Ok(Outcome::CredentialPending {
                    job_id,
                    status,
                    backoff_ms: millis(delay),
                    requeued,
                })
            }
            Plan::Call { reread } => {
                self.call_at_slot(ev, job_id, reread, now, &policy, hold)
                    .await
            }
        }
    }

    /// A duplicate delivery of a done job: nothing to do.
    fn skip_done(&self, job_id: String) -> Outcome {
        info!("duplicate delivery of a done job: skipped");
        self.observe(Observation::Duplicate {
            job_id: job_id.clone(),
        });
        Outcome::Duplicate {
            job_id,
            in_progress: false,
            requeued: false,
        }
    }

    /// Re-reads the key when `reread`, waits for the slot, and calls unless a sibling's 429
    /// holds the batch back ([`BatchHold`]) or [`at_slot`] finds the call late.
    async fn call_at_slot(
        &self,
        ev: &JobEvent,
        job_id: String,
        reread: bool,
        planned_at: Timestamp,
        policy: &JobPolicy,
        hold: Option<&BatchHold>,
    ) -> Result<Outcome, WorkerError> {
        if reread {
            self.reread_credential(planned_at).await;
        }
        // The user's request, built before the slot wait: a slow build never makes it late.
        let built = self.around.request(&ev.job).await.map_err(|e| e.0);
        let job = match built.and_then(|j| j.validate().map(|()| j).map_err(|e| e.to_string())) {
            Ok(job) => job,
            Err(detail) => {
                let detail = format!("the request handler refused the job: {detail}");
                let reason = Reason::InvalidRequest { detail };
                return self.dead_letter(ev, job_id, reason).await;
            }
        };
        if let Some(h) = hold {
            self.watch_backoff(ev.slot_at, h).await;
        }
        self.clock.sleep_until(ev.slot_at).await;
        // Lateness is decided at the call: this reads the clock after the last await before
        // the request goes out (nothing but the HTTP call follows), so time lost anywhere
        // before (a slow claim, a credential re-read, a late wake-up) cannot slip a call past
        // its slot's tolerance. The connection itself is usually a pooled one (see
        // `ApiClient`), so no connect follows the check either.
        // The batch's hold is read at the same point, for the same reason: a sibling answered
        // 429 while this job waited is seen here, before its call goes out.
        let at = self.clock.now();
        if let Some(left) = hold.and_then(|h| h.left(at)) {
            return self.held_back(ev, job_id, left).await;
        }
        match at_slot(ev.slot_at, at, policy) {
            AtSlot::Call => self.call(ev, &job, job_id, at, policy, hold).await,
            AtSlot::Late { late, reason } => {
                warn!(late_ms = millis(late), "{reason}");
                let requeued = self.give_back(ev, &job_id, &reason).await?;
                Ok(Outcome::Late {
                    job_id,
                    late_by_ms: millis(late),
                    requeued,
                })
            }
        }
    }

    /// Reads the shared back-off (the control record's `backoff_until`) shortly before a batch
    /// job's slot, at most once per [`BACKOFF_REREAD`] for the batch, and holds the batch
    /// back until it ends. A batch commits its slots up to `BATCH_WINDOW_MS` ahead: a 429
    /// (or a refused key) answered to another invocation meanwhile reaches the orchestrator
    /// within its refresh, but not the slots already sent, which would otherwise call through
    /// the `Retry-After`. A failed read, or one not answered [`BACKOFF_READ_MARGIN`] before the
    /// slot (a slow store, a cold connection), is logged and changes nothing: the slot is called
    /// as paced, never made late by the read.
    async fn watch_backoff(&self, slot: Timestamp, hold: &BatchHold) {
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
    async fn held_back(
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

    /// Calls the API at `at`, then carries out [`decide`]: one effect per [`Decision`]. A
    /// 429 sets the batch's `hold` before any write, so that a sibling whose slot comes while
    /// they run is held back.
    async fn call(
        &self,
        ev: &JobEvent,
        job: &Job,
        job_id: String,
        at: Timestamp,
        policy: &JobPolicy,
        hold: Option<&BatchHold>,
    ) -> Result<Outcome, WorkerError> {
        // With an idempotency header the API is given the key, an id-less job's too.
        let keyed;
        let sent = if job.id.is_none() && self.config.idempotency_header.is_some() {
            keyed = Job {
                id: Some(job_id.clone()),
                ..job.clone()
            };
            &keyed
        } else {
            job
        };
        let answer = self.http.call(sent).await;
        let now = self.clock.now();
        if let Some(status) = called_status(&answer) {
            self.observe(Observation::Called {
                job_id: job_id.clone(),
                at,
                status,
                wait: ev.origin.enqueued_at.map(|t| at.since(t)),
            });
        }
        let window = match &answer {
            Ok(r) => self.windows.read(
                &self.config.rate_limit_headers,
                r,
                now,
                self.observer.as_ref(),
            ),
            Err(_) => None,
        };
        match decide(&answer, &ev.origin, now, policy) {
            Decision::Done { status } => {
                if let Ok(response) = &answer {
                    // The user's code sees the answer before it is delivered and recorded.
                    let seen = Answer {
                        status,
                        headers: &response.headers,
                        body: &response.body_start,
                        truncated: response.body_truncated,
                    };
                    let body = match self.around.answered(job, seen).await {
                        Ok(AfterCall::Keep) => None,
                        Ok(AfterCall::Body(b)) => Some(b),
                        Ok(AfterCall::Failed(detail)) | Err(HandlerError(detail)) => {
                            let reason = Reason::HandlerFailed { detail };
                            return self.dead_letter(ev, job_id, reason).await;
                        }
                    };
                    let result = || {
                        let mut r = ResultPath::succeeded(ev, &job_id, response, (at, now));
                        if let Some(b) = &body {
                            r.set_body(b);
                            r.body_truncated = false;
                        }
                        r
                    };
                    self.deliver(ev, result).await;
                }
                let batch = hold.map(|h| h.key.as_str());
                Ok(self
                    .succeeded(job_id, status, window, (at, now), batch)
                    .await)
            }
            Decision::Throttled(t) => {
                if let Some(h) = hold {
                    h.throttle(now.plus(t.pause()));
                }
                self.throttled(ev, job_id, t, window, now).await
            }
            Decision::Failed(f) => self.failed(ev, job_id, f, now).await,
            Decision::CredentialRejected { status } => {
                self.credential_rejected(ev, job_id, status, now).await
            }
            Decision::DeadLetter(reason) => self.dead_letter(ev, job_id, reason).await,
        }
    }

    /// 2xx: marks the job done at once (a batch's job in the batch's done record, see
    /// [`Worker::mark_done`]) and reports a low window. `at` and `now`: the call's time and the
    /// answer's.
    async fn succeeded(
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
    async fn throttled(
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
            .settle(ev, &job_id, retry, retry_after, &reason)
            .await?;
        Ok(Outcome::Throttled {
            job_id,
            retry_after_ms: millis(retry_after),
            requeued,
        })
    }

    /// Writes a 429 to the control record: the back-off until `until` (a later one is kept),
    /// the throttle counted, the API's window when it is newer.
    async fn record_throttle(
        &self,
        slot: Timestamp,
        until: Timestamp,
        window: Option<ApiWindow>,
        now: Timestamp,
    ) -> Result<(), WorkerError> {
        // Every 429 is counted (the orchestrator's rate controller reacts to each new one),
        // even when a later back-off is already recorded: that one is kept, never shortened.
        update_record::<Control, _>(&self.store, RecordKey::Control, |c| {
            let (backoff_until, backoff_reason) = match c.backoff_until {
                Some(b) if b >= until => (Some(b), c.backoff_reason),
                // No Retry-After: no pause; the pace's decrease answers it.
                _ if until <= now => (c.backoff_until, c.backoff_reason),
                _ => (Some(until), Some(BackoffReason::Throttled)),
            };
            Some(Control {
                backoff_until,
                backoff_reason,
                throttles: Some(Throttles::record(c.throttles.as_ref(), now, slot)),
                api_window: match window {
                    Some(w) if w.supersedes(c.api_window.as_ref()) => Some(w),
                    _ => c.api_window,
                },
                updated_by: Some(CONTROL_WRITER.to_string()),
                updated_at: Some(now),
                ..c.clone()
            })
        })
        .await?;
        Ok(())
    }

    /// 5xx, 408, timeout, no connection: drops the claim, counts a failure against the
    /// circuit (which may open it), then re-queues the job (its attempt raised) or
    /// dead-letters it at `MAX_ATTEMPTS`.
    async fn failed(
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
        let requeued = self.settle(ev, &job_id, retry, delay, &reason).await?;
        Ok(Outcome::Failed {
            job_id,
            status,
            opened_circuit: opened,
            requeued,
        })
    }

    /// Counts a failure against the circuit at `epoch`; returns whether it opened it.
    async fn record_failure(&self, epoch: u64, now: Timestamp) -> Result<bool, WorkerError> {
        let policy = self.config.circuit;
        let mut opened = false;
        let circuit = update_record::<Circuit, _>(&self.store, RecordKey::Circuit, |c| {
            opened = false;
            // Refused: a report from an older epoch, or the circuit is already open.
            let next = c.record_failure(epoch, now, &policy).ok()?;
            opened = !next.is_closed();
            Some(next)
        })
        .await?;
        if opened {
            warn!(
                epoch = circuit.value.epoch,
                "this failure opened the circuit"
            );
            self.observe(Observation::Circuit {
                phase: circuit.value.phase(),
                epoch: circuit.value.epoch,
            });
        }
        Ok(opened)
    }

    /// 401 or 403: the credential was refused, not the job. Re-reads the key if a re-read is
    /// due; unless it changed, backs calls off (the control record) until the next re-read;
    /// re-queues the job untried either way.
    async fn credential_rejected(
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

    /// Backs calls off until `until` (the next re-read) in the control record, unless a
    /// later back-off is recorded.
    async fn back_off_for_credential(
        &self,
        status: u16,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<(), WorkerError> {
        update_record::<Control, _>(&self.store, RecordKey::Control, |c| {
            if c.backoff_until.is_some_and(|b| b >= until) {
                return None;
            }
            Some(Control {
                backoff_until: Some(until),
                backoff_reason: Some(BackoffReason::CredentialRejected { status }),
                updated_by: Some(CONTROL_WRITER.to_string()),
                updated_at: Some(now),
                ..c.clone()
            })
        })
        .await?;
        Ok(())
    }

    /// Re-reads the key when a re-read is due and hands it to the HTTP layer; returns whether
    /// it changed. A failed read is logged and keeps the key in use.
    async fn reread_credential(&self, now: Timestamp) -> bool {
        if !self.rereads.take_slot(now) {
            return false;
        }
        let Some(source) = self.rereads.source() else {
            return false;
        };
        let key = match source.load().await {
            Ok(key) => key,
            Err(e) => {
                error!(error = %e, source = ?std::error::Error::source(&e), "could not re-read the API key: keeping the one in use");
                return false;
            }
        };
        match self.http.set_api_key(key.as_ref().map(|k| k.expose())) {
            Ok(changed) => {
                info!(changed, "API key re-read");
                changed
            }
            Err(e) => {
                error!(error = %e, "the re-read API key cannot be used: keeping the one in use");
                false
            }
        }
    }

    /// Dead-letters a job that cannot succeed, then drops its claim: it is not marked done,
    /// so a redrive of the dead-letter queue gets it called again. (A duplicate delivery of
    /// the same event calls again too, and dead-letters a second copy; it cannot succeed
    /// twice.)
    async fn dead_letter(
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

    /// Re-queues a job that was not tried (late, too early, claimed elsewhere): its attempt
    /// count stays, so that delivery timing alone never sends a job to the dead-letter queue.
    /// Gives back a job it did not call: releases the claim and re-queues it untried, at once.
    async fn give_back(
        &self,
        ev: &JobEvent,
        job_id: &str,
        why: &Reason,
    ) -> Result<bool, WorkerError> {
        self.store.abandon(job_id).await?;
        self.requeue_untried(ev, job_id, Duration::ZERO, why).await
    }

    async fn requeue_untried(
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
    /// dead-letters it with its [`qo_core::ports::GiveUp`] reason. Returns whether it was
    /// re-queued.
    async fn settle(
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

    async fn handle_health(&self, ev: &HealthCheckEvent) -> Result<Outcome, WorkerError> {
        // A health check is a call the API counts: made at its slot, as a job is.
        if let Some(slot) = ev.slot_at {
            let now = self.clock.now();
            let tolerance = self.config.call_tolerance;
            let ahead = slot.since(now);
            if now > slot.plus(tolerance) || ahead > self.config.max_slot_wait {
                let off = millis(now.since(slot)) as i64 - millis(ahead) as i64;
                warn!(
                    slot_off_ms = off,
                    "health check delivered off its slot: not made"
                );
                return Ok(Outcome::HealthCheckMissed {
                    epoch: ev.epoch,
                    slot_off_ms: off,
                });
            }
            self.clock.sleep_until(slot).await;
            if self.clock.now() > slot.plus(tolerance) {
                let off = millis(self.clock.now().since(slot)) as i64;
                warn!(
                    slot_off_ms = off,
                    "health check woke past its slot: not made"
                );
                return Ok(Outcome::HealthCheckMissed {
                    epoch: ev.epoch,
                    slot_off_ms: off,
                });
            }
        }
        let answer = self.http.health().await;
        let now = self.clock.now();
        let (healthy, status) = match &answer {
            Ok(r) => ((200..300).contains(&r.status), Some(r.status)),
            Err(_) => (false, None),
        };
        self.observe(Observation::HealthCheck {
            epoch: ev.epoch,
            healthy,
        });
        let policy = self.config.circuit;
        let mut changed = false;
        let circuit = update_record::<Circuit, _>(&self.store, RecordKey::Circuit, |c| {
            changed = false;
            // Refused: another epoch, forced open, or already closed.
            let next = c
                .record_probe_result(ev.epoch, healthy, now, &policy)
                .ok()?;
            changed = true;
            Some(next)
        })
        .await?;
        if changed {
            self.observe(Observation::Circuit {
                phase: circuit.value.phase(),
                epoch: circuit.value.epoch,
            });
        }
        if healthy {
            let closed = changed && circuit.value.is_closed();
            info!(?status, closed, "health check passed");
            Ok(Outcome::Healthy {
                epoch: ev.epoch,
                closed,
            })
        } else {
            match &answer {
                Err(e) => warn!(error = %e, "health check failed"),
                Ok(_) => warn!(?status, "health check failed"),
            }
            Ok(Outcome::Unhealthy {
                epoch: ev.epoch,
                status,
            })
        }
    }

    fn observe(&self, o: Observation) {
        self.observer.observe(o);
    }

    /// Delivers the result `result` builds to `ev`'s destination, when it has one
    /// ([`crate::results`]).
    async fn deliver(&self, ev: &JobEvent, result: impl FnOnce() -> JobResult) {
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

/// What the jobs of one batch invocation share: the batch's key (its jobs' claims name it,
/// and its one done record has it), and the end of the back-off a sibling's 429 asked for
/// (the latest, when several did). In memory only, for the one invocation; the control record
/// carries the back-off to everything else.
#[derive(Debug)]
pub(crate) struct BatchHold {
    key: String,
    until: Mutex<Option<Timestamp>>,
    /// When the batch last read the shared back-off.
    read_at: Mutex<Option<Timestamp>>,
}

impl BatchHold {
    /// The shared state of the batch `key` ([`BatchEvent::key`]), nothing held back yet.
    /// `first_slot`: its first job's; the orchestrator read the back-off shortly before it
    /// sent the batch, so the batch's first read is due [`BACKOFF_REREAD`] after it.
    fn new(key: String, first_slot: Timestamp) -> Self {
        Self {
            key,
            until: Mutex::new(None),
            read_at: Mutex::new(Some(first_slot.minus(BACKOFF_LOOKAHEAD))),
        }
    }

    /// Whether the batch's next read of the shared back-off is due at `now`; when it is, it
    /// counts as made.
    fn read_due(&self, now: Timestamp) -> bool {
        let mut read = self.read_at.lock().unwrap_or_else(PoisonError::into_inner);
        let due = read.is_none_or(|at| now.since(at) >= BACKOFF_REREAD);
        if due {
            *read = Some(now);
        }
        due
    }

    /// A sibling was answered 429 and asked for a back-off until `until` (a later one is
    /// kept).
    fn throttle(&self, until: Timestamp) {
        let mut held = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        if held.is_none_or(|u| u < until) {
            *held = Some(until);
        }
    }

    /// How long the back-off still runs at `at`; `None` when no sibling was throttled or
    /// its back-off is over (the job is then called as usual).
    fn left(&self, at: Timestamp) -> Option<Duration> {
        let held = *self.until.lock().unwrap_or_else(PoisonError::into_inner);
        held.filter(|u| at < *u).map(|u| u.since(at))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The body of a re-queued job: the job with its id made explicit, so that the idempotency
/// key survives the new message id a queue gives it.
fn requeue_body(ev: &JobEvent, job_id: &str) -> Result<String, WorkerError> {
    let mut job = ev.job.clone();
    job.id = Some(job_id.to_string());
    serde_json::to_string(&job).map_err(WorkerError::Encode)
}
