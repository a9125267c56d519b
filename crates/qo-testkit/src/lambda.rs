//! [`LambdaWatch`]: `cargo lambda watch` serving the Lambda Invoke API on a free loopback port.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::net::TcpStream;

use crate::process::{Supervised, port_for, run_to_completion, scrub_test_env, service_dir};
use crate::{ServiceError, repo_root, tool, venv_bin_dirs};

const TOOL: &str = "cargo-lambda";
/// Starts tried when `cargo lambda watch` exits early (for instance: its port was taken).
const ATTEMPTS: usize = 3;

/// What [`LambdaWatch::start`] serves, and how.
///
/// Build it with [`LambdaWatchOptions::new`] and the chaining setters:
///
/// ```
/// use qo_testkit::LambdaWatchOptions;
/// let opts = LambdaWatchOptions::new("qo-lambda", "worker")
///     .env("QUOTA", "10/s,500/min")
///     .concurrency(4);
/// assert_eq!(opts.bin.as_deref(), Some("worker"));
/// ```
#[derive(Debug, Clone)]
pub struct LambdaWatchOptions {
    /// The package that holds the function binary (`-p`); `None` for the package or workspace
    /// in [`dir`](Self::dir).
    pub package: Option<String>,
    /// The binary to serve (`--bin`); it is also the function name in the Invoke URL. With
    /// `None`, `cargo lambda watch` serves whichever binary an Invoke URL names.
    pub bin: Option<String>,
    /// Environment variables for the function, set on the `cargo lambda watch` process, whose
    /// environment the function instances inherit (values may hold commas, quotes and `$`,
    /// which `--env-var` and `--env-file` would mangle or refuse).
    pub env: Vec<(String, String)>,
    /// Instances that may run at once (`--concurrency`; `cargo lambda watch` runs one at a time
    /// by default).
    pub concurrency: Option<u32>,
    /// The directory with the `Cargo.toml` to build from; `None` for [`repo_root`].
    pub dir: Option<PathBuf>,
    /// How long the build plus the start may take. The first build of a function compiles all
    /// its dependencies: the default is 10 minutes.
    pub startup_timeout: Duration,
}

impl Default for LambdaWatchOptions {
    fn default() -> Self {
        LambdaWatchOptions {
            package: None,
            bin: None,
            env: Vec::new(),
            concurrency: None,
            dir: None,
            startup_timeout: Duration::from_secs(600),
        }
    }
}

impl LambdaWatchOptions {
    /// Options that serve binary `bin` of package `package` of this workspace.
    pub fn new(package: impl Into<String>, bin: impl Into<String>) -> Self {
        LambdaWatchOptions {
            package: Some(package.into()),
            bin: Some(bin.into()),
            ..Self::default()
        }
    }

    /// Adds an environment variable for the function.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Lets up to `n` instances run at once.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// Builds from the `Cargo.toml` in `dir` instead of the repository root.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Sets how long the build plus the start may take.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }
}

/// A running `cargo lambda watch`, stopped (with its process group) on drop.
///
/// It serves the Lambda Invoke API at
/// `POST {endpoint}/2015-03-31/functions/{NAME}/invocations` ([`LambdaWatch::invoke_url`]),
/// NAME being the binary's name: point `aws-sdk-lambda`'s `endpoint_url` at
/// [`endpoint`](Self::endpoint). The function runs as `cargo run` of that binary, with
/// `AWS_LAMBDA_FUNCTION_NAME` and the runtime API set by `cargo lambda watch`.
///
/// Differences from AWS, measured with cargo-lambda 1.9.2:
/// - an `InvocationType: Event` invoke (header `X-Amz-Invocation-Type: Event`) is answered
///   with **200** (AWS: 202), and only **after the function has returned** (AWS: as soon as
///   the event is queued);
/// - one instance runs at a time unless [`LambdaWatchOptions::concurrency`] is set; further
///   invokes wait for a free instance;
/// - an unknown function name is answered with 404 and no error code.
///
/// `aws-sdk-lambda` accepts the 200 of an `Event` invoke as success (`status_code()` is 200).
///
/// Code changes are not reloaded (`--ignore-changes`): a test serves the code it was started
/// with.
#[derive(Debug)]
pub struct LambdaWatch {
    /// The base URL of the Invoke API, `http://127.0.0.1:PORT`, without a trailing slash.
    pub endpoint: String,
    port: u16,
    proc: Supervised,
    _dir: TempDir,
}

impl LambdaWatch {
    /// Builds the function, starts `cargo lambda watch` on a free port bound to 127.0.0.1,
    /// and waits until the Invoke API accepts connections.
    ///
    /// The build runs first as `cargo build [-p PACKAGE] [--bin BIN]` (output in `build.log`
    /// beside the watch log), because `cargo lambda watch` opens its port at once and compiles
    /// only when the first invoke arrives; after the build that first invoke starts the
    /// function without compiling. The build uses the caller's target directory
    /// (`CARGO_TARGET_DIR` if set). `PATH` gets the virtual environment's `bin` prepended so
    /// that cargo-lambda finds zig and python there.
    ///
    /// # Errors
    ///
    /// [`ServiceError::NotFound`] when `cargo-lambda` is not installed (run
    /// `bash tests/setup.sh`); [`ServiceError::Failed`] when the build fails;
    /// [`ServiceError::Exited`] or [`ServiceError::Timeout`], with the tail of the log, when
    /// the server does not come up.
    pub async fn start(opts: LambdaWatchOptions) -> Result<LambdaWatch, ServiceError> {
        let started = Instant::now();
        let exe = tool(TOOL).ok_or_else(|| ServiceError::NotFound {
            tool: TOOL.to_owned(),
        })?;
        let path = tool_path()?;
        let dir = opts.dir.clone().unwrap_or_else(repo_root);

        let build_dir = service_dir(TOOL)?;
        let cargo = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .or_else(|| tool("cargo"))
            .ok_or_else(|| ServiceError::NotFound {
                tool: "cargo".to_owned(),
            })?;
        let mut build = Command::new(cargo);
        scrub_test_env(&mut build);
        build.current_dir(&dir).env("PATH", &path).arg("build");
        build.args(selection_args(&opts));
        if opts.bin.is_none() {
            build.arg("--bins");
        }
        run_to_completion(
            "cargo build (for cargo lambda watch)",
            build,
            &build_dir.path().join("build.log"),
            opts.startup_timeout,
        )
        .await?;

        let mut last_err = None;
        for _ in 0..ATTEMPTS {
            let remaining = opts
                .startup_timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(60));
            match Self::start_once(&exe, &path, &dir, &opts, remaining).await {
                Ok(watch) => return Ok(watch),
                Err(e @ ServiceError::Exited { .. }) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| ServiceError::Failed {
            tool: TOOL.to_owned(),
            reason: "no start was attempted".to_owned(),
        }))
    }

    async fn start_once(
        exe: &Path,
        path: &OsString,
        dir: &Path,
        opts: &LambdaWatchOptions,
        timeout: Duration,
    ) -> Result<LambdaWatch, ServiceError> {
        let tmp = service_dir(TOOL)?;
        let port = port_for(TOOL)?;
        let mut cmd = Command::new(exe);
        scrub_test_env(&mut cmd);
        // `cargo lambda X` runs `cargo-lambda lambda X`; calling the binary directly makes it
        // the leader of the process group.
        cmd.current_dir(dir)
            .env("PATH", path)
            .args(["lambda", "watch", "--ignore-changes"])
            .args(["--invoke-address", "127.0.0.1"])
            .args(["--invoke-port", &port.to_string()]);
        if let Some(n) = opts.concurrency {
            cmd.args(["--concurrency", &n.to_string()]);
        }
        cmd.args(selection_args(opts));
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut proc = Supervised::spawn(TOOL, &mut cmd, &tmp.path().join("watch.log"))?;
        let started = Instant::now();
        loop {
            proc.check_running()?;
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(LambdaWatch {
                    endpoint: format!("http://127.0.0.1:{port}"),
                    port,
                    proc,
                    _dir: tmp,
                });
            }
            if started.elapsed() > timeout {
                return Err(proc.timeout_error(timeout));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The URL that invokes function `function` (the binary's name):
    /// `{endpoint}/2015-03-31/functions/{function}/invocations`.
    pub fn invoke_url(&self, function: &str) -> String {
        format!(
            "{}/2015-03-31/functions/{function}/invocations",
            self.endpoint
        )
    }

    /// The port the Invoke API listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The log of `cargo lambda watch` and the function instances (removed on drop).
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }
}

/// `-p PACKAGE` and `--bin BIN`, as far as they are set.
fn selection_args(opts: &LambdaWatchOptions) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(p) = &opts.package {
        args.extend(["--package".to_owned(), p.clone()]);
    }
    if let Some(b) = &opts.bin {
        args.extend(["--bin".to_owned(), b.clone()]);
    }
    args
}

/// `PATH` with the virtual environment's `bin` directories first.
fn tool_path() -> Result<OsString, ServiceError> {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let dirs = venv_bin_dirs()
        .into_iter()
        .chain(std::env::split_paths(&current));
    std::env::join_paths(dirs).map_err(|e| ServiceError::Failed {
        tool: TOOL.to_owned(),
        reason: format!("cannot build PATH: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_chain() {
        let o = LambdaWatchOptions::new("qo-lambda", "worker")
            .env("A", "1,2")
            .concurrency(3)
            .startup_timeout(Duration::from_secs(5));
        assert_eq!(o.package.as_deref(), Some("qo-lambda"));
        assert_eq!(o.env, vec![("A".to_owned(), "1,2".to_owned())]);
        assert_eq!(o.concurrency, Some(3));
        assert_eq!(o.startup_timeout, Duration::from_secs(5));
        assert_eq!(
            selection_args(&o),
            ["--package", "qo-lambda", "--bin", "worker"]
        );
        assert_eq!(
            LambdaWatchOptions::default().startup_timeout,
            Duration::from_secs(600)
        );
    }

    #[test]
    fn tool_path_keeps_the_current_path() {
        let path = tool_path().expect("PATH");
        let current = std::env::var_os("PATH").unwrap_or_default();
        let dirs: Vec<_> = std::env::split_paths(&path).collect();
        for d in std::env::split_paths(&current) {
            assert!(dirs.contains(&d), "{} missing", d.display());
        }
    }
}
