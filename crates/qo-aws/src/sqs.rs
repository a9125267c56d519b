//! The job queues over SQS: [`SqsQueue`] is the [`JobSource`], [`JobSink`] and [`Redrive`]
//! (main queue, optional retry queue, dead-letter queue), plus the operator's operations (send,
//! depths) and [`ensure_queues`] for local runs and tests.
//!
//! Our own message attributes:
//!
//! | attribute | type | what | written by | when absent |
//! |---|---|---|---|---|
//! | `qo-attempt` | Number | failed tries so far (`Origin::attempt`) | re-queue, resend, dead-letter; 0 on redrive | 0 |
//! | `qo-throttled` | Number | 429s answered so far (`Origin::throttled`), never counted as attempts | re-queue, resend, dead-letter, when not 0; dropped on redrive | 0 |
//! | `qo-function` | String | the pool's worker function that last had the job answered 429 or failed (`Origin::function`): the next dispatch goes through another | re-queue, resend, when set; dropped on redrive | none |
//! | `qo-enqueued-at-ms` | Number | first enqueue, kept across re-queues | every send | `SentTimestamp` |
//! | `qo-reason` | String | why it was dead-lettered | dead-letter | |
//! | `qo-source-message-id` | String | its message id when dead-lettered | dead-letter | |
//!
//! FIFO queues (URL ending in `.fifo`) keep the message group on re-queue, dead-letter and
//! redrive, and every send gets a deduplication id of its own ([`unique_dedup_id`]): SQS accepts
//! and drops a send whose id it saw in the last 5 minutes, so an id derived from the job (its
//! message id and attempt) lost the second untried re-queue of the same attempt, or a job
//! redriven twice within 5 minutes. Each of our sends is a deliberate new copy; duplicates are
//! caught by the worker's idempotency record, not by SQS. SQS does not support a per-message
//! `DelaySeconds` on FIFO queues, so a FIFO re-queue is visible again at once: the delay is
//! dropped (the orchestrator's pacing still applies).
//!
//! The retry queue is read with a short poll (wait 0) so that it never holds up the main
//! queue's long poll; on SQS a short poll samples a subset of servers and can miss a message
//! that is there, which a later poll then sees.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use qo_core::batch::Refusals;
use qo_core::config::{ConfigError, Env};
use qo_core::job::Origin;
use qo_core::ports::{
    DeadLetter, JobSink, JobSource, Message, QueueError, QueueRole, Redrive, RedriveReport,
};
use qo_core::sqs::{MAX_MESSAGE_BYTES, QueueAttributes, send_batches};
use qo_core::time::Timestamp;
use rand::Rng;

use crate::error::{AwsError, queue_backend, queue_err};

/// Message attribute: how many times the job was tried before (a Number).
pub const ATTR_ATTEMPT: &str = "qo-attempt";
/// Message attribute: how many times the API answered the job 429 (a Number; absent: 0).
pub const ATTR_THROTTLED: &str = "qo-throttled";
/// The worker function of the pool that last had the job answered 429 or failed.
pub const ATTR_FUNCTION: &str = "qo-function";
/// Message attribute: when the job was first enqueued, epoch milliseconds (a Number).
pub const ATTR_ENQUEUED_AT_MS: &str = "qo-enqueued-at-ms";
/// Dead-letter attribute: why the job was dead-lettered (a String).
pub const ATTR_REASON: &str = "qo-reason";
/// Dead-letter attribute: the message id the job had when it was dead-lettered (a String).
pub const ATTR_SOURCE_MESSAGE_ID: &str = "qo-source-message-id";

/// The longest `qo-reason` kept, in bytes; longer reasons are cut at a character boundary.
pub const MAX_REASON_BYTES: usize = 1024;
/// SQS's longest long poll.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// SQS's longest per-message delay.
pub const MAX_DELAY_S: u64 = 900;
/// SQS's longest visibility timeout (12 h).
pub const MAX_VISIBILITY_S: u64 = 43_200;
/// The message group used on a FIFO queue when the job has none.
pub const DEFAULT_GROUP: &str = "default";
/// The message group used on a FIFO dead-letter queue when the job has none.
pub const DLQ_GROUP: &str = "dlq";

const MAX_BATCH: usize = 10;

/// The queue URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueUrls {
    /// The main job queue (`QUEUE_URL`).
    pub main: String,
    /// The retry queue, polled first (`RETRY_QUEUE_URL`, optional).
    pub retry: Option<String>,
    /// The dead-letter queue (`DLQ_URL`).
    pub dlq: String,
}

impl QueueUrls {
    /// Reads `QUEUE_URL`, `RETRY_QUEUE_URL` and `DLQ_URL`.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        Ok(QueueUrls {
            main: env.required("QUEUE_URL")?,
            retry: env.get("RETRY_QUEUE_URL"),
            dlq: env.required("DLQ_URL")?,
        })
    }
}

/// Whether a queue URL names a FIFO queue.
pub fn is_fifo(url: &str) -> bool {
    url.ends_with(".fifo")
}

/// The approximate message counts of one queue (serialized as is in `qo status --json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    /// `main`, `retry` or `dlq`.
    pub name: &'static str,
    /// Its URL.
    pub url: String,
    /// Messages ready to receive.
    pub visible: u64,
    /// Messages received and neither deleted nor visible again.
    pub in_flight: u64,
    /// Messages sent with a delay that has not passed.
    pub delayed: u64,
}

/// The job queues over SQS.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    urls: QueueUrls,
    fifo: bool,
}

impl SqsQueue {
    /// A queue set over `client`. FIFO-ness is read from each URL's `.fifo` suffix.
    pub fn new(client: Client, urls: QueueUrls) -> Self {
        let fifo = is_fifo(&urls.main);
        SqsQueue { client, urls, fifo }
    }

    /// The URLs.
    pub fn urls(&self) -> &QueueUrls {
        &self.urls
    }

    /// Whether the main queue is FIFO.
    pub fn is_fifo(&self) -> bool {
        self.fifo
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn url(&self, role: QueueRole) -> &str {
        match role {
            QueueRole::Main => &self.urls.main,
            QueueRole::Retry => self.urls.retry.as_deref().unwrap_or(&self.urls.main),
        }
    }

    /// Timeouts for a long poll of `wait`: the client's read, attempt and call timeouts grow
    /// by `wait`, so the SDK does not cut off an answer SQS is entitled to hold back.
    fn long_poll_override(&self, wait: Duration) -> Option<aws_sdk_sqs::config::Builder> {
        if wait.is_zero() {
            return None;
        }
        let config = self.client.config();
        let base = config.timeout_config()?;
        let attempts = config.retry_config().map_or(1, |r| r.max_attempts().max(1));
        let mut t = base.to_builder();
        t.set_read_timeout(base.read_timeout().map(|d| d + wait));
        t.set_operation_attempt_timeout(base.operation_attempt_timeout().map(|d| d + wait));
        t.set_operation_timeout(
            base.operation_timeout()
                .map(|d| d.saturating_add(wait.saturating_mul(attempts))),
        );
        Some(aws_sdk_sqs::config::Builder::default().timeout_config(t.build()))
    }

    pub(crate) async fn receive_raw(
        &self,
        url: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, QueueError> {
        let max = i32::try_from(max.clamp(1, MAX_BATCH)).unwrap_or(1);
        let req = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max)
            .wait_time_seconds(i32::try_from(wait.as_secs()).unwrap_or(20))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::MessageDeduplicationId)
            .message_attribute_names("All");
        let out = match self.long_poll_override(wait) {
            Some(o) => req.customize().config_override(o).send().await,
            None => req.send().await,
        }
        .map_err(|e| queue_err("sqs.ReceiveMessage", e))?;
        Ok(out.messages.unwrap_or_default())
    }

    async fn receive_one(
        &self,
        role: QueueRole,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        let raw = self.receive_raw(self.url(role), max, wait).await?;
        let now = Timestamp::from_system(std::time::SystemTime::now());
        raw.into_iter().map(|m| to_message(m, role, now)).collect()
    }

    /// Sends a new job to the main queue with `qo-enqueued-at-ms` = `now`; returns its message
    /// id. On a FIFO queue it goes to group [`DEFAULT_GROUP`] with a random deduplication id.
    pub async fn send_job(&self, body: &str, now: Timestamp) -> Result<String, QueueError> {
        const OP: &str = "sqs.SendMessage";
        let mut req = self
            .client
            .send_message()
            .queue_url(&self.urls.main)
            .message_body(body);
        for (name, value) in new_job_attributes(OP, now)? {
            req = req.message_attributes(name, value);
        }
        if self.fifo {
            req = req
                .message_group_id(DEFAULT_GROUP)
                .message_deduplication_id(unique_dedup_id());
        }
        let out = req.send().await.map_err(|e| queue_err(OP, e))?;
        out.message_id
            .ok_or_else(|| queue_backend(OP, AwsError::invalid(OP, "answer without a message id")))
    }

    /// Sends new jobs to the main queue with SendMessageBatch, each as [`SqsQueue::send_job`]
    /// sends one (`qo-enqueued-at-ms` = `now`; on a FIFO queue group [`DEFAULT_GROUP`] and a
    /// deduplication id of its own), and says what became of each body, by its index in
    /// `bodies`. Meant for up to ten bodies, one request; more, or bodies over
    /// [`MAX_BATCH_PAYLOAD_BYTES`](qo_core::sqs::MAX_BATCH_PAYLOAD_BYTES) together, are sent in
    /// as many requests as SQS's limits take ([`send_batches`]), in order.
    ///
    /// Nothing is silent: an entry SQS refuses is in [`JobsSent::failed`] with SQS's code,
    /// message and sender fault; a body over [`MAX_MESSAGE_BYTES`] (with its attribute) is
    /// failed there too, without a request ([`TOO_LARGE`]). A request that fails as a whole
    /// is an `Err` when nothing of the call was sent yet; after an earlier request was sent it
    /// fails its own entries and those after it ([`REQUEST_FAILED`], its text the message), so
    /// that the ids already given are not lost.
    pub async fn send_jobs<S: AsRef<str>>(
        &self,
        bodies: &[S],
        now: Timestamp,
    ) -> Result<JobsSent, QueueError> {
        const OP: &str = "sqs.SendMessageBatch";
        let attrs = new_job_attributes(OP, now)?;
        let sizes: Vec<usize> = bodies
            .iter()
            .map(|b| message_bytes(b.as_ref(), &attrs))
            .collect();
        let mut out = JobsSent::default();
        for range in send_batches(&sizes) {
            if let &[size] = &sizes[range.clone()]
                && size > MAX_MESSAGE_BYTES
            {
                out.failed.push((range.start, too_large(size)));
                continue;
            }
            let group = self.fifo.then_some(DEFAULT_GROUP);
            let entries = bodies[range.clone()]
                .iter()
                .enumerate()
                .map(|(i, b)| send_entry(OP, i, b.as_ref(), &attrs, group, None))
                .collect::<Result<Vec<_>, _>>()?;
            let answer = match self.send_entries(OP, &self.urls.main, entries).await {
                Ok(answer) => answer,
                Err(e) if out.sent.is_empty() => return Err(e),
                Err(e) => {
                    // Earlier requests were sent: this one's entries and the rest fail by
                    // entry, so that the ids already given are kept.
                    let why = request_failed(&e);
                    let rest = range.start..bodies.len();
                    out.failed.extend(rest.map(|i| (i, why.clone())));
                    break;
                }
            };
            out.record(range, &answer);
        }
        out.failed.sort_by_key(|(i, _)| *i);
        Ok(out)
    }

    /// One SendMessageBatch of `entries` to `url`.
    async fn send_entries(
        &self,
        op: &'static str,
        url: &str,
        entries: Vec<SendMessageBatchRequestEntry>,
    ) -> Result<aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput, QueueError>
    {
        self.client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| queue_err(op, e))
    }

    /// Sends a job back to the main queue as a new message, keeping what its `origin` says:
    /// the attempt count (`qo-attempt`), the 429 count (`qo-throttled`), the first enqueue time
    /// (`qo-enqueued-at-ms`) and, on a FIFO queue, the message group (with a deduplication id of its own). Returns the new
    /// message id. For jobs that come back from outside the queues (the worker's on-failure
    /// destination); `body` should carry the job's id, so that its idempotency key survives the
    /// new message id.
    pub async fn resend_job(&self, body: &str, origin: &Origin) -> Result<String, QueueError> {
        const OP: &str = "sqs.SendMessage(resend)";
        let req = self.job_send(OP, &self.urls.main, body, origin)?;
        let out = req.send().await.map_err(|e| queue_err(OP, e))?;
        out.message_id
            .ok_or_else(|| queue_backend(OP, AwsError::invalid(OP, "answer without a message id")))
    }

    /// A SendMessage of a job to `url` carrying its attempt, its 429 count (when not 0) and
    /// first enqueue time, and on a
    /// FIFO queue its message group and a deduplication id unique to this send.
    fn job_send(
        &self,
        op: &'static str,
        url: &str,
        body: &str,
        origin: &Origin,
    ) -> Result<aws_sdk_sqs::operation::send_message::builders::SendMessageFluentBuilder, QueueError>
    {
        let mut req = self.client.send_message().queue_url(url).message_body(body);
        for (name, value) in job_attributes(op, origin)? {
            req = req.message_attributes(name, value);
        }
        if is_fifo(url) {
            req = req
                .message_group_id(origin.group_id.as_deref().unwrap_or(DEFAULT_GROUP))
                .message_deduplication_id(unique_dedup_id());
        }
        Ok(req)
    }

    /// Sends fresh copies of `messages` (all received from `url`) with SendMessageBatch calls
    /// of at most ten messages and 1 MiB in all ([`send_batches`], bodies and attributes
    /// counted as SQS counts them: past 1 MiB SQS refuses the whole call); a copy over
    /// [`MAX_MESSAGE_BYTES`] on its own is refused without a request. Returns the receipts of
    /// the originals whose copy was refused, and the first refusal's reason.
    async fn resend_batch(
        &self,
        url: &str,
        messages: &[&Message],
        delay: Duration,
    ) -> Result<(Vec<String>, Option<BatchEntryError>), QueueError> {
        const OP: &str = "sqs.SendMessageBatch(resend)";
        let fifo = is_fifo(url);
        let delay = i32::try_from(ceil_secs(delay).min(MAX_DELAY_S)).unwrap_or(0);
        let attrs = messages
            .iter()
            .map(|m| job_attributes(OP, &m.origin))
            .collect::<Result<Vec<_>, _>>()?;
        let sizes: Vec<usize> = messages
            .iter()
            .zip(&attrs)
            .map(|(m, a)| message_bytes(&m.body, a))
            .collect();
        let mut refused = Vec::new();
        let mut first = None;
        for range in send_batches(&sizes) {
            let chunk = &messages[range.clone()];
            if let &[size] = &sizes[range.clone()]
                && size > MAX_MESSAGE_BYTES
            {
                first.get_or_insert_with(|| too_large(size));
                refused.push(chunk[0].receipt.clone());
                continue;
            }
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, (m, attrs)) in chunk.iter().zip(&attrs[range.clone()]).enumerate() {
                let group = fifo.then(|| m.origin.group_id.as_deref().unwrap_or(DEFAULT_GROUP));
                // No per-message delay on a FIFO queue (SQS refuses it).
                let delay = (!fifo).then_some(delay);
                entries.push(send_entry(OP, i, &m.body, attrs, group, delay)?);
            }
            let out = self.send_entries(OP, url, entries).await?;
            if first.is_none() {
                first = out.failed.first().map(batch_failure);
            }
            refused.extend(out.failed.iter().filter_map(|f| {
                let i: usize = f.id.parse().ok()?;
                chunk.get(i).map(|m| m.receipt.clone())
            }));
        }
        Ok((refused, first))
    }

    /// The approximate depth of each queue: main, retry (if configured), dead-letter.
    pub async fn depths(&self) -> Result<Vec<QueueDepth>, QueueError> {
        let mut queues = vec![("main", self.urls.main.clone())];
        if let Some(r) = &self.urls.retry {
            queues.push(("retry", r.clone()));
        }
        queues.push(("dlq", self.urls.dlq.clone()));
        let mut out = Vec::with_capacity(queues.len());
        for (name, url) in queues {
            out.push(self.depth(name, url).await?);
        }
        Ok(out)
    }

    async fn depth(&self, name: &'static str, url: String) -> Result<QueueDepth, QueueError> {
        const OP: &str = "sqs.GetQueueAttributes";
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| queue_err(OP, e))?;
        let attrs = out.attributes.unwrap_or_default();
        let count = |a: QueueAttributeName| -> u64 {
            attrs.get(&a).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        Ok(QueueDepth {
            name,
            visible: count(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
            url,
        })
    }

    /// Sends a batch of dead-letter messages to the main queue and deletes those sent, with
    /// SendMessageBatch calls of at most ten messages and 1 MiB in all ([`send_batches`]: past
    /// 1 MiB SQS refuses the whole call, and the redrive would stop at the same messages every
    /// time); a message over [`MAX_MESSAGE_BYTES`] on its own is failed without a request.
    async fn move_to_main(
        &self,
        batch: Vec<aws_sdk_sqs::types::Message>,
    ) -> Result<u64, QueueError> {
        const OP: &str = "sqs.SendMessageBatch";
        let main_fifo = is_fifo(&self.urls.main);
        let mut prepared = Vec::with_capacity(batch.len());
        for m in &batch {
            let origin = origin_of(m);
            // Attempt 0, the first enqueue time kept; the 429 count and function dropped.
            let redriven = Origin {
                enqueued_at: origin.enqueued_at,
                ..Origin::default()
            };
            let attrs = job_attributes(OP, &redriven)?;
            let group = main_fifo.then(|| origin.group_id.unwrap_or_else(|| DEFAULT_GROUP.into()));
            // The copy gets a new message id: the job's key goes in its body. A dead letter
            // names the message it was made from; a message the redrive policy moved keeps
            // its own id.
            let key = m
                .message_attributes
                .as_ref()
                .and_then(|a| a.get(ATTR_SOURCE_MESSAGE_ID))
                .and_then(|v| v.string_value())
                .unwrap_or(&origin.message_id);
            let body = qo_core::job::pin_key(m.body.as_deref().unwrap_or_default(), key);
            prepared.push((body, attrs, group));
        }
        let sizes: Vec<usize> = prepared
            .iter()
            .map(|(body, attrs, _)| message_bytes(body, attrs))
            .collect();
        let mut sent = Vec::with_capacity(batch.len());
        let mut failed = 0;
        let mut first = None;
        for range in send_batches(&sizes) {
            if let &[size] = &sizes[range.clone()]
                && size > MAX_MESSAGE_BYTES
            {
                failed += 1;
                first.get_or_insert_with(|| too_large(size));
                continue;
            }
            let entries = prepared[range.clone()]
                .iter()
                .enumerate()
                .map(|(i, (body, attrs, group))| {
                    send_entry(OP, i, body, attrs, group.as_deref(), None)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = match self.send_entries(OP, &self.urls.main, entries).await {
                Ok(out) => out,
                Err(e) => {
                    // Those sent by earlier calls leave the dead-letter queue first, so that
                    // they are not moved twice.
                    self.delete_receipts(&self.urls.dlq, &sent).await?;
                    return Err(e);
                }
            };
            sent.extend(
                out.successful
                    .iter()
                    .filter_map(|s| s.id.parse::<usize>().ok())
                    .filter_map(|i| batch.get(range.start + i))
                    .map(|m| m.receipt_handle.clone().unwrap_or_default()),
            );
            failed += out.failed.len();
            if first.is_none() {
                first = out.failed.first().map(batch_failure);
            }
        }
        self.delete_receipts(&self.urls.dlq, &sent).await?;
        if let Some(first) = first {
            return Err(QueueError::partial("redrive", failed, Vec::new(), first));
        }
        Ok(sent.len() as u64)
    }

    pub(crate) async fn delete_receipts(
        &self,
        url: &str,
        receipts: &[String],
    ) -> Result<(), QueueError> {
        const OP: &str = "sqs.DeleteMessageBatch";
        in_batches(receipts, "delete", |chunk| async move {
            let entries = batch_entries(OP, chunk, |id, r| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(r)
                    .build()
            })?;
            let out = self
                .client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| queue_err(OP, e))?;
            Ok(out.failed)
        })
        .await
    }

    pub(crate) async fn change_visibility(
        &self,
        url: &str,
        receipts: &[&str],
        seconds: i32,
    ) -> Result<(), QueueError> {
        const OP: &str = "sqs.ChangeMessageVisibilityBatch";
        in_batches(receipts, "release", |chunk| async move {
            let entries = batch_entries(OP, chunk, |id, r| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(r)
                    .visibility_timeout(seconds)
                    .build()
            })?;
            let out = self
                .client
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| queue_err(OP, e))?;
            Ok(out.failed)
        })
        .await
    }

    /// The messages grouped by the URL of the queue they came from, in first-seen order.
    fn by_queue<'a>(&'a self, messages: &'a [Message]) -> Vec<(&'a str, Vec<&'a Message>)> {
        let mut groups: Vec<(&str, Vec<&Message>)> = Vec::new();
        for m in messages {
            let url = self.url(m.queue);
            match groups.iter_mut().find(|(u, _)| *u == url) {
                Some((_, v)) => v.push(m),
                None => groups.push((url, vec![m])),
            }
        }
        groups
    }
}

#[async_trait]
impl JobSource for SqsQueue {
    async fn receive(&self, max: u8, wait: Duration) -> Result<Vec<Message>, QueueError> {
        let max = usize::from(max.clamp(1, 10));
        let mut out = Vec::new();
        if self.urls.retry.is_some() {
            out = self
                .receive_one(QueueRole::Retry, max, Duration::ZERO)
                .await?;
        }
        if out.len() < max {
            // Messages in hand are not held back by a long poll.
            let wait = if out.is_empty() {
                whole_seconds(wait)
            } else {
                Duration::ZERO
            };
            let main = self
                .receive_one(QueueRole::Main, max - out.len(), wait)
                .await?;
            out.extend(main);
        }
        Ok(out)
    }

    async fn delete(&self, messages: &[Message]) -> Result<(), QueueError> {
        let mut refusals = Refusals::new();
        for (url, batch) in self.by_queue(messages) {
            let receipts: Vec<String> = batch.iter().map(|m| m.receipt.clone()).collect();
            refusals.absorb(self.delete_receipts(url, &receipts).await)?;
        }
        refusals.finish("delete")
    }

    async fn receive_from(
        &self,
        role: QueueRole,
        max: u8,
        wait: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        if role == QueueRole::Retry && self.urls.retry.is_none() {
            return Ok(Vec::new());
        }
        self.receive_one(role, usize::from(max.clamp(1, 10)), whole_seconds(wait))
            .await
    }

    async fn resend(&self, messages: &[Message], delay: Duration) -> Result<(), QueueError> {
        let mut refusals = Refusals::new();
        for (url, batch) in self.by_queue(messages) {
            let (r, f) = self.resend_batch(url, &batch, delay).await?;
            refusals.add(r.len(), f, r);
        }
        refusals.finish("resend")
    }

    async fn release(&self, messages: &[Message], after: Duration) -> Result<(), QueueError> {
        let seconds = i32::try_from(ceil_secs(after).min(MAX_VISIBILITY_S)).unwrap_or(0);
        let mut refusals = Refusals::new();
        for (url, batch) in self.by_queue(messages) {
            let receipts: Vec<&str> = batch.iter().map(|m| m.receipt.as_str()).collect();
            refusals.absorb(self.change_visibility(url, &receipts, seconds).await)?;
        }
        refusals.finish("release")
    }
}

#[async_trait]
impl JobSink for SqsQueue {
    async fn dead_letter(&self, letter: DeadLetter) -> Result<(), QueueError> {
        const OP: &str = "sqs.SendMessage(dlq)";
        let o = &letter.origin;
        // The attribute carries the reason's text, as it always did.
        let text = letter.reason.to_string();
        let reason = if text.trim().is_empty() {
            "unspecified"
        } else {
            truncate(&text, MAX_REASON_BYTES)
        };
        let mut req = self
            .client
            .send_message()
            .queue_url(&self.urls.dlq)
            .message_body(&letter.body)
            .message_attributes(
                ATTR_REASON,
                string_attr(reason).map_err(|e| queue_backend(OP, e))?,
            )
            .message_attributes(
                ATTR_ATTEMPT,
                number_attr(u64::from(o.attempt)).map_err(|e| queue_backend(OP, e))?,
            );
        if o.throttled > 0 {
            req = req.message_attributes(
                ATTR_THROTTLED,
                number_attr(u64::from(o.throttled)).map_err(|e| queue_backend(OP, e))?,
            );
        }
        if !o.message_id.is_empty() {
            req = req.message_attributes(
                ATTR_SOURCE_MESSAGE_ID,
                string_attr(&o.message_id).map_err(|e| queue_backend(OP, e))?,
            );
        }
        if let Some(at) = o.enqueued_at {
            req = req.message_attributes(
                ATTR_ENQUEUED_AT_MS,
                number_attr(at.as_millis()).map_err(|e| queue_backend(OP, e))?,
            );
        }
        if is_fifo(&self.urls.dlq) {
            req = req
                .message_group_id(o.group_id.as_deref().unwrap_or(DLQ_GROUP))
                .message_deduplication_id(unique_dedup_id());
        }
        req.send().await.map_err(|e| queue_err(OP, e))?;
        tracing::info!(
            message_id = %o.message_id,
            attempt = o.attempt,
            reason,
            "dead-lettered"
        );
        Ok(())
    }

    async fn requeue(
        &self,
        body: &str,
        origin: &Origin,
        delay: Duration,
    ) -> Result<(), QueueError> {
        const OP: &str = "sqs.SendMessage(requeue)";
        let url = self.urls.retry.as_deref().unwrap_or(&self.urls.main);
        let mut req = self.job_send(OP, url, body, origin)?;
        if !is_fifo(url) {
            // FIFO queues refuse a per-message DelaySeconds: there the delay is dropped.
            let secs = ceil_secs(delay).min(MAX_DELAY_S);
            req = req.delay_seconds(i32::try_from(secs).unwrap_or(0));
        }
        req.send().await.map_err(|e| queue_err(OP, e))?;
        Ok(())
    }
}

/// Moves dead-lettered jobs back to the main queue: each is received from the dead-letter
/// queue, sent to the main queue with `qo-attempt` 0 (its first enqueue time kept; on a FIFO
/// queue its message group kept), then deleted from the dead-letter queue. `dead` is SQS's
/// approximate count before; `None` moves until the dead-letter queue answers empty.
#[async_trait]
impl Redrive for SqsQueue {
    async fn redrive(&self, max: Option<u64>, dry_run: bool) -> Result<RedriveReport, QueueError> {
        let dead = self.depth("dlq", self.urls.dlq.clone()).await?.visible;
        let mut report = RedriveReport {
            dead,
            moved: 0,
            dry_run,
        };
        if dry_run {
            return Ok(report);
        }
        let max = max.unwrap_or(u64::MAX);
        while report.moved < max {
            let want = usize::try_from((max - report.moved).min(MAX_BATCH as u64)).unwrap_or(1);
            // A 1 s poll asks every SQS server, so an empty answer means empty.
            let batch = self
                .receive_raw(&self.urls.dlq, want, Duration::from_secs(1))
                .await?;
            if batch.is_empty() {
                break;
            }
            report.moved += self.move_to_main(batch).await?;
        }
        Ok(report)
    }
}

/// Creates (or finds) the queues `<prefix>`, `<prefix>-retry` and `<prefix>-dlq` (with `.fifo`
/// appended when `fifo`), the first two with the template's attributes
/// ([`QueueAttributes::TEMPLATE`]: visibility, retention, a redrive policy to the third), so
/// that local runs and tests see the queues a deployment has.
pub async fn ensure_queues(
    client: &Client,
    prefix: &str,
    fifo: bool,
) -> Result<QueueUrls, AwsError> {
    ensure_queues_with(client, prefix, fifo, QueueAttributes::TEMPLATE).await
}

/// [`ensure_queues`] with other attributes for the job and retry queues (a test of a
/// behaviour at another visibility timeout, say).
pub async fn ensure_queues_with(
    client: &Client,
    prefix: &str,
    fifo: bool,
    attributes: QueueAttributes,
) -> Result<QueueUrls, AwsError> {
    let suffix = if fifo { ".fifo" } else { "" };
    let dlq = create_queue(client, &format!("{prefix}-dlq{suffix}"), fifo, None).await?;
    let arn = client
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| AwsError::sdk("sqs.GetQueueAttributes", e))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| AwsError::invalid("sqs.GetQueueAttributes", "no QueueArn for the DLQ"))?;
    let policy = serde_json::json!({
        "deadLetterTargetArn": arn,
        "maxReceiveCount": attributes.max_receive_count.unwrap_or(0).to_string(),
    })
    .to_string();
    let with = Some((&attributes, policy.as_str()));
    let main = create_queue(client, &format!("{prefix}{suffix}"), fifo, with).await?;
    let retry = create_queue(client, &format!("{prefix}-retry{suffix}"), fifo, with).await?;
    Ok(QueueUrls {
        main,
        retry: Some(retry),
        dlq,
    })
}

async fn create_queue(
    client: &Client,
    name: &str,
    fifo: bool,
    attributes: Option<(&QueueAttributes, &str)>,
) -> Result<String, AwsError> {
    const OP: &str = "sqs.CreateQueue";
    let mut req = client.create_queue().queue_name(name);
    if fifo {
        req = req.attributes(QueueAttributeName::FifoQueue, "true");
    }
    match attributes {
        Some((a, redrive_policy)) => {
            req = req
                .attributes(
                    QueueAttributeName::VisibilityTimeout,
                    a.visibility_timeout.as_secs().to_string(),
                )
                .attributes(
                    QueueAttributeName::MessageRetentionPeriod,
                    a.retention.as_secs().to_string(),
                )
                .attributes(
                    QueueAttributeName::MaximumMessageSize,
                    a.max_message_bytes.to_string(),
                );
            if a.max_receive_count.is_some() {
                req = req.attributes(QueueAttributeName::RedrivePolicy, redrive_policy);
            }
        }
        None => {
            // The dead-letter queue: the longest retention, as the template sets it.
            req = req.attributes(
                QueueAttributeName::MessageRetentionPeriod,
                qo_core::sqs::MAX_RETENTION.as_secs().to_string(),
            );
        }
    }
    req.send()
        .await
        .map_err(|e| AwsError::sdk(OP, e))?
        .queue_url
        .ok_or_else(|| AwsError::invalid(OP, format!("no URL for queue `{name}`")))
}

/// A received SQS message as a port [`Message`].
fn to_message(
    m: aws_sdk_sqs::types::Message,
    queue: QueueRole,
    received_at: Timestamp,
) -> Result<Message, QueueError> {
    const OP: &str = "sqs.ReceiveMessage";
    let origin = origin_of(&m);
    let system = |k: MessageSystemAttributeName| -> Option<u64> {
        m.attributes.as_ref()?.get(&k)?.trim().parse().ok()
    };
    let receive_count = system(MessageSystemAttributeName::ApproximateReceiveCount)
        .map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let sent_at = system(MessageSystemAttributeName::SentTimestamp)
        .map_or(received_at, Timestamp::from_millis);
    let receipt = m.receipt_handle.ok_or_else(|| {
        queue_backend(
            OP,
            AwsError::invalid(
                OP,
                format!("message {} without a receipt handle", origin.message_id),
            ),
        )
    })?;
    Ok(Message {
        receipt,
        queue,
        body: m.body.unwrap_or_default(),
        origin,
        receive_count,
        received_at,
        sent_at,
    })
}

/// The origin a received message carries: our attributes first, SQS's as the fallback.
fn origin_of(m: &aws_sdk_sqs::types::Message) -> Origin {
    let system = m.attributes.as_ref();
    let ours = m.message_attributes.as_ref();
    let sys = |k: MessageSystemAttributeName| system.and_then(|a| a.get(&k)).cloned();
    let our_number = |k: &str| -> Option<u64> {
        let v = ours.and_then(|a| a.get(k)).and_then(|v| v.string_value())?;
        match v.trim().parse() {
            Ok(n) => Some(n),
            Err(_) => {
                tracing::warn!(
                    attribute = k,
                    value = v,
                    "ignoring a malformed message attribute"
                );
                None
            }
        }
    };
    let attempt = our_number(ATTR_ATTEMPT)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        .unwrap_or(0);
    let throttled = our_number(ATTR_THROTTLED)
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        .unwrap_or(0);
    let enqueued_at = our_number(ATTR_ENQUEUED_AT_MS)
        .or_else(|| sys(MessageSystemAttributeName::SentTimestamp)?.parse().ok())
        .map(Timestamp::from_millis);
    Origin {
        message_id: m.message_id.clone().unwrap_or_default(),
        attempt,
        throttled,
        enqueued_at,
        group_id: sys(MessageSystemAttributeName::MessageGroupId),
        dedup_id: sys(MessageSystemAttributeName::MessageDeduplicationId),
        function: ours
            .and_then(|a| a.get(ATTR_FUNCTION))
            .and_then(|v| v.string_value())
            .filter(|f| !f.is_empty())
            .map(str::to_string),
    }
}

/// Our message attributes of a job's send: its attempt (`qo-attempt`) and first enqueue time
/// (`qo-enqueued-at-ms`), as a re-queue, a re-send and a fresh copy carry them.
fn job_attributes(
    op: &'static str,
    origin: &Origin,
) -> Result<Vec<(&'static str, MessageAttributeValue)>, QueueError> {
    let mut attrs = vec![(
        ATTR_ATTEMPT,
        number_attr(u64::from(origin.attempt)).map_err(|e| queue_backend(op, e))?,
    )];
    if origin.throttled > 0 {
        attrs.push((
            ATTR_THROTTLED,
            number_attr(u64::from(origin.throttled)).map_err(|e| queue_backend(op, e))?,
        ));
    }
    if let Some(f) = origin.function.as_deref().filter(|f| !f.is_empty()) {
        attrs.push((
            ATTR_FUNCTION,
            string_attr(f).map_err(|e| queue_backend(op, e))?,
        ));
    }
    if let Some(at) = origin.enqueued_at {
        attrs.push((
            ATTR_ENQUEUED_AT_MS,
            number_attr(at.as_millis()).map_err(|e| queue_backend(op, e))?,
        ));
    }
    Ok(attrs)
}

/// Our message attributes of a new job's send: its first enqueue time (`qo-enqueued-at-ms`).
fn new_job_attributes(
    op: &'static str,
    now: Timestamp,
) -> Result<Vec<(&'static str, MessageAttributeValue)>, QueueError> {
    Ok(vec![(
        ATTR_ENQUEUED_AT_MS,
        number_attr(now.as_millis()).map_err(|e| queue_backend(op, e))?,
    )])
}

/// A message's size as SQS counts it against its limits: the body, and each attribute's name,
/// data type and value.
fn message_bytes(body: &str, attrs: &[(&str, MessageAttributeValue)]) -> usize {
    body.len()
        + attrs
            .iter()
            .map(|(name, v)| {
                name.len() + v.data_type().len() + v.string_value().map_or(0, str::len)
            })
            .sum::<usize>()
}

/// The size of a new job's message with `body` sent at `now` ([`SqsQueue::send_job`],
/// [`SqsQueue::send_jobs`]), as SQS counts it against
/// [`MAX_MESSAGE_BYTES`] and the batch payload limit: the body and the `qo-enqueued-at-ms`
/// attribute.
pub fn new_job_bytes(body: &str, now: Timestamp) -> usize {
    let attr = ATTR_ENQUEUED_AT_MS.len() + "Number".len() + now.as_millis().to_string().len();
    body.len() + attr
}

/// One SendMessageBatch entry: id `index` (its place in the request, how SQS's answer names
/// it), `body`, `attrs`; on a FIFO queue (`group`) that message group and a deduplication id
/// unique to this send; a per-message delay when `delay` is given (never on FIFO).
fn send_entry(
    op: &'static str,
    index: usize,
    body: &str,
    attrs: &[(&'static str, MessageAttributeValue)],
    group: Option<&str>,
    delay: Option<i32>,
) -> Result<SendMessageBatchRequestEntry, QueueError> {
    let mut e = SendMessageBatchRequestEntry::builder()
        .id(index.to_string())
        .message_body(body);
    for (name, value) in attrs {
        e = e.message_attributes(*name, value.clone());
    }
    if let Some(group) = group {
        e = e
            .message_group_id(group)
            .message_deduplication_id(unique_dedup_id());
    }
    if let Some(delay) = delay {
        e = e.delay_seconds(delay);
    }
    e.build().map_err(|e| invalid_entry(op, e))
}

/// The code of a body [`SqsQueue::send_jobs`] fails without sending: over [`MAX_MESSAGE_BYTES`].
pub const TOO_LARGE: &str = "qo.MessageTooLarge";

/// The code of the entries of a request that failed as a whole after an earlier request of the
/// same [`SqsQueue::send_jobs`] was sent.
pub const REQUEST_FAILED: &str = "qo.RequestFailed";

/// The code of an entry SQS's answer did not mention, failed rather than assumed sent.
pub const NO_ANSWER: &str = "qo.NoAnswer";

fn too_large(bytes: usize) -> BatchEntryError {
    BatchEntryError {
        code: TOO_LARGE.to_string(),
        message: Some(format!(
            "the message is {bytes} bytes with its attribute; SQS takes at most \
             {MAX_MESSAGE_BYTES} (1 MiB), so it was not sent"
        )),
        sender_fault: true,
    }
}

fn request_failed(e: &QueueError) -> BatchEntryError {
    BatchEntryError {
        code: REQUEST_FAILED.to_string(),
        message: Some(e.to_string()),
        sender_fault: false,
    }
}

/// What [`SqsQueue::send_jobs`] did with each body, named by its index in the call's bodies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobsSent {
    /// The bodies SQS took, with their message ids, in order.
    pub sent: Vec<(usize, String)>,
    /// The bodies not sent, in order, with why: SQS's refusal of the entry, or ours
    /// ([`TOO_LARGE`], [`REQUEST_FAILED`]).
    pub failed: Vec<(usize, BatchEntryError)>,
}

impl JobsSent {
    /// Records SQS's answer to the request of the bodies `range`: its entries' ids are their
    /// places in the request. An entry the answer names neither way is failed, not assumed sent.
    fn record(
        &mut self,
        range: std::ops::Range<usize>,
        answer: &aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput,
    ) {
        let index = |id: &str| {
            id.parse::<usize>()
                .ok()
                .filter(|i| *i < range.len())
                .map(|i| range.start + i)
        };
        let mut told = vec![false; range.len()];
        for s in &answer.successful {
            if let Some(i) = index(&s.id) {
                told[i - range.start] = true;
                self.sent.push((i, s.message_id.clone()));
            }
        }
        for f in &answer.failed {
            if let Some(i) = index(&f.id) {
                told[i - range.start] = true;
                self.failed.push((i, batch_failure(f)));
            }
        }
        for (k, _) in told.iter().enumerate().filter(|(_, t)| !**t) {
            self.failed.push((
                range.start + k,
                BatchEntryError {
                    code: NO_ANSWER.to_string(),
                    message: Some("SQS's answer named neither success nor failure".into()),
                    sender_fault: false,
                },
            ));
        }
        self.sent.sort_by_key(|(i, _)| *i);
    }
}

fn string_attr(v: &str) -> Result<MessageAttributeValue, AwsError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .map_err(|e| AwsError::invalid("sqs.MessageAttributeValue", e.to_string()))
}

fn number_attr(v: u64) -> Result<MessageAttributeValue, AwsError> {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(v.to_string())
        .build()
        .map_err(|e| AwsError::invalid("sqs.MessageAttributeValue", e.to_string()))
}

/// Runs `send` over `items` in batches of at most ten (SQS's limit) and counts the entries SQS
/// refused: any refusal is [`QueueError::Partial`] with the first one's reason and the refused
/// receipts (each entry's id is its index in the batch).
async fn in_batches<'a, T, F, Fut>(
    items: &'a [T],
    op: &'static str,
    mut send: F,
) -> Result<(), QueueError>
where
    T: AsRef<str>,
    F: FnMut(&'a [T]) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<BatchResultErrorEntry>, QueueError>>,
{
    let mut refusals = Refusals::new();
    for chunk in items.chunks(MAX_BATCH) {
        let refused = send(chunk).await?;
        refusals.add(
            refused.len(),
            refused.first().map(batch_failure),
            refused.iter().filter_map(|f| {
                let i: usize = f.id.parse().ok()?;
                chunk.get(i).map(|r| r.as_ref().to_string())
            }),
        );
    }
    refusals.finish(op)
}

/// One batch entry per receipt of `chunk`, its id its index in the chunk (how SQS's answer
/// names the refused ones), built by `build`.
fn batch_entries<T, E, B>(
    op: &'static str,
    chunk: &[T],
    build: impl Fn(String, &str) -> Result<E, B>,
) -> Result<Vec<E>, QueueError>
where
    T: AsRef<str>,
    B: std::fmt::Display,
{
    chunk
        .iter()
        .enumerate()
        .map(|(i, r)| build(i.to_string(), r.as_ref()).map_err(|e| invalid_entry(op, e)))
        .collect()
}

/// A batch entry the SDK's builder refused (a required field missing).
fn invalid_entry(op: &'static str, e: impl std::fmt::Display) -> QueueError {
    queue_backend(op, AwsError::invalid(op, e.to_string()))
}

fn batch_failure(f: &BatchResultErrorEntry) -> BatchEntryError {
    BatchEntryError {
        code: f.code().to_string(),
        message: f.message().map(str::to_string),
        sender_fault: f.sender_fault(),
    }
}

/// An entry SQS refused in a batch call: the source of a [`QueueError::Partial`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchEntryError {
    /// SQS's error code.
    pub code: String,
    /// Its message, when it gave one.
    pub message: Option<String>,
    /// SQS's `SenderFault`: the entry itself is at fault (sending it again fails again);
    /// false: SQS's side, worth another try.
    pub sender_fault: bool,
}

impl std::fmt::Display for BatchEntryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.message {
            Some(m) => write!(f, "{}: {m}", self.code),
            None => f.write_str(&self.code),
        }
    }
}

impl std::error::Error for BatchEntryError {}

/// A long-poll wait: rounded to the nearest whole second, at most [`MAX_WAIT`].
fn whole_seconds(wait: Duration) -> Duration {
    let rounded = (wait.as_millis() + 500) / 1000;
    Duration::from_secs(u64::try_from(rounded).unwrap_or(u64::MAX)).min(MAX_WAIT)
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `s` cut to at most `max` bytes at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A FIFO deduplication id of its own for one send: 128 random bits as 32 hex characters
/// (SQS allows up to 128 alphanumeric and punctuation characters).
pub fn unique_dedup_id() -> String {
    let mut rng = rand::rng();
    format!("{:016x}{:016x}", rng.random::<u64>(), rng.random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size the orchestrator and the in-memory queue group re-sends by is the size this
    /// adapter sends.
    #[test]
    fn the_core_count_of_a_resent_message_is_the_adapter_s() {
        let origins = [
            Origin::default(),
            Origin {
                attempt: 12,
                throttled: 3,
                function: Some("qo-worker-2".into()),
                enqueued_at: Some(Timestamp::from_millis(1_795_219_200_123)),
                ..Origin::default()
            },
            Origin {
                attempt: 1,
                function: Some(String::new()),
                ..Origin::default()
            },
        ];
        for origin in &origins {
            let attrs = job_attributes("test", origin).expect("attributes");
            assert_eq!(
                qo_core::sqs::job_message_bytes("{\"path\":\"/x\"}", origin),
                message_bytes("{\"path\":\"/x\"}", &attrs),
                "{origin:?}"
            );
        }
    }

    #[test]
    fn dedup_ids_are_unique_per_send() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| unique_dedup_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(
            ids.iter()
                .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }

    #[test]
    fn waits_and_delays_round() {
        assert_eq!(whole_seconds(Duration::from_millis(400)), Duration::ZERO);
        assert_eq!(
            whole_seconds(Duration::from_millis(1500)),
            Duration::from_secs(2)
        );
        assert_eq!(whole_seconds(Duration::from_secs(60)), MAX_WAIT);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }

    #[test]
    fn a_new_job_is_measured_as_its_message_is_sent() {
        let now = Timestamp::from_millis(1_700_000_000_321);
        let attrs = new_job_attributes("test", now).expect("attributes");
        for body in ["", r#"{"path":"/a"}"#, &"x".repeat(1000)] {
            assert_eq!(new_job_bytes(body, now), message_bytes(body, &attrs));
        }
        // The body, then `qo-enqueued-at-ms` (17), `Number` (6) and 13 digits.
        assert_eq!(new_job_bytes("abc", now), 3 + 17 + 6 + 13);
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }
}
