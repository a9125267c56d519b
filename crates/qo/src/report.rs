//! Counting what happened (an [`Observer`]) and the report `qo local` prints.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use qo_core::quota::WindowKind;
use qo_core::retry::GiveUp;
use qo_core::{CircuitPhase, Observation, Observer, QuotaSpec, Reason, Timestamp};
use qo_sim::{CallKind, CallRecord, LimitSchedule, SimStats};

use crate::cost::Bill;

/// Counts observations from the orchestrator and the worker.
#[derive(Debug, Default)]
pub struct Collector {
    inner: Mutex<Counts>,
}

/// The counts so far.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub dispatched: u64,
    /// API calls the worker made (every answer, and timeouts).
    pub calls: u64,
    pub succeeded: u64,
    pub throttled: u64,
    pub dead_lettered: u64,
    pub requeued: u64,
    pub duplicates: u64,
    pub invoke_failures: u64,
    pub health_checks: u64,
    /// Results delivered to their destination.
    pub results_delivered: u64,
    /// Results that went to the dead-letter queue, undelivered.
    pub results_undelivered: u64,
    pub circuit_openings: u64,
    pub circuit: Option<CircuitPhase>,
    pub success_times: Vec<Timestamp>,
    pub waits: Vec<Duration>,
    pub reasons: std::collections::BTreeMap<String, u64>,
    /// Decreases of the learned rate (the API throttled a call paced at the current rate).
    pub pace_decreases: u64,
    /// The latest pace: (rate paced at, configured ceiling), calls per second.
    pub pace: Option<(f64, f64)>,
}

impl Collector {
    /// A snapshot of the counts.
    pub fn counts(&self) -> Counts {
        self.inner.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Jobs that reached an end: succeeded or dead-lettered.
    pub fn finished(&self) -> u64 {
        self.inner
            .lock()
            .map(|c| c.succeeded + c.dead_lettered)
            .unwrap_or(0)
    }
}

impl Observer for Collector {
    fn observe(&self, o: Observation) {
        let Ok(mut c) = self.inner.lock() else {
            return;
        };
        match o {
            Observation::Dispatched { .. } => c.dispatched += 1,
            Observation::InvokeFailed { .. } => c.invoke_failures += 1,
            Observation::Called {
                status, at, wait, ..
            } => {
                c.calls += 1;
                if status.is_some_and(|s| (200..300).contains(&s)) {
                    c.success_times.push(at);
                    if let Some(w) = wait {
                        c.waits.push(w);
                    }
                }
            }
            Observation::Succeeded { .. } => c.succeeded += 1,
            Observation::Throttled { .. } => c.throttled += 1,
            Observation::Requeued { reason, .. } => {
                c.requeued += 1;
                *c.reasons
                    .entry(format!("re-queued: {}", key(&reason)))
                    .or_default() += 1;
            }
            Observation::DeadLettered { reason, .. } => {
                c.dead_lettered += 1;
                *c.reasons
                    .entry(format!("dead-lettered: {}", key(&reason)))
                    .or_default() += 1;
            }
            Observation::Duplicate { .. } => c.duplicates += 1,
            Observation::CredentialRejected { status, .. } => {
                *c.reasons
                    .entry(format!("credential rejected: HTTP {status}"))
                    .or_default() += 1;
            }
            Observation::Circuit { phase, .. } => {
                if phase == CircuitPhase::Open
                    && c.circuit != Some(CircuitPhase::Open)
                    && c.circuit != Some(CircuitPhase::HalfOpen)
                {
                    c.circuit_openings += 1;
                }
                c.circuit = Some(phase);
            }
            Observation::HealthCheckSent { .. } => c.health_checks += 1,
            Observation::ResultDelivered { .. } => c.results_delivered += 1,
            Observation::ResultUndelivered { .. } => c.results_undelivered += 1,
            Observation::PaceDecreased(_) => c.pace_decreases += 1,
            Observation::Pace {
                rate_per_s,
                ceiling_per_s,
            } => c.pace = Some((rate_per_s, ceiling_per_s)),
            Observation::HealthCheck { .. }
            | Observation::Backlog { .. }
            | Observation::Utilization(_)
            | Observation::BudgetExhausted { .. }
            | Observation::ApiRemaining { .. }
            | Observation::Swept { .. } => {}
        }
    }
}

/// Results seen beside the calls (`qo local --results`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ResultsSeen {
    /// Where they were written, one JSON line each.
    pub file: String,
    /// Results delivered (a result delivered twice counts twice).
    pub delivered: u64,
    /// Distinct jobs whose success was delivered.
    pub succeeded_delivered: u64,
    /// Results the destination kept refusing: dead-lettered, with the result in them.
    pub undelivered: u64,
    /// Successes with no result delivered or dead-lettered: should be 0.
    pub succeeded_without_result: u64,
}

impl ResultsSeen {
    /// What `delivered` says against the counts.
    pub fn of(
        delivered: &[qo_memory::DeliveredResult],
        counts: &Counts,
        file: &std::path::Path,
    ) -> Self {
        let succeeded: std::collections::BTreeSet<&str> = delivered
            .iter()
            .filter(|d| d.result.outcome == qo_core::result::ResultOutcome::Succeeded)
            .map(|d| d.result.job_id.as_str())
            .collect();
        let succeeded_delivered = succeeded.len() as u64;
        ResultsSeen {
            file: file.display().to_string(),
            delivered: delivered.len() as u64,
            succeeded_delivered,
            undelivered: counts.results_undelivered,
            succeeded_without_result: counts
                .succeeded
                .saturating_sub(succeeded_delivered + counts.results_undelivered),
        }
    }
}

/// A reason's group, so that like reasons count together: its kind, with the HTTP status or
/// the transport failure where it has one, and for a job given up on the last attempt's.
fn key(reason: &Reason) -> String {
    let kind = reason.kind();
    match reason {
        Reason::ServerError { status, .. }
        | Reason::FinalStatus { status, .. }
        | Reason::CredentialRefused { status }
        | Reason::CredentialPending { status } => format!("{kind}: HTTP {status}"),
        Reason::Transport { kind: t, .. } => format!("{kind}: {}", t.as_str()),
        Reason::GaveUp(GiveUp::Attempts { last, .. }) => format!("{kind}; last: {}", key(last)),
        _ => kind.to_string(),
    }
}

/// The report of a local run (`--json` prints it as one object).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub jobs: u64,
    pub succeeded: u64,
    /// 429 answers the worker saw.
    pub throttled: u64,
    pub dead_lettered: u64,
    pub requeued: u64,
    pub duplicates: u64,
    pub invoke_failures: u64,
    /// Wall time of the whole run, in seconds.
    pub duration_s: f64,
    /// Successful calls per second between the first and the last successful call.
    pub achieved_rate_per_s: f64,
    /// The tightest tier's rate.
    pub quota_rate_per_s: f64,
    /// achieved / quota, 0..1.
    pub utilization: f64,
    /// Enqueue to call, median, in milliseconds.
    pub p50_wait_ms: f64,
    /// Enqueue to call, 99th percentile, in milliseconds.
    pub p99_wait_ms: f64,
    /// Orchestrator runs (each hydrates from the state store, as a Lambda invocation does).
    pub runs: u64,
    pub circuit_openings: u64,
    pub health_checks: u64,
    pub quota: String,
    /// What the API saw, when it is the built-in one: the most accepted calls in any window
    /// of each tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_max_in_any_window: Option<Vec<(String, u64)>>,
    /// What the built-in API saw from each source address, when its limit has tiers per
    /// function (a pool whose functions each call from their own address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_by_source: Option<Vec<SourceCalls>>,
    /// Why jobs were re-queued or dead-lettered, with counts.
    pub reasons: std::collections::BTreeMap<String, u64>,
    /// Jobs SQS's redrive policy moved to the dead-letter queue by itself: untried, with no
    /// reason (their receive count passed `maxReceiveCount`).
    pub dead_lettered_by_sqs: u64,
    /// Jobs deleted by the queue's retention (the in-memory queue records them; SQS leaves no
    /// trace, so over SQS they show as unaccounted).
    pub expired: u64,
    /// Jobs whose worker event Lambda gave up on (event age or retries) and sent to the
    /// worker's on-failure destination; `qo redrive --worker-failures` brings them back.
    pub worker_failures: u64,
    /// Jobs still on the job or retry queue at the end (the run timed out).
    pub pending: u64,
    /// Jobs that are nowhere: not succeeded, dead-lettered, pending, or in a failure queue.
    pub unaccounted: u64,
    /// Successful calls per second as the API saw them: (successes - 1) over the span from
    /// the first to the last 2xx arrival at the built-in API; with `--api-url`, the worker's
    /// `achieved_rate_per_s`.
    pub effective_rate_per_s: f64,
    /// `effective_rate_per_s` over `quota_rate_per_s` (not clamped: above 1 is over the pace).
    pub effective_vs_quota: f64,
    /// 429 answers over all API calls: the built-in API's counts, or with `--api-url` the
    /// worker's (`throttled` over the calls it made).
    pub throttled_share: f64,
    /// The limit the built-in API enforced (`--api-limit`, or the quota).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_limit: Option<String>,
    /// The enforced limit's pacing rate, calls per second, averaged over time across the span
    /// of `effective_rate_per_s` (for a schedule: each spec's rate weighted by the part of the
    /// span it was in force).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_limit_rate_per_s: Option<f64>,
    /// `effective_rate_per_s` over `api_limit_rate_per_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_vs_api_limit: Option<f64>,
    /// Calls per second the built-in API's other client took of the limit (`--api-other-rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_other_rate_per_s: Option<f64>,
    /// `effective_rate_per_s` over our share: `api_limit_rate_per_s` minus
    /// `api_other_rate_per_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_vs_api_share: Option<f64>,
    /// API calls the built-in API answered, and how many of them 429.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_calls: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_throttled: Option<u64>,
    /// Results delivered beside the calls (`--results`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<ResultsSeen>,
    /// The remaining count in the last rate-limit headers the API sent (`--api-headers`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_remaining: Option<u64>,
    /// When it sent them, in seconds since the API started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_remaining_at_s: Option<f64>,
    /// Ours at that instant: the quota's tightest pacing tier's limit minus our successful
    /// calls in its window then (by the worker's call times), what we believed was left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub our_remaining: Option<u64>,
    /// How the pace followed each change of the built-in API's limit (`--api-limit` with
    /// `@SECOND` parts) that fell within the run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_limit_changes: Vec<LimitChange>,
    /// Times closed-loop pacing lowered the pace (a 429 of a call paced at the current rate, or
    /// the API's headers).
    pub pace_decreases: u64,
    /// The pace at the end, calls per second, when it was under the quota's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pace_per_s: Option<f64>,
    /// What a deployment would be billed for the run (in memory only: over `--aws-endpoint`
    /// the requests are not counted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bill: Option<Bill>,
    /// How the orchestrator dispatched: calls against worker invocations, and what bounded
    /// the rate (summed over the runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<DispatchStats>,
}

/// The orchestrator's dispatch over all runs, from their [`qo_orchestrator::RunReport`]s.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DispatchStats {
    /// Jobs handed to the worker (each a call at its slot).
    pub calls: u64,
    /// Worker invocations (a batch of jobs is one).
    pub invocations: u64,
    /// `calls / invocations`.
    pub calls_per_invocation: f64,
    /// Dispatch passes (each hands out every slot due before the next tick).
    pub passes: u64,
    /// `invocations / passes`.
    pub invocations_per_pass: f64,
    /// `BATCH_MAX_JOBS` (`--batch-max-jobs`).
    pub batch_max_jobs: usize,
    /// `BATCH_WINDOW_MS` (`--batch-window-ms`).
    pub batch_window_ms: u64,
    /// The worker's environments at most (`--worker-concurrency`; `None`: unbounded).
    pub worker_concurrency: Option<usize>,
    /// Why dispatch waited: counts and milliseconds per reason.
    pub waits: qo_orchestrator::Waits,
}

impl DispatchStats {
    /// Adds one run's counts.
    pub fn add(&mut self, r: &qo_orchestrator::RunReport) {
        self.calls += r.dispatched;
        self.invocations += r.invocations;
        self.passes += r.dispatch_passes;
        for (sum, one) in [
            (&mut self.waits.slot, r.waits.slot),
            (&mut self.waits.in_flight, r.waits.in_flight),
            (&mut self.waits.worker_cap, r.waits.worker_cap),
            (&mut self.waits.receive, r.waits.receive),
        ] {
            sum.count += one.count;
            sum.ms += one.ms;
        }
        self.calls_per_invocation = ratio3(self.calls, self.invocations);
        self.invocations_per_pass = ratio3(self.invocations, self.passes);
    }
}

/// What the built-in API knows, for the report.
#[derive(Clone, Debug)]
pub struct ApiSide {
    /// The limit it enforced.
    pub limit: LimitSchedule,
    /// Its other client's rate, calls per second.
    pub other_rate_per_s: f64,
    /// Its counters.
    pub stats: SimStats,
    /// Every call it answered.
    pub records: Vec<CallRecord>,
}

/// The calls of one source address, as the built-in API saw them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SourceCalls {
    /// The address.
    pub source: String,
    /// API calls from it (every answer).
    pub calls: u64,
    /// Of them, accepted (2xx).
    pub accepted: u64,
    /// For each tier per function: the most accepted calls from this source in any window of
    /// the tier's length (counted rolling, calendar tiers too).
    pub max_in_any_window: Vec<(String, u64)>,
}

/// Each source's calls, when the API's limit (at its start) has tiers per function.
fn by_source(api: &ApiSide) -> Option<Vec<SourceCalls>> {
    let own = api.limit.per_source()?;
    let mut sources: std::collections::BTreeMap<std::net::IpAddr, (u64, Vec<Duration>)> =
        std::collections::BTreeMap::new();
    for r in api.records.iter().filter(|r| r.kind == CallKind::Api) {
        let Some(source) = r.source else { continue };
        let entry = sources.entry(source).or_default();
        entry.0 += 1;
        if (200..300).contains(&r.status) {
            entry.1.push(r.at);
        }
    }
    let calls = sources
        .into_iter()
        .map(|(source, (calls, ok))| SourceCalls {
            source: source.to_string(),
            calls,
            accepted: ok.len() as u64,
            max_in_any_window: own
                .tiers()
                .iter()
                .map(|t| {
                    let most = qo_sim::max_in_window(&ok, t.period.duration());
                    (t.to_string(), most as u64)
                })
                .collect(),
        })
        .collect();
    Some(calls)
}

/// How the pace followed one change of the built-in API's limit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LimitChange {
    /// When the limit changed, seconds since the API started.
    pub at_s: f64,
    /// The rate calls should run at from then on, calls per second: the new limit's pacing
    /// rate less the other client's, at most the quota's.
    pub target_per_s: f64,
    /// Seconds from the change to the first [`FOLLOW_WINDOW`] whose calls (answered 429 or
    /// not) ran at 95% to 102% of `target_per_s`; none when that never happened in the run.
    pub followed_after_s: Option<f64>,
}

/// The window over which [`LimitChange::followed_after_s`] judges the call rate.
pub const FOLLOW_WINDOW: Duration = Duration::from_secs(5);

/// The first whole second after `at` from which the `calls` (sorted offsets) in
/// [`FOLLOW_WINDOW`] ran within 95% to 102% of `target` calls per second.
fn followed_after(calls: &[Duration], at: Duration, target: f64) -> Option<f64> {
    let last = *calls.last()?;
    let window = FOLLOW_WINDOW.as_secs_f64();
    (0u64..)
        .map(|k| at + Duration::from_secs(k))
        .take_while(|from| *from + FOLLOW_WINDOW <= last)
        .find(|from| {
            let to = *from + FOLLOW_WINDOW;
            let a = calls.partition_point(|c| c < from);
            let b = calls.partition_point(|c| *c < to);
            let rate = (b - a) as f64 / window;
            (0.95 * target..=1.02 * target).contains(&rate)
        })
        .map(|from| round3((from - at).as_secs_f64()))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `a / b` to three decimals, 0 when `b` is.
fn ratio3(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        round3(a as f64 / b as f64)
    }
}

/// `(n - 1) / span` of sorted times, 0 for fewer than two or no span.
fn rate_over_span(n: usize, span: Duration) -> f64 {
    if n > 1 && !span.is_zero() {
        (n - 1) as f64 / span.as_secs_f64()
    } else {
        0.0
    }
}

/// The quota's tightest tier's limit minus our `times` in its window ending at `t`.
fn remaining_at(quota: &QuotaSpec, times: &[Timestamp], t: Timestamp) -> u64 {
    let tier = qo_sim::enforce::tightest_tier(quota);
    let used = match tier.window {
        WindowKind::Rolling => {
            let p = tier.period.duration();
            times.iter().filter(|&&c| c <= t && t.since(c) < p).count()
        }
        WindowKind::Calendar => {
            let start = qo_sim::calendar::period_start(tier.period, t);
            times
                .iter()
                .filter(|&&c| c <= t && qo_sim::calendar::period_start(tier.period, c) == start)
                .count()
        }
    };
    u64::from(tier.limit.get()).saturating_sub(used as u64)
}

/// Where jobs ended beyond what the orchestrator and the worker observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Elsewhere {
    /// Moved to the dead-letter queue by the redrive policy.
    pub dead_lettered_by_sqs: u64,
    /// Deleted by retention.
    pub expired: u64,
    /// In the worker's on-failure destination.
    pub worker_failures: u64,
    /// Still on a queue.
    pub pending: u64,
}

impl Elsewhere {
    /// Jobs that reached an end outside the worker's report.
    pub fn ended(&self) -> u64 {
        self.dead_lettered_by_sqs + self.expired + self.worker_failures
    }
}

impl Report {
    /// Builds the report from the counts.
    pub fn new(
        jobs: u64,
        counts: &Counts,
        duration: Duration,
        quota: &qo_core::QuotaSpec,
        runs: u64,
    ) -> Report {
        let mut times = counts.success_times.clone();
        times.sort();
        let achieved = match (times.first(), times.last()) {
            (Some(a), Some(b)) => rate_over_span(times.len(), b.since(*a)),
            _ => 0.0,
        };
        let quota_rate = quota.pacing_rate_per_s();
        let mut waits: Vec<f64> = counts
            .waits
            .iter()
            .map(|w| w.as_secs_f64() * 1000.0)
            .collect();
        waits.sort_by(f64::total_cmp);
        let pct = |p: f64| -> f64 {
            if waits.is_empty() {
                return 0.0;
            }
            let i = ((p * waits.len() as f64).ceil() as usize).clamp(1, waits.len()) - 1;
            (waits[i] * 10.0).round() / 10.0
        };
        let calls = counts.calls.max(counts.throttled);
        Report {
            jobs,
            succeeded: counts.succeeded,
            throttled: counts.throttled,
            dead_lettered: counts.dead_lettered,
            requeued: counts.requeued,
            duplicates: counts.duplicates,
            invoke_failures: counts.invoke_failures,
            duration_s: round3(duration.as_secs_f64()),
            achieved_rate_per_s: round3(achieved),
            quota_rate_per_s: round3(quota_rate),
            utilization: round3((achieved / quota_rate).clamp(0.0, 1.0)),
            p50_wait_ms: pct(0.50),
            p99_wait_ms: pct(0.99),
            runs,
            circuit_openings: counts.circuit_openings,
            health_checks: counts.health_checks,
            quota: quota.to_string(),
            api_max_in_any_window: None,
            api_by_source: None,
            reasons: counts.reasons.clone(),
            dead_lettered_by_sqs: 0,
            expired: 0,
            worker_failures: 0,
            pending: 0,
            unaccounted: 0,
            effective_rate_per_s: round3(achieved),
            effective_vs_quota: round3(achieved / quota_rate),
            throttled_share: ratio3(counts.throttled, calls),
            api_limit: None,
            api_limit_rate_per_s: None,
            effective_vs_api_limit: None,
            api_other_rate_per_s: None,
            effective_vs_api_share: None,
            api_calls: None,
            api_throttled: None,
            api_remaining: None,
            results: None,
            api_remaining_at_s: None,
            our_remaining: None,
            api_limit_changes: Vec::new(),
            dispatch: None,
            pace_decreases: counts.pace_decreases,
            pace_per_s: counts
                .pace
                .filter(|(rate, ceiling)| rate < ceiling)
                .map(|(rate, _)| round3(rate)),
            bill: None,
        }
    }

    /// Adds what the built-in API saw: the effective rate and the 429 share by its own
    /// counts, both against the limit it enforced, and its last remaining count beside ours.
    /// `started_at` is the API's start (the records' and the schedule's origin), `quota` the
    /// one the orchestrator was given, `counts` the worker's.
    pub fn api_side(
        &mut self,
        api: &ApiSide,
        started_at: Timestamp,
        quota: &QuotaSpec,
        counts: &Counts,
    ) {
        self.api_max_in_any_window = Some(api.stats.max_in_any_window.clone());
        self.api_by_source = by_source(api);
        let ok: Vec<Duration> = api
            .records
            .iter()
            .filter(|r| r.kind == CallKind::Api && (200..300).contains(&r.status))
            .map(|r| r.at)
            .collect();
        let (first, last) = match (ok.first(), ok.last()) {
            (Some(&a), Some(&b)) => (a, b),
            _ => (Duration::ZERO, Duration::ZERO),
        };
        let effective = rate_over_span(ok.len(), last.saturating_sub(first));
        let mut limit_rate = api.limit.mean_pacing_rate_per_s(first, last);
        // Tiers per source address cap the pool at their rate times its sources.
        if let (Some(sources), Some(own)) = (&self.api_by_source, api.limit.per_source())
            && !sources.is_empty()
        {
            limit_rate = limit_rate.min(own.pacing_rate_per_s() * sources.len() as f64);
        }
        let share = limit_rate - api.other_rate_per_s;
        self.effective_rate_per_s = round3(effective);
        self.effective_vs_quota = round3(effective / self.quota_rate_per_s);
        self.api_limit = Some(api.limit.to_string());
        self.api_limit_rate_per_s = Some(round3(limit_rate));
        self.effective_vs_api_limit = Some(round3(effective / limit_rate));
        self.api_other_rate_per_s = Some(api.other_rate_per_s);
        self.effective_vs_api_share = (share > 0.0).then(|| round3(effective / share));
        self.api_calls = Some(api.stats.calls);
        self.api_throttled = Some(api.stats.throttled);
        self.throttled_share = ratio3(api.stats.throttled, api.stats.calls);
        let calls: Vec<Duration> = api
            .records
            .iter()
            .filter(|r| r.kind == CallKind::Api)
            .map(|r| r.at)
            .collect();
        self.api_limit_changes = api
            .limit
            .segments()
            .skip(1)
            .filter(|(at, _)| calls.last().is_some_and(|l| at < l))
            .map(|(at, spec)| {
                let target =
                    (spec.pacing_rate_per_s() - api.other_rate_per_s).min(self.quota_rate_per_s);
                LimitChange {
                    at_s: round3(at.as_secs_f64()),
                    target_per_s: round3(target),
                    followed_after_s: followed_after(&calls, at, target),
                }
            })
            .collect();
        if let Some(r) = api.records.iter().rev().find(|r| r.remaining.is_some()) {
            self.api_remaining = r.remaining;
            self.api_remaining_at_s = Some(round3(r.at.as_secs_f64()));
            self.our_remaining = Some(remaining_at(
                quota,
                &counts.success_times,
                started_at.plus(r.at),
            ));
        }
    }

    /// Adds where the other jobs are, and counts the jobs that are nowhere.
    pub fn account(&mut self, elsewhere: Elsewhere) {
        self.dead_lettered_by_sqs = elsewhere.dead_lettered_by_sqs;
        self.expired = elsewhere.expired;
        self.worker_failures = elsewhere.worker_failures;
        self.pending = elsewhere.pending;
        let known = self.succeeded + self.dead_lettered + elsewhere.ended() + elsewhere.pending;
        self.unaccounted = self.jobs.saturating_sub(known);
    }

    /// Why the run failed its jobs, if it did: jobs lost, expired, or left untried in a
    /// dead-letter or failure queue without a reason of ours. `None` when every job succeeded,
    /// was dead-lettered with its reason, or is still pending.
    pub fn lost(&self) -> Option<String> {
        let parts: Vec<String> = [
            (self.unaccounted, "unaccounted for"),
            (self.expired, "deleted by the queue's retention"),
            (
                self.dead_lettered_by_sqs,
                "moved to the dead-letter queue by SQS's redrive policy, untried",
            ),
            (
                self.worker_failures,
                "in the worker's on-failure queue (Lambda gave up on their events)",
            ),
            (
                self.results
                    .as_ref()
                    .map_or(0, |r| r.succeeded_without_result),
                "succeeded with no result delivered or dead-lettered",
            ),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// The human form.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let line = |s: &mut String, k: &str, v: String| s.push_str(&format!("  {k:<22} {v}\n"));
        s.push_str("qo local: report\n");
        line(&mut s, "quota", self.quota.clone());
        line(&mut s, "jobs", self.jobs.to_string());
        line(&mut s, "succeeded", self.succeeded.to_string());
        line(&mut s, "throttled (429)", self.throttled.to_string());
        line(&mut s, "dead-lettered", self.dead_lettered.to_string());
        line(&mut s, "re-queued", self.requeued.to_string());
        for (k, v) in [
            ("dead-lettered by SQS", self.dead_lettered_by_sqs),
            ("expired (retention)", self.expired),
            ("worker failures", self.worker_failures),
            ("still pending", self.pending),
            ("unaccounted for", self.unaccounted),
        ] {
            if v > 0 {
                line(&mut s, k, v.to_string());
            }
        }
        if let Some(r) = &self.results {
            line(
                &mut s,
                "results",
                format!(
                    "{} delivered for {} jobs ended ({} undelivered, in the dead-letter \
                     queue); {} successes without one; written to {}",
                    r.delivered,
                    self.succeeded + self.dead_lettered,
                    r.undelivered,
                    r.succeeded_without_result,
                    r.file
                ),
            );
        }
        line(
            &mut s,
            "duration",
            format!("{:.1} s in {} run(s)", self.duration_s, self.runs),
        );
        line(
            &mut s,
            "rate",
            format!(
                "{:.3}/s of {:.3}/s (utilization {:.3})",
                self.achieved_rate_per_s, self.quota_rate_per_s, self.utilization
            ),
        );
        line(
            &mut s,
            "wait p50 / p99",
            format!("{:.0} ms / {:.0} ms", self.p50_wait_ms, self.p99_wait_ms),
        );
        if let Some(d) = &self.dispatch {
            line(
                &mut s,
                "worker invocations",
                format!(
                    "{} for {} calls ({:.3} calls each; {:.3} invocations a pass)",
                    d.invocations, d.calls, d.calls_per_invocation, d.invocations_per_pass
                ),
            );
            let w = &d.waits;
            line(
                &mut s,
                "dispatch waited",
                format!(
                    "slot {} ms, in-flight {} ms, worker cap {} ms, receive {} ms",
                    w.slot.ms, w.in_flight.ms, w.worker_cap.ms, w.receive.ms
                ),
            );
        }
        line(
            &mut s,
            "circuit openings",
            format!(
                "{} ({} health checks)",
                self.circuit_openings, self.health_checks
            ),
        );
        for (reason, n) in &self.reasons {
            line(&mut s, "", format!("{n} x {reason}"));
        }
        line(
            &mut s,
            "effective rate",
            format!(
                "{:.3}/s, {:.3} of the quota's pace",
                self.effective_rate_per_s, self.effective_vs_quota
            ),
        );
        if let (Some(limit), Some(rate), Some(vs)) = (
            &self.api_limit,
            self.api_limit_rate_per_s,
            self.effective_vs_api_limit,
        ) {
            line(
                &mut s,
                "API limit",
                format!("{limit}: {rate:.3}/s over the span, {vs:.3} of it"),
            );
        }
        if let Some(b) = &self.bill {
            let per_million = b
                .per_million_calls_usd
                .map_or("none".to_string(), |p| format!("${p:.2}"));
            line(
                &mut s,
                "billed (list prices)",
                format!(
                    "${:.6}: {} worker invocations, {} SQS requests, {} WRU, {} RRU; \
                     {per_million} per million calls (prices of {})",
                    b.total_usd,
                    b.usage.worker_invocations,
                    b.usage.sqs_requests,
                    b.usage.dynamodb_write_units,
                    b.usage.dynamodb_read_units,
                    b.prices_as_of
                ),
            );
        }
        for c in &self.api_limit_changes {
            let followed = c
                .followed_after_s
                .map_or("not within the run".to_string(), |f| {
                    format!("{f:.0} s later")
                });
            line(
                &mut s,
                "API limit change",
                format!(
                    "at {:.0} s to {:.3}/s for us: the pace followed {followed}",
                    c.at_s, c.target_per_s
                ),
            );
        }
        if let Some(other) = self.api_other_rate_per_s.filter(|o| *o > 0.0) {
            let vs = self
                .effective_vs_api_share
                .map_or("none".to_string(), |v| format!("{v:.3}"));
            line(
                &mut s,
                "API's other client",
                format!("{other:.3}/s; of our share: {vs}"),
            );
        }
        line(
            &mut s,
            "pace",
            match self.pace_per_s {
                Some(p) => format!(
                    "{p:.3}/s at the end (lowered {} times)",
                    self.pace_decreases
                ),
                None => format!(
                    "the quota's at the end (lowered {} times)",
                    self.pace_decreases
                ),
            },
        );
        line(
            &mut s,
            "429 share",
            format!("{:.3} of API calls", self.throttled_share),
        );
        if let (Some(api), Some(ours), Some(at)) = (
            self.api_remaining,
            self.our_remaining,
            self.api_remaining_at_s,
        ) {
            line(
                &mut s,
                "remaining",
                format!("API said {api}, we counted {ours} (at {at:.1} s)"),
            );
        }
        if let Some(w) = &self.api_max_in_any_window {
            for (tier, max) in w {
                line(
                    &mut s,
                    "API max in a window",
                    format!("{max} calls for {tier}"),
                );
            }
        }
        for source in self.api_by_source.iter().flatten() {
            let maxima: Vec<String> = source
                .max_in_any_window
                .iter()
                .map(|(tier, max)| format!("{max} in a window of {tier}"))
                .collect();
            line(
                &mut s,
                "API, per source",
                format!(
                    "{}: {} calls, {} accepted; {}",
                    source.source,
                    source.calls,
                    source.accepted,
                    maxima.join(", ")
                ),
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(jobs: u64, succeeded: u64, dead_lettered: u64) -> Report {
        let counts = Counts {
            succeeded,
            dead_lettered,
            ..Counts::default()
        };
        let quota: qo_core::QuotaSpec = "20/s".parse().expect("quota");
        Report::new(jobs, &counts, Duration::from_secs(1), &quota, 1)
    }

    /// A success whose result was neither delivered nor dead-lettered fails the run, and the
    /// report sets results beside the successes.
    #[test]
    fn a_success_without_its_result_is_lost() {
        use qo_core::result::{JobResult, ResultOutcome};
        let mut r = report(3, 3, 0);
        let one = |id: &str| qo_memory::DeliveredResult {
            destination: "orders".into(),
            result: JobResult::new(id, ResultOutcome::Succeeded),
        };
        // Two jobs' results, one of them delivered twice (at least once counts once).
        let delivered = [one("a"), one("b"), one("b")];
        let counts = Counts {
            succeeded: 3,
            ..Counts::default()
        };
        let seen = ResultsSeen::of(&delivered, &counts, std::path::Path::new("r.jsonl"));
        assert_eq!((seen.delivered, seen.succeeded_delivered), (3, 2));
        assert_eq!(seen.succeeded_without_result, 1);
        r.results = Some(seen);
        let why = r.lost().expect("a result is missing");
        assert!(why.contains("1 succeeded with no result"), "{why}");
        let all = [one("a"), one("b"), one("c")];
        r.results = Some(ResultsSeen::of(
            &all,
            &counts,
            std::path::Path::new("r.jsonl"),
        ));
        assert_eq!(r.lost(), None);
    }

    #[test]
    fn every_job_is_somewhere_or_counted_as_nowhere() {
        let mut r = report(10, 6, 1);
        r.account(Elsewhere {
            dead_lettered_by_sqs: 1,
            expired: 1,
            worker_failures: 0,
            pending: 0,
        });
        assert_eq!(r.unaccounted, 1, "10 - 6 - 1 - 1 - 1");
        let why = r.lost().expect("jobs were lost");
        assert!(why.contains("1 unaccounted for"), "{why}");
        assert!(why.contains("1 deleted by the queue's retention"), "{why}");
        assert!(why.contains("redrive policy"), "{why}");
        assert!(r.human().contains("expired (retention)"));
    }

    #[test]
    fn the_api_side_measures_against_the_limit_in_force() {
        let quota: QuotaSpec = "10/s".parse().expect("quota");
        let start = Timestamp::from_secs(1_700_000_000);
        // Our successes every 200 ms for 10 s (5/s), a 429 every other second.
        let mut records = Vec::new();
        let mut success_times = Vec::new();
        for k in 0..=50u64 {
            let at = Duration::from_millis(200 * k);
            success_times.push(start.plus(at));
            records.push(CallRecord {
                at,
                kind: CallKind::Api,
                method: "GET".into(),
                path: format!("/items/{k}"),
                status: 200,
                remaining: Some(3),
                source: None,
            });
            if k % 10 == 5 {
                records.push(CallRecord {
                    status: 429,
                    remaining: Some(0),
                    ..records[records.len() - 1].clone()
                });
            }
        }
        let counts = Counts {
            succeeded: 51,
            calls: 56,
            throttled: 5,
            success_times,
            ..Counts::default()
        };
        let mut r = Report::new(51, &counts, Duration::from_secs(10), &quota, 1);
        assert_eq!(r.effective_rate_per_s, 5.0);
        assert_eq!(r.effective_vs_quota, 0.5);
        assert_eq!(r.throttled_share, round3(5.0 / 56.0));
        let api = ApiSide {
            limit: "10/s;5/s@5".parse().expect("schedule"),
            other_rate_per_s: 2.5,
            stats: SimStats {
                calls: 56,
                accepted: 51,
                throttled: 5,
                ..SimStats::default()
            },
            records,
        };
        r.api_side(&api, start, &quota, &counts);
        assert_eq!(r.effective_rate_per_s, 5.0);
        // 10/s for the first 5 s of the span, 5/s for the last 5.
        assert_eq!(r.api_limit_rate_per_s, Some(7.5));
        assert_eq!(r.effective_vs_api_limit, Some(round3(5.0 / 7.5)));
        assert_eq!(r.effective_vs_api_share, Some(1.0));
        assert_eq!(r.api_limit.as_deref(), Some("10/s;5/s@5"));
        assert_eq!(r.throttled_share, round3(5.0 / 56.0));
        assert_eq!(
            (r.api_remaining, r.api_remaining_at_s),
            (Some(3), Some(10.0))
        );
        // At 10 s, (9 s, 10 s] holds our calls at 9.2, 9.4, 9.6, 9.8 and 10 s.
        assert_eq!(r.our_remaining, Some(5));
        let human = r.human();
        assert!(human.contains("API said 3, we counted 5"), "{human}");
        assert!(human.contains("10/s;5/s@5: 7.500/s"), "{human}");
        let json = serde_json::to_value(&r).expect("json");
        for k in [
            "effective_rate_per_s",
            "effective_vs_quota",
            "throttled_share",
            "api_limit_rate_per_s",
            "effective_vs_api_limit",
            "api_remaining",
            "our_remaining",
        ] {
            assert!(json.get(k).is_some(), "{k} in {json}");
        }
    }

    #[test]
    fn a_limit_change_is_followed_when_a_window_of_calls_runs_at_the_new_rate() {
        // 20/s for 10 s, then 10/s from 13 s on: the rate was 10/s in [13, 18) but not before.
        let mut calls: Vec<Duration> = (0..200).map(|k| Duration::from_millis(50 * k)).collect();
        calls.extend((0..20).map(|k| Duration::from_millis(10_000 + 150 * k)));
        calls.extend((0..100).map(|k| Duration::from_millis(13_000 + 100 * k)));
        assert_eq!(
            followed_after(&calls, Duration::from_secs(10), 10.0),
            Some(3.0)
        );
        // Never 30/s: not followed.
        assert_eq!(followed_after(&calls, Duration::from_secs(10), 30.0), None);
        // Still 20/s right at a change to 20/s.
        assert_eq!(
            followed_after(&calls, Duration::from_secs(0), 20.0),
            Some(0.0)
        );
    }

    #[test]
    fn succeeded_dead_lettered_with_a_reason_or_pending_is_no_loss() {
        let mut r = report(10, 7, 2);
        r.account(Elsewhere {
            pending: 1,
            ..Elsewhere::default()
        });
        assert_eq!(r.unaccounted, 0);
        assert_eq!(r.lost(), None);
    }
}
