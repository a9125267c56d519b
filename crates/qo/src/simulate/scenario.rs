//! [`Scenario`]: what one seed runs. Every number is drawn from the seed, so a seed names one
//! run exactly: the quota and the limit the API really enforces, the jobs and when they are
//! sent, and how often each documented fault strikes.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use qo_core::Timestamp;

/// How often each fault strikes, each a fraction from 0 to 1 unless it says otherwise.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Faults {
    /// SQS: a deleted message comes back (at-least-once delivery).
    pub sqs_redeliver: f64,
    /// SQS: a short poll misses a visible message.
    pub sqs_short_poll_miss: f64,
    /// SQS: one entry of a delete or visibility batch is refused.
    pub sqs_refuse_entry: f64,
    /// Lambda: an accepted event is delivered twice.
    pub lambda_duplicate: f64,
    /// Lambda: an Invoke fails (throttled or a transport error) and queues nothing.
    pub lambda_invoke_fails: f64,
    /// Lambda: an Invoke is accepted, and the caller sees a transport error.
    pub lambda_lost_answer: f64,
    /// Lambda: a worker run is killed at a random await.
    pub lambda_kill: f64,
    /// DynamoDB: a call is throttled (refused, no effect).
    pub dynamo_throttle: f64,
    /// DynamoDB: a call takes effect and its answer is lost.
    pub dynamo_lost_answer: f64,
    /// The API: a call is answered 500.
    pub api_error: f64,
    /// The API: a call reaches it, takes effect, and times out before its answer.
    pub api_timeout_after: f64,
    /// The API: a call cannot connect (it never reaches the API).
    pub api_connect: f64,
    /// Orchestrator: a run is killed at a random await.
    pub orchestrator_kill: f64,
    /// Orchestrator: a run is started while another still runs (a contested lease).
    pub orchestrator_overlap: f64,
}

/// One job the producer sends.
#[derive(Clone, Debug)]
pub struct JobPlan {
    /// Its number: its path is `/j/<n>`.
    pub n: usize,
    /// The message body sent.
    pub body: String,
    /// Whether the orchestrator must refuse it (malformed or out of bounds).
    pub refused: bool,
    /// Its explicit `id`, if any.
    pub id: Option<String>,
    /// When it is sent, from the start.
    pub at: Duration,
    /// Whether the producer sends it twice (a retried send).
    pub twice: bool,
}

/// One seed's run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The seed.
    pub seed: u64,
    /// The clock's start (UTC), near a calendar boundary for some seeds.
    pub start: Timestamp,
    /// The quota the orchestrator is given.
    pub quota: String,
    /// The limit the API enforces ([`qo_sim::LimitSchedule`] syntax).
    pub api_limit: String,
    /// Whether a 429 carries `Retry-After`.
    pub retry_after: bool,
    /// The jobs, in send order.
    pub jobs: Vec<JobPlan>,
    /// Jobs in one worker invocation at most.
    pub batch_max_jobs: usize,
    /// Worker functions in the pool (1, or 2 with per-function concurrency).
    pub functions: usize,
    /// An outage of the API: from, for how long (from the start).
    pub outage: Option<(Duration, Duration)>,
    /// The faults.
    pub faults: Faults,
    /// How long the run lasts (virtual time).
    pub length: Duration,
    /// Whether every job's result goes to a destination (the stack's default).
    pub results: bool,
    /// The destination refuses a delivery with this probability.
    pub results_refuse: f64,
}

/// Where the first scenario's clock starts: 2026-01-31T23:59:00Z, a minute before a day's and a
/// month's boundary.
const NEAR_BOUNDARY_MS: u64 = 1_769_903_940_000;

impl Scenario {
    /// The scenario of `seed`.
    pub fn draw(seed: u64) -> Scenario {
        let mut r = StdRng::seed_from_u64(seed);
        let rate = [5u32, 10, 20][r.random_range(0..3)];
        let quota = if r.random_bool(0.3) {
            format!("{rate}/s,{}/min", rate * 45)
        } else {
            format!("{rate}/s")
        };
        let api_limit = match r.random_range(0..4) {
            0 => format!("{}/s", (rate * 3 / 4).max(1)),
            1 => format!(
                "{rate}/s;{}/s@{};{rate}/s@{}",
                (rate / 2).max(1),
                r.random_range(10..40),
                r.random_range(60..120)
            ),
            _ => format!("{rate}/s"),
        };
        let start = Timestamp::from_millis(NEAR_BOUNDARY_MS + r.random_range(0..120_000));
        let count = r.random_range(20..=80);
        let spread = r.random_range(1..=60);
        let mut jobs: Vec<JobPlan> = (0..count).map(|n| job(&mut r, n, spread)).collect();
        jobs.sort_by_key(|j| (j.at, j.n));
        let mut f = |max: f64| {
            if r.random_bool(0.7) {
                r.random_range(0.0..max)
            } else {
                0.0
            }
        };
        let faults = Faults {
            sqs_redeliver: f(0.05),
            sqs_short_poll_miss: f(0.5),
            sqs_refuse_entry: f(0.05),
            lambda_duplicate: f(0.1),
            lambda_invoke_fails: f(0.05),
            lambda_lost_answer: f(0.05),
            lambda_kill: f(0.1),
            dynamo_throttle: f(0.03),
            dynamo_lost_answer: f(0.03),
            api_error: f(0.05),
            api_timeout_after: f(0.03),
            api_connect: f(0.03),
            orchestrator_kill: f(0.3),
            orchestrator_overlap: f(0.2),
        };
        let outage = r
            .random_bool(0.2)
            .then(|| (secs(&mut r, 5, 60), secs(&mut r, 5, 90)));
        let mut scenario = Scenario {
            seed,
            start,
            quota,
            api_limit,
            retry_after: r.random_bool(0.5),
            jobs,
            batch_max_jobs: [1, 5, 20][r.random_range(0..3)],
            functions: if r.random_bool(0.25) { 2 } else { 1 },
            outage,
            faults,
            length: Duration::from_secs(40 * 60),
            results: false,
            results_refuse: 0.0,
        };
        // Drawn last, so that the draws before stay each seed's own.
        scenario.results = r.random_bool(0.7);
        scenario.results_refuse = if r.random_bool(0.5) {
            r.random_range(0.0..0.6)
        } else {
            0.0
        };
        scenario
    }

    /// The jobs the orchestrator must not refuse.
    pub fn valid_jobs(&self) -> impl Iterator<Item = &JobPlan> {
        self.jobs.iter().filter(|j| !j.refused)
    }
}

fn secs(r: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_secs(r.random_range(lo..hi))
}

/// Job `n`: mostly valid (with and without an `id`, small or large), some malformed, pointing
/// at another host, or with an id too long to be a key.
fn job(r: &mut StdRng, n: usize, spread: u64) -> JobPlan {
    let path = format!("/j/{n}");
    let id = r.random_bool(0.5).then(|| format!("job-{n}"));
    let mut refused = false;
    let body = match r.random_range(0..100) {
        0..=2 => {
            refused = true;
            format!("{{\"path\":\"{path}\"")
        }
        3..=4 => {
            refused = true;
            format!("{{\"path\":\"https://elsewhere.example{path}\"}}")
        }
        5 => {
            // An id longer than a DynamoDB key takes: refused before any slot.
            refused = true;
            serde_json::json!({ "id": "k".repeat(3_000), "path": path }).to_string()
        }
        6..=9 => {
            // Large: a body of about 100 KB, so ten fill a batch call past 1 MiB.
            let pad = "x".repeat(100 * 1024);
            serde_json::json!({ "id": id, "path": path, "method": "POST", "body": { "pad": pad } })
                .to_string()
        }
        _ => match &id {
            Some(id) => serde_json::json!({ "id": id, "path": path }).to_string(),
            None => serde_json::json!({ "path": path }).to_string(),
        },
    };
    let id = if refused { None } else { id };
    JobPlan {
        n,
        body,
        refused,
        at: Duration::from_millis(r.random_range(0..spread * 1_000)),
        // A producer's retried send repeats the job's id; an id-less job sent twice is two jobs.
        twice: id.is_some() && r.random_bool(0.05),
        id,
    }
}
