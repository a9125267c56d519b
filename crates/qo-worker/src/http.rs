//! The seam between the worker's decisions and the network: [`HttpCall`].
//!
//! [`crate::ApiClient`] implements it over reqwest; tests implement it in memory so the slot
//! timing can run under tokio's paused time, where real sockets would not.

use async_trait::async_trait;
use qo_core::job::Job;

use crate::error::WorkerError;
use crate::ratelimit::RateHeaders;

/// What the API answered: enough to classify the call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiResponse {
    /// The HTTP status.
    pub status: u16,
    /// The raw `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The rate-limit headers `RATE_LIMIT_HEADERS` names, when the API sent them; nothing
    /// else of the header map.
    pub rate_headers: RateHeaders,
    /// The start of the body: a few bytes beyond the configured excerpt size at most (so the
    /// excerpt can be cut on a character boundary), or with result destinations the body up
    /// to `RESULT_BODY_MAX_BYTES`; the rest is not read.
    pub body_start: Vec<u8>,
    /// Whether the body went on past `body_start`.
    pub body_truncated: bool,
    /// The response headers `RESULT_HEADERS` names (with result destinations only).
    pub headers: Vec<(String, String)>,
}

impl ApiResponse {
    /// A response with a status and nothing else.
    pub fn status(status: u16) -> Self {
        ApiResponse {
            status,
            ..ApiResponse::default()
        }
    }
}

/// A call that got no HTTP answer, or could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// No answer within the connect or read timeout.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The connection could not be made.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The connection broke, or another transport failure.
    #[error("transport failed: {0}")]
    Transport(String),
    /// The job cannot be turned into a request to the API (bad header, a path that escapes the
    /// base URL): retrying cannot help.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl HttpError {
    /// Whether trying again later may work (counts as an API failure for the circuit).
    pub fn is_transient(&self) -> bool {
        !matches!(self, HttpError::Invalid(_))
    }
}

/// Makes the worker's HTTP calls.
#[async_trait]
pub trait HttpCall: Send + Sync {
    /// Calls the API for a job.
    async fn call(&self, job: &Job) -> Result<ApiResponse, HttpError>;
    /// Calls the API's health path.
    async fn health(&self) -> Result<ApiResponse, HttpError>;
    /// Replaces the API key sent with each call (re-read after the API refused the one in
    /// use; `None`: send none). Returns whether it differs from the key in use.
    fn set_api_key(&self, key: Option<&str>) -> Result<bool, WorkerError>;
}

#[async_trait]
impl<T: HttpCall + ?Sized> HttpCall for std::sync::Arc<T> {
    async fn call(&self, job: &Job) -> Result<ApiResponse, HttpError> {
        (**self).call(job).await
    }
    async fn health(&self) -> Result<ApiResponse, HttpError> {
        (**self).health().await
    }
    fn set_api_key(&self, key: Option<&str>) -> Result<bool, WorkerError> {
        (**self).set_api_key(key)
    }
}
