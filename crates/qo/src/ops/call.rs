//! `qo call`: sends one job and waits for its result. The job names the reply queue as its
//! destination (`reply_to`, the queue's name), gets an id of its own, and is checked as
//! `qo send` checks a line before it is sent. Results on the reply queue that are not this
//! job's are given back at once (their visibility set to 0), never taken: several callers, or
//! another consumer, may share the queue.
//!
//! The answer is printed with how long the job waited for its slot. A dead letter's result
//! ends the command with a non-zero status and its reason; no result within `--timeout-s`
//! too (the job may have been refused before its slot: see the dead-letter queue).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use qo_core::config::{Env, ProcessEnv};
use qo_core::result::{BodyEncoding, JobResult, ResultOutcome};
use qo_core::{Job, Method, Timestamp};
use serde::Serialize;

use super::error::OpsError;
use super::output::emit;
use super::target::{Connection, TargetArgs};

/// Options of `qo call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The path to call, relative to the API base URL (or give the whole job with `--job`).
    #[arg(required_unless_present = "job", conflicts_with = "job")]
    path: Option<String>,
    /// The HTTP method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// A JSON body.
    #[arg(long, value_name = "JSON")]
    body: Option<String>,
    /// A header, `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// A JSON object echoed in the result.
    #[arg(long, value_name = "JSON")]
    meta: Option<String>,
    /// The whole job as JSON (its `reply_to` is set to the reply queue).
    #[arg(long, value_name = "JSON")]
    job: Option<String>,
    /// The queue results come back on: one of the stack's result destinations
    /// (ResultQueueArns) [env: REPLY_QUEUE_URL]. The job's `reply_to` is its name.
    #[arg(long, value_name = "URL")]
    reply_queue_url: Option<String>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    #[command(flatten)]
    target: TargetArgs,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// What `qo call` prints.
#[derive(Clone, Debug, Serialize)]
pub struct CallOutput {
    /// The result, as delivered.
    pub result: JobResult,
    /// From the job's enqueue to its slot, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot_wait_ms: Option<i64>,
    /// From sending the job to reading its result, in milliseconds.
    pub round_trip_ms: u64,
}

impl fmt::Display for CallOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.result;
        let status = r
            .status
            .map_or("no answer".to_string(), |s| format!("HTTP {s}"));
        writeln!(f, "{}: {status} ({:?})", r.job_id, r.outcome)?;
        if let Some(w) = self.slot_wait_ms {
            writeln!(f, "waited for its slot: {w} ms")?;
        }
        writeln!(f, "round trip: {} ms", self.round_trip_ms)?;
        if let Some(reason) = &r.reason {
            writeln!(f, "reason: {reason}")?;
        }
        for (k, v) in &r.headers {
            writeln!(f, "{k}: {v}")?;
        }
        if let Some(location) = &r.body_location {
            writeln!(f, "\nthe body is at {location}")?;
        } else if let Some(body) = &r.body {
            let encoded = r.body_encoding == Some(BodyEncoding::Base64);
            writeln!(f, "\n{}{body}", if encoded { "(base64) " } else { "" })?;
        }
        Ok(())
    }
}

/// Sends the job, waits for its result, prints it.
pub async fn run(args: CallArgs) -> Result<(), OpsError> {
    let env = ProcessEnv;
    let conn = Connection::open(&args.target, &env).await?;
    let reply_url = args
        .reply_queue_url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| env.get("REPLY_QUEUE_URL"))
        .ok_or(OpsError::NoTarget {
            what: "reply queue",
            flag: "--reply-queue-url URL",
            var: "REPLY_QUEUE_URL",
        })?;
    let reply_to = reply_url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| OpsError::Call(format!("`{reply_url}` is not a queue URL")))?
        .to_string();
    let job = build_job(&args, &reply_to)?;
    let job_id = job.id.clone().unwrap_or_default();
    let body = serde_json::to_string(&job)?;
    // Checked as the orchestrator checks it, so that a refusal shows here, not as a timeout.
    Job::parse(&body).map_err(|e| OpsError::Call(e.to_string()))?;
    let queues = conn.queues(false)?;
    let started = Instant::now();
    let sent = queues
        .send_jobs(&[body.as_str()], Timestamp::from_system(SystemTime::now()))
        .await
        .map_err(|source| OpsError::Queue {
            what: format!("sending the job to {}", queues.urls().main),
            source,
        })?;
    if let Some((_, e)) = sent.failed.first() {
        return Err(OpsError::Call(format!(
            "the job queue refused the job: {e:?}"
        )));
    }
    if !args.json {
        eprintln!("sent {job_id}; waiting for its result on {reply_to}");
    }
    let result = wait_for(&conn.sqs(), &reply_url, &job_id, args.timeout_s).await?;
    let out = CallOutput {
        slot_wait_ms: slot_wait(&result),
        round_trip_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        result,
    };
    emit(&out, args.json)?;
    match out.result.outcome {
        ResultOutcome::Succeeded => Ok(()),
        ResultOutcome::DeadLettered => Err(OpsError::Call(format!(
            "the job was dead-lettered: {}",
            out.result.reason.as_deref().unwrap_or("no reason")
        ))),
    }
}

/// The job to send: `--job`, or one made of the path and flags; its id a new one unless the
/// job has one, its `reply_to` the reply queue.
fn build_job(args: &CallArgs, reply_to: &str) -> Result<Job, OpsError> {
    let mut job: Job = match &args.job {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| OpsError::Call(format!("--job: {e}")))?
        }
        None => {
            let method: Method =
                serde_json::from_value(serde_json::Value::String(args.method.to_ascii_uppercase()))
                    .map_err(|_| {
                        OpsError::Call(format!("--method {}: not an HTTP method", args.method))
                    })?;
            let mut headers = BTreeMap::new();
            for h in &args.headers {
                let (k, v) = h.split_once(':').ok_or_else(|| {
                    OpsError::Call(format!("--header `{h}`: expected `Name: value`"))
                })?;
                headers.insert(k.trim().to_string(), v.trim().to_string());
            }
            let body = match &args.body {
                Some(b) => Some(
                    serde_json::from_str(b).map_err(|e| OpsError::Call(format!("--body: {e}")))?,
                ),
                None => None,
            };
            Job {
                method,
                path: args.path.clone().unwrap_or_default(),
                headers,
                body,
                ..Job::default()
            }
        }
    };
    if let Some(meta) = &args.meta {
        job.meta =
            Some(serde_json::from_str(meta).map_err(|e| OpsError::Call(format!("--meta: {e}")))?);
    }
    if job.id.is_none() {
        job.id = Some(format!("call-{}", uuid::Uuid::new_v4().simple()));
    }
    job.reply_to = Some(reply_to.to_string());
    Ok(job)
}

/// Long-polls `url` until this job's result comes; gives back every other message at once.
async fn wait_for(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    job_id: &str,
    timeout_s: u64,
) -> Result<JobResult, OpsError> {
    let give_up = Instant::now() + Duration::from_secs(timeout_s);
    let receive_err = |e: aws_sdk_sqs::error::SdkError<_>| {
        OpsError::Call(format!(
            "reading {url}: {}",
            qo_aws::SdkFailure::new(e).detail()
        ))
    };
    while Instant::now() < give_up {
        let left = give_up.saturating_duration_since(Instant::now()).as_secs();
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(i32::try_from(left.clamp(1, 20)).unwrap_or(20))
            .send()
            .await
            .map_err(receive_err)?;
        for m in out.messages.unwrap_or_default() {
            let Some(receipt) = m.receipt_handle.as_deref() else {
                continue;
            };
            let result = m
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str::<JobResult>(b).ok());
            match result {
                Some(r) if r.job_id == job_id => {
                    let _ = sqs
                        .delete_message()
                        .queue_url(url)
                        .receipt_handle(receipt)
                        .send()
                        .await;
                    return Ok(r);
                }
                _ => {
                    // Not ours: visible again at once for whoever it is for.
                    let _ = sqs
                        .change_message_visibility()
                        .queue_url(url)
                        .receipt_handle(receipt)
                        .visibility_timeout(0)
                        .send()
                        .await;
                }
            }
        }
    }
    Err(OpsError::Call(format!(
        "no result for {job_id} within {timeout_s} s (a job refused before its slot has no \
         result: see the dead-letter queue, `qo status`)"
    )))
}

/// From the job's enqueue to its slot, when the result has both.
fn slot_wait(r: &JobResult) -> Option<i64> {
    let at = |t: &Option<String>| t.as_deref().and_then(Timestamp::parse_rfc3339);
    let (enqueued, slot) = (at(&r.times.enqueued)?, at(&r.times.slot)?);
    let ms = |t: Timestamp| i64::try_from(t.as_millis()).unwrap_or(i64::MAX);
    Some(ms(slot) - ms(enqueued))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        call: CallArgs,
    }

    #[test]
    fn a_job_is_made_of_the_flags_with_an_id_and_the_reply_queue() {
        let cli = Cli::parse_from([
            "qo",
            "/v1/orders",
            "--method",
            "post",
            "--body",
            r#"{"n":1}"#,
            "--header",
            "X-Tenant: a",
            "--meta",
            r#"{"ticket":7}"#,
        ]);
        let job = build_job(&cli.call, "replies").expect("job");
        assert_eq!(job.method, Method::Post);
        assert_eq!(job.path, "/v1/orders");
        assert_eq!(job.headers.get("X-Tenant").map(String::as_str), Some("a"));
        assert_eq!(job.reply_to.as_deref(), Some("replies"));
        assert!(job.id.as_deref().is_some_and(|id| id.starts_with("call-")));
        assert_eq!(job.meta, Some(serde_json::json!({"ticket": 7})));
        let cli = Cli::parse_from(["qo", "/x", "--method", "FETCH"]);
        assert!(build_job(&cli.call, "r").is_err(), "not a method");
    }

    #[test]
    fn the_slot_wait_is_read_from_the_result_s_times() {
        let mut r: JobResult = serde_json::from_str(
            r#"{"result_id":"j:succeeded","job_id":"j","outcome":"succeeded","times":{
                "enqueued":"2026-12-07T15:01:25.048Z","slot":"2026-12-07T15:01:27.173Z"},
                "attempts":0,"throttled":0}"#,
        )
        .expect("result");
        assert_eq!(slot_wait(&r), Some(2_125));
        r.times.slot = None;
        assert_eq!(slot_wait(&r), None);
    }
}
