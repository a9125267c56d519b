//! The quota spec: `10/s,500/min,20000/day@calendar,300000/month`.
//!
//! Grammar: a comma list of tiers, each `LIMIT/PERIOD[@rolling|@calendar][:burst=B][ per function]`.
//! A tier ending in ` per function` applies to each worker function of the pool separately
//! (an API that limits per source address); the others are shared by the whole pool.
//! Periods: `s`, `min`, `h`, `day`, `month` (with a few aliases). A rolling month is 30 days; a
//! calendar tier resets at the UTC boundary of its period (the first of the month for `month`).
//!
//! The calendar arithmetic lives on the period ([`Period::calendar_index`],
//! [`Period::calendar_start`]); a tier of a spec is named by a [`TierId`].

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use chrono::{Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::time::{Timestamp, duration_micros};

/// The length of a tier's window.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// One second.
    #[default]
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (UTC midnight to midnight when calendar).
    Day,
    /// A month: 30 days when rolling, the UTC calendar month when calendar.
    Month,
}

impl Period {
    /// The nominal length (30 days for a month).
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3_600,
            Period::Day => 86_400,
            Period::Month => 30 * 86_400,
        })
    }

    /// Short-term periods (second, minute) set the pace; longer ones are budgets.
    pub fn is_pacing(self) -> bool {
        matches!(self, Period::Second | Period::Minute)
    }

    /// The canonical unit text.
    pub fn unit(self) -> &'static str {
        match self {
            Period::Second => "s",
            Period::Minute => "min",
            Period::Hour => "h",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The index of the UTC calendar period containing `t`: whole periods since the epoch
    /// (months since January 1970 for [`Period::Month`]).
    pub fn calendar_index(self, t: Timestamp) -> u64 {
        match self {
            Period::Month => {
                let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
                match Utc.timestamp_opt(secs, 0).single() {
                    Some(dt) => {
                        let months = i64::from(dt.year() - 1970) * 12 + i64::from(dt.month0());
                        u64::try_from(months).unwrap_or(0)
                    }
                    None => 0,
                }
            }
            p => t.as_micros() / duration_micros(p.duration()),
        }
    }

    /// The start (a UTC boundary) of the calendar period numbered `index` by
    /// [`Period::calendar_index`].
    pub fn calendar_start(self, index: u64) -> Timestamp {
        match self {
            Period::Month => {
                let year = 1970 + i32::try_from(index / 12).unwrap_or(0);
                let month = u32::try_from(index % 12).unwrap_or(0) + 1;
                match Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single() {
                    Some(dt) => Timestamp::from_secs(u64::try_from(dt.timestamp()).unwrap_or(0)),
                    None => Timestamp::EPOCH,
                }
            }
            p => Timestamp::from_micros(index.saturating_mul(duration_micros(p.duration()))),
        }
    }

    fn parse(s: &str) -> Option<Period> {
        Some(match s {
            "s" | "sec" | "second" => Period::Second,
            "min" | "m" | "minute" => Period::Minute,
            "h" | "hr" | "hour" => Period::Hour,
            "d" | "day" => Period::Day,
            "mo" | "month" => Period::Month,
            _ => return None,
        })
    }
}

/// How a tier's window moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// At most `limit` calls in any window of the period's length.
    #[default]
    Rolling,
    /// At most `limit` calls between two UTC boundaries of the period.
    Calendar,
}

/// One tier: at most `limit` calls per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tier {
    /// Calls allowed per window.
    pub limit: NonZeroU32,
    /// The window's length.
    pub period: Period,
    /// Rolling or calendar.
    pub window: WindowKind,
    /// Calls that may go back to back before pacing spaces them (1 = no burst).
    pub burst: NonZeroU32,
}

impl Tier {
    /// The tier's nominal rate in calls per second.
    pub fn rate_per_s(&self) -> f64 {
        f64::from(self.limit.get()) / self.period.duration().as_secs_f64()
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.limit, self.period.unit())?;
        if self.window == WindowKind::Calendar {
            f.write_str("@calendar")?;
        }
        if self.burst.get() > 1 {
            write!(f, ":burst={}", self.burst)?;
        }
        Ok(())
    }
}

/// Names one tier of a [`QuotaSpec`]: its position in the spec, as written.
///
/// The pacer's answers name the tier that binds with it; [`QuotaSpec::tier`] gives the tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TierId(usize);

impl TierId {
    /// The tier at `index` in the spec (0 for the first).
    pub const fn new(index: usize) -> Self {
        TierId(index)
    }

    /// The tier's position in the spec.
    pub const fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for TierId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tier {}", self.0)
    }
}

/// A whole quota: one or more tiers, all of which must hold.
///
/// ```
/// use qo_core::quota::{Period, QuotaSpec, TierId, WindowKind};
///
/// let spec: QuotaSpec = "10/s,500/min,20000/day@calendar".parse().expect("a valid spec");
/// assert_eq!(spec.tiers().len(), 3);
/// let day = spec.tier(TierId::new(2)).expect("a third tier");
/// assert_eq!((day.period, day.window), (Period::Day, WindowKind::Calendar));
/// // The pace is the tightest short-term tier: 500/min is tighter than 10/s.
/// assert!((spec.pacing_rate_per_s() - 500.0 / 60.0).abs() < 1e-9);
/// assert_eq!(spec.to_string(), "10/s,500/min,20000/day@calendar");
/// // A bad tier is named in the error.
/// let err = "10/s,5/fortnight".parse::<QuotaSpec>().unwrap_err();
/// assert!(err.to_string().contains("`fortnight`"));
///
/// // A tier may apply to each worker function of a pool separately (an API that limits per
/// // source address): 20/s and 500/min for the whole pool, and 8/s for each function.
/// let pool: QuotaSpec = "20/s,500/min,8/s per function".parse().expect("a valid spec");
/// assert_eq!(pool.tiers().len(), 2);
/// assert_eq!(pool.per_function().expect("a per-function tier").to_string(), "8/s");
/// assert_eq!(pool.to_string(), "20/s,500/min,8/s per function");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QuotaSpec {
    /// The tiers the whole pool shares.
    tiers: Vec<Tier>,
    /// The tiers each worker function has on its own (` per function`).
    per_function: Vec<Tier>,
}

/// A quota spec that could not be parsed; names the bad part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The spec was empty.
    #[error("quota spec is empty; expected e.g. `10/s,500/min,20000/day`")]
    Empty,
    /// A tier was not `LIMIT/PERIOD`.
    #[error("quota tier `{tier}`: expected LIMIT/PERIOD such as `10/s`")]
    Shape {
        /// The offending tier text.
        tier: String,
    },
    /// The limit was not a positive integer.
    #[error("quota tier `{tier}`: limit `{limit}` is not a positive integer")]
    Limit {
        /// The offending tier text.
        tier: String,
        /// The bad limit.
        limit: String,
    },
    /// The period was unknown.
    #[error("quota tier `{tier}`: unknown period `{period}` (use s, min, h, day or month)")]
    Period {
        /// The offending tier text.
        tier: String,
        /// The bad period.
        period: String,
    },
    /// The window kind was unknown.
    #[error("quota tier `{tier}`: unknown window `@{window}` (use @rolling or @calendar)")]
    Window {
        /// The offending tier text.
        tier: String,
        /// The bad window.
        window: String,
    },
    /// The option was not `burst=N` with 1 <= N <= limit.
    #[error("quota tier `{tier}`: bad option `{option}` (use :burst=N with 1 <= N <= limit)")]
    Option {
        /// The offending tier text.
        tier: String,
        /// The bad option.
        option: String,
    },
    /// Two tiers had the same period and window.
    #[error("quota spec has two `{period}` tiers; give each period once")]
    Duplicate {
        /// The repeated period.
        period: String,
    },
    /// Every tier was per function: the pool as a whole needs a limit too.
    #[error(
        "quota spec has only per-function tiers; give at least one tier for the whole pool, e.g. `20/s,8/s per function`"
    )]
    OnlyPerFunction,
}

/// The suffix that makes a tier apply to each worker function separately.
pub const PER_FUNCTION: &str = "per function";

fn check_duplicates(tiers: &[Tier]) -> Result<(), SpecError> {
    let mut seen = Vec::new();
    for t in tiers {
        let key = (t.period, t.window);
        if seen.contains(&key) {
            return Err(SpecError::Duplicate {
                period: t.period.unit().to_string(),
            });
        }
        seen.push(key);
    }
    Ok(())
}

impl QuotaSpec {
    /// A spec from tiers (at least one).
    pub fn new(tiers: Vec<Tier>) -> Result<Self, SpecError> {
        if tiers.is_empty() {
            return Err(SpecError::Empty);
        }
        check_duplicates(&tiers)?;
        Ok(QuotaSpec {
            tiers,
            per_function: Vec::new(),
        })
    }

    /// The same spec with `tiers` applying to each worker function separately (replacing any).
    pub fn with_per_function(mut self, tiers: Vec<Tier>) -> Result<Self, SpecError> {
        check_duplicates(&tiers)?;
        self.per_function = tiers;
        Ok(self)
    }

    /// The tiers each worker function has on its own, as a spec of their own (`None`: no
    /// per-function tier).
    pub fn per_function(&self) -> Option<QuotaSpec> {
        (!self.per_function.is_empty()).then(|| QuotaSpec {
            tiers: self.per_function.clone(),
            per_function: Vec::new(),
        })
    }

    /// The tiers, in the order given.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The tier `id` names, if this spec has it.
    pub fn tier(&self, id: TierId) -> Option<&Tier> {
        self.tiers.get(id.0)
    }

    /// The tiers with their ids, in the order given.
    pub fn tier_ids(&self) -> impl Iterator<Item = (TierId, &Tier)> {
        self.tiers.iter().enumerate().map(|(i, t)| (TierId(i), t))
    }

    /// The period of the tier that sets the pace (the tightest second or minute tier): the
    /// window the calls before a throttled one are counted over. A second when none paces.
    pub fn pacing_period(&self) -> std::time::Duration {
        self.tiers
            .iter()
            .filter(|t| t.period.is_pacing())
            .min_by(|a, b| a.rate_per_s().total_cmp(&b.rate_per_s()))
            .map_or(std::time::Duration::from_secs(1), |t| t.period.duration())
    }

    /// The tightest short-term rate (calls per second): the pace a backlog is served at.
    /// When the spec has only budget tiers, the tightest of those.
    pub fn pacing_rate_per_s(&self) -> f64 {
        let pacing = self
            .tiers
            .iter()
            .filter(|t| t.period.is_pacing())
            .map(Tier::rate_per_s)
            .fold(f64::INFINITY, f64::min);
        if pacing.is_finite() {
            pacing
        } else {
            self.tiers
                .iter()
                .map(Tier::rate_per_s)
                .fold(f64::INFINITY, f64::min)
        }
    }
}

fn parse_tier(raw: &str) -> Result<Tier, SpecError> {
    let tier = raw.trim();
    let err_shape = || SpecError::Shape {
        tier: tier.to_string(),
    };
    let (main, option) = match tier.split_once(':') {
        Some((m, o)) => (m, Some(o)),
        None => (tier, None),
    };
    let (rate, window) = match main.split_once('@') {
        Some((r, w)) => (r, Some(w)),
        None => (main, None),
    };
    let (limit_s, period_s) = rate.split_once('/').ok_or_else(err_shape)?;
    let limit_s = limit_s.trim().replace('_', "");
    let limit = limit_s
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| SpecError::Limit {
            tier: tier.to_string(),
            limit: limit_s.clone(),
        })?;
    let period_s = period_s.trim();
    let period = Period::parse(period_s).ok_or_else(|| SpecError::Period {
        tier: tier.to_string(),
        period: period_s.to_string(),
    })?;
    let window = match window.map(str::trim) {
        None | Some("rolling") => WindowKind::Rolling,
        Some("calendar") => WindowKind::Calendar,
        Some(w) => {
            return Err(SpecError::Window {
                tier: tier.to_string(),
                window: w.to_string(),
            });
        }
    };
    let burst = match option.map(str::trim) {
        None => NonZeroU32::MIN,
        Some(o) => o
            .strip_prefix("burst=")
            .and_then(|b| b.trim().parse::<u32>().ok())
            .and_then(NonZeroU32::new)
            .filter(|b| *b <= limit)
            .ok_or_else(|| SpecError::Option {
                tier: tier.to_string(),
                option: o.to_string(),
            })?,
    };
    Ok(Tier {
        limit,
        period,
        window,
        burst,
    })
}

impl FromStr for QuotaSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(SpecError::Empty);
        }
        let mut shared = Vec::new();
        let mut per_function = Vec::new();
        for raw in s.split(',') {
            let raw = raw.trim();
            let own = raw
                .strip_suffix(PER_FUNCTION)
                .filter(|t| t.ends_with(char::is_whitespace));
            match own {
                Some(tier) => per_function.push(parse_tier(tier)?),
                None => shared.push(parse_tier(raw)?),
            }
        }
        if shared.is_empty() {
            return Err(SpecError::OnlyPerFunction);
        }
        QuotaSpec::new(shared)?.with_per_function(per_function)
    }
}

impl fmt::Display for QuotaSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.tiers.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{t}")?;
        }
        for t in &self.per_function {
            write!(f, ",{t} {PER_FUNCTION}")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for QuotaSpec {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<QuotaSpec> for String {
    fn from(q: QuotaSpec) -> String {
        q.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_example() {
        let q: QuotaSpec = "10/s,500/min,20000/day@calendar,300000/month"
            .parse()
            .expect("valid");
        assert_eq!(q.tiers().len(), 4);
        assert_eq!(q.tiers()[2].window, WindowKind::Calendar);
        assert_eq!(q.tiers()[3].period, Period::Month);
        assert_eq!(
            q.to_string(),
            "10/s,500/min,20000/day@calendar,300000/month"
        );
        // 500/min is tighter than 10/s.
        assert!((q.pacing_rate_per_s() - 500.0 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn burst_option_round_trips() {
        let q: QuotaSpec = "10/s:burst=5".parse().expect("valid");
        assert_eq!(q.tiers()[0].burst.get(), 5);
        assert_eq!(q.to_string(), "10/s:burst=5");
    }

    #[test]
    fn errors_name_the_bad_part() {
        let e = "10/s,abc/min".parse::<QuotaSpec>().unwrap_err();
        assert!(e.to_string().contains("`abc`"), "{e}");
        let e = "10/s,5/fortnight".parse::<QuotaSpec>().unwrap_err();
        assert!(e.to_string().contains("`fortnight`"), "{e}");
        let e = "10/s@sliding".parse::<QuotaSpec>().unwrap_err();
        assert!(e.to_string().contains("@sliding"), "{e}");
        let e = "10/s:burst=50".parse::<QuotaSpec>().unwrap_err();
        assert!(e.to_string().contains("burst=50"), "{e}");
        assert_eq!("".parse::<QuotaSpec>().unwrap_err(), SpecError::Empty);
        assert!(matches!(
            "0/s".parse::<QuotaSpec>().unwrap_err(),
            SpecError::Limit { .. }
        ));
        assert!(matches!(
            "10/s,20/s".parse::<QuotaSpec>().unwrap_err(),
            SpecError::Duplicate { .. }
        ));
    }

    #[test]
    fn per_function_tiers_parse_apart_and_round_trip() {
        let q: QuotaSpec = "20/s, 500/min, 8/s per function, 300/min per function"
            .parse()
            .expect("valid");
        assert_eq!(q.tiers().len(), 2);
        let own = q.per_function().expect("per-function tiers");
        assert_eq!(own.to_string(), "8/s,300/min");
        assert_eq!(
            q.to_string(),
            "20/s,500/min,8/s per function,300/min per function"
        );
        assert_eq!(q.to_string().parse::<QuotaSpec>(), Ok(q.clone()));
        // The shared pace ignores the per-function tiers.
        assert!((q.pacing_rate_per_s() - 500.0 / 60.0).abs() < 1e-9);
        assert_eq!(
            "20/s".parse::<QuotaSpec>().map(|q| q.per_function()),
            Ok(None)
        );
        let j = serde_json::to_string(&q).expect("json");
        assert_eq!(serde_json::from_str::<QuotaSpec>(&j).expect("json"), q);
    }

    #[test]
    fn per_function_errors_name_the_bad_part() {
        assert_eq!(
            "8/s per function".parse::<QuotaSpec>(),
            Err(SpecError::OnlyPerFunction)
        );
        let e = "20/s,8/s per functions".parse::<QuotaSpec>().unwrap_err();
        assert!(e.to_string().contains("8/s per functions"), "{e}");
        let e = "20/s,x/s per function".parse::<QuotaSpec>().unwrap_err();
        assert!(e.to_string().contains("`x`"), "{e}");
        assert!(matches!(
            "20/s,8/s per function,9/s per function".parse::<QuotaSpec>(),
            Err(SpecError::Duplicate { .. })
        ));
    }

    #[test]
    fn calendar_month_boundaries() {
        // 2026-02-15 -> the next reset is 2026-03-01.
        let feb15 = Timestamp::from_secs(1_771_113_600);
        let idx = Period::Month.calendar_index(feb15);
        assert_eq!(
            Period::Month.calendar_start(idx + 1).to_rfc3339(),
            "2026-03-01T00:00:00.000Z"
        );
        assert_eq!(
            Period::Month.calendar_start(idx).to_rfc3339(),
            "2026-02-01T00:00:00.000Z"
        );
    }

    #[test]
    fn serde_as_string() {
        let q: QuotaSpec = "20/s".parse().expect("valid");
        let j = serde_json::to_string(&q).expect("json");
        assert_eq!(j, "\"20/s\"");
        let back: QuotaSpec = serde_json::from_str(&j).expect("json");
        assert_eq!(back, q);
    }
}
