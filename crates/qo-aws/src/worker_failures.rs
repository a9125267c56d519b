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
//! A record whose `requestPayload` is a job event is the job itself, never called successfully
//! or not known to be: it is sent back to the job queue (its id made explicit, its attempt
//! count and first enqueue time kept), then the record is deleted. A health check's record is
//! deleted (the orchestrator sends new ones while the circuit is open). Anything else (not
//! JSON, no payload, a payload that is not a worker event) stays on the queue and is reported.

use std::collections::HashSet;
use std::time::Duration;

use qo_core::WorkerEvent;
use qo_core::ports::QueueError;
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

/// Moves the job records of the failure queue at `failure_url` back to `jobs`' main queue, at
/// most `max` jobs (all when `None`); deletes health-check records; leaves the rest, reported.
/// With `dry_run` it reads and classifies every record, then makes them all visible again.
///
/// A record is deleted only after its job was sent, so a failure in between leaves a copy
/// (which the worker's idempotency record makes harmless), never no copy.
pub async fn redrive_worker_failures(
    queues: &SqsQueue,
    failure_url: &str,
    max: Option<u64>,
    dry_run: bool,
) -> Result<WorkerFailuresReport, QueueError> {
    let mut report = WorkerFailuresReport {
        dry_run,
        ..WorkerFailuresReport::default()
    };
    let max = max.unwrap_or(u64::MAX);
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
            match parse_record(m.body.as_deref().unwrap_or_default()) {
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
                    if dry_run {
                        keep.push(receipt);
                    } else {
                        delete.push(receipt);
                    }
                }
                Ok(FailedInvocation { event, condition }) => {
                    // A job event, or a batch of them: every job of the record goes back
                    // (a batch may take the count past `max` by its size).
                    let resend = jobs_to_resend(event).map_err(|e| QueueError::Backend {
                        op: "redrive worker failures",
                        source: Box::new(e),
                    })?;
                    let n = u64::try_from(resend.len()).unwrap_or(u64::MAX);
                    if dry_run {
                        report.jobs += n;
                        keep.push(receipt);
                        continue;
                    }
                    if report.jobs >= max {
                        keep.push(receipt);
                        continue;
                    }
                    for (job_id, body, origin) in &resend {
                        let new_id = queues.resend_job(body, origin).await?;
                        tracing::info!(
                            %job_id,
                            %new_id,
                            attempt = origin.attempt,
                            condition = condition.as_deref().unwrap_or("unknown"),
                            "job from the worker-failure queue sent back to the job queue"
                        );
                    }
                    report.jobs += n;
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

/// The jobs a failed invocation's event sends back to the job queue, in its order: (job id,
/// body with the id made explicit, origin kept). One for a job event, every job of a batch
/// (whichever of them were settled before the event failed: the done ones are skipped by their
/// idempotency records when delivered again), none for a health check.
pub fn jobs_to_resend(
    event: WorkerEvent,
) -> Result<Vec<(String, String, qo_core::Origin)>, serde_json::Error> {
    let jobs = match event {
        WorkerEvent::Job(ev) => vec![ev],
        WorkerEvent::Batch(batch) => batch.jobs,
        WorkerEvent::HealthCheck(_) => Vec::new(),
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
