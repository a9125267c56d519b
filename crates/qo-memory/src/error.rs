//! The one error type of this crate: what an in-memory adapter refuses on its own account. It
//! travels inside the ports' errors ([`qo_core::ports::QueueError::Backend`]) as the source, or is
//! returned by constructors given bad options.

/// An in-memory adapter refused a request or an option.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// A receive asked for a number of messages SQS would refuse.
    #[error("receive asked for {0} messages; SQS allows 1 to 10")]
    MaxMessages(u8),
    /// A receipt handle is not the message's current one: the message was deleted, or received
    /// again since (SQS's `ReceiptHandleIsInvalid`).
    #[error("receipt handle `{0}` is not current (message deleted or received again)")]
    StaleReceipt(String),
    /// An option was out of range.
    #[error("option {name}={value} is invalid: {reason}")]
    InvalidOption {
        /// The option.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
}
