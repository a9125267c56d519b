//! The worker binary emits its CloudWatch metrics: run as Lambda runs it (a Runtime API to
//! poll, DynamoDB and SQS on moto, the simulator as the API), one successful job gives an EMF
//! JSON line on stdout with `_aws.CloudWatchMetrics` and `Succeeded`.
//!
//! The Runtime API here is a small imitation of Lambda's (`/2018-06-01/runtime/invocation/next`
//! with the request id, deadline and function ARN headers; `.../response`, `.../error`,
//! `/init/error`), enough for `lambda_runtime`; the binary is the one cargo built for this test
//! (`CARGO_BIN_EXE_worker`), started with the environment a deployment gives it.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use qo_aws::{LOCAL_CREDENTIALS, LocalStack, SdkSettings, local_config};
use qo_core::sqs::QueueAttributes;
use qo_sim::{SimConfig, SimServer};
use qo_testkit::{MotoServer, require};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Mutex as AsyncMutex, mpsc};

const TABLE: &str = "qo-emf-test";
const REGION: &str = "us-east-1";

/// What the function posted back for one invocation.
#[derive(Debug)]
enum Posted {
    Response(String, Value),
    Error(String, Value),
    InitError(Value),
}

#[derive(Clone)]
struct RuntimeApi {
    events: Arc<AsyncMutex<mpsc::Receiver<(String, Value)>>>,
    posted: mpsc::Sender<Posted>,
}

async fn next(State(api): State<RuntimeApi>) -> (StatusCode, HeaderMap, String) {
    let Some((id, event)) = api.events.lock().await.recv().await else {
        return (StatusCode::GONE, HeaderMap::new(), String::new());
    };
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() + 900_000)
        .unwrap_or_default();
    let mut h = HeaderMap::new();
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set("lambda-runtime-aws-request-id", id);
    set("lambda-runtime-deadline-ms", deadline.to_string());
    set(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:worker".into(),
    );
    set(
        "lambda-runtime-trace-id",
        "Root=1-00000000-000000000000000000000000".into(),
    );
    set("content-type", "application/json".into());
    (StatusCode::OK, h, event.to_string())
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::String(body.to_string()))
}

async fn response(
    State(api): State<RuntimeApi>,
    Path(id): Path<String>,
    body: String,
) -> StatusCode {
    let _ = api.posted.send(Posted::Response(id, json_of(&body))).await;
    StatusCode::ACCEPTED
}

async fn error(State(api): State<RuntimeApi>, Path(id): Path<String>, body: String) -> StatusCode {
    let _ = api.posted.send(Posted::Error(id, json_of(&body))).await;
    StatusCode::ACCEPTED
}

async fn init_error(State(api): State<RuntimeApi>, body: String) -> StatusCode {
    let _ = api.posted.send(Posted::InitError(json_of(&body))).await;
    StatusCode::ACCEPTED
}

/// Starts the Runtime API imitation; returns its `host:port`, the event sender and what the
/// function posts back.
async fn runtime_api() -> (
    String,
    mpsc::Sender<(String, Value)>,
    mpsc::Receiver<Posted>,
) {
    let (event_tx, event_rx) = mpsc::channel(8);
    let (posted_tx, posted_rx) = mpsc::channel(8);
    let api = RuntimeApi {
        events: Arc::new(AsyncMutex::new(event_rx)),
        posted: posted_tx,
    };
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the runtime API");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr.to_string(), event_tx, posted_rx)
}

/// The EMF records (lines that parse as JSON objects with `_aws`) among `lines`.
fn emf_records(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect()
}

#[tokio::test]
async fn the_worker_binary_writes_emf_metrics_after_a_successful_job() {
    let Some(moto) = require(MotoServer::start().await, "moto server") else {
        return;
    };
    let settings = SdkSettings {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
        max_attempts: 2,
    };
    let aws = local_config(&settings, &moto.endpoint).await;
    let local = LocalStack::create(aws, TABLE, "emf-jobs", QueueAttributes::TEMPLATE)
        .await
        .expect("table and queues");
    let urls = local.urls;
    let sim = SimServer::start(SimConfig::new("100/s".parse().expect("quota")))
        .await
        .expect("simulator");
    let (runtime, events, mut posted) = runtime_api().await;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", &runtime)
        .env("AWS_LAMBDA_FUNCTION_NAME", "worker")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", LOCAL_CREDENTIALS.0)
        .env("AWS_SECRET_ACCESS_KEY", LOCAL_CREDENTIALS.1)
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/qo-test/credentials",
        )
        .env("AWS_CONFIG_FILE", "/nonexistent/qo-test/config")
        .env("TABLE_NAME", TABLE)
        .env("QUEUE_URL", &urls.main)
        .env("DLQ_URL", &urls.dlq)
        .env("API_BASE_URL", sim.url())
        .env("CALL_TOLERANCE_MS", "2000")
        .env("STACK_NAME", "emf-test")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker binary");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let lines = Arc::clone(&lines);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().expect("lock").push(line);
            }
        });
    }

    // Timestamps in events are microseconds since the epoch.
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default();
    let event = json!({
        "kind": "job",
        "job": {"id": "emf-1", "path": "/items/1"},
        "origin": {"message_id": "m-emf-1", "attempt": 0, "enqueued_at": now_us - 1_500_000},
        "slot_at": now_us + 500_000,
        "epoch": 0,
        "dispatched_at": now_us,
    });
    events
        .send(("req-1".to_string(), event))
        .await
        .expect("queue the event");
    let answer = tokio::time::timeout(Duration::from_secs(60), posted.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no answer in 60 s; output: {:#?}",
                lines.lock().expect("lock")
            )
        })
        .expect("the runtime API is up");
    match &answer {
        Posted::Response(id, out) => {
            assert_eq!(id, "req-1");
            assert_eq!(out["outcome"], "succeeded", "{out}");
        }
        Posted::Error(id, e) => panic!(
            "invocation {id} failed: {e}; output: {:#?}",
            lines.lock().expect("lock")
        ),
        Posted::InitError(e) => panic!(
            "init failed: {e}; output: {:#?}",
            lines.lock().expect("lock")
        ),
    }

    // The line is written before the answer; give the pipe a moment.
    let start = Instant::now();
    let record = loop {
        let records = emf_records(&lines.lock().expect("lock"));
        if let Some(r) = records.into_iter().find(|r| r.get("Succeeded").is_some()) {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no EMF line with Succeeded; output: {:#?}",
            lines.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("the worker's EMF line: {record}");
    assert_eq!(record["Succeeded"], 1.0, "{record}");
    assert_eq!(record["Function"], "worker");
    assert_eq!(record["Stack"], "emf-test");
    let defs = &record["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(defs["Namespace"], "QuotaOrchestrator");
    let names: Vec<&str> = defs["Metrics"]
        .as_array()
        .expect("metric definitions")
        .iter()
        .filter_map(|m| m["Name"].as_str())
        .collect();
    assert!(names.contains(&"Succeeded"), "{names:?}");
    assert!(names.contains(&"JobWait"), "{names:?}");
    assert!(
        record["JobWait"][0].as_f64().is_some_and(|w| w >= 1_500.0),
        "{record}"
    );
    let _ = child.kill().await;
}
