//! Results delivered over the real SDK to each destination kind on a private moto server: an
//! SQS queue, a FIFO queue (deduplicated on the result id), an SNS topic (read through an SQS
//! subscription), an EventBridge bus (read through a rule's SQS target), a Lambda function
//! (moto without Docker accepts the invoke; its recorder shows the request), and a body too
//! large to send whole, which goes to S3.

use crate::common;

use std::collections::BTreeMap;

use aws_sdk_sqs::types::QueueAttributeName;
use qo_aws::AwsResults;
use qo_core::ports::ResultSink;
use qo_core::result::{Destinations, JobResult, ResultOutcome};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";

fn result(job_id: &str, body: &str) -> JobResult {
    let mut r = JobResult {
        meta: Some(serde_json::json!({"order": 42})),
        status: Some(200),
        ..JobResult::new(job_id, ResultOutcome::Succeeded)
    };
    r.set_body(body.as_bytes());
    r
}

/// A plain HTTP/1.1 request to moto's own API (`/moto-api/...`); the answer's body.
async fn moto_api(endpoint: &str, method: &str, path: &str, body: &str) -> String {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

async fn queue(sqs: &aws_sdk_sqs::Client, name: &str) -> (String, String) {
    let mut create = sqs.create_queue().queue_name(name);
    if name.ends_with(".fifo") {
        create = create.attributes(QueueAttributeName::FifoQueue, "true");
    }
    let url = create
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("url");
    (url, format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"))
}

async fn bodies(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<String> {
    let out = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .expect("receive");
    out.messages
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.body)
        .collect()
}

#[tokio::test]
async fn results_reach_every_destination_kind_and_large_bodies_go_to_s3() {
    let Some((moto, config)) = common::moto().await else {
        return;
    };
    // Lambda without Docker: moto accepts an invoke and runs nothing.
    moto_api(
        &moto.endpoint,
        "POST",
        "/moto-api/config",
        r#"{"lambda": {"use_docker": false}}"#,
    )
    .await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let sns = aws_sdk_sns::Client::new(&config);
    let events = aws_sdk_eventbridge::Client::new(&config);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    let (orders_url, orders) = queue(&sqs, "orders").await;
    let (fifo_url, fifo) = queue(&sqs, "replies.fifo").await;
    let (topic_sink_url, topic_sink) = queue(&sqs, "from-topic").await;
    let (bus_sink_url, bus_sink) = queue(&sqs, "from-bus").await;
    let topic = sns
        .create_topic()
        .name("alerts")
        .send()
        .await
        .expect("topic")
        .topic_arn
        .expect("arn");
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(&topic_sink)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .expect("subscribe");
    let bus = events
        .create_event_bus()
        .name("billing")
        .send()
        .await
        .expect("bus")
        .event_bus_arn
        .expect("arn");
    events
        .put_rule()
        .name("results")
        .event_bus_name("billing")
        .event_pattern(r#"{"source": ["quota-orchestrator"]}"#)
        .send()
        .await
        .expect("rule");
    events
        .put_targets()
        .rule("results")
        .event_bus_name("billing")
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("q")
                .arn(&bus_sink)
                .build()
                .expect("target"),
        )
        .send()
        .await
        .expect("targets");
    s3.create_bucket()
        .bucket("qo-results")
        .send()
        .await
        .expect("bucket");
    let function = format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:after-call");
    let destinations = Destinations::parse(
        &[orders.as_str(), &fifo, &topic, &bus, &function].join(","),
        "",
    )
    .expect("destinations");
    let d = |name: &str| destinations.get(name).expect(name).clone();
    moto_api(
        &moto.endpoint,
        "POST",
        "/moto-api/recorder/start-recording",
        "",
    )
    .await;

    let sink = AwsResults::new(&config, Some("qo-results".into()));
    let small = result("c-42", r#"{"customer":42}"#);
    sink.deliver(&d("orders"), &small).await.expect("to SQS");
    // A FIFO queue deduplicates a result delivered twice on its result id.
    sink.deliver(&d("replies.fifo"), &small)
        .await
        .expect("to FIFO");
    sink.deliver(&d("replies.fifo"), &small)
        .await
        .expect("again");
    sink.deliver(&d("alerts"), &small).await.expect("to SNS");
    sink.deliver(&d("billing"), &small)
        .await
        .expect("to EventBridge");
    sink.deliver(&d("after-call"), &small)
        .await
        .expect("to Lambda");
    // 600 KB: the body goes to S3, the result carries where.
    let big_body = "y".repeat(600 * 1024);
    let big = result("c-big", &big_body);
    let out = sink.deliver(&d("orders"), &big).await.expect("large");
    let location = out.body_location.expect("offloaded");
    assert_eq!(location, "s3://qo-results/results/c-big:succeeded");
    // Kept for a later delivery: the same object, and a result small enough for a queue.
    let stowed = sink.stow(&big).await.expect("stowed");
    assert_eq!(stowed.body_location.as_deref(), Some(location.as_str()));
    assert!(stowed.body.is_none() && stowed.to_json().len() < 256 * 1024);
    assert_eq!(sink.stow(&small).await.expect("small").body, small.body);

    let parse = |b: &str| serde_json::from_str::<Value>(b).expect("json");
    let got = bodies(&sqs, &orders_url).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let by_id: BTreeMap<String, Value> = got
        .iter()
        .map(|b| parse(b))
        .map(|v| (v["job_id"].as_str().unwrap_or_default().to_string(), v))
        .collect();
    assert_eq!(by_id["c-42"]["body"], r#"{"customer":42}"#);
    assert_eq!(by_id["c-42"]["meta"]["order"], 42);
    assert!(by_id["c-big"].get("body").is_none(), "{}", by_id["c-big"]);
    assert_eq!(by_id["c-big"]["body_location"], location.as_str());
    let object = s3
        .get_object()
        .bucket("qo-results")
        .key("results/c-big:succeeded")
        .send()
        .await
        .expect("the body in S3");
    let stored = object.body.collect().await.expect("read").into_bytes();
    assert_eq!(stored.len(), big_body.len());

    let fifo_got = bodies(&sqs, &fifo_url).await;
    assert_eq!(fifo_got.len(), 1, "deduplicated: {fifo_got:?}");
    let from_topic = bodies(&sqs, &topic_sink_url).await;
    assert_eq!(from_topic.len(), 1, "{from_topic:?}");
    assert_eq!(parse(&from_topic[0])["result_id"], "c-42:succeeded");
    let from_bus = bodies(&sqs, &bus_sink_url).await;
    assert_eq!(from_bus.len(), 1, "{from_bus:?}");
    let event = parse(&from_bus[0]);
    assert_eq!(event["source"], "quota-orchestrator");
    assert_eq!(event["detail-type"], "Job result");
    assert_eq!(event["detail"]["result_id"], "c-42:succeeded");
    // The Lambda invoke: asynchronous, the result as its payload.
    moto_api(
        &moto.endpoint,
        "POST",
        "/moto-api/recorder/stop-recording",
        "",
    )
    .await;
    let log = moto_api(
        &moto.endpoint,
        "GET",
        "/moto-api/recorder/download-recording",
        "",
    )
    .await;
    let invoke = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| {
            r["url"]
                .as_str()
                .is_some_and(|u| u.contains("/functions/") && u.ends_with("/invocations"))
        })
        .unwrap_or_else(|| panic!("no invoke recorded: {log}"));
    let headers = invoke["headers"].to_string().to_ascii_lowercase();
    assert!(
        headers.contains("x-amz-invocation-type") && headers.contains("event"),
        "{invoke}"
    );
    let payload = match invoke["body_encoded"].as_bool() {
        Some(true) => {
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(invoke["body"].as_str().unwrap_or_default())
                .expect("base64");
            String::from_utf8(raw).expect("utf-8")
        }
        _ => invoke["body"].as_str().unwrap_or_default().to_string(),
    };
    assert_eq!(parse(&payload)["result_id"], "c-42:succeeded", "{invoke}");

    // A destination that is not there refuses: the worker retries, then dead-letters.
    let gone =
        Destinations::parse(&format!("arn:aws:sqs:{REGION}:{ACCOUNT}:gone"), "").expect("list");
    let err = sink
        .deliver(&gone.list()[0], &small)
        .await
        .expect_err("no such queue");
    assert!(err.to_string().contains("sqs.GetQueueUrl"), "{err}");
}
