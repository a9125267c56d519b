//! A local endpoint (a moto server): the SDK configuration that reaches it, and a table and
//! queues of one's own there, with the template's queue attributes unless told otherwise. One
//! place for what `qo local --aws-endpoint`, `qo setup` and the moto tests all need.

use aws_config::SdkConfig;
use qo_core::sqs::QueueAttributes;

use crate::clients::{SdkSettings, load_config, with_static_credentials};
use crate::dynamo::DynamoStore;
use crate::error::AwsError;
use crate::sqs::{QueueUrls, SqsQueue, ensure_queues_with};

/// The access key id and secret a local emulator accepts.
pub const LOCAL_CREDENTIALS: (&str, &str) = ("test", "test");

/// The SDK configuration for `endpoint` with `settings` and [`LOCAL_CREDENTIALS`].
pub async fn local_config(settings: &SdkSettings, endpoint: &str) -> SdkConfig {
    let (id, secret) = LOCAL_CREDENTIALS;
    with_static_credentials(&load_config(settings, Some(endpoint)).await, id, secret)
}

/// A state table and the job, retry and dead-letter queues on a local endpoint.
#[derive(Clone, Debug)]
pub struct LocalStack {
    /// The SDK configuration that reaches the endpoint.
    pub config: SdkConfig,
    /// The table's name.
    pub table: String,
    /// The queues' URLs.
    pub urls: QueueUrls,
}

impl LocalStack {
    /// Creates (or finds) table `table` and the standard queues `{prefix}`, `{prefix}-retry`
    /// and `{prefix}-dlq` with `attributes`, through `config`.
    pub async fn create(
        config: SdkConfig,
        table: &str,
        prefix: &str,
        attributes: QueueAttributes,
    ) -> Result<LocalStack, AwsError> {
        DynamoStore::new(aws_sdk_dynamodb::Client::new(&config), table)
            .ensure_table()
            .await?;
        let urls = ensure_queues_with(
            &aws_sdk_sqs::Client::new(&config),
            prefix,
            false,
            attributes,
        )
        .await?;
        Ok(LocalStack {
            config,
            table: table.to_string(),
            urls,
        })
    }

    /// The state store over the table.
    pub fn store(&self) -> DynamoStore {
        DynamoStore::new(aws_sdk_dynamodb::Client::new(&self.config), &self.table)
    }

    /// The job queue (with its retry and dead-letter queues).
    pub fn queue(&self) -> SqsQueue {
        SqsQueue::new(aws_sdk_sqs::Client::new(&self.config), self.urls.clone())
    }

    /// Creates (or finds) the standard queue `name` for results; its URL and ARN.
    pub async fn create_results_queue(&self, name: &str) -> Result<(String, String), AwsError> {
        let sqs = aws_sdk_sqs::Client::new(&self.config);
        let url = sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| AwsError::sdk("sqs.CreateQueue", e))?
            .queue_url
            .ok_or_else(|| AwsError::invalid("sqs.CreateQueue", "no queue URL"))?;
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| AwsError::sdk("sqs.GetQueueAttributes", e))?;
        let arn = attrs
            .attributes
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                    .cloned()
            })
            .ok_or_else(|| AwsError::invalid("sqs.GetQueueAttributes", "no QueueArn"))?;
        Ok((url, arn))
    }
}
