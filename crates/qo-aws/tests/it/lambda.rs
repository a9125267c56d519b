//! The Lambda invoker against a tiny local imitation of the Invoke API
//! (`POST /2015-03-31/functions/NAME/invocations`): throttling, server errors, refusals.

use crate::common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use qo_aws::{Backoff, InvokeSettings, LambdaInvoker};
use qo_core::event::{HealthCheckEvent, WorkerEvent};
use qo_core::ports::{InvokeError, Invoker};
use qo_core::time::Timestamp;

/// What the imitation answers.
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// 202, as AWS answers an accepted Event invoke.
    Accepted,
    /// 200, as `cargo lambda watch` answers.
    Ok,
    /// 429 TooManyRequestsException, with `Retry-After` in seconds when given.
    Throttled(Option<&'static str>),
    /// 429 with `retryAfterSeconds` only in the body.
    ThrottledBodyOnly(&'static str),
    /// 500 ServiceException.
    ServerError,
    /// 404 ResourceNotFoundException.
    NotFound,
}

#[derive(Debug)]
struct Call {
    function: String,
    invocation_type: Option<String>,
    body: Vec<u8>,
    at: Instant,
}

#[derive(Clone, Default)]
struct Mock {
    script: Arc<Mutex<VecDeque<Reply>>>,
    calls: Arc<Mutex<Vec<Call>>>,
}

fn error(
    status: u16,
    kind: &str,
    body: serde_json::Value,
    extra: &[(&'static str, &str)],
) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap(),
        [
            ("content-type", "application/json"),
            ("x-amzn-errortype", kind),
        ],
        body.to_string(),
    )
        .into_response();
    for (k, v) in extra {
        r.headers_mut().insert(*k, v.parse().unwrap());
    }
    r
}

async fn invocations(
    State(mock): State<Mock>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    mock.calls.lock().unwrap().push(Call {
        function: name.clone(),
        invocation_type: headers
            .get("x-amz-invocation-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: body.to_vec(),
        at: Instant::now(),
    });
    let reply = {
        let mut script = mock.script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            *script.front().unwrap()
        }
    };
    match reply {
        Reply::Accepted => StatusCode::ACCEPTED.into_response(),
        Reply::Ok => StatusCode::OK.into_response(),
        Reply::Throttled(retry_after) => {
            let extra: Vec<(&'static str, &str)> = retry_after
                .map(|s| ("retry-after", s))
                .into_iter()
                .collect();
            error(
                429,
                "TooManyRequestsException",
                serde_json::json!({
                    "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
                    "Type": "User",
                    "message": "Rate Exceeded."
                }),
                &extra,
            )
        }
        Reply::ThrottledBodyOnly(secs) => error(
            429,
            "TooManyRequestsException",
            serde_json::json!({
                "Type": "User",
                "message": "Rate Exceeded.",
                "retryAfterSeconds": secs
            }),
            &[],
        ),
        Reply::ServerError => error(
            500,
            "ServiceException",
            serde_json::json!({"Type": "Service", "Message": "internal"}),
            &[],
        ),
        Reply::NotFound => error(
            404,
            "ResourceNotFoundException",
            serde_json::json!({
                "Type": "User",
                "Message": format!("Function not found: arn:aws:lambda:us-east-1:123456789012:function:{name}")
            }),
            &[],
        ),
    }
}

/// Starts the imitation with a script (the last reply repeats); returns the mock and its URL.
async fn serve(script: &[Reply]) -> (Mock, String) {
    let mock = Mock {
        script: Arc::new(Mutex::new(script.iter().copied().collect())),
        calls: Arc::default(),
    };
    let app = Router::new()
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(invocations),
        )
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (mock, url)
}

async fn invoker(url: &str, max_retries: u32) -> LambdaInvoker {
    let config = qo_aws::local_config(&common::settings(), url).await;
    let settings = InvokeSettings {
        rate_per_s: Some(1000.0),
        burst: 10,
        max_retries,
    };
    LambdaInvoker::new(&config, "worker", &settings).expect("invoker")
}

/// Sends [`event`] once through a fresh invoker at `url` with `max_retries`.
async fn invoke_event(url: &str, max_retries: u32) -> Result<(), InvokeError> {
    invoker(url, max_retries).await.invoke(&event()).await
}

fn event() -> WorkerEvent {
    WorkerEvent::HealthCheck(HealthCheckEvent {
        epoch: 7,
        sent_at: Timestamp::from_millis(42),
        slot_at: None,
    })
}

fn calls(mock: &Mock) -> usize {
    mock.calls.lock().unwrap().len()
}

/// A pool invoker sends each event to the function named, through one client; a name outside
/// the pool is refused without a call.
#[tokio::test]
async fn a_pool_invokes_the_function_named() {
    let (mock, url) = serve(&[Reply::Accepted]).await;
    let pool = ["worker".to_string(), "worker-b".to_string()];
    let inv = invoker(&url, 0).await.with_pool(&pool);
    inv.invoke_on("worker-b", &event()).await.expect("b");
    inv.invoke_on("worker", &event()).await.expect("a");
    inv.invoke(&event()).await.expect("the first");
    let e = inv
        .invoke_on("worker-c", &event())
        .await
        .expect_err("not in the pool");
    assert!(e.to_string().contains("`worker-c`"), "{e}");
    let called: Vec<String> = mock
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.function.clone())
        .collect();
    assert_eq!(called, ["worker-b", "worker", "worker"]);
    // Without a pool there is nothing to choose: the one function is invoked.
    invoker(&url, 0)
        .await
        .invoke_on("anything", &event())
        .await
        .expect("one function");
    assert_eq!(
        mock.calls
            .lock()
            .unwrap()
            .last()
            .map(|c| c.function.clone())
            .as_deref(),
        Some("worker")
    );
}

#[tokio::test]
async fn accepted_event_is_sent_once_as_json() {
    let (mock, url) = serve(&[Reply::Accepted]).await;
    invoke_event(&url, 3).await.expect("202 is success");
    let calls = mock.calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].function, "worker");
    assert_eq!(calls[0].invocation_type.as_deref(), Some("Event"));
    let sent: WorkerEvent = serde_json::from_slice(&calls[0].body).unwrap();
    assert_eq!(sent, event());
}

#[tokio::test]
async fn local_emulator_200_is_success() {
    let (mock, url) = serve(&[Reply::Ok]).await;
    invoke_event(&url, 3).await.expect("200 is success");
    assert_eq!(calls(&mock), 1);
}

#[tokio::test]
async fn throttled_then_accepted_succeeds_after_retry_after() {
    let (mock, url) = serve(&[Reply::Throttled(Some("1")), Reply::Accepted]).await;
    invoke_event(&url, 3).await.expect("succeeds on the retry");
    let calls = mock.calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    let gap = calls[1].at - calls[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 honoured, waited {gap:?}"
    );
}

#[tokio::test]
async fn retry_after_in_the_body_is_honoured_too() {
    let (mock, url) = serve(&[Reply::ThrottledBodyOnly("1"), Reply::Accepted]).await;
    invoke_event(&url, 3).await.expect("succeeds on the retry");
    let calls = mock.calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert!(calls[1].at - calls[0].at >= Duration::from_millis(950));
}

#[tokio::test]
async fn always_throttled_gives_up_after_the_retries() {
    let (mock, url) = serve(&[Reply::Throttled(None)]).await;
    let start = Instant::now();
    let e = invoke_event(&url, 3).await.unwrap_err();
    match e {
        InvokeError::Throttled {
            reason,
            retry_after,
        } => {
            assert_eq!(
                reason,
                "ReservedFunctionConcurrentInvocationLimitExceeded: Rate Exceeded."
            );
            assert_eq!(retry_after, None);
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    assert_eq!(calls(&mock), 4, "the first attempt and 3 retries");
    // Full jitter below 50 + 100 + 200 ms.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_long_retry_after_is_not_waited_out() {
    let (mock, url) = serve(&[Reply::Throttled(Some("60"))]).await;
    let start = Instant::now();
    let e = invoke_event(&url, 3).await.unwrap_err();
    assert!(
        matches!(e, InvokeError::Throttled { retry_after: Some(d), .. } if d == Duration::from_secs(60)),
        "{e:?}"
    );
    assert_eq!(calls(&mock), 1);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let (mock, url) = serve(&[Reply::ServerError, Reply::ServerError, Reply::Accepted]).await;
    let inv = invoker(&url, 4).await.with_backoff(Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(40),
        retry_after_limit: Duration::from_secs(10),
    });
    inv.invoke(&event())
        .await
        .expect("succeeds on the third attempt");
    assert_eq!(calls(&mock), 3);

    let (mock, url) = serve(&[Reply::ServerError]).await;
    let e = invoke_event(&url, 2).await.unwrap_err();
    assert!(
        matches!(&e, InvokeError::Transport { detail: m, .. } if m.contains("500") && m.contains("ServiceException")),
        "{e:?}"
    );
    assert_eq!(calls(&mock), 3);
}

#[tokio::test]
async fn missing_function_is_rejected_at_once() {
    let (mock, url) = serve(&[Reply::NotFound]).await;
    let e = invoke_event(&url, 4).await.unwrap_err();
    assert!(
        matches!(&e, InvokeError::Rejected { detail: m, .. } if m.contains("ResourceNotFoundException") && m.contains("Function not found")),
        "{e:?}"
    );
    assert_eq!(calls(&mock), 1, "no retry");
}

#[tokio::test]
async fn unreachable_endpoint_is_a_transport_error() {
    let port = qo_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let e = invoke_event(&url, 1).await.unwrap_err();
    assert!(matches!(e, InvokeError::Transport { .. }), "{e:?}");
}
