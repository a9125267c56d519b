//! Operations on a deployed stack (`--stack NAME`) or on tables and queues given by flags or
//! environment variables, e.g. on a local endpoint (`--endpoint URL`, a moto server).
//!
//! Human output by default; `--json` prints one JSON object for scripts. Errors name what is
//! wrong: the flag or variable that is missing, the stack output, the table, the queue, the
//! line of a jobs file.
//!
//! # Layout
//! - `target`: `--stack` / `--table`, `--queue-url`, `--dlq-url`, `--retry-queue-url` and their
//!   variables, `--endpoint`, `--region`; the SDK configuration.
//! - `status`: `qo status`.
//! - `control`: `qo pause`, `qo resume`, `qo circuit open|close`, `qo quota set|clear`.
//! - `redrive`: `qo redrive`.
//! - `send`: `qo send FILE`.
//! - `call`: `qo call PATH`, one job and its result.
//! - `setup`: `qo setup`, the table and queues on a local endpoint.
//! - `output`: human or JSON output, times.
//! - `error`: [`OpsError`].

mod call;
mod control;
mod error;
mod output;
mod redrive;
mod send;
mod setup;
mod status;
mod target;

use clap::Subcommand;
use qo_core::ControlCommand;

pub use error::OpsError;

/// The operations.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Quota usage per tier, the circuit, the lease, the controls and the queue depths.
    Status(status::StatusArgs),
    /// Stop dispatching (the running orchestrator stops within a second).
    Pause(control::ControlArgs),
    /// Dispatch again after `qo pause`.
    Resume(control::ControlArgs),
    /// Force the circuit open or closed.
    Circuit(control::CircuitArgs),
    /// Override the deployed quota, or clear the override.
    Quota(control::QuotaArgs),
    /// Move dead-lettered jobs back to the job queue.
    Redrive(redrive::RedriveArgs),
    /// Send jobs from a file of JSON lines (`-`: stdin).
    Send(send::SendArgs),
    /// Send one job and print the API's answer when its result comes back.
    Call(Box<call::CallArgs>),
    /// Create the table and queues on a local endpoint and print their variables.
    Setup(setup::SetupArgs),
}

/// Runs an operation. The error is one line of text (its backend causes condensed); the whole
/// chain is logged at debug level (`RUST_LOG=debug`).
pub async fn run(command: OpsCommand) -> Result<(), Box<dyn std::error::Error>> {
    run_command(command).await.map_err(|e| {
        tracing::debug!(error = ?e, "operation failed");
        e.to_string().into()
    })
}

async fn run_command(command: OpsCommand) -> Result<(), OpsError> {
    match command {
        OpsCommand::Status(args) => status::run(args).await,
        OpsCommand::Pause(args) => control::run(ControlCommand::Pause, args).await,
        OpsCommand::Resume(args) => control::run(ControlCommand::Resume, args).await,
        OpsCommand::Circuit(args) => {
            let (command, args) = args.into_command();
            control::run(command, args).await
        }
        OpsCommand::Quota(args) => {
            let (command, args) = args.into_command();
            control::run(command, args).await
        }
        OpsCommand::Redrive(args) => redrive::run(args).await,
        OpsCommand::Send(args) => send::run(args).await,
        OpsCommand::Call(args) => call::run(*args).await,
        OpsCommand::Setup(args) => setup::run(args).await,
    }
}
