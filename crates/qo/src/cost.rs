//! What a deployment would be billed for a `qo local` run: the requests and durations the
//! in-memory adapters counted as AWS bills them, priced from one dated table of list prices.
//!
//! The counts are the run's own: worker invocations and their billed milliseconds (the
//! invoker), orchestrator runs and their length, SQS requests (the queue), DynamoDB request
//! units (the store). Log bytes are estimated per invocation from the sizes measured on
//! deployed functions (docs/operations.md, Cost). Free tiers are left out.

use serde::Serialize;

use qo_memory::SqsRequests;

/// List prices, us-east-1, on demand, Arm.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Prices {
    /// When they were gathered, and from where.
    pub as_of: &'static str,
    /// Where they come from.
    pub source: &'static str,
    /// Lambda, per GB-second (Arm, first 7.5 billion GB-s a month).
    pub lambda_gb_s: f64,
    /// Lambda, per request.
    pub lambda_request: f64,
    /// SQS standard queue, per request (each 64 KB of payload one request).
    pub sqs_request: f64,
    /// DynamoDB on demand, per write request unit.
    pub dynamodb_wru: f64,
    /// DynamoDB on demand, per read request unit.
    pub dynamodb_rru: f64,
    /// CloudWatch Logs, per byte ingested.
    pub log_byte: f64,
}

/// The table docs/operations.md's Cost section lists, with its sources.
pub const PRICES: Prices = Prices {
    as_of: "2026-12-01",
    source: "aws.amazon.com/{lambda,sqs,cloudwatch}/pricing and \
             aws.amazon.com/dynamodb/pricing/on-demand, us-east-1 (see docs/operations.md, Cost)",
    lambda_gb_s: 0.000_013_333_4,
    lambda_request: 0.20 / 1e6,
    sqs_request: 0.40 / 1e6,
    dynamodb_wru: 0.625 / 1e6,
    dynamodb_rru: 0.125 / 1e6,
    log_byte: 0.50 / 1e9,
};

/// The functions' memory (the template's `MemorySize`), GB.
pub const FUNCTION_MEMORY_GB: f64 = 128.0 / 1024.0;

/// Log bytes per worker invocation: the platform's start (~140 B) and report (~240 B) lines
/// and the worker's EMF line (~290 B), as measured for docs/operations.md.
pub const WORKER_LOG_BYTES: u64 = 670;

/// Log bytes per orchestrator run (its platform lines and its start, stop and EMF lines).
pub const ORCHESTRATOR_LOG_BYTES: u64 = 1_400;

/// What the run used, in the units AWS bills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Worker invocations run (duplicates and retries included; throttled attempts are not
    /// billed).
    pub worker_invocations: u64,
    /// Worker GB-seconds: billed milliseconds x the function's memory.
    pub worker_gb_s: f64,
    /// Orchestrator invocations (one per run).
    pub orchestrator_invocations: u64,
    /// Orchestrator GB-seconds.
    pub orchestrator_gb_s: f64,
    /// SQS requests, the producer's sends included.
    pub sqs_requests: u64,
    /// DynamoDB write request units.
    pub dynamodb_write_units: u64,
    /// DynamoDB read request units.
    pub dynamodb_read_units: u64,
    /// CloudWatch Logs bytes, estimated per invocation.
    pub log_bytes: u64,
    /// Results sent to an SQS destination, as SQS bills them: one request per 64 KB chunk
    /// of each (`qo local --results` delivers to one SQS queue).
    pub result_requests: u64,
}

impl Usage {
    /// The usage of `worker_invocations` runs billed `worker_ms` in all, `orchestrator_runs`
    /// lasting `orchestrator_ms` in all, with the queue's and the store's counts.
    pub fn new(
        worker_invocations: u64,
        worker_ms: u64,
        orchestrator_runs: u64,
        orchestrator_ms: u64,
        sqs: SqsRequests,
        (write_units, read_units): (u64, u64),
    ) -> Self {
        let gb_s = |ms: u64| ms as f64 / 1000.0 * FUNCTION_MEMORY_GB;
        Usage {
            worker_invocations,
            worker_gb_s: gb_s(worker_ms),
            orchestrator_invocations: orchestrator_runs,
            orchestrator_gb_s: gb_s(orchestrator_ms),
            sqs_requests: sqs.total(),
            dynamodb_write_units: write_units,
            dynamodb_read_units: read_units,
            log_bytes: worker_invocations * WORKER_LOG_BYTES
                + orchestrator_runs * ORCHESTRATOR_LOG_BYTES,
            result_requests: 0,
        }
    }

    /// With the SendMessage requests of results of these sizes (JSON bytes) to an SQS queue.
    pub fn with_results(mut self, sizes: impl IntoIterator<Item = usize>) -> Self {
        const CHUNK: usize = 64 * 1024;
        self.result_requests = sizes
            .into_iter()
            .map(|b| b.div_ceil(CHUNK).max(1) as u64)
            .sum();
        self
    }
}

/// The run's bill, in US dollars, by service.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Bill {
    /// What was used.
    pub usage: Usage,
    /// Lambda requests and duration, both functions.
    pub lambda_usd: f64,
    /// SQS requests.
    pub sqs_usd: f64,
    /// DynamoDB request units.
    pub dynamodb_usd: f64,
    /// CloudWatch Logs ingestion.
    pub logs_usd: f64,
    /// All of them.
    pub total_usd: f64,
    /// `total_usd` per million successful calls (none when nothing succeeded).
    pub per_million_calls_usd: Option<f64>,
    /// When the prices were gathered.
    pub prices_as_of: &'static str,
}

impl Bill {
    /// Prices `usage` at `prices`, per million of `calls` successful calls.
    pub fn price(usage: Usage, calls: u64, prices: &Prices) -> Self {
        let lambda_usd = (usage.worker_invocations + usage.orchestrator_invocations) as f64
            * prices.lambda_request
            + (usage.worker_gb_s + usage.orchestrator_gb_s) * prices.lambda_gb_s;
        let sqs_usd = (usage.sqs_requests + usage.result_requests) as f64 * prices.sqs_request;
        let dynamodb_usd = usage.dynamodb_write_units as f64 * prices.dynamodb_wru
            + usage.dynamodb_read_units as f64 * prices.dynamodb_rru;
        let logs_usd = usage.log_bytes as f64 * prices.log_byte;
        let total_usd = lambda_usd + sqs_usd + dynamodb_usd + logs_usd;
        let round = |x: f64| (x * 1e6).round() / 1e6;
        Bill {
            usage,
            lambda_usd: round(lambda_usd),
            sqs_usd: round(sqs_usd),
            dynamodb_usd: round(dynamodb_usd),
            logs_usd: round(logs_usd),
            total_usd: round(total_usd),
            per_million_calls_usd: (calls > 0)
                .then(|| (total_usd / calls as f64 * 1e6 * 1000.0).round() / 1000.0),
            prices_as_of: prices.as_of,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_s_per_call_figures_price_as_it_says() {
        // One million calls as docs/operations.md counts them at L = 0.1 s: one invocation of 0.36 s
        // each, 1.3 SQS requests and 2 WRU a call; no orchestrator.
        let usage = Usage::new(
            1_000_000,
            360 * 1_000_000,
            0,
            0,
            SqsRequests {
                send: 1_000_000,
                receive: 200_000,
                receive_retry: 100_000,
                delete: 100_000,
                change_visibility: 0,
            },
            (2_000_000, 0),
        );
        let bill = Bill::price(usage, 1_000_000, &PRICES);
        // 0.20 + 0.60 (Lambda) + 0.52 (SQS) + 1.25 (DynamoDB) + 0.335 (logs) = 2.905
        assert!((bill.lambda_usd - 0.80).abs() < 0.001, "{bill:?}");
        assert!((bill.sqs_usd - 0.52).abs() < 1e-9);
        assert!((bill.dynamodb_usd - 1.25).abs() < 1e-9);
        assert!((bill.logs_usd - 0.335).abs() < 1e-9);
        assert_eq!(bill.per_million_calls_usd, Some(2.905));
        assert_eq!(Bill::price(usage, 0, &PRICES).per_million_calls_usd, None);
        // A million results of 2 KB to an SQS queue add a million requests: $0.40.
        let with = Bill::price(
            usage.with_results([2_000; 1].repeat(1_000_000)),
            1_000_000,
            &PRICES,
        );
        assert!((with.sqs_usd - 0.92).abs() < 1e-9, "{with:?}");
        // One of 100 KB is two 64 KB chunks.
        assert_eq!(Usage::default().with_results([100_000]).result_requests, 2);
    }
}
