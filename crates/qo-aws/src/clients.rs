//! The shared AWS SDK configuration: connect and read timeouts, the retry budget, the region and
//! an optional endpoint (moto), and the check that a function's timeout covers the SDK's worst
//! case (attempts x (connect + read) + a margin).

use std::fmt;
use std::time::Duration;

use aws_config::environment::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::{Credentials, SharedCredentialsProvider};
pub use qo_core::config::SdkSettings;

/// The region used when none is configured (moto accepts any).
pub const DEFAULT_REGION: &str = "us-east-1";

/// The AWS SDK's timeout and retry configuration made of [`SdkSettings`] (a plain settings
/// type in `qo-core`, so that the libraries that only check a budget need no SDK).
pub trait SdkTimeouts {
    /// The SDK timeouts: connect, read, per attempt and per call.
    fn timeout_config(&self) -> TimeoutConfig;
    /// The SDK timeouts for a call whose server may hold the answer for `wait` (an SQS long
    /// poll): the read, attempt and call timeouts grow by `wait`.
    fn timeout_config_with_wait(&self, wait: Duration) -> TimeoutConfig;
    /// The SDK retry policy: standard, with `max_attempts`.
    fn retry_config(&self) -> RetryConfig;
}

impl SdkTimeouts for SdkSettings {
    fn timeout_config(&self) -> TimeoutConfig {
        self.timeout_config_with_wait(Duration::ZERO)
    }

    fn timeout_config_with_wait(&self, wait: Duration) -> TimeoutConfig {
        let attempt = self.attempt_timeout().saturating_add(wait);
        TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout.saturating_add(wait))
            .operation_attempt_timeout(attempt)
            .operation_timeout(attempt.saturating_mul(self.max_attempts))
            .build()
    }

    fn retry_config(&self) -> RetryConfig {
        RetryConfig::standard().with_max_attempts(self.max_attempts.max(1))
    }
}

/// Loads the SDK configuration: credentials and region from the standard chain (region
/// [`DEFAULT_REGION`] when none is configured), the timeouts and retries of `settings`, and
/// `endpoint` (a local emulator such as moto) when given. `AWS_ENDPOINT_URL` is honoured by the
/// SDK itself; an explicit `endpoint` wins over it.
///
/// With an explicit endpoint the region is not looked up in the EC2 instance metadata service
/// (a local emulator needs none, and the lookup waits on an address that may not answer).
pub async fn load_config(settings: &SdkSettings, endpoint: Option<&str>) -> SdkConfig {
    let fallback = Region::from_static(DEFAULT_REGION);
    let region = match endpoint {
        Some(_) => RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
            .or_else(ProfileFileRegionProvider::new())
            .or_else(fallback),
        None => RegionProviderChain::default_provider().or_else(fallback),
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .timeout_config(settings.timeout_config())
        .retry_config(settings.retry_config());
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// `config` with fixed credentials instead of the standard chain: for local emulators, which
/// accept any.
pub fn with_static_credentials(
    config: &SdkConfig,
    access_key_id: &str,
    secret_access_key: &str,
) -> SdkConfig {
    let creds = Credentials::new(access_key_id, secret_access_key, None, None, "static");
    config
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(creds))
        .build()
}

/// The function's timeout cannot cover the SDK's worst case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "SDK_MAX_ATTEMPTS={attempts} x (SDK_CONNECT_TIMEOUT_MS={connect_ms} + SDK_READ_TIMEOUT_MS={read_ms}) + margin {} = {} exceeds the function timeout {}",
    Secs(*.margin), Secs(*.needed), Secs(*.function_timeout)
)]
pub struct SdkTimeoutError {
    /// `SDK_MAX_ATTEMPTS`.
    pub attempts: u32,
    /// `SDK_CONNECT_TIMEOUT_MS`.
    pub connect_ms: u128,
    /// `SDK_READ_TIMEOUT_MS`.
    pub read_ms: u128,
    /// The margin for the rest of the work.
    pub margin: Duration,
    /// attempts x (connect + read) + margin.
    pub needed: Duration,
    /// The function's timeout.
    pub function_timeout: Duration,
}

/// Seconds, without a fraction when whole.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.subsec_nanos() == 0 {
            write!(f, "{} s", self.0.as_secs())
        } else {
            write!(f, "{:.3} s", self.0.as_secs_f64())
        }
    }
}

/// Checks the timeout rule: a function's timeout must cover
/// attempts x (connect timeout + read timeout) + `margin`.
pub fn check_function_timeout(
    settings: &SdkSettings,
    function_timeout: Duration,
    margin: Duration,
) -> Result<(), SdkTimeoutError> {
    let needed = settings.operation_timeout().saturating_add(margin);
    if needed > function_timeout {
        return Err(SdkTimeoutError {
            attempts: settings.max_attempts,
            connect_ms: settings.connect_timeout.as_millis(),
            read_ms: settings.read_timeout.as_millis(),
            margin,
            needed,
            function_timeout,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qo_core::config::map_env as env;

    #[test]
    fn settings_defaults_and_overrides() {
        assert_eq!(
            SdkSettings::from_env(&env(&[])).unwrap(),
            SdkSettings::default()
        );
        let s = SdkSettings::from_env(&env(&[
            ("SDK_CONNECT_TIMEOUT_MS", "100"),
            ("SDK_READ_TIMEOUT_MS", "250"),
            ("SDK_MAX_ATTEMPTS", "2"),
        ]))
        .unwrap();
        assert_eq!(s.connect_timeout, Duration::from_millis(100));
        assert_eq!(s.read_timeout, Duration::from_millis(250));
        assert_eq!(s.max_attempts, 2);
        assert_eq!(s.operation_timeout(), Duration::from_millis(700));
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let e = SdkSettings::from_env(&env(&[("SDK_MAX_ATTEMPTS", "0")])).unwrap_err();
        assert!(e.to_string().contains("SDK_MAX_ATTEMPTS"), "{e}");
        let e = SdkSettings::from_env(&env(&[("SDK_READ_TIMEOUT_MS", "soon")])).unwrap_err();
        assert!(
            e.to_string().contains("SDK_READ_TIMEOUT_MS=\"soon\""),
            "{e}"
        );
    }

    #[test]
    fn timeout_config_carries_the_settings() {
        let s = SdkSettings::default();
        let t = s.timeout_config();
        assert_eq!(t.connect_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(t.read_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(t.operation_attempt_timeout(), Some(Duration::from_secs(8)));
        assert_eq!(t.operation_timeout(), Some(Duration::from_secs(24)));
        let long_poll = s.timeout_config_with_wait(Duration::from_secs(20));
        assert_eq!(long_poll.read_timeout(), Some(Duration::from_secs(25)));
        assert_eq!(
            long_poll.operation_attempt_timeout(),
            Some(Duration::from_secs(28))
        );
        assert_eq!(s.retry_config().max_attempts(), 3);
    }

    #[test]
    fn function_timeout_rule() {
        let s = SdkSettings::default();
        let margin = Duration::from_secs(5);
        assert!(check_function_timeout(&s, Duration::from_secs(29), margin).is_ok());
        let e = check_function_timeout(&s, Duration::from_secs(20), margin).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SDK_MAX_ATTEMPTS=3 x (SDK_CONNECT_TIMEOUT_MS=3000 + SDK_READ_TIMEOUT_MS=5000) + margin 5 s = 29 s exceeds the function timeout 20 s"
        );
        let e = check_function_timeout(&s, Duration::from_millis(28_500), margin).unwrap_err();
        assert!(e.to_string().ends_with("function timeout 28.500 s"), "{e}");
    }
}
