//! Quotas: the spec ([`spec`]) and the pacing decision over usage state ([`pacer`]).

pub mod pacer;
pub mod spec;

pub use pacer::{
    Availability, BudgetMode, Pacer, PacingPolicy, QuotaState, SlowStart, TierReport, TierUsage,
};
pub use spec::{Period, QuotaSpec, SpecError, Tier, WindowKind};
