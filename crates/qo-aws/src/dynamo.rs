//! The shared state over one DynamoDB table (partition key `pk`, TTL attribute `ttl`):
//! [`DynamoStore`] is the [`RecordStore`], the [`LeaseStore`] and the [`IdempotencyStore`].
//!
//! | pk | attributes |
//! |---|---|
//! | `quota` | `doc` (S, the record's JSON), `version` (N), and the lease: `token` (N), and while it is held `owner` (S), `expires_at_ms` (N) |
//! | `circuit`, `control`, `sweep` | `doc`, `version`; the circuit also `phase` (S), `epoch` (N) |
//! | `job#<id>` | `status` (S: `in_progress` or `done`), `claimed_at_ms` (N), `ttl` (N, epoch s); a claim made for a batch also `batch` (S, the batch's key) |
//! | `batch#<key>` | `jobs` (SS: the batch's jobs that succeeded), `completed_at_ms` (N), `ttl` (N) |
//!
//! A job of a batch stays `in_progress`: its batch's one done record says it is done, and a
//! claim that finds it reads that record (one write a batch instead of one a job).
//!
//! Every write that can race is conditional. The lease lives on the quota record's item, so
//! that the orchestrator's fenced save of its usage, every `PERSIST_INTERVAL_S`, is one
//! conditional `UpdateItem` on the lease's token and the record's version; a fenced save of
//! another record is a transaction with a condition check on that item. A release keeps the
//! token, so that every take's token is larger than any before it.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, KeySchemaElement, KeyType,
    Put, ScalarAttributeType, TimeToLiveSpecification, TimeToLiveStatus, TransactWriteItem,
};
use qo_core::ports::{
    Claim, IdempotencyStore, Lease, LeaseStore, RecordKey, RecordStore, StoreError, Versioned,
};
use qo_core::time::Timestamp;

use crate::error::{AwsError, store_backend, store_err};

/// The partition key attribute.
pub const PK: &str = "pk";
/// The TTL attribute (epoch seconds).
pub const TTL: &str = "ttl";
/// The partition key of the item that carries the lease: the quota record's.
pub const LEASE_PK: &str = "quota";
/// An idempotency item's partition key prefix.
pub const JOB_PREFIX: &str = "job#";
/// A batch's done record's partition key prefix.
pub const BATCH_PREFIX: &str = "batch#";

const DOC: &str = "doc";
const VERSION: &str = "version";
const PHASE: &str = "phase";
const EPOCH: &str = "epoch";
const OWNER: &str = "owner";
const TOKEN: &str = "token";
const EXPIRES_AT_MS: &str = "expires_at_ms";
const STATUS: &str = "status";
const CLAIMED_AT_MS: &str = "claimed_at_ms";
const COMPLETED_AT_MS: &str = "completed_at_ms";
const IN_PROGRESS: &str = "in_progress";
const DONE: &str = "done";
const BATCH: &str = "batch";
const JOBS: &str = "jobs";
/// DynamoDB's code for a failed condition inside a cancelled transaction.
const CONDITIONAL_CHECK_FAILED: &str = "ConditionalCheckFailed";
/// DynamoDB's code for a transaction that collided with another.
const TRANSACTION_CONFLICT: &str = "TransactionConflict";
/// Races retried by `take` and `claim` before giving up.
const RACE_ATTEMPTS: usize = 3;
/// How long [`DynamoStore::ensure_table`] waits for the table to become active.
const TABLE_WAIT: Duration = Duration::from_secs(60);

type Item = HashMap<String, AttributeValue>;

/// The shared state in one DynamoDB table.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    /// A store over `table` (`TABLE_NAME`).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoStore {
            client,
            table: table.into(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the table if it does not exist (on-demand capacity, partition key `pk` (S)),
    /// waits until it is active, and turns on TTL on `ttl`. For local runs and tests.
    pub async fn ensure_table(&self) -> Result<(), AwsError> {
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(PK)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| AwsError::invalid("dynamodb.CreateTable", e.to_string()))?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(PK)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| AwsError::invalid("dynamodb.CreateTable", e.to_string()))?,
            )
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_in_use_exception()) => {}
            Err(e) => return Err(AwsError::sdk("dynamodb.CreateTable", e)),
        }
        self.client
            .wait_until_table_exists()
            .table_name(&self.table)
            .wait(TABLE_WAIT)
            .await
            .map_err(|e| AwsError::sdk("dynamodb.DescribeTable", e))?;
        let ttl = self
            .client
            .describe_time_to_live()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| AwsError::sdk("dynamodb.DescribeTimeToLive", e))?;
        let on = ttl.time_to_live_description().is_some_and(|d| {
            d.attribute_name() == Some(TTL)
                && matches!(
                    d.time_to_live_status(),
                    Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
                )
        });
        if !on {
            self.client
                .update_time_to_live()
                .table_name(&self.table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .enabled(true)
                        .attribute_name(TTL)
                        .build()
                        .map_err(|e| {
                            AwsError::invalid("dynamodb.UpdateTimeToLive", e.to_string())
                        })?,
                )
                .send()
                .await
                .map_err(|e| AwsError::sdk("dynamodb.UpdateTimeToLive", e))?;
        }
        Ok(())
    }

    /// Claims `job_id`, for a batch (its key, and how long the claim is kept) or alone.
    ///
    /// One conditional put, which also takes over a stale claim that names no batch. When it
    /// finds a claim standing: a done item, or a batch claim whose batch's done record lists
    /// the job, is [`Claim::AlreadyDone`]; a claim younger than `claim_ttl` is
    /// [`Claim::InProgress`]; a stale batch claim not listed is taken over by a second put,
    /// conditional on the claim read (so that of two deliveries taking it over, one does).
    async fn claim_item(
        &self,
        job_id: &str,
        batch: Option<(&str, Duration)>,
        now: Timestamp,
        claim_ttl: Duration,
    ) -> Result<Claim, StoreError> {
        const OP: &str = "dynamodb.PutItem(claim)";
        let pk = format!("{JOB_PREFIX}{job_id}");
        let stale = now.minus(claim_ttl).as_millis();
        let keep = batch.map_or(claim_ttl, |(_, keep)| keep.max(claim_ttl));
        let put = || {
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item(PK, s(&pk))
                .item(STATUS, s(IN_PROGRESS))
                .item(CLAIMED_AT_MS, n(now.as_millis()))
                .item(TTL, n(ttl_secs(now.plus(keep))));
            match batch {
                Some((key, _)) => put.item(BATCH, s(key)),
                None => put,
            }
        };
        for _ in 0..RACE_ATTEMPTS {
            let res = put()
                .condition_expression(
                    "attribute_not_exists(#pk) OR (#status = :in_progress AND #claimed < :stale \
                     AND attribute_not_exists(#batch))",
                )
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#status", STATUS)
                .expression_attribute_names("#claimed", CLAIMED_AT_MS)
                .expression_attribute_names("#batch", BATCH)
                .expression_attribute_values(":in_progress", s(IN_PROGRESS))
                .expression_attribute_values(":stale", n(stale))
                .send()
                .await;
            if conditional_put(res, OP)? {
                return Ok(Claim::Claimed);
            }
            let Some(item) = self.get(&pk, "dynamodb.GetItem(claim)").await? else {
                // Abandoned in between: try again.
                continue;
            };
            if text(&item, STATUS) == Some(DONE) {
                return Ok(Claim::AlreadyDone);
            }
            let claimed_at = num(&item, CLAIMED_AT_MS).unwrap_or(0);
            let Some(owner) = text(&item, BATCH) else {
                // A lone claim the put did not take over: not stale.
                return Ok(Claim::InProgress {
                    since: Timestamp::from_millis(claimed_at),
                });
            };
            if self.batch_lists(owner, job_id).await? {
                return Ok(Claim::AlreadyDone);
            }
            if claimed_at >= stale {
                return Ok(Claim::InProgress {
                    since: Timestamp::from_millis(claimed_at),
                });
            }
            // A stale batch claim its batch never marked done: its delivery died.
            let res = put()
                .condition_expression("#status = :in_progress AND #claimed = :seen")
                .expression_attribute_names("#status", STATUS)
                .expression_attribute_names("#claimed", CLAIMED_AT_MS)
                .expression_attribute_values(":in_progress", s(IN_PROGRESS))
                .expression_attribute_values(":seen", n(claimed_at))
                .send()
                .await;
            if conditional_put(res, OP)? {
                return Ok(Claim::Claimed);
            }
        }
        Err(store_backend(
            OP,
            AwsError::invalid(OP, format!("the claim on `{pk}` kept changing")),
        ))
    }

    /// Whether the done record of batch `batch` lists `job_id`.
    async fn batch_lists(&self, batch: &str, job_id: &str) -> Result<bool, StoreError> {
        let pk = format!("{BATCH_PREFIX}{batch}");
        let Some(item) = self.get(&pk, "dynamodb.GetItem(batch)").await? else {
            return Ok(false);
        };
        Ok(
            matches!(item.get(JOBS), Some(AttributeValue::Ss(jobs)) if jobs.iter().any(|j| j == job_id)),
        )
    }

    /// A strongly consistent read of one item.
    async fn get(&self, pk: &str, op: &'static str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_err(op, e))?;
        Ok(out.item)
    }

    async fn read_lease(&self) -> Result<Option<Lease>, StoreError> {
        Ok(self.read_lease_state().await?.0)
    }

    /// The lease as held (`None`: never taken, released, or only the record there) and the
    /// last token issued (0: none yet).
    async fn read_lease_state(&self) -> Result<(Option<Lease>, u64), StoreError> {
        let Some(item) = self.get(LEASE_PK, "dynamodb.GetItem(lease)").await? else {
            return Ok((None, 0));
        };
        let corrupt = |what: &str| StoreError::Corrupt {
            key: LEASE_PK,
            reason: format!("attribute `{what}` is missing or not a number/string"),
        };
        let Some(token) = num(&item, TOKEN) else {
            if item.contains_key(TOKEN) {
                return Err(corrupt(TOKEN));
            }
            return Ok((None, 0));
        };
        let Some(owner) = text(&item, OWNER) else {
            // Released: the token stays for the next take.
            return Ok((None, token));
        };
        let lease = Lease {
            owner: owner.to_string(),
            token,
            expires_at: Timestamp::from_millis(
                num(&item, EXPIRES_AT_MS).ok_or_else(|| corrupt(EXPIRES_AT_MS))?,
            ),
        };
        Ok((Some(lease), token))
    }

    /// The fenced save of the record on the lease's item: one `UpdateItem` of the document
    /// and the version, on the token (still held) and the version. A failed condition is told
    /// apart by a read: `Fenced` when the token is no longer `token` or the lease was released,
    /// else `Conflict`.
    async fn save_on_lease_item(
        &self,
        key: RecordKey,
        doc: String,
        expected: u64,
        fence: Option<u64>,
    ) -> Result<u64, StoreError> {
        const OP: &str = "dynamodb.UpdateItem(record)";
        let version = expected + 1;
        let versioned = if expected == 0 {
            "attribute_not_exists(#version)"
        } else {
            "#version = :expected"
        };
        let cond = match fence {
            Some(_) => format!("{versioned} AND #token = :token AND attribute_exists(#owner)"),
            None => versioned.to_string(),
        };
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(key.as_str()))
            .update_expression("SET #doc = :doc, #version = :version")
            .condition_expression(cond)
            .expression_attribute_names("#doc", DOC)
            .expression_attribute_names("#version", VERSION)
            .expression_attribute_values(":doc", s(doc))
            .expression_attribute_values(":version", n(version));
        if expected > 0 {
            req = req.expression_attribute_values(":expected", n(expected));
        }
        if let Some(token) = fence {
            req = req
                .expression_attribute_names("#token", TOKEN)
                .expression_attribute_names("#owner", OWNER)
                .expression_attribute_values(":token", n(token));
        }
        match req.send().await {
            Ok(_) => Ok(version),
            Err(e) if condition_failed(&e) => {
                let Some(token) = fence else {
                    return Err(StoreError::Conflict {
                        key: key.as_str(),
                        expected,
                    });
                };
                match self.read_lease().await? {
                    Some(l) if l.token == token => Err(StoreError::Conflict {
                        key: key.as_str(),
                        expected,
                    }),
                    _ => Err(StoreError::Fenced {
                        key: key.as_str(),
                        token,
                    }),
                }
            }
            Err(e) => Err(store_err(OP, e)),
        }
    }

    /// `PutItem` of `item` if `cond` holds: the unfenced save of a record other than the one
    /// on the lease's item (see [`Self::save_on_lease_item`]).
    async fn put_if(
        &self,
        item: Item,
        cond: Condition,
    ) -> Result<(), aws_sdk_dynamodb::error::SdkError<PutItemError>> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(cond.expression)
            .set_expression_attribute_names(Some(cond.names))
            .set_expression_attribute_values(cond.values)
            .send()
            .await
            .map(|_| ())
    }

    async fn save_fenced(
        &self,
        key: RecordKey,
        cond: Condition,
        item: Item,
        expected: u64,
        token: u64,
    ) -> Result<u64, StoreError> {
        const OP: &str = "dynamodb.TransactWriteItems";
        let invalid = |e: aws_sdk_dynamodb::error::BuildError| {
            store_backend(OP, AwsError::invalid(OP, e.to_string()))
        };
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .key(PK, s(LEASE_PK))
            .condition_expression("#token = :token AND attribute_exists(#owner)")
            .expression_attribute_names("#token", TOKEN)
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_values(":token", n(token))
            .build()
            .map_err(invalid)?;
        let version = num(&item, VERSION).unwrap_or(expected + 1);
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(cond.expression)
            .set_expression_attribute_names(Some(cond.names))
            .set_expression_attribute_values(cond.values)
            .build()
            .map_err(invalid)?;
        let res = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().condition_check(check).build())
            .transact_items(TransactWriteItem::builder().put(put).build())
            .send()
            .await;
        let err = match res {
            Ok(_) => return Ok(version),
            Err(e) => e,
        };
        let reasons: Vec<Option<String>> = match err.as_service_error() {
            Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c)) => {
                c.cancellation_reasons()
                    .iter()
                    .map(|r| r.code().map(str::to_string))
                    .collect()
            }
            _ => return Err(store_err(OP, err)),
        };
        let code = |i: usize| reasons.get(i).and_then(|c| c.as_deref());
        if code(0) == Some(CONDITIONAL_CHECK_FAILED) {
            Err(StoreError::Fenced {
                key: key.as_str(),
                token,
            })
        } else if code(1) == Some(CONDITIONAL_CHECK_FAILED)
            || reasons
                .iter()
                .any(|c| c.as_deref() == Some(TRANSACTION_CONFLICT))
        {
            Err(StoreError::Conflict {
                key: key.as_str(),
                expected,
            })
        } else {
            Err(store_err(OP, err))
        }
    }
}

/// A condition expression with its names and values.
struct Condition {
    expression: &'static str,
    names: HashMap<String, String>,
    values: Option<HashMap<String, AttributeValue>>,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

fn num(item: &Item, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn names(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn values(pairs: Vec<(&str, AttributeValue)>) -> HashMap<String, AttributeValue> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Whether an SDK error is a failed condition of a single-item write.
fn condition_failed<E, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(|e| e.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

/// Seconds since the epoch, rounded up, for the `ttl` attribute.
/// A conditional put's answer: whether it was written (`false`: its condition failed).
fn conditional_put<O>(
    res: Result<
        O,
        aws_sdk_dynamodb::error::SdkError<
            PutItemError,
            aws_sdk_dynamodb::config::http::HttpResponse,
        >,
    >,
    op: &'static str,
) -> Result<bool, StoreError> {
    match res {
        Ok(_) => Ok(true),
        Err(e) if condition_failed(&e) => Ok(false),
        Err(e) => Err(store_err(op, e)),
    }
}

fn ttl_secs(at: Timestamp) -> u64 {
    at.as_micros().div_ceil(1_000_000)
}

#[async_trait]
impl RecordStore for DynamoStore {
    async fn load(
        &self,
        key: RecordKey,
    ) -> Result<Option<Versioned<serde_json::Value>>, StoreError> {
        let Some(item) = self.get(key.as_str(), "dynamodb.GetItem(record)").await? else {
            return Ok(None);
        };
        if !item.contains_key(DOC) && !item.contains_key(VERSION) {
            // The quota record's item holding only the lease: no record yet.
            return Ok(None);
        }
        let corrupt = |reason: String| StoreError::Corrupt {
            key: key.as_str(),
            reason,
        };
        let doc = text(&item, DOC).ok_or_else(|| corrupt("no `doc` string".into()))?;
        let value = serde_json::from_str(doc).map_err(|e| corrupt(format!("`doc`: {e}")))?;
        let version = num(&item, VERSION).ok_or_else(|| corrupt("no `version` number".into()))?;
        Ok(Some(Versioned { value, version }))
    }

    async fn save(
        &self,
        key: RecordKey,
        value: serde_json::Value,
        expected: u64,
        fence: Option<u64>,
    ) -> Result<u64, StoreError> {
        const OP: &str = "dynamodb.PutItem(record)";
        if key.as_str() == LEASE_PK {
            // The lease's item: an update keeps the lease's attributes.
            return self
                .save_on_lease_item(key, value.to_string(), expected, fence)
                .await;
        }
        let version = expected + 1;
        let mut item: Item = HashMap::from([
            (PK.to_string(), s(key.as_str())),
            (DOC.to_string(), s(value.to_string())),
            (VERSION.to_string(), n(version)),
        ]);
        if key == RecordKey::Circuit {
            if let Some(phase) = value.get("state").and_then(|v| v.as_str()) {
                item.insert(PHASE.to_string(), s(phase));
            }
            if let Some(epoch) = value.get("epoch").and_then(|v| v.as_u64()) {
                item.insert(EPOCH.to_string(), n(epoch));
            }
        }
        let cond = if expected == 0 {
            Condition {
                expression: "attribute_not_exists(#pk)",
                names: names(&[("#pk", PK)]),
                values: None,
            }
        } else {
            Condition {
                expression: "#version = :expected",
                names: names(&[("#version", VERSION)]),
                values: Some(values(vec![(":expected", n(expected))])),
            }
        };
        if let Some(token) = fence {
            return self.save_fenced(key, cond, item, expected, token).await;
        }
        match self.put_if(item, cond).await {
            Ok(()) => Ok(version),
            Err(e) if condition_failed(&e) => Err(StoreError::Conflict {
                key: key.as_str(),
                expected,
            }),
            Err(e) => Err(store_err(OP, e)),
        }
    }
}

#[async_trait]
impl LeaseStore for DynamoStore {
    async fn take(&self, owner: &str, now: Timestamp, ttl: Duration) -> Result<Lease, StoreError> {
        const OP: &str = "dynamodb.UpdateItem(lease take)";
        let expires_ms = now.plus(ttl).as_millis();
        for _ in 0..RACE_ATTEMPTS {
            let (current, old_token) = self.read_lease_state().await?;
            let (cond, values) = match &current {
                None if old_token == 0 => ("attribute_not_exists(#token)", vec![]),
                // Released: free, and the token we read is still there.
                None => (
                    "#token = :old AND attribute_not_exists(#owner)",
                    vec![(":old", n(old_token))],
                ),
                Some(l) if l.expires_at <= now || l.owner == owner => (
                    // Race-free: the token we read is still there, and the lease is still free
                    // or ours (a renewal in between keeps the token but moves the expiry).
                    "#token = :old AND (#exp <= :now OR #owner = :me)",
                    vec![
                        (":old", n(old_token)),
                        (":now", n(now.as_millis())),
                        (":me", s(owner)),
                    ],
                ),
                Some(l) => {
                    return Err(StoreError::LeaseHeld {
                        owner: l.owner.clone(),
                        until: l.expires_at,
                    });
                }
            };
            let token = old_token + 1;
            let mut values = values;
            values.push((":owner", s(owner)));
            values.push((":token", n(token)));
            values.push((":expires", n(expires_ms)));
            let res = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PK, s(LEASE_PK))
                .update_expression("SET #owner = :owner, #token = :token, #exp = :expires")
                .condition_expression(cond)
                .set_expression_attribute_names(Some(names(&[
                    ("#token", TOKEN),
                    ("#exp", EXPIRES_AT_MS),
                    ("#owner", OWNER),
                ])))
                .set_expression_attribute_values(Some(self::values(values)))
                .send()
                .await;
            match res {
                Ok(_) => {
                    return Ok(Lease {
                        owner: owner.to_string(),
                        token,
                        expires_at: Timestamp::from_millis(expires_ms),
                    });
                }
                Err(e) if condition_failed(&e) => continue,
                Err(e) => return Err(store_err(OP, e)),
            }
        }
        // Lost every race: report whoever holds it now.
        match self.read_lease().await? {
            Some(l) => Err(StoreError::LeaseHeld {
                owner: l.owner,
                until: l.expires_at,
            }),
            None => Err(store_backend(
                OP,
                AwsError::invalid(OP, "the lease kept changing while it was taken"),
            )),
        }
    }

    async fn renew(
        &self,
        lease: &Lease,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        const OP: &str = "dynamodb.UpdateItem(lease)";
        let expires_ms = now.plus(ttl).as_millis();
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(LEASE_PK))
            .update_expression("SET #exp = :exp")
            .condition_expression("#token = :t AND #owner = :me")
            .expression_attribute_names("#exp", EXPIRES_AT_MS)
            .expression_attribute_names("#token", TOKEN)
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_values(":exp", n(expires_ms))
            .expression_attribute_values(":t", n(lease.token))
            .expression_attribute_values(":me", s(&lease.owner))
            .send()
            .await;
        match res {
            Ok(_) => Ok(Lease {
                expires_at: Timestamp::from_millis(expires_ms),
                ..lease.clone()
            }),
            Err(e) if condition_failed(&e) => Err(StoreError::LeaseLost { token: lease.token }),
            Err(e) => Err(store_err(OP, e)),
        }
    }

    /// Gives the lease up: its holder and expiry go, its token stays (the next take's is one
    /// more), and fenced saves with it are refused from then on.
    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        const OP: &str = "dynamodb.UpdateItem(lease release)";
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(LEASE_PK))
            .update_expression("REMOVE #owner, #exp")
            .condition_expression("#token = :t AND attribute_exists(#owner)")
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_names("#exp", EXPIRES_AT_MS)
            .expression_attribute_names("#token", TOKEN)
            .expression_attribute_values(":t", n(lease.token))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            // Already lost: nothing to give up.
            Err(e) if condition_failed(&e) => Ok(()),
            Err(e) => Err(store_err(OP, e)),
        }
    }

    async fn current(&self) -> Result<Option<Lease>, StoreError> {
        self.read_lease().await
    }
}

#[async_trait]
impl IdempotencyStore for DynamoStore {
    async fn claim(
        &self,
        job_id: &str,
        now: Timestamp,
        claim_ttl: Duration,
    ) -> Result<Claim, StoreError> {
        self.claim_item(job_id, None, now, claim_ttl).await
    }

    async fn claim_in_batch(
        &self,
        job_id: &str,
        batch: &str,
        now: Timestamp,
        claim_ttl: Duration,
        keep: Duration,
    ) -> Result<Claim, StoreError> {
        self.claim_item(job_id, Some((batch, keep)), now, claim_ttl)
            .await
    }

    async fn is_done(&self, job_id: &str) -> Result<bool, StoreError> {
        let pk = format!("{JOB_PREFIX}{job_id}");
        let Some(item) = self.get(&pk, "dynamodb.GetItem(is_done)").await? else {
            return Ok(false);
        };
        if text(&item, STATUS) == Some(DONE) {
            return Ok(true);
        }
        match text(&item, BATCH) {
            Some(batch) => self.batch_lists(batch, job_id).await,
            None => Ok(false),
        }
    }

    async fn complete(
        &self,
        job_id: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(format!("{JOB_PREFIX}{job_id}")))
            .item(STATUS, s(DONE))
            .item(COMPLETED_AT_MS, n(now.as_millis()))
            .item(TTL, n(ttl_secs(now.plus(ttl))))
            .send()
            .await
            .map_err(|e| store_err("dynamodb.PutItem(complete)", e))?;
        Ok(())
    }

    async fn complete_batch(
        &self,
        batch: &str,
        job_ids: &[&str],
        now: Timestamp,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if job_ids.is_empty() {
            return Ok(());
        }
        let jobs = AttributeValue::Ss(job_ids.iter().map(|id| id.to_string()).collect());
        // ADD unions the ids into the set (creating the item if absent): two deliveries of one
        // batch event that split its claims between them each add their own successes, where a
        // put by the later one would erase the earlier one's, and its jobs would be called
        // again once their claims went stale. Idempotent, and the same 1 WRU as a put.
        self.client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(format!("{BATCH_PREFIX}{batch}")))
            .update_expression("ADD #jobs :jobs SET #completed = :completed, #ttl = :ttl")
            .expression_attribute_names("#jobs", JOBS)
            .expression_attribute_names("#completed", COMPLETED_AT_MS)
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_values(":jobs", jobs)
            .expression_attribute_values(":completed", n(now.as_millis()))
            .expression_attribute_values(":ttl", n(ttl_secs(now.plus(ttl))))
            .send()
            .await
            .map_err(|e| store_err("dynamodb.UpdateItem(complete batch)", e))?;
        Ok(())
    }

    async fn abandon(&self, job_id: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(format!("{JOB_PREFIX}{job_id}")))
            .condition_expression("#status = :in_progress")
            .expression_attribute_names("#status", STATUS)
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            // Done meanwhile, or never claimed: nothing to drop.
            Err(e) if condition_failed(&e) => Ok(()),
            Err(e) => Err(store_err("dynamodb.DeleteItem(abandon)", e)),
        }
    }
}
