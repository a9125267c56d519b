//! Bringing back what reached the worker's on-failure destination (`qo redrive
//! --worker-failures`).
//!
//! When an asynchronous invocation of the worker fails every attempt (`RetriesExhausted`) or
//! waits in Lambda's queue past `MaximumEventAgeInSeconds` (`EventAgeExceeded`), Lambda sends an
//! invocation record to the on-failure destination (the template's `WorkerFailureQueue`):
//!
//! ```json
//! {"version": "1.0", "timestamp": "2019-11-14T18:16:05.568Z",
//!  "requestContext": {"requestId": "…", "functionArn": "…", "condition": "RetriesExhausted",
//!                     "approximateInvokeCount": 3},
//!  "requestPayload": { …the event… },
//!  "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
//!  "responsePayload": { …the error… }}
//! ```
//!
//! A record whose `requestPayload` is a job event, or a batch of them, holds jobs whose fate
//! the worker could not record. Some may have succeeded (a batch fails on one job, after its
//! siblings' calls). So each job is looked up in the idempotency records first: one recorded
//! done is skipped, the others are sent back to the job queue (the id made explicit, the attempt
//! count and first enqueue time kept), then the record is deleted. Done records live
//! `IDEMPOTENCY_TTL_S` and the failure queue keeps records 14 days, so a record older than the
//! done records' time cannot be checked: it is left and reported, unless the operator asks to
//! send it unchecked. A health check's record is deleted (the orchestrator sends new ones while
//! the circuit is open). Anything else (not JSON, no payload, a payload that is not a worker
//! event) stays on the queue and is reported.

use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use qo_core::ports::{IdempotencyStore, QueueError};
use qo_core::{Timestamp, WorkerEvent};
use serde::{Deserialize, Serialize};

use crate::sqs::SqsQueue;

/// Why a record on the failure queue was left there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordError {
    /// The body is not a JSON object.
    #[error("the body is not an invocation record: {detail}")]
    NotARecord {
        /// The parser's message.
        detail: String,
    },
    /// The record carries no `requestPayload` (Lambda drops a payload too large for the
    /// destination).
    #[error("the record has no requestPayload")]
    NoPayload,
    /// The payload is not a worker event.
    #[error("the requestPayload is not a worker event: {detail}")]
    NotAWorkerEvent {
        /// The parser's message.
        detail: String,
    },
    /// The record is older than the done records' time, so whether its jobs succeeded can no
    /// longer be read.
    #[error(
        "the record is {age_s} s old, past the done records' time ({checked_within_s} s, \
         IDEMPOTENCY_TTL_S): whether its jobs succeeded cannot be checked (--unchecked sends \
         them anyway)"
    )]
    TooOldToCheck {
        /// Seconds since Lambda sent the record.
        age_s: u64,
        /// The done records' time, in seconds.
        checked_within_s: u64,
    },
}

/// The part of Lambda's invocation record that matters here.
#[derive(Deserialize)]
struct InvocationRecord {
    #[serde(rename = "requestContext", default)]
    request_context: Option<RequestContext>,
    #[serde(rename = "requestPayload", default)]
    request_payload: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RequestContext {
    #[serde(default)]
    condition: Option<String>,
}

/// A parsed record: the worker event and Lambda's `requestContext.condition`.
#[derive(Clone, Debug, PartialEq)]
pub struct FailedInvocation {
    /// The event the worker failed on.
    pub event: WorkerEvent,
    /// `RetriesExhausted`, `EventAgeExceeded`, ... as Lambda wrote it.
    pub condition: Option<String>,
}

/// Parses one invocation record.
pub fn parse_record(body: &str) -> Result<FailedInvocation, RecordError> {
    let record: InvocationRecord =
        serde_json::from_str(body).map_err(|e| RecordError::NotARecord {
            detail: e.to_string(),
        })?;
    let payload = record
        .request_payload
        .filter(|p| !p.is_null())
        .ok_or(RecordError::NoPayload)?;
    let event: WorkerEvent =
        serde_json::from_value(payload).map_err(|e| RecordError::NotAWorkerEvent {
            detail: e.to_string(),
        })?;
    Ok(FailedInvocation {
        event,
        condition: record.request_context.and_then(|c| c.condition),
    })
}

/// A record left on the failure queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeftRecord {
    /// Its SQS message id.
    pub message_id: String,
    /// Why it was left.
    pub reason: RecordError,
}

/// What a redrive of the failure queue did (or, on a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WorkerFailuresReport {
    /// Records read.
    pub records: u64,
    /// Jobs sent back to the job queue (on a dry run: that would be).
    pub jobs: u64,
    /// Jobs skipped because they are recorded done (their call succeeded).
    pub already_done: u64,
    /// Health-check records deleted (on a dry run: that would be).
    pub health_checks: u64,
    /// Records left on the queue, and why.
    pub left: Vec<LeftRecord>,
    /// Whether this was a dry run (nothing sent or deleted).
    pub dry_run: bool,
}

/// How long a received record stays hidden while the redrive runs; whatever is left is made
/// visible again at the end.
const HOLD: Duration = Duration::from_secs(300);

/// How a redrive of the failure queue runs.
#[derive(Clone, Copy, Debug)]
pub struct RedriveOptions {
    /// Send at most this many jobs (all when `None`).
    pub max: Option<u64>,
    /// Read and classify every record, then make them all visible again.
    pub dry_run: bool,
    /// The done records' time (the worker's `IDEMPOTENCY_TTL_S`): a record older than this
    /// cannot be checked against them.
    pub checked_within: Duration,
    /// Send the jobs of records too old to check all the same.
    pub unchecked: bool,
    /// Now, to age the records by.
    pub now: Timestamp,
}

/// Moves the job records of the failure queue at `failure_url` back to `queues`' main queue,
/// skipping each job `store` records done; deletes health-check records; leaves the rest,
/// reported. With `dry_run` it reads and classifies every record, then makes them all visible
/// again.
///
/// A record is deleted only after its jobs were sent, so a failure in between leaves a copy
/// (which the worker's idempotency record makes harmless), never no copy.
pub async fn redrive_worker_failures(
    queues: &SqsQueue,
    store: &dyn IdempotencyStore,
    failure_url: &str,
    opts: RedriveOptions,
) -> Result<WorkerFailuresReport, QueueError> {
    let mut report = WorkerFailuresReport {
        dry_run: opts.dry_run,
        ..WorkerFailuresReport::default()
    };
    let max = opts.max.unwrap_or(u64::MAX);
    let mut seen = HashSet::new();
    let mut keep: Vec<String> = Vec::new();
    let hold = i32::try_from(HOLD.as_secs()).unwrap_or(300);
    while report.jobs < max {
        // A 1 s poll asks every SQS server, so an empty answer means empty.
        let batch = queues
            .receive_raw(failure_url, 10, Duration::from_secs(1))
            .await?;
        if batch.is_empty() {
            break;
        }
        let receipts: Vec<&str> = batch
            .iter()
            .filter_map(|m| m.receipt_handle.as_deref())
            .collect();
        queues
            .change_visibility(failure_url, &receipts, hold)
            .await?;
        let mut delete = Vec::new();
        for m in batch {
            let message_id = m.message_id.clone().unwrap_or_default();
            let Some(receipt) = m.receipt_handle.clone() else {
                continue;
            };
            if !seen.insert(message_id.clone()) {
                keep.push(receipt);
                continue;
            }
            report.records += 1;
            let sent_at = m
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|v| v.parse::<u64>().ok())
                .map(Timestamp::from_millis);
            let parsed = parse_record(m.body.as_deref().unwrap_or_default())
                .and_then(|r| check_age(r, sent_at, &opts));
            match parsed {
                Err(reason) => {
                    tracing::warn!(%message_id, %reason, "worker-failure record left on the queue");
                    report.left.push(LeftRecord { message_id, reason });
                    keep.push(receipt);
                }
                Ok(FailedInvocation {
                    event: WorkerEvent::HealthCheck(_),
                    ..
                }) => {
                    report.health_checks += 1;
                    if opts.dry_run {
                        keep.push(receipt);
                    } else {
                        delete.push(receipt);
                    }
                }
                Ok(FailedInvocation {
                    event: WorkerEvent::Deliver(d),
                    ..
                }) => {
                    // A result to deliver again: back to the job queue as it came, where the
                    // orchestrator hands it to the worker once more (no call, no slot).
                    report.jobs += 1;
                    if opts.dry_run {
                        keep.push(receipt);
                        continue;
                    }
                    queues.resend_job(&d.result.to_json(), &d.origin).await?;
                    delete.push(receipt);
                }
                Ok(FailedInvocation { event, condition }) => {
                    // A job event, or a batch of them: every job of the record not recorded
                    // done goes back (a batch may take the count past `max` by its size).
                    if !opts.dry_run && report.jobs >= max {
                        keep.push(receipt);
                        continue;
                    }
                    let resend = jobs_to_resend(event).map_err(|e| QueueError::Backend {
                        op: "redrive worker failures",
                        source: Box::new(e),
                    })?;
                    let mut send = Vec::with_capacity(resend.len());
                    for job in resend {
                        let done =
                            store
                                .is_done(&job.0)
                                .await
                                .map_err(|e| QueueError::Backend {
                                    op: "redrive worker failures: reading a done record",
                                    source: Box::new(e),
                                })?;
                        if done {
                            tracing::info!(job_id = %job.0, "job recorded done: not sent again");
                            report.already_done += 1;
                        } else {
                            send.push(job);
                        }
                    }
                    report.jobs += u64::try_from(send.len()).unwrap_or(u64::MAX);
                    if opts.dry_run {
                        keep.push(receipt);
                        continue;
                    }
                    for (job_id, body, origin) in &send {
                        let new_id = queues.resend_job(body, origin).await?;
                        tracing::info!(
                            %job_id,
                            %new_id,
                            attempt = origin.attempt,
                            condition = condition.as_deref().unwrap_or("unknown"),
                            "job from the worker-failure queue sent back to the job queue"
                        );
                    }
                    delete.push(receipt);
                }
            }
        }
        queues.delete_receipts(failure_url, &delete).await?;
    }
    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
    queues.change_visibility(failure_url, &keep, 0).await?;
    Ok(report)
}

/// Refuses a job record sent longer ago than the done records' time (unless asked to send it
/// unchecked): its jobs' done records may be gone, so a succeeded job would be called again.
/// Health checks pass whatever their age.
fn check_age(
    record: FailedInvocation,
    sent_at: Option<Timestamp>,
    opts: &RedriveOptions,
) -> Result<FailedInvocation, RecordError> {
    if opts.unchecked || matches!(record.event, WorkerEvent::HealthCheck(_)) {
        return Ok(record);
    }
    let Some(sent_at) = sent_at else {
        return Ok(record);
    };
    let age = opts.now.since(sent_at);
    if age > opts.checked_within {
        return Err(RecordError::TooOldToCheck {
            age_s: age.as_secs(),
            checked_within_s: opts.checked_within.as_secs(),
        });
    }
    Ok(record)
}

/// The jobs a failed invocation's event sends back to the job queue, in its order: (job id,
/// body with the id made explicit, origin kept). One for a job event, every job of a batch
/// (whichever of them were settled before the event failed: the caller skips the done ones),
/// none for a health check.
pub fn jobs_to_resend(
    event: WorkerEvent,
) -> Result<Vec<(String, String, qo_core::Origin)>, serde_json::Error> {
    let jobs = match event {
        WorkerEvent::Job(ev) => vec![ev],
        WorkerEvent::Batch(batch) => batch.jobs,
        WorkerEvent::HealthCheck(_) | WorkerEvent::Deliver(_) => Vec::new(),
    };
    jobs.into_iter()
        .map(|ev| {
            let job_id = ev.job_id().to_string();
            let mut job = ev.job;
            job.id = Some(job_id.clone());
            Ok((job_id, serde_json::to_string(&job)?, ev.origin))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = r#"{"kind":"job","job":{"path":"/x"},"origin":{"message_id":"m-1","attempt":2},
        "slot_at":1,"epoch":0,"dispatched_at":1}"#;

    fn record(payload: &str) -> String {
        format!(
            r#"{{"version":"1.0","timestamp":"2019-11-14T18:16:05.568Z",
            "requestContext":{{"requestId":"r","functionArn":"arn","condition":"RetriesExhausted",
            "approximateInvokeCount":3}},
            "requestPayload":{payload},
            "responseContext":{{"statusCode":200,"executedVersion":"$LATEST","functionError":"Unhandled"}},
            "responsePayload":{{"errorMessage":"boom"}}}}"#
        )
    }

    #[test]
    fn parses_job_and_health_check_records() {
        let r = parse_record(&record(JOB)).expect("job record");
        assert_eq!(r.condition.as_deref(), Some("RetriesExhausted"));
        let WorkerEvent::Job(ev) = r.event else {
            panic!("a job")
        };
        assert_eq!(ev.origin.message_id, "m-1");
        assert_eq!(ev.origin.attempt, 2);
        let r = parse_record(&record(r#"{"kind":"health_check","epoch":4,"sent_at":5}"#))
            .expect("health record");
        assert!(matches!(r.event, WorkerEvent::HealthCheck(h) if h.epoch == 4));
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        assert!(matches!(
            parse_record("not json"),
            Err(RecordError::NotARecord { .. })
        ));
        assert_eq!(
            parse_record(r#"{"version":"1.0","requestContext":{"condition":"EventAgeExceeded"}}"#),
            Err(RecordError::NoPayload)
        );
        assert!(matches!(
            parse_record(&record(r#"{"detail-type":"Scheduled Event"}"#)),
            Err(RecordError::NotAWorkerEvent { .. })
        ));
    }

    #[test]
    fn a_failed_batch_record_redrives_every_job() {
        let batch = r#"{"kind":"batch","jobs":[
            {"job":{"path":"/a"},"origin":{"message_id":"m-1","attempt":2},
             "slot_at":1,"epoch":0,"dispatched_at":1},
            {"job":{"path":"/b","id":"job-b"},"origin":{"message_id":"m-2","attempt":0,"throttled":3},
             "slot_at":2,"epoch":0,"dispatched_at":1},
            {"job":{"path":"/c"},"origin":{"message_id":"m-3","attempt":4},
             "slot_at":3,"epoch":0,"dispatched_at":1}]}"#;
        let r = parse_record(&record(batch)).expect("batch record");
        let resend = jobs_to_resend(r.event).expect("encoded");
        let ids: Vec<&str> = resend.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids, ["m-1", "job-b", "m-3"], "every job, in order");
        for (id, body, _) in &resend {
            let job: serde_json::Value = serde_json::from_str(body).expect("json");
            assert_eq!(job["id"], *id, "the id made explicit: {body}");
        }
        let kept: Vec<(u32, u32)> = resend
            .iter()
            .map(|(_, _, o)| (o.attempt, o.throttled))
            .collect();
        assert_eq!(
            kept,
            [(2, 0), (0, 3), (4, 0)],
            "attempts and 429 counts kept"
        );
        // A job record sends back one, a health check none.
        let one = jobs_to_resend(parse_record(&record(JOB)).expect("job").event).expect("ok");
        assert_eq!(one.len(), 1);
        let none = jobs_to_resend(
            parse_record(&record(r#"{"kind":"health_check","epoch":4,"sent_at":5}"#))
                .expect("health")
                .event,
        )
        .expect("ok");
        assert!(none.is_empty());
    }
}
