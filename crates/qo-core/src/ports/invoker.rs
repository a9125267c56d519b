//! The invoker port: [`Invoker`] hands an event to the worker asynchronously.

use std::time::Duration;

use async_trait::async_trait;

use crate::job::WorkerEvent;

/// Invoking the worker failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// Lambda throttled the invoke (TooManyRequestsException).
    #[error("invoke throttled ({reason}); retry after {retry_after:?}")]
    Throttled {
        /// Lambda's reason.
        reason: String,
        /// Lambda's `retryAfterSeconds`.
        retry_after: Option<Duration>,
    },
    /// Lambda refused the event for good (bad payload, missing function, no permission).
    #[error("invoke rejected: {0}")]
    Rejected(String),
    /// The invoke could not be completed (network, 5xx after retries).
    #[error("invoke failed: {0}")]
    Transport(String),
}

impl InvokeError {
    /// How long to wait before trying again, when Lambda said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InvokeError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Hands an event to the worker asynchronously (InvocationType=Event).
#[async_trait]
pub trait Invoker: Send + Sync {
    /// Returns once the event is accepted for delivery.
    async fn invoke(&self, event: &WorkerEvent) -> Result<(), InvokeError>;
}
