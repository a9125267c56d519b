//! `qo local --aws-endpoint URL`: the same run over the AWS adapters (the real SDKs) against a
//! local endpoint such as moto, with a table and queues of its own.

use std::sync::Arc;

use qo_aws::{AwsResults, LocalStack, SdkSettings, SqsQueue, local_config};
use qo_core::Timestamp;
use qo_core::TokioClock;
use qo_core::ports::QueueError;
use qo_core::result::Destinations;
use qo_sim::SimServer;

use super::{Backlog, LocalArgs, Metered, ServedResults, drive, queue_attributes};
use crate::report::Collector;

#[async_trait::async_trait]
impl Backlog for SqsQueue {
    async fn enqueue_batch(&self, bodies: Vec<String>, now: Timestamp) -> Result<(), QueueError> {
        let sent = self.send_jobs(&bodies, now).await?;
        match sent.failed.first() {
            None => Ok(()),
            Some((_, first)) => Err(QueueError::partial(
                "send",
                sent.failed.len(),
                Vec::new(),
                first.clone(),
            )),
        }
    }
    async fn pending(&self) -> Result<u64, QueueError> {
        Ok(self
            .depths()
            .await?
            .iter()
            .filter(|d| d.name != "dlq")
            .map(|d| d.visible + d.in_flight + d.delayed)
            .sum())
    }
    async fn ended_by_queue(&self, reasoned: u64) -> Result<(u64, u64), QueueError> {
        // SQS tells neither which dead letters came by the redrive policy nor what retention
        // deleted: the dead-letter queue's depth beyond what was sent with a reason, and 0.
        let dead: u64 = self
            .depths()
            .await?
            .iter()
            .filter(|d| d.name == "dlq")
            .map(|d| d.visible + d.in_flight + d.delayed)
            .sum();
        Ok((dead.saturating_sub(reasoned), 0))
    }
}

/// DynamoDB bills what it bills: the run does not count it.
impl Metered for qo_aws::DynamoStore {
    fn request_units(&self) -> Option<(u64, u64)> {
        None
    }
}

/// Creates a table and queues of this run's own at `endpoint` and runs the system over them.
pub(super) async fn run(
    args: LocalArgs,
    clock: Arc<TokioClock>,
    collector: Arc<Collector>,
    sim: Option<SimServer>,
    api_url: String,
    endpoint: String,
) -> Result<(), Box<dyn std::error::Error>> {
    let prefix = format!(
        "qo-local-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let config = local_config(&SdkSettings::default(), &endpoint).await;
    let stack = LocalStack::create(config, &prefix, &prefix, queue_attributes(&args)).await?;
    eprintln!(
        "qo local: table {prefix} and queues {} (+ retry, dlq) at {endpoint}",
        stack.urls.main
    );
    let (queue, store) = (stack.queue(), stack.store());
    let served = match args.serve {
        None => None,
        Some(_) => Some(serve_results(&stack, &prefix).await?),
    };
    drive(args, clock, collector, sim, api_url, queue, store, served).await
}

/// `--serve`: a results queue of the run's own, every job's default destination, delivered to
/// over the real SDK; prints what `qo call` and `qo send` need.
async fn serve_results(
    stack: &LocalStack,
    prefix: &str,
) -> Result<ServedResults, Box<dyn std::error::Error>> {
    let name = format!("{prefix}-results");
    let (url, arn) = stack.create_results_queue(&name).await?;
    let destinations = Destinations::parse(&arn, &name)?;
    // No bucket: a result over 252 KiB is dead-lettered with the reason.
    let sink = Arc::new(AwsResults::new(&stack.config, None));
    println!("TABLE_NAME={}", stack.table);
    println!("QUEUE_URL={}", stack.urls.main);
    if let Some(retry) = &stack.urls.retry {
        println!("RETRY_QUEUE_URL={retry}");
    }
    println!("DLQ_URL={}", stack.urls.dlq);
    println!("REPLY_QUEUE_URL={url}");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    Ok((sink, destinations))
}
