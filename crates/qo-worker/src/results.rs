//! The result path: what the worker does after a job ends, when the job has a destination
//! (its `reply_to`, else the stack's default; [`qo_core::result::Destinations`]).
//!
//! A success's result (status, the headers the stack keeps, the body, the times and counts)
//! is delivered before the job is marked done, and a dead letter's result (outcome, reason,
//! status and excerpt) after the dead letter is sent. A delivery the destination refuses is
//! tried [`DELIVERY_ATTEMPTS`] times, then the result itself goes to the dead-letter queue
//! ([`Reason::ResultUndelivered`], its body the result). Neither failure fails the event, so
//! neither makes the worker call the API again. The window this leaves is the one a call
//! already has: a function killed between the answer and the done record calls again when
//! Lambda retries it, and delivers that answer's result (the same `result_id`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use qo_core::event::DeliverEvent;
use qo_core::ports::{DeadLetter, JobSink, ResultSink};
use qo_core::result::{
    Destination, Destinations, JobResult, MAX_INLINE_RESULT_BYTES, ResultOutcome, ResultTimes,
};
use qo_core::{Clock, JobEvent, Observation, Observer, Origin, Reason, Timestamp};
use tracing::{error, warn};

use crate::config::WorkerConfig;
use crate::http::ApiResponse;
use crate::outcome::Outcome;

/// Tries of one delivery before the result is dead-lettered.
pub const DELIVERY_ATTEMPTS: u32 = 3;

/// Times a result the destination keeps refusing is re-queued for a later delivery (after
/// [`requeue_delay`]) before it is dead-lettered: a destination down for about half an hour
/// still gets it.
pub const RESULT_REQUEUES: u32 = 5;

/// How long a result re-queued for the `attempt`th time (from 0) waits: 60 s doubling, at most
/// SQS's 900 s (60, 120, 240, 480, 900: about 30 minutes in all).
pub fn requeue_delay(attempt: u32) -> Duration {
    Duration::from_secs(60u64.saturating_mul(1 << attempt.min(4))).min(Duration::from_secs(900))
}

/// The pause before each retry of a delivery.
pub const DELIVERY_BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];

pub use crate::config::DEFAULT_RESULT_HEADERS;

/// The destinations and the sink that delivers to them.
#[derive(Clone)]
pub struct ResultPath {
    sink: Arc<dyn ResultSink>,
    destinations: Destinations,
}

impl ResultPath {
    /// Delivers through `sink` to `destinations`.
    pub fn new(sink: Arc<dyn ResultSink>, destinations: Destinations) -> Self {
        ResultPath { sink, destinations }
    }

    /// The destinations.
    pub fn destinations(&self) -> &Destinations {
        &self.destinations
    }

    /// Where `ev`'s result goes (`None`: nowhere; a name that is no destination too: the
    /// worker refuses such a job before its call).
    pub fn destination(&self, ev: &JobEvent) -> Option<&Destination> {
        self.destinations.for_job(&ev.job).ok().flatten()
    }

    /// The result of a success: `response` answered at `answered`, called at `called`.
    pub fn succeeded(
        ev: &JobEvent,
        job_id: &str,
        response: &ApiResponse,
        (called, answered): (Timestamp, Timestamp),
    ) -> JobResult {
        let mut result = base(ev, job_id, ResultOutcome::Succeeded, answered);
        result.status = Some(response.status);
        result.times.called = Some(called.to_rfc3339());
        result.headers = response
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect::<BTreeMap<_, _>>();
        result.set_body(&response.body_start);
        result.body_truncated = response.body_truncated;
        result
    }

    /// The result of a dead letter.
    pub fn dead_lettered(ev: &JobEvent, job_id: &str, reason: &Reason, at: Timestamp) -> JobResult {
        let mut result = base(ev, job_id, ResultOutcome::DeadLettered, at);
        result.reason = Some(reason.to_string());
        result.status = status_of(reason);
        result
    }

    /// Delivers `result` to `to`, [`DELIVERY_ATTEMPTS`] times at most and within `budget` in
    /// all; then dead-letters the result itself. Never an error: the job's fate is settled, and failing the event would
    /// have Lambda call the API again. A result neither delivered nor dead-lettered is logged
    /// at ERROR and observed.
    #[allow(clippy::too_many_arguments)]
    pub async fn deliver(
        &self,
        to: &Destination,
        mut result: JobResult,
        origin: &Origin,
        budget: Duration,
        clock: &impl Clock,
        sink: &impl JobSink,
        observer: &dyn Observer,
    ) -> bool {
        result.destination = Some(to.name.clone());
        // Every try together within `budget`, which the function timeout's budget counts.
        let detail = tokio::select! {
            biased;
            tried = self.tries(to, &result, clock) => match tried {
                Ok(()) => {
                    observer.observe(Observation::ResultDelivered {
                        job_id: result.job_id.clone(),
                        destination: to.name.clone(),
                    });
                    return true;
                }
                Err(detail) => detail,
            },
            () = clock.sleep(budget) => format!(
                "no answer within {} ms (one AWS SDK call's worst case)",
                budget.as_millis()
            ),
        };
        // Kept and tried again later: re-queued (the orchestrator hands it back to the worker,
        // no slot, no call), [`RESULT_REQUEUES`] times; then dead-lettered. A large body goes
        // to the bucket first: the queues take 256 KiB.
        let result = self.stowed(result).await;
        if origin.attempt < RESULT_REQUEUES {
            let delay = requeue_delay(origin.attempt);
            let next = Origin {
                attempt: origin.attempt + 1,
                ..origin.clone()
            };
            match sink.requeue(&result.to_json(), &next, delay).await {
                Ok(()) => {
                    warn!(
                        destination = %to.name,
                        delay_s = delay.as_secs(),
                        requeues = next.attempt,
                        error = %detail,
                        "result not delivered: re-queued for a later delivery"
                    );
                    return false;
                }
                Err(e) => warn!(error = %e, "the result could not be re-queued: dead-lettered"),
            }
        }
        let reason = Reason::ResultUndelivered {
            destination: to.name.clone(),
            detail,
        };
        observer.observe(Observation::ResultUndelivered {
            job_id: result.job_id.clone(),
            destination: to.name.clone(),
        });
        let letter = DeadLetter {
            body: result.to_json(),
            reason: reason.clone(),
            origin: origin.clone(),
        };
        match sink.dead_letter(letter).await {
            Ok(()) => warn!(reason = %reason, "result dead-lettered"),
            Err(e) => error!(
                reason = %reason,
                error = %e,
                result = %result.to_json(),
                "the result could neither be delivered nor dead-lettered: it is in this line only"
            ),
        }
        false
    }
}

impl ResultPath {
    /// `result` with a body too large for a queue put in the bucket; as it is when the bucket
    /// refuses too (the re-queue or the dead letter then fails, and the result is logged).
    async fn stowed(&self, result: JobResult) -> JobResult {
        if result.to_json().len() <= MAX_INLINE_RESULT_BYTES {
            return result;
        }
        match self.sink.stow(&result).await {
            Ok(stowed) => stowed,
            Err(e) => {
                warn!(error = %e, "the result's body could not be put in the bucket");
                result
            }
        }
    }

    /// [`DELIVERY_ATTEMPTS`] tries with [`DELIVERY_BACKOFF`] between; the last error's text.
    async fn tries(
        &self,
        to: &Destination,
        result: &JobResult,
        clock: &impl Clock,
    ) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..DELIVERY_ATTEMPTS {
            if attempt > 0 {
                let i = (attempt as usize - 1).min(DELIVERY_BACKOFF.len() - 1);
                clock.sleep(DELIVERY_BACKOFF[i]).await;
            }
            match self.sink.deliver(to, result).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    warn!(destination = %to.name, attempt = attempt + 1, error = %e, "result not delivered");
                    last = e.to_string();
                }
            }
        }
        Err(last)
    }
}

/// A result's common part.
fn base(ev: &JobEvent, job_id: &str, outcome: ResultOutcome, answered: Timestamp) -> JobResult {
    JobResult {
        meta: ev.job.meta.clone(),
        times: ResultTimes::of(
            ev.origin.enqueued_at,
            Some(ev.slot_at),
            None,
            Some(answered),
        ),
        attempts: ev.origin.attempt,
        throttled: ev.origin.throttled,
        ..JobResult::new(job_id, outcome)
    }
}

/// The HTTP status a reason carries, when it carries one.
fn status_of(reason: &Reason) -> Option<u16> {
    match reason {
        Reason::FinalStatus { status, .. }
        | Reason::ServerError { status, .. }
        | Reason::CredentialRefused { status } => Some(*status),
        Reason::GaveUp(qo_core::reason::GiveUp::Attempts { last, .. }) => status_of(last),
        Reason::GaveUp(qo_core::reason::GiveUp::Throttled { .. }) => Some(429),
        _ => None,
    }
}

/// Delivers a dead-lettered result again (a [`qo_core::WorkerEvent::Deliver`]), to the
/// destination it names; a destination the stack no longer declares, or no result path at
/// all, dead-letters it again with the reason.
pub async fn redeliver(
    path: Option<&ResultPath>,
    config: &WorkerConfig,
    ev: DeliverEvent,
    clock: &impl Clock,
    sink: &impl JobSink,
    observer: &dyn Observer,
) -> Outcome {
    let DeliverEvent { result, origin } = ev;
    let job_id = result.job_id.clone();
    let name = result.destination.clone().unwrap_or_default();
    let budget = config.result_budget;
    let delivered = match (path, config.destinations.get(&name)) {
        (Some(path), Some(to)) => {
            path.deliver(to, result, &origin, budget, clock, sink, observer)
                .await
        }
        _ => {
            let reason = Reason::ResultUndelivered {
                destination: name.clone(),
                detail: "not one of the stack's result destinations".to_string(),
            };
            warn!(%reason, "result not redelivered");
            let letter = DeadLetter {
                body: result.to_json(),
                reason,
                origin,
            };
            if let Err(e) = sink.dead_letter(letter).await {
                error!(error = %e, "the result could not be dead-lettered again");
            }
            false
        }
    };
    Outcome::Redelivered {
        job_id,
        destination: name,
        delivered,
    }
}
