//! [`MotoServer`]: moto's AWS emulation (SQS, DynamoDB, ...) on a free loopback port.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{Supervised, port_for, service_dir};
use crate::{ServiceError, http_get_status, tool};

const TOOL: &str = "moto_server";
/// Runs moto's server with each DynamoDB request done under one lock.
///
/// moto's server is threaded and its DynamoDB backend checks a condition and then writes
/// without a lock, so two concurrent conditional puts on one item can both succeed. DynamoDB
/// itself applies each write to an item atomically, so the tests see that behaviour, not
/// moto's. SQS is left concurrent: a long poll must not block other requests.
const ATOMIC_DYNAMODB: &str = r#"
import sys, threading
from moto.dynamodb.responses import DynamoHandler
_lock = threading.Lock()
_call_action = DynamoHandler.call_action
def call_action(self):
    with _lock:
        return _call_action(self)
DynamoHandler.call_action = call_action
from moto.server import main
sys.argv[0] = "moto_server"
sys.exit(main())
"#;
/// How long moto gets to answer (it starts in about 2 s).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts tried when the server exits early (for instance: its port was taken meanwhile).
const ATTEMPTS: usize = 3;

/// A running `moto_server -H 127.0.0.1 -p PORT`, stopped (with its process group) on drop.
///
/// Point an AWS SDK client at it with `endpoint_url(&moto.endpoint)`, any region and any
/// static credentials (moto accepts all). Each server starts empty and is private to its
/// handle, so tests do not share state.
#[derive(Debug)]
pub struct MotoServer {
    /// The base URL, `http://127.0.0.1:PORT`, without a trailing slash.
    pub endpoint: String,
    port: u16,
    proc: Supervised,
    _dir: TempDir,
}

impl MotoServer {
    /// Starts `moto_server` (found with [`tool`]) on a free port and waits up to 30 s until
    /// `GET /moto-api/` answers 200. Its output goes to a log file in a temporary directory
    /// ([`MotoServer::log_path`]).
    ///
    /// # Errors
    ///
    /// [`ServiceError::NotFound`] when `moto_server` is not installed (run
    /// `bash tests/setup.sh`); [`ServiceError::Exited`] or [`ServiceError::Timeout`], with the
    /// tail of its log, when it does not come up.
    pub async fn start() -> Result<MotoServer, ServiceError> {
        let exe = tool(TOOL).ok_or_else(|| ServiceError::NotFound {
            tool: TOOL.to_owned(),
        })?;
        let mut last_err = None;
        for _ in 0..ATTEMPTS {
            match Self::start_once(&exe).await {
                Ok(server) => return Ok(server),
                Err(e @ ServiceError::Exited { .. }) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| ServiceError::Failed {
            tool: TOOL.to_owned(),
            reason: "no start was attempted".to_owned(),
        }))
    }

    async fn start_once(exe: &Path) -> Result<MotoServer, ServiceError> {
        let dir = service_dir(TOOL)?;
        let port = port_for(TOOL)?;
        let mut cmd = server_command(exe);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // Unbuffered, so the log shows what happened before a crash.
            .env("PYTHONUNBUFFERED", "1")
            // What moto writes (its recorder's `moto_recording`) goes to the server's own
            // directory, removed with it, not to the test's working directory.
            .current_dir(dir.path());
        let mut proc = Supervised::spawn(TOOL, &mut cmd, &dir.path().join("moto_server.log"))?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let probe = format!("{endpoint}/moto-api/");
        let started = Instant::now();
        loop {
            proc.check_running()?;
            if matches!(http_get_status(&probe).await, Ok(200)) {
                return Ok(MotoServer {
                    endpoint,
                    port,
                    proc,
                    _dir: dir,
                });
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(proc.timeout_error(READY_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The port the server listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file (removed when the handle is dropped).
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }
}

/// `python3 -c ATOMIC_DYNAMODB` with the interpreter beside `moto_server` (a virtualenv's),
/// or `moto_server` itself when there is none.
fn server_command(exe: &Path) -> Command {
    match exe.parent().map(|d| d.join("python3")) {
        Some(python) if python.is_file() => {
            let mut cmd = Command::new(python);
            cmd.args(["-c", ATOMIC_DYNAMODB]);
            cmd
        }
        _ => Command::new(exe),
    }
}
