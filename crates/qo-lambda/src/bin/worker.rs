//! The worker Lambda function: the stock worker, which calls each job as it is and keeps its
//! answer ([`qo_worker::Passthrough`]).

use std::process::ExitCode;
use std::sync::Arc;

#[tokio::main]
async fn main() -> ExitCode {
    let around = Arc::new(qo_worker::Passthrough);
    qo_lambda::serve("worker", qo_lambda::worker::run(around)).await
}
