//! The orchestrator Lambda function: reads its configuration and builds its clients once per
//! cold start, then hands each invocation (a scheduled tick or a control event) to
//! [`qo_orchestrator::handle`].

use std::process::ExitCode;
use std::time::Duration;

use lambda_runtime::{LambdaEvent, service_fn};
use qo_aws::{
    AsyncInvoke, Backoff, EmfMetrics, InvokeSettings, LambdaInvoker, check_function_timeout,
    load_config,
};
use qo_core::config::{Env, ProcessEnv};
use qo_core::{Clock, TokioClock};
use qo_lambda::{Common, function_timeout};
use qo_orchestrator::config::{FinishBudget, memory_shortfall, stop_margin};
use qo_orchestrator::{
    OrchestratorConfig, OrchestratorEvent, OrchestratorResponse, Ports, continuation_event, handle,
};
use tracing::{info, warn};

/// How often a running orchestrator writes its metrics (CloudWatch's standard resolution).
const METRICS_INTERVAL: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> ExitCode {
    qo_lambda::serve("orchestrator", run()).await
}

async fn run() -> Result<(), lambda_runtime::Error> {
    let env = ProcessEnv;
    let mut config = OrchestratorConfig::from_env(&env)?;
    let common = Common::from_env(&env)?;
    let sdk = common.sdk;
    // WORKER_FUNCTION_NAMES (the pool) or WORKER_FUNCTION_NAME (one function).
    let Some(worker) = config.worker_functions.first().cloned() else {
        return Err(qo_core::config::ConfigError::Missing {
            name: "WORKER_FUNCTION_NAMES (or WORKER_FUNCTION_NAME)".into(),
        }
        .into());
    };
    let invoke = InvokeSettings::from_env(&env)?;
    invoke.check_covers(config.quota.pacing_rate_per_s())?;
    // Lambda sets the function's memory; its CPU share bounds the pace the loop keeps.
    let memory = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE");
    if let Some(mb) = memory.and_then(|v| v.parse::<u32>().ok())
        && let Some(wanted) = memory_shortfall(config.quota.pacing_rate_per_s(), mb)
    {
        warn!(
            memory_mb = mb,
            wanted_mb = wanted,
            pace_per_s = config.quota.pacing_rate_per_s(),
            "the orchestrator's memory (so its CPU share) is small for the quota's pace: slots may \
             be late; raise OrchestratorMemorySize"
        );
    }
    // Seed 003: the stop margin covers the worst-case finish; the function timeout covers the
    // first SDK call and the stop margin. Either failing refuses to start (an init error).
    let backoff = Backoff::default();
    let budget = FinishBudget {
        sdk_call: sdk.operation_timeout(),
        invoke_attempt: sdk.attempt_timeout(),
        invoke_retries: invoke.max_retries,
        invoke_retry_wait: backoff.cap.max(backoff.retry_after_limit),
        max_in_flight: config.max_in_flight,
        batch_max_jobs: config.batch_max_jobs,
        max_held: config.max_held,
    };
    let explicit = match env.get("STOP_MARGIN_S") {
        Some(_) => Some(config.stop_margin),
        None => None,
    };
    config.stop_margin = stop_margin(explicit, &budget)?;
    info!(
        stop_margin_s = config.stop_margin.as_secs(),
        worst_finish_ms = u64::try_from(budget.total().as_millis()).unwrap_or(u64::MAX),
        explicit = explicit.is_some(),
        "stop margin"
    );
    if let Some(timeout) = function_timeout(&env)? {
        check_function_timeout(&sdk, timeout, config.stop_margin)?;
    }

    // AWS_ENDPOINT_URL (moto, locally) is honoured by the SDK itself.
    let aws = load_config(&sdk, None).await;
    let (store, queue) = common.stores(&aws);
    let invoker = LambdaInvoker::new(&aws, worker, &invoke)?.with_pool(&config.worker_functions);
    let metrics = EmfMetrics::from_env(&env, "orchestrator");
    // At its deadline a run with work left invokes this function again (CONTINUE_AT_DEADLINE,
    // default true; Lambda names the function in AWS_LAMBDA_FUNCTION_NAME).
    let continuation = match (
        env.parsed("CONTINUE_AT_DEADLINE", true)?,
        env.get("AWS_LAMBDA_FUNCTION_NAME"),
    ) {
        (true, Some(name)) => Some(AsyncInvoke::new(&aws, name)),
        _ => None,
    };
    info!(quota = %config.quota, workers = ?config.worker_functions, lead_ms = config.dispatch_lead.as_millis() as u64, "orchestrator ready");

    let (config, store, queue, invoker, metrics, continuation) =
        (&config, &store, &queue, &invoker, &metrics, &continuation);
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<OrchestratorEvent>| async move {
            // Anchored to the wall clock at each invocation: a reused container does not drift.
            let clock = TokioClock::system();
            let ports = Ports {
                queue,
                store,
                invoker,
                clock: &clock,
                observer: metrics,
            };
            // A run lasts up to the function's timeout: metrics go out every minute, so that
            // alarms see an open circuit or a backlog while it runs.
            let work = handle(ports, config, event);
            tokio::pin!(work);
            let mut every = tokio::time::interval_at(
                tokio::time::Instant::now() + METRICS_INTERVAL,
                METRICS_INTERVAL,
            );
            let result = loop {
                tokio::select! {
                    result = &mut work => break result,
                    _ = every.tick() => metrics.flush(clock.now()),
                }
            };
            metrics.flush(clock.now());
            if let (Ok(OrchestratorResponse::Run(report)), Some(next)) = (&result, continuation)
                && report.continue_now
            {
                match next.invoke(&continuation_event(clock.now())).await {
                    Ok(()) => info!(function = next.function_name(), "next run invoked"),
                    Err(e) => {
                        warn!(error = %e, "could not invoke the next run; the schedule starts it")
                    }
                }
            }
            result
        },
    ))
    .await
}
