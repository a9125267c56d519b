//! The worker with the real [`ApiClient`] against the simulator over loopback, and qo-memory's
//! store and queue.

use std::time::Duration;

use crate::support::{config, health, job, rig};
use lambda_runtime::{Context, LambdaEvent};
use qo_core::circuit::{Circuit, CircuitPhase, CircuitPolicy};
use qo_core::ports::{RecordKey, load_record, save_record};
use qo_core::{Clock, Observation, Timestamp, TokioClock, WorkerEvent};
use qo_memory::JobStatus;
use qo_sim::{SimConfig, SimServer};
use qo_worker::{ApiClient, Outcome, WorkerError, handler};

fn sim_config(quota: &str) -> SimConfig {
    SimConfig::new(quota.parse().expect("quota"))
}

async fn sim(quota: &str) -> SimServer {
    SimServer::start(sim_config(quota)).await.expect("sim")
}

fn client(cfg: &qo_worker::WorkerConfig) -> ApiClient {
    ApiClient::new(cfg, None).expect("client")
}

#[tokio::test]
async fn success_is_recorded_and_a_duplicate_does_not_call_again() {
    let sim = sim("100/s").await;
    let cfg = config(&sim.url(), &[]);
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    let ev = job(r#"{"path":"/items/1"}"#, "m-1", r.clock.now(), 0);

    let out = r.handle(ev.clone()).await;
    assert_eq!(
        out,
        Outcome::Succeeded {
            job_id: "m-1".into(),
            status: 200,
            recorded: true
        }
    );
    assert!(matches!(
        r.store.job_status("m-1"),
        Some(JobStatus::Done { .. })
    ));
    let called = r.seen.called();
    assert_eq!(called.len(), 1);
    match &called[0] {
        Observation::Called {
            job_id,
            status,
            wait,
            ..
        } => {
            assert_eq!(job_id, "m-1");
            assert_eq!(*status, Some(200));
            // Enqueued two seconds before the slot.
            assert!(wait.expect("wait") >= Duration::from_secs(2));
        }
        o => panic!("{o:?}"),
    }
    assert!(r.seen.all().contains(&Observation::Succeeded {
        job_id: "m-1".into()
    }));

    // Lambda delivers the same event again: no second call.
    let again = r.handle(ev).await;
    assert_eq!(
        again,
        Outcome::Duplicate {
            job_id: "m-1".into(),
            in_progress: false,
            requeued: false
        }
    );
    assert_eq!(sim.stats().calls, 1);
    assert_eq!(sim.stats().accepted, 1);
    assert!(r.sink.requeues().is_empty());
    assert!(r.seen.all().contains(&Observation::Duplicate {
        job_id: "m-1".into()
    }));
}

#[tokio::test]
async fn throttled_call_sets_the_backoff_and_requeues_after_retry_after() {
    let sim = sim("1/min").await;
    let cfg = config(&sim.url(), &[]);
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    let first = r
        .handle(job(r#"{"path":"/a"}"#, "m-1", r.clock.now(), 0))
        .await;
    assert!(matches!(first, Outcome::Succeeded { .. }), "{first:?}");

    let before = r.clock.now();
    let out = r
        .handle(job(
            r#"{"id":"job-2","method":"POST","path":"/b","body":{"n":2}}"#,
            "m-2",
            before,
            0,
        ))
        .await;
    let after = r.clock.now();
    let Outcome::Throttled {
        job_id,
        retry_after_ms,
        requeued,
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(job_id, "job-2");
    assert!(requeued);
    // The simulator's window has nearly a minute to run.
    assert!(
        (50_000..=60_000).contains(&retry_after_ms),
        "{retry_after_ms}"
    );
    let retry_after = Duration::from_millis(retry_after_ms);

    let control = r.control().await;
    let until = control.value.backoff_until.expect("backoff set");
    assert!(until >= before.plus(retry_after) && until <= after.plus(retry_after));
    assert_eq!(control.value.updated_by.as_deref(), Some("worker"));

    let requeues = r.sink.requeues();
    assert_eq!(requeues.len(), 1);
    assert_eq!(requeues[0].delay, retry_after);
    assert_eq!(
        requeues[0].origin.attempt, 0,
        "a 429 is the pacer's signal, not a failed attempt"
    );
    assert_eq!(requeues[0].origin.throttled, 1);
    assert_eq!(requeues[0].origin.message_id, "m-2");
    let body: serde_json::Value = serde_json::from_str(&requeues[0].body).expect("json");
    assert_eq!(
        body,
        serde_json::json!({"id":"job-2","method":"POST","path":"/b","body":{"n":2}})
    );
    assert_eq!(r.sink.queue.depths().retry_delayed, 1);
    // The claim was dropped, so the re-queued job may call later.
    assert_eq!(r.store.job_status("job-2"), None);
    assert!(r.seen.all().iter().any(|o| matches!(
        o,
        Observation::Throttled { job_id, retry_after: Some(d) }
            if job_id == "job-2" && *d == retry_after
    )));

    // A later back-off already recorded is kept, not shortened.
    let far = after.plus(Duration::from_secs(3_600));
    let c = r.control().await;
    let mut v = c.value.clone();
    v.backoff_until = Some(far);
    save_record(&r.store, RecordKey::Control, &v, c.version, None)
        .await
        .expect("save");
    let out = r
        .handle(job(r#"{"path":"/c"}"#, "m-3", r.clock.now(), 0))
        .await;
    assert!(matches!(out, Outcome::Throttled { .. }), "{out:?}");
    let control = r.control().await;
    assert_eq!(control.value.backoff_until, Some(far));
}

#[tokio::test]
async fn three_5xx_open_the_circuit_and_the_jobs_are_requeued() {
    let sim = sim("100/s").await;
    let cfg = config(&sim.url(), &[("RETRY_DELAY_S", "7")]);
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    let mut opened = Vec::new();
    for i in 0..3 {
        let out = r
            .handle(job(
                r#"{"path":"/_sim/status/503"}"#,
                &format!("m-{i}"),
                r.clock.now(),
                0,
            ))
            .await;
        let Outcome::Failed {
            status,
            opened_circuit,
            requeued,
            ..
        } = out
        else {
            panic!("{out:?}")
        };
        assert_eq!(status, Some(503));
        assert!(requeued);
        opened.push(opened_circuit);
    }
    assert_eq!(opened, vec![false, false, true]);
    let circuit = load_record::<Circuit>(&r.store, RecordKey::Circuit)
        .await
        .expect("circuit");
    assert_eq!(circuit.value.epoch, 1);
    assert_eq!(circuit.value.phase(), CircuitPhase::Open);
    assert!(r.seen.all().contains(&Observation::Circuit {
        phase: CircuitPhase::Open,
        epoch: 1
    }));
    let requeues = r.sink.requeues();
    assert_eq!(requeues.len(), 3);
    assert!(requeues.iter().all(|q| q.delay == Duration::from_secs(7)));
    for i in 0..3 {
        assert_eq!(r.store.job_status(&format!("m-{i}")), None, "claim dropped");
    }

    // A late failure from epoch 0 cannot touch the epoch-1 circuit.
    let version = circuit.version;
    let out = r
        .handle(job(
            r#"{"path":"/_sim/status/500"}"#,
            "m-late",
            r.clock.now(),
            0,
        ))
        .await;
    assert!(
        matches!(
            out,
            Outcome::Failed {
                opened_circuit: false,
                requeued: true,
                ..
            }
        ),
        "{out:?}"
    );
    let circuit = load_record::<Circuit>(&r.store, RecordKey::Circuit)
        .await
        .expect("circuit");
    assert_eq!(circuit.version, version);
}

#[tokio::test]
async fn other_4xx_is_dead_lettered_with_an_excerpt_and_not_called_again() {
    let sim = sim("100/s").await;
    let cfg = config(&sim.url(), &[("RESPONSE_EXCERPT_BYTES", "40")]);
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    let ev = job(r#"{"path":"/_sim/status/404"}"#, "m-404", r.clock.now(), 0);
    let out = r.handle(ev.clone()).await;
    let Outcome::DeadLettered { job_id, reason } = out else {
        panic!("{out:?}")
    };
    assert_eq!(reason.kind(), qo_core::ReasonKind::FinalStatus);
    let text = reason.to_string();
    assert_eq!(job_id, "m-404");
    // The simulator answers {"reason":"Not Found","simulated":true,"status":404} (in some
    // key order).
    assert!(text.starts_with("HTTP 404: {"), "{text}");
    assert!(text.contains("Not Found"), "{text}");
    assert!(text.len() <= "HTTP 404: ".len() + 40, "{text}");
    let dead = r.sink.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, reason);
    assert_eq!(dead[0].origin.message_id, "m-404");
    assert_eq!(
        dead[0].body,
        r#"{"method":"GET","path":"/_sim/status/404"}"#
    );
    assert!(r.sink.requeues().is_empty());
    // Not marked done: a redrive must get it called again (tests/redrive.rs).
    assert_eq!(r.store.job_status("m-404"), None);
    assert_eq!(r.seen.called().len(), 1);
}

#[tokio::test]
async fn a_read_timeout_is_a_failure() {
    let mut sc = sim_config("100/s");
    sc.latency = Duration::from_millis(1_500)..=Duration::from_millis(1_500);
    let sim = SimServer::start(sc).await.expect("sim");
    let cfg = config(
        &sim.url(),
        &[
            ("API_READ_TIMEOUT_MS", "200"),
            ("API_CONNECT_TIMEOUT_MS", "200"),
        ],
    );
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    let start = std::time::Instant::now();
    let out = r
        .handle(job(r#"{"path":"/slow"}"#, "m-slow", r.clock.now(), 0))
        .await;
    assert!(
        start.elapsed() < Duration::from_millis(1_400),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(
            out,
            Outcome::Failed {
                status: None,
                opened_circuit: false,
                requeued: true,
                ..
            }
        ),
        "{out:?}"
    );
    assert!(matches!(
        r.seen.called()[0],
        Observation::Called { status: None, .. }
    ));
    let circuit = load_record::<Circuit>(&r.store, RecordKey::Circuit)
        .await
        .expect("circuit");
    assert!(
        matches!(
            &circuit.value.state,
            qo_core::CircuitState::Closed { failures, .. } if failures.len() == 1
        ),
        "{circuit:?}"
    );
    assert_eq!(r.sink.requeues().len(), 1);
}

#[tokio::test]
async fn a_refused_connection_is_a_failure() {
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let cfg = config(&format!("http://127.0.0.1:{port}"), &[]);
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    let out = r.handle_x("m-x", r.clock.now(), 0).await;
    assert!(
        matches!(
            out,
            Outcome::Failed {
                status: None,
                requeued: true,
                ..
            }
        ),
        "{out:?}"
    );
}

#[tokio::test]
async fn job_paths_are_joined_under_the_base_path() {
    let sim = sim("100/s").await;
    let cfg = config(&format!("{}/api/v1", sim.url()), &[]);
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    let out = r
        .handle(job(
            r#"{"path":"/items?x=1","query":{"q":"a b"}}"#,
            "m-1",
            r.clock.now(),
            0,
        ))
        .await;
    assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
    let records = sim.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].path, "/api/v1/items");

    // A path that would climb out of the base path is dead-lettered, never sent. The
    // orchestrator refuses it before its slot (`Job::parse`); one that reaches the worker anyway
    // (an event of an older orchestrator) is refused by the same rule.
    let mut ev = crate::support::job_event(r#"{"path":"/x"}"#, "m-2", r.clock.now(), 0);
    ev.job.path = "/%2e%2e/%2e%2e/admin".into();
    let out = r.handle(WorkerEvent::Job(ev)).await;
    let Outcome::DeadLettered { reason, .. } = out else {
        panic!("{out:?}")
    };
    let reason = reason.to_string();
    assert!(reason.contains("`..` segment"), "{reason}");
    assert_eq!(sim.records().len(), 1);
}

/// Records the body length and the truncation mark of each answer the user's code sees.
#[derive(Default)]
struct Reads(std::sync::Mutex<Vec<(usize, bool)>>);

#[async_trait::async_trait]
impl qo_worker::AroundCall for Reads {
    async fn answered(
        &self,
        _job: &qo_core::Job,
        answer: qo_worker::Answer<'_>,
    ) -> Result<qo_worker::AfterCall, qo_worker::HandlerError> {
        let seen = (answer.body.len(), answer.truncated);
        self.0.lock().expect("lock").push(seen);
        Ok(qo_worker::AfterCall::Keep)
    }
}

/// The user's code sees whole answers even on a stack without result destinations, where the
/// stock worker reads only an excerpt: the client reads them whole for it.
#[tokio::test]
async fn the_user_s_code_reads_whole_answers_without_result_destinations() {
    let sim = sim("100/s").await;
    let cfg = config(&sim.url(), &[]);
    assert!(cfg.destinations.is_empty());
    let long = format!(
        r#"{{"path":"/items","query":{{"q":"{}"}}}}"#,
        "x".repeat(3_000)
    );
    let mut seen = Vec::new();
    for whole in [false, true] {
        let reads = std::sync::Arc::new(Reads::default());
        let client = if whole {
            client(&cfg).reading_whole_answers(&cfg)
        } else {
            client(&cfg)
        };
        let mut r = rig(cfg.clone(), client, TokioClock::system());
        r.worker = r.worker.with_around(reads.clone());
        let out = r.handle(job(&long, "m-1", r.clock.now(), 0)).await;
        assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
        seen.push(reads.0.lock().expect("lock")[0]);
    }
    let (excerpt, whole) = (seen[0], seen[1]);
    assert!(excerpt.0 < 1_024, "an excerpt only: {excerpt:?}");
    assert!(whole.0 > 3_000 && !whole.1, "the whole answer: {whole:?}");
}

/// With `ALLOWED_METHODS` and `ALLOWED_PATH_PREFIXES` set, a job asking for anything else is
/// dead-lettered with the reason and never sent; the orchestrator refuses it before its slot,
/// and an event that reaches the worker anyway meets the same lists.
#[tokio::test]
async fn a_job_outside_the_allow_list_is_dead_lettered_never_sent() {
    let sim = sim("100/s").await;
    let allow = [
        ("ALLOWED_METHODS", "GET"),
        ("ALLOWED_PATH_PREFIXES", "/items"),
    ];
    let cfg = config(&sim.url(), &allow);
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    let now = r.clock.now();
    let out = r.handle(job(r#"{"path":"/items/7"}"#, "m-1", now, 0)).await;
    assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
    for (body, why) in [
        (r#"{"method":"DELETE","path":"/items/7"}"#, "method DELETE"),
        (
            r#"{"path":"/admin/users"}"#,
            "under none of the stack's allowed",
        ),
        (
            r#"{"path":"/items-private"}"#,
            "under none of the stack's allowed",
        ),
    ] {
        let out = r.handle(job(body, "m-2", r.clock.now(), 0)).await;
        let Outcome::DeadLettered { reason, .. } = out else {
            panic!("{body}: {out:?}")
        };
        assert!(reason.to_string().contains(why), "{body}: {reason}");
    }
    assert_eq!(
        sim.records().len(),
        1,
        "only the allowed job reached the API"
    );
}

#[tokio::test]
async fn the_api_key_is_sent_in_the_configured_header() {
    let mut sc = sim_config("100/s");
    sc.api_key = Some("k-123".into());
    let sim = SimServer::start(sc).await.expect("sim");
    let cfg = config(&sim.url(), &[]);
    let good = rig(
        cfg.clone(),
        ApiClient::new(&cfg, Some("k-123")).expect("client"),
        TokioClock::system(),
    );
    let out = good.handle_x("m-1", good.clock.now(), 0).await;
    assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
    let bad = rig(
        cfg.clone(),
        ApiClient::new(&cfg, Some("wrong")).expect("client"),
        TokioClock::system(),
    );
    let out = bad.handle_x("m-2", bad.clock.now(), 0).await;
    // The credential, not the job: re-queued untried, nothing dead-lettered.
    assert!(
        matches!(
            &out,
            Outcome::CredentialRejected {
                status: 401,
                requeued: true,
                ..
            }
        ),
        "{out:?}"
    );
    assert!(bad.sink.dead_letters().is_empty());
    assert_eq!(bad.sink.requeues()[0].origin.attempt, 0);
}

async fn open_circuit(store: &qo_memory::MemoryStore, opens: u32) -> Circuit {
    let policy = CircuitPolicy::default();
    let mut c = Circuit::closed_at(Timestamp::from_secs(1));
    for _ in 0..opens {
        let e = c.epoch;
        for s in 0..3 {
            c = c
                .record_failure(e, Timestamp::from_secs(10 + s), &policy)
                .expect("failure");
        }
        if opens > 1 && c.epoch < u64::from(opens) {
            c = c
                .record_probe_result(c.epoch, true, Timestamp::from_secs(20), &policy)
                .expect("closes");
        }
    }
    save_record(store, RecordKey::Circuit, &c, 0, None)
        .await
        .expect("save");
    c
}

#[tokio::test]
async fn a_healthy_check_closes_the_circuit_at_its_epoch_only() {
    let sim = sim("100/s").await;
    let cfg = config(&sim.url(), &[]);
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    let c = open_circuit(&r.store, 1).await;
    assert_eq!((c.epoch, c.phase()), (1, CircuitPhase::Open));

    let out = r.handle(health(1, r.clock.now())).await;
    assert_eq!(
        out,
        Outcome::Healthy {
            epoch: 1,
            closed: true
        }
    );
    let now = load_record::<Circuit>(&r.store, RecordKey::Circuit)
        .await
        .expect("circuit");
    assert!(now.value.is_closed());
    assert_eq!(now.value.epoch, 1);
    assert_eq!(sim.stats().health_checks, 1);
    assert!(r.seen.all().contains(&Observation::HealthCheck {
        epoch: 1,
        healthy: true
    }));
    assert!(r.seen.all().contains(&Observation::Circuit {
        phase: CircuitPhase::Closed,
        epoch: 1
    }));
}

#[tokio::test]
async fn a_stale_health_check_does_not_close_a_newer_opening() {
    let sim = sim("100/s").await;
    let cfg = config(&sim.url(), &[]);
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    let c = open_circuit(&r.store, 2).await;
    assert_eq!((c.epoch, c.phase()), (2, CircuitPhase::Open));
    let before = load_record::<Circuit>(&r.store, RecordKey::Circuit)
        .await
        .expect("circuit");

    let out = r.handle(health(1, r.clock.now())).await;
    assert_eq!(
        out,
        Outcome::Healthy {
            epoch: 1,
            closed: false
        }
    );
    let after = load_record::<Circuit>(&r.store, RecordKey::Circuit)
        .await
        .expect("circuit");
    assert_eq!(after, before);
}

#[tokio::test]
async fn an_unhealthy_check_keeps_the_circuit_open() {
    let mut sc = sim_config("100/s");
    sc.outage = Some(Duration::ZERO..Duration::from_secs(3_600));
    let sim = SimServer::start(sc).await.expect("sim");
    let cfg = config(&sim.url(), &[]);
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    open_circuit(&r.store, 1).await;
    let out = r.handle(health(1, r.clock.now())).await;
    assert_eq!(
        out,
        Outcome::Unhealthy {
            epoch: 1,
            status: Some(503)
        }
    );
    let c = load_record::<Circuit>(&r.store, RecordKey::Circuit)
        .await
        .expect("circuit");
    assert_eq!((c.value.epoch, c.value.phase()), (1, CircuitPhase::Open));
    // The next health check is scheduled from this answer.
    let due = c.value.probe_due(&CircuitPolicy::default()).expect("due");
    assert!(due > r.clock.now());
}

#[tokio::test]
async fn a_failing_requeue_fails_the_event_and_frees_the_claim() {
    let sim = sim("100/s").await;
    let cfg = config(&sim.url(), &[]);
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    *r.sink.fail.lock().expect("lock") = true;
    let ev = job(r#"{"path":"/_sim/status/502"}"#, "m-1", r.clock.now(), 0);
    let e = r.worker.handle(ev.clone()).await.unwrap_err();
    assert!(matches!(e, WorkerError::Queue(_)), "{e:?}");
    assert!(e.to_string().contains("injected queue failure"), "{e}");
    // Lambda retries the event: it may claim the job again.
    assert_eq!(r.store.job_status("m-1"), None);
    *r.sink.fail.lock().expect("lock") = false;
    let retry = r.handle(ev).await;
    assert!(
        matches!(
            retry,
            Outcome::Late { requeued: true, .. } | Outcome::Failed { requeued: true, .. }
        ),
        "{retry:?}"
    );
    let diag: lambda_runtime::Diagnostic = e.into();
    assert_eq!(diag.error_type, "WorkerError::Queue");
    assert!(diag.error_message.contains("injected queue failure"));
}

#[tokio::test]
async fn the_last_attempt_is_dead_lettered() {
    let sim = sim("100/s").await;
    let cfg = config(&sim.url(), &[("MAX_ATTEMPTS", "3")]);
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    let WorkerEvent::Job(mut ev) = job(r#"{"path":"/_sim/status/500"}"#, "m-1", r.clock.now(), 0)
    else {
        unreachable!()
    };
    ev.origin.attempt = 2;
    let out = r.handle(WorkerEvent::Job(ev)).await;
    assert!(
        matches!(
            out,
            Outcome::Failed {
                requeued: false,
                ..
            }
        ),
        "{out:?}"
    );
    let dead = r.sink.dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .reason
            .starts_with("gave up after 3 attempts; last: HTTP 500"),
        "{}",
        dead[0].reason
    );
    assert!(r.sink.requeues().is_empty());
}

#[tokio::test]
async fn the_lambda_handler_runs_an_event_as_lambda_delivers_it() {
    let sim = sim("100/s").await;
    let cfg = config(&sim.url(), &[]);
    let r = rig(cfg.clone(), client(&cfg), TokioClock::system());
    let now = r.clock.now().as_micros();
    // The payload as the orchestrator serializes it.
    let payload = format!(
        r#"{{"kind":"job","job":{{"path":"/items/9"}},"origin":{{"message_id":"m-9"}},
            "slot_at":{now},"epoch":0,"dispatched_at":{now}}}"#
    );
    let event: WorkerEvent = serde_json::from_str(&payload).expect("event");
    let out = handler(&r.worker, LambdaEvent::new(event, Context::default()))
        .await
        .expect("handled");
    let json = serde_json::to_value(&out).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"outcome":"succeeded","job_id":"m-9","status":200,"recorded":true})
    );
    assert_eq!(sim.stats().accepted, 1);
}
