//! Held messages: receiving them in the background, accepting or refusing each, keeping them
//! invisible while they wait, and giving them back (released, or re-sent as fresh copies).

use std::collections::VecDeque;
use std::time::Duration;

use qo_core::ports::{
    DeadLetter, Invoker, JobSink, JobSource, LeaseStore, Message, QueueError, QueueRole,
    RecordStore,
};
use qo_core::sqs;
use qo_core::{Job, Observation, Timestamp};
use tracing::{info, warn};

use crate::error::OrchestratorError;

use super::{BatchCall, Held, Loop, is_result};

impl<'a, Q, S, I> Loop<'a, Q, S, I>
where
    Q: JobSource + JobSink + ?Sized,
    S: RecordStore + LeaseStore + ?Sized,
    I: Invoker + ?Sized,
{
    /// When the first held message's visibility needs extending.
    pub(super) fn visibility_due(&self) -> Option<Timestamp> {
        let margin = self.extend_margin();
        self.held
            .iter()
            .map(|h| h.visible_until.minus(margin))
            .min()
    }

    /// How long before its visibility runs out a held message is extended.
    pub(super) fn extend_margin(&self) -> Duration {
        (self.config.visibility_timeout / 3).min(Duration::from_secs(30))
    }

    /// Starts a long poll for at most `wait` and `max` messages. It runs alongside dispatch
    /// (a future that is not polled sends nothing: the waits poll it with the invokes); its
    /// answer is handled by [`Self::received`].
    /// With `retry_first`, the retry queue is polled before the main queue; otherwise the
    /// main queue alone (see [`OrchestratorConfig::retry_poll_interval`]).
    pub(super) fn start_receive(&mut self, wait: Duration, max: u8, retry_first: bool) {
        let queue = self.ports.queue;
        self.retry_checked = retry_first;
        self.receiving = Some(if retry_first {
            queue.receive(max, wait)
        } else {
            queue.receive_from(QueueRole::Main, max, wait)
        });
    }

    /// A receive's answer: what comes is held; nothing means the backlog is gone (with nothing
    /// held, the time until the next job is not counted; the idle exit may apply).
    pub(super) async fn received(
        &mut self,
        result: Result<Vec<Message>, QueueError>,
    ) -> Result<(), OrchestratorError> {
        let messages = result?;
        if self.retry_checked {
            // Re-queued jobs found: more may be waiting, so the next receive polls again.
            let found = messages.iter().any(|m| m.queue == QueueRole::Retry);
            let now = self.now();
            self.timers.next_retry_poll = if found {
                now
            } else {
                now.plus(self.config.retry_poll_interval)
            };
        }
        if messages.is_empty() {
            self.receive_empty = true;
            if self.held.is_empty() {
                self.meter.close();
            }
            return Ok(());
        }
        self.receive_empty = false;
        self.timers.idle_since = self.now();
        self.accept(messages).await?;
        self.ports.observer.observe(Observation::Backlog {
            held: self.held.len(),
        });
        Ok(())
    }

    /// Validates received messages: a bad one goes to the dead-letter queue with the reason.
    pub(super) async fn accept(&mut self, messages: Vec<Message>) -> Result<(), OrchestratorError> {
        for m in messages {
            // A job naming a result destination the stack does not declare, or asking for a
            // request the stack does not allow, is refused here, before it takes a slot.
            let job = Job::parse(&m.body).and_then(|job| {
                self.config.destinations.for_job(&job)?;
                self.config.allow.check(&job)?;
                Ok(job)
            });
            match job {
                Ok(job) => {
                    let visible_until = m.received_at.plus(self.config.visibility_timeout);
                    self.held.push_back(Held {
                        message: m,
                        job,
                        visible_until,
                    });
                }
                Err(_) if is_result(&m.body) => self.redeliver(m),
                Err(e) => {
                    let reason = qo_core::Reason::InvalidJob(e);
                    warn!(message_id = %m.origin.message_id, %reason, "invalid job: dead-lettered");
                    self.ports
                        .queue
                        .dead_letter(DeadLetter {
                            body: m.body.clone(),
                            reason: reason.clone(),
                            origin: m.origin.clone(),
                        })
                        .await?;
                    self.tell_refused(&m, &reason);
                    self.ports.observer.observe(Observation::DeadLettered {
                        message_id: m.origin.message_id.clone(),
                        reason,
                    });
                    self.report.dead_lettered += 1;
                    self.to_delete.push(m);
                }
            }
        }
        Ok(())
    }

    pub(super) async fn release_held(&mut self, after: Duration) -> Result<(), OrchestratorError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let messages: Vec<Message> = self.held.drain(..).map(|h| h.message).collect();
        self.give_back(messages, after).await
    }

    /// Whether a message must go back as a fresh copy: received often enough that a release
    /// would bring it toward the redrive policy's count, or near its retention.
    pub(super) fn must_rotate(&self, m: &Message, now: Timestamp) -> bool {
        m.receive_count >= sqs::ROTATE_AFTER_RECEIVES
            || now.since(m.sent_at) + sqs::ROTATE_BEFORE_EXPIRY >= self.config.retention
    }

    /// Gives undispatched messages back to the queue, visible after `after`: released, or,
    /// where [`Self::must_rotate`] says so, re-sent as a new message (receive count 0, a new
    /// retention period; same body, job id and attempt) and the original deleted.
    pub(super) async fn give_back(
        &mut self,
        messages: Vec<Message>,
        after: Duration,
    ) -> Result<(), OrchestratorError> {
        let now = self.now();
        self.report.released += messages.len() as u64;
        let (rotate, mut release): (Vec<Message>, Vec<Message>) =
            messages.into_iter().partition(|m| self.must_rotate(m, now));
        release.extend(self.resend_fresh(rotate, after).await?);
        self.settle(BatchCall::Release(after), release).await
    }

    /// Re-sends each message as a fresh copy (receive count 0, a new retention period; same
    /// job, idempotency key and attempt) visible after `after`, then deletes the originals.
    /// Returns the messages it could not re-send, still held, for the caller to release.
    ///
    /// The copies go in SendMessageBatch calls of at most ten and 1 MiB ([`sqs::send_batches`]),
    /// made concurrently: one call's time for up to `MAX_HELD` messages, where a SendMessage
    /// each took a call's time per message.
    pub(super) async fn resend_fresh(
        &mut self,
        messages: Vec<Message>,
        after: Duration,
    ) -> Result<Vec<Message>, OrchestratorError> {
        if messages.is_empty() {
            return Ok(messages);
        }
        let delay = after.min(sqs::MAX_DELAY);
        let (copies, groups) = crate::sweep::fresh_copies(&messages);
        let queue = self.ports.queue;
        let groups = groups.into_iter().map(|range| {
            let group = &copies[range];
            async move { (group, queue.resend(group, delay).await) }
        });
        // Not under `while_invoking`: an invoke's completion can give messages back itself.
        let answers = futures::future::join_all(groups).await;
        let mut not_copied: Vec<&str> = Vec::new();
        for (group, answer) in &answers {
            match answer {
                Ok(()) => {}
                Err(e @ QueueError::Partial { .. }) => {
                    warn!(error = %e, "some fresh copies were refused; releasing their originals");
                    not_copied.extend(e.refused().iter().map(String::as_str));
                }
                Err(e) => {
                    warn!(count = group.len(), error = %e, "could not re-send fresh copies; releasing them");
                    not_copied.extend(group.iter().map(|m| m.receipt.as_str()));
                }
            }
        }
        let (failed, resent): (Vec<Message>, Vec<Message>) = messages
            .into_iter()
            .partition(|m| not_copied.contains(&m.receipt.as_str()));
        if !resent.is_empty() {
            info!(
                count = resent.len(),
                "gave back messages as fresh copies (receive count, age or 12 h held)"
            );
            self.report.rotated += resent.len() as u64;
            self.settle(BatchCall::Delete, resent).await?;
        }
        Ok(failed)
    }

    /// Extends the visibility of the held messages that are near its end, up to SQS's 12 h
    /// from their receive; one that cannot be extended enough goes back as a fresh copy.
    pub(super) async fn extend_held(&mut self, now: Timestamp) -> Result<(), OrchestratorError> {
        let margin = self.extend_margin();
        if self
            .held
            .iter()
            .all(|h| h.visible_until.minus(margin) > now)
        {
            return Ok(());
        }
        // Once one is due, those due within half a visibility timeout go with it: one batch
        // call for what would otherwise be a call each, a few seconds apart.
        let soon = now.plus(self.config.visibility_timeout / 2);
        let mut extend = Vec::new();
        let mut give_back = Vec::new();
        let mut keep = VecDeque::with_capacity(self.held.len());
        for mut h in self.held.drain(..) {
            if h.visible_until.minus(margin) > soon {
                keep.push_back(h);
                continue;
            }
            let left = sqs::MAX_VISIBILITY
                .saturating_sub(now.since(h.message.received_at))
                .saturating_sub(Duration::from_secs(1));
            let by = self.config.visibility_timeout.min(left);
            if by <= margin {
                give_back.push(h.message);
            } else {
                h.visible_until = now.plus(by);
                extend.push((h.message.clone(), by));
                keep.push_back(h);
            }
        }
        self.held = keep;
        // One ChangeMessageVisibilityBatch round per extension length (almost always one),
        // not a call per message.
        let mut by_length: std::collections::BTreeMap<Duration, Vec<Message>> = Default::default();
        for (m, by) in extend {
            by_length.entry(by).or_default().push(m);
        }
        for (by, messages) in by_length {
            self.report.extended += messages.len() as u64;
            self.settle(BatchCall::Release(by), messages).await?;
        }
        if !give_back.is_empty() {
            // Held for 12 h since the receive: SQS allows no more visibility.
            self.report.released += give_back.len() as u64;
            let failed = self.resend_fresh(give_back, Duration::ZERO).await?;
            self.settle(BatchCall::Release(Duration::ZERO), failed)
                .await?;
        }
        Ok(())
    }
}
