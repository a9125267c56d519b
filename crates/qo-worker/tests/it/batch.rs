//! Batch events under tokio's paused time: each job at its own slot, each fate its own; a
//! 429 holds back the siblings whose slots come before its back-off ends, and only those; a
//! duplicated batch calls nothing twice; a worker that wakes late for some slots gives those
//! back untried; a job whose fate cannot be recorded fails the event without losing the
//! others; a batch the invocation cannot cover hands its later jobs back untried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lambda_runtime::{Context, LambdaEvent};
use qo_core::{Clock, Timestamp, TokioClock, WorkerEvent};
use qo_core::{
    event::{BatchEvent, JobEvent},
    job::Job,
};
use qo_memory::{JobStatus, MemoryStore};
use qo_worker::{ApiResponse, HttpCall, HttpError, Outcome, Worker, WorkerError, handler};

use crate::support::{RecordingSink, config, job_event};

/// 2023-11-14T22:13:20Z.
const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An API in memory answering by path (200 for a path it does not know), recording each
/// call's path and time; its 429s carry `retry_after` when set.
struct PathHttp {
    clock: TokioClock,
    answers: HashMap<&'static str, u16>,
    calls: Mutex<Vec<(String, Timestamp)>>,
    retry_after: Mutex<Option<&'static str>>,
}

impl PathHttp {
    fn new(clock: TokioClock, answers: &[(&'static str, u16)]) -> Self {
        PathHttp {
            clock,
            answers: answers.iter().copied().collect(),
            calls: Mutex::default(),
            retry_after: Mutex::default(),
        }
    }

    fn calls(&self) -> Vec<(String, Timestamp)> {
        self.calls.lock().expect("lock").clone()
    }
}

#[async_trait]
impl HttpCall for PathHttp {
    async fn call(&self, job: &Job) -> Result<ApiResponse, HttpError> {
        self.calls
            .lock()
            .expect("lock")
            .push((job.path.clone(), self.clock.now()));
        let status = self.answers.get(job.path.as_str()).copied().unwrap_or(200);
        let mut answer = ApiResponse::status(status);
        if status == 429 {
            answer.retry_after = (*self.retry_after.lock().expect("lock")).map(str::to_string);
        }
        Ok(answer)
    }

    async fn health(&self) -> Result<ApiResponse, HttpError> {
        Ok(ApiResponse::status(200))
    }

    fn set_api_key(&self, _key: Option<&str>) -> Result<bool, WorkerError> {
        Ok(false)
    }
}

type TestWorker = Worker<MemoryStore, RecordingSink, TokioClock, Arc<PathHttp>>;

struct Rig {
    worker: TestWorker,
    http: Arc<PathHttp>,
    store: MemoryStore,
    sink: RecordingSink,
    clock: TokioClock,
}

fn rig(answers: &[(&'static str, u16)]) -> Rig {
    let clock = TokioClock::starting_at(T0);
    let http = Arc::new(PathHttp::new(clock.clone(), answers));
    let store = MemoryStore::new();
    let sink = RecordingSink::new(Arc::new(clock.clone()));
    let worker = Worker::new(
        config("http://api.test/v1", &[("CALL_TOLERANCE_MS", "5")]),
        Arc::clone(&http),
        store.clone(),
        sink.clone(),
        clock.clone(),
    );
    Rig {
        worker,
        http,
        store,
        sink,
        clock,
    }
}

/// A batch of jobs on `paths`, the n-th at `slots[n]` ms after T0 (a negative offset is a
/// slot in the past), message ids `m-<path>`.
fn batch(jobs: &[(&str, i64)]) -> WorkerEvent {
    WorkerEvent::Batch(BatchEvent {
        jobs: jobs
            .iter()
            .map(|(path, at)| {
                let slot = if *at >= 0 {
                    T0.plus(ms(at.unsigned_abs()))
                } else {
                    T0.minus(ms(at.unsigned_abs()))
                };
                job_event(
                    &format!(r#"{{"path":"{path}"}}"#),
                    &format!("m-{}", path.trim_start_matches('/')),
                    slot,
                    0,
                )
            })
            .collect::<Vec<JobEvent>>(),
    })
}

fn outcomes(out: Outcome) -> Vec<Outcome> {
    match out {
        Outcome::Batch { outcomes } => outcomes,
        other => panic!("not a batch outcome: {other:?}"),
    }
}

const MIXED: [(&str, u16); 3] = [("/busy", 429), ("/down", 503), ("/gone", 404)];

#[tokio::test(start_paused = true)]
async fn a_mixed_batch_calls_each_job_at_its_slot_and_settles_each_on_its_own() {
    let r = rig(&MIXED);
    // The 429 comes last: a sibling after it would be held back (see below).
    let ev = batch(&[("/ok", 100), ("/down", 200), ("/gone", 300), ("/busy", 400)]);
    let out = outcomes(r.worker.handle(ev).await.expect("handled"));
    assert_eq!(out.len(), 4);
    assert!(
        matches!(&out[0], Outcome::Succeeded { job_id, status: 200, recorded: true } if job_id == "m-ok"),
        "{:?}",
        out[0]
    );
    assert!(
        matches!(&out[1], Outcome::Failed { job_id, status: Some(503), requeued: true, .. } if job_id == "m-down"),
        "{:?}",
        out[1]
    );
    assert!(
        matches!(&out[2], Outcome::DeadLettered { job_id, .. } if job_id == "m-gone"),
        "{:?}",
        out[2]
    );
    assert!(
        matches!(&out[3], Outcome::Throttled { job_id, requeued: true, .. } if job_id == "m-busy"),
        "{:?}",
        out[3]
    );
    // Each called once, at its own slot.
    assert_eq!(
        r.http.calls(),
        vec![
            ("/ok".to_string(), T0.plus(ms(100))),
            ("/down".to_string(), T0.plus(ms(200))),
            ("/gone".to_string(), T0.plus(ms(300))),
            ("/busy".to_string(), T0.plus(ms(400))),
        ]
    );
    // The 429 goes back with its attempt unchanged, the 503 with its attempt raised.
    let q = r.sink.requeues();
    assert_eq!(q.len(), 2, "{q:?}");
    let busy = q
        .iter()
        .find(|q| q.body.contains("/busy"))
        .expect("429 re-queued");
    assert_eq!((busy.origin.attempt, busy.origin.throttled), (0, 1));
    let down = q
        .iter()
        .find(|q| q.body.contains("/down"))
        .expect("503 re-queued");
    assert_eq!((down.origin.attempt, down.origin.throttled), (1, 0));
    let dead = r.sink.dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].body.contains("/gone"), "{}", dead[0].body);
    assert!(matches!(
        r.store.job_status("m-ok"),
        Some(JobStatus::Done { .. })
    ));
    for id in ["m-busy", "m-down", "m-gone"] {
        assert_eq!(r.store.job_status(id), None, "{id}: claim dropped");
    }
    // The JSON result lists each job's outcome.
    let json = serde_json::to_value(Outcome::Batch { outcomes: out }).expect("json");
    let kinds: Vec<&str> = json["outcomes"]
        .as_array()
        .expect("array")
        .iter()
        .map(|o| o["outcome"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["succeeded", "failed", "dead_lettered", "throttled"]);
}

/// A batch whose jobs all come with `attempt` 1 and `throttled` 2, so that a count that
/// moved shows.
fn counted(ev: WorkerEvent) -> WorkerEvent {
    match ev {
        WorkerEvent::Batch(mut b) => {
            for j in &mut b.jobs {
                j.origin.attempt = 1;
                j.origin.throttled = 2;
            }
            WorkerEvent::Batch(b)
        }
        other => other,
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_holds_back_the_later_jobs_of_its_batch_untried_until_its_retry_after() {
    let r = rig(&[("/busy", 429)]);
    *r.http.retry_after.lock().expect("lock") = Some("2");
    let ev = counted(batch(&[
        ("/a", 100),
        ("/busy", 200),
        ("/c", 300),
        ("/d", 400),
    ]));
    let out = outcomes(r.worker.handle(ev).await.expect("handled"));
    assert!(
        matches!(&out[0], Outcome::Succeeded { job_id, status: 200, recorded: true } if job_id == "m-a"),
        "{:?}",
        out[0]
    );
    assert!(
        matches!(&out[1], Outcome::Throttled { job_id, retry_after_ms: 2000, requeued: true } if job_id == "m-busy"),
        "{:?}",
        out[1]
    );
    // Jobs 3 and 4 came 100 and 200 ms into the 2 s back-off: held back for what was left.
    assert_eq!(
        out[2],
        Outcome::HeldBack {
            job_id: "m-c".into(),
            backoff_ms: 1900,
            requeued: true,
        }
    );
    assert_eq!(
        out[3],
        Outcome::HeldBack {
            job_id: "m-d".into(),
            backoff_ms: 1800,
            requeued: true,
        }
    );
    // Not called: only the first two jobs reached the API.
    let paths: Vec<String> = r.http.calls().into_iter().map(|(p, _)| p).collect();
    assert_eq!(paths, ["/a", "/busy"]);
    // Re-queued for when the back-off ends, their counts unchanged (never called); the
    // throttled job's 429 count rose.
    let q = r.sink.requeues();
    assert_eq!(q.len(), 3, "{q:?}");
    let find = |path: &str| {
        q.iter()
            .find(|q| q.body.contains(path))
            .unwrap_or_else(|| panic!("{path} re-queued"))
    };
    for (path, at) in [("/c", 300), ("/d", 400)] {
        let held = find(path);
        assert_eq!(
            (held.origin.attempt, held.origin.throttled),
            (1, 2),
            "{path}"
        );
        // Delivered when the back-off (200 ms + 2 s) ends.
        assert_eq!(
            T0.plus(ms(at)).plus(held.delay),
            T0.plus(ms(2200)),
            "{path}"
        );
    }
    let busy = find("/busy");
    assert_eq!((busy.origin.attempt, busy.origin.throttled), (1, 3));
    assert_eq!(busy.delay, Duration::from_secs(2));
    for id in ["m-busy", "m-c", "m-d"] {
        assert_eq!(r.store.job_status(id), None, "{id}: claim dropped");
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_leaves_the_jobs_before_it_and_after_its_back_off_alone() {
    let r = rig(&[("/busy", 429)]);
    *r.http.retry_after.lock().expect("lock") = Some("2");
    // The 429 is listed first, but its slot comes last but one: the hold goes by slot.
    let ev = batch(&[("/busy", 300), ("/a", 100), ("/b", 200), ("/after", 2400)]);
    let out = outcomes(r.worker.handle(ev).await.expect("handled"));
    assert!(
        matches!(&out[0], Outcome::Throttled { job_id, .. } if job_id == "m-busy"),
        "{:?}",
        out[0]
    );
    for (o, id) in out[1..].iter().zip(["m-a", "m-b", "m-after"]) {
        assert!(
            matches!(o, Outcome::Succeeded { job_id, status: 200, recorded: true } if job_id == id),
            "{o:?}"
        );
    }
    assert_eq!(
        r.http.calls(),
        vec![
            ("/a".to_string(), T0.plus(ms(100))),
            ("/b".to_string(), T0.plus(ms(200))),
            ("/busy".to_string(), T0.plus(ms(300))),
            ("/after".to_string(), T0.plus(ms(2400))),
        ]
    );
    let q = r.sink.requeues();
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(q[0].body.contains("/busy"), "{}", q[0].body);
}

/// A back-off another invocation recorded after this batch was sent (its 429, with a
/// `Retry-After` of 150 s) holds back the batch's later slots: each batch reads the shared
/// back-off shortly before its slots, at most once per `BACKOFF_REREAD`.
#[tokio::test(start_paused = true)]
async fn a_back_off_recorded_elsewhere_holds_back_the_later_slots_of_a_batch() {
    use qo_core::Control;
    use qo_core::ports::{RecordKey, update_record};
    let r = rig(&[]);
    let ev = batch(&[("/a", 100), ("/b", 200), ("/c", 600), ("/d", 1100)]);
    let store = r.store.clone();
    let clock = r.clock.clone();
    let other = async move {
        clock.sleep_until(T0.plus(ms(300))).await;
        update_record::<Control, _>(&store, RecordKey::Control, |c| {
            let mut c = c.clone();
            c.backoff_until = Some(T0.plus(Duration::from_secs(150)));
            Some(c)
        })
        .await
        .expect("back-off recorded");
    };
    let (out, ()) = tokio::join!(r.worker.handle(ev), other);
    let out = outcomes(out.expect("handled"));
    let calls: Vec<String> = r.http.calls().into_iter().map(|c| c.0).collect();
    assert_eq!(calls, ["/a", "/b"], "no call through the back-off: {out:?}");
    for o in &out[2..] {
        assert!(
            matches!(o, Outcome::HeldBack { requeued: true, .. }),
            "{o:?}"
        );
    }
    let q = r.sink.requeues();
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(
        q.iter()
            .all(|q| (q.origin.attempt, q.origin.throttled) == (0, 0)),
        "{q:?}"
    );
    // Reads: the back-off at the third slot, then at the fourth (more than 250 ms later);
    // not before the first two, which the orchestrator's own read covered.
    assert_eq!(
        r.store.stats().loads,
        2 + 1,
        "two reads, and the write's read"
    );
}

/// A read of the shared back-off that the store answers too late (200 ms a request) is given
/// up just before the slot: the slot is called on time, not made late by the read.
#[tokio::test(start_paused = true)]
async fn a_slow_read_of_the_shared_back_off_never_makes_a_slot_late() {
    let r = rig(&[]);
    r.store.set_latency(ms(200));
    let ev = batch(&[("/a", 1000), ("/b", 1300), ("/c", 1600)]);
    let out = outcomes(r.worker.handle(ev).await.expect("handled"));
    assert!(
        out.iter().all(|o| matches!(o, Outcome::Succeeded { .. })),
        "{out:?}"
    );
    assert_eq!(
        r.http.calls(),
        vec![
            ("/a".to_string(), T0.plus(ms(1000))),
            ("/b".to_string(), T0.plus(ms(1300))),
            ("/c".to_string(), T0.plus(ms(1600))),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_duplicated_batch_calls_nothing_twice() {
    let r = rig(&[]);
    let ev = batch(&[("/a", 100), ("/b", 200), ("/c", 300)]);
    // Two copies at once, then a third after both.
    let (one, two) = tokio::join!(r.worker.handle(ev.clone()), r.worker.handle(ev.clone()));
    let three = r.worker.handle(ev).await.expect("handled");
    let mut calls: Vec<String> = r.http.calls().into_iter().map(|c| c.0).collect();
    calls.sort();
    assert_eq!(calls, ["/a", "/b", "/c"], "each job called once");
    let all: Vec<Outcome> = [one, two]
        .into_iter()
        .flat_map(|o| outcomes(o.expect("handled")))
        .collect();
    let succeeded = all
        .iter()
        .filter(|o| matches!(o, Outcome::Succeeded { .. }))
        .count();
    let in_progress = all
        .iter()
        .filter(|o| {
            matches!(
                o,
                Outcome::Duplicate {
                    in_progress: true,
                    requeued: true,
                    ..
                }
            )
        })
        .count();
    assert_eq!((succeeded, in_progress), (3, 3), "{all:?}");
    assert!(
        outcomes(three).iter().all(|o| matches!(
            o,
            Outcome::Duplicate {
                in_progress: false,
                requeued: false,
                ..
            }
        )),
        "the later copy finds every job done"
    );
}

/// A batch of ten jobs, `/j0` to `/j9`, with slots 100 ms apart from 100 ms ahead.
fn ten_jobs() -> WorkerEvent {
    let paths: Vec<String> = (0..10).map(|i| format!("/j{i}")).collect();
    let jobs: Vec<(&str, i64)> = paths
        .iter()
        .zip(0..)
        .map(|(p, i)| (p.as_str(), 100 * (i + 1)))
        .collect();
    batch(&jobs)
}

/// Each success of a batch is added to the batch's done record at once: ten claims and ten
/// additions to one item. A copy of one of its jobs in another event (SQS delivering a message
/// twice) finds it done through its claim, and calls nothing.
#[tokio::test(start_paused = true)]
async fn a_batch_marks_each_job_done_as_it_succeeds_and_a_later_copy_of_a_job_finds_it() {
    let r = rig(&[]);
    let out = outcomes(r.worker.handle(ten_jobs()).await.expect("handled"));
    assert!(
        out.iter()
            .all(|o| matches!(o, Outcome::Succeeded { recorded: true, .. })),
        "{out:?}"
    );
    assert_eq!(
        r.store.stats().write_units,
        20,
        "10 claims and 10 additions to the batch's done record"
    );
    assert_eq!(r.store.done_count(), 10);
    // The same job again, alone, from a second copy of its message.
    let copy = crate::support::job(r#"{"path":"/j3"}"#, "m-j3", r.clock.now(), 0);
    let again = r.worker.handle(copy).await.expect("handled");
    assert!(
        matches!(
            &again,
            Outcome::Duplicate { job_id, in_progress: false, requeued: false } if job_id == "m-j3"
        ),
        "{again:?}"
    );
    assert_eq!(r.http.calls().len(), 10, "nothing called twice");
}

/// A worker killed mid-batch (a timeout, an out-of-memory kill) leaves the jobs it already
/// called recorded done: a retry or a copy repeats at most the call it was in, never the
/// batch's earlier ones.
#[tokio::test(start_paused = true)]
async fn a_worker_killed_mid_batch_leaves_the_jobs_it_called_recorded() {
    let r = rig(&[]);
    // Killed 550 ms in: the slots at 100 to 500 ms were called, the others not yet.
    let killed =
        tokio::time::timeout(Duration::from_millis(550), r.worker.handle(ten_jobs())).await;
    assert!(killed.is_err(), "the run was cut short");
    assert_eq!(r.http.calls().len(), 5);
    assert_eq!(
        r.store.done_count(),
        5,
        "each call recorded as it succeeded"
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_wakes_late_gives_back_the_late_slots_and_calls_the_others_on_time() {
    let r = rig(&[]);
    // Delivered at T0: the first two slots are past their 5 ms tolerance.
    let ev = batch(&[
        ("/early", -800),
        ("/past", -6),
        ("/edge", -5),
        ("/later", 250),
    ]);
    let out = outcomes(r.worker.handle(ev).await.expect("handled"));
    assert_eq!(
        out[0],
        Outcome::Late {
            job_id: "m-early".into(),
            late_by_ms: 800,
            requeued: true
        }
    );
    assert_eq!(
        out[1],
        Outcome::Late {
            job_id: "m-past".into(),
            late_by_ms: 6,
            requeued: true
        }
    );
    assert!(matches!(out[2], Outcome::Succeeded { .. }), "{:?}", out[2]);
    assert!(matches!(out[3], Outcome::Succeeded { .. }), "{:?}", out[3]);
    assert_eq!(
        r.http.calls(),
        vec![
            ("/edge".to_string(), T0),
            ("/later".to_string(), T0.plus(ms(250))),
        ]
    );
    let q = r.sink.requeues();
    assert_eq!(q.len(), 2);
    assert!(
        q.iter()
            .all(|q| q.origin.attempt == 0 && q.delay == Duration::ZERO),
        "given back untried, at once, attempt kept: {q:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_job_whose_fate_cannot_be_recorded_fails_the_event_without_losing_the_others() {
    let r = rig(&MIXED);
    r.sink.poison(Some("/down"));
    let ev = batch(&[("/ok", 100), ("/down", 200), ("/gone", 300)]);
    let e = r.worker.handle(ev.clone()).await.unwrap_err();
    assert!(
        matches!(&e, WorkerError::Batch { failed: 1, jobs: 3, job_id, .. } if job_id == "m-down"),
        "{e:?}"
    );
    assert_eq!(e.kind(), "Batch");
    // The others were carried out to the end.
    assert!(matches!(
        r.store.job_status("m-ok"),
        Some(JobStatus::Done { .. })
    ));
    assert_eq!(r.sink.dead_letters().len(), 1);
    assert_eq!(r.http.calls().len(), 3);
    // Lambda retries the event a minute later: nothing is called again, the done job is
    // skipped, and the unrecorded one (and the dead-lettered one) go back untried.
    r.sink.poison(None);
    r.clock.sleep(Duration::from_secs(60)).await;
    let out = outcomes(r.worker.handle(ev).await.expect("the retry is recorded"));
    assert_eq!(r.http.calls().len(), 3, "the retry calls nothing");
    assert!(
        matches!(
            out[0],
            Outcome::Duplicate {
                in_progress: false,
                ..
            }
        ),
        "{:?}",
        out[0]
    );
    assert!(
        matches!(out[1], Outcome::Late { requeued: true, .. }),
        "{:?}",
        out[1]
    );
    assert!(
        matches!(out[2], Outcome::Late { requeued: true, .. }),
        "{:?}",
        out[2]
    );
    assert!(
        r.sink.requeues().iter().any(|q| q.body.contains("/down")),
        "the job whose re-queue failed is on the queue now"
    );
}

#[tokio::test(start_paused = true)]
async fn the_handler_gives_back_the_jobs_of_a_batch_its_remaining_time_cannot_cover() {
    let r = rig(&[]);
    // Call budget 12 s + margin 2 s: a deadline 15 s away covers slots up to 1 s ahead.
    let ev = batch(&[("/a", 100), ("/b", 1_000), ("/c", 1_500), ("/d", 3_000)]);
    let mut ctx = Context::default();
    ctx.deadline = T0.plus(ms(15_000)).as_millis();
    let out = outcomes(
        handler(&r.worker, LambdaEvent::new(ev, ctx))
            .await
            .expect("handled"),
    );
    assert!(matches!(out[0], Outcome::Succeeded { .. }), "{:?}", out[0]);
    assert!(matches!(out[1], Outcome::Succeeded { .. }), "{:?}", out[1]);
    assert_eq!(
        out[2],
        Outcome::OutOfTime {
            job_id: "m-c".into(),
            short_by_ms: 500,
            requeued: true
        }
    );
    assert_eq!(
        out[3],
        Outcome::OutOfTime {
            job_id: "m-d".into(),
            short_by_ms: 2_000,
            requeued: true
        }
    );
    assert_eq!(r.http.calls().len(), 2);
    assert_eq!(
        r.clock.now(),
        T0.plus(ms(1_000)),
        "did not wait for the uncovered slots"
    );
    let q = r.sink.requeues();
    assert_eq!(q.len(), 2);
    assert!(
        q.iter()
            .all(|q| q.origin.attempt == 0 && q.delay == Duration::ZERO)
    );
    assert_eq!(r.store.job_status("m-c"), None, "never claimed");
}
