//! The example's worker function: the stock worker's life with [`CustomerSummary`] around
//! each call. Deploy it by building this binary in place of the stock one (the template's
//! `BuildProperties: Binary: customer-summary-worker`) and setting `CUSTOMER_TABLE` and
//! `SUMMARY_TOPIC_ARN` on the worker function.

use std::process::ExitCode;
use std::sync::Arc;

use customer_summary::{AwsSummaries, CustomerSummary};
use qo_core::config::{Env, ProcessEnv};

#[tokio::main]
async fn main() -> ExitCode {
    qo_lambda::serve("customer-summary-worker", run()).await
}

async fn run() -> Result<(), lambda_runtime::Error> {
    let env = ProcessEnv;
    let table = env.required("CUSTOMER_TABLE")?;
    let topic = env.required("SUMMARY_TOPIC_ARN")?;
    let aws = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let around = CustomerSummary::new(AwsSummaries::new(&aws, table, topic));
    qo_lambda::worker::run(Arc::new(around)).await
}
