//! The result port: [`ResultSink`] delivers a job's [`JobResult`] to one of the stack's
//! destinations.

use async_trait::async_trait;

use super::BoxError;
use crate::result::{Destination, JobResult};

/// What a delivery did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Where the body went when the result was too large to send whole
    /// ([`crate::result::MAX_INLINE_RESULT_BYTES`]): `s3://bucket/key`.
    pub body_location: Option<String>,
}

/// Why a delivery failed. The worker tries again a few times, then dead-letters the result.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// The destination refused the result (access denied, not found, too large, throttled).
    #[error("{op}: {detail}")]
    Refused {
        /// The call.
        op: &'static str,
        /// What the service said.
        detail: String,
    },
    /// The backend failed (network, timeout, an SDK error).
    #[error("{op}: {source}")]
    Backend {
        /// The call.
        op: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

/// Delivers results. Adapters send the result whole when it is at most
/// [`crate::result::MAX_INLINE_RESULT_BYTES`] as JSON, and otherwise put its body in the
/// stack's bucket first and send the result with the body's location.
#[async_trait]
pub trait ResultSink: Send + Sync {
    /// Delivers `result` to `to`, once (a retry is the caller's).
    async fn deliver(&self, to: &Destination, result: &JobResult)
    -> Result<Delivered, ResultError>;

    /// Makes `result` small enough to keep on one of the stack's queues, for a later delivery
    /// or in the dead-letter queue: over [`crate::result::MAX_INLINE_RESULT_BYTES`] as JSON,
    /// its body goes to the stack's bucket and the result returned carries its location; a
    /// smaller one comes back as it is. Without it a large answer whose destination refuses
    /// could be kept nowhere (the queues take 256 KiB unless raised).
    async fn stow(&self, result: &JobResult) -> Result<JobResult, ResultError>;
}

#[async_trait]
impl<T: ResultSink + ?Sized> ResultSink for std::sync::Arc<T> {
    async fn deliver(
        &self,
        to: &Destination,
        result: &JobResult,
    ) -> Result<Delivered, ResultError> {
        (**self).deliver(to, result).await
    }

    async fn stow(&self, result: &JobResult) -> Result<JobResult, ResultError> {
        (**self).stow(result).await
    }
}
