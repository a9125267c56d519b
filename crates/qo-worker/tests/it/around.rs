//! The user's code around the paced call ([`qo_worker::AroundCall`]): the request built before
//! the slot, the answer transformed or failed after a 2xx, and never a 429 seen.

use std::sync::{Arc, Mutex};

use crate::support::{FakeHttp, config, job, rig};
use async_trait::async_trait;
use qo_core::reason::ReasonKind;
use qo_core::{Job, Timestamp, TokioClock};
use qo_memory::MemoryResults;
use qo_worker::{AfterCall, Answer, ApiResponse, AroundCall, HandlerError, Outcome};

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

/// Rewrites `/customers/N` to `/v2/customers/N`, keeps one field of the answer, and fails an
/// answer without it; records the paths it saw after the call.
#[derive(Default)]
struct KeepName {
    answered: Mutex<Vec<String>>,
}

#[async_trait]
impl AroundCall for KeepName {
    async fn request(&self, job: &Job) -> Result<Job, HandlerError> {
        if job.path.contains("forbidden") {
            return Err(HandlerError("not for this API".into()));
        }
        let path = match job.path.strip_prefix("/escape") {
            Some(_) => "/../admin".to_string(),
            None => format!("/v2{}", job.path),
        };
        Ok(Job {
            path,
            ..job.clone()
        })
    }

    async fn answered(&self, job: &Job, answer: Answer<'_>) -> Result<AfterCall, HandlerError> {
        self.answered.lock().expect("lock").push(job.path.clone());
        let v: serde_json::Value = serde_json::from_slice(answer.body)
            .map_err(|e| HandlerError(format!("not JSON: {e}")))?;
        Ok(match v.get("name") {
            Some(name) => {
                AfterCall::Body(serde_json::json!({ "name": name }).to_string().into_bytes())
            }
            None => AfterCall::Failed("the answer has no name".into()),
        })
    }
}

fn around_rig(
    answer: ApiResponse,
) -> (
    crate::support::Rig<Arc<FakeHttp>>,
    Arc<FakeHttp>,
    MemoryResults,
    Arc<KeepName>,
) {
    let clock = TokioClock::starting_at(T0);
    let http = Arc::new(FakeHttp::new(clock.clone(), Ok(answer)));
    let cfg = config(
        "https://api.example.com",
        &[
            (
                "RESULT_DESTINATIONS",
                "arn:aws:sqs:us-east-1:123456789012:orders",
            ),
            ("RESULT_DEFAULT", "orders"),
        ],
    );
    let results = MemoryResults::new();
    let around = Arc::new(KeepName::default());
    let mut r = rig(cfg, http.clone(), clock);
    r.worker = r
        .worker
        .with_result_sink(Arc::new(results.clone()))
        .with_around(around.clone());
    (r, http, results, around)
}

fn answer(body: &str) -> ApiResponse {
    ApiResponse {
        status: 200,
        body_start: body.as_bytes().to_vec(),
        ..ApiResponse::default()
    }
}

#[tokio::test(start_paused = true)]
async fn the_request_is_built_and_the_answer_transformed_by_the_user_s_code() {
    let (r, http, results, around) = around_rig(answer(r#"{"name":"Ada","age":36}"#));
    let out = r
        .handle(job(r#"{"id":"c","path":"/customers/1"}"#, "m-1", T0, 0))
        .await;
    assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
    assert_eq!(http.calls().len(), 1);
    assert_eq!(*around.answered.lock().expect("lock"), ["/v2/customers/1"]);
    let sent = results.delivered();
    assert_eq!(sent[0].result.body.as_deref(), Some(r#"{"name":"Ada"}"#));
}

#[tokio::test(start_paused = true)]
async fn the_user_s_code_can_fail_a_2xx_and_it_is_dead_lettered_not_retried() {
    let (r, http, results, _) = around_rig(answer(r#"{"age":36}"#));
    let out = r
        .handle(job(r#"{"id":"c","path":"/customers/1"}"#, "m-1", T0, 0))
        .await;
    assert!(matches!(out, Outcome::DeadLettered { .. }), "{out:?}");
    assert_eq!(http.calls().len(), 1);
    let dead = r.sink.dead_letters();
    assert_eq!(dead[0].reason.kind(), ReasonKind::HandlerFailed);
    assert!(
        dead[0]
            .reason
            .to_string()
            .contains("the answer has no name")
    );
    assert!(r.sink.requeues().is_empty(), "not retried");
    let sent = results.delivered();
    assert_eq!(
        sent[0].result.outcome,
        qo_core::result::ResultOutcome::DeadLettered
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_or_unsafe_request_is_dead_lettered_uncalled() {
    let (r, http, _, _) = around_rig(answer(r#"{"name":"Ada"}"#));
    r.handle(job(r#"{"id":"a","path":"/forbidden/1"}"#, "m-1", T0, 0))
        .await;
    r.handle(job(r#"{"id":"b","path":"/escape"}"#, "m-2", T0, 0))
        .await;
    assert!(http.calls().is_empty());
    let dead = r.sink.dead_letters();
    assert_eq!(dead.len(), 2);
    assert!(
        dead[0].reason.to_string().contains("not for this API"),
        "{}",
        dead[0].reason
    );
    assert!(
        dead[1].reason.to_string().contains(".."),
        "{}",
        dead[1].reason
    );
}

#[tokio::test(start_paused = true)]
async fn the_user_s_code_never_sees_a_429() {
    let (r, http, _, around) = around_rig(ApiResponse::status(429));
    let out = r
        .handle(job(r#"{"id":"c","path":"/customers/1"}"#, "m-1", T0, 0))
        .await;
    assert!(
        matches!(out, Outcome::Throttled { requeued: true, .. }),
        "{out:?}"
    );
    assert_eq!(http.calls().len(), 1);
    assert!(around.answered.lock().expect("lock").is_empty());
}
