//! AWS adapters for the quota-orchestrator ports (`qo_core::ports`), over the AWS SDK for Rust:
//! the job queues on SQS, the shared state on DynamoDB, the worker invoker on Lambda, jobs'
//! results to SQS, SNS, EventBridge or Lambda (large bodies to S3), and the API key from
//! Secrets Manager or SSM.
//!
//! Every client is built from one [`SdkConfig`](aws_config::SdkConfig) made by
//! [`load_config`]: explicit connect and read timeouts, a per-call timeout, and a bounded number
//! of attempts, so a function's timeout can be checked against the SDK's worst case
//! ([`check_function_timeout`]). An endpoint override points everything at a local emulator
//! (moto) for `qo local` and the tests.
//!
//! # Layout
//! - [`clients`]: [`SdkSettings`] (a `qo-core` type) into the SDK's configuration
//!   ([`SdkTimeouts`], [`load_config`]), [`check_function_timeout`].
//! - [`sqs`]: [`SqsQueue`] ([`JobSource`](qo_core::ports::JobSource),
//!   [`JobSink`](qo_core::ports::JobSink), [`Redrive`](qo_core::ports::Redrive)), send and
//!   depths, [`ensure_queues`].
//! - [`dynamo`]: [`DynamoStore`] ([`RecordStore`](qo_core::ports::RecordStore),
//!   [`LeaseStore`](qo_core::ports::LeaseStore),
//!   [`IdempotencyStore`](qo_core::ports::IdempotencyStore)), `ensure_table`.
//! - [`lambda`]: [`LambdaInvoker`] ([`Invoker`](qo_core::ports::Invoker)) with its
//!   [`InvokeLimiter`] and [`Backoff`].
//! - [`local`]: a local endpoint's SDK configuration ([`local_config`]) and a table and queues
//!   there ([`LocalStack`]), for `qo local --aws-endpoint`, `qo setup` and the moto tests.
//! - [`results`]: [`AwsResults`] ([`ResultSink`](qo_core::ports::ResultSink)): jobs' results
//!   to SQS, SNS, EventBridge and Lambda, large bodies to S3.
//! - [`secrets`]: [`load_api_key`] and the never-printed [`ApiKey`].
//! - [`worker_failures`]: bringing back the worker's on-failure queue
//!   ([`redrive_worker_failures`]).
//! - [`error`]: [`AwsError`] and the mapping of SDK errors into the ports' errors.

#![deny(missing_docs)]

pub mod clients;
pub mod dynamo;
pub mod error;
pub mod lambda;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod results;
pub mod secrets;
pub mod sqs;
pub mod worker_failures;

pub use clients::{
    DEFAULT_REGION, SdkSettings, SdkTimeoutError, SdkTimeouts, check_function_timeout, load_config,
    with_static_credentials,
};
pub use dynamo::DynamoStore;
pub use error::{AwsError, SdkFailure};
pub use lambda::{AsyncInvoke, Backoff, InvokeLimiter, InvokeSettings, LambdaInvoker};
pub use local::{LOCAL_CREDENTIALS, LocalStack, local_config};
pub use metrics::EmfMetrics;
pub use results::AwsResults;
pub use secrets::{ApiKey, KeySource, load_api_key};
pub use sqs::{
    BatchEntryError, JobsSent, QueueDepth, QueueUrls, SqsQueue, ensure_queues, ensure_queues_with,
};
pub use worker_failures::{WorkerFailuresReport, redrive_worker_failures};
