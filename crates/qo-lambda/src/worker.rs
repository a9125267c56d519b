//! The worker function's life ([`run`]), shared by the stock `worker` binary and a user's own
//! worker built on `qo-worker` with its [`qo_worker::AroundCall`] (see `examples/`).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::{Common, function_timeout};
use async_trait::async_trait;
use aws_config::SdkConfig;
use lambda_runtime::{Context, LambdaEvent, service_fn};
use qo_aws::{ApiKey, AwsResults, EmfMetrics, SdkSettings, load_api_key, load_config};
use qo_core::config::{Env, ProcessEnv};
use qo_core::{Clock, Timestamp, WorkerEvent};
use qo_worker::lambda::{TimeoutBudgetError, TimeoutSource, check_timeout_budget};
use qo_worker::{
    ApiClient, AroundCall, CredentialError, CredentialSource, SystemClock, Worker, WorkerConfig,
    WorkerError, handler,
};
use tracing::{error, info};

/// The worker function's cold start and event loop, with `around` (the user's code around each
/// call; [`qo_worker::Passthrough`] for the stock worker): reads the configuration, refuses a
/// timeout that cannot cover the worst case, loads the API key, builds the clients and the
/// result sink, then hands each event to [`qo_worker::handler`].
pub async fn run(around: Arc<dyn AroundCall>) -> Result<(), lambda_runtime::Error> {
    let env = ProcessEnv;
    let config = WorkerConfig::from_env(&env)?;
    let common = Common::from_env(&env)?;
    let sdk = common.sdk;
    // Seed 003: refuse to start when the function timeout cannot cover the worst case (Lambda
    // reports the exit as an init error). Without FUNCTION_TIMEOUT_S, the first invocation's
    // deadline is checked instead.
    let declared = function_timeout(&env)?;
    if let Some(timeout) = declared {
        check_timeout_budget(&sdk, &config, timeout, TimeoutSource::Variable)?;
    }

    // AWS_ENDPOINT_URL (moto, locally) is honoured by the SDK itself.
    let aws = load_config(&sdk, None).await;
    let key = load_api_key(&env, &aws).await?;
    match &key {
        Some(k) => info!(source = ?k.source(), header = %config.auth_header, "API key loaded"),
        None => info!("no API key configured: calls go without a credential"),
    }
    let mut client = ApiClient::new(&config, key.as_ref().map(|k| k.expose()))?;
    if around.reads_answers() {
        client = client.reading_whole_answers(&config);
    }
    drop(key);
    let (store, queue) = common.stores(&aws);
    info!(
        api = %config.api_base_url,
        connect_timeout_ms = ms(config.connect_timeout),
        read_timeout_ms = ms(config.read_timeout),
        max_slot_wait_ms = ms(config.max_slot_wait),
        "worker ready"
    );

    let source = Arc::new(SecretStoreKey { aws: aws.clone() });
    // Metrics (Succeeded, Throttled, Failures, Requeued, LateDeliveries, Duplicates,
    // CredentialRejected, CircuitOpened, JobWait, ...) as one EMF line on stdout per
    // invocation; no CircuitOpen gauge (the orchestrator's feeds the alarm).
    let metrics = Arc::new(EmfMetrics::from_env(&env, qo_aws::metrics::WORKER));
    // Results: to the destinations the stack declares (RESULT_DESTINATIONS), large bodies to
    // RESULT_BUCKET.
    let results = (!config.destinations.is_empty()).then(|| {
        let bucket = env.get("RESULT_BUCKET");
        info!(
            destinations = config.destinations.list().len(),
            bucket = bucket.as_deref().unwrap_or(""),
            "results go to the stack's destinations"
        );
        Arc::new(AwsResults::new(&aws, bucket)) as Arc<dyn qo_core::ports::ResultSink>
    });
    let mut worker = Worker::new(config, client, store, queue, SystemClock)
        .with_around(around)
        .with_credential_source(source)
        .with_observer(Arc::clone(&metrics) as Arc<dyn qo_core::Observer>);
    if let Some(sink) = results {
        worker = worker.with_result_sink(sink);
    }
    let worker = Arc::new(worker);
    let checked = Arc::new(AtomicBool::new(declared.is_some()));
    let refused: Arc<OnceLock<TimeoutBudgetError>> = Arc::new(OnceLock::new());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<WorkerEvent>| {
        let worker = Arc::clone(&worker);
        let metrics = Arc::clone(&metrics);
        let refused = Arc::clone(&refused);
        let first = !checked.swap(true, Ordering::Relaxed);
        async move {
            if first && let Err(e) = check_first_deadline(&event.context, &sdk, worker.config()) {
                error!(error = %e, "function timeout too short: refusing every event");
                let _ = refused.set(e);
            }
            // An event is not handled under a timeout that cannot cover it: it fails, Lambda
            // retries it and then sends it to the on-failure destination (`qo redrive
            // --worker-failures` brings it back once the timeout is fixed).
            if let Some(e) = refused.get() {
                return Err(WorkerError::TimeoutBudget(e.clone()));
            }
            let result = handler(&worker, event).await;
            // Before the answer goes back: Lambda may freeze the environment right after.
            metrics.flush(worker.clock().now());
            result
        }
    }))
    .await
}

/// Once per cold start without `FUNCTION_TIMEOUT_S`: the first invocation's time left is the
/// function timeout.
fn check_first_deadline(
    context: &Context,
    sdk: &SdkSettings,
    config: &WorkerConfig,
) -> Result<(), TimeoutBudgetError> {
    let now = Timestamp::from_system(SystemTime::now());
    // None: no deadline, or an emulator's placeholder (see `invocation_deadline`).
    let Some(deadline) = qo_core::lambda::invocation_deadline(context.deadline, now) else {
        return Ok(());
    };
    check_timeout_budget(
        sdk,
        config,
        deadline.since(now),
        TimeoutSource::FirstDeadline,
    )
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
