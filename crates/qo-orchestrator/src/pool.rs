//! The worker pool at dispatch: which function of the pool a job goes through, and when, so that
//! each call conforms to the shared tiers and to that function's own tiers (` per function`);
//! a job the function named in its origin had answered 429 or failed goes through another.
//!
//! The rule is [`qo_core::quota::PoolPacer`] (pure, in core); this module builds it from the
//! run's configuration and the saved quota state, which the run loop calls in a few places.

use qo_core::quota::{Pacer, PoolPacer, PoolSlot, QuotaSpec, QuotaState, Route};
use qo_core::{Control, Timestamp};

use crate::config::OrchestratorConfig;

/// The name the pool gives a single worker function that the configuration does not name
/// (tests, an invoker of one function): [`qo_core::ports::Invoker::invoke_on`] ignores it.
pub const UNNAMED: &str = "worker";

/// The pool of a run: the configured functions and each one's usage of its own tiers.
#[derive(Clone, Debug)]
pub struct WorkerPool {
    pacer: PoolPacer,
}

impl WorkerPool {
    /// The pool of `config` under the quota in force (`control`'s override or the
    /// configured one), continuing from the usage saved in `state`.
    pub fn hydrate(config: &OrchestratorConfig, control: &Control, state: &QuotaState) -> Self {
        let spec = control.quota.as_ref().unwrap_or(&config.quota);
        let names = if config.worker_functions.is_empty() {
            vec![UNNAMED.to_string()]
        } else {
            config.worker_functions.clone()
        };
        let mut unique: Vec<String> = Vec::with_capacity(names.len());
        for name in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        // Not empty and without repeats, so the pool builds.
        let pacer = match PoolPacer::hydrate(unique, spec, config.pacing, &state.functions) {
            Ok(pacer) => pacer,
            Err(_) => PoolPacer::one(UNNAMED.to_string(), spec, config.pacing, &state.functions),
        };
        WorkerPool { pacer }
    }

    /// Whether any function has tiers of its own (` per function` in the quota).
    pub fn has_own_tiers(&self) -> bool {
        self.pacer.has_own_tiers()
    }

    /// The earliest time at or after `t` a function that may take `avoid`'s job, and is not
    /// `full`, allows a call by its own tiers (the shared tiers aside): the decision asks the
    /// shared pacer from here. `None` when every function that may take it is full.
    pub fn free_at(&self, t: Timestamp, avoid: Option<&str>, full: &[String]) -> Option<Timestamp> {
        let route = Route {
            avoid,
            prefer: None,
            full,
        };
        self.pacer.free_at(t, route)
    }

    /// Of the held jobs, each last failed by the function in `avoids` (oldest first), the one
    /// the pool can call first by the functions' own tiers, through a function not `full`,
    /// and from when: the oldest among equals. A job that must avoid a busy function does not
    /// hold up the jobs behind it that another function can take. `None` when nothing is held
    /// or every job held may only go through full functions.
    pub fn first_ready<'h>(
        &self,
        t: Timestamp,
        avoids: impl Iterator<Item = Option<&'h str>>,
        full: &[String],
    ) -> Option<(usize, Timestamp)> {
        let mut best: Option<(usize, Timestamp)> = None;
        for (i, avoid) in avoids.enumerate() {
            let Some(at) = self.free_at(t, avoid, full) else {
                continue;
            };
            if best.is_none_or(|(_, b)| at < b) {
                best = Some((i, at));
            }
            if at <= t {
                break;
            }
        }
        best
    }

    /// Takes the slot at or after `slot` for a job along `route`, in the shared pacer and the
    /// chosen function's usage at once ([`PoolPacer::take_routed`]): preferring `route.prefer` among the functions that allow
    /// the slot (the function of the batch being filled), never one in `route.full`. `None`,
    /// with nothing taken, when every function the job may go through is full.
    pub fn take_routed(
        &mut self,
        shared: &mut Pacer,
        slot: Timestamp,
        route: Route<'_>,
    ) -> Option<PoolSlot> {
        self.pacer.take_routed(shared, slot, route)
    }

    /// The function the `probe`th health check of an episode goes through (1 for the first):
    /// the pool in turn, so that one function whose address the API blocks or whose network
    /// is down does not keep the circuit open while another could close it.
    pub fn health_check_function(&self, probe: u32) -> &str {
        let at = (probe.max(1) - 1) as usize % self.pacer.names().count().max(1);
        self.pacer.names().nth(at).unwrap_or(UNNAMED)
    }

    /// Follows an operator's change of the quota.
    pub fn set_spec(&mut self, spec: &QuotaSpec, config: &OrchestratorConfig) {
        self.pacer.set_spec(spec, config.pacing);
    }

    /// Writes each function's usage into the state about to be saved, with the save's horizon.
    pub fn save_into(
        &mut self,
        state: &mut QuotaState,
        now: Timestamp,
        horizon: Option<Timestamp>,
    ) {
        self.pacer.set_horizon(now, horizon);
        state.functions = self.pacer.states();
    }
}
