//! The orchestrator's configuration, read once from the environment.

use std::time::Duration;

use qo_core::CircuitPolicy;
use qo_core::config::{ConfigError, Env};
use qo_core::job::{DEFAULT_BATCH_WINDOW, DEFAULT_MAX_SLOT_WAIT};
use qo_core::quota::{AdaptivePolicy, BudgetMode, PacingPolicy, QuotaSpec, SlowStart};
use qo_core::sqs::{self, QueueAttributes};

/// Everything the dispatch loop needs to know.
#[derive(Clone, Debug, PartialEq)]
pub struct OrchestratorConfig {
    /// The deployed quota (an operator's `qo quota set` overrides it at run time).
    pub quota: QuotaSpec,
    /// Pacing policy: budget mode, call tolerance, headroom, slow start.
    pub pacing: PacingPolicy,
    /// Circuit breaker policy.
    pub circuit: CircuitPolicy,
    /// How far ahead of its slot a job is handed to the worker (DISPATCH_LEAD_MS).
    pub dispatch_lead: Duration,
    /// How often the circuit and controls are re-read and the lease renewed (at most 1 s).
    pub refresh_interval: Duration,
    /// How often usage is saved (PERSIST_INTERVAL_S).
    pub persist_interval: Duration,
    /// Stop this long before the deadline (STOP_MARGIN_S).
    pub stop_margin: Duration,
    /// Stop after this long with nothing to do (IDLE_EXIT_S; `None`: never).
    pub idle_exit: Option<Duration>,
    /// Lease time to live (LEASE_TTL_S).
    pub lease_ttl: Duration,
    /// Invokes in flight at most (MAX_IN_FLIGHT).
    pub max_in_flight: usize,
    /// Receive at most what the pace can dispatch within this long (HOLD_HORIZON_S), and
    /// only once the next slot is this near (plus `receive_ahead`): a message received long
    /// before its slot is counted by the redrive policy and held invisible for nothing.
    pub hold_horizon: Duration,
    /// How long before the next dispatch time the queue is polled (SQS answers in tens of
    /// milliseconds; a second leaves room).
    pub receive_ahead: Duration,
    /// How often a receive polls the retry queue before the main queue (RETRY_POLL_INTERVAL_S,
    /// 5, at most 60; 0: before every receive). A poll that finds re-queued jobs is followed by
    /// another at the next receive; one that finds none waits this long; and a run stops idle
    /// only after an empty receive of both. With a backlog the main queue is received about
    /// once a second at 10/s, and a short poll of an empty retry queue before each was a
    /// quarter of the SQS requests per call. A re-queued job is seen up to this much later,
    /// plus the time to the next receive (and once more this long for each short poll that
    /// misses it: SQS's short poll asks only some of its servers); it waits out a
    /// `Retry-After` or a back-off anyway.
    pub retry_poll_interval: Duration,
    /// The job and retry queues' visibility timeout (QUEUE_VISIBILITY_TIMEOUT_S; the template
    /// sets it to the orchestrator's timeout): a held message's visibility is extended before
    /// it runs out.
    pub visibility_timeout: Duration,
    /// The queues' retention (QUEUE_RETENTION_S): a message near it is given back as a fresh
    /// copy rather than released.
    pub retention: Duration,
    /// Worker events kept in progress at most across the pool (WORKER_CONCURRENCY_CAP; `None`:
    /// no cap): an event counts from its dispatch until `worker_busy` after its slot. The
    /// template sets it for an unreserved worker, whose functions share the account's
    /// unreserved pool, to a cap that leaves that pool to the account's other functions.
    pub worker_concurrency_cap: Option<usize>,
    /// Worker events kept in progress at most by each function of the pool
    /// (WORKER_FUNCTION_CONCURRENCY_CAP; `None`: no cap), counted as `worker_concurrency_cap`
    /// counts them: a full function takes no event until one of its own ends, and the others
    /// take the work. The template sets it to each function's reserved concurrency.
    pub worker_function_concurrency_cap: Option<usize>,
    /// How long after its slot a worker event is counted in progress (WORKER_BUSY_MS, 1000): its
    /// call and the writes after it.
    pub worker_busy: Duration,
    /// How often the retention sweep makes a pass (SWEEP_INTERVAL_S, default half of
    /// QUEUE_RETENTION_S: 7 days; 0: off): re-sends every waiting message as a fresh copy
    /// before retention deletes it ([`crate::sweep`]). At most half the retention: the other
    /// half bounds the pass.
    pub sweep_interval: Option<Duration>,
    /// The longest a run spends on a pass before it dispatches (SWEEP_RUN_S, 60); the pass
    /// goes on in the next run.
    pub sweep_run: Duration,
    /// Received messages held undispatched at most (MAX_HELD, default [`DEFAULT_MAX_HELD`]):
    /// several receives of 10, so that a pass can dispatch every slot due and batches can fill.
    /// What is received is still bounded by what the pace dispatches within `hold_horizon`.
    pub max_held: usize,
    /// Jobs in one worker invocation at most (BATCH_MAX_JOBS, default
    /// [`DEFAULT_BATCH_MAX_JOBS`]; 1: one job per invoke).
    pub batch_max_jobs: usize,
    /// A batch takes jobs whose slots fall within this long of its first slot (BATCH_WINDOW_MS,
    /// default [`DEFAULT_BATCH_WINDOW`], 2000). No slot is delayed to fill a batch.
    pub batch_window: Duration,
    /// This orchestrator's name in the lease.
    pub owner: String,
    /// The worker functions of the pool (WORKER_FUNCTION_NAMES, or WORKER_FUNCTION_NAME as a
    /// pool of one), in order; empty: one worker function, not named (an invoker of a single
    /// function, as in tests). Jobs are spread across them; a job one function had answered
    /// 429 or failed is retried through another ([`crate::pool`]).
    pub worker_functions: Vec<String>,
    /// The stack's result destinations (RESULT_DESTINATIONS, RESULT_DEFAULT; default none): a
    /// job whose `reply_to` names none of them is dead-lettered before it takes a slot.
    pub destinations: qo_core::result::Destinations,
    /// `ALLOWED_METHODS` and `ALLOWED_PATH_PREFIXES` (default all): a job asking for another
    /// method or path is dead-lettered before it takes a slot.
    pub allow: qo_core::allow::AllowList,
}

impl OrchestratorConfig {
    /// Defaults for a quota: as docs/configuration.md documents them.
    pub fn with_quota(quota: QuotaSpec) -> Self {
        OrchestratorConfig {
            quota,
            pacing: PacingPolicy::default(),
            circuit: CircuitPolicy::default(),
            dispatch_lead: Duration::from_millis(250),
            refresh_interval: Duration::from_secs(1),
            persist_interval: Duration::from_secs(2),
            stop_margin: Duration::from_secs(5),
            idle_exit: Some(Duration::from_secs(30)),
            lease_ttl: Duration::from_secs(30),
            max_in_flight: 64,
            hold_horizon: Duration::from_secs(10),
            worker_concurrency_cap: None,
            worker_function_concurrency_cap: None,
            worker_busy: Duration::from_secs(1),
            receive_ahead: Duration::from_secs(1),
            retry_poll_interval: Duration::from_secs(5),
            visibility_timeout: QueueAttributes::TEMPLATE.visibility_timeout,
            retention: QueueAttributes::TEMPLATE.retention,
            sweep_interval: Some(QueueAttributes::TEMPLATE.retention / 2),
            sweep_run: DEFAULT_SWEEP_RUN,
            max_held: DEFAULT_MAX_HELD,
            batch_max_jobs: DEFAULT_BATCH_MAX_JOBS,
            batch_window: DEFAULT_BATCH_WINDOW,
            owner: "orchestrator".to_string(),
            worker_functions: Vec::new(),
            destinations: qo_core::result::Destinations::default(),
            allow: qo_core::allow::AllowList::any(),
        }
    }

    /// Reads the configuration; a bad value is an error naming the variable and the value.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        // Delayed sends (the retry queue, the sweep's copies): no FIFO queue.
        qo_core::config::refuse_fifo_queues(env)?;
        let quota: QuotaSpec = env.parsed(
            "QUOTA_SPEC",
            "10/s"
                .parse()
                .map_err(|e: qo_core::quota::SpecError| ConfigError::Invalid {
                    name: "QUOTA_SPEC".into(),
                    value: "10/s".into(),
                    reason: e.to_string(),
                })?,
        )?;
        let d = OrchestratorConfig::with_quota(quota);
        let mode: BudgetMode = env.parsed("BUDGET_MODE", BudgetMode::Greedy)?;
        let pacing = PacingPolicy {
            mode,
            call_tolerance: env.millis("CALL_TOLERANCE_MS", d.pacing.call_tolerance)?,
            headroom: env.fraction("HEADROOM", 0.0, 0.0, 0.5)?,
            slow_start: SlowStart {
                duration: env.seconds("SLOW_START_S", d.pacing.slow_start.duration)?,
                from_fraction: env.fraction("SLOW_START_FRACTION", 0.1, 0.01, 1.0)?,
            },
            adaptive: adaptive_policy(env, d.pacing.adaptive)?,
        };
        let idle = env.seconds("IDLE_EXIT_S", Duration::from_secs(30))?;
        let max_in_flight: usize = env.parsed("MAX_IN_FLIGHT", 64)?;
        if max_in_flight == 0 {
            return Err(ConfigError::Invalid {
                name: "MAX_IN_FLIGHT".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let visibility_timeout = env.seconds("QUEUE_VISIBILITY_TIMEOUT_S", d.visibility_timeout)?;
        if visibility_timeout < Duration::from_secs(30) || visibility_timeout > sqs::MAX_VISIBILITY
        {
            return Err(ConfigError::Invalid {
                name: "QUEUE_VISIBILITY_TIMEOUT_S".into(),
                value: visibility_timeout.as_secs().to_string(),
                reason: "must be from 30 s (held messages are kept by extending it) to 43200 s (SQS's 12 h)".into(),
            });
        }
        let retention = env.seconds("QUEUE_RETENTION_S", d.retention)?;
        if retention < Duration::from_secs(60) || retention > sqs::MAX_RETENTION {
            return Err(ConfigError::Invalid {
                name: "QUEUE_RETENTION_S".into(),
                value: retention.as_secs().to_string(),
                reason: "must be SQS's MessageRetentionPeriod: 60 to 1209600".into(),
            });
        }
        let sweep_interval = env.seconds("SWEEP_INTERVAL_S", retention / 2)?;
        if sweep_interval > retention / 2 {
            return Err(ConfigError::Invalid {
                name: "SWEEP_INTERVAL_S".into(),
                value: sweep_interval.as_secs().to_string(),
                reason: format!(
                    "must be at most half of QUEUE_RETENTION_S ({} s): a message sent just after \
                     a pass began is copied by the next pass, an interval later, and that pass \
                     must reach it before retention does (0 turns the sweep off)",
                    retention.as_secs() / 2
                ),
            });
        }
        let sweep_run = env.seconds("SWEEP_RUN_S", d.sweep_run)?;
        if sweep_run.is_zero() || sweep_run >= visibility_timeout {
            return Err(ConfigError::Invalid {
                name: "SWEEP_RUN_S".into(),
                value: sweep_run.as_secs().to_string(),
                reason: format!(
                    "must be from 1 s to under QUEUE_VISIBILITY_TIMEOUT_S ({} s): the sweep keeps \
                     what it received invisible for its run's part (turn the sweep off with \
                     SWEEP_INTERVAL_S=0)",
                    visibility_timeout.as_secs()
                ),
            });
        }
        let cap: usize = env.parsed("WORKER_CONCURRENCY_CAP", 0)?;
        let function_cap: usize = env.parsed("WORKER_FUNCTION_CONCURRENCY_CAP", 0)?;
        let max_held = at_least_one(env, "MAX_HELD", d.max_held)?;
        let batch_max_jobs = at_least_one(env, "BATCH_MAX_JOBS", d.batch_max_jobs)?;
        let batch_window = env.millis("BATCH_WINDOW_MS", d.batch_window)?;
        let dispatch_lead = env.millis("DISPATCH_LEAD_MS", d.dispatch_lead)?;
        let max_slot_wait = env.millis("MAX_SLOT_WAIT_MS", DEFAULT_MAX_SLOT_WAIT)?;
        check_slot_horizon(dispatch_lead, batch_max_jobs, batch_window, max_slot_wait)?;
        Ok(OrchestratorConfig {
            max_held,
            batch_max_jobs,
            batch_window,
            pacing,
            worker_concurrency_cap: (cap > 0).then_some(cap),
            worker_function_concurrency_cap: (function_cap > 0).then_some(function_cap),
            worker_busy: env.millis("WORKER_BUSY_MS", d.worker_busy)?,
            hold_horizon: env.seconds("HOLD_HORIZON_S", d.hold_horizon)?,
            visibility_timeout,
            retention,
            circuit: circuit_policy(env)?,
            dispatch_lead,
            persist_interval: env.seconds("PERSIST_INTERVAL_S", d.persist_interval)?,
            retry_poll_interval: retry_poll_interval(env, d.retry_poll_interval)?,
            stop_margin: env.seconds("STOP_MARGIN_S", d.stop_margin)?,
            idle_exit: (!idle.is_zero()).then_some(idle),
            lease_ttl: env.seconds("LEASE_TTL_S", d.lease_ttl)?,
            max_in_flight,
            sweep_interval: (!sweep_interval.is_zero()).then_some(sweep_interval),
            sweep_run,
            owner: env
                .get("AWS_LAMBDA_LOG_STREAM_NAME")
                .unwrap_or_else(|| format!("orchestrator-{}", uuid::Uuid::new_v4())),
            worker_functions: worker_functions(env)?,
            destinations: qo_core::config::result_destinations(env)?,
            allow: qo_core::config::allowed_requests(env)?,
            ..d
        })
    }
}

/// The worker pool from `WORKER_FUNCTION_NAMES` (a comma list of function names or ARNs), or
/// `WORKER_FUNCTION_NAME` as a pool of one; empty when neither is set. Setting both, an empty
/// entry, a name with spaces, or a name given twice is an error naming the variable and value.
pub fn worker_functions(env: &impl Env) -> Result<Vec<String>, ConfigError> {
    let invalid = |name: &str, value: &str, reason: &str| ConfigError::Invalid {
        name: name.into(),
        value: value.into(),
        reason: reason.into(),
    };
    let (name, value) = match (
        env.get("WORKER_FUNCTION_NAMES"),
        env.get("WORKER_FUNCTION_NAME"),
    ) {
        (Some(names), Some(_)) => {
            return Err(invalid(
                "WORKER_FUNCTION_NAMES",
                &names,
                "set either WORKER_FUNCTION_NAMES (the pool) or WORKER_FUNCTION_NAME (one function), not both",
            ));
        }
        (Some(names), None) => ("WORKER_FUNCTION_NAMES", names),
        (None, Some(one)) => ("WORKER_FUNCTION_NAME", one),
        (None, None) => return Ok(Vec::new()),
    };
    let mut pool: Vec<String> = Vec::new();
    for entry in value.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(invalid(
                name,
                &value,
                "an entry is empty; give function names separated by commas, e.g. `qo-worker-1,qo-worker-2`",
            ));
        }
        if entry.chars().any(char::is_whitespace) {
            return Err(invalid(
                name,
                &value,
                &format!("`{entry}` is not a function name (it has a space)"),
            ));
        }
        if pool.iter().any(|p| p == entry) {
            return Err(invalid(name, &value, &format!("`{entry}` is named twice")));
        }
        pool.push(entry.to_string());
    }
    Ok(pool)
}

/// The furthest ahead of its invocation a slot can be, `DISPATCH_LEAD_MS` (plus
/// `BATCH_WINDOW_MS` for the last job of a batch), must stay under the worker's
/// `MAX_SLOT_WAIT_MS` (read here too, with the worker's default): else the worker gives those
/// jobs back untried, every time.
fn check_slot_horizon(
    lead: Duration,
    batch_max_jobs: usize,
    window: Duration,
    max_slot_wait: Duration,
) -> Result<(), ConfigError> {
    let batched = batch_max_jobs > 1;
    let horizon = if batched { lead + window } else { lead };
    if horizon < max_slot_wait {
        return Ok(());
    }
    // The lead alone reaching it is the lead's fault, batched or not.
    let (name, value, what) = if batched && lead < max_slot_wait {
        (
            "BATCH_WINDOW_MS",
            window,
            format!("DISPATCH_LEAD_MS={} + BATCH_WINDOW_MS", lead.as_millis()),
        )
    } else {
        ("DISPATCH_LEAD_MS", lead, "DISPATCH_LEAD_MS".to_string())
    };
    Err(ConfigError::Invalid {
        name: name.into(),
        value: value.as_millis().to_string(),
        reason: format!(
            "{what} must be shorter than the worker's MAX_SLOT_WAIT_MS={}: the slots further \
             ahead of their invocation than that are given back untried, every time (set \
             MAX_SLOT_WAIT_MS for both functions when you change it)",
            max_slot_wait.as_millis()
        ),
    })
}

pub use qo_core::config::circuit_policy;

/// `SWEEP_RUN_S`'s default: a minute of each run, at most, on a sweep pass.
pub const DEFAULT_SWEEP_RUN: Duration = Duration::from_secs(60);

/// `MAX_HELD`'s default: ten receives of 10. At 1000/s a dispatch lead (250 ms) holds 250
/// slots; a hundred held keep every pass supplied while the next receive is under way, and the
/// hold horizon still bounds what a slower pace receives.
pub const DEFAULT_MAX_HELD: usize = 100;

/// `BATCH_MAX_JOBS`'s default: up to 20 jobs in one invocation while the pace is settled, one
/// while it follows the API ([`crate::step::batch_limit`]), chosen by measurement
/// (docs/design.md, Batched invocations). At a steady 10/s, with the 2 s window, batches of 20
/// cut worker invocations twentyfold and the bill per million calls from $2.53 to $1.29 (an
/// API answering in 1 to 5 ms; $2.69 to $1.30 at 50 to 150 ms); where the API's limit is below
/// the quota or moves, each slot goes alone, as unbatched, so the pace reaches the very next
/// call.
pub const DEFAULT_BATCH_MAX_JOBS: usize = 20;

/// The longest `RETRY_POLL_INTERVAL_S`: a busy run sees re-queued jobs at least this often.
const MAX_RETRY_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// `RETRY_POLL_INTERVAL_S`, or `default` when unset; over [`MAX_RETRY_POLL_INTERVAL`] is refused.
fn retry_poll_interval(env: &impl Env, default: Duration) -> Result<Duration, ConfigError> {
    let interval = env.seconds("RETRY_POLL_INTERVAL_S", default)?;
    if interval > MAX_RETRY_POLL_INTERVAL {
        return Err(ConfigError::Invalid {
            name: "RETRY_POLL_INTERVAL_S".into(),
            value: interval.as_secs().to_string(),
            reason: format!(
                "must be at most {} s: a run that never goes idle sees re-queued jobs only at \
                 its polls of the retry queue",
                MAX_RETRY_POLL_INTERVAL.as_secs()
            ),
        });
    }
    Ok(interval)
}

/// A count setting that must be at least 1: `name`, or `default` when unset.
fn at_least_one(env: &impl Env, name: &str, default: usize) -> Result<usize, ConfigError> {
    let n: usize = env.parsed(name, default)?;
    if n == 0 {
        return Err(ConfigError::Invalid {
            name: name.into(),
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(n)
}

/// What the orchestrator's finish may take at worst, from its settings. At its stop
/// the loop waits for the invokes in flight, deletes what they dispatched and releases what it
/// held (batches of 10), saves usage once (fenced) and releases the lease, one after the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinishBudget {
    /// One AWS SDK call (SQS, DynamoDB): `SDK_MAX_ATTEMPTS` x (`SDK_CONNECT_TIMEOUT_MS` +
    /// `SDK_READ_TIMEOUT_MS`).
    pub sdk_call: Duration,
    /// One Invoke attempt (the Lambda client makes one, the invoker retries):
    /// `SDK_CONNECT_TIMEOUT_MS` + `SDK_READ_TIMEOUT_MS`.
    pub invoke_attempt: Duration,
    /// `INVOKE_MAX_RETRIES`.
    pub invoke_retries: u32,
    /// The longest wait before an Invoke retry (the back-off's ceiling, or the largest
    /// `retryAfterSeconds` waited out).
    pub invoke_retry_wait: Duration,
    /// `MAX_IN_FLIGHT`: invokes that may be in flight.
    pub max_in_flight: usize,
    /// `BATCH_MAX_JOBS`: messages to delete per invoke in flight.
    pub batch_max_jobs: usize,
    /// `MAX_HELD`: messages held undispatched, released at the stop.
    pub max_held: usize,
}

impl FinishBudget {
    /// The longest wait for the invokes in flight (they run at once):
    /// (retries + 1) x attempt + retries x retry wait.
    pub fn invokes(&self) -> Duration {
        self.invoke_attempt
            .saturating_mul(self.invoke_retries.saturating_add(1))
            .saturating_add(self.invoke_retry_wait.saturating_mul(self.invoke_retries))
    }

    /// SQS batch calls at the stop, in one call's time each: the deletes of what the last
    /// invokes dispatched (up to `MAX_IN_FLIGHT` x `BATCH_MAX_JOBS` messages, plus the up to 9
    /// already waiting for a full batch) go in one round of concurrent batches of 10 once the
    /// last invoke answered; the up to `MAX_HELD` held messages (with those of invokes that
    /// failed meanwhile) in three: fresh copies of those that must rotate (SendMessageBatch),
    /// the deletes of their originals, and the release of the rest.
    pub fn batches(&self) -> u32 {
        u32::from(self.max_in_flight > 0) + 3 * u32::from(self.max_held > 0)
    }

    /// The whole finish: the invokes, the batches, one fenced save and the lease release.
    pub fn total(&self) -> Duration {
        self.invokes().saturating_add(
            self.sdk_call
                .saturating_mul(self.batches().saturating_add(2)),
        )
    }
}

/// Jobs a second one MB of the orchestrator's memory dispatches over the real SDKs when every
/// slot is its own invoke: Lambda's CPU share at 128 MB keeps up with about 120/s
/// (docs/limiters.md, "Over the real SDKs"). Full batches go further.
pub const CALLS_PER_S_PER_MB: f64 = 120.0 / 128.0;

/// The memory a pace of `rate_per_s` wants when `memory_mb` is less, by
/// [`CALLS_PER_S_PER_MB`]: the orchestrator warns at its start, since a CPU share too small
/// for the pace makes slots late and leaves the quota unused.
pub fn memory_shortfall(rate_per_s: f64, memory_mb: u32) -> Option<u32> {
    let wanted = (rate_per_s / CALLS_PER_S_PER_MB).ceil();
    (wanted > f64::from(memory_mb)).then(|| wanted.min(f64::from(u32::MAX)) as u32)
}

/// `STOP_MARGIN_S` is shorter than the worst-case finish.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "STOP_MARGIN_S={} is shorter than the orchestrator's worst-case finish of {} s: the invokes \
     in flight ((INVOKE_MAX_RETRIES={} + 1) x (SDK_CONNECT_TIMEOUT_MS + SDK_READ_TIMEOUT_MS={} ms) \
     + {} x {} s between retries = {} s), then {} rounds of SQS batch calls (deletes of \
     MAX_IN_FLIGHT={}; fresh copies, deletes and releases of {} held), a fenced save and the lease release: {} x {} s (SDK_MAX_ATTEMPTS x \
     (SDK_CONNECT_TIMEOUT_MS + SDK_READ_TIMEOUT_MS)); leave STOP_MARGIN_S unset (it defaults to \
     the worst case) or lower these",
    .stop_margin.as_secs(), .budget.total().as_secs_f64(), .budget.invoke_retries,
    .budget.invoke_attempt.as_millis(), .budget.invoke_retries,
    .budget.invoke_retry_wait.as_secs_f64(), .budget.invokes().as_secs_f64(),
    .budget.batches(), .budget.max_in_flight, .budget.max_held, .budget.batches() + 2,
    .budget.sdk_call.as_secs_f64()
)]
pub struct StopMarginError {
    /// `STOP_MARGIN_S`.
    pub stop_margin: Duration,
    /// The finish it must cover.
    pub budget: FinishBudget,
}

/// The stop margin: `STOP_MARGIN_S` when given (`explicit`), refused when shorter than the
/// worst-case finish; else the worst-case finish rounded up to whole seconds.
pub fn stop_margin(
    explicit: Option<Duration>,
    budget: &FinishBudget,
) -> Result<Duration, StopMarginError> {
    let worst = budget.total();
    match explicit {
        Some(margin) if margin < worst => Err(StopMarginError {
            stop_margin: margin,
            budget: *budget,
        }),
        Some(margin) => Ok(margin),
        None => Ok(Duration::from_secs(
            worst.as_secs() + u64::from(worst.subsec_nanos() > 0),
        )),
    }
}

/// The adaptive pacing policy: `ADAPTIVE_PACING` (`on`/`off`), `ADAPTIVE_DECREASE`,
/// `ADAPTIVE_MARGIN`, `ADAPTIVE_FLOOR`, `ADAPTIVE_HOLD_S`, `ADAPTIVE_PROBE_S`.
fn adaptive_policy(env: &impl Env, d: AdaptivePolicy) -> Result<AdaptivePolicy, ConfigError> {
    let enabled = match env.get("ADAPTIVE_PACING").as_deref().map(str::trim) {
        None | Some("on") | Some("true") => true,
        Some("off") | Some("false") => false,
        Some(other) => {
            return Err(ConfigError::Invalid {
                name: "ADAPTIVE_PACING".into(),
                value: other.into(),
                reason: "must be on or off".into(),
            });
        }
    };
    Ok(AdaptivePolicy {
        enabled,
        decrease: env.fraction("ADAPTIVE_DECREASE", d.decrease, 0.1, 0.99)?,
        margin: env.fraction("ADAPTIVE_MARGIN", d.margin, 0.5, 1.0)?,
        floor: env.fraction("ADAPTIVE_FLOOR", d.floor, 0.001, 1.0)?,
        hold: env.seconds("ADAPTIVE_HOLD_S", d.hold)?,
        probe: env.seconds("ADAPTIVE_PROBE_S", d.probe)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use qo_core::config::map_env as env;

    #[test]
    fn adaptive_pacing_is_read_and_checked() {
        let c = OrchestratorConfig::from_env(&env(&[])).expect("defaults");
        assert!(c.pacing.adaptive.enabled);
        let c = OrchestratorConfig::from_env(&env(&[
            ("ADAPTIVE_PACING", "off"),
            ("ADAPTIVE_HOLD_S", "120"),
        ]))
        .expect("off");
        assert!(!c.pacing.adaptive.enabled);
        assert_eq!(c.pacing.adaptive.hold, Duration::from_secs(120));
        let e = OrchestratorConfig::from_env(&env(&[("ADAPTIVE_PACING", "maybe")])).unwrap_err();
        assert!(e.to_string().contains("ADAPTIVE_PACING"), "{e}");
        let e = OrchestratorConfig::from_env(&env(&[("ADAPTIVE_MARGIN", "1.5")])).unwrap_err();
        assert!(e.to_string().contains("ADAPTIVE_MARGIN"), "{e}");
    }

    #[test]
    fn defaults_and_overrides() {
        let c = OrchestratorConfig::from_env(&env(&[("QUOTA_SPEC", "20/s"), ("IDLE_EXIT_S", "0")]))
            .expect("valid");
        assert_eq!(c.quota.to_string(), "20/s");
        assert_eq!(c.idle_exit, None);
        assert_eq!(c.dispatch_lead, Duration::from_millis(250));
        assert_eq!(c.circuit.failure_threshold.get(), 3);
        assert_eq!(c.retry_poll_interval, Duration::from_secs(5));
        let c =
            OrchestratorConfig::from_env(&env(&[("RETRY_POLL_INTERVAL_S", "0")])).expect("valid");
        assert_eq!(c.retry_poll_interval, Duration::ZERO);
        for bad in ["soon", "61"] {
            let e = OrchestratorConfig::from_env(&env(&[("RETRY_POLL_INTERVAL_S", bad)]))
                .expect_err("refused");
            assert!(e.to_string().contains("RETRY_POLL_INTERVAL_S"), "{e}");
        }
    }

    #[test]
    fn the_pool_and_per_function_concurrency_caps_are_read_apart_and_zero_is_none() {
        let c = OrchestratorConfig::from_env(&env(&[])).expect("defaults");
        assert_eq!(
            (c.worker_concurrency_cap, c.worker_function_concurrency_cap),
            (None, None)
        );
        let c = OrchestratorConfig::from_env(&env(&[
            ("WORKER_CONCURRENCY_CAP", "0"),
            ("WORKER_FUNCTION_CONCURRENCY_CAP", "50"),
        ]))
        .expect("valid");
        assert_eq!(
            (c.worker_concurrency_cap, c.worker_function_concurrency_cap),
            (None, Some(50))
        );
        let e = OrchestratorConfig::from_env(&env(&[("WORKER_FUNCTION_CONCURRENCY_CAP", "-1")]))
            .unwrap_err();
        assert!(
            e.to_string().contains("WORKER_FUNCTION_CONCURRENCY_CAP"),
            "{e}"
        );
        assert!(e.to_string().contains("-1"), "{e}");
    }

    #[test]
    fn the_worker_pool_is_a_list_or_one_name_and_a_bad_value_is_named() {
        let pool = |vars: &[(&str, &str)]| {
            OrchestratorConfig::from_env(&env(vars)).map(|c| c.worker_functions)
        };
        assert_eq!(pool(&[]), Ok(vec![]));
        assert_eq!(
            pool(&[("WORKER_FUNCTION_NAME", "qo-worker")]),
            Ok(vec!["qo-worker".to_string()])
        );
        assert_eq!(
            pool(&[(
                "WORKER_FUNCTION_NAMES",
                " qo-w1, qo-w2 ,arn:aws:lambda:eu-west-1:1:function:qo-w3"
            )]),
            Ok(vec![
                "qo-w1".to_string(),
                "qo-w2".into(),
                "arn:aws:lambda:eu-west-1:1:function:qo-w3".into()
            ])
        );
        for (bad, why) in [
            ("a,,b", "empty"),
            ("a,b,a", "`a` is named twice"),
            ("a b", "`a b`"),
        ] {
            let e = pool(&[("WORKER_FUNCTION_NAMES", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("WORKER_FUNCTION_NAMES={bad:?}")) && e.contains(why),
                "{e}"
            );
        }
        let e = pool(&[
            ("WORKER_FUNCTION_NAMES", "a,b"),
            ("WORKER_FUNCTION_NAME", "a"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("not both"), "{e}");
    }

    fn defaults_budget() -> FinishBudget {
        // The defaults: SDK 3 x (3 + 5) s, Invoke attempts 3 + 5 s, 4 retries at most 10 s
        // apart, 64 in flight.
        FinishBudget {
            sdk_call: Duration::from_secs(24),
            invoke_attempt: Duration::from_secs(8),
            invoke_retries: 4,
            invoke_retry_wait: Duration::from_secs(10),
            max_in_flight: 64,
            batch_max_jobs: 1,
            max_held: 10,
        }
    }

    #[test]
    fn a_pace_past_what_the_memory_keeps_up_with_names_the_memory_it_wants() {
        assert_eq!(memory_shortfall(100.0, 128), None);
        assert_eq!(memory_shortfall(120.0, 128), None);
        assert_eq!(memory_shortfall(200.0, 128), Some(214));
        assert_eq!(memory_shortfall(200.0, 256), None);
        assert_eq!(memory_shortfall(1_000.0, 512), Some(1_067));
    }

    #[test]
    fn the_worst_case_finish_counts_invokes_batches_the_save_and_the_lease() {
        let b = defaults_budget();
        // 5 x 8 + 4 x 10 = 80 s for the invokes.
        assert_eq!(b.invokes(), Duration::from_secs(80));
        // One round of deletes (concurrent batches of 10); three for what is held: fresh
        // copies, the deletes of their originals, the releases.
        assert_eq!(b.batches(), 4);
        // 80 + (4 + 2) x 24 = 224 s.
        assert_eq!(b.total(), Duration::from_secs(224));
        assert_eq!(stop_margin(None, &b), Ok(Duration::from_secs(224)));
        assert_eq!(
            stop_margin(Some(Duration::from_secs(400)), &b),
            Ok(Duration::from_secs(400))
        );
        let e = stop_margin(Some(Duration::from_secs(5)), &b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "STOP_MARGIN_S=5 is shorter than the orchestrator's worst-case finish of 224 s: the \
             invokes in flight ((INVOKE_MAX_RETRIES=4 + 1) x (SDK_CONNECT_TIMEOUT_MS + \
             SDK_READ_TIMEOUT_MS=8000 ms) + 4 x 10 s between retries = 80 s), then 4 rounds of \
             SQS batch calls (deletes of MAX_IN_FLIGHT=64; fresh copies, deletes and releases \
             of 10 held), a fenced save and the lease release: 6 x 24 s (SDK_MAX_ATTEMPTS x \
             (SDK_CONNECT_TIMEOUT_MS + SDK_READ_TIMEOUT_MS)); leave STOP_MARGIN_S unset (it \
             defaults to the worst case) or lower these"
        );
        // Small settings: SDK 2 x (0.5 + 1) s, no Invoke retry, 16 in flight:
        // 1.5 + (4 + 2) x 3 = 19.5 s, rounded up to 20 s.
        let small = FinishBudget {
            sdk_call: Duration::from_secs(3),
            invoke_attempt: Duration::from_millis(1_500),
            invoke_retries: 0,
            invoke_retry_wait: Duration::from_secs(10),
            max_in_flight: 16,
            batch_max_jobs: 1,
            max_held: 10,
        };
        assert_eq!(small.batches(), 4);
        assert_eq!(small.total(), Duration::from_millis(19_500));
        assert_eq!(stop_margin(None, &small), Ok(Duration::from_secs(20)));
        // MAX_HELD's default (100) and the default batches of 20 jobs (1,280 messages to
        // delete): each goes in rounds of concurrent calls, so the default finish stays
        // 224 s.
        let held = FinishBudget {
            max_held: DEFAULT_MAX_HELD,
            batch_max_jobs: DEFAULT_BATCH_MAX_JOBS,
            ..b
        };
        assert_eq!(held.total(), Duration::from_secs(224));
    }

    #[test]
    fn the_sweep_defaults_to_half_the_retention_and_refuses_more() {
        let c = OrchestratorConfig::from_env(&env(&[])).expect("valid");
        assert_eq!(c.sweep_interval, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(c.sweep_run, Duration::from_secs(60));
        let c =
            OrchestratorConfig::from_env(&env(&[("QUEUE_RETENTION_S", "345600")])).expect("valid");
        assert_eq!(c.sweep_interval, Some(Duration::from_secs(2 * 86_400)));
        let c = OrchestratorConfig::from_env(&env(&[("SWEEP_INTERVAL_S", "0")])).expect("valid");
        assert_eq!(c.sweep_interval, None, "0 turns it off");
        let e = OrchestratorConfig::from_env(&env(&[("SWEEP_INTERVAL_S", "864000")])).unwrap_err();
        assert!(
            e.to_string().contains("SWEEP_INTERVAL_S=\"864000\"")
                && e.to_string()
                    .contains("half of QUEUE_RETENTION_S (604800 s)"),
            "{e}"
        );
        let e = OrchestratorConfig::from_env(&env(&[("SWEEP_RUN_S", "0")])).unwrap_err();
        assert!(e.to_string().contains("SWEEP_RUN_S=\"0\""), "{e}");
    }

    #[test]
    fn a_fifo_queue_is_refused_naming_the_variable_the_value_and_why() {
        for name in ["QUEUE_URL", "RETRY_QUEUE_URL"] {
            let url = "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs-retry.fifo";
            let e = OrchestratorConfig::from_env(&env(&[(name, url)])).unwrap_err();
            assert_eq!(
                e,
                ConfigError::FifoQueue {
                    name: name.into(),
                    value: url.into()
                }
            );
            let text = e.to_string();
            for part in [name, url, "per-message DelaySeconds", "standard queue"] {
                assert!(text.contains(part), "missing `{part}` in: {text}");
            }
        }
        OrchestratorConfig::from_env(&env(&[(
            "QUEUE_URL",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs",
        )]))
        .expect("a standard queue is fine");
    }

    #[test]
    fn held_and_batch_settings_are_read_and_checked() {
        let c = OrchestratorConfig::from_env(&env(&[])).expect("defaults");
        assert_eq!(
            (c.max_held, c.batch_max_jobs, c.batch_window),
            (
                DEFAULT_MAX_HELD,
                DEFAULT_BATCH_MAX_JOBS,
                Duration::from_secs(2)
            )
        );
        let c = OrchestratorConfig::from_env(&env(&[
            ("MAX_HELD", "40"),
            ("BATCH_MAX_JOBS", "4"),
            ("BATCH_WINDOW_MS", "500"),
        ]))
        .expect("valid");
        assert_eq!(
            (c.max_held, c.batch_max_jobs, c.batch_window),
            (40, 4, Duration::from_millis(500))
        );
        for name in ["MAX_HELD", "BATCH_MAX_JOBS"] {
            for bad in ["0", "many"] {
                let e = OrchestratorConfig::from_env(&env(&[(name, bad)])).unwrap_err();
                assert!(e.to_string().contains(name), "{e}");
            }
        }
        let e = OrchestratorConfig::from_env(&env(&[("BATCH_WINDOW_MS", "-1")])).unwrap_err();
        assert!(e.to_string().contains("BATCH_WINDOW_MS"), "{e}");
    }

    #[test]
    fn the_lead_and_the_batch_window_stay_under_the_worker_s_slot_wait() {
        // 250 ms of lead + 4,750 ms of window reach the 5 s the worker waits at most.
        let e = OrchestratorConfig::from_env(&env(&[
            ("BATCH_MAX_JOBS", "10"),
            ("BATCH_WINDOW_MS", "4750"),
        ]))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration: BATCH_WINDOW_MS=\"4750\" is invalid: DISPATCH_LEAD_MS=250 + \
             BATCH_WINDOW_MS must be shorter than the worker's MAX_SLOT_WAIT_MS=5000: the slots \
             further ahead of their invocation than that are given back untried, every time \
             (set MAX_SLOT_WAIT_MS for both functions when you change it)"
        );
        OrchestratorConfig::from_env(&env(&[
            ("BATCH_MAX_JOBS", "10"),
            ("BATCH_WINDOW_MS", "4749"),
        ]))
        .expect("just under");
        // Unbatched, the window plays no part; a raised MAX_SLOT_WAIT_MS makes room.
        OrchestratorConfig::from_env(&env(&[
            ("BATCH_MAX_JOBS", "1"),
            ("BATCH_WINDOW_MS", "4750"),
        ]))
        .expect("unbatched");
        OrchestratorConfig::from_env(&env(&[
            ("BATCH_MAX_JOBS", "10"),
            ("BATCH_WINDOW_MS", "4750"),
            ("MAX_SLOT_WAIT_MS", "6000"),
        ]))
        .expect("a longer wait");
        // A lead that reaches it alone is named, batched (the default) or not.
        for batch in ["1", "10"] {
            let e = OrchestratorConfig::from_env(&env(&[
                ("BATCH_MAX_JOBS", batch),
                ("DISPATCH_LEAD_MS", "5000"),
            ]))
            .unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("configuration: DISPATCH_LEAD_MS=\"5000\""),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = OrchestratorConfig::from_env(&env(&[("QUOTA_SPEC", "20/fortnight")])).unwrap_err();
        assert!(
            e.to_string().contains("QUOTA_SPEC") && e.to_string().contains("fortnight"),
            "{e}"
        );
        let e = OrchestratorConfig::from_env(&env(&[("HEADROOM", "0.9")])).unwrap_err();
        assert!(e.to_string().contains("HEADROOM=\"0.9\""), "{e}");
        let e =
            OrchestratorConfig::from_env(&env(&[("CIRCUIT_FAILURE_THRESHOLD", "0")])).unwrap_err();
        assert!(e.to_string().contains("CIRCUIT_FAILURE_THRESHOLD"), "{e}");
    }
}
