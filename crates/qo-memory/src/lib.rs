//! In-memory adapters for every port of [`qo_core::ports`], shared by the tests and the local run
//! (`qo local`). They keep the semantics of the AWS services they stand in for (SQS visibility and
//! receipts, DynamoDB conditional writes, Lambda's asynchronous delivery), are safe to share
//! between tokio tasks on a multi-thread runtime, and take their time from an injected
//! [`qo_core::time::Clock`], so they run under tokio's paused time.
//!
//! Each adapter is `Clone` and cloning shares the state: hand one clone to the orchestrator,
//! one to the worker, and keep one to send jobs and inspect.
//!
//! # Layout
//! - [`queue`]: [`MemoryQueue`], the main, retry and dead-letter queues ([`qo_core::ports::JobSource`],
//!   [`qo_core::ports::JobSink`]), with depths and dead letters for inspection.
//! - [`store`]: [`MemoryStore`], the state table ([`qo_core::ports::RecordStore`],
//!   [`qo_core::ports::LeaseStore`], [`qo_core::ports::IdempotencyStore`]), with injected
//!   save conflicts.
//! - [`invoker`]: [`LocalInvoker`], asynchronous invoke of the worker
//!   ([`qo_core::ports::Invoker`]) as Lambda runs it: reserved concurrency with throttling
//!   back-off, cold starts and warm reuse, function-error retries, the on-failure destination
//!   ([`FailureRecord`]), random delivery delays, injected invoke failures and duplicate
//!   deliveries.
//! - [`results`]: [`MemoryResults`], the result destinations ([`qo_core::ports::ResultSink`]),
//!   with a bucket for large bodies and injected refusals.
//! - [`error`]: [`MemoryError`], what these adapters refuse on their own account.

pub mod error;
pub mod invoker;
pub mod queue;
pub mod results;
pub mod store;

pub use error::MemoryError;
pub use invoker::{
    EventHandler, FailureCondition, FailureRecord, FunctionError, HandlerOutput, InvokerOptions,
    InvokerStats, Kill, LocalInvoker,
};
pub use queue::{
    BatchOp, Expired, MemoryQueue, QueueDepths, QueueFaults, QueueOptions, Redriven, SendOptions,
    SqsRequests,
};
pub use results::{DeliveredResult, MemoryResults};
pub use store::{JobStatus, MemoryStore, StoreStats};
