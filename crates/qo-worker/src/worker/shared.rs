//! The state the worker shares with the orchestrator and the other environments: the 429s
//! and the API's window in the control record, the circuit's failures, the credential's
//! back-off and re-read, and the health checks that close the circuit.

use qo_core::ports::{IdempotencyStore, JobSink, RecordKey, RecordStore, update_record};
use qo_core::{
    ApiWindow, BackoffReason, Circuit, Clock, Control, HealthCheckEvent, Observation, Throttles,
    Timestamp,
};
use tracing::{error, info, warn};

use crate::error::WorkerError;
use crate::http::HttpCall;
use crate::outcome::Outcome;

use super::{CONTROL_WRITER, Worker, millis};

impl<S, Q, C, H> Worker<S, Q, C, H>
where
    S: RecordStore + IdempotencyStore,
    Q: JobSink,
    C: Clock,
    H: HttpCall,
{
    /// Writes a 429 to the control record: the back-off until `until` (a later one is kept),
    /// the throttle counted, the API's window when it is newer.
    pub(super) async fn record_throttle(
        &self,
        slot: Timestamp,
        until: Timestamp,
        window: Option<ApiWindow>,
        now: Timestamp,
    ) -> Result<(), WorkerError> {
        // Every 429 is counted (the orchestrator's rate controller reacts to each new one),
        // even when a later back-off is already recorded: that one is kept, never shortened.
        update_record::<Control, _>(&self.store, RecordKey::Control, |c| {
            let (backoff_until, backoff_reason) = match c.backoff_until {
                Some(b) if b >= until => (Some(b), c.backoff_reason),
                // No Retry-After: no pause; the pace's decrease answers it.
                _ if until <= now => (c.backoff_until, c.backoff_reason),
                _ => (Some(until), Some(BackoffReason::Throttled)),
            };
            Some(Control {
                backoff_until,
                backoff_reason,
                throttles: Some(Throttles::record(c.throttles.as_ref(), now, slot)),
                api_window: match window {
                    Some(w) if w.supersedes(c.api_window.as_ref()) => Some(w),
                    _ => c.api_window,
                },
                updated_by: Some(CONTROL_WRITER.to_string()),
                updated_at: Some(now),
                ..c.clone()
            })
        })
        .await?;
        Ok(())
    }

    /// Counts a failure against the circuit at `epoch`; returns whether it opened it.
    pub(super) async fn record_failure(
        &self,
        epoch: u64,
        now: Timestamp,
    ) -> Result<bool, WorkerError> {
        let policy = self.config.circuit;
        let mut opened = false;
        let circuit = update_record::<Circuit, _>(&self.store, RecordKey::Circuit, |c| {
            opened = false;
            // Refused: a report from an older epoch, or the circuit is already open.
            let next = c.record_failure(epoch, now, &policy).ok()?;
            opened = !next.is_closed();
            Some(next)
        })
        .await?;
        if opened {
            warn!(
                epoch = circuit.value.epoch,
                "this failure opened the circuit"
            );
            self.observe(Observation::Circuit {
                phase: circuit.value.phase(),
                epoch: circuit.value.epoch,
            });
        }
        Ok(opened)
    }

    /// Backs calls off until `until` (the next re-read) in the control record, unless a
    /// later back-off is recorded.
    pub(super) async fn back_off_for_credential(
        &self,
        status: u16,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<(), WorkerError> {
        update_record::<Control, _>(&self.store, RecordKey::Control, |c| {
            if c.backoff_until.is_some_and(|b| b >= until) {
                return None;
            }
            Some(Control {
                backoff_until: Some(until),
                backoff_reason: Some(BackoffReason::CredentialRejected { status }),
                updated_by: Some(CONTROL_WRITER.to_string()),
                updated_at: Some(now),
                ..c.clone()
            })
        })
        .await?;
        Ok(())
    }

    /// Re-reads the key when a re-read is due and hands it to the HTTP layer; returns whether
    /// it changed. A failed read is logged and keeps the key in use.
    pub(super) async fn reread_credential(&self, now: Timestamp) -> bool {
        if !self.rereads.take_slot(now) {
            return false;
        }
        let Some(source) = self.rereads.source() else {
            return false;
        };
        let key = match source.load().await {
            Ok(key) => key,
            Err(e) => {
                error!(error = %e, source = ?std::error::Error::source(&e), "could not re-read the API key: keeping the one in use");
                return false;
            }
        };
        match self.http.set_api_key(key.as_ref().map(|k| k.expose())) {
            Ok(changed) => {
                info!(changed, "API key re-read");
                changed
            }
            Err(e) => {
                error!(error = %e, "the re-read API key cannot be used: keeping the one in use");
                false
            }
        }
    }

    pub(super) async fn handle_health(
        &self,
        ev: &HealthCheckEvent,
    ) -> Result<Outcome, WorkerError> {
        // A health check is a call the API counts: made at its slot, as a job is.
        if let Some(slot) = ev.slot_at {
            let now = self.clock.now();
            let tolerance = self.config.call_tolerance;
            let ahead = slot.since(now);
            if now > slot.plus(tolerance) || ahead > self.config.max_slot_wait {
                let off = millis(now.since(slot)) as i64 - millis(ahead) as i64;
                warn!(
                    slot_off_ms = off,
                    "health check delivered off its slot: not made"
                );
                return Ok(Outcome::HealthCheckMissed {
                    epoch: ev.epoch,
                    slot_off_ms: off,
                });
            }
            self.clock.sleep_until(slot).await;
            if self.clock.now() > slot.plus(tolerance) {
                let off = millis(self.clock.now().since(slot)) as i64;
                warn!(
                    slot_off_ms = off,
                    "health check woke past its slot: not made"
                );
                return Ok(Outcome::HealthCheckMissed {
                    epoch: ev.epoch,
                    slot_off_ms: off,
                });
            }
        }
        let answer = self.http.health().await;
        let now = self.clock.now();
        let (healthy, status) = match &answer {
            Ok(r) => ((200..300).contains(&r.status), Some(r.status)),
            Err(_) => (false, None),
        };
        self.observe(Observation::HealthCheck {
            epoch: ev.epoch,
            healthy,
        });
        let policy = self.config.circuit;
        let mut changed = false;
        let circuit = update_record::<Circuit, _>(&self.store, RecordKey::Circuit, |c| {
            changed = false;
            // Refused: another epoch, forced open, or already closed.
            let next = c
                .record_probe_result(ev.epoch, healthy, now, &policy)
                .ok()?;
            changed = true;
            Some(next)
        })
        .await?;
        if changed {
            self.observe(Observation::Circuit {
                phase: circuit.value.phase(),
                epoch: circuit.value.epoch,
            });
        }
        if healthy {
            let closed = changed && circuit.value.is_closed();
            info!(?status, closed, "health check passed");
            Ok(Outcome::Healthy {
                epoch: ev.epoch,
                closed,
            })
        } else {
            match &answer {
                Err(e) => warn!(error = %e, "health check failed"),
                Ok(_) => warn!(?status, "health check failed"),
            }
            Ok(Outcome::Unhealthy {
                epoch: ev.epoch,
                status,
            })
        }
    }
}
