//! 401 and 403 mean the credential, not the job: no job is dead-lettered, calls back off
//! (the control record, with a typed reason), and a rotated key is picked up by a bounded
//! re-read. In memory under tokio's paused time: an API that accepts one key, a secret store
//! whose value the test rotates.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{config, job, rig};
use async_trait::async_trait;
use qo_core::job::Job;
use qo_core::secret::{ApiKey, KeySource};
use qo_core::{BackoffReason, Clock, Observation, Timestamp, TokioClock};
use qo_worker::{
    ApiResponse, CredentialError, CredentialSource, HttpCall, HttpError, Outcome, WorkerError,
};

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

/// An API that answers 200 to one key and `refusal` to any other; records the key of each
/// call.
struct KeyedApi {
    good: String,
    refusal: u16,
    key: Mutex<Option<String>>,
    calls: Mutex<Vec<Option<String>>>,
}

impl KeyedApi {
    fn new(good: &str, refusal: u16, initial: &str) -> Self {
        KeyedApi {
            good: good.to_string(),
            refusal,
            key: Mutex::new(Some(initial.to_string())),
            calls: Mutex::default(),
        }
    }

    fn calls(&self) -> Vec<Option<String>> {
        self.calls.lock().expect("lock").clone()
    }
}

#[async_trait]
impl HttpCall for KeyedApi {
    async fn call(&self, _job: &Job) -> Result<ApiResponse, HttpError> {
        let key = self.key.lock().expect("lock").clone();
        self.calls.lock().expect("lock").push(key.clone());
        let status = if key.as_deref() == Some(self.good.as_str()) {
            200
        } else {
            self.refusal
        };
        Ok(ApiResponse::status(status))
    }

    async fn health(&self) -> Result<ApiResponse, HttpError> {
        Ok(ApiResponse::status(200))
    }

    fn set_api_key(&self, key: Option<&str>) -> Result<bool, WorkerError> {
        let mut current = self.key.lock().expect("lock");
        let next = key.map(str::to_string);
        let changed = *current != next;
        *current = next;
        Ok(changed)
    }
}

/// A secret store: the test rotates its value; counts reads.
#[derive(Default)]
struct Secret {
    value: Mutex<String>,
    reads: AtomicUsize,
}

#[async_trait]
impl CredentialSource for Secret {
    async fn load(&self) -> Result<Option<ApiKey>, CredentialError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let v = self.value.lock().expect("lock").clone();
        Ok(Some(ApiKey::new(v, KeySource::Secret("api-key".into()))))
    }
}

type KeyedRig = crate::support::Rig<Arc<KeyedApi>>;

fn requeued_untried(r: &KeyedRig) -> Vec<(u32, Duration)> {
    r.sink
        .requeues()
        .iter()
        .map(|q| (q.origin.attempt, q.delay))
        .collect()
}

/// A worker at `T0` (call tolerance 5 ms, then `extra`) over an API that accepts `new-key`,
/// answers `refusal` to any other and holds `old-key`, and a secret store that holds `stored`.
fn keyed_rig(
    refusal: u16,
    stored: &str,
    extra: &[(&str, &str)],
) -> (KeyedRig, Arc<KeyedApi>, Arc<Secret>) {
    let clock = TokioClock::starting_at(T0);
    let api = Arc::new(KeyedApi::new("new-key", refusal, "old-key"));
    let secret = Arc::new(Secret::default());
    *secret.value.lock().expect("lock") = stored.to_string();
    let mut vars = vec![("CALL_TOLERANCE_MS", "5")];
    vars.extend_from_slice(extra);
    let mut r = rig(config("http://api.test/v1", &vars), Arc::clone(&api), clock);
    r.worker = r
        .worker
        .with_credential_source(Arc::clone(&secret) as Arc<dyn CredentialSource>);
    (r, api, secret)
}

/// Handles the job with id `id` on `/x`, message `message_id`, slot `slot_at`.
async fn handle_job(r: &KeyedRig, id: &str, message_id: &str, slot_at: Timestamp) -> Outcome {
    let body = format!(r#"{{"id":"{id}","path":"/x"}}"#);
    r.handle(job(&body, message_id, slot_at, 0)).await
}

/// Job `a`'s outcome when `status` refused the key: given back untried after `backoff_ms`.
fn a_rejected(status: u16, key_changed: bool, backoff_ms: u64) -> Outcome {
    Outcome::CredentialRejected {
        job_id: "a".into(),
        status,
        key_changed,
        backoff_ms,
        requeued: true,
    }
}

async fn refused_then_rotated(refusal: u16) {
    let (r, api, secret) = keyed_rig(refusal, "old-key", &[("CREDENTIAL_REREAD_S", "60")]);

    // 1. The key is refused; the re-read finds the same key: back off until the next re-read.
    let out = handle_job(&r, "a", "m-a", T0).await;
    assert_eq!(out, a_rejected(refusal, false, 60_000));
    assert_eq!(secret.reads.load(Ordering::SeqCst), 1);
    let control = r.control().await.value;
    assert_eq!(
        control.backoff_until,
        Some(T0.plus(Duration::from_secs(60)))
    );
    assert_eq!(
        control.backoff_reason,
        Some(BackoffReason::CredentialRejected { status: refusal })
    );
    assert!(r.seen.all().contains(&Observation::CredentialRejected {
        job_id: "a".into(),
        status: refusal,
        key_changed: false,
    }));
    // Untried: the attempt count stays 0.
    assert_eq!(requeued_untried(&r), vec![(0, Duration::from_secs(60))]);

    // 2. The secret is rotated. A job delivered 10 s later (dispatched before the back-off was
    //    seen) is not called on the refused key, and the store is not read again yet.
    *secret.value.lock().expect("lock") = "new-key".to_string();
    tokio::time::advance(Duration::from_secs(10)).await;
    let t10 = r.clock.now();
    let out = handle_job(&r, "b", "m-b", t10).await;
    assert_eq!(
        out,
        Outcome::CredentialPending {
            job_id: "b".into(),
            status: refusal,
            backoff_ms: 50_000,
            requeued: true,
        }
    );
    assert_eq!(
        api.calls().len(),
        1,
        "no call on a refused key before its re-read"
    );
    assert_eq!(
        secret.reads.load(Ordering::SeqCst),
        1,
        "re-reads are bounded"
    );

    // 3. After the interval, the next delivery re-reads first and calls with the new key; the
    //    other job succeeds too. Nothing was dead-lettered.
    tokio::time::advance(Duration::from_secs(50)).await;
    let t60 = r.clock.now();
    for (id, m) in [("a", "m-a2"), ("b", "m-b2")] {
        let out = handle_job(&r, id, m, t60).await;
        assert!(
            matches!(&out, Outcome::Succeeded { job_id, status: 200, .. } if job_id == id),
            "{out:?}"
        );
    }
    assert_eq!(secret.reads.load(Ordering::SeqCst), 2);
    assert_eq!(
        api.calls(),
        vec![
            Some("old-key".to_string()),
            Some("new-key".to_string()),
            Some("new-key".to_string())
        ]
    );
    assert!(
        r.sink.dead_letters().is_empty(),
        "{:?}",
        r.sink.dead_letters()
    );
}

#[tokio::test(start_paused = true)]
async fn a_403_then_a_rotated_key_dead_letters_nothing_and_the_jobs_succeed() {
    refused_then_rotated(403).await;
}

#[tokio::test(start_paused = true)]
async fn a_401_then_a_rotated_key_dead_letters_nothing_and_the_jobs_succeed() {
    refused_then_rotated(401).await;
}

#[tokio::test(start_paused = true)]
async fn an_environment_with_a_stale_key_picks_up_the_rotation_without_a_back_off() {
    // Another environment already rotated: this one still holds the old key, the store has the
    // new one. The first refusal re-reads, sees a change, and gives the job back at once.
    let (r, _, _) = keyed_rig(403, "new-key", &[]);
    let out = handle_job(&r, "a", "m-a", T0).await;
    assert_eq!(out, a_rejected(403, true, 0));
    let control = r.control().await.value;
    assert_eq!(
        control.backoff_until, None,
        "no back-off for a key that changed"
    );
    assert_eq!(requeued_untried(&r), vec![(0, Duration::ZERO)]);
    let out = handle_job(&r, "a", "m-a2", T0).await;
    assert!(matches!(out, Outcome::Succeeded { .. }), "{out:?}");
    assert!(r.sink.dead_letters().is_empty());
}
