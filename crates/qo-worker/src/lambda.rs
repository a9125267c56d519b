//! The Lambda entry point: [`handler`] turns a [`LambdaEvent`] into [`Worker::handle`]. The
//! timeout budget it keeps is [`crate::budget`]'s.

use lambda_runtime::LambdaEvent;
use qo_core::ports::{IdempotencyStore, JobSink, RecordStore};
use qo_core::{Clock, WorkerEvent};
use tracing::{Instrument, info_span, warn};

pub use crate::budget::{
    DEADLINE_MARGIN, SDK_CALLS_AFTER_THE_CALL, SDK_CALLS_FOR_A_RESULT, SDK_CALLS_WITHOUT_A_CALL,
    TimeoutBudgetError, TimeoutSource, WorstCase, check_timeout_budget,
};
use crate::error::WorkerError;
use crate::http::HttpCall;
use crate::outcome::Outcome;
use crate::worker::Worker;

/// Handles one Lambda invocation. Warns when the invocation's remaining time cannot cover the
/// wait for the (first) slot, one call (connect + read timeouts) and [`DEADLINE_MARGIN`]: the
/// function timeout is too short (the rule: timeout >= attempts x (connect + read) + margin).
/// With a deadline, a batch's jobs whose slots the remaining time cannot cover are given back
/// untried ([`Worker::handle_until`]).
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
    // None: no deadline, or an emulator's placeholder already past at the start.
    let deadline = qo_core::lambda::invocation_deadline(context.deadline, worker.clock().now());
    if let Some(short) =
        deadline.and_then(|d| worker.deadline_shortfall(d, &payload, DEADLINE_MARGIN))
    {
        warn!(
            short_ms = u64::try_from(short.as_millis()).unwrap_or(u64::MAX),
            call_budget_ms =
                u64::try_from(worker.config().call_budget().as_millis()).unwrap_or(u64::MAX),
            "the invocation's remaining time is shorter than the slot wait + \
             API_CONNECT_TIMEOUT_MS + API_READ_TIMEOUT_MS + margin: raise the function timeout"
        );
    }
    let span = info_span!("invocation", request_id = %context.request_id);
    if let Some(deadline) = deadline {
        worker
            .handle_until(payload, deadline, DEADLINE_MARGIN)
            .instrument(span)
            .await
    } else {
        worker.handle(payload).instrument(span).await
    }
}
