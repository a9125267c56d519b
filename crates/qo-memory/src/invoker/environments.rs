//! The function's execution environments: at most the reserved concurrency busy at once, and a
//! pool of warm idle ones that are reused (no init) until they have idled past `keep_warm`.
//!
//! A new environment starts only when none is idle, so busy and idle together never exceed the
//! most ever busy at once: the idle pool stays within the concurrency without a cap of its own.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use qo_core::time::Timestamp;

/// How an acquired environment starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Start {
    /// A new environment: the run waits out the init delay first.
    Cold,
    /// A warm idle environment, reused: the run starts at once.
    Warm,
}

#[derive(Debug, Default)]
struct State {
    /// Environments in init or running a handler.
    busy: usize,
    /// Warm idle environments, by the time each became idle, oldest first.
    idle: Vec<Timestamp>,
    /// The most environments busy at once so far.
    peak: usize,
}

/// The environments of one function.
#[derive(Debug)]
pub(super) struct Environments {
    concurrency: Option<usize>,
    keep_warm: Duration,
    state: Mutex<State>,
}

impl Environments {
    /// No environment yet; at most `concurrency` busy at once (`None`: unbounded).
    pub(super) fn new(concurrency: Option<usize>, keep_warm: Duration) -> Self {
        Environments {
            concurrency,
            keep_warm,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An environment for a run at `now`, or `None` when all the concurrency is busy (the
    /// attempt is throttled). Drops idle environments that have idled `keep_warm` or longer,
    /// then reuses the most recently used warm one, or starts a new one.
    pub(super) fn acquire(&self, now: Timestamp) -> Option<Lease<'_>> {
        let mut s = self.state();
        let keep_warm = self.keep_warm;
        s.idle.retain(|&since| now.since(since) < keep_warm);
        if self.concurrency.is_some_and(|c| s.busy >= c) {
            return None;
        }
        s.busy += 1;
        s.peak = s.peak.max(s.busy);
        let start = if s.idle.pop().is_some() {
            Start::Warm
        } else {
            Start::Cold
        };
        Some(Lease {
            pool: self,
            start,
            idle_from: None,
        })
    }

    /// The most environments busy at once so far.
    pub(super) fn peak(&self) -> usize {
        self.state().peak
    }

    /// Environments busy now.
    pub(super) fn busy(&self) -> usize {
        self.state().busy
    }
}

/// One busy environment. Dropping it frees its concurrency; [`Lease::keep_warm`] also puts it
/// in the idle pool (a lease dropped without it, after a crash, is discarded).
#[derive(Debug)]
pub(super) struct Lease<'a> {
    pool: &'a Environments,
    start: Start,
    idle_from: Option<Timestamp>,
}

impl Lease<'_> {
    /// Whether this run pays the init delay.
    pub(super) fn start(&self) -> Start {
        self.start
    }

    /// Ends the run at `now` and keeps the environment warm for the next one.
    pub(super) fn keep_warm(mut self, now: Timestamp) {
        self.idle_from = Some(now);
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut s = self.pool.state();
        s.busy = s.busy.saturating_sub(1);
        if let Some(t) = self.idle_from {
            s.idle.push(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn at_most_the_concurrency_is_busy() {
        let envs = Environments::new(Some(2), Duration::from_secs(60));
        let a = envs.acquire(t(0)).expect("first");
        let b = envs.acquire(t(0)).expect("second");
        assert!(envs.acquire(t(0)).is_none(), "the third is throttled");
        assert_eq!((a.start(), b.start()), (Start::Cold, Start::Cold));
        drop(a);
        let c = envs.acquire(t(1)).expect("a slot came free");
        // `a` was dropped without keep_warm (a crash): its environment is gone.
        assert_eq!(c.start(), Start::Cold);
        assert_eq!(envs.busy(), 2);
        assert_eq!(envs.peak(), 2);
    }

    #[test]
    fn warm_environments_are_reused_until_they_idle_past_keep_warm() {
        let envs = Environments::new(None, Duration::from_secs(60));
        envs.acquire(t(0)).expect("env").keep_warm(t(10));
        let warm = envs.acquire(t(59_999)).expect("env");
        assert_eq!(warm.start(), Start::Warm, "idle 59.989 s < 60 s");
        warm.keep_warm(t(60_000));
        let cold = envs.acquire(t(120_000)).expect("env");
        assert_eq!(cold.start(), Start::Cold, "idle exactly 60 s: dropped");
        assert_eq!(envs.busy(), 1);
    }

    #[test]
    fn unbounded_concurrency_never_throttles_and_the_pool_holds_every_warm_one() {
        let envs = Environments::new(None, Duration::from_secs(60));
        let leases: Vec<_> = (0..100)
            .map(|_| envs.acquire(t(0)).expect("unbounded"))
            .collect();
        assert_eq!(envs.peak(), 100);
        for l in leases {
            l.keep_warm(t(5));
        }
        let again: Vec<_> = (0..100)
            .map(|_| envs.acquire(t(6)).expect("unbounded"))
            .collect();
        assert!(again.iter().all(|l| l.start() == Start::Warm));
    }
}
