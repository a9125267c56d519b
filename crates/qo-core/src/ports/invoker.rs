//! The invoker port: [`Invoker`] hands an event to the worker asynchronously.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::job::WorkerEvent;

/// An error kept as the source of a cloneable error.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Invoking the worker failed. Equality compares what the error says, not its source.
#[derive(Debug, Clone, thiserror::Error)]
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
    #[error("invoke rejected: {detail}")]
    Rejected {
        /// What was refused, and why.
        detail: String,
        /// The cause, when there is one.
        #[source]
        source: Option<SharedError>,
    },
    /// The invoke could not be completed (network, 5xx after retries).
    #[error("invoke failed: {detail}")]
    Transport {
        /// What failed.
        detail: String,
        /// The cause, when there is one.
        #[source]
        source: Option<SharedError>,
    },
}

impl InvokeError {
    /// How long to wait before trying again, when Lambda said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InvokeError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// [`InvokeError::Rejected`] with no source.
    pub fn rejected(detail: impl Into<String>) -> InvokeError {
        InvokeError::Rejected {
            detail: detail.into(),
            source: None,
        }
    }

    /// [`InvokeError::Rejected`] caused by `source`.
    pub fn rejected_by(
        detail: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> InvokeError {
        InvokeError::Rejected {
            detail: detail.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// [`InvokeError::Transport`] with no source.
    pub fn transport(detail: impl Into<String>) -> InvokeError {
        InvokeError::Transport {
            detail: detail.into(),
            source: None,
        }
    }

    /// [`InvokeError::Transport`] caused by `source`.
    pub fn transport_by(
        detail: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> InvokeError {
        InvokeError::Transport {
            detail: detail.into(),
            source: Some(Arc::new(source)),
        }
    }
}

impl PartialEq for InvokeError {
    fn eq(&self, other: &InvokeError) -> bool {
        use InvokeError::*;
        match (self, other) {
            (
                Throttled {
                    reason: a,
                    retry_after: x,
                },
                Throttled {
                    reason: b,
                    retry_after: y,
                },
            ) => a == b && x == y,
            (Rejected { detail: a, .. }, Rejected { detail: b, .. })
            | (Transport { detail: a, .. }, Transport { detail: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for InvokeError {}

/// Hands an event to the worker asynchronously (InvocationType=Event).
#[async_trait]
pub trait Invoker: Send + Sync {
    /// Returns once the event is accepted for delivery.
    async fn invoke(&self, event: &WorkerEvent) -> Result<(), InvokeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_is_kept_and_the_text_unchanged() {
        let cause = std::io::Error::other("connection reset");
        let e = InvokeError::transport_by("dispatch failure", cause);
        assert_eq!(e.to_string(), "invoke failed: dispatch failure");
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "connection reset");
        assert_eq!(e, InvokeError::transport("dispatch failure"));
        assert_eq!(InvokeError::rejected("x").to_string(), "invoke rejected: x");
    }
}
