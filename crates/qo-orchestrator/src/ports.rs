//! The ports a run uses, borrowed for its length: the loop ([`crate::run`]) and the retention
//! sweep ([`crate::sweep`]) both take them.

use qo_core::{Clock, Observer};

/// The ports a run uses.
pub struct Ports<'a, Q: ?Sized, S: ?Sized, I: ?Sized> {
    /// The job queue (receive, delete, release; dead-letter).
    pub queue: &'a Q,
    /// The state store (records and lease).
    pub store: &'a S,
    /// The worker invoker.
    pub invoker: &'a I,
    /// The clock.
    pub clock: &'a dyn Clock,
    /// Where observations go.
    pub observer: &'a dyn Observer,
}
