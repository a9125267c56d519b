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
    /// A visibility change would keep the message invisible past 12 hours from its receive
    /// (SQS refuses that entry with `InvalidParameterValue`).
    #[error(
        "visibility of {requested:?} from now reaches past 12 h after the receive ({received_ago:?} ago)"
    )]
    VisibilityTooLong {
        /// The visibility asked for, from now.
        requested: std::time::Duration,
        /// How long ago the message was received.
        received_ago: std::time::Duration,
    },
    /// A send asked for a delay SQS refuses (`DelaySeconds` is at most 900).
    #[error("delay of {0:?} is past SQS's 900 s")]
    DelayTooLong(std::time::Duration),
    /// A message larger than the queue's `MaximumMessageSize`: SQS refuses it
    /// (`InvalidParameterValue`).
    #[error("message of {size} bytes is past the queue's MaximumMessageSize of {max}")]
    MessageTooLong {
        /// Its body and attributes.
        size: usize,
        /// The queue's maximum.
        max: usize,
    },
    /// A SendMessageBatch whose messages (bodies and attributes) total more than 1 MiB: SQS
    /// refuses the whole call (`BatchRequestTooLong`) and sends none of them.
    #[error(
        "BatchRequestTooLong: the batch's messages total {0} bytes; SQS takes at most 1048576 \
         (1 MiB) in one SendMessageBatch"
    )]
    BatchRequestTooLong(usize),
    /// An entry refused on purpose by a test ([`crate::MemoryQueue::refuse_next`]).
    #[error("entry refused (injected InternalError)")]
    Injected,
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
