//! `qo`: the quota-orchestrator command-line tool.
//!
//! # Layout
//! - `local`: `qo local`, the whole system on this machine (in-memory adapters, a built-in
//!   quota-enforcing API, the real orchestrator loop and worker logic over loopback HTTP).
//! - `report`: the observer that counts what happened, and the report it makes.
//! - `args`: parsing of ranges such as `5..50`.
//! - `sim`: `qo sim`, the quota-enforcing API on its own.
//! - `ops`: operations on a deployed stack or a local endpoint: `qo status`, `pause`, `resume`,
//!   `circuit`, `quota`, `redrive`, `send`, `setup`.
//!
//! # Features
//! - `aws` (off by default): the operations and `qo local --aws-endpoint`, over the AWS SDK.
//!   Without it `qo local` and `qo sim` build without compiling any AWS SDK crate, and an
//!   operation is refused with the command that builds it in
//!   (`cargo run --release -p qo --features aws -- status ...`).

mod args;
mod local;
#[cfg(feature = "aws")]
mod ops;
mod report;
mod sim;

use clap::{Parser, Subcommand};

/// Use a third-party API's quota fully without ever exceeding it.
#[derive(Debug, Parser)]
#[command(name = "qo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system on this machine and report what a quota does to a backlog.
    Local(local::LocalArgs),
    /// Serve the quota-enforcing API simulator on its own.
    Sim(sim::SimArgs),
    #[cfg(feature = "aws")]
    #[command(flatten)]
    Ops(ops::OpsCommand),
    /// The operations (`status`, `pause`, `resume`, `circuit`, `quota`, `redrive`, `send`,
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Local(args) => local::run(args).await,
            Command::Sim(args) => sim::run(args).await,
            #[cfg(feature = "aws")]
            Command::Ops(command) => ops::run(command).await,
            #[cfg(not(feature = "aws"))]
            Command::WithoutAws(words) => {
                let what = words.first().map_or("", String::as_str);
                Err(without_aws(what, "an operation on a deployed stack or endpoint").into())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}
