//! [`Outcome`]: what became of one worker event; the Lambda function's JSON result.

use serde::{Serialize, Serializer};

use qo_core::Reason;

/// What became of an event. Every job outcome says where the job is now: done, on a queue
/// (`requeued: true`), or on the dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The API answered 2xx; the job is done.
    Succeeded {
        /// The job id.
        job_id: String,
        /// The HTTP status.
        status: u16,
        /// Whether the idempotency record was marked done (a failure is logged: a duplicate
        /// delivery after the claim expires could then call again).
        recorded: bool,
    },
    /// The job was already done, or another delivery holds its claim.
    Duplicate {
        /// The job id.
        job_id: String,
        /// Another delivery holds an unfinished claim: the job was re-queued to be looked at
        /// again once that claim expires, so a delivery that died mid-call loses nothing.
        in_progress: bool,
        /// Whether a copy was re-queued (false: dropped as done, or dead-lettered).
        requeued: bool,
    },
    /// The slot was further ahead than `MAX_SLOT_WAIT_MS` (clock skew): re-queued without a
    /// call.
    TooEarly {
        /// The job id.
        job_id: String,
        /// How far ahead the slot was, in milliseconds.
        early_by_ms: u64,
        /// Re-queued (false: dead-lettered past the attempt limit).
        requeued: bool,
    },
    /// The event arrived after its slot plus the tolerance: re-queued without a call, since a
    /// call now would fall outside the quota the orchestrator counted it in.
    Late {
        /// The job id.
        job_id: String,
        /// How late, in milliseconds.
        late_by_ms: u64,
        /// Re-queued (false: dead-lettered past the attempt limit).
        requeued: bool,
    },
    /// The API answered 429: the back-off was recorded and the job re-queued after it.
    Throttled {
        /// The job id.
        job_id: String,
        /// The back-off taken, in milliseconds.
        retry_after_ms: u64,
        /// Re-queued (false: dead-lettered past the attempt limit).
        requeued: bool,
    },
    /// 5xx, timeout or connection error: counted against the circuit; the job re-queued.
    Failed {
        /// The job id.
        job_id: String,
        /// The HTTP status; `None` for a timeout or connection error.
        status: Option<u16>,
        /// Whether this failure opened the circuit.
        opened_circuit: bool,
        /// Re-queued (false: dead-lettered past the attempt limit).
        requeued: bool,
    },
    /// The API answered 401 or 403: the credential was refused, not the job. The job went back
    /// untried (its attempt count kept); unless the re-read key had changed, calls back off
    /// until the next re-read.
    CredentialRejected {
        /// The job id.
        job_id: String,
        /// The HTTP status (401 or 403).
        status: u16,
        /// Whether the key, re-read at once, differed from the refused one (then no back-off).
        key_changed: bool,
        /// The back-off asked of the orchestrator, in milliseconds (0 when the key changed).
        backoff_ms: u64,
        /// Re-queued.
        requeued: bool,
    },
    /// The key in use was refused (401/403) and was re-read less than `CREDENTIAL_REREAD_S`
    /// ago: the job went back untried, without a call, to be delivered after the next re-read.
    CredentialPending {
        /// The job id.
        job_id: String,
        /// The refusal's HTTP status.
        status: u16,
        /// The delay of the re-queue, in milliseconds.
        backoff_ms: u64,
        /// Re-queued.
        requeued: bool,
    },
    /// Retrying cannot help (another 4xx, or a job that cannot be sent): dead-lettered.
    DeadLettered {
        /// The job id.
        job_id: String,
        /// The reason given to the dead-letter queue (in the JSON result: its text, as the
        /// queue's `qo-reason` attribute carries it).
        #[serde(serialize_with = "as_text")]
        reason: Reason,
    },
    /// A job of a batch whose slot wait and call the invocation's remaining time could not
    /// cover: re-queued untried, unclaimed, its attempt count kept.
    OutOfTime {
        /// The job id.
        job_id: String,
        /// How much time was missing, in milliseconds.
        short_by_ms: u64,
        /// Re-queued.
        requeued: bool,
    },
    /// A job of a batch that was not called because a sibling of the same batch was answered
    /// 429 and this job's slot came before the back-off it asked for ended: re-queued untried
    /// for when the back-off ends, its claim dropped, its attempt and 429 counts kept.
    HeldBack {
        /// The job id.
        job_id: String,
        /// The delay of the re-queue (what was left of the sibling's back-off, at most SQS's
        /// 900 s), in milliseconds.
        backoff_ms: u64,
        /// Re-queued.
        requeued: bool,
    },
    /// A batch: each job's outcome, in the batch's order.
    Batch {
        /// The outcomes.
        outcomes: Vec<Outcome>,
    },
    /// The health check answered 2xx.
    Healthy {
        /// The epoch the health check was sent under.
        epoch: u64,
        /// Whether it closed the circuit (false: stale epoch, or nothing to close).
        closed: bool,
    },
    /// The health check was not made: delivered past its slot's tolerance, or with its slot
    /// further ahead than `MAX_SLOT_WAIT_MS`. Calling then could exceed the quota; the
    /// circuit is left as it is, and the orchestrator sends another after its probe timeout.
    HealthCheckMissed {
        /// The epoch the health check was sent under.
        epoch: u64,
        /// How far off its slot the delivery was, in milliseconds: positive when late,
        /// negative when early.
        slot_off_ms: i64,
    },
    /// The health check failed.
    Unhealthy {
        /// The epoch the health check was sent under.
        epoch: u64,
        /// The HTTP status; `None` for a timeout or connection error.
        status: Option<u16>,
    },
    /// A dead-lettered result brought back: delivered, or dead-lettered again.
    Redelivered {
        /// The job id of the result.
        job_id: String,
        /// Its destination.
        destination: String,
        /// Whether the destination took it this time.
        delivered: bool,
    },
}

/// A reason in the JSON result: its text.
fn as_text<S: Serializer>(reason: &Reason, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_s_reason_is_its_text_in_the_json_result() {
        let out = Outcome::DeadLettered {
            job_id: "m-1".into(),
            reason: Reason::FinalStatus {
                status: 404,
                excerpt: "no such item".into(),
            },
        };
        let json = serde_json::to_value(&out).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "outcome": "dead_lettered",
                "job_id": "m-1",
                "reason": "HTTP 404: no such item",
            })
        );
    }
}
