//! The retry policy: what becomes of a job that was tried and not done. A failed attempt
//! (5xx, timeout, no connection) raises the job's attempt count, a 429 its throttle count;
//! each has its own bound (the worker's `MAX_ATTEMPTS` and `MAX_THROTTLED`), past which the
//! job is given up on ([`GiveUp`]) and dead-lettered instead of re-queued ([`Retry`]).

use std::time::Duration;

use crate::job::Origin;
use crate::ports::{DeadLetter, JobSink, QueueError};
pub use crate::reason::GiveUp;
use crate::reason::Reason;

/// What becomes of a job that was tried and not done: back on a queue with its new origin,
/// or dead-lettered past its bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Re-queue it with this origin.
    Requeue(Origin),
    /// Dead-letter it with this origin, for this reason.
    DeadLetter(Origin, GiveUp),
}

impl Retry {
    /// After a failed attempt (`why`): the attempt count raised; dead-lettered when it reaches
    /// `max_attempts`. The 429 count is kept.
    pub fn after_failure(origin: &Origin, max_attempts: u32, why: &Reason) -> Retry {
        let next = Origin {
            attempt: origin.attempt.saturating_add(1),
            ..origin.clone()
        };
        Retry::bounded(
            next,
            |o| o.attempt,
            max_attempts,
            |attempts| GiveUp::Attempts {
                attempts,
                last: Box::new(why.clone()),
            },
        )
    }

    /// After a 429 whose retry delay is `retry_after`: the attempt count unchanged, the 429
    /// count raised; dead-lettered when that reaches `max_throttled`.
    pub fn after_throttle(origin: &Origin, max_throttled: u32, retry_after: Duration) -> Retry {
        let next = Origin {
            throttled: origin.throttled.saturating_add(1),
            ..origin.clone()
        };
        Retry::bounded(
            next,
            |o| o.throttled,
            max_throttled,
            |times| GiveUp::Throttled {
                times,
                last_retry_after: retry_after,
            },
        )
    }

    /// The same retry, naming `function` (the worker function that just tried the job and had
    /// it answered 429 or failed) in the re-queued origin, so the next dispatch goes through
    /// another function of the pool. `None` (a worker that does not know its name) keeps the
    /// origin as it is.
    pub fn tried_by(self, function: Option<&str>) -> Retry {
        match (self, function) {
            (Retry::Requeue(origin), Some(f)) => Retry::Requeue(Origin {
                function: Some(f.to_string()),
                ..origin
            }),
            (retry, _) => retry,
        }
    }

    /// Re-queues `next` unless its `count` reached `max`: then it is dead-lettered with the
    /// reason `give_up` makes of the count.
    fn bounded(
        next: Origin,
        count: impl Fn(&Origin) -> u32,
        max: u32,
        give_up: impl FnOnce(u32) -> GiveUp,
    ) -> Retry {
        let n = count(&next);
        if n >= max {
            Retry::DeadLetter(next, give_up(n))
        } else {
            Retry::Requeue(next)
        }
    }

    /// Carries the choice out: re-queues `body` after `delay`, or dead-letters it with the
    /// reason. Returns the reason when it was dead-lettered.
    pub async fn apply(
        self,
        sink: &(impl JobSink + ?Sized),
        body: &str,
        delay: Duration,
    ) -> Result<Option<GiveUp>, QueueError> {
        match self {
            Retry::Requeue(origin) => {
                sink.requeue(body, &origin, delay).await?;
                Ok(None)
            }
            Retry::DeadLetter(origin, why) => {
                sink.dead_letter(DeadLetter {
                    body: body.to_string(),
                    reason: Reason::GaveUp(why.clone()),
                    origin,
                })
                .await?;
                Ok(Some(why))
            }
        }
    }
}

/// Re-queues a job with its attempt count raised, or dead-letters it past `max_attempts`.
/// Returns true when it was re-queued.
pub async fn requeue_or_dead_letter(
    sink: &(impl JobSink + ?Sized),
    body: &str,
    origin: &Origin,
    delay: Duration,
    max_attempts: u32,
    why: &Reason,
) -> Result<bool, QueueError> {
    let given_up = Retry::after_failure(origin, max_attempts, why)
        .apply(sink, body, delay)
        .await?;
    Ok(given_up.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(attempt: u32, throttled: u32) -> Origin {
        Origin {
            message_id: "m-1".into(),
            attempt,
            throttled,
            ..Origin::default()
        }
    }

    fn http_503() -> Reason {
        Reason::ServerError {
            status: 503,
            excerpt: String::new(),
        }
    }

    #[test]
    fn a_requeue_names_the_function_that_tried_it() {
        let r = Retry::after_throttle(&origin(0, 0), 5, Duration::from_secs(1)).tried_by(Some("b"));
        assert!(
            matches!(&r, Retry::Requeue(o) if o.function.as_deref() == Some("b")),
            "{r:?}"
        );
        let kept = Retry::after_failure(
            &Origin {
                function: Some("a".into()),
                ..origin(0, 0)
            },
            5,
            &http_503(),
        )
        .tried_by(None);
        assert!(
            matches!(&kept, Retry::Requeue(o) if o.function.as_deref() == Some("a")),
            "{kept:?}"
        );
    }

    #[test]
    fn a_failure_raises_the_attempt_and_gives_up_at_max_attempts() {
        assert_eq!(
            Retry::after_failure(&origin(3, 7), 5, &http_503()),
            Retry::Requeue(origin(4, 7))
        );
        let Retry::DeadLetter(o, why) = Retry::after_failure(&origin(4, 7), 5, &http_503()) else {
            panic!("the fifth attempt gives up")
        };
        assert_eq!(o, origin(5, 7));
        assert_eq!(why.to_string(), "gave up after 5 attempts; last: HTTP 503");
    }

    #[test]
    fn a_throttle_keeps_the_attempt_and_has_a_bound_of_its_own() {
        assert_eq!(
            Retry::after_throttle(&origin(4, 0), 100, Duration::from_secs(3)),
            Retry::Requeue(origin(4, 1)),
            "a 429 is not a failed attempt, even one short of MAX_ATTEMPTS"
        );
        let Retry::DeadLetter(o, why) =
            Retry::after_throttle(&origin(0, 99), 100, Duration::from_secs(3))
        else {
            panic!("the 100th 429 gives up")
        };
        assert_eq!(o, origin(0, 100));
        assert_eq!(
            why,
            GiveUp::Throttled {
                times: 100,
                last_retry_after: Duration::from_secs(3)
            }
        );
        assert_eq!(
            why.to_string(),
            "answered HTTP 429 100 times (MAX_THROTTLED); last retry after 3000 ms"
        );
    }
}
