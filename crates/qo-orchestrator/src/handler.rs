//! The Lambda handler: a scheduled event starts a run; a control event is applied directly.

use std::time::Duration;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::LambdaEvent;
use serde::{Deserialize, Serialize};

use qo_core::ports::{
    Invoker, JobSink, JobSource, LeaseStore, RecordStore, Redrive, RedriveReport,
};
use qo_core::{ControlCommand, ControlOutcome, Timestamp, apply_command};

use crate::config::OrchestratorConfig;
use crate::error::OrchestratorError;
use crate::run::{Ports, RunReport, run};

/// What the orchestrator function is invoked with.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OrchestratorEvent {
    /// An operator's command (`{"action":"pause"}`), applied directly.
    Control(ControlCommand),
    /// The EventBridge schedule's tick: start a run.
    Scheduled(EventBridgeEvent<serde_json::Value>),
}

/// What the handler answers.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OrchestratorResponse {
    /// A run's report.
    Run(RunReport),
    /// A control command's outcome.
    Control(ControlOutcome),
    /// A redrive's report.
    Redrive(RedriveReport),
}

/// Handles one invocation: runs until the Lambda deadline less the stop margin, or applies a
/// control command.
pub async fn handle<Q, S, I>(
    ports: Ports<'_, Q, S, I>,
    config: &OrchestratorConfig,
    event: LambdaEvent<OrchestratorEvent>,
) -> Result<OrchestratorResponse, OrchestratorError>
where
    Q: JobSource + JobSink + Redrive + ?Sized,
    S: RecordStore + LeaseStore + ?Sized,
    I: Invoker + ?Sized,
{
    let now = ports.clock.now();
    match event.payload {
        OrchestratorEvent::Control(ControlCommand::Redrive { max, dry_run }) => Ok(
            OrchestratorResponse::Redrive(ports.queue.redrive(max, dry_run).await?),
        ),
        OrchestratorEvent::Control(command) => {
            let outcome =
                apply_command(ports.store, &command, now, "control-event", &config.circuit).await?;
            Ok(OrchestratorResponse::Control(outcome))
        }
        OrchestratorEvent::Scheduled(_) => {
            let deadline = deadline_of(&event.context, now);
            Ok(OrchestratorResponse::Run(
                run(ports, config, deadline).await?,
            ))
        }
    }
}

/// The event a run sends its own function at its deadline ([`RunReport::continue_now`]), so
/// that the next run starts within seconds instead of at the next schedule tick: a scheduled
/// event whose source says where it came from.
pub fn continuation_event(now: Timestamp) -> serde_json::Value {
    serde_json::json!({
        "version": "0",
        "id": format!("continuation-{}", uuid::Uuid::new_v4()),
        "detail-type": "Scheduled Event",
        "source": CONTINUATION_SOURCE,
        "time": now.to_string(),
        "resources": [],
        "detail": {},
    })
}

/// The `source` of a [`continuation_event`].
pub const CONTINUATION_SOURCE: &str = "quota-orchestrator.continuation";

/// The invocation's deadline; 60 s from now when the context has none (local tools, or an
/// emulator's placeholder already past: see [`qo_core::lambda::invocation_deadline`]).
pub fn deadline_of(context: &lambda_runtime::Context, now: Timestamp) -> Timestamp {
    qo_core::lambda::invocation_deadline(context.deadline, now)
        .unwrap_or_else(|| now.plus(Duration::from_secs(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_events_parse() {
        let dir = qo_testkit::events_dir();
        let mut seen = 0;
        let samples = qo_testkit::sample_events(|name| {
            (name.starts_with("scheduled") || name.starts_with("control-"))
                && name.ends_with(".json")
        });
        for (name, text) in samples {
            let ev: OrchestratorEvent = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
            if name.starts_with("scheduled") {
                assert!(matches!(ev, OrchestratorEvent::Scheduled(_)), "{name}");
            } else {
                assert!(matches!(ev, OrchestratorEvent::Control(_)), "{name}");
            }
            seen += 1;
        }
        assert!(seen >= 2, "expected sample events in {}", dir.display());
    }

    #[test]
    fn the_continuation_event_is_a_scheduled_run() {
        let ev = continuation_event(Timestamp::from_secs(1_795_219_200));
        let parsed: OrchestratorEvent = serde_json::from_value(ev).expect("parses");
        match parsed {
            OrchestratorEvent::Scheduled(e) => assert_eq!(e.source, CONTINUATION_SOURCE),
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn a_typo_in_a_control_event_is_not_a_run() {
        let ev = serde_json::from_str::<OrchestratorEvent>(r#"{"action":"pasue"}"#);
        assert!(ev.is_err());
    }
}
