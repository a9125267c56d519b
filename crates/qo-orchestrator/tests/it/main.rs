//! The integration tests of `qo-orchestrator`, one test binary: the dispatch loop over the
//! in-memory adapters on tokio's paused clock (each module a concern: dispatch, the closed
//! loop, receive churn, the retention sweep, no job lost), sharing the harness in `support`.
//! Run one module with `cargo test -p qo-orchestrator --test it closed_loop`.

mod closed_loop;
mod dispatch;
mod no_job_lost;
mod pool;
mod receive_churn;
mod retention_sweep;
mod scale;
mod support;
