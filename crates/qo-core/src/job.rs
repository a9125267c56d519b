//! The contracts: a [`Job`] (an SQS message body saying which HTTP request to make) and the
//! [`WorkerEvent`]s the orchestrator sends to the worker.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Largest job body accepted: under Lambda's oldest async payload limit (256 KB) with room for
/// the event envelope.
pub const MAX_JOB_BYTES: usize = 200 * 1024;

/// The longest job `id`, in bytes. The id is the job's idempotency key, and DynamoDB keys
/// the items on it: `job#<id>` (the claim) and `batch#<id>@<slot ms>` (the done record of a
/// batch the job leads), where a partition key is at most 2,048 bytes; an id past that is
/// accepted and then every write of its claim is refused. 512 keeps both keys a quarter of
/// DynamoDB's bound, and a batch's done record (a set of up to `BATCH_MAX_JOBS` ids) far under
/// its 400 KB item.
pub const MAX_JOB_ID_BYTES: usize = 512;

/// The most headers a job may set. HTTP servers bound the header fields of a request (Apache
/// httpd's `LimitRequestFields` is 100 by default) and the worker adds its own (the
/// credential, `Content-Type`, `User-Agent`, the idempotency key): 64 leaves them room.
pub const MAX_JOB_HEADERS: usize = 64;

/// The most bytes of a job's headers, each name and value counted. HTTP servers refuse a
/// request whose header block is past 8 KiB (nginx's `large_client_header_buffers` and
/// Apache httpd's `LimitRequestFieldSize` are 8 KiB by default; API Gateway takes 10 KB in
/// all); 8,192 keeps a job's own under that, and each field under it too.
pub const MAX_JOB_HEADER_BYTES: usize = 8_192;

/// The most bytes of a job's query string as the worker sends it: the query the `path`
/// carries plus the `query` parameters form-encoded (`k=v` joined with `&`, each byte other
/// than ASCII letters, digits and `*-._` written as `%XX`, a space as `+`). The request line
/// (method, path, query, version) is bounded at about 8 KiB by common servers (Apache
/// httpd's `LimitRequestLine` 8,190, nginx's buffer 8 KiB) and URLs at 8,192 by CloudFront:
/// half of it for the query leaves the other half to the base URL and the path.
pub const MAX_JOB_QUERY_BYTES: usize = 4_096;

/// The most bytes of a job's `meta` object, as JSON: it is echoed in every result, and a
/// job is at most [`MAX_JOB_BYTES`].
pub const MAX_META_BYTES: usize = 8_192;

/// The longest destination name: SNS topic and EventBridge bus names are at most 256
/// characters (SQS queue names 80, Lambda function names 64).
pub const MAX_DESTINATION_NAME_BYTES: usize = 256;

/// An HTTP method a job may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// GET
    #[default]
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// HEAD
    Head,
}

impl Method {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
        }
    }
}

/// One call to make: a request relative to the configured API base URL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Idempotency key; the SQS message id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// HTTP method (GET by default).
    #[serde(default)]
    pub method: Method,
    /// Path relative to the API base URL, starting with `/`.
    pub path: String,
    /// Query parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// The result destination, by name ([`crate::result::Destinations`]); the stack's
    /// default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// An object echoed untouched in the job's result, for correlation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

/// Why a job was refused; the reason goes with it to the dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The body was not a job.
    #[error("malformed job: {0}")]
    Malformed(String),
    /// The body was too large.
    #[error("job is {0} bytes; the limit is {MAX_JOB_BYTES}")]
    TooLarge(usize),
    /// The path was not a relative path.
    #[error("job path `{0}` must be a path relative to the API base URL, starting with `/`")]
    Path(String),
    /// A header may not be set by a job.
    #[error("job header `{0}` is not allowed")]
    Header(String),
    /// The path has a `..` segment, plain or percent-encoded (`%2e%2e`, `.%2E`, ...): a URL
    /// parser resolves it, so the request would leave the API base URL's path.
    #[error(
        "job path `{0}` has a `..` segment (plain or percent-encoded, e.g. `%2e%2e`), which \
         would leave the API base URL's path"
    )]
    DotSegment(String),
    /// The id is longer than [`MAX_JOB_ID_BYTES`].
    #[error(
        "job id is {0} bytes; the limit is {MAX_JOB_ID_BYTES} (it keys DynamoDB items, \
         `job#<id>`, whose partition key is at most 2,048 bytes)"
    )]
    IdTooLong(usize),
    /// More headers than [`MAX_JOB_HEADERS`].
    #[error("job sets {0} headers; the limit is {MAX_JOB_HEADERS}")]
    TooManyHeaders(usize),
    /// Headers larger than [`MAX_JOB_HEADER_BYTES`] in all.
    #[error("job headers are {0} bytes (names and values); the limit is {MAX_JOB_HEADER_BYTES}")]
    HeadersTooLarge(usize),
    /// A query string longer than [`MAX_JOB_QUERY_BYTES`].
    #[error(
        "job query string is {0} bytes as sent (the path's query and the encoded `query` \
         parameters); the limit is {MAX_JOB_QUERY_BYTES}"
    )]
    QueryTooLong(usize),
    /// `reply_to` is not a destination name (an ARN, a URL, a character no service allows).
    #[error(
        "job reply_to `{0}` is not a destination name (letters, digits, `-`, `_`, `.`; a job \
         names a destination the stack declares, never an ARN)"
    )]
    ReplyTo(String),
    /// `reply_to` names no destination the stack declares.
    #[error(
        "job reply_to `{0}` is not one of the stack's result destinations (RESULT_DESTINATIONS)"
    )]
    UnknownDestination(String),
    /// `meta` is not a small object.
    #[error("job meta {0}")]
    Meta(String),
    /// The method is not on the stack's allow-list ([`crate::allow::AllowList`]).
    #[error("job method {0} is not one the stack allows (ALLOWED_METHODS)")]
    MethodNotAllowed(String),
    /// The path is under none of the stack's allowed prefixes.
    #[error("job path `{0}` is under none of the stack's allowed prefixes (ALLOWED_PATH_PREFIXES)")]
    PathNotAllowed(String),
}

/// Headers a job may not set: the worker owns them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "content-length",
    "transfer-encoding",
    "connection",
    "proxy-authorization",
];

impl Job {
    /// Parses and validates a message body.
    pub fn parse(body: &str) -> Result<Job, JobError> {
        if body.len() > MAX_JOB_BYTES {
            return Err(JobError::TooLarge(body.len()));
        }
        let job: Job =
            serde_json::from_str(body).map_err(|e| JobError::Malformed(e.to_string()))?;
        job.validate()?;
        Ok(job)
    }

    /// Checks what a job carries against what the services on its way take: its id (a
    /// DynamoDB key), its path ([`check_path`]), its query string and its headers (an HTTP
    /// server's bounds, and the headers the worker owns). The orchestrator runs it before the
    /// job takes a quota slot; the worker again before it calls.
    pub fn validate(&self) -> Result<(), JobError> {
        if let Some(id) = &self.id
            && id.len() > MAX_JOB_ID_BYTES
        {
            return Err(JobError::IdTooLong(id.len()));
        }
        check_path(&self.path)?;
        let query = query_bytes(&self.path, &self.query);
        if query > MAX_JOB_QUERY_BYTES {
            return Err(JobError::QueryTooLong(query));
        }
        if self.headers.len() > MAX_JOB_HEADERS {
            return Err(JobError::TooManyHeaders(self.headers.len()));
        }
        let header_bytes: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if header_bytes > MAX_JOB_HEADER_BYTES {
            return Err(JobError::HeadersTooLarge(header_bytes));
        }
        for name in self.headers.keys() {
            let lower = name.to_ascii_lowercase();
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
            if !token || RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(JobError::Header(name.clone()));
            }
        }
        for value in self.headers.values() {
            if value.chars().any(|c| c == '\r' || c == '\n') {
                return Err(JobError::Header(value.clone()));
            }
        }
        check_job(self)
    }
}

/// Checks a job's path: relative to the API base URL (starting with one `/`, no scheme, no
/// backslash, no fragment, no space or control character) and with no `..` segment, plain or
/// percent-encoded in any case (`%2e%2e`, `.%2E`, `%2E.`): URL parsers (WHATWG's, which the
/// worker's `url` crate follows) decode `%2e` as a dot when they resolve dot segments, so such
/// a path would climb out of the base URL's path. The one rule for both functions: the
/// orchestrator refuses such a job before it takes a quota slot, and the worker builds no URL
/// from a path that fails it.
pub fn check_path(p: &str) -> Result<(), JobError> {
    let bad = !p.starts_with('/')
        || p.starts_with("//")
        || p.contains("://")
        || p.contains('\\')
        || p.chars().any(|c| c.is_control() || c == ' ')
        || p.contains('#');
    if bad {
        return Err(JobError::Path(p.to_string()));
    }
    if p.split(['/', '?', '#']).any(is_double_dot) {
        return Err(JobError::DotSegment(p.to_string()));
    }
    Ok(())
}

/// A destination name: 1 to [`MAX_DESTINATION_NAME_BYTES`] of ASCII letters, digits, `-`,
/// `_` and `.` (what the four services allow in their names).
pub(crate) fn check_name(name: &str) -> Result<(), JobError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_DESTINATION_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(JobError::ReplyTo(name.chars().take(80).collect()))
    }
}

/// Checks what a job carries for its result: `reply_to` a name (never an ARN), `meta` an
/// object of at most [`MAX_META_BYTES`].
fn check_job(job: &Job) -> Result<(), JobError> {
    if let Some(name) = &job.reply_to {
        check_name(name)?;
    }
    if let Some(meta) = &job.meta {
        if !meta.is_object() {
            return Err(JobError::Meta("must be a JSON object".to_string()));
        }
        let bytes = serde_json::to_string(meta).map_or(usize::MAX, |s| s.len());
        if bytes > MAX_META_BYTES {
            return Err(JobError::Meta(format!(
                "is {bytes} bytes; the limit is {MAX_META_BYTES}"
            )));
        }
    }
    Ok(())
}

/// Whether a path segment is `..` once each `%2e` / `%2E` is read as a dot.
fn is_double_dot(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    lower.replace("%2e", ".") == ".."
}

/// The bytes of the query string the worker sends for `path` and `query`: the path's own
/// query (after `?`), then each parameter form-encoded as `k=v`, all joined with `&`.
fn query_bytes(path: &str, query: &BTreeMap<String, String>) -> usize {
    let own = path.split_once('?').map_or(0, |(_, q)| q.len());
    let encoded = |s: &str| -> usize {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"*-._ ".contains(&b) {
                    1
                } else {
                    3
                }
            })
            .sum()
    };
    let params: usize = query.iter().map(|(k, v)| encoded(k) + 1 + encoded(v)).sum();
    let parts = usize::from(own > 0) + query.len();
    own + params + parts.saturating_sub(1)
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where a message came from and how to send it again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The SQS message id.
    pub message_id: String,
    /// How many times the job has been tried before (0 on first delivery).
    #[serde(default)]
    pub attempt: u32,
    /// How many times the API answered this job 429. A 429 is a pacing signal, not the job's
    /// failure: it raises this count, never `attempt`, and has a bound of its own.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub throttled: u32,
    /// When the job was first enqueued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_at: Option<Timestamp>,
    /// FIFO message group, kept on re-queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// FIFO deduplication id, kept (suffixed by the attempt) on re-queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_id: Option<String>,
    /// The worker function of the pool that last tried the job and had it answered 429 or
    /// failed (`None`: not tried, or tried successfully): the next dispatch goes through
    /// another function of the pool when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
}

/// The default of the worker's `MAX_SLOT_WAIT_MS`: the longest it waits for a slot, counted
/// from the start of its invocation. The orchestrator hands a job over `DISPATCH_LEAD_MS`
/// before its slot, and a batch's last slot up to `BATCH_WINDOW_MS` after its first, so both
/// together must stay under it (each function checks its side at start).
pub const DEFAULT_MAX_SLOT_WAIT: std::time::Duration = std::time::Duration::from_millis(5_000);

/// The default of `BATCH_WINDOW_MS`, which both functions read: a batch takes the jobs whose
/// slots fall within this long of its first. With the orchestrator's `BATCH_MAX_JOBS` of 20 it
/// lets a batch fill at 10 calls a second (20 slots span 1.9 s); with the default
/// `DISPATCH_LEAD_MS` of 250 it stays under [`DEFAULT_MAX_SLOT_WAIT`].
pub const DEFAULT_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(2_000);

/// The body to send again for a message received with `body` under `message_id`: the job with
/// its idempotency key made explicit (its `id`, else `message_id`), so that a copy keeps the
/// key of the original, which may still be delivered (SQS delivers at least once, and a
/// refused delete leaves it on the queue). SQS gives every send a new message id. A body that
/// is not a job is returned unchanged: it has no key, and is dead-lettered when received.
pub fn pin_key<'a>(body: &'a str, message_id: &str) -> std::borrow::Cow<'a, str> {
    let Ok(mut job) = serde_json::from_str::<Job>(body) else {
        return body.into();
    };
    if job.id.is_some() {
        return body.into();
    }
    job.id = Some(message_id.to_string());
    serde_json::to_string(&job).map_or(body.into(), Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::event::*;

    #[test]
    fn parses_a_minimal_job() {
        let j = Job::parse(r#"{"path":"/v1/items/42"}"#).expect("valid");
        assert_eq!(j.method, Method::Get);
        assert_eq!(j.path, "/v1/items/42");
    }

    #[test]
    fn refuses_absolute_and_escaping_paths() {
        for p in [
            "https://evil.example/x",
            "//evil.example/x",
            "v1/items",
            "/a b",
            "/x#frag",
        ] {
            let body = serde_json::json!({ "path": p }).to_string();
            assert!(matches!(Job::parse(&body), Err(JobError::Path(_))), "{p}");
        }
    }

    /// A `..` segment in any spelling a URL parser resolves is refused by `validate` itself,
    /// so that the orchestrator refuses the job before it takes a quota slot.
    #[test]
    fn refuses_dot_segments_plain_or_percent_encoded() {
        for p in [
            "/a/../../etc",
            "/..",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/%2E%2e/admin",
            "/a/.%2e/admin",
            "/a/%2E./admin",
            "/a/%2e%2E",
            "/a/..?x=1",
        ] {
            let job = Job {
                path: p.to_string(),
                ..Job::default()
            };
            let e = job.validate().expect_err(p);
            assert_eq!(e, JobError::DotSegment(p.to_string()));
            assert!(e.to_string().contains("`..` segment"), "{e}");
            assert_eq!(check_path(p), Err(e));
        }
        // Dots that are not a `..` segment are a path like any other.
        for p in [
            "/a/.../b", "/a/..b", "/%2e%2ex", "/v1.2/x", "/a/%2e/b", "/a?q=..",
        ] {
            let job = Job {
                path: p.to_string(),
                ..Job::default()
            };
            assert_eq!(job.validate(), Ok(()), "{p}");
        }
    }

    #[test]
    fn bounds_the_id_so_that_its_keys_fit_dynamodb() {
        let at = |n: usize| Job {
            id: Some("i".repeat(n)),
            path: "/x".into(),
            ..Job::default()
        };
        assert_eq!(at(MAX_JOB_ID_BYTES).validate(), Ok(()));
        // The claim's key and a batch's done record's key fit DynamoDB's 2,048 bytes.
        assert!("job#".len() + MAX_JOB_ID_BYTES <= 2_048);
        assert!(
            "batch#".len() + MAX_JOB_ID_BYTES + "@".len() + u64::MAX.to_string().len() <= 2_048
        );
        let e = at(3_000).validate().expect_err("too long");
        assert_eq!(e, JobError::IdTooLong(3_000));
        let text = e.to_string();
        assert!(text.contains("3000") && text.contains("512"), "{text}");
        // Counted in bytes, not characters.
        let wide = Job {
            id: Some("é".repeat(MAX_JOB_ID_BYTES / 2 + 1)),
            ..at(0)
        };
        assert_eq!(
            wide.validate(),
            Err(JobError::IdTooLong(MAX_JOB_ID_BYTES + 2))
        );
    }

    #[test]
    fn bounds_the_headers_count_and_size() {
        let with = |headers: BTreeMap<String, String>| Job {
            path: "/x".into(),
            headers,
            ..Job::default()
        };
        let many = |n: usize| {
            (0..n)
                .map(|i| (format!("X-H{i}"), "v".to_string()))
                .collect()
        };
        assert_eq!(with(many(MAX_JOB_HEADERS)).validate(), Ok(()));
        let e = with(many(MAX_JOB_HEADERS + 1))
            .validate()
            .expect_err("too many");
        assert_eq!(e, JobError::TooManyHeaders(MAX_JOB_HEADERS + 1));
        assert!(
            e.to_string().contains("65") && e.to_string().contains("64"),
            "{e}"
        );

        let big = |value: usize| {
            [("X-Big".to_string(), "v".repeat(value))]
                .into_iter()
                .collect()
        };
        let fits = MAX_JOB_HEADER_BYTES - "X-Big".len();
        assert_eq!(with(big(fits)).validate(), Ok(()));
        let e = with(big(fits + 1)).validate().expect_err("too large");
        assert_eq!(e, JobError::HeadersTooLarge(MAX_JOB_HEADER_BYTES + 1));
        assert!(
            e.to_string().contains("8193") && e.to_string().contains("8192"),
            "{e}"
        );
    }

    #[test]
    fn bounds_the_query_string_as_sent() {
        let with = |path: &str, query: BTreeMap<String, String>| Job {
            path: path.into(),
            query,
            ..Job::default()
        };
        let one = |k: &str, v: String| -> BTreeMap<String, String> {
            [(k.to_string(), v)].into_iter().collect()
        };
        // `q=` and the value: at the limit, then one byte over.
        let fits = MAX_JOB_QUERY_BYTES - 2;
        assert_eq!(with("/x", one("q", "a".repeat(fits))).validate(), Ok(()));
        let e = with("/x", one("q", "a".repeat(fits + 1)))
            .validate()
            .expect_err("too long");
        assert_eq!(e, JobError::QueryTooLong(MAX_JOB_QUERY_BYTES + 1));
        assert!(
            e.to_string().contains("4097") && e.to_string().contains("4096"),
            "{e}"
        );
        // Counted encoded: a byte that goes as %XX counts 3.
        let e = with("/x", one("q", "/".repeat(fits / 3 + 1)))
            .validate()
            .expect_err("encoded");
        assert!(
            matches!(e, JobError::QueryTooLong(n) if n > MAX_JOB_QUERY_BYTES),
            "{e}"
        );
        // The path's own query counts, joined with `&`.
        let own = format!("/x?{}", "b".repeat(MAX_JOB_QUERY_BYTES - 3));
        assert_eq!(with(&own, one("q", String::new())).validate(), Ok(()));
        assert_eq!(
            with(&own, one("q", "c".into())).validate(),
            Err(JobError::QueryTooLong(MAX_JOB_QUERY_BYTES + 1))
        );
    }

    #[test]
    fn refuses_reserved_headers_and_unknown_fields() {
        let e = Job::parse(r#"{"path":"/x","headers":{"Authorization":"Bearer steal"}}"#);
        assert!(matches!(e, Err(JobError::Header(h)) if h == "Authorization"));
        let e = Job::parse(r#"{"path":"/x","url":"https://elsewhere"}"#);
        assert!(matches!(e, Err(JobError::Malformed(m)) if m.contains("url")));
        assert!(matches!(
            Job::parse("not json"),
            Err(JobError::Malformed(_))
        ));
    }

    #[test]
    fn a_copy_keeps_the_key_of_the_original() {
        let pinned = pin_key(r#"{"path":"/x"}"#, "m-1");
        assert_eq!(Job::parse(&pinned).expect("job").id.as_deref(), Some("m-1"));
        let own = r#"{"id":"mine","path":"/x"}"#;
        assert_eq!(pin_key(own, "m-1"), own, "an explicit id stays");
        assert_eq!(pin_key("not json", "m-1"), "not json");
    }

    #[test]
    fn worker_event_is_tagged() {
        let ev = WorkerEvent::HealthCheck(HealthCheckEvent {
            epoch: 3,
            sent_at: Timestamp::from_millis(1),
            slot_at: None,
        });
        let j = serde_json::to_value(&ev).expect("json");
        assert_eq!(j["kind"], "health_check");
        assert_eq!(j["epoch"], 3);
    }
}
