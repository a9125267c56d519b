//! `qo sim`: serve the quota-enforcing API on its own, e.g. to point `qo local --api-url` or a
//! deployed worker's tests at it.

use std::net::SocketAddr;

use clap::Args;
use qo_core::QuotaSpec;
use qo_sim::{SimConfig, SimServer};

use crate::args::Range;

/// Options of `qo sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// The quota it enforces (429 with Retry-After past it).
    #[arg(long, default_value = "20/s")]
    quota: QuotaSpec,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Fraction of calls answered 500.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Seconds from start during which everything answers 503, e.g. `5..10`.
    #[arg(long)]
    outage: Option<Range>,
    /// Latency added to each answer, in milliseconds, e.g. `5..50`.
    #[arg(long, default_value = "0")]
    latency_ms: Range,
    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    seconds: Option<f64>,
}

/// Serves until interrupted (or `--seconds`), then prints the stats as JSON.
pub async fn run(args: SimArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = SimConfig::new(args.quota);
    config.fail_rate = args.fail_rate;
    config.outage = args.outage.map(|r| r.seconds());
    config.latency = args.latency_ms.millis();
    let server = SimServer::start_on(args.listen, config).await?;
    eprintln!("qo sim: serving {} (Ctrl-C to stop)", server.url());
    match args.seconds {
        Some(s) => tokio::time::sleep(std::time::Duration::from_secs_f64(s)).await,
        None => {
            tokio::signal::ctrl_c().await?;
        }
    }
    println!("{}", serde_json::to_string(&server.stats())?);
    server.shutdown().await;
    Ok(())
}
