//! [`AwsResults`]: jobs' results delivered to the stack's destinations
//! ([`ResultSink`](qo_core::ports::ResultSink)): SQS `SendMessage` (a FIFO queue with a message
//! group and a deduplication id), SNS `Publish`, EventBridge `PutEvents` and Lambda `Invoke`
//! (asynchronous). A result larger than
//! [`MAX_INLINE_RESULT_BYTES`](qo_core::result::MAX_INLINE_RESULT_BYTES) has its body put in
//! the stack's bucket (`RESULT_BUCKET`, lifecycle-expired) first, and is sent with the body's
//! location.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use aws_sdk_s3::primitives::ByteStream;
use qo_core::ports::{Delivered, ResultError, ResultSink};
use qo_core::result::{
    BodyEncoding, Destination, DestinationKind, JobResult, MAX_INLINE_RESULT_BYTES,
};

use crate::error::SdkFailure;

/// The `source` of the EventBridge events results are sent as.
pub const EVENT_SOURCE: &str = "quota-orchestrator";

/// The `detail-type` of those events.
pub const EVENT_DETAIL_TYPE: &str = "Job result";

/// Where the bodies of large results go under the bucket.
pub const BODY_PREFIX: &str = "results/";

/// The result destinations on AWS.
pub struct AwsResults {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    events: aws_sdk_eventbridge::Client,
    lambda: aws_sdk_lambda::Client,
    s3: aws_sdk_s3::Client,
    bucket: Option<String>,
    /// Queue URLs by ARN, looked up once.
    queue_urls: Mutex<HashMap<String, String>>,
}

impl AwsResults {
    /// Clients made of `config`; large bodies go to `bucket` (`None`: a large result is
    /// refused, and dead-lettered by the worker).
    pub fn new(config: &SdkConfig, bucket: Option<String>) -> Self {
        let s3 = aws_sdk_s3::config::Builder::from(config)
            // Moto and other local endpoints serve buckets by path, not by host name.
            .force_path_style(config.endpoint_url().is_some())
            .build();
        AwsResults {
            sqs: aws_sdk_sqs::Client::new(config),
            sns: aws_sdk_sns::Client::new(config),
            events: aws_sdk_eventbridge::Client::new(config),
            lambda: aws_sdk_lambda::Client::new(config),
            s3: aws_sdk_s3::Client::from_conf(s3),
            bucket: bucket.filter(|b| !b.trim().is_empty()),
            queue_urls: Mutex::default(),
        }
    }

    /// The URL of the queue `arn` names (`arn:…:sqs:<region>:<account>:<name>`).
    async fn queue_url(&self, arn: &str) -> Result<String, ResultError> {
        if let Some(url) = self
            .queue_urls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(arn)
        {
            return Ok(url.clone());
        }
        let parts: Vec<&str> = arn.split(':').collect();
        let (Some(account), Some(name)) = (parts.get(4), parts.get(5)) else {
            return Err(ResultError::Refused {
                op: "sqs.GetQueueUrl",
                detail: format!("`{arn}` is not a queue ARN"),
            });
        };
        let out = self
            .sqs
            .get_queue_url()
            .queue_name(*name)
            .queue_owner_aws_account_id(*account)
            .send()
            .await
            .map_err(|e| backend("sqs.GetQueueUrl", e))?;
        let url = out.queue_url.ok_or_else(|| ResultError::Refused {
            op: "sqs.GetQueueUrl",
            detail: format!("no URL for `{arn}`"),
        })?;
        self.queue_urls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(arn.to_string(), url.clone());
        Ok(url)
    }

    /// Puts `result`'s body in the bucket; returns the result to send, with the location.
    async fn offload(&self, result: &JobResult) -> Result<(JobResult, String), ResultError> {
        let Some(bucket) = &self.bucket else {
            return Err(ResultError::Refused {
                op: "s3.PutObject",
                detail: format!(
                    "the result is over {MAX_INLINE_RESULT_BYTES} bytes and no RESULT_BUCKET is set"
                ),
            });
        };
        let key = format!("{BODY_PREFIX}{}", result.result_id);
        let body = result.body.clone().unwrap_or_default();
        // The object is the body as the result writes it: the API's text under the API's
        // content type, or the base64 of bytes that were not UTF-8.
        let content_type = match result.body_encoding {
            Some(BodyEncoding::Base64) => "text/plain; charset=us-ascii; x-encoding=base64",
            _ => (result.headers.get("content-type").map(String::as_str))
                .unwrap_or("text/plain; charset=utf-8"),
        };
        self.s3
            .put_object()
            .bucket(bucket)
            .key(&key)
            .content_type(content_type)
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .map_err(|e| backend("s3.PutObject", e))?;
        let location = format!("s3://{bucket}/{key}");
        let mut sent = result.clone();
        sent.body = None;
        sent.body_location = Some(location.clone());
        Ok((sent, location))
    }
}

#[async_trait]
impl ResultSink for AwsResults {
    async fn deliver(
        &self,
        to: &Destination,
        result: &JobResult,
    ) -> Result<Delivered, ResultError> {
        let sent = self.stow(result).await?;
        let delivered = Delivered {
            body_location: sent.body_location.clone(),
        };
        let json = sent.to_json();
        match to.kind {
            DestinationKind::Sqs => {
                let url = self.queue_url(&to.arn).await?;
                let mut send = self.sqs.send_message().queue_url(url).message_body(json);
                if to.is_fifo() {
                    send = send
                        .message_group_id(fifo_id(&result.job_id))
                        .message_deduplication_id(fifo_id(&result.result_id));
                }
                send.send()
                    .await
                    .map_err(|e| backend("sqs.SendMessage", e))?;
            }
            DestinationKind::Sns => {
                self.sns
                    .publish()
                    .topic_arn(&to.arn)
                    .message(json)
                    .send()
                    .await
                    .map_err(|e| backend("sns.Publish", e))?;
            }
            DestinationKind::EventBridge => {
                let entry = PutEventsRequestEntry::builder()
                    .event_bus_name(&to.arn)
                    .source(EVENT_SOURCE)
                    .detail_type(EVENT_DETAIL_TYPE)
                    .detail(json)
                    .build();
                let out = self
                    .events
                    .put_events()
                    .entries(entry)
                    .send()
                    .await
                    .map_err(|e| backend("events.PutEvents", e))?;
                // PutEvents answers 200 with the entries it refused counted.
                if out.failed_entry_count > 0 {
                    let why = out
                        .entries()
                        .iter()
                        .filter_map(|e| e.error_message())
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Err(ResultError::Refused {
                        op: "events.PutEvents",
                        detail: format!("the entry was refused: {why}"),
                    });
                }
            }
            DestinationKind::Lambda => {
                self.lambda
                    .invoke()
                    .function_name(&to.arn)
                    .invocation_type(InvocationType::Event)
                    .payload(Blob::new(json.into_bytes()))
                    .send()
                    .await
                    .map_err(|e| backend("lambda.Invoke", e))?;
            }
        }
        Ok(delivered)
    }

    async fn stow(&self, result: &JobResult) -> Result<JobResult, ResultError> {
        if result.to_json().len() <= MAX_INLINE_RESULT_BYTES {
            return Ok(result.clone());
        }
        Ok(self.offload(result).await?.0)
    }
}

fn backend<E>(op: &'static str, err: E) -> ResultError
where
    E: std::error::Error + Send + Sync + 'static,
{
    ResultError::Backend {
        op,
        source: Box::new(SdkFailure::new(err)),
    }
}

/// A FIFO message group or deduplication id for `id`: SQS takes up to 128 characters of ASCII
/// letters, digits and punctuation. An id that fits is used as it is; another is its first 100
/// such characters and a hash of the whole, so that distinct ids stay distinct.
pub fn fifo_id(id: &str) -> String {
    let fits = id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
    if fits {
        return id.to_string();
    }
    // FNV-1a, 64 bits: stable across runs and builds, unlike std's hasher.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let kept: String = id
        .chars()
        .filter(char::is_ascii_graphic)
        .take(100)
        .collect();
    format!("{kept}-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_ids_fit_and_stay_distinct() {
        assert_eq!(fifo_id("job-7:succeeded"), "job-7:succeeded");
        let long_a = format!("{}:succeeded", "a".repeat(300));
        let long_b = format!("{}:dead_lettered", "a".repeat(300));
        let (a, b) = (fifo_id(&long_a), fifo_id(&long_b));
        assert!(a.len() <= 128 && b.len() <= 128, "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(a, fifo_id(&long_a), "stable");
        let spaced = fifo_id("an id with spaces");
        assert!(spaced.bytes().all(|b| b.is_ascii_graphic()), "{spaced}");
    }
}
