//! The integration tests of `qo`, one test binary: `local` (`qo local` and `qo bench` run as
//! a user runs them), `system` (the whole system on the paused clock), and, with the `aws`
//! feature, `ops` (the operations against moto) and `redrive_worker_failures`. Run one module
//! with `cargo test -p qo --all-features --test it ops`.

mod local;
#[cfg(feature = "aws")]
mod ops;
#[cfg(feature = "aws")]
mod redrive_worker_failures;
#[cfg(feature = "aws")]
mod results_over_moto;
mod simulate;
mod system;

/// One real-time run at a time: a `qo local` run, the pause test's orchestrator, or a
/// paused-clock system run (which keeps a core busy) beside another would bunch its calls on
/// this machine's two cores (a call that leaves on time but arrives late is another window's),
/// which these tests would count as 429s or as a slow pause.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
