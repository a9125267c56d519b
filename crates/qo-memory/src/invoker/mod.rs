//! [`LocalInvoker`]: Lambda's asynchronous invoke in memory, behaving as the service does.
//!
//! # The model
//!
//! - [`Invoker::invoke`] returns `Ok` as soon as the event is queued (AWS answers 202 then),
//!   whatever the function's state: a saturated function does not refuse an async event. The
//!   event goes through its JSON wire form (a payload over [`MAX_EVENT_BYTES`], Lambda's
//!   oldest async limit, is rejected) and a fraction `fail_rate` of invokes fail at the API
//!   (`Throttled` or `Transport`).
//! - Each accepted event is first tried after a delay drawn from `delay` (default 2 to 20 ms),
//!   so events arrive late and out of order; a fraction `duplicate_rate` is delivered twice,
//!   each copy on its own schedule, as Lambda's eventually consistent queue may.
//! - At most `concurrency` execution environments are busy at once (default unbounded; the
//!   template reserves 50). An attempt that finds them all busy is **throttled**: the event
//!   stays queued and is tried again after [`throttle_backoff`] (1 s doubling to 5 min).
//!   Throttling never counts against the retries.
//! - A new environment waits `cold_start` (default 22 ms, the published Rust init on arm64)
//!   before its first run; an environment goes back to a warm pool after each run and is
//!   reused without init until it has idled `keep_warm` (default 5 min). A panicking handler
//!   loses its environment.
//! - A run whose handler returns an error (see [`EventHandler`], [`HandlerOutput`]) or panics
//!   is a **function error**, retried after [`function_error_retry_delay`] (1 min, then 2 min)
//!   up to `maximum_retry_attempts` times (default 2).
//! - An event whose retries are spent, or whose next attempt would come after
//!   `maximum_event_age` (default 6 h) from its invoke, goes to the **on-failure destination**:
//!   a [`FailureRecord`] with the event, its [`FailureCondition`] (`RetriesExhausted`,
//!   `EventAgeExceeded`), its runs and throttles and the times, read with
//!   [`LocalInvoker::failures`]. That is the worker's on-failure queue.
//!
//! Every wait is on the injected [`Clock`] (tests run on tokio's paused clock) and every
//! random draw comes from a generator seeded with `seed`, so a run repeats.
//! [`LocalInvoker::wait_idle`] resolves once no copy is queued, waiting out a back-off or a
//! retry, initialising or running.
//!
//! - Faults, off by default: a fraction `lost_answer_rate` of accepted invokes answer the caller
//!   with a transport error (the event still runs), and a fraction `kill_rate` of runs is killed
//!   part-way (a timeout, an out-of-memory kill), at a random await within `kill_within`: a
//!   function error that also discards the environment ([`LocalInvoker::kills`]).
//!
//! Not modelled: Lambda lengthening the retry interval and reading its queue more slowly when
//! the queue is long, events dropped from the queue without delivery.
//!
//! # Layout
//! - `options`: [`InvokerOptions`] and their defaults;
//! - `handler`: [`EventHandler`], [`HandlerOutput`], [`FunctionError`];
//! - `schedule`: [`throttle_backoff`] and [`function_error_retry_delay`];
//! - `environments`: concurrency and the warm pool; `delivery`: one event copy's life;
//! - `failure`: [`FailureRecord`] and [`FailureCondition`].

mod delivery;
mod environments;
mod failure;
mod handler;
mod options;
mod schedule;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use qo_core::event::WorkerEvent;
use qo_core::ports::{InvokeError, Invoker};
use qo_core::time::{Clock, Timestamp, duration_micros};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::error::MemoryError;
use delivery::{Outstanding, deliver};
use environments::Environments;

pub use failure::{FailureCondition, FailureRecord};
pub use handler::{EventHandler, FunctionError, HandlerOutput};
pub use options::{
    DEFAULT_API_LATENCY, DEFAULT_COLD_START, DEFAULT_KEEP_WARM, DEFAULT_MAXIMUM_EVENT_AGE,
    DEFAULT_MAXIMUM_RETRY_ATTEMPTS, InvokerOptions, MIN_MAXIMUM_EVENT_AGE,
};
pub use schedule::{
    THROTTLE_BACKOFF_FIRST, THROTTLE_BACKOFF_MAX, function_error_retry_delay, throttle_backoff,
};

/// Largest event payload accepted: Lambda's async limit in older accounts (256 KiB).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// The reason an injected invoke throttle carries (one of Lambda's `TooManyRequestsException`
/// reasons).
pub const THROTTLE_REASON: &str = "ReservedFunctionConcurrentInvocationLimitExceeded";

/// Counts of what the invoker did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InvokerStats {
    /// Calls to [`Invoker::invoke`].
    pub invokes: u64,
    /// Invokes accepted (returned `Ok`).
    pub accepted: u64,
    /// Invokes that failed (injected faults and rejected payloads).
    pub failed: u64,
    /// Extra copies of accepted events queued (each is delivered on its own).
    pub duplicates: u64,
    /// Handler runs started (duplicates and retries included).
    pub delivered: u64,
    /// Handler runs that succeeded.
    pub completed: u64,
    /// Handler runs that failed (returned an error, panicked or were killed).
    pub function_errors: u64,
    /// Handler runs killed part-way (`kill_rate`).
    pub killed: u64,
    /// Accepted invokes answered with a transport error (`lost_answer_rate`).
    pub lost_answers: u64,
    /// Attempts that found the concurrency all busy and went back to the queue.
    pub throttled: u64,
    /// Runs that started a new execution environment (and waited out its init).
    pub cold_starts: u64,
    /// Records sent to the on-failure destination.
    pub on_failure: u64,
    /// The most execution environments busy at once.
    pub peak_concurrency: u64,
    /// Billed duration, milliseconds: each run's time from its environment's start (the
    /// init of a new one included: a custom runtime's init is billed) to the handler's end,
    /// rounded up to the millisecond, as Lambda bills it.
    pub billed_ms: u64,
}

impl InvokerStats {
    /// The counts of two invokers together (a pool's functions): each count summed, the peak
    /// concurrency as the sum of the peaks (at most the pool's true peak's bound).
    pub fn plus(self, o: InvokerStats) -> InvokerStats {
        InvokerStats {
            invokes: self.invokes + o.invokes,
            accepted: self.accepted + o.accepted,
            failed: self.failed + o.failed,
            duplicates: self.duplicates + o.duplicates,
            delivered: self.delivered + o.delivered,
            completed: self.completed + o.completed,
            function_errors: self.function_errors + o.function_errors,
            killed: self.killed + o.killed,
            lost_answers: self.lost_answers + o.lost_answers,
            throttled: self.throttled + o.throttled,
            cold_starts: self.cold_starts + o.cold_starts,
            on_failure: self.on_failure + o.on_failure,
            peak_concurrency: self.peak_concurrency + o.peak_concurrency,
            billed_ms: self.billed_ms + o.billed_ms,
        }
    }
}

struct Inner {
    clock: Arc<dyn Clock>,
    handler: Arc<dyn EventHandler>,
    options: InvokerOptions,
    rng: Mutex<StdRng>,
    stats: Mutex<InvokerStats>,
    environments: Environments,
    failures: Mutex<Vec<FailureRecord>>,
    /// The runs killed part-way, oldest first.
    kills: Mutex<Vec<Kill>>,
    /// Accepted copies not yet ended (queued, waiting to retry, initialising or running).
    outstanding: watch::Sender<usize>,
}

impl Inner {
    fn failures_mut(&self) -> MutexGuard<'_, Vec<FailureRecord>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn kills_mut(&self) -> MutexGuard<'_, Vec<Kill>> {
        self.kills.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How far into the next run it is killed (`kill_rate`), or `None`.
    fn draw_kill(&self) -> Option<Duration> {
        let o = &self.options;
        if o.kill_rate <= 0.0 {
            return None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        if rng.random::<f64>() >= o.kill_rate {
            return None;
        }
        let within = duration_micros(o.kill_within);
        Some(Duration::from_micros(rng.random_range(0..=within)))
    }
}

/// A handler run killed part-way ([`InvokerOptions::kill_rate`]).
#[derive(Clone, Debug)]
pub struct Kill {
    /// When it was killed.
    pub at: Timestamp,
    /// The event the run had.
    pub event: WorkerEvent,
}

fn lock_stats(inner: &Inner) -> MutexGuard<'_, InvokerStats> {
    inner.stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lambda's asynchronous invoke in memory: queues each event, then runs the handler under the
/// function's concurrency with Lambda's throttling back-off, init delays, function-error
/// retries and on-failure destination (see the [module](self) for the model). Cloning shares
/// it.
#[derive(Clone)]
pub struct LocalInvoker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalInvoker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalInvoker")
            .field("options", &self.inner.options)
            .field("stats", &self.stats())
            .finish()
    }
}

/// What one invoke drew.
struct Draw {
    fail: Option<InvokeError>,
    delays: Vec<Duration>,
    /// The event is queued, but the caller is told the call failed.
    lose_answer: bool,
}

impl LocalInvoker {
    /// An invoker with the default options (AWS's values: unbounded concurrency, 6 h event age,
    /// 2 retries, 22 ms cold start) and no injected faults.
    pub fn new(clock: Arc<dyn Clock>, handler: impl EventHandler) -> Self {
        Self::build(clock, Arc::new(handler), InvokerOptions::default())
    }

    /// An invoker with `options`; refuses what [`InvokerOptions::validate`] refuses.
    pub fn with_options(
        clock: Arc<dyn Clock>,
        handler: Arc<dyn EventHandler>,
        options: InvokerOptions,
    ) -> Result<Self, MemoryError> {
        options.validate()?;
        Ok(Self::build(clock, handler, options))
    }

    fn build(
        clock: Arc<dyn Clock>,
        handler: Arc<dyn EventHandler>,
        options: InvokerOptions,
    ) -> Self {
        let rng = StdRng::seed_from_u64(options.seed);
        let environments = Environments::new(options.concurrency, options.keep_warm);
        LocalInvoker {
            inner: Arc::new(Inner {
                clock,
                handler,
                options,
                rng: Mutex::new(rng),
                stats: Mutex::new(InvokerStats::default()),
                environments,
                failures: Mutex::new(Vec::new()),
                kills: Mutex::new(Vec::new()),
                outstanding: watch::channel(0).0,
            }),
        }
    }

    /// The options in force.
    pub fn options(&self) -> &InvokerOptions {
        &self.inner.options
    }

    /// Counts so far.
    pub fn stats(&self) -> InvokerStats {
        let peak = self.inner.environments.peak();
        InvokerStats {
            peak_concurrency: u64::try_from(peak).unwrap_or(u64::MAX),
            ..*lock_stats(&self.inner)
        }
    }

    /// The on-failure destination's records so far, oldest first.
    pub fn failures(&self) -> Vec<FailureRecord> {
        self.inner.failures_mut().clone()
    }

    /// The runs killed part-way so far, oldest first.
    pub fn kills(&self) -> Vec<Kill> {
        self.inner.kills_mut().clone()
    }

    /// Takes the on-failure destination's records out (as a redrive reads its queue), oldest
    /// first.
    pub fn take_failures(&self) -> Vec<FailureRecord> {
        std::mem::take(&mut *self.inner.failures_mut())
    }

    /// Execution environments busy now (in init or running the handler).
    pub fn busy(&self) -> usize {
        self.inner.environments.busy()
    }

    /// Accepted copies not yet ended: queued, waiting out a throttling back-off or a retry
    /// delay, initialising or running.
    pub fn outstanding(&self) -> usize {
        *self.inner.outstanding.borrow()
    }

    /// Resolves when every accepted copy has ended (its handler succeeded, or it went to the
    /// on-failure destination): none is queued, waiting to be retried, or running.
    pub async fn wait_idle(&self) {
        let mut rx = self.inner.outstanding.subscribe();
        // The sender lives in `inner`, which `self` holds: the channel cannot close.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    fn draw(&self) -> Draw {
        let o = &self.inner.options;
        let mut guard = self
            .inner
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let rng: &mut StdRng = &mut guard;
        let delay = |rng: &mut StdRng| {
            let lo = duration_micros(*o.delay.start());
            let hi = duration_micros(*o.delay.end()).max(lo);
            Duration::from_micros(rng.random_range(lo..=hi))
        };
        if rng.random::<f64>() < o.fail_rate {
            let fail = if rng.random::<bool>() {
                InvokeError::Throttled {
                    reason: THROTTLE_REASON.to_string(),
                    retry_after: Some(Duration::from_secs(1)),
                }
            } else {
                InvokeError::transport("injected transport failure")
            };
            return Draw {
                fail: Some(fail),
                delays: Vec::new(),
                lose_answer: false,
            };
        }
        let mut delays = vec![delay(rng)];
        if rng.random::<f64>() < o.duplicate_rate {
            delays.push(delay(rng));
        }
        let lose_answer = o.lost_answer_rate > 0.0 && rng.random::<f64>() < o.lost_answer_rate;
        Draw {
            fail: None,
            delays,
            lose_answer,
        }
    }

    /// The event as the worker would receive it: through its JSON form, within the size limit.
    fn wire(event: &WorkerEvent) -> Result<WorkerEvent, InvokeError> {
        let bytes = serde_json::to_vec(event)
            .map_err(|e| InvokeError::rejected_by(format!("event is not serializable: {e}"), e))?;
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(InvokeError::rejected(format!(
                "event payload is {} bytes; the async invoke limit is {MAX_EVENT_BYTES}",
                bytes.len()
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| InvokeError::rejected_by(format!("event does not read back: {e}"), e))
    }
}

#[async_trait]
impl Invoker for LocalInvoker {
    async fn invoke(&self, event: &WorkerEvent) -> Result<(), InvokeError> {
        lock_stats(&self.inner).invokes += 1;
        let latency = self.inner.options.api_latency;
        if !latency.is_zero() {
            self.inner.clock.sleep(latency).await;
        }
        let draw = self.draw();
        let delivered = match draw.fail.map_or_else(|| Self::wire(event), Err) {
            Ok(ev) => ev,
            Err(e) => {
                lock_stats(&self.inner).failed += 1;
                return Err(e);
            }
        };
        let accepted_at = self.inner.clock.now();
        {
            let mut stats = lock_stats(&self.inner);
            stats.accepted += 1;
            stats.duplicates += draw.delays.len().saturating_sub(1) as u64;
        }
        for delay in draw.delays {
            let outstanding = Outstanding::take(self.inner.clone());
            tokio::spawn(deliver(outstanding, delivered.clone(), accepted_at, delay));
        }
        if draw.lose_answer {
            lock_stats(&self.inner).lost_answers += 1;
            return Err(InvokeError::transport(
                "injected lost answer: the event was accepted",
            ));
        }
        Ok(())
    }
}
