//! The limit the simulator enforces, and when it changes: a [`LimitSchedule`].
//!
//! Syntax: a quota spec (as [`QuotaSpec`] reads it), then any number of changes
//! `;SPEC@SECOND`, each taking effect `SECOND` seconds (a non-negative decimal) after the server
//! started, in increasing order:
//!
//! - `20/s`: 20 per second throughout.
//! - `20/s;10/s@30;20/s@60`: 20 per second, 10 per second from second 30, 20 again from 60.
//! - `10/s,500/day@calendar;5/s,500/day@calendar@45`: the change's instant is the part after
//!   the *last* `@`, so a tier's own `@calendar` stays part of its spec.
//!
//! An API whose limit is tighter than the quota the client was given plays a shared key or a
//! misdocumented limit; a change plays a provider lowering it mid-run.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use qo_core::QuotaSpec;

/// A schedule of enforced limits: the first from the start, each change from its instant.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitSchedule {
    first: QuotaSpec,
    /// `(instant since start, spec)`, strictly increasing instants, all > 0.
    changes: Vec<(Duration, QuotaSpec)>,
}

/// A schedule that could not be parsed; names the bad part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The schedule was empty.
    #[error("limit schedule is empty; expected e.g. `20/s` or `20/s;10/s@30;20/s@60`")]
    Empty,
    /// A part's spec did not parse.
    #[error("limit schedule part `{part}`: {source}")]
    Spec {
        /// The offending part, as written.
        part: String,
        /// Why its spec is wrong.
        #[source]
        source: qo_core::quota::SpecError,
    },
    /// A change lacked its `@SECOND`, or the second was not a non-negative number.
    #[error(
        "limit schedule part `{part}`: expected SPEC@SECOND, SECOND a non-negative number of \
         seconds from the start (e.g. `10/s@30`)"
    )]
    Instant {
        /// The offending part.
        part: String,
    },
    /// The first part carried an instant other than 0.
    #[error(
        "limit schedule part `{part}`: the first spec holds from the start; write a change as \
         `;SPEC@SECOND` after it"
    )]
    FirstInstant {
        /// The offending part.
        part: String,
    },
    /// A change was not later than the one before it.
    #[error(
        "limit schedule part `{part}`: changes must be in increasing order of their second, after 0"
    )]
    Order {
        /// The offending part.
        part: String,
    },
}

/// Splits `SPEC@SECOND` at the last `@` when what follows is a number; `None` for the instant
/// when there is no `@` or what follows is a window kind (`@calendar`, `@rolling`).
fn split_instant(part: &str) -> Result<(&str, Option<Duration>), ScheduleError> {
    let bad = || ScheduleError::Instant {
        part: part.to_string(),
    };
    match part.rsplit_once('@') {
        Some((spec, at)) if !at.trim().chars().all(char::is_alphabetic) => {
            let secs = at
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .ok_or_else(bad)?;
            let at = Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
            Ok((spec, Some(at)))
        }
        _ => Ok((part, None)),
    }
}

fn parse_spec(part: &str, spec: &str) -> Result<QuotaSpec, ScheduleError> {
    spec.parse().map_err(|source| ScheduleError::Spec {
        part: part.to_string(),
        source,
    })
}

impl LimitSchedule {
    /// One limit throughout.
    pub fn constant(spec: QuotaSpec) -> Self {
        LimitSchedule {
            first: spec,
            changes: Vec::new(),
        }
    }

    /// The spec in force `since` the start (a change holds from its instant, inclusive).
    pub fn spec_at(&self, since: Duration) -> &QuotaSpec {
        self.changes
            .iter()
            .rev()
            .find(|(at, _)| *at <= since)
            .map_or(&self.first, |(_, s)| s)
    }

    /// The tiers ending in ` per function` of the spec in force at the start: what the API
    /// holds for each source address on its own (a later change's are not followed).
    pub fn per_source(&self) -> Option<QuotaSpec> {
        self.first.per_function()
    }

    /// Every segment: `(from, spec)`, the first from zero, in order.
    pub fn segments(&self) -> impl Iterator<Item = (Duration, &QuotaSpec)> {
        std::iter::once((Duration::ZERO, &self.first))
            .chain(self.changes.iter().map(|(at, s)| (*at, s)))
    }

    /// Whether the limit ever changes.
    pub fn is_constant(&self) -> bool {
        self.changes.is_empty()
    }

    /// The mean of the pacing rate in force (calls per second, [`QuotaSpec::pacing_rate_per_s`])
    /// over `from..to` since the start, weighted by time; the rate at `from` when the span is
    /// empty.
    pub fn mean_pacing_rate_per_s(&self, from: Duration, to: Duration) -> f64 {
        if to <= from {
            return self.spec_at(from).pacing_rate_per_s();
        }
        let segs: Vec<(Duration, &QuotaSpec)> = self.segments().collect();
        let mut sum = 0.0;
        for (i, (start, spec)) in segs.iter().enumerate() {
            let end = segs.get(i + 1).map_or(Duration::MAX, |s| s.0);
            let (a, b) = ((*start).max(from), end.min(to));
            if b > a {
                sum += spec.pacing_rate_per_s() * (b - a).as_secs_f64();
            }
        }
        sum / (to - from).as_secs_f64()
    }
}

impl From<QuotaSpec> for LimitSchedule {
    fn from(spec: QuotaSpec) -> Self {
        LimitSchedule::constant(spec)
    }
}

impl FromStr for LimitSchedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(ScheduleError::Empty);
        }
        let mut parts = s.split(';').map(str::trim);
        let head = parts.next().unwrap_or_default();
        let first = match split_instant(head)? {
            (spec, None) => parse_spec(head, spec)?,
            (spec, Some(at)) if at.is_zero() => parse_spec(head, spec)?,
            (_, Some(_)) => {
                return Err(ScheduleError::FirstInstant {
                    part: head.to_string(),
                });
            }
        };
        let mut changes: Vec<(Duration, QuotaSpec)> = Vec::new();
        for part in parts {
            let (spec, at) = split_instant(part)?;
            let at = at.ok_or_else(|| ScheduleError::Instant {
                part: part.to_string(),
            })?;
            let spec = parse_spec(part, spec)?;
            let after = changes.last().map_or(Duration::ZERO, |c| c.0);
            if at <= after {
                return Err(ScheduleError::Order {
                    part: part.to_string(),
                });
            }
            changes.push((at, spec));
        }
        Ok(LimitSchedule { first, changes })
    }
}

impl fmt::Display for LimitSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.first)?;
        for (at, spec) in &self.changes {
            write!(f, ";{spec}@{}", at.as_secs_f64())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_single_spec_holds_throughout() {
        let s: LimitSchedule = "20/s".parse().expect("schedule");
        assert!(s.is_constant());
        assert_eq!(s.spec_at(secs(0)).to_string(), "20/s");
        assert_eq!(s.spec_at(secs(1_000_000)).to_string(), "20/s");
        assert_eq!(s.to_string(), "20/s");
        assert_eq!(s, LimitSchedule::constant("20/s".parse().expect("spec")));
    }

    #[test]
    fn changes_hold_from_their_second() {
        let s: LimitSchedule = "20/s; 10/s@30 ;20/s@60.5".parse().expect("schedule");
        let at = |ms: u64| s.spec_at(Duration::from_millis(ms)).to_string();
        assert_eq!(at(0), "20/s");
        assert_eq!(at(29_999), "20/s");
        assert_eq!(at(30_000), "10/s");
        assert_eq!(at(60_499), "10/s");
        assert_eq!(at(60_500), "20/s");
        assert_eq!(s.to_string(), "20/s;10/s@30;20/s@60.5");
        assert_eq!(s.to_string().parse::<LimitSchedule>(), Ok(s.clone()));
        let from: Vec<Duration> = s.segments().map(|(a, _)| a).collect();
        assert_eq!(from, [secs(0), secs(30), Duration::from_millis(60_500)]);
    }

    #[test]
    fn a_window_kind_is_part_of_the_spec_not_an_instant() {
        let s: LimitSchedule = "10/s,500/day@calendar;5/s,500/day@calendar@45"
            .parse()
            .expect("schedule");
        assert_eq!(s.spec_at(secs(0)).to_string(), "10/s,500/day@calendar");
        assert_eq!(s.spec_at(secs(45)).to_string(), "5/s,500/day@calendar");
        // A first part may say @0.
        let z: LimitSchedule = "7/s@0".parse().expect("schedule");
        assert_eq!(z.to_string(), "7/s");
    }

    #[test]
    fn errors_name_the_bad_part() {
        let err = |s: &str| s.parse::<LimitSchedule>().unwrap_err();
        assert_eq!(err(" "), ScheduleError::Empty);
        let e = err("20/s;10/x@30").to_string();
        assert!(
            e.contains("`10/x@30`") && e.contains("unknown period `x`"),
            "{e}"
        );
        let e = err("20/s;10/s").to_string();
        assert!(e.contains("`10/s`") && e.contains("SPEC@SECOND"), "{e}");
        let e = err("20/s;10/s@-3").to_string();
        assert!(e.contains("`10/s@-3`"), "{e}");
        let e = err("20/s;10/s@soon").to_string();
        assert!(e.contains("`10/s@soon`"), "{e}");
        let e = err("20/s@5;10/s@30").to_string();
        assert!(
            e.contains("`20/s@5`") && e.contains("from the start"),
            "{e}"
        );
        let e = err("20/s;10/s@30;5/s@30").to_string();
        assert!(e.contains("`5/s@30`") && e.contains("increasing"), "{e}");
        let e = err("20/s;10/s@0").to_string();
        assert!(e.contains("`10/s@0`") && e.contains("after 0"), "{e}");
        let e = err("20/s;;10/s@3").to_string();
        assert!(e.contains("``"), "{e}");
    }

    #[test]
    fn mean_pacing_rate_is_weighted_by_time() {
        let s: LimitSchedule = "20/s;10/s@30;20/s@60".parse().expect("schedule");
        assert_eq!(s.mean_pacing_rate_per_s(secs(0), secs(30)), 20.0);
        assert_eq!(s.mean_pacing_rate_per_s(secs(30), secs(60)), 10.0);
        assert_eq!(s.mean_pacing_rate_per_s(secs(0), secs(60)), 15.0);
        assert_eq!(s.mean_pacing_rate_per_s(secs(20), secs(40)), 15.0);
        assert_eq!(s.mean_pacing_rate_per_s(secs(0), secs(90)), 50.0 / 3.0);
        assert_eq!(s.mean_pacing_rate_per_s(secs(35), secs(35)), 10.0);
    }
}
