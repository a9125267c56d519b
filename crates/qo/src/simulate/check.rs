//! The checker: reads one seed's [`History`] and judges it against the design's invariants.
//!
//! - **Quota**: every call that reached the API (health checks and 429s too) fits every tier
//!   of the configured quota in every rolling window and calendar period.
//! - **Nothing lost**: each job the producer sent ends done (the API did its work), dead-lettered
//!   with a reason, or still on a queue (the job queues, or the worker's on-failure queue, which
//!   an operator redrives); a job the orchestrator must refuse is never called.
//! - **Nothing done twice**: no job's work is done twice by the API, except in the one window
//!   no system closes without the API's help: the work was done and the function could not
//!   record it (its run was killed between the answer and the job's own record, the done
//!   record was refused, or the answer was lost on the way back). Those are counted apart, not
//!   failed. A kill later than that, a batch's end included, does not excuse a repeat.
//! - **Every success heard back**: with results on, each job the API answered 2xx has its
//!   result delivered to its destination, or dead-lettered undelivered, at least once; unless
//!   the job is still on a queue (a kill before the delivery leaves it to be called again).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use qo_core::quota::{Period, WindowKind};
use qo_core::{QuotaSpec, Timestamp};

use super::api::{Answer, Call};
use super::scenario::Scenario;
use super::store::Unrecorded;

/// What one seed's run left behind, read by [`check`].
#[derive(Debug, Default)]
pub struct History {
    /// Every call that reached the API, in order.
    pub calls: Vec<Call>,
    /// Every job's idempotency keys (its `id`, or the message ids of its sends): key to job.
    pub keys: HashMap<String, usize>,
    /// Jobs dead-lettered with a reason (job number, reason).
    pub dead_lettered: Vec<(usize, String)>,
    /// Jobs the redrive policy moved to the dead-letter queue (no reason).
    pub redriven: Vec<usize>,
    /// Jobs still on the main or retry queue.
    pub queued: Vec<usize>,
    /// Jobs in events on the worker's on-failure queue.
    pub failed_events: Vec<usize>,
    /// Jobs retention deleted.
    pub expired: Vec<usize>,
    /// Worker runs killed: when, and the jobs of their event.
    pub kills: Vec<(Timestamp, Vec<usize>)>,
    /// Done records that were not written.
    pub unrecorded: Vec<Unrecorded>,
    /// Whether jobs' results went to a destination.
    pub results_on: bool,
    /// Every result delivered, dead-lettered undelivered, or kept on a queue for a later
    /// delivery: the job and its outcome.
    pub results: Vec<(usize, qo_core::result::ResultOutcome)>,
}

/// What the checker found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Verdict {
    /// Invariant violations, each a sentence naming the job or the window.
    pub violations: Vec<String>,
    /// Jobs whose work the API did twice in the window no system closes alone.
    pub unrecorded_repeats: usize,
    /// Jobs done.
    pub done: usize,
    /// Jobs dead-lettered with a reason.
    pub dead_lettered: usize,
    /// Jobs still on a queue (job queues or the on-failure queue).
    pub queued: usize,
    /// Calls that reached the API.
    pub calls: usize,
    /// Results delivered or dead-lettered undelivered.
    pub results: usize,
}

impl Verdict {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Judges `history` against the invariants for `scenario`.
pub fn check(scenario: &Scenario, history: &History) -> Verdict {
    let mut v = Verdict {
        calls: history.calls.len(),
        ..Verdict::default()
    };
    check_quota(scenario, history, &mut v);
    let mut effects: BTreeMap<usize, Vec<&Call>> = BTreeMap::new();
    for c in &history.calls {
        if let Some(n) = c.job
            && c.took_effect()
        {
            effects.entry(n).or_default().push(c);
        }
    }
    v.results = history.results.len();
    let count = |list: &[usize], n: usize| list.iter().filter(|j| **j == n).count();
    for job in &scenario.jobs {
        let n = job.n;
        let called = history.calls.iter().any(|c| c.job == Some(n));
        if job.refused {
            if called {
                v.violations
                    .push(format!("job {n} must be refused, yet the API was called"));
            }
            if history.dead_lettered.iter().any(|(j, _)| *j == n) {
                v.dead_lettered += 1;
            } else if count(&history.queued, n) > 0 {
                v.queued += 1;
            } else {
                v.violations.push(format!(
                    "job {n} must be refused: not dead-lettered with a reason"
                ));
            }
            continue;
        }
        let waiting = count(&history.queued, n) + count(&history.failed_events, n) > 0;
        if history.results_on && !waiting {
            heard_back(history, n, &mut v);
        }
        if let Some(list) = effects.get(&n) {
            v.done += 1;
            repeats(history, n, list, &mut v);
        } else if history.dead_lettered.iter().any(|(j, _)| *j == n) {
            v.dead_lettered += 1;
        } else if count(&history.queued, n) + count(&history.failed_events, n) > 0 {
            v.queued += 1;
        } else if count(&history.redriven, n) > 0 {
            v.violations.push(format!(
                "job {n} was moved to the dead-letter queue by its receive count, with no reason"
            ));
        } else if count(&history.expired, n) > 0 {
            v.violations
                .push(format!("job {n} was lost: retention deleted it"));
        } else {
            v.violations.push(format!(
                "job {n} was lost: not done, not dead-lettered, on no queue"
            ));
        }
    }
    v
}

/// Fails job `n` when the API answered it 2xx and no success result of it was delivered or
/// dead-lettered.
fn heard_back(history: &History, n: usize, v: &mut Verdict) {
    let answered = history.calls.iter().find(|c| {
        c.job == Some(n) && matches!(c.answer, Answer::Status(s) if (200..300).contains(&s))
    });
    let Some(first) = answered else {
        return;
    };
    let heard = history
        .results
        .iter()
        .any(|(j, o)| *j == n && *o == qo_core::result::ResultOutcome::Succeeded);
    if !heard {
        v.violations.push(format!(
            "job {n} was answered 2xx at {} and its result was neither delivered nor \
             dead-lettered",
            first.at
        ));
    }
}

/// How soon after the API's answer a job's done record is written: the store's round trip,
/// with room to spare, after the result's delivery (which a refusing destination stretches by
/// its retries' pauses: the result is delivered before the record, so that a kill never leaves
/// a job recorded with its result unsent). A kill after it cannot explain a repeated call.
fn record_window() -> Duration {
    let retries: Duration = qo_worker::results::DELIVERY_BACKOFF.iter().sum();
    Duration::from_secs(1) + retries
}

/// Counts or fails the second and later times the API did job `n`'s work (`effects`, in call
/// order).
fn repeats(history: &History, n: usize, effects: &[&Call], v: &mut Verdict) {
    for pair in effects.windows(2) {
        let (first, again) = (pair[0], pair[1]);
        let lost = first.answer == Answer::Lost;
        // A kill opens the window only between the answer and the job's own record, which
        // follows the answer at once: a kill later than that found the job recorded.
        let killed = history.kills.iter().any(|(at, jobs)| {
            *at >= first.at && *at <= first.at.plus(record_window()) && jobs.contains(&n)
        });
        let unrecorded = history.unrecorded.iter().any(|u| {
            u.at >= first.at
                && u.at <= again.at
                && u.keys.iter().any(|k| history.keys.get(k) == Some(&n))
        });
        if lost || killed || unrecorded {
            v.unrecorded_repeats += 1;
        } else {
            v.violations.push(format!(
                "job {n} was done twice: at {} and {} (no kill, lost answer or refused record \
                 between)",
                first.at, again.at
            ));
        }
    }
}

/// Fails every window in which the API saw more calls than a tier of the quota allows.
fn check_quota(scenario: &Scenario, history: &History, v: &mut Verdict) {
    let Ok(quota) = scenario.quota.parse::<QuotaSpec>() else {
        v.violations.push(format!(
            "the scenario's quota `{}` does not parse",
            scenario.quota
        ));
        return;
    };
    let times: Vec<Timestamp> = history.calls.iter().map(|c| c.at).collect();
    for tier in quota.tiers() {
        let seen = match tier.window {
            WindowKind::Rolling => {
                let Some(first) = times.first() else {
                    continue;
                };
                let offsets: Vec<Duration> = times.iter().map(|t| t.since(*first)).collect();
                qo_sim::max_in_window(&offsets, tier.period.duration())
            }
            WindowKind::Calendar => qo_sim::max_in_calendar_period(&times, tier.period),
        };
        if seen as u64 > u64::from(tier.limit.get()) {
            let at = match tier.window {
                WindowKind::Rolling => densest(&history.calls, tier.period.duration()),
                WindowKind::Calendar => String::new(),
            };
            v.violations.push(format!(
                "the API saw {seen} calls in one {} window; the quota allows {}{at}",
                period_name(tier.period),
                tier.limit
            ));
        }
    }
}

/// Where the densest rolling window of `window` ends, and what its calls were, for a
/// violation's message.
fn densest(calls: &[Call], window: Duration) -> String {
    let (mut best, mut i, mut from) = ((0, 0), 0, 0);
    for (j, c) in calls.iter().enumerate() {
        while c.at.since(calls[i].at) >= window {
            i += 1;
        }
        if j + 1 - i > best.1 - best.0 {
            best = (i, j + 1);
            from = i;
        }
    }
    let inside = &calls[from..best.1];
    let health = inside.iter().filter(|c| c.job.is_none()).count();
    let list: Vec<String> = inside
        .iter()
        .map(|c| {
            let what = c.job.map_or("health".to_string(), |n| format!("job {n}"));
            format!("{} {what} {:?}", c.at, c.answer)
        })
        .collect();
    format!(
        " (the window ending {}: {health} health checks; {})",
        inside.last().map_or(String::new(), |c| c.at.to_string()),
        list.join(", ")
    )
}

fn period_name(p: Period) -> String {
    format!("{p:?}").to_lowercase()
}
