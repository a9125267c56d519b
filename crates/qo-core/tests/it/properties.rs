//! Property tests of the pacing invariants (never past a tier's limit, never a quota slot lost): for random specs,
//! arrivals, worker lateness within the tolerance and restarts (clean or crashed), no tier is
//! ever exceeded in any window, and with a backlog the pace never idles. Calendar periods are
//! judged by the test's own UTC calendar (chrono's fields), never by the pacer's arithmetic.

use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use proptest::prelude::*;
use qo_core::Timestamp;
use qo_core::quota::{
    Pacer, PacingPolicy, Period, PoolPacer, QuotaSpec, QuotaState, SlowStart, WindowKind,
};

const SPECS: &[&str] = &[
    "20/s",
    "10/s,300/min",
    "5/s:burst=3",
    "50/s,1000/min,2000/h",
    "10/s,40/min@calendar",
    "8/s,100/day@calendar",
    "4/s,50/h",
];

fn policy() -> PacingPolicy {
    PacingPolicy {
        slow_start: SlowStart {
            duration: Duration::ZERO,
            from_fraction: 1.0,
        },
        ..PacingPolicy::default()
    }
}

/// Most calls in any half-open window of length `w` (times sorted).
fn max_in_window(times: &[Timestamp], w: Duration) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi].since(times[lo]) >= w {
            lo += 1;
        }
        best = best.max(hi + 1 - lo);
    }
    best
}

/// The UTC calendar period holding `t`, as (year, month, day, hour, minute, second) with the
/// fields finer than `period` zeroed: the test's own calendar, not the pacer's.
fn utc_period(period: Period, t: Timestamp) -> (i32, u32, u32, u32, u32, u32) {
    let dt = DateTime::<Utc>::from_timestamp_micros(t.as_micros() as i64).expect("in range");
    let (y, mo, d, h, mi, s) = (
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
    );
    match period {
        Period::Month => (y, mo, 0, 0, 0, 0),
        Period::Day => (y, mo, d, 0, 0, 0),
        Period::Hour => (y, mo, d, h, 0, 0),
        Period::Minute => (y, mo, d, h, mi, 0),
        Period::Second => (y, mo, d, h, mi, s),
    }
}

#[derive(Clone, Debug)]
enum Restart {
    None,
    Clean,
    Crash,
}

fn restart() -> impl Strategy<Value = Restart> {
    prop_oneof![6 => Just(Restart::None), 1 => Just(Restart::Clean), 1 => Just(Restart::Crash)]
}

/// Pool specs: shared tiers and per-function tiers, tighter or looser than the share.
const POOL_SPECS: &[&str] = &[
    "8/s,5/s per function",
    "20/s,300/min,4/s per function",
    "10/s,6/s per function,100/min per function",
    "5/s,10/s per function",
    "30/s:burst=3,7/s:burst=2 per function",
];

/// Checks `calls` against every rolling tier of `spec` (the pool specs have no calendar tier).
fn check_rolling(
    spec: &QuotaSpec,
    calls: &mut [Timestamp],
    who: &str,
) -> Result<(), TestCaseError> {
    calls.sort();
    for tier in spec.tiers() {
        let max = max_in_window(calls, tier.period.duration());
        prop_assert!(
            max <= tier.limit.get() as usize,
            "{who} {tier}: {max} in a window"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn no_function_exceeds_its_tier_nor_the_pool_the_shared_tiers(
        spec_i in 0..POOL_SPECS.len(),
        functions in 1usize..=3,
        gaps_ms in proptest::collection::vec(0u64..300, 1..300),
        lateness in proptest::collection::vec(0u64..=5_000, 300),
        avoid in proptest::collection::vec(proptest::option::of(0usize..3), 300),
        restarts in proptest::collection::vec(restart(), 300),
    ) {
        let spec: QuotaSpec = POOL_SPECS[spec_i].parse().expect("spec");
        let names: Vec<String> = (0..functions).map(|i| format!("worker-{i}")).collect();
        let mut shared = Pacer::new(spec.clone(), policy());
        let mut pool = PoolPacer::new(names.clone(), &spec, policy()).expect("pool");
        let mut arrival = Timestamp::from_secs(1_800_000_000);
        let mut now = arrival;
        let mut all = Vec::new();
        let mut by_function: std::collections::BTreeMap<String, Vec<Timestamp>> = Default::default();
        for (i, gap) in gaps_ms.iter().enumerate() {
            arrival = arrival.plus(Duration::from_millis(*gap));
            if !matches!(restarts[i], Restart::None) {
                // A restart: the shared state and each function's usage go through the saved JSON.
                let mut state = shared.state().clone();
                state.functions = pool.states();
                let json = serde_json::to_string(&state).expect("json");
                let state: QuotaState = serde_json::from_str(&json).expect("json");
                pool = PoolPacer::hydrate(names.clone(), &spec, policy(), &state.functions)
                    .expect("pool");
                shared = Pacer::hydrate(spec.clone(), policy(), state);
            }
            let avoid = avoid[i].map(|a| format!("worker-{a}"));
            let taken = pool.take(&mut shared, now.max(arrival), avoid.as_deref());
            if functions > 1 && let Some(a) = &avoid {
                prop_assert_ne!(taken.function(), a.as_str(), "a job is retried elsewhere");
            }
            let call = taken.at().plus(Duration::from_micros(lateness[i]));
            all.push(call);
            by_function.entry(taken.function().to_string()).or_default().push(call);
            now = taken.at();
        }
        check_rolling(&spec, &mut all, "the pool")?;
        let own = spec.per_function().expect("per-function tiers");
        for (name, calls) in &mut by_function {
            check_rolling(&own, calls, name)?;
        }
    }

    #[test]
    fn no_tier_is_exceeded_in_any_window(
        spec_i in 0..SPECS.len(),
        gaps_ms in proptest::collection::vec(0u64..400, 1..300),
        lateness in proptest::collection::vec(0u64..=5_000, 300),
        restarts in proptest::collection::vec(restart(), 300),
        start_offset_s in 0u64..86_400,
    ) {
        let spec: QuotaSpec = SPECS[spec_i].parse().expect("spec");
        let mut pacer = Pacer::new(spec.clone(), policy());
        let mut arrival = Timestamp::from_secs(1_800_000_000 - 1_800_000_000 % 86_400 + start_offset_s);
        let mut now = arrival;
        let mut calls = Vec::new();
        for (i, gap) in gaps_ms.iter().enumerate() {
            arrival = arrival.plus(Duration::from_millis(*gap));
            // Restarts: a clean one hands the saved state over; a crash loses what was not
            // saved, and the next run counts the saved horizon conservatively.
            match restarts[i] {
                Restart::None => {}
                Restart::Clean => {
                    let json = serde_json::to_string(pacer.state()).expect("json");
                    let state: QuotaState = serde_json::from_str(&json).expect("json");
                    pacer = Pacer::hydrate(spec.clone(), policy(), state);
                }
                Restart::Crash => {
                    let mut saved = pacer.clone();
                    saved.set_horizon(now, Some(now.plus(Duration::from_secs(2))));
                    // The crashed run dispatched at full pace up to its horizon after saving.
                    let mut t = now;
                    loop {
                        let slot = pacer.next_slot(t);
                        if slot > now.plus(Duration::from_secs(2)) { break; }
                        let slot = pacer.take_first_from(slot).at();
                        calls.push(slot);
                        t = slot;
                    }
                    let mut next = Pacer::hydrate(spec.clone(), policy(), saved.state().clone());
                    next.assume_unrecorded_until();
                    pacer = next;
                    now = now.plus(Duration::from_secs(2));
                }
            }
            let slot = pacer.take_first_from(now.max(arrival)).at();
            // The worker calls at the slot or up to the tolerance (5 ms) later.
            calls.push(slot.plus(Duration::from_micros(lateness[i])));
            now = slot;
        }
        calls.sort();
        for tier in spec.tiers() {
            match tier.window {
                WindowKind::Rolling => {
                    let max = max_in_window(&calls, tier.period.duration());
                    prop_assert!(max <= tier.limit.get() as usize, "{tier}: {max} in a window");
                }
                WindowKind::Calendar => {
                    let mut counts = std::collections::HashMap::new();
                    for c in &calls {
                        *counts.entry(utc_period(tier.period, *c)).or_insert(0u32) += 1;
                    }
                    let max = counts.values().copied().max().unwrap_or(0);
                    prop_assert!(max <= tier.limit.get(), "{tier}: {max} in a period");
                }
            }
        }
    }

    #[test]
    fn with_a_backlog_the_pace_never_idles(
        spec_i in 0..3usize,
        n in 2usize..400,
    ) {
        // Pacing tiers only: every slot follows the previous one by one emission interval.
        let spec: QuotaSpec = ["20/s", "10/s,300/min", "7/s"][spec_i].parse().expect("spec");
        let mut pacer = Pacer::new(spec.clone(), policy());
        let start = Timestamp::from_secs(1_800_000_000);
        let mut now = start;
        let mut slots = Vec::new();
        for _ in 0..n {
            let slot = pacer.take_first_from(now).at();
            slots.push(slot);
            now = slot;
        }
        let rate = spec.pacing_rate_per_s();
        // (window + 5 ms tolerance) / limit, rounded up to the microsecond.
        let tightest = spec
            .tiers()
            .iter()
            .map(|t| (t.period.duration().as_micros() as f64 + 5_000.0) / t.limit.get() as f64)
            .fold(0.0, f64::max);
        for w in slots.windows(2) {
            let gap = w[1].since(w[0]).as_micros() as f64;
            prop_assert!(gap <= tightest.ceil() + 1.0, "gap {gap} us > {tightest} us");
        }
        let achieved = (n - 1) as f64 / slots[n - 1].since(slots[0]).as_secs_f64();
        prop_assert!(achieved >= 0.99 * rate, "achieved {achieved} of {rate}");
    }

    #[test]
    fn calendar_periods_are_the_utc_calendar(
        // From 1970-02-10 (a period before the epoch does not exist) to about 2096.
        micros in 3_456_000_000_000u64..4_000_000_000_000_000,
        p in 0usize..5,
    ) {
        let period = [Period::Second, Period::Minute, Period::Hour, Period::Day, Period::Month][p];
        let t = Timestamp::from_micros(micros);
        let idx = period.calendar_index(t);
        let (start, end) = (period.calendar_start(idx), period.calendar_start(idx + 1));
        let here = utc_period(period, t);
        let us = Duration::from_micros(1);
        prop_assert!(start <= t && t < end, "{t} not in [{start}, {end})");
        // Both ends are the UTC boundaries of t's period.
        prop_assert_eq!(utc_period(period, start), here);
        prop_assert_ne!(utc_period(period, start.minus(us)), here);
        prop_assert_eq!(utc_period(period, end.minus(us)), here);
        prop_assert_ne!(utc_period(period, end), here);
    }
}
