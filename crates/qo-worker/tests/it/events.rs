//! Every sample event for the worker in `events/` parses into the handler's type, and every
//! sample job is a valid job: a sample can never rot.

use qo_core::{Job, WorkerEvent};
use qo_testkit::{events_dir, sample_events};

#[test]
fn worker_sample_events_parse() {
    let mut seen = Vec::new();
    for (name, text) in sample_events(|name| name.starts_with("worker-") && name.ends_with(".json"))
    {
        let event: WorkerEvent =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
        let jobs = match &event {
            WorkerEvent::Job(job) => vec![job],
            WorkerEvent::Batch(batch) => batch.jobs.iter().collect(),
            WorkerEvent::HealthCheck(_) | WorkerEvent::Deliver(_) => Vec::new(),
        };
        for job in jobs {
            job.job.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        seen.push(name);
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "worker-batch.json",
            "worker-health-check.json",
            "worker-job.json"
        ]
    );
}

#[test]
fn sample_jobs_are_valid() {
    let text = std::fs::read_to_string(events_dir().join("jobs.jsonl")).expect("jobs.jsonl");
    let mut n = 0;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        Job::parse(line).unwrap_or_else(|e| panic!("jobs.jsonl line {}: {e}", i + 1));
        n += 1;
    }
    assert_eq!(n, 20);
}
