//! What receives the delivered events, and how it says a run failed.

use std::fmt::Display;
use std::future::Future;

use async_trait::async_trait;
use qo_core::event::WorkerEvent;

/// A handler run that failed: Lambda's "function error" (an error returned by the function's
/// code, or its runtime: a crash, a timeout). Lambda retries the event up to
/// `MaximumRetryAttempts` times, then sends it to the on-failure destination.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FunctionError(pub String);

/// What a handler closure may return: `()` (the run succeeded, so a closure can never fail, as
/// before), or any `Result<T, E>` with a displayable error (`Err` is a function error).
pub trait HandlerOutput: Send {
    /// The run's outcome as the invoker counts it.
    fn into_result(self) -> Result<(), FunctionError>;
}

impl HandlerOutput for () {
    fn into_result(self) -> Result<(), FunctionError> {
        Ok(())
    }
}

impl<T: Send, E: Display + Send> HandlerOutput for Result<T, E> {
    fn into_result(self) -> Result<(), FunctionError> {
        self.map(|_| ()).map_err(|e| FunctionError(e.to_string()))
    }
}

/// What receives the delivered events: the worker, in a test or the local run.
///
/// Any `Fn(WorkerEvent) -> impl Future<Output = O>` closure is one, where `O` is `()` (never
/// fails) or a `Result` (an `Err` is a function error, retried as Lambda does):
/// `LocalInvoker::new(clock, move |ev| { let w = w.clone(); async move { w.handle(ev).await } })`.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one delivered event; `Err` is a function error.
    async fn handle(&self, event: WorkerEvent) -> Result<(), FunctionError>;
}

#[async_trait]
impl<F, Fut> EventHandler for F
where
    F: Fn(WorkerEvent) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerOutput,
{
    async fn handle(&self, event: WorkerEvent) -> Result<(), FunctionError> {
        self(event).await.into_result()
    }
}
