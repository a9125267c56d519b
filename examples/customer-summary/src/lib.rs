//! An example worker built on `qo-worker`: the framework paces the calls to the API, and this
//! crate's code runs around each one ([`qo_worker::AroundCall`]).
//!
//! Each job fetches a customer (`{"path": "/customers/42"}`). At its slot the framework calls
//! the API; on a 2xx this crate keeps two fields of the answer (`id` and `name`), writes them to
//! a DynamoDB table, publishes a one-line summary to an SNS topic, and makes the summary the
//! job's result. The framework keeps the rest: the claim, the slot, 429s and retries, the
//! circuit, metrics and the result's delivery. This code never sees a 429 or a late slot.
//!
//! # Layout
//! - [`CustomerSummary`]: the [`qo_worker::AroundCall`], over a [`Summaries`] port.
//! - [`Summaries`]: where the two fields and the summary go; [`AwsSummaries`] writes them to
//!   DynamoDB and SNS, [`MemorySummaries`] keeps them for tests.
//! - `src/bin/customer-summary-worker.rs`: the Lambda binary, the stock worker's life
//!   ([`qo_lambda::worker::run`]) with this code.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use qo_core::Job;
use qo_worker::{AfterCall, Answer, AroundCall, HandlerError};
use serde::{Deserialize, Serialize};

/// The two fields kept of a customer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// The customer's id.
    pub id: u64,
    /// The customer's name.
    pub name: String,
}

impl Customer {
    /// The one-line summary published and returned as the job's result.
    pub fn summary(&self) -> String {
        format!("customer {} is {}", self.id, self.name)
    }
}

/// Where kept customers and their summaries go.
#[async_trait]
pub trait Summaries: Send + Sync {
    /// Stores the customer's two fields.
    async fn put(&self, customer: &Customer) -> Result<(), HandlerError>;
    /// Publishes the summary.
    async fn publish(&self, summary: &str) -> Result<(), HandlerError>;
}

/// The example's code around each call.
pub struct CustomerSummary<S> {
    summaries: S,
}

impl<S: Summaries> CustomerSummary<S> {
    /// Over `summaries`.
    pub fn new(summaries: S) -> Self {
        CustomerSummary { summaries }
    }
}

#[async_trait]
impl<S: Summaries> AroundCall for CustomerSummary<S> {
    /// Only customers: any other path is refused before its slot.
    async fn request(&self, job: &Job) -> Result<Job, HandlerError> {
        if !job.path.starts_with("/customers/") {
            return Err(HandlerError(format!(
                "`{}` is not a customer: this worker fetches /customers/<id>",
                job.path
            )));
        }
        Ok(job.clone())
    }

    /// Keeps `id` and `name`, stores them, publishes the summary, and makes it the result. An
    /// answer without them fails the job; a failed write fails it too (the call is not made
    /// again: `qo redrive` would).
    async fn answered(&self, _job: &Job, answer: Answer<'_>) -> Result<AfterCall, HandlerError> {
        let customer: Customer = match serde_json::from_slice(answer.body) {
            Ok(c) => c,
            Err(e) => return Ok(AfterCall::Failed(format!("not a customer: {e}"))),
        };
        self.summaries.put(&customer).await?;
        let summary = customer.summary();
        self.summaries.publish(&summary).await?;
        Ok(AfterCall::Body(
            serde_json::json!({ "id": customer.id, "name": customer.name, "summary": summary })
                .to_string()
                .into_bytes(),
        ))
    }
}

/// DynamoDB (`CUSTOMER_TABLE`, key `id`, a number) and SNS (`SUMMARY_TOPIC_ARN`).
pub struct AwsSummaries {
    dynamodb: aws_sdk_dynamodb::Client,
    sns: aws_sdk_sns::Client,
    table: String,
    topic: String,
}

impl AwsSummaries {
    /// Clients of `config`, writing to `table` and publishing to `topic`.
    pub fn new(config: &aws_config::SdkConfig, table: String, topic: String) -> Self {
        AwsSummaries {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            sns: aws_sdk_sns::Client::new(config),
            table,
            topic,
        }
    }
}

#[async_trait]
impl Summaries for AwsSummaries {
    async fn put(&self, customer: &Customer) -> Result<(), HandlerError> {
        use aws_sdk_dynamodb::types::AttributeValue;
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .item("id", AttributeValue::N(customer.id.to_string()))
            .item("name", AttributeValue::S(customer.name.clone()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| HandlerError(format!("dynamodb.PutItem: {e}")))
    }

    async fn publish(&self, summary: &str) -> Result<(), HandlerError> {
        self.sns
            .publish()
            .topic_arn(&self.topic)
            .message(summary)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| HandlerError(format!("sns.Publish: {e}")))
    }
}

/// Kept in memory, for tests: clones share them.
#[derive(Clone, Default)]
pub struct MemorySummaries {
    inner: Arc<Mutex<(Vec<Customer>, Vec<String>)>>,
}

impl MemorySummaries {
    /// The customers stored.
    pub fn customers(&self) -> Vec<Customer> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// The summaries published.
    pub fn published(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }
}

#[async_trait]
impl Summaries for MemorySummaries {
    async fn put(&self, customer: &Customer) -> Result<(), HandlerError> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .push(customer.clone());
        Ok(())
    }

    async fn publish(&self, summary: &str) -> Result<(), HandlerError> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .push(summary.to_string());
        Ok(())
    }
}
