//! The dispatch loop over the in-memory adapters, on tokio's paused clock: a minute of
//! dispatching runs in milliseconds, deterministically.

use std::time::Duration;

use crate::support::{Harness, Verdict, config, max_in_window, open_circuit, start};
use qo_core::ports::{LeaseStore, RecordKey, load_record, save_record, update_record};
use qo_core::{Circuit, Clock, Control};
use qo_memory::InvokerOptions;
use qo_orchestrator::StopReason;

#[tokio::test(start_paused = true)]
async fn drains_a_backlog_at_the_quota_and_no_faster() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(400);
    let report = h.run_for(&config("20/s"), Duration::from_secs(120)).await;
    assert_eq!(report.dispatched, 400);
    assert_eq!(report.stopped, StopReason::Idle);
    let calls = h.calls();
    assert_eq!(calls.len(), 400);
    // Never more than 20 in any second...
    assert!(max_in_window(&calls, Duration::from_secs(1)) <= 20);
    // ...and the quota is used: at least 99% of 20/s between the first and the last call.
    let span = calls[399].since(calls[0]).as_secs_f64();
    let rate = 399.0 / span;
    assert!(rate >= 0.99 * 20.0, "rate {rate:.3}/s");
    // The run's own measure agrees.
    let u = report.quota_utilization.expect("utilization");
    assert!((0.99..=1.0).contains(&u), "utilization {u}");
    // Every message was deleted once its invoke was accepted.
    assert!(h.queue.is_drained(), "{:?}", h.queue.depths());
    // Every event reached the worker before its slot (the long poll after the last one has
    // its own test below).
    let late = h.late.lock().expect("late").clone();
    assert!(late.is_empty(), "late deliveries: {late:?}");
}

#[tokio::test(start_paused = true)]
async fn a_lone_job_reaches_the_worker_before_its_slot_while_the_loop_long_polls() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(1);
    let mut cfg = config("20/s");
    // Nothing else wakes the loop: after the dispatch it long-polls the empty queue for a
    // whole second, and the invoke in flight must keep going meanwhile.
    cfg.refresh_interval = Duration::from_secs(5);
    cfg.persist_interval = Duration::from_secs(5);
    let report = h.run_for(&cfg, Duration::from_secs(20)).await;
    assert_eq!(report.dispatched, 1);
    assert_eq!(h.calls().len(), 1);
    let late = h.late.lock().expect("late").clone();
    assert!(late.is_empty(), "late deliveries: {late:?}");
}

#[tokio::test(start_paused = true)]
async fn utilization_counts_only_the_time_work_waited() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(100);
    // A second backlog arrives after 20 s with nothing to do.
    let later = {
        let queue = h.queue.clone();
        let clock = h.clock.clone();
        tokio::spawn(async move {
            clock
                .sleep_until(start().plus(Duration::from_secs(25)))
                .await;
            for i in 0..100 {
                queue.send(format!(r#"{{"path":"/later/{i}"}}"#));
            }
        })
    };
    let mut cfg = config("20/s");
    cfg.idle_exit = Some(Duration::from_secs(30));
    let report = h.run_for(&cfg, Duration::from_secs(120)).await;
    later.await.expect("sender");
    assert_eq!(report.dispatched, 200);
    // Calls span 30 s for 200 calls (10 s of work): the idle 20 s does not count, so the
    // run used the pace it had, less the call tolerance that widens each window (5 ms a
    // second at 20/s: 0.995).
    let calls = h.calls();
    assert!(calls[199].since(calls[0]) > Duration::from_secs(25));
    let u = report.quota_utilization.expect("utilization");
    assert!((0.99..=1.0).contains(&u), "utilization {u}");
}

#[tokio::test(start_paused = true)]
async fn restarts_continue_the_pace_without_a_burst() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(300);
    let mut cfg = config("10/s,200/min");
    cfg.idle_exit = None;
    let mut tokens = Vec::new();
    // Ten runs of 4 s each, back to back, each hydrating from the store.
    for _ in 0..10 {
        let r = h.run_for(&cfg, Duration::from_secs(4)).await;
        tokens.push(r.lease_token);
    }
    let calls = h.calls();
    assert!(max_in_window(&calls, Duration::from_secs(1)) <= 10);
    assert!(max_in_window(&calls, Duration::from_secs(60)) <= 200);
    assert!(
        tokens.windows(2).all(|w| w[1] > w[0]),
        "fencing tokens grow: {tokens:?}"
    );
    // 10 runs x (4 s - 1 s margin) at 200/min (the tighter tier): about 100 calls; the run
    // boundaries cost little.
    assert!(calls.len() >= 95, "{} calls", calls.len());
}

#[tokio::test(start_paused = true)]
async fn bad_messages_are_dead_lettered_with_the_reason() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.queue.send("not json");
    h.queue
        .send(r#"{"path":"https://elsewhere.example/steal"}"#);
    h.enqueue(3);
    let report = h.run_for(&config("10/s"), Duration::from_secs(30)).await;
    assert_eq!(report.dead_lettered, 2);
    assert_eq!(report.dispatched, 3);
    let dead = h.queue.dead_letters();
    assert!(dead.iter().any(|d| d.reason.contains("malformed job")));
    assert!(
        dead.iter()
            .any(|d| d.reason.contains("relative to the API base URL"))
    );
}

/// A job whose `reply_to` names no result destination of the stack is refused before it
/// takes a slot; one naming a destination is dispatched.
#[tokio::test(start_paused = true)]
async fn a_job_naming_an_unknown_destination_is_dead_lettered_before_its_slot() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.queue.send(r#"{"path":"/a","reply_to":"payments"}"#);
    h.queue.send(r#"{"path":"/b","reply_to":"orders"}"#);
    // Refused for its path, but its destination is known: its failure result goes there.
    h.queue
        .send(r#"{"id":"bad-1","path":"/../admin","reply_to":"orders"}"#);
    let mut c = config("10/s");
    c.destinations =
        qo_core::result::Destinations::parse("arn:aws:sqs:us-east-1:123456789012:orders", "")
            .expect("destinations");
    let report = h.run_for(&c, Duration::from_secs(10)).await;
    assert_eq!((report.dead_lettered, report.dispatched), (2, 1));
    // Whoever waits on `orders` hears of the refused job; nobody can on `payments`.
    assert_eq!(*h.redelivered.lock().expect("lock"), ["bad-1"]);
    let dead = h.queue.dead_letters();
    assert!(
        dead[0]
            .reason
            .contains("`payments` is not one of the stack's result destinations"),
        "{}",
        dead[0].reason
    );
    assert_eq!(
        h.calls().len(),
        1,
        "only the known destination's job was called"
    );
}

/// A job asking for a method or a path the stack's allow-list leaves out is dead-lettered
/// with the reason before it takes a slot; an allowed one is dispatched and called.
#[tokio::test(start_paused = true)]
async fn a_job_outside_the_allow_list_is_dead_lettered_before_its_slot() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.queue
        .send(r#"{"method":"POST","path":"/v1/customers/1"}"#);
    h.queue.send(r#"{"path":"/v1/admin/keys"}"#);
    h.queue.send(r#"{"path":"/v1/customers/2"}"#);
    let mut c = config("10/s");
    c.allow = qo_core::allow::AllowList::parse("GET", "/v1/customers/").expect("allow-list");
    let report = h.run_for(&c, Duration::from_secs(10)).await;
    assert_eq!((report.dead_lettered, report.dispatched), (2, 1));
    let reasons: Vec<String> = h
        .queue
        .dead_letters()
        .into_iter()
        .map(|d| d.reason.to_string())
        .collect();
    assert!(
        reasons[0].contains("method POST is not one the stack allows"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("`/v1/admin/keys` is under none"),
        "{reasons:?}"
    );
    assert_eq!(h.calls().len(), 1, "only the allowed job was called");
}

/// A result the worker dead-lettered (its destination kept refusing), brought back by `qo
/// redrive`, is handed to the worker to deliver again: no slot, no call, and its message is
/// deleted once Lambda accepts the event.
#[tokio::test(start_paused = true)]
async fn a_redriven_result_is_handed_back_to_the_worker_without_a_slot() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.queue.send(
        r#"{"result_id":"c-1:succeeded","job_id":"c-1","destination":"orders",
            "outcome":"succeeded","status":200,"times":{},"attempts":0,"throttled":0}"#,
    );
    h.enqueue(2);
    let report = h.run_for(&config("10/s"), Duration::from_secs(10)).await;
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    assert_eq!(report.dispatched, 2, "only the jobs take slots");
    assert_eq!(h.calls().len(), 2);
    assert_eq!(*h.redelivered.lock().expect("lock"), ["c-1"]);
    assert!(h.queue.is_drained(), "{:?}", h.queue.depths());
}

#[tokio::test(start_paused = true)]
async fn nothing_is_lost_when_invokes_and_calls_fail() {
    let opts = InvokerOptions {
        fail_rate: 0.2,
        seed: 7,
        ..InvokerOptions::template()
    };
    let h = Harness::new(
        |n| {
            if n % 3 == 0 {
                Verdict::Requeue
            } else {
                Verdict::Succeed
            }
        },
        opts,
    );
    h.enqueue(100);
    let mut cfg = config("50/s");
    cfg.idle_exit = Some(Duration::from_secs(5));
    for _ in 0..6 {
        h.run_for(&cfg, Duration::from_secs(20)).await;
        if h.queue.is_drained() {
            break;
        }
    }
    // Every job ended: the queue is empty, nothing is in flight, nothing was dead-lettered.
    assert!(h.queue.is_drained(), "{:?}", h.queue.depths());
    assert!(h.queue.dead_letters().is_empty());
    let stats = h.invoker.stats();
    assert!(stats.failed > 0, "faults were injected: {stats:?}");
    // Each job succeeded once; re-queued ones were called again.
    let calls = h.calls().len();
    assert!((100..200).contains(&calls), "{calls} calls");
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_stops_dispatch_and_a_health_check_closes_it() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(50);
    let now = h.clock.now();
    let c = open_circuit(&h.store, now).await;
    let report = h.run_for(&config("10/s"), Duration::from_secs(30)).await;
    // One health check after 5 s; the (fake) worker closes the circuit; the backlog drains.
    assert_eq!(report.health_checks, 1);
    assert_eq!(h.health.lock().expect("h").as_slice(), &[c.epoch]);
    assert_eq!(report.dispatched, 50);
    let calls = h.calls();
    assert!(
        calls[0] >= now.plus(Duration::from_secs(5)),
        "no call before the circuit closed"
    );
    // Slow start: the first calls after closing are spaced wider than 100 ms.
    assert!(calls[1].since(calls[0]) > Duration::from_millis(500));
    let circuit = load_record::<Circuit>(&h.store, RecordKey::Circuit)
        .await
        .expect("c")
        .value;
    assert!(circuit.is_closed());
}

#[tokio::test(start_paused = true)]
async fn pause_holds_dispatch_until_resumed() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(20);
    let paused = Control {
        paused: true,
        ..Control::default()
    };
    save_record(&h.store, RecordKey::Control, &paused, 0, None)
        .await
        .expect("save");
    let store = h.store.clone();
    let clock = h.clock.clone();
    let resume_at = clock.now().plus(Duration::from_secs(10));
    tokio::spawn(async move {
        clock.sleep_until(resume_at).await;
        update_record::<Control, _>(&store, RecordKey::Control, |c| {
            Some(Control {
                paused: false,
                ..c.clone()
            })
        })
        .await
        .expect("resume");
    });
    let report = h.run_for(&config("10/s"), Duration::from_secs(40)).await;
    assert_eq!(report.dispatched, 20);
    let calls = h.calls();
    assert!(calls[0] >= resume_at, "a call happened while paused");
    // Applied within a second of the resume.
    assert!(
        calls[0] <= resume_at.plus(Duration::from_millis(1_500)),
        "{}",
        calls[0].since(resume_at).as_millis()
    );
}

#[tokio::test(start_paused = true)]
async fn only_the_lease_holder_dispatches() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(5);
    let other = h
        .store
        .take("someone-else", h.clock.now(), Duration::from_secs(30))
        .await
        .expect("take");
    let report = h.run_for(&config("10/s"), Duration::from_secs(10)).await;
    assert!(
        matches!(report.stopped, StopReason::LeaseHeld { ref owner, .. } if owner == "someone-else")
    );
    assert_eq!(report.dispatched, 0);
    assert!(h.calls().is_empty());
    drop(other);
}

#[tokio::test(start_paused = true)]
async fn a_day_budget_stops_the_run_until_the_reset() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(30);
    let report = h
        .run_for(&config("10/s,12/day@calendar"), Duration::from_secs(60))
        .await;
    assert_eq!(report.dispatched, 12);
    assert!(
        matches!(report.stopped, StopReason::Exhausted { .. }),
        "{:?}",
        report.stopped
    );
    // The rest wait, invisible until the reset, on the queue: not lost.
    assert_eq!(h.queue.depths().pending(), 18);
}

#[tokio::test(start_paused = true)]
async fn a_run_that_reaches_its_deadline_asks_for_the_next_one_at_once() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(100);
    let busy = h.run_for(&config("5/s"), Duration::from_secs(10)).await;
    assert_eq!(busy.stopped, StopReason::Deadline);
    assert!(busy.continue_now, "work is waiting: {busy:?}");
    let rest = h.run_for(&config("50/s"), Duration::from_secs(60)).await;
    assert_eq!(rest.stopped, StopReason::Idle);
    assert!(!rest.continue_now, "an idle run leaves it to the schedule");
    // Paused at the deadline: the schedule's next tick is soon enough.
    h.enqueue(5);
    let paused = Control {
        paused: true,
        ..Control::default()
    };
    update_record::<Control, _>(&h.store, RecordKey::Control, |_| Some(paused.clone()))
        .await
        .expect("pause");
    let r = h.run_for(&config("5/s"), Duration::from_secs(10)).await;
    assert_eq!(r.stopped, StopReason::Deadline);
    assert!(!r.continue_now);
}

#[tokio::test(start_paused = true)]
async fn invokes_in_flight_keep_moving_while_the_loop_waits_on_the_state_store() {
    // A slow table: every read and write takes 120 ms. The loop re-reads the circuit and the
    // controls every second and saves usage every two; an invoke it does not poll meanwhile
    // reaches the worker after its slot.
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.store.set_latency(Duration::from_millis(120));
    h.enqueue(200);
    let report = h.run_for(&config("20/s"), Duration::from_secs(60)).await;
    assert_eq!(report.dispatched, 200);
    let late = h.late.lock().expect("late").clone();
    assert!(late.is_empty(), "{} late deliveries: {late:?}", late.len());
}

#[tokio::test(start_paused = true)]
async fn the_worker_concurrency_cap_bounds_the_events_in_progress() {
    // An unreserved worker with a cap of 3: an event counts from its dispatch until a second
    // after its slot, so at most 3 slots fall in any second and a little more. One job per
    // event, so that events are calls (a batch counts once, until its last slot: see
    // `scale`).
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(30);
    let mut c = config("20/s");
    c.worker_concurrency_cap = Some(3);
    c.batch_max_jobs = 1;
    let report = h.run_for(&c, Duration::from_secs(60)).await;
    assert_eq!(report.dispatched, 30);
    let calls = h.calls();
    assert!(max_in_window(&calls, Duration::from_secs(1)) <= 3);
    // And the cap, not the quota (20/s), set the pace: under 3 a second.
    let rate = 29.0 / calls[29].since(calls[0]).as_secs_f64();
    assert!((2.0..3.0).contains(&rate), "rate {rate:.2}/s");
}

/// A backlog of `jobs` at 10/s whose 50th and 51st calls are re-queued (to the retry queue,
/// seen a second later), with the retry queue polled at most every `interval`: every job
/// succeeds once, and the run ends idle with the queues drained. Returns the receives of the
/// job queue and of the retry queue.
async fn retry_polls(interval: Duration, jobs: usize) -> (u64, u64) {
    let h = Harness::new(
        |n| {
            if n == 50 || n == 51 {
                Verdict::Requeue
            } else {
                Verdict::Succeed
            }
        },
        InvokerOptions::template(),
    );
    h.enqueue(jobs);
    let mut c = config("10/s");
    c.retry_poll_interval = interval;
    let report = h.run_for(&c, Duration::from_secs(120)).await;
    assert_eq!(report.stopped, StopReason::Idle);
    let mut done = h.succeeded();
    done.sort();
    done.dedup();
    assert_eq!(done.len(), jobs, "every job succeeded");
    assert_eq!(
        h.calls().len(),
        jobs + 2,
        "and each once, the two re-queued twice"
    );
    assert!(h.queue.is_drained(), "{:?}", h.queue.depths());
    let r = h.queue.requests();
    (r.receive - r.receive_retry, r.receive_retry)
}

#[tokio::test(start_paused = true)]
async fn the_retry_queue_is_polled_at_most_every_interval_unless_it_has_jobs() {
    // 300 jobs at 10/s: a receive of 10 about every second for 30 s, then the idle exit.
    let (main, retry) = retry_polls(Duration::ZERO, 300).await;
    assert!(main >= 30, "{main} receives of the job queue");
    assert!(
        retry >= main,
        "interval 0: a retry poll before every receive ({retry} of {main})"
    );
    let (main, retry) = retry_polls(Duration::from_secs(5), 300).await;
    assert!(main >= 30, "{main} receives of the job queue");
    // About 40 s of receives: one poll at the start, one every 5 s, and the polls that found
    // the re-queued jobs and the one after each.
    assert!(retry <= 12, "{retry} retry polls against {main} receives");
}

#[tokio::test(start_paused = true)]
async fn a_run_polls_the_retry_queue_before_it_stops_idle() {
    // The 10th of 20 calls is re-queued, visible at once, after the run's last poll of the
    // retry queue; the idle exit (2 s) comes before that poll is due again (5 s): the run
    // still finds the job before it stops. (A job re-queued after that last receive, by an
    // event still in progress at the stop, waits for the next run, as on SQS.)
    let h = Harness::new(
        |n| {
            if n == 10 {
                Verdict::RequeueAfter(Duration::ZERO)
            } else {
                Verdict::Succeed
            }
        },
        InvokerOptions::template(),
    );
    h.enqueue(20);
    let mut c = config("10/s");
    c.retry_poll_interval = Duration::from_secs(5);
    let report = h.run_for(&c, Duration::from_secs(120)).await;
    assert_eq!(report.stopped, StopReason::Idle);
    assert_eq!(
        h.distinct_succeeded(),
        20,
        "the re-queued job too, in this run"
    );
    assert!(h.queue.is_drained(), "{:?}", h.queue.depths());
}
