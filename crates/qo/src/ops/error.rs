//! [`OpsError`]: what went wrong in an operation, naming the flag, variable, stack, table,
//! queue or line at fault.

use qo_aws::{AwsError, SdkFailure};
use qo_core::config::ConfigError;
use qo_core::ports::{QueueError, StoreError};

/// An operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A setting the operation needs was given nowhere.
    #[error("no {what}: give {flag} (or set {var}), or --stack NAME")]
    NoTarget {
        /// What is missing, e.g. `state table`.
        what: &'static str,
        /// The flag that gives it.
        flag: &'static str,
        /// The environment variable that gives it.
        var: &'static str,
    },
    /// The stack has no output the operation needs.
    #[error("stack `{stack}` has no output `{key}` (is it a quota-orchestrator stack?)")]
    StackOutput {
        /// The stack.
        stack: String,
        /// The missing output key.
        key: &'static str,
    },
    /// The stack does not exist.
    #[error("stack `{stack}` not found (wrong name, region or account?)")]
    StackNotFound {
        /// The stack.
        stack: String,
    },
    /// The stack's description could not be read.
    #[error("cannot read stack `{stack}`: {source}")]
    Stack {
        /// The stack.
        stack: String,
        /// The SDK error.
        #[source]
        source: SdkFailure,
    },
    /// A configuration variable was bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A state table operation failed.
    #[error("{what} in table `{table}`: {source}")]
    Store {
        /// What was being done.
        what: &'static str,
        /// The table.
        table: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// A queue operation failed.
    #[error("{what}: {source}")]
    Queue {
        /// What was being done, naming the queue.
        what: String,
        /// The cause.
        #[source]
        source: QueueError,
    },
    /// Creating local resources failed.
    #[error("{what}: {source}")]
    Aws {
        /// What was being created.
        what: String,
        /// The cause.
        #[source]
        source: AwsError,
    },
    /// `qo setup` was not given a local endpoint.
    #[error(
        "qo setup creates resources on a local endpoint only: give --endpoint URL (or set AWS_ENDPOINT_URL); deploy to AWS with SAM"
    )]
    NoEndpoint,
    /// `--prefix` cannot name a table and queues.
    #[error("--prefix {prefix:?} is invalid: {reason}")]
    BadPrefix {
        /// The prefix given.
        prefix: String,
        /// Why.
        reason: &'static str,
    },
    /// The jobs file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file (`stdin` for `-`).
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Lines of the jobs file are not valid jobs; nothing was sent.
    #[error(
        "{count} invalid line(s) in {path}; nothing sent (--skip-invalid sends the valid ones):{details}"
    )]
    InvalidJobs {
        /// The file.
        path: String,
        /// How many lines are invalid.
        count: usize,
        /// One `\n  line N: why` per invalid line (the first few).
        details: String,
    },
    /// Some jobs could not be sent.
    #[error("sent {sent} of {total} job(s); {failed} failed and {unsent} were not tried:{details}")]
    SendFailed {
        /// Jobs sent.
        sent: usize,
        /// Jobs that were to be sent.
        total: usize,
        /// Jobs whose send failed.
        failed: usize,
        /// Jobs not tried after the first failure.
        unsent: usize,
        /// One `\n  line N: why` per failed line (the first few), and the first line not tried.
        details: String,
    },
    /// The report could not be written as JSON.
    #[error("cannot write the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}
