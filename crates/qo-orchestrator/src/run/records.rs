//! The loop's records: the control record and the circuit re-read, the lease renewed, the
//! 429s and the API's window turned into the pace, and the quota's usage saved.

use std::time::Duration;

use qo_core::ports::{
    Invoker, JobSink, JobSource, LeaseStore, RecordKey, RecordStore, StoreError, load_record,
    save_record,
};
use qo_core::quota::Reaction;
use qo_core::{Circuit, Control, Observation, Timestamp};
use tracing::{debug, info, warn};

use crate::error::OrchestratorError;
use crate::step::StopReason;

use super::Loop;

impl<'a, Q, S, I> Loop<'a, Q, S, I>
where
    Q: JobSource + JobSink + ?Sized,
    S: RecordStore + LeaseStore + ?Sized,
    I: Invoker + ?Sized,
{
    /// Re-reads controls and the circuit, and renews the lease once a third of its time to
    /// live has passed (not at every refresh: a write a second is most of an idle run's cost,
    /// and the quota saves are fenced by the lease's token anyway). The invokes in flight keep
    /// going meanwhile.
    pub(super) async fn refresh(
        &mut self,
        now: Timestamp,
    ) -> Result<Option<StopReason>, OrchestratorError> {
        let ttl = self.config.lease_ttl;
        let renew = (now >= self.lease.expires_at.minus(ttl * 2 / 3)).then(|| self.lease.clone());
        let store = self.ports.store;
        let (renewed, control, circuit) = self
            .while_invoking(async move {
                let renewed = match renew {
                    Some(lease) => Some(store.renew(&lease, now, ttl).await),
                    None => None,
                };
                let control = load_record::<Control>(store, RecordKey::Control).await;
                let circuit = load_record::<Circuit>(store, RecordKey::Circuit).await;
                (renewed, control, circuit)
            })
            .await?;
        match renewed {
            None => {}
            Some(Ok(lease)) => self.lease = lease,
            Some(Err(StoreError::LeaseLost { .. })) => {
                warn!(
                    token = self.lease.token,
                    "lease lost: another orchestrator took over"
                );
                return Ok(Some(StopReason::LeaseLost));
            }
            Some(Err(e)) => return Err(e.into()),
        }
        self.adopt_control(control?.value, now);
        self.apply_circuit(circuit?.value);
        self.poll_completions().await?;
        Ok(None)
    }

    /// Adopts freshly read controls: a quota override, the API's back-off, the pause, and
    /// the worker's reports of throttles and of the API's window; publishes the pace while
    /// it is under the quota.
    pub(super) fn adopt_control(&mut self, control: Control, now: Timestamp) {
        let spec = control
            .quota
            .clone()
            .unwrap_or_else(|| self.config.quota.clone());
        if &spec != self.pacer.spec() {
            info!(from = %self.pacer.spec(), to = %spec, "quota changed");
            self.meter.close();
            self.slots.set_period(spec.pacing_period());
            self.pool.set_spec(&spec, self.config);
            self.pacer.set_spec(spec);
        }
        if let Some(until) = control.backoff_until {
            self.pacer.back_off_until(until);
        }
        if control.paused != self.control.paused {
            info!(paused = control.paused, "pause control changed");
        }
        self.control = control;
        self.react_to_throttles(now);
        let limited = self.pacer.adaptive_fraction(now) < 1.0;
        if limited || self.pace_shown {
            // While the learned rate is under the quota, and once more when it is back (the
            // metric is a gauge: it would keep the last lowered value). At the quota nothing
            // is published: each metric costs by the hour.
            self.ports.observer.observe(Observation::Pace {
                rate_per_s: self.pacer.target_rate_per_s(now),
                ceiling_per_s: self.pacer.spec().pacing_rate_per_s(),
            });
        }
        self.pace_shown = limited;
    }

    /// Reports the utilization counted since the last report.
    pub(super) fn observe_utilization(&mut self) {
        let u = self.meter.take();
        if u.calls > 0 || u.allowed > 0.0 {
            self.utilization.add(u);
            self.ports.observer.observe(Observation::Utilization(u));
        }
    }

    /// Lowers the pace when the API throttled a call paced at the current rate (the control
    /// record's counter, written by the worker on each 429; see [`qo_core::quota::adaptive`]).
    pub(super) fn react_to_throttles(&mut self, now: Timestamp) {
        if let Some(window) = self.control.api_window {
            // The API's own count: the calls of its window that were not ours were another
            // client's. Its window is the one it says, or the pacing tier's, taken as ending at
            // the observation (its reset is rounded to whole seconds, so counting from the
            // reset back would miss most of ours and blame them on another client).
            let length = window
                .window_s
                .map_or(self.pacer.spec().pacing_period(), Duration::from_secs);
            // A window that began before this run holds calls of the last run's that the log
            // has not: wait for a report this run saw all of.
            if let Some(ours) = self.slots.count_ending_at(window.observed_at, length) {
                let reaction = self.pacer.on_api_window(&window, ours, now);
                self.record_reaction(reaction);
            }
        }
        let Some(throttles) = self.control.throttles.clone() else {
            return;
        };
        let slots = &self.slots;
        let reaction = self.pacer.on_throttles(&throttles, now, |slot| {
            slots.estimate(slot, &throttles.recent_slots)
        });
        self.record_reaction(reaction);
    }

    pub(super) fn record_reaction(&mut self, reaction: Reaction) {
        match reaction {
            Reaction::Unchanged => {}
            Reaction::AlreadyDecreased { new } | Reaction::Disabled { new } => {
                debug!(new, "throttles of slots paced at the previous rate");
            }
            Reaction::Raised {
                from_per_s,
                to_per_s,
            } => {
                info!(
                    from_per_s,
                    to_per_s, "pace raised: the API's rate-limit headers report a higher limit"
                );
            }
            Reaction::Decreased(d) => {
                warn!(
                    from_per_s = d.from_per_s,
                    to_per_s = d.to_per_s,
                    estimate_per_s = d.estimate_per_s,
                    basis = ?d.basis,
                    "pace lowered to the API's limit (a 429 of a call paced at the current rate, or its rate-limit headers)"
                );
                self.report.pace_decreases += 1;
                self.ports.observer.observe(Observation::PaceDecreased(d));
            }
        }
    }

    /// Saves usage, fenced by the lease: a run that lost its lease cannot overwrite.
    pub(super) async fn persist(
        &mut self,
        horizon: Option<Timestamp>,
    ) -> Result<(), OrchestratorError> {
        let now = self.now();
        self.pacer.settle_adaptive(now);
        self.pacer.set_horizon(now, horizon);
        let store = self.ports.store;
        let mut state = self.pacer.state().clone();
        self.pool.save_into(&mut state, now, horizon);
        let (expected, token) = (self.quota_version, self.lease.token);
        let version = self
            .while_invoking(async move {
                save_record(store, RecordKey::Quota, &state, expected, Some(token)).await
            })
            .await??;
        self.quota_version = version;
        Ok(())
    }

    /// Saves usage with a horizon two saves and a lead ahead, after the deletes.
    pub(super) async fn save(&mut self, now: Timestamp) -> Result<(), OrchestratorError> {
        let cfg = self.config;
        self.observe_utilization();
        self.flush_deletes().await?;
        self.persist(Some(now.plus(cfg.persist_interval * 2 + cfg.dispatch_lead)))
            .await?;
        self.timers.next_persist = now.plus(cfg.persist_interval);
        Ok(())
    }
}
