//! Closed-loop pacing on the paused clock: the API's real limit differs from the configured
//! quota, and the pace follows it (issue: a 429 is a pacing signal).
//!
//! The API here is a strict rolling window (at most `limit` accepted calls in any second,
//! `Retry-After` in whole seconds, at least 1, as the simulator answers), whose limit can
//! change with time. The stand-in worker writes each 429 to the control record as the worker
//! does (back-off and the throttle counter).
//!
//! The stand-in calls every job of a batch at its slot, with none of the worker's holds (a
//! batch's later slots held back after a 429 of its own or on the shared back-off it reads), so
//! the runs that follow the limit go one job per event (`BATCH_MAX_JOBS` 1; the default, 20,
//! batches only while the pace is settled, and goes one job per event too while it follows
//! the limit): they test the controller. The closed loop with batches and the real
//! worker is tested in `qo`'s system tests and measured with `qo local` (docs/design.md's Batched
//! invocations section).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Harness, Verdict, config, max_in_window, start};
use qo_core::ports::{RecordKey, load_record};
use qo_core::{ApiWindow, QuotaState, Timestamp};
use qo_memory::InvokerOptions;
use qo_orchestrator::{OrchestratorConfig, RunReport};

/// A strict rolling-window API whose limit is a function of the time since the start, with
/// optionally another client of the same key calling evenly, and rate-limit headers.
struct RollingApi {
    accepted: VecDeque<Timestamp>,
    limit_at: Box<dyn Fn(Duration) -> usize + Send>,
    /// Calls per second another client makes (each admitted when the window has room).
    other_per_s: u64,
    others_made: u64,
    /// Whether answers carry the window's limit and remaining count.
    headers: bool,
    /// The limit of the previous answer: as the worker does, a success reports the window
    /// when few calls are left or when the limit changed.
    last_limit: usize,
}

impl RollingApi {
    fn new(limit_at: impl Fn(Duration) -> usize + Send + 'static) -> Self {
        RollingApi {
            accepted: VecDeque::new(),
            limit_at: Box::new(limit_at),
            other_per_s: 0,
            others_made: 0,
            headers: false,
            last_limit: 0,
        }
    }

    fn answer(&mut self, t: Timestamp) -> Verdict {
        let limit = (self.limit_at)(t.since(start()));
        let changed = self.last_limit != 0 && self.last_limit != limit;
        self.last_limit = limit;
        let second = Duration::from_secs(1);
        let drop_old = |accepted: &mut VecDeque<Timestamp>, at: Timestamp| {
            while accepted.front().is_some_and(|a| a.plus(second) <= at) {
                accepted.pop_front();
            }
        };
        // The other client's calls due by now, in order (a refused one is not retried).
        if let Some(gap_us) = 1_000_000u64.checked_div(self.other_per_s) {
            loop {
                let due = start().plus(Duration::from_micros(self.others_made * gap_us));
                if due > t {
                    break;
                }
                drop_old(&mut self.accepted, due);
                if self.accepted.len() < limit {
                    self.accepted.push_back(due);
                }
                self.others_made += 1;
            }
        }
        drop_old(&mut self.accepted, t);
        if self.accepted.len() < limit {
            self.accepted.push_back(t);
            let remaining = (limit - self.accepted.len()) as u64;
            if self.headers && (changed || remaining <= (limit as u64 / 5).max(1)) {
                let oldest = self.accepted.front().copied().unwrap_or(t);
                return Verdict::SucceedLow(ApiWindow {
                    limit: Some(limit as u64),
                    window_s: None,
                    remaining,
                    // X-RateLimit-Reset in whole seconds, rounded up, as the simulator sends.
                    reset_at: t.plus(Duration::from_secs(
                        oldest.plus(second).since(t).as_secs().max(1),
                    )),
                    observed_at: t,
                });
            }
            return Verdict::Succeed;
        }
        // Until enough of the window leaves it, in whole seconds (at least 1).
        let excess = self.accepted.len() + 1 - limit.max(1);
        let frees = self.accepted[excess - 1].plus(second).since(t);
        let secs = frees.as_secs() + u64::from(frees.subsec_nanos() > 0);
        Verdict::Throttle(Duration::from_secs(secs.max(1)))
    }
}

fn harness(limit_at: impl Fn(Duration) -> usize + Send + 'static) -> Harness {
    harness_of(RollingApi::new(limit_at))
}

fn harness_of(api: RollingApi) -> Harness {
    let api = Arc::new(Mutex::new(api));
    Harness::with_api(
        move |_, t| api.lock().expect("api").answer(t),
        InvokerOptions::template(),
    )
}

/// A limit of 20/s that halves to 10/s from 30 s to 90 s after the start.
fn halving(t: Duration) -> usize {
    if (30..90).contains(&t.as_secs()) {
        10
    } else {
        20
    }
}

/// Enqueues `jobs` jobs and drives runs of `run_s` seconds at a quota of 20/s until every job
/// succeeded or 900 s passed; returns the configuration and the runs' reports.
async fn drive_all(h: &Harness, jobs: usize, run_s: u64) -> (OrchestratorConfig, Vec<RunReport>) {
    h.enqueue(jobs);
    let mut cfg = config("20/s");
    cfg.batch_max_jobs = 1;
    let reports = h
        .drive(
            &cfg,
            Duration::from_secs(run_s),
            jobs,
            Duration::from_secs(900),
        )
        .await;
    (cfg, reports)
}

/// The halving runs: 2,400 jobs (runs of 600 s) through `h`, each of which must succeed, with
/// nothing dead-lettered. The configuration, the call times, and the seconds (after the
/// start) of the 429s.
async fn drive_halving(h: &Harness) -> (OrchestratorConfig, Vec<Timestamp>, Vec<u64>) {
    let (cfg, _) = drive_all(h, 2_400, 600).await;
    assert_eq!(h.succeeded().len(), 2_400);
    assert_eq!(h.dead(), 0);
    (cfg, h.calls(), throttled_secs(h))
}

/// Calls per second from `from` to `to` seconds after the start.
fn calls_per_s(calls: &[Timestamp], from: u64, to: u64) -> f64 {
    let (a, b) = (
        start().plus(Duration::from_secs(from)),
        start().plus(Duration::from_secs(to)),
    );
    calls.iter().filter(|c| **c >= a && **c < b).count() as f64 / (to - from) as f64
}

/// The seconds after the start at which calls were answered 429.
fn throttled_secs(h: &Harness) -> Vec<u64> {
    h.throttled
        .lock()
        .expect("throttled")
        .iter()
        .map(|t| t.since(start()).as_secs())
        .collect()
}

/// Successful calls per second from the first call to the last success.
fn success_rate(h: &Harness) -> f64 {
    let calls = h.calls();
    let throttled: Vec<Timestamp> = h.throttled.lock().expect("throttled").clone();
    let ok: Vec<Timestamp> = calls
        .iter()
        .copied()
        .filter(|c| !throttled.contains(c))
        .collect();
    let (Some(first), Some(last)) = (calls.first(), ok.last()) else {
        return 0.0;
    };
    ok.len() as f64 / last.since(*first).as_secs_f64()
}

#[tokio::test(start_paused = true)]
async fn a_limit_tighter_than_the_quota_is_learned_and_used() {
    // Configured 20/s, the API allows 15/s (a key shared, a limit misdocumented).
    let h = harness(|_| 15);
    let (_, reports) = drive_all(&h, 600, 300).await;
    assert_eq!(h.succeeded().len(), 600, "{reports:?}");
    assert_eq!(h.dead(), 0);
    let throttled = h.throttled.lock().expect("throttled").len();
    let calls = h.calls().len();
    let rate = success_rate(&h);
    eprintln!(
        "limit 15/s, quota 20/s: {rate:.2}/s, {throttled} of {calls} calls throttled, \
         decreases {}",
        reports.iter().map(|r| r.pace_decreases).sum::<u64>()
    );
    assert!(rate >= 0.95 * 15.0, "{rate:.2}/s is under 95% of 15/s");
    assert!(
        throttled as f64 <= 0.03 * calls as f64,
        "{throttled} of {calls} calls throttled"
    );
}

#[tokio::test(start_paused = true)]
async fn at_the_ceiling_nothing_is_throttled_and_the_quota_is_used() {
    let h = harness(|_| 20);
    let (_, reports) = drive_all(&h, 600, 300).await;
    assert_eq!(h.succeeded().len(), 600);
    assert_eq!(h.throttled.lock().expect("throttled").len(), 0);
    assert!(reports.iter().all(|r| r.pace_decreases == 0));
    let rate = success_rate(&h);
    assert!(rate >= 0.99 * 20.0, "{rate:.2}/s");
    assert!(max_in_window(&h.calls(), Duration::from_secs(1)) <= 20);
}

#[tokio::test(start_paused = true)]
async fn the_learned_rate_survives_a_restart() {
    let h = harness(|_| 10);
    h.enqueue(100);
    let cfg = config("20/s");
    // One short run: it meets the limit and learns it.
    let first = h.run_for(&cfg, Duration::from_secs(8)).await;
    assert!(first.pace_decreases >= 1, "{first:?}");
    let saved = load_record::<QuotaState>(&h.store, RecordKey::Quota)
        .await
        .expect("state")
        .value;
    let learned = saved.adaptive.last.expect("a learned rate is saved");
    assert!(learned.to_per_s <= 10.0, "{learned:?}");
    // The next run starts at it: no second decrease, and no burst at the configured 20/s.
    let before = h.throttled.lock().expect("throttled").len();
    let from = h.clock_now();
    let second = h.run_for(&cfg, Duration::from_secs(8)).await;
    let after: Vec<Timestamp> = h.calls().into_iter().filter(|c| *c >= from).collect();
    assert!(!after.is_empty());
    assert!(
        max_in_window(&after, Duration::from_secs(1)) <= 10,
        "the second run called faster than it learned"
    );
    assert_eq!(h.throttled.lock().expect("throttled").len(), before);
    assert_eq!(second.pace_decreases, 0, "{second:?}");
}

#[tokio::test(start_paused = true)]
async fn the_rate_follows_a_limit_that_halves_and_comes_back() {
    // 20/s, then 10/s from 30 s to 90 s, then 20/s again.
    let h = harness(halving);
    let (cfg, calls, throttled) = drive_halving(&h).await;
    let per_s = |from, to| calls_per_s(&calls, from, to);
    eprintln!(
        "halving: 20-30 s {:.1}/s, 40-90 s {:.1}/s, 150-160 s {:.1}/s; throttled at {throttled:?}",
        per_s(20, 30),
        per_s(40, 90),
        per_s(150, 160)
    );
    // Within 10 s of the halving the rate is the new limit's; after that only a probe upward
    // (after the hold) meets a throttle now and then.
    let probing = throttled.iter().filter(|s| (40..90).contains(*s)).count();
    assert!(probing <= 3, "{throttled:?}");
    assert!(per_s(40, 90) >= 0.9 * 10.0 && per_s(40, 90) <= 10.0);
    // Back at the quota within the slow-start time after the limit came back: a probe
    // upward starts at most the hold after the last 429, and reaches the quota the probe
    // after that, and the two together are no longer than slow start.
    let policy = cfg.pacing.adaptive;
    let slow_start = cfg.pacing.slow_start.duration.as_secs();
    assert!((policy.hold + policy.probe).as_secs() <= slow_start);
    let back_at = (90..300).find(|s| per_s(*s, s + 5) >= 0.95 * 20.0);
    eprintln!("halving: back at the quota at {back_at:?} s (the limit came back at 90 s)");
    assert!(
        back_at.is_some_and(|s| s <= 90 + slow_start),
        "back at {back_at:?}, later than {slow_start} s after 90 s"
    );
}

#[tokio::test(start_paused = true)]
async fn headers_that_show_another_client_leave_it_its_share() {
    // Limit 20/s, the quota 20/s, another client takes 5/s; the API says what is left.
    let mut api = RollingApi::new(|_| 20);
    api.other_per_s = 5;
    api.headers = true;
    let h = harness_of(api);
    // 80 s of work: past the hold, when a probe upward would meet 429s without the headers.
    let (_, reports) = drive_all(&h, 1200, 300).await;
    assert_eq!(h.distinct_succeeded(), 1200);
    assert_eq!(h.dead(), 0);
    let throttled = h.throttled.lock().expect("throttled").clone();
    let rate = success_rate(&h);
    eprintln!(
        "shared 20/s with another client at 5/s: {rate:.2}/s, throttled {} ({:?}), decreases {}",
        throttled.len(),
        throttled
            .iter()
            .map(|t| t.since(start()).as_secs())
            .collect::<Vec<_>>(),
        reports.iter().map(|r| r.pace_decreases).sum::<u64>()
    );
    // No 429 after the first few answers, and most of the share used.
    let late: Vec<_> = throttled
        .iter()
        .filter(|t| t.since(start()) > Duration::from_secs(5))
        .collect();
    assert!(late.is_empty(), "429s after the first seconds: {late:?}");
    assert!(rate >= 0.9 * 15.0, "{rate:.2}/s of a 15/s share");
}

#[tokio::test(start_paused = true)]
async fn headers_that_show_the_limit_come_back_raise_the_rate_at_once() {
    // As the halving above, with the API's limit in its headers: when it comes back at 90 s
    // the pace goes back to the quota without waiting out the hold and the probe.
    let mut api = RollingApi::new(halving);
    api.headers = true;
    let h = harness_of(api);
    let (_, calls, throttled) = drive_halving(&h).await;
    let per_s = |from, to| calls_per_s(&calls, from, to);
    eprintln!(
        "halving with headers: 40-90 s {:.1}/s, 92-102 s {:.1}/s; throttled at {throttled:?}",
        per_s(40, 90),
        per_s(92, 102)
    );
    assert!(per_s(40, 90) >= 0.9 * 10.0 && per_s(40, 90) <= 10.0);
    // Within a few seconds of 90 s, not after a hold and a probe.
    assert!(
        per_s(92, 102) >= 0.95 * 20.0,
        "{:.1}/s 2 to 12 s after the limit came back",
        per_s(92, 102)
    );
    assert!(
        throttled.iter().all(|s| !(40..90).contains(s) && *s < 95),
        "no probe 429 with the headers: {throttled:?}"
    );
}
