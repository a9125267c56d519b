//! Printing a report: human text by default, one JSON object with `--json`; and times as
//! RFC 3339 with how far they are from now.

use std::fmt::Display;
use std::time::Duration;

use qo_core::Timestamp;
use serde::Serialize;

use super::error::OpsError;

/// Prints `report` on stdout: as pretty JSON with `json`, else as its `Display` text.
pub fn emit<R: Serialize + Display>(report: &R, json: bool) -> Result<(), OpsError> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

/// `2025-01-02T03:04:05.000Z (in 4s)` or `(... 2m ago)`.
pub fn when(t: Timestamp, now: Timestamp) -> String {
    if t >= now {
        format!("{t} (in {})", short(t.since(now)))
    } else {
        format!("{t} ({} ago)", short(now.since(t)))
    }
}

/// A duration in its largest sensible unit: `850ms`, `4.2s`, `12m`, `3.5h`, `2.0d`.
pub fn short(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{}ms", d.as_millis())
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{:.0}m", s / 60.0)
    } else if s < 86_400.0 {
        format!("{:.1}h", s / 3600.0)
    } else {
        format!("{:.1}d", s / 86_400.0)
    }
}

/// Serializes a time as RFC 3339 text.
pub fn ser_time<S: serde::Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339())
}

/// Serializes an optional time as RFC 3339 text or null.
pub fn ser_opt_time<S: serde::Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&t.to_rfc3339()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_relative_to_now() {
        let now = Timestamp::from_secs(1_700_000_000);
        assert_eq!(
            when(now.plus(Duration::from_millis(4200)), now),
            "2023-11-14T22:13:24.200Z (in 4.2s)"
        );
        assert!(when(now.minus(Duration::from_secs(120)), now).ends_with("(2m ago)"));
        assert_eq!(short(Duration::from_millis(850)), "850ms");
        assert_eq!(short(Duration::from_secs(5400)), "1.5h");
        assert_eq!(short(Duration::from_secs(2 * 86_400)), "2.0d");
    }
}
