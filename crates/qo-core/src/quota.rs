//! Quotas: the spec ([`spec`]), the pacing decision over usage state ([`pacer`]), the rate
//! learned from the API's throttles ([`adaptive`]), and how much of the pace a run used
//! ([`utilization`]).

pub mod adaptive;
pub mod pacer;
pub mod spec;
pub mod utilization;

pub use adaptive::{Adaptive, AdaptivePolicy, Decrease, DecreaseBasis, Reaction};
pub use pacer::{
    Availability, BudgetMode, Pacer, PacingPolicy, QuotaState, SlowStart, TierReport, TierUsage,
};
pub use spec::{Period, QuotaSpec, SpecError, Tier, TierId, WindowKind};
pub use utilization::{Utilization, UtilizationMeter};
