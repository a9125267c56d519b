//! `qo`: the quota-orchestrator command-line tool, as a library: the command line ([`Cli`])
//! and what each command does ([`run`]). The `qo` binary parses, starts a runtime and calls
//! [`run`].
//!
//! # Layout
//! - `local`: `qo local`, the whole system on this machine (in-memory adapters, a built-in
//!   quota-enforcing API, the real orchestrator loop and worker logic over loopback HTTP).
//! - `system`: the composition root: the orchestrator and the worker over shared ports, the
//!   worker behind an invoker that delivers as Lambda does ([`system::System`]).
//! - `bench`: `qo bench`, the highest rate one orchestrator paces on the real clock, its CPU
//!   per dispatch and its peak RSS.
//! - `cpu_share`: `qo bench --memory-mb`, the process capped at the CPU share Lambda gives a
//!   memory size.
//! - `limiters`: `qo bench --limiters`, the share of the real limit the closed loop reaches
//!   against each kind of limiter, on a virtual clock.
//! - `cost`: what a deployment would be billed for a local run, from one dated price table.
//! - `report`: the observer that counts what happened, and the report it makes.
//! - `args`: parsing of ranges such as `5..50`.
//! - `sim`: `qo sim`, the quota-enforcing API on its own.
//! - `simulate`: `qo simulate`, the whole system under the services' documented faults, seed
//!   by seed, judged by a checker of the invariants.
//! - `ops`: operations on a deployed stack or a local endpoint: `qo status`, `pause`, `resume`,
//!   `circuit`, `quota`, `redrive`, `send`, `setup`.
//!
//! # Features
//! - `aws` (off by default): the operations and `qo local --aws-endpoint`, over the AWS SDK.
//!   Without it `qo local` and `qo sim` build without compiling any AWS SDK crate, and an
//!   operation is refused with the command that builds it in
//!   (`cargo run --release -p qo --features aws -- status ...`).

mod args;
pub mod bench;
pub mod cost;
pub mod cpu_share;
pub mod limiters;
pub mod local;
#[cfg(feature = "aws")]
pub mod ops;
mod report;
#[cfg(feature = "aws")]
pub mod sdk_calls;
pub mod sim;
pub mod simulate;
pub mod system;

use clap::{Parser, Subcommand};

/// What a command returns: its error is printed with its causes.
pub type CommandResult = Result<(), Box<dyn std::error::Error>>;

/// Use a third-party API's quota fully without ever exceeding it.
#[derive(Debug, Parser)]
#[command(name = "qo", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system on this machine and report what a quota does to a backlog.
    Local(Box<local::LocalArgs>),
    /// Serve the quota-enforcing API simulator on its own.
    Sim(sim::SimArgs),
    /// Measure the highest rate one orchestrator paces (in-memory ports, real clock).
    Bench(bench::BenchArgs),
    /// Run the whole system under injected faults, seed by seed, and check its invariants.
    Simulate(simulate::SimulateArgs),
    /// An operation on a deployed stack or a local endpoint.
    #[cfg(feature = "aws")]
    #[command(flatten)]
    Ops(ops::OpsCommand),
    /// The operations (`status`, `pause`, `resume`, `circuit`, `quota`, `redrive`, `send`, `call`,
    /// `setup`) in a build without the `aws` feature: refused with the command that has them.
    #[cfg(not(feature = "aws"))]
    #[command(external_subcommand)]
    WithoutAws(Vec<String>),
}

/// The refusal of `what` (with `detail`) by a `qo` built without the `aws` feature.
#[cfg_attr(feature = "aws", allow(dead_code))]
fn without_aws(what: &str, detail: &str) -> String {
    format!(
        "`qo {what}` ({detail}) needs the AWS SDK, and this qo was built without it: build it \
         with the `aws` feature, e.g. `cargo run --release -p qo --features aws -- {what} ...`"
    )
}

/// Runs `command` to its end.
pub async fn run(command: Command) -> CommandResult {
    match command {
        Command::Local(args) => local::run(*args).await,
        Command::Sim(args) => sim::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Simulate(args) => simulate::run(args).await,
        #[cfg(feature = "aws")]
        Command::Ops(command) => ops::run(command).await,
        #[cfg(not(feature = "aws"))]
        Command::WithoutAws(words) => {
            let what = words.first().map_or("", String::as_str);
            Err(without_aws(what, "an operation on a deployed stack or endpoint").into())
        }
    }
}
