//! What comes after the call: a job's [`JobResult`], and the named [`Destinations`] it is
//! delivered to.
//!
//! A stack declares its destinations by ARN (`RESULT_DESTINATIONS`): SQS queues (standard or
//! FIFO), SNS topics, EventBridge buses and Lambda functions. Each is named by its resource
//! name (the queue's, the topic's, the bus's, the function's), and a job names one in
//! `reply_to`, or gets the stack's default (`RESULT_DEFAULT`; none by default). A job can never
//! name an ARN: the list is an allow-list the worker's role is scoped to, and a job naming a
//! destination not on it is refused ([`JobError::UnknownDestination`]) before it takes a slot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{Job, JobError, check_name};
pub use crate::job::{MAX_DESTINATION_NAME_BYTES, MAX_META_BYTES};
use crate::time::Timestamp;

/// The largest result sent whole to a destination, as JSON. SNS, EventBridge and Lambda's
/// asynchronous invoke take 256 KB, and an SQS queue as much as its `MaximumMessageSize`
/// (256 KiB unless raised): past this the body goes to the stack's bucket and the result
/// carries its location ([`JobResult::body_location`]). 4 KiB under 256 KiB leaves room for
/// the envelope each service adds.
pub const MAX_INLINE_RESULT_BYTES: usize = 252 * 1024;

/// A destination's service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    /// An SQS queue; a FIFO queue's name ends in `.fifo`.
    Sqs,
    /// An SNS topic.
    Sns,
    /// An EventBridge event bus.
    EventBridge,
    /// A Lambda function, invoked asynchronously.
    Lambda,
}

impl DestinationKind {
    /// The service's name, as ARNs spell it.
    pub fn service(self) -> &'static str {
        match self {
            DestinationKind::Sqs => "sqs",
            DestinationKind::Sns => "sns",
            DestinationKind::EventBridge => "events",
            DestinationKind::Lambda => "lambda",
        }
    }
}

/// A destination results may be delivered to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The name jobs use in `reply_to`.
    pub name: String,
    /// Its service.
    pub kind: DestinationKind,
    /// Its ARN.
    pub arn: String,
}

impl Destination {
    /// Reads a destination from its ARN: `arn:<partition>:sqs:<region>:<account>:<queue>`,
    /// `arn:…:sns:…:<topic>`, `arn:…:events:…:event-bus/<bus>`, `arn:…:lambda:…:function:<name>`
    /// (an alias or version after the name is kept in the ARN).
    pub fn from_arn(arn: &str) -> Result<Destination, DestinationError> {
        let bad = || DestinationError::NotAnArn(arn.to_string());
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [prefix, _partition, service, region, account, resource] = parts[..] else {
            return Err(bad());
        };
        if prefix != "arn" || region.is_empty() || account.is_empty() || resource.is_empty() {
            return Err(bad());
        }
        let (kind, name) = match service {
            "sqs" => (DestinationKind::Sqs, resource),
            "sns" => (DestinationKind::Sns, resource),
            "events" => (
                DestinationKind::EventBridge,
                resource.strip_prefix("event-bus/").ok_or_else(bad)?,
            ),
            "lambda" => {
                let rest = resource.strip_prefix("function:").ok_or_else(bad)?;
                (
                    DestinationKind::Lambda,
                    rest.split(':').next().unwrap_or(rest),
                )
            }
            other => {
                return Err(DestinationError::Unsupported {
                    arn: arn.to_string(),
                    service: other.to_string(),
                });
            }
        };
        check_name(name).map_err(|_| bad())?;
        Ok(Destination {
            name: name.to_string(),
            kind,
            arn: arn.to_string(),
        })
    }

    /// Whether it is a FIFO queue (a message group and a deduplication id on every send).
    pub fn is_fifo(&self) -> bool {
        self.kind == DestinationKind::Sqs && self.name.ends_with(".fifo")
    }
}

/// Why `RESULT_DESTINATIONS` or `RESULT_DEFAULT` cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// Not an ARN of a queue, topic, bus or function.
    #[error(
        "`{0}` is not the ARN of an SQS queue, SNS topic, EventBridge bus (event-bus/<name>) or \
         Lambda function (function:<name>)"
    )]
    NotAnArn(String),
    /// An ARN of another service.
    #[error("`{arn}`: results go to sqs, sns, events or lambda, not {service}")]
    Unsupported {
        /// The ARN.
        arn: String,
        /// Its service.
        service: String,
    },
    /// Two destinations with one name.
    #[error("two result destinations are named `{0}`; jobs could not tell them apart")]
    Duplicate(String),
    /// A default that is not one of the destinations.
    #[error("RESULT_DEFAULT `{0}` is not the name of one of RESULT_DESTINATIONS")]
    UnknownDefault(String),
}

/// The stack's result destinations and its default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destinations {
    list: Vec<Destination>,
    default: Option<usize>,
}

impl Destinations {
    /// Reads a comma-separated list of ARNs (empty entries skipped: the template joins one
    /// list per service) and the default's name (empty: none).
    pub fn parse(arns: &str, default: &str) -> Result<Destinations, DestinationError> {
        let mut list: Vec<Destination> = Vec::new();
        for arn in arns.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let d = Destination::from_arn(arn)?;
            if list.iter().any(|x| x.name == d.name) {
                return Err(DestinationError::Duplicate(d.name));
            }
            list.push(d);
        }
        Destinations::new(list, Some(default.trim()).filter(|d| !d.is_empty()))
    }

    /// Destinations from a list, `default` naming one of them.
    pub fn new(
        list: Vec<Destination>,
        default: Option<&str>,
    ) -> Result<Destinations, DestinationError> {
        let default = match default {
            None => None,
            Some(name) => Some(
                list.iter()
                    .position(|d| d.name == name)
                    .ok_or_else(|| DestinationError::UnknownDefault(name.to_string()))?,
            ),
        };
        Ok(Destinations { list, default })
    }

    /// Whether there is none: no job gets a result.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every destination.
    pub fn list(&self) -> &[Destination] {
        &self.list
    }

    /// The destination named `name`.
    pub fn get(&self, name: &str) -> Option<&Destination> {
        self.list.iter().find(|d| d.name == name)
    }

    /// Where `job`'s result goes: the destination it names, else the default, else none. A
    /// name that is not a destination is the job's error, to be dead-lettered before its slot.
    pub fn for_job(&self, job: &Job) -> Result<Option<&Destination>, JobError> {
        match &job.reply_to {
            Some(name) => self
                .get(name)
                .map(Some)
                .ok_or_else(|| JobError::UnknownDestination(name.clone())),
            None => Ok(self.default.and_then(|i| self.list.get(i))),
        }
    }
}

/// How a job ended, as its result says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultOutcome {
    /// The API answered 2xx.
    Succeeded,
    /// The job was given up on: its message is in the dead-letter queue, with the reason.
    DeadLettered,
}

/// How [`JobResult::body`] is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyEncoding {
    /// UTF-8 text, as the API sent it.
    Text,
    /// Base64 (standard alphabet, padded) of bytes that are not UTF-8.
    Base64,
}

/// When things happened to the job, in RFC 3339.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultTimes {
    /// When the job was first enqueued (SQS's `SentTimestamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued: Option<String>,
    /// The slot the pacer gave the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// When the request went out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub called: Option<String>,
    /// When the answer came (or the job was given up on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered: Option<String>,
}

impl ResultTimes {
    /// The times from timestamps.
    pub fn of(
        enqueued: Option<Timestamp>,
        slot: Option<Timestamp>,
        called: Option<Timestamp>,
        answered: Option<Timestamp>,
    ) -> ResultTimes {
        let text = |t: Option<Timestamp>| t.map(Timestamp::to_rfc3339);
        ResultTimes {
            enqueued: text(enqueued),
            slot: text(slot),
            called: text(called),
            answered: text(answered),
        }
    }
}

/// A job's result: what the API answered, or why the job was given up on, delivered to the
/// job's destination at least once. `result_id` is stable across deliveries of one result:
/// consumers deduplicate on it (and it is a FIFO queue's deduplication id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The id to deduplicate on: the job's idempotency key and its outcome.
    pub result_id: String,
    /// The job's idempotency key (its `id`, else its first message id).
    pub job_id: String,
    /// The producer's `meta`, untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
    /// The destination's name it was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// How the job ended.
    pub outcome: ResultOutcome,
    /// The API's HTTP status (none when no answer came).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why the job was given up on (dead letters only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The response headers the stack keeps (`RESULT_HEADERS`), names in lower case.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The response body (a dead letter's: the excerpt it keeps), unless it went to the
    /// bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// How `body` (or the object at `body_location`) is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_encoding: Option<BodyEncoding>,
    /// Where the body is when it was too large to send whole (`s3://bucket/key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_location: Option<String>,
    /// Whether the body was cut at `RESULT_BODY_MAX_BYTES`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
    /// When things happened.
    pub times: ResultTimes,
    /// Tries before this one that failed (5xx, timeouts).
    pub attempts: u32,
    /// Times the API answered 429.
    pub throttled: u32,
}

impl JobResult {
    /// The result of job `job_id` ending as `outcome`, with nothing else known yet: no status,
    /// headers, body, times or counts.
    pub fn new(job_id: &str, outcome: ResultOutcome) -> JobResult {
        JobResult {
            result_id: JobResult::id_of(job_id, outcome),
            job_id: job_id.to_string(),
            meta: None,
            destination: None,
            outcome,
            status: None,
            reason: None,
            headers: BTreeMap::new(),
            body: None,
            body_encoding: None,
            body_location: None,
            body_truncated: false,
            times: ResultTimes::default(),
            attempts: 0,
            throttled: 0,
        }
    }

    /// The result id of a job's outcome.
    pub fn id_of(job_id: &str, outcome: ResultOutcome) -> String {
        match outcome {
            ResultOutcome::Succeeded => format!("{job_id}:succeeded"),
            ResultOutcome::DeadLettered => format!("{job_id}:dead_lettered"),
        }
    }

    /// The failure result of a message the orchestrator refused before its slot (a job out of
    /// bounds, a path that escapes the base URL), when the body still names a destination it
    /// can reach (`reply_to`, else the default): whoever waits hears back. `None` when the body
    /// is not a JSON object or names no destination the stack declares.
    pub fn of_refused(
        body: &str,
        message_id: &str,
        destinations: &Destinations,
        reason: &str,
        at: Timestamp,
    ) -> Option<(JobResult, Destination)> {
        let value: serde_json::Value = serde_json::from_str(body).ok()?;
        let obj = value.as_object()?;
        let to = match obj.get("reply_to") {
            Some(name) => destinations.get(name.as_str()?)?,
            None => destinations
                .default
                .and_then(|i| destinations.list.get(i))?,
        };
        let job_id = obj
            .get("id")
            .and_then(serde_json::Value::as_str)
            .filter(|id| id.len() <= crate::job::MAX_JOB_ID_BYTES)
            .unwrap_or(message_id)
            .to_string();
        let result = JobResult {
            meta: obj.get("meta").filter(|m| m.is_object()).cloned(),
            destination: Some(to.name.clone()),
            reason: Some(reason.to_string()),
            times: ResultTimes::of(None, None, None, Some(at)),
            ..JobResult::new(&job_id, ResultOutcome::DeadLettered)
        };
        Some((result, to.clone()))
    }

    /// Sets the body from the bytes the API sent: text when they are UTF-8, else base64.
    pub fn set_body(&mut self, bytes: &[u8]) {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                self.body = Some(text.to_string());
                self.body_encoding = Some(BodyEncoding::Text);
            }
            Err(_) => {
                use base64::Engine as _;
                self.body = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
                self.body_encoding = Some(BodyEncoding::Base64);
            }
        }
    }

    /// The result as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUEUE: &str = "arn:aws:sqs:us-east-1:123456789012:orders";
    const FIFO: &str = "arn:aws:sqs:us-east-1:123456789012:orders-replies.fifo";
    const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:alerts";
    const BUS: &str = "arn:aws:events:us-east-1:123456789012:event-bus/billing";
    const FUNCTION: &str = "arn:aws:lambda:us-east-1:123456789012:function:after-call:live";

    fn job(reply_to: Option<&str>) -> Job {
        Job {
            path: "/x".into(),
            reply_to: reply_to.map(str::to_string),
            ..Job::default()
        }
    }

    #[test]
    fn each_kind_is_named_by_its_resource() {
        let all = [QUEUE, FIFO, TOPIC, BUS, FUNCTION].join(",");
        let d = Destinations::parse(&format!(",{all},,"), "orders").expect("parse");
        let got: Vec<(&str, DestinationKind, bool)> = d
            .list()
            .iter()
            .map(|d| (d.name.as_str(), d.kind, d.is_fifo()))
            .collect();
        assert_eq!(
            got,
            [
                ("orders", DestinationKind::Sqs, false),
                ("orders-replies.fifo", DestinationKind::Sqs, true),
                ("alerts", DestinationKind::Sns, false),
                ("billing", DestinationKind::EventBridge, false),
                ("after-call", DestinationKind::Lambda, false),
            ]
        );
        assert_eq!(d.get("after-call").map(|f| f.arn.as_str()), Some(FUNCTION));
        // A job without reply_to gets the default; one naming a destination gets it.
        assert_eq!(
            d.for_job(&job(None)).expect("ok").map(|d| d.arn.as_str()),
            Some(QUEUE)
        );
        assert_eq!(
            d.for_job(&job(Some("billing")))
                .expect("ok")
                .map(|d| d.kind),
            Some(DestinationKind::EventBridge)
        );
    }

    #[test]
    fn a_job_naming_no_destination_is_refused_and_none_by_default() {
        let d = Destinations::parse(QUEUE, "").expect("parse");
        assert_eq!(d.for_job(&job(None)), Ok(None), "no default: no result");
        assert_eq!(
            d.for_job(&job(Some("payments"))),
            Err(JobError::UnknownDestination("payments".into()))
        );
        let none = Destinations::default();
        assert!(none.is_empty());
        assert_eq!(
            none.for_job(&job(Some("orders"))),
            Err(JobError::UnknownDestination("orders".into()))
        );
    }

    #[test]
    fn bad_lists_are_refused_with_what_is_wrong() {
        assert!(matches!(
            Destinations::parse("https://sqs.us-east-1.amazonaws.com/1/q", ""),
            Err(DestinationError::NotAnArn(_))
        ));
        assert!(matches!(
            Destinations::parse("arn:aws:s3:::bucket-name", ""),
            Err(DestinationError::NotAnArn(_))
        ));
        assert!(matches!(
            Destinations::parse("arn:aws:dynamodb:us-east-1:1:table/t", ""),
            Err(DestinationError::Unsupported { .. })
        ));
        assert_eq!(
            Destinations::parse(
                &format!("{QUEUE},arn:aws:sns:us-east-1:123456789012:orders"),
                ""
            ),
            Err(DestinationError::Duplicate("orders".into()))
        );
        assert_eq!(
            Destinations::parse(QUEUE, "audit"),
            Err(DestinationError::UnknownDefault("audit".into()))
        );
    }

    #[test]
    fn a_job_may_not_name_an_arn_or_carry_a_meta_that_is_not_a_small_object() {
        assert!(matches!(
            Job::parse(&format!(r#"{{"path":"/x","reply_to":"{QUEUE}"}}"#)),
            Err(JobError::ReplyTo(_))
        ));
        assert!(matches!(
            Job::parse(r#"{"path":"/x","meta":[1,2]}"#),
            Err(JobError::Meta(_))
        ));
        let big = "x".repeat(MAX_META_BYTES);
        assert!(matches!(
            Job::parse(&format!(r#"{{"path":"/x","meta":{{"k":"{big}"}}}}"#)),
            Err(JobError::Meta(_))
        ));
        let ok = Job::parse(r#"{"path":"/x","reply_to":"orders","meta":{"order":42}}"#)
            .expect("a job with reply_to and meta");
        assert_eq!(ok.reply_to.as_deref(), Some("orders"));
        assert_eq!(ok.meta, Some(serde_json::json!({"order": 42})));
    }

    #[test]
    fn a_refused_message_tells_its_destination_when_it_names_one() {
        let d = Destinations::parse(QUEUE, "").expect("list");
        let at = Timestamp::from_secs(1);
        let refused = |body: &str, d: &Destinations| {
            JobResult::of_refused(body, "m-1", d, "job path `/../x` has a `..` segment", at)
        };
        let (r, to) = refused(
            r#"{"id":"j","path":"/../x","reply_to":"orders","meta":{"t":1}}"#,
            &d,
        )
        .expect("a result");
        assert_eq!(to.name, "orders");
        assert_eq!(
            (r.result_id.as_str(), r.outcome, r.meta.clone()),
            (
                "j:dead_lettered",
                ResultOutcome::DeadLettered,
                Some(serde_json::json!({"t": 1}))
            )
        );
        assert!(r.reason.as_deref().is_some_and(|x| x.contains("..")));
        // No reply_to and no default, an unknown one, or not JSON: nobody to tell.
        assert!(refused(r#"{"path":"/../x"}"#, &d).is_none());
        assert!(refused(r#"{"path":"/x","reply_to":"payments"}"#, &d).is_none());
        assert!(refused("not json", &d).is_none());
        // The default, and the message id for an id too long to be a key.
        let with_default = Destinations::parse(QUEUE, "orders").expect("list");
        let long = "k".repeat(3_000);
        let (r, _) = refused(&format!(r#"{{"id":"{long}","path":"/x"}}"#), &with_default)
            .expect("to the default");
        assert_eq!(r.job_id, "m-1");
    }

    #[test]
    fn bodies_are_text_or_base64() {
        let mut r = JobResult {
            status: Some(200),
            ..JobResult::new("j", ResultOutcome::Succeeded)
        };
        r.set_body("{\"n\":1}".as_bytes());
        assert_eq!(
            (r.body.as_deref(), r.body_encoding),
            (Some("{\"n\":1}"), Some(BodyEncoding::Text))
        );
        r.set_body(&[0xff, 0x00, 0x01]);
        assert_eq!(
            (r.body.as_deref(), r.body_encoding),
            (Some("/wAB"), Some(BodyEncoding::Base64))
        );
        assert_eq!(r.result_id, "j:succeeded");
        let back: JobResult = serde_json::from_str(&r.to_json()).expect("round trip");
        assert_eq!(back, r);
    }
}
