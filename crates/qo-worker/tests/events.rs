//! Every sample event for the worker in `events/` parses into the handler's type, and every
//! sample job is a valid job: a sample can never rot.

use std::path::Path;

use qo_core::{Job, WorkerEvent};

fn events_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events")
}

#[test]
fn worker_sample_events_parse() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(events_dir()).expect("events/ exists") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !(name.starts_with("worker-") && name.ends_with(".json")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let event: WorkerEvent =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
        if let WorkerEvent::Job(job) = &event {
            job.job.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        seen.push(name);
    }
    seen.sort();
    assert_eq!(seen, vec!["worker-health-check.json", "worker-job.json"]);
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
