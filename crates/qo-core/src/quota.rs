//! Quotas: the spec and its calendar arithmetic ([`spec`]), the policy ([`policy`]), the
//! persisted usage ([`state`]), the constraints each tier puts on calls (`constraint`, a
//! private module: the GCRA pace, the rolling count, the calendar count), the pacer that
//! combines the tiers and hands out slots ([`pacer`]), which worker function of a pool makes
//! each call ([`pool`]), what the API told the worker ([`feedback`]: its 429s and its
//! rate-limit window), the rate learned from it ([`adaptive`]), and how much of the pace a
//! run used ([`utilization`]).

pub mod adaptive;
mod constraint;
pub mod feedback;
pub mod pacer;
pub mod policy;
pub mod pool;
pub mod spec;
pub mod state;
pub mod utilization;

pub use adaptive::{Adaptive, AdaptivePolicy, Decrease, DecreaseBasis, LimitEstimate, Reaction};
pub use pacer::{Availability, NotNow, Pacer, Slot};
pub use policy::{BudgetMode, PacingPolicy, SlowStart};
pub use pool::{PoolError, PoolPacer, PoolSlot, Route};
pub use spec::{Period, QuotaSpec, SpecError, Tier, TierId, WindowKind};
pub use state::{QuotaState, TierReport, TierUsage};
pub use utilization::{Utilization, UtilizationMeter};
