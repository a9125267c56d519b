//! The in-memory Lambda async invoke: delivery delays, invoke faults, duplicates, payloads.
use std::collections::HashMap;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use qo_core::job::HealthCheckEvent;
use qo_core::job::WorkerEvent;
use qo_core::ports::{InvokeError, Invoker};
use qo_core::time::Clock;
use qo_core::time::{Timestamp, TokioClock};
use qo_memory::invoker::{MAX_EVENT_BYTES, THROTTLE_REASON};
use qo_memory::{EventHandler, InvokerOptions, InvokerStats, LocalInvoker};

type Seen = Arc<Mutex<Vec<(u64, Timestamp)>>>;

fn clock() -> Arc<dyn Clock> {
    Arc::new(TokioClock::starting_at(Timestamp::from_secs(1_000)))
}

/// A handler that records each event's epoch and the time it arrived.
fn recorder(clock: Arc<dyn Clock>) -> (Seen, Arc<dyn EventHandler>) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let handler = move |ev: WorkerEvent| {
        let s = s.clone();
        let clock = clock.clone();
        async move {
            if let WorkerEvent::HealthCheck(h) = ev {
                s.lock().expect("lock").push((h.epoch, clock.now()));
            }
        }
    };
    (seen, Arc::new(handler))
}

fn event(epoch: u64) -> WorkerEvent {
    WorkerEvent::HealthCheck(HealthCheckEvent {
        epoch,
        sent_at: Timestamp::from_secs(1_000),
    })
}

#[tokio::test(start_paused = true)]
async fn delivers_every_event_exactly_once_within_the_delay_range() {
    let c = clock();
    let (seen, handler) = recorder(c.clone());
    let options = InvokerOptions {
        delay: Duration::from_millis(100)..=Duration::from_millis(300),
        seed: 7,
        ..InvokerOptions::default()
    };
    let inv = LocalInvoker::with_options(c.clone(), handler, options).expect("options");
    let start = c.now();
    let n = 500;
    for i in 0..n {
        inv.invoke(&event(i)).await.expect("accepted");
    }
    assert_eq!(c.now(), start, "invoke does not wait for delivery");
    assert!(
        seen.lock().expect("lock").is_empty(),
        "nothing before the delay"
    );
    inv.wait_idle().await;
    let seen = seen.lock().expect("lock").clone();
    let mut count: HashMap<u64, usize> = HashMap::new();
    for (epoch, at) in &seen {
        *count.entry(*epoch).or_default() += 1;
        let d = at.since(start);
        assert!(
            d >= Duration::from_millis(100) && d <= Duration::from_millis(300),
            "{d:?}"
        );
    }
    assert_eq!(count.len(), n as usize);
    assert!(count.values().all(|&k| k == 1));
    // The delays vary, so deliveries come out of order.
    assert!(seen.windows(2).any(|w| w[0].0 > w[1].0), "some reordering");
    assert_eq!(
        inv.stats(),
        InvokerStats {
            invokes: n,
            accepted: n,
            failed: 0,
            delivered: n,
            completed: n
        }
    );
    assert_eq!(inv.outstanding(), 0);
}

#[tokio::test(start_paused = true)]
async fn wait_idle_waits_for_a_running_handler() {
    let c = clock();
    let c2 = c.clone();
    let done = Arc::new(Mutex::new(false));
    let d = done.clone();
    let inv = LocalInvoker::new(c.clone(), move |_ev: WorkerEvent| {
        let c2 = c2.clone();
        let d = d.clone();
        async move {
            c2.sleep(Duration::from_secs(5)).await;
            *d.lock().expect("lock") = true;
        }
    });
    inv.invoke(&event(1)).await.expect("accepted");
    assert_eq!(inv.outstanding(), 1);
    inv.wait_idle().await;
    assert!(*done.lock().expect("lock"));
    assert!(c.now().since(Timestamp::from_secs(1_000)) >= Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn fail_rate_fails_that_fraction_deterministically() {
    let run = |seed| async move {
        let c = clock();
        let (seen, handler) = recorder(c.clone());
        let options = InvokerOptions {
            fail_rate: 0.3,
            seed,
            ..InvokerOptions::default()
        };
        let inv = LocalInvoker::with_options(c, handler, options).expect("options");
        let mut outcomes = Vec::new();
        for i in 0..1_000 {
            outcomes.push(match inv.invoke(&event(i)).await {
                Ok(()) => 0,
                Err(InvokeError::Throttled { reason, .. }) => {
                    assert_eq!(reason, THROTTLE_REASON);
                    1
                }
                Err(InvokeError::Transport(_)) => 2,
                Err(e) => panic!("unexpected {e}"),
            });
        }
        inv.wait_idle().await;
        let stats = inv.stats();
        assert_eq!(
            stats.delivered, stats.accepted,
            "only accepted events arrive"
        );
        assert_eq!(seen.lock().expect("lock").len() as u64, stats.accepted);
        (outcomes, stats)
    };
    let (a, stats) = run(42).await;
    let (b, _) = run(42).await;
    let (c, _) = run(43).await;
    assert_eq!(a, b, "same seed, same faults");
    assert_ne!(a, c, "another seed, other faults");
    assert!((250..=350).contains(&stats.failed), "{stats:?}");
    assert_eq!(stats.failed + stats.accepted, 1_000);
    assert!(a.contains(&1) && a.contains(&2), "both kinds occur");
}

#[tokio::test(start_paused = true)]
async fn duplicate_rate_one_delivers_each_event_twice() {
    let c = clock();
    let (seen, handler) = recorder(c.clone());
    let options = InvokerOptions {
        duplicate_rate: 1.0,
        ..InvokerOptions::default()
    };
    let inv = LocalInvoker::with_options(c, handler, options).expect("options");
    for i in 0..10 {
        inv.invoke(&event(i)).await.expect("accepted");
    }
    inv.wait_idle().await;
    let mut epochs: Vec<u64> = seen.lock().expect("lock").iter().map(|s| s.0).collect();
    epochs.sort_unstable();
    let want: Vec<u64> = (0..10).flat_map(|i| [i, i]).collect();
    assert_eq!(epochs, want);
    assert_eq!(inv.stats().delivered, 20);
}

#[tokio::test(start_paused = true)]
async fn oversized_payload_is_rejected() {
    use qo_core::job::{Job, JobEvent, Origin};
    let c = clock();
    let (seen, handler) = recorder(c.clone());
    let inv = LocalInvoker::with_options(c, handler, InvokerOptions::default()).expect("ok");
    let big = WorkerEvent::Job(JobEvent {
        job: Job {
            path: "/x".into(),
            body: Some(serde_json::Value::String("a".repeat(MAX_EVENT_BYTES))),
            ..Job::default()
        },
        origin: Origin::default(),
        slot_at: Timestamp::EPOCH,
        epoch: 0,
        dispatched_at: Timestamp::EPOCH,
    });
    let e = inv.invoke(&big).await.expect_err("too big");
    assert!(
        matches!(&e, InvokeError::Rejected(m) if m.contains("limit")),
        "{e}"
    );
    inv.wait_idle().await;
    assert!(seen.lock().expect("lock").is_empty());
    assert_eq!(inv.stats().failed, 1);
}

#[test]
fn bad_options_are_refused_by_name() {
    for (o, name) in [
        (
            InvokerOptions {
                fail_rate: 1.5,
                ..InvokerOptions::default()
            },
            "fail_rate=1.5",
        ),
        (
            InvokerOptions {
                duplicate_rate: f64::NAN,
                ..InvokerOptions::default()
            },
            "duplicate_rate=NaN",
        ),
        (
            InvokerOptions {
                delay: Duration::from_secs(2)..=Duration::from_secs(1),
                ..InvokerOptions::default()
            },
            "delay=",
        ),
    ] {
        let e = o.validate().expect_err("invalid");
        assert!(e.to_string().contains(name), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_invokes_on_a_real_runtime() {
    let c: Arc<dyn Clock> = Arc::new(TokioClock::system());
    let (seen, handler) = recorder(c.clone());
    let options = InvokerOptions {
        delay: Duration::ZERO..=Duration::from_millis(5),
        ..InvokerOptions::default()
    };
    let inv = LocalInvoker::with_options(c, handler, options).expect("options");
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let inv = inv.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                inv.invoke(&event(t * 1_000 + i)).await.expect("accepted");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    inv.wait_idle().await;
    let mut epochs: Vec<u64> = seen.lock().expect("lock").iter().map(|s| s.0).collect();
    epochs.sort_unstable();
    epochs.dedup();
    assert_eq!(epochs.len(), 2_000);
    assert_eq!(inv.stats().completed, 2_000);
}
