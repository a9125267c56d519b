//! Runs one [`Scenario`] to its end on tokio's paused clock and collects its [`History`]: the
//! real orchestrator loop and worker, wired by [`crate::system`], over the in-memory adapters
//! with the template's settings and the scenario's faults.
//!
//! Orchestrator runs start as a deployment starts them: on the schedule each minute, and at
//! once when a run stops at its deadline with work left (the self-invoke). A run may be
//! killed at any await, and a second run may start beside a running one (a contested lease).
//! The run's tasks are local: [`run`] runs inside a [`tokio::task::LocalSet`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

use qo_core::result::Destinations;
use qo_core::{Clock, NoObserver, QuotaSpec, TokioClock, WorkerEvent};
use qo_memory::{
    InvokerOptions, MemoryQueue, MemoryResults, MemoryStore, QueueFaults, QueueOptions,
};
use qo_orchestrator::OrchestratorConfig;
use qo_worker::WorkerConfig;

use super::Struck;
use super::api::FaultyApi;
use super::check::History;
use super::scenario::Scenario;
use super::store::FaultyStore;
use crate::system::{Parts, System};

type Rig = System<MemoryQueue, FaultyStore<MemoryStore>>;

/// How long an orchestrator run may last: its deadline from its start.
const RUN_LENGTH: Duration = Duration::from_secs(120);

/// How often the schedule starts a run (EventBridge's finest rate).
const SCHEDULE: Duration = Duration::from_secs(60);

/// The destination results go to.
const RESULTS_ARN: &str = "arn:aws:sqs:us-east-1:123456789012:replies";

/// How far into a worker run a kill may fall: past a batch's span of slots.
const KILL_WITHIN: Duration = Duration::from_secs(4);

/// Runs `scenario` and returns what happened.
pub async fn run(scenario: &Scenario) -> Result<(History, Struck), Box<dyn std::error::Error>> {
    let clock = Arc::new(TokioClock::starting_at(scenario.start));
    let seed = scenario.seed;
    let f = &scenario.faults;
    let queue = MemoryQueue::with_options(
        clock.clone(),
        QueueOptions {
            faults: QueueFaults {
                seed: seed ^ 0x5150,
                redeliver_rate: f.sqs_redeliver,
                short_poll_miss_rate: f.sqs_short_poll_miss,
                refuse_rate: f.sqs_refuse_entry,
            },
            ..QueueOptions::template()
        },
    );
    let store = FaultyStore::new(
        MemoryStore::new(),
        f.dynamo_throttle,
        f.dynamo_lost_answer,
        seed ^ 0xD1,
    );
    let api = Arc::new(FaultyApi::new(scenario, clock.clone())?);
    let mut orchestrator = OrchestratorConfig::with_quota(scenario.quota.parse::<QuotaSpec>()?);
    orchestrator.batch_max_jobs = scenario.batch_max_jobs;
    let mut worker = WorkerConfig::new("http://api.invalid".parse()?);
    // Results: every job's to one queue, the stack's default, which refuses some deliveries.
    let results = scenario
        .results
        .then(|| MemoryResults::with_refuse_rate(seed ^ 0x7E5, scenario.results_refuse));
    if results.is_some() {
        let destinations = Destinations::parse(RESULTS_ARN, "replies")?;
        worker.destinations = destinations.clone();
        orchestrator.destinations = destinations;
    }
    let system = Arc::new(System::assemble(Parts {
        clock: clock.clone(),
        queue: queue.clone(),
        store: store.clone(),
        http: vec![api.clone(); scenario.functions],
        worker,
        orchestrator,
        invoker: InvokerOptions {
            duplicate_rate: f.lambda_duplicate,
            fail_rate: f.lambda_invoke_fails,
            lost_answer_rate: f.lambda_lost_answer,
            kill_rate: f.lambda_kill,
            kill_within: KILL_WITHIN,
            seed: seed ^ 0x1A,
            ..InvokerOptions::template()
        },
        observer: Arc::new(NoObserver),
        results: results
            .clone()
            .map(|r| Arc::new(r) as Arc<dyn qo_core::ports::ResultSink>),
        around: None,
    })?);

    let producer = tokio::task::spawn_local(produce(scenario.clone(), queue, clock.clone()));
    drive_runs(scenario, &system, &clock).await;
    let mut history = History {
        keys: producer.await?,
        ..History::default()
    };
    system.wait_idle().await;
    collect(&system, &api, &store, &mut history);
    if let Some(sink) = &results {
        history.results_on = true;
        let delivered = sink.delivered().into_iter().map(|d| d.result);
        let dead_lettered = system
            .queue()
            .dead_letters()
            .into_iter()
            .filter_map(|d| serde_json::from_str::<qo_core::result::JobResult>(&d.body).ok());
        // A result kept on a queue for a later delivery is heard back once it is delivered;
        // at the end it still counts as kept.
        let kept: Vec<_> = system
            .queue()
            .messages()
            .into_iter()
            .filter_map(|(_, body, _)| {
                serde_json::from_str::<qo_core::result::JobResult>(&body).ok()
            })
            .collect();
        history.results = delivered
            .chain(dead_lettered)
            .chain(kept)
            .filter_map(|r| Some((*history.keys.get(&r.job_id)?, r.outcome)))
            .collect();
    }
    let stats = system.invoker_stats();
    let struck = Struck {
        worker_kills: stats.killed,
        redelivered: system.queue().redelivered(),
        duplicate_deliveries: stats.duplicates,
        lost_invoke_answers: stats.lost_answers,
        unrecorded: history.unrecorded.len() as u64,
    };
    Ok((history, struck))
}

/// The producer: sends every job at its time (some twice); returns each job's idempotency
/// keys (its message ids and its `id`).
async fn produce(
    scenario: Scenario,
    queue: MemoryQueue,
    clock: Arc<TokioClock>,
) -> HashMap<String, usize> {
    let start = clock.now();
    let mut keys = HashMap::new();
    for job in &scenario.jobs {
        clock.sleep_until(start.plus(job.at)).await;
        for _ in 0..if job.twice { 2 } else { 1 } {
            keys.insert(queue.send(job.body.clone()), job.n);
        }
        if let Some(id) = &job.id {
            keys.insert(id.clone(), job.n);
        }
    }
    keys
}

/// Starts orchestrator runs from the start until the scenario's end, then waits for the last.
async fn drive_runs(scenario: &Scenario, system: &Arc<Rig>, clock: &Arc<TokioClock>) {
    let f = &scenario.faults;
    let mut r = StdRng::seed_from_u64(scenario.seed ^ 0x0C);
    let end = scenario.start.plus(scenario.length);
    let mut runs: JoinSet<bool> = JoinSet::new();
    let mut next_tick = clock.now();
    let mut n = 0u64;
    loop {
        let now = clock.now();
        if now >= end {
            break;
        }
        let start_one = if now >= next_tick {
            next_tick = next_tick.plus(SCHEDULE);
            // Reserved concurrency 1: a tick while a run runs is throttled, unless the lease
            // is contested (a run Lambda lost track of, drawn as an overlap).
            runs.is_empty() || r.random_bool(f.orchestrator_overlap)
        } else {
            false
        };
        if start_one {
            n += 1;
            let kill = r
                .random_bool(f.orchestrator_kill)
                .then(|| Duration::from_millis(r.random_range(0..RUN_LENGTH.as_millis() as u64)));
            runs.spawn_local(one_run(system.clone(), clock.clone(), n, kill));
        }
        tokio::select! {
            biased;
            Some(joined) = runs.join_next() => {
                // A run that stopped at its deadline with work left invokes itself.
                if joined.unwrap_or(false) && clock.now() < end {
                    n += 1;
                    runs.spawn_local(one_run(system.clone(), clock.clone(), n, None));
                }
            }
            () = clock.sleep_until(next_tick.min(end)) => {}
        }
    }
    while runs.join_next().await.is_some() {}
}

/// One orchestrator run named `orchestrator-<n>`, killed `kill` after its start if drawn;
/// whether it asks to be continued at once.
async fn one_run(system: Arc<Rig>, clock: Arc<TokioClock>, n: u64, kill: Option<Duration>) -> bool {
    let owner = format!("orchestrator-{n}");
    let deadline = clock.now().plus(RUN_LENGTH);
    let run = system.run_as(&owner, deadline);
    let report = match kill {
        None => run.await,
        Some(after) => {
            tokio::select! {
                biased;
                report = run => report,
                // Killed: the run stops at the await it reached, holding what it held.
                () = clock.sleep(after) => return false,
            }
        }
    };
    report.is_ok_and(|r| r.continue_now)
}

/// The job number in a body: the digits after its first `/j/`.
pub(crate) fn job_in(body: &str) -> Option<usize> {
    let at = body.find("/j/")? + 3;
    let digits: String = body[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The jobs of a worker event.
fn jobs_of(event: &WorkerEvent) -> Vec<usize> {
    let paths: Vec<&str> = match event {
        WorkerEvent::Job(j) => vec![&j.job.path],
        WorkerEvent::Batch(b) => b.jobs.iter().map(|j| j.job.path.as_str()).collect(),
        WorkerEvent::HealthCheck(_) | WorkerEvent::Deliver(_) => Vec::new(),
    };
    paths.into_iter().filter_map(job_in).collect()
}

fn collect(system: &Rig, api: &FaultyApi, store: &FaultyStore<MemoryStore>, h: &mut History) {
    let queue = system.queue();
    h.calls = api.calls();
    // A result dead-lettered undelivered is the job's result, not the job.
    h.dead_lettered = queue
        .dead_letters()
        .into_iter()
        .filter(|d| d.reason.kind() != qo_core::reason::ReasonKind::ResultUndelivered)
        .filter_map(|d| Some((job_in(&d.body)?, d.reason.to_string())))
        .collect();
    h.redriven = queue
        .redriven()
        .iter()
        .filter_map(|m| job_in(&m.body))
        .collect();
    h.queued = queue
        .messages()
        .iter()
        .filter_map(|(_, body, _)| job_in(body))
        .collect();
    h.expired = queue
        .expired()
        .iter()
        .filter_map(|m| job_in(&m.body))
        .collect();
    h.failed_events = system
        .failures()
        .iter()
        .flat_map(|f| jobs_of(&f.event))
        .collect();
    h.kills = system
        .functions()
        .iter()
        .flat_map(|(_, i)| i.kills())
        .map(|k| (k.at, jobs_of(&k.event)))
        .collect();
    h.unrecorded = store.unrecorded();
}
