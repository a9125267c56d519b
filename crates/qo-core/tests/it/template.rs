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
        value(&t, "OrchestratorFunction", "QUEUE_VISIBILITY_TIMEOUT_S"),
        Some(a.visibility_timeout.as_secs().to_string()),
        "the orchestrator is told the queues' visibility"
    );
    for queue in ["JobQueue", "RetryQueue"] {
        assert_eq!(
            value(&t, queue, "MessageRetentionPeriod"),
            Some(a.retention.as_secs().to_string()),
            "{queue}'s retention"
        );
        assert_eq!(
            value(&t, queue, "VisibilityTimeout"),
            Some(a.visibility_timeout.as_secs().to_string()),
            "{queue}'s visibility: short, so a run that dies leaves its messages hidden briefly"
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

/// The pool: worker functions 2 to 4 are copies of the first, each under its condition and in
/// its own subnets when given; the orchestrator is told the whole pool.
#[test]
fn the_pool_functions_copy_the_first_and_the_orchestrator_names_them_all() {
    let t = template();
    let strip = |name: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut in_vpc = false;
        for l in block(&t, name) {
            let s = l.trim();
            if s.starts_with("VpcConfig:") {
                in_vpc = true;
                continue;
            }
            if in_vpc && l.starts_with("        ") {
                continue;
            }
            in_vpc = false;
            if s.starts_with("Condition:") || s.starts_with("Description:") || s.starts_with('#') {
                continue;
            }
            out.push(l.to_string());
        }
        out
    };
    let first = strip("WorkerFunction");
    assert!(first.len() > 50, "the worker's block");
    for n in 2..=4 {
        let name = format!("WorkerFunction{n}");
        assert_eq!(strip(&name), first, "{name} differs from WorkerFunction");
        assert_eq!(value(&t, &name, "Condition"), Some(format!("HasWorker{n}")));
        assert!(
            block(&t, &name)
                .join("\n")
                .contains(&format!("SubnetIds: !Ref WorkerSubnetIds{n}")),
            "{name} in its own subnets"
        );
    }
    let orchestrator = block(&t, "OrchestratorFunction").join("\n");
    assert!(orchestrator.contains("WORKER_FUNCTION_NAMES: !If"));
    assert!(!orchestrator.contains("WORKER_FUNCTION_NAME:"));
    assert!(orchestrator.contains(
        "!Join [\",\", [!Ref WorkerFunction, !Ref WorkerFunction2, !Ref WorkerFunction3, !Ref WorkerFunction4]]"
    ));
    assert_eq!(
        value(&t, "WorkerFunctionCount", "AllowedValues"),
        Some("[1, 2, 3, 4]".into())
    );
}
