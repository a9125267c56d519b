//! The simulator's configuration: quota, faults, latency, seed and credentials.

use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use qo_core::QuotaSpec;

use crate::SimError;

/// How the simulated API behaves.
///
/// Build one with [`SimConfig::new`] and adjust the public fields; [`crate::SimServer::start`]
/// validates it.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The quota the simulator enforces, tier by tier, on accepted calls (bursts are ignored:
    /// the window count is the truth).
    pub quota: QuotaSpec,
    /// Probability in `[0, 1]` that an API call outside the outage answers 500.
    pub fail_rate: f64,
    /// When, in time since the server started, every API call and health check answers 503
    /// (`start..end`, half-open).
    pub outage: Option<Range<Duration>>,
    /// Each answer is delayed by a latency drawn uniformly from this range (after the
    /// arrival time is taken).
    pub latency: RangeInclusive<Duration>,
    /// Seed of the random generator behind faults and latencies.
    pub seed: u64,
    /// When set, API calls must carry `Authorization: Bearer <key>` or get 401.
    pub api_key: Option<String>,
    /// When set, the first API call is answered 429 with this `Retry-After` (whole seconds),
    /// as an API whose limit another client used up answers; the call is not counted.
    pub first_retry_after: Option<Duration>,
}

impl SimConfig {
    /// A healthy, instant, unauthenticated API with the given quota.
    pub fn new(quota: QuotaSpec) -> Self {
        SimConfig {
            quota,
            fail_rate: 0.0,
            outage: None,
            latency: Duration::ZERO..=Duration::ZERO,
            seed: 0,
            api_key: None,
            first_retry_after: None,
        }
    }

    /// Checks the ranges; the error names the bad field and its value.
    pub fn validate(&self) -> Result<(), SimError> {
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err(SimError::Config {
                field: "fail_rate",
                value: self.fail_rate.to_string(),
                reason: "expected a probability between 0 and 1",
            });
        }
        if self.latency.start() > self.latency.end() {
            return Err(SimError::Config {
                field: "latency",
                value: format!("{:?}", self.latency),
                reason: "expected min <= max",
            });
        }
        if let Some(o) = &self.outage
            && o.start > o.end
        {
            return Err(SimError::Config {
                field: "outage",
                value: format!("{o:?}"),
                reason: "expected start <= end (seconds from server start)",
            });
        }
        Ok(())
    }

    /// Whether `since_start` falls inside the outage window.
    pub fn in_outage(&self, since_start: Duration) -> bool {
        self.outage
            .as_ref()
            .is_some_and(|o| o.contains(&since_start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> SimConfig {
        SimConfig::new("10/s".parse().expect("spec"))
    }

    #[test]
    fn defaults_are_valid() {
        base().validate().expect("valid");
    }

    #[test]
    fn errors_name_field_and_value() {
        let c = SimConfig {
            fail_rate: 1.5,
            ..base()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`fail_rate` = `1.5`"), "{e}");

        let c = SimConfig {
            fail_rate: f64::NAN,
            ..base()
        };
        assert!(c.validate().unwrap_err().to_string().contains("NaN"));

        let c = SimConfig {
            latency: Duration::from_millis(5)..=Duration::from_millis(1),
            ..base()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`latency`"), "{e}");

        let c = SimConfig {
            outage: Some(Duration::from_secs(5)..Duration::from_secs(1)),
            ..base()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`outage`"), "{e}");
    }

    #[test]
    fn outage_is_half_open() {
        let c = SimConfig {
            outage: Some(Duration::from_secs(1)..Duration::from_secs(2)),
            ..base()
        };
        assert!(!c.in_outage(Duration::from_millis(999)));
        assert!(c.in_outage(Duration::from_secs(1)));
        assert!(c.in_outage(Duration::from_millis(1999)));
        assert!(!c.in_outage(Duration::from_secs(2)));
        assert!(!base().in_outage(Duration::from_secs(1)));
    }
}
