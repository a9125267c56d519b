//! Slot timing and answer classification under tokio's paused time, with an HTTP layer in
//! memory (sockets and paused time do not mix).

use std::sync::Arc;
use std::time::Duration;

use crate::support::{FakeHttp, config, health, job, job_event, rig};
use lambda_runtime::{Context, LambdaEvent};
use qo_core::ports::{IdempotencyStore, RecordKey, save_record};
use qo_core::{
    ApiWindow, BackoffReason, Clock, Control, Observation, Timestamp, TokioClock, WorkerEvent,
};
use qo_core::{event::JobEvent, job::Job};
use qo_memory::JobStatus;
use qo_worker::lambda::DEADLINE_MARGIN;
use qo_worker::{ApiResponse, HttpError, Outcome, RateHeaders, handler};

/// 2023-11-14T22:13:20Z, a Tuesday.
const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn setup(
    answer: Result<ApiResponse, HttpError>,
    extra: &[(&str, &str)],
) -> (crate::support::Rig<Arc<FakeHttp>>, Arc<FakeHttp>) {
    let clock = TokioClock::starting_at(T0);
    let http = Arc::new(FakeHttp::new(clock.clone(), answer));
    let mut vars = vec![("CALL_TOLERANCE_MS", "5")];
    vars.extend_from_slice(extra);
    let r = rig(
        config("http://api.test/v1", &vars),
        Arc::clone(&http),
        clock,
    );
    (r, http)
}

#[tokio::test(start_paused = true)]
async fn an_early_event_waits_and_calls_exactly_at_its_slot() {
    let (r, http) = setup(Ok(ApiResponse::status(204)), &[]);
    let slot = T0.plus(ms(3_217));
    let out = r.handle_x("m-1", slot, 0).await;
    assert!(
        matches!(out, Outcome::Succeeded { status: 204, .. }),
        "{out:?}"
    );
    assert_eq!(http.calls(), vec![slot]);
    assert!(r.seen.all().iter().any(|o| matches!(
        o,
        Observation::Called { at, wait: Some(w), .. }
            if *at == slot && *w == Duration::from_secs(2)
    )));
}

#[tokio::test(start_paused = true)]
async fn an_event_within_the_tolerance_calls_at_once() {
    let (r, http) = setup(Ok(ApiResponse::status(200)), &[]);
    let out = r.handle_x("m-1", T0.minus(ms(4)), 0).await;
    assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
    assert_eq!(http.calls(), vec![T0]);
}

#[tokio::test(start_paused = true)]
async fn a_late_event_is_requeued_without_a_call() {
    let (r, http) = setup(Ok(ApiResponse::status(200)), &[]);
    let out = r.handle_x("m-1", T0.minus(ms(1_000)), 3).await;
    assert_eq!(
        out,
        Outcome::Late {
            job_id: "m-1".into(),
            late_by_ms: 1_000,
            requeued: true
        }
    );
    assert!(http.calls().is_empty());
    assert!(r.seen.called().is_empty());
    let q = r.sink.requeues();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].delay, Duration::ZERO);
    assert_eq!(
        q[0].origin.attempt, 0,
        "delivery timing alone does not count an attempt"
    );
    assert!(
        q[0].body.contains(r#""id":"m-1""#),
        "the job id survives the re-queue: {}",
        q[0].body
    );
    assert_eq!(r.store.job_status("m-1"), None, "claim dropped");
    // A late event counts nothing against the circuit.
    assert_eq!(r.store.record(RecordKey::Circuit), None);
}

#[tokio::test(start_paused = true)]
async fn a_slot_beyond_the_max_wait_is_requeued_without_waiting() {
    let (r, http) = setup(
        Ok(ApiResponse::status(200)),
        &[("MAX_SLOT_WAIT_MS", "5000")],
    );
    let out = r.handle_x("m-1", T0.plus(ms(10_000)), 0).await;
    assert_eq!(
        out,
        Outcome::TooEarly {
            job_id: "m-1".into(),
            early_by_ms: 10_000,
            requeued: true
        }
    );
    assert_eq!(r.clock.now(), T0, "did not sleep");
    assert!(http.calls().is_empty());
    assert_eq!(r.sink.requeues()[0].delay, Duration::ZERO);
    assert_eq!(r.store.job_status("m-1"), None);
}

#[tokio::test(start_paused = true)]
async fn a_job_claimed_by_another_delivery_is_requeued_for_after_the_claim() {
    let (r, http) = setup(Ok(ApiResponse::status(200)), &[("CLAIM_TTL_S", "120")]);
    r.store
        .claim("job-7", T0, Duration::from_secs(120))
        .await
        .expect("claim");
    tokio::time::advance(Duration::from_secs(20)).await;
    let now = r.clock.now();
    let out = r
        .handle(job(r#"{"id":"job-7","path":"/x"}"#, "m-1", now, 0))
        .await;
    assert_eq!(
        out,
        Outcome::Duplicate {
            job_id: "job-7".into(),
            in_progress: true,
            requeued: true
        }
    );
    assert!(http.calls().is_empty());
    // 100 s left on the claim, plus a second.
    assert_eq!(r.sink.requeues()[0].delay, Duration::from_secs(101));
    assert!(matches!(
        r.store.job_status("job-7"),
        Some(JobStatus::InProgress { claimed_at }) if claimed_at == T0
    ));
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date_and_the_default() {
    let dated = ApiResponse {
        status: 429,
        retry_after: Some("Tue, 14 Nov 2023 22:13:50 GMT".into()),
        ..ApiResponse::default()
    };
    let (r, _) = setup(Ok(dated), &[]);
    // Two lost races on the control record are retried, not lost.
    r.store.fail_next_saves(2);
    let out = r.handle_x("m-1", T0, 0).await;
    assert!(
        matches!(
            out,
            Outcome::Throttled {
                retry_after_ms: 30_000,
                requeued: true,
                ..
            }
        ),
        "{out:?}"
    );
    let control = r.control().await;
    assert_eq!(
        control.value.backoff_until,
        Some(T0.plus(Duration::from_secs(30)))
    );
    assert_eq!(r.sink.requeues()[0].delay, Duration::from_secs(30));

    let (r, _) = setup(Ok(ApiResponse::status(429)), &[]);
    let out = r.handle_x("m-1", T0, 0).await;
    assert!(
        matches!(
            out,
            Outcome::Throttled {
                retry_after_ms: 1_000,
                ..
            }
        ),
        "{out:?}"
    );
    assert!(r.seen.all().contains(&Observation::Throttled {
        job_id: "m-1".into(),
        retry_after: None
    }));
    // No Retry-After: the job waits the default, but no call pauses; the 429 is counted for
    // the pace to come down.
    let control = r.control().await.value;
    assert_eq!(control.backoff_until, None);
    assert_eq!(control.throttles.map(|t| t.count), Some(1));
    assert_eq!(r.sink.requeues()[0].delay, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_429_whose_control_write_loses_every_race_is_still_requeued() {
    // A 429 storm from many environments: every read-modify-write of the control item loses.
    // The job goes back all the same; the event does not fail (a failed batch would be
    // retried by Lambda, late, and page).
    let answer = ApiResponse {
        status: 429,
        retry_after: Some("2".into()),
        ..ApiResponse::default()
    };
    let (r, _) = setup(Ok(answer), &[]);
    r.store.fail_next_saves(100);
    let out = r.handle_x("m-1", T0, 0).await;
    assert!(
        matches!(out, Outcome::Throttled { requeued: true, .. }),
        "{out:?}"
    );
    assert_eq!(r.sink.requeues().len(), 1);
    r.store.fail_next_saves(0);
    assert_eq!(
        r.control().await.value.backoff_until,
        None,
        "nothing written"
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_retry_after_is_kept_in_control_but_the_requeue_delay_is_capped() {
    let answer = ApiResponse {
        status: 429,
        retry_after: Some("3600".into()),
        ..ApiResponse::default()
    };
    let (r, _) = setup(Ok(answer), &[]);
    r.handle_x("m-1", T0, 0).await;
    let control = r.control().await;
    assert_eq!(
        control.value.backoff_until,
        Some(T0.plus(Duration::from_secs(3_600)))
    );
    assert_eq!(r.sink.requeues()[0].delay, Duration::from_secs(900));
}

/// Handles the job the sink re-queued last, as the next delivery would, at the clock's now.
async fn deliver_requeued(r: &crate::support::Rig<Arc<FakeHttp>>, first: &JobEvent) -> Outcome {
    let last = r.sink.requeues().pop().expect("a re-queue");
    let ev = JobEvent {
        job: Job::parse(&last.body).expect("job"),
        origin: last.origin,
        slot_at: r.clock.now(),
        ..first.clone()
    };
    r.handle(WorkerEvent::Job(ev)).await
}

#[tokio::test(start_paused = true)]
async fn a_429_never_counts_as_an_attempt_and_max_throttled_bounds_it() {
    let answer = ApiResponse {
        status: 429,
        retry_after: Some("3".into()),
        ..ApiResponse::default()
    };
    let (r, http) = setup(Ok(answer), &[("MAX_ATTEMPTS", "5"), ("MAX_THROTTLED", "8")]);
    let first = job_event(r#"{"path":"/x"}"#, "m-1", T0, 0);
    let out = r.handle(WorkerEvent::Job(first.clone())).await;
    assert!(
        matches!(out, Outcome::Throttled { requeued: true, .. }),
        "{out:?}"
    );
    // Six 429s in all, more than MAX_ATTEMPTS would allow: each one goes back, attempt 0.
    for _ in 1..6 {
        let out = deliver_requeued(&r, &first).await;
        assert!(
            matches!(out, Outcome::Throttled { requeued: true, .. }),
            "{out:?}"
        );
    }
    let q = r.sink.requeues();
    assert_eq!(q.len(), 6);
    for (i, rq) in q.iter().enumerate() {
        assert_eq!(rq.origin.attempt, 0, "429 #{}", i + 1);
        assert_eq!(rq.origin.throttled, u32::try_from(i + 1).unwrap());
        assert_eq!(rq.delay, Duration::from_secs(3));
    }
    assert!(r.sink.dead_letters().is_empty());
    // The 7th is re-queued; the 8th reaches MAX_THROTTLED and is dead-lettered.
    let out = deliver_requeued(&r, &first).await;
    assert!(
        matches!(out, Outcome::Throttled { requeued: true, .. }),
        "{out:?}"
    );
    let out = deliver_requeued(&r, &first).await;
    assert!(
        matches!(
            out,
            Outcome::Throttled {
                requeued: false,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(http.calls().len(), 8);
    assert_eq!(r.sink.requeues().len(), 7);
    let dead = r.sink.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].reason,
        "answered HTTP 429 8 times (MAX_THROTTLED); last retry after 3000 ms"
    );
    assert_eq!((dead[0].origin.attempt, dead[0].origin.throttled), (0, 8));
    assert!(r.seen.all().contains(&Observation::DeadLettered {
        message_id: "m-1".into(),
        reason: dead[0].reason.clone(),
    }));
    assert_eq!(r.store.job_status("m-1"), None, "claim dropped");
}

#[tokio::test(start_paused = true)]
async fn every_429_bumps_the_throttle_count_even_under_a_later_backoff() {
    let answer = ApiResponse {
        status: 429,
        retry_after: Some("2".into()),
        ..ApiResponse::default()
    };
    let (r, http) = setup(Ok(answer), &[]);
    // An operator's or an earlier 429's back-off already reaches further than ours will.
    let far = T0.plus(Duration::from_secs(600));
    let seeded = Control {
        backoff_until: Some(far),
        backoff_reason: Some(BackoffReason::CredentialRejected { status: 401 }),
        ..Control::default()
    };
    save_record(&r.store, RecordKey::Control, &seeded, 0, None)
        .await
        .expect("seed");
    for n in 1..=3u64 {
        let slot = r.clock.now();
        r.handle_x(&format!("m-{n}"), slot, 0).await;
        let c = r.control().await.value;
        let t = c.throttles.expect("counted");
        assert_eq!(t.count, n, "429 #{n} is counted");
        assert_eq!(t.last_slot, slot);
        assert_eq!(c.backoff_until, Some(far), "the later back-off is kept");
        assert_eq!(
            c.backoff_reason,
            Some(BackoffReason::CredentialRejected { status: 401 }),
            "and its reason"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    // A success writes nothing to the control record.
    let before = r.store.record(RecordKey::Control);
    *http.answer.lock().expect("lock") = Ok(ApiResponse::status(200));
    r.handle_x("m-ok", r.clock.now(), 0).await;
    assert_eq!(r.store.record(RecordKey::Control), before);
}

/// An answer with `status` and the rate-limit headers `limit`, `remaining` and `reset` (s).
fn with_headers(status: u16, limit: &str, remaining: &str, reset: &str) -> ApiResponse {
    ApiResponse {
        status,
        rate_headers: RateHeaders::from_pairs(&[
            ("X-RateLimit-Limit", limit),
            ("X-RateLimit-Remaining", remaining),
            ("X-RateLimit-Reset", reset),
        ]),
        ..ApiResponse::default()
    }
}

fn with_window(status: u16, remaining: &str) -> ApiResponse {
    with_headers(status, "100", remaining, "20")
}

async fn stored_window(r: &crate::support::Rig<Arc<FakeHttp>>) -> Option<ApiWindow> {
    r.control().await.value.api_window
}

#[tokio::test(start_paused = true)]
async fn a_success_reports_the_api_window_only_when_low_and_not_twice_within_the_interval() {
    let (r, http) = setup(
        Ok(with_window(200, "50")),
        &[("API_WINDOW_REPORT_MS", "1000")],
    );
    let answer = |a: ApiResponse| *http.answer.lock().expect("lock") = Ok(a);
    let call = |id: &'static str| {
        let r = &r;
        async move {
            let out = r.handle_x(id, r.clock.now(), 0).await;
            assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
        }
    };
    // Plenty left: nothing written, but the metric sees it.
    call("m-1").await;
    assert_eq!(r.store.record(RecordKey::Control), None);
    assert!(r.seen.all().contains(&Observation::ApiRemaining {
        remaining: 50,
        limit: Some(100)
    }));
    // A fifth of the limit or less: written.
    tokio::time::advance(ms(10)).await;
    answer(with_window(200, "20"));
    call("m-2").await;
    let w = stored_window(&r).await.expect("reported");
    assert_eq!(w.remaining, 20);
    assert_eq!(w.limit, Some(100));
    assert_eq!(w.observed_at, r.clock.now());
    assert_eq!(w.reset_at, r.clock.now().plus(Duration::from_secs(20)));
    let version = r.store.record(RecordKey::Control).expect("record").version;
    // Low again within API_WINDOW_REPORT_MS: not written again.
    tokio::time::advance(ms(500)).await;
    answer(with_window(200, "7"));
    call("m-3").await;
    assert_eq!(
        r.store.record(RecordKey::Control).expect("record").version,
        version
    );
    // Once the interval has passed: written.
    tokio::time::advance(ms(500)).await;
    answer(with_window(200, "6"));
    call("m-4").await;
    assert_eq!(stored_window(&r).await.expect("reported").remaining, 6);
    // A newer observation already stored (another environment's) is not overwritten.
    let c = r.control().await;
    let mut v = c.value.clone();
    let newer = ApiWindow {
        remaining: 0,
        observed_at: r.clock.now().plus(Duration::from_secs(60)),
        ..v.api_window.expect("window")
    };
    v.api_window = Some(newer);
    let version = save_record(&r.store, RecordKey::Control, &v, c.version, None)
        .await
        .expect("save");
    tokio::time::advance(ms(1_000)).await;
    answer(with_window(200, "5"));
    call("m-5").await;
    assert_eq!(
        r.store.record(RecordKey::Control).expect("record").version,
        version,
        "nothing written over a newer observation"
    );
}

#[tokio::test(start_paused = true)]
async fn a_success_reports_a_changed_limit_with_calls_left() {
    let (r, http) = setup(
        Ok(with_window(200, "50")),
        &[("API_WINDOW_REPORT_MS", "1000")],
    );
    let answer = |a: ApiResponse| *http.answer.lock().expect("lock") = Ok(a);
    let with_limit = |limit, remaining| with_headers(200, limit, remaining, "1");
    let call = |id: &'static str| {
        let r = &r;
        async move {
            r.handle_x(id, r.clock.now(), 0).await;
        }
    };
    // The first answer's limit, with plenty left: nothing written.
    call("m-1").await;
    assert_eq!(r.store.record(RecordKey::Control), None);
    // The limit went up (it came back), half of it left: written, for the pace to follow.
    tokio::time::advance(ms(10)).await;
    answer(with_limit("200", "100"));
    call("m-2").await;
    let w = stored_window(&r)
        .await
        .expect("a changed limit is reported");
    assert_eq!((w.limit, w.remaining), (Some(200), 100));
    // The same limit again, plenty left: not written again.
    let version = r.store.record(RecordKey::Control).expect("record").version;
    tokio::time::advance(ms(10)).await;
    answer(with_limit("200", "150"));
    call("m-3").await;
    assert_eq!(
        r.store.record(RecordKey::Control).expect("record").version,
        version
    );
    // A change within API_WINDOW_REPORT_MS of the last report waits for the interval (and
    // is not forgotten meanwhile), then is reported.
    answer(with_limit("100", "60"));
    call("m-4").await;
    assert_eq!(stored_window(&r).await.expect("window").limit, Some(200));
    tokio::time::advance(ms(1_000)).await;
    call("m-5").await;
    let w = stored_window(&r).await.expect("window");
    assert_eq!((w.limit, w.remaining), (Some(100), 60));
}

#[tokio::test(start_paused = true)]
async fn a_429_reports_the_api_window_with_the_throttle_and_bad_headers_change_nothing() {
    let (r, http) = setup(Ok(with_window(429, "90")), &[]);
    r.handle_x("m-1", T0, 0).await;
    let c = r.control().await.value;
    assert_eq!(c.throttles.expect("counted").count, 1);
    let w = c.api_window.expect("a 429 reports the window, low or not");
    assert_eq!((w.remaining, w.limit, w.observed_at), (90, Some(100), T0));

    // Malformed headers: the job succeeds and nothing is written.
    let before = r.store.record(RecordKey::Control);
    *http.answer.lock().expect("lock") = Ok(with_window(200, "none left"));
    let out = r.handle_x("m-2", r.clock.now(), 0).await;
    assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
    assert_eq!(r.store.record(RecordKey::Control), before);
    // On a 429 the counter still moves; the stored window stays.
    *http.answer.lock().expect("lock") = Ok(with_window(429, "-3"));
    r.handle_x("m-3", r.clock.now(), 0).await;
    let c = r.control().await.value;
    assert_eq!(c.throttles.expect("counted").count, 2);
    assert_eq!(c.api_window, Some(w));
}

/// A failure after 429s still counts its attempt from where it was: the two bounds are apart.
#[tokio::test(start_paused = true)]
async fn a_failure_keeps_the_429_count_and_raises_the_attempt() {
    let (r, _) = setup(Ok(ApiResponse::status(503)), &[]);
    let mut ev = job_event(r#"{"path":"/x"}"#, "m-1", T0, 0);
    ev.origin.throttled = 12;
    ev.origin.attempt = 1;
    r.handle(WorkerEvent::Job(ev)).await;
    let q = r.sink.requeues();
    assert_eq!((q[0].origin.attempt, q[0].origin.throttled), (2, 12));
}

#[tokio::test(start_paused = true)]
async fn request_timeout_408_is_a_failure_and_other_statuses_are_final() {
    let (r, _) = setup(Ok(ApiResponse::status(408)), &[]);
    let out = r.handle_x("m-1", T0, 0).await;
    assert!(
        matches!(
            out,
            Outcome::Failed {
                status: Some(408),
                ..
            }
        ),
        "{out:?}"
    );

    // 401 and 403 are the credential's (tests/credential.rs), not final for the job.
    for status in [301, 400, 404, 409, 422] {
        let (r, _) = setup(Ok(ApiResponse::status(status)), &[]);
        let out = r.handle_x("m-1", T0, 0).await;
        let Outcome::DeadLettered { job_id, reason } = out else {
            panic!("{out:?}")
        };
        assert_eq!(
            (job_id.as_str(), reason.to_string()),
            ("m-1", format!("HTTP {status}"))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_that_cannot_be_sent_is_dead_lettered_without_a_call() {
    // Built by hand, as a bad orchestrator or a forged event might: never sent.
    let (r, http) = setup(Ok(ApiResponse::status(200)), &[]);
    let mut ev = job_event(r#"{"path":"/x"}"#, "m-1", T0, 0);
    ev.job = Job {
        path: "https://elsewhere.example/steal".into(),
        ..Job::default()
    };
    let out = r.handle(WorkerEvent::Job(ev)).await;
    assert!(
        matches!(&out, Outcome::DeadLettered { reason, .. } if reason.to_string().contains("relative")),
        "{out:?}"
    );
    assert!(http.calls().is_empty());

    let (r, _) = setup(Err(HttpError::Invalid("bad header value".into())), &[]);
    let out = r.handle_x("m-1", T0, 0).await;
    assert!(
        matches!(&out, Outcome::DeadLettered { reason, .. } if reason.to_string().contains("bad header value")),
        "{out:?}"
    );
    assert!(r.seen.called().is_empty(), "no call was made");
    // Dead-lettered, not done: a redrive (after a fix) gets it called.
    assert_eq!(r.store.job_status("m-1"), None);
}

#[tokio::test(start_paused = true)]
async fn a_health_check_that_times_out_is_unhealthy() {
    let (r, http) = setup(Err(HttpError::Timeout("read".into())), &[]);
    let out = r.handle(health(0, T0)).await;
    assert_eq!(
        out,
        Outcome::Unhealthy {
            epoch: 0,
            status: None
        }
    );
    assert_eq!(http.health_calls.lock().expect("lock").len(), 1);
    // Nothing to change on a closed circuit.
    assert_eq!(r.store.record(RecordKey::Circuit), None);
}

/// A health check is a call the API counts: it is made at the slot the orchestrator took for
/// it, never before, and not at all when delivered past its tolerance.
#[tokio::test(start_paused = true)]
async fn a_health_check_calls_at_its_slot_and_not_when_delivered_late() {
    let (r, http) = setup(Ok(ApiResponse::status(200)), &[]);
    let slot = T0.plus(ms(250));
    let on_time = WorkerEvent::HealthCheck(qo_core::HealthCheckEvent {
        epoch: 0,
        sent_at: T0,
        slot_at: Some(slot),
    });
    let out = r.handle(on_time).await;
    assert!(matches!(out, Outcome::Healthy { epoch: 0, .. }), "{out:?}");
    assert_eq!(*http.health_calls.lock().expect("lock"), vec![slot]);
    let late = WorkerEvent::HealthCheck(qo_core::HealthCheckEvent {
        epoch: 0,
        sent_at: T0,
        slot_at: Some(r.clock.now().minus(ms(6))),
    });
    let out = r.handle(late).await;
    assert_eq!(
        out,
        Outcome::HealthCheckMissed {
            epoch: 0,
            slot_off_ms: 6
        }
    );
    assert_eq!(http.health_calls.lock().expect("lock").len(), 1, "no call");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_check_counts_the_slot_wait_and_one_call() {
    let (r, _) = setup(Ok(ApiResponse::status(200)), &[]);
    // Call budget 2 s + 10 s; margin 2 s.
    let ev = job(r#"{"path":"/x"}"#, "m-1", T0.plus(ms(2_000)), 0);
    assert_eq!(
        r.worker
            .deadline_shortfall(T0.plus(ms(1_000)), &ev, DEADLINE_MARGIN),
        Some(ms(15_000))
    );
    assert_eq!(
        r.worker
            .deadline_shortfall(T0.plus(ms(16_000)), &ev, DEADLINE_MARGIN),
        None
    );
    assert_eq!(
        r.worker
            .deadline_shortfall(T0.plus(ms(10_000)), &health(0, T0), DEADLINE_MARGIN),
        Some(ms(4_000))
    );

    // A short deadline only warns: the event is still handled.
    let mut ctx = Context::default();
    ctx.deadline = T0.plus(ms(500)).as_millis();
    let out = handler(&r.worker, LambdaEvent::new(ev, ctx))
        .await
        .expect("handled");
    assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
}

/// The worker names its own function (Lambda's AWS_LAMBDA_FUNCTION_NAME) in the origin of a job
/// it re-queues after a 429 or a failure, so the orchestrator retries it through another
/// function of the pool; without a name the origin keeps the function it came with.
#[tokio::test(start_paused = true)]
async fn a_requeue_after_a_429_or_a_failure_names_this_function() {
    let throttled = ApiResponse {
        status: 429,
        retry_after: Some("1".into()),
        ..ApiResponse::default()
    };
    let named = [("AWS_LAMBDA_FUNCTION_NAME", "qo-worker-2")];
    for answer in [throttled, ApiResponse::status(503)] {
        let (r, _) = setup(Ok(answer.clone()), &named);
        let mut ev = job_event(r#"{"path":"/x"}"#, "m-1", T0, 0);
        ev.origin.function = Some("qo-worker-1".into());
        r.handle(WorkerEvent::Job(ev)).await;
        let q = r.sink.requeues();
        assert_eq!(q.len(), 1, "{answer:?}");
        assert_eq!(
            q[0].origin.function.as_deref(),
            Some("qo-worker-2"),
            "{answer:?}"
        );

        let (r, _) = setup(Ok(answer.clone()), &[]);
        let mut ev = job_event(r#"{"path":"/x"}"#, "m-1", T0, 0);
        ev.origin.function = Some("qo-worker-1".into());
        r.handle(WorkerEvent::Job(ev)).await;
        let q = r.sink.requeues();
        assert_eq!(
            q[0].origin.function.as_deref(),
            Some("qo-worker-1"),
            "{answer:?}"
        );
    }
}
