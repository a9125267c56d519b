//! The worker's configuration: environment variables read once at cold start.

use std::str::FromStr;
use std::time::Duration;

use qo_core::CircuitPolicy;
use qo_core::config::{ConfigError, Env};
use qo_core::job::Job;
use qo_core::result::Destinations;
use reqwest::Url;
use reqwest::header::HeaderName;

use crate::ratelimit::{self, RateLimitHeaders};

/// Largest response excerpt a dead-letter reason may carry (SQS message attributes share the
/// message's 256 KB; a reason needs far less).
pub const MAX_EXCERPT_BYTES: usize = 16 * 1024;

/// How long a done job is remembered by default (`IDEMPOTENCY_TTL_S`).
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(86_400);

/// Everything the worker reads from the environment (the API key excepted: it comes from
/// `API_KEY`, Secrets Manager or SSM, loaded by the binary and handed to
/// [`crate::ApiClient::new`]).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerConfig {
    /// `API_BASE_URL`: absolute http(s) URL; its path is kept and job paths are joined under it.
    pub api_base_url: Url,
    /// `API_HEALTH_PATH` (default /health): the health-check path, relative to the base URL.
    pub health_path: String,
    /// `API_KEY_HEADER` (default Authorization): the header that carries the API key.
    pub auth_header: HeaderName,
    /// `API_KEY_PREFIX` (default `"Bearer "` for `Authorization`, none for any other header):
    /// written before the key.
    pub auth_prefix: String,
    /// `IDEMPOTENCY_KEY_HEADER` (default none): a header that carries each job's idempotency
    /// key (its `id`, else its first message id), for an API that answers a repeated key with
    /// its first answer (`Idempotency-Key` at Stripe, Adyen, Square and others). It closes the
    /// window in which a call repeats: the API answered and the function died before
    /// recording it.
    pub idempotency_header: Option<HeaderName>,
    /// `API_CONNECT_TIMEOUT_MS` (default 2000): TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// `API_READ_TIMEOUT_MS` (default 10000): read timeout; a call's whole budget is
    /// connect + read.
    pub read_timeout: Duration,
    /// `CALL_TOLERANCE_MS` (default 5): how late after its slot a call may still be made.
    pub call_tolerance: Duration,
    /// `MAX_SLOT_WAIT_MS` (default 5000): an event whose slot is further ahead than this is
    /// re-queued (clock skew guard) instead of being waited for.
    pub max_slot_wait: Duration,
    /// `BATCH_WINDOW_MS` (default 2000; the orchestrator's setting of the same name, which the
    /// template passes to both): a batch's last slot is at most this far after its first.
    /// Each job of a batch waits for its own slot from the invocation's start, at most
    /// `MAX_SLOT_WAIT_MS`, so the window must be shorter than that (else a batch's later jobs
    /// would be given back as too early, every time): a longer one is refused.
    pub batch_window: Duration,
    /// `IDEMPOTENCY_TTL_S` (default 86400): how long a done job is remembered.
    pub idempotency_ttl: Duration,
    /// `CLAIM_TTL_S` (default `FUNCTION_TIMEOUT_S`, else 900, Lambda's longest timeout): after
    /// this an unfinished claim may be taken again. It must outlive the invocation that holds
    /// it: a value shorter than `FUNCTION_TIMEOUT_S` is refused.
    pub claim_ttl: Duration,
    /// `RESPONSE_EXCERPT_BYTES` (default 512): at most this much of a response body goes in a
    /// dead-letter reason.
    pub excerpt_bytes: usize,
    /// `RETRY_DELAY_S` (default 5): re-queue delay after a 5xx, timeout or connection error.
    pub retry_delay: Duration,
    /// `MAX_ATTEMPTS` (default 5): a job is dead-lettered when it reaches this many attempts.
    pub max_attempts: u32,
    /// `MAX_THROTTLED` (default 100): a job is dead-lettered when the API has answered it 429
    /// this many times. A 429 is the pacer's signal, not a failed attempt: it never counts
    /// toward `MAX_ATTEMPTS`, and this much larger bound only stops a job that can never get
    /// through.
    pub max_throttled: u32,
    /// `CIRCUIT_*` and `HEALTH_CHECK_*`: the circuit breaker's policy.
    pub circuit: CircuitPolicy,
    /// `CREDENTIAL_REREAD_S` (default 60): after the API refuses the key (401/403) it is
    /// re-read at most once per this long; calls back off until the next re-read.
    pub credential_reread: Duration,
    /// `RATE_LIMIT_HEADERS` (default `auto`): which of the API's rate-limit headers to read
    /// (`auto`, `none`, `x-ratelimit`, `ietf`, or `limit=H,remaining=H,reset=H`); see
    /// [`crate::ratelimit`].
    pub rate_limit_headers: RateLimitHeaders,
    /// `API_WINDOW_REPORT_MS` (default 1000): after a success, the API's window (from its
    /// headers) is written to the control record only when few calls are left, and at most
    /// once per this long per execution environment. A 429 always writes it.
    pub api_window_report: Duration,
    /// The worker function this worker runs as (`AWS_LAMBDA_FUNCTION_NAME`, which Lambda
    /// sets; `None` outside Lambda unless set in code): a job re-queued after a 429 or a
    /// failure names it in `Origin::function`, so the orchestrator retries it through another
    /// function of the pool.
    pub function_name: Option<String>,
    /// The local address the worker's API calls leave from (`None`: the system's choice, as
    /// on Lambda, where a function's subnets and NAT gateway decide its address). `qo local`
    /// gives each function of a pool its own loopback address, so that the built-in API can
    /// limit per source address as some APIs do.
    pub local_address: Option<std::net::IpAddr>,
    /// `RESULT_DESTINATIONS` and `RESULT_DEFAULT` (default none): where jobs' results go
    /// ([`qo_core::result::Destinations`]). With none, results are not built and bodies are
    /// read only for excerpts.
    pub destinations: Destinations,
    /// `ALLOWED_METHODS` and `ALLOWED_PATH_PREFIXES` (default all): a job asking for another
    /// method or path is dead-lettered, never called (the orchestrator refuses it first).
    pub allow: qo_core::allow::AllowList,
    /// `RESULT_HEADERS` (default [`DEFAULT_RESULT_HEADERS`]): the response
    /// headers a result keeps, comma-separated, any case.
    pub result_headers: Vec<HeaderName>,
    /// `RESULT_BODY_MAX_BYTES` (default 1 MiB, at most 16 MiB): the most of a response body a
    /// result carries; a longer one is cut and marked truncated. Bounded because a batch's
    /// bodies are held in the function's memory together.
    pub result_body_max: usize,
    /// How long a result's delivery may take, every try included, before the result is
    /// dead-lettered instead: one AWS SDK call's worst case (`SDK_MAX_ATTEMPTS` x (connect +
    /// read)), which the function timeout's budget counts.
    pub result_budget: Duration,
}

/// The response headers a result keeps by default (`RESULT_HEADERS`): the content type, the
/// request ids APIs send, and the common rate-limit headers.
pub const DEFAULT_RESULT_HEADERS: &str = "content-type,x-request-id,request-id,x-amzn-requestid,\
     x-ratelimit-limit,x-ratelimit-remaining,x-ratelimit-reset,ratelimit-limit,\
     ratelimit-remaining,ratelimit-reset,ratelimit,ratelimit-policy";

/// The default of `RESULT_BODY_MAX_BYTES`.
pub const DEFAULT_RESULT_BODY_MAX: usize = 1024 * 1024;

/// The largest `RESULT_BODY_MAX_BYTES`.
pub const MAX_RESULT_BODY_MAX: usize = 16 * 1024 * 1024;

impl WorkerConfig {
    /// The configuration of a worker calling `api_base_url` with every other setting at its
    /// default: what [`WorkerConfig::from_env`] reads when only `API_BASE_URL` is set. Callers
    /// that configure in code (`qo local`, tests) start here and set typed fields.
    pub fn new(api_base_url: Url) -> WorkerConfig {
        WorkerConfig {
            api_base_url,
            health_path: "/health".to_string(),
            auth_header: reqwest::header::AUTHORIZATION,
            auth_prefix: "Bearer ".to_string(),
            idempotency_header: None,
            connect_timeout: Duration::from_millis(2_000),
            read_timeout: Duration::from_millis(10_000),
            call_tolerance: Duration::from_millis(5),
            max_slot_wait: qo_core::job::DEFAULT_MAX_SLOT_WAIT,
            batch_window: DEFAULT_BATCH_WINDOW,
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
            claim_ttl: MAX_FUNCTION_TIMEOUT,
            excerpt_bytes: 512,
            retry_delay: Duration::from_secs(5),
            max_attempts: 5,
            max_throttled: 100,
            circuit: CircuitPolicy::default(),
            credential_reread: Duration::from_secs(60),
            rate_limit_headers: RateLimitHeaders::Auto,
            api_window_report: Duration::from_millis(1_000),
            function_name: None,
            local_address: None,
            destinations: Destinations::default(),
            allow: qo_core::allow::AllowList::any(),
            result_headers: result_headers(DEFAULT_RESULT_HEADERS).unwrap_or_default(),
            result_body_max: DEFAULT_RESULT_BODY_MAX,
            result_budget: qo_core::config::SdkSettings::default().operation_timeout(),
        }
    }

    /// With the claim TTL of a function whose timeout is `timeout` (what `FUNCTION_TIMEOUT_S`
    /// gives when `CLAIM_TTL_S` is unset).
    pub fn with_function_timeout(mut self, timeout: Duration) -> WorkerConfig {
        self.claim_ttl = timeout;
        self
    }

    /// Reads the configuration; a missing or bad value is an error naming the variable and
    /// the value.
    pub fn from_env(env: &impl Env) -> Result<WorkerConfig, ConfigError> {
        Self::read(env)
    }

    fn read(env: &impl Env) -> Result<WorkerConfig, ConfigError> {
        // The worker re-queues with a delay (back-off, Retry-After): no FIFO queue.
        qo_core::config::refuse_fifo_queues(env)?;
        let d = WorkerConfig::new(base_url(env)?);
        let health_path = env.get("API_HEALTH_PATH").unwrap_or(d.health_path);
        if let Err(e) = (Job {
            path: health_path.clone(),
            ..Job::default()
        })
        .validate()
        {
            return Err(invalid("API_HEALTH_PATH", &health_path, e.to_string()));
        }
        let header_text = env
            .get("API_KEY_HEADER")
            .unwrap_or_else(|| "Authorization".to_string());
        let auth_header = HeaderName::from_bytes(header_text.trim().as_bytes())
            .map_err(|e| invalid("API_KEY_HEADER", &header_text, e.to_string()))?;
        let auth_prefix = match env.get("API_KEY_PREFIX") {
            Some(p) => p,
            None if auth_header == d.auth_header => d.auth_prefix,
            None => String::new(),
        };
        if auth_prefix.chars().any(|c| c.is_control()) {
            return Err(invalid(
                "API_KEY_PREFIX",
                &auth_prefix,
                "control characters are not allowed in a header".to_string(),
            ));
        }
        let idempotency_header = idempotency_header(env, &auth_header)?;
        let excerpt_bytes: usize = env.parsed("RESPONSE_EXCERPT_BYTES", d.excerpt_bytes)?;
        if excerpt_bytes > MAX_EXCERPT_BYTES {
            return Err(invalid(
                "RESPONSE_EXCERPT_BYTES",
                &excerpt_bytes.to_string(),
                format!("must be at most {MAX_EXCERPT_BYTES}"),
            ));
        }
        let max_attempts: u32 = env.parsed("MAX_ATTEMPTS", d.max_attempts)?;
        if max_attempts == 0 {
            return Err(invalid(
                "MAX_ATTEMPTS",
                "0",
                "must be at least 1".to_string(),
            ));
        }
        let max_throttled: u32 = env.parsed("MAX_THROTTLED", d.max_throttled)?;
        if max_throttled == 0 {
            return Err(invalid(
                "MAX_THROTTLED",
                "0",
                "must be at least 1".to_string(),
            ));
        }
        let max_slot_wait = env.millis("MAX_SLOT_WAIT_MS", d.max_slot_wait)?;
        let batch_window = env.millis("BATCH_WINDOW_MS", d.batch_window)?;
        if batch_window >= max_slot_wait {
            return Err(invalid(
                "BATCH_WINDOW_MS",
                &batch_window.as_millis().to_string(),
                format!(
                    "must be shorter than MAX_SLOT_WAIT_MS={}: a batch's later slots would be \
                     further ahead than the worker waits, and be given back every time",
                    max_slot_wait.as_millis()
                ),
            ));
        }
        let rate_limit_headers = match env.get(ratelimit::ENV_VAR) {
            None => d.rate_limit_headers,
            Some(text) => RateLimitHeaders::parse(&text)
                .map_err(|why| invalid(ratelimit::ENV_VAR, &text, why))?,
        };
        Ok(WorkerConfig {
            api_base_url: d.api_base_url,
            health_path,
            auth_header,
            auth_prefix,
            idempotency_header,
            connect_timeout: positive(
                env,
                "API_CONNECT_TIMEOUT_MS",
                env.millis("API_CONNECT_TIMEOUT_MS", d.connect_timeout)?,
            )?,
            read_timeout: positive(
                env,
                "API_READ_TIMEOUT_MS",
                env.millis("API_READ_TIMEOUT_MS", d.read_timeout)?,
            )?,
            call_tolerance: env.millis("CALL_TOLERANCE_MS", d.call_tolerance)?,
            max_slot_wait,
            batch_window,
            idempotency_ttl: positive(
                env,
                "IDEMPOTENCY_TTL_S",
                env.seconds("IDEMPOTENCY_TTL_S", d.idempotency_ttl)?,
            )?,
            claim_ttl: claim_ttl(env)?,
            excerpt_bytes,
            retry_delay: env.seconds("RETRY_DELAY_S", d.retry_delay)?,
            max_attempts,
            max_throttled,
            function_name: env
                .get("AWS_LAMBDA_FUNCTION_NAME")
                .filter(|n| !n.trim().is_empty()),
            circuit: circuit_policy_from_env(env)?,
            credential_reread: positive(
                env,
                "CREDENTIAL_REREAD_S",
                env.seconds("CREDENTIAL_REREAD_S", d.credential_reread)?,
            )?,
            rate_limit_headers,
            api_window_report: env.millis("API_WINDOW_REPORT_MS", d.api_window_report)?,
            local_address: None,
            destinations: qo_core::config::result_destinations(env)?,
            allow: qo_core::config::allowed_requests(env)?,
            result_headers: match env.get("RESULT_HEADERS") {
                None => d.result_headers,
                Some(text) => {
                    result_headers(&text).map_err(|why| invalid("RESULT_HEADERS", &text, why))?
                }
            },
            result_body_max: {
                let max = env.parsed("RESULT_BODY_MAX_BYTES", d.result_body_max)?;
                if max > MAX_RESULT_BODY_MAX {
                    return Err(invalid(
                        "RESULT_BODY_MAX_BYTES",
                        &max.to_string(),
                        format!("the limit is {MAX_RESULT_BODY_MAX}"),
                    ));
                }
                max
            },
            result_budget: qo_core::config::SdkSettings::from_env(env)?.operation_timeout(),
        })
    }

    /// The longest one API call may take: connect + read timeouts.
    pub fn call_budget(&self) -> Duration {
        self.connect_timeout.saturating_add(self.read_timeout)
    }
}

/// The default of `BATCH_WINDOW_MS` (the orchestrator's too).
pub use qo_core::job::DEFAULT_BATCH_WINDOW;

/// Lambda's longest function timeout: the default claim TTL when the function timeout is not
/// known.
pub const MAX_FUNCTION_TIMEOUT: Duration = Duration::from_secs(900);

/// `CLAIM_TTL_S`, defaulting to `FUNCTION_TIMEOUT_S` (else [`MAX_FUNCTION_TIMEOUT`]); refused
/// when shorter than `FUNCTION_TIMEOUT_S`: a claim must outlive the invocation that holds it,
/// or a second delivery could claim and call while the first is still calling.
fn claim_ttl(env: &impl Env) -> Result<Duration, ConfigError> {
    let timeout = match env.get("FUNCTION_TIMEOUT_S") {
        Some(_) => Some(positive(
            env,
            "FUNCTION_TIMEOUT_S",
            env.seconds("FUNCTION_TIMEOUT_S", Duration::ZERO)?,
        )?),
        None => None,
    };
    let ttl = positive(
        env,
        "CLAIM_TTL_S",
        env.seconds("CLAIM_TTL_S", timeout.unwrap_or(MAX_FUNCTION_TIMEOUT))?,
    )?;
    if let Some(timeout) = timeout
        && ttl < timeout
    {
        return Err(invalid(
            "CLAIM_TTL_S",
            &ttl.as_secs().to_string(),
            format!(
                "shorter than FUNCTION_TIMEOUT_S={}: a claim must outlive the invocation that \
                 holds it; raise it or leave it unset (it defaults to FUNCTION_TIMEOUT_S)",
                timeout.as_secs()
            ),
        ));
    }
    Ok(ttl)
}

/// Reads the circuit policy from `CIRCUIT_FAILURE_THRESHOLD` (default 3),
/// `CIRCUIT_FAILURE_WINDOW_S` (default 60), `HEALTH_CHECK_INITIAL_S` (default 5),
/// `HEALTH_CHECK_MAX_S` (default 300) and `HEALTH_CHECK_TIMEOUT_S` (default 30).
pub fn circuit_policy_from_env(env: &impl Env) -> Result<CircuitPolicy, ConfigError> {
    qo_core::config::circuit_policy(env)
}

fn base_url(env: &impl Env) -> Result<Url, ConfigError> {
    api_base_url(&env.required("API_BASE_URL")?)
}

/// Checks `text` as `API_BASE_URL`: an absolute http(s) URL with a host, no fragment and no
/// credentials; the error names `API_BASE_URL` (and never echoes a password).
pub fn api_base_url(text: &str) -> Result<Url, ConfigError> {
    const NAME: &str = "API_BASE_URL";
    let url = Url::parse(text.trim()).map_err(|e| invalid(NAME, text, e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(NAME, text, "must be an http or https URL".into()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(NAME, text, "has no host".into()));
    }
    if url.fragment().is_some() {
        return Err(invalid(NAME, text, "must not have a #fragment".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            NAME,
            // The value may hold a password: do not echo it.
            "<redacted>",
            "must not carry credentials; use API_KEY, API_KEY_SECRET_ID or API_KEY_PARAMETER"
                .into(),
        ));
    }
    Ok(url)
}

/// `IDEMPOTENCY_KEY_HEADER`: unset or blank is none; else a header name other than the
/// credential's.
fn idempotency_header(
    env: &impl Env,
    auth_header: &HeaderName,
) -> Result<Option<HeaderName>, ConfigError> {
    const VAR: &str = "IDEMPOTENCY_KEY_HEADER";
    let Some(text) = env.get(VAR).filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    let name = HeaderName::from_bytes(text.trim().as_bytes())
        .map_err(|e| invalid(VAR, &text, e.to_string()))?;
    if name == *auth_header {
        return Err(invalid(
            VAR,
            &text,
            "is the API key's header (API_KEY_HEADER)".to_string(),
        ));
    }
    Ok(Some(name))
}

fn positive(env: &impl Env, name: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        let value = env.get(name).unwrap_or_else(|| "0".to_string());
        Err(invalid(
            name,
            &value,
            "must be greater than zero".to_string(),
        ))
    } else {
        Ok(d)
    }
}

/// Reads a comma-separated list of header names.
fn result_headers(text: &str) -> Result<Vec<HeaderName>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| HeaderName::from_str(h).map_err(|_| format!("`{h}` is not a header name")))
        .collect()
}

fn invalid(name: &str, value: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_string(),
        value: value.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qo_core::config::map_env as env;

    #[test]
    fn a_fifo_queue_is_refused_naming_the_variable_the_value_and_why() {
        for name in ["QUEUE_URL", "RETRY_QUEUE_URL"] {
            let url = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs.fifo";
            let e = WorkerConfig::from_env(&env(&[
                ("API_BASE_URL", "https://api.example/"),
                (
                    "QUEUE_URL",
                    "https://sqs.us-east-1.amazonaws.com/123456789012/jobs",
                ),
                (name, url),
            ]))
            .unwrap_err();
            assert!(
                matches!(&e, ConfigError::FifoQueue { name: n, value } if n == name && value == url),
                "{e:?}"
            );
            let text = e.to_string();
            for part in [name, url, "per-message DelaySeconds"] {
                assert!(text.contains(part), "missing `{part}` in: {text}");
            }
        }
    }

    #[test]
    fn defaults() {
        let c = WorkerConfig::from_env(&env(&[("API_BASE_URL", "https://api.example/v2/")]))
            .expect("valid");
        assert_eq!(c.api_base_url.path(), "/v2/");
        assert_eq!(c.health_path, "/health");
        assert_eq!(c.auth_header, reqwest::header::AUTHORIZATION);
        assert_eq!(c.auth_prefix, "Bearer ");
        assert_eq!(c.connect_timeout, Duration::from_millis(2_000));
        assert_eq!(c.read_timeout, Duration::from_millis(10_000));
        assert_eq!(c.call_tolerance, Duration::from_millis(5));
        assert_eq!(c.max_slot_wait, Duration::from_millis(5_000));
        assert_eq!(c.batch_window, Duration::from_millis(2_000));
        assert_eq!(c.idempotency_ttl, Duration::from_secs(86_400));
        assert_eq!(
            c.claim_ttl,
            Duration::from_secs(900),
            "Lambda's longest timeout"
        );
        assert_eq!(c.credential_reread, Duration::from_secs(60));
        assert_eq!(c.excerpt_bytes, 512);
        assert_eq!(c.retry_delay, Duration::from_secs(5));
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.max_throttled, 100);
        assert_eq!(c.rate_limit_headers, RateLimitHeaders::Auto);
        assert_eq!(c.api_window_report, Duration::from_secs(1));
        assert_eq!(c.circuit, CircuitPolicy::default());
        assert_eq!(c.call_budget(), Duration::from_secs(12));
    }

    #[test]
    fn the_idempotency_header_is_off_unless_named_and_never_the_credential_s() {
        let base = ("API_BASE_URL", "https://api.example/");
        let off = WorkerConfig::from_env(&env(&[base])).expect("valid");
        assert_eq!(off.idempotency_header, None);
        let on =
            WorkerConfig::from_env(&env(&[base, ("IDEMPOTENCY_KEY_HEADER", "Idempotency-Key")]))
                .expect("valid");
        assert_eq!(
            on.idempotency_header.as_ref().map(|h| h.as_str()),
            Some("idempotency-key")
        );
        for bad in ["Authorization", "no spaces"] {
            let e = WorkerConfig::from_env(&env(&[base, ("IDEMPOTENCY_KEY_HEADER", bad)]))
                .expect_err(bad);
            assert!(e.to_string().contains("IDEMPOTENCY_KEY_HEADER"), "{e}");
        }
    }

    #[test]
    fn a_batch_window_the_slot_wait_cannot_cover_is_refused() {
        let c = WorkerConfig::from_env(&env(&[
            ("API_BASE_URL", "http://h"),
            ("BATCH_WINDOW_MS", "4999"),
        ]))
        .expect("valid");
        assert_eq!(c.batch_window, Duration::from_millis(4_999));
        let e = WorkerConfig::from_env(&env(&[
            ("API_BASE_URL", "http://h"),
            ("BATCH_WINDOW_MS", "3000"),
            ("MAX_SLOT_WAIT_MS", "3000"),
        ]))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration: BATCH_WINDOW_MS=\"3000\" is invalid: must be shorter than \
             MAX_SLOT_WAIT_MS=3000: a batch's later slots would be further ahead than the \
             worker waits, and be given back every time"
        );
        let e = WorkerConfig::from_env(&env(&[
            ("API_BASE_URL", "http://h"),
            ("BATCH_WINDOW_MS", "soon"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("BATCH_WINDOW_MS"), "{e}");
    }

    #[test]
    fn the_claim_ttl_follows_the_function_timeout_and_may_not_be_shorter() {
        let base = [("API_BASE_URL", "http://h"), ("FUNCTION_TIMEOUT_S", "150")];
        let c = WorkerConfig::from_env(&env(&base)).expect("valid");
        assert_eq!(c.claim_ttl, Duration::from_secs(150));
        let mut longer = base.to_vec();
        longer.push(("CLAIM_TTL_S", "300"));
        let c = WorkerConfig::from_env(&env(&longer)).expect("valid");
        assert_eq!(c.claim_ttl, Duration::from_secs(300));
        let mut shorter = base.to_vec();
        shorter.push(("CLAIM_TTL_S", "120"));
        let e = WorkerConfig::from_env(&env(&shorter)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration: CLAIM_TTL_S=\"120\" is invalid: shorter than FUNCTION_TIMEOUT_S=150: a claim must outlive the \
             invocation that holds it; raise it or leave it unset (it defaults to \
             FUNCTION_TIMEOUT_S)"
        );
    }

    #[test]
    fn reads_every_variable() {
        let c = WorkerConfig::from_env(&env(&[
            ("API_BASE_URL", "http://127.0.0.1:9000"),
            ("API_HEALTH_PATH", "/status/ok"),
            ("API_KEY_HEADER", "X-Api-Key"),
            ("API_CONNECT_TIMEOUT_MS", "100"),
            ("API_READ_TIMEOUT_MS", "200"),
            ("CALL_TOLERANCE_MS", "20"),
            ("MAX_SLOT_WAIT_MS", "1000"),
            ("BATCH_WINDOW_MS", "250"),
            ("IDEMPOTENCY_TTL_S", "60"),
            ("CLAIM_TTL_S", "30"),
            ("RESPONSE_EXCERPT_BYTES", "64"),
            ("RETRY_DELAY_S", "0.5"),
            ("MAX_ATTEMPTS", "2"),
            ("MAX_THROTTLED", "40"),
            ("RATE_LIMIT_HEADERS", "ietf"),
            ("API_WINDOW_REPORT_MS", "250"),
            ("CIRCUIT_FAILURE_THRESHOLD", "7"),
            ("CIRCUIT_FAILURE_WINDOW_S", "10"),
            ("HEALTH_CHECK_INITIAL_S", "1"),
            ("HEALTH_CHECK_MAX_S", "8"),
            ("HEALTH_CHECK_TIMEOUT_S", "3"),
        ]))
        .expect("valid");
        assert_eq!(c.health_path, "/status/ok");
        assert_eq!(c.batch_window, Duration::from_millis(250));
        assert_eq!(c.auth_header.as_str(), "x-api-key");
        // Another header than Authorization has no prefix unless one is given.
        assert_eq!(c.auth_prefix, "");
        assert_eq!(c.connect_timeout, Duration::from_millis(100));
        assert_eq!(c.read_timeout, Duration::from_millis(200));
        assert_eq!(c.call_tolerance, Duration::from_millis(20));
        assert_eq!(c.max_slot_wait, Duration::from_secs(1));
        assert_eq!(c.idempotency_ttl, Duration::from_secs(60));
        assert_eq!(c.claim_ttl, Duration::from_secs(30));
        assert_eq!(c.excerpt_bytes, 64);
        assert_eq!(c.retry_delay, Duration::from_millis(500));
        assert_eq!(c.max_attempts, 2);
        assert_eq!(c.max_throttled, 40);
        assert_eq!(c.rate_limit_headers, RateLimitHeaders::Ietf);
        assert_eq!(c.api_window_report, Duration::from_millis(250));
        assert_eq!(c.circuit.failure_threshold.get(), 7);
        assert_eq!(c.circuit.failure_window, Duration::from_secs(10));
        assert_eq!(c.circuit.probe_initial, Duration::from_secs(1));
        assert_eq!(c.circuit.probe_max, Duration::from_secs(8));
        assert_eq!(c.circuit.probe_timeout, Duration::from_secs(3));
        let c = WorkerConfig::from_env(&env(&[
            ("API_BASE_URL", "http://h"),
            ("API_KEY_PREFIX", "Token "),
        ]))
        .expect("valid");
        assert_eq!(c.auth_prefix, "Token ");
    }

    #[test]
    fn errors_name_the_variable_and_value() {
        let e = WorkerConfig::from_env(&env(&[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration: API_BASE_URL is required but not set"
        );
        for (url, why) in [
            ("api.example/v1", "relative URL without a base"),
            ("ftp://api.example/", "must be an http or https URL"),
            ("https://api.example/#x", "fragment"),
        ] {
            let e = WorkerConfig::from_env(&env(&[("API_BASE_URL", url)])).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("API_BASE_URL"), "{text}");
            assert!(text.contains(url), "{text}");
            assert!(text.contains(why), "{text}");
        }
        let e =
            WorkerConfig::from_env(&env(&[("API_BASE_URL", "https://u:hunter2@h/")])).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let cases = [
            ("API_HEALTH_PATH", "health", "relative to the API base URL"),
            ("API_HEALTH_PATH", "https://elsewhere/health", "relative"),
            ("API_KEY_HEADER", "bad header", "invalid HTTP header name"),
            ("API_READ_TIMEOUT_MS", "soon", "invalid digit"),
            ("API_CONNECT_TIMEOUT_MS", "0", "greater than zero"),
            ("MAX_ATTEMPTS", "0", "at least 1"),
            ("MAX_THROTTLED", "0", "at least 1"),
            ("MAX_THROTTLED", "many", "invalid digit"),
            ("RATE_LIMIT_HEADERS", "github", "expected auto, none"),
            (
                "RATE_LIMIT_HEADERS",
                "remaining=X-Left",
                "`reset=HEADER` is required",
            ),
            ("API_WINDOW_REPORT_MS", "1s", "invalid digit"),
            ("CIRCUIT_FAILURE_THRESHOLD", "0", "at least 1"),
            ("RESPONSE_EXCERPT_BYTES", "1000000", "at most"),
            ("HEALTH_CHECK_MAX_S", "1", "HEALTH_CHECK_INITIAL_S"),
            ("RETRY_DELAY_S", "-1", "negative"),
        ];
        for (name, value, why) in cases {
            let e = WorkerConfig::from_env(&env(&[("API_BASE_URL", "http://h"), (name, value)]))
                .unwrap_err();
            let text = e.to_string();
            assert!(text.contains(name), "{name}: {text}");
            assert!(text.contains(why), "{name}: {text}");
            assert!(
                matches!(&e, ConfigError::Invalid { value: v, .. } if v == value),
                "{name}: {text}"
            );
        }
    }
}
