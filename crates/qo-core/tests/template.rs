//! The deployment's numbers in code equal `template.yaml`'s: the queues' attributes
//! ([`QueueAttributes::TEMPLATE`]) and the worker's asynchronous settings
//! ([`WorkerFunction::TEMPLATE`]), which the in-memory adapters, `qo local`, `qo setup` and the
//! moto tests use. A change to one without the other turns this red.

use qo_core::lambda::WorkerFunction;
use qo_core::sqs::QueueAttributes;

fn template() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml");
    std::fs::read_to_string(path).expect("template.yaml at the repository root")
}

/// The lines of the block `name:` two spaces in (a parameter or a resource).
fn block<'t>(template: &'t str, name: &str) -> Vec<&'t str> {
    let head = format!("  {name}:");
    let mut lines = template.lines().skip_while(|l| l.trim_end() != head);
    lines.next();
    lines
        .take_while(|l| l.trim().is_empty() || l.starts_with("    "))
        .collect()
}

/// The value of the first `key:` in the block of `name`, comments and quotes removed.
fn value(template: &str, name: &str, key: &str) -> Option<String> {
    block(template, name).into_iter().find_map(|l| {
        let v = l.trim().strip_prefix(&format!("{key}:"))?;
        let v = v.split(" #").next().unwrap_or("").trim();
        Some(v.trim_matches('"').to_string())
    })
}

#[test]
fn queue_attributes_equal_the_template_defaults() {
    let t = template();
    let a = QueueAttributes::TEMPLATE;
    assert_eq!(
        value(&t, "MaxReceiveCount", "Default"),
        a.max_receive_count.map(|n| n.to_string()),
        "MaxReceiveCount's default"
    );
    assert_eq!(
        value(&t, "OrchestratorTimeout", "Default"),
        Some(a.visibility_timeout.as_secs().to_string()),
        "the queues' visibility is the orchestrator's timeout"
    );
    for queue in ["JobQueue", "RetryQueue"] {
        assert_eq!(
            value(&t, queue, "MessageRetentionPeriod"),
            Some(a.retention.as_secs().to_string()),
            "{queue}'s retention"
        );
        assert_eq!(
            value(&t, queue, "VisibilityTimeout").as_deref(),
            Some("!Ref OrchestratorTimeout"),
            "{queue}'s visibility"
        );
        assert_eq!(
            value(&t, queue, "maxReceiveCount").as_deref(),
            Some("!Ref MaxReceiveCount"),
            "{queue}'s redrive policy"
        );
    }
}

#[test]
fn worker_settings_equal_the_template_defaults() {
    let t = template();
    let w = WorkerFunction::TEMPLATE;
    assert_eq!(
        value(&t, "WorkerConcurrency", "Default"),
        w.reserved_concurrency.map(|n| n.to_string()),
    );
    assert_eq!(
        value(&t, "WorkerMaxEventAgeSeconds", "Default"),
        Some(w.maximum_event_age.as_secs().to_string()),
    );
    let worker = block(&t, "WorkerFunction").join("\n");
    assert!(
        worker.contains(&format!(
            "MaximumRetryAttempts: {}",
            w.maximum_retry_attempts
        )),
        "the worker's MaximumRetryAttempts"
    );
}
