//! The DynamoDB adapter against moto: conditional records, fencing, the lease, idempotency.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use qo_aws::DynamoStore;
use qo_core::circuit::Circuit;
use qo_core::ports::{
    Claim, IdempotencyStore, LeaseStore, RecordKey, RecordStore, StoreError, Versioned,
    load_record, save_record, update_record,
};
use qo_core::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;

async fn store(config: &aws_config::SdkConfig) -> DynamoStore {
    let s = DynamoStore::new(aws_sdk_dynamodb::Client::new(config), "qo-state");
    s.ensure_table().await.expect("table");
    s
}

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

async fn raw_item(
    s: &DynamoStore,
    pk: &str,
) -> Option<std::collections::HashMap<String, AttributeValue>> {
    s.client()
        .get_item()
        .table_name(s.table())
        .key("pk", AttributeValue::S(pk.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

/// A save that must be refused: its error.
async fn save_err(
    s: &DynamoStore,
    key: RecordKey,
    value: serde_json::Value,
    expected: u64,
    fence: Option<u64>,
) -> StoreError {
    s.save(key, value, expected, fence).await.unwrap_err()
}

#[tokio::test]
async fn ensure_table_is_idempotent_and_turns_on_ttl() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let s = store(&config).await;
    s.ensure_table().await.expect("second ensure");
    let ttl = s
        .client()
        .describe_time_to_live()
        .table_name(s.table())
        .send()
        .await
        .unwrap();
    let d = ttl.time_to_live_description().expect("ttl description");
    assert_eq!(d.attribute_name(), Some("ttl"));
    assert_eq!(d.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
}

#[tokio::test]
async fn conditional_saves_refuse_a_stale_version() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let s = store(&config).await;
    assert_eq!(s.load(RecordKey::Quota).await.unwrap(), None);

    assert_eq!(
        s.save(RecordKey::Quota, json!({"a": 1}), 0, None)
            .await
            .unwrap(),
        1
    );
    // A second creator loses.
    let e = save_err(&s, RecordKey::Quota, json!({"a": 2}), 0, None).await;
    assert!(
        matches!(
            e,
            StoreError::Conflict {
                key: "quota",
                expected: 0
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        s.save(RecordKey::Quota, json!({"a": 3}), 1, None)
            .await
            .unwrap(),
        2
    );
    // Two writers that both read version 1: the second loses.
    let e = save_err(&s, RecordKey::Quota, json!({"a": 4}), 1, None).await;
    assert!(
        matches!(
            e,
            StoreError::Conflict {
                key: "quota",
                expected: 1
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        s.load(RecordKey::Quota).await.unwrap(),
        Some(Versioned {
            value: json!({"a": 3}),
            version: 2
        })
    );
    // Records are independent.
    assert_eq!(s.load(RecordKey::Control).await.unwrap(), None);
}

#[tokio::test]
async fn circuit_record_carries_phase_and_epoch() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let s = store(&config).await;
    let circuit = Circuit::closed_at(T0);
    let v = save_record(&s, RecordKey::Circuit, &circuit, 0, None)
        .await
        .unwrap();
    let item = raw_item(&s, "circuit").await.expect("item");
    assert_eq!(item["phase"], AttributeValue::S("closed".into()));
    assert_eq!(item["epoch"], AttributeValue::N(circuit.epoch.to_string()));
    assert_eq!(item["version"], AttributeValue::N("1".into()));
    let back: Versioned<Circuit> = load_record(&s, RecordKey::Circuit).await.unwrap();
    assert_eq!(
        back,
        Versioned {
            value: circuit,
            version: v
        }
    );
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

/// A store that lets another writer in between the first read and the first write.
struct Racy {
    inner: DynamoStore,
    raced: AtomicBool,
}

#[async_trait]
impl RecordStore for Racy {
    async fn load(
        &self,
        key: RecordKey,
    ) -> Result<Option<Versioned<serde_json::Value>>, StoreError> {
        self.inner.load(key).await
    }

    async fn save(
        &self,
        key: RecordKey,
        value: serde_json::Value,
        expected: u64,
        fence: Option<u64>,
    ) -> Result<u64, StoreError> {
        if !self.raced.swap(true, Ordering::SeqCst) {
            let cur: Versioned<Counter> = load_record(&self.inner, key).await?;
            let other = Counter {
                n: cur.value.n + 100,
            };
            save_record(&self.inner, key, &other, cur.version, None).await?;
        }
        self.inner.save(key, value, expected, fence).await
    }
}

#[tokio::test]
async fn update_record_retries_from_a_fresh_read() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let racy = Racy {
        inner: store(&config).await,
        raced: AtomicBool::new(false),
    };
    // Version 1 exists: the race below is on `version = :expected`, not on creation.
    save_record(&racy.inner, RecordKey::Quota, &Counter { n: 5 }, 0, None)
        .await
        .unwrap();
    let calls = AtomicU32::new(0);
    let out: Versioned<Counter> = update_record(&racy, RecordKey::Quota, |c: &Counter| {
        calls.fetch_add(1, Ordering::SeqCst);
        Some(Counter { n: c.n + 1 })
    })
    .await
    .expect("update");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one lost race, one retry");
    assert_eq!(
        out.value,
        Counter { n: 106 },
        "the other writer's +100 is kept"
    );
    assert_eq!(out.version, 3);
    let stored: Versioned<Counter> = load_record(&racy.inner, RecordKey::Quota).await.unwrap();
    assert_eq!(stored, out);
}

#[tokio::test]
async fn lease_take_over_after_expiry_fences_the_old_holder() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let s = store(&config).await;
    let ttl = Duration::from_secs(30);
    assert_eq!(s.current().await.unwrap(), None);

    let a = s.take("a", T0, ttl).await.expect("free lease");
    assert_eq!(a.token, 1);
    assert_eq!(a.expires_at, T0.plus(ttl));
    assert_eq!(s.current().await.unwrap(), Some(a.clone()));

    // Held: another cannot take it; the holder may take it again (token grows).
    let e = s
        .take("b", T0.plus(Duration::from_secs(10)), ttl)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::LeaseHeld { owner, until } if owner == "a" && *until == a.expires_at),
        "{e:?}"
    );
    let a = s
        .take("a", T0.plus(Duration::from_secs(1)), ttl)
        .await
        .unwrap();
    assert_eq!(a.token, 2);
    let a = s
        .renew(&a, T0.plus(Duration::from_secs(5)), ttl)
        .await
        .expect("renew");
    assert_eq!(a.expires_at, T0.plus(Duration::from_secs(35)));

    // Fenced writes succeed while the token is current.
    s.save(
        RecordKey::Control,
        json!({"paused": false}),
        0,
        Some(a.token),
    )
    .await
    .expect("fenced write with the current token");

    // After expiry, b takes over with a bigger token.
    let later = T0.plus(Duration::from_secs(36));
    let b = s.take("b", later, ttl).await.expect("take-over");
    assert_eq!(b.token, 3);
    assert!(b.token > a.token);

    // The old holder is out: renew is LeaseLost, fenced saves are Fenced, release is a no-op.
    let e = s.renew(&a, later, ttl).await.unwrap_err();
    assert!(matches!(e, StoreError::LeaseLost { token: 2 }), "{e:?}");
    let e = save_err(
        &s,
        RecordKey::Control,
        json!({"paused": true}),
        1,
        Some(a.token),
    )
    .await;
    assert!(
        matches!(
            e,
            StoreError::Fenced {
                key: "control",
                token: 2
            }
        ),
        "{e:?}"
    );
    s.release(&a)
        .await
        .expect("releasing a lost lease is a no-op");
    assert_eq!(s.current().await.unwrap(), Some(b.clone()));
    assert_eq!(
        s.load(RecordKey::Control).await.unwrap().unwrap().value,
        json!({"paused": false}),
        "the fenced write did not land"
    );

    // The new holder's fenced write with a stale version is a Conflict, not Fenced.
    let e = save_err(
        &s,
        RecordKey::Control,
        json!({"paused": true}),
        7,
        Some(b.token),
    )
    .await;
    assert!(
        matches!(
            e,
            StoreError::Conflict {
                key: "control",
                expected: 7
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        s.save(
            RecordKey::Control,
            json!({"paused": true}),
            1,
            Some(b.token)
        )
        .await
        .unwrap(),
        2
    );

    s.release(&b).await.unwrap();
    assert_eq!(s.current().await.unwrap(), None);
    // After a release no fence holds, and the next take's token is larger than any before.
    let e = save_err(
        &s,
        RecordKey::Control,
        json!({"paused": false}),
        2,
        Some(b.token),
    )
    .await;
    assert!(matches!(e, StoreError::Fenced { .. }), "{e:?}");
    let c = s.take("c", later, ttl).await.unwrap();
    assert_eq!(c.token, 4, "a released lease keeps its token");
}

#[tokio::test]
async fn the_quota_record_shares_the_lease_s_item_and_its_fenced_save_is_one_update() {
    // The lease lives on the quota record's item: a take does not touch the record, a save
    // of the record does not touch the lease, and a fenced save is refused once another
    // holder took over or the lease was released.
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let s = store(&config).await;
    let ttl = Duration::from_secs(30);
    let a = s.take("a", T0, ttl).await.expect("take");
    assert_eq!(
        s.load(RecordKey::Quota).await.unwrap(),
        None,
        "a lease, no record"
    );
    assert_eq!(
        s.save(RecordKey::Quota, json!({"used": 1}), 0, Some(a.token))
            .await
            .expect("first fenced save"),
        1
    );
    let a = s
        .renew(&a, T0.plus(Duration::from_secs(5)), ttl)
        .await
        .expect("renew");
    assert_eq!(
        s.save(RecordKey::Quota, json!({"used": 2}), 1, Some(a.token))
            .await
            .expect("second fenced save"),
        2
    );
    assert_eq!(
        s.current().await.unwrap(),
        Some(a.clone()),
        "the save kept the lease"
    );
    let loaded = s.load(RecordKey::Quota).await.unwrap().expect("record");
    assert_eq!((loaded.value, loaded.version), (json!({"used": 2}), 2));
    // A stale version with the right token is a Conflict.
    let e = save_err(&s, RecordKey::Quota, json!({"used": 9}), 1, Some(a.token)).await;
    assert!(
        matches!(
            e,
            StoreError::Conflict {
                key: "quota",
                expected: 1
            }
        ),
        "{e:?}"
    );
    // Taken over after expiry: the old holder's save is Fenced, the new one's lands.
    let later = T0.plus(Duration::from_secs(60));
    let b = s.take("b", later, ttl).await.expect("take-over");
    assert_eq!(b.token, a.token + 1);
    let e = save_err(&s, RecordKey::Quota, json!({"used": 9}), 2, Some(a.token)).await;
    assert!(
        matches!(e, StoreError::Fenced { key: "quota", token } if token == a.token),
        "{e:?}"
    );
    assert_eq!(
        s.save(RecordKey::Quota, json!({"used": 3}), 2, Some(b.token))
            .await
            .expect("the new holder's save"),
        3
    );
    // Released: the record stays, its fenced saves are refused.
    s.release(&b).await.expect("release");
    assert_eq!(s.current().await.unwrap(), None);
    let e = save_err(&s, RecordKey::Quota, json!({"used": 9}), 3, Some(b.token)).await;
    assert!(matches!(e, StoreError::Fenced { .. }), "{e:?}");
    let loaded = s.load(RecordKey::Quota).await.unwrap().expect("record");
    assert_eq!((loaded.value, loaded.version), (json!({"used": 3}), 3));
}

#[tokio::test]
async fn concurrent_takes_have_one_winner() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let s = Arc::new(store(&config).await);
    let ttl = Duration::from_secs(30);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.take(&format!("o{i}"), T0, ttl).await
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(l) => winners.push(l),
            Err(StoreError::LeaseHeld { .. }) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(s.current().await.unwrap(), Some(winners[0].clone()));
}

#[tokio::test]
async fn idempotency_claims_once_and_reports_duplicates() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let s = store(&config).await;
    let claim_ttl = Duration::from_secs(120);
    let day = Duration::from_secs(86_400);

    assert_eq!(s.claim("j1", T0, claim_ttl).await.unwrap(), Claim::Claimed);
    assert_eq!(
        s.claim("j1", T0.plus(Duration::from_secs(3)), claim_ttl)
            .await
            .unwrap(),
        Claim::InProgress { since: T0 }
    );
    s.complete("j1", T0.plus(Duration::from_secs(4)), day)
        .await
        .unwrap();
    assert_eq!(
        s.claim("j1", T0.plus(Duration::from_secs(5)), claim_ttl)
            .await
            .unwrap(),
        Claim::AlreadyDone
    );
    // Long after, still done (until DynamoDB's TTL removes the item).
    assert_eq!(
        s.claim("j1", T0.plus(Duration::from_secs(3600)), claim_ttl)
            .await
            .unwrap(),
        Claim::AlreadyDone
    );
    let item = raw_item(&s, "job#j1").await.unwrap();
    assert_eq!(item["status"], AttributeValue::S("done".into()));
    assert_eq!(
        item["ttl"],
        AttributeValue::N((T0.as_secs() + 4 + 86_400).to_string())
    );
    // Abandoning a done job changes nothing.
    s.abandon("j1").await.unwrap();
    assert_eq!(
        s.claim("j1", T0, claim_ttl).await.unwrap(),
        Claim::AlreadyDone
    );

    // An abandoned claim may be claimed again.
    assert_eq!(s.claim("j2", T0, claim_ttl).await.unwrap(), Claim::Claimed);
    s.abandon("j2").await.unwrap();
    assert_eq!(raw_item(&s, "job#j2").await, None);
    assert_eq!(s.claim("j2", T0, claim_ttl).await.unwrap(), Claim::Claimed);

    // A claim older than the claim TTL that never completed is taken over.
    let stale = T0.plus(claim_ttl).plus(Duration::from_secs(1));
    assert_eq!(
        s.claim("j2", stale, claim_ttl).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        s.claim("j2", stale, claim_ttl).await.unwrap(),
        Claim::InProgress { since: stale }
    );
}

/// A batch's jobs are claimed naming the batch and marked done by one record; a later claim
/// reads it through the job's claim. A stale batch claim its record does not list (the
/// delivery died) is taken over, once.
#[tokio::test]
async fn batch_claims_are_done_through_one_record() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let s = store(&config).await;
    let claim_ttl = Duration::from_secs(120);
    let day = Duration::from_secs(86_400);
    let at = |secs| T0.plus(Duration::from_secs(secs));
    for id in ["a", "b"] {
        assert_eq!(
            s.claim_in_batch(id, "a@1", T0, claim_ttl, day)
                .await
                .unwrap(),
            Claim::Claimed
        );
    }
    // The claim is kept as long as a done record would be, and names its batch.
    let item = raw_item(&s, "job#a").await.unwrap();
    assert_eq!(item["batch"], AttributeValue::S("a@1".into()));
    assert_eq!(
        item["ttl"],
        AttributeValue::N((T0.as_secs() + 86_400).to_string())
    );
    assert_eq!(
        s.claim("a", at(1), claim_ttl).await.unwrap(),
        Claim::InProgress { since: T0 }
    );
    s.complete_batch("a@1", &["a"], at(2), day).await.unwrap();
    let record = raw_item(&s, "batch#a@1").await.unwrap();
    assert_eq!(record["jobs"], AttributeValue::Ss(vec!["a".into()]));
    // Done, for a lone delivery or another batch's, long after the claim TTL.
    assert_eq!(
        s.claim("a", at(3), claim_ttl).await.unwrap(),
        Claim::AlreadyDone
    );
    assert_eq!(
        s.claim_in_batch("a", "a@9", at(3600), claim_ttl, day)
            .await
            .unwrap(),
        Claim::AlreadyDone
    );
    // "b" is not listed: in progress until the claim TTL, then taken over, by one of two.
    assert_eq!(
        s.claim("b", at(119), claim_ttl).await.unwrap(),
        Claim::InProgress { since: T0 }
    );
    let (x, y) = tokio::join!(
        s.claim("b", at(121), claim_ttl),
        s.claim_in_batch("b", "b@2", at(121), claim_ttl, day)
    );
    let mut answers = [x.unwrap(), y.unwrap()];
    answers.sort_by_key(|c| matches!(c, Claim::Claimed));
    assert_eq!(answers[1], Claim::Claimed, "{answers:?}");
    assert!(
        matches!(answers[0], Claim::InProgress { .. }),
        "{answers:?}"
    );
}

/// Two deliveries of one batch event that split its claims each record their own successes:
/// the done record is the union of both (an update that adds to the set), not the last write.
#[tokio::test]
async fn two_completes_of_one_batch_keep_both_sets_of_jobs() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let s = store(&config).await;
    let claim_ttl = Duration::from_secs(120);
    let day = Duration::from_secs(86_400);
    let at = |secs| T0.plus(Duration::from_secs(secs));
    for id in ["j1", "j2", "j3", "j4"] {
        assert_eq!(
            s.claim_in_batch(id, "j1@1", T0, claim_ttl, day)
                .await
                .unwrap(),
            Claim::Claimed
        );
    }
    s.complete_batch("j1@1", &["j1", "j3"], at(1), day)
        .await
        .unwrap();
    s.complete_batch("j1@1", &["j2", "j4"], at(2), day)
        .await
        .unwrap();
    let record = raw_item(&s, "batch#j1@1").await.unwrap();
    let AttributeValue::Ss(mut jobs) = record["jobs"].clone() else {
        panic!("jobs is not a string set: {record:?}");
    };
    jobs.sort();
    assert_eq!(jobs, ["j1", "j2", "j3", "j4"]);
    assert_eq!(
        record["ttl"],
        AttributeValue::N((T0.as_secs() + 2 + 86_400).to_string())
    );
    // Past the claim TTL, a copy of any of them finds it done.
    for id in ["j1", "j2", "j3", "j4"] {
        assert_eq!(
            s.claim(id, at(1_000), claim_ttl).await.unwrap(),
            Claim::AlreadyDone,
            "{id}"
        );
    }
}

#[tokio::test]
async fn concurrent_claims_have_one_winner() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let s = Arc::new(store(&config).await);
    let claim_ttl = Duration::from_secs(120);
    let (x, y) = tokio::join!(
        {
            let s = s.clone();
            async move { s.claim("dup", T0, claim_ttl).await }
        },
        {
            let s = s.clone();
            async move {
                s.claim("dup", T0.plus(Duration::from_millis(1)), claim_ttl)
                    .await
            }
        }
    );
    let mut answers = [x.unwrap(), y.unwrap()];
    answers.sort_by_key(|c| matches!(c, Claim::Claimed));
    assert!(
        matches!(answers[0], Claim::InProgress { .. }),
        "{answers:?}"
    );
    assert_eq!(answers[1], Claim::Claimed);
}

#[tokio::test]
async fn corrupt_records_are_reported() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let s = store(&config).await;
    s.client()
        .put_item()
        .table_name(s.table())
        .item("pk", AttributeValue::S("quota".into()))
        .item("doc", AttributeValue::S("{not json".into()))
        .item("version", AttributeValue::N("3".into()))
        .send()
        .await
        .unwrap();
    let e = s.load(RecordKey::Quota).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Corrupt { key: "quota", .. }),
        "{e:?}"
    );
}
