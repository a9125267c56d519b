//! The orchestrator binary refuses to start (exits non-zero before polling the Runtime API,
//! which Lambda reports as an init error) when `STOP_MARGIN_S` is shorter than its worst-case
//! finish or its function timeout cannot hold the margin; the message names the variables and
//! the numbers.

use std::process::Command;

fn start(extra: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.env_clear()
        // Nothing listens here: an orchestrator past its checks fails to poll instead.
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .env("AWS_LAMBDA_FUNCTION_NAME", "orchestrator")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("TABLE_NAME", "t")
        .env("QUEUE_URL", "http://127.0.0.1:9/q")
        .env("DLQ_URL", "http://127.0.0.1:9/d")
        .env("WORKER_FUNCTION_NAME", "worker");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the orchestrator binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_stop_margin_below_the_worst_case_finish_is_refused() {
    let (ok, out) = start(&[("STOP_MARGIN_S", "5"), ("FUNCTION_TIMEOUT_S", "900")]);
    assert!(!ok, "{out}");
    for part in [
        "STOP_MARGIN_S=5 is shorter than the orchestrator's worst-case finish of 344 s",
        "INVOKE_MAX_RETRIES=4",
        "MAX_IN_FLIGHT=64",
    ] {
        assert!(out.contains(part), "missing `{part}` in: {out}");
    }
}

#[test]
fn a_function_timeout_that_cannot_hold_the_stop_margin_is_refused() {
    // The margin defaults to the worst-case finish, 344 s; 24 s + 344 s > 300 s.
    let (ok, out) = start(&[("FUNCTION_TIMEOUT_S", "300")]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("+ margin 344 s = 368 s exceeds the function timeout 300 s"),
        "{out}"
    );
}

#[test]
fn the_default_stop_margin_is_the_worst_case_finish() {
    let (_, out) = start(&[("FUNCTION_TIMEOUT_S", "900")]);
    assert!(out.contains("stop_margin_s=344"), "{out}");
    assert!(out.contains("orchestrator ready"), "{out}");
}
