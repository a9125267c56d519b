//! UTC calendar periods, computed here from chrono's calendar rather than taken from the
//! pacer: the simulator is the oracle that judges the pacer's calendar arithmetic
//! ([`qo_core::quota::Period::calendar_index`]), so it must not share it.
//!
//! A period is named by its start, the UTC boundary at or before an instant.

use chrono::{DateTime, Datelike, Days, Months, NaiveTime, TimeDelta, Timelike, Utc};
use qo_core::Timestamp;
use qo_core::quota::Period;

fn to_utc(t: Timestamp) -> DateTime<Utc> {
    i64::try_from(t.as_micros())
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_micros)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn from_utc(dt: DateTime<Utc>) -> Timestamp {
    Timestamp::from_micros(u64::try_from(dt.timestamp_micros()).unwrap_or(0))
}

/// The start of the UTC `period` holding `t`: the second, minute, hour, midnight or first of
/// the month at or before it.
pub fn period_start(period: Period, t: Timestamp) -> Timestamp {
    let dt = to_utc(t);
    let midnight = dt.date_naive().and_time(NaiveTime::MIN).and_utc();
    let start = match period {
        Period::Second => midnight + TimeDelta::seconds(i64::from(dt.num_seconds_from_midnight())),
        Period::Minute => midnight + TimeDelta::minutes(i64::from(dt.hour() * 60 + dt.minute())),
        Period::Hour => midnight + TimeDelta::hours(i64::from(dt.hour())),
        Period::Day => midnight,
        Period::Month => midnight.with_day(1).expect("every month has a first day"),
    };
    from_utc(start)
}

/// The start of the UTC `period` after the one holding `t`: when a calendar count resets.
pub fn next_start(period: Period, t: Timestamp) -> Timestamp {
    let start = to_utc(period_start(period, t));
    let next = match period {
        Period::Second => start.checked_add_signed(TimeDelta::seconds(1)),
        Period::Minute => start.checked_add_signed(TimeDelta::minutes(1)),
        Period::Hour => start.checked_add_signed(TimeDelta::hours(1)),
        Period::Day => start.checked_add_days(Days::new(1)),
        Period::Month => start.checked_add_months(Months::new(1)),
    };
    next.map_or(Timestamp::from_micros(u64::MAX), from_utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> Timestamp {
        let dt = DateTime::parse_from_rfc3339(rfc3339).expect("rfc3339");
        from_utc(dt.with_timezone(&Utc))
    }

    #[test]
    fn periods_start_at_utc_boundaries() {
        let t = at("2026-02-15T13:45:30.250Z");
        assert_eq!(period_start(Period::Second, t), at("2026-02-15T13:45:30Z"));
        assert_eq!(period_start(Period::Minute, t), at("2026-02-15T13:45:00Z"));
        assert_eq!(period_start(Period::Hour, t), at("2026-02-15T13:00:00Z"));
        assert_eq!(period_start(Period::Day, t), at("2026-02-15T00:00:00Z"));
        assert_eq!(period_start(Period::Month, t), at("2026-02-01T00:00:00Z"));
        assert_eq!(next_start(Period::Second, t), at("2026-02-15T13:45:31Z"));
        assert_eq!(next_start(Period::Minute, t), at("2026-02-15T13:46:00Z"));
        assert_eq!(next_start(Period::Hour, t), at("2026-02-15T14:00:00Z"));
        assert_eq!(next_start(Period::Day, t), at("2026-02-16T00:00:00Z"));
        assert_eq!(next_start(Period::Month, t), at("2026-03-01T00:00:00Z"));
    }

    #[test]
    fn a_boundary_starts_its_own_period() {
        let midnight = at("2025-12-31T00:00:00Z");
        assert_eq!(period_start(Period::Day, midnight), midnight);
        assert_eq!(
            next_start(Period::Month, midnight),
            at("2026-01-01T00:00:00Z")
        );
        let last = midnight.minus(std::time::Duration::from_micros(1));
        assert_eq!(period_start(Period::Day, last), at("2025-12-30T00:00:00Z"));
    }
}
