//! The `qo` binary: parses the command line, starts the async runtime and runs the command
//! ([`qo::run`]); an error is printed with its causes.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = qo::Cli::parse();
    // `qo simulate` injects faults on purpose: their errors are the point, not news.
    let quiet = if matches!(cli.command, qo::Command::Simulate(_)) {
        "off"
    } else {
        "error"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(quiet)),
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
    let result = runtime.block_on(async { qo::run(cli.command).await });
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
