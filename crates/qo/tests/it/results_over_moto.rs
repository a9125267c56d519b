//! Results end to end: the real orchestrator loop and the real worker (wired by `qo::system`)
//! over the real AWS adapters against a private moto server, the queues with the template's
//! attributes, results delivered by `qo_aws::AwsResults` on the real clock.
//!
//! One run of nine jobs at 10/s checks that:
//! - a result reaches each destination kind: an SQS queue, a FIFO queue, an SNS topic (read
//!   through an SQS subscription), an EventBridge bus (read through a rule's SQS target) and a
//!   Lambda function (moto without Docker accepts the invoke; its recorder shows the request);
//! - a 600,000-byte answer goes through S3: the result carries the object's location and no
//!   body, and the object holds the whole answer;
//! - a job naming a destination the stack does not declare is dead-lettered with a reason
//!   naming it, and the API never sees it;
//! - a destination that refuses every delivery for its first seconds gets its results once it
//!   recovers: the worker re-queues them (60 s on the retry queue, over moto) and the
//!   orchestrator hands them back, with no second call;
//! - the API was called exactly once per job.
//!
//! The re-queue waits 60 s (`qo_worker::results::requeue_delay(0)`), so the test takes about
//! 70 s of wall time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use qo_aws::{AwsResults, LocalStack, SdkSettings, local_config};
use qo_core::ports::{Delivered, ResultError, ResultSink};
use qo_core::result::{Destination, Destinations, JobResult};
use qo_core::sqs::QueueAttributes;
use qo_core::{Clock, Job, NoObserver, QuotaSpec, Timestamp, TokioClock};
use qo_memory::InvokerOptions;
use qo_orchestrator::OrchestratorConfig;
use qo_testkit::{MotoServer, require};
use qo_worker::{ApiResponse, HttpCall, HttpError, WorkerConfig, WorkerError};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use qo::system::{Parts, System};

/// The size of the `/big` answer: past what a queue takes, so its body goes to S3.
const BIG: usize = 600_000;

/// The destination that refuses for a while, and for how long from the start.
const DOWN: &str = "orders";
const OUTAGE: Duration = Duration::from_secs(30);

/// Give up on the results this long after the jobs were sent (a pass takes about 70 s).
const GIVE_UP: Duration = Duration::from_secs(110);

/// An API in memory: 200 with a small JSON body, `BIG` bytes for `/big`; every call's path
/// kept.
#[derive(Default)]
struct Api {
    calls: Mutex<Vec<String>>,
}

impl Api {
    fn calls(&self) -> BTreeMap<String, usize> {
        let mut by_path = BTreeMap::new();
        for path in self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            *by_path.entry(path.clone()).or_insert(0) += 1;
        }
        by_path
    }
}

#[async_trait]
impl HttpCall for Api {
    async fn call(&self, job: &Job) -> Result<ApiResponse, HttpError> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(job.path.clone());
        let (body, content_type) = if job.path == "/big" {
            (vec![b'y'; BIG], "text/plain")
        } else {
            let body = json!({"path": job.path, "ok": true}).to_string();
            (body.into_bytes(), "application/json")
        };
        Ok(ApiResponse {
            headers: vec![("content-type".to_string(), content_type.to_string())],
            body_start: body,
            ..ApiResponse::status(200)
        })
    }

    async fn health(&self) -> Result<ApiResponse, HttpError> {
        Ok(ApiResponse::status(200))
    }

    fn set_api_key(&self, _key: Option<&str>) -> Result<bool, WorkerError> {
        Ok(false)
    }
}

/// One `deliver` the worker asked for.
#[derive(Clone, Debug)]
struct Attempt {
    at: Timestamp,
    job_id: String,
    destination: String,
    delivered: bool,
}

/// `AwsResults` behind an outage: every delivery to [`DOWN`] is refused until `until` on the
/// system's clock, then delivered; other destinations, and `stow`, go straight through.
struct Outage {
    inner: AwsResults,
    clock: Arc<TokioClock>,
    until: Timestamp,
    attempts: Mutex<Vec<Attempt>>,
}

impl Outage {
    fn attempts(&self) -> Vec<Attempt> {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The jobs whose result was delivered somewhere.
    fn delivered(&self) -> BTreeSet<String> {
        self.attempts()
            .into_iter()
            .filter(|a| a.delivered)
            .map(|a| a.job_id)
            .collect()
    }

    fn record(&self, at: Timestamp, to: &Destination, result: &JobResult, delivered: bool) {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Attempt {
                at,
                job_id: result.job_id.clone(),
                destination: to.name.clone(),
                delivered,
            });
    }
}

#[async_trait]
impl ResultSink for Outage {
    async fn deliver(
        &self,
        to: &Destination,
        result: &JobResult,
    ) -> Result<Delivered, ResultError> {
        let now = self.clock.now();
        if to.name == DOWN && now < self.until {
            self.record(now, to, result, false);
            return Err(ResultError::Refused {
                op: "test.Outage",
                detail: format!("{DOWN} is down until {}", self.until.to_rfc3339()),
            });
        }
        let out = self.inner.deliver(to, result).await;
        self.record(now, to, result, out.is_ok());
        out
    }

    async fn stow(&self, result: &JobResult) -> Result<JobResult, ResultError> {
        self.inner.stow(result).await
    }
}

/// A raw HTTP/1.1 exchange with moto: `(status, body)`. With `service`, a SigV4-shaped
/// `Authorization` header names it (moto routes by it and checks no signature): the SNS,
/// EventBridge and S3 calls this crate has no SDK for.
async fn raw(
    endpoint: &str,
    service: Option<(&str, &str)>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let addr = endpoint.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some((service, region)) = service {
        head.push_str(&format!(
            "Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/{region}/{service}/\
             aws4_request, SignedHeaders=host, Signature=0\r\n"
        ));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out[split + 4..].to_vec();
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

/// A chunked body's bytes.
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16);
        let Ok(size) = size else { break };
        if size == 0 || rest.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
        rest = &rest[(eol + 4 + size).min(rest.len())..];
    }
    out
}

/// `text` for an `application/x-www-form-urlencoded` value.
fn form(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What lies between `<tag>` and `</tag>` in `xml`.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].to_string())
}

/// The moto server's SNS, EventBridge and S3, over [`raw`].
struct Moto<'a> {
    endpoint: &'a str,
    region: String,
}

impl Moto<'_> {
    async fn call(
        &self,
        service: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        let (status, out) = raw(
            self.endpoint,
            Some((service, &self.region)),
            method,
            path,
            headers,
            body,
        )
        .await;
        assert!(
            (200..300).contains(&status),
            "{service} {method} {path}: {status} {}",
            String::from_utf8_lossy(&out)
        );
        out
    }

    /// An SNS query-protocol action.
    async fn sns(&self, params: &[(&str, &str)]) -> String {
        let body = params
            .iter()
            .chain([("Version", "2010-03-31")].iter())
            .map(|(k, v)| format!("{k}={}", form(v)))
            .collect::<Vec<_>>()
            .join("&");
        let ct = [("Content-Type", "application/x-www-form-urlencoded")];
        let out = self.call("sns", "POST", "/", &ct, body.as_bytes()).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// An EventBridge JSON action.
    async fn events(&self, action: &str, body: Value) -> Value {
        let target = format!("AWSEvents.{action}");
        let headers = [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", target.as_str()),
        ];
        let out = self
            .call("events", "POST", "/", &headers, body.to_string().as_bytes())
            .await;
        serde_json::from_slice(&out).unwrap_or(Value::Null)
    }
}

/// An SQS queue's URL and ARN (a FIFO one when its name ends in `.fifo`).
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
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue attributes")
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .expect("QueueArn");
    (url, arn)
}

/// Every message on the queue at `url` (left in flight), with its `qo-reason` attribute.
async fn messages(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<(Value, Option<String>)> {
    let mut all = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive");
        let got = out.messages.unwrap_or_default();
        if got.is_empty() {
            return all;
        }
        for m in got {
            let body = m.body.unwrap_or_default();
            let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
            let reason = m
                .message_attributes
                .and_then(|mut a| a.remove(qo_aws::sqs::ATTR_REASON))
                .and_then(|a| a.string_value);
            all.push((value, reason));
        }
    }
}

/// The results on a queue, by job id.
fn by_job(got: &[(Value, Option<String>)]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (v, _) in got {
        let id = v["job_id"].as_str().unwrap_or_default().to_string();
        out.entry(id).or_default().push(v.clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_reach_every_destination_kind_over_moto_and_survive_an_outage() {
    let _one = crate::ONE_AT_A_TIME.lock().await;
    let Some(moto) = require(MotoServer::start().await, "moto server") else {
        return;
    };
    let wall = Instant::now();
    let settings = SdkSettings {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
        max_attempts: 2,
    };
    let config: SdkConfig = local_config(&settings, &moto.endpoint).await;
    let region = config
        .region()
        .map_or("us-east-1", |r| r.as_ref())
        .to_string();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let prefix = format!("qo-results-{run}");
    let stack = LocalStack::create(config.clone(), &prefix, &prefix, QueueAttributes::TEMPLATE)
        .await
        .expect("table and queues");
    let sqs = aws_sdk_sqs::Client::new(&config);
    let aws = Moto {
        endpoint: &moto.endpoint,
        region: region.clone(),
    };

    // The destinations, each of its kind, and what reads them.
    let (orders_url, orders) = queue(&sqs, "orders").await;
    let (archive_url, archive) = queue(&sqs, "archive").await;
    let (fifo_url, fifo) = queue(&sqs, "replies.fifo").await;
    let (topic_sink_url, topic_sink) = queue(&sqs, "from-topic").await;
    let (bus_sink_url, bus_sink) = queue(&sqs, "from-bus").await;
    let account = orders.split(':').nth(4).expect("account").to_string();
    let created = aws
        .sns(&[("Action", "CreateTopic"), ("Name", "alerts")])
        .await;
    let topic = xml_text(&created, "TopicArn").unwrap_or_else(|| panic!("topic: {created}"));
    aws.sns(&[
        ("Action", "Subscribe"),
        ("TopicArn", &topic),
        ("Protocol", "sqs"),
        ("Endpoint", &topic_sink),
        ("Attributes.entry.1.key", "RawMessageDelivery"),
        ("Attributes.entry.1.value", "true"),
    ])
    .await;
    let bus = aws
        .events("CreateEventBus", json!({"Name": "billing"}))
        .await;
    let bus = bus["EventBusArn"].as_str().expect("bus ARN").to_string();
    let pattern = json!({"source": [qo_aws::results::EVENT_SOURCE]}).to_string();
    aws.events(
        "PutRule",
        json!({"Name": "results", "EventBusName": "billing", "EventPattern": pattern}),
    )
    .await;
    aws.events(
        "PutTargets",
        json!({"Rule": "results", "EventBusName": "billing",
               "Targets": [{"Id": "q", "Arn": bus_sink}]}),
    )
    .await;
    let function = format!("arn:aws:lambda:{region}:{account}:function:after-call");
    let bucket = format!("qo-results-{run}");
    let location = if region == "us-east-1" {
        String::new()
    } else {
        format!(
            "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
        )
    };
    aws.call("s3", "PUT", &format!("/{bucket}"), &[], location.as_bytes())
        .await;
    // Lambda without Docker: moto accepts an invoke and runs nothing; its recorder shows it.
    let (status, _) = raw(
        &moto.endpoint,
        None,
        "POST",
        "/moto-api/config",
        &[("Content-Type", "application/json")],
        br#"{"lambda": {"use_docker": false}}"#,
    )
    .await;
    assert_eq!(status, 201, "moto's lambda config");
    let declared = [&orders, &archive, &fifo, &topic, &bus, &function]
        .map(String::as_str)
        .join(",");
    let destinations = Destinations::parse(&declared, "archive").expect("destinations");

    // The system, on the real clock: the worker's results through the outage.
    let clock = Arc::new(TokioClock::system());
    let api = Arc::new(Api::default());
    let sink = Arc::new(Outage {
        inner: AwsResults::new(&config, Some(bucket.clone())),
        clock: clock.clone(),
        until: clock.now().plus(OUTAGE),
        attempts: Mutex::default(),
    });
    let mut worker = WorkerConfig::new("http://api.invalid".parse().expect("url"))
        .with_function_timeout(Duration::from_secs(240));
    worker.retry_delay = Duration::from_secs(1);
    worker.destinations = destinations.clone();
    let mut orchestrator =
        OrchestratorConfig::with_quota("10/s".parse::<QuotaSpec>().expect("quota"));
    orchestrator.dispatch_lead = Duration::from_millis(1_000);
    orchestrator.stop_margin = Duration::from_millis(500);
    orchestrator.idle_exit = Some(Duration::from_secs(2));
    orchestrator.owner = "results-over-moto".to_string();
    orchestrator.destinations = destinations;
    let system = System::assemble(Parts {
        clock: clock.clone(),
        queue: stack.queue(),
        store: stack.store(),
        http: vec![api.clone()],
        worker,
        orchestrator,
        invoker: InvokerOptions::template(),
        observer: Arc::new(NoObserver),
        results: Some(sink.clone() as Arc<dyn ResultSink>),
        around: None,
    })
    .expect("system");

    // The jobs: one a destination kind, two to the one that is down, two to the default (one
    // answered 600 KB), and one naming a destination the stack does not declare.
    let id = |name: &str| format!("{run}-{name}");
    let jobs: Vec<(String, &str, Option<&str>)> = vec![
        (id("orders-1"), "/orders/1", Some("orders")),
        (id("orders-2"), "/orders/2", Some("orders")),
        (id("fifo"), "/fifo", Some("replies.fifo")),
        (id("topic"), "/topic", Some("alerts")),
        (id("bus"), "/bus", Some("billing")),
        (id("lambda"), "/lambda", Some("after-call")),
        (id("plain"), "/plain", None),
        (id("big"), "/big", None),
        (id("payments"), "/payments", Some("payments")),
    ];
    let bodies: Vec<String> = jobs
        .iter()
        .map(|(id, path, reply_to)| {
            let mut job = json!({"id": id, "path": path, "meta": {"job": id}});
            if let Some(to) = reply_to {
                job["reply_to"] = json!(to);
            }
            job.to_string()
        })
        .collect();
    let expected: BTreeSet<String> = jobs
        .iter()
        .filter(|j| j.2 != Some("payments"))
        .map(|j| j.0.clone())
        .collect();

    for step in ["reset-recording", "start-recording"] {
        let path = format!("/moto-api/recorder/{step}");
        raw(&moto.endpoint, None, "POST", &path, &[], b"").await;
    }
    let sent = stack
        .queue()
        .send_jobs(&bodies, clock.now())
        .await
        .expect("send");
    assert!(sent.failed.is_empty(), "{:?}", sent.failed);

    // Orchestrator runs (each stops after 2 s idle, as a scheduled one would) until every
    // result was delivered.
    let started = Instant::now();
    let mut recording = true;
    while sink.delivered() != expected && started.elapsed() < GIVE_UP {
        let deadline = clock.now().plus(Duration::from_secs(30));
        system.run_until(deadline).await.expect("run");
        if recording && sink.delivered().contains(&id("lambda")) {
            raw(
                &moto.endpoint,
                None,
                "POST",
                "/moto-api/recorder/stop-recording",
                &[],
                b"",
            )
            .await;
            recording = false;
        }
    }
    system.wait_idle().await;
    let attempts = sink.attempts();
    assert_eq!(
        sink.delivered(),
        expected,
        "every result delivered within {GIVE_UP:?}: {attempts:#?}"
    );

    // 5: the API saw every job exactly once, and never the refused one (3).
    let calls = api.calls();
    let paths: BTreeMap<String, usize> = jobs
        .iter()
        .filter(|j| j.2 != Some("payments"))
        .map(|j| (j.1.to_string(), 1))
        .collect();
    assert_eq!(calls, paths, "one call per job, none for /payments");

    // 4: the destination that was down refused each of its results (the worker's tries), and
    // got each after it recovered, through the 60 s re-queue the orchestrator handed back.
    for job in [id("orders-1"), id("orders-2")] {
        let mine: Vec<&Attempt> = attempts.iter().filter(|a| a.job_id == job).collect();
        let refused: Vec<&&Attempt> = mine.iter().filter(|a| !a.delivered).collect();
        let delivered: Vec<&&Attempt> = mine.iter().filter(|a| a.delivered).collect();
        assert_eq!(
            refused.len(),
            qo_worker::results::DELIVERY_ATTEMPTS as usize,
            "{job}: refused while down: {mine:#?}"
        );
        assert_eq!(delivered.len(), 1, "{job}: delivered once: {mine:#?}");
        let (first, last) = (refused[0].at, refused[refused.len() - 1].at);
        assert!(
            last < sink.until && delivered[0].at >= sink.until,
            "{mine:#?}"
        );
        assert!(
            delivered[0].at.since(first) >= qo_worker::results::requeue_delay(0),
            "{job}: delivered again only after the re-queue's delay: {mine:#?}"
        );
        assert!(mine.iter().all(|a| a.destination == DOWN));
    }
    // No other result was refused, or delivered twice.
    assert_eq!(
        attempts.iter().filter(|a| a.delivered).count(),
        expected.len(),
        "{attempts:#?}"
    );

    // 1 and 2: what each destination holds.
    let got = by_job(&messages(&sqs, &orders_url).await);
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([id("orders-1"), id("orders-2")]),
        "{got:#?}"
    );
    for (job, results) in &got {
        assert_eq!(results.len(), 1, "{job}: {results:#?}");
        let r = &results[0];
        assert_eq!(r["outcome"], "succeeded", "{r}");
        assert_eq!(r["destination"], DOWN, "{r}");
        assert_eq!(r["meta"]["job"], job.as_str(), "{r}");
        assert!(
            r["body"].as_str().is_some_and(|b| b.contains("/orders/")),
            "{r}"
        );
    }
    let one = |got: BTreeMap<String, Vec<Value>>, job: String, what: &str| -> Value {
        assert_eq!(got.len(), 1, "{what}: {got:#?}");
        let results = got.get(&job).unwrap_or_else(|| panic!("{what}: {got:#?}"));
        assert_eq!(results.len(), 1, "{what}: {results:#?}");
        results[0].clone()
    };
    let r = one(by_job(&messages(&sqs, &fifo_url).await), id("fifo"), "FIFO");
    assert_eq!(r["body"], json!({"path": "/fifo", "ok": true}).to_string());
    let r = one(
        by_job(&messages(&sqs, &topic_sink_url).await),
        id("topic"),
        "SNS",
    );
    assert_eq!(r["destination"], "alerts", "{r}");
    let events = messages(&sqs, &bus_sink_url).await;
    assert_eq!(events.len(), 1, "EventBridge: {events:#?}");
    let event = &events[0].0;
    assert_eq!(event["source"], qo_aws::results::EVENT_SOURCE, "{event}");
    assert_eq!(event["detail-type"], qo_aws::results::EVENT_DETAIL_TYPE);
    assert_eq!(event["detail"]["job_id"], id("bus").as_str(), "{event}");
    assert_eq!(event["detail"]["destination"], "billing", "{event}");
    // The default destination: a small answer inline, the 600 KB one in the bucket.
    let got = by_job(&messages(&sqs, &archive_url).await);
    assert_eq!(got.len(), 2, "archive: {got:#?}");
    let plain = &got[&id("plain")];
    assert_eq!(plain.len(), 1);
    assert!(plain[0]["body"].is_string(), "{}", plain[0]);
    let big = &got[&id("big")];
    assert_eq!(big.len(), 1, "{big:#?}");
    let big = &big[0];
    let result_id = big["result_id"].as_str().expect("result_id");
    let key = format!("{}{result_id}", qo_aws::results::BODY_PREFIX);
    assert_eq!(
        big["body_location"],
        format!("s3://{bucket}/{key}").as_str(),
        "{big}"
    );
    assert!(big.get("body").is_none(), "no body beside its location");
    assert_eq!(big["status"], 200);
    let object = aws
        .call(
            "s3",
            "GET",
            &format!("/{bucket}/{}", form(&key).replace("%2F", "/")),
            &[],
            b"",
        )
        .await;
    assert_eq!(object.len(), BIG, "the whole answer in the bucket");
    assert!(object.iter().all(|b| *b == b'y'));

    // The Lambda function: one asynchronous invoke, the result as its payload.
    let (_, log) = raw(
        &moto.endpoint,
        None,
        "GET",
        "/moto-api/recorder/download-recording",
        &[],
        b"",
    )
    .await;
    let log = String::from_utf8_lossy(&log);
    let invokes: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| {
            r["url"]
                .as_str()
                .is_some_and(|u| u.contains("/functions/") && u.ends_with("/invocations"))
        })
        .collect();
    assert_eq!(invokes.len(), 1, "one invoke: {invokes:#?}");
    let invoke = &invokes[0];
    let headers = invoke["headers"].to_string().to_ascii_lowercase();
    assert!(
        headers.contains("x-amz-invocation-type") && headers.contains("\"event\""),
        "{invoke}"
    );
    assert!(
        invoke["url"]
            .as_str()
            .is_some_and(|u| u.contains("after-call")),
        "{invoke}"
    );
    let payload: Value = match invoke["body_encoded"].as_bool() {
        Some(true) => {
            let raw = base64_decode(invoke["body"].as_str().unwrap_or_default());
            serde_json::from_slice(&raw).expect("payload")
        }
        _ => serde_json::from_str(invoke["body"].as_str().unwrap_or_default()).expect("payload"),
    };
    assert_eq!(payload["job_id"], id("lambda").as_str(), "{payload}");
    assert_eq!(payload["destination"], "after-call", "{payload}");

    // 3: the undeclared destination's job, dead-lettered with a reason that names it.
    let dead = messages(&sqs, &stack.urls.dlq).await;
    assert_eq!(dead.len(), 1, "only the refused job: {dead:#?}");
    let (body, reason) = &dead[0];
    assert_eq!(body["path"], "/payments", "{body}");
    let reason = reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("payments") && reason.contains("result destinations"),
        "{reason}"
    );
    eprintln!(
        "results over moto: {:.1} s in all, {:.1} s of system runs",
        wall.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Standard base64 (moto's recorder encodes request bodies that are bytes).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
