//! Settling with SQS: the invokes in flight and what their answers settle (deletes and
//! releases in batches of ten, refused entries tried again), awaited beside the loop's work.

use std::future::Future;
use std::time::Duration;

use futures::stream::StreamExt;
use qo_core::ports::{Invoker, JobSink, JobSource, LeaseStore, Message, QueueError, RecordStore};
use qo_core::sqs;
use qo_core::{Observation, Timestamp};
use tracing::{debug, warn};

use crate::error::OrchestratorError;

use super::{BATCH_ATTEMPTS, BatchCall, Done, Loop, Refused, Woke};

impl<'a, Q, S, I> Loop<'a, Q, S, I>
where
    Q: JobSource + JobSink + ?Sized,
    S: RecordStore + LeaseStore + ?Sized,
    I: Invoker + ?Sized,
{
    /// Awaits `work` (a queue or store call that does not borrow the loop) while the invokes
    /// in flight keep going, then handles those that finished meanwhile.
    pub(super) async fn while_invoking<T>(
        &mut self,
        work: impl Future<Output = T>,
    ) -> Result<T, OrchestratorError> {
        tokio::pin!(work);
        let mut finished = Vec::new();
        let out = loop {
            tokio::select! {
                r = &mut work => break r,
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    finished.push(done);
                }
            }
        };
        for done in finished {
            self.complete(done).await?;
        }
        Ok(out)
    }

    /// Handles finished invokes, and the receive if it answered, without waiting.
    pub(super) async fn poll_completions(&mut self) -> Result<(), OrchestratorError> {
        if let Some(r) = self
            .receiving
            .as_mut()
            .and_then(futures::FutureExt::now_or_never)
        {
            self.receiving = None;
            self.received(r).await?;
        }
        loop {
            let next = futures::FutureExt::now_or_never(self.in_flight.next());
            match next {
                Some(Some(done)) => self.complete(done).await?,
                _ => return Ok(()),
            }
        }
    }

    /// Waits until `t`, or until an invoke in flight or the receive under way answers (then
    /// handled): the loop decides again at once.
    pub(super) async fn wait_until(&mut self, t: Timestamp) -> Result<(), OrchestratorError> {
        let woke = {
            let clock = self.ports.clock;
            let in_flight = &mut self.in_flight;
            let receiving = &mut self.receiving;
            let has_invokes = !in_flight.is_empty();
            let has_receive = receiving.is_some();
            tokio::select! {
                _ = clock.sleep_until(t) => Woke::Timer,
                Some(done) = in_flight.next(), if has_invokes => Woke::Invoke(done),
                r = async {
                    match receiving.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if has_receive => Woke::Received(r),
            }
        };
        match woke {
            Woke::Timer => Ok(()),
            Woke::Invoke(done) => self.complete(done).await,
            Woke::Received(r) => {
                self.receiving = None;
                self.received(r).await
            }
        }
    }

    pub(super) async fn complete(
        &mut self,
        (messages, result): Done,
    ) -> Result<(), OrchestratorError> {
        match result {
            Ok(()) => {
                self.to_delete.extend(messages);
                if !self.finishing && self.to_delete.len() >= 10 {
                    self.flush_deletes().await?;
                }
            }
            Err(e) => {
                warn!(
                    jobs = messages.len(),
                    message_id = %messages.first().map_or("", |m| m.origin.message_id.as_str()),
                    error = %e,
                    "invoke failed; its jobs released"
                );
                self.report.invoke_failures += 1;
                for m in &messages {
                    self.ports.observer.observe(Observation::InvokeFailed {
                        message_id: m.origin.message_id.clone(),
                        reason: e.to_string(),
                    });
                }
                if self.finishing {
                    self.to_release.extend(messages);
                } else {
                    let delay = e.retry_after().unwrap_or(Duration::ZERO);
                    self.give_back(messages, delay).await?;
                }
            }
        }
        Ok(())
    }

    pub(super) async fn flush_deletes(&mut self) -> Result<(), OrchestratorError> {
        if self.to_delete.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.to_delete);
        let count = batch.len();
        self.settle(BatchCall::Delete, batch).await?;
        debug!(count, "deleted dispatched messages");
        Ok(())
    }

    /// One pass of a batch call over `messages`, ten at a time, the calls made concurrently
    /// (a release of `MAX_HELD` messages at the stop takes one call's time: see
    /// [`crate::config::FinishBudget::batches`]): the entries the queue refused. A failure of a
    /// whole call is an error.
    pub(super) async fn settle_once(
        &self,
        call: BatchCall,
        messages: &[Message],
    ) -> Result<Refused, OrchestratorError> {
        let queue = self.ports.queue;
        let mut out = Refused::default();
        let results =
            futures::future::join_all(messages.chunks(sqs::MAX_BATCH).map(|chunk| async move {
                let result = match call {
                    BatchCall::Delete => queue.delete(chunk).await,
                    BatchCall::Release(after) => queue.release(chunk, after).await,
                };
                (chunk, result)
            }))
            .await;
        for (chunk, result) in results {
            match result {
                Ok(()) => {}
                Err(e @ QueueError::Partial { .. }) => {
                    let named = e.refused();
                    let before = out.refused.len();
                    out.refused
                        .extend(chunk.iter().filter(|m| named.contains(&m.receipt)).cloned());
                    if let QueueError::Partial { failed, .. } = &e {
                        out.unnamed += failed.saturating_sub(out.refused.len() - before);
                    }
                    out.last = Some(e.to_string());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Runs a batch call in batches of ten and tries the entries the queue refused again, up to
    /// [`BATCH_ATTEMPTS`] times (SQS can refuse single entries while the call succeeds). What is
    /// still refused is counted and logged, and the run goes on: only a failure of a whole call
    /// is an error.
    pub(super) async fn settle(
        &mut self,
        call: BatchCall,
        mut messages: Vec<Message>,
    ) -> Result<(), OrchestratorError> {
        for attempt in 1..=BATCH_ATTEMPTS {
            if messages.is_empty() {
                return Ok(());
            }
            let Refused {
                refused,
                unnamed,
                last,
            } = self.settle_once(call, &messages).await?;
            if unnamed > 0 {
                self.report.refused_entries += unnamed as u64;
            }
            if refused.is_empty() {
                return Ok(());
            }
            if attempt == BATCH_ATTEMPTS {
                warn!(
                    ?call,
                    count = refused.len(),
                    last = last.as_deref().unwrap_or(""),
                    "queue still refused entries after {BATCH_ATTEMPTS} tries; carrying on"
                );
                self.report.refused_entries += refused.len() as u64;
                return Ok(());
            }
            debug!(
                ?call,
                count = refused.len(),
                "queue refused entries; trying them again"
            );
            self.ports
                .clock
                .sleep(Duration::from_millis(20 * u64::from(attempt)))
                .await;
            messages = refused;
        }
        Ok(())
    }
}
