//! The worker's job handling as pure decisions, carried out by [`crate::Worker`] one effect per
//! variant:
//!
//! - [`plan`]: from the claim's answer, the event, the time and the credential's state to a
//!   [`Plan`] (skip a duplicate, give the job back untried, dead-letter it, or call at its slot);
//! - [`at_slot`]: at the slot, whether the call may still go out ([`AtSlot`]);
//! - [`decide`]: from the API's answer to a [`Decision`] (done, re-queue or dead-letter after a
//!   429 or a failure, the credential refused, dead-letter).
//!
//! None of them awaits, reads a clock or touches a port: their tests are plain values.

use std::time::Duration;

use qo_core::job::Origin;
use qo_core::ports::Claim;
use qo_core::retry::Retry;
use qo_core::{JobEvent, Reason, Timestamp, TransportKind};

use crate::config::WorkerConfig;
use crate::credential::BeforeCall;
use crate::excerpt::excerpt;
use crate::http::{ApiResponse, HttpError};
use crate::retry_after::{parse_retry_after, retry_after_or_default};

/// The settings the decisions read, from [`WorkerConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JobPolicy {
    /// `CLAIM_TTL_S`.
    pub claim_ttl: Duration,
    /// `MAX_SLOT_WAIT_MS`.
    pub max_slot_wait: Duration,
    /// `CALL_TOLERANCE_MS`.
    pub call_tolerance: Duration,
    /// `RESPONSE_EXCERPT_BYTES`.
    pub excerpt_bytes: usize,
    /// `MAX_ATTEMPTS`.
    pub max_attempts: u32,
    /// `MAX_THROTTLED`.
    pub max_throttled: u32,
    /// `RETRY_DELAY_S`.
    pub retry_delay: Duration,
}

impl JobPolicy {
    /// The policy of a configuration.
    pub fn of(c: &WorkerConfig) -> JobPolicy {
        JobPolicy {
            claim_ttl: c.claim_ttl,
            max_slot_wait: c.max_slot_wait,
            call_tolerance: c.call_tolerance,
            excerpt_bytes: c.excerpt_bytes,
            max_attempts: c.max_attempts,
            max_throttled: c.max_throttled,
            retry_delay: c.retry_delay,
        }
    }
}

/// What to do with a delivered job before any call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The job was done already (a duplicate delivery): skip it.
    SkipDone,
    /// Another delivery holds the job's claim: re-queue a copy untried, for after that claim
    /// expires (the claim is not this delivery's to drop).
    AfterClaim {
        /// When the other claim was made.
        since: Timestamp,
        /// The re-queue's delay.
        delay: Duration,
        /// [`Reason::ClaimedElsewhere`].
        reason: Reason,
    },
    /// The job cannot succeed: dead-letter it without a call.
    DeadLetter(Reason),
    /// The slot is further ahead than `MAX_SLOT_WAIT_MS`: give the job back untried, at once.
    TooEarly {
        /// How far ahead.
        early: Duration,
        /// [`Reason::TooEarly`].
        reason: Reason,
    },
    /// The key in use was refused and is not re-read yet: drop the claim, re-queue untried
    /// for the re-read.
    CredentialPending {
        /// The refusal's status.
        status: u16,
        /// Until the next re-read.
        delay: Duration,
        /// [`Reason::CredentialPending`].
        reason: Reason,
    },
    /// Wait for the slot and call, re-reading the key first when `reread`.
    Call {
        /// A refused key's re-read is due.
        reread: bool,
    },
}

/// Plans a delivered job: `claim` is the idempotency store's answer at `now`, `credential`
/// what the credential's re-reads allow at `now`.
pub(crate) fn plan(
    claim: Claim,
    ev: &JobEvent,
    now: Timestamp,
    credential: BeforeCall,
    policy: &JobPolicy,
) -> Plan {
    match claim {
        Claim::Claimed => {}
        Claim::AlreadyDone => return Plan::SkipDone,
        Claim::InProgress { since } => {
            // Either another delivery is calling right now (it will finish or re-queue the
            // job itself), or one died mid-call (a Lambda timeout) and its claim stays until
            // it expires. Dropping the event would lose the job in the second case; a copy
            // seen after the claim expires costs at most one more slot in the first, and is
            // dropped then as a duplicate.
            let delay = since
                .plus(policy.claim_ttl)
                .since(now)
                .saturating_add(Duration::from_secs(1));
            let reason = Reason::ClaimedElsewhere { since };
            return Plan::AfterClaim {
                since,
                delay,
                reason,
            };
        }
    }
    if let Err(e) = ev.job.validate() {
        return Plan::DeadLetter(Reason::InvalidJob(e));
    }
    // Dispatch ahead, call on time.
    if ev.slot_at > now.plus(policy.max_slot_wait) {
        let early = ev.slot_at.since(now);
        let reason = Reason::TooEarly {
            early,
            slot: ev.slot_at,
        };
        return Plan::TooEarly { early, reason };
    }
    // The key in use was refused and may have been rotated since: read it again before
    // spending a slot on it (before the wait, so the read does not make the call late).
    match credential {
        BeforeCall::Call => Plan::Call { reread: false },
        BeforeCall::RereadThenCall => Plan::Call { reread: true },
        BeforeCall::Wait { status, until } => Plan::CredentialPending {
            status,
            delay: until.since(now),
            reason: Reason::CredentialPending { status },
        },
    }
}

/// Whether a call at `at` may still go out for its slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AtSlot {
    /// Within `CALL_TOLERANCE_MS` of the slot: call.
    Call,
    /// Past the slot's tolerance: give the job back untried, at once.
    Late {
        /// How late, past the slot.
        late: Duration,
        /// [`Reason::Late`].
        reason: Reason,
    },
}

/// Decides at `at` (the clock read after the last await before the request) whether the call
/// to `slot` is still inside its tolerance.
pub(crate) fn at_slot(slot: Timestamp, at: Timestamp, policy: &JobPolicy) -> AtSlot {
    if at > slot.plus(policy.call_tolerance) {
        let late = at.since(slot);
        AtSlot::Late {
            late,
            reason: Reason::Late { late, slot },
        }
    } else {
        AtSlot::Call
    }
}

/// What to do with the API's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// 2xx: mark the job done.
    Done {
        /// The HTTP status.
        status: u16,
    },
    /// 429: the pacer's signal, not a failed attempt. Record the back-off and the throttle,
    /// then re-queue or give up.
    Throttled(Throttle),
    /// 5xx, 408, a timeout or no connection: count a failure against the circuit (which may
    /// open it), then re-queue or give up.
    Failed(Failure),
    /// 401 or 403: the credential, not the job, was refused.
    CredentialRejected {
        /// The HTTP status.
        status: u16,
    },
    /// Another status, or a job the HTTP layer cannot send: retrying cannot help.
    DeadLetter(Reason),
}

/// A 429's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Throttle {
    /// The back-off taken: the header's, or the default.
    pub retry_after: Duration,
    /// The `Retry-After` header as the API sent it, when it parses.
    pub header: Option<Duration>,
    /// The job re-queued after `retry_after` with its 429 count raised, or given up on at
    /// `MAX_THROTTLED`.
    pub retry: Retry,
    /// [`Reason::Throttled`].
    pub reason: Reason,
}

impl Throttle {
    /// How long every call pauses: the API's `Retry-After`, or nothing without one. A 429
    /// that says nothing of when to come back (a leaky bucket's) is answered by the pace's
    /// decrease, not by stopping every call for a default pause.
    pub fn pause(&self) -> Duration {
        self.header.unwrap_or_default()
    }
}

/// A failed attempt's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The HTTP status; `None` with no answer.
    pub status: Option<u16>,
    /// The job re-queued after `delay` with its attempt raised, or given up on at
    /// `MAX_ATTEMPTS`.
    pub retry: Retry,
    /// `RETRY_DELAY_S`.
    pub delay: Duration,
    /// Why the attempt failed.
    pub reason: Reason,
}

/// Decides what the `answer` to the job from `origin`, received at `now`, makes of it.
pub(crate) fn decide(
    answer: &Result<ApiResponse, HttpError>,
    origin: &Origin,
    now: Timestamp,
    policy: &JobPolicy,
) -> Decision {
    let r = match answer {
        Ok(r) => r,
        Err(e) => return decide_unanswered(e, origin, policy),
    };
    let body = || excerpt(&r.body_start, policy.excerpt_bytes);
    match r.status {
        200..=299 => Decision::Done { status: r.status },
        429 => {
            let header = r.retry_after.as_deref();
            let retry_after = retry_after_or_default(header, now);
            Decision::Throttled(Throttle {
                retry_after,
                header: header.and_then(|h| parse_retry_after(h, now)),
                retry: Retry::after_throttle(origin, policy.max_throttled, retry_after),
                reason: Reason::Throttled { retry_after },
            })
        }
        401 | 403 => Decision::CredentialRejected { status: r.status },
        s if s >= 500 || s == 408 => failed(
            Some(s),
            Reason::ServerError {
                status: s,
                excerpt: body(),
            },
            origin,
            policy,
        ),
        s => Decision::DeadLetter(Reason::FinalStatus {
            status: s,
            excerpt: body(),
        }),
    }
}

/// A call that got no HTTP answer (a failed attempt), or could not be made (dead-lettered).
fn decide_unanswered(e: &HttpError, origin: &Origin, policy: &JobPolicy) -> Decision {
    let (kind, detail) = match e {
        HttpError::Invalid(detail) => {
            let detail = detail.clone();
            return Decision::DeadLetter(Reason::InvalidRequest { detail });
        }
        HttpError::Timeout(d) => (TransportKind::Timeout, d),
        HttpError::Connect(d) => (TransportKind::Connect, d),
        HttpError::Transport(d) => (TransportKind::Other, d),
    };
    let detail = detail.clone();
    failed(None, Reason::Transport { kind, detail }, origin, policy)
}

fn failed(status: Option<u16>, reason: Reason, origin: &Origin, policy: &JobPolicy) -> Decision {
    Decision::Failed(Failure {
        status,
        retry: Retry::after_failure(origin, policy.max_attempts, &reason),
        delay: policy.retry_delay,
        reason,
    })
}

/// What the `Called` observation says of an answer: `Some(status)` for an answer,
/// `Some(None)` for a timeout or no connection, `None` when no call was made.
pub(crate) fn called_status(answer: &Result<ApiResponse, HttpError>) -> Option<Option<u16>> {
    match answer {
        Ok(r) => Some(Some(r.status)),
        Err(e) if e.is_transient() => Some(None),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use qo_core::Job;
    use qo_core::retry::GiveUp;

    use super::*;

    const NOW: Timestamp = Timestamp::from_millis(1_700_000_000_000);

    fn policy() -> JobPolicy {
        JobPolicy {
            claim_ttl: Duration::from_secs(60),
            max_slot_wait: Duration::from_secs(5),
            call_tolerance: Duration::from_millis(5),
            excerpt_bytes: 8,
            max_attempts: 3,
            max_throttled: 10,
            retry_delay: Duration::from_secs(30),
        }
    }

    fn event(path: &str, slot_at: Timestamp) -> JobEvent {
        JobEvent {
            job: Job {
                path: path.into(),
                ..Job::default()
            },
            origin: origin(0, 0),
            slot_at,
            epoch: 1,
            dispatched_at: NOW,
        }
    }

    fn origin(attempt: u32, throttled: u32) -> Origin {
        Origin {
            message_id: "m-1".into(),
            attempt,
            throttled,
            ..Origin::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn answer(status: u16, body: &str) -> Result<ApiResponse, HttpError> {
        Ok(ApiResponse {
            status,
            body_start: body.as_bytes().to_vec(),
            ..ApiResponse::default()
        })
    }

    #[test]
    fn a_claimed_valid_job_on_time_is_called() {
        let ev = event("/x", NOW.plus(ms(4_000)));
        let p = plan(Claim::Claimed, &ev, NOW, BeforeCall::Call, &policy());
        assert_eq!(p, Plan::Call { reread: false });
        let p = plan(
            Claim::Claimed,
            &ev,
            NOW,
            BeforeCall::RereadThenCall,
            &policy(),
        );
        assert_eq!(p, Plan::Call { reread: true });
    }

    #[test]
    fn duplicates_are_skipped_or_requeued_for_after_the_other_claim() {
        let ev = event("/x", NOW);
        let p = plan(Claim::AlreadyDone, &ev, NOW, BeforeCall::Call, &policy());
        assert_eq!(p, Plan::SkipDone);
        let since = NOW.minus(Duration::from_secs(20));
        let p = plan(
            Claim::InProgress { since },
            &ev,
            NOW,
            BeforeCall::Call,
            &policy(),
        );
        assert_eq!(
            p,
            Plan::AfterClaim {
                since,
                delay: Duration::from_secs(41),
                reason: Reason::ClaimedElsewhere { since },
            }
        );
    }

    #[test]
    fn an_invalid_job_is_dead_lettered_before_its_slot_is_looked_at() {
        let ev = event(
            "https://elsewhere.example/x",
            NOW.plus(Duration::from_secs(60)),
        );
        let Plan::DeadLetter(reason) = plan(Claim::Claimed, &ev, NOW, BeforeCall::Call, &policy())
        else {
            panic!("dead-lettered")
        };
        assert!(matches!(reason, Reason::InvalidJob(_)), "{reason:?}");
    }

    #[test]
    fn a_slot_beyond_max_slot_wait_is_given_back() {
        let slot = NOW.plus(ms(5_001));
        let p = plan(
            Claim::Claimed,
            &event("/x", slot),
            NOW,
            BeforeCall::Call,
            &policy(),
        );
        assert_eq!(
            p,
            Plan::TooEarly {
                early: ms(5_001),
                reason: Reason::TooEarly {
                    early: ms(5_001),
                    slot
                },
            }
        );
    }

    #[test]
    fn a_refused_key_not_reread_yet_waits_for_the_reread() {
        let credential = BeforeCall::Wait {
            status: 401,
            until: NOW.plus(Duration::from_secs(7)),
        };
        let p = plan(
            Claim::Claimed,
            &event("/x", NOW),
            NOW,
            credential,
            &policy(),
        );
        assert_eq!(
            p,
            Plan::CredentialPending {
                status: 401,
                delay: Duration::from_secs(7),
                reason: Reason::CredentialPending { status: 401 },
            }
        );
    }

    #[test]
    fn lateness_is_past_the_tolerance_only() {
        assert_eq!(at_slot(NOW, NOW.plus(ms(5)), &policy()), AtSlot::Call);
        assert_eq!(
            at_slot(NOW, NOW.plus(ms(6)), &policy()),
            AtSlot::Late {
                late: ms(6),
                reason: Reason::Late {
                    late: ms(6),
                    slot: NOW
                },
            }
        );
    }

    #[test]
    fn a_2xx_is_done_and_another_4xx_is_final_with_a_bounded_excerpt() {
        let o = origin(0, 0);
        assert_eq!(
            decide(&answer(204, ""), &o, NOW, &policy()),
            Decision::Done { status: 204 }
        );
        let d = decide(&answer(404, "no such item"), &o, NOW, &policy());
        assert_eq!(
            d,
            Decision::DeadLetter(Reason::FinalStatus {
                status: 404,
                excerpt: "no such".into()
            })
        );
        for status in [401, 403] {
            assert_eq!(
                decide(&answer(status, ""), &o, NOW, &policy()),
                Decision::CredentialRejected { status }
            );
        }
    }

    #[test]
    fn a_5xx_or_408_is_a_failed_attempt_and_gives_up_at_max_attempts() {
        for status in [500, 503, 408] {
            let d = decide(&answer(status, ""), &origin(0, 4), NOW, &policy());
            let reason = Reason::ServerError {
                status,
                excerpt: String::new(),
            };
            assert_eq!(
                d,
                Decision::Failed(Failure {
                    status: Some(status),
                    retry: Retry::Requeue(origin(1, 4)),
                    delay: Duration::from_secs(30),
                    reason,
                }),
                "{status}"
            );
        }
        let Decision::Failed(Failure { retry, .. }) =
            decide(&answer(502, ""), &origin(2, 0), NOW, &policy())
        else {
            panic!("failed")
        };
        let Retry::DeadLetter(o, GiveUp::Attempts { attempts, last }) = retry else {
            panic!("the third attempt gives up: {retry:?}")
        };
        assert_eq!((o.attempt, attempts), (3, 3));
        assert_eq!(last.to_string(), "HTTP 502");
    }

    #[test]
    fn no_answer_is_a_failed_attempt_and_an_unsendable_job_is_final() {
        let timeout = Err(HttpError::Timeout("read".into()));
        let Decision::Failed(Failure { status, reason, .. }) =
            decide(&timeout, &origin(0, 0), NOW, &policy())
        else {
            panic!("failed")
        };
        assert_eq!(status, None);
        assert_eq!(reason.kind(), qo_core::ReasonKind::Transport);
        assert_eq!(reason.to_string(), "timed out: read");
        assert_eq!(called_status(&timeout), Some(None));
        let invalid = Err(HttpError::Invalid("bad header value".into()));
        assert_eq!(
            decide(&invalid, &origin(0, 0), NOW, &policy()),
            Decision::DeadLetter(Reason::InvalidRequest {
                detail: "bad header value".into()
            })
        );
        assert_eq!(called_status(&invalid), None);
    }

    #[test]
    fn a_429_keeps_the_attempt_and_has_its_own_bound() {
        let throttled = Ok(ApiResponse {
            status: 429,
            retry_after: Some("3".into()),
            ..ApiResponse::default()
        });
        let d = decide(&throttled, &origin(2, 0), NOW, &policy());
        assert_eq!(
            d,
            Decision::Throttled(Throttle {
                retry_after: Duration::from_secs(3),
                header: Some(Duration::from_secs(3)),
                retry: Retry::Requeue(origin(2, 1)),
                reason: Reason::Throttled {
                    retry_after: Duration::from_secs(3)
                },
            })
        );
        let Decision::Throttled(Throttle { retry, .. }) =
            decide(&throttled, &origin(0, 9), NOW, &policy())
        else {
            panic!("throttled")
        };
        assert!(
            matches!(
                retry,
                Retry::DeadLetter(_, GiveUp::Throttled { times: 10, .. })
            ),
            "{retry:?}"
        );
    }
}
