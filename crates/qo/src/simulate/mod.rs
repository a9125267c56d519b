//! `qo simulate`: the whole system under the faults the services document, one seed at a time,
//! judged by a checker.
//!
//! A seed draws a [`Scenario`]: a quota and the limit the API really enforces (lower, or
//! changing), jobs with and without an `id`, small and about 100 KB, some malformed, sent over
//! the first minute, and the rate of each fault. The real orchestrator loop and worker run it
//! on tokio's paused clock, in a runtime of their own on one thread, so a seed replays exactly:
//! 40 minutes of virtual time in well under a second. The faults:
//! - SQS: a deleted message comes back, short polls miss visible messages, single batch
//!   entries are refused, the redrive policy and retention act ([`qo_memory::QueueFaults`],
//!   [`qo_memory::QueueOptions::template`]);
//! - Lambda: duplicate and late deliveries, Invokes that fail, Invokes accepted whose answer
//!   is lost, worker runs killed at any await, throttling and retries under the reserved
//!   concurrency, the on-failure queue ([`qo_memory::InvokerOptions`]);
//! - DynamoDB: throttled calls and answers lost after the write ([`store::FaultyStore`]);
//!   conditional failures come from the runs and deliveries that race for real;
//! - the API: a limit below the quota or changing, 429 with and without `Retry-After`, 500s, an
//!   outage, calls that never connect, calls that take effect and time out
//!   ([`api::FaultyApi`]);
//! - the orchestrator: runs killed at any await, runs overlapping with a contested lease.
//!
//! [`check::check`] judges the history; a failing seed prints the command that replays it.
//!
//! # Layout
//! - `scenario`: [`Scenario`] and [`Faults`], drawn from a seed.
//! - `api`: [`api::FaultyApi`], the API in process, with its call log.
//! - `store`: [`store::FaultyStore`], DynamoDB's faults around the memory store.
//! - `drive`: one scenario's run, from the producer and the schedule to the history.
//! - `check`: [`check::History`], [`check::Verdict`] and the invariants.

pub mod api;
pub mod check;
mod drive;
pub mod scenario;
pub mod store;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Args;
use serde::Serialize;

pub use check::{History, Verdict, check};
pub use scenario::{Faults, Scenario};

/// `qo simulate`'s arguments.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// How many seeds to run, from `--from`.
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Run this one seed and print its scenario and verdict in full.
    #[arg(long, conflicts_with_all = ["seeds", "from"])]
    pub seed: Option<u64>,
    /// Seeds run at once (default: the machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One seed's outcome.
#[derive(Debug, Serialize)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// The checker's verdict.
    pub verdict: Verdict,
    /// A digest of the history: two runs of one seed give the same.
    pub digest: u64,
    /// Faults that struck, by kind.
    pub struck: Struck,
}

/// Faults that struck in one seed's run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Struck {
    /// Worker runs killed.
    pub worker_kills: u64,
    /// Deleted messages that came back.
    pub redelivered: u64,
    /// Events delivered twice.
    pub duplicate_deliveries: u64,
    /// Invokes accepted whose answer was lost.
    pub lost_invoke_answers: u64,
    /// Done records refused.
    pub unrecorded: u64,
}

/// Runs seed `seed` on a paused clock in a runtime of its own, and checks it.
pub fn run_seed(seed: u64) -> Result<SeedReport, String> {
    let scenario = Scenario::draw(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("seed {seed}: no runtime: {e}"))?;
    let (history, struck) = tokio::task::LocalSet::new()
        .block_on(&rt, drive::run(&scenario))
        .map_err(|e| format!("seed {seed}: the run failed: {e}"))?;
    let verdict = check(&scenario, &history);
    Ok(SeedReport {
        seed,
        digest: digest(&history),
        verdict,
        struck,
    })
}

/// A digest of what the API saw and where every job ended.
fn digest(h: &History) -> u64 {
    let mut d = DefaultHasher::new();
    for c in &h.calls {
        (c.at.as_millis(), c.job, format!("{:?}", c.answer)).hash(&mut d);
    }
    (
        &h.dead_lettered,
        &h.redriven,
        &h.queued,
        &h.failed_events,
        &h.expired,
    )
        .hash(&mut d);
    d.finish()
}

/// The command that replays `seed`.
pub fn replay_command(seed: u64) -> String {
    format!("cargo run --release -p qo -- simulate --seed {seed}")
}

/// What a batch of seeds found.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// Seeds whose history broke an invariant (or whose run failed), with what broke.
    pub failed: Vec<(u64, Vec<String>)>,
    /// Calls that reached the API, in all.
    pub calls: u64,
    /// Jobs done, dead-lettered, still queued.
    pub done: u64,
    /// Jobs dead-lettered with a reason.
    pub dead_lettered: u64,
    /// Jobs still on a queue at the end.
    pub queued: u64,
    /// Jobs whose work was repeated in the window only the API can close.
    pub unrecorded_repeats: u64,
    /// Faults that struck, in all.
    pub struck: Struck,
}

impl Summary {
    fn add(&mut self, r: Result<SeedReport, String>, seed: u64) {
        self.seeds += 1;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.failed.push((seed, vec![e]));
                return;
            }
        };
        let v = r.verdict;
        self.calls += v.calls as u64;
        self.done += v.done as u64;
        self.dead_lettered += v.dead_lettered as u64;
        self.queued += v.queued as u64;
        self.unrecorded_repeats += v.unrecorded_repeats as u64;
        let s = &mut self.struck;
        s.worker_kills += r.struck.worker_kills;
        s.redelivered += r.struck.redelivered;
        s.duplicate_deliveries += r.struck.duplicate_deliveries;
        s.lost_invoke_answers += r.struck.lost_invoke_answers;
        s.unrecorded += r.struck.unrecorded;
        if !v.violations.is_empty() {
            self.failed.push((r.seed, v.violations));
        }
    }
}

/// Runs `count` seeds from `from` on `threads` threads.
pub fn run_seeds(from: u64, count: u64, threads: usize) -> Summary {
    let next = Arc::new(AtomicU64::new(from));
    let end = from.saturating_add(count);
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let next = next.clone();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return out;
                    }
                    out.push((seed, run_seed(seed)));
                }
            })
        })
        .collect();
    let mut all: Vec<(u64, Result<SeedReport, String>)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    all.sort_by_key(|(seed, _)| *seed);
    let mut summary = Summary::default();
    for (seed, r) in all {
        summary.add(r, seed);
    }
    summary
}

/// `qo simulate`.
pub async fn run(args: SimulateArgs) -> crate::CommandResult {
    if let Some(seed) = args.seed {
        let report = tokio::task::spawn_blocking(move || run_seed(seed)).await??;
        let scenario = Scenario::draw(seed);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{scenario:#?}");
            println!("{:#?}", report.verdict);
            println!(
                "struck: {:?}\ndigest: {:016x}",
                report.struck, report.digest
            );
        }
        if !report.verdict.passed() {
            return Err(format!("seed {seed} broke an invariant").into());
        }
        return Ok(());
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let began = Instant::now();
    let (from, count) = (args.from, args.seeds);
    let summary = tokio::task::spawn_blocking(move || run_seeds(from, count, threads)).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary, began.elapsed().as_secs_f64());
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} of {} seeds failed", summary.failed.len(), summary.seeds).into())
    }
}

fn print_summary(s: &Summary, secs: f64) {
    println!(
        "{} seeds in {secs:.1} s: {} passed, {} failed",
        s.seeds,
        s.seeds - s.failed.len() as u64,
        s.failed.len()
    );
    println!(
        "jobs: {} done, {} dead-lettered with a reason, {} still queued; {} API calls; {} \
         repeated in the window only the API closes",
        s.done, s.dead_lettered, s.queued, s.calls, s.unrecorded_repeats
    );
    let t = &s.struck;
    println!(
        "faults that struck: {} worker runs killed, {} messages redelivered after delete, {} \
         events delivered twice, {} invokes accepted with a lost answer, {} done records refused",
        t.worker_kills, t.redelivered, t.duplicate_deliveries, t.lost_invoke_answers, t.unrecorded
    );
    for (seed, violations) in &s.failed {
        println!(
            "seed {seed} failed: replay with `{}`",
            replay_command(*seed)
        );
        for v in violations.iter().take(5) {
            println!("  - {v}");
        }
    }
}
