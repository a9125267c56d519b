//! The worker's error: configuration at cold start, and port failures while handling an event.
//!
//! Handling an event only fails when the job's fate could not be recorded (a queue or store
//! operation failed): Lambda's asynchronous retries and its on-failure destination then keep the
//! event, so no job is lost. Everything the API answers is an [`crate::Outcome`], not an error.

use qo_core::config::ConfigError;
use qo_core::ports::{QueueError, StoreError};

/// Why the worker could not start or could not finish handling an event.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A configuration variable is missing or bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client could not be built.
    #[error("building the HTTP client failed")]
    Client(#[source] reqwest::Error),
    /// The API key cannot be sent in the configured header. The key itself is never shown.
    #[error("the API key cannot be sent in header `{header}`: {reason}")]
    Credential {
        /// The header (`API_KEY_HEADER`).
        header: String,
        /// Why.
        reason: String,
    },
    /// A queue operation (re-queue, dead-letter) failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A state-store operation (idempotency, circuit, control) failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The function timeout cannot cover the worst case (or `CLAIM_TTL_S` is shorter than
    /// it): the worker refuses events rather than be killed mid-write.
    #[error(transparent)]
    TimeoutBudget(#[from] crate::budget::TimeoutBudgetError),
    /// The fate of some jobs of a batch could not be recorded; the others were carried out
    /// (their outcomes are logged). The event fails so that Lambda retries it.
    #[error(
        "{failed} of the {jobs} jobs of the batch could not record their fate (the first, \
         job {job_id}: {first}); the others were settled and are skipped or given back when \
         Lambda retries the event"
    )]
    Batch {
        /// How many jobs failed.
        failed: usize,
        /// How many jobs the batch held.
        jobs: usize,
        /// The first failed job.
        job_id: String,
        /// Its error.
        first: Box<WorkerError>,
    },
    /// The job could not be encoded back to JSON for a re-queue.
    #[error("encoding the job for a re-queue failed")]
    Encode(#[source] serde_json::Error),
}

impl WorkerError {
    /// A short name of the variant, for the Lambda error type.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkerError::Config(_) => "Config",
            WorkerError::Client(_) => "Client",
            WorkerError::Credential { .. } => "Credential",
            WorkerError::Queue(_) => "Queue",
            WorkerError::Store(_) => "Store",
            WorkerError::Encode(_) => "Encode",
            WorkerError::TimeoutBudget(_) => "TimeoutBudget",
            WorkerError::Batch { .. } => "Batch",
        }
    }
}

impl From<WorkerError> for lambda_runtime::Diagnostic {
    fn from(e: WorkerError) -> Self {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            // Some messages already quote their source.
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        lambda_runtime::Diagnostic {
            error_type: format!("WorkerError::{}", e.kind()),
            error_message: message,
        }
    }
}
