//! [`Reason`]: why a job was re-queued or dead-lettered, as one type from the worker's and the
//! orchestrator's decisions to the observations, the dead-letter queue's `qo-reason` attribute,
//! the metrics and the local report.
//!
//! Its [`Display`](std::fmt::Display) is the text those places have always carried (logs, the
//! `qo-reason` attribute, the worker's JSON outcome); [`Reason::kind`] groups like reasons
//! without parsing that text.

use std::fmt;
use std::time::Duration;

use crate::job::JobError;
use crate::time::Timestamp;

/// Why a job was re-queued or dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The worker woke past its slot plus `CALL_TOLERANCE_MS`: a call now would fall outside
    /// the quota the orchestrator counted it in. Given back untried.
    Late {
        /// How late, past the slot.
        late: Duration,
        /// The slot.
        slot: Timestamp,
    },
    /// The slot was further ahead than `MAX_SLOT_WAIT_MS` (clock skew?). Given back untried.
    TooEarly {
        /// How far ahead.
        early: Duration,
        /// The slot.
        slot: Timestamp,
    },
    /// A job of a batch whose slot and call the invocation's remaining time could not cover:
    /// given back untried at once.
    OutOfTime {
        /// How much time was missing.
        short: Duration,
    },
    /// A job of a batch whose slot fell inside the back-off a sibling's 429 asked for: given
    /// back untried for when the back-off ends.
    HeldBack {
        /// What was left of the back-off.
        backoff: Duration,
    },
    /// Another delivery holds the job's claim (a duplicate delivery, or one that died
    /// mid-call). Re-queued untried for after the claim.
    ClaimedElsewhere {
        /// When the other claim was made.
        since: Timestamp,
    },
    /// The API answered 429.
    Throttled {
        /// The retry delay taken (Retry-After, or the default).
        retry_after: Duration,
    },
    /// The API answered 5xx or 408: a failed attempt.
    ServerError {
        /// The HTTP status.
        status: u16,
        /// A bounded excerpt of the body (empty when it was).
        excerpt: String,
    },
    /// No HTTP answer: a timeout, or no connection: a failed attempt.
    Transport {
        /// Which failure.
        kind: TransportKind,
        /// The transport's message.
        detail: String,
    },
    /// The API answered 401 or 403: the credential, not the job, was refused. Re-queued
    /// untried.
    CredentialRefused {
        /// The HTTP status.
        status: u16,
    },
    /// The key in use was refused recently and is not re-read yet: re-queued untried, without
    /// a call.
    CredentialPending {
        /// The refusal's HTTP status.
        status: u16,
    },
    /// The job is not a valid job (a malformed body, a path that is not relative, a header
    /// a job may not set): dead-lettered.
    InvalidJob(JobError),
    /// The job cannot be turned into a request to the API (the HTTP layer refused it):
    /// dead-lettered.
    InvalidRequest {
        /// What is wrong.
        detail: String,
    },
    /// The API answered a status that retrying cannot change (4xx other than 401, 403, 408
    /// and 429): dead-lettered.
    FinalStatus {
        /// The HTTP status.
        status: u16,
        /// A bounded excerpt of the body (empty when it was).
        excerpt: String,
    },
    /// Past the attempt or the 429 bound: dead-lettered.
    GaveUp(GiveUp),
    /// The job succeeded (or was given up on) but its result could not be delivered to its
    /// destination: the result itself goes to the dead-letter queue. The API is not called
    /// again.
    ResultUndelivered {
        /// The destination's name.
        destination: String,
        /// What the destination's service answered.
        detail: String,
    },
    /// The user's code around the call decided a 2xx answer is a failure: dead-lettered, not
    /// retried (the API did the work).
    HandlerFailed {
        /// The user's reason.
        detail: String,
    },
}

/// Which transport failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransportKind {
    /// No answer within the connect or read timeout.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// The connection broke, or another transport failure.
    Other,
}

impl TransportKind {
    /// A short label.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Timeout => "timed out",
            TransportKind::Connect => "connection failed",
            TransportKind::Other => "transport failed",
        }
    }
}

/// A reason's kind, for grouping (metrics, the local report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReasonKind {
    /// [`Reason::Late`].
    Late,
    /// [`Reason::TooEarly`].
    TooEarly,
    /// [`Reason::OutOfTime`].
    OutOfTime,
    /// [`Reason::HeldBack`].
    HeldBack,
    /// [`Reason::ClaimedElsewhere`].
    ClaimedElsewhere,
    /// [`Reason::Throttled`].
    Throttled,
    /// [`Reason::ServerError`].
    ServerError,
    /// [`Reason::Transport`].
    Transport,
    /// [`Reason::CredentialRefused`].
    CredentialRefused,
    /// [`Reason::CredentialPending`].
    CredentialPending,
    /// [`Reason::InvalidJob`] and [`Reason::InvalidRequest`].
    InvalidJob,
    /// [`Reason::FinalStatus`].
    FinalStatus,
    /// [`Reason::ResultUndelivered`].
    ResultUndelivered,
    /// [`Reason::HandlerFailed`].
    HandlerFailed,
    /// [`GiveUp::Attempts`].
    GaveUpAttempts,
    /// [`GiveUp::Throttled`].
    GaveUpThrottled,
}

impl ReasonKind {
    /// A short label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonKind::Late => "late",
            ReasonKind::TooEarly => "too early",
            ReasonKind::OutOfTime => "out of time",
            ReasonKind::HeldBack => "held back",
            ReasonKind::ClaimedElsewhere => "claimed elsewhere",
            ReasonKind::Throttled => "throttled",
            ReasonKind::ServerError => "server error",
            ReasonKind::Transport => "transport",
            ReasonKind::CredentialRefused => "credential refused",
            ReasonKind::CredentialPending => "credential pending",
            ReasonKind::InvalidJob => "invalid job",
            ReasonKind::FinalStatus => "final HTTP status",
            ReasonKind::ResultUndelivered => "result undelivered",
            ReasonKind::HandlerFailed => "failed by the answer handler",
            ReasonKind::GaveUpAttempts => "gave up after MAX_ATTEMPTS",
            ReasonKind::GaveUpThrottled => "gave up after MAX_THROTTLED",
        }
    }
}

impl fmt::Display for ReasonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Reason {
    /// Its kind, for grouping.
    pub fn kind(&self) -> ReasonKind {
        match self {
            Reason::Late { .. } => ReasonKind::Late,
            Reason::TooEarly { .. } => ReasonKind::TooEarly,
            Reason::OutOfTime { .. } => ReasonKind::OutOfTime,
            Reason::HeldBack { .. } => ReasonKind::HeldBack,
            Reason::ClaimedElsewhere { .. } => ReasonKind::ClaimedElsewhere,
            Reason::Throttled { .. } => ReasonKind::Throttled,
            Reason::ServerError { .. } => ReasonKind::ServerError,
            Reason::Transport { .. } => ReasonKind::Transport,
            Reason::CredentialRefused { .. } => ReasonKind::CredentialRefused,
            Reason::CredentialPending { .. } => ReasonKind::CredentialPending,
            Reason::InvalidJob(_) | Reason::InvalidRequest { .. } => ReasonKind::InvalidJob,
            Reason::FinalStatus { .. } => ReasonKind::FinalStatus,
            Reason::ResultUndelivered { .. } => ReasonKind::ResultUndelivered,
            Reason::HandlerFailed { .. } => ReasonKind::HandlerFailed,
            Reason::GaveUp(GiveUp::Attempts { .. }) => ReasonKind::GaveUpAttempts,
            Reason::GaveUp(GiveUp::Throttled { .. }) => ReasonKind::GaveUpThrottled,
        }
    }

    /// Whether the printed text starts with `prefix`.
    pub fn starts_with(&self, prefix: &str) -> bool {
        self.to_string().starts_with(prefix)
    }

    /// Whether the printed text contains `part`.
    pub fn contains(&self, part: &str) -> bool {
        self.to_string().contains(part)
    }
}

/// `HTTP <status>`, or `HTTP <status>: <excerpt>` when there is one.
fn http(f: &mut fmt::Formatter<'_>, status: u16, excerpt: &str) -> fmt::Result {
    if excerpt.is_empty() {
        write!(f, "HTTP {status}")
    } else {
        write!(f, "HTTP {status}: {excerpt}")
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Late { late, slot } => write!(
                f,
                "arrived {} ms after its slot {slot}: too late to call inside the quota",
                late.as_millis()
            ),
            Reason::TooEarly { early, slot } => write!(
                f,
                "slot {slot} is {} ms ahead, beyond MAX_SLOT_WAIT_MS: clock skew?",
                early.as_millis()
            ),
            Reason::OutOfTime { short } => write!(
                f,
                "the invocation's remaining time was {} ms short of this job's slot and call",
                short.as_millis()
            ),
            Reason::HeldBack { backoff } => write!(
                f,
                "held back: a job of the same batch was answered 429; {} ms of its back-off left",
                backoff.as_millis()
            ),
            Reason::ClaimedElsewhere { since } => {
                write!(f, "claimed by another delivery since {since}")
            }
            Reason::Throttled { retry_after } => {
                write!(f, "HTTP 429: retry after {} ms", retry_after.as_millis())
            }
            Reason::ServerError { status, excerpt } | Reason::FinalStatus { status, excerpt } => {
                http(f, *status, excerpt)
            }
            Reason::Transport { kind, detail } => write!(f, "{}: {detail}", kind.as_str()),
            Reason::CredentialRefused { status } => {
                write!(f, "HTTP {status}: credential refused")
            }
            Reason::CredentialPending { status } => write!(
                f,
                "HTTP {status}: the credential was refused; no call before its re-read"
            ),
            Reason::InvalidJob(e) => write!(f, "{e}"),
            Reason::HandlerFailed { detail } => {
                write!(f, "the answer handler failed the job after a 2xx: {detail}")
            }
            Reason::ResultUndelivered {
                destination,
                detail,
            } => write!(
                f,
                "the result could not be delivered to `{destination}`: {detail} (the body is the \
                 result; the API was not called again)"
            ),
            Reason::InvalidRequest { detail } => write!(f, "invalid request: {detail}"),
            Reason::GaveUp(g) => write!(f, "{g}"),
        }
    }
}

impl From<GiveUp> for Reason {
    fn from(g: GiveUp) -> Reason {
        Reason::GaveUp(g)
    }
}

impl From<JobError> for Reason {
    fn from(e: JobError) -> Reason {
        Reason::InvalidJob(e)
    }
}

/// A reason equals the text it prints.
impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        let text = self.to_string();
        text == other
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        let text = self.to_string();
        text == **other
    }
}

impl PartialEq<String> for Reason {
    fn eq(&self, other: &String) -> bool {
        let text = self.to_string();
        text == **other
    }
}

/// Why a job is given up on and dead-lettered instead of re-queued. A failed attempt and a
/// 429 have bounds of their own: a 429 is the pacer's signal, not the job's failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// The job failed `MAX_ATTEMPTS` times (5xx, timeout, no connection).
    Attempts {
        /// Attempts made, this one included.
        attempts: u32,
        /// Why the last one failed.
        last: Box<Reason>,
    },
    /// The API answered 429 `MAX_THROTTLED` times.
    Throttled {
        /// 429s answered, this one included.
        times: u32,
        /// The last 429's retry delay.
        last_retry_after: Duration,
    },
}

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GiveUp::Attempts { attempts, last } => {
                write!(f, "gave up after {attempts} attempts; last: {last}")
            }
            GiveUp::Throttled {
                times,
                last_retry_after,
            } => write!(
                f,
                "answered HTTP 429 {times} times (MAX_THROTTLED); last retry after {} ms",
                last_retry_after.as_millis()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT: Timestamp = Timestamp::from_millis(1_700_000_000_000);

    #[test]
    fn prints_the_text_the_worker_always_printed() {
        let cases: Vec<(Reason, String)> = vec![
            (
                Reason::Late {
                    late: Duration::from_millis(12),
                    slot: SLOT,
                },
                format!("arrived 12 ms after its slot {SLOT}: too late to call inside the quota"),
            ),
            (
                Reason::TooEarly {
                    early: Duration::from_millis(90_000),
                    slot: SLOT,
                },
                format!("slot {SLOT} is 90000 ms ahead, beyond MAX_SLOT_WAIT_MS: clock skew?"),
            ),
            (
                Reason::ClaimedElsewhere { since: SLOT },
                format!("claimed by another delivery since {SLOT}"),
            ),
            (
                Reason::OutOfTime {
                    short: Duration::from_millis(1_500),
                },
                "the invocation's remaining time was 1500 ms short of this job's slot and call"
                    .to_string(),
            ),
            (
                Reason::HeldBack {
                    backoff: Duration::from_millis(1_900),
                },
                "held back: a job of the same batch was answered 429; 1900 ms of its back-off left"
                    .to_string(),
            ),
            (
                Reason::Throttled {
                    retry_after: Duration::from_secs(3),
                },
                "HTTP 429: retry after 3000 ms".into(),
            ),
            (
                Reason::ServerError {
                    status: 503,
                    excerpt: String::new(),
                },
                "HTTP 503".into(),
            ),
            (
                Reason::FinalStatus {
                    status: 404,
                    excerpt: "no such".into(),
                },
                "HTTP 404: no such".into(),
            ),
            (
                Reason::Transport {
                    kind: TransportKind::Timeout,
                    detail: "read".into(),
                },
                "timed out: read".into(),
            ),
            (
                Reason::CredentialRefused { status: 401 },
                "HTTP 401: credential refused".into(),
            ),
            (
                Reason::CredentialPending { status: 403 },
                "HTTP 403: the credential was refused; no call before its re-read".into(),
            ),
            (
                Reason::InvalidJob(JobError::Header("Host".into())),
                "job header `Host` is not allowed".into(),
            ),
            (
                Reason::InvalidRequest {
                    detail: "bad header value".into(),
                },
                "invalid request: bad header value".into(),
            ),
            (
                Reason::GaveUp(GiveUp::Attempts {
                    attempts: 5,
                    last: Box::new(Reason::ServerError {
                        status: 500,
                        excerpt: String::new(),
                    }),
                }),
                "gave up after 5 attempts; last: HTTP 500".into(),
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
            assert_eq!(reason, text, "a reason equals its text");
        }
    }

    #[test]
    fn kinds_group_like_reasons() {
        let a = Reason::Late {
            late: Duration::from_millis(6),
            slot: SLOT,
        };
        let b = Reason::Late {
            late: Duration::from_millis(700),
            slot: SLOT.plus(Duration::from_secs(1)),
        };
        assert_eq!(a.kind(), b.kind());
        assert_eq!(a.kind().as_str(), "late");
        let gave_up = Reason::from(GiveUp::Throttled {
            times: 100,
            last_retry_after: Duration::from_secs(1),
        });
        assert_eq!(gave_up.kind(), ReasonKind::GaveUpThrottled);
    }
}
