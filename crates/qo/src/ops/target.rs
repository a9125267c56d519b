//! Which deployment an operation acts on: a CloudFormation stack's outputs (`--stack`), or the
//! table and queue URLs given as flags or environment variables; and the AWS SDK configuration
//! to reach it (`--endpoint` for a local emulator such as moto, `--region`).

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_cloudformation::error::ProvideErrorMetadata;
use clap::Args;
use qo_aws::{
    DynamoStore, SdkFailure, SdkSettings, SdkTimeouts, SqsQueue, load_config, sqs::QueueUrls,
};
use qo_core::config::Env;

use super::error::OpsError;

/// Stack output: the state table's name.
pub const OUTPUT_TABLE: &str = "StateTableName";
/// Stack output: the job queue's URL.
pub const OUTPUT_QUEUE: &str = "JobQueueUrl";
/// Stack output: the retry queue's URL (absent when the stack has none).
pub const OUTPUT_RETRY: &str = "RetryQueueUrl";
/// Stack output: the dead-letter queue's URL.
pub const OUTPUT_DLQ: &str = "DeadLetterQueueUrl";
/// Stack output: the worker's on-failure queue's URL.
pub const OUTPUT_WORKER_FAILURES: &str = "WorkerFailureQueueUrl";

/// Where the operation acts: shared by every operation but `qo setup`.
#[derive(Clone, Debug, Default, Args)]
pub struct TargetArgs {
    /// Read the table and queue URLs from this CloudFormation stack's outputs.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["table", "queue_url", "dlq_url", "retry_queue_url"])]
    pub stack: Option<String>,
    /// The state table [env: TABLE_NAME].
    #[arg(long, value_name = "T")]
    pub table: Option<String>,
    /// The job queue's URL [env: QUEUE_URL].
    #[arg(long, value_name = "URL")]
    pub queue_url: Option<String>,
    /// The dead-letter queue's URL [env: DLQ_URL].
    #[arg(long, value_name = "URL")]
    pub dlq_url: Option<String>,
    /// The retry queue's URL [env: RETRY_QUEUE_URL].
    #[arg(long, value_name = "URL")]
    pub retry_queue_url: Option<String>,
    /// Send every AWS call here, e.g. a moto server [env: AWS_ENDPOINT_URL].
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The AWS region (default: the standard chain, then us-east-1).
    #[arg(long)]
    pub region: Option<String>,
}

/// Where the names came from: decides what a missing one's error says.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// A stack's outputs.
    Stack(String),
    /// Flags and environment variables.
    Given,
}

/// The resolved table and queue URLs; each is checked only when an operation needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    source: Source,
    table: Option<String>,
    main: Option<String>,
    retry: Option<String>,
    dlq: Option<String>,
    worker_failures: Option<String>,
}

impl Target {
    /// From flags, falling back to `TABLE_NAME`, `QUEUE_URL`, `RETRY_QUEUE_URL` and `DLQ_URL`.
    pub fn given(args: &TargetArgs, env: &impl Env) -> Self {
        let pick = |flag: &Option<String>, var: &str| {
            flag.clone()
                .filter(|v| !v.trim().is_empty())
                .or_else(|| env.get(var))
        };
        Target {
            source: Source::Given,
            table: pick(&args.table, "TABLE_NAME"),
            main: pick(&args.queue_url, "QUEUE_URL"),
            retry: pick(&args.retry_queue_url, "RETRY_QUEUE_URL"),
            dlq: pick(&args.dlq_url, "DLQ_URL"),
            worker_failures: env
                .get("WORKER_FAILURE_QUEUE_URL")
                .filter(|v| !v.trim().is_empty()),
        }
    }

    /// From a stack's outputs (key, value).
    pub fn from_outputs<'a>(
        stack: &str,
        outputs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut t = Target {
            source: Source::Stack(stack.to_string()),
            table: None,
            main: None,
            retry: None,
            dlq: None,
            worker_failures: None,
        };
        for (key, value) in outputs {
            let slot = match key {
                OUTPUT_TABLE => &mut t.table,
                OUTPUT_QUEUE => &mut t.main,
                OUTPUT_RETRY => &mut t.retry,
                OUTPUT_DLQ => &mut t.dlq,
                OUTPUT_WORKER_FAILURES => &mut t.worker_failures,
                _ => continue,
            };
            *slot = Some(value.to_string()).filter(|v| !v.trim().is_empty());
        }
        t
    }

    fn need<'a>(
        &self,
        value: &'a Option<String>,
        what: &'static str,
        flag: &'static str,
        var: &'static str,
        key: &'static str,
    ) -> Result<&'a str, OpsError> {
        match (value, &self.source) {
            (Some(v), _) => Ok(v),
            (None, Source::Stack(stack)) => Err(OpsError::StackOutput {
                stack: stack.clone(),
                key,
            }),
            (None, Source::Given) => Err(OpsError::NoTarget { what, flag, var }),
        }
    }

    /// The state table's name.
    pub fn table(&self) -> Result<&str, OpsError> {
        self.need(
            &self.table,
            "state table",
            "--table T",
            "TABLE_NAME",
            OUTPUT_TABLE,
        )
    }

    /// The job queue's URL.
    pub fn queue_url(&self) -> Result<&str, OpsError> {
        self.need(
            &self.main,
            "job queue",
            "--queue-url URL",
            "QUEUE_URL",
            OUTPUT_QUEUE,
        )
    }

    /// The dead-letter queue's URL.
    pub fn dlq_url(&self) -> Result<&str, OpsError> {
        self.need(
            &self.dlq,
            "dead-letter queue",
            "--dlq-url URL",
            "DLQ_URL",
            OUTPUT_DLQ,
        )
    }

    /// The retry queue's URL, if there is one.
    pub fn retry_url(&self) -> Option<&str> {
        self.retry.as_deref()
    }

    /// The worker's on-failure queue's URL (`WORKER_FAILURE_QUEUE_URL`, or the stack output).
    pub fn worker_failure_url(&self) -> Result<&str, OpsError> {
        self.need(
            &self.worker_failures,
            "worker-failure queue",
            "--worker-failure-queue-url URL",
            "WORKER_FAILURE_QUEUE_URL",
            OUTPUT_WORKER_FAILURES,
        )
    }
}

/// The SDK configuration and the resolved target.
#[derive(Clone, Debug)]
pub struct Connection {
    config: SdkConfig,
    target: Target,
}

impl Connection {
    /// Loads the SDK configuration and resolves the target (reading the stack's outputs with
    /// `--stack`).
    pub async fn open(args: &TargetArgs, env: &impl Env) -> Result<Self, OpsError> {
        let config = sdk_config(env, args.endpoint.as_deref(), args.region.as_deref()).await?;
        let target = match args.stack.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(stack) => stack_target(&config, stack).await?,
            None => Target::given(args, env),
        };
        Ok(Connection { config, target })
    }

    /// The resolved target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The state store over the target's table.
    pub fn store(&self) -> Result<DynamoStore, OpsError> {
        let table = self.target.table()?;
        Ok(DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&self.config),
            table,
        ))
    }

    /// An SQS client of this connection.
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.config)
    }

    /// The job queues: the job queue always, the dead-letter queue when `need_dlq`.
    pub fn queues(&self, need_dlq: bool) -> Result<SqsQueue, OpsError> {
        let main = self.target.queue_url()?.to_string();
        let dlq = if need_dlq {
            self.target.dlq_url()?.to_string()
        } else {
            // Sending new jobs touches the job queue alone.
            self.target.dlq.clone().unwrap_or_default()
        };
        Ok(SqsQueue::new(
            aws_sdk_sqs::Client::new(&self.config),
            QueueUrls {
                main,
                retry: self.target.retry_url().map(str::to_string),
                dlq,
            },
        ))
    }
}

/// The endpoint: `--endpoint`, else `AWS_ENDPOINT_URL`.
pub fn endpoint(flag: Option<&str>, env: &impl Env) -> Option<String> {
    flag.map(str::to_string)
        .filter(|v| !v.trim().is_empty())
        .or_else(|| env.get("AWS_ENDPOINT_URL"))
}

/// The SDK configuration: the timeouts and attempts of `SDK_*`, the endpoint (`--endpoint` or
/// `AWS_ENDPOINT_URL`) and the region (`--region`, else the standard chain).
pub async fn sdk_config(
    env: &impl Env,
    endpoint_flag: Option<&str>,
    region: Option<&str>,
) -> Result<SdkConfig, OpsError> {
    let settings = SdkSettings::from_env(env)?;
    let endpoint = endpoint(endpoint_flag, env);
    Ok(match region.filter(|r| !r.trim().is_empty()) {
        None => load_config(&settings, endpoint.as_deref()).await,
        Some(r) => {
            let mut loader = aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new(r.to_string()))
                .timeout_config(settings.timeout_config())
                .retry_config(settings.retry_config());
            if let Some(url) = endpoint {
                loader = loader.endpoint_url(url);
            }
            loader.load().await
        }
    })
}

/// Reads the stack's outputs.
async fn stack_target(config: &SdkConfig, stack: &str) -> Result<Target, OpsError> {
    let client = aws_sdk_cloudformation::Client::new(config);
    let out = match client.describe_stacks().stack_name(stack).send().await {
        Ok(out) => out,
        Err(e) if e.message().is_some_and(|m| m.contains("does not exist")) => {
            return Err(OpsError::StackNotFound {
                stack: stack.to_string(),
            });
        }
        Err(e) => {
            return Err(OpsError::Stack {
                stack: stack.to_string(),
                source: SdkFailure::new(e),
            });
        }
    };
    let Some(found) = out.stacks().first() else {
        return Err(OpsError::StackNotFound {
            stack: stack.to_string(),
        });
    };
    Ok(Target::from_outputs(
        stack,
        found
            .outputs()
            .iter()
            .filter_map(|o| Some((o.output_key()?, o.output_value()?))),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qo_core::config::map_env as env;

    #[test]
    fn flags_win_over_variables() {
        let args = TargetArgs {
            table: Some("flag-table".into()),
            ..TargetArgs::default()
        };
        let t = Target::given(
            &args,
            &env(&[("TABLE_NAME", "env-table"), ("QUEUE_URL", "http://q")]),
        );
        assert_eq!(t.table().unwrap(), "flag-table");
        assert_eq!(t.queue_url().unwrap(), "http://q");
        assert_eq!(t.retry_url(), None);
    }

    #[test]
    fn a_missing_setting_names_the_flag_and_the_variable() {
        let t = Target::given(&TargetArgs::default(), &env(&[("DLQ_URL", " ")]));
        let e = t.dlq_url().unwrap_err().to_string();
        assert_eq!(
            e,
            "no dead-letter queue: give --dlq-url URL (or set DLQ_URL), or --stack NAME"
        );
        let e = t.table().unwrap_err().to_string();
        assert!(e.contains("--table T") && e.contains("TABLE_NAME"), "{e}");
        assert_eq!(
            t.worker_failure_url().unwrap_err().to_string(),
            "no worker-failure queue: give --worker-failure-queue-url URL (or set \
             WORKER_FAILURE_QUEUE_URL), or --stack NAME"
        );
    }

    #[test]
    fn stack_outputs_map_to_the_target() {
        let t = Target::from_outputs(
            "prod",
            [
                (OUTPUT_TABLE, "prod-state"),
                (OUTPUT_QUEUE, "https://sqs/jobs"),
                (OUTPUT_DLQ, "https://sqs/dlq"),
                (OUTPUT_WORKER_FAILURES, "https://sqs/worker-failures"),
                ("WorkerFunctionName", "w"),
            ],
        );
        assert_eq!(
            t.worker_failure_url().unwrap(),
            "https://sqs/worker-failures"
        );
        assert_eq!(t.table().unwrap(), "prod-state");
        assert_eq!(t.queue_url().unwrap(), "https://sqs/jobs");
        assert_eq!(t.dlq_url().unwrap(), "https://sqs/dlq");
        assert_eq!(t.retry_url(), None);
        let t = Target::from_outputs("old", [(OUTPUT_QUEUE, "https://sqs/jobs")]);
        assert_eq!(
            t.table().unwrap_err().to_string(),
            "stack `old` has no output `StateTableName` (is it a quota-orchestrator stack?)"
        );
    }

    #[test]
    fn the_endpoint_flag_wins_over_the_variable() {
        let e = env(&[("AWS_ENDPOINT_URL", "http://env:1")]);
        assert_eq!(
            endpoint(Some("http://flag:2"), &e).as_deref(),
            Some("http://flag:2")
        );
        assert_eq!(endpoint(None, &e).as_deref(), Some("http://env:1"));
        assert_eq!(endpoint(None, &env(&[])), None);
    }
}
