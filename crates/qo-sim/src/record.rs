//! What the simulator saw: one record per call, and the statistics derived from them.

use std::time::Duration;

use qo_core::quota::WindowKind;
use qo_core::{QuotaSpec, Timestamp};
use serde::{Deserialize, Serialize};

use crate::window::{max_in_calendar_period, max_in_window};

/// Which kind of request a record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// A call to the API (any path but the health path and `/_sim/*`).
    Api,
    /// A health check (`/health`).
    Health,
}

/// One request as the simulator answered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Arrival time since the server started (taken before any simulated latency).
    pub at: Duration,
    /// API call or health check.
    pub kind: CallKind,
    /// The HTTP method.
    pub method: String,
    /// The request path (without the query).
    pub path: String,
    /// The status answered.
    pub status: u16,
}

/// Counters and window maxima over everything the simulator has answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// API calls received (every answer: accepted, throttled, faulted, unauthorized).
    pub calls: u64,
    /// API calls accepted (200).
    pub accepted: u64,
    /// API calls throttled (429).
    pub throttled: u64,
    /// API calls that failed with a simulated fault (500, or 503 in the outage).
    pub faulted: u64,
    /// API calls refused for a missing or wrong key (401).
    pub unauthorized: u64,
    /// Health checks received (healthy or not).
    pub health_checks: u64,
    /// For each tier (as written, e.g. `20/s`): the largest number of accepted calls in any
    /// window of the tier, rolling (half-open) or calendar (UTC period). Never above the limit.
    pub max_in_any_window: Vec<(String, u64)>,
}

impl SimStats {
    /// The maximum for the tier written as `tier` (e.g. `"20/s"`), if the spec has it.
    pub fn max_for(&self, tier: &str) -> Option<u64> {
        self.max_in_any_window
            .iter()
            .find(|(t, _)| t == tier)
            .map(|&(_, m)| m)
    }
}

/// The log of calls, the counters, and the accepted arrival times.
///
/// It keeps everything for the server's lifetime: about 60 bytes plus the path per call.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) records: Vec<CallRecord>,
    /// Arrival times of accepted calls, in order.
    pub(crate) accepted: Vec<Timestamp>,
    /// The counters (window maxima are computed on demand by [`with_maxima`]).
    pub(crate) counters: SimStats,
}

impl Ledger {
    /// Logs one answered request; `at` is its arrival time.
    pub(crate) fn record(&mut self, at: Timestamp, record: CallRecord) {
        let c = &mut self.counters;
        match record.kind {
            CallKind::Health => c.health_checks += 1,
            CallKind::Api => {
                c.calls += 1;
                match record.status {
                    200..=299 => {
                        c.accepted += 1;
                        self.accepted.push(at);
                    }
                    429 => c.throttled += 1,
                    401 => c.unauthorized += 1,
                    500..=599 => c.faulted += 1,
                    _ => {}
                }
            }
        }
        self.records.push(record);
    }
}

/// `counters` completed with each tier's maximum over the `accepted` arrival times, computed
/// from the log alone (independently of the enforcement that produced it).
pub(crate) fn with_maxima(
    mut counters: SimStats,
    accepted: &[Timestamp],
    start: Timestamp,
    spec: &QuotaSpec,
) -> SimStats {
    let since: Vec<Duration> = accepted.iter().map(|t| t.since(start)).collect();
    counters.max_in_any_window = spec
        .tiers()
        .iter()
        .map(|t| {
            let max = match t.window {
                WindowKind::Rolling => max_in_window(&since, t.period.duration()),
                WindowKind::Calendar => max_in_calendar_period(accepted, t.period),
            };
            (t.to_string(), u64::try_from(max).unwrap_or(u64::MAX))
        })
        .collect();
    counters
}
