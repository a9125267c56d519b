//! `qo pause`, `qo resume`, `qo circuit open|close`, `qo quota set|clear`: operator commands
//! applied to the state table with conditional read-modify-writes
//! ([`qo_core::apply_command`]); the running orchestrator re-reads them within a second.

use std::fmt;
use std::time::SystemTime;

use clap::{Args, Subcommand, ValueEnum};
use qo_core::config::{Env, ProcessEnv};
use qo_core::{ControlCommand, ControlOutcome, QuotaSpec, Timestamp, apply_command};
use serde::Serialize;

use super::error::OpsError;
use super::output::{emit, ser_opt_time};
use super::target::{Connection, TargetArgs};

/// Options shared by the control commands.
#[derive(Debug, Args)]
pub struct ControlArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The circuit's forced state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CircuitAction {
    /// Force it open: nothing is dispatched and no health check sent until closed.
    Open,
    /// Force it closed: dispatching resumes (with slow start).
    Close,
}

/// Options of `qo circuit`.
#[derive(Debug, Args)]
pub struct CircuitArgs {
    /// `open` or `close`.
    action: CircuitAction,
    #[command(flatten)]
    common: ControlArgs,
}

/// `qo quota set|clear`.
#[derive(Debug, Subcommand)]
pub enum QuotaAction {
    /// Replace the deployed quota without a redeploy, e.g. `20/s,1000/min`.
    Set {
        /// The quota spec: comma-separated `LIMIT/PERIOD` tiers.
        spec: QuotaSpec,
        #[command(flatten)]
        common: ControlArgs,
    },
    /// Go back to the deployed quota.
    Clear {
        #[command(flatten)]
        common: ControlArgs,
    },
}

/// Options of `qo quota`.
#[derive(Debug, Args)]
pub struct QuotaArgs {
    #[command(subcommand)]
    action: QuotaAction,
}

impl CircuitArgs {
    /// The command and its options.
    pub fn into_command(self) -> (ControlCommand, ControlArgs) {
        let c = match self.action {
            CircuitAction::Open => ControlCommand::CircuitOpen,
            CircuitAction::Close => ControlCommand::CircuitClose,
        };
        (c, self.common)
    }
}

impl QuotaArgs {
    /// The command and its options.
    pub fn into_command(self) -> (ControlCommand, ControlArgs) {
        match self.action {
            QuotaAction::Set { spec, common } => (ControlCommand::SetQuota { quota: spec }, common),
            QuotaAction::Clear { common } => (ControlCommand::ClearQuota, common),
        }
    }
}

/// What a control command left in the table.
#[derive(Clone, Debug, Serialize)]
pub struct ControlReport {
    /// The command, e.g. `pause`.
    pub action: String,
    /// The table.
    pub table: String,
    /// Whether dispatching is paused now.
    pub paused: bool,
    /// The quota override now (none: the deployed quota applies).
    pub quota_override: Option<String>,
    /// The circuit now, for circuit commands.
    pub circuit: Option<CircuitNow>,
    /// Who changed the controls last.
    pub updated_by: Option<String>,
    /// When.
    #[serde(serialize_with = "ser_opt_time")]
    pub updated_at: Option<Timestamp>,
}

/// The circuit's phase and epoch after a circuit command.
#[derive(Clone, Debug, Serialize)]
pub struct CircuitNow {
    /// `open` or `closed`.
    pub phase: &'static str,
    /// Its epoch.
    pub epoch: u64,
}

impl ControlReport {
    /// From what [`apply_command`] returned.
    pub fn new(table: &str, outcome: ControlOutcome) -> Self {
        ControlReport {
            action: outcome.action,
            table: table.to_string(),
            paused: outcome.control.paused,
            quota_override: outcome.control.quota.as_ref().map(ToString::to_string),
            circuit: outcome.circuit.map(|(phase, epoch)| CircuitNow {
                phase: phase.as_str(),
                epoch,
            }),
            updated_by: outcome.control.updated_by,
            updated_at: outcome.control.updated_at,
        }
    }
}

impl fmt::Display for ControlReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let soon = "the running orchestrator applies it within a second";
        match (self.action.as_str(), &self.circuit) {
            ("pause", _) => writeln!(
                f,
                "paused: nothing is dispatched until `qo resume` ({soon})"
            ),
            ("resume", _) => writeln!(f, "resumed: dispatching again ({soon})"),
            ("set_quota", _) => writeln!(
                f,
                "quota override set: {} ({soon}; `qo quota clear` goes back to the deployed quota)",
                self.quota_override.as_deref().unwrap_or("?")
            ),
            ("clear_quota", _) => {
                writeln!(
                    f,
                    "quota override cleared: the deployed quota applies ({soon})"
                )
            }
            (_, Some(c)) if c.phase == "open" => writeln!(
                f,
                "circuit forced open, epoch {}: nothing is dispatched and no health check is sent until `qo circuit close` ({soon})",
                c.epoch
            ),
            (_, Some(c)) => writeln!(
                f,
                "circuit forced {}, epoch {}: dispatching resumes with slow start ({soon})",
                c.phase, c.epoch
            ),
            (action, None) => writeln!(f, "{action}: done"),
        }?;
        if self.paused && self.action != "pause" {
            writeln!(f, "note: dispatching is still paused (`qo resume`)")?;
        }
        Ok(())
    }
}

/// Who made a change: `qo:$USER`.
fn actor(env: &impl Env) -> String {
    match env.get("USER").or_else(|| env.get("USERNAME")) {
        Some(u) => format!("qo:{u}"),
        None => "qo".to_string(),
    }
}

/// Applies `command` to the target's table and prints what the table holds now.
pub async fn run(command: ControlCommand, args: ControlArgs) -> Result<(), OpsError> {
    let env = ProcessEnv;
    let conn = Connection::open(&args.target, &env).await?;
    let store = conn.store()?;
    let policy = qo_orchestrator::circuit_policy(&env)?;
    let now = Timestamp::from_system(SystemTime::now());
    let outcome = apply_command(&store, &command, now, &actor(&env), &policy)
        .await
        .map_err(|source| OpsError::Store {
            what: "applying the command",
            table: store.table().to_string(),
            source,
        })?;
    emit(&ControlReport::new(store.table(), outcome), args.json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qo_core::{CircuitPhase, Control};
    use std::collections::HashMap;

    #[test]
    fn reports_say_what_changed() {
        let outcome = ControlOutcome {
            action: "circuit_open".into(),
            control: Control {
                paused: true,
                ..Control::default()
            },
            circuit: Some((CircuitPhase::Open, 3)),
        };
        let r = ControlReport::new("t", outcome);
        let text = r.to_string();
        assert!(text.starts_with("circuit forced open, epoch 3"), "{text}");
        assert!(text.contains("still paused"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["circuit"]["epoch"], 3);
        assert_eq!(json["quota_override"], serde_json::Value::Null);
    }

    #[test]
    fn the_actor_names_the_user() {
        let env: HashMap<String, String> = [("USER".to_string(), "ana".to_string())].into();
        assert_eq!(actor(&env), "qo:ana");
        assert_eq!(actor(&HashMap::new()), "qo");
    }
}
