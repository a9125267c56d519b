//! Operator controls and the API's back-off: the `control` record.

use serde::{Deserialize, Serialize};

use crate::quota::QuotaSpec;
pub use crate::quota::feedback::{ApiWindow, Throttles};
use crate::time::Timestamp;

/// The control record: written by operators (`qo pause`, `qo quota set`) and by the worker (the
/// API's Retry-After); read by the running orchestrator at least every second.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// Dispatch nothing while true.
    #[serde(default)]
    pub paused: bool,
    /// A quota that replaces the configured one, without a redeploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
    /// The API answered 429 (or rejected the credential): no call before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until: Option<Timestamp>,
    /// Why `backoff_until` was set, for status and alarms (absent in records written before
    /// it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_reason: Option<BackoffReason>,
    /// The 429s the worker has seen: the orchestrator's rate controller lowers the pace on
    /// each new one (written on the 429 path only, never on a success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttles: Option<Throttles>,
    /// The API's own count of its window, from its rate-limit headers, when it sends them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_window: Option<ApiWindow>,
    /// Who changed it last, for status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// When it changed last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
}

/// Why the worker asked the orchestrator to stop calling for a while.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackoffReason {
    /// The API answered 429 (its `Retry-After`, or the default delay).
    Throttled,
    /// The API answered 401 or 403 and the credential, re-read, had not changed: calls wait
    /// for the next re-read (a rotated key) instead of dead-lettering every job.
    CredentialRejected {
        /// The HTTP status (401 or 403).
        status: u16,
    },
}

/// An operator's command, as `qo` sends it and as a control event carries it
/// (`{"action":"pause"}`, `{"action":"set_quota","quota":"20/s"}`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlCommand {
    /// Dispatch nothing until resumed.
    Pause,
    /// Dispatch again.
    Resume,
    /// Force the circuit open (no health checks until forced closed).
    CircuitOpen,
    /// Force the circuit closed.
    CircuitClose,
    /// Replace the quota without a redeploy.
    SetQuota {
        /// The new spec.
        quota: QuotaSpec,
    },
    /// Go back to the deployed quota.
    ClearQuota,
    /// Move dead-lettered jobs back to the job queue.
    Redrive {
        /// At most this many.
        #[serde(default)]
        max: Option<u64>,
        /// Only count them.
        #[serde(default)]
        dry_run: bool,
    },
}

/// What a command changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlOutcome {
    /// The command.
    pub action: String,
    /// The control record now.
    pub control: Control,
    /// The circuit's phase and epoch now.
    pub circuit: Option<(crate::circuit::CircuitPhase, u64)>,
}

/// Applies a command that lives in the state store (everything but `Redrive`, which moves
/// messages and belongs to the queue adapter). Every write is a conditional read-modify-write.
pub async fn apply_command(
    store: &(impl crate::ports::RecordStore + ?Sized),
    command: &ControlCommand,
    now: Timestamp,
    actor: &str,
    policy: &crate::circuit::CircuitPolicy,
) -> Result<ControlOutcome, crate::ports::StoreError> {
    use crate::circuit::Circuit;
    use crate::ports::{RecordKey, load_record, update_record};

    let stamp = |c: &Control| Control {
        updated_by: Some(actor.to_string()),
        updated_at: Some(now),
        ..c.clone()
    };
    let mut circuit = None;
    let control = match command {
        ControlCommand::Pause | ControlCommand::Resume => {
            let paused = matches!(command, ControlCommand::Pause);
            update_record::<Control, _>(store, RecordKey::Control, |c| {
                Some(Control { paused, ..stamp(c) })
            })
            .await?
            .value
        }
        ControlCommand::SetQuota { quota } => {
            update_record::<Control, _>(store, RecordKey::Control, |c| {
                Some(Control {
                    quota: Some(quota.clone()),
                    ..stamp(c)
                })
            })
            .await?
            .value
        }
        ControlCommand::ClearQuota => {
            update_record::<Control, _>(store, RecordKey::Control, |c| {
                Some(Control {
                    quota: None,
                    ..stamp(c)
                })
            })
            .await?
            .value
        }
        ControlCommand::CircuitOpen | ControlCommand::CircuitClose => {
            let open = matches!(command, ControlCommand::CircuitOpen);
            let c = update_record::<Circuit, _>(store, RecordKey::Circuit, |c| {
                Some(if open {
                    c.force_open(now, policy)
                } else {
                    c.force_close(now)
                })
            })
            .await?
            .value;
            circuit = Some((c.phase(), c.epoch));
            load_record::<Control>(store, RecordKey::Control)
                .await?
                .value
        }
        ControlCommand::Redrive { .. } => {
            load_record::<Control>(store, RecordKey::Control)
                .await?
                .value
        }
    };
    let action = serde_json::to_value(command)
        .ok()
        .and_then(|v| v.get("action").and_then(|a| a.as_str()).map(str::to_string))
        .unwrap_or_default();
    Ok(ControlOutcome {
        action,
        control,
        circuit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_replaces_only_an_older_one() {
        let w = |ms| ApiWindow {
            limit: Some(10),
            window_s: None,
            remaining: 1,
            reset_at: Timestamp::from_millis(9_000),
            observed_at: Timestamp::from_millis(ms),
        };
        assert!(w(5).supersedes(None));
        assert!(w(5).supersedes(Some(&w(4))));
        assert!(!w(5).supersedes(Some(&w(5))));
        assert!(!w(5).supersedes(Some(&w(6))));
    }

    #[test]
    fn commands_parse_from_control_events() {
        let c: ControlCommand = serde_json::from_str(r#"{"action":"pause"}"#).expect("json");
        assert_eq!(c, ControlCommand::Pause);
        let c: ControlCommand =
            serde_json::from_str(r#"{"action":"set_quota","quota":"20/s,1000/min"}"#)
                .expect("json");
        assert!(matches!(c, ControlCommand::SetQuota { .. }));
        let c: ControlCommand =
            serde_json::from_str(r#"{"action":"redrive","max":100,"dry_run":true}"#).expect("json");
        assert_eq!(
            c,
            ControlCommand::Redrive {
                max: Some(100),
                dry_run: true
            }
        );
        let e = serde_json::from_str::<ControlCommand>(r#"{"action":"set_quota","quota":"x/s"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("`x`"), "{e}");
    }
}
