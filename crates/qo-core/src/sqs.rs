//! What SQS allows, and the queue attributes the template deploys: one place for the numbers
//! that the adapters, the loop, `qo setup`, `qo local` and the tests share, so that no test
//! runs on friendlier settings than a deployment.
//!
//! The limits are AWS's (Amazon SQS quotas and the ReceiveMessage, ChangeMessageVisibility,
//! SendMessage and SendMessageBatch references); [`QueueAttributes::TEMPLATE`] must equal the
//! defaults of `template.yaml`, which a test reads.

use std::ops::Range;
use std::time::Duration;

use crate::job::Origin;

/// The most messages one ReceiveMessage returns, and the most entries of a batch call.
pub const MAX_BATCH: usize = 10;

/// The largest message SQS takes, body and message attributes (each attribute's name, data type
/// and value) counted: 1 MiB (1,048,576 bytes) since AWS raised it in 2025 (it was 256 KiB).
/// A queue's `MaximumMessageSize` can set it lower; SQS then refuses the entry.
pub const MAX_MESSAGE_BYTES: usize = 1_048_576;

/// The largest payload of one SendMessageBatch: the sum of its messages' sizes (as
/// [`MAX_MESSAGE_BYTES`] counts them), 1 MiB; past it SQS refuses the whole call
/// (`BatchRequestTooLong`).
pub const MAX_BATCH_PAYLOAD_BYTES: usize = 1_048_576;

/// The SendMessageBatch calls that send messages of `sizes` bytes (as [`MAX_MESSAGE_BYTES`]
/// counts them), in order: index ranges of at most [`MAX_BATCH`] messages and at most
/// [`MAX_BATCH_PAYLOAD_BYTES`] in all, each as full as the order allows. A message over
/// [`MAX_MESSAGE_BYTES`] gets a range of its own: SQS would refuse it, so a sender fails it
/// without sending it.
pub fn send_batches(sizes: &[usize]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, &size) in sizes.iter().enumerate() {
        let full = i - start == MAX_BATCH
            || bytes.saturating_add(size) > MAX_BATCH_PAYLOAD_BYTES
            || size > MAX_MESSAGE_BYTES;
        if full && i > start {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(size);
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// The size of a job's message as SQS counts it against [`MAX_MESSAGE_BYTES`] and
/// [`MAX_BATCH_PAYLOAD_BYTES`] when the SQS adapter sends it again (a re-send, a fresh copy):
/// the body, and each message attribute's name, data type and value, those the adapter writes
/// from `origin`: `qo-attempt` (a Number, always), `qo-throttled` (a Number, when not 0),
/// `qo-function` (a String, when set) and `qo-enqueued-at-ms` (a Number, when set). What a
/// caller groups with [`send_batches`] before a `JobSource::resend` (the adapter's own count
/// must agree; its tests check that).
pub fn job_message_bytes(body: &str, origin: &Origin) -> usize {
    const NUMBER: usize = "Number".len();
    const STRING: usize = "String".len();
    let digits = |n: u64| n.to_string().len();
    let mut bytes = body.len() + "qo-attempt".len() + NUMBER + digits(u64::from(origin.attempt));
    if origin.throttled > 0 {
        bytes += "qo-throttled".len() + NUMBER + digits(u64::from(origin.throttled));
    }
    if let Some(f) = origin.function.as_deref().filter(|f| !f.is_empty()) {
        bytes += "qo-function".len() + STRING + f.len();
    }
    if let Some(at) = origin.enqueued_at {
        bytes += "qo-enqueued-at-ms".len() + NUMBER + digits(at.as_millis());
    }
    bytes
}

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

/// A queue's `MaximumMessageSize` when none is set: 256 KiB. The template sets none on the job,
/// retry and dead-letter queues (their jobs are at most [`crate::job::MAX_JOB_BYTES`]); a
/// larger message is refused.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 262_144;

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
    /// `MaximumMessageSize`: a larger message (body and attributes, as
    /// [`job_message_bytes`] counts them) is refused.
    pub max_message_bytes: usize,
}

impl QueueAttributes {
    /// A queue created with no attributes (SQS's defaults, no redrive policy).
    pub const AWS_DEFAULT: QueueAttributes = QueueAttributes {
        visibility_timeout: DEFAULT_VISIBILITY,
        retention: DEFAULT_RETENTION,
        max_receive_count: None,
        max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
    };

    /// The job and retry queues as `template.yaml` deploys them with its defaults:
    /// visibility 120 s (the orchestrator extends what it holds; a run that dies hides its
    /// messages for that long only), 14 days' retention, `MaxReceiveCount` 10.
    ///
    /// Why 10: the orchestrator receives a message only when its slot is near, keeps what it
    /// holds by extending its visibility, and gives back a message that was already received
    /// [`ROTATE_AFTER_RECEIVES`] times as a fresh copy (a new message, count 0) instead of
    /// releasing it. So in normal operation no count passes 2; only a run that crashes while
    /// holding messages adds more, and 10 leaves room for 8 such crashes.
    pub const TEMPLATE: QueueAttributes = QueueAttributes {
        visibility_timeout: Duration::from_secs(120),
        retention: MAX_RETENTION,
        max_receive_count: Some(10),
        max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
    };
}

/// A held message that has been received this many times is given back as a fresh copy
/// (re-sent, then the original deleted) rather than released, so that no release brings it
/// nearer to the redrive policy's `maxReceiveCount`.
pub const ROTATE_AFTER_RECEIVES: u32 = 2;

/// A held message this close to its queue's retention is given back as a fresh copy rather
/// than released, so that it does not expire while it waits.
pub const ROTATE_BEFORE_EXPIRY: Duration = Duration::from_secs(86_400);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_ten_messages_and_a_mebibyte() {
        assert_eq!(send_batches(&[]), Vec::<Range<usize>>::new());
        assert_eq!(send_batches(&[20; 25]), vec![0..10, 10..20, 20..25]);
        // 400 KiB each: two fit in 1 MiB, a third does not.
        let big = 400 * 1024;
        assert_eq!(send_batches(&[big; 5]), vec![0..2, 2..4, 4..5]);
        // Exactly the limit fits; one byte more does not.
        let half = MAX_BATCH_PAYLOAD_BYTES / 2;
        assert_eq!(send_batches(&[half, half, 1]), vec![0..2, 2..3]);
        assert_eq!(send_batches(&[half, half + 1]), vec![0..1, 1..2]);
        // A message over the limit is alone, between the others.
        let over = MAX_MESSAGE_BYTES + 1;
        assert_eq!(send_batches(&[10, 10, over, 10]), vec![0..2, 2..3, 3..4]);
    }
}
