//! The ports: narrow traits the loop and the worker are generic over. Each has an AWS adapter
//! (`qo-aws`) and an in-memory adapter (`qo-memory`).
//!
//! | port | orchestrator | worker |
//! |---|---|---|
//! | [`JobSource`] receive, delete, release, re-send fresh copies | yes | |
//! | [`JobSink`] dead-letter, re-queue | yes | yes |
//! | [`RecordStore`] quota, circuit, control records | yes | yes |
//! | [`LeaseStore`] one dispatching orchestrator | yes | |
//! | [`IdempotencyStore`] one successful call per job | | yes |
//! | [`Invoker`] async invoke of the worker | yes | |
//! | [`ResultSink`] a job's result to its destination | | yes |
//! | [`crate::time::Clock`] | yes | yes |
//!
//! One module per port: [`queue`], [`store`] (records, lease, idempotency), [`invoker`],
//! [`results`]. The retry policy over [`JobSink`] is [`crate::retry`]'s.

pub mod invoker;
pub mod queue;
pub mod results;
pub mod store;

pub use invoker::{InvokeError, Invoker, PoolInvoker, SharedError};
pub use queue::{
    DeadLetter, JobSink, JobSource, Message, QueueError, QueueRole, Redrive, RedriveReport,
};
pub use results::{Delivered, ResultError, ResultSink};
pub use store::{
    Claim, IdempotencyStore, Lease, LeaseStore, RecordKey, RecordStore, StoreError,
    UPDATE_ATTEMPTS, Versioned, load_record, save_record, update_record,
};

/// A boxed error from an adapter's backend, kept as the source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
