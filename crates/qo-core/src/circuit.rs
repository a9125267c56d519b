//! The circuit breaker: Closed, Open, HalfOpen, with an epoch that grows at each opening.
//!
//! Every transition is a pure function from a [`Circuit`] to a new one (or a refusal). A report
//! from a worker carries the epoch it was dispatched under; a report from an older episode is
//! refused, so a late failure cannot reopen a circuit that has since closed, and a late health
//! check cannot close one that has since reopened.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// The circuit's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CircuitPolicy {
    /// Failures within `failure_window` that open the circuit.
    pub failure_threshold: NonZeroU32,
    /// The window failures are counted in.
    pub failure_window: Duration,
    /// The first health-check delay after opening.
    pub probe_initial: Duration,
    /// The health-check delay doubles up to this.
    pub probe_max: Duration,
    /// A health check with no answer after this is considered failed.
    pub probe_timeout: Duration,
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        CircuitPolicy {
            failure_threshold: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
            failure_window: Duration::from_secs(60),
            probe_initial: Duration::from_secs(5),
            probe_max: Duration::from_secs(300),
            probe_timeout: Duration::from_secs(30),
        }
    }
}

impl CircuitPolicy {
    /// The delay before health check number `attempt` (0-based): initial * 2^attempt, capped.
    pub fn probe_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.probe_initial
            .checked_mul(factor)
            .unwrap_or(self.probe_max)
            .min(self.probe_max)
    }
}

/// The state of the circuit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls flow. Recent failures are kept to decide when to open.
    Closed {
        /// When it last closed (the slow-start ramp starts here).
        since: Timestamp,
        /// Failure times within the window.
        #[serde(default)]
        failures: Vec<Timestamp>,
    },
    /// No calls; health checks on a backoff.
    Open {
        /// When it opened.
        opened_at: Timestamp,
        /// Health checks sent so far in this episode.
        probes: u32,
        /// When the next health check is due.
        next_probe_at: Timestamp,
        /// Forced by an operator: no health checks, stays open until forced closed.
        #[serde(default)]
        forced: bool,
    },
    /// A health check is out; its answer decides.
    HalfOpen {
        /// When it opened.
        opened_at: Timestamp,
        /// Health checks sent so far in this episode (including the one out).
        probes: u32,
        /// When the health check went out.
        probe_sent_at: Timestamp,
    },
}

/// The circuit: its state and its epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Circuit {
    /// Grows by one at each opening.
    pub epoch: u64,
    /// The state.
    #[serde(flatten)]
    pub state: CircuitState,
}

/// Why a transition was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CircuitRefusal {
    /// The report came from an older episode.
    #[error("stale epoch {given}: the circuit is at epoch {current}")]
    StaleEpoch {
        /// The report's epoch.
        given: u64,
        /// The circuit's epoch.
        current: u64,
    },
    /// The transition does not apply in this state (e.g. closing a closed circuit).
    #[error("no change: the circuit is {0}")]
    NoChange(&'static str),
}

/// A short name of a state, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitPhase {
    /// Closed.
    Closed,
    /// Open.
    Open,
    /// Half-open.
    HalfOpen,
}

impl CircuitPhase {
    /// The text form.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitPhase::Closed => "closed",
            CircuitPhase::Open => "open",
            CircuitPhase::HalfOpen => "half_open",
        }
    }
}

impl Default for Circuit {
    fn default() -> Self {
        Circuit::closed_at(Timestamp::EPOCH)
    }
}

impl Circuit {
    /// A closed circuit at epoch 0.
    pub fn closed_at(at: Timestamp) -> Self {
        Circuit {
            epoch: 0,
            state: CircuitState::Closed {
                since: at,
                failures: Vec::new(),
            },
        }
    }

    /// The phase.
    pub fn phase(&self) -> CircuitPhase {
        match self.state {
            CircuitState::Closed { .. } => CircuitPhase::Closed,
            CircuitState::Open { .. } => CircuitPhase::Open,
            CircuitState::HalfOpen { .. } => CircuitPhase::HalfOpen,
        }
    }

    /// Whether jobs may be dispatched.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, CircuitState::Closed { .. })
    }

    /// When it last closed, if it is closed.
    pub fn closed_since(&self) -> Option<Timestamp> {
        match self.state {
            CircuitState::Closed { since, .. } => Some(since),
            _ => None,
        }
    }

    fn check_epoch(&self, epoch: u64) -> Result<(), CircuitRefusal> {
        if epoch < self.epoch {
            Err(CircuitRefusal::StaleEpoch {
                given: epoch,
                current: self.epoch,
            })
        } else {
            Ok(())
        }
    }

    fn opened(&self, at: Timestamp, policy: &CircuitPolicy, forced: bool) -> Circuit {
        Circuit {
            epoch: self.epoch + 1,
            state: CircuitState::Open {
                opened_at: at,
                probes: 0,
                next_probe_at: at.plus(policy.probe_delay(0)),
                forced,
            },
        }
    }

    /// A call failed (5xx, timeout, connection error) at `at`, dispatched under `epoch`.
    /// Returns the new circuit: closed with the failure counted, or open at the next epoch.
    pub fn record_failure(
        &self,
        epoch: u64,
        at: Timestamp,
        policy: &CircuitPolicy,
    ) -> Result<Circuit, CircuitRefusal> {
        self.check_epoch(epoch)?;
        match &self.state {
            CircuitState::Closed { since, failures } => {
                let horizon = at.minus(policy.failure_window);
                let mut recent: Vec<Timestamp> =
                    failures.iter().copied().filter(|f| *f > horizon).collect();
                recent.push(at);
                if recent.len() >= policy.failure_threshold.get() as usize {
                    Ok(self.opened(at, policy, false))
                } else {
                    // Keep at most `threshold` entries: the record stays small.
                    let keep = policy.failure_threshold.get() as usize;
                    if recent.len() > keep {
                        recent.drain(..recent.len() - keep);
                    }
                    Ok(Circuit {
                        epoch: self.epoch,
                        state: CircuitState::Closed {
                            since: *since,
                            failures: recent,
                        },
                    })
                }
            }
            _ => Err(CircuitRefusal::NoChange("already open")),
        }
    }

    /// When the next health check is due, if one should be sent.
    pub fn probe_due(&self, policy: &CircuitPolicy) -> Option<Timestamp> {
        match self.state {
            CircuitState::Open {
                next_probe_at,
                forced: false,
                ..
            } => Some(next_probe_at),
            CircuitState::HalfOpen { probe_sent_at, .. } => {
                Some(probe_sent_at.plus(policy.probe_timeout))
            }
            _ => None,
        }
    }

    /// A health check went out at `at`.
    pub fn record_probe_sent(
        &self,
        at: Timestamp,
        policy: &CircuitPolicy,
    ) -> Result<Circuit, CircuitRefusal> {
        match self.state {
            CircuitState::Open {
                opened_at,
                probes,
                forced: false,
                ..
            } => Ok(Circuit {
                epoch: self.epoch,
                state: CircuitState::HalfOpen {
                    opened_at,
                    probes: probes + 1,
                    probe_sent_at: at,
                },
            }),
            // The previous health check timed out: count it as failed and send another.
            CircuitState::HalfOpen {
                opened_at,
                probes,
                probe_sent_at,
            } if at >= probe_sent_at.plus(policy.probe_timeout) => Ok(Circuit {
                epoch: self.epoch,
                state: CircuitState::HalfOpen {
                    opened_at,
                    probes: probes + 1,
                    probe_sent_at: at,
                },
            }),
            _ => Err(CircuitRefusal::NoChange("not waiting for a health check")),
        }
    }

    /// A health check dispatched under `epoch` answered at `at`: success closes the circuit,
    /// failure reopens it with a longer backoff.
    pub fn record_probe_result(
        &self,
        epoch: u64,
        success: bool,
        at: Timestamp,
        policy: &CircuitPolicy,
    ) -> Result<Circuit, CircuitRefusal> {
        if epoch != self.epoch {
            return Err(CircuitRefusal::StaleEpoch {
                given: epoch,
                current: self.epoch,
            });
        }
        let (opened_at, probes) = match self.state {
            CircuitState::Open { forced: true, .. } => {
                return Err(CircuitRefusal::NoChange("forced open"));
            }
            CircuitState::Open {
                opened_at, probes, ..
            }
            | CircuitState::HalfOpen {
                opened_at, probes, ..
            } => (opened_at, probes),
            CircuitState::Closed { .. } => return Err(CircuitRefusal::NoChange("closed")),
        };
        if success {
            Ok(Circuit {
                epoch: self.epoch,
                state: CircuitState::Closed {
                    since: at,
                    failures: Vec::new(),
                },
            })
        } else {
            Ok(Circuit {
                epoch: self.epoch,
                state: CircuitState::Open {
                    opened_at,
                    probes,
                    next_probe_at: at.plus(policy.probe_delay(probes)),
                    forced: false,
                },
            })
        }
    }

    /// An operator forces the circuit open (a new epoch; no health checks until forced closed).
    pub fn force_open(&self, at: Timestamp, policy: &CircuitPolicy) -> Circuit {
        self.opened(at, policy, true)
    }

    /// An operator forces the circuit closed (failures forgotten; the epoch grows so that
    /// reports from the episode before are refused).
    pub fn force_close(&self, at: Timestamp) -> Circuit {
        Circuit {
            epoch: self.epoch + 1,
            state: CircuitState::Closed {
                since: at,
                failures: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Timestamp {
        Timestamp::from_secs(1_000 + s)
    }

    #[test]
    fn opens_after_threshold_failures_in_window() {
        let p = CircuitPolicy::default();
        let c = Circuit::closed_at(t(0));
        let c = c.record_failure(0, t(1), &p).expect("counted");
        let c = c.record_failure(0, t(2), &p).expect("counted");
        assert!(c.is_closed());
        let c = c.record_failure(0, t(3), &p).expect("opened");
        assert_eq!(c.phase(), CircuitPhase::Open);
        assert_eq!(c.epoch, 1);
        assert_eq!(c.probe_due(&p), Some(t(3).plus(Duration::from_secs(5))));
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let p = CircuitPolicy::default();
        let mut c = Circuit::closed_at(t(0));
        for s in [0, 100, 200, 300] {
            c = c.record_failure(0, t(s), &p).expect("counted");
        }
        assert!(c.is_closed());
    }

    #[test]
    fn stale_epochs_are_refused() {
        let p = CircuitPolicy::default();
        let mut c = Circuit::closed_at(t(0));
        for s in 1..=3 {
            c = c.record_failure(0, t(s), &p).expect("ok");
        }
        let c = c.record_probe_sent(t(10), &p).expect("probe");
        let closed = c.record_probe_result(1, true, t(11), &p).expect("closes");
        assert!(closed.is_closed());
        // A late failure from epoch 0 cannot touch the closed circuit of epoch 1...
        assert_eq!(
            closed.record_failure(0, t(12), &p),
            Err(CircuitRefusal::StaleEpoch {
                given: 0,
                current: 1
            })
        );
        // ...and a late health check from epoch 1 cannot close an epoch-2 opening.
        let mut reopened = closed.clone();
        for s in 20..=22 {
            reopened = reopened.record_failure(1, t(s), &p).expect("ok");
        }
        assert_eq!(reopened.epoch, 2);
        assert!(matches!(
            reopened.record_probe_result(1, true, t(23), &p),
            Err(CircuitRefusal::StaleEpoch { .. })
        ));
    }

    #[test]
    fn probe_backoff_doubles_to_the_cap() {
        let p = CircuitPolicy::default();
        let delays: Vec<u64> = (0..10).map(|a| p.probe_delay(a).as_secs()).collect();
        assert_eq!(delays, vec![5, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
        let mut c = Circuit::closed_at(t(0)).force_close(t(0));
        for s in 1..=3 {
            c = c.record_failure(c.epoch, t(s), &p).expect("ok");
        }
        let c = c.record_probe_sent(t(8), &p).expect("sent");
        let c = c
            .record_probe_result(c.epoch, false, t(9), &p)
            .expect("failed");
        assert_eq!(c.probe_due(&p), Some(t(19)));
    }

    #[test]
    fn forced_open_sends_no_probes_and_ignores_health() {
        let p = CircuitPolicy::default();
        let c = Circuit::closed_at(t(0)).force_open(t(1), &p);
        assert_eq!(c.probe_due(&p), None);
        assert!(c.record_probe_result(c.epoch, true, t(2), &p).is_err());
        let closed = c.force_close(t(3));
        assert!(closed.is_closed());
        assert_eq!(closed.epoch, 2);
    }

    #[test]
    fn unanswered_probe_times_out() {
        let p = CircuitPolicy::default();
        let mut c = Circuit::closed_at(t(0));
        for s in 1..=3 {
            c = c.record_failure(0, t(s), &p).expect("ok");
        }
        let c = c.record_probe_sent(t(8), &p).expect("sent");
        assert!(c.record_probe_sent(t(9), &p).is_err());
        let again = c
            .record_probe_sent(t(8 + 30), &p)
            .expect("timed out, resend");
        assert!(matches!(
            again.state,
            CircuitState::HalfOpen { probes: 2, .. }
        ));
    }

    #[test]
    fn serde_shape() {
        let c = Circuit::closed_at(t(0));
        let j = serde_json::to_value(&c).expect("json");
        assert_eq!(j["state"], "closed");
        assert_eq!(j["epoch"], 0);
        let back: Circuit = serde_json::from_value(j).expect("json");
        assert_eq!(back, c);
    }
}
