//! The example's code in the whole system, on this machine: the real orchestrator loop and
//! the real worker (`qo::system`) over the in-memory adapters on tokio's paused clock, with an
//! API in memory that answers customers. Every customer job is called once, its two fields
//! stored, its summary published and delivered as its result; a job that is not a customer is
//! refused before any call.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use customer_summary::{Customer, CustomerSummary, MemorySummaries};
use qo::system::{Parts, System};
use qo_core::result::{Destinations, ResultOutcome};
use qo_core::{Clock, Job, NoObserver, QuotaSpec, TokioClock};
use qo_memory::{InvokerOptions, MemoryQueue, MemoryResults, MemoryStore, QueueOptions};
use qo_worker::{ApiResponse, HttpCall, HttpError, WorkerConfig, WorkerError};

/// An API of customers: `/customers/<id>` answers `{"id": <id>, "name": ..., "plan": ...}`.
#[derive(Default)]
struct Customers {
    paths: Mutex<Vec<String>>,
}

#[async_trait]
impl HttpCall for Customers {
    async fn call(&self, job: &Job) -> Result<ApiResponse, HttpError> {
        self.paths.lock().expect("paths").push(job.path.clone());
        let id: u64 = job
            .path
            .trim_start_matches("/customers/")
            .parse()
            .map_err(|_| HttpError::Invalid(job.path.clone()))?;
        let body = serde_json::json!({"id": id, "name": format!("name-{id}"), "plan": "pro"});
        Ok(ApiResponse {
            status: 200,
            body_start: body.to_string().into_bytes(),
            ..ApiResponse::default()
        })
    }
    async fn health(&self) -> Result<ApiResponse, HttpError> {
        Ok(ApiResponse::status(200))
    }
    fn set_api_key(&self, _key: Option<&str>) -> Result<bool, WorkerError> {
        Ok(false)
    }
}

#[tokio::test(start_paused = true)]
async fn customers_are_fetched_at_their_slots_kept_and_summarised() {
    let clock = Arc::new(TokioClock::system());
    let api = Arc::new(Customers::default());
    let summaries = MemorySummaries::default();
    let results = MemoryResults::new();
    let destinations =
        Destinations::parse("arn:aws:sqs:us-east-1:123456789012:summaries", "summaries")
            .expect("destinations");
    let mut worker = WorkerConfig::new("https://api.example.com".parse().expect("url"));
    worker.destinations = destinations.clone();
    let mut orchestrator = qo_orchestrator_config("5/s");
    orchestrator.destinations = destinations;
    let system = System::assemble(Parts {
        clock: clock.clone(),
        queue: MemoryQueue::with_options(clock.clone(), QueueOptions::template()),
        store: MemoryStore::new(),
        http: vec![api.clone()],
        worker,
        orchestrator,
        invoker: InvokerOptions::template(),
        observer: Arc::new(NoObserver),
        results: Some(Arc::new(results.clone())),
        around: Some(Arc::new(CustomerSummary::new(summaries.clone()))),
    })
    .expect("system");
    for id in 1..=10 {
        system
            .queue()
            .send(format!(r#"{{"path":"/customers/{id}"}}"#));
    }
    system.queue().send(r#"{"path":"/orders/1"}"#);
    system
        .run_until(clock.now().plus(Duration::from_secs(30)))
        .await
        .expect("run");
    system.wait_idle().await;

    let paths = api.paths.lock().expect("paths").clone();
    assert_eq!(
        paths.len(),
        10,
        "one call per customer, none for the order: {paths:?}"
    );
    let mut kept = summaries.customers();
    kept.sort_by_key(|c| c.id);
    assert_eq!(kept.len(), 10);
    assert_eq!(
        kept[0],
        Customer {
            id: 1,
            name: "name-1".into()
        }
    );
    assert_eq!(summaries.published().len(), 10);
    let delivered = results.delivered();
    let succeeded: Vec<_> = delivered
        .iter()
        .filter(|d| d.result.outcome == ResultOutcome::Succeeded)
        .collect();
    assert_eq!(succeeded.len(), 10);
    let body: serde_json::Value =
        serde_json::from_str(succeeded[0].result.body.as_deref().expect("body")).expect("json");
    assert!(
        body["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("customer "))
    );
    assert!(
        body.get("plan").is_none(),
        "only the two fields are kept: {body}"
    );
    // The order was refused before its call, with the reason, and its failure result sent.
    let failed: Vec<_> = delivered
        .iter()
        .filter(|d| d.result.outcome == ResultOutcome::DeadLettered)
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]
            .result
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("is not a customer")),
        "{:?}",
        failed[0].result
    );
}

fn qo_orchestrator_config(quota: &str) -> qo_orchestrator::OrchestratorConfig {
    let mut c =
        qo_orchestrator::OrchestratorConfig::with_quota(quota.parse::<QuotaSpec>().expect("quota"));
    c.idle_exit = Some(Duration::from_secs(2));
    c
}
