//! Test support for quota-orchestrator: finds the tools that `tests/setup.sh` installs, starts
//! the local stand-ins for AWS services on free loopback ports, and stops them again.
//!
//! - [`MotoServer`] runs `moto_server` (SQS, DynamoDB and the rest of moto's AWS emulation).
//! - [`LambdaWatch`] runs `cargo lambda watch`, which serves the Lambda Invoke API for a
//!   function binary of this workspace.
//! - [`require`] turns a failed start into a skipped test on a developer's machine and into a
//!   failed test in CI (`CI=true`).
//!
//! Each service is a child process in its own process group, with its output in a log file in
//! a temporary directory. Dropping the handle stops the whole group (SIGTERM, then SIGKILL
//! after a grace period); when the drop happens during a panic the tail of the log is printed
//! to stderr. Keep handles in locals of a test, not in statics: statics are never dropped.
//! Nothing global is changed: no environment variable of the test process is set.
//!
//! # Layout
//!
//! - `lib.rs`: [`repo_root`], [`free_port`], [`tool`], [`require`], [`in_ci`] and
//!   [`ServiceError`].
//! - `moto.rs`: [`MotoServer`].
//! - `lambda.rs`: [`LambdaWatch`] and [`LambdaWatchOptions`].
//! - `http.rs`: [`http_get_status`], a minimal HTTP/1.0 GET used for readiness checks.
//! - `events.rs`: [`events_dir`] and [`sample_events`], the sample events in `events/`.
//! - `process.rs`: the child-process supervisor shared by the services (crate-private).

#![deny(missing_docs)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

mod events;
mod http;
mod lambda;
mod moto;
mod process;

pub use events::{events_dir, sample_events};
pub use http::http_get_status;
pub use lambda::{LambdaWatch, LambdaWatchOptions};
pub use moto::MotoServer;

/// Why a service could not be started. Every variant names the tool it is about.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The executable is in none of the places [`tool`] searches.
    #[error(
        "{tool}: executable not found in $QO_VENV/bin, <repo>/.venv/bin or PATH (run `bash tests/setup.sh`)"
    )]
    NotFound {
        /// The executable's name.
        tool: String,
    },
    /// The process could not be started, or its log file could not be created.
    #[error("{tool}: could not start: {source}")]
    Spawn {
        /// The executable's name.
        tool: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The process exited before it was ready.
    #[error("{tool}: exited before it was ready ({status}); last lines of its log:\n{log}")]
    Exited {
        /// The executable's name.
        tool: String,
        /// The exit status, as text.
        status: String,
        /// The last lines of the process's output.
        log: String,
    },
    /// The process did not become ready in time.
    #[error("{tool}: not ready after {waited_secs} s; last lines of its log:\n{log}")]
    Timeout {
        /// The executable's name.
        tool: String,
        /// How long it was given, in seconds.
        waited_secs: u64,
        /// The last lines of the process's output.
        log: String,
    },
    /// Any other failure, with the reason.
    #[error("{tool}: {reason}")]
    Failed {
        /// The executable's name.
        tool: String,
        /// What went wrong.
        reason: String,
    },
}

impl ServiceError {
    /// The name of the tool the error is about.
    pub fn tool(&self) -> &str {
        match self {
            ServiceError::NotFound { tool }
            | ServiceError::Spawn { tool, .. }
            | ServiceError::Exited { tool, .. }
            | ServiceError::Timeout { tool, .. }
            | ServiceError::Failed { tool, .. } => tool,
        }
    }
}

/// The root of the repository (the workspace directory that holds `Cargo.lock`), derived from
/// this crate's `CARGO_MANIFEST_DIR` at compile time: two levels up from `crates/qo-testkit`.
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// A TCP port on 127.0.0.1 that was free a moment ago: binds port 0, reads the port the kernel
/// chose, and closes the socket again. Another process may take it before the caller binds it;
/// the service starters here retry with a new port when their child exits early.
///
/// # Panics
///
/// Panics when no loopback socket can be bound at all (the machine has no usable network
/// stack, and no test could run); [`try_free_port`] returns that error instead.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("cannot find a free port on 127.0.0.1: {e}"))
}

/// [`free_port`], returning the I/O error instead of panicking.
///
/// # Errors
///
/// The error from binding `127.0.0.1:0` or reading the bound address.
pub fn try_free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Finds an executable by name: in `$QO_VENV/bin` first, then in `<repo>/.venv/bin` (the
/// virtual environment `tests/setup.sh` creates), then on `PATH`. Returns `None` when it is in
/// none of them.
pub fn tool(name: &str) -> Option<PathBuf> {
    venv_bin_dirs()
        .into_iter()
        .chain(
            std::env::var_os("PATH").map_or_else(Vec::new, |p| std::env::split_paths(&p).collect()),
        )
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// The virtual-environment `bin` directories that exist, in search order.
pub(crate) fn venv_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(venv) = std::env::var_os("QO_VENV").filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(venv).join("bin"));
    }
    dirs.push(repo_root().join(".venv").join("bin"));
    dirs.retain(|d| d.is_dir());
    dirs
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The environment of a process that talks to a local endpoint with the AWS SDK and nothing
/// else: dummy credentials, `us-east-1`, no instance metadata, no profile files. For a child
/// process started with `env_clear()`.
pub const OFFLINE_AWS_ENV: [(&str, &str); 6] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent/qo-test/config"),
    (
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/qo-test/credentials",
    ),
];

/// Whether this run is in CI: the environment variable `CI` is `true` or `1`.
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI").map(|v| v.trim().to_ascii_lowercase()),
        Ok(v) if v == "true" || v == "1"
    )
}

/// Unwraps the result of starting a service that a test needs.
///
/// `Ok` gives `Some`. On `Err`, in CI ([`in_ci`]) the test panics with a message naming `what`
/// and the error: a test that needs a service must fail there, not skip. Elsewhere it prints
/// `skipping: <what> unavailable: <error>` to stderr and returns `None`, so the test can return
/// early:
///
/// ```no_run
/// # async fn example() {
/// let Some(moto) = qo_testkit::require(qo_testkit::MotoServer::start().await, "moto server")
/// else {
///     return;
/// };
/// # let _ = moto;
/// # }
/// ```
///
/// When `QO_SERVICE_LOG` names a file, each call appends one line to it,
/// `started|skipped|failed<TAB>what<TAB>test name`, so that the test command can say how many
/// tests ran against a real service (`tests/run-all.sh` prints the count).
pub fn require<T>(r: Result<T, ServiceError>, what: &str) -> Option<T> {
    match r {
        Ok(v) => {
            log_service_use("started", what);
            Some(v)
        }
        Err(e) if in_ci() => {
            log_service_use("failed", what);
            panic!("{what} unavailable (CI is set, so this fails instead of skipping): {e}")
        }
        Err(e) => {
            log_service_use("skipped", what);
            eprintln!("skipping: {what} unavailable: {e}");
            None
        }
    }
}

/// Appends `outcome<TAB>what<TAB>test` to `QO_SERVICE_LOG`, if set. Best effort: a test
/// does not fail because its ledger line could not be written.
fn log_service_use(outcome: &str, what: &str) {
    // This crate's own tests of `require` use no service.
    if cfg!(test) {
        return;
    }
    let Some(path) = std::env::var_os("QO_SERVICE_LOG").filter(|p| !p.is_empty()) else {
        return;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let line = format!("{outcome}\t{what}\t{test}\n");
    // One short write to a file opened for appending: lines of concurrent tests do not mix.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    if let Err(e) = written {
        eprintln!("QO_SERVICE_LOG {}: {e}", PathBuf::from(&path).display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_root_holds_the_workspace_manifest() {
        let root = repo_root();
        assert!(root.join("Cargo.toml").is_file(), "{}", root.display());
        assert!(root.join("crates").join("qo-testkit").is_dir());
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is free");
    }

    #[test]
    fn tool_finds_executables_on_path_and_not_missing_ones() {
        assert!(tool("sh").is_some(), "sh is on every PATH");
        assert!(tool("qo-testkit-no-such-tool").is_none());
    }

    #[test]
    fn require_passes_ok_through() {
        assert_eq!(require::<u8>(Ok(7), "seven"), Some(7));
    }

    /// Runs this test binary again, for [`require`] with an error, once per value of `CI`: in CI
    /// it must panic (the child fails), elsewhere it must print a skip line and return `None`.
    #[test]
    fn require_fails_in_ci_and_skips_elsewhere() {
        const CHILD: &str = "QO_TESTKIT_REQUIRE_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let r: Result<(), _> = Err(ServiceError::NotFound { tool: "x".into() });
            assert!(require(r, "the x service").is_none());
            return;
        }
        let exe = std::env::current_exe().expect("current test binary");
        for (ci, child_passes) in [("true", false), ("1", false), ("false", true), ("", true)] {
            let out = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "tests::require_fails_in_ci_and_skips_elsewhere",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, "1")
                .env("CI", ci)
                .output()
                .expect("run the test binary");
            let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.success(), child_passes, "CI={ci:?}: {text}");
            let expected = if child_passes {
                "skipping: the x service unavailable: x: executable not found"
            } else {
                "the x service unavailable (CI is set"
            };
            assert!(text.contains(expected), "CI={ci:?}: {text}");
        }
    }

    #[test]
    fn errors_name_their_tool() {
        let e = ServiceError::NotFound {
            tool: "moto_server".into(),
        };
        assert_eq!(e.tool(), "moto_server");
        assert!(e.to_string().contains("tests/setup.sh"));
    }
}
