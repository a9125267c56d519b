//! `qo setup`: creates the state table and the queues on a local endpoint (moto) and prints the
//! environment variables that point the Lambda binaries and the other `qo` commands at them.
//!
//! It refuses to run without an endpoint: a deployment to AWS is made with SAM. Without
//! `AWS_ACCESS_KEY_ID` or `AWS_PROFILE` it uses the dummy credentials a local emulator accepts.

use std::fmt;

use clap::Args;
use qo_aws::{DynamoStore, ensure_queues, with_static_credentials};
use qo_core::config::{Env, ProcessEnv};
use serde::Serialize;

use super::error::OpsError;
use super::output::emit;
use super::target::{endpoint, sdk_config};

/// The longest prefix: SQS allows 80 characters, and `-retry.fifo` takes 11.
const MAX_PREFIX: usize = 64;

/// Options of `qo setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The local endpoint, e.g. a moto server `http://127.0.0.1:5000` [env: AWS_ENDPOINT_URL].
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Names: the table `<P>-state`, the queues `<P>`, `<P>-retry` and `<P>-dlq`.
    #[arg(long, value_name = "P", default_value = "qo")]
    prefix: String,
    /// Create FIFO queues (names ending in `.fifo`).
    #[arg(long)]
    fifo: bool,
    /// The region (default: the standard chain, then us-east-1).
    #[arg(long)]
    region: Option<String>,
    /// Print one JSON object (the same names and values).
    #[arg(long)]
    json: bool,
}

/// The variables that point everything at what was created.
#[derive(Clone, Debug, Serialize)]
pub struct SetupReport {
    /// The endpoint.
    #[serde(rename = "AWS_ENDPOINT_URL")]
    pub endpoint: String,
    /// The region the resources live in.
    #[serde(rename = "AWS_REGION")]
    pub region: String,
    /// The state table.
    #[serde(rename = "TABLE_NAME")]
    pub table: String,
    /// The job queue.
    #[serde(rename = "QUEUE_URL")]
    pub queue_url: String,
    /// The retry queue.
    #[serde(rename = "RETRY_QUEUE_URL")]
    pub retry_queue_url: Option<String>,
    /// The dead-letter queue.
    #[serde(rename = "DLQ_URL")]
    pub dlq_url: String,
}

impl fmt::Display for SetupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "AWS_ENDPOINT_URL={}", self.endpoint)?;
        writeln!(f, "AWS_REGION={}", self.region)?;
        writeln!(f, "TABLE_NAME={}", self.table)?;
        writeln!(f, "QUEUE_URL={}", self.queue_url)?;
        if let Some(r) = &self.retry_queue_url {
            writeln!(f, "RETRY_QUEUE_URL={r}")?;
        }
        writeln!(f, "DLQ_URL={}", self.dlq_url)
    }
}

/// Checks that `prefix` can name a DynamoDB table and SQS queues.
pub fn check_prefix(prefix: &str) -> Result<(), OpsError> {
    let bad = |reason| {
        Err(OpsError::BadPrefix {
            prefix: prefix.to_string(),
            reason,
        })
    };
    if prefix.is_empty() {
        return bad("it is empty");
    }
    if prefix.len() > MAX_PREFIX {
        return bad("it is longer than 64 characters");
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return bad("use letters, digits, `-` and `_` only");
    }
    Ok(())
}

/// Creates the table and queues (or finds them) and prints the variables.
pub async fn run(args: SetupArgs) -> Result<(), OpsError> {
    let env = ProcessEnv;
    check_prefix(&args.prefix)?;
    let url = endpoint(args.endpoint.as_deref(), &env).ok_or(OpsError::NoEndpoint)?;
    let mut config = sdk_config(&env, Some(&url), args.region.as_deref()).await?;
    if env.get("AWS_ACCESS_KEY_ID").is_none() && env.get("AWS_PROFILE").is_none() {
        config = with_static_credentials(&config, "test", "test");
    }
    let region = config
        .region()
        .map(ToString::to_string)
        .unwrap_or_else(|| qo_aws::DEFAULT_REGION.to_string());
    let table = format!("{}-state", args.prefix);
    DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), &table)
        .ensure_table()
        .await
        .map_err(|source| OpsError::Aws {
            what: format!("creating table `{table}` at {url}"),
            source,
        })?;
    let urls = ensure_queues(&aws_sdk_sqs::Client::new(&config), &args.prefix, args.fifo)
        .await
        .map_err(|source| OpsError::Aws {
            what: format!("creating queues `{}*` at {url}", args.prefix),
            source,
        })?;
    let report = SetupReport {
        endpoint: url,
        region,
        table,
        queue_url: urls.main,
        retry_queue_url: urls.retry,
        dlq_url: urls.dlq,
    };
    emit(&report, args.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_must_name_tables_and_queues() {
        assert!(check_prefix("qo-test_1").is_ok());
        let e = check_prefix("my queue").unwrap_err().to_string();
        assert_eq!(
            e,
            "--prefix \"my queue\" is invalid: use letters, digits, `-` and `_` only"
        );
        assert!(check_prefix("").is_err());
        assert!(check_prefix(&"x".repeat(65)).is_err());
    }

    #[test]
    fn the_report_is_env_lines() {
        let r = SetupReport {
            endpoint: "http://127.0.0.1:5000".into(),
            region: "us-east-1".into(),
            table: "qo-state".into(),
            queue_url: "http://q/qo".into(),
            retry_queue_url: Some("http://q/qo-retry".into()),
            dlq_url: "http://q/qo-dlq".into(),
        };
        assert_eq!(
            r.to_string(),
            "AWS_ENDPOINT_URL=http://127.0.0.1:5000\nAWS_REGION=us-east-1\nTABLE_NAME=qo-state\nQUEUE_URL=http://q/qo\nRETRY_QUEUE_URL=http://q/qo-retry\nDLQ_URL=http://q/qo-dlq\n"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["TABLE_NAME"], "qo-state");
    }
}
