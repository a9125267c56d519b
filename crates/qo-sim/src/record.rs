//! What the simulator saw: one record per call, and the statistics derived from them.

use std::time::Duration;

use qo_core::quota::WindowKind;
use qo_core::{QuotaSpec, Timestamp};
use serde::{Deserialize, Serialize};

use crate::LimitSchedule;
use crate::window::{
    max_in_calendar_period, max_in_calendar_period_ending_within, max_in_window,
    max_in_window_ending_within,
};

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
    /// The remaining count its rate-limit headers reported, when it sent them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// The address the call came from, when the limit has tiers per source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<std::net::IpAddr>,
}

/// One segment of the enforced limit and the densest windows it governed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InForce {
    /// From when the segment's spec is in force, in milliseconds since the server started.
    pub from_ms: u64,
    /// The spec then in force, as written.
    pub spec: String,
    /// For each of its tiers: the most calls accepted (ours and the other client's) in any
    /// window ending at an accepted call in the segment, the calls before the segment in that
    /// window included (the enforcer counts them). Never above the tier's limit.
    pub max_in_any_window: Vec<(String, u64)>,
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
    /// For each tier of the quota the client was given (as written, e.g. `20/s`): the largest
    /// number of our accepted calls (not the other client's) in any window of the tier,
    /// rolling (half-open) or calendar (UTC period). Never above the limit when the simulator
    /// enforces the quota; with another limit, never above the tighter of the two, in each
    /// window, as long as the client keeps to its quota.
    pub max_in_any_window: Vec<(String, u64)>,
    /// Admissions the other client on the same key took (not HTTP calls, not in `calls`).
    #[serde(default)]
    pub other_accepted: u64,
    /// The enforced limit, segment by segment, with the densest window of each of its tiers
    /// over every accepted call, ours and the other client's: the check that the limit in
    /// force held.
    #[serde(default)]
    pub max_in_force: Vec<InForce>,
}

impl SimStats {
    /// The maximum for the tier written as `tier` (e.g. `"20/s"`), if the spec has it.
    pub fn max_for(&self, tier: &str) -> Option<u64> {
        self.max_in_any_window
            .iter()
            .find(|(t, _)| t == tier)
            .map(|&(_, m)| m)
    }

    /// The largest count over the segments of the enforced limit for the tier written as
    /// `tier` (e.g. `"10/s"`), over the segments whose spec has it.
    pub fn max_in_force_for(&self, tier: &str) -> Option<u64> {
        self.max_in_force
            .iter()
            .flat_map(|f| &f.max_in_any_window)
            .filter(|(t, _)| t == tier)
            .map(|&(_, m)| m)
            .max()
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
    /// Admission times of the other client's calls, in order.
    pub(crate) other: Vec<Timestamp>,
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

/// `counters` completed with each tier's maximum over the `accepted` arrival times, and each
/// segment of the enforced `limit` with its maxima over all admissions (`accepted` and
/// `other`), computed from the logs alone (independently of the enforcement that produced
/// them).
pub(crate) fn with_maxima(
    mut counters: SimStats,
    accepted: &[Timestamp],
    other: &[Timestamp],
    start: Timestamp,
    spec: &QuotaSpec,
    limit: &LimitSchedule,
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
    let mut all: Vec<Timestamp> = accepted.iter().chain(other).copied().collect();
    all.sort_unstable();
    let all_since: Vec<Duration> = all.iter().map(|t| t.since(start)).collect();
    let segments: Vec<(Duration, &QuotaSpec)> = limit.segments().collect();
    counters.other_accepted = other.len() as u64;
    counters.max_in_force = segments
        .iter()
        .enumerate()
        .map(|(i, &(from, seg))| {
            let to = segments.get(i + 1).map_or(Duration::MAX, |s| s.0);
            let max_in_any_window = seg
                .tiers()
                .iter()
                .map(|t| {
                    let max = match t.window {
                        WindowKind::Rolling => {
                            max_in_window_ending_within(&all_since, t.period.duration(), from..to)
                        }
                        WindowKind::Calendar => max_in_calendar_period_ending_within(
                            &all,
                            t.period,
                            start.plus(from)..start.plus(to),
                        ),
                    };
                    (t.to_string(), u64::try_from(max).unwrap_or(u64::MAX))
                })
                .collect();
            InForce {
                from_ms: u64::try_from(from.as_millis()).unwrap_or(u64::MAX),
                spec: seg.to_string(),
                max_in_any_window,
            }
        })
        .collect();
    counters
}
