//! `qo bench --sdk-calls`: the CPU the orchestrator's AWS SDK calls cost on its dispatch path,
//! measured on this machine, and the dispatch rate that leaves at each Lambda memory size.
//!
//! A deployed orchestrator receives jobs ten at a time (ReceiveMessage), deletes them ten at
//! a time once Lambda took their event (DeleteMessageBatch), and invokes the worker once per
//! batch of up to `BATCH_MAX_JOBS` jobs (Invoke, asynchronous). Each call signs a request,
//! writes and reads JSON and goes through the SDK's HTTP stack. This command sends those
//! calls through the real adapters (`qo_aws::SqsQueue`, `qo_aws::LambdaInvoker`) to a stub of
//! SQS and Lambda on a loopback port, which answers each with a canned, well-formed reply, and
//! reads the CPU time of the one thread that makes them (the stub runs on a thread of its
//! own, not counted). Nothing about the answers varies, so it measures the client's cost
//! alone: what Lambda's CPU share has to pay for on top of the loop's own work.
//!
//! DynamoDB is left out: the orchestrator writes it about once a second (the quota's save,
//! the lease), whatever the rate.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde::Serialize;

/// Calls of each kind per round, and rounds; each kind's figure is the median of the rounds.
const CALLS_PER_ROUND: u32 = 400;
const ROUNDS: usize = 5;
/// Calls before the first round (connections opened, caches warm).
const WARMUP: u32 = 50;

/// One kind of call.
#[derive(Clone, Debug, Serialize)]
pub struct CallCost {
    /// The SDK operation and what it carries.
    pub call: String,
    /// Jobs one call serves on the dispatch path (10 received, 10 deleted, a batch invoked).
    pub jobs_per_call: u32,
    /// CPU time of one call, microseconds: the median of the rounds.
    pub cpu_us: f64,
    /// The lowest and highest round.
    pub cpu_us_range: (f64, f64),
}

/// What `qo bench --sdk-calls` reports.
#[derive(Clone, Debug, Serialize)]
pub struct SdkCallsReport {
    /// Each kind of call.
    pub calls: Vec<CallCost>,
    /// Jobs per worker invocation assumed (`BATCH_MAX_JOBS`).
    pub batch_max_jobs: u32,
    /// The SDK's CPU per dispatched job: each call's cost over the jobs it serves.
    pub cpu_us_per_job: f64,
    /// For each memory size: the CPU share Lambda gives and the jobs a second that share
    /// pays the SDK calls for, the loop's own work not counted.
    pub ceilings: Vec<(u32, f64, f64)>,
}

/// Runs the calls against a stub and reports their cost.
pub fn run(batch_max_jobs: u32) -> Result<SdkCallsReport, String> {
    let stub = Stub::start().map_err(|e| format!("starting the SQS and Lambda stub: {e}"))?;
    let endpoint = stub.endpoint.clone();
    let batch = batch_max_jobs.max(1);
    let measured = std::thread::spawn(move || measure(&endpoint, batch))
        .join()
        .map_err(|_| "the measuring thread panicked".to_string())??;
    let calls = measured;
    let cpu_us_per_job: f64 = calls
        .iter()
        .map(|c| c.cpu_us / f64::from(c.jobs_per_call))
        .sum();
    let ceilings = [128u32, 256, 512, 1024, 1769]
        .into_iter()
        .map(|mb| {
            let share = crate::cpu_share::share_for_memory_mb(mb);
            (mb, share, share * 1e6 / cpu_us_per_job)
        })
        .collect();
    Ok(SdkCallsReport {
        calls,
        batch_max_jobs: batch,
        cpu_us_per_job,
        ceilings,
    })
}

/// The table `qo bench --sdk-calls` prints.
pub fn table(r: &SdkCallsReport) -> String {
    let mut s = format!(
        "{:<44} {:>12} {:>16} {:>12}\n",
        "call", "CPU us", "(rounds)", "jobs served"
    );
    for c in &r.calls {
        s.push_str(&format!(
            "{:<44} {:>12.1} {:>16} {:>12}\n",
            c.call,
            c.cpu_us,
            format!("{:.1}..{:.1}", c.cpu_us_range.0, c.cpu_us_range.1),
            c.jobs_per_call
        ));
    }
    s.push_str(&format!(
        "SDK CPU per dispatched job: {:.1} us (batches of {})\n",
        r.cpu_us_per_job, r.batch_max_jobs
    ));
    s.push_str(
        "jobs a second the CPU share pays the SDK calls for (the loop's own work not counted):\n",
    );
    for (mb, share, jobs) in &r.ceilings {
        s.push_str(&format!(
            "  {mb:>5} MB  share {:>5.1}%  {jobs:>8.0}/s\n",
            share * 100.0
        ));
    }
    s
}

/// The CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: `clock_gettime` writes a `timespec` into the zeroed struct it is given;
    // CLOCK_THREAD_CPUTIME_ID is a valid clock on Linux.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        if libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) != 0 {
            return Duration::ZERO;
        }
        ts
    };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Each kind's rounds, on a current-thread runtime so that every poll of the SDK's futures
/// happens on this thread and its CPU clock sees all of it.
fn measure(endpoint: &str, batch: u32) -> Result<Vec<CallCost>, String> {
    use qo_core::ports::{Invoker, JobSource, QueueRole};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let config = qo_aws::local_config(&qo_aws::SdkSettings::default(), endpoint).await;
        let queue = qo_aws::SqsQueue::new(
            aws_sdk_sqs::Client::new(&config),
            qo_aws::QueueUrls {
                main: format!("{endpoint}/000000000000/qo-jobs"),
                retry: None,
                dlq: format!("{endpoint}/000000000000/qo-dlq"),
            },
        );
        let invoker =
            qo_aws::LambdaInvoker::new(&config, "qo-worker", &qo_aws::InvokeSettings::default())
                .map_err(|e| e.to_string())?;
        let event = batch_event(batch);
        let receive = || async {
            let got = queue
                .receive_from(QueueRole::Main, 10, Duration::ZERO)
                .await
                .map_err(|e| e.to_string())?;
            if got.len() != 10 {
                return Err(format!("the stub answered {} messages, not 10", got.len()));
            }
            Ok(got)
        };
        let held = receive().await?;
        let mut calls = Vec::new();
        calls.push(
            rounds("ReceiveMessage (10 messages)", 10, || async {
                receive().await.map(|_| ())
            })
            .await?,
        );
        calls.push(
            rounds("DeleteMessageBatch (10 entries)", 10, || async {
                queue.delete(&held).await.map_err(|e| e.to_string())
            })
            .await?,
        );
        let what = format!("Invoke, asynchronous ({batch}-job batch event)");
        calls.push(
            rounds(&what, batch, || async {
                invoker.invoke(&event).await.map_err(|e| e.to_string())
            })
            .await?,
        );
        Ok(calls)
    })
}

/// [`WARMUP`] calls, then [`ROUNDS`] rounds of [`CALLS_PER_ROUND`], each timed on this
/// thread's CPU clock.
async fn rounds<F, Fut>(call: &str, jobs_per_call: u32, mut f: F) -> Result<CallCost, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    for _ in 0..WARMUP {
        f().await?;
    }
    let mut per_call = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let before = thread_cpu();
        for _ in 0..CALLS_PER_ROUND {
            f().await?;
        }
        let spent = thread_cpu().saturating_sub(before);
        per_call.push(spent.as_secs_f64() * 1e6 / f64::from(CALLS_PER_ROUND));
    }
    per_call.sort_by(f64::total_cmp);
    Ok(CallCost {
        call: call.to_string(),
        jobs_per_call,
        cpu_us: per_call[ROUNDS / 2],
        cpu_us_range: (per_call[0], per_call[ROUNDS - 1]),
    })
}

/// A batch event of `n` jobs, as the orchestrator sends one.
fn batch_event(n: u32) -> qo_core::WorkerEvent {
    use qo_core::{Job, Timestamp};
    use qo_core::{
        event::{BatchEvent, JobEvent},
        job::Origin,
    };
    let at = Timestamp::from_system(std::time::SystemTime::now());
    let jobs = (0..n)
        .map(|i| JobEvent {
            job: Job {
                path: format!("/v1/customers/{i}"),
                ..Job::default()
            },
            origin: Origin {
                message_id: format!("00000000-0000-4000-8000-{i:012}"),
                ..Origin::default()
            },
            slot_at: at,
            epoch: 0,
            dispatched_at: at,
        })
        .collect();
    qo_core::WorkerEvent::Batch(BatchEvent { jobs })
}

/// A stub of SQS (JSON protocol) and Lambda's Invoke on a loopback port, on a thread of its
/// own: a canned answer for each call the measurement makes.
struct Stub {
    endpoint: String,
}

impl Stub {
    fn start() -> std::io::Result<Stub> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = serve(conn);
                });
            }
        });
        Ok(Stub { endpoint })
    }
}

/// Answers the requests of one keep-alive connection until it closes.
fn serve(conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    let messages = canned_messages();
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let (mut length, mut target) = (0usize, String::new());
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "x-amz-target" => target = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let (status, content_type, answer) = if request_line.contains("/invocations") {
            (202, "application/json", String::new())
        } else if target.ends_with(".ReceiveMessage") {
            (200, "application/x-amz-json-1.0", messages.clone())
        } else if target.ends_with("Batch") {
            (200, "application/x-amz-json-1.0", all_successful(&body))
        } else {
            (
                400,
                "application/x-amz-json-1.0",
                r#"{"__type":"com.amazonaws.sqs#InvalidAction","message":"not stubbed"}"#
                    .to_string(),
            )
        };
        let reason = if status == 400 { "Bad Request" } else { "OK" };
        write!(
            out,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             x-amzn-RequestId: 00000000-0000-4000-8000-000000000000\r\n\r\n{answer}",
            answer.len()
        )?;
        out.flush()?;
    }
}

/// A ReceiveMessage answer with ten job messages, their attributes as SQS sends them.
fn canned_messages() -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let messages: Vec<serde_json::Value> = (0..10)
        .map(|i| {
            serde_json::json!({
                "MessageId": format!("00000000-0000-4000-8000-{i:012}"),
                "ReceiptHandle": format!("AQEB{}", "x".repeat(160)),
                "MD5OfBody": "0123456789abcdef0123456789abcdef",
                "Body": format!(r#"{{"path":"/v1/customers/{i}"}}"#),
                "Attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": now_ms.to_string(),
                },
                "MessageAttributes": {
                    "qo-enqueued-at-ms": {"DataType": "Number", "StringValue": now_ms.to_string()},
                },
            })
        })
        .collect();
    serde_json::json!({ "Messages": messages }).to_string()
}

/// A batch call's answer: every entry of the request successful.
fn all_successful(request: &[u8]) -> String {
    let ids: Vec<serde_json::Value> = serde_json::from_slice::<serde_json::Value>(request)
        .ok()
        .and_then(|v| v.get("Entries").and_then(|e| e.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .map(|e| serde_json::json!({ "Id": e.get("Id").cloned().unwrap_or_default() }))
        .collect();
    serde_json::json!({ "Successful": ids, "Failed": [] }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calls go through the real adapters to the stub and come back well-formed: ten
    /// messages received, every entry deleted, the invoke accepted. What they cost is the
    /// command's to report, not this test's.
    #[test]
    fn every_call_reaches_the_stub_and_is_measured() {
        let r = run(20).expect("measured");
        let names: Vec<&str> = r.calls.iter().map(|c| c.call.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[2].contains("20-job batch"), "{names:?}");
        assert!(r.calls.iter().all(|c| c.cpu_us > 0.0), "{r:?}");
        let per_job: f64 = r
            .calls
            .iter()
            .map(|c| c.cpu_us / f64::from(c.jobs_per_call))
            .sum();
        assert!((per_job - r.cpu_us_per_job).abs() < 1e-9);
        assert_eq!(r.ceilings.len(), 5);
        assert!(table(&r).contains("SDK CPU per dispatched job"));
    }

    #[test]
    fn a_batch_answer_names_every_entry_of_the_request() {
        let answer = all_successful(br#"{"Entries":[{"Id":"0"},{"Id":"7"}]}"#);
        let v: serde_json::Value = serde_json::from_str(&answer).expect("json");
        assert_eq!(v["Successful"][1]["Id"], "7");
        assert_eq!(v["Failed"].as_array().map(Vec::len), Some(0));
    }
}
