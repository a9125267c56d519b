//! The worker binary refuses to start (exits non-zero before polling the Runtime API, which
//! Lambda reports as an init error) when its function timeout cannot cover its worst case, or
//! its claim TTL is shorter than that timeout; the message names the variables and the numbers.

use crate::startup;

/// Runs the worker binary with its minimal environment plus `extra`; returns its exit success
/// and its output (stdout and stderr).
fn start(extra: &[(&str, &str)]) -> (bool, String) {
    startup::start(
        env!("CARGO_BIN_EXE_worker"),
        "worker",
        &[("API_BASE_URL", "http://127.0.0.1:9"), ("API_KEY", "k")],
        extra,
    )
}

#[test]
fn a_function_timeout_below_the_worst_case_is_refused_at_start_up() {
    let (ok, out) = start(&[("FUNCTION_TIMEOUT_S", "60")]);
    assert!(!ok, "{out}");
    for part in [
        "FUNCTION_TIMEOUT_S = 60 s",
        "worst case of 139.005 s",
        "MAX_SLOT_WAIT_MS=5000",
        "API_READ_TIMEOUT_MS=12000",
        "5 AWS calls after the API call",
        "SDK_MAX_ATTEMPTS=3",
        "at least 140 s",
    ] {
        assert!(out.contains(part), "missing `{part}` in: {out}");
    }
}

#[test]
fn a_claim_ttl_shorter_than_the_function_timeout_is_refused_at_start_up() {
    let (ok, out) = start(&[("FUNCTION_TIMEOUT_S", "150"), ("CLAIM_TTL_S", "120")]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("CLAIM_TTL_S=\"120\" is invalid: shorter than FUNCTION_TIMEOUT_S=150"),
        "{out}"
    );
}

#[test]
fn smaller_sdk_timeouts_fit_a_short_function_timeout() {
    // 5 + 0.005 + 12 + 5 x 2 x (1 + 2) + 2 = 49.005 s <= 60 s: the checks pass and the worker
    // goes on to poll the Runtime API (nothing listens there, so it stops with that error).
    let (_, out) = start(&[
        ("FUNCTION_TIMEOUT_S", "60"),
        ("SDK_CONNECT_TIMEOUT_MS", "1000"),
        ("SDK_READ_TIMEOUT_MS", "2000"),
        ("SDK_MAX_ATTEMPTS", "2"),
    ]);
    assert!(!out.contains("worst case"), "{out}");
    assert!(!out.contains("CLAIM_TTL_S"), "{out}");
    assert!(out.contains("worker ready"), "{out}");
}
