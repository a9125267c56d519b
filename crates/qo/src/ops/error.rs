//! [`OpsError`]: what went wrong in an operation, naming the flag, variable, stack, table,
//! queue or line at fault.

use qo_aws::{AwsError, SdkFailure};
use qo_core::config::ConfigError;
use qo_core::ports::{QueueError, StoreError};
use std::error::Error;

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
    #[error("cannot read stack `{stack}`: {}", root(source))]
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
    #[error("{what} in table `{table}`: {}", cause(source))]
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
    #[error("{what}: {}", cause(source))]
    Queue {
        /// What was being done, naming the queue.
        what: String,
        /// The cause.
        #[source]
        source: QueueError,
    },
    /// Creating local resources failed.
    #[error("{what}: {}", cause(source))]
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
    /// `qo call`'s job or its wait.
    #[error("qo call: {0}")]
    Call(String),
}

/// A backend error in one line: the operation and the innermost cause, without the SDK's
/// rendering of the whole response (which `RUST_LOG=debug` shows).
fn cause(e: &(dyn Error + 'static)) -> String {
    if let Some(StoreError::Backend { op, source }) = e.downcast_ref::<StoreError>() {
        return format!("{op} failed: {}", root(source.as_ref()));
    }
    if let Some(QueueError::Backend { op, source }) = e.downcast_ref::<QueueError>() {
        return format!("{op} failed: {}", root(source.as_ref()));
    }
    if let Some(AwsError::Sdk { op, source }) = e.downcast_ref::<AwsError>() {
        return format!("{op} failed: {}", root(source));
    }
    e.to_string()
}

/// The innermost error's text: an SDK error's cause chain ends in what the service or the
/// network said.
fn root(e: &(dyn Error + 'static)) -> String {
    let mut last = e;
    let mut text = e.to_string();
    while let Some(next) = last.source() {
        let t = next.to_string();
        if !t.trim().is_empty() {
            text = t;
        }
        last = next;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("dispatch failure (a long rendering of the whole response)")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn backend_errors_read_as_the_operation_and_the_innermost_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = OpsError::Store {
            what: "reading the lease",
            table: "t".into(),
            source: StoreError::Backend {
                op: "dynamodb.GetItem",
                source: Box::new(SdkFailure::new(Outer(io))),
            },
        };
        assert_eq!(
            e.to_string(),
            "reading the lease in table `t`: dynamodb.GetItem failed: connection refused"
        );
        let e = OpsError::Queue {
            what: "redriving".into(),
            source: QueueError::Partial {
                op: "redrive",
                failed: 1,
                detail: "throttled".into(),
                refused: Vec::new(),
                source: None,
            },
        };
        assert_eq!(
            e.to_string(),
            "redriving: queue redrive: 1 of the batch failed: throttled"
        );
    }
}
