//! One accepted copy of an event in Lambda's asynchronous queue, from the invoke to its end:
//! a successful run, or a record in the on-failure destination.
//!
//! Each copy waits its queue delay, then tries to get an execution environment. An attempt that
//! finds the concurrency all busy is throttled and tried again after [`throttle_backoff`]; a
//! new environment waits out the init delay first; a run that returns an error (or panics) is
//! retried after [`function_error_retry_delay`], up to `maximum_retry_attempts` times. Whenever
//! the next attempt would come after the event's `maximum_event_age`, the copy waits until its
//! age is reached and goes to the on-failure destination instead.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use qo_core::event::WorkerEvent;
use qo_core::time::Timestamp;

use super::environments::Start;
use super::failure::{FailureCondition, FailureRecord};
use super::handler::FunctionError;
use super::schedule::{function_error_retry_delay, throttle_backoff};
use super::{Inner, Kill, lock_stats};

/// Holds one count in the invoker's outstanding deliveries from the invoke (taken there, so
/// `wait_idle` sees it at once) to the copy's end, even if its task is dropped.
pub(super) struct Outstanding(Arc<Inner>);

impl Outstanding {
    /// Counts one more outstanding delivery.
    pub(super) fn take(inner: Arc<Inner>) -> Self {
        inner.outstanding.send_modify(|n| *n += 1);
        Outstanding(inner)
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// How a handler run ended.
enum RunEnd {
    /// It returned `Ok`.
    Succeeded,
    /// It returned a function error; the environment stays warm.
    Failed(FunctionError),
    /// It panicked (a runtime crash): a function error, and the environment is discarded.
    Crashed(FunctionError),
}

/// What happened to one copy so far.
#[derive(Default)]
struct Tally {
    runs: u32,
    throttles: u32,
    errors: u32,
    last_error: Option<String>,
}

/// Delivers one accepted copy of `event`, invoked at `accepted_at`, first tried `delay` later.
pub(super) async fn deliver(
    outstanding: Outstanding,
    event: WorkerEvent,
    accepted_at: Timestamp,
    delay: Duration,
) {
    let inner: &Inner = &outstanding.0;
    let o = &inner.options;
    let expires_at = accepted_at.plus(o.maximum_event_age);
    let mut next = accepted_at.plus(delay);
    let mut throttled_in_a_row = 0u32;
    let mut tally = Tally::default();
    loop {
        if next > expires_at {
            inner.clock.sleep_until(expires_at).await;
            record(
                inner,
                event,
                FailureCondition::EventAgeExceeded,
                tally,
                accepted_at,
            );
            return;
        }
        inner.clock.sleep_until(next).await;
        let now = inner.clock.now();
        let Some(lease) = inner.environments.acquire(now) else {
            throttled_in_a_row += 1;
            tally.throttles += 1;
            lock_stats(inner).throttled += 1;
            next = now.plus(throttle_backoff(throttled_in_a_row));
            continue;
        };
        throttled_in_a_row = 0;
        let started = now;
        if lease.start() == Start::Cold {
            lock_stats(inner).cold_starts += 1;
            if !o.cold_start.is_zero() {
                inner.clock.sleep(o.cold_start).await;
            }
        }
        tally.runs += 1;
        lock_stats(inner).delivered += 1;
        let end = run(inner, event.clone()).await;
        let now = inner.clock.now();
        let ran = now.since(started);
        lock_stats(inner).billed_ms +=
            ran.as_millis() as u64 + u64::from(!ran.subsec_nanos().is_multiple_of(1_000_000));
        let error = match end {
            RunEnd::Succeeded => {
                lease.keep_warm(now);
                lock_stats(inner).completed += 1;
                return;
            }
            RunEnd::Failed(e) => {
                lease.keep_warm(now);
                e
            }
            RunEnd::Crashed(e) => {
                drop(lease);
                e
            }
        };
        lock_stats(inner).function_errors += 1;
        tally.errors += 1;
        tally.last_error = Some(error.0);
        if tally.errors > o.maximum_retry_attempts {
            record(
                inner,
                event,
                FailureCondition::RetriesExhausted,
                tally,
                accepted_at,
            );
            return;
        }
        next = now.plus(function_error_retry_delay(tally.errors));
    }
}

/// Runs the handler on its own task, so a panic is a function error rather than the end of
/// the delivery.
async fn run(inner: &Inner, event: WorkerEvent) -> RunEnd {
    let handler = inner.handler.clone();
    let kill = inner.draw_kill();
    let copy = kill.map(|_| event.clone());
    let mut task = tokio::spawn(async move { handler.handle(event).await });
    let joined = match kill {
        None => task.await,
        Some(after) => {
            tokio::select! {
                biased;
                joined = &mut task => joined,
                () = inner.clock.sleep(after) => {
                    // The run stops at the await it reached: nothing after it happens.
                    task.abort();
                    let at = inner.clock.now();
                    if let Some(event) = copy {
                        inner.kills_mut().push(Kill { at, event });
                    }
                    lock_stats(inner).killed += 1;
                    return RunEnd::Crashed(FunctionError(format!(
                        "killed {} ms into the run (injected)",
                        after.as_millis()
                    )));
                }
            }
        }
    };
    match joined {
        Ok(Ok(())) => RunEnd::Succeeded,
        Ok(Err(e)) => RunEnd::Failed(e),
        Err(join) if join.is_panic() => RunEnd::Crashed(FunctionError(format!(
            "the handler panicked: {}",
            panic_text(join.into_panic().as_ref())
        ))),
        Err(join) => RunEnd::Crashed(FunctionError(format!("the handler did not finish: {join}"))),
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Sends the copy to the on-failure destination, now.
fn record(
    inner: &Inner,
    event: WorkerEvent,
    condition: FailureCondition,
    tally: Tally,
    accepted_at: Timestamp,
) {
    let failed_at = inner.clock.now();
    inner.failures_mut().push(FailureRecord {
        event,
        condition,
        attempts: tally.runs,
        throttles: tally.throttles,
        last_error: tally.last_error,
        accepted_at,
        failed_at,
    });
    lock_stats(inner).on_failure += 1;
}
