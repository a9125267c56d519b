//! The pacing policy: how the quota is used (greedy or spread budgets, the worker's call
//! tolerance, headroom, the slow-start ramp and the learned rate's settings).
//!
//! The policy is configuration: it never changes while a [`crate::quota::Pacer`] runs, and it
//! is not persisted with the usage ([`crate::quota::QuotaState`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::adaptive::AdaptivePolicy;
use crate::time::Timestamp;

/// How budget tiers (hour, day, month) are used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetMode {
    /// Use the budget as fast as the short tiers allow, then wait for the reset.
    #[default]
    Greedy,
    /// Pace so that the budget lasts until the reset.
    Spread,
}

impl std::str::FromStr for BudgetMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "greedy" => Ok(BudgetMode::Greedy),
            "spread" => Ok(BudgetMode::Spread),
            other => Err(format!("`{other}` is not a budget mode (greedy or spread)")),
        }
    }
}

/// After the circuit closes, the rate ramps from `from_fraction` to the full quota over `duration`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlowStart {
    /// How long the ramp lasts (zero disables slow start).
    pub duration: Duration,
    /// The fraction of the full rate the ramp starts at, in (0, 1].
    pub from_fraction: f64,
}

impl Default for SlowStart {
    fn default() -> Self {
        SlowStart {
            duration: Duration::from_secs(30),
            from_fraction: 0.1,
        }
    }
}

impl SlowStart {
    /// The fraction of the full rate allowed at `t` by a ramp that began at `from` (none: 1).
    pub fn fraction(&self, from: Option<Timestamp>, t: Timestamp) -> f64 {
        match from {
            Some(from) if !self.duration.is_zero() => {
                let progress = (t.since(from).as_secs_f64() / self.duration.as_secs_f64()).min(1.0);
                let f0 = self.from_fraction.clamp(0.01, 1.0);
                f0 + (1.0 - f0) * progress
            }
            _ => 1.0,
        }
    }
}

/// How the quota is used.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PacingPolicy {
    /// Greedy or spread use of budget tiers.
    pub mode: BudgetMode,
    /// The most a worker may call after its slot; windows are widened by it.
    pub call_tolerance: Duration,
    /// A fraction of the quota left unused, in [0, 0.5): a fallback, normally 0.
    pub headroom: f64,
    /// The ramp after the circuit closes.
    pub slow_start: SlowStart,
    /// The rate learned from the API's throttles, under the configured quota.
    #[serde(default)]
    pub adaptive: AdaptivePolicy,
}

impl Default for PacingPolicy {
    fn default() -> Self {
        PacingPolicy {
            mode: BudgetMode::Greedy,
            call_tolerance: Duration::from_millis(5),
            headroom: 0.0,
            slow_start: SlowStart::default(),
            adaptive: AdaptivePolicy::default(),
        }
    }
}
