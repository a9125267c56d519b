//! [`LocalInvoker`]: Lambda's asynchronous invoke in memory.
//!
//! [`Invoker::invoke`] returns as soon as the event is accepted (AWS answers 202 then); each
//! event then goes to the [`EventHandler`] on its own spawned task after a delivery delay drawn
//! uniformly from [`InvokerOptions::delay`], so events arrive late and out of order as they do
//! from Lambda's async queue. The event goes through its JSON wire form on the way (a payload over
//! Lambda's oldest async limit is rejected), and the delay is slept on the injected [`Clock`].
//!
//! Faults, drawn from a seeded random generator so a run repeats: a fraction of invokes fail
//! ([`InvokeError::Throttled`] or [`InvokeError::Transport`], half each), and a fraction of
//! accepted events are delivered twice, as Lambda may.

mod schedule;

use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use qo_core::job::WorkerEvent;
use qo_core::ports::{InvokeError, Invoker};
use qo_core::time::{Clock, duration_micros};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::error::MemoryError;

pub use schedule::{
    THROTTLE_BACKOFF_FIRST, THROTTLE_BACKOFF_MAX, function_error_retry_delay, throttle_backoff,
};

/// Largest event payload accepted: Lambda's async limit in older accounts (256 KiB).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// The reason a throttled invoke carries (one of Lambda's `TooManyRequestsException` reasons).
pub const THROTTLE_REASON: &str = "ReservedFunctionConcurrentInvocationLimitExceeded";

/// What receives the delivered events: the worker, in a test or the local run.
///
/// Any `Fn(WorkerEvent) -> impl Future<Output = ()>` closure is one:
/// `LocalInvoker::new(clock, move |ev| { let w = w.clone(); async move { w.handle(ev).await } })`.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one delivered event.
    async fn handle(&self, event: WorkerEvent);
}

#[async_trait]
impl<F, Fut> EventHandler for F
where
    F: Fn(WorkerEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    async fn handle(&self, event: WorkerEvent) {
        self(event).await;
    }
}

/// How the invoker delivers and fails.
#[derive(Clone, Debug)]
pub struct InvokerOptions {
    /// Delivery delay range, drawn uniformly per delivery (default 2 to 20 ms).
    pub delay: RangeInclusive<Duration>,
    /// Fraction of invokes that fail, 0 to 1 (default 0).
    pub fail_rate: f64,
    /// Fraction of accepted events delivered twice, 0 to 1 (default 0).
    pub duplicate_rate: f64,
    /// Seed of the random draws (default 0).
    pub seed: u64,
}

impl Default for InvokerOptions {
    fn default() -> Self {
        InvokerOptions {
            delay: Duration::from_millis(2)..=Duration::from_millis(20),
            fail_rate: 0.0,
            duplicate_rate: 0.0,
            seed: 0,
        }
    }
}

impl InvokerOptions {
    /// Checks the rates and the delay range.
    pub fn validate(&self) -> Result<(), MemoryError> {
        for (name, rate) in [
            ("fail_rate", self.fail_rate),
            ("duplicate_rate", self.duplicate_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(MemoryError::InvalidOption {
                    name,
                    value: rate.to_string(),
                    reason: "must be a fraction from 0 to 1",
                });
            }
        }
        if self.delay.start() > self.delay.end() {
            return Err(MemoryError::InvalidOption {
                name: "delay",
                value: format!("{:?}", self.delay),
                reason: "the range's start is after its end",
            });
        }
        Ok(())
    }
}

/// Counts of what the invoker did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InvokerStats {
    /// Calls to [`Invoker::invoke`].
    pub invokes: u64,
    /// Invokes accepted (returned `Ok`).
    pub accepted: u64,
    /// Invokes that failed (injected faults and rejected payloads).
    pub failed: u64,
    /// Deliveries handed to the handler (duplicates included).
    pub delivered: u64,
    /// Deliveries whose handler returned.
    pub completed: u64,
}

struct Inner {
    clock: Arc<dyn Clock>,
    handler: Arc<dyn EventHandler>,
    options: InvokerOptions,
    rng: Mutex<StdRng>,
    stats: Mutex<InvokerStats>,
    /// Accepted deliveries not yet completed (waiting out their delay or running).
    outstanding: watch::Sender<usize>,
}

/// Lambda's asynchronous invoke in memory: queues each event and hands it to the handler on its
/// own task after a random delay. Cloning shares it.
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

/// Decrements the outstanding count when a delivery ends, even by a panic in the handler.
struct Outstanding(Arc<Inner>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// What one invoke drew.
struct Draw {
    fail: Option<InvokeError>,
    delays: Vec<Duration>,
}

impl LocalInvoker {
    /// An invoker with the default options: 2 to 20 ms delivery delay, no faults.
    pub fn new(clock: Arc<dyn Clock>, handler: impl EventHandler) -> Self {
        Self::build(clock, Arc::new(handler), InvokerOptions::default())
    }

    /// An invoker with `options`; refuses rates outside 0 to 1 and an inverted delay range.
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
        LocalInvoker {
            inner: Arc::new(Inner {
                clock,
                handler,
                options,
                rng: Mutex::new(rng),
                stats: Mutex::new(InvokerStats::default()),
                outstanding: watch::channel(0).0,
            }),
        }
    }

    fn stats_mut(&self) -> MutexGuard<'_, InvokerStats> {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts so far.
    pub fn stats(&self) -> InvokerStats {
        *self.stats_mut()
    }

    /// Deliveries accepted and not yet completed.
    pub fn outstanding(&self) -> usize {
        *self.inner.outstanding.borrow()
    }

    /// Resolves when every accepted delivery has completed: none is waiting out its delay and
    /// none is still running in the handler.
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
                InvokeError::Transport("injected transport failure".to_string())
            };
            return Draw {
                fail: Some(fail),
                delays: Vec::new(),
            };
        }
        let mut delays = vec![delay(rng)];
        if rng.random::<f64>() < o.duplicate_rate {
            delays.push(delay(rng));
        }
        Draw { fail: None, delays }
    }

    /// The event as the worker would receive it: through its JSON form, within the size limit.
    fn wire(event: &WorkerEvent) -> Result<WorkerEvent, InvokeError> {
        let bytes = serde_json::to_vec(event)
            .map_err(|e| InvokeError::Rejected(format!("event is not serializable: {e}")))?;
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(InvokeError::Rejected(format!(
                "event payload is {} bytes; the async invoke limit is {MAX_EVENT_BYTES}",
                bytes.len()
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| InvokeError::Rejected(format!("event does not read back: {e}")))
    }
}

#[async_trait]
impl Invoker for LocalInvoker {
    async fn invoke(&self, event: &WorkerEvent) -> Result<(), InvokeError> {
        self.stats_mut().invokes += 1;
        let draw = self.draw();
        let delivered = match draw.fail.map_or_else(|| Self::wire(event), Err) {
            Ok(ev) => ev,
            Err(e) => {
                self.stats_mut().failed += 1;
                return Err(e);
            }
        };
        self.stats_mut().accepted += 1;
        for delay in draw.delays {
            self.inner.outstanding.send_modify(|n| *n += 1);
            let guard = Outstanding(self.inner.clone());
            let ev = delivered.clone();
            tokio::spawn(async move {
                let inner = &guard.0;
                inner.clock.sleep(delay).await;
                lock_stats(inner).delivered += 1;
                inner.handler.handle(ev).await;
                lock_stats(inner).completed += 1;
                drop(guard);
            });
        }
        Ok(())
    }
}

fn lock_stats(inner: &Inner) -> MutexGuard<'_, InvokerStats> {
    inner.stats.lock().unwrap_or_else(PoisonError::into_inner)
}
