//! The retention sweep: messages that wait unreceived are re-sent as fresh copies before SQS's
//! retention deletes them.
//!
//! The loop receives only what it can dispatch soon, so behind a used-up monthly budget, a long
//! pause or a forced-open circuit, messages can wait unreceived for longer than the queues'
//! retention (14 days in the template), and SQS then deletes them without a trace. The held
//! messages are already given back as fresh copies near their expiry (`run.rs`); this covers
//! the ones nobody holds. SQS tells the age of the oldest message only as a CloudWatch metric
//! (`ApproximateAgeOfOldestMessage`; GetQueueAttributes has no such attribute), so the sweep
//! does not look: it makes a pass every [`OrchestratorConfig::sweep_interval`].
//!
//! # A pass
//! - **When**: a run starts the pass when the last completed pass *began* at least
//!   `SWEEP_INTERVAL_S` ago, whether or not dispatch is allowed (paused, circuit open, budget
//!   used up). The first run of a deployment (no `sweep` record yet) writes the record as if a
//!   pass had begun then: its queues are no older than the stack, so the first pass is due an
//!   interval later. Only the lease holder sweeps, before it dispatches.
//! - **What**: the retry queue, then the main queue, ten messages at a time
//!   ([`JobSource::receive_from`], a 1 s long poll, which asks every SQS server): each message
//!   sent before the pass began is re-sent as a fresh copy on its own queue
//!   ([`JobSource::resend`]: receive count 0, its retention counted from now, the job's
//!   attempt, first enqueue time and FIFO group kept), and the original is deleted once its
//!   copy was accepted (a copy refused: the original is released at once, kept). A message the
//!   sweep copies keeps no receive count the sweep raised.
//! - **Its own copies**: visible at once (a delay would hide the whole backlog from dispatch
//!   for up to 900 s at every pass), and told apart by their send time: sent at or after the
//!   pass began. Those received (copies, or jobs sent since) are not copied again: they are held
//!   invisible until the queue's part of the pass ends, then released at once, so each is
//!   received once per pass (once per run's part, if SQS's order mixes them in early), far from
//!   `maxReceiveCount`; the next pass, or a hold's give-back as a fresh copy, renews it.
//! - **End of a queue**: a receive that is empty or holds nothing sent before the pass began
//!   (the queue hands out messages in about their order).
//! - **Bounds**: one run spends at most `SWEEP_RUN_S` (and never past its stop time) on the
//!   pass, renewing the lease as the loop does; the pass goes on in the next run. Its
//!   progress is the [`SweepRecord`] (`sweep` in the state table), written fenced by the
//!   lease.
//!
//! # Why the interval is at most half the retention
//! A message sent just after a pass began is the next pass's to copy. That pass begins one
//! interval later (plus at most a minute, the schedule) and reaches the message within its own
//! length, so the message's age when copied is at most interval + the longest pass. That must
//! stay under the retention; an interval of half the retention (7 of 14 days) leaves the other
//! half for the pass, for runs that did not happen, and for a message SQS kept back from one
//! pass. A pass copies about 10 messages per three SQS calls, so even a backlog of millions
//! takes hours, not days.
//!
//! A sweep's failure (the queue or the table refusing) is logged and ends the sweep for this
//! run: it never stops dispatch, and the pass resumes at the next run.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use qo_core::ports::{
    JobSource, Lease, LeaseStore, Message, QueueError, QueueRole, RecordKey, RecordStore,
    StoreError, load_record, save_record,
};
use qo_core::sqs;
use qo_core::{Observation, Timestamp};

use crate::config::OrchestratorConfig;
use crate::error::OrchestratorError;
use crate::ports::Ports;

/// How many times a delete of originals whose copies were accepted is tried.
const DELETE_ATTEMPTS: u32 = 3;

/// The queue a pass is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepStage {
    /// The retry queue (first).
    #[default]
    Retry,
    /// The main queue.
    Main,
}

impl SweepStage {
    fn role(self) -> QueueRole {
        match self {
            SweepStage::Retry => QueueRole::Retry,
            SweepStage::Main => QueueRole::Main,
        }
    }
}

/// The shortest wait of a sweep's receive: a long poll asks every SQS server, a short one (a
/// wait under half a second rounds to none) only some, and can miss what is there. A run's
/// part with less than this left ends without another receive.
pub const MIN_RECEIVE_WAIT: Duration = Duration::from_secs(1);

/// The sweep's state record (`sweep`): the pass in progress and the last one completed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepRecord {
    /// When the pass in progress began (`None`: none is): it copies what was sent before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// The queue the pass in progress is on.
    #[serde(default)]
    pub stage: SweepStage,
    /// Copies the pass in progress made so far.
    #[serde(default)]
    pub resent: u64,
    /// When the last completed pass began: the next is due an interval after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_started_at: Option<Timestamp>,
    /// When the last completed pass ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_completed_at: Option<Timestamp>,
    /// Copies the last completed pass made.
    #[serde(default)]
    pub last_resent: u64,
}

impl SweepRecord {
    /// Whether a pass is in progress or due at `now`.
    pub fn due(&self, now: Timestamp, interval: Duration) -> bool {
        self.started_at.is_some() || self.last_started_at.is_none_or(|t| now >= t.plus(interval))
    }
}

/// What one run's part of a pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepReport {
    /// When the pass began.
    pub started_at: Option<Timestamp>,
    /// Messages re-sent as fresh copies (and their originals deleted) in this run.
    pub resent: u64,
    /// Messages whose copy the queue refused (released, kept as they were).
    pub refused: u64,
    /// Messages received that were sent after the pass began (its own copies, new jobs),
    /// released as they were: the batch that ends a queue's part of the pass.
    pub given_back: u64,
    /// Originals whose copy was accepted but whose delete the queue still refused: they come
    /// back after their visibility timeout as a duplicate the worker's idempotency record skips.
    pub undeleted: u64,
    /// Whether the pass completed in this run.
    pub completed: bool,
}

/// Runs this run's part of the retention sweep if a pass is in progress or due, until `stop`
/// at the latest. Never fails the run: an error is logged and the pass resumes next run.
/// `None` when the sweep is off or no pass was due.
pub async fn run_if_due<Q, S, I>(
    ports: &Ports<'_, Q, S, I>,
    config: &OrchestratorConfig,
    lease: &mut Lease,
    stop: Timestamp,
) -> Option<SweepReport>
where
    Q: JobSource + ?Sized,
    S: RecordStore + LeaseStore + ?Sized,
    I: ?Sized,
{
    let interval = config.sweep_interval?;
    let mut report = SweepReport::default();
    match sweep(ports, config, interval, lease, stop, &mut report).await {
        Ok(false) => return None,
        Ok(true) => {}
        Err(e) => {
            warn!(error = %e, resent = report.resent, "retention sweep stopped; it resumes next run")
        }
    }
    let pass_age = match (report.completed, report.started_at) {
        (false, Some(began)) => Some(ports.clock.now().since(began)),
        _ => None,
    };
    ports.observer.observe(Observation::Swept {
        resent: report.resent,
        completed: report.completed,
        pass_age,
    });
    Some(report)
}

/// The pass's part in this run; false when none was due.
async fn sweep<Q, S, I>(
    ports: &Ports<'_, Q, S, I>,
    config: &OrchestratorConfig,
    interval: Duration,
    lease: &mut Lease,
    stop: Timestamp,
    report: &mut SweepReport,
) -> Result<bool, OrchestratorError>
where
    Q: JobSource + ?Sized,
    S: RecordStore + LeaseStore + ?Sized,
    I: ?Sized,
{
    let (queue, store, clock) = (ports.queue, ports.store, ports.clock);
    let now = clock.now();
    let loaded = load_record::<SweepRecord>(store, RecordKey::Sweep).await?;
    let mut record = loaded.value;
    if loaded.version == 0 {
        // The deployment's first run: its queues are no older than the stack, which the
        // schedule starts within a minute, so nothing can be near its retention yet. The
        // first pass is due an interval from now (not now: it would copy a fresh backlog).
        record.last_started_at = Some(now);
        save_record(store, RecordKey::Sweep, &record, 0, Some(lease.token)).await?;
        info!("retention sweep: first pass due an interval from now");
        return Ok(false);
    }
    if !record.due(now, interval) {
        return Ok(false);
    }
    let started_at = *record.started_at.get_or_insert_with(|| {
        info!("retention sweep: pass started");
        record.stage = SweepStage::Retry;
        record.resent = 0;
        now
    });
    report.started_at = Some(started_at);
    let until = stop.min(now.plus(config.sweep_run));
    let ttl = config.lease_ttl;
    let mut lease_lost = false;
    let mut newer_held: Vec<Message> = Vec::new();
    let result: Result<(), OrchestratorError> = async {
        loop {
            let now = clock.now();
            if now >= lease.expires_at.minus(ttl * 2 / 3) {
                match store.renew(lease, now, ttl).await {
                    Ok(renewed) => *lease = renewed,
                    Err(StoreError::LeaseLost { .. }) => {
                        // The dispatch loop finds it out at its first refresh and stops.
                        lease_lost = true;
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // Never a short poll: it can miss what is there.
            if now >= until || until.since(now) < MIN_RECEIVE_WAIT {
                return Ok(());
            }
            let messages = queue
                .receive_from(record.stage.role(), sqs::MAX_BATCH as u8, MIN_RECEIVE_WAIT)
                .await?;
            let (older, newer): (Vec<Message>, Vec<Message>) =
                messages.into_iter().partition(|m| m.sent_at < started_at);
            // Sent at or after the pass began: its own copies, or new jobs. Not copied again:
            // held (invisible) until this queue's part ends, so each is received once.
            newer_held.extend(newer);
            if !older.is_empty() {
                copy(queue, older, report, clock).await?;
            } else {
                // Nothing sent before the pass began is left on this queue.
                give_back(queue, &mut newer_held, report).await;
                match record.stage {
                    SweepStage::Retry => record.stage = SweepStage::Main,
                    SweepStage::Main => {
                        report.completed = true;
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    give_back(queue, &mut newer_held, report).await;
    if lease_lost {
        warn!("retention sweep: lease lost; not saving its progress");
        return result.map(|()| true);
    }
    // The pass's copies so far: those of earlier runs plus this run's.
    record.resent += report.resent;
    let now = clock.now();
    if report.completed {
        info!(
            resent = record.resent,
            began = %started_at,
            "retention sweep: pass completed"
        );
        record = SweepRecord {
            last_started_at: Some(started_at),
            last_completed_at: Some(now),
            last_resent: record.resent,
            ..SweepRecord::default()
        };
    } else {
        info!(
            resent = report.resent,
            so_far = record.resent,
            stage = ?record.stage,
            "retention sweep: this run's part done; the pass goes on next run"
        );
    }
    // Saved even after an error, so that the copies made so far are counted.
    save_record(
        store,
        RecordKey::Sweep,
        &record,
        loaded.version,
        Some(lease.token),
    )
    .await?;
    result.map(|()| true)
}

/// Releases the held messages sent after the pass began, at once.
async fn give_back<Q: JobSource + ?Sized>(
    queue: &Q,
    held: &mut Vec<Message>,
    report: &mut SweepReport,
) {
    if held.is_empty() {
        return;
    }
    let messages = std::mem::take(held);
    report.given_back += messages.len() as u64;
    if let Err(e) = queue.release(&messages, Duration::ZERO).await {
        // They come back after their visibility timeout.
        warn!(error = %e, "retention sweep: could not release messages newer than the pass");
    }
}

/// Fresh copies of `messages`, and the index ranges SQS takes in one SendMessageBatch each
/// ([`sqs::send_batches`]). Each copy gets a new message id, so its idempotency key is pinned
/// into its body ([`qo_core::job::pin_key`]). The sweep and the loop's rotation send them.
pub(crate) fn fresh_copies(messages: &[Message]) -> (Vec<Message>, Vec<std::ops::Range<usize>>) {
    let copies: Vec<Message> = messages
        .iter()
        .map(|m| Message {
            body: qo_core::job::pin_key(&m.body, &m.origin.message_id).into_owned(),
            ..m.clone()
        })
        .collect();
    let sizes: Vec<usize> = copies
        .iter()
        .map(|m| sqs::job_message_bytes(&m.body, &m.origin))
        .collect();
    let groups = sqs::send_batches(&sizes);
    (copies, groups)
}

/// Re-sends `messages` as fresh copies and deletes the originals whose copy was accepted; a
/// message whose copy was refused is released at once.
///
/// The copies go in groups SQS takes in one SendMessageBatch: at most ten and 1 MiB in all,
/// bodies and attributes counted ([`sqs::send_batches`] over [`sqs::job_message_bytes`]); past
/// 1 MiB SQS refuses the whole call, and ten jobs of about 105 KB would stop every pass at the
/// same messages. A message too large to share a call goes alone. When a group fails as a
/// whole, the originals of the groups already copied are still deleted (their copies stand)
/// before the error ends this run's part.
async fn copy<Q: JobSource + ?Sized>(
    queue: &Q,
    messages: Vec<Message>,
    report: &mut SweepReport,
    clock: &dyn qo_core::Clock,
) -> Result<(), OrchestratorError> {
    let (copies, groups) = fresh_copies(&messages);
    let mut refused: Vec<String> = Vec::new();
    let mut failure = None;
    let mut tried = messages.len();
    for range in groups {
        match queue.resend(&copies[range.clone()], Duration::ZERO).await {
            Ok(()) => {}
            Err(e @ QueueError::Partial { .. }) => {
                warn!(error = %e, "retention sweep: copies refused; their originals are kept");
                refused.extend_from_slice(e.refused());
            }
            Err(e) => {
                tried = range.start;
                failure = Some(e);
                break;
            }
        }
    }
    let mut messages = messages;
    // Not tried (a group failed as a whole): left as they are, they come back after their
    // visibility timeout, as before the grouping.
    messages.truncate(tried);
    let (kept, copied): (Vec<Message>, Vec<Message>) = messages
        .into_iter()
        .partition(|m| refused.contains(&m.receipt));
    report.resent += copied.len() as u64;
    report.refused += kept.len() as u64;
    if !kept.is_empty()
        && let Err(e) = queue.release(&kept, Duration::ZERO).await
    {
        // Not released: they come back after their visibility timeout.
        warn!(error = %e, "retention sweep: could not release messages whose copy was refused");
    }
    delete_originals(queue, copied, report, clock).await?;
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Deletes the originals of `copied`, whose copies SQS accepted, retrying entries refused.
async fn delete_originals<Q: JobSource + ?Sized>(
    queue: &Q,
    copied: Vec<Message>,
    report: &mut SweepReport,
    clock: &dyn qo_core::Clock,
) -> Result<(), OrchestratorError> {
    if copied.is_empty() {
        return Ok(());
    }
    let mut pending = copied;
    for attempt in 1..=DELETE_ATTEMPTS {
        match queue.delete(&pending).await {
            Ok(()) => return Ok(()),
            Err(e @ QueueError::Partial { .. }) => {
                let named = e.refused();
                if named.is_empty() {
                    // Refused entries the answer did not name: counted, not retried.
                    if let QueueError::Partial { failed, .. } = &e {
                        report.undeleted += *failed as u64;
                    }
                    return Ok(());
                }
                pending.retain(|m| named.contains(&m.receipt));
                if attempt == DELETE_ATTEMPTS {
                    warn!(error = %e, count = pending.len(), "retention sweep: originals not deleted; their copies stand");
                    report.undeleted += pending.len() as u64;
                    return Ok(());
                }
                clock
                    .sleep(Duration::from_millis(20 * u64::from(attempt)))
                    .await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
