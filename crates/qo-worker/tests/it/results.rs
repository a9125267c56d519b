//! The result path: a job's answer delivered to its destination once the call succeeds, a
//! failure result after a dead letter, retries of a refused delivery, and the result itself
//! dead-lettered when the destination keeps refusing. The API is called once per job
//! throughout.

use std::sync::Arc;

use crate::support::{FakeHttp, config, job, rig};
use qo_core::ports::IdempotencyStore;
use qo_core::reason::ReasonKind;
use qo_core::result::{JobResult, ResultOutcome};
use qo_core::{Clock, Timestamp, TokioClock};
use qo_memory::{JobStatus, MemoryResults};
use qo_worker::{ApiResponse, Outcome};

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);
const ORDERS: &str = "arn:aws:sqs:us-east-1:123456789012:orders";
const AUDIT: &str = "arn:aws:sns:us-east-1:123456789012:audit";

fn ok_answer() -> ApiResponse {
    ApiResponse {
        status: 200,
        body_start: br#"{"customer":42}"#.to_vec(),
        headers: vec![("content-type".into(), "application/json".into())],
        ..ApiResponse::default()
    }
}

fn results_rig(
    answer: ApiResponse,
    default: &str,
) -> (
    crate::support::Rig<Arc<FakeHttp>>,
    Arc<FakeHttp>,
    MemoryResults,
) {
    let clock = TokioClock::starting_at(T0);
    let http = Arc::new(FakeHttp::new(clock.clone(), Ok(answer)));
    let destinations = format!("{ORDERS},{AUDIT}");
    let cfg = config(
        "https://api.example.com",
        &[
            ("RESULT_DESTINATIONS", destinations.as_str()),
            ("RESULT_DEFAULT", default),
        ],
    );
    let results = MemoryResults::new();
    let mut r = rig(cfg, http.clone(), clock);
    r.worker = r.worker.with_result_sink(Arc::new(results.clone()));
    (r, http, results)
}

#[tokio::test(start_paused = true)]
async fn a_success_delivers_its_answer_with_meta_before_it_is_marked_done() {
    let (r, http, results) = results_rig(ok_answer(), "");
    let body = r#"{"id":"c-42","path":"/v1/customers/42","reply_to":"orders","meta":{"ticket":7}}"#;
    let out = r.handle(job(body, "m-1", T0, 0)).await;
    assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
    let sent = results.delivered();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].destination, "orders");
    let res = &sent[0].result;
    assert_eq!(res.result_id, "c-42:succeeded");
    assert_eq!(res.outcome, ResultOutcome::Succeeded);
    assert_eq!(res.status, Some(200));
    assert_eq!(res.meta, Some(serde_json::json!({"ticket": 7})));
    assert_eq!(res.body.as_deref(), Some(r#"{"customer":42}"#));
    assert_eq!(
        res.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(res.times.slot.as_deref(), Some(T0.to_rfc3339().as_str()));
    assert_eq!(http.calls().len(), 1);
    assert!(matches!(
        r.store.job_status("c-42"),
        Some(JobStatus::Done { .. })
    ));
    // A job without reply_to and no default: no result. The default applies otherwise.
    r.handle(job(r#"{"id":"quiet","path":"/x"}"#, "m-2", T0, 0))
        .await;
    assert_eq!(results.delivered().len(), 1);
    let (r, _, results) = results_rig(ok_answer(), "audit");
    r.handle(job(r#"{"id":"d","path":"/x"}"#, "m-3", T0, 0))
        .await;
    assert_eq!(results.delivered()[0].destination, "audit");
}

#[tokio::test(start_paused = true)]
async fn a_refused_delivery_is_retried_and_the_api_called_once() {
    let (r, http, results) = results_rig(ok_answer(), "orders");
    results.refuse_next(2);
    let out = r
        .handle(job(r#"{"id":"j","path":"/x"}"#, "m-1", T0, 0))
        .await;
    assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
    assert_eq!(results.refused(), 2);
    assert_eq!(results.delivered().len(), 1, "delivered on the third try");
    assert_eq!(http.calls().len(), 1);
    assert!(r.sink.dead_letters().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_result_the_destination_keeps_refusing_is_requeued_then_dead_lettered() {
    let (r, http, results) = results_rig(ok_answer(), "orders");
    results.refuse_next(1_000);
    let out = r
        .handle(job(r#"{"id":"j","path":"/x"}"#, "m-1", T0, 0))
        .await;
    assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
    assert!(results.delivered().is_empty());
    // The job is done at once: a second delivery of its event calls nothing.
    assert!(r.store.is_done("j").await.expect("read"));
    r.handle(job(r#"{"id":"j","path":"/x"}"#, "m-1", T0, 0))
        .await;
    assert_eq!(http.calls().len(), 1);
    // The result is kept on the queue and handed back (as the orchestrator does) after each
    // delay: 60 s doubling to 900 s, five times; then it is dead-lettered, with itself inside.
    let mut delays: Vec<u64> = Vec::new();
    while r.sink.requeues().len() > delays.len() {
        let last = r.sink.requeues().last().cloned().expect("a re-queue");
        delays.push(last.delay.as_secs());
        let kept: JobResult = serde_json::from_str(&last.body).expect("the result");
        assert_eq!(kept.destination.as_deref(), Some("orders"));
        r.handle(qo_core::WorkerEvent::Deliver(
            qo_core::event::DeliverEvent {
                result: kept,
                origin: last.origin.clone(),
            },
        ))
        .await;
    }
    assert_eq!(delays, [60, 120, 240, 480, 900]);
    let dead = r.sink.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason.kind(), ReasonKind::ResultUndelivered);
    let kept: JobResult = serde_json::from_str(&dead[0].body).expect("the body is the result");
    assert_eq!(kept.result_id, "j:succeeded");
    assert_eq!(kept.body.as_deref(), Some(r#"{"customer":42}"#));
    assert_eq!(http.calls().len(), 1, "the API was called once throughout");
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_sends_a_failure_result() {
    let answer = ApiResponse {
        status: 404,
        body_start: b"no such customer".to_vec(),
        ..ApiResponse::default()
    };
    let (r, _, results) = results_rig(answer, "");
    let out = r
        .handle(job(
            r#"{"id":"c-9","path":"/v1/customers/9","reply_to":"audit","meta":{"t":1}}"#,
            "m-1",
            T0,
            0,
        ))
        .await;
    assert!(matches!(out, Outcome::DeadLettered { .. }), "{out:?}");
    let sent = results.delivered();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let res = &sent[0].result;
    assert_eq!(
        (res.outcome, res.status, res.result_id.as_str()),
        (ResultOutcome::DeadLettered, Some(404), "c-9:dead_lettered")
    );
    assert!(
        res.reason
            .as_deref()
            .is_some_and(|r| r.contains("no such customer")),
        "{res:?}"
    );
    assert_eq!(res.meta, Some(serde_json::json!({"t": 1})));
}

#[tokio::test(start_paused = true)]
async fn a_job_naming_an_unknown_destination_is_dead_lettered_uncalled() {
    let (r, http, results) = results_rig(ok_answer(), "");
    let out = r
        .handle(job(
            r#"{"id":"j","path":"/x","reply_to":"payments"}"#,
            "m-1",
            T0,
            0,
        ))
        .await;
    assert!(matches!(out, Outcome::DeadLettered { .. }), "{out:?}");
    assert!(http.calls().is_empty());
    assert!(results.delivered().is_empty());
    let dead = r.sink.dead_letters();
    assert!(
        dead[0].reason.to_string().contains("payments"),
        "{}",
        dead[0].reason
    );
}

/// A 600 KB answer whose destination keeps refusing: its body goes to the bucket before the
/// result is re-queued (the queues take 256 KiB), and the dead letter carries the location,
/// so the answer is kept, not only logged.
#[tokio::test(start_paused = true)]
async fn a_large_result_the_destination_refuses_is_kept_with_its_body_in_the_bucket() {
    let big = ApiResponse {
        body_start: vec![b'x'; 600_000],
        ..ok_answer()
    };
    let (r, http, results) = results_rig(big, "orders");
    results.refuse_next(1_000);
    let out = r
        .handle(job(r#"{"id":"big","path":"/x"}"#, "m-1", T0, 0))
        .await;
    assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
    let mut handed_back = 0;
    while r.sink.requeues().len() > handed_back {
        let last = r.sink.requeues().last().cloned().expect("a re-queue");
        let size = last.body.len();
        assert!(size < 256 * 1024, "a re-queued result is {size} bytes");
        let kept: JobResult = serde_json::from_str(&last.body).expect("the result");
        r.handle(qo_core::WorkerEvent::Deliver(
            qo_core::event::DeliverEvent {
                result: kept,
                origin: last.origin.clone(),
            },
        ))
        .await;
        handed_back += 1;
    }
    assert_eq!(handed_back, 5, "re-queued five times");
    let dead = r.sink.dead_letters();
    assert_eq!(dead.len(), 1, "then dead-lettered");
    let kept: JobResult = serde_json::from_str(&dead[0].body).expect("the body is the result");
    let location = kept.body_location.expect("the body's location");
    assert_eq!(kept.body, None);
    assert_eq!(results.object(&location).map(|b| b.len()), Some(600_000));
    assert_eq!(http.calls().len(), 1, "the API was called once throughout");
}

/// A destination that never answers.
struct Hangs;

#[async_trait::async_trait]
impl qo_core::ports::ResultSink for Hangs {
    async fn deliver(
        &self,
        _to: &qo_core::result::Destination,
        _result: &JobResult,
    ) -> Result<qo_core::ports::Delivered, qo_core::ports::ResultError> {
        std::future::pending().await
    }

    async fn stow(&self, result: &JobResult) -> Result<JobResult, qo_core::ports::ResultError> {
        Ok(result.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn a_destination_that_never_answers_costs_one_sdk_call_s_time_then_a_requeue() {
    let (mut r, http, _) = results_rig(ok_answer(), "orders");
    r.worker = r.worker.with_result_sink(Arc::new(Hangs));
    let budget = r.worker.config().result_budget;
    assert_eq!(
        budget,
        std::time::Duration::from_secs(24),
        "3 x (3 s + 5 s)"
    );
    let began = r.clock.now();
    let out = r
        .handle(job(r#"{"id":"j","path":"/x"}"#, "m-1", T0, 0))
        .await;
    assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
    assert_eq!(r.clock.now().since(began), budget, "given up at the budget");
    let requeued = r.sink.requeues();
    assert_eq!(requeued.len(), 1, "kept for a later delivery");
    assert_eq!(requeued[0].delay, std::time::Duration::from_secs(60));
    assert_eq!(http.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_kept_result_handed_back_is_delivered_without_a_call() {
    // The destination refuses: the result is kept on the queue, and names its destination.
    let (r, http, results) = results_rig(ok_answer(), "orders");
    results.refuse_next(3);
    r.handle(job(r#"{"id":"j","path":"/x"}"#, "m-1", T0, 0))
        .await;
    let dead = r.sink.requeues();
    let kept: JobResult = serde_json::from_str(&dead[0].body).expect("the result");
    assert_eq!(kept.destination.as_deref(), Some("orders"));
    // The destination recovers; the orchestrator receives the result and hands it back.
    results.refuse_next(0);
    let event = qo_core::WorkerEvent::Deliver(qo_core::event::DeliverEvent {
        result: kept.clone(),
        origin: dead[0].origin.clone(),
    });
    let out = r.handle(event).await;
    assert_eq!(
        out,
        Outcome::Redelivered {
            job_id: "j".into(),
            destination: "orders".into(),
            delivered: true
        }
    );
    assert_eq!(results.delivered().len(), 1);
    assert_eq!(results.delivered()[0].result.result_id, "j:succeeded");
    assert_eq!(http.calls().len(), 1, "no second call");
    // A result naming a destination the stack no longer declares goes back with the reason.
    let mut stray = kept;
    stray.destination = Some("gone".into());
    let out = r
        .handle(qo_core::WorkerEvent::Deliver(
            qo_core::event::DeliverEvent {
                result: stray,
                origin: dead[0].origin.clone(),
            },
        ))
        .await;
    assert!(
        matches!(
            out,
            Outcome::Redelivered {
                delivered: false,
                ..
            }
        ),
        "{out:?}"
    );
    let again = r.sink.dead_letters();
    assert_eq!(again.len(), 1);
    assert!(
        again[0]
            .reason
            .to_string()
            .contains("not one of the stack's result destinations")
    );
}
