//! The orchestrator's error: what stopped a run, with its source.

use qo_core::config::ConfigError;
use qo_core::ports::{QueueError, StoreError};

/// A run or a control event failed.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// A configuration variable was missing or bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The event was neither a scheduled event nor a control command.
    #[error("unrecognised event: {0}")]
    Event(String),
}

impl OrchestratorError {
    /// A short, stable name of the kind of error (the Lambda error type).
    pub fn kind(&self) -> &'static str {
        match self {
            OrchestratorError::Config(_) => "ConfigError",
            OrchestratorError::Store(_) => "StateStoreError",
            OrchestratorError::Queue(_) => "QueueError",
            OrchestratorError::Event(_) => "EventError",
        }
    }
}

impl From<OrchestratorError> for lambda_runtime::Diagnostic {
    fn from(e: OrchestratorError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.kind().to_string(),
            error_message: e.to_string(),
        }
    }
}
