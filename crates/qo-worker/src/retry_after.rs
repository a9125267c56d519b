//! The `Retry-After` header (RFC 9110 §10.2.3): delta-seconds or an HTTP-date.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use qo_core::Timestamp;

/// The back-off when a 429 carries no usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest back-off taken from a header (a day): a bigger value is more likely a bug than
/// a plan.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// Parses a `Retry-After` value received at `now`: delta-seconds, or an HTTP-date (IMF-fixdate,
/// or the obsolete RFC 850 and asctime forms). `None` when it is neither. A date in the past is
/// zero; anything is capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = v.parse().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = http_date(v)?;
    let at_us = u64::try_from(at.timestamp_micros()).unwrap_or(0);
    Some(
        Timestamp::from_micros(at_us)
            .since(now)
            .min(MAX_RETRY_AFTER),
    )
}

/// The back-off for a 429: the header's, or [`DEFAULT_RETRY_AFTER`].
pub fn retry_after_or_default(value: Option<&str>, now: Timestamp) -> Duration {
    value
        .and_then(|v| parse_retry_after(v, now))
        .unwrap_or(DEFAULT_RETRY_AFTER)
}

fn http_date(v: &str) -> Option<DateTime<Utc>> {
    // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
    if let Ok(t) = DateTime::parse_from_rfc2822(v) {
        return Some(t.with_timezone(&Utc));
    }
    // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"; asctime: "Sun Nov  6 08:49:37 1994".
    let collapsed = v.split_whitespace().collect::<Vec<_>>().join(" ");
    for format in ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&collapsed, format) {
            return Some(t.and_utc());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // 1994-11-06T08:49:30Z
    const NOW: Timestamp = Timestamp::from_secs(784_111_770);

    #[test]
    fn delta_seconds() {
        assert_eq!(parse_retry_after("7", NOW), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", NOW), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", NOW),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        for v in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                parse_retry_after(v, NOW),
                Some(Duration::from_secs(7)),
                "{v}"
            );
        }
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", NOW),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn garbage_falls_back_to_the_default() {
        for v in ["", "soon", "-3", "1.5", "Sun, 32 Nov 1994 08:49:37 GMT"] {
            assert_eq!(parse_retry_after(v, NOW), None, "{v}");
        }
        assert_eq!(
            retry_after_or_default(Some("soon"), NOW),
            DEFAULT_RETRY_AFTER
        );
        assert_eq!(retry_after_or_default(None, NOW), DEFAULT_RETRY_AFTER);
        assert_eq!(
            retry_after_or_default(Some("3"), NOW),
            Duration::from_secs(3)
        );
    }
}
