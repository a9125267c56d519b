//! Re-reading the API key after the API refuses it (401 or 403).
//!
//! A 401 or 403 says the credential is wrong (revoked, or rotated in the secret store while
//! this execution environment kept the old value), not the job: retrying the job elsewhere or
//! dead-lettering it cannot help. The worker re-reads the key from a [`CredentialSource`], at
//! most once per `CREDENTIAL_REREAD_S`, so a rotated secret is picked up without a cold start
//! and a revoked one does not turn every job into a Secrets Manager call.
//!
//! The source is a port: the Lambda binary implements it over Secrets Manager / SSM (the same
//! `load_api_key` as at cold start); tests implement it in memory.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use qo_core::Timestamp;
use qo_core::ports::BoxError;
use qo_core::secret::ApiKey;

/// Where the API key is read from.
#[async_trait]
pub trait CredentialSource: Send + Sync {
    /// Reads the key now; `None` when no key is configured.
    async fn load(&self) -> Result<Option<ApiKey>, CredentialError>;
}

/// Re-reading the key failed (the secret store refused or could not be reached).
#[derive(Debug, thiserror::Error)]
#[error("re-reading the API key failed")]
pub struct CredentialError(#[source] pub BoxError);

/// The re-read policy: a source, the shortest interval between reads, and whether the key in
/// use was refused since it was last read.
///
/// While the key in use stands refused, one call per interval goes out (after the re-read,
/// whether or not the key changed: a 403 can also be a rule of the API about one resource,
/// and a worker that never called again could never learn that the key is fine); the other
/// jobs go back untried until then.
pub(crate) struct Rereads {
    source: Option<Arc<dyn CredentialSource>>,
    every: Duration,
    state: Mutex<RereadState>,
}

#[derive(Debug, Default)]
struct RereadState {
    /// When the key was last re-read (without a source: when it would have been); `None`:
    /// only the cold-start read.
    last: Option<Timestamp>,
    /// The status with which the API refused the key in use, while no call has succeeded
    /// since.
    refused: Option<u16>,
}

impl Rereads {
    pub(crate) fn new(source: Option<Arc<dyn CredentialSource>>, every: Duration) -> Self {
        Rereads {
            source,
            every,
            state: Mutex::new(RereadState::default()),
        }
    }

    pub(crate) fn set_source(&mut self, source: Arc<dyn CredentialSource>) {
        self.source = Some(source);
    }

    fn with<T>(&self, f: impl FnOnce(&mut RereadState) -> T) -> T {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut st)
    }

    fn due(&self, st: &RereadState, now: Timestamp) -> bool {
        st.last.is_none_or(|t| now >= t.plus(self.every))
    }

    /// The API refused the key with `status`.
    pub(crate) fn refused(&self, status: u16) {
        self.with(|st| st.refused = Some(status));
    }

    /// The key in use is not known to be refused: a call succeeded with it, or it was just
    /// replaced by a different one.
    pub(crate) fn clear(&self) {
        self.with(|st| st.refused = None);
    }

    /// What to do before a call at `now`.
    pub(crate) fn before_call(&self, now: Timestamp) -> BeforeCall {
        self.with(|st| match st.refused {
            None => BeforeCall::Call,
            Some(_) if self.due(st, now) => BeforeCall::RereadThenCall,
            Some(status) => BeforeCall::Wait {
                status,
                until: st.last.map_or(now, |t| t.plus(self.every)),
            },
        })
    }

    /// Takes the re-read slot when one is due at `now`: true when the caller should read
    /// (and may use [`Rereads::source`]).
    pub(crate) fn take_slot(&self, now: Timestamp) -> bool {
        self.with(|st| {
            let due = self.due(st, now);
            if due {
                st.last = Some(now);
            }
            due
        })
    }

    /// The source, if any.
    pub(crate) fn source(&self) -> Option<Arc<dyn CredentialSource>> {
        self.source.clone()
    }

    /// When the next re-read may happen, seen from `now` (at least `now`).
    pub(crate) fn next_at(&self, now: Timestamp) -> Timestamp {
        self.with(|st| match st.last {
            Some(t) => t.plus(self.every).max(now),
            None => now,
        })
    }
}

/// What [`Rereads::before_call`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BeforeCall {
    /// The key is not known to be refused: call.
    Call,
    /// The key was refused and a re-read is due: re-read, then call (the interval's probe).
    RereadThenCall,
    /// The key was refused (with `status`) and re-read less than an interval ago: no call
    /// before `until`.
    Wait {
        /// The refusal's status.
        status: u16,
        /// The next re-read.
        until: Timestamp,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Never;

    #[async_trait]
    impl CredentialSource for Never {
        async fn load(&self) -> Result<Option<ApiKey>, CredentialError> {
            Ok(None)
        }
    }

    #[test]
    fn rereads_are_bounded_by_the_interval() {
        let t0 = Timestamp::from_secs(1_000);
        let every = Duration::from_secs(60);
        let r = Rereads::new(Some(Arc::new(Never)), every);
        assert_eq!(r.before_call(t0), BeforeCall::Call, "nothing refused yet");
        r.refused(403);
        assert_eq!(r.before_call(t0), BeforeCall::RereadThenCall);
        assert!(r.take_slot(t0));
        assert!(r.source().is_some());
        assert_eq!(r.next_at(t0), t0.plus(every));
        let t59 = t0.plus(Duration::from_secs(59));
        assert!(!r.take_slot(t59));
        assert_eq!(
            r.before_call(t59),
            BeforeCall::Wait {
                status: 403,
                until: t0.plus(every)
            }
        );
        assert_eq!(r.before_call(t0.plus(every)), BeforeCall::RereadThenCall);
        r.clear();
        assert_eq!(r.before_call(t0.plus(every)), BeforeCall::Call);
        assert!(r.take_slot(t0.plus(every)));
        // Without a source the interval still bounds the calls on a refused key.
        let none = Rereads::new(None, every);
        none.refused(401);
        assert!(none.take_slot(t0));
        assert!(none.source().is_none());
        assert!(matches!(
            none.before_call(t59),
            BeforeCall::Wait { status: 401, .. }
        ));
    }
}
