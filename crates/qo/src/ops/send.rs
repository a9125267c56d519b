//! `qo send FILE`: validates a file of jobs (one JSON object per line, `-` for stdin) and sends
//! them to the job queue with SendMessageBatch, up to 10 lines a request and several requests
//! at a time, with a progress bar (per line) on stderr.
//!
//! Every line is checked with [`Job::parse`] first: an invalid line stops everything before
//! anything is sent (unless `--skip-invalid`), and the error names its line number. The valid
//! lines go in groups, in file order, of at most 10 and at most SQS's batch payload (1 MiB,
//! each message's body and attribute counted; [`group_lines`]); a line over SQS's largest
//! message (1 MiB) fails by itself, unsent. One billed request sends a group, where one
//! SendMessage a line did before. When a request fails, or SQS refuses some of its entries, no
//! new request starts; the error names the lines that failed (each refused entry with SQS's
//! code and message) and the first line not tried, so the rest can be sent again.

use std::fmt;
use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::time::SystemTime;

use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use qo_aws::sqs::{BatchEntryError, JobsSent, NO_ANSWER, REQUEST_FAILED, TOO_LARGE, new_job_bytes};
use qo_core::config::ProcessEnv;
use qo_core::ports::QueueError;
use qo_core::sqs::send_batches;
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
    /// SendMessageBatch requests in flight at once, each sending up to 10 lines (it counted
    /// single sends before lines were sent in batches).
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

/// The lines `jobs` in the groups one request each sends, in file order: at most 10 a group, and
/// at most SQS's batch payload together, each line's message measured by `size` (the body and
/// its attribute, [`new_job_bytes`]). A line over SQS's largest message is a group of its own
/// ([`send_batches`]), which the send fails without sending.
pub fn group_lines(jobs: &[Line], size: impl Fn(&str) -> usize) -> Vec<&[Line]> {
    let sizes: Vec<usize> = jobs.iter().map(|l| size(&l.body)).collect();
    send_batches(&sizes).into_iter().map(|r| &jobs[r]).collect()
}

/// Why an entry of a request was not sent, as `qo send` lists it.
fn refusal(e: &BatchEntryError) -> String {
    if [TOO_LARGE, REQUEST_FAILED, NO_ANSWER].contains(&e.code.as_str()) {
        e.to_string()
    } else if e.sender_fault {
        format!("SQS refused the entry: {e} (sender fault: it fails again as it is)")
    } else {
        format!("SQS refused the entry: {e} (SQS's fault: it may succeed when sent again)")
    }
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

/// Sends `groups` ([`group_lines`]), one request each (`send` gets a group's bodies), with at
/// most `concurrency` requests in flight. A request that fails fails every line of its group;
/// an entry refused fails its line alone, with SQS's reason; a line the answer does not name
/// is failed, not counted as sent. After any failure no new request starts, but those in
/// flight finish. The bar moves by one per line sent.
pub async fn send_all<'a, F, Fut>(
    groups: &[&'a [Line]],
    concurrency: usize,
    send: F,
    bar: &ProgressBar,
) -> Sent
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Result<JobsSent, QueueError>>,
{
    let mut out = Sent::default();
    let mut pending = groups.iter();
    let mut in_flight = FuturesUnordered::new();
    let start = |group: &'a [Line]| {
        let fut = send(group.iter().map(|l| l.body.clone()).collect());
        async move { (group, fut.await) }
    };
    for group in pending.by_ref().take(concurrency.max(1)) {
        in_flight.push(start(group));
    }
    while let Some((group, result)) = in_flight.next().await {
        match result {
            Ok(answer) => {
                let mut told = vec![false; group.len()];
                for (i, _id) in &answer.sent {
                    if let (Some(line), Some(t)) = (group.get(*i), told.get_mut(*i)) {
                        *t = true;
                        out.sent.push(line.number);
                        bar.inc(1);
                    }
                }
                for (i, e) in &answer.failed {
                    if let (Some(line), Some(t)) = (group.get(*i), told.get_mut(*i)) {
                        *t = true;
                        out.failed.push((line.number, refusal(e)));
                    }
                }
                for (line, _) in group.iter().zip(&told).filter(|(_, t)| !**t) {
                    out.failed
                        .push((line.number, "not named in SQS's answer".to_string()));
                }
            }
            Err(e) => {
                let why = e.to_string();
                out.failed
                    .extend(group.iter().map(|l| (l.number, why.clone())));
            }
        }
        if out.failed.is_empty()
            && let Some(group) = pending.next()
        {
            in_flight.push(start(group));
        }
    }
    out.unsent = pending.flat_map(|g| g.iter().map(|l| l.number)).collect();
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
    let now = Timestamp::from_system(SystemTime::now());
    let groups = group_lines(&parsed.jobs, |body| new_job_bytes(body, now));
    let result = send_all(
        &groups,
        usize::from(args.concurrency),
        |bodies| {
            let queue = &queue;
            async move {
                queue
                    .send_jobs(&bodies, Timestamp::from_system(SystemTime::now()))
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

    /// The size `qo send` measures a line's message by.
    fn size(body: &str) -> usize {
        new_job_bytes(body, Timestamp::from_millis(1_700_000_000_000))
    }

    fn numbers(group: &[Line]) -> Vec<usize> {
        group.iter().map(|l| l.number).collect()
    }

    /// A sender that takes every body but those containing one of `refuse`, which it fails as
    /// SQS fails an entry; it records the size of each request.
    fn answer(bodies: &[String], refuse: &[&str]) -> JobsSent {
        let mut out = JobsSent::default();
        for (i, b) in bodies.iter().enumerate() {
            if refuse.iter().any(|r| b.contains(r)) {
                out.failed.push((
                    i,
                    BatchEntryError {
                        code: "InvalidParameterValue".into(),
                        message: Some("no".into()),
                        sender_fault: true,
                    },
                ));
            } else {
                out.sent.push((i, format!("id-{i}")));
            }
        }
        out
    }

    #[test]
    fn lines_go_ten_to_a_request_and_within_the_payload() {
        let jobs = lines(25);
        let groups = group_lines(&jobs, size);
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        assert_eq!(numbers(groups[2]), vec![21, 22, 23, 24, 25]);
        // Lines 3 to 6 of 300 KiB: three fit with the small ones before them in 1 MiB, the
        // fourth starts the next request.
        let mut jobs = lines(12);
        for l in &mut jobs[2..6] {
            l.body = format!(
                "{{\"path\":\"/{}\",\"x\":\"{}\"}}",
                l.number,
                "a".repeat(300 * 1024)
            );
        }
        let groups = group_lines(&jobs, size);
        assert_eq!(numbers(groups[0]), vec![1, 2, 3, 4, 5]);
        assert_eq!(numbers(groups[1]), (6..=12).collect::<Vec<_>>());
        assert_eq!(groups.len(), 2);
        // A line over 1 MiB with its attribute is a request of its own.
        let mut jobs = lines(3);
        jobs[1].body = "b".repeat(qo_core::sqs::MAX_MESSAGE_BYTES);
        let groups = group_lines(&jobs, size);
        assert_eq!(
            groups.iter().map(|g| numbers(g)).collect::<Vec<_>>(),
            vec![vec![1], vec![2], vec![3]]
        );
    }

    #[tokio::test]
    async fn all_lines_are_sent_with_bounded_concurrency() {
        let live = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let requests = AtomicUsize::new(0);
        let jobs = lines(95);
        let groups = group_lines(&jobs, size);
        let bar = ProgressBar::hidden();
        let sent = send_all(
            &groups,
            4,
            |bodies| {
                let (live, peak, requests) = (&live, &peak, &requests);
                async move {
                    assert!(bodies.len() <= 10, "{}", bodies.len());
                    requests.fetch_add(1, Ordering::SeqCst);
                    let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    live.fetch_sub(1, Ordering::SeqCst);
                    Ok(answer(&bodies, &[]))
                }
            },
            &bar,
        )
        .await;
        assert_eq!(sent.sent, (1..=95).collect::<Vec<_>>());
        assert!(sent.failed.is_empty() && sent.unsent.is_empty());
        assert_eq!(
            requests.load(Ordering::SeqCst),
            10,
            "95 lines in 10 requests"
        );
        assert_eq!(
            peak.load(Ordering::SeqCst),
            4,
            "4 requests in flight at most"
        );
        assert_eq!(bar.position(), 95, "the bar counts lines");
    }

    #[tokio::test]
    async fn a_failed_request_stops_new_requests_and_names_its_lines() {
        let jobs = lines(100);
        let groups = group_lines(&jobs, size);
        let sent = send_all(
            &groups,
            2,
            |bodies| async move {
                if bodies.iter().any(|b| b.contains("/25\"")) {
                    Err(QueueError::Partial {
                        op: "send",
                        failed: 1,
                        detail: "refused".into(),
                        refused: Vec::new(),
                        source: None,
                    })
                } else {
                    Ok(answer(&bodies, &[]))
                }
            },
            &ProgressBar::hidden(),
        )
        .await;
        // The third request (lines 21 to 30) failed: each of its lines is named.
        assert_eq!(
            sent.failed.iter().map(|f| f.0).collect::<Vec<_>>(),
            (21..=30).collect::<Vec<_>>()
        );
        assert!(sent.failed.iter().all(|f| f.1.contains("refused")));
        // The two requests before it are sent, and at most the one in flight beside it; none
        // after that is tried, and every line is accounted for.
        assert_eq!(&sent.sent[..20], &(1..=20).collect::<Vec<_>>()[..]);
        assert!(sent.sent.len() <= 30, "{sent:?}");
        let mut all: Vec<usize> = sent.sent.iter().chain(&sent.unsent).copied().collect();
        all.extend(21..=30);
        all.sort_unstable();
        assert_eq!(all, (1..=100).collect::<Vec<_>>());
        assert!(sent.unsent.len() >= 60, "{sent:?}");
    }

    #[tokio::test]
    async fn entries_refused_in_a_request_are_the_lines_named() {
        let jobs = lines(25);
        let groups = group_lines(&jobs, size);
        let bar = ProgressBar::hidden();
        let sent = send_all(
            &groups,
            1,
            |bodies| async move { Ok(answer(&bodies, &["/13\"", "/17\""])) },
            &bar,
        )
        .await;
        // Exactly the refused lines fail, with SQS's code and message; the rest of their
        // request is sent; the request after it is not tried.
        assert_eq!(
            sent.failed.iter().map(|f| f.0).collect::<Vec<_>>(),
            vec![13, 17]
        );
        assert!(
            sent.failed[0].1.contains("InvalidParameterValue: no")
                && sent.failed[0].1.contains("sender fault"),
            "{sent:?}"
        );
        let mut expected: Vec<usize> = (1..=20).collect();
        expected.retain(|n| *n != 13 && *n != 17);
        assert_eq!(sent.sent, expected);
        assert_eq!(sent.unsent, (21..=25).collect::<Vec<_>>());
        assert_eq!(bar.position(), 18);
    }

    #[tokio::test]
    async fn a_line_the_answer_leaves_out_is_failed_not_sent() {
        let jobs = lines(3);
        let groups = group_lines(&jobs, size);
        let sent = send_all(
            &groups,
            1,
            |_bodies| async move {
                Ok(JobsSent {
                    sent: vec![(0, "a".into()), (2, "c".into())],
                    failed: Vec::new(),
                })
            },
            &ProgressBar::hidden(),
        )
        .await;
        assert_eq!(sent.sent, vec![1, 3]);
        assert_eq!(
            sent.failed,
            vec![(2, "not named in SQS's answer".to_string())]
        );
    }
}
