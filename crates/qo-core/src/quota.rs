//! Quotas: the spec ([`spec`]), the pacing decision over usage state ([`pacer`]), and how
//! much of the pace a run used ([`utilization`]).

pub mod pacer;
pub mod spec;
pub mod utilization;

pub use pacer::{
    Availability, BudgetMode, Pacer, PacingPolicy, QuotaState, SlowStart, TierReport, TierUsage,
};
pub use spec::{Period, QuotaSpec, SpecError, Tier, WindowKind};
pub use utilization::{Utilization, UtilizationMeter};
