//! [`FaultyApi`]: the third-party API, in process: the limit it really enforces (any
//! [`qo_sim::LimitSchedule`], counted by [`qo_sim::Enforcer`]), 429s with or without
//! `Retry-After`, 500s, an outage, calls that never connect, and calls that reach the API and
//! time out before their answer. It logs every call that reached it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use qo_core::{Clock, Job, Timestamp, TokioClock};
use qo_sim::{Admission, Enforcer, LimitSchedule};
use qo_worker::{ApiResponse, HttpCall, HttpError, WorkerError};

use super::scenario::Scenario;

/// How a call that reached the API ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Answered with this status.
    Status(u16),
    /// It took effect, and the caller timed out before the answer.
    Lost,
}

/// One call that reached the API.
#[derive(Clone, Debug)]
pub struct Call {
    /// When.
    pub at: Timestamp,
    /// The job's number (`/j/<n>`), `None` for a health check.
    pub job: Option<usize>,
    /// How it ended.
    pub answer: Answer,
}

impl Call {
    /// Whether the API did the job's work: a 2xx, or an answer lost after the work.
    pub fn took_effect(&self) -> bool {
        match self.answer {
            Answer::Status(s) => (200..300).contains(&s),
            Answer::Lost => true,
        }
    }
}

struct State {
    enforcer: Enforcer,
    rng: StdRng,
    calls: Vec<Call>,
}

/// The API of one scenario.
pub struct FaultyApi {
    clock: Arc<TokioClock>,
    start: Timestamp,
    retry_after: bool,
    outage: Option<(Duration, Duration)>,
    error: f64,
    timeout_after: f64,
    connect: f64,
    state: Mutex<State>,
}

/// How long a call that times out waits before its error (the worker's read timeout is longer,
/// so the function is billed for the wait as it would be).
const TIMEOUT_WAIT: Duration = Duration::from_secs(5);

impl FaultyApi {
    /// The API `scenario` describes, from `clock`'s now.
    pub fn new(scenario: &Scenario, clock: Arc<TokioClock>) -> Result<Self, qo_sim::ScheduleError> {
        let schedule: LimitSchedule = scenario.api_limit.parse()?;
        let start = clock.now();
        let f = &scenario.faults;
        Ok(FaultyApi {
            clock,
            start,
            retry_after: scenario.retry_after,
            outage: scenario.outage,
            error: f.api_error,
            timeout_after: f.api_timeout_after,
            connect: f.api_connect,
            state: Mutex::new(State {
                enforcer: Enforcer::scheduled(schedule, start),
                rng: StdRng::seed_from_u64(scenario.seed ^ 0xA11),
                calls: Vec::new(),
            }),
        })
    }

    /// Every call that reached the API, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn answer(&self, job: Option<usize>) -> Result<ApiResponse, HttpError> {
        let now = self.clock.now();
        let since = now.since(self.start);
        let down = self
            .outage
            .is_some_and(|(from, length)| since >= from && since < from + length);
        let (response, lost) = {
            let mut st = self.lock();
            if down || st.rng.random::<f64>() < self.connect {
                return Err(HttpError::Connect("connection refused (injected)".into()));
            }
            let admission = st.enforcer.admit(now);
            let fail = st.rng.random::<f64>() < self.error;
            let lost = st.rng.random::<f64>() < self.timeout_after;
            let response = match admission {
                Admission::Throttled { retry_after } => ApiResponse {
                    retry_after: self
                        .retry_after
                        .then(|| qo_sim::enforce::retry_after_secs(retry_after).to_string()),
                    ..ApiResponse::status(429)
                },
                Admission::Accepted if fail => ApiResponse::status(500),
                Admission::Accepted => ApiResponse::status(200),
            };
            let lost = lost && response.status == 200;
            let answer = if lost {
                Answer::Lost
            } else {
                Answer::Status(response.status)
            };
            st.calls.push(Call {
                at: now,
                job,
                answer,
            });
            (response, lost)
        };
        if lost {
            self.clock.sleep(TIMEOUT_WAIT).await;
            return Err(HttpError::Timeout("read timed out (injected)".into()));
        }
        Ok(response)
    }
}

/// The job number of a path `/j/<n>`.
fn job_number(path: &str) -> Option<usize> {
    path.strip_prefix("/j/")?.parse().ok()
}

#[async_trait]
impl HttpCall for FaultyApi {
    async fn call(&self, job: &Job) -> Result<ApiResponse, HttpError> {
        self.answer(job_number(&job.path)).await
    }

    async fn health(&self) -> Result<ApiResponse, HttpError> {
        self.answer(None).await
    }

    fn set_api_key(&self, _key: Option<&str>) -> Result<bool, WorkerError> {
        Ok(false)
    }
}
