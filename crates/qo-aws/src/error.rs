//! The crate's error type, and the mapping of AWS SDK errors into the ports' errors.

use aws_smithy_types::error::display::DisplayErrorContext;
use qo_core::config::ConfigError;
use qo_core::ports::{BoxError, QueueError, StoreError};

use crate::clients::SdkTimeoutError;

/// An AWS SDK error with its whole chain of causes rendered as text (the SDK's own `Display`
/// says little more than "service error"); the SDK error stays the source.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct SdkFailure {
    detail: String,
    #[source]
    source: BoxError,
}

impl SdkFailure {
    /// Wraps an SDK (or any) error.
    pub fn new<E>(err: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        SdkFailure {
            detail: DisplayErrorContext(&err).to_string(),
            source: Box::new(err),
        }
    }

    /// The error and its causes, as text.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// Something in this crate failed.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// An AWS call failed.
    #[error("{op} failed: {source}")]
    Sdk {
        /// The operation (for example `sqs.SendMessage`).
        op: &'static str,
        /// The SDK error.
        #[source]
        source: SdkFailure,
    },
    /// An AWS answer lacked something it should carry, or a request could not be built.
    #[error("{op}: {reason}")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A configuration variable was missing or bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The function's timeout cannot cover the SDK's attempts.
    #[error(transparent)]
    SdkTimeout(#[from] SdkTimeoutError),
}

impl AwsError {
    /// Wraps an SDK (or any) error, keeping it as the source.
    pub fn sdk<E>(op: &'static str, err: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        AwsError::Sdk {
            op,
            source: SdkFailure::new(err),
        }
    }

    /// A missing field or an unbuildable request.
    pub fn invalid(op: &'static str, reason: impl Into<String>) -> Self {
        AwsError::Invalid {
            op,
            reason: reason.into(),
        }
    }
}

/// An SDK error as a [`QueueError::Backend`].
pub(crate) fn queue_err<E>(op: &'static str, err: E) -> QueueError
where
    E: std::error::Error + Send + Sync + 'static,
{
    QueueError::Backend {
        op,
        source: Box::new(SdkFailure::new(err)),
    }
}

/// An [`AwsError`] as a [`QueueError::Backend`].
pub(crate) fn queue_backend(op: &'static str, err: AwsError) -> QueueError {
    QueueError::Backend {
        op,
        source: Box::new(err),
    }
}

/// An SDK error as a [`StoreError::Backend`].
pub(crate) fn store_err<E>(op: &'static str, err: E) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    StoreError::Backend {
        op,
        source: Box::new(SdkFailure::new(err)),
    }
}

/// An [`AwsError`] as a [`StoreError::Backend`].
pub(crate) fn store_backend(op: &'static str, err: AwsError) -> StoreError {
    StoreError::Backend {
        op,
        source: Box::new(err),
    }
}
