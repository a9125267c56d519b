//! The worker invoker over Lambda: [`LambdaInvoker`] sends each [`WorkerEvent`] with
//! `InvocationType=Event`, paced by a client-side token bucket ([`InvokeLimiter`]) and retried
//! on throttling and server errors with exponential backoff and full jitter ([`Backoff`]).
//!
//! The SDK's own retries are turned off for this client: this module's loop is the only one,
//! so `INVOKE_MAX_RETRIES` means what it says and Lambda's `retryAfterSeconds` is honoured.

use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_sdk_lambda::Client;
use aws_sdk_lambda::config::http::HttpResponse;
use aws_sdk_lambda::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::operation::invoke::InvokeError as SdkInvokeError;
use aws_sdk_lambda::types::InvocationType;
use aws_smithy_types::Blob;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use qo_core::config::{ConfigError, Env};
use qo_core::event::WorkerEvent;
use qo_core::ports::{InvokeError, Invoker};
use rand::Rng;

/// The invoker's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InvokeSettings {
    /// Invokes per second, sustained (`INVOKE_RATE_PER_S`); `None` (the default, or 0): no
    /// client-side limit. The pacer already spaces invokes at the quota, and Lambda limits
    /// asynchronous invokes only by the function's concurrency, so a fixed rate here could
    /// only cap a quota faster than itself.
    pub rate_per_s: Option<f64>,
    /// Invokes allowed at once above the rate (`INVOKE_BURST`, 20).
    pub burst: u32,
    /// Retries after the first attempt on throttling and server errors (`INVOKE_MAX_RETRIES`, 4).
    pub max_retries: u32,
}

impl Default for InvokeSettings {
    fn default() -> Self {
        InvokeSettings {
            rate_per_s: None,
            burst: 20,
            max_retries: 4,
        }
    }
}

impl InvokeSettings {
    /// Reads `INVOKE_RATE_PER_S`, `INVOKE_BURST` and `INVOKE_MAX_RETRIES`.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let d = InvokeSettings::default();
        let rate: f64 = env.parsed("INVOKE_RATE_PER_S", 0.0)?;
        let s = InvokeSettings {
            rate_per_s: (rate != 0.0).then_some(rate),
            burst: env.parsed("INVOKE_BURST", d.burst)?,
            max_retries: env.parsed("INVOKE_MAX_RETRIES", d.max_retries)?,
        };
        // Checked with a nominal rate when none is set: a bad burst is refused either way.
        InvokeLimiter::new(s.rate_per_s.unwrap_or(1.0), s.burst)?;
        Ok(s)
    }

    /// Refuses a client-side rate below `pace` (the quota's calls per second), which would cap
    /// the quota: the error names `INVOKE_RATE_PER_S` and both numbers.
    pub fn check_covers(&self, pace: f64) -> Result<(), ConfigError> {
        match self.rate_per_s {
            Some(rate) if rate < pace => Err(ConfigError::Invalid {
                name: "INVOKE_RATE_PER_S".into(),
                value: rate.to_string(),
                reason: format!(
                    "is below the quota's pace of {pace}/s and would cap it; raise it or unset it"
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// A client-side token bucket in front of Invoke: `rate_per_s` sustained, `burst` at once.
#[derive(Debug)]
pub struct InvokeLimiter {
    rate_per_s: f64,
    burst: u32,
    limiter: DefaultDirectRateLimiter,
}

impl InvokeLimiter {
    /// A bucket of `burst` tokens refilled at `rate_per_s`. Errors name `INVOKE_RATE_PER_S` or
    /// `INVOKE_BURST`.
    pub fn new(rate_per_s: f64, burst: u32) -> Result<Self, ConfigError> {
        let bad = |name: &str, value: String, reason: &str| ConfigError::Invalid {
            name: name.to_string(),
            value,
            reason: reason.to_string(),
        };
        if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
            return Err(bad(
                "INVOKE_RATE_PER_S",
                rate_per_s.to_string(),
                "must be a positive number",
            ));
        }
        let burst_nz = NonZeroU32::new(burst)
            .ok_or_else(|| bad("INVOKE_BURST", burst.to_string(), "must be at least 1"))?;
        let period = Duration::try_from_secs_f64(1.0 / rate_per_s)
            .ok()
            .filter(|p| !p.is_zero())
            .ok_or_else(|| {
                bad(
                    "INVOKE_RATE_PER_S",
                    rate_per_s.to_string(),
                    "is out of range",
                )
            })?;
        let quota = Quota::with_period(period)
            .ok_or_else(|| {
                bad(
                    "INVOKE_RATE_PER_S",
                    rate_per_s.to_string(),
                    "is out of range",
                )
            })?
            .allow_burst(burst_nz);
        Ok(InvokeLimiter {
            rate_per_s,
            burst,
            limiter: RateLimiter::direct(quota),
        })
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        self.limiter.until_ready().await;
    }

    /// The sustained rate.
    pub fn rate_per_s(&self) -> f64 {
        self.rate_per_s
    }

    /// The burst.
    pub fn burst(&self) -> u32 {
        self.burst
    }
}

/// Exponential backoff with full jitter: before retry `n` (0-based) sleep a random time in
/// `[0, min(cap, base * 2^n)]`, and at least Lambda's `retryAfterSeconds` when it sends one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry's ceiling (50 ms).
    pub base: Duration,
    /// The largest ceiling (2 s).
    pub cap: Duration,
    /// A `retryAfterSeconds` above this is not waited out: the invoke fails at once with
    /// [`InvokeError::Throttled`] carrying it, and the caller decides (10 s).
    pub retry_after_limit: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
            retry_after_limit: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The ceiling before retry `n`: `min(cap, base * 2^n)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// A random sleep in `[0, ceiling(n)]`.
    pub fn jittered(&self, n: u32) -> Duration {
        let ceiling = self.ceiling(n);
        let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::rng().random_range(0..=micros))
    }
}

/// Sends worker events to a Lambda function asynchronously.
#[derive(Debug)]
pub struct LambdaInvoker {
    client: Client,
    function_name: String,
    /// The other worker functions of the pool ([`LambdaInvoker::with_pool`]), invoked by name
    /// through the same client and limiter (the Invoke API's limits are the account's).
    pool: Vec<String>,
    limiter: Option<InvokeLimiter>,
    max_retries: u32,
    backoff: Backoff,
}

impl LambdaInvoker {
    /// An invoker of `function_name` (`WORKER_FUNCTION_NAME`) with a client built from
    /// `sdk_config` with the SDK's retries turned off (this invoker retries itself).
    pub fn new(
        sdk_config: &SdkConfig,
        function_name: impl Into<String>,
        settings: &InvokeSettings,
    ) -> Result<Self, ConfigError> {
        let conf = aws_sdk_lambda::config::Builder::from(sdk_config)
            .retry_config(RetryConfig::disabled())
            .build();
        Ok(LambdaInvoker {
            client: Client::from_conf(conf),
            function_name: function_name.into(),
            pool: Vec::new(),
            limiter: settings
                .rate_per_s
                .map(|rate| InvokeLimiter::new(rate, settings.burst))
                .transpose()?,
            max_retries: settings.max_retries,
            backoff: Backoff::default(),
        })
    }

    /// The same invoker with another backoff.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The same invoker over a pool of worker functions (`WORKER_FUNCTION_NAMES`):
    /// [`Invoker::invoke_on`] invokes any of them by name; [`Invoker::invoke`] the first
    /// given to [`LambdaInvoker::new`].
    pub fn with_pool(mut self, functions: &[String]) -> Self {
        self.pool = functions
            .iter()
            .filter(|f| **f != self.function_name)
            .cloned()
            .collect();
        self
    }

    /// The function invoked.
    pub fn function_name(&self) -> &str {
        &self.function_name
    }

    /// The function `function` names: itself when it is in the pool; the only function when
    /// there is no pool (nothing to choose); else refused.
    fn target<'s>(&'s self, function: &'s str) -> Result<&'s str, InvokeError> {
        if self.pool.is_empty() || function == self.function_name {
            Ok(&self.function_name)
        } else if self.pool.iter().any(|f| f == function) {
            Ok(function)
        } else {
            Err(InvokeError::rejected(format!(
                "`{function}` is not a worker function of the pool (WORKER_FUNCTION_NAMES)"
            )))
        }
    }

    async fn attempt(&self, function: &str, payload: &[u8]) -> Result<(), Failure> {
        if let Some(limiter) = &self.limiter {
            limiter.acquire().await;
        }
        let res = self
            .client
            .invoke()
            .function_name(function)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload))
            .send()
            .await;
        match res {
            Ok(out) => match out.status_code() {
                // 202: AWS queued the event. 200: a local emulator ran it already.
                202 | 200 => {
                    if let Some(fe) = out.function_error() {
                        tracing::warn!(
                            function_error = fe,
                            "the emulated worker reported an error"
                        );
                    }
                    Ok(())
                }
                other => Err(Failure::Retry {
                    error: InvokeError::transport(format!(
                        "Invoke answered status {other}, expected 202"
                    )),
                    retry_after: None,
                }),
            },
            Err(e) => Err(classify(e)),
        }
    }
}

/// What to do about a failed attempt.
enum Failure {
    /// Worth another try (after at least `retry_after`).
    Retry {
        error: InvokeError,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help.
    Fail(InvokeError),
}

fn classify(err: SdkError<SdkInvokeError, HttpResponse>) -> Failure {
    let status = match &err {
        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
        SdkError::ConstructionFailure(_) => {
            let detail = DisplayErrorContext(&err).to_string();
            return Failure::Fail(InvokeError::rejected_by(detail, err));
        }
        // Timeouts, connection failures, unreadable answers: the network's fault.
        _ => None,
    };
    let Some(service) = err.as_service_error() else {
        return Failure::Retry {
            error: InvokeError::transport_by(DisplayErrorContext(&err).to_string(), err),
            retry_after: None,
        };
    };
    if let SdkInvokeError::TooManyRequestsException(t) = service {
        // Lambda sends it as the `Retry-After` header (the SDK reads it there); an emulator
        // may put `retryAfterSeconds` in the body only.
        let from_body = || {
            let SdkError::ServiceError(se) = &err else {
                return None;
            };
            let body: serde_json::Value = serde_json::from_slice(se.raw().body().bytes()?).ok()?;
            body.get("retryAfterSeconds")?.as_str().map(str::to_string)
        };
        let retry_after = t
            .retry_after_seconds()
            .map(str::to_string)
            .or_else(from_body)
            .and_then(|s| s.trim().parse::<f64>().ok())
            .and_then(|s| Duration::try_from_secs_f64(s).ok());
        let reason = match (t.reason(), t.message()) {
            (Some(r), Some(m)) => format!("{}: {m}", r.as_str()),
            (Some(r), None) => r.as_str().to_string(),
            (None, Some(m)) => m.to_string(),
            (None, None) => "TooManyRequestsException".to_string(),
        };
        return Failure::Retry {
            error: InvokeError::Throttled {
                reason,
                retry_after,
            },
            retry_after,
        };
    }
    let code = service.code().unwrap_or("unknown error");
    let detail = match service.message() {
        Some(m) => format!("{code}: {m}"),
        None => code.to_string(),
    };
    match status {
        Some(s) if s >= 500 => Failure::Retry {
            error: InvokeError::transport(format!("status {s}: {detail}")),
            retry_after: None,
        },
        Some(s) => Failure::Fail(InvokeError::rejected(format!("status {s}: {detail}"))),
        None => Failure::Fail(InvokeError::rejected(detail)),
    }
}

#[async_trait]
impl Invoker for LambdaInvoker {
    async fn invoke(&self, event: &WorkerEvent) -> Result<(), InvokeError> {
        self.invoke_on(&self.function_name, event).await
    }

    async fn invoke_on(&self, function: &str, event: &WorkerEvent) -> Result<(), InvokeError> {
        let function = self.target(function)?;
        let payload = serde_json::to_vec(event).map_err(|e| {
            InvokeError::rejected_by(format!("the event does not serialize: {e}"), e)
        })?;
        let mut retry = 0u32;
        loop {
            let (error, retry_after) = match self.attempt(function, &payload).await {
                Ok(()) => return Ok(()),
                Err(Failure::Fail(e)) => return Err(e),
                Err(Failure::Retry { error, retry_after }) => (error, retry_after),
            };
            if retry >= self.max_retries {
                return Err(error);
            }
            if retry_after.is_some_and(|d| d > self.backoff.retry_after_limit) {
                return Err(error);
            }
            let sleep = self
                .backoff
                .jittered(retry)
                .max(retry_after.unwrap_or_default());
            tracing::debug!(retry, ?sleep, %error, "invoke failed; retrying");
            tokio::time::sleep(sleep).await;
            retry += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn backoff_ceiling_doubles_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(50));
        assert_eq!(b.ceiling(3), Duration::from_millis(400));
        assert_eq!(b.ceiling(10), Duration::from_secs(2));
        assert_eq!(b.ceiling(40), Duration::from_secs(2));
        for n in 0..8 {
            assert!(b.jittered(n) <= b.ceiling(n));
        }
    }

    #[test]
    fn settings_are_validated_with_the_variable_named() {
        let env: HashMap<String, String> = [("INVOKE_BURST".to_string(), "0".to_string())]
            .into_iter()
            .collect();
        let e = InvokeSettings::from_env(&env).unwrap_err();
        assert!(e.to_string().contains("INVOKE_BURST=\"0\""), "{e}");
        let env: HashMap<String, String> = [("INVOKE_RATE_PER_S".to_string(), "-1".to_string())]
            .into_iter()
            .collect();
        let e = InvokeSettings::from_env(&env).unwrap_err();
        assert!(e.to_string().contains("INVOKE_RATE_PER_S"), "{e}");
        assert_eq!(
            InvokeSettings::from_env(&HashMap::<String, String>::new()).unwrap(),
            InvokeSettings::default()
        );
    }

    #[test]
    fn no_client_side_limit_by_default_and_a_set_one_must_cover_the_quota() {
        use std::collections::HashMap;
        let none: HashMap<String, String> = HashMap::new();
        let s = InvokeSettings::from_env(&none).expect("defaults");
        assert_eq!(s.rate_per_s, None);
        s.check_covers(5_000.0).expect("nothing to cap");
        let set: HashMap<String, String> =
            [("INVOKE_RATE_PER_S".to_string(), "100".to_string())].into();
        let s = InvokeSettings::from_env(&set).expect("set");
        s.check_covers(100.0).expect("covers its own rate");
        let e = s.check_covers(1_000.0).expect_err("caps a faster quota");
        assert!(
            e.to_string().contains("INVOKE_RATE_PER_S") && e.to_string().contains("1000"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn limiter_allows_the_burst_then_paces() {
        let l = InvokeLimiter::new(20.0, 3).unwrap();
        let start = std::time::Instant::now();
        for _ in 0..3 {
            l.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(40));
        for _ in 0..2 {
            l.acquire().await;
        }
        // Two more tokens at 20/s take about 100 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(80),
            "{:?}",
            start.elapsed()
        );
    }
}

/// An asynchronous invoke of one function with a JSON payload, not paced and not retried: the
/// orchestrator's invoke of itself at its deadline, so that the next run starts within
/// seconds. While the calling run still holds the function's reserved concurrency of 1, Lambda
/// accepts the event and retries it as a throttled event (about 1 s, then doubling, within the
/// function's `MaximumEventAgeInSeconds`), so it starts once the calling run has returned.
#[derive(Clone, Debug)]
pub struct AsyncInvoke {
    client: Client,
    function_name: String,
}

impl AsyncInvoke {
    /// Builds the client once (cold start).
    pub fn new(sdk_config: &SdkConfig, function_name: impl Into<String>) -> Self {
        AsyncInvoke {
            client: Client::new(sdk_config),
            function_name: function_name.into(),
        }
    }

    /// The function invoked.
    pub fn function_name(&self) -> &str {
        &self.function_name
    }

    /// Sends `payload` with `InvocationType=Event`; `Ok` once Lambda accepted it (202, or 200
    /// from an emulator).
    pub async fn invoke(&self, payload: &serde_json::Value) -> Result<(), InvokeError> {
        let bytes = serde_json::to_vec(payload).map_err(|e| {
            InvokeError::rejected_by(format!("payload is not serializable: {e}"), e)
        })?;
        let out = self
            .client
            .invoke()
            .function_name(&self.function_name)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(bytes))
            .send()
            .await
            .map_err(|e| InvokeError::transport_by(DisplayErrorContext(&e).to_string(), e))?;
        match out.status_code() {
            202 | 200 => Ok(()),
            other => Err(InvokeError::transport(format!(
                "Invoke answered status {other}, expected 202"
            ))),
        }
    }
}
