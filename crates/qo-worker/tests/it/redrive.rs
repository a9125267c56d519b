//! A dead-lettered job comes back: after `qo redrive` it is called again, exactly once, not
//! skipped as a duplicate. In memory (qo-memory's store and queue), under tokio's paused time.

use std::sync::Arc;
use std::time::Duration;

use crate::support::{FakeHttp, config, job, rig};
use qo_core::job::Job;
use qo_core::ports::JobSource;
use qo_core::{JobEvent, Timestamp, TokioClock, WorkerEvent};
use qo_memory::{JobStatus, SendOptions};
use qo_worker::{ApiResponse, Outcome};

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

/// What `qo redrive` does to one dead letter (`SqsQueue::redrive`: the body sent to the main
/// queue as a new message, attempt 0; the dead letter deleted), then what the orchestrator
/// makes of the new message: the job event it dispatches.
async fn redrive_and_receive(
    r: &crate::support::Rig<Arc<FakeHttp>>,
    now: Timestamp,
) -> WorkerEvent {
    let dead = r.sink.dead_letters();
    assert_eq!(dead.len(), 1, "one dead letter to redrive");
    let new_id = r
        .sink
        .queue
        .send_with(dead[0].body.clone(), SendOptions::default())
        .expect("send");
    assert_ne!(new_id, dead[0].origin.message_id, "a fresh message id");
    let messages = r
        .sink
        .queue
        .receive(10, Duration::ZERO)
        .await
        .expect("receive");
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.origin.attempt, 0);
    WorkerEvent::Job(JobEvent {
        job: Job::parse(&m.body).expect("job"),
        origin: m.origin.clone(),
        slot_at: now,
        epoch: 0,
        dispatched_at: now,
    })
}

async fn dead_lettered_then_redriven(first: u16, body: &str, job_id: &str) {
    let clock = TokioClock::starting_at(T0);
    let http = Arc::new(FakeHttp::new(clock.clone(), Ok(ApiResponse::status(first))));
    let r = rig(
        config("http://api.test/v1", &[("CALL_TOLERANCE_MS", "5")]),
        Arc::clone(&http),
        clock.clone(),
    );
    let out = r.handle(job(body, "m-1", T0, 0)).await;
    assert!(
        matches!(&out, Outcome::DeadLettered { job_id: j, .. } if j == job_id),
        "{out:?}"
    );
    assert_eq!(http.calls().len(), 1);
    // Not recorded as done: a later delivery may claim it.
    assert!(
        !matches!(r.store.job_status(job_id), Some(JobStatus::Done { .. })),
        "{:?}",
        r.store.job_status(job_id)
    );

    // The API is fixed, the operator redrives.
    *http.answer.lock().expect("lock") = Ok(ApiResponse::status(200));
    let later = T0.plus(Duration::from_secs(600));
    tokio::time::advance(Duration::from_secs(600)).await;
    let ev = redrive_and_receive(&r, later).await;
    let out = r.handle(ev.clone()).await;
    assert!(
        matches!(&out, Outcome::Succeeded { job_id: j, .. } if j == job_id),
        "the redriven job is called, not skipped: {out:?}"
    );
    assert_eq!(
        http.calls().len(),
        2,
        "called exactly once after the redrive"
    );
    // A duplicate delivery of the redriven event does not call a third time.
    let again = r.handle(ev).await;
    assert!(matches!(again, Outcome::Duplicate { .. }), "{again:?}");
    assert_eq!(http.calls().len(), 2);
    assert_eq!(
        r.sink.dead_letters().len(),
        1,
        "nothing dead-lettered again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_with_an_id_dead_lettered_after_a_404_is_called_once_after_a_redrive() {
    // The id is in the body, so the redriven message (a new message id) has the same
    // idempotency key: a done mark would make it a duplicate.
    dead_lettered_then_redriven(404, r#"{"id":"job-7","path":"/x"}"#, "job-7").await;
}

#[tokio::test(start_paused = true)]
async fn a_job_dead_lettered_after_a_410_is_called_once_after_a_redrive() {
    dead_lettered_then_redriven(410, r#"{"id":"job-8","path":"/gone"}"#, "job-8").await;
}
