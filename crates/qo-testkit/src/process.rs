//! A supervised child process: its own process group, output to a log file in a temporary
//! directory, and the whole group stopped on drop.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ServiceError;

/// How long a stopping group gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How much of the end of a log goes into an error message.
const LOG_TAIL_BYTES: u64 = 4096;

/// A free loopback port for `tool`, as a [`ServiceError`] when there is none.
pub(crate) fn port_for(tool: &str) -> Result<u16, ServiceError> {
    crate::try_free_port().map_err(|source| ServiceError::Spawn {
        tool: tool.to_owned(),
        source,
    })
}

/// Removes from `cmd` the variables cargo sets for the test process that describe the test's
/// own package (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...), so that a nested cargo, or a
/// function run by it, sees the environment of a shell rather than of a test. `CARGO`,
/// `CARGO_HOME` and `CARGO_TARGET_DIR` stay.
pub(crate) fn scrub_test_env(cmd: &mut Command) {
    const EXACT: [&str; 6] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    const PREFIXES: [&str; 3] = ["CARGO_PKG_", "CARGO_BIN_NAME", "CARGO_BIN_EXE_"];
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if EXACT.contains(&k) || PREFIXES.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
}

/// A private temporary directory for logs and other files of one service.
pub(crate) fn service_dir(tool: &str) -> Result<TempDir, ServiceError> {
    tempfile::Builder::new()
        .prefix(&format!("qo-testkit-{tool}-"))
        .tempdir()
        .map_err(|source| ServiceError::Spawn {
            tool: tool.to_owned(),
            source,
        })
}

/// Runs `cmd` to completion with its output appended to `log`, giving up (and killing its
/// process group) after `timeout`. Polls with short sleeps so it does not block the runtime.
pub(crate) async fn run_to_completion(
    tool: &str,
    mut cmd: Command,
    log: &Path,
    timeout: Duration,
) -> Result<(), ServiceError> {
    let mut proc = Supervised::spawn(tool, &mut cmd, log)?;
    let started = Instant::now();
    loop {
        match proc.child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(ServiceError::Failed {
                    tool: tool.to_owned(),
                    reason: format!(
                        "failed ({status}); last lines of {}:\n{}",
                        log.display(),
                        log_tail(log)
                    ),
                });
            }
            Ok(None) => {}
            Err(e) => {
                return Err(ServiceError::Failed {
                    tool: tool.to_owned(),
                    reason: format!("cannot wait for the process: {e}"),
                });
            }
        }
        if started.elapsed() > timeout {
            return Err(ServiceError::Timeout {
                tool: tool.to_owned(),
                waited_secs: timeout.as_secs(),
                log: log_tail(log),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A child process that leads its own process group; dropping it stops the group.
#[derive(Debug)]
pub(crate) struct Supervised {
    tool: String,
    child: Child,
    log: PathBuf,
    stopped: bool,
}

impl Supervised {
    /// Starts `cmd` as the leader of a new process group, stdin from /dev/null and stdout and
    /// stderr appended to `log`.
    pub(crate) fn spawn(tool: &str, cmd: &mut Command, log: &Path) -> Result<Self, ServiceError> {
        let spawn_err = |source| ServiceError::Spawn {
            tool: tool.to_owned(),
            source,
        };
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(spawn_err)?;
        Ok(Supervised {
            tool: tool.to_owned(),
            child,
            log: log.to_path_buf(),
            stopped: false,
        })
    }

    /// `Ok` while the process runs; [`ServiceError::Exited`] once it has exited.
    pub(crate) fn check_running(&mut self) -> Result<(), ServiceError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(ServiceError::Exited {
                tool: self.tool.clone(),
                status: status.to_string(),
                log: log_tail(&self.log),
            }),
            Err(e) => Err(ServiceError::Failed {
                tool: self.tool.clone(),
                reason: format!("cannot wait for the process: {e}"),
            }),
        }
    }

    /// The log file the process writes to.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// A [`ServiceError::Timeout`] for this process, with the tail of its log.
    pub(crate) fn timeout_error(&self, waited: Duration) -> ServiceError {
        ServiceError::Timeout {
            tool: self.tool.clone(),
            waited_secs: waited.as_secs(),
            log: log_tail(&self.log),
        }
    }

    /// Stops the process group: SIGTERM, up to [`STOP_GRACE`] for the leader to exit, then
    /// SIGKILL to whatever is left of the group. Idempotent.
    pub(crate) fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let Ok(pgid) = libc::pid_t::try_from(self.child.id()) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return;
        };
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                _ => break,
            }
        }
        // Members of the group may outlive the leader; SIGKILL reaches them too.
        signal_group(pgid, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let was_running = !self.stopped;
        self.stop();
        if was_running && std::thread::panicking() {
            eprintln!(
                "qo-testkit: last lines of the {} log ({}):\n{}",
                self.tool,
                self.log.display(),
                log_tail(&self.log)
            );
        }
    }
}

/// Sends `sig` to every process of the group `pgid`. Errors (typically: the group is already
/// gone) are ignored.
fn signal_group(pgid: libc::pid_t, sig: libc::c_int) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of this process; a negative
    // pid addresses the process group that the child leads (it was spawned with
    // process_group(0), so its pgid is its pid).
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// The last [`LOG_TAIL_BYTES`] of a log file, or a note saying why it cannot be read.
pub(crate) fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let start = len.saturating_sub(LOG_TAIL_BYTES);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        Ok(if start > 0 {
            // Drop the partial first line.
            text.split_once('\n')
                .map_or(text.clone(), |(_, rest)| rest.to_owned())
        } else {
            text
        })
    };
    match read() {
        Ok(t) if t.trim().is_empty() => "(empty log)".to_owned(),
        Ok(t) => t,
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_the_whole_group() {
        let dir = service_dir("sh").expect("temp dir");
        let log = dir.path().join("sh.log");
        // A shell that starts a grandchild in the same group and waits.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 300 & echo started; wait"]);
        let mut proc = Supervised::spawn("sh", &mut cmd, &log).expect("spawn sh");
        let pgid = libc::pid_t::try_from(proc.child.id()).expect("pid fits");
        proc.check_running().expect("running");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(live_members(pgid).len(), 2, "sh and sleep run");
        proc.stop();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            live_members(pgid).is_empty(),
            "process group {pgid} survived stop()"
        );
        assert!(log_tail(&log).contains("started"));
    }

    /// The processes of group `pgid` that are not zombies (a zombie whose parent is an init
    /// that does not reap can linger; it runs nothing).
    fn live_members(pgid: libc::pid_t) -> Vec<String> {
        let entries = std::fs::read_dir("/proc").expect("read /proc");
        entries
            .filter_map(|e| {
                let e = e.ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                // Fields after the parenthesised command name: state ppid pgrp ...
                let rest = stat.rsplit_once(')')?.1;
                let mut fields = rest.split_whitespace();
                let state = fields.next()?;
                let pgrp: libc::pid_t = fields.nth(1)?.parse().ok()?;
                (pgrp == pgid && state != "Z").then_some(stat)
            })
            .collect()
    }

    #[tokio::test]
    async fn exit_before_ready_is_reported_with_the_log() {
        let dir = service_dir("sh").expect("temp dir");
        let log = dir.path().join("sh.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let mut proc = Supervised::spawn("sh", &mut cmd, &log).expect("spawn sh");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let err = proc.check_running().expect_err("exited");
        let text = err.to_string();
        assert!(text.contains("boom") && text.contains('3'), "{text}");
    }

    #[test]
    fn the_test_package_env_is_scrubbed_and_cargo_kept() {
        // cargo sets these for every test process.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        let mut cmd = Command::new("true");
        scrub_test_env(&mut cmd);
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert!(
            removed.iter().any(|k| k == "CARGO_MANIFEST_DIR"),
            "{removed:?}"
        );
        assert!(removed.iter().any(|k| k == "CARGO_PKG_NAME"), "{removed:?}");
        assert!(
            !removed.iter().any(|k| k == "CARGO" || k == "CARGO_HOME"),
            "{removed:?}"
        );
    }

    #[test]
    fn log_tail_of_a_missing_file_says_so() {
        assert!(log_tail(Path::new("/nonexistent/qo-testkit.log")).contains("cannot read"));
    }
}
