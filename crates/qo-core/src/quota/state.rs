//! The persisted quota state: per-tier usage, the slow-start ramp, the API's back-off, the
//! write-ahead horizon and the learned rate; and the per-tier usage a status report shows.
//!
//! This is data only: what each field means to pacing is decided by the constraints (the
//! private `quota::constraint` module) and the [`super::Pacer`]. Its serialized shape is what
//! the state store holds, so fields are only ever added (with `#[serde(default)]`).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::adaptive::Adaptive;
use super::spec::{Period, WindowKind};
use crate::time::Timestamp;

/// The usage of one tier: everything needed to pace it after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierUsage {
    /// The tier's period (matches usage to a tier when the spec changes).
    pub period: Period,
    /// The tier's window kind.
    pub window: WindowKind,
    /// GCRA theoretical arrival time of the next call.
    #[serde(default)]
    pub tat: Timestamp,
    /// Rolling window counts: (bucket index, calls).
    #[serde(default)]
    pub buckets: VecDeque<(u64, u32)>,
    /// Calendar count: (period index, calls in it).
    #[serde(default)]
    pub calendar: Option<(u64, u32)>,
}

/// The persisted quota state: usage per tier, the slow-start ramp, and the API's back-off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaState {
    /// Usage, one entry per tier of the spec, in order.
    pub tiers: Vec<TierUsage>,
    /// When the current slow-start ramp began (the circuit's last closing).
    #[serde(default)]
    pub ramp_from: Option<Timestamp>,
    /// No call before this (the API's Retry-After).
    #[serde(default)]
    pub backoff_until: Option<Timestamp>,
    /// The latest slot handed out.
    #[serde(default)]
    pub last_slot: Option<Timestamp>,
    /// Slots handed out since the state was created.
    #[serde(default)]
    pub reserved_total: u64,
    /// Set while a run is dispatching: no slot after this is handed out before a later save.
    /// Found set at hydration, it means the last run stopped without saving its final usage.
    #[serde(default)]
    pub horizon: Option<Timestamp>,
    /// When the horizon was set (the save): calls before it are recorded in this state.
    #[serde(default)]
    pub saved_at: Option<Timestamp>,
    /// The rate learned from the API's throttles, so a new run starts where the last ended.
    #[serde(default)]
    pub adaptive: Adaptive,
    /// The usage of each worker function's own tiers (` per function`), by function name
    /// ([`super::PoolPacer`]); empty without per-function tiers, and then not written, so a
    /// state saved before pools reads the same.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub functions: BTreeMap<String, QuotaState>,
}

/// Usage of one tier, for status reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierReport {
    /// The tier, as spec text.
    pub tier: String,
    /// Calls counted in the current window.
    pub used: u64,
    /// The tier's limit.
    pub limit: u32,
    /// When the window resets (calendar) or the oldest counted call leaves it (rolling).
    pub resets_at: Option<Timestamp>,
}
