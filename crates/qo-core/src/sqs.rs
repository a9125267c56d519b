//! What SQS allows, and the queue attributes the template deploys: one place for the numbers
//! that the adapters, the loop, `qo setup`, `qo local` and the tests share, so that no test
//! runs on friendlier settings than a deployment (DESIGN.md, invariant 7).
//!
//! The limits are AWS's (Amazon SQS quotas and the ReceiveMessage, ChangeMessageVisibility and
//! SendMessage references); [`QueueAttributes::TEMPLATE`] must equal the defaults of
//! `template.yaml`, which a test reads.

use std::time::Duration;

/// The most messages one ReceiveMessage returns, and the most entries of a batch call.
pub const MAX_BATCH: usize = 10;

/// The longest long poll of one ReceiveMessage.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

/// The longest a message can stay invisible, counted from the receive: a visibility change that
/// would reach past it is refused for that entry.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// The longest `DelaySeconds` of a send.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// A queue's retention when none is set: 4 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(4 * 86_400);

/// The longest retention SQS allows: 14 days.
pub const MAX_RETENTION: Duration = Duration::from_secs(14 * 86_400);

/// A queue's visibility timeout when none is set.
pub const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);

/// How long a FIFO queue remembers a deduplication id.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(300);

/// A job or retry queue's attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueAttributes {
    /// `VisibilityTimeout`: how long a received message stays invisible.
    pub visibility_timeout: Duration,
    /// `MessageRetentionPeriod`: a message older than this is deleted, visible or not.
    pub retention: Duration,
    /// The redrive policy's `maxReceiveCount` (`None`: no redrive policy): a message received
    /// this many times moves to the dead-letter queue at its next receive, with no reason.
    pub max_receive_count: Option<u32>,
}

impl QueueAttributes {
    /// A queue created with no attributes (SQS's defaults, no redrive policy).
    pub const AWS_DEFAULT: QueueAttributes = QueueAttributes {
        visibility_timeout: DEFAULT_VISIBILITY,
        retention: DEFAULT_RETENTION,
        max_receive_count: None,
    };

    /// The job and retry queues as `template.yaml` deploys them with its defaults:
    /// visibility = `OrchestratorTimeout` (900 s), 14 days' retention, `MaxReceiveCount` 10.
    ///
    /// Why 10: the orchestrator receives a message only when its slot is near, keeps what it
    /// holds by extending its visibility, and gives back a message that was already received
    /// [`ROTATE_AFTER_RECEIVES`] times as a fresh copy (a new message, count 0) instead of
    /// releasing it. So in normal operation no count passes 2; only a run that crashes while
    /// holding messages adds more, and 10 leaves room for 8 such crashes.
    pub const TEMPLATE: QueueAttributes = QueueAttributes {
        visibility_timeout: Duration::from_secs(900),
        retention: MAX_RETENTION,
        max_receive_count: Some(10),
    };
}

/// A held message that has been received this many times is given back as a fresh copy
/// (re-sent, then the original deleted) rather than released, so that no release brings it
/// nearer to the redrive policy's `maxReceiveCount`.
pub const ROTATE_AFTER_RECEIVES: u32 = 2;

/// A held message this close to its queue's retention is given back as a fresh copy rather
/// than released, so that it does not expire while it waits.
pub const ROTATE_BEFORE_EXPIRY: Duration = Duration::from_secs(86_400);
