//! No untried job is dead-lettered or lost while it waits: the loop over queues with the
//! template's attributes (redrive policy at `maxReceiveCount` 10, 14 days' retention, 900 s
//! visibility, each receive counted as SQS counts it), run as a deployment runs it (a run of at
//! most a minute at each minute tick), on tokio's paused clock.
//!
//! Each case waits long for its slots: an API's `Retry-After: 150`, a day budget used up 13 h
//! before its reset, a `1/min` quota, and `spread` mode. A loop that receives what it cannot
//! dispatch soon, or gives back and receives again what it holds, raises every waiting
//! message's receive count until SQS moves it to the dead-letter queue untried.

use std::time::Duration;

use crate::support::{Harness, Verdict, config, max_in_window};
use qo_core::sqs::{QueueAttributes, ROTATE_AFTER_RECEIVES};
use qo_core::{BudgetMode, Timestamp};
use qo_memory::{BatchOp, InvokerOptions, QueueOptions};

const JOBS: usize = 20;
const RUN: Duration = Duration::from_secs(60);

/// Every job succeeded once, nothing is on the dead-letter queue or expired, and no message
/// was received more often than a give-back as a fresh copy allows.
fn assert_all_succeeded_untouched_by_redrive(h: &Harness) {
    let done = h.succeeded();
    let mut unique = done.clone();
    unique.dedup();
    assert_eq!(unique.len(), JOBS, "every job succeeded: {done:?}");
    assert_eq!(done.len(), JOBS, "and each once");
    assert_eq!(h.dead(), 0, "dead-letter queue: {:?}", h.queue.redriven());
    assert!(h.queue.expired().is_empty());
    assert!(h.queue.is_drained(), "{:?}", h.queue.depths());
    let peak = h.queue.peak_receive_count();
    assert!(
        peak <= ROTATE_AFTER_RECEIVES,
        "a message was received {peak} times (redrive at {:?})",
        QueueAttributes::TEMPLATE.max_receive_count
    );
}

/// One job per event: the harness's stand-in worker calls each job of a batch at its slot,
/// while the worker holds a batch's later slots back on the shared back-off it reads before
/// them (`qo-worker`'s batch tests, and `qo`'s system test of a long `Retry-After`).
fn unbatched(quota: &str) -> qo_orchestrator::OrchestratorConfig {
    let mut c = config(quota);
    c.batch_max_jobs = 1;
    c
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_of_150_s_dead_letters_nothing() {
    // The first call is answered 429 with Retry-After: 150; every other call succeeds.
    let h = Harness::new(
        |n| {
            if n == 1 {
                Verdict::Throttle(Duration::from_secs(150))
            } else {
                Verdict::Succeed
            }
        },
        InvokerOptions::template(),
    );
    h.enqueue(JOBS);
    let started = h.clock_now();
    let reports = h
        .drive(&unbatched("2/s"), RUN, JOBS, Duration::from_secs(3600))
        .await;
    assert_all_succeeded_untouched_by_redrive(&h);
    // The back-off held: after the events already on their way when the 429 came (the
    // orchestrator reads the back-off within its 1 s refresh), no call for 150 s.
    let calls = h.calls();
    let throttled_at = calls[0];
    for t in &calls[1..] {
        let after = t.since(throttled_at);
        assert!(
            after <= Duration::from_millis(1_500) || after >= Duration::from_secs(150),
            "a call {after:?} after the 429"
        );
    }
    assert!(
        reports.len() >= 3,
        "the wait spanned runs: {}",
        reports.len()
    );
    assert!(h.clock_now().since(started) < Duration::from_secs(600));
}

#[tokio::test(start_paused = true)]
async fn a_day_budget_used_up_13_hours_before_its_reset_dead_letters_nothing() {
    // 11:00 UTC: the day's budget of 15 goes in the first seconds, while the second batch of
    // ten is held; the other 5 jobs wait 13 hours for midnight, through 780 scheduled runs.
    let day = 1_795_219_200; // 2026-11-21T00:00:00Z
    let h = Harness::starting_at(
        Timestamp::from_secs(day + 11 * 3600),
        |_| Verdict::Succeed,
        InvokerOptions::template(),
    );
    h.enqueue(JOBS);
    let reports = h
        .drive(
            &config("5/s,15/day@calendar"),
            RUN,
            JOBS,
            Duration::from_secs(14 * 3600),
        )
        .await;
    assert_all_succeeded_untouched_by_redrive(&h);
    let calls = h.calls();
    let midnight = Timestamp::from_secs(day + 86_400);
    assert_eq!(calls.iter().filter(|t| **t < midnight).count(), 15);
    assert!(calls[15] >= midnight);
    assert!(reports.len() > 700, "runs: {}", reports.len());
}

#[tokio::test(start_paused = true)]
async fn a_one_per_minute_quota_dead_letters_nothing() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(JOBS);
    h.drive(&config("1/min"), RUN, JOBS, Duration::from_secs(3600))
        .await;
    assert_all_succeeded_untouched_by_redrive(&h);
    assert!(max_in_window(&h.calls(), Duration::from_secs(60)) <= 1);
}

#[tokio::test(start_paused = true)]
async fn spread_mode_dead_letters_nothing() {
    // A day budget of 2,000 spread over the day: one call every 43 s or so.
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(JOBS);
    let mut c = config("10/s,2000/day");
    c.pacing.mode = BudgetMode::Spread;
    h.drive(&c, RUN, JOBS, Duration::from_secs(4 * 3600)).await;
    assert_all_succeeded_untouched_by_redrive(&h);
    let calls = h.calls();
    let gap = calls[JOBS - 1].since(calls[0]) / (JOBS as u32 - 1);
    assert!(
        gap >= Duration::from_secs(40),
        "spread: {gap:?} between calls"
    );
}

#[tokio::test(start_paused = true)]
async fn refused_batch_entries_are_tried_again_and_do_not_end_the_run() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(JOBS);
    // SQS refuses single entries now and then: two deletes and one release (at the run's end).
    h.queue.refuse_next(BatchOp::Delete, 2);
    h.queue.refuse_next(BatchOp::Release, 1);
    let reports = h
        .drive(
            &config("5/s"),
            Duration::from_secs(3),
            JOBS,
            Duration::from_secs(600),
        )
        .await;
    assert_all_succeeded_untouched_by_redrive(&h);
    assert_eq!(
        reports.iter().map(|r| r.refused_entries).sum::<u64>(),
        0,
        "each refused entry went through when tried again"
    );
}

#[tokio::test(start_paused = true)]
async fn entries_refused_for_good_are_counted_and_the_run_goes_on() {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(3);
    // Every delete of the first run refused, each of its three tries.
    h.queue.refuse_next(BatchOp::Delete, 9);
    let r = h.run_for(&config("5/s"), Duration::from_secs(10)).await;
    assert_eq!(r.dispatched, 3);
    assert_eq!(r.refused_entries, 3, "{r:?}");
    // The messages come back after their visibility and go out again: the worker's
    // idempotency record (not modelled by this stand-in) makes the second delivery a no-op.
    assert_eq!(h.queue.depths().main_in_flight, 3);
}

#[tokio::test(start_paused = true)]
async fn held_messages_are_kept_by_extending_their_visibility() {
    // A queue with SQS's default 30 s visibility, a 1/min quota and 10 minute runs: the
    // message held for its slot outlives its visibility unless it is extended.
    let attributes = QueueAttributes {
        visibility_timeout: Duration::from_secs(30),
        ..QueueAttributes::TEMPLATE
    };
    let h = Harness::with_queues(
        QueueOptions {
            attributes,
            ..QueueOptions::template()
        },
        |_| Verdict::Succeed,
        InvokerOptions::template(),
    );
    h.enqueue(5);
    let mut c = config("1/min");
    c.visibility_timeout = attributes.visibility_timeout;
    // Ask for a batch that covers more than one slot: messages wait up to 2 minutes.
    c.hold_horizon = Duration::from_secs(150);
    let r = h.run_for(&c, Duration::from_secs(600)).await;
    assert_eq!(r.dispatched, 5);
    assert!(r.extended > 0, "{r:?}");
    // Extended together, in ChangeMessageVisibilityBatch calls.
    let calls = h.queue.requests().change_visibility;
    assert!(
        calls * 3 <= r.extended * 2,
        "{calls} calls for {} extensions",
        r.extended
    );
    assert_eq!(
        h.queue.peak_receive_count(),
        1,
        "each message received once"
    );
    assert!(h.queue.is_drained());
}

#[tokio::test(start_paused = true)]
async fn a_flapping_pause_gives_back_fresh_copies_instead_of_raising_receive_counts() {
    use qo_core::ports::{RecordKey, update_record};
    use qo_core::{Clock, Control};
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(JOBS);
    // An operator pauses and resumes every 5 s, twelve times: each pause gives back what the
    // loop holds, and each resume receives it again.
    let store = h.store.clone();
    let clock = h.clock.clone();
    tokio::spawn(async move {
        for i in 0..24 {
            clock.sleep(Duration::from_millis(2_500)).await;
            update_record::<Control, _>(&store, RecordKey::Control, |c| {
                Some(Control {
                    paused: i % 2 == 0,
                    ..c.clone()
                })
            })
            .await
            .expect("pause or resume");
        }
    });
    let mut c = config("1/s");
    c.hold_horizon = Duration::from_secs(10);
    let sent_before = h.queue.requests().send;
    let reports = h.drive(&c, RUN, JOBS, Duration::from_secs(600)).await;
    assert_all_succeeded_untouched_by_redrive(&h);
    let rotated: u64 = reports.iter().map(|r| r.rotated).sum();
    assert!(rotated > 0, "{reports:?}");
    // The copies go in SendMessageBatch calls, not a SendMessage each.
    let sends = h.queue.requests().send - sent_before;
    assert!(
        sends * 3 <= rotated,
        "{sends} send requests for {rotated} fresh copies"
    );
}
