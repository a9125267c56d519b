//! Dispatch at scale: a high quota is used to the full, and batched invocations
//! carry the pace's own slots, never delayed.

use std::time::Duration;

use crate::support::{Harness, Verdict, config, max_in_window};
use qo_core::Timestamp;
use qo_memory::InvokerOptions;
use qo_orchestrator::StopReason;

/// The template's invoker without its reserved concurrency: the stand-in worker holds an
/// environment from delivery until its slot (a lead ahead), which at 2,000/s takes hundreds
/// of environments; what is measured here is the loop.
fn unbounded() -> InvokerOptions {
    InvokerOptions {
        concurrency: None,
        ..InvokerOptions::template()
    }
}

#[tokio::test(start_paused = true)]
async fn a_2000_per_second_quota_is_used_to_the_full_and_never_passed() {
    let h = Harness::new(|_| Verdict::Succeed, unbounded());
    let jobs = 10_000;
    h.enqueue(jobs);
    let report = h.run_for(&config("2000/s"), Duration::from_secs(60)).await;
    assert_eq!(report.dispatched, jobs as u64);
    assert_eq!(report.stopped, StopReason::Idle);
    let calls = h.calls();
    assert_eq!(calls.len(), jobs);
    assert!(
        max_in_window(&calls, Duration::from_secs(1)) <= 2000,
        "a second over the quota"
    );
    // At least 99% of the pace's slots between the first call and the last.
    let span = calls[jobs - 1].since(calls[0]).as_secs_f64();
    let rate = (jobs - 1) as f64 / span;
    assert!(rate >= 0.99 * 2000.0, "rate {rate:.1}/s");
    let u = report.quota_utilization.expect("utilization");
    assert!(u >= 0.99, "utilization {u}");
    // A pass hands out every slot due (two a millisecond): far fewer passes than calls.
    assert!(
        report.dispatch_passes * 2 < report.dispatched,
        "{} passes for {} calls",
        report.dispatch_passes,
        report.dispatched
    );
    let late = h.late.lock().expect("late").clone();
    assert!(late.is_empty(), "{} late deliveries", late.len());
    assert!(h.queue.is_drained(), "{:?}", h.queue.depths());
}

/// One run at 20/s over 400 jobs with `batch_max_jobs` and a 1 s window: the report, the
/// calls' times (the worker calls at each slot), and the slots of each batch event.
async fn run_at_20(
    batch_max_jobs: usize,
) -> (
    qo_orchestrator::RunReport,
    Vec<Timestamp>,
    Vec<Vec<Timestamp>>,
) {
    let h = Harness::new(|_| Verdict::Succeed, InvokerOptions::template());
    h.enqueue(400);
    let mut cfg = config("20/s");
    cfg.batch_max_jobs = batch_max_jobs;
    cfg.batch_window = Duration::from_millis(1_000);
    let report = h.run_for(&cfg, Duration::from_secs(120)).await;
    assert!(h.queue.is_drained(), "{:?}", h.queue.depths());
    let late = h.late.lock().expect("late").clone();
    assert!(late.is_empty(), "late deliveries: {late:?}");
    let batches = h.batches.lock().expect("batches").clone();
    (report, h.calls(), batches)
}

#[tokio::test(start_paused = true)]
async fn batches_carry_the_pace_s_own_slots_in_a_quarter_of_the_invocations() {
    let (single, single_calls, none) = run_at_20(1).await;
    assert!(none.is_empty(), "BATCH_MAX_JOBS=1 sends job events only");
    assert_eq!(single.invocations, 400);
    let (batched, calls, batches) = run_at_20(10).await;
    assert_eq!(batched.dispatched, 400);
    assert_eq!(calls.len(), 400);
    // Fewer invocations...
    assert!(
        batched.invocations * 4 <= batched.dispatched,
        "{} invocations for {} calls",
        batched.invocations,
        batched.dispatched
    );
    // ...at the same slots: no slot delayed to fill a batch.
    assert_eq!(calls, single_calls, "the batched run's slots differ");
    let u = batched.quota_utilization.expect("utilization");
    assert!(u >= 0.99, "utilization {u}");
    assert!(max_in_window(&calls, Duration::from_secs(1)) <= 20);
    // No batch over its max or its window.
    for b in &batches {
        assert!((2..=10).contains(&b.len()), "{} jobs", b.len());
        let (first, last) = (b[0], b[b.len() - 1]);
        assert!(last.since(first) <= Duration::from_secs(1), "{b:?}");
        assert!(b.windows(2).all(|p| p[0] < p[1]), "slot order: {b:?}");
    }
    let in_batches: usize = batches.iter().map(Vec::len).sum();
    assert_eq!(
        batched.invocations as usize,
        batches.len() + (400 - in_batches),
        "batch events plus single job events"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_invoke_gives_every_job_of_it_back() {
    let opts = InvokerOptions {
        fail_rate: 0.3,
        seed: 11,
        ..InvokerOptions::template()
    };
    let h = Harness::new(|_| Verdict::Succeed, opts);
    h.enqueue(200);
    let mut cfg = config("20/s");
    cfg.batch_max_jobs = 10;
    cfg.idle_exit = Some(Duration::from_secs(5));
    let mut failures = 0;
    let mut released = 0;
    for _ in 0..6 {
        let r = h.run_for(&cfg, Duration::from_secs(30)).await;
        failures += r.invoke_failures;
        released += r.released;
        if h.queue.is_drained() {
            break;
        }
    }
    assert!(failures > 0, "faults were injected");
    // A failed invoke released all its jobs (batches of up to 10).
    assert!(
        released > failures,
        "{released} released for {failures} failed invokes"
    );
    assert!(h.queue.is_drained(), "{:?}", h.queue.depths());
    assert!(h.queue.dead_letters().is_empty());
    // Every job succeeded, once.
    assert_eq!(h.distinct_succeeded(), 200);
    assert_eq!(h.succeeded().len(), 200, "a job called twice");
}
