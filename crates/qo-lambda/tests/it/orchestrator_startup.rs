//! The orchestrator binary refuses to start (exits non-zero before polling the Runtime API,
//! which Lambda reports as an init error) when `STOP_MARGIN_S` is shorter than its worst-case
//! finish or its function timeout cannot hold the margin; the message names the variables and
//! the numbers.

use crate::startup;

/// Runs the orchestrator binary with its minimal environment plus `extra`.
fn start(extra: &[(&str, &str)]) -> (bool, String) {
    startup::start(
        env!("CARGO_BIN_EXE_orchestrator"),
        "orchestrator",
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("WORKER_FUNCTION_NAME", "worker"),
        ],
        extra,
    )
}

#[test]
fn a_stop_margin_below_the_worst_case_finish_is_refused() {
    let (ok, out) = start(&[("STOP_MARGIN_S", "5"), ("FUNCTION_TIMEOUT_S", "900")]);
    assert!(!ok, "{out}");
    for part in [
        "STOP_MARGIN_S=5 is shorter than the orchestrator's worst-case finish of 224 s",
        "INVOKE_MAX_RETRIES=4",
        "MAX_IN_FLIGHT=64",
    ] {
        assert!(out.contains(part), "missing `{part}` in: {out}");
    }
}

#[test]
fn a_function_timeout_that_cannot_hold_the_stop_margin_is_refused() {
    // The margin defaults to the worst-case finish, 224 s; 24 s + 224 s > 150 s.
    let (ok, out) = start(&[("FUNCTION_TIMEOUT_S", "150")]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("+ margin 224 s = 248 s exceeds the function timeout 150 s"),
        "{out}"
    );
}

#[test]
fn the_default_stop_margin_is_the_worst_case_finish() {
    let (_, out) = start(&[("FUNCTION_TIMEOUT_S", "900")]);
    assert!(out.contains("stop_margin_s=224"), "{out}");
    assert!(out.contains("orchestrator ready"), "{out}");
}

#[test]
fn a_bad_worker_pool_is_refused_naming_the_variable_and_value() {
    let (ok, out) = start(&[("WORKER_FUNCTION_NAMES", "qo-w1,,qo-w2")]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("WORKER_FUNCTION_NAMES=\"qo-w1,,qo-w2\""),
        "missing the variable and value in: {out}"
    );
}

/// Lambda tells the function its memory; a pace past what that memory's CPU share keeps up
/// with is warned of at the start, naming the memory it wants. A small pace is not.
#[test]
fn a_pace_past_the_memory_s_cpu_share_is_warned_of() {
    let big = [
        ("FUNCTION_TIMEOUT_S", "900"),
        ("QUOTA_SPEC", "400/s"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
    ];
    let (_, out) = start(&big);
    assert!(out.contains("raise OrchestratorMemorySize"), "{out}");
    assert!(out.contains("wanted_mb=427"), "{out}");
    let small = [
        ("FUNCTION_TIMEOUT_S", "900"),
        ("QUOTA_SPEC", "20/s"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
    ];
    let (_, out) = start(&small);
    assert!(!out.contains("raise OrchestratorMemorySize"), "{out}");
    assert!(out.contains("orchestrator ready"), "{out}");
}
