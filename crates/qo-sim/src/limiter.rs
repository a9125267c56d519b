//! How an API counts a rolling tier `LIMIT/PERIOD`: the [`Limiter`] kinds real APIs run, and
//! the [`Meter`] state of one tier under a bucket or fixed-window kind.
//!
//! - **sliding log** (the default): a call is accepted iff fewer than `LIMIT` accepted calls
//!   lie in `(t - PERIOD, t]`. Strict, and the easiest to pace against: calls spaced
//!   `PERIOD / LIMIT` apart are never refused.
//! - **fixed window**: windows of `PERIOD` aligned on the epoch (whole seconds, whole minutes)
//!   each accept `LIMIT` calls and reset on their boundary, as GitHub's `X-RateLimit-Reset`
//!   and Kong's counters do. Up to twice the limit can pass around a boundary.
//! - **token bucket** with a capacity (API Gateway's burst, Stripe): tokens refill at
//!   `LIMIT / PERIOD`, the bucket holds at most the capacity (default `LIMIT`), each call
//!   takes one.
//! - **GCRA** (a leaky bucket with a burst: nginx `limit_req`, Envoy, Kong, redis-cell): a call
//!   is accepted iff it comes no earlier than its theoretical arrival time less `burst`
//!   emission intervals. With no burst, calls must be at least `PERIOD / LIMIT` apart: a
//!   call a millisecond early is refused.
//!
//! Both buckets are the same virtual-scheduling algorithm (GCRA), with a tolerance of
//! `capacity - 1` intervals for the token bucket and `burst` for GCRA; they differ in the
//! defaults APIs give them, and the defaults are what a client meets.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use qo_core::Timestamp;

/// How the API counts each rolling tier of the limit it enforces (calendar tiers always
/// count their UTC period).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Limiter {
    /// A strict rolling window over the log of accepted calls.
    #[default]
    SlidingLog,
    /// Windows aligned on the epoch that reset on their boundary.
    FixedWindow,
    /// A token bucket refilled at the tier's rate, holding `capacity` tokens (`None`: the
    /// tier's limit).
    TokenBucket {
        /// The bucket's size, at least 1.
        capacity: Option<u32>,
    },
    /// GCRA: calls spaced at the tier's rate, `burst` of them allowed early.
    Gcra {
        /// Calls allowed ahead of the steady spacing.
        burst: u32,
    },
}

impl Limiter {
    /// Every kind with the defaults `qo bench --limiters` runs: sliding log, fixed window,
    /// token bucket (capacity = the limit), GCRA with a burst of 2 (nginx's common setting).
    pub const ALL: [Limiter; 4] = [
        Limiter::SlidingLog,
        Limiter::FixedWindow,
        Limiter::TokenBucket { capacity: None },
        Limiter::Gcra { burst: 2 },
    ];

    /// The tolerance of a bucket kind for a tier of `limit` calls a `period`: how early a
    /// call may come before its theoretical arrival time. `None` for the window kinds.
    fn tolerance(self, limit: u64, period: Duration) -> Option<Duration> {
        let interval = emission(limit, period);
        match self {
            Limiter::SlidingLog | Limiter::FixedWindow => None,
            Limiter::TokenBucket { capacity } => {
                let c = capacity.map_or(limit, u64::from).max(1);
                Some(interval * u32::try_from(c - 1).unwrap_or(u32::MAX))
            }
            Limiter::Gcra { burst } => Some(interval * burst),
        }
    }

    /// Calls a full bucket accepts at once: its capacity (`burst + 1` for GCRA).
    fn capacity(self, limit: u64) -> u64 {
        match self {
            Limiter::TokenBucket { capacity } => capacity.map_or(limit, u64::from).max(1),
            Limiter::Gcra { burst } => u64::from(burst) + 1,
            Limiter::SlidingLog | Limiter::FixedWindow => limit,
        }
    }
}

impl FromStr for Limiter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim().to_ascii_lowercase();
        let (name, arg) = match text.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (text.as_str(), None),
        };
        let number = |what: &str| -> Result<Option<u32>, String> {
            arg.map(|a| {
                a.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("limiter `{s}`: {what} `{a}` is not a whole number"))
            })
            .transpose()
        };
        match name {
            "sliding-log" | "sliding" if arg.is_none() => Ok(Limiter::SlidingLog),
            "fixed-window" | "fixed" if arg.is_none() => Ok(Limiter::FixedWindow),
            "token-bucket" => match number("capacity")? {
                Some(0) => Err(format!("limiter `{s}`: a token bucket holds at least 1")),
                capacity => Ok(Limiter::TokenBucket { capacity }),
            },
            "gcra" | "leaky-bucket" => Ok(Limiter::Gcra {
                burst: number("burst")?.unwrap_or(0),
            }),
            _ => Err(format!(
                "limiter `{s}`: expected sliding-log, fixed-window, token-bucket[:CAPACITY] or \
                 gcra[:BURST]"
            )),
        }
    }
}

impl fmt::Display for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limiter::SlidingLog => f.write_str("sliding-log"),
            Limiter::FixedWindow => f.write_str("fixed-window"),
            Limiter::TokenBucket { capacity: None } => f.write_str("token-bucket"),
            Limiter::TokenBucket { capacity: Some(c) } => write!(f, "token-bucket:{c}"),
            Limiter::Gcra { burst } => write!(f, "gcra:{burst}"),
        }
    }
}

/// The time between two calls at `limit` calls a `period`.
fn emission(limit: u64, period: Duration) -> Duration {
    let limit = u32::try_from(limit.max(1)).unwrap_or(u32::MAX);
    period / limit
}

/// The state of one rolling tier under a bucket or fixed-window kind. It outlives a change of
/// the limit (kept per period), as an API's counters do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Meter {
    /// The current fixed window: its start and the calls it accepted.
    Fixed { start: Timestamp, count: u64 },
    /// A bucket: the theoretical arrival time of the next call (in the past: the bucket is
    /// full).
    Bucket { tat: Timestamp },
}

impl Meter {
    /// A fresh meter for `limiter` (a full bucket, an empty window); `None` for the sliding log.
    pub(crate) fn new(limiter: Limiter) -> Option<Meter> {
        match limiter {
            Limiter::SlidingLog => None,
            Limiter::FixedWindow => Some(Meter::Fixed {
                start: Timestamp::EPOCH,
                count: 0,
            }),
            Limiter::TokenBucket { .. } | Limiter::Gcra { .. } => Some(Meter::Bucket {
                tat: Timestamp::EPOCH,
            }),
        }
    }

    /// The wait until the tier accepts a call at `now` (zero: now).
    pub(crate) fn wait(
        &mut self,
        limiter: Limiter,
        limit: u64,
        period: Duration,
        now: Timestamp,
    ) -> Duration {
        match self {
            Meter::Fixed { start, count } => {
                let current = window_start(now, period);
                if current != *start {
                    *start = current;
                    *count = 0;
                }
                if *count >= limit {
                    current.plus(period).since(now)
                } else {
                    Duration::ZERO
                }
            }
            Meter::Bucket { tat } => {
                let tolerance = limiter.tolerance(limit, period).unwrap_or_default();
                // Accepted iff now >= tat - tolerance.
                tat.minus(tolerance).since(now)
            }
        }
    }

    /// Counts a call accepted at `now` (after [`Meter::wait`] said zero).
    pub(crate) fn count(&mut self, limit: u64, period: Duration, now: Timestamp) {
        match self {
            Meter::Fixed { count, .. } => *count += 1,
            Meter::Bucket { tat } => *tat = (*tat).max(now).plus(emission(limit, period)),
        }
    }

    /// What rate-limit headers say of the tier at `t`. A bucket reports its capacity as the
    /// limit, the calls it would accept at once as remaining, the time until it is full as
    /// the reset, and the time it takes to fill as the window.
    pub(crate) fn view(
        &self,
        limiter: Limiter,
        limit: u64,
        period: Duration,
        t: Timestamp,
    ) -> WindowView {
        match *self {
            Meter::Fixed { start, count } => {
                let current = window_start(t, period);
                let count = if current == start { count } else { 0 };
                WindowView {
                    limit,
                    remaining: limit.saturating_sub(count),
                    reset: current.plus(period).since(t),
                    period,
                }
            }
            Meter::Bucket { tat } => {
                let interval = emission(limit, period);
                let capacity = limiter.capacity(limit);
                let tolerance = limiter.tolerance(limit, period).unwrap_or_default();
                // Calls accepted at once: those whose arrival fits under the tolerance.
                let room = t.plus(tolerance).plus(interval).since(tat);
                let remaining = (room.as_nanos() / interval.as_nanos().max(1)) as u64;
                WindowView {
                    limit: capacity,
                    remaining: remaining.min(capacity),
                    reset: tat.since(t),
                    period: interval * u32::try_from(capacity).unwrap_or(u32::MAX),
                }
            }
        }
    }
}

/// The start of the fixed window of length `period` holding `t`, windows aligned on the epoch.
fn window_start(t: Timestamp, period: Duration) -> Timestamp {
    let p = qo_core::time::duration_micros(period).max(1);
    Timestamp::from_micros(t.as_micros() / p * p)
}

/// What an API's rate-limit headers say about one tier at one instant: its limit, the calls
/// it still accepts, and when it resets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowView {
    /// The tier's limit per window.
    pub limit: u64,
    /// `limit` minus the calls accepted in the window (rolling: `(t - period, t]`; calendar:
    /// the current UTC period), at least 0.
    pub remaining: u64,
    /// Rolling: until the oldest accepted call in the window leaves it (zero when the window
    /// is empty). Calendar: until the period ends.
    pub reset: Duration,
    /// The window's length (a calendar period's nominal length, 30 days for a month).
    pub period: Duration,
}

impl WindowView {
    /// [`WindowView::reset`] in whole seconds, rounded up (0 only when it is zero).
    pub fn reset_secs(&self) -> u64 {
        self.reset.as_secs() + u64::from(self.reset.subsec_nanos() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_secs(1_700_000_000);
    const SEC: Duration = Duration::from_secs(1);

    fn at_ms(ms: u64) -> Timestamp {
        T0.plus(Duration::from_millis(ms))
    }

    /// Offers a call at each instant, counting the accepted; returns which were accepted.
    fn offer(limiter: Limiter, limit: u64, times_ms: &[u64]) -> Vec<bool> {
        let mut m = Meter::new(limiter).expect("a meter");
        times_ms
            .iter()
            .map(|&ms| {
                let ok = m.wait(limiter, limit, SEC, at_ms(ms)).is_zero();
                if ok {
                    m.count(limit, SEC, at_ms(ms));
                }
                ok
            })
            .collect()
    }

    #[test]
    fn gcra_without_burst_refuses_a_call_a_millisecond_early() {
        let g = Limiter::Gcra { burst: 0 };
        // 10/s: one call each 100 ms.
        assert_eq!(offer(g, 10, &[0, 100, 199, 200]), [true, true, false, true]);
        let mut m = Meter::new(g).expect("meter");
        m.count(10, SEC, at_ms(0));
        assert_eq!(m.wait(g, 10, SEC, at_ms(40)), Duration::from_millis(60));
    }

    #[test]
    fn gcra_takes_its_burst_at_once_then_the_steady_spacing() {
        let g = Limiter::Gcra { burst: 2 };
        // Three at once (burst 2 + 1), then one each 100 ms once the bucket drained.
        assert_eq!(
            offer(g, 10, &[0, 0, 0, 0, 100, 150, 200]),
            [true, true, true, false, true, false, true]
        );
    }

    #[test]
    fn a_token_bucket_holds_its_capacity_and_refills_at_the_rate() {
        let b = Limiter::TokenBucket { capacity: None };
        // Capacity 10 at 10/s: ten at once, the eleventh waits 100 ms.
        let mut times = vec![0; 11];
        times.push(100);
        let got = offer(b, 10, &times);
        assert_eq!(got.iter().filter(|ok| **ok).count(), 11);
        assert!(!got[10] && got[11]);
        let small = Limiter::TokenBucket { capacity: Some(2) };
        assert_eq!(offer(small, 10, &[0, 0, 0, 100]), [true, true, false, true]);
    }

    #[test]
    fn a_fixed_window_resets_on_its_boundary() {
        let f = Limiter::FixedWindow;
        // T0 is a whole second: 3 in [0, 1000), refused until 1000, then 3 more.
        assert_eq!(
            offer(f, 3, &[900, 950, 990, 995, 1_000, 1_001, 1_002, 1_003]),
            [true, true, true, false, true, true, true, false]
        );
        let mut m = Meter::new(f).expect("meter");
        for _ in 0..3 {
            assert!(m.wait(f, 3, SEC, at_ms(900)).is_zero());
            m.count(3, SEC, at_ms(900));
        }
        assert_eq!(m.wait(f, 3, SEC, at_ms(995)), Duration::from_millis(5));
    }

    #[test]
    fn a_bucket_s_headers_report_its_capacity_and_what_it_takes_now() {
        let g = Limiter::Gcra { burst: 2 };
        let mut m = Meter::new(g).expect("meter");
        let v = m.view(g, 10, SEC, at_ms(0));
        assert_eq!((v.limit, v.remaining), (3, 3));
        m.count(10, SEC, at_ms(0));
        m.count(10, SEC, at_ms(0));
        let v = m.view(g, 10, SEC, at_ms(0));
        assert_eq!((v.limit, v.remaining), (3, 1));
        assert_eq!(v.reset, Duration::from_millis(200));
        assert_eq!(v.period, Duration::from_millis(300));
    }

    #[test]
    fn names_read_back() {
        for l in Limiter::ALL.into_iter().chain([
            Limiter::TokenBucket { capacity: Some(5) },
            Limiter::Gcra { burst: 0 },
        ]) {
            assert_eq!(l.to_string().parse::<Limiter>(), Ok(l));
        }
        assert_eq!("leaky-bucket:3".parse(), Ok(Limiter::Gcra { burst: 3 }));
        assert!("token-bucket:0".parse::<Limiter>().is_err());
        assert!("gcra:x".parse::<Limiter>().unwrap_err().contains("burst"));
        assert!("cubic".parse::<Limiter>().unwrap_err().contains("expected"));
    }
}
