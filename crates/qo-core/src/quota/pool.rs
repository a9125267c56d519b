//! The pool pacer: which worker function of the pool makes a call, and when, so that the call
//! conforms to the shared tiers and to that function's own tiers (` per function`).
//!
//! Pure, like the [`Pacer`]: every method takes the time. One call ([`PoolPacer::take`])
//! checks and records both, so a caller cannot record a slot in one and not the other.
//!
//! ```
//! use std::time::Duration;
//! use qo_core::Timestamp;
//! use qo_core::quota::{Pacer, PacingPolicy, PoolPacer};
//!
//! let policy = PacingPolicy { call_tolerance: Duration::ZERO, ..PacingPolicy::default() };
//! let spec: qo_core::quota::QuotaSpec = "4/s,2/s per function".parse().expect("spec");
//! let mut shared = Pacer::new(spec.clone(), policy);
//! let mut pool = PoolPacer::new(vec!["a".into(), "b".into()], &spec, policy).expect("pool");
//! let t0 = Timestamp::from_secs(1_800_000_000);
//!
//! // The first call goes through `a`, the next through `b` (least recently used), 250 ms on.
//! let first = pool.take(&mut shared, t0, None);
//! assert_eq!((first.function(), first.at()), ("a", t0));
//! let second = pool.take(&mut shared, t0, None);
//! assert_eq!((second.function(), second.at()), ("b", t0.plus(Duration::from_millis(250))));
//! // A job `b` had answered 429 avoids `b`: `a` takes it when its own 2/s allows.
//! let retry = pool.take(&mut shared, t0, Some("b"));
//! assert_eq!((retry.function(), retry.at()), ("a", t0.plus(Duration::from_millis(500))));
//! ```

use std::collections::BTreeMap;

use super::pacer::{Pacer, Slot};
use super::policy::PacingPolicy;
use super::spec::QuotaSpec;
use super::state::QuotaState;
use crate::time::Timestamp;

/// How many times the shared and the function's answers are reconciled before the later one is
/// taken as it is (each round moves the candidate later; in practice one or two rounds do).
const MAX_ROUNDS: usize = 64;

/// The pool could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// No function was named.
    #[error("the worker pool has no function; name at least one")]
    Empty,
    /// A function was named twice.
    #[error("the worker pool names `{0}` twice")]
    Duplicate(String),
}

/// One function of the pool: its name, its own tiers' usage, when it was last given a call.
#[derive(Clone, Debug)]
struct Member {
    name: String,
    /// Its own tiers (`None`: the spec has no per-function tier).
    own: Option<Pacer>,
    /// The latest slot it was given (least recently used goes first).
    last: Option<Timestamp>,
}

impl Member {
    /// The function `name` under `spec`'s per-function tiers, from its saved usage; a horizon
    /// left (no final save) is counted as used.
    fn hydrate(
        name: String,
        spec: &QuotaSpec,
        policy: PacingPolicy,
        saved: &BTreeMap<String, QuotaState>,
    ) -> Self {
        let own = spec.per_function().map(|own| {
            let state = saved.get(&name).cloned().unwrap_or_default();
            let mut p = Pacer::hydrate(own, policy, state);
            p.assume_unrecorded_until();
            p
        });
        let last = own.as_ref().and_then(|p| p.state().last_slot);
        Member { name, own, last }
    }

    /// The earliest time at or after `t` its own tiers allow a call.
    fn next_slot(&self, t: Timestamp) -> Timestamp {
        self.own.as_ref().map_or(t, |p| p.next_slot(t))
    }
}

/// A call the pool pacer recorded: its slot (conforming to the shared tiers and the function's
/// own) and the function that makes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSlot {
    slot: Slot,
    function: String,
}

impl PoolSlot {
    /// When the call may happen.
    pub fn at(&self) -> Timestamp {
        self.slot.at()
    }

    /// The slot.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The worker function that makes the call.
    pub fn function(&self) -> &str {
        &self.function
    }
}

/// What a call asks of the pool's choice of function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route<'a> {
    /// The function that last had the job answered 429 or failed: never chosen when the pool
    /// has another.
    pub avoid: Option<&'a str>,
    /// Among the functions that allow the earliest slot, this one first (the function of the
    /// batch being filled).
    pub prefer: Option<&'a str>,
    /// Functions that take no more work now (each one's concurrency is all in use): never
    /// chosen, not even when they are all the route allows.
    pub full: &'a [String],
}

/// The functions of the pool and the usage of each one's own tiers.
#[derive(Clone, Debug)]
pub struct PoolPacer {
    members: Vec<Member>,
}

impl PoolPacer {
    /// A pool of `names` with no usage yet, under `spec`'s per-function tiers.
    pub fn new(
        names: Vec<String>,
        spec: &QuotaSpec,
        policy: PacingPolicy,
    ) -> Result<Self, PoolError> {
        Self::hydrate(names, spec, policy, &BTreeMap::new())
    }

    /// A pool of one function, continuing from its saved usage (cannot fail).
    pub fn one(
        name: String,
        spec: &QuotaSpec,
        policy: PacingPolicy,
        saved: &BTreeMap<String, QuotaState>,
    ) -> Self {
        PoolPacer {
            members: vec![Member::hydrate(name, spec, policy, saved)],
        }
    }

    /// A pool continuing from the saved usage of each function ([`QuotaState::functions`]).
    /// A function saved without saving its last usage (a horizon left) counts the horizon as
    /// used, as the shared pacer does, so a restart cannot let a function exceed its tier.
    pub fn hydrate(
        names: Vec<String>,
        spec: &QuotaSpec,
        policy: PacingPolicy,
        saved: &BTreeMap<String, QuotaState>,
    ) -> Result<Self, PoolError> {
        if names.is_empty() {
            return Err(PoolError::Empty);
        }
        let mut members: Vec<Member> = Vec::with_capacity(names.len());
        for name in names {
            if members.iter().any(|m| m.name == name) {
                return Err(PoolError::Duplicate(name));
            }
            members.push(Member::hydrate(name, spec, policy, saved));
        }
        Ok(PoolPacer { members })
    }

    /// The functions' names, in the order given.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|m| m.name.as_str())
    }

    /// How many functions the pool has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the pool is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether any function has tiers of its own (` per function`): only then can a slot the
    /// shared tiers allow be one no function allows.
    pub fn has_own_tiers(&self) -> bool {
        self.members.iter().any(|m| m.own.is_some())
    }

    /// Follows an operator's change of the quota: each function keeps its usage of the
    /// per-function tiers that stay.
    pub fn set_spec(&mut self, spec: &QuotaSpec, policy: PacingPolicy) {
        let own = spec.per_function();
        for m in &mut self.members {
            m.own = match (own.clone(), m.own.take()) {
                (None, _) => None,
                (Some(own), None) => Some(Pacer::new(own, policy)),
                (Some(own), Some(mut p)) => {
                    if p.spec() != &own {
                        p.set_spec(own);
                    }
                    Some(p)
                }
            };
        }
    }

    /// The functions that may take a job routed by `route`: all but `route.avoid` when the
    /// pool has another, and of those none in `route.full`.
    fn eligible<'s>(&'s self, route: Route<'s>) -> impl Iterator<Item = usize> + 's {
        let avoid = route.avoid;
        let others = avoid.is_some_and(|a| self.members.iter().any(|m| m.name != a));
        self.members
            .iter()
            .enumerate()
            .filter(move |(_, m)| !(others && avoid == Some(m.name.as_str())))
            .filter(move |(_, m)| !route.full.contains(&m.name))
            .map(|(i, _)| i)
    }

    /// The earliest time at or after `t` some function that may take a job routed by `route`
    /// allows a call by its own tiers (the shared tiers aside); `None` when every function the
    /// route allows is full ([`Route::full`]).
    pub fn free_at(&self, t: Timestamp, route: Route<'_>) -> Option<Timestamp> {
        self.eligible(route)
            .map(|i| self.members[i].next_slot(t))
            .min()
    }

    /// The first slot at or after `t` that conforms to the shared tiers and to member `i`'s.
    fn joint_slot(&self, shared: &Pacer, i: usize, t: Timestamp) -> Timestamp {
        let member = &self.members[i];
        let mut at = t;
        for _ in 0..MAX_ROUNDS {
            let s = shared.next_slot(at);
            let own = member.next_slot(s);
            if own == s {
                return s;
            }
            at = own;
        }
        at
    }

    /// Takes a call: the first slot at or after `t` that conforms to the shared tiers and to
    /// one function's own tiers, through the function that allows it first (the least
    /// recently used among equals), never `avoid` (the function that last had the job
    /// answered 429 or failed) when the pool has another. Records it in `shared` and in that
    /// function's usage.
    pub fn take(&mut self, shared: &mut Pacer, t: Timestamp, avoid: Option<&str>) -> PoolSlot {
        let route = Route {
            avoid,
            ..Route::default()
        };
        match self.take_routed(shared, t, route) {
            Some(taken) => taken,
            // Unreachable: with no function full, the pool (never empty) has one to take it.
            None => self.record(shared, t, 0),
        }
    }

    /// [`Self::take`] along `route`: among the functions that allow the earliest slot,
    /// `route.prefer` first (the function of the batch being filled, so that consecutive jobs
    /// share an invocation), and never a function in `route.full`. `None`, with nothing
    /// recorded, when every function the route allows is full.
    pub fn take_routed(
        &mut self,
        shared: &mut Pacer,
        t: Timestamp,
        route: Route<'_>,
    ) -> Option<PoolSlot> {
        let (at, i) = self
            .eligible(route)
            .map(|i| {
                let other = route.prefer != Some(self.members[i].name.as_str());
                (
                    self.joint_slot(shared, i, t),
                    other,
                    self.members[i].last,
                    i,
                )
            })
            .min_by(|a, b| {
                a.0.cmp(&b.0)
                    .then(a.1.cmp(&b.1))
                    .then(a.2.cmp(&b.2))
                    .then(a.3.cmp(&b.3))
            })
            .map(|(at, _, _, i)| (at, i))?;
        Some(self.record(shared, at, i))
    }

    /// Records the call at the first slot from `at` in `shared` and in member `i`'s usage.
    fn record(&mut self, shared: &mut Pacer, at: Timestamp, i: usize) -> PoolSlot {
        let slot = shared.take_first_from(at);
        let member = &mut self.members[i];
        if let Some(own) = &mut member.own {
            let _ = own.take_first_from(slot.at());
        }
        member.last = Some(member.last.map_or(slot.at(), |l| l.max(slot.at())));
        PoolSlot {
            slot,
            function: member.name.clone(),
        }
    }

    /// Sets each function's write-ahead horizon at a save made at `now` (see
    /// [`Pacer::set_horizon`]).
    pub fn set_horizon(&mut self, now: Timestamp, horizon: Option<Timestamp>) {
        for own in self.members.iter_mut().filter_map(|m| m.own.as_mut()) {
            own.set_horizon(now, horizon);
        }
    }

    /// The usage to save with the quota state ([`QuotaState::functions`]): empty without
    /// per-function tiers.
    pub fn states(&self) -> BTreeMap<String, QuotaState> {
        self.members
            .iter()
            .filter_map(|m| m.own.as_ref().map(|p| (m.name.clone(), p.state().clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy() -> PacingPolicy {
        PacingPolicy {
            call_tolerance: Duration::ZERO,
            ..PacingPolicy::default()
        }
    }

    fn t0() -> Timestamp {
        Timestamp::from_secs(1_800_000_000)
    }

    #[test]
    fn spreads_round_robin_without_own_tiers() {
        let spec: QuotaSpec = "10/s".parse().expect("spec");
        let mut shared = Pacer::new(spec.clone(), policy());
        let names = vec!["a".to_string(), "b".into(), "c".into()];
        let mut pool = PoolPacer::new(names, &spec, policy()).expect("pool");
        let got: Vec<String> = (0..6)
            .map(|_| pool.take(&mut shared, t0(), None).function().to_string())
            .collect();
        assert_eq!(got, ["a", "b", "c", "a", "b", "c"]);
        assert!(pool.states().is_empty(), "nothing per function to save");
    }

    #[test]
    fn avoids_the_function_that_failed_unless_it_is_alone() {
        let spec: QuotaSpec = "10/s".parse().expect("spec");
        let mut shared = Pacer::new(spec.clone(), policy());
        let mut pool = PoolPacer::new(vec!["a".into(), "b".into()], &spec, policy()).expect("pool");
        for _ in 0..4 {
            assert_eq!(pool.take(&mut shared, t0(), Some("a")).function(), "b");
        }
        let mut one = PoolPacer::new(vec!["a".into()], &spec, policy()).expect("pool");
        assert_eq!(one.take(&mut shared, t0(), Some("a")).function(), "a");
    }

    #[test]
    fn a_full_function_is_never_chosen_and_a_pool_all_full_takes_nothing() {
        let spec: QuotaSpec = "10/s".parse().expect("spec");
        let mut shared = Pacer::new(spec.clone(), policy());
        let names = vec!["a".to_string(), "b".into(), "c".into()];
        let mut pool = PoolPacer::new(names, &spec, policy()).expect("pool");
        let full = ["a".to_string()];
        let route = Route {
            full: &full,
            ..Route::default()
        };
        let got: Vec<String> = (0..4)
            .map(|_| {
                let taken = pool.take_routed(&mut shared, t0(), route).expect("b or c");
                taken.function().to_string()
            })
            .collect();
        assert_eq!(got, ["b", "c", "b", "c"]);
        // A job `b` failed, with `c` full too: it waits rather than go back through `b`...
        let full = ["a".to_string(), "c".into()];
        let route = Route {
            avoid: Some("b"),
            full: &full,
            ..Route::default()
        };
        assert_eq!(pool.free_at(t0(), route), None);
        let before = shared.state().clone();
        assert_eq!(pool.take_routed(&mut shared, t0(), route), None);
        assert_eq!(shared.state(), &before, "nothing recorded");
        // ...while a fresh job goes through `b`.
        let fresh = Route {
            full: &full,
            ..Route::default()
        };
        assert_eq!(pool.free_at(t0(), fresh), Some(t0()));
        let taken = pool.take_routed(&mut shared, t0(), fresh).expect("b");
        assert_eq!(taken.function(), "b");
    }

    #[test]
    fn a_restart_keeps_each_functions_usage() {
        let spec: QuotaSpec = "100/s,2/min per function".parse().expect("spec");
        let mut shared = Pacer::new(spec.clone(), policy());
        let names = vec!["a".to_string(), "b".into()];
        let mut pool = PoolPacer::new(names.clone(), &spec, policy()).expect("pool");
        for _ in 0..4 {
            let _ = pool.take(&mut shared, t0(), None);
        }
        let json = serde_json::to_string(&pool.states()).expect("json");
        let saved = serde_json::from_str(&json).expect("json");
        let mut again = PoolPacer::hydrate(names, &spec, policy(), &saved).expect("pool");
        // Both functions used their 2/min: the next call waits for a minute.
        let next = again.take(&mut shared, t0(), None);
        assert!(next.at() >= t0().plus(Duration::from_secs(60)), "{next:?}");
    }

    #[test]
    fn refuses_an_empty_or_repeated_pool() {
        let spec: QuotaSpec = "10/s".parse().expect("spec");
        assert_eq!(
            PoolPacer::new(vec![], &spec, policy()).err(),
            Some(PoolError::Empty)
        );
        assert_eq!(
            PoolPacer::new(vec!["a".into(), "a".into()], &spec, policy()).err(),
            Some(PoolError::Duplicate("a".into()))
        );
    }
}
