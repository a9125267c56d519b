//! The two Lambda functions of quota-orchestrator, as thin binaries: each reads its
//! configuration once, builds the AWS SDK clients once per cold start, and hands every event
//! to its library (`qo-orchestrator`, `qo-worker`). Only this package (and `qo-aws`, the
//! adapters, and `qo`, the operations tool) depends on the AWS SDK.
//!
//! # Layout
//! - this library: what both binaries do alike: [`serve`] (logging, the exit code) and
//!   [`Common`] (the SDK settings, table and queues both read, and the state store and queues
//!   built over them), [`function_timeout`].
//! - `src/bin/orchestrator.rs`: the orchestrator function (the template's `Binary:
//!   orchestrator`), over DynamoDB, SQS and Lambda.
//! - [`worker`]: the worker function's life ([`worker::run`]), over DynamoDB, SQS, the result
//!   destinations and the API key from Secrets Manager or SSM, with the user's
//!   [`qo_worker::AroundCall`]; `src/bin/worker.rs` runs it with the stock one (`Binary:
//!   worker`), and a user's worker binary with its own (`examples/customer-summary`).
//! - `tests/`: the binaries started as Lambda starts them (refusals at init, EMF on stdout) and
//!   the end-to-end run over moto and `cargo lambda watch`.

pub mod worker;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use aws_config::SdkConfig;
use qo_aws::{DynamoStore, QueueUrls, SdkSettings, SqsQueue};
use qo_core::config::{ConfigError, Env};
use tracing::error;

/// A function's whole life: starts the JSON logs, then runs `run` (the cold start and the event
/// loop); when it fails, logs `"{function} stopped"` with the error and exits with failure, which
/// Lambda reports as an init error.
pub async fn serve(
    function: &str,
    run: impl Future<Output = Result<(), lambda_runtime::Error>>,
) -> ExitCode {
    qo_aws::logging::init();
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "{function} stopped");
            ExitCode::FAILURE
        }
    }
}

/// The settings both functions read: the AWS SDK calls' timeouts and attempts, the state
/// table (`TABLE_NAME`) and the queues (`QUEUE_URL`, `RETRY_QUEUE_URL`, `DLQ_URL`).
#[derive(Clone, Debug)]
pub struct Common {
    /// The AWS SDK calls' timeouts and attempts.
    pub sdk: SdkSettings,
    /// The state table.
    pub table: String,
    /// The queue URLs.
    pub urls: QueueUrls,
}

impl Common {
    /// Reads the SDK settings, `TABLE_NAME` and the queue URLs, in that order (the first
    /// missing or bad one is the error).
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let sdk = SdkSettings::from_env(env)?;
        let table = env.required("TABLE_NAME")?;
        let urls = QueueUrls::from_env(env)?;
        Ok(Common { sdk, table, urls })
    }

    /// The state store over the table and the job queues over the URLs, on `aws`.
    pub fn stores(self, aws: &SdkConfig) -> (DynamoStore, SqsQueue) {
        (
            DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), self.table),
            SqsQueue::new(aws_sdk_sqs::Client::new(aws), self.urls),
        )
    }
}

/// The function timeout `FUNCTION_TIMEOUT_S` declares (seconds), `None` when it is not set.
pub fn function_timeout(env: &impl Env) -> Result<Option<Duration>, ConfigError> {
    match env.get("FUNCTION_TIMEOUT_S") {
        Some(_) => Ok(Some(env.seconds("FUNCTION_TIMEOUT_S", Duration::ZERO)?)),
        None => Ok(None),
    }
}
