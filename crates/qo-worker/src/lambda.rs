//! The Lambda entry point: [`handler`] turns a [`LambdaEvent`] into [`Worker::handle`].

use std::time::Duration;

use lambda_runtime::LambdaEvent;
use qo_aws::{SdkSettings, TimeoutBudgetError, check_function_timeout};
use qo_core::ports::{IdempotencyStore, JobSink, RecordStore};
use qo_core::{Clock, Timestamp, WorkerEvent};
use tracing::{Instrument, info_span, warn};

use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::http::HttpCall;
use crate::outcome::Outcome;
use crate::worker::Worker;

/// Time kept after the API call for the writes that record the job's fate (seed 003's margin).
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// Handles one Lambda invocation. Warns when the invocation's remaining time cannot cover the
/// wait for the slot, one call (connect + read timeouts) and [`DEADLINE_MARGIN`]: the function
/// timeout is too short (the rule: timeout >= attempts x (connect + read) + margin).
pub async fn handler<S, Q, C, H>(
    worker: &Worker<S, Q, C, H>,
    event: LambdaEvent<WorkerEvent>,
) -> Result<Outcome, WorkerError>
where
    S: RecordStore + IdempotencyStore,
    Q: JobSink,
    C: Clock,
    H: HttpCall,
{
    let LambdaEvent { payload, context } = event;
    // Zero when there is no deadline (a test's `Context::default()`).
    if context.deadline > 0 {
        let deadline = Timestamp::from_millis(context.deadline);
        if let Some(short) = worker.deadline_shortfall(deadline, &payload, DEADLINE_MARGIN) {
            warn!(
                short_ms = u64::try_from(short.as_millis()).unwrap_or(u64::MAX),
                call_budget_ms =
                    u64::try_from(worker.config().call_budget().as_millis()).unwrap_or(u64::MAX),
                "the invocation's remaining time is shorter than the slot wait + \
                 API_CONNECT_TIMEOUT_MS + API_READ_TIMEOUT_MS + margin: raise the function timeout"
            );
        }
    }
    let span = info_span!("invocation", request_id = %context.request_id);
    worker.handle(payload).instrument(span).await
}

/// Checks seed 003's rule for the worker: the function timeout must cover the SDK's worst case
/// (`SDK_MAX_ATTEMPTS` x (connect + read)) plus a margin of the slot wait
/// (`MAX_SLOT_WAIT_MS`), one API call (`API_CONNECT_TIMEOUT_MS` + `API_READ_TIMEOUT_MS`) and
/// [`DEADLINE_MARGIN`].
///
/// Lambda does not tell a function its timeout; the time left at the start of the first
/// invocation after a cold start is that timeout, to the millisecond, so `function_timeout` is
/// that rounded up to whole seconds.
pub fn check_timeout_budget(
    sdk: &SdkSettings,
    config: &WorkerConfig,
    function_timeout: Duration,
) -> Result<(), TimeoutBudgetError> {
    let margin = config
        .max_slot_wait
        .saturating_add(config.call_budget())
        .saturating_add(DEADLINE_MARGIN);
    let whole = Duration::from_secs(
        function_timeout.as_secs() + u64::from(function_timeout.subsec_nanos() > 0),
    );
    check_function_timeout(sdk, whole, margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WorkerConfig {
        let env: std::collections::HashMap<String, String> =
            [("API_BASE_URL".to_string(), "http://h".to_string())]
                .into_iter()
                .collect();
        WorkerConfig::from_env(&env).expect("config")
    }

    #[test]
    fn the_timeout_budget_counts_the_sdk_the_slot_wait_and_one_call() {
        // SDK 3 x (3 + 5) = 24 s; margin 5 + 12 + 2 = 19 s: 43 s needed.
        let sdk = SdkSettings::default();
        let e = check_timeout_budget(&sdk, &config(), Duration::from_millis(41_500)).unwrap_err();
        assert_eq!(e.needed, Duration::from_secs(43));
        assert_eq!(e.function_timeout, Duration::from_secs(42));
        // 42.001 s left at the first invocation: a 43 s timeout.
        assert!(check_timeout_budget(&sdk, &config(), Duration::from_millis(42_001)).is_ok());
        assert!(check_timeout_budget(&sdk, &config(), Duration::from_secs(900)).is_ok());
        let e = check_timeout_budget(&sdk, &config(), Duration::from_secs(30)).unwrap_err();
        assert_eq!(e.function_timeout, Duration::from_secs(30));
    }
}
