//! Invariant 3 (no job is lost) as a property, over queues with the template's attributes:
//! whatever the quota, the 429s with their `Retry-After`, the pauses an operator makes and the
//! batch entries SQS refuses, every job succeeds, nothing reaches the dead-letter queue, and
//! nothing expires. Each case runs on its own paused-clock runtime, as the schedule runs it.

use std::time::Duration;

use crate::support::{Harness, Verdict, config};
use proptest::prelude::*;
use qo_core::ports::{RecordKey, update_record};
use qo_core::sqs::ROTATE_AFTER_RECEIVES;
use qo_core::{Clock, Control};
use qo_memory::{BatchOp, InvokerOptions};

#[derive(Clone, Debug)]
struct Case {
    jobs: usize,
    rate: u32,
    /// Call numbers answered 429, with their Retry-After in seconds.
    throttles: Vec<(usize, u64)>,
    /// Seconds from the start at which the operator toggles the pause.
    toggles: Vec<u64>,
    refused_deletes: usize,
    refused_releases: usize,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        5usize..30,
        1u32..20,
        proptest::collection::vec((1usize..30, 1u64..400), 0..3),
        proptest::collection::vec(1u64..600, 0..6),
        0usize..8,
        0usize..8,
    )
        .prop_map(
            |(jobs, rate, throttles, mut toggles, refused_deletes, refused_releases)| {
                toggles.sort_unstable();
                Case {
                    jobs,
                    rate,
                    throttles,
                    toggles,
                    refused_deletes,
                    refused_releases,
                }
            },
        )
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    rt.block_on(async {
        let throttles = case.throttles.clone();
        let h = Harness::new(
            move |n| match throttles.iter().find(|(at, _)| *at == n) {
                Some((_, s)) => Verdict::Throttle(Duration::from_secs(*s)),
                None => Verdict::Succeed,
            },
            InvokerOptions::template(),
        );
        h.enqueue(case.jobs);
        h.queue.refuse_next(BatchOp::Delete, case.refused_deletes);
        h.queue.refuse_next(BatchOp::Release, case.refused_releases);
        let (store, clock, toggles) = (h.store.clone(), h.clock.clone(), case.toggles.clone());
        let start = clock.now();
        tokio::spawn(async move {
            for (i, at) in toggles.into_iter().enumerate() {
                clock.sleep_until(start.plus(Duration::from_secs(at))).await;
                let paused = i % 2 == 0;
                let _ = update_record::<Control, _>(&store, RecordKey::Control, |c| {
                    Some(Control {
                        paused,
                        ..c.clone()
                    })
                })
                .await;
            }
            // Always resumed in the end.
            let _ = update_record::<Control, _>(&store, RecordKey::Control, |c| {
                Some(Control {
                    paused: false,
                    ..c.clone()
                })
            })
            .await;
        });
        let c = config(&format!("{}/s", case.rate));
        let reports = h
            .drive(
                &c,
                Duration::from_secs(60),
                case.jobs,
                Duration::from_secs(4 * 3600),
            )
            .await;
        // Refused for good: by the loop's batch calls, and the originals the retention sweep
        // copied but could not delete.
        let refused: u64 = reports
            .iter()
            .map(|r| r.refused_entries + r.sweep.as_ref().map_or(0, |s| s.undeleted))
            .sum();
        let mut done = h.succeeded();
        let all = done.len();
        done.dedup();
        prop_assert_eq!(done.len(), case.jobs, "every job succeeded");
        // A delete refused on every try brings its message back after the visibility timeout,
        // and it goes out again: the worker's idempotency record (not modelled by this
        // stand-in) makes that delivery a no-op. Nothing else calls a job twice.
        prop_assert!(
            (all - case.jobs) as u64 <= refused,
            "{} extra calls, {} entries refused for good",
            all - case.jobs,
            refused
        );
        prop_assert_eq!(h.dead(), 0, "dead-letter queue empty");
        prop_assert!(h.queue.expired().is_empty());
        prop_assert!(h.queue.peak_receive_count() <= ROTATE_AFTER_RECEIVES + 1);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn no_job_is_lost_or_dead_lettered_untried(case in cases()) {
        run_case(&case)?;
    }
}
