//! The HTTP server: routes, fault injection, latency, and the [`SimServer`] handle.
//!
//! Routes:
//! - [`HEALTH_PATH`] (any method): a health check, 200 `{"status":"ok"}`, or 503 in the outage.
//! - `/_sim/stats`: the [`SimStats`] as JSON (never delayed, never faulted).
//! - `/_sim/status/{code}`: answers `code` (200 to 599) with a JSON body, for tests of status
//!   handling. Not an API call: it is neither counted nor subject to quota, faults or auth.
//! - any other `/_sim/...` path: 404, not an API call.
//! - everything else is an API call, decided in this order at its arrival time: the outage
//!   (503), the key (401), a simulated failure at `fail_rate` (500), the quota (429, with
//!   `Retry-After` unless [`SimConfig::retry_after`] is off, or 200 echoing the request),
//!   counted as [`SimConfig::limiter`] says.
//!
//! The limit enforced is [`SimConfig::enforced`]: the quota, or a [`crate::LimitSchedule`]
//! whose seconds count from the server's start; another client on the key
//! ([`SimConfig::other_client_rate_per_s`]) takes its admissions out of it. With
//! [`SimConfig::headers`] set, every 2xx and 429 API answer carries the rate-limit headers of
//! the tightest tier in force, as the [`crate::Enforcer::window`] sees it just after the
//! decision (so a 2xx's remaining count has the call itself taken off).
//!
//! A tier ending in ` per function` (of the limit in force at the start) holds for each source
//! address on its own, beside the shared tiers: an API that limits per address, met by a pool
//! of worker functions each calling from its own address. A call is counted only when both
//! its source's tiers and the shared ones accept it.
//!
//! Only accepted (2xx) calls count against the quota: a faulted, refused or throttled call
//! consumes nothing. This is the laxer reading of a real API (some count failed calls too); the
//! orchestrator reserves a slot for every call it makes, so it holds under either reading.
//!
//! The arrival time is read from the clock under the server's one lock, so arrivals are
//! decided in the order of their times; the simulated latency is slept afterwards.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};
use qo_core::{Clock, QuotaSpec, Timestamp, TokioClock};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::enforce::{Admission, Enforcer, retry_after_secs};
use crate::limiter::WindowView;
use crate::record::{CallKind, CallRecord, Ledger, SimStats, with_maxima};
use crate::{HeaderScheme, LimitSchedule, SimConfig, SimError};

/// The health-check path.
pub const HEALTH_PATH: &str = "/health";
/// The prefix of the simulator's own paths (not API calls).
pub const SIM_PREFIX: &str = "/_sim/";

/// How long [`SimServer::shutdown`] waits for open connections before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

struct Inner {
    enforcer: Enforcer,
    /// Per source address, the tiers each source has to itself ([`Shared::per_source`]).
    sources: HashMap<IpAddr, Enforcer>,
    rng: StdRng,
    ledger: Ledger,
}

struct Shared {
    config: SimConfig,
    /// The limit enforced (the quota unless the config says otherwise).
    limit: LimitSchedule,
    /// The limit's tiers ending in ` per function`, enforced for each source address on its
    /// own (an API that limits per address: each worker function behind its own NAT address),
    /// beside the shared tiers.
    per_source: Option<QuotaSpec>,
    clock: Arc<dyn Clock>,
    start: Timestamp,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the ledger half-written in a way that
        // matters more than losing the simulator, so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self) -> SimStats {
        let (counters, accepted, other) = {
            let mut g = self.lock();
            let inner = &mut *g;
            // The other client's calls due by now count, ours or not.
            inner.enforcer.advance(self.clock.now());
            inner
                .ledger
                .other
                .extend(inner.enforcer.take_other_admissions());
            (
                inner.ledger.counters.clone(),
                inner.ledger.accepted.clone(),
                inner.ledger.other.clone(),
            )
        };
        with_maxima(
            counters,
            &accepted,
            &other,
            self.start,
            &self.config.quota,
            &self.limit,
        )
    }

    fn draw_latency(&self, rng: &mut StdRng) -> Duration {
        let (lo, hi) = (*self.config.latency.start(), *self.config.latency.end());
        if lo >= hi {
            return lo;
        }
        let lo_us = u64::try_from(lo.as_micros()).unwrap_or(u64::MAX);
        let hi_us = u64::try_from(hi.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.random_range(lo_us..=hi_us))
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(key) = &self.config.api_key else {
            return true;
        };
        headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| v == key)
    }

    /// Decides on a health check or API call; returns the answer and the latency to add.
    /// (A first-call 429 checks that no call was recorded before it.)
    fn decide(
        &self,
        source: IpAddr,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body_len: usize,
    ) -> (Response, Duration) {
        let path = uri.path();
        let mut g = self.lock();
        let inner = &mut *g;
        let now = self.clock.now();
        let since = now.since(self.start);
        let outage = self.config.in_outage(since);
        let (kind, response) = if path == HEALTH_PATH {
            let r = if outage {
                error(StatusCode::SERVICE_UNAVAILABLE, "simulated outage")
            } else {
                (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
            };
            (CallKind::Health, r)
        } else if outage {
            (
                CallKind::Api,
                error(StatusCode::SERVICE_UNAVAILABLE, "simulated outage"),
            )
        } else if !self.authorized(headers) {
            (
                CallKind::Api,
                error(StatusCode::UNAUTHORIZED, "missing or wrong API key"),
            )
        } else if let Some(wait) = self.config.first_retry_after
            && !inner.ledger.records.iter().any(|r| r.kind == CallKind::Api)
        {
            inner.enforcer.advance(now);
            (CallKind::Api, throttled(wait, true))
        } else if inner.rng.random::<f64>() < self.config.fail_rate {
            (
                CallKind::Api,
                error(StatusCode::INTERNAL_SERVER_ERROR, "simulated failure"),
            )
        } else {
            let admission = match &self.per_source {
                None => inner.enforcer.admit(now),
                Some(own) => {
                    let own = inner
                        .sources
                        .entry(source)
                        .or_insert_with(|| Enforcer::new(own).with_limiter(self.config.limiter));
                    inner.enforcer.admit_with(own, now)
                }
            };
            let r = match admission {
                Admission::Accepted => {
                    let counter = inner.ledger.counters.accepted + 1;
                    (
                        StatusCode::OK,
                        Json(json!({
                            "ok": true,
                            "method": method.as_str(),
                            "path": path,
                            "query": uri.query().unwrap_or(""),
                            "counter": counter,
                            "body_len": body_len,
                        })),
                    )
                        .into_response()
                }
                Admission::Throttled { retry_after } => {
                    throttled(retry_after, self.config.retry_after)
                }
            };
            (CallKind::Api, r)
        };
        inner
            .ledger
            .other
            .extend(inner.enforcer.take_other_admissions());
        let mut response = response;
        let status = response.status().as_u16();
        let remaining = if kind == CallKind::Api
            && self.config.headers != HeaderScheme::None
            && (status == 429 || (200..300).contains(&status))
        {
            let view = inner.enforcer.window(now);
            rate_limit_headers(self.config.headers, &view, response.headers_mut());
            Some(view.remaining)
        } else {
            None
        };
        tracing::debug!(method = %method, path, status, at_ms = since.as_millis(), "sim call");
        inner.ledger.record(
            now,
            CallRecord {
                at: since,
                kind,
                method: method.as_str().to_string(),
                path: path.to_string(),
                status,
                remaining,
                source: self.per_source.is_some().then_some(source),
            },
        );
        let latency = self.draw_latency(&mut inner.rng);
        (response, latency)
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": message, "status": status.as_u16()})),
    )
        .into_response()
}

fn sim_status(code: &str) -> Response {
    match code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(status) => {
            let body: Value = json!({
                "status": status.as_u16(),
                "reason": status.canonical_reason().unwrap_or(""),
                "simulated": true,
            });
            (status, Json(body)).into_response()
        }
        None => error(
            StatusCode::BAD_REQUEST,
            &format!("/_sim/status/{code}: expected a status code from 200 to 599"),
        ),
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let (response, latency) = if let Some(rest) = path.strip_prefix(SIM_PREFIX) {
        if rest == "stats" {
            return Json(shared.stats()).into_response();
        }
        let response = match rest.strip_prefix("status/") {
            Some(code) => sim_status(code),
            None => error(StatusCode::NOT_FOUND, "unknown simulator path"),
        };
        let latency = shared.draw_latency(&mut shared.lock().rng);
        (response, latency)
    } else {
        shared.decide(peer.ip(), &method, &uri, &headers, body.len())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    response
}

/// A running simulator. Dropping it stops the server at once; [`SimServer::shutdown`] stops it
/// gracefully.
pub struct SimServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SimServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimServer")
            .field("addr", &self.addr)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl SimServer {
    /// Starts a simulator on a free loopback port (127.0.0.1:0), following the system time.
    pub async fn start(config: SimConfig) -> Result<SimServer, SimError> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config).await
    }

    /// Starts a simulator on `addr` (for `qo sim`), following the system time.
    pub async fn start_on(addr: SocketAddr, config: SimConfig) -> Result<SimServer, SimError> {
        Self::start_with_clock(addr, config, Arc::new(TokioClock::system())).await
    }

    /// Starts a simulator on `addr` that reads arrival times from `clock` (e.g. a
    /// [`TokioClock`] anchored just before a UTC midnight, to test calendar tiers).
    pub async fn start_with_clock(
        addr: SocketAddr,
        config: SimConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<SimServer, SimError> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| SimError::Bind { addr, source })?;
        let start = clock.now();
        let limit = config.enforced();
        let per_source = limit.per_source();
        let shared = Arc::new(Shared {
            per_source,
            start,
            clock,
            inner: Mutex::new(Inner {
                enforcer: Enforcer::scheduled(limit.clone(), start)
                    .with_limiter(config.limiter)
                    .with_other_client(config.other_client_rate_per_s),
                sources: HashMap::new(),
                rng: StdRng::seed_from_u64(config.seed),
                ledger: Ledger::default(),
            }),
            limit,
            config,
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "simulator server failed");
            }
        });
        tracing::info!(
            addr = %local,
            quota = %shared.config.quota,
            limit = %shared.limit,
            other_client_rate_per_s = shared.config.other_client_rate_per_s,
            headers = %shared.config.headers,
            "simulator listening"
        );
        Ok(SimServer {
            addr: local,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, e.g. `http://127.0.0.1:40123` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The configuration being served.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// The instant the server started, from which the records' `at` and the limit
    /// schedule's seconds count.
    pub fn started_at(&self) -> Timestamp {
        self.shared.start
    }

    /// The limit enforced (the quota unless the config said otherwise).
    pub fn limit(&self) -> &LimitSchedule {
        &self.shared.limit
    }

    /// The counters and, per tier, the largest number of accepted calls in any window.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Arrival times of the accepted calls, since the server started, in order.
    pub fn accepted_times(&self) -> Vec<Duration> {
        let start = self.shared.start;
        self.shared
            .lock()
            .ledger
            .accepted
            .iter()
            .map(|t| t.since(start))
            .collect()
    }

    /// Every API call and health check answered so far, in arrival order.
    pub fn records(&self) -> Vec<CallRecord> {
        self.shared.lock().ledger.records.clone()
    }

    /// Stops accepting connections, lets open ones finish (up to a few seconds), and waits.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Adds the rate-limit headers of `scheme` describing `view`.
fn rate_limit_headers(scheme: HeaderScheme, view: &WindowView, headers: &mut HeaderMap) {
    for (name, value) in scheme.pairs(view) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

/// A 429, with `Retry-After` in whole seconds (rounded up, at least 1) when `header`.
fn throttled(retry_after: Duration, header: bool) -> Response {
    let secs = retry_after_secs(retry_after);
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({"error": "quota exceeded", "retry_after_s": secs})),
    )
        .into_response();
    if header {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}
