//! A quota-enforcing HTTP API simulator with fault injection.
//!
//! `qo local` uses it as the default API, the worker's tests and the end-to-end tests use it to
//! prove that the orchestrator never exceeds the quota: the simulator enforces every tier of a
//! [`qo_core::QuotaSpec`] exactly, on the real arrival time of each call, answers 429 with
//! `Retry-After` when a window is full, and reports the densest window it ever accepted. The
//! limit it enforces can differ from the quota the client is given, and change mid-run (a
//! [`LimitSchedule`]); another client can share it; its answers can carry rate-limit headers
//! ([`HeaderScheme`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), qo_sim::SimError> {
//! let sim = qo_sim::SimServer::start(qo_sim::SimConfig::new("20/s".parse().expect("spec"))).await?;
//! // ... point the worker at sim.url() ...
//! let stats = sim.stats();
//! assert!(stats.max_for("20/s").unwrap_or(0) <= 20);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: [`SimConfig`], the quota, the limit enforced, another client on the key, the
//!   rate-limit headers, faults, latency, seed and key.
//! - [`schedule`]: [`LimitSchedule`], the limit enforced and when it changes (`20/s;10/s@30`).
//! - [`enforce`]: [`Enforcer`], the pure admission decision per tier (rolling and calendar).
//! - [`limiter`]: [`Limiter`], how the API counts a rolling tier (sliding log, fixed window,
//!   token bucket, GCRA), each tier's meter, and the [`WindowView`] the headers report.
//! - [`calendar`]: UTC calendar periods, computed independently of the pacer's arithmetic.
//! - [`window`]: [`max_in_window`] and [`max_in_calendar_period`] over a log of call times.
//! - [`record`]: [`CallRecord`] and [`SimStats`].
//! - [`server`]: the axum routes and the [`SimServer`] handle.
//! - [`error`]: the error type, [`SimError`].

pub mod calendar;
pub mod config;
pub mod enforce;
pub mod error;
pub mod limiter;
pub mod record;
pub mod schedule;
pub mod server;
pub mod window;

pub use config::{HeaderScheme, SimConfig};
pub use enforce::{Admission, Enforcer};
pub use error::SimError;
pub use limiter::{Limiter, WindowView};
pub use record::{CallKind, CallRecord, InForce, SimStats};
pub use schedule::{LimitSchedule, ScheduleError};
pub use server::{HEALTH_PATH, SimServer};
pub use window::{max_in_calendar_period, max_in_window};
