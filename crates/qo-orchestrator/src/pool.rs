//! The worker pool at dispatch: which function of the pool a job goes through, and when, so that
//! each call conforms to the shared tiers and to that function's own tiers (` per function`);
//! a job the function named in its origin had answered 429 or failed goes through another.
//!
//! The rule is [`qo_core::quota::PoolPacer`] (pure, in core); this module builds it from the
//! run's configuration and the saved quota state, which the run loop calls in a few places.

use qo_core::quota::{Pacer, PoolPacer, PoolSlot, QuotaSpec, QuotaState};
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

    /// The earliest time at or after `t` a function that may take `avoid`'s job allows a call
    /// by its own tiers (the shared tiers aside): the decision asks the shared pacer from here.
    pub fn free_at(&self, t: Timestamp, avoid: Option<&str>) -> Timestamp {
        self.pacer.free_at(t, avoid)
    }

    /// Of the held jobs, each last failed by the function in `avoids` (oldest first), the one
    /// the pool can call first by the functions' own tiers, and from when: the oldest among
    /// equals. A job that must avoid a busy function does not hold up the jobs behind it that
    /// another function can take. `None` when nothing is held.
    pub fn first_ready<'h>(
        &self,
        t: Timestamp,
        avoids: impl Iterator<Item = Option<&'h str>>,
    ) -> Option<(usize, Timestamp)> {
        let mut best: Option<(usize, Timestamp)> = None;
        for (i, avoid) in avoids.enumerate() {
            let at = self.pacer.free_at(t, avoid);
            if best.is_none_or(|(_, b)| at < b) {
                best = Some((i, at));
            }
            if at <= t {
                break;
            }
        }
        best
    }

    /// Takes the slot at or after `slot` for a job last failed by `avoid`, in the shared pacer
    /// and the chosen function's usage at once.
    pub fn take(&mut self, shared: &mut Pacer, slot: Timestamp, avoid: Option<&str>) -> PoolSlot {
        self.pacer.take(shared, slot, avoid)
    }

    /// [`Self::take`], preferring `prefer` among the functions that allow the slot (the
    /// function of the batch being filled).
    pub fn take_preferring(
        &mut self,
        shared: &mut Pacer,
        slot: Timestamp,
        avoid: Option<&str>,
        prefer: Option<&str>,
    ) -> PoolSlot {
        self.pacer.take_preferring(shared, slot, avoid, prefer)
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
