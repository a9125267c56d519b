//! `qo send FILE`: validates a file of jobs (one JSON object per line, `-` for stdin) and sends
//! them to the job queue, several at a time, with a progress bar on stderr.
//!
//! Every line is checked with [`Job::parse`] first: an invalid line stops everything before
//! anything is sent (unless `--skip-invalid`), and the error names its line number. When a send
//! fails, no new send starts; the error names the lines that failed and the first line not
//! tried, so the rest can be sent again.

use std::fmt;
use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::time::SystemTime;

use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use qo_core::config::ProcessEnv;
use qo_core::ports::QueueError;
use qo_core::{Job, Timestamp};
use serde::Serialize;

use super::error::OpsError;
use super::output::emit;
use super::target::{Connection, TargetArgs};

/// How many invalid or failed lines an error lists.
const LISTED: usize = 10;

/// Options of `qo send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Jobs, one JSON object per line (`-`: read stdin). Blank lines are ignored.
    file: PathBuf,
    /// Send the valid lines and list the invalid ones, instead of sending nothing.
    #[arg(long)]
    skip_invalid: bool,
    /// Sends in flight at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    #[command(flatten)]
    target: TargetArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// A valid line: its number (1-based) and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number.
    pub number: usize,
    /// The job's JSON.
    pub body: String,
}

/// The jobs of a file, and its invalid lines with why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Valid jobs, in file order.
    pub jobs: Vec<Line>,
    /// Invalid lines: number and reason.
    pub invalid: Vec<(usize, String)>,
}

/// Splits `text` into lines and validates each; blank lines are ignored.
pub fn parse_lines(text: &str) -> Parsed {
    let mut out = Parsed::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        match Job::parse(line) {
            Ok(_) => out.jobs.push(Line {
                number: i + 1,
                body: line.to_string(),
            }),
            Err(e) => out.invalid.push((i + 1, e.to_string())),
        }
    }
    out
}

fn listing(items: &[(usize, String)]) -> String {
    let mut s: String = items
        .iter()
        .take(LISTED)
        .map(|(n, why)| format!("\n  line {n}: {why}"))
        .collect();
    if items.len() > LISTED {
        s.push_str(&format!("\n  ... and {} more", items.len() - LISTED));
    }
    s
}

/// What a batch of sends did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Lines sent.
    pub sent: Vec<usize>,
    /// Lines whose send failed, with why.
    pub failed: Vec<(usize, String)>,
    /// Lines not tried because a send had failed.
    pub unsent: Vec<usize>,
}

/// Sends `jobs` with at most `concurrency` sends in flight; after a failure starts no new
/// send but lets those in flight finish.
pub async fn send_all<F, Fut>(jobs: &[Line], concurrency: usize, send: F, bar: &ProgressBar) -> Sent
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<String, QueueError>>,
{
    let mut out = Sent::default();
    let mut pending = jobs.iter();
    let mut in_flight = FuturesUnordered::new();
    let start = |line: &Line| {
        let fut = send(line.body.clone());
        let number = line.number;
        async move { (number, fut.await) }
    };
    for line in pending.by_ref().take(concurrency.max(1)) {
        in_flight.push(start(line));
    }
    while let Some((number, result)) = in_flight.next().await {
        match result {
            Ok(_) => {
                out.sent.push(number);
                bar.inc(1);
            }
            Err(e) => out.failed.push((number, e.to_string())),
        }
        if out.failed.is_empty()
            && let Some(line) = pending.next()
        {
            in_flight.push(start(line));
        }
    }
    out.unsent = pending.map(|l| l.number).collect();
    out.sent.sort_unstable();
    out.failed.sort_unstable();
    out
}

/// What `qo send` did.
#[derive(Clone, Debug, Serialize)]
pub struct SendReport {
    /// The job queue.
    pub queue_url: String,
    /// Jobs sent.
    pub sent: usize,
    /// Invalid lines skipped (`--skip-invalid`), by number.
    pub skipped_lines: Vec<usize>,
}

impl fmt::Display for SendReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "sent {} job(s) to {}", self.sent, self.queue_url)?;
        if !self.skipped_lines.is_empty() {
            let lines: Vec<String> = self.skipped_lines.iter().map(ToString::to_string).collect();
            writeln!(
                f,
                "skipped {} invalid line(s): {}",
                self.skipped_lines.len(),
                lines.join(", ")
            )?;
        }
        Ok(())
    }
}

fn read_input(file: &PathBuf) -> Result<(String, String), OpsError> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| OpsError::Read {
                path: "stdin".into(),
                source,
            })?;
        Ok(("stdin".into(), text))
    } else {
        let path = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|source| OpsError::Read {
            path: path.clone(),
            source,
        })?;
        Ok((path, text))
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{bar:40} {pos}/{len} sent  {per_sec}  eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Validates the file, sends its jobs and prints the count.
pub async fn run(args: SendArgs) -> Result<(), OpsError> {
    let (path, text) = read_input(&args.file)?;
    let parsed = parse_lines(&text);
    if !parsed.invalid.is_empty() {
        if !args.skip_invalid {
            return Err(OpsError::InvalidJobs {
                path,
                count: parsed.invalid.len(),
                details: listing(&parsed.invalid),
            });
        }
        eprintln!(
            "skipping {} invalid line(s) of {path}:{}",
            parsed.invalid.len(),
            listing(&parsed.invalid)
        );
    }
    let conn = Connection::open(&args.target, &ProcessEnv).await?;
    let queue = conn.queues(false)?;
    let bar = progress_bar(parsed.jobs.len() as u64);
    let result = send_all(
        &parsed.jobs,
        usize::from(args.concurrency),
        |body| {
            let queue = &queue;
            async move {
                queue
                    .send_job(&body, Timestamp::from_system(SystemTime::now()))
                    .await
            }
        },
        &bar,
    )
    .await;
    bar.finish_and_clear();
    if !result.failed.is_empty() {
        let mut details = listing(&result.failed);
        if let Some(first) = result.unsent.first() {
            details.push_str(&format!("\n  not tried: line {first} and after"));
        }
        return Err(OpsError::SendFailed {
            sent: result.sent.len(),
            total: parsed.jobs.len(),
            failed: result.failed.len(),
            unsent: result.unsent.len(),
            details,
        });
    }
    let report = SendReport {
        queue_url: queue.urls().main.clone(),
        sent: result.sent.len(),
        skipped_lines: parsed.invalid.iter().map(|(n, _)| *n).collect(),
    };
    emit(&report, args.json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn invalid_lines_are_named_by_number() {
        let text = "{\"path\":\"/a\"}\n\n{\"path\":\"https://evil.example/x\"}\r\nnot json\n{\"path\":\"/b\"}\n";
        let p = parse_lines(text);
        assert_eq!(
            p.jobs.iter().map(|l| l.number).collect::<Vec<_>>(),
            vec![1, 5]
        );
        assert_eq!(p.invalid.len(), 2);
        assert_eq!(p.invalid[0].0, 3);
        assert!(
            p.invalid[0].1.contains("https://evil.example/x"),
            "{:?}",
            p.invalid
        );
        assert_eq!(p.invalid[1].0, 4);
        assert!(
            p.invalid[1].1.starts_with("malformed job"),
            "{:?}",
            p.invalid
        );
        let many: Vec<_> = (1..=12).map(|n| (n, "bad".to_string())).collect();
        let l = listing(&many);
        assert!(l.contains("line 10: bad") && !l.contains("line 11"), "{l}");
        assert!(l.ends_with("... and 2 more"), "{l}");
    }

    fn lines(n: usize) -> Vec<Line> {
        (1..=n)
            .map(|i| Line {
                number: i,
                body: format!("{{\"path\":\"/{i}\"}}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn all_lines_are_sent_with_bounded_concurrency() {
        let live = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let sent = send_all(
            &lines(25),
            4,
            |_body| {
                let (live, peak) = (&live, &peak);
                async move {
                    let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    live.fetch_sub(1, Ordering::SeqCst);
                    Ok("id".to_string())
                }
            },
            &ProgressBar::hidden(),
        )
        .await;
        assert_eq!(sent.sent, (1..=25).collect::<Vec<_>>());
        assert!(sent.failed.is_empty() && sent.unsent.is_empty());
        assert_eq!(peak.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_failure_stops_new_sends_and_names_the_lines() {
        let sent = send_all(
            &lines(30),
            2,
            |body| async move {
                if body.contains("/5\"") {
                    Err(QueueError::Partial {
                        op: "send",
                        failed: 1,
                        detail: "refused".into(),
                        refused: Vec::new(),
                        source: None,
                    })
                } else {
                    Ok("id".to_string())
                }
            },
            &ProgressBar::hidden(),
        )
        .await;
        assert_eq!(sent.failed.len(), 1);
        assert_eq!(sent.failed[0].0, 5);
        assert!(sent.failed[0].1.contains("refused"));
        // Lines before 5 are sent, and at most the one in flight beside it; none after that
        // is tried, and every line is accounted for.
        assert_eq!(&sent.sent[..4], &[1, 2, 3, 4]);
        assert!(sent.sent.len() <= 5, "{sent:?}");
        let mut all: Vec<usize> = sent.sent.iter().chain(&sent.unsent).copied().collect();
        all.push(5);
        all.sort_unstable();
        assert_eq!(all, (1..=30).collect::<Vec<_>>());
        assert!(sent.unsent.len() >= 24, "{sent:?}");
    }
}
