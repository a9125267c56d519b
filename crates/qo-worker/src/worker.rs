//! [`Worker`]: one event in, one [`Outcome`] out; the job's fate written to the ports.
//!
//! A job event is claimed (one successful call per job), waited on until its slot ("dispatch
//! ahead, call on time"), called, and classified. The decisions are pure functions of
//! `crate::plan` (what to do before the call, whether the call is still on time, what the
//! answer makes of the job); this module and its children carry them out, one effect per
//! variant. This file holds the worker, its events and the call at the slot; `batch` the
//! batch events and the invocation's deadline, `fate` what becomes of a job (done, re-queued,
//! dead-lettered), `shared` what it writes to the records others read (the control record,
//! the circuit, the credential's back-off) and the health checks:
//!
//! | answer | idempotency | shared state | the job |
//! |---|---|---|---|
//! | 2xx | done (a batch's jobs: one record for the batch) | none; control `api_window` only when the window's calls run ahead (see below) | finished |
//! | 429 | abandoned | control `backoff_until` from `Retry-After` (kept if later; none without it), `throttles` + 1, `api_window` | re-queued after Retry-After (1 s without), `attempt` kept, `throttled` + 1 (dead-lettered at `MAX_THROTTLED`) |
//! | 401, 403 | abandoned | control `backoff_until` (unless the re-read key changed) | re-queued untried |
//! | 5xx, 408, timeout, no connection | abandoned | circuit failure | re-queued (`RETRY_DELAY_S`), `attempt` + 1 (dead-lettered at `MAX_ATTEMPTS`) |
//! | other status | abandoned | none | dead-lettered with `HTTP <status>: <excerpt>` |
//!
//! Closed-loop pacing: a 429 is the pacer's signal, never a job's failed attempt. Every 429
//! bumps the control record's [`Throttles`] counter (the orchestrator's rate controller lowers
//! the pace on each new one) and re-queues the job with its `attempt` unchanged and its
//! `throttled` count raised; only `MAX_THROTTLED` 429s dead-letter it
//! ([`qo_core::retry::Retry::after_throttle`]). The API's rate-limit headers
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

use qo_core::ports::{IdempotencyStore, JobSink, RecordStore, ResultSink};
use qo_core::{
    Clock, Job, JobEvent, NoObserver, Observation, Observer, Reason, Timestamp, WorkerEvent,
};
use tracing::{Instrument, info, info_span, warn};

use crate::around::{AfterCall, Answer, AroundCall, HandlerError, Passthrough};
use crate::client::ApiClient;
use crate::config::WorkerConfig;
use crate::credential::{CredentialSource, Rereads};
use crate::error::WorkerError;
use crate::http::HttpCall;
use crate::outcome::Outcome;
use crate::plan::{AtSlot, Decision, JobPolicy, Plan, at_slot, called_status, decide, plan};
use crate::results::{ResultPath, redeliver};
use crate::window::WindowReports;
pub use crate::window::{is_low, runs_ahead};

mod batch;
mod fate;
mod shared;

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
                let requeued = self.release_untried(ev, &job_id, &reason).await?;
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
                let requeued = self.release_untried(ev, &job_id, &reason).await?;
                Ok(Outcome::Late {
                    job_id,
                    late_by_ms: millis(late),
                    requeued,
                })
            }
        }
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

    fn observe(&self, o: Observation) {
        self.observer.observe(o);
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
