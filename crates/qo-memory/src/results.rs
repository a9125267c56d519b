//! [`MemoryResults`]: the result destinations in memory ([`ResultSink`]), as the AWS adapter
//! delivers: a result larger than [`MAX_INLINE_RESULT_BYTES`] has its body put in a bucket
//! first and carries its location. Refusals can be injected (a number of them, or a seeded
//! rate), as a destination that denies access or throttles would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use qo_core::ports::{Delivered, ResultError, ResultSink};
use qo_core::result::{Destination, JobResult, MAX_INLINE_RESULT_BYTES};
use qo_core::{Clock, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The bucket large bodies go to.
pub const LOCAL_BUCKET: &str = "qo-local-results";

/// One delivery: the destination's name and the result as it was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveredResult {
    /// The destination's name.
    pub destination: String,
    /// The result, its body replaced by its location when it was too large.
    pub result: JobResult,
}

#[derive(Default)]
struct State {
    delivered: Vec<DeliveredResult>,
    bucket: BTreeMap<String, String>,
    refuse_next: u32,
    refuse_rate: f64,
    rng: Option<StdRng>,
    refused: u64,
    outage: Option<(Arc<dyn Clock>, Timestamp)>,
}

/// Result destinations in memory. Clones share the state.
#[derive(Clone, Default)]
pub struct MemoryResults {
    state: Arc<Mutex<State>>,
}

impl MemoryResults {
    /// Destinations that take every result.
    pub fn new() -> Self {
        MemoryResults::default()
    }

    /// Destinations that refuse a delivery with probability `rate`, drawn from `seed`.
    pub fn with_refuse_rate(seed: u64, rate: f64) -> Self {
        let r = MemoryResults::default();
        {
            let mut st = r.lock();
            st.refuse_rate = rate;
            st.rng = Some(StdRng::seed_from_u64(seed));
        }
        r
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses the next `n` deliveries (0: none), as a destination that denies access for a
    /// while would.
    pub fn refuse_next(&self, n: u32) {
        self.lock().refuse_next = n;
    }

    /// Refuses every delivery until `until` on `clock`, as a destination down for a while
    /// (a deleted queue recreated, a policy fixed, a throttled topic) would.
    pub fn refuse_until(&self, clock: Arc<dyn Clock>, until: Timestamp) {
        self.lock().outage = Some((clock, until));
    }

    /// Every delivery so far, in order.
    pub fn delivered(&self) -> Vec<DeliveredResult> {
        self.lock().delivered.clone()
    }

    /// Deliveries refused so far.
    pub fn refused(&self) -> u64 {
        self.lock().refused
    }

    /// The object at `location` (`s3://bucket/key`) in the bucket.
    pub fn object(&self, location: &str) -> Option<String> {
        let key = location.strip_prefix(&format!("s3://{LOCAL_BUCKET}/"))?;
        self.lock().bucket.get(key).cloned()
    }
}

#[async_trait]
impl ResultSink for MemoryResults {
    async fn deliver(
        &self,
        to: &Destination,
        result: &JobResult,
    ) -> Result<Delivered, ResultError> {
        let mut st = self.lock();
        let rate = st.refuse_rate;
        let drawn = rate > 0.0 && st.rng.as_mut().is_some_and(|r| r.random::<f64>() < rate);
        let down = (st.outage.as_ref()).is_some_and(|(clock, until)| clock.now() < *until);
        if st.refuse_next > 0 || drawn || down {
            st.refuse_next = st.refuse_next.saturating_sub(1);
            st.refused += 1;
            return Err(ResultError::Refused {
                op: "deliver",
                detail: format!("destination `{}` refused the result", to.name),
            });
        }
        let sent = stow(&mut st, result);
        let delivered = Delivered {
            body_location: sent.body_location.clone(),
        };
        st.delivered.push(DeliveredResult {
            destination: to.name.clone(),
            result: sent,
        });
        Ok(delivered)
    }

    async fn stow(&self, result: &JobResult) -> Result<JobResult, ResultError> {
        Ok(stow(&mut self.lock(), result))
    }
}

/// `result` as it can be sent: whole, or over [`MAX_INLINE_RESULT_BYTES`] with its body in
/// the bucket (keyed by its `result_id`, so a second stow overwrites) and its location.
fn stow(st: &mut State, result: &JobResult) -> JobResult {
    let mut sent = result.clone();
    if result.to_json().len() > MAX_INLINE_RESULT_BYTES {
        let key = format!("results/{}", result.result_id);
        st.bucket
            .insert(key.clone(), result.body.clone().unwrap_or_default());
        sent.body = None;
        sent.body_location = Some(format!("s3://{LOCAL_BUCKET}/{key}"));
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use qo_core::result::{Destinations, ResultOutcome};

    fn result(body: &str) -> JobResult {
        JobResult {
            status: Some(200),
            body: Some(body.to_string()),
            ..JobResult::new("j", ResultOutcome::Succeeded)
        }
    }

    #[tokio::test]
    async fn a_large_body_goes_to_the_bucket_and_refusals_are_injected() {
        let d = Destinations::parse("arn:aws:sqs:us-east-1:1:orders", "").expect("list");
        let to = &d.list()[0];
        let r = MemoryResults::new();
        r.deliver(to, &result("small")).await.expect("delivered");
        let big = "x".repeat(600 * 1024);
        let out = r.deliver(to, &result(&big)).await.expect("delivered");
        let location = out.body_location.expect("offloaded");
        assert_eq!(r.object(&location).map(|b| b.len()), Some(big.len()));
        let sent = r.delivered();
        assert_eq!(sent[0].result.body.as_deref(), Some("small"));
        assert_eq!(sent[1].result.body, None);
        assert_eq!(
            sent[1].result.body_location.as_deref(),
            Some(location.as_str())
        );
        r.refuse_next(1);
        assert!(r.deliver(to, &result("x")).await.is_err());
        assert!(r.deliver(to, &result("x")).await.is_ok());
        assert_eq!((r.refused(), r.delivered().len()), (1, 3));
    }
}
