//! The user's own code around the paced call: [`AroundCall`].
//!
//! A user builds on `qo-worker` as a library and gives the worker an [`AroundCall`]
//! ([`crate::Worker::with_around`]). The framework keeps everything that makes the call safe:
//! the claim, the slot wait, the circuit, 429 handling, the rate-limit headers, metrics and the
//! result path. The user's code sees a job before its slot and a 2xx answer after it; it never
//! sees a 429, a 5xx, or a late slot, which the framework re-queues as it always does.
//!
//! [`Passthrough`] is today's behaviour: the job is called as it is and its answer kept.

use async_trait::async_trait;
use qo_core::Job;

/// A 2xx answer, as the user's code sees it.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    /// The HTTP status.
    pub status: u16,
    /// The response headers the stack keeps (`RESULT_HEADERS`), names in lower case.
    pub headers: &'a [(String, String)],
    /// The body, up to `RESULT_BODY_MAX_BYTES` (with result destinations, or when
    /// [`AroundCall::reads_answers`]; else only its start, for a dead letter's excerpt).
    pub body: &'a [u8],
    /// Whether `body` is cut short of what the API sent.
    pub truncated: bool,
}

/// What becomes of a 2xx answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterCall {
    /// Keep it: the result carries the answer as it came.
    Keep,
    /// The result carries this body instead (a transformation of the answer).
    Body(Vec<u8>),
    /// The job failed after all: it is dead-lettered with this reason and its failure result
    /// sent. It is not retried (the API did the work); `qo redrive` would call it again.
    Failed(String),
}

/// The user's code refused: the job is dead-lettered with the text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

/// The user's code around the paced call.
#[async_trait]
pub trait AroundCall: Send + Sync {
    /// The request to make for `job`: the job itself by default. It runs after the job's claim
    /// and before the wait for its slot, so a slow build never makes the call late. The job
    /// returned is checked as a job is ([`Job::validate`]); an error, or a job that fails the
    /// check, dead-letters the job uncalled with the reason.
    async fn request(&self, job: &Job) -> Result<Job, HandlerError> {
        Ok(job.clone())
    }

    /// What to make of a 2xx answer to `job`: [`AfterCall::Keep`] by default. It runs once per
    /// success, before the result is delivered and the job recorded done; an error counts as
    /// [`AfterCall::Failed`].
    async fn answered(&self, job: &Job, answer: Answer<'_>) -> Result<AfterCall, HandlerError> {
        let _ = (job, answer);
        Ok(AfterCall::Keep)
    }

    /// Whether [`AroundCall::answered`] reads answers: then the worker reads each body up to
    /// `RESULT_BODY_MAX_BYTES` and keeps the `RESULT_HEADERS`, with result destinations or
    /// without. True by default; [`Passthrough`] reads none, so a stack without destinations
    /// reads only an excerpt.
    fn reads_answers(&self) -> bool {
        true
    }
}

/// Today's behaviour: call the job as it is, keep the answer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Passthrough;

impl AroundCall for Passthrough {
    fn reads_answers(&self) -> bool {
        false
    }
}
