//! Argument types: ranges such as `5..50` (milliseconds or seconds).

use std::time::Duration;

/// An inclusive range `MIN..MAX` of non-negative numbers (a single number is `N..N`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    /// The start.
    pub min: f64,
    /// The end.
    pub max: f64,
}

impl Range {
    /// As milliseconds.
    pub fn millis(&self) -> std::ops::RangeInclusive<Duration> {
        Duration::from_secs_f64(self.min / 1000.0)..=Duration::from_secs_f64(self.max / 1000.0)
    }

    /// As seconds, half-open.
    pub fn seconds(&self) -> std::ops::Range<Duration> {
        Duration::from_secs_f64(self.min)..Duration::from_secs_f64(self.max)
    }
}

impl std::str::FromStr for Range {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s.split_once("..").unwrap_or((s, s));
        let num = |x: &str| {
            x.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("`{s}` is not a range MIN..MAX of non-negative numbers"))
        };
        let (min, max) = (num(a)?, num(b)?);
        if min > max {
            return Err(format!("`{s}`: MIN is greater than MAX"));
        }
        Ok(Range { min, max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges() {
        assert_eq!(
            "5..50".parse::<Range>(),
            Ok(Range {
                min: 5.0,
                max: 50.0
            })
        );
        assert_eq!("7".parse::<Range>(), Ok(Range { min: 7.0, max: 7.0 }));
        assert!("9..3".parse::<Range>().is_err());
        assert!("a..3".parse::<Range>().unwrap_err().contains("a..3"));
    }
}
