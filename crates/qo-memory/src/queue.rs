//! [`MemoryQueue`]: a main queue, an optional retry queue and a dead-letter queue in memory, with
//! SQS semantics, the attributes of [`qo_core::sqs::QueueAttributes`], and SQS's limits.
//!
//! - Every message has a unique id and, per receive, a new receipt handle; an older handle no
//!   longer deletes or releases it (SQS's `ReceiptHandleIsInvalid`). Batch operations apply to
//!   the valid entries and report the others as [`QueueError::Partial`] with their receipts, as
//!   `DeleteMessageBatch` and `ChangeMessageVisibilityBatch` do; a test can make the next
//!   entries of a batch call be refused ([`MemoryQueue::refuse_next`]).
//! - A received message stays invisible for the visibility timeout, then comes back;
//!   [`JobSource::release`] changes its visibility (zero: at once). A change that would keep it
//!   invisible past 12 h after its receive is refused for that entry.
//! - Each receive adds one to the message's receive count, and a release does not take it
//!   back. With a redrive policy (`max_receive_count`), a message already received that many
//!   times moves to the dead-letter queue at its next receive, with no reason, as SQS does
//!   ([`MemoryQueue::redriven`]).
//! - Retention: a message older than the retention period (counted from its send; a release
//!   does not reset it) is gone, visible or not. SQS leaves no trace; this queue keeps a record
//!   ([`MemoryQueue::expired`]) so that a test or `qo local` can report what was lost.
//! - A message sent with a delay ([`SendOptions::delay`], [`JobSink::requeue`]) is invisible
//!   until then; a delay past 900 s is refused.
//! - [`JobSource::receive`] takes from the retry queue first, then the main queue
//!   ([`JobSource::receive_from`]: one queue only), and long-polls
//!   up to `wait` when nothing is visible, waking on a send, a release or the next visibility
//!   change. All times come from the injected [`Clock`], so it runs under tokio's paused time.
//! - [`JobSource::resend`] stores a fresh copy of a received message on the queue it came from
//!   (receive count 0, sent now), as the SQS adapter's SendMessageBatch makes one.
//! - A re-queued or re-sent message gets a new message id, as every SQS send does: whoever
//!   sends a copy puts the job's idempotency key in its body. A re-queue keeps the counts it
//!   is given, as the SQS adapter's attributes carry them: `attempt` (`qo-attempt`) and
//!   `throttled` (`qo-throttled`, the 429s answered).
//! - FIFO (optional): `group_id` and `dedup_id` are kept in the [`Origin`]; a send whose
//!   deduplication id was seen in the last 5 minutes is accepted and dropped, as SQS does. A
//!   re-queue is deduplicated by an id unique to that send, as the SQS adapter sends it. A
//!   message group is blocked while one of its messages is in flight.
//! - Faults SQS documents, off by default and drawn from a seeded generator ([`QueueFaults`]):
//!   a deleted message that comes back (at-least-once delivery), a short poll that misses
//!   visible messages (it asks only some of SQS's servers), single batch entries refused.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use qo_core::batch::Refusals;
use qo_core::job::Origin;
use qo_core::ports::{DeadLetter, JobSink, JobSource, Message, QueueError, QueueRole};
use qo_core::sqs::{self, QueueAttributes};
use qo_core::time::{Clock, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;

use crate::error::MemoryError;

/// SQS's default visibility timeout.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = sqs::DEFAULT_VISIBILITY;

/// How long a FIFO deduplication id is remembered (SQS: 5 minutes).
pub const DEDUP_WINDOW: Duration = sqs::DEDUP_WINDOW;

/// The most messages one receive returns (SQS: 10).
pub const MAX_RECEIVE: u8 = sqs::MAX_BATCH as u8;

/// A receive waiting less than this is a short poll on SQS (`WaitTimeSeconds` is whole
/// seconds, and the SQS adapter rounds to the nearest).
const SHORT_POLL_BELOW: Duration = Duration::from_millis(500);

/// How the queues behave.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// Visibility timeout, retention and redrive policy of the main and retry queues
    /// (default: SQS's defaults, no redrive policy; [`QueueOptions::template`]: the template's).
    pub attributes: QueueAttributes,
    /// Whether there is a retry queue: re-queued jobs go there, and receive polls it first.
    pub retry_queue: bool,
    /// FIFO queues: deduplication ids and message groups are honoured.
    pub fifo: bool,
    /// Prefix of message ids and receipt handles, to tell queues apart (default `msg`).
    pub id_prefix: String,
    /// Faults SQS documents, each off by default.
    pub faults: QueueFaults,
}

/// Faults SQS documents for standard queues, drawn from a generator seeded with `seed`, so a
/// run repeats. Every rate is a fraction from 0 to 1, and 0 (the default) turns the fault off.
#[derive(Clone, Debug, Default)]
pub struct QueueFaults {
    /// Seed of the draws.
    pub seed: u64,
    /// Fraction of deleted messages that come back: "more than one copy of a message might be
    /// delivered" (at-least-once delivery; a server that missed the delete serves its copy). The
    /// copy keeps its message id, body and receive count, and turns visible a visibility timeout
    /// after the receive the delete answered.
    pub redeliver_rate: f64,
    /// Fraction of visible messages a short poll (a receive that waits under half a second,
    /// which SQS's whole seconds make none) misses: it queries only a subset of servers, so it
    /// can return fewer messages, or none, while some are visible. A long poll queries every
    /// server and misses none.
    pub short_poll_miss_rate: f64,
    /// Fraction of entries of DeleteMessageBatch and ChangeMessageVisibilityBatch refused on
    /// their own while the call succeeds.
    pub refuse_rate: f64,
}

impl QueueFaults {
    /// Checks that each rate is a fraction.
    pub fn validate(&self) -> Result<(), MemoryError> {
        for (name, rate) in [
            ("redeliver_rate", self.redeliver_rate),
            ("short_poll_miss_rate", self.short_poll_miss_rate),
            ("refuse_rate", self.refuse_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(MemoryError::InvalidOption {
                    name,
                    value: rate.to_string(),
                    reason: "must be a fraction from 0 to 1",
                });
            }
        }
        Ok(())
    }
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            attributes: QueueAttributes::AWS_DEFAULT,
            retry_queue: false,
            fifo: false,
            id_prefix: "msg".to_string(),
            faults: QueueFaults::default(),
        }
    }
}

impl QueueOptions {
    /// The queues as the template deploys them: its attributes and a retry queue.
    pub fn template() -> Self {
        QueueOptions {
            attributes: QueueAttributes::TEMPLATE,
            retry_queue: true,
            ..QueueOptions::default()
        }
    }
}

/// How to send one message with [`MemoryQueue::send_with`].
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    /// Invisible until this long after the send (at most 900 s).
    pub delay: Duration,
    /// FIFO message group.
    pub group_id: Option<String>,
    /// FIFO deduplication id.
    pub dedup_id: Option<String>,
}

/// A batch call whose entries a test can have refused ([`MemoryQueue::refuse_next`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatchOp {
    /// `DeleteMessageBatch`.
    Delete,
    /// `ChangeMessageVisibilityBatch`.
    Release,
}

/// How many messages are where, as SQS's approximate counts say it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepths {
    /// Main queue: receivable now.
    pub main_visible: usize,
    /// Main queue: received and not yet deleted, invisible until their timeout.
    pub main_in_flight: usize,
    /// Main queue: sent with a delay that has not passed.
    pub main_delayed: usize,
    /// Retry queue: receivable now.
    pub retry_visible: usize,
    /// Retry queue: received and not yet deleted.
    pub retry_in_flight: usize,
    /// Retry queue: re-queued with a delay that has not passed.
    pub retry_delayed: usize,
    /// Dead-letter queue: what was sent there with a reason, and what the redrive policy moved.
    pub dead: usize,
    /// Messages deleted by retention (SQS keeps no count of these).
    pub expired: usize,
}

impl QueueDepths {
    /// Messages on the main and retry queues, visible or not (the dead letters excluded).
    pub fn pending(&self) -> usize {
        self.main_visible
            + self.main_in_flight
            + self.main_delayed
            + self.retry_visible
            + self.retry_in_flight
            + self.retry_delayed
    }
}

/// A message the redrive policy moved to the dead-letter queue: no reason attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redriven {
    /// Its body.
    pub body: String,
    /// Its origin as the queue knew it.
    pub origin: Origin,
    /// Its receive count when it moved.
    pub receive_count: u32,
    /// The queue it moved from.
    pub from: QueueRole,
}

/// A message that retention deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    /// Its body.
    pub body: String,
    /// Its origin.
    pub origin: Origin,
    /// When it was sent.
    pub sent_at: Timestamp,
    /// The queue it was on.
    pub from: QueueRole,
}

/// One stored message.
#[derive(Debug)]
struct Stored {
    role: QueueRole,
    body: String,
    origin: Origin,
    visible_at: Timestamp,
    sent_at: Timestamp,
    /// The current receipt number; `None` until first received.
    receipt: Option<u64>,
    /// Receives so far.
    receive_count: u32,
    /// When it was last received.
    received_at: Option<Timestamp>,
}

impl Stored {
    fn in_flight(&self, now: Timestamp) -> bool {
        self.receipt.is_some() && self.visible_at > now
    }
}

/// The requests SQS would bill for what was asked of the queues so far: a batch call of up to
/// 10 entries is one request, and every 64 KB of a request's payload counts as one more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SqsRequests {
    /// `ReceiveMessage` (one per queue polled: the retry queue's short poll when the
    /// orchestrator asks for it, then the job queue's long poll).
    pub receive: u64,
    /// Of `receive`, those of the retry queue.
    pub receive_retry: u64,
    /// `SendMessage` and `SendMessageBatch` (the producer's sends, re-queues, dead letters).
    pub send: u64,
    /// `DeleteMessageBatch`.
    pub delete: u64,
    /// `ChangeMessageVisibilityBatch`.
    pub change_visibility: u64,
}

impl SqsRequests {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.receive + self.send + self.delete + self.change_visibility
    }
}

/// Billed requests of one request carrying `bytes` of payload.
fn billed(bytes: usize) -> u64 {
    bytes.div_ceil(64 * 1024).max(1) as u64
}

/// Billed requests of SendMessageBatch calls of messages of `sizes` bytes, grouped as SQS takes
/// them ([`sqs::send_batches`]: 10 a call, at most 1 MiB a call): each call is billed as
/// [`billed`] bills its payload. None for none.
fn billed_send_batches(sizes: &[usize]) -> u64 {
    sqs::send_batches(sizes)
        .into_iter()
        .map(|r| billed(sizes[r].iter().sum()))
        .sum()
}

/// Batch requests of `n` entries (10 a batch), none for none.
fn batches(n: usize) -> u64 {
    n.div_ceil(10) as u64
}

/// Everything behind the lock.
#[derive(Debug, Default)]
struct State {
    /// The requests SQS would bill.
    requests: SqsRequests,
    next_seq: u64,
    next_id: u64,
    next_receipt: u64,
    messages: HashMap<u64, Stored>,
    /// Per queue, the messages ordered by the time they become visible, then by send order.
    main: BTreeSet<(Timestamp, u64)>,
    retry: BTreeSet<(Timestamp, u64)>,
    /// Every message by its send time, for retention.
    by_age: BTreeSet<(Timestamp, u64)>,
    dead: Vec<DeadLetter>,
    redriven: Vec<Redriven>,
    expired: Vec<Expired>,
    /// FIFO deduplication: key -> (message id, remembered until).
    dedup: HashMap<String, (String, Timestamp)>,
    /// Entries still to refuse, per batch call.
    refuse: HashMap<BatchOp, usize>,
    /// The highest receive count any message reached.
    peak_receive_count: u32,
    /// The fault draws ([`QueueFaults`]), seeded at the queue's creation.
    rng: Option<StdRng>,
    /// The faults.
    faults: QueueFaults,
    /// Deleted messages that came back ([`QueueFaults::redeliver_rate`]).
    redelivered: u64,
}

impl State {
    /// Draws whether a fault of `rate` happens now.
    fn fault(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.rng.as_mut().is_some_and(|r| r.random::<f64>() < rate)
    }

    /// Deletes `seq`, or keeps a copy that comes back a visibility timeout after its receive
    /// ([`QueueFaults::redeliver_rate`]).
    fn delete(&mut self, seq: u64, now: Timestamp, visibility: Duration) {
        if !self.fault(self.faults.redeliver_rate) {
            self.remove(seq);
            return;
        }
        let Some(m) = self.messages.get_mut(&seq) else {
            return;
        };
        let (role, old) = (m.role, m.visible_at);
        let at = m.received_at.unwrap_or(now).plus(visibility).max(now);
        m.visible_at = at;
        m.receipt = None;
        self.redelivered += 1;
        let lane = self.lane(role);
        lane.remove(&(old, seq));
        lane.insert((at, seq));
    }

    fn lane(&mut self, role: QueueRole) -> &mut BTreeSet<(Timestamp, u64)> {
        match role {
            QueueRole::Main => &mut self.main,
            QueueRole::Retry => &mut self.retry,
        }
    }

    /// Removes a stored message from every index.
    fn remove(&mut self, seq: u64) -> Option<Stored> {
        let m = self.messages.remove(&seq)?;
        self.lane(m.role).remove(&(m.visible_at, seq));
        self.by_age.remove(&(m.sent_at, seq));
        Some(m)
    }

    /// Deletes what is past `retention` at `now`, keeping a record of it.
    fn expire(&mut self, now: Timestamp, retention: Duration) {
        loop {
            let Some(&(sent_at, seq)) = self.by_age.first() else {
                return;
            };
            if now.since(sent_at) < retention {
                return;
            }
            if let Some(m) = self.remove(seq) {
                self.expired.push(Expired {
                    body: m.body,
                    origin: m.origin,
                    sent_at,
                    from: m.role,
                });
            }
        }
    }

    /// FIFO groups with a message in flight.
    fn busy_groups(&self, now: Timestamp) -> HashSet<String> {
        self.messages
            .values()
            .filter(|m| m.in_flight(now))
            .filter_map(|m| m.origin.group_id.clone())
            .collect()
    }

    /// Moves up to `want` visible messages of `role` into flight; a message past the redrive
    /// policy's count moves to the dead-letter queue instead.
    fn take(
        &mut self,
        role: QueueRole,
        now: Timestamp,
        options: &QueueOptions,
        want: usize,
        short: bool,
        out: &mut Vec<Message>,
    ) {
        let mut busy = if options.fifo {
            self.busy_groups(now)
        } else {
            HashSet::new()
        };
        let ready: Vec<(Timestamp, u64)> =
            self.lane(role).range(..=(now, u64::MAX)).copied().collect();
        let hidden_until = now.plus(options.attributes.visibility_timeout);
        let mut taken = 0;
        for key in ready {
            if taken >= want {
                break;
            }
            if short && self.fault(self.faults.short_poll_miss_rate) {
                continue;
            }
            let Some(m) = self.messages.get(&key.1) else {
                continue;
            };
            if let Some(g) = &m.origin.group_id
                && busy.contains(g)
            {
                continue;
            }
            if let Some(max) = options.attributes.max_receive_count
                && m.receive_count >= max
            {
                if let Some(m) = self.remove(key.1) {
                    self.redriven.push(Redriven {
                        body: m.body,
                        origin: m.origin,
                        receive_count: m.receive_count,
                        from: m.role,
                    });
                }
                continue;
            }
            let receipt = self.next_receipt;
            self.next_receipt += 1;
            let lane = self.lane(role);
            lane.remove(&key);
            lane.insert((hidden_until, key.1));
            let Some(m) = self.messages.get_mut(&key.1) else {
                continue;
            };
            m.visible_at = hidden_until;
            m.receipt = Some(receipt);
            m.receive_count += 1;
            m.received_at = Some(now);
            let count = m.receive_count;
            if let Some(g) = &m.origin.group_id {
                busy.insert(g.clone());
            }
            taken += 1;
            self.peak_receive_count = self.peak_receive_count.max(count);
            let Some(m) = self.messages.get(&key.1) else {
                continue;
            };
            out.push(Message {
                receipt: receipt_handle(&options.id_prefix, key.1, receipt),
                queue: m.role,
                body: m.body.clone(),
                origin: m.origin.clone(),
                receive_count: m.receive_count,
                received_at: now,
                sent_at: m.sent_at,
            });
        }
    }

    /// The earliest time a message of either queue becomes visible.
    fn next_visible(&self) -> Option<Timestamp> {
        let m = self.main.first().map(|k| k.0);
        let r = self.retry.first().map(|k| k.0);
        match (m, r) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The stored message `handle` is the current receipt of.
    fn resolve(&self, handle: &str, prefix: &str) -> Option<u64> {
        let (seq, receipt) = parse_receipt(handle, prefix)?;
        let m = self.messages.get(&seq)?;
        (m.receipt == Some(receipt)).then_some(seq)
    }

    /// Remembers `key` for the window; `Err` with the first message's id if it was seen within.
    fn dedup_fresh(&mut self, key: String, id: &str, now: Timestamp) -> Result<(), String> {
        if let Some((seen, until)) = self.dedup.get(&key)
            && *until > now
        {
            return Err(seen.clone());
        }
        if self.dedup.len() >= 4096 {
            self.dedup.retain(|_, (_, until)| *until > now);
        }
        self.dedup
            .insert(key, (id.to_string(), now.plus(DEDUP_WINDOW)));
        Ok(())
    }

    /// Whether to refuse the next entry of `op` (a test asked for it, or a fault drew it).
    fn refuse_one(&mut self, op: BatchOp) -> bool {
        match self.refuse.get_mut(&op) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => self.fault(self.faults.refuse_rate),
        }
    }
}

/// A message id as long as SQS's (a UUID's 36 characters: the ids of a batch's jobs fill its
/// done item as SQS's do): `prefix`, a dash, and `n` padded with zeros.
fn message_id(prefix: &str, n: u64) -> String {
    let width = SQS_MESSAGE_ID_LEN.saturating_sub(prefix.len() + 1).max(8);
    format!("{prefix}-{n:0width$}")
}

/// The length of an SQS message id (a UUID).
const SQS_MESSAGE_ID_LEN: usize = 36;

fn receipt_handle(prefix: &str, seq: u64, receipt: u64) -> String {
    format!("{prefix}-rh-{seq}-{receipt}")
}

fn parse_receipt(handle: &str, prefix: &str) -> Option<(u64, u64)> {
    let rest = handle.strip_prefix(prefix)?.strip_prefix("-rh-")?;
    let (seq, receipt) = rest.split_once('-')?;
    Some((seq.parse().ok()?, receipt.parse().ok()?))
}

struct Inner {
    clock: Arc<dyn Clock>,
    options: QueueOptions,
    state: Mutex<State>,
    /// Woken whenever a message may have become visible sooner than a waiter expects.
    changed: Notify,
}

/// A main queue, an optional retry queue and a dead-letter queue in memory, with SQS semantics.
/// Cloning shares the queues, so the orchestrator ([`JobSource`]), the worker ([`JobSink`]) and
/// the test or the local run (sending, inspecting) hold one.
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryQueue")
            .field("options", &self.inner.options)
            .field("depths", &self.depths())
            .finish()
    }
}

impl MemoryQueue {
    /// A main queue and a dead-letter queue with SQS's default attributes, no retry queue.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_options(clock, QueueOptions::default())
    }

    /// Queues as `options` say.
    pub fn with_options(clock: Arc<dyn Clock>, options: QueueOptions) -> Self {
        let state = State {
            rng: Some(StdRng::seed_from_u64(options.faults.seed)),
            faults: options.faults.clone(),
            ..State::default()
        };
        MemoryQueue {
            inner: Arc::new(Inner {
                clock,
                options,
                state: Mutex::new(state),
                changed: Notify::new(),
            }),
        }
    }

    /// The options the queues were made with.
    pub fn options(&self) -> &QueueOptions {
        &self.inner.options
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        let mut st = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        st.expire(
            self.inner.clock.now(),
            self.inner.options.attributes.retention,
        );
        st
    }

    /// Makes the next `entries` entries of `op` batch calls be refused (as SQS may refuse single
    /// entries of a batch while the call succeeds).
    pub fn refuse_next(&self, op: BatchOp, entries: usize) {
        *self.lock().refuse.entry(op).or_default() += entries;
    }

    /// Enqueues a job on the main queue, visible at once, attempt 0, `enqueued_at` now.
    /// Returns its message id.
    pub fn send(&self, body: impl Into<String>) -> String {
        let now = self.inner.clock.now();
        let body = body.into();
        self.lock().requests.send += billed(body.len());
        self.enqueue_fresh(body, now)
    }

    /// Enqueues a fresh job sent at `now` on the main queue (the producer's send, unbilled).
    fn enqueue_fresh(&self, body: String, now: Timestamp) -> String {
        self.enqueue(
            QueueRole::Main,
            body,
            Origin {
                enqueued_at: Some(now),
                ..Origin::default()
            },
            Duration::ZERO,
            None,
        )
    }

    /// Enqueues jobs on the main queue as [`MemoryQueue::send`] enqueues each, but billed as
    /// SendMessageBatch calls bill: one request per call of up to 10 bodies (at most 1 MiB in
    /// all, [`sqs::send_batches`]), plus one for every 64 KB of a call's payload past the first.
    /// Returns their message ids, in order.
    pub fn send_batch<S: Into<String>>(&self, bodies: impl IntoIterator<Item = S>) -> Vec<String> {
        let now = self.inner.clock.now();
        let bodies: Vec<String> = bodies.into_iter().map(Into::into).collect();
        let sizes: Vec<usize> = bodies.iter().map(String::len).collect();
        self.lock().requests.send += billed_send_batches(&sizes);
        bodies
            .into_iter()
            .map(|body| self.enqueue_fresh(body, now))
            .collect()
    }

    /// Enqueues a job on the main queue with a delay and FIFO ids. Returns its message id (on a
    /// FIFO queue, a deduplication id seen in the last 5 minutes returns the first message's id
    /// and enqueues nothing). A delay past 900 s is refused, as SQS refuses it.
    pub fn send_with(
        &self,
        body: impl Into<String>,
        options: SendOptions,
    ) -> Result<String, QueueError> {
        check_delay("send", options.delay)?;
        let now = self.inner.clock.now();
        let origin = Origin {
            message_id: String::new(),
            attempt: 0,
            throttled: 0,
            enqueued_at: Some(now),
            group_id: options.group_id,
            dedup_id: options.dedup_id,
            function: None,
        };
        let dedup_key = origin.dedup_id.clone();
        let body = body.into();
        self.lock().requests.send += billed(body.len());
        Ok(self.enqueue(QueueRole::Main, body, origin, options.delay, dedup_key))
    }

    /// Stores a message; assigns a message id when `origin` has none.
    fn enqueue(
        &self,
        role: QueueRole,
        body: String,
        mut origin: Origin,
        delay: Duration,
        dedup_key: Option<String>,
    ) -> String {
        let now = self.inner.clock.now();
        let prefix = &self.inner.options.id_prefix;
        let id = {
            let mut st = self.lock();
            if origin.message_id.is_empty() {
                origin.message_id = message_id(prefix, st.next_id);
                st.next_id += 1;
            }
            if origin.enqueued_at.is_none() {
                origin.enqueued_at = Some(now);
            }
            if self.inner.options.fifo
                && let Some(key) = dedup_key
                && let Err(seen) = st.dedup_fresh(key, &origin.message_id, now)
            {
                return seen;
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            let visible_at = now.plus(delay);
            st.lane(role).insert((visible_at, seq));
            st.by_age.insert((now, seq));
            let id = origin.message_id.clone();
            st.messages.insert(
                seq,
                Stored {
                    role,
                    body,
                    origin,
                    visible_at,
                    sent_at: now,
                    receipt: None,
                    receive_count: 0,
                    received_at: None,
                },
            );
            id
        };
        self.inner.changed.notify_waiters();
        id
    }

    /// The requests SQS would have billed so far.
    pub fn requests(&self) -> SqsRequests {
        self.lock().requests
    }

    /// How many messages are where, now.
    pub fn depths(&self) -> QueueDepths {
        let now = self.inner.clock.now();
        let st = self.lock();
        let mut d = QueueDepths {
            dead: st.dead.len() + st.redriven.len(),
            expired: st.expired.len(),
            ..QueueDepths::default()
        };
        for m in st.messages.values() {
            let slot = match (m.role, m.visible_at <= now, m.receipt.is_some()) {
                (QueueRole::Main, true, _) => &mut d.main_visible,
                (QueueRole::Main, false, true) => &mut d.main_in_flight,
                (QueueRole::Main, false, false) => &mut d.main_delayed,
                (QueueRole::Retry, true, _) => &mut d.retry_visible,
                (QueueRole::Retry, false, true) => &mut d.retry_in_flight,
                (QueueRole::Retry, false, false) => &mut d.retry_delayed,
            };
            *slot += 1;
        }
        d
    }

    /// What was sent to the dead-letter queue with a reason, oldest first. What the redrive
    /// policy moved there is in [`MemoryQueue::redriven`]; [`QueueDepths::dead`] counts both.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.lock().dead.clone()
    }

    /// What the redrive policy moved to the dead-letter queue (no reason), oldest first.
    pub fn redriven(&self) -> Vec<Redriven> {
        self.lock().redriven.clone()
    }

    /// The highest receive count any message reached so far: how near the redrive policy
    /// normal operation came.
    pub fn peak_receive_count(&self) -> u32 {
        self.lock().peak_receive_count
    }

    /// What retention deleted, oldest first.
    pub fn expired(&self) -> Vec<Expired> {
        self.lock().expired.clone()
    }

    /// Deleted messages that came back so far ([`QueueFaults::redeliver_rate`]).
    pub fn redelivered(&self) -> u64 {
        self.lock().redelivered
    }

    /// Every message on the main and retry queues (visible, in flight or delayed), in send
    /// order: its queue, body and origin.
    pub fn messages(&self) -> Vec<(QueueRole, String, Origin)> {
        let st = self.lock();
        let mut all: Vec<(&u64, &Stored)> = st.messages.iter().collect();
        all.sort_by_key(|(seq, _)| **seq);
        all.into_iter()
            .map(|(_, m)| (m.role, m.body.clone(), m.origin.clone()))
            .collect()
    }

    /// True when the main and retry queues hold nothing (visible, in flight or delayed); dead
    /// letters do not count.
    pub fn is_drained(&self) -> bool {
        self.lock().messages.is_empty()
    }

    /// Applies `f` to the message each entry's receipt designates; reports the entries it
    /// refused, or that `f` refused, with their receipts.
    fn per_receipt(
        &self,
        op: BatchOp,
        messages: &[Message],
        mut f: impl FnMut(&mut State, u64) -> Result<(), MemoryError>,
    ) -> Result<(), QueueError> {
        let prefix = &self.inner.options.id_prefix;
        let mut refusals = Refusals::new();
        {
            let mut st = self.lock();
            for m in messages {
                let result = if st.refuse_one(op) {
                    Err(MemoryError::Injected)
                } else {
                    match st.resolve(&m.receipt, prefix) {
                        Some(seq) => f(&mut st, seq),
                        None => Err(MemoryError::StaleReceipt(m.receipt.clone())),
                    }
                };
                if let Err(e) = result {
                    refusals.refuse(m.receipt.clone(), e);
                }
            }
        }
        self.inner.changed.notify_waiters();
        refusals.finish(match op {
            BatchOp::Delete => "delete",
            BatchOp::Release => "release",
        })
    }
}

/// Refuses a message larger than the queue's `MaximumMessageSize`, as SQS does.
fn check_size(op: &'static str, body: &str, origin: &Origin, max: usize) -> Result<(), QueueError> {
    let size = sqs::job_message_bytes(body, origin);
    if size > max {
        return Err(QueueError::Backend {
            op,
            source: Box::new(MemoryError::MessageTooLong { size, max }),
        });
    }
    Ok(())
}

/// Refuses a delay past SQS's 900 s.
fn check_delay(op: &'static str, delay: Duration) -> Result<(), QueueError> {
    if delay > sqs::MAX_DELAY {
        return Err(QueueError::Backend {
            op,
            source: Box::new(MemoryError::DelayTooLong(delay)),
        });
    }
    Ok(())
}

impl MemoryQueue {
    /// Receives from `lane` (one `ReceiveMessage`), long-polling up to `wait` when it has no
    /// message; `None` (a retry queue that does not exist) answers empty after `wait`, unbilled.
    async fn receive_lane(
        &self,
        lane: Option<QueueRole>,
        max: u8,
        wait: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        if !(1..=MAX_RECEIVE).contains(&max) {
            return Err(QueueError::Backend {
                op: "receive",
                source: Box::new(MemoryError::MaxMessages(max)),
            });
        }
        let clock = &self.inner.clock;
        let options = &self.inner.options;
        let deadline = clock.now().plus(wait);
        {
            let mut st = self.lock();
            st.requests.receive += u64::from(lane.is_some());
            st.requests.receive_retry += u64::from(lane == Some(QueueRole::Retry));
        }
        loop {
            // Register interest before looking, so a send between the look and the wait
            // still wakes this receive.
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = clock.now();
            let mut out = Vec::new();
            let next = {
                let mut st = self.lock();
                if let Some(role) = lane {
                    // SQS takes whole seconds of wait, and the SQS adapter rounds to the
                    // nearest: a wait under half a second is a short poll.
                    let short = wait < SHORT_POLL_BELOW;
                    st.take(role, now, options, usize::from(max), short, &mut out);
                }
                let oldest = st
                    .by_age
                    .first()
                    .map(|k| k.0.plus(options.attributes.retention));
                match (st.next_visible(), oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            if !out.is_empty() || now >= deadline {
                let bytes: usize = out.iter().map(|m| m.body.len()).sum();
                self.lock().requests.receive += billed(bytes) - 1;
                return Ok(out);
            }
            // Wake at the next visibility change (or expiry), but never spin on a message that
            // is visible yet not receivable (its FIFO group is busy).
            let wake = next
                .filter(|t| *t > now)
                .map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                () = &mut changed => {}
                () = clock.sleep_until(wake) => {}
            }
        }
    }

    /// The queue a message of `role` lives on: the main queue when there is no retry queue.
    fn lane_of(&self, role: QueueRole) -> QueueRole {
        if self.inner.options.retry_queue {
            role
        } else {
            QueueRole::Main
        }
    }
}

#[async_trait]
impl JobSource for MemoryQueue {
    /// As the SQS adapter receives: a short poll of the retry queue (what is visible now),
    /// then, for what it left of `max`, a poll of the main queue, long (`wait`) only when the
    /// retry queue gave nothing; a retry queue that fills `max` leaves the main queue unpolled.
    /// A message that turns visible on the retry queue during the main queue's long poll waits
    /// for the next receive, as on SQS.
    async fn receive(&self, max: u8, wait: Duration) -> Result<Vec<Message>, QueueError> {
        if !self.inner.options.retry_queue {
            return self.receive_lane(Some(QueueRole::Main), max, wait).await;
        }
        let mut out = self
            .receive_lane(Some(QueueRole::Retry), max, Duration::ZERO)
            .await?;
        let left = usize::from(max).saturating_sub(out.len());
        if let Ok(left @ 1..) = u8::try_from(left) {
            let wait = if out.is_empty() { wait } else { Duration::ZERO };
            out.extend(self.receive_lane(Some(QueueRole::Main), left, wait).await?);
        }
        Ok(out)
    }

    async fn receive_from(
        &self,
        role: QueueRole,
        max: u8,
        wait: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        let lane = (role == QueueRole::Main || self.inner.options.retry_queue).then_some(role);
        self.receive_lane(lane, max, wait).await
    }

    /// As one SendMessageBatch of the SQS adapter's takes them: messages that total more than
    /// 1 MiB (bodies and the attributes the adapter writes, [`sqs::job_message_bytes`]) are
    /// refused whole, as SQS refuses such a call (`BatchRequestTooLong`), and none is sent; a
    /// caller groups them with [`sqs::send_batches`].
    async fn resend(&self, messages: &[Message], delay: Duration) -> Result<(), QueueError> {
        check_delay("resend", delay)?;
        let sizes: Vec<usize> = messages
            .iter()
            .map(|m| sqs::job_message_bytes(&m.body, &m.origin))
            .collect();
        let total: usize = sizes.iter().sum();
        if total > sqs::MAX_BATCH_PAYLOAD_BYTES {
            // Billed: SQS answers the call, with an error.
            self.lock().requests.send += 1;
            return Err(QueueError::Backend {
                op: "resend",
                source: Box::new(MemoryError::BatchRequestTooLong(total)),
            });
        }
        self.lock().requests.send += billed_send_batches(&sizes);
        for m in messages {
            // A deduplication id unique to this send, as for a re-queue.
            let dedup_key = m.origin.dedup_id.as_ref().map(|d| {
                let n = self.lock().next_seq;
                format!("{d}/{}/{n}", m.origin.attempt)
            });
            // A send: SQS gives the copy a new message id (the key is in the body).
            let origin = Origin {
                message_id: String::new(),
                ..m.origin.clone()
            };
            self.enqueue(
                self.lane_of(m.queue),
                m.body.clone(),
                origin,
                delay,
                dedup_key,
            );
        }
        Ok(())
    }

    async fn delete(&self, messages: &[Message]) -> Result<(), QueueError> {
        let now = self.inner.clock.now();
        let visibility = self.inner.options.attributes.visibility_timeout;
        self.lock().requests.delete += batches(messages.len());
        self.per_receipt(BatchOp::Delete, messages, |st, seq| {
            st.delete(seq, now, visibility);
            Ok(())
        })
    }

    async fn release(&self, messages: &[Message], after: Duration) -> Result<(), QueueError> {
        let now = self.inner.clock.now();
        let at = now.plus(after);
        self.lock().requests.change_visibility += batches(messages.len());
        self.per_receipt(BatchOp::Release, messages, |st, seq| {
            let Some(m) = st.messages.get_mut(&seq) else {
                return Ok(());
            };
            let received = m.received_at.unwrap_or(now);
            if at.since(received) > sqs::MAX_VISIBILITY {
                return Err(MemoryError::VisibilityTooLong {
                    requested: after,
                    received_ago: now.since(received),
                });
            }
            let (role, old) = (m.role, m.visible_at);
            m.visible_at = at;
            let lane = st.lane(role);
            lane.remove(&(old, seq));
            lane.insert((at, seq));
            Ok(())
        })
    }
}

#[async_trait]
impl JobSink for MemoryQueue {
    async fn dead_letter(&self, letter: DeadLetter) -> Result<(), QueueError> {
        let max = self.inner.options.attributes.max_message_bytes;
        check_size("dead_letter", &letter.body, &letter.origin, max)?;
        let mut st = self.lock();
        st.requests.send += billed(letter.body.len());
        st.dead.push(letter);
        Ok(())
    }

    async fn requeue(
        &self,
        body: &str,
        origin: &Origin,
        delay: Duration,
    ) -> Result<(), QueueError> {
        check_delay("requeue", delay)?;
        check_size(
            "requeue",
            body,
            origin,
            self.inner.options.attributes.max_message_bytes,
        )?;
        self.lock().requests.send += billed(body.len());
        let role = if self.inner.options.retry_queue {
            QueueRole::Retry
        } else {
            QueueRole::Main
        };
        // A deduplication id unique to this send: two re-queues of one attempt (an untried
        // job given back twice within 5 minutes) are two sends, not a duplicate.
        let dedup_key = origin.dedup_id.as_ref().map(|d| {
            let n = self.lock().next_seq;
            format!("{d}/{}/{n}", origin.attempt)
        });
        // A send: SQS gives the copy a new message id (the key is in the body).
        let origin = Origin {
            message_id: String::new(),
            ..origin.clone()
        };
        self.enqueue(role, body.to_string(), origin, delay, dedup_key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qo_core::time::TokioClock;

    fn clock() -> Arc<dyn Clock> {
        Arc::new(TokioClock::starting_at(Timestamp::from_secs(1_000)))
    }

    fn with_retry(clock: Arc<dyn Clock>) -> MemoryQueue {
        MemoryQueue::with_options(
            clock,
            QueueOptions {
                retry_queue: true,
                ..QueueOptions::default()
            },
        )
    }

    const NOW: Duration = Duration::ZERO;

    /// A long poll of `q` for up to 20 s on `c`: what it received and how long it waited.
    async fn long_poll(q: &MemoryQueue, c: &Arc<dyn Clock>) -> (Vec<Message>, Duration) {
        let start = c.now();
        let got = q
            .receive(10, Duration::from_secs(20))
            .await
            .expect("receive");
        (got, c.now().since(start))
    }

    #[tokio::test(start_paused = true)]
    async fn send_and_receive_carry_ids_and_enqueue_time() {
        let q = MemoryQueue::new(clock());
        let a = q.send("a");
        let b = q.send("b");
        assert_ne!(a, b);
        // As long as SQS's UUIDs: a batch's done item holds its jobs' ids.
        assert_eq!((a.len(), b.len()), (SQS_MESSAGE_ID_LEN, SQS_MESSAGE_ID_LEN));
        let got = q.receive(10, NOW).await.expect("receive");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].body, "a");
        assert_eq!(got[0].origin.message_id, a);
        assert_eq!(got[0].origin.attempt, 0);
        assert_eq!(got[0].origin.enqueued_at, Some(Timestamp::from_secs(1_000)));
        assert_eq!(got[0].queue, QueueRole::Main);
        assert_eq!(got[1].origin.message_id, b);
        assert_ne!(got[0].receipt, got[1].receipt);
        // Both in flight now: nothing more to receive.
        assert!(q.receive(10, NOW).await.expect("receive").is_empty());
        assert_eq!(q.depths().main_in_flight, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn receive_honours_max_and_refuses_bad_max() {
        let q = MemoryQueue::new(clock());
        for i in 0..15 {
            q.send(format!("{i}"));
        }
        let got = q.receive(10, NOW).await.expect("receive");
        assert_eq!(got.len(), 10);
        let bodies: Vec<_> = got.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies[..3], ["0", "1", "2"]);
        assert_eq!(q.receive(10, NOW).await.expect("receive").len(), 5);
        for bad in [0, 11] {
            let e = q.receive(bad, NOW).await.expect_err("bad max");
            assert!(e.to_string().contains("1 to 10"), "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn visibility_expiry_returns_a_message() {
        let c = clock();
        let q = MemoryQueue::new(c.clone());
        q.send("job");
        let first = q.receive(1, NOW).await.expect("receive");
        assert_eq!(first.len(), 1);
        c.sleep(Duration::from_secs(29)).await;
        assert!(q.receive(1, NOW).await.expect("receive").is_empty());
        c.sleep(Duration::from_secs(1)).await;
        let again = q.receive(1, NOW).await.expect("receive");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].origin.message_id, first[0].origin.message_id);
        assert_ne!(again[0].receipt, first[0].receipt);
    }

    #[tokio::test(start_paused = true)]
    async fn release_zero_makes_it_receivable_again() {
        let q = MemoryQueue::new(clock());
        q.send("job");
        let got = q.receive(1, NOW).await.expect("receive");
        assert!(q.receive(1, NOW).await.expect("receive").is_empty());
        q.release(&got, Duration::ZERO).await.expect("release");
        assert_eq!(q.depths().main_visible, 1);
        assert_eq!(q.receive(1, NOW).await.expect("receive").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn release_later_keeps_it_in_flight_until_then() {
        let c = clock();
        let q = MemoryQueue::new(c.clone());
        q.send("job");
        let got = q.receive(1, NOW).await.expect("receive");
        q.release(&got, Duration::from_secs(100))
            .await
            .expect("release");
        c.sleep(Duration::from_secs(99)).await;
        assert_eq!(q.depths().main_in_flight, 1);
        assert!(q.receive(1, NOW).await.expect("receive").is_empty());
        c.sleep(Duration::from_secs(1)).await;
        assert_eq!(q.receive(1, NOW).await.expect("receive").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn delete_with_stale_receipt_fails_and_batch_reports_partial() {
        let c = clock();
        let q = MemoryQueue::new(c.clone());
        q.send("job");
        let old = q.receive(1, NOW).await.expect("receive");
        c.sleep(DEFAULT_VISIBILITY_TIMEOUT).await;
        let new = q.receive(1, NOW).await.expect("receive");
        assert_eq!(new[0].origin.message_id, old[0].origin.message_id);
        q.send("other");

        let e = q.delete(&old).await.expect_err("stale receipt");
        assert!(
            matches!(&e, QueueError::Partial { op: "delete", failed: 1, detail, refused, .. } if detail.contains(&old[0].receipt) && *refused == [old[0].receipt.clone()]),
            "{e}"
        );
        assert_eq!(q.depths().pending(), 2, "the stale delete removed nothing");

        // A batch with one stale and one current entry deletes the current one.
        let other = q.receive(1, NOW).await.expect("receive");
        assert_eq!(other[0].body, "other");
        let batch = [old[0].clone(), other[0].clone()];
        let e = q.delete(&batch).await.expect_err("one stale");
        assert!(matches!(e, QueueError::Partial { failed: 1, .. }), "{e}");
        assert_eq!(q.depths().pending(), 1);

        q.delete(&new).await.expect("current receipt deletes");
        assert!(q.is_drained());
        // Deleting twice: the receipt is gone with the message.
        assert!(q.delete(&new).await.is_err());
        // A stale receipt cannot release either.
        assert!(q.release(&old, Duration::ZERO).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn receipt_stays_valid_after_expiry_until_received_again() {
        let c = clock();
        let q = MemoryQueue::new(c.clone());
        q.send("job");
        let got = q.receive(1, NOW).await.expect("receive");
        c.sleep(Duration::from_secs(60)).await;
        assert_eq!(q.depths().main_visible, 1);
        q.delete(&got)
            .await
            .expect("as SQS: delete after expiry works");
        assert!(q.is_drained());
    }

    /// The template's queues take 256 KiB a message (no `MaximumMessageSize`): a larger
    /// re-queue or dead letter is refused, as SQS refuses it.
    #[tokio::test(start_paused = true)]
    async fn a_message_past_the_queue_s_maximum_size_is_refused() {
        let q = MemoryQueue::with_options(clock(), QueueOptions::template());
        let origin = Origin::default();
        let body = "x".repeat(sqs::DEFAULT_MAX_MESSAGE_BYTES);
        let e = q.requeue(&body, &origin, Duration::ZERO).await;
        assert!(e.is_err_and(|e| e.to_string().contains("MaximumMessageSize")));
        let letter = DeadLetter {
            body,
            reason: qo_core::Reason::InvalidJob(qo_core::job::JobError::TooLarge(0)),
            origin: origin.clone(),
        };
        assert!(q.dead_letter(letter).await.is_err());
        let fits = "x".repeat(200 * 1024);
        q.requeue(&fits, &origin, Duration::ZERO)
            .await
            .expect("fits");
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_delay_is_honoured_and_attempt_kept() {
        let c = clock();
        let q = MemoryQueue::new(c.clone());
        let id = q.send("job");
        let got = q.receive(1, NOW).await.expect("receive");
        let next = Origin {
            attempt: 1,
            function: Some("qo-worker-a".into()),
            ..got[0].origin.clone()
        };
        q.requeue("job", &next, Duration::from_secs(5))
            .await
            .expect("requeue");
        q.delete(&got).await.expect("delete");
        assert_eq!(q.depths().main_delayed, 1);
        assert!(q.receive(1, NOW).await.expect("receive").is_empty());
        c.sleep(Duration::from_millis(4_999)).await;
        assert!(q.receive(1, NOW).await.expect("receive").is_empty());
        c.sleep(Duration::from_millis(1)).await;
        let again = q.receive(1, NOW).await.expect("receive");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].origin.attempt, 1);
        assert_eq!(
            again[0].origin.function.as_deref(),
            Some("qo-worker-a"),
            "the function that failed it is carried, as qo-function is"
        );
        assert_ne!(
            again[0].origin.message_id, id,
            "a re-queue is a send: SQS gives it a new message id (the key goes in the body)"
        );
        assert_eq!(
            again[0].origin.enqueued_at,
            Some(Timestamp::from_secs(1_000))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_keeps_the_429_count() {
        let q = with_retry(clock());
        q.send("job");
        let got = q.receive(1, NOW).await.expect("receive");
        assert_eq!(got[0].origin.throttled, 0);
        let next = Origin {
            throttled: got[0].origin.throttled + 1,
            ..got[0].origin.clone()
        };
        q.requeue("job", &next, Duration::ZERO)
            .await
            .expect("requeue");
        q.delete(&got).await.expect("delete");
        let again = q.receive(1, NOW).await.expect("receive");
        assert_eq!((again[0].origin.attempt, again[0].origin.throttled), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn send_delay_is_honoured() {
        let c = clock();
        let q = MemoryQueue::new(c.clone());
        q.send_with(
            "later",
            SendOptions {
                delay: Duration::from_secs(10),
                ..SendOptions::default()
            },
        )
        .expect("send");
        assert_eq!(q.depths().main_delayed, 1);
        assert!(q.receive(1, NOW).await.expect("receive").is_empty());
        c.sleep(Duration::from_secs(10)).await;
        assert_eq!(q.receive(1, NOW).await.expect("receive").len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_counted_as_sqs_bills_them() {
        let q = with_retry(clock());
        for i in 0..25 {
            q.send(format!("job-{i}"));
        }
        // A 100 KB body is two requests' worth of payload.
        q.send("x".repeat(100 * 1024));
        assert_eq!(q.requests().send, 27);
        // One receive polls the retry queue, then the job queue.
        let got = q.receive(10, NOW).await.expect("receive");
        assert_eq!(q.requests().receive, 2);
        // 10 deletes in one batch, 3 releases in another.
        q.delete(&got[..7]).await.expect("delete");
        q.release(&got[7..], Duration::ZERO).await.expect("release");
        let more = q.receive(10, NOW).await.expect("receive");
        q.delete(&more).await.expect("delete");
        let r = q.requests();
        assert_eq!((r.receive, r.delete, r.change_visibility), (4, 2, 1));
        assert_eq!(r.total(), 27 + 4 + 2 + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_send_is_billed_as_one_send_message_batch() {
        let q = MemoryQueue::new(clock());
        // 25 small bodies: three calls (10, 10, 5), not 25 requests.
        let ids = q.send_batch((0..25).map(|i| format!("job-{i}")));
        assert_eq!(ids.len(), 25);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 25, "ids unique");
        assert_eq!(q.requests().send, 3);
        assert_eq!(q.depths().main_visible, 25);
        // Ten 10 KB bodies: one call of 100 KB of payload, billed as two 64 KB requests.
        q.send_batch((0..10).map(|_| "x".repeat(10 * 1024)));
        assert_eq!(q.requests().send, 3 + 2);
        // Three 400 KiB bodies: over 1 MiB together, so two calls (800 KiB = 13 x 64 KB, and
        // 400 KiB = 7 x 64 KB).
        q.send_batch((0..3).map(|_| "y".repeat(400 * 1024)));
        assert_eq!(q.requests().send, 3 + 2 + 13 + 7);
        // None sent, none billed.
        assert!(q.send_batch(Vec::<String>::new()).is_empty());
        assert_eq!(q.requests().send, 3 + 2 + 13 + 7);
        // Each is a job like one `send` enqueues: attempt 0, enqueued now, on the main queue.
        let got = q.receive(10, NOW).await.expect("receive");
        assert!(got.iter().all(|m| m.origin.attempt == 0
            && m.origin.enqueued_at == Some(Timestamp::from_secs(1_000))
            && m.queue == QueueRole::Main));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_queue_is_polled_first() {
        let q = with_retry(clock());
        q.send("main-1");
        q.send("main-2");
        let retried = Origin {
            message_id: "earlier".into(),
            attempt: 2,
            ..Origin::default()
        };
        q.requeue("retry-1", &retried, Duration::ZERO)
            .await
            .expect("requeue");
        let d = q.depths();
        assert_eq!((d.main_visible, d.retry_visible), (2, 1));
        let got = q.receive(2, NOW).await.expect("receive");
        assert_eq!(got[0].body, "retry-1");
        assert_eq!(got[0].queue, QueueRole::Retry);
        assert_eq!(got[0].origin.attempt, 2);
        assert_ne!(
            got[0].origin.message_id, "earlier",
            "a send gets a new message id"
        );
        assert_eq!(got[1].body, "main-1");
        assert_eq!(got[1].queue, QueueRole::Main);
        assert_eq!(q.depths().retry_in_flight, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_retry_queue_is_short_polled_and_the_main_queue_long_polled_as_on_sqs() {
        let c = clock();
        let q = with_retry(c.clone());
        let retried = Origin {
            message_id: "earlier".into(),
            attempt: 1,
            ..Origin::default()
        };
        // Visible on the retry queue a second into the main queue's long poll: not this
        // receive's (it asked the retry queue once, at its start), the next one's.
        q.requeue("retry-1", &retried, Duration::from_secs(1))
            .await
            .expect("requeue");
        let before = q.requests();
        let (got, waited) = long_poll(&q, &c).await;
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(waited, Duration::from_secs(20));
        assert_eq!(
            q.requests().receive - before.receive,
            2,
            "one request a queue"
        );
        let (got, _) = long_poll(&q, &c).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].queue, QueueRole::Retry);
        // A retry queue that fills the receive leaves the main queue unasked: one request.
        q.send("main-1");
        for i in 0..10 {
            q.requeue(&format!("r{i}"), &retried, Duration::ZERO)
                .await
                .expect("requeue");
        }
        let before = q.requests();
        let got = q.receive(10, NOW).await.expect("receive");
        assert!(got.iter().all(|m| m.queue == QueueRole::Retry));
        assert_eq!(
            (
                q.requests().receive - before.receive,
                q.requests().receive_retry - before.receive_retry
            ),
            (1, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_without_retry_queue_goes_to_main() {
        let q = MemoryQueue::new(clock());
        let o = Origin {
            attempt: 1,
            ..Origin::default()
        };
        q.requeue("again", &o, Duration::ZERO)
            .await
            .expect("requeue");
        let got = q.receive(1, NOW).await.expect("receive");
        assert_eq!(got[0].queue, QueueRole::Main);
        assert!(!got[0].origin.message_id.is_empty(), "an id is assigned");
    }

    #[tokio::test(start_paused = true)]
    async fn long_poll_wakes_when_a_message_is_sent() {
        let c = clock();
        let q = MemoryQueue::new(c.clone());
        let sender = q.clone();
        let c2 = c.clone();
        tokio::spawn(async move {
            c2.sleep(Duration::from_secs(3)).await;
            sender.send("late");
        });
        let (got, waited) = long_poll(&q, &c).await;
        assert_eq!(got.len(), 1);
        assert_eq!(waited, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn long_poll_wakes_when_a_delayed_message_becomes_visible() {
        let c = clock();
        let q = MemoryQueue::new(c.clone());
        q.send_with(
            "delayed",
            SendOptions {
                delay: Duration::from_secs(7),
                ..SendOptions::default()
            },
        )
        .expect("send");
        let (got, waited) = long_poll(&q, &c).await;
        assert_eq!(got.len(), 1);
        assert_eq!(waited, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn long_poll_wakes_at_a_release_time_set_while_it_waits() {
        let c = clock();
        let q = MemoryQueue::new(c.clone());
        q.send("job");
        let held = q.receive(1, NOW).await.expect("receive");
        let releaser = q.clone();
        tokio::spawn(async move {
            releaser
                .release(&held, Duration::from_secs(4))
                .await
                .expect("release");
        });
        let (got, waited) = long_poll(&q, &c).await;
        assert_eq!(got.len(), 1);
        assert_eq!(waited, Duration::from_secs(4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_polling_consumers_miss_no_send() {
        let c: Arc<dyn Clock> = Arc::new(TokioClock::system());
        let q = MemoryQueue::new(c);
        let n = 2_000;
        let mut consumers = Vec::new();
        for _ in 0..4 {
            let q = q.clone();
            consumers.push(tokio::spawn(async move {
                let mut got = 0;
                loop {
                    let batch = q
                        .receive(10, Duration::from_millis(300))
                        .await
                        .expect("receive");
                    if batch.is_empty() {
                        return got;
                    }
                    got += batch.len();
                    q.delete(&batch).await.expect("delete");
                }
            }));
        }
        let producer = q.clone();
        tokio::spawn(async move {
            for i in 0..n {
                producer.send(format!("{i}"));
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
        .await
        .expect("producer");
        let mut total = 0;
        for t in consumers {
            total += t.await.expect("consumer");
        }
        assert_eq!(total, n);
        assert!(q.is_drained());
    }

    #[tokio::test(start_paused = true)]
    async fn long_poll_times_out_empty() {
        let c = clock();
        let q = MemoryQueue::new(c.clone());
        let (got, waited) = long_poll(&q, &c).await;
        assert!(got.is_empty());
        assert_eq!(waited, Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn dead_letters_are_kept_with_reason() {
        let q = MemoryQueue::new(clock());
        let letter = DeadLetter {
            body: "{}".into(),
            reason: qo_core::Reason::InvalidJob(qo_core::JobError::Malformed(
                "missing field `path`".into(),
            )),
            origin: Origin {
                message_id: "m1".into(),
                ..Origin::default()
            },
        };
        q.dead_letter(letter.clone()).await.expect("dead letter");
        assert_eq!(q.dead_letters(), vec![letter]);
        assert_eq!(q.depths().dead, 1);
        assert!(q.is_drained());
    }

    #[tokio::test(start_paused = true)]
    async fn fifo_dedup_drops_a_repeat_within_the_window() {
        let c = clock();
        let q = MemoryQueue::with_options(
            c.clone(),
            QueueOptions {
                fifo: true,
                ..QueueOptions::default()
            },
        );
        let opts = SendOptions {
            group_id: Some("g".into()),
            dedup_id: Some("d".into()),
            ..SendOptions::default()
        };
        let a = q.send_with("x", opts.clone()).expect("send");
        let b = q.send_with("x", opts.clone()).expect("send");
        assert_eq!(a, b);
        assert_eq!(q.depths().main_visible, 1);
        let got = q.receive(10, NOW).await.expect("receive");
        assert_eq!(got[0].origin.group_id.as_deref(), Some("g"));
        assert_eq!(got[0].origin.dedup_id.as_deref(), Some("d"));
        // Two re-queues of one attempt (an untried job given back twice within 5 minutes) are
        // two sends with their own deduplication ids: neither is dropped.
        let next = Origin {
            attempt: 1,
            ..got[0].origin.clone()
        };
        q.delete(&got).await.expect("delete");
        q.requeue("x", &next, NOW).await.expect("requeue");
        let first = q.receive(10, NOW).await.expect("receive");
        assert_eq!(first.len(), 1, "the first re-queue arrives");
        q.delete(&first).await.expect("delete");
        q.requeue("x", &next, NOW).await.expect("requeue");
        let second = q.receive(10, NOW).await.expect("receive");
        assert_eq!(
            second.len(),
            1,
            "the second re-queue of the same attempt is not dropped"
        );
        q.delete(&second).await.expect("delete");
        c.sleep(DEDUP_WINDOW).await;
        q.send_with("x", opts).expect("send");
        assert_eq!(q.depths().main_visible, 1, "window passed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_receivers_get_each_message_once() {
        let c: Arc<dyn Clock> = Arc::new(TokioClock::system());
        let q = MemoryQueue::new(c);
        let n = 5_000;
        for i in 0..n {
            q.send(format!("{i}"));
        }
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let got = q.receive(10, Duration::ZERO).await.expect("receive");
                    if got.is_empty() {
                        return seen;
                    }
                    q.delete(&got).await.expect("delete");
                    seen.extend(got.into_iter().map(|m| m.origin.message_id));
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(q.is_drained());
    }

    fn template(clock: Arc<dyn Clock>) -> MemoryQueue {
        MemoryQueue::with_options(clock, QueueOptions::template())
    }

    #[tokio::test(start_paused = true)]
    async fn receive_count_grows_and_the_redrive_policy_moves_it_without_a_reason() {
        let c = clock();
        let q = template(c.clone());
        let max = QueueAttributes::TEMPLATE
            .max_receive_count
            .expect("a policy");
        q.send("job");
        for n in 1..=max {
            let got = q.receive(1, NOW).await.expect("receive");
            assert_eq!(got.len(), 1, "receive {n}");
            assert_eq!(got[0].receive_count, n, "each receive adds one");
            // A release gives it back at once but does not take the receive back.
            q.release(&got, NOW).await.expect("release");
        }
        assert!(q.receive(1, NOW).await.expect("receive").is_empty());
        let moved = q.redriven();
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].receive_count, max);
        assert!(q.dead_letters().is_empty(), "no reason attached");
        assert_eq!(q.depths().dead, 1);
        assert!(q.is_drained());
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_redrive_policy_the_count_only_grows() {
        let q = MemoryQueue::new(clock());
        q.send("job");
        for n in 1..=20 {
            let got = q.receive(1, NOW).await.expect("receive");
            assert_eq!(got[0].receive_count, n);
            q.release(&got, NOW).await.expect("release");
        }
        assert_eq!(q.depths().dead, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retention_deletes_a_message_visible_or_not_and_a_release_does_not_reset_it() {
        let c = clock();
        let q = template(c.clone());
        let retention = QueueAttributes::TEMPLATE.retention;
        q.send("old");
        c.sleep(Duration::from_secs(3600)).await;
        q.send("younger");
        let got = q.receive(10, NOW).await.expect("receive");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].sent_at, Timestamp::from_secs(1_000));
        q.release(&got, NOW).await.expect("release");
        c.sleep(retention - Duration::from_secs(3601)).await;
        assert_eq!(q.depths().pending(), 2, "not yet");
        // Received again (in flight) when it expires: gone all the same.
        let held = q.receive(10, NOW).await.expect("receive");
        assert_eq!(held.len(), 2);
        c.sleep(Duration::from_secs(1)).await;
        assert_eq!(q.depths().pending(), 1);
        let expired = q.expired();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].body, "old");
        assert_eq!(q.depths().expired, 1);
        assert!(
            q.delete(&held[..1]).await.is_err(),
            "its receipt went with it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_requeue_is_a_new_message_with_its_own_retention() {
        let c = clock();
        let q = MemoryQueue::new(c.clone());
        q.send("job");
        c.sleep(sqs::DEFAULT_RETENTION - Duration::from_secs(10))
            .await;
        let got = q.receive(1, NOW).await.expect("receive");
        q.requeue("job", &got[0].origin, NOW)
            .await
            .expect("requeue");
        q.delete(&got).await.expect("delete");
        c.sleep(Duration::from_secs(60)).await;
        let again = q.receive(1, NOW).await.expect("receive");
        assert_eq!(
            again.len(),
            1,
            "the re-sent copy outlives the original's retention"
        );
        assert!(q.expired().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn visibility_is_capped_at_12_hours_from_the_receive() {
        let c = clock();
        let q = template(c.clone());
        q.send("a");
        q.send("b");
        let got = q.receive(10, NOW).await.expect("receive");
        c.sleep(Duration::from_secs(600)).await;
        // 12 h from now is past 12 h from the receive: refused, for that entry only.
        let e = q
            .release(&got[..1], sqs::MAX_VISIBILITY)
            .await
            .expect_err("past 12 h from the receive");
        assert_eq!(e.refused(), [got[0].receipt.clone()]);
        assert!(e.to_string().contains("12 h"), "{e}");
        let ok = sqs::MAX_VISIBILITY - Duration::from_secs(600);
        q.release(&got[1..], ok)
            .await
            .expect("up to 12 h from the receive");
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_past_900_seconds_is_refused() {
        let q = MemoryQueue::new(clock());
        let too_long = sqs::MAX_DELAY + Duration::from_secs(1);
        let e = q
            .send_with(
                "x",
                SendOptions {
                    delay: too_long,
                    ..SendOptions::default()
                },
            )
            .expect_err("past 900 s");
        assert!(e.to_string().contains("900"), "{e}");
        assert!(q.requeue("x", &Origin::default(), too_long).await.is_err());
        q.requeue("x", &Origin::default(), sqs::MAX_DELAY)
            .await
            .expect("900 s is allowed");
    }

    #[tokio::test(start_paused = true)]
    async fn injected_refusals_fail_single_entries_and_name_them() {
        let q = MemoryQueue::new(clock());
        for i in 0..3 {
            q.send(format!("{i}"));
        }
        let got = q.receive(10, NOW).await.expect("receive");
        q.refuse_next(BatchOp::Delete, 1);
        let e = q.delete(&got).await.expect_err("one refused");
        assert_eq!(e.refused(), [got[0].receipt.clone()]);
        assert_eq!(q.depths().pending(), 1, "the other two were deleted");
        q.delete(&got[..1])
            .await
            .expect("a retry of the refused entry");
        assert!(q.is_drained());
    }

    #[tokio::test(start_paused = true)]
    async fn a_fifo_group_is_blocked_while_one_of_its_messages_is_in_flight() {
        let q = MemoryQueue::with_options(
            clock(),
            QueueOptions {
                fifo: true,
                ..QueueOptions::default()
            },
        );
        for (body, group) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
            q.send_with(
                body,
                SendOptions {
                    group_id: Some(group.into()),
                    dedup_id: Some(body.into()),
                    ..SendOptions::default()
                },
            )
            .expect("send");
        }
        let got = q.receive(10, NOW).await.expect("receive");
        let bodies: Vec<_> = got.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["a1", "b1"], "one per group while in flight");
        assert!(q.receive(10, NOW).await.expect("receive").is_empty());
        q.delete(&got[..1]).await.expect("delete a1");
        let next = q.receive(10, NOW).await.expect("receive");
        assert_eq!(next[0].body, "a2");
    }

    #[tokio::test(start_paused = true)]
    async fn receive_from_takes_one_queue_and_resend_makes_a_fresh_copy_there() {
        let c = clock();
        let q = template(c.clone());
        q.send("main");
        let origin = Origin {
            attempt: 3,
            throttled: 2,
            enqueued_at: Some(Timestamp::from_secs(10)),
            ..Origin::default()
        };
        q.requeue("retry", &origin, NOW).await.expect("requeue");
        c.sleep(Duration::from_secs(60)).await;
        let main = q
            .receive_from(QueueRole::Main, 10, NOW)
            .await
            .expect("receive main");
        assert_eq!(main.len(), 1, "the retry queue is not polled first");
        assert_eq!(main[0].body, "main");
        let retry = q
            .receive_from(QueueRole::Retry, 10, NOW)
            .await
            .expect("receive retry");
        assert_eq!(retry[0].body, "retry");
        assert_eq!(retry[0].receive_count, 1);

        let both = [main[0].clone(), retry[0].clone()];
        q.resend(&both, Duration::from_secs(900))
            .await
            .expect("resend");
        q.delete(&both).await.expect("delete originals");
        let d = q.depths();
        assert_eq!((d.main_delayed, d.retry_delayed), (1, 1), "{d:?}");
        c.sleep(Duration::from_secs(900)).await;
        let copy = q
            .receive_from(QueueRole::Retry, 10, NOW)
            .await
            .expect("receive copy");
        assert_eq!(copy[0].receive_count, 1, "a new message: this receive only");
        assert_eq!(copy[0].sent_at, Timestamp::from_secs(1_060));
        assert_eq!(
            Origin {
                message_id: String::new(),
                ..copy[0].origin.clone()
            },
            Origin {
                message_id: String::new(),
                ..retry[0].origin.clone()
            },
            "attempt, throttles, enqueue kept"
        );
        assert_ne!(
            copy[0].origin.message_id, retry[0].origin.message_id,
            "a new message id"
        );
        assert!(
            q.resend(&copy, Duration::from_secs(901)).await.is_err(),
            "a delay past 900 s is refused"
        );
        // Copies that total more than 1 MiB, bodies and attributes counted, are refused whole
        // (BatchRequestTooLong), as SQS refuses such a SendMessageBatch; each alone is taken.
        let big = "x".repeat(sqs::MAX_BATCH_PAYLOAD_BYTES / 2);
        q.send(big.clone());
        q.send(big);
        let bigs: Vec<Message> = q
            .receive_from(QueueRole::Main, 10, NOW)
            .await
            .expect("receive")
            .into_iter()
            .filter(|m| m.body.len() > 1_000)
            .collect();
        assert_eq!(bigs.len(), 2);
        let before = q.depths();
        let e = q
            .resend(&bigs, Duration::ZERO)
            .await
            .expect_err("over 1 MiB in all");
        assert!(e.to_string().contains("BatchRequestTooLong"), "{e}");
        assert_eq!(q.depths(), before, "none sent");
        for m in &bigs {
            q.resend(std::slice::from_ref(m), Duration::ZERO)
                .await
                .expect("one alone");
        }
        let none = MemoryQueue::new(c.clone());
        none.send("x");
        assert!(
            none.receive_from(QueueRole::Retry, 10, NOW)
                .await
                .expect("receive")
                .is_empty(),
            "no retry queue"
        );
    }
}
