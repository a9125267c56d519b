//! [`ApiClient`]: the real [`HttpCall`] over reqwest (rustls), built once per cold start.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use qo_core::job::{Job, Method, check_path};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Client, Url};

use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::http::{ApiResponse, HttpCall, HttpError};
use crate::ratelimit::RateHeaders;

/// Extra body bytes read beyond the excerpt size, so a character cut by the limit is whole.
const EXCERPT_SLACK: usize = 4;

/// How long an idle pooled connection to the API is kept: longer than the orchestrator's
/// cadence (its EventBridge schedule is one minute, and at a slow pace one execution
/// environment may see a call only every few minutes), so that a warm execution environment
/// calls on a connection it already has instead of connecting (DNS, TCP, TLS) after its slot.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// TCP keepalive on the API connections: keeps NAT and load-balancer state alive between
/// calls while the environment runs (a frozen environment sends nothing; a connection the
/// server closed meanwhile is found dead at checkout and a new one made).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// Calls the API: one reqwest client (connection pool, timeouts) for the life of the process.
///
/// The pool outlives invocations: the client is built once at cold start and its idle
/// connections are kept [`POOL_IDLE_TIMEOUT`] with [`TCP_KEEPALIVE`], so the call at a slot
/// usually goes out on a warm connection and the worker's lateness check (made just before
/// the call) is not followed by a connect. No call is ever made to warm a connection: every
/// request would count against the API's quota.
///
/// Requests go only to the configured base URL: a job's path is joined under the base path and
/// the result is checked to stay there; redirects are not followed, so the credential header is
/// never sent anywhere else.
///
/// The credential can be replaced while the client is in use ([`HttpCall::set_api_key`], after
/// the API refused it); clones share it.
#[derive(Clone)]
pub struct ApiClient {
    client: Client,
    base: Url,
    health_path: String,
    auth_header: HeaderName,
    auth_prefix: String,
    /// `IDEMPOTENCY_KEY_HEADER`: where a job's `id` goes.
    idempotency_header: Option<HeaderName>,
    credential: Arc<RwLock<Option<(HeaderName, HeaderValue)>>>,
    body_limit: usize,
    /// The rate-limit headers kept from each answer (`RATE_LIMIT_HEADERS`).
    rate_names: Arc<[HeaderName]>,
    /// Whether answers are read whole (the stack has destinations, or the user's code reads
    /// them): the body is read up to `RESULT_BODY_MAX_BYTES`, and `result_headers` are kept.
    results: bool,
    result_headers: Arc<[HeaderName]>,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base.as_str())
            .field("health_path", &self.health_path)
            .field("credential", &self.credential_header())
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Builds the client. `api_key`, when given, is sent in `config.auth_header` after
    /// `config.auth_prefix`; it is marked sensitive and never logged.
    pub fn new(config: &WorkerConfig, api_key: Option<&str>) -> Result<ApiClient, WorkerError> {
        let client = Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .timeout(config.call_budget())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_keepalive(TCP_KEEPALIVE)
            .redirect(reqwest::redirect::Policy::none())
            .local_address(config.local_address)
            .user_agent(concat!(
                "quota-orchestrator-worker/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(WorkerError::Client)?;
        let credential = credential(&config.auth_header, &config.auth_prefix, api_key)?;
        Ok(ApiClient {
            client,
            base: config.api_base_url.clone(),
            health_path: config.health_path.clone(),
            auth_header: config.auth_header.clone(),
            auth_prefix: config.auth_prefix.clone(),
            idempotency_header: config.idempotency_header.clone(),
            credential: Arc::new(RwLock::new(credential)),
            // With result destinations a result carries the body; else only an excerpt of it.
            body_limit: if config.destinations.is_empty() {
                config.excerpt_bytes + EXCERPT_SLACK
            } else {
                config
                    .result_body_max
                    .max(config.excerpt_bytes + EXCERPT_SLACK)
            },
            rate_names: config.rate_limit_headers.names().into(),
            results: !config.destinations.is_empty(),
            result_headers: if config.destinations.is_empty() {
                Arc::from([])
            } else {
                config.result_headers.clone().into()
            },
        })
    }

    /// The client reading whole answers (up to `RESULT_BODY_MAX_BYTES`, with the
    /// `RESULT_HEADERS`) as with result destinations: for the user's code around the call
    /// ([`crate::AroundCall::reads_answers`]), which sees every answer.
    pub fn reading_whole_answers(mut self, config: &WorkerConfig) -> Self {
        self.body_limit = (config.result_body_max).max(config.excerpt_bytes + EXCERPT_SLACK);
        self.result_headers = config.result_headers.clone().into();
        self.results = true;
        self
    }

    fn credential(&self) -> Option<(HeaderName, HeaderValue)> {
        self.credential
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn credential_header(&self) -> Option<String> {
        self.credential().map(|(name, _)| name.as_str().to_string())
    }

    /// The base URL jobs are joined under.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Whether a credential header is sent.
    pub fn has_credential(&self) -> bool {
        self.credential().is_some()
    }

    /// Builds the request for a job (without sending it).
    pub fn request(&self, job: &Job) -> Result<reqwest::Request, HttpError> {
        let url = build_url(&self.base, &job.path, &job.query)?;
        let mut headers = HeaderMap::new();
        for (name, value) in &job.headers {
            let name = HeaderName::from_str(name)
                .map_err(|_| HttpError::Invalid(format!("header name `{name}`")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| HttpError::Invalid(format!("value of header `{name}`")))?;
            headers.append(name, value);
        }
        // The key replaces any value the job set under that name.
        if let (Some(name), Some(id)) = (&self.idempotency_header, &job.id) {
            let value = HeaderValue::from_str(id)
                .map_err(|_| HttpError::Invalid(format!("job id `{id}` as header `{name}`")))?;
            headers.insert(name.clone(), value);
        }
        let mut builder = self
            .client
            .request(method(job.method), url)
            .headers(headers);
        if let Some(body) = &job.body {
            builder = builder.json(body);
        }
        self.finish(builder)
    }

    /// Builds the request and adds the credential last, replacing any value a job set under
    /// the same header name.
    fn finish(&self, builder: reqwest::RequestBuilder) -> Result<reqwest::Request, HttpError> {
        let mut request = builder
            .build()
            .map_err(|e| HttpError::Invalid(e.without_url().to_string()))?;
        if let Some((name, value)) = self.credential() {
            request.headers_mut().insert(name, value);
        }
        Ok(request)
    }

    async fn send(&self, request: reqwest::Request) -> Result<ApiResponse, HttpError> {
        let mut response = self.client.execute(request).await.map_err(classify)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut rate_headers = RateHeaders::default();
        for name in self.rate_names.iter() {
            if let Some(v) = response.headers().get(name).and_then(|v| v.to_str().ok()) {
                rate_headers.push(name.as_str(), v);
            }
        }
        let headers = self
            .result_headers
            .iter()
            .filter_map(|name| {
                let v = response.headers().get(name)?.to_str().ok()?;
                Some((name.as_str().to_string(), v.to_string()))
            })
            .collect();
        let mut body_start = Vec::new();
        let mut body_truncated = false;
        // The status decides; the body feeds an excerpt or a result, so a failure reading it
        // is not a failed call.
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.body_limit - body_start.len();
                    body_start.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if chunk.len() > room {
                        body_truncated = true;
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
            if body_start.len() >= self.body_limit {
                // An excerpt reads no further. A result is marked cut only when more follows.
                body_truncated = self.results && !matches!(response.chunk().await, Ok(None));
                break;
            }
        }
        Ok(ApiResponse {
            status,
            retry_after,
            rate_headers,
            body_start,
            body_truncated,
            headers,
        })
    }
}

#[async_trait]
impl HttpCall for ApiClient {
    async fn call(&self, job: &Job) -> Result<ApiResponse, HttpError> {
        let request = self.request(job)?;
        self.send(request).await
    }

    async fn health(&self) -> Result<ApiResponse, HttpError> {
        let url = build_url(&self.base, &self.health_path, &Default::default())?;
        let request = self.finish(self.client.get(url))?;
        self.send(request).await
    }

    fn set_api_key(&self, key: Option<&str>) -> Result<bool, WorkerError> {
        let next = credential(&self.auth_header, &self.auth_prefix, key)?;
        let mut current = self
            .credential
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let changed =
            current.as_ref().map(|(_, v)| v.as_bytes()) != next.as_ref().map(|(_, v)| v.as_bytes());
        *current = next;
        Ok(changed)
    }
}

/// The credential header for `api_key` (blank or absent: none), marked sensitive.
fn credential(
    header: &HeaderName,
    prefix: &str,
    api_key: Option<&str>,
) -> Result<Option<(HeaderName, HeaderValue)>, WorkerError> {
    match api_key.map(str::trim).filter(|k| !k.is_empty()) {
        None => Ok(None),
        Some(key) => {
            let mut value = HeaderValue::from_str(&format!("{prefix}{key}")).map_err(|_| {
                WorkerError::Credential {
                    header: header.to_string(),
                    reason: "the prefix and key must be visible ASCII".to_string(),
                }
            })?;
            value.set_sensitive(true);
            Ok(Some((header.clone(), value)))
        }
    }
}

fn method(m: Method) -> reqwest::Method {
    match m {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Patch => reqwest::Method::PATCH,
        Method::Delete => reqwest::Method::DELETE,
        Method::Head => reqwest::Method::HEAD,
    }
}

fn classify(e: reqwest::Error) -> HttpError {
    let e = e.without_url();
    let text = error_chain(&e);
    if e.is_timeout() {
        HttpError::Timeout(text)
    } else if e.is_connect() {
        HttpError::Connect(text)
    } else if e.is_builder() {
        HttpError::Invalid(text)
    } else {
        HttpError::Transport(text)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Joins a job's path (and its query, if the path carries one) under the base URL, keeping
/// the base path, then appends `query` encoded. Refuses a path that is not relative or whose
/// result leaves the base URL (scheme, host, port or base path), e.g. through `%2e%2e`
/// segments.
pub fn build_url(
    base: &Url,
    path: &str,
    query: &std::collections::BTreeMap<String, String>,
) -> Result<Url, HttpError> {
    // The rule `Job::validate` applies (the orchestrator's check before the slot), so that a
    // path is refused the same way on both sides; the check below that the URL stays under the
    // base is a second guard, on what the URL parser made of it.
    check_path(path).map_err(|e| HttpError::Invalid(e.to_string()))?;
    let (rel_path, rel_query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let base_path = base.path().trim_end_matches('/');
    let mut url = base.clone();
    url.set_fragment(None);
    url.set_path(&format!("{base_path}{rel_path}"));
    let mut joined_query: Vec<&str> = Vec::new();
    if let Some(q) = base.query().filter(|q| !q.is_empty()) {
        joined_query.push(q);
    }
    if let Some(q) = rel_query.filter(|q| !q.is_empty()) {
        joined_query.push(q);
    }
    if joined_query.is_empty() {
        url.set_query(None);
    } else {
        url.set_query(Some(&joined_query.join("&")));
    }
    if !query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
    }
    let stays = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username() == base.username()
        && (url.path() == base_path
            || url.path().starts_with(&format!("{base_path}/"))
            || base_path.is_empty());
    if stays {
        Ok(url)
    } else {
        Err(HttpError::Invalid(format!(
            "job path `{path}` leaves the API base URL"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn base(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn joins_under_the_base_path() {
        let none = BTreeMap::new();
        for (b, p, want) in [
            ("http://h/api/v1", "/items", "http://h/api/v1/items"),
            ("http://h/api/v1/", "/items", "http://h/api/v1/items"),
            ("http://h", "/items/42", "http://h/items/42"),
            ("http://h/", "/", "http://h/"),
            ("https://h:8443/a", "/b/c?x=1", "https://h:8443/a/b/c?x=1"),
            ("http://h/a?key=k", "/b", "http://h/a/b?key=k"),
            ("http://h/a", "/%C3%A9t%C3%A9", "http://h/a/%C3%A9t%C3%A9"),
        ] {
            let url = build_url(&base(b), p, &none).expect("joins");
            assert_eq!(url.as_str(), want, "{b} + {p}");
        }
    }

    #[test]
    fn encodes_query_parameters() {
        let query: BTreeMap<String, String> = [
            ("q".to_string(), "a b&c=d".to_string()),
            ("ü".to_string(), "x/y?#".to_string()),
        ]
        .into_iter()
        .collect();
        let url = build_url(&base("http://h/api"), "/search?page=2", &query).expect("joins");
        assert_eq!(
            url.as_str(),
            "http://h/api/search?page=2&q=a+b%26c%3Dd&%C3%BC=x%2Fy%3F%23"
        );
        let back: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(back[1], ("q".to_string(), "a b&c=d".to_string()));
        assert_eq!(back[2], ("ü".to_string(), "x/y?#".to_string()));
    }

    #[test]
    fn refuses_paths_that_leave_the_base() {
        let none = BTreeMap::new();
        for p in [
            "https://evil.example/x",
            "//evil.example/x",
            "items",
            "/../admin",
            "/%2e%2e/%2e%2e/admin",
            "/%2E%2E/admin",
            "/.%2e/admin",
            "@evil.example/x",
        ] {
            let r = build_url(&base("http://h/api/v1"), p, &none);
            assert!(matches!(r, Err(HttpError::Invalid(_))), "{p}: {r:?}");
        }
    }

    fn config(base: &str) -> WorkerConfig {
        let env: std::collections::HashMap<String, String> =
            [("API_BASE_URL".to_string(), base.to_string())]
                .into_iter()
                .collect();
        WorkerConfig::from_env(&env).expect("config")
    }

    #[test]
    fn request_carries_method_headers_body_and_credential() {
        let c = ApiClient::new(&config("http://h/api"), Some("s3cret")).expect("client");
        let job = Job::parse(
            r#"{"method":"POST","path":"/items","query":{"dry run":"yes"},
                "headers":{"X-Trace":"t1","Content-Type":"application/merge-patch+json"},
                "body":{"n":1}}"#,
        )
        .expect("job");
        let r = c.request(&job).expect("request");
        assert_eq!(r.method(), reqwest::Method::POST);
        assert_eq!(r.url().as_str(), "http://h/api/items?dry+run=yes");
        assert_eq!(r.headers()["x-trace"], "t1");
        assert_eq!(r.headers()["content-type"], "application/merge-patch+json");
        assert_eq!(r.headers()["authorization"], "Bearer s3cret");
        assert!(r.headers()["authorization"].is_sensitive());
        let body = r.body().and_then(|b| b.as_bytes()).expect("body");
        assert_eq!(body, br#"{"n":1}"#);
        // The key never shows in debug output.
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!format!("{:?}", r.headers()).contains("s3cret"));
    }

    #[test]
    fn the_job_id_goes_in_the_idempotency_header_when_one_is_named() {
        let job =
            Job::parse(r#"{"id":"order-7","path":"/v1/charges","method":"POST"}"#).expect("job");
        let mut config = WorkerConfig::new("https://api.example.com".parse().expect("url"));
        let plain = ApiClient::new(&config, None).expect("client");
        assert!(plain.request(&job).expect("request").headers().is_empty());
        config.idempotency_header = Some(HeaderName::from_static("idempotency-key"));
        let keyed = ApiClient::new(&config, None).expect("client");
        let r = keyed.request(&job).expect("request");
        assert_eq!(r.headers()["idempotency-key"], "order-7");
    }

    #[test]
    fn credential_header_wins_over_a_job_header() {
        let mut cfg = config("http://h/");
        cfg.auth_header = HeaderName::from_static("x-api-key");
        cfg.auth_prefix = String::new();
        let c = ApiClient::new(&cfg, Some("k1")).expect("client");
        let job = Job::parse(r#"{"path":"/x","headers":{"X-Api-Key":"forged"}}"#).expect("job");
        let r = c.request(&job).expect("request");
        let values: Vec<_> = r.headers().get_all("x-api-key").iter().collect();
        assert_eq!(values, vec!["k1"]);
        let none = ApiClient::new(&cfg, None).expect("client");
        assert!(!none.has_credential());
        let r = none.request(&job).expect("request");
        assert_eq!(r.headers()["x-api-key"], "forged");
    }

    #[test]
    fn a_replaced_key_is_sent_from_then_on() {
        let c = ApiClient::new(&config("http://h/"), Some("old")).expect("client");
        let job = Job::parse(r#"{"path":"/x"}"#).expect("job");
        assert!(!c.set_api_key(Some("old")).expect("set"), "the same key");
        assert!(c.set_api_key(Some(" new ")).expect("set"));
        let r = c.request(&job).expect("request");
        assert_eq!(r.headers()["authorization"], "Bearer new");
        assert!(r.headers()["authorization"].is_sensitive());
        assert!(c.set_api_key(None).expect("set"));
        assert!(!c.has_credential());
        assert!(c.set_api_key(Some("bad\nkey")).is_err());
    }

    #[test]
    fn a_key_that_is_not_a_header_value_is_refused_without_showing_it() {
        let e = ApiClient::new(&config("http://h/"), Some("bad\nkey")).unwrap_err();
        assert!(matches!(e, WorkerError::Credential { .. }));
        assert!(!e.to_string().contains("bad"), "{e}");
    }
}
