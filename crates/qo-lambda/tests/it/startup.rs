//! Starting a Lambda binary as Lambda would, against a Runtime API where nothing listens: a
//! binary past its start-up checks fails to poll instead of waiting for events.

use std::process::Command;

/// Runs the binary at `exe` as the function `function` with the Lambda and AWS variables, then
/// `vars` (the function's own minimal environment), then `extra`; returns its exit success and
/// its output (stdout and stderr).
pub fn start(
    exe: &str,
    function: &str,
    vars: &[(&str, &str)],
    extra: &[(&str, &str)],
) -> (bool, String) {
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        // Nothing listens here: a binary past its checks fails to poll instead.
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .env("AWS_LAMBDA_FUNCTION_NAME", function)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("TABLE_NAME", "t")
        .env("QUEUE_URL", "http://127.0.0.1:9/q")
        .env("DLQ_URL", "http://127.0.0.1:9/d");
    for (k, v) in vars.iter().chain(extra) {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run the {function} binary: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
