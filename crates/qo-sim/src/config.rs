//! The simulator's configuration: quota, faults, latency, seed and credentials.

use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use std::fmt;
use std::str::FromStr;

use qo_core::QuotaSpec;

use crate::{LimitSchedule, Limiter, SimError};

/// Which rate-limit headers the API sends on its 2xx and 429 answers, describing the tightest
/// tier in force ([`crate::enforce::tightest_tier`]; see [`crate::WindowView`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeaderScheme {
    /// None (429s still carry `Retry-After`).
    #[default]
    None,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (delta seconds,
    /// rounded up).
    XRateLimit,
    /// The IETF draft's `RateLimit-Policy: "default";q=LIMIT;w=WINDOW_S` and
    /// `RateLimit: "default";r=REMAINING;t=RESET_S`.
    Ietf,
}

impl HeaderScheme {
    /// The name `FromStr` reads: `none`, `x-ratelimit` or `ietf`.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderScheme::None => "none",
            HeaderScheme::XRateLimit => "x-ratelimit",
            HeaderScheme::Ietf => "ietf",
        }
    }
}

impl HeaderScheme {
    /// The headers (lower-case names) that describe `view` in this scheme; none for `None`.
    pub fn pairs(self, view: &crate::WindowView) -> Vec<(&'static str, String)> {
        match self {
            HeaderScheme::None => Vec::new(),
            HeaderScheme::XRateLimit => vec![
                ("x-ratelimit-limit", view.limit.to_string()),
                ("x-ratelimit-remaining", view.remaining.to_string()),
                ("x-ratelimit-reset", view.reset_secs().to_string()),
            ],
            HeaderScheme::Ietf => vec![
                (
                    "ratelimit-policy",
                    format!("\"default\";q={};w={}", view.limit, view.period.as_secs()),
                ),
                (
                    "ratelimit",
                    format!("\"default\";r={};t={}", view.remaining, view.reset_secs()),
                ),
            ],
        }
    }
}

impl FromStr for HeaderScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(HeaderScheme::None),
            "x-ratelimit" => Ok(HeaderScheme::XRateLimit),
            "ietf" => Ok(HeaderScheme::Ietf),
            _ => Err(format!(
                "rate-limit headers `{s}`: expected none, x-ratelimit or ietf"
            )),
        }
    }
}

impl fmt::Display for HeaderScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the simulated API behaves.
///
/// Build one with [`SimConfig::new`] and adjust the public fields; [`crate::SimServer::start`]
/// validates it.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The quota the client is given. The simulator enforces it, tier by tier, on accepted
    /// calls (bursts are ignored: the window count is the truth) unless [`SimConfig::limit`]
    /// says otherwise; [`crate::SimStats::max_in_any_window`] measures our calls against it.
    pub quota: QuotaSpec,
    /// The limit the simulator enforces instead of `quota`, and when it changes (a shared key,
    /// a misdocumented limit); `None`: the quota.
    pub limit: Option<LimitSchedule>,
    /// How the API counts each rolling tier of the limit: a sliding log (the default), fixed
    /// windows, a token bucket or GCRA ([`crate::limiter`]).
    pub limiter: Limiter,
    /// Whether a 429 carries `Retry-After` (whole seconds, rounded up). Many leaky buckets
    /// (nginx `limit_req`) send none.
    pub retry_after: bool,
    /// Calls per second another client on the same key takes out of the enforced limit
    /// (evenly spaced, ahead of ours when a window is full; see [`crate::enforce`]); 0: none.
    pub other_client_rate_per_s: f64,
    /// The rate-limit headers on 2xx and 429 answers.
    pub headers: HeaderScheme,
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
            limit: None,
            limiter: Limiter::SlidingLog,
            retry_after: true,
            other_client_rate_per_s: 0.0,
            headers: HeaderScheme::None,
            fail_rate: 0.0,
            outage: None,
            latency: Duration::ZERO..=Duration::ZERO,
            seed: 0,
            api_key: None,
            first_retry_after: None,
        }
    }

    /// The limit enforced: [`SimConfig::limit`], or the quota throughout.
    pub fn enforced(&self) -> LimitSchedule {
        self.limit
            .clone()
            .unwrap_or_else(|| LimitSchedule::constant(self.quota.clone()))
    }

    /// Checks the ranges; the error names the bad field and its value.
    pub fn validate(&self) -> Result<(), SimError> {
        let other = self.other_client_rate_per_s;
        if !(other.is_finite() && other >= 0.0) {
            return Err(SimError::Config {
                field: "other_client_rate_per_s",
                value: other.to_string(),
                reason: "expected a finite number of calls per second, 0 or more",
            });
        }
        if other > 0.0
            && let Some(low) = self
                .enforced()
                .segments()
                .map(|(_, s)| s.pacing_rate_per_s())
                .reduce(f64::min)
            && other >= low
        {
            return Err(SimError::Config {
                field: "other_client_rate_per_s",
                value: other.to_string(),
                reason: "expected less than the enforced limit's pacing rate at every instant \
                         (else it leaves us no share)",
            });
        }
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
    fn the_other_client_must_leave_a_share() {
        let c = SimConfig {
            other_client_rate_per_s: -1.0,
            ..base()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("`other_client_rate_per_s` = `-1`"), "{e}");
        let c = SimConfig {
            other_client_rate_per_s: 5.0,
            limit: Some("20/s;5/s@10".parse().expect("schedule")),
            ..base()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("no share"), "{e}");
        let c = SimConfig {
            other_client_rate_per_s: 4.9,
            ..c
        };
        c.validate().expect("valid");
    }

    #[test]
    fn header_schemes_parse() {
        for h in [
            HeaderScheme::None,
            HeaderScheme::XRateLimit,
            HeaderScheme::Ietf,
        ] {
            assert_eq!(h.to_string().parse::<HeaderScheme>(), Ok(h));
        }
        assert_eq!(
            "X-RateLimit".parse::<HeaderScheme>(),
            Ok(HeaderScheme::XRateLimit)
        );
        let e = "draft".parse::<HeaderScheme>().unwrap_err();
        assert!(e.contains("`draft`") && e.contains("x-ratelimit"), "{e}");
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
