//! The invoker port: [`Invoker`] hands an event to the worker asynchronously.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::event::WorkerEvent;

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

    /// Hands the event to `function`, one worker function of the pool
    /// (`WORKER_FUNCTION_NAMES`). An invoker of a single function has no choice to make and
    /// invokes it, whatever the name.
    async fn invoke_on(&self, function: &str, event: &WorkerEvent) -> Result<(), InvokeError> {
        let _ = function;
        self.invoke(event).await
    }
}

/// A pool of worker functions, each behind its own invoker (a layer in the tower spirit):
/// [`Invoker::invoke_on`] picks the member by name; [`Invoker::invoke`] goes to the first.
pub struct PoolInvoker<I> {
    members: Vec<(String, I)>,
}

impl<I> PoolInvoker<I> {
    /// A pool of `(name, invoker)` members, in order (at least one, names distinct: the
    /// configuration checks both).
    pub fn new(members: Vec<(String, I)>) -> Self {
        PoolInvoker { members }
    }

    /// The member called `function`.
    pub fn member(&self, function: &str) -> Option<&I> {
        self.members
            .iter()
            .find(|(name, _)| name == function)
            .map(|(_, i)| i)
    }

    /// The members, in order.
    pub fn members(&self) -> &[(String, I)] {
        &self.members
    }
}

#[async_trait]
impl<I: Invoker> Invoker for PoolInvoker<I> {
    async fn invoke(&self, event: &WorkerEvent) -> Result<(), InvokeError> {
        match self.members.first() {
            Some((_, first)) => first.invoke(event).await,
            None => Err(InvokeError::rejected("the worker pool has no function")),
        }
    }

    async fn invoke_on(&self, function: &str, event: &WorkerEvent) -> Result<(), InvokeError> {
        match self.member(function) {
            Some(member) => member.invoke(event).await,
            None => Err(InvokeError::rejected(format!(
                "`{function}` is not a worker function of the pool"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str, std::sync::Mutex<Vec<&'static str>>);

    #[async_trait]
    impl Invoker for Named {
        async fn invoke(&self, _: &WorkerEvent) -> Result<(), InvokeError> {
            self.1.lock().expect("lock").push(self.0);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_pool_invokes_the_member_named() {
        let log = || std::sync::Mutex::new(Vec::new());
        let pool = PoolInvoker::new(vec![
            ("a".to_string(), Named("a", log())),
            ("b".to_string(), Named("b", log())),
        ]);
        let ev = WorkerEvent::HealthCheck(crate::event::HealthCheckEvent {
            epoch: 1,
            sent_at: crate::Timestamp::from_millis(1),
            slot_at: None,
        });
        pool.invoke_on("b", &ev).await.expect("b");
        pool.invoke(&ev).await.expect("the first");
        let e = pool.invoke_on("c", &ev).await.expect_err("not in the pool");
        assert!(e.to_string().contains("`c`"), "{e}");
        let calls = |n: &str| pool.member(n).map(|m| m.1.lock().expect("lock").clone());
        assert_eq!(calls("a"), Some(vec!["a"]));
        assert_eq!(calls("b"), Some(vec!["b"]));
    }

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
