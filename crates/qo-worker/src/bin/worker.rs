//! The worker Lambda function: reads its configuration and builds its clients once per cold
//! start, then hands each asynchronous event to [`qo_worker::handler`].

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::SdkConfig;
use lambda_runtime::{Context, LambdaEvent, service_fn};
use qo_aws::{
    ApiKey, DynamoStore, EmfMetrics, QueueUrls, SdkSettings, SqsQueue, load_api_key, load_config,
};
use qo_core::config::{Env, ProcessEnv};
use qo_core::{Clock, Timestamp, WorkerEvent};
use qo_worker::lambda::check_timeout_budget;
use qo_worker::{
    ApiClient, CredentialError, CredentialSource, SystemClock, Worker, WorkerConfig, handler,
};
use tracing::{error, info, warn};

#[tokio::main]
async fn main() -> ExitCode {
    qo_aws::logging::init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "worker stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), lambda_runtime::Error> {
    let env = ProcessEnv;
    let config = WorkerConfig::from_env(&env)?;
    let sdk = SdkSettings::from_env(&env)?;
    let table = env.required("TABLE_NAME")?;
    let urls = QueueUrls::from_env(&env)?;

    // AWS_ENDPOINT_URL (moto, locally) is honoured by the SDK itself.
    let aws = load_config(&sdk, None).await;
    let key = load_api_key(&env, &aws).await?;
    match &key {
        Some(k) => info!(source = ?k.source(), header = %config.auth_header, "API key loaded"),
        None => info!("no API key configured: calls go without a credential"),
    }
    let client = ApiClient::new(&config, key.as_ref().map(|k| k.expose()))?;
    drop(key);
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&aws), table);
    let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&aws), urls);
    info!(
        api = %config.api_base_url,
        connect_timeout_ms = ms(config.connect_timeout),
        read_timeout_ms = ms(config.read_timeout),
        max_slot_wait_ms = ms(config.max_slot_wait),
        "worker ready"
    );

    let source = Arc::new(SecretStoreKey { aws: aws.clone() });
    // Metrics (Succeeded, Throttled, Failures, Requeued, LateDeliveries, Duplicates,
    // CredentialRejected, JobWait, ...) as one EMF line on stdout per invocation.
    let metrics = Arc::new(EmfMetrics::from_env(&env, "worker"));
    let worker = Arc::new(
        Worker::new(config, client, store, queue, SystemClock)
            .with_credential_source(source)
            .with_observer(Arc::clone(&metrics) as Arc<dyn qo_core::Observer>),
    );
    let checked = Arc::new(AtomicBool::new(false));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<WorkerEvent>| {
        let worker = Arc::clone(&worker);
        let metrics = Arc::clone(&metrics);
        let first = !checked.swap(true, Ordering::Relaxed);
        async move {
            if first {
                check_function_timeout(&event.context, &sdk, worker.config());
            }
            let result = handler(&worker, event).await;
            // Before the answer goes back: Lambda may freeze the environment right after.
            metrics.flush(worker.clock().now());
            result
        }
    }))
    .await
}

/// Once per cold start: the first invocation's time left is the function timeout; warns when
/// it cannot cover the worst case.
fn check_function_timeout(context: &Context, sdk: &SdkSettings, config: &WorkerConfig) {
    if context.deadline == 0 {
        return;
    }
    let now = Timestamp::from_system(SystemTime::now());
    let timeout = Timestamp::from_millis(context.deadline).since(now);
    if let Err(e) = check_timeout_budget(sdk, config, timeout) {
        warn!(
            error = %e,
            "function timeout too short: raise it or lower the timeouts (margin = MAX_SLOT_WAIT_MS \
             + API_CONNECT_TIMEOUT_MS + API_READ_TIMEOUT_MS + 2 s)"
        );
    }
}

/// The API key re-read from where the cold start read it (`API_KEY`, Secrets Manager or SSM),
/// after the API refused the key in use.
struct SecretStoreKey {
    aws: SdkConfig,
}

#[async_trait]
impl CredentialSource for SecretStoreKey {
    async fn load(&self) -> Result<Option<ApiKey>, CredentialError> {
        load_api_key(&ProcessEnv, &self.aws)
            .await
            .map_err(|e| CredentialError(Box::new(e)))
    }
}

/// Milliseconds, for logs.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
