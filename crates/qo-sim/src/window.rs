//! Window counts over a log of call times: the measure tests compare with a quota's limit.
//!
//! A rolling window of length `w` is half-open, `(t - w, t]`: a call exactly `w` after another
//! no longer shares a window with it. A calendar period runs from one UTC boundary to the next.

use std::borrow::Cow;
use std::time::Duration;

use qo_core::Timestamp;
use qo_core::quota::Period;

use crate::calendar::period_start;

/// The largest number of `times` inside any half-open window `(t - window, t]`.
///
/// `times` need not be sorted (a sorted slice is scanned in place, anything else is sorted in a
/// copy first). A zero window holds no call, so the answer is then 0.
pub fn max_in_window(times: &[Duration], window: Duration) -> usize {
    if window.is_zero() || times.is_empty() {
        return 0;
    }
    let times: Cow<'_, [Duration]> = if times.is_sorted() {
        Cow::Borrowed(times)
    } else {
        let mut v = times.to_vec();
        v.sort_unstable();
        Cow::Owned(v)
    };
    // Any window can slide right until its end meets a call without losing one, so the maximum
    // is reached by a window ending at a call: count (times[j] - window, times[j]] for each j.
    let mut best = 0;
    let mut i = 0;
    for (j, &t) in times.iter().enumerate() {
        while t - times[i] >= window {
            i += 1;
        }
        best = best.max(j - i + 1);
    }
    best
}

/// The largest number of `sorted` times inside a half-open window `(t - window, t]` whose end
/// `t` is one of the times within `ends` (e.g. one segment of a limit schedule: the windows
/// the limit then in force governed, counting the calls before the segment that they hold).
///
/// `sorted` must be in order (as a log of arrivals is).
pub fn max_in_window_ending_within(
    sorted: &[Duration],
    window: Duration,
    ends: std::ops::Range<Duration>,
) -> usize {
    if window.is_zero() {
        return 0;
    }
    let mut best = 0;
    let mut i = 0;
    for (j, &t) in sorted.iter().enumerate() {
        while t - sorted[i] >= window {
            i += 1;
        }
        // Calls at the same instant after j share the window: count them at the last one.
        let last_at_t = sorted.get(j + 1).is_none_or(|&n| n > t);
        if last_at_t && ends.contains(&t) {
            best = best.max(j - i + 1);
        }
    }
    best
}

/// The largest number of `sorted` times inside one UTC calendar `period`, counted up to (and
/// with) a time within `ends`: for each such time, the calls of its period so far.
///
/// `sorted` must be in order.
pub fn max_in_calendar_period_ending_within(
    sorted: &[Timestamp],
    period: Period,
    ends: std::ops::Range<Timestamp>,
) -> usize {
    let mut best = 0;
    let mut first = 0;
    for (j, &t) in sorted.iter().enumerate() {
        if period_start(period, t) != period_start(period, sorted[first]) {
            first = j;
        }
        let last_at_t = sorted.get(j + 1).is_none_or(|&n| n > t);
        if last_at_t && ends.contains(&t) {
            best = best.max(j - first + 1);
        }
    }
    best
}

/// The largest number of `times` inside one UTC calendar `period` (day, month, ...).
///
/// `times` need not be sorted.
pub fn max_in_calendar_period(times: &[Timestamp], period: Period) -> usize {
    let mut starts: Vec<Timestamp> = times.iter().map(|&t| period_start(period, t)).collect();
    starts.sort_unstable();
    starts
        .chunk_by(|a, b| a == b)
        .map(<[Timestamp]>::len)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn empty_and_zero_window() {
        assert_eq!(max_in_window(&[], SEC), 0);
        assert_eq!(max_in_window(&ms(&[0, 0, 0]), Duration::ZERO), 0);
        assert_eq!(max_in_window(&ms(&[5]), SEC), 1);
    }

    #[test]
    fn window_is_half_open() {
        // 0 and 1000 are exactly one window apart: never together.
        assert_eq!(max_in_window(&ms(&[0, 1000]), SEC), 1);
        // 1 ms closer and they share a window.
        assert_eq!(max_in_window(&ms(&[0, 999]), SEC), 2);
        // Evenly spaced at the limit's pace: 20 per second exactly, never 21.
        let paced: Vec<u64> = (0..100).map(|k| k * 50).collect();
        assert_eq!(max_in_window(&ms(&paced), SEC), 20);
    }

    #[test]
    fn finds_the_densest_window_anywhere() {
        // A burst in the middle, not aligned to any second boundary.
        let t = ms(&[0, 400, 1_700, 1_750, 1_800, 2_650, 2_699, 2_700, 3_900]);
        // (1_699, 2_699] holds 1_700, 1_750, 1_800, 2_650, 2_699.
        assert_eq!(max_in_window(&t, SEC), 5);
        assert_eq!(max_in_window(&t, Duration::from_millis(50)), 2);
        assert_eq!(max_in_window(&t, Duration::from_millis(51)), 3);
        assert_eq!(max_in_window(&t, Duration::from_secs(10)), 9);
    }

    #[test]
    fn duplicates_and_unsorted_input() {
        assert_eq!(max_in_window(&ms(&[7, 7, 7, 7]), SEC), 4);
        let unsorted = ms(&[2_000, 0, 1_500, 10, 1_990]);
        // (990, 1_990] holds 1_500, 1_990; (1_000, 2_000] holds 1_500, 1_990, 2_000.
        assert_eq!(max_in_window(&unsorted, SEC), 3);
    }

    #[test]
    fn agrees_with_brute_force() {
        let mut x: u64 = 0x9E37_79B9;
        let mut times = Vec::new();
        for _ in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            times.push(Duration::from_millis(x % 5_000));
        }
        for w in [1, 10, 100, 333, 1_000, 4_999, 6_000] {
            let w = Duration::from_millis(w);
            let brute = times
                .iter()
                .map(|&end| {
                    times
                        .iter()
                        .filter(|&&t| t <= end && end.saturating_sub(t) < w)
                        .count()
                })
                .max()
                .unwrap_or(0);
            assert_eq!(max_in_window(&times, w), brute, "window {w:?}");
        }
    }

    #[test]
    fn windows_ending_within_a_range_count_calls_before_it() {
        let t = ms(&[0, 100, 900, 1_000, 1_050, 1_050, 2_500]);
        // All ends: the same as max_in_window.
        let all = Duration::ZERO..Duration::MAX;
        assert_eq!(max_in_window_ending_within(&t, SEC, all.clone()), 5);
        assert_eq!(max_in_window(&t, SEC), 5);
        // Ends in [1 s, 2 s): (50, 1_050] holds 100, 900, 1_000, 1_050, 1_050.
        let seg = Duration::from_secs(1)..Duration::from_secs(2);
        assert_eq!(max_in_window_ending_within(&t, SEC, seg), 5);
        // Ends before 1 s: (-, 900] holds 0, 100, 900.
        let before = Duration::ZERO..Duration::from_secs(1);
        assert_eq!(max_in_window_ending_within(&t, SEC, before), 3);
        // Ends from 2 s: only 2_500 is in its window.
        let after = Duration::from_secs(2)..Duration::MAX;
        assert_eq!(max_in_window_ending_within(&t, SEC, after), 1);
        // A segment holding no call: no window.
        let empty = Duration::from_millis(1_100)..Duration::from_millis(2_000);
        assert_eq!(max_in_window_ending_within(&t, SEC, empty), 0);
        assert_eq!(max_in_window_ending_within(&[], SEC, all), 0);
    }

    #[test]
    fn calendar_periods_counted_up_to_ends_within_a_range() {
        let midnight = Timestamp::from_secs(20_000 * 86_400);
        let t: Vec<Timestamp> = [0u64, 10, 20, 86_400, 86_410]
            .iter()
            .map(|&s| midnight.plus(Duration::from_secs(s)))
            .collect();
        let r = |a: u64, b: u64| {
            midnight.plus(Duration::from_secs(a))..midnight.plus(Duration::from_secs(b))
        };
        assert_eq!(
            max_in_calendar_period_ending_within(&t, Period::Day, r(0, 200_000)),
            3
        );
        // Ends from second 15 of the first day: the calls before still count.
        assert_eq!(
            max_in_calendar_period_ending_within(&t, Period::Day, r(15, 100)),
            3
        );
        assert_eq!(
            max_in_calendar_period_ending_within(&t, Period::Day, r(5, 15)),
            2
        );
        assert_eq!(
            max_in_calendar_period_ending_within(&t, Period::Day, r(86_000, 200_000)),
            2
        );
    }

    #[test]
    fn calendar_days_reset_at_utc_midnight() {
        let midnight = Timestamp::from_secs(20_000 * 86_400);
        let times = [
            midnight.minus(Duration::from_millis(1)),
            midnight.minus(Duration::from_millis(2)),
            midnight,
            midnight.plus(Duration::from_secs(86_399)),
            midnight.plus(Duration::from_secs(86_400)),
        ];
        assert_eq!(max_in_calendar_period(&times, Period::Day), 2);
        assert_eq!(max_in_calendar_period(&times, Period::Month), 5);
        assert_eq!(max_in_calendar_period(&[], Period::Day), 0);
    }
}
