//! `qo redrive --worker-failures` against a moto server: Lambda's invocation records on the
//! worker's on-failure queue are turned back into jobs on the job queue (job events), deleted
//! (health checks) or left and reported (anything else); a job recorded done is not sent again.
//! The built `qo` binary is run as a user runs it, with dummy credentials and no other
//! environment.

use std::collections::HashMap;
use std::process::{Command, Output};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use qo_aws::{DynamoStore, QueueUrls, SdkSettings, SqsQueue, local_config};
use qo_core::Timestamp;
use qo_core::ports::{IdempotencyStore, JobSource};
use qo_testkit::{MotoServer, OFFLINE_AWS_ENV, require};
use serde_json::{Value, json};

struct Qo {
    env: HashMap<String, String>,
}

impl Qo {
    fn new(endpoint: &str) -> Self {
        let mut env: HashMap<String, String> = OFFLINE_AWS_ENV
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.insert("AWS_ENDPOINT_URL".into(), endpoint.to_string());
        Qo { env }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_qo"))
            .args(args)
            .env_clear()
            .envs(&self.env)
            .output()
            .expect("run qo")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "qo {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.ok(&args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("qo {args:?}: {e}: {text}"))
    }
}

/// Lambda's invocation record for an event it gave up on.
fn record(condition: &str, payload: Value) -> String {
    json!({
        "version": "1.0",
        "timestamp": "2026-12-01T22:00:00.000Z",
        "requestContext": {
            "requestId": "6e2c4d1e-0000-4000-8000-000000000000",
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:worker:$LATEST",
            "condition": condition,
            "approximateInvokeCount": 3
        },
        "requestPayload": payload,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": "queue requeue failed", "errorType": "WorkerError::Queue"}
    })
    .to_string()
}

fn job_event(job: Value, message_id: &str, attempt: u32, enqueued_ms: u64) -> Value {
    json!({
        "kind": "job",
        "job": job,
        "origin": {"message_id": message_id, "attempt": attempt, "enqueued_at": enqueued_ms * 1000},
        "slot_at": 1_796_000_000_000_000u64,
        "epoch": 3,
        "dispatched_at": 1_796_000_000_000_000u64
    })
}

/// A batch event of three jobs: `done-alone` (recorded done by its own record), `done-in-batch`
/// (listed in the batch's done record) and `not-done` (claimed, never done).
fn batch_event() -> Value {
    let job = |id: &str, m: &str| {
        json!({"job": {"id": id, "path": format!("/{id}")},
               "origin": {"message_id": m, "attempt": 0},
               "slot_at": 1_796_000_000_000_000u64, "epoch": 3,
               "dispatched_at": 1_796_000_000_000_000u64})
    };
    json!({"kind": "batch", "key": "b-1", "jobs": [
        job("done-alone", "m-c1"), job("done-in-batch", "m-c2"), job("not-done", "m-c3")
    ]})
}

async fn visible(client: &aws_sdk_sqs::Client, url: &str) -> u64 {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let attrs = out.attributes.unwrap_or_default();
    let n = |k: QueueAttributeName| {
        attrs
            .get(&k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        0,
        "nothing left hidden"
    );
    n(QueueAttributeName::ApproximateNumberOfMessages)
}

#[tokio::test]
async fn worker_failures_go_back_to_the_job_queue_and_the_rest_is_reported() {
    let Some(moto) = require(MotoServer::start().await, "moto server") else {
        return;
    };
    let mut qo = Qo::new(&moto.endpoint);
    let setup = qo.ok(&["setup", "--prefix", "wf"]);
    let vars: HashMap<String, String> = setup
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    qo.env.extend(vars.clone());
    let config = local_config(&SdkSettings::default(), &moto.endpoint).await;
    let client = aws_sdk_sqs::Client::new(&config);
    let failures = client
        .create_queue()
        .queue_name("wf-worker-failures")
        .send()
        .await
        .expect("create the failure queue")
        .queue_url
        .expect("its URL");

    let bodies = [
        record(
            "RetriesExhausted",
            job_event(
                json!({"id": "job-a", "path": "/a"}),
                "m-a",
                1,
                1_700_000_000_000,
            ),
        ),
        record(
            "EventAgeExceeded",
            job_event(
                json!({"path": "/b", "method": "POST", "body": {"n": 2}}),
                "m-b",
                0,
                1_700_000_001_000,
            ),
        ),
        record(
            "RetriesExhausted",
            json!({"kind": "health_check", "epoch": 3, "sent_at": 1_796_000_000_000_000u64}),
        ),
        "not an invocation record".to_string(),
        // Lambda drops a payload too large for the destination.
        json!({"version": "1.0", "requestContext": {"condition": "RetriesExhausted"}}).to_string(),
        // A batch that failed after two of its jobs succeeded.
        record("RetriesExhausted", batch_event()),
    ];
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&config),
        vars["TABLE_NAME"].clone(),
    );
    let now = Timestamp::from_system(std::time::SystemTime::now());
    let day = Duration::from_secs(86_400);
    let claim_ttl = Duration::from_secs(900);
    store
        .claim("done-alone", now, claim_ttl)
        .await
        .expect("claim");
    store.complete("done-alone", now, day).await.expect("done");
    for id in ["done-in-batch", "not-done"] {
        store
            .claim_in_batch(id, "b-1", now, claim_ttl, day)
            .await
            .expect("claim in batch");
    }
    store
        .complete_batch("b-1", &["done-in-batch"], now, day)
        .await
        .expect("batch done");
    for b in &bodies {
        client
            .send_message()
            .queue_url(&failures)
            .message_body(b)
            .send()
            .await
            .expect("send a record");
    }

    // Without a queue URL: the flag and the variable are named.
    let out = qo.run(&["redrive", "--worker-failures"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--worker-failure-queue-url URL") && err.contains("WORKER_FAILURE_QUEUE_URL"),
        "{err}"
    );

    // A dry run counts and moves nothing.
    qo.env
        .insert("WORKER_FAILURE_QUEUE_URL".into(), failures.clone());
    let dry = qo.json(&["redrive", "--worker-failures", "--dry-run"]);
    assert_eq!(dry["records"], 6, "{dry}");
    assert_eq!(dry["jobs"], 3, "{dry}");
    assert_eq!(dry["already_done"], 2, "{dry}");
    assert_eq!(dry["health_checks"], 1, "{dry}");
    assert_eq!(dry["left"].as_array().map(Vec::len), Some(2), "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(visible(&client, &failures).await, 6);
    assert_eq!(visible(&client, &vars["QUEUE_URL"]).await, 0);

    // A record older than the done records' time cannot be checked: left, unless unchecked.
    let old = qo.json(&[
        "redrive",
        "--worker-failures",
        "--dry-run",
        "--idempotency-ttl-s",
        "0",
    ]);
    let reasons: Vec<&str> = old["left"]
        .as_array()
        .expect("left")
        .iter()
        .filter_map(|l| l["reason"]["kind"].as_str())
        .collect();
    assert_eq!(
        reasons.iter().filter(|k| **k == "too_old_to_check").count(),
        3,
        "{old}"
    );
    assert_eq!(
        (old["jobs"].as_u64(), old["health_checks"].as_u64()),
        (Some(0), Some(1))
    );
    let unchecked = qo.json(&[
        "redrive",
        "--worker-failures",
        "--dry-run",
        "--idempotency-ttl-s",
        "0",
        "--unchecked",
    ]);
    assert_eq!(unchecked["jobs"], 3, "{unchecked}");

    // The real run, with the flag this time.
    qo.env.remove("WORKER_FAILURE_QUEUE_URL");
    let text = qo.ok(&[
        "redrive",
        "--worker-failures",
        "--worker-failure-queue-url",
        &failures,
    ]);
    assert!(
        text.starts_with("worker-failure queue: 6 record(s)\n"),
        "{text}"
    );
    assert!(
        text.contains("sent 3 job(s) back to the job queue, deleted 1 health-check record(s)"),
        "{text}"
    );
    assert!(text.contains("skipped 2 job(s) recorded done"), "{text}");
    assert!(text.contains("left 2 record(s) on the queue:"), "{text}");
    assert!(
        text.contains("the body is not an invocation record"),
        "{text}"
    );
    assert!(text.contains("the record has no requestPayload"), "{text}");
    assert_eq!(visible(&client, &failures).await, 2, "the unparseable stay");

    // The jobs are on the job queue with their ids, attempts and first enqueue times.
    let jobs = SqsQueue::new(
        client.clone(),
        QueueUrls {
            main: vars["QUEUE_URL"].clone(),
            retry: None,
            dlq: vars["DLQ_URL"].clone(),
        },
    );
    let mut got = jobs
        .receive(10, Duration::from_secs(1))
        .await
        .expect("receive");
    assert_eq!(got.len(), 3, "{got:?}");
    let id = |body: &str| serde_json::from_str::<Value>(body).expect("json")["id"].to_string();
    got.sort_by_key(|m| id(&m.body));
    // Of the batch, only the job not recorded done.
    let c: Value = serde_json::from_str(&got[2].body).expect("json");
    assert_eq!(c["id"], "not-done", "{got:?}");
    let a: Value = serde_json::from_str(&got[0].body).expect("json");
    let b: Value = serde_json::from_str(&got[1].body).expect("json");
    assert_eq!(a["id"], "job-a");
    assert_eq!(a["path"], "/a");
    assert_eq!(got[0].origin.attempt, 1);
    assert_eq!(
        got[0].origin.enqueued_at,
        Some(Timestamp::from_millis(1_700_000_000_000))
    );
    // A job without an id keeps its idempotency key, the message id it had.
    assert_eq!(b["id"], "m-b");
    assert_eq!(b["body"]["n"], 2);
    assert_eq!(got[1].origin.attempt, 0);
    assert_eq!(
        got[1].origin.enqueued_at,
        Some(Timestamp::from_millis(1_700_000_001_000))
    );

    // Again: only the two that cannot be read, still there.
    let again = qo.json(&[
        "redrive",
        "--worker-failures",
        "--worker-failure-queue-url",
        &failures,
    ]);
    assert_eq!(
        (again["records"].as_u64(), again["jobs"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(visible(&client, &failures).await, 2);
}
