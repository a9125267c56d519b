//! Reading configuration: every setting is an environment variable read once at cold start.
//! A missing or bad value is an error that names the variable and the value.

use std::str::FromStr;
use std::time::Duration;

/// A configuration variable was missing or bad.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable was not set.
    #[error("configuration: {name} is required but not set")]
    Missing {
        /// The variable.
        name: String,
    },
    /// A variable's value could not be used.
    #[error("configuration: {name}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A queue variable names a FIFO queue (its URL ends in `.fifo`).
    #[error(
        "configuration: {name}={value:?} is a FIFO queue (its name ends in `.fifo`): FIFO queues \
         refuse a per-message DelaySeconds, and the worker's re-queue with back-off, the retry \
         queue and the orchestrator's retention sweep all send with one; use a standard queue"
    )]
    FifoQueue {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
    },
}

/// The queue variables whose queues are sent to with a per-message delay: `QUEUE_URL` and
/// `RETRY_QUEUE_URL`.
pub const DELAYED_QUEUE_VARS: [&str; 2] = ["QUEUE_URL", "RETRY_QUEUE_URL"];

/// Refuses a FIFO queue in any of [`DELAYED_QUEUE_VARS`]: SQS does not support a per-message
/// `DelaySeconds` on FIFO queues (only a queue-wide delay), and the system relies on it.
pub fn refuse_fifo_queues(env: &(impl Env + ?Sized)) -> Result<(), ConfigError> {
    for name in DELAYED_QUEUE_VARS {
        if let Some(value) = env.get(name)
            && value.trim_end_matches('/').ends_with(".fifo")
        {
            return Err(ConfigError::FifoQueue {
                name: name.to_string(),
                value,
            });
        }
    }
    Ok(())
}

/// A source of variables: the process environment, or a map in tests.
pub trait Env {
    /// The variable's value, if set and not empty.
    fn get(&self, name: &str) -> Option<String>;

    /// A required string.
    fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.get(name).ok_or_else(|| ConfigError::Missing {
            name: name.to_string(),
        })
    }

    /// A parsed value, or `default` when unset.
    fn parsed<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
                name: name.to_string(),
                value: v.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// A duration in milliseconds, or `default` when unset.
    fn millis(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        let ms: u64 = self.parsed(name, u64::try_from(default.as_millis()).unwrap_or(u64::MAX))?;
        Ok(Duration::from_millis(ms))
    }

    /// A duration in seconds (fractions allowed), or `default` when unset.
    fn seconds(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        let s: f64 = self.parsed(name, default.as_secs_f64())?;
        Duration::try_from_secs_f64(s).map_err(|e| ConfigError::Invalid {
            name: name.to_string(),
            value: s.to_string(),
            reason: e.to_string(),
        })
    }

    /// A fraction in `[lo, hi]`, or `default` when unset.
    fn fraction(&self, name: &str, default: f64, lo: f64, hi: f64) -> Result<f64, ConfigError> {
        let f: f64 = self.parsed(name, default)?;
        if (lo..=hi).contains(&f) {
            Ok(f)
        } else {
            Err(ConfigError::Invalid {
                name: name.to_string(),
                value: f.to_string(),
                reason: format!("must be between {lo} and {hi}"),
            })
        }
    }
}

/// Reads the stack's result destinations, which both functions read: `RESULT_DESTINATIONS`
/// (comma-separated ARNs of SQS queues, SNS topics, EventBridge buses and Lambda functions;
/// empty or unset: none) and `RESULT_DEFAULT` (the name of the one a job without `reply_to`
/// gets; empty or unset: none).
pub fn result_destinations(env: &impl Env) -> Result<crate::result::Destinations, ConfigError> {
    let arns = env.get("RESULT_DESTINATIONS").unwrap_or_default();
    let default = env.get("RESULT_DEFAULT").unwrap_or_default();
    crate::result::Destinations::parse(&arns, &default).map_err(|e| {
        let (name, value) = match e {
            crate::result::DestinationError::UnknownDefault(_) => ("RESULT_DEFAULT", default),
            _ => ("RESULT_DESTINATIONS", arns),
        };
        ConfigError::Invalid {
            name: name.to_string(),
            value,
            reason: e.to_string(),
        }
    })
}

/// What jobs may ask for, from `ALLOWED_METHODS` and `ALLOWED_PATH_PREFIXES` (comma-separated;
/// unset or empty allows all). The orchestrator and the worker read it alike.
pub fn allowed_requests(env: &impl Env) -> Result<crate::allow::AllowList, ConfigError> {
    let methods = env.get("ALLOWED_METHODS").unwrap_or_default();
    let prefixes = env.get("ALLOWED_PATH_PREFIXES").unwrap_or_default();
    crate::allow::AllowList::parse(&methods, &prefixes).map_err(|e| {
        let (name, value) = match e {
            crate::allow::AllowListError::Method(_) => ("ALLOWED_METHODS", methods),
            crate::allow::AllowListError::Prefix(_) => ("ALLOWED_PATH_PREFIXES", prefixes),
        };
        ConfigError::Invalid {
            name: name.to_string(),
            value,
            reason: e.to_string(),
        }
    })
}

/// The circuit breaker's policy from `CIRCUIT_FAILURE_THRESHOLD`, `CIRCUIT_FAILURE_WINDOW_S`,
/// `HEALTH_CHECK_INITIAL_S`, `HEALTH_CHECK_MAX_S` and `HEALTH_CHECK_TIMEOUT_S`: one reader for
/// the orchestrator, the worker and `qo`, so they cannot disagree.
pub fn circuit_policy(env: &impl Env) -> Result<crate::circuit::CircuitPolicy, ConfigError> {
    let d = crate::circuit::CircuitPolicy::default();
    let invalid = |name: &str, value: String, reason: String| ConfigError::Invalid {
        name: name.to_string(),
        value,
        reason,
    };
    let positive = |name: &str, default: Duration| -> Result<Duration, ConfigError> {
        let v = env.seconds(name, default)?;
        if v.is_zero() {
            Err(invalid(
                name,
                env.get(name).unwrap_or_else(|| "0".into()),
                "must be greater than zero".into(),
            ))
        } else {
            Ok(v)
        }
    };
    let threshold: u32 = env.parsed("CIRCUIT_FAILURE_THRESHOLD", d.failure_threshold.get())?;
    let failure_threshold = std::num::NonZeroU32::new(threshold).ok_or_else(|| {
        invalid(
            "CIRCUIT_FAILURE_THRESHOLD",
            threshold.to_string(),
            "must be at least 1".into(),
        )
    })?;
    let probe_initial = positive("HEALTH_CHECK_INITIAL_S", d.probe_initial)?;
    let probe_max = env.seconds("HEALTH_CHECK_MAX_S", d.probe_max)?;
    if probe_max < probe_initial {
        return Err(invalid(
            "HEALTH_CHECK_MAX_S",
            probe_max.as_secs_f64().to_string(),
            format!(
                "must not be less than HEALTH_CHECK_INITIAL_S ({})",
                probe_initial.as_secs_f64()
            ),
        ));
    }
    Ok(crate::circuit::CircuitPolicy {
        failure_threshold,
        failure_window: positive("CIRCUIT_FAILURE_WINDOW_S", d.failure_window)?,
        probe_initial,
        probe_max,
        probe_timeout: positive("HEALTH_CHECK_TIMEOUT_S", d.probe_timeout)?,
    })
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name)
            .cloned()
            .filter(|v| !v.trim().is_empty())
    }
}

/// A map environment from `(name, value)` pairs: the variables a test (or a caller that
/// builds its settings in code) hands to a `from_env` reader in place of [`ProcessEnv`].
pub fn map_env(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Timeouts and attempts of every AWS SDK call: plain settings read from the environment. The
/// AWS adapters turn them into the SDK's own configuration; the worker checks its time budget
/// with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdkSettings {
    /// Time to establish a connection (`SDK_CONNECT_TIMEOUT_MS`, 3000).
    pub connect_timeout: Duration,
    /// Time from sending a request to the first byte of its answer (`SDK_READ_TIMEOUT_MS`, 5000).
    pub read_timeout: Duration,
    /// Attempts per call, the first included (`SDK_MAX_ATTEMPTS`, 3).
    pub max_attempts: u32,
}

impl Default for SdkSettings {
    fn default() -> Self {
        SdkSettings {
            connect_timeout: Duration::from_millis(3000),
            read_timeout: Duration::from_millis(5000),
            max_attempts: 3,
        }
    }
}

impl SdkSettings {
    /// Reads `SDK_CONNECT_TIMEOUT_MS`, `SDK_READ_TIMEOUT_MS` and `SDK_MAX_ATTEMPTS`.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let d = SdkSettings::default();
        let s = SdkSettings {
            connect_timeout: env.millis("SDK_CONNECT_TIMEOUT_MS", d.connect_timeout)?,
            read_timeout: env.millis("SDK_READ_TIMEOUT_MS", d.read_timeout)?,
            max_attempts: env.parsed("SDK_MAX_ATTEMPTS", d.max_attempts)?,
        };
        for (name, value) in [
            ("SDK_CONNECT_TIMEOUT_MS", s.connect_timeout),
            ("SDK_READ_TIMEOUT_MS", s.read_timeout),
        ] {
            if value.is_zero() {
                return Err(must_be_positive(name));
            }
        }
        if s.max_attempts == 0 {
            return Err(must_be_positive("SDK_MAX_ATTEMPTS"));
        }
        Ok(s)
    }

    /// The longest one attempt may take: connect + read.
    pub fn attempt_timeout(&self) -> Duration {
        self.connect_timeout.saturating_add(self.read_timeout)
    }

    /// The longest one call may take, backoff between attempts included:
    /// attempts x (connect + read).
    pub fn operation_timeout(&self) -> Duration {
        self.attempt_timeout().saturating_mul(self.max_attempts)
    }
}

fn must_be_positive(name: &str) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_string(),
        value: "0".to_string(),
        reason: "must be at least 1".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn errors_name_variable_and_value() {
        let env: HashMap<String, String> = [("X_MS".to_string(), "ten".to_string())]
            .into_iter()
            .collect();
        let e = env.millis("X_MS", Duration::ZERO).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration: X_MS=\"ten\" is invalid: invalid digit found in string"
        );
        let e = env.required("QUEUE_URL").unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration: QUEUE_URL is required but not set"
        );
        assert_eq!(
            env.millis("Y_MS", Duration::from_millis(7)),
            Ok(Duration::from_millis(7))
        );
    }
}
