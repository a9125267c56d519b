//! [`MemoryQueue`]: a main queue, an optional retry queue and a dead-letter queue in memory, with
//! SQS semantics.
//!
//! - Every message has a unique id and, per receive, a new receipt handle; an older handle no
//!   longer deletes or releases it (SQS's `ReceiptHandleIsInvalid`). Batch operations apply to
//!   the valid entries and report the others as [`QueueError::Partial`], as
//!   `DeleteMessageBatch` and `ChangeMessageVisibilityBatch` do.
//! - A received message stays invisible for the visibility timeout (30 s unless configured),
//!   then comes back; [`JobSource::release`] changes its visibility (zero: at once).
//! - A message sent with a delay ([`SendOptions::delay`], [`JobSink::requeue`]) is invisible
//!   until then.
//! - [`JobSource::receive`] takes from the retry queue first, then the main queue, and long-polls
//!   up to `wait` when nothing is visible, waking on a send, a release or the next visibility
//!   change. All times come from the injected [`Clock`], so it runs under tokio's paused time.
//! - A re-queued job keeps its `origin.message_id`: it names the job across attempts, so the
//!   idempotency key of a job without an explicit id does not change when it is retried.
//! - FIFO (optional): `group_id` and `dedup_id` are kept in the [`Origin`]; a `dedup_id` seen in
//!   the last 5 minutes is accepted and dropped, as SQS does. A re-queue is a send with a
//!   deduplication id of its own, as the SQS adapter's is (`qo_aws::sqs::unique_dedup_id`): two
//!   untried re-queues of the same attempt both go through. Group ordering is not enforced
//!   beyond send order.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use qo_core::job::Origin;
use qo_core::ports::{DeadLetter, JobSink, JobSource, Message, QueueError, QueueRole};
use qo_core::time::{Clock, Timestamp};
use tokio::sync::Notify;

use crate::error::MemoryError;

/// SQS's default visibility timeout.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a FIFO deduplication id is remembered (SQS: 5 minutes).
pub const DEDUP_WINDOW: Duration = Duration::from_secs(300);

/// The most messages one receive returns (SQS: 10).
pub const MAX_RECEIVE: u8 = 10;

/// How the queues behave.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// How long a received message stays invisible (default 30 s).
    pub visibility_timeout: Duration,
    /// Whether there is a retry queue: re-queued jobs go there, and receive polls it first.
    pub retry_queue: bool,
    /// FIFO queues: deduplication ids are honoured.
    pub fifo: bool,
    /// Prefix of message ids and receipt handles, to tell queues apart (default `msg`).
    pub id_prefix: String,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            retry_queue: false,
            fifo: false,
            id_prefix: "msg".to_string(),
        }
    }
}

/// How to send one message with [`MemoryQueue::send_with`].
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    /// Invisible until this long after the send.
    pub delay: Duration,
    /// FIFO message group.
    pub group_id: Option<String>,
    /// FIFO deduplication id.
    pub dedup_id: Option<String>,
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
    /// Dead-letter queue.
    pub dead: usize,
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

/// One stored message.
#[derive(Debug)]
struct Stored {
    role: QueueRole,
    body: String,
    origin: Origin,
    visible_at: Timestamp,
    /// The current receipt number; `None` until first received.
    receipt: Option<u64>,
}

/// Everything behind the lock.
#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    next_id: u64,
    next_receipt: u64,
    messages: HashMap<u64, Stored>,
    /// Per queue, the messages ordered by the time they become visible, then by send order.
    main: BTreeSet<(Timestamp, u64)>,
    retry: BTreeSet<(Timestamp, u64)>,
    dead: Vec<DeadLetter>,
    /// FIFO deduplication: key -> (message id, remembered until).
    dedup: HashMap<String, (String, Timestamp)>,
}

impl State {
    fn lane(&mut self, role: QueueRole) -> &mut BTreeSet<(Timestamp, u64)> {
        match role {
            QueueRole::Main => &mut self.main,
            QueueRole::Retry => &mut self.retry,
        }
    }

    /// Moves up to `want` visible messages of `role` into flight.
    fn take(
        &mut self,
        role: QueueRole,
        now: Timestamp,
        visibility: Duration,
        prefix: &str,
        want: usize,
        out: &mut Vec<Message>,
    ) {
        let ready: Vec<(Timestamp, u64)> = self
            .lane(role)
            .range(..=(now, u64::MAX))
            .take(want)
            .copied()
            .collect();
        let hidden_until = now.plus(visibility);
        for key in ready {
            let receipt = self.next_receipt;
            self.next_receipt += 1;
            let lane = self.lane(role);
            lane.remove(&key);
            lane.insert((hidden_until, key.1));
            if let Some(m) = self.messages.get_mut(&key.1) {
                m.visible_at = hidden_until;
                m.receipt = Some(receipt);
                out.push(Message {
                    receipt: receipt_handle(prefix, key.1, receipt),
                    queue: m.role,
                    body: m.body.clone(),
                    origin: m.origin.clone(),
                });
            }
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
}

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
    /// A main queue and a dead-letter queue, no retry queue, a 30 s visibility timeout.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_options(clock, QueueOptions::default())
    }

    /// Queues as `options` say.
    pub fn with_options(clock: Arc<dyn Clock>, options: QueueOptions) -> Self {
        MemoryQueue {
            inner: Arc::new(Inner {
                clock,
                options,
                state: Mutex::new(State::default()),
                changed: Notify::new(),
            }),
        }
    }

    /// The options the queues were made with.
    pub fn options(&self) -> &QueueOptions {
        &self.inner.options
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Enqueues a job on the main queue, visible at once, attempt 0, `enqueued_at` now.
    /// Returns its message id.
    pub fn send(&self, body: impl Into<String>) -> String {
        self.send_with(body, SendOptions::default())
    }

    /// Enqueues a job on the main queue with a delay and FIFO ids. Returns its message id (on a
    /// FIFO queue, a deduplication id seen in the last 5 minutes returns the first message's id
    /// and enqueues nothing).
    pub fn send_with(&self, body: impl Into<String>, options: SendOptions) -> String {
        let now = self.inner.clock.now();
        let origin = Origin {
            message_id: String::new(),
            attempt: 0,
            enqueued_at: Some(now),
            group_id: options.group_id,
            dedup_id: options.dedup_id,
        };
        let dedup_key = origin.dedup_id.clone();
        self.enqueue(
            QueueRole::Main,
            body.into(),
            origin,
            options.delay,
            dedup_key,
        )
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
                origin.message_id = format!("{prefix}-{:08}", st.next_id);
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
            let id = origin.message_id.clone();
            st.messages.insert(
                seq,
                Stored {
                    role,
                    body,
                    origin,
                    visible_at,
                    receipt: None,
                },
            );
            id
        };
        self.inner.changed.notify_waiters();
        id
    }

    /// How many messages are where, now.
    pub fn depths(&self) -> QueueDepths {
        let now = self.inner.clock.now();
        let st = self.lock();
        let mut d = QueueDepths {
            dead: st.dead.len(),
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

    /// The dead-letter queue's content, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.lock().dead.clone()
    }

    /// True when the main and retry queues hold nothing (visible, in flight or delayed); dead
    /// letters do not count.
    pub fn is_drained(&self) -> bool {
        self.lock().messages.is_empty()
    }

    /// Applies `f` to the message each entry's receipt designates; counts the stale ones.
    fn per_receipt(
        &self,
        op: &'static str,
        messages: &[Message],
        mut f: impl FnMut(&mut State, u64),
    ) -> Result<(), QueueError> {
        let prefix = &self.inner.options.id_prefix;
        let mut failed = 0;
        let mut first = None;
        {
            let mut st = self.lock();
            for m in messages {
                match st.resolve(&m.receipt, prefix) {
                    Some(seq) => f(&mut st, seq),
                    None => {
                        failed += 1;
                        first.get_or_insert_with(|| {
                            MemoryError::StaleReceipt(m.receipt.clone()).to_string()
                        });
                    }
                }
            }
        }
        self.inner.changed.notify_waiters();
        match first {
            None => Ok(()),
            Some(detail) => Err(QueueError::Partial { op, failed, detail }),
        }
    }
}

#[async_trait]
impl JobSource for MemoryQueue {
    async fn receive(&self, max: u8, wait: Duration) -> Result<Vec<Message>, QueueError> {
        if !(1..=MAX_RECEIVE).contains(&max) {
            return Err(QueueError::Backend {
                op: "receive",
                source: Box::new(MemoryError::MaxMessages(max)),
            });
        }
        let clock = &self.inner.clock;
        let options = &self.inner.options;
        let deadline = clock.now().plus(wait);
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
                let want = usize::from(max);
                if options.retry_queue {
                    st.take(
                        QueueRole::Retry,
                        now,
                        options.visibility_timeout,
                        &options.id_prefix,
                        want,
                        &mut out,
                    );
                }
                let want = want - out.len();
                if want > 0 {
                    st.take(
                        QueueRole::Main,
                        now,
                        options.visibility_timeout,
                        &options.id_prefix,
                        want,
                        &mut out,
                    );
                }
                st.next_visible()
            };
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            let wake = next.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                () = &mut changed => {}
                () = clock.sleep_until(wake) => {}
            }
        }
    }

    async fn delete(&self, messages: &[Message]) -> Result<(), QueueError> {
        self.per_receipt("delete", messages, |st, seq| {
            if let Some(m) = st.messages.remove(&seq) {
                st.lane(m.role).remove(&(m.visible_at, seq));
            }
        })
    }

    async fn release(&self, messages: &[Message], after: Duration) -> Result<(), QueueError> {
        let at = self.inner.clock.now().plus(after);
        self.per_receipt("release", messages, |st, seq| {
            if let Some(m) = st.messages.get_mut(&seq) {
                let (role, old) = (m.role, m.visible_at);
                m.visible_at = at;
                let lane = st.lane(role);
                lane.remove(&(old, seq));
                lane.insert((at, seq));
            }
        })
    }
}

#[async_trait]
impl JobSink for MemoryQueue {
    async fn dead_letter(&self, letter: DeadLetter) -> Result<(), QueueError> {
        self.lock().dead.push(letter);
        Ok(())
    }

    async fn requeue(
        &self,
        body: &str,
        origin: &Origin,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let role = if self.inner.options.retry_queue {
            QueueRole::Retry
        } else {
            QueueRole::Main
        };
        // Each re-queue has a deduplication id of its own (as SqsQueue's): never dropped.
        self.enqueue(role, body.to_string(), origin.clone(), delay, None);
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

    #[tokio::test(start_paused = true)]
    async fn send_and_receive_carry_ids_and_enqueue_time() {
        let q = MemoryQueue::new(clock());
        let a = q.send("a");
        let b = q.send("b");
        assert_ne!(a, b);
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
            matches!(&e, QueueError::Partial { op: "delete", failed: 1, detail } if detail.contains(&old[0].receipt)),
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

    #[tokio::test(start_paused = true)]
    async fn requeue_delay_is_honoured_and_attempt_kept() {
        let c = clock();
        let q = MemoryQueue::new(c.clone());
        let id = q.send("job");
        let got = q.receive(1, NOW).await.expect("receive");
        let next = Origin {
            attempt: 1,
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
        assert_eq!(again[0].origin.message_id, id, "the job keeps its id");
        assert_eq!(
            again[0].origin.enqueued_at,
            Some(Timestamp::from_secs(1_000))
        );
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
        );
        assert_eq!(q.depths().main_delayed, 1);
        assert!(q.receive(1, NOW).await.expect("receive").is_empty());
        c.sleep(Duration::from_secs(10)).await;
        assert_eq!(q.receive(1, NOW).await.expect("receive").len(), 1);
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
        assert_eq!(got[0].origin.message_id, "earlier");
        assert_eq!(got[1].body, "main-1");
        assert_eq!(got[1].queue, QueueRole::Main);
        assert_eq!(q.depths().retry_in_flight, 1);
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
        let start = c.now();
        let got = q
            .receive(10, Duration::from_secs(20))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert_eq!(c.now().since(start), Duration::from_secs(3));
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
        );
        let start = c.now();
        let got = q
            .receive(10, Duration::from_secs(20))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert_eq!(c.now().since(start), Duration::from_secs(7));
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
        let start = c.now();
        let got = q
            .receive(10, Duration::from_secs(20))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert_eq!(c.now().since(start), Duration::from_secs(4));
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
        let start = c.now();
        let got = q
            .receive(10, Duration::from_secs(20))
            .await
            .expect("receive");
        assert!(got.is_empty());
        assert_eq!(c.now().since(start), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn dead_letters_are_kept_with_reason() {
        let q = MemoryQueue::new(clock());
        let letter = DeadLetter {
            body: "{}".into(),
            reason: "malformed job: missing field `path`".into(),
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
        let a = q.send_with("x", opts.clone());
        let b = q.send_with("x", opts.clone());
        assert_eq!(a, b);
        assert_eq!(q.depths().main_visible, 1);
        let got = q.receive(10, NOW).await.expect("receive");
        assert_eq!(got[0].origin.group_id.as_deref(), Some("g"));
        assert_eq!(got[0].origin.dedup_id.as_deref(), Some("d"));
        // Re-queues have ids of their own: two of the same attempt both go through.
        q.requeue("x", &got[0].origin, NOW).await.expect("requeue");
        q.requeue("x", &got[0].origin, NOW).await.expect("requeue");
        q.delete(&got).await.expect("delete");
        assert_eq!(q.depths().main_visible, 2);
        q.send_with("x", opts.clone());
        assert_eq!(
            q.depths().main_visible,
            2,
            "a repeat of the send is still dropped"
        );
        c.sleep(DEDUP_WINDOW).await;
        q.send_with("x", opts);
        assert_eq!(q.depths().main_visible, 3, "window passed");
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
}
