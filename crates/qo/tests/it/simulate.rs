//! The seeded whole-system simulation (`qo::simulate`) as a test: a block of seeds runs on
//! every test run and each must keep every invariant; a seed replays exactly.
//!
//! `QO_SIM_SEEDS` sets how many seeds run (default 300) and `QO_SIM_FROM` the first (default 0);
//! `cargo run --release -p qo -- simulate --seeds 10000` is the soak.

use qo::simulate::{replay_command, run_seed, run_seeds};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn every_seed_keeps_the_invariants() {
    // The seeds keep both cores busy: no real-time test runs beside them.
    let _one = crate::ONE_AT_A_TIME.blocking_lock();
    let from = env_u64("QO_SIM_FROM", 0);
    let count = env_u64("QO_SIM_SEEDS", 300);
    let summary = run_seeds(from, count, 2);
    eprintln!(
        "{} seeds: {} done, {} dead-lettered, {} queued, {} repeated in the unrecorded window; \
         struck {:?}",
        summary.seeds,
        summary.done,
        summary.dead_lettered,
        summary.queued,
        summary.unrecorded_repeats,
        summary.struck
    );
    let failures: Vec<String> = summary
        .failed
        .iter()
        .map(|(seed, v)| format!("seed {seed} ({}): {}", replay_command(*seed), v.join("; ")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The faults struck: a run with none would prove nothing.
    let s = summary.struck;
    assert!(s.worker_kills > 0 && s.redelivered > 0 && s.duplicate_deliveries > 0);
    assert!(s.lost_invoke_answers > 0 && s.unrecorded > 0);
}

#[test]
fn a_seed_replays_exactly() {
    let _one = crate::ONE_AT_A_TIME.blocking_lock();
    let a = run_seed(3).expect("seed 3 runs");
    let b = run_seed(3).expect("seed 3 runs again");
    assert_eq!(a.digest, b.digest, "two runs of one seed differ");
    assert!(a.verdict.calls > 0);
}
