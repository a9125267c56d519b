//! The SQS adapter against moto: every JobSource and JobSink operation, send, depths, redrive.

use crate::common;

use std::time::{Duration, Instant, SystemTime};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use qo_aws::{QueueUrls, SqsQueue, ensure_queues};
use qo_core::job::Origin;
use qo_core::ports::{
    DeadLetter, JobSink, JobSource, Message, QueueError, QueueRole, Redrive, RedriveReport,
};
use qo_core::retry::GiveUp;
use qo_core::time::Timestamp;
use qo_core::{Reason, TransportKind};

fn now() -> Timestamp {
    Timestamp::from_system(SystemTime::now())
}

async fn queues(config: &aws_config::SdkConfig, fifo: bool) -> (SqsQueue, aws_sdk_sqs::Client) {
    let client = aws_sdk_sqs::Client::new(config);
    let urls = ensure_queues(&client, "jobs", fifo).await.expect("queues");
    (SqsQueue::new(client.clone(), urls), client)
}

/// Receives until `n` messages are in hand or `tries` receives came back empty.
async fn receive_n(q: &SqsQueue, n: usize) -> Vec<Message> {
    let mut out = Vec::new();
    let mut empty = 0;
    while out.len() < n && empty < 3 {
        let want = u8::try_from((n - out.len()).min(10)).unwrap();
        let got = q.receive(want, Duration::ZERO).await.expect("receive");
        if got.is_empty() {
            empty += 1;
        }
        out.extend(got);
    }
    out
}

fn depth_of(depths: &[qo_aws::QueueDepth], name: &str) -> (u64, u64, u64) {
    let d = depths.iter().find(|d| d.name == name).expect(name);
    (d.visible, d.in_flight, d.delayed)
}

/// Every message on `url` with all attributes, consumed (deleted) as read.
async fn drain_raw(client: &aws_sdk_sqs::Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut out = Vec::new();
    loop {
        let got = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .expect("raw receive")
            .messages
            .unwrap_or_default();
        if got.is_empty() {
            return out;
        }
        for m in &got {
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .expect("raw delete");
        }
        out.extend(got);
    }
}

fn attr<'a>(m: &'a aws_sdk_sqs::types::Message, name: &str) -> Option<&'a str> {
    m.message_attributes()?.get(name)?.string_value()
}

#[tokio::test]
async fn receive_carries_origin_and_batch_delete_handles_more_than_ten() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, _) = queues(&config, false).await;
    let sent_at = Timestamp::from_millis(1_700_000_000_123);
    let mut ids = Vec::new();
    for i in 0..13 {
        ids.push(
            q.send_job(&format!(r#"{{"path":"/items/{i}"}}"#), sent_at)
                .await
                .expect("send"),
        );
    }
    let got = receive_n(&q, 13).await;
    assert_eq!(got.len(), 13);
    for m in &got {
        assert_eq!(m.queue, QueueRole::Main);
        assert!(ids.contains(&m.origin.message_id));
        assert_eq!(m.origin.attempt, 0);
        assert_eq!(
            m.origin.enqueued_at,
            Some(sent_at),
            "qo-enqueued-at-ms wins"
        );
        assert!(m.body.starts_with(r#"{"path":"/items/"#));
    }
    assert_eq!(
        depth_of(&q.depths().await.unwrap(), "main"),
        (0, 13, 0),
        "all in flight"
    );
    q.delete(&got).await.expect("delete 13 in two batches");
    assert_eq!(depth_of(&q.depths().await.unwrap(), "main"), (0, 0, 0));
}

#[tokio::test]
async fn enqueue_time_falls_back_to_sent_timestamp() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, client) = queues(&config, false).await;
    let before = now();
    client
        .send_message()
        .queue_url(&q.urls().main)
        .message_body("{}")
        .send()
        .await
        .unwrap();
    let got = receive_n(&q, 1).await;
    let at = got[0].origin.enqueued_at.expect("SentTimestamp");
    assert!(
        at.as_millis() + 1000 >= before.as_millis(),
        "{at} vs {before}"
    );
    assert_eq!(got[0].origin.attempt, 0);
}

#[tokio::test]
async fn delete_reports_partial_failures() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, _) = queues(&config, false).await;
    q.send_job("{}", now()).await.unwrap();
    let mut got = receive_n(&q, 1).await;
    let mut bogus = got[0].clone();
    bogus.receipt = "not-a-receipt-handle".to_string();
    got.push(bogus);
    match q.delete(&got).await {
        Err(QueueError::Partial {
            op,
            failed,
            refused,
            ..
        }) => {
            assert_eq!(op, "delete");
            assert_eq!(failed, 1);
            assert_eq!(
                refused,
                ["not-a-receipt-handle"],
                "the refused entry is named"
            );
        }
        other => panic!("expected a partial failure, got {other:?}"),
    }
    // The good one was deleted.
    assert_eq!(depth_of(&q.depths().await.unwrap(), "main"), (0, 0, 0));
}

#[tokio::test]
async fn release_makes_messages_receivable_again() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, _) = queues(&config, false).await;
    let id = q.send_job("{}", now()).await.unwrap();
    let first = receive_n(&q, 1).await;
    assert!(
        q.receive(10, Duration::ZERO).await.unwrap().is_empty(),
        "invisible while held"
    );

    q.release(&first, Duration::ZERO).await.expect("release");
    let again = receive_n(&q, 1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].origin.message_id, id);

    // A release with a delay keeps it hidden for that long.
    q.release(&again, Duration::from_millis(1500))
        .await
        .expect("release later");
    assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(receive_n(&q, 1).await[0].origin.message_id, id);
}

#[tokio::test]
async fn long_poll_outlasts_the_read_timeout() {
    let Some((moto, config)) = common::moto().await else {
        return;
    };
    let (sender, _) = queues(&config, false).await;
    // A read timeout shorter than the long poll: the adapter must stretch it for the poll.
    let mut s = common::settings();
    s.read_timeout = Duration::from_secs(1);
    s.max_attempts = 1;
    let short = qo_aws::local_config(&s, &moto.endpoint).await;
    let q = SqsQueue::new(aws_sdk_sqs::Client::new(&short), sender.urls().clone());
    let start = Instant::now();
    let got = q
        .receive(10, Duration::from_secs(3))
        .await
        .expect("a long poll is not a read timeout");
    assert!(got.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );

    // And it returns early when a message arrives meanwhile.
    let send = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        sender.send_job("{}", now()).await.unwrap()
    });
    let start = Instant::now();
    let got = q
        .receive(10, Duration::from_secs(10))
        .await
        .expect("receive");
    let id = send.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].origin.message_id, id);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn dead_letter_carries_the_reason() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, client) = queues(&config, false).await;
    // A final status whose body excerpt is far longer than the attribute keeps.
    let long_reason = Reason::FinalStatus {
        status: 400,
        excerpt: "x".repeat(5000),
    };
    q.dead_letter(DeadLetter {
        body: r#"{"path":"/bad"}"#.to_string(),
        reason: long_reason,
        origin: Origin {
            message_id: "m-123".to_string(),
            attempt: 4,
            throttled: 0,
            enqueued_at: Some(Timestamp::from_millis(1_600_000_000_000)),
            group_id: None,
            dedup_id: None,
            function: None,
        },
    })
    .await
    .expect("dead-letter");
    let dlq = drain_raw(&client, &q.urls().dlq).await;
    assert_eq!(dlq.len(), 1);
    let m = &dlq[0];
    assert_eq!(m.body(), Some(r#"{"path":"/bad"}"#));
    let reason = attr(m, "qo-reason").expect("reason");
    assert!(reason.starts_with("HTTP 400: xxx"));
    assert_eq!(reason.len(), qo_aws::sqs::MAX_REASON_BYTES);
    assert_eq!(attr(m, "qo-attempt"), Some("4"));
    assert_eq!(attr(m, "qo-source-message-id"), Some("m-123"));
    assert_eq!(attr(m, "qo-enqueued-at-ms"), Some("1600000000000"));
}

#[tokio::test]
async fn requeue_sets_attempt_and_delay_on_the_retry_queue() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, _) = queues(&config, false).await;
    let enqueued = Timestamp::from_millis(1_650_000_000_000);
    q.send_job(r#"{"path":"/x"}"#, enqueued).await.unwrap();
    let got = receive_n(&q, 1).await;
    let next = Origin {
        attempt: got[0].origin.attempt + 1,
        ..got[0].origin.clone()
    };
    q.requeue(&got[0].body, &next, Duration::from_millis(1200))
        .await
        .expect("requeue");
    q.delete(&got).await.unwrap();

    let depths = q.depths().await.unwrap();
    assert_eq!(
        depth_of(&depths, "retry"),
        (0, 0, 1),
        "delayed on the retry queue"
    );
    assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let back = receive_n(&q, 1).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].queue, QueueRole::Retry);
    assert_eq!(back[0].body, r#"{"path":"/x"}"#);
    assert_eq!(back[0].origin.attempt, 1);
    assert_eq!(
        back[0].origin.enqueued_at,
        Some(enqueued),
        "first enqueue kept"
    );
}

/// A 429 raises `throttled`, never `attempt`: the count crosses the wire in `qo-throttled`
/// (absent while 0), survives a re-queue and goes on a dead letter; a redrive drops it.
#[tokio::test]
async fn the_429_count_round_trips_in_qo_throttled() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, client) = queues(&config, false).await;
    q.send_job(r#"{"path":"/t"}"#, now()).await.unwrap();
    let got = receive_n(&q, 1).await;
    assert_eq!(got[0].origin.throttled, 0, "a fresh job has none");
    let once = Origin {
        throttled: 1,
        ..got[0].origin.clone()
    };
    q.requeue(&got[0].body, &once, Duration::ZERO)
        .await
        .expect("requeue");
    q.delete(&got).await.unwrap();
    let back = receive_n(&q, 1).await;
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].origin.attempt, back[0].origin.throttled), (0, 1));
    let twice = Origin {
        attempt: 2,
        throttled: 37,
        ..back[0].origin.clone()
    };
    q.requeue(&back[0].body, &twice, Duration::ZERO)
        .await
        .expect("requeue");
    q.delete(&back).await.unwrap();
    let raw = drain_raw(&client, q.urls().retry.as_deref().expect("retry queue")).await;
    assert_eq!(raw.len(), 1);
    assert_eq!(attr(&raw[0], "qo-throttled"), Some("37"));
    assert_eq!(attr(&raw[0], "qo-attempt"), Some("2"));
    assert_eq!(
        attr(&raw[0], "qo-function"),
        None,
        "no function named, none written"
    );

    // The pool's function that had the job answered 429 crosses the wire in `qo-function`.
    let by_a = Origin {
        function: Some("qo-worker-a".into()),
        ..Origin::default()
    };
    q.requeue(r#"{"path":"/f"}"#, &by_a, Duration::ZERO)
        .await
        .expect("requeue");
    let back = receive_n(&q, 1).await;
    assert_eq!(back[0].origin.function.as_deref(), Some("qo-worker-a"));
    q.delete(&back).await.unwrap();

    // Zero is not written.
    q.requeue(r#"{"path":"/z"}"#, &Origin::default(), Duration::ZERO)
        .await
        .expect("requeue");
    let raw = drain_raw(&client, q.urls().retry.as_deref().expect("retry queue")).await;
    assert_eq!(attr(&raw[0], "qo-throttled"), None);

    // A dead letter keeps it; a redrive starts the job afresh.
    q.dead_letter(DeadLetter {
        body: r#"{"path":"/d"}"#.into(),
        reason: Reason::GaveUp(GiveUp::Throttled {
            times: 100,
            last_retry_after: Duration::from_secs(1),
        }),
        origin: Origin {
            message_id: "m-9".into(),
            throttled: 100,
            ..Origin::default()
        },
    })
    .await
    .unwrap();
    q.redrive(None, false).await.expect("redrive");
    let moved = receive_n(&q, 1).await;
    assert_eq!(moved.len(), 1);
    assert_eq!((moved[0].origin.attempt, moved[0].origin.throttled), (0, 0));
}

#[tokio::test]
async fn retry_queue_is_polled_first() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, _) = queues(&config, false).await;
    let main_id = q.send_job(r#"{"path":"/main"}"#, now()).await.unwrap();
    q.requeue(
        r#"{"path":"/retry"}"#,
        &Origin {
            message_id: "earlier".into(),
            attempt: 1,
            ..Origin::default()
        },
        Duration::ZERO,
    )
    .await
    .unwrap();
    let one = q.receive(1, Duration::ZERO).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].queue, QueueRole::Retry);
    assert_eq!(one[0].body, r#"{"path":"/retry"}"#);
    let rest = q.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].queue, QueueRole::Main);
    assert_eq!(rest[0].origin.message_id, main_id);

    // Without a retry queue, re-queues go to the main queue.
    let urls = QueueUrls {
        retry: None,
        ..q.urls().clone()
    };
    let plain = SqsQueue::new(q.client().clone(), urls);
    plain
        .requeue("{}", &Origin::default(), Duration::ZERO)
        .await
        .unwrap();
    let got = receive_n(&plain, 1).await;
    assert_eq!(got[0].queue, QueueRole::Main);
    assert_eq!(got[0].body, "{}");
}

#[tokio::test]
async fn fifo_requeue_keeps_the_message_group() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, client) = queues(&config, true).await;
    assert!(q.is_fifo());
    client
        .send_message()
        .queue_url(&q.urls().main)
        .message_body(r#"{"path":"/fifo"}"#)
        .message_group_id("tenant-7")
        .message_deduplication_id("job-42")
        .send()
        .await
        .unwrap();
    let got = receive_n(&q, 1).await;
    assert_eq!(got[0].origin.group_id.as_deref(), Some("tenant-7"));
    assert_eq!(got[0].origin.dedup_id.as_deref(), Some("job-42"));
    let next = Origin {
        attempt: 1,
        ..got[0].origin.clone()
    };
    // FIFO queues take no per-message delay: it is dropped, not refused.
    q.requeue(&got[0].body, &next, Duration::from_secs(30))
        .await
        .expect("FIFO requeue");
    q.delete(&got).await.unwrap();
    let back = receive_n(&q, 1).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].queue, QueueRole::Retry);
    assert_eq!(back[0].origin.group_id.as_deref(), Some("tenant-7"));
    let first_id = back[0].origin.dedup_id.clone().expect("a dedup id");
    assert_ne!(first_id, "job-42", "a deduplication id of its own");
    assert_eq!(back[0].origin.attempt, 1);

    // The next re-queue gets another id of its own, and a FIFO dead-letter keeps the group
    // too.
    let next = Origin {
        attempt: 2,
        ..back[0].origin.clone()
    };
    q.requeue(&back[0].body, &next, Duration::ZERO)
        .await
        .unwrap();
    q.dead_letter(DeadLetter {
        body: back[0].body.clone(),
        reason: Reason::GaveUp(GiveUp::Attempts {
            attempts: 2,
            last: Box::new(Reason::ServerError {
                status: 503,
                excerpt: String::new(),
            }),
        }),
        origin: next.clone(),
    })
    .await
    .expect("FIFO dead-letter");
    q.delete(&back).await.unwrap();
    let again = receive_n(&q, 1).await;
    assert_eq!(again.len(), 1);
    let second_id = again[0].origin.dedup_id.clone().expect("a dedup id");
    assert_ne!(second_id, first_id);
    assert_ne!(second_id, "job-42");
    let dlq = drain_raw(&client, &q.urls().dlq).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0]
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
            .map(String::as_str),
        Some("tenant-7")
    );
}

/// SQS (and moto) accept and drop a FIFO send whose deduplication id was seen in the last 5
/// minutes. The worker re-queues a job untried with the same attempt (late, claimed elsewhere,
/// a refused credential), possibly twice within 5 minutes: each must arrive.
#[tokio::test]
async fn fifo_untried_requeues_of_the_same_attempt_within_five_minutes_both_arrive() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, client) = queues(&config, true).await;
    // First, that moto honours deduplication at all: a second send with the same id is
    // accepted and dropped.
    for _ in 0..2 {
        client
            .send_message()
            .queue_url(&q.urls().main)
            .message_body(r#"{"id":"job-9","path":"/fifo"}"#)
            .message_group_id("tenant-9")
            .message_deduplication_id("job-9")
            .send()
            .await
            .expect("send");
    }
    let got = receive_n(&q, 2).await;
    assert_eq!(got.len(), 1, "moto dropped the duplicate send");
    q.delete(&got).await.unwrap();

    // Two untried re-queues of attempt 0, each of the copy the previous one made.
    let mut current = got;
    for round in 1..=2 {
        q.requeue(&current[0].body, &current[0].origin, Duration::ZERO)
            .await
            .expect("requeue");
        q.delete(&current).await.unwrap();
        let back = receive_n(&q, 1).await;
        assert_eq!(back.len(), 1, "re-queue {round} was received, not dropped");
        assert_eq!(back[0].origin.attempt, 0);
        assert_eq!(back[0].origin.group_id.as_deref(), Some("tenant-9"));
        current = back;
    }
    // And a dead letter and a redrive of the same job twice within the window (a guard: the
    // old redrive id, the dead letter's own message id, was already unique per send).
    for round in 1..=2 {
        q.dead_letter(DeadLetter {
            body: current[0].body.clone(),
            reason: Reason::FinalStatus {
                status: 404,
                excerpt: String::new(),
            },
            origin: current[0].origin.clone(),
        })
        .await
        .expect("dead-letter");
        q.delete(&current).await.unwrap();
        let report = q.redrive(None, false).await.expect("redrive");
        assert_eq!(report.moved, 1, "redrive {round} moved the dead letter");
        let back = receive_n(&q, 1).await;
        assert_eq!(back.len(), 1, "redrive {round} was received, not dropped");
        current = back;
    }
}

#[tokio::test]
async fn redrive_dry_run_counts_and_real_run_moves() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, _) = queues(&config, false).await;
    for i in 0..3 {
        q.dead_letter(DeadLetter {
            body: format!(r#"{{"path":"/d/{i}"}}"#),
            reason: Reason::GaveUp(GiveUp::Attempts {
                attempts: 5,
                last: Box::new(Reason::Transport {
                    kind: TransportKind::Timeout,
                    detail: "read".into(),
                }),
            }),
            origin: Origin {
                message_id: format!("m{i}"),
                attempt: 5,
                enqueued_at: Some(Timestamp::from_millis(1_000 + i)),
                ..Origin::default()
            },
        })
        .await
        .unwrap();
    }
    let dry = q.redrive(Some(10), true).await.expect("dry run");
    assert_eq!(
        dry,
        RedriveReport {
            dead: 3,
            moved: 0,
            dry_run: true
        }
    );
    assert_eq!(
        depth_of(&q.depths().await.unwrap(), "dlq"),
        (3, 0, 0),
        "untouched"
    );

    let real = q.redrive(Some(2), false).await.expect("redrive");
    assert!(!real.dry_run);
    assert_eq!((real.dead, real.moved), (3, 2));
    let depths = q.depths().await.unwrap();
    assert_eq!(depth_of(&depths, "dlq"), (1, 0, 0));
    assert_eq!(depth_of(&depths, "main"), (2, 0, 0));
    let moved = receive_n(&q, 2).await;
    assert_eq!(moved.len(), 2);
    for m in &moved {
        assert_eq!(m.queue, QueueRole::Main);
        assert_eq!(m.origin.attempt, 0, "attempts reset");
        let job = qo_core::Job::parse(&m.body).expect("a job");
        let n: u64 = job.path["/d/".len()..].parse().expect("its number");
        assert_eq!(
            job.id,
            Some(format!("m{n}")),
            "the copy carries the key of the message it was dead-lettered from"
        );
        assert_eq!(
            m.origin.enqueued_at,
            Some(Timestamp::from_millis(1_000 + n))
        );
    }

    let rest = q.redrive(None, false).await.unwrap();
    assert_eq!((rest.dead, rest.moved), (1, 1));
    assert_eq!(depth_of(&q.depths().await.unwrap(), "dlq"), (0, 0, 0));
}

/// Ten jobs of about 110 KB are over SendMessageBatch's 1 MiB together (SQS, and moto, refuse
/// such a call whole: `BatchRequestTooLong`): the sweep's re-send and the redrive of the
/// dead-letter queue send them in calls under it, and every one arrives.
#[tokio::test]
async fn resend_and_redrive_split_large_jobs_under_one_mib_a_call() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, client) = queues(&config, false).await;
    let pad = "x".repeat(110_000);
    let bodies: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"path":"/big/{i}","body":"{pad}"}}"#))
        .collect();
    let out = q.send_jobs(&bodies, now()).await.expect("send_jobs");
    assert_eq!(
        (out.sent.len(), out.failed.len()),
        (10, 0),
        "{:?}",
        out.failed
    );

    // The retention sweep's fresh copies.
    let held = receive_n(&q, 10).await;
    assert_eq!(held.len(), 10);
    q.resend(&held, Duration::ZERO)
        .await
        .expect("resend of ten large jobs");
    q.delete(&held).await.expect("delete originals");
    let copies = drain_raw(&client, &q.urls().main).await;
    let mut paths: Vec<&str> = copies
        .iter()
        .filter_map(|m| m.body()?.split(r#"","body""#).next())
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 10, "each copied once: {paths:?}");

    // The same ten dead-lettered, then redriven.
    for (i, body) in bodies.iter().enumerate() {
        q.dead_letter(DeadLetter {
            body: body.clone(),
            reason: Reason::InvalidJob(qo_core::JobError::Malformed("test".into())),
            origin: Origin {
                message_id: format!("m{i}"),
                enqueued_at: Some(now()),
                ..Origin::default()
            },
        })
        .await
        .expect("dead letter");
    }
    let report = q
        .redrive(None, false)
        .await
        .expect("redrive of ten large jobs");
    assert_eq!(report.moved, 10, "{report:?}");
    assert_eq!(depth_of(&q.depths().await.unwrap(), "dlq"), (0, 0, 0));
    assert_eq!(drain_raw(&client, &q.urls().main).await.len(), 10);
}

#[tokio::test]
async fn send_jobs_batches_new_jobs_and_fails_a_body_over_the_limit_alone() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, client) = queues(&config, false).await;
    let sent_at = Timestamp::from_millis(1_700_000_000_321);
    // 25 jobs, and in their midst one body of 1 MiB: with its attribute it is over SQS's
    // largest message, so it fails alone, without a request, and the others go.
    let mut bodies: Vec<String> = (0..25)
        .map(|i| format!(r#"{{"path":"/items/{i}"}}"#))
        .collect();
    bodies.insert(12, "x".repeat(qo_core::sqs::MAX_MESSAGE_BYTES));
    let out = q.send_jobs(&bodies, sent_at).await.expect("send_jobs");
    assert_eq!(out.failed.len(), 1, "{:?}", out.failed);
    let (i, why) = &out.failed[0];
    assert_eq!(*i, 12);
    assert_eq!(why.code, qo_aws::sqs::TOO_LARGE);
    assert!(why.sender_fault);
    assert!(
        why.to_string().contains("1048576"),
        "the error says the limit: {why}"
    );
    assert_eq!(
        out.sent.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (0..26).filter(|i| *i != 12).collect::<Vec<_>>()
    );
    let ids: std::collections::HashSet<&String> = out.sent.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), 25, "a message id each");

    // They all arrived, with the attribute `send_job` sets, and nothing else of ours.
    let got = drain_raw(&client, &q.urls().main).await;
    assert_eq!(got.len(), 25);
    for m in &got {
        assert!(ids.contains(&m.message_id().unwrap().to_string()));
        assert_eq!(attr(m, "qo-enqueued-at-ms"), Some("1700000000321"));
        assert_eq!(m.message_attributes().map(|a| a.len()), Some(1));
        assert!(m.body().unwrap().starts_with(r#"{"path":"/items/"#));
    }
    let mut paths: Vec<String> = got.iter().map(|m| m.body().unwrap().to_string()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 25, "each job once");

    // Nothing to send: no request, nothing sent.
    let none: [&str; 0] = [];
    assert_eq!(
        q.send_jobs(&none, sent_at).await.expect("empty"),
        qo_aws::JobsSent::default()
    );
}

#[tokio::test]
async fn fifo_send_jobs_go_to_the_default_group_with_ids_of_their_own() {
    let Some((_moto, config)) = common::moto().await else {
        return;
    };
    let (q, client) = queues(&config, true).await;
    let bodies: Vec<String> = (0..12).map(|i| format!(r#"{{"path":"/f/{i}"}}"#)).collect();
    let out = q.send_jobs(&bodies, now()).await.expect("send_jobs");
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    assert_eq!(out.sent.len(), 12);
    let got = drain_raw(&client, &q.urls().main).await;
    assert_eq!(got.len(), 12, "no deduplication between them");
    let system = |m: &aws_sdk_sqs::types::Message, k| {
        m.attributes()
            .and_then(|a| a.get(&k))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        got.iter()
            .all(|m| system(m, MessageSystemAttributeName::MessageGroupId) == "default")
    );
    let dedup: std::collections::HashSet<String> = got
        .iter()
        .map(|m| system(m, MessageSystemAttributeName::MessageDeduplicationId))
        .collect();
    assert_eq!(dedup.len(), 12);
}
