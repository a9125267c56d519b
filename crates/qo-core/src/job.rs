//! The contracts: a [`Job`] (an SQS message body saying which HTTP request to make) and the
//! [`WorkerEvent`]s the orchestrator sends to the worker.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Largest job body accepted: under Lambda's oldest async payload limit (256 KB) with room for
/// the event envelope.
pub const MAX_JOB_BYTES: usize = 200 * 1024;

/// An HTTP method a job may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// GET
    #[default]
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// HEAD
    Head,
}

impl Method {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
        }
    }
}

/// One call to make: a request relative to the configured API base URL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Idempotency key; the SQS message id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// HTTP method (GET by default).
    #[serde(default)]
    pub method: Method,
    /// Path relative to the API base URL, starting with `/`.
    pub path: String,
    /// Query parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

/// Why a job was refused; the reason goes with it to the dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The body was not a job.
    #[error("malformed job: {0}")]
    Malformed(String),
    /// The body was too large.
    #[error("job is {0} bytes; the limit is {MAX_JOB_BYTES}")]
    TooLarge(usize),
    /// The path was not a relative path.
    #[error("job path `{0}` must be a path relative to the API base URL, starting with `/`")]
    Path(String),
    /// A header may not be set by a job.
    #[error("job header `{0}` is not allowed")]
    Header(String),
}

/// Headers a job may not set: the worker owns them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "content-length",
    "transfer-encoding",
    "connection",
    "proxy-authorization",
];

impl Job {
    /// Parses and validates a message body.
    pub fn parse(body: &str) -> Result<Job, JobError> {
        if body.len() > MAX_JOB_BYTES {
            return Err(JobError::TooLarge(body.len()));
        }
        let job: Job =
            serde_json::from_str(body).map_err(|e| JobError::Malformed(e.to_string()))?;
        job.validate()?;
        Ok(job)
    }

    /// Checks the path and headers.
    pub fn validate(&self) -> Result<(), JobError> {
        let p = &self.path;
        let bad = !p.starts_with('/')
            || p.starts_with("//")
            || p.contains("://")
            || p.contains('\\')
            || p.split(['/', '?', '#']).any(|seg| seg == "..")
            || p.chars().any(|c| c.is_control() || c == ' ')
            || p.contains('#');
        if bad {
            return Err(JobError::Path(p.clone()));
        }
        for name in self.headers.keys() {
            let lower = name.to_ascii_lowercase();
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
            if !token || RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(JobError::Header(name.clone()));
            }
        }
        for value in self.headers.values() {
            if value.chars().any(|c| c == '\r' || c == '\n') {
                return Err(JobError::Header(value.clone()));
            }
        }
        Ok(())
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where a message came from and how to send it again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The SQS message id.
    pub message_id: String,
    /// How many times the job has been tried before (0 on first delivery).
    #[serde(default)]
    pub attempt: u32,
    /// How many times the API answered this job 429. A 429 is a pacing signal, not the job's
    /// failure: it raises this count, never `attempt`, and has a bound of its own.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub throttled: u32,
    /// When the job was first enqueued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_at: Option<Timestamp>,
    /// FIFO message group, kept on re-queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// FIFO deduplication id, kept (suffixed by the attempt) on re-queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_id: Option<String>,
    /// The worker function of the pool that last tried the job and had it answered 429 or
    /// failed (`None`: not tried, or tried successfully): the next dispatch goes through
    /// another function of the pool when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
}

/// The default of the worker's `MAX_SLOT_WAIT_MS`: the longest it waits for a slot, counted
/// from the start of its invocation. The orchestrator hands a job over `DISPATCH_LEAD_MS`
/// before its slot, and a batch's last slot up to `BATCH_WINDOW_MS` after its first, so both
/// together must stay under it (each function checks its side at start).
pub const DEFAULT_MAX_SLOT_WAIT: std::time::Duration = std::time::Duration::from_millis(5_000);

/// The default of `BATCH_WINDOW_MS`, which both functions read: a batch takes the jobs whose
/// slots fall within this long of its first. With the orchestrator's `BATCH_MAX_JOBS` of 20 it
/// lets a batch fill at 10 calls a second (20 slots span 1.9 s); with the default
/// `DISPATCH_LEAD_MS` of 250 it stays under [`DEFAULT_MAX_SLOT_WAIT`].
pub const DEFAULT_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(2_000);

/// A job dispatched to the worker, with the slot it must call at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub job: Job,
    /// Its message and attempt.
    pub origin: Origin,
    /// Call the API at this time, not before; the pacer counted it there.
    pub slot_at: Timestamp,
    /// The circuit's epoch at dispatch: a failure report carries it.
    pub epoch: u64,
    /// When the orchestrator sent the event.
    pub dispatched_at: Timestamp,
}

impl JobEvent {
    /// The idempotency key: the job's id, or its message id.
    pub fn job_id(&self) -> &str {
        self.job.id.as_deref().unwrap_or(&self.origin.message_id)
    }
}

/// The body to send again for a message received with `body` under `message_id`: the job with
/// its idempotency key made explicit (its `id`, else `message_id`), so that a copy keeps the
/// key of the original, which may still be delivered (SQS delivers at least once, and a
/// refused delete leaves it on the queue). SQS gives every send a new message id. A body that
/// is not a job is returned unchanged: it has no key, and is dead-lettered when received.
pub fn pin_key<'a>(body: &'a str, message_id: &str) -> std::borrow::Cow<'a, str> {
    let Ok(mut job) = serde_json::from_str::<Job>(body) else {
        return body.into();
    };
    if job.id.is_some() {
        return body.into();
    }
    job.id = Some(message_id.to_string());
    serde_json::to_string(&job).map_or(body.into(), Into::into)
}

/// A health check of the API, sent while the circuit is open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckEvent {
    /// The circuit's epoch: success closes the circuit only at this epoch.
    pub epoch: u64,
    /// When the orchestrator sent it.
    pub sent_at: Timestamp,
}

/// Several jobs in one worker invocation (`BATCH_MAX_JOBS`), each with its own slot: the
/// worker calls each at its slot, concurrently, and each job's fate is its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchEvent {
    /// The jobs, in slot order.
    pub jobs: Vec<JobEvent>,
}

impl BatchEvent {
    /// The batch's name in the idempotency store: its first job's id and slot
    /// (`<job id>@<slot ms>`), the same for every delivery of this event (Lambda may deliver
    /// it twice) and different for any other batch (a job is given a slot once per
    /// dispatch). `None` for an empty batch.
    pub fn key(&self) -> Option<String> {
        self.jobs
            .first()
            .map(|ev| format!("{}@{}", ev.job_id(), ev.slot_at.as_millis()))
    }
}

/// What the orchestrator sends to the worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // built once per dispatch and moved, never stored in bulk
pub enum WorkerEvent {
    /// Call the API for a job.
    Job(JobEvent),
    /// Call the API for several jobs, each at its own slot.
    Batch(BatchEvent),
    /// Check the API's health.
    HealthCheck(HealthCheckEvent),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_minimal_job() {
        let j = Job::parse(r#"{"path":"/v1/items/42"}"#).expect("valid");
        assert_eq!(j.method, Method::Get);
        assert_eq!(j.path, "/v1/items/42");
    }

    #[test]
    fn refuses_absolute_and_escaping_paths() {
        for p in [
            "https://evil.example/x",
            "//evil.example/x",
            "v1/items",
            "/a/../../etc",
            "/a b",
            "/x#frag",
        ] {
            let body = serde_json::json!({ "path": p }).to_string();
            assert!(matches!(Job::parse(&body), Err(JobError::Path(_))), "{p}");
        }
    }

    #[test]
    fn refuses_reserved_headers_and_unknown_fields() {
        let e = Job::parse(r#"{"path":"/x","headers":{"Authorization":"Bearer steal"}}"#);
        assert!(matches!(e, Err(JobError::Header(h)) if h == "Authorization"));
        let e = Job::parse(r#"{"path":"/x","url":"https://elsewhere"}"#);
        assert!(matches!(e, Err(JobError::Malformed(m)) if m.contains("url")));
        assert!(matches!(
            Job::parse("not json"),
            Err(JobError::Malformed(_))
        ));
    }

    #[test]
    fn a_copy_keeps_the_key_of_the_original() {
        let pinned = pin_key(r#"{"path":"/x"}"#, "m-1");
        assert_eq!(Job::parse(&pinned).expect("job").id.as_deref(), Some("m-1"));
        let own = r#"{"id":"mine","path":"/x"}"#;
        assert_eq!(pin_key(own, "m-1"), own, "an explicit id stays");
        assert_eq!(pin_key("not json", "m-1"), "not json");
    }

    #[test]
    fn worker_event_is_tagged() {
        let ev = WorkerEvent::HealthCheck(HealthCheckEvent {
            epoch: 3,
            sent_at: Timestamp::from_millis(1),
        });
        let j = serde_json::to_value(&ev).expect("json");
        assert_eq!(j["kind"], "health_check");
        assert_eq!(j["epoch"], 3);
    }
}
