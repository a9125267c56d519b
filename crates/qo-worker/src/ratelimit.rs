//! The API's rate-limit headers, read into an [`ApiWindow`]: the API's own count of its window,
//! which the worker reports to the orchestrator (see [`crate::worker`]).
//!
//! `RATE_LIMIT_HEADERS` says which headers to read ([`RateLimitHeaders`]):
//!
//! | value | headers | reset |
//! |---|---|---|
//! | `auto` (default) | the IETF fields if present, else `X-RateLimit-*` | as below |
//! | `ietf` | `RateLimit-Policy: "default";q=100;w=60` with `RateLimit: "default";r=50;t=30` (draft-ietf-httpapi-ratelimit-headers, 07 and later), else the older draft's `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` (with `RateLimit-Policy: 100;w=60` for the window) | `t` / `RateLimit-Reset`: seconds from now |
//! | `x-ratelimit` | `X-RateLimit-Limit` / `X-RateLimit-Remaining` / `X-RateLimit-Reset` | seconds from now, or Unix epoch seconds when above 10^9 (as GitHub sends) |
//! | `limit=H1,remaining=H2,reset=H3` | custom names (`limit` optional) | as `x-ratelimit` |
//! | `none` | none read | |
//!
//! A window needs a remaining count and a reset; the limit and the window's length are kept
//! when the API says them. When the structured `RateLimit` field lists several policies, the
//! one with the fewest calls left is taken (the one that binds first).
//!
//! Absent headers give no window. A malformed one gives [`Malformed`]; the worker logs it
//! once per execution environment and otherwise carries on as if it were absent.

use std::fmt;

use qo_core::{ApiWindow, Timestamp};
use reqwest::header::HeaderName;

/// The environment variable that selects the headers.
pub const ENV_VAR: &str = "RATE_LIMIT_HEADERS";

/// A reset above this is Unix epoch seconds, not seconds from now (10^9 s is 2001-09-09).
pub const EPOCH_RESET_ABOVE: f64 = 1e9;

const X_LIMIT: &str = "x-ratelimit-limit";
const X_REMAINING: &str = "x-ratelimit-remaining";
const X_RESET: &str = "x-ratelimit-reset";
const IETF_LIMIT: &str = "ratelimit-limit";
const IETF_REMAINING: &str = "ratelimit-remaining";
const IETF_RESET: &str = "ratelimit-reset";
const IETF_POLICY: &str = "ratelimit-policy";
const IETF_RATELIMIT: &str = "ratelimit";

/// Which rate-limit headers the worker reads (`RATE_LIMIT_HEADERS`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RateLimitHeaders {
    /// None: the API sends none, or they are not to be trusted.
    None,
    /// The IETF fields if present, else `X-RateLimit-*`.
    #[default]
    Auto,
    /// `X-RateLimit-Limit` / `-Remaining` / `-Reset`.
    XRateLimit,
    /// The IETF draft's fields, the structured form first, then the older one.
    Ietf,
    /// Headers of other names, read as `X-RateLimit-*` are.
    Custom(CustomNames),
}

/// The header names of a custom family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomNames {
    /// The window's limit (optional).
    pub limit: Option<HeaderName>,
    /// Calls left in the window.
    pub remaining: HeaderName,
    /// When the window resets: seconds from now, or Unix epoch seconds above 10^9.
    pub reset: HeaderName,
}

/// A rate-limit header whose value could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rate-limit header `{header}: {value}` is malformed: {reason}")]
pub struct Malformed {
    /// The header.
    pub header: String,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

/// The few response headers the rate-limit reading needs, as the API sent them (names in
/// lower case). The HTTP seam carries this, not the whole header map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateHeaders(Vec<(String, String)>);

impl RateHeaders {
    /// From name and value pairs (names are matched without regard to case).
    pub fn from_pairs<N: AsRef<str>, V: AsRef<str>>(pairs: &[(N, V)]) -> Self {
        RateHeaders(
            pairs
                .iter()
                .map(|(n, v)| (n.as_ref().to_ascii_lowercase(), v.as_ref().to_string()))
                .collect(),
        )
    }

    /// Adds one header.
    pub fn push(&mut self, name: &str, value: &str) {
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
    }

    /// The value of `name` (the first, if sent twice).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether none was kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for RateLimitHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimitHeaders::None => f.write_str("none"),
            RateLimitHeaders::Auto => f.write_str("auto"),
            RateLimitHeaders::XRateLimit => f.write_str("x-ratelimit"),
            RateLimitHeaders::Ietf => f.write_str("ietf"),
            RateLimitHeaders::Custom(c) => {
                if let Some(l) = &c.limit {
                    write!(f, "limit={l},")?;
                }
                write!(f, "remaining={},reset={}", c.remaining, c.reset)
            }
        }
    }
}

impl RateLimitHeaders {
    /// Parses `RATE_LIMIT_HEADERS`; the error says what is wrong (the caller names the
    /// variable and the value).
    pub fn parse(text: &str) -> Result<RateLimitHeaders, String> {
        let t = text.trim();
        match t.to_ascii_lowercase().as_str() {
            "" | "auto" => return Ok(RateLimitHeaders::Auto),
            "none" => return Ok(RateLimitHeaders::None),
            "x-ratelimit" => return Ok(RateLimitHeaders::XRateLimit),
            "ietf" => return Ok(RateLimitHeaders::Ietf),
            _ => {}
        }
        if !t.contains('=') {
            return Err("expected auto, none, x-ratelimit, ietf, or \
                 limit=HEADER,remaining=HEADER,reset=HEADER"
                .to_string());
        }
        let (mut limit, mut remaining, mut reset) = (None, None, None);
        for part in t.split(',') {
            let Some((key, name)) = part.split_once('=') else {
                return Err(format!("`{}` is not KEY=HEADER", part.trim()));
            };
            let (key, name) = (key.trim(), name.trim());
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?;
            let slot = match key.to_ascii_lowercase().as_str() {
                "limit" => &mut limit,
                "remaining" => &mut remaining,
                "reset" => &mut reset,
                other => {
                    return Err(format!(
                        "unknown key `{other}`: expected limit, remaining or reset"
                    ));
                }
            };
            if slot.replace(header).is_some() {
                return Err(format!("`{key}` is given twice"));
            }
        }
        let remaining = remaining.ok_or("`remaining=HEADER` is required")?;
        let reset = reset.ok_or("`reset=HEADER` is required")?;
        Ok(RateLimitHeaders::Custom(CustomNames {
            limit,
            remaining,
            reset,
        }))
    }

    /// The headers the HTTP client must keep from an answer.
    pub fn names(&self) -> Vec<HeaderName> {
        let stat = |names: &[&'static str]| -> Vec<HeaderName> {
            names.iter().map(|n| HeaderName::from_static(n)).collect()
        };
        let ietf = [
            IETF_RATELIMIT,
            IETF_POLICY,
            IETF_LIMIT,
            IETF_REMAINING,
            IETF_RESET,
        ];
        let x = [X_LIMIT, X_REMAINING, X_RESET];
        match self {
            RateLimitHeaders::None => Vec::new(),
            RateLimitHeaders::Auto => {
                let mut v = stat(&ietf);
                v.extend(stat(&x));
                v
            }
            RateLimitHeaders::XRateLimit => stat(&x),
            RateLimitHeaders::Ietf => stat(&ietf),
            RateLimitHeaders::Custom(c) => {
                let mut v: Vec<HeaderName> = c.limit.iter().cloned().collect();
                v.push(c.remaining.clone());
                v.push(c.reset.clone());
                v
            }
        }
    }

    /// The window the headers describe, read at `now`; `Ok(None)` when they are absent.
    pub fn read(&self, h: &RateHeaders, now: Timestamp) -> Result<Option<ApiWindow>, Malformed> {
        match self {
            RateLimitHeaders::None => Ok(None),
            RateLimitHeaders::XRateLimit => trio(h, X_LIMIT, X_REMAINING, X_RESET, None, now),
            RateLimitHeaders::Ietf => first_of([ietf_structured(h, now), ietf_trio(h, now)]),
            RateLimitHeaders::Auto => first_of([
                ietf_structured(h, now),
                ietf_trio(h, now),
                trio(h, X_LIMIT, X_REMAINING, X_RESET, None, now),
            ]),
            RateLimitHeaders::Custom(c) => trio(
                h,
                c.limit.as_ref().map_or("", HeaderName::as_str),
                c.remaining.as_str(),
                c.reset.as_str(),
                None,
                now,
            ),
        }
    }
}

/// The first window found; else the first malformed header; else none.
fn first_of<const N: usize>(
    tries: [Result<Option<ApiWindow>, Malformed>; N],
) -> Result<Option<ApiWindow>, Malformed> {
    let mut malformed = None;
    for t in tries {
        match t {
            Ok(Some(w)) => return Ok(Some(w)),
            Ok(None) => {}
            Err(e) => {
                malformed.get_or_insert(e);
            }
        }
    }
    malformed.map_or(Ok(None), Err)
}

fn bad(header: &str, value: &str, reason: impl Into<String>) -> Malformed {
    Malformed {
        header: header.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A count: a non-negative integer. The older drafts allow a list after it
/// (`100, 100;w=60`); the first member counts.
fn count(header: &str, value: &str) -> Result<u64, Malformed> {
    let first = value.split([',', ';']).next().unwrap_or("").trim();
    first
        .parse::<u64>()
        .map_err(|_| bad(header, value, "not a non-negative integer"))
}

/// A reset: seconds from `now` (fractions allowed), or Unix epoch seconds above 10^9.
fn reset_at(header: &str, value: &str, now: Timestamp) -> Result<Timestamp, Malformed> {
    let v: f64 = value
        .trim()
        .parse()
        .map_err(|_| bad(header, value, "not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad(header, value, "not a non-negative number of seconds"));
    }
    if v > EPOCH_RESET_ABOVE {
        // Whole seconds since the epoch; one already past means "now".
        let at = Timestamp::from_millis((v * 1000.0) as u64);
        Ok(at.max(now))
    } else {
        Ok(now.plus(std::time::Duration::from_secs_f64(v)))
    }
}

/// Limit, remaining and reset in three headers (`limit` may be empty: not read).
fn trio(
    h: &RateHeaders,
    limit: &str,
    remaining: &str,
    reset: &str,
    window_s: Option<u64>,
    now: Timestamp,
) -> Result<Option<ApiWindow>, Malformed> {
    let Some(rem) = h.get(remaining) else {
        return Ok(None);
    };
    let remaining_n = count(remaining, rem)?;
    let Some(rst) = h.get(reset) else {
        return Ok(None);
    };
    let reset_at = reset_at(reset, rst, now)?;
    let limit = match (limit.is_empty(), h.get(limit)) {
        (false, Some(v)) => Some(count(limit, v)?),
        _ => None,
    };
    Ok(Some(ApiWindow {
        limit,
        window_s,
        remaining: remaining_n,
        reset_at,
        observed_at: now,
    }))
}

/// The older draft's `RateLimit-Limit` / `-Remaining` / `-Reset`, with the window from its
/// `RateLimit-Policy: 100;w=60` when one matches the limit.
fn ietf_trio(h: &RateHeaders, now: Timestamp) -> Result<Option<ApiWindow>, Malformed> {
    let Some(mut w) = trio(h, IETF_LIMIT, IETF_REMAINING, IETF_RESET, None, now)? else {
        return Ok(None);
    };
    // The policy is extra: a malformed one does not spoil the counts.
    if let Some(p) = h.get(IETF_POLICY)
        && let Ok(items) = list(p)
    {
        let quota = |i: &Item| i.param("q").or_else(|| i.bare.parse().ok());
        w.window_s = items
            .iter()
            .find(|i| w.limit.is_some() && quota(i) == w.limit)
            .or(items.first())
            .and_then(|i| i.param("w"));
    }
    Ok(Some(w))
}

/// The structured fields: `RateLimit: "name";r=R;t=T` (the policy with the fewest left) with
/// the limit and window of `RateLimit-Policy: "name";q=Q;w=W`.
fn ietf_structured(h: &RateHeaders, now: Timestamp) -> Result<Option<ApiWindow>, Malformed> {
    let Some(value) = h.get(IETF_RATELIMIT) else {
        return Ok(None);
    };
    let malformed = |why: &str| bad("RateLimit", value, why);
    let items = list(value).map_err(|why| malformed(&why))?;
    let mut best: Option<(&Item, u64)> = None;
    for item in &items {
        let r = item
            .param("r")
            .ok_or_else(|| malformed("a member has no `r` (remaining)"))?;
        if best.is_none_or(|(_, b)| r < b) {
            best = Some((item, r));
        }
    }
    let Some((item, remaining)) = best else {
        return Err(malformed("no member"));
    };
    let policy = match h.get(IETF_POLICY) {
        None => None,
        Some(p) => {
            let items = list(p).map_err(|why| bad("RateLimit-Policy", p, why))?;
            items.into_iter().find(|i| i.bare == item.bare)
        }
    };
    let limit = policy.as_ref().and_then(|p| p.param("q"));
    let window_s = policy.as_ref().and_then(|p| p.param("w"));
    let reset = item
        .param("t")
        .or(window_s)
        .ok_or_else(|| malformed("no `t` (reset) and no policy window"))?;
    Ok(Some(ApiWindow {
        limit,
        window_s,
        remaining,
        reset_at: now.plus(std::time::Duration::from_secs(reset)),
        observed_at: now,
    }))
}

/// One member of a structured-field list: its bare item (a policy name, unquoted; or a
/// number) and its parameters.
#[derive(Debug)]
struct Item {
    bare: String,
    params: Vec<(String, String)>,
}

impl Item {
    /// An integer parameter (absent or not an integer: `None`).
    fn param(&self, key: &str) -> Option<u64> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse().ok())
    }
}

/// Splits on `sep` outside double quotes (with `\` escapes inside them).
fn split_outside_quotes(s: &str, sep: char) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    if quoted {
        return Err("an unterminated quoted string".to_string());
    }
    out.push(&s[start..]);
    Ok(out)
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    match s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => s.to_string(),
    }
}

/// A structured-field list (RFC 8941), read loosely: enough for names, integers and the
/// parameters this module needs.
fn list(value: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    for member in split_outside_quotes(value, ',')? {
        if member.trim().is_empty() {
            continue;
        }
        let mut parts = split_outside_quotes(member, ';')?.into_iter();
        let bare = unquote(parts.next().unwrap_or(""));
        let mut params = Vec::new();
        for p in parts {
            let (k, v) = p.split_once('=').unwrap_or((p, "?1"));
            let k = k.trim().to_ascii_lowercase();
            let v = unquote(v);
            if k.is_empty() {
                return Err("an empty parameter".to_string());
            }
            if matches!(k.as_str(), "r" | "t" | "q" | "w") && v.parse::<u64>().is_err() {
                return Err(format!("`{k}={v}` is not a non-negative integer"));
            }
            params.push((k, v));
        }
        items.push(Item { bare, params });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: Timestamp = Timestamp::from_secs(1_700_000_000);

    fn h(pairs: &[(&str, &str)]) -> RateHeaders {
        RateHeaders::from_pairs(pairs)
    }

    fn window(
        limit: Option<u64>,
        window_s: Option<u64>,
        remaining: u64,
        reset_s: u64,
    ) -> ApiWindow {
        ApiWindow {
            limit,
            window_s,
            remaining,
            reset_at: NOW.plus(Duration::from_secs(reset_s)),
            observed_at: NOW,
        }
    }

    #[test]
    fn x_ratelimit_with_delta_and_epoch_resets() {
        let c = RateLimitHeaders::XRateLimit;
        let got = c.read(
            &h(&[
                ("X-RateLimit-Limit", "60"),
                ("X-RateLimit-Remaining", "12"),
                ("X-RateLimit-Reset", "30"),
            ]),
            NOW,
        );
        assert_eq!(got, Ok(Some(window(Some(60), None, 12, 30))));
        // GitHub: epoch seconds.
        let got = c.read(
            &h(&[
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-remaining", "4999"),
                ("x-ratelimit-reset", "1700000090"),
            ]),
            NOW,
        );
        assert_eq!(got, Ok(Some(window(Some(5000), None, 4999, 90))));
        // An epoch already past is now; no limit is fine.
        let got = c.read(
            &h(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1600000000"),
            ]),
            NOW,
        );
        assert_eq!(got, Ok(Some(window(None, None, 0, 0))));
    }

    #[test]
    fn ietf_older_draft_fields_with_a_policy_window() {
        let got = RateLimitHeaders::Ietf.read(
            &h(&[
                ("RateLimit-Limit", "100"),
                ("RateLimit-Remaining", "50"),
                ("RateLimit-Reset", "30"),
                ("RateLimit-Policy", "10;w=1, 100;w=60"),
            ]),
            NOW,
        );
        assert_eq!(got, Ok(Some(window(Some(100), Some(60), 50, 30))));
        // An early draft's list in the limit itself: the first member counts.
        let got = RateLimitHeaders::Auto.read(
            &h(&[
                ("RateLimit-Limit", "10, 10;w=1"),
                ("RateLimit-Remaining", "9"),
                ("RateLimit-Reset", "1"),
            ]),
            NOW,
        );
        assert_eq!(got, Ok(Some(window(Some(10), None, 9, 1))));
    }

    #[test]
    fn ietf_structured_fields_take_the_policy_that_binds_first() {
        let got = RateLimitHeaders::Ietf.read(
            &h(&[
                ("RateLimit-Policy", r#""default";q=100;w=60"#),
                ("RateLimit", r#""default";r=50;t=30"#),
            ]),
            NOW,
        );
        assert_eq!(got, Ok(Some(window(Some(100), Some(60), 50, 30))));
        let got = RateLimitHeaders::Auto.read(
            &h(&[
                (
                    "RateLimit-Policy",
                    r#""burst";q=10;w=1, "day";q=1000;w=86400;pk=:cHJvamVjdDEyMw==:"#,
                ),
                ("RateLimit", r#""burst";r=9;t=1, "day";r=3;t=4000"#),
                // The structured form wins over X-RateLimit in auto.
                ("X-RateLimit-Remaining", "999"),
                ("X-RateLimit-Reset", "1"),
            ]),
            NOW,
        );
        assert_eq!(got, Ok(Some(window(Some(1000), Some(86400), 3, 4000))));
        // Without a policy: no limit, and t is needed.
        let got = RateLimitHeaders::Ietf.read(&h(&[("RateLimit", r#""p";r=2;t=5"#)]), NOW);
        assert_eq!(got, Ok(Some(window(None, None, 2, 5))));
    }

    #[test]
    fn absent_headers_give_no_window() {
        for c in [
            RateLimitHeaders::Auto,
            RateLimitHeaders::Ietf,
            RateLimitHeaders::XRateLimit,
            RateLimitHeaders::None,
        ] {
            assert_eq!(c.read(&h(&[]), NOW), Ok(None), "{c}");
            // A remaining count without a reset is not a window.
            assert_eq!(
                c.read(&h(&[("X-RateLimit-Remaining", "3")]), NOW),
                Ok(None),
                "{c}"
            );
        }
        // `none` reads nothing even when they are there.
        let all = h(&[("X-RateLimit-Remaining", "1"), ("X-RateLimit-Reset", "1")]);
        assert_eq!(RateLimitHeaders::None.read(&all, NOW), Ok(None));
        assert!(RateLimitHeaders::None.names().is_empty());
        // `ietf` does not read X-RateLimit.
        assert_eq!(RateLimitHeaders::Ietf.read(&all, NOW), Ok(None));
    }

    #[test]
    fn malformed_headers_are_reported_not_guessed() {
        for (pairs, header) in [
            (
                vec![
                    ("X-RateLimit-Remaining", "lots"),
                    ("X-RateLimit-Reset", "1"),
                ],
                "x-ratelimit-remaining",
            ),
            (
                vec![("X-RateLimit-Remaining", "-1"), ("X-RateLimit-Reset", "1")],
                "x-ratelimit-remaining",
            ),
            (
                vec![
                    ("X-RateLimit-Remaining", "1"),
                    ("X-RateLimit-Reset", "soon"),
                ],
                "x-ratelimit-reset",
            ),
            (
                vec![
                    ("X-RateLimit-Limit", "1e3"),
                    ("X-RateLimit-Remaining", "1"),
                    ("X-RateLimit-Reset", "1"),
                ],
                "x-ratelimit-limit",
            ),
            (vec![("RateLimit", r#""p";t=5"#)], "RateLimit"),
            (vec![("RateLimit", r#""p;r=1;t=5"#)], "RateLimit"),
            (vec![("RateLimit", r#""p";r=x;t=5"#)], "RateLimit"),
            (vec![("RateLimit", r#""p";r=1"#)], "RateLimit"),
        ] {
            let got = RateLimitHeaders::Auto.read(&h(&pairs), NOW);
            let Err(e) = got else {
                panic!("{pairs:?}: {got:?}")
            };
            assert_eq!(e.header, header, "{pairs:?}");
        }
        // A malformed family does not hide a good one.
        let got = RateLimitHeaders::Auto.read(
            &h(&[
                ("RateLimit", "garbage;r=x"),
                ("X-RateLimit-Remaining", "4"),
                ("X-RateLimit-Reset", "2"),
            ]),
            NOW,
        );
        assert_eq!(got, Ok(Some(window(None, None, 4, 2))));
    }

    #[test]
    fn custom_names() {
        let c = RateLimitHeaders::parse(
            "limit=X-Quota-Limit, remaining=X-Quota-Left, reset=X-Quota-Reset",
        )
        .expect("valid");
        assert_eq!(
            c.to_string(),
            "limit=x-quota-limit,remaining=x-quota-left,reset=x-quota-reset"
        );
        assert_eq!(c.names().len(), 3);
        let got = c.read(
            &h(&[
                ("X-Quota-Limit", "10"),
                ("X-Quota-Left", "1"),
                ("X-Quota-Reset", "0.5"),
                ("X-RateLimit-Remaining", "99"),
            ]),
            NOW,
        );
        let mut want = window(Some(10), None, 1, 0);
        want.reset_at = NOW.plus(Duration::from_millis(500));
        assert_eq!(got, Ok(Some(want)));
    }

    #[test]
    fn the_setting_parses_or_says_what_is_wrong() {
        assert_eq!(RateLimitHeaders::parse(""), Ok(RateLimitHeaders::Auto));
        assert_eq!(RateLimitHeaders::parse("AUTO"), Ok(RateLimitHeaders::Auto));
        assert_eq!(RateLimitHeaders::parse("none"), Ok(RateLimitHeaders::None));
        assert_eq!(
            RateLimitHeaders::parse(" x-ratelimit "),
            Ok(RateLimitHeaders::XRateLimit)
        );
        assert_eq!(RateLimitHeaders::parse("ietf"), Ok(RateLimitHeaders::Ietf));
        for (text, why) in [
            ("github", "expected auto"),
            ("remaining=X-Left", "`reset=HEADER` is required"),
            ("reset=X-Reset", "`remaining=HEADER` is required"),
            (
                "remaining=X-Left,reset=X-Reset,used=X-Used",
                "unknown key `used`",
            ),
            ("remaining=bad header,reset=X-Reset", "not a header name"),
            ("remaining=A,remaining=B,reset=C", "given twice"),
            ("remaining=A,reset", "not KEY=HEADER"),
        ] {
            let e = RateLimitHeaders::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
