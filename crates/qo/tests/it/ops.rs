//! The operations (`qo setup`, `send`, `status`, `pause`, `resume`, `circuit`, `quota`,
//! `redrive`, `--stack`) against a moto server: the built `qo` binary is run as a user runs it,
//! with dummy credentials and no other environment.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use qo_aws::{LocalStack, QueueUrls, SdkSettings, local_config};
use qo_core::job::Origin;
use qo_core::ports::{DeadLetter, JobSink, LeaseStore, RecordKey, save_record};
use qo_core::quota::{Pacer, PacingPolicy, QuotaSpec};
use qo_core::time::Timestamp;
use qo_core::{Observation, Reason, TokioClock, WorkerEvent};
use qo_memory::LocalInvoker;
use qo_orchestrator::{OrchestratorConfig, Ports, run};
use qo_testkit::{MotoServer, OFFLINE_AWS_ENV, require};
use serde_json::Value;

/// The `qo` binary with a fixed environment: dummy credentials, us-east-1, the moto endpoint,
/// no profile files, and whatever `qo setup` printed.
struct Qo {
    env: HashMap<String, String>,
}

impl Qo {
    fn new(endpoint: Option<&str>) -> Self {
        let mut env: HashMap<String, String> = OFFLINE_AWS_ENV
            .into_iter()
            .chain([("USER", "tester")])
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(e) = endpoint {
            env.insert("AWS_ENDPOINT_URL".into(), e.to_string());
        }
        Qo { env }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_qo"));
        c.args(args).env_clear().envs(&self.env);
        c
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = self.command(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn qo");
        {
            let mut pipe = child.stdin.take().expect("stdin");
            if let Some(text) = stdin {
                pipe.write_all(text.as_bytes()).expect("write stdin");
            }
        }
        child.wait_with_output().expect("qo output")
    }

    /// Runs `qo args`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        let (stdout, stderr) = texts(&out);
        assert!(
            out.status.success(),
            "qo {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
        stdout
    }

    /// Runs `qo args`, which must fail; its stderr.
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        let (stdout, stderr) = texts(&out);
        assert!(
            !out.status.success(),
            "qo {args:?} should have failed:\nstdout: {stdout}\nstderr: {stderr}"
        );
        stderr
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.ok(&args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("qo {args:?}: {e}: {text}"))
    }

    fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// `qo setup --prefix P`; its variables are used by every later run.
    fn setup(&mut self, prefix: &str) -> HashMap<String, String> {
        let vars = env_lines(&self.ok(&["setup", "--prefix", prefix]));
        self.env.extend(vars.clone());
        vars
    }
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `KEY=value` lines.
fn env_lines(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not a KEY=value line: {l:?}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn queue(status: &Value, name: &str) -> (u64, u64, u64) {
    let q = status["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("no queue {name} in {status}"));
    let n = |k: &str| q[k].as_u64().expect(k);
    (n("visible"), n("in_flight"), n("delayed"))
}

/// The table and queues `qo setup` printed, reached through the local configuration.
async fn set_up_stack(endpoint: &str, vars: &HashMap<String, String>) -> LocalStack {
    LocalStack {
        config: local_config(&SdkSettings::default(), endpoint).await,
        table: vars["TABLE_NAME"].clone(),
        urls: QueueUrls {
            main: vars["QUEUE_URL"].clone(),
            retry: Some(vars["RETRY_QUEUE_URL"].clone()),
            dlq: vars["DLQ_URL"].clone(),
        },
    }
}

fn jobs_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../events/jobs.jsonl")
}

fn now() -> Timestamp {
    Timestamp::from_system(SystemTime::now())
}

#[tokio::test]
async fn setup_prints_the_variables_and_can_run_again() {
    let Some(moto) = require(MotoServer::start().await, "moto server") else {
        return;
    };
    let mut qo = Qo::new(None);
    // Without an endpoint it refuses: it creates local resources only.
    let err = qo.fails(&["setup", "--prefix", "t1"], None);
    assert!(err.contains("--endpoint URL"), "{err}");

    let first = qo.ok(&["setup", "--endpoint", &moto.endpoint, "--prefix", "t1"]);
    let vars = env_lines(&first);
    assert_eq!(vars["AWS_ENDPOINT_URL"], moto.endpoint);
    assert_eq!(vars["AWS_REGION"], "us-east-1");
    assert_eq!(vars["TABLE_NAME"], "t1-state");
    let port = format!(":{}/", moto.port());
    for (key, suffix) in [
        ("QUEUE_URL", "/t1"),
        ("RETRY_QUEUE_URL", "/t1-retry"),
        ("DLQ_URL", "/t1-dlq"),
    ] {
        assert!(
            vars[key].contains(&port) && vars[key].ends_with(suffix),
            "{key}={}",
            vars[key]
        );
    }
    // Running it again finds what exists.
    let again = qo.ok(&["setup", "--endpoint", &moto.endpoint, "--prefix", "t1"]);
    assert_eq!(again, first);
    let json = qo.json(&["setup", "--endpoint", &moto.endpoint, "--prefix", "t1"]);
    assert_eq!(json["DLQ_URL"], vars["DLQ_URL"].as_str());

    // The printed variables are all the other commands need.
    qo.env.extend(vars);
    let status = qo.status();
    assert_eq!(status["table"], "t1-state");
    assert_eq!(queue(&status, "main"), (0, 0, 0));
    assert_eq!(queue(&status, "retry"), (0, 0, 0));
    assert_eq!(status["dead_letters"], 0);
    assert_eq!(status["circuit"]["phase"], "closed");
    assert_eq!(status["paused"], false);
}

#[tokio::test]
async fn send_validates_every_line_then_status_counts_the_jobs() {
    let Some(moto) = require(MotoServer::start().await, "moto server") else {
        return;
    };
    let mut qo = Qo::new(Some(&moto.endpoint));
    let vars = qo.setup("t2");

    let file = jobs_file();
    let out = qo.ok(&["send", file.to_str().expect("utf-8 path")]);
    assert_eq!(out, format!("sent 20 job(s) to {}\n", vars["QUEUE_URL"]));
    let status = qo.status();
    assert_eq!(queue(&status, "main"), (20, 0, 0));
    let text = qo.ok(&["status"]);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["main", "20", "0", "0"]),
        "{text}"
    );

    // A bad line stops everything, naming its number.
    let bad =
        "{\"path\":\"/a\"}\n\n{\"path\":\"https://elsewhere.example/steal\"}\n{\"path\":\"/b\"}\n";
    let err = qo.fails(&["send", "-"], Some(bad));
    assert!(err.contains("line 3:"), "{err}");
    assert!(err.contains("nothing sent"), "{err}");
    assert_eq!(queue(&qo.status(), "main"), (20, 0, 0));

    // --skip-invalid sends the rest.
    let out = qo.ok_with(&["send", "-", "--skip-invalid"], Some(bad));
    assert!(out.contains("sent 2 job(s)"), "{out}");
    assert!(out.contains("skipped 1 invalid line(s): 3"), "{out}");
    assert_eq!(queue(&qo.status(), "main"), (22, 0, 0));
}

#[tokio::test]
async fn send_batches_the_lines_and_every_one_arrives() {
    let Some(moto) = require(MotoServer::start().await, "moto server") else {
        return;
    };
    let mut qo = Qo::new(Some(&moto.endpoint));
    let vars = qo.setup("t2b");

    // 25 lines: three SendMessageBatch requests (10, 10, 5), at most 2 in flight.
    let lines: String = (1..=25)
        .map(|i| format!("{{\"path\":\"/batch/{i}\"}}\n"))
        .collect();
    let text = qo.ok_with(&["send", "-", "--concurrency", "2", "--json"], Some(&lines));
    let out: Value = serde_json::from_str(&text).expect("one JSON object");
    assert_eq!(out["sent"], 25, "{out}");
    assert_eq!(out["queue_url"], vars["QUEUE_URL"].as_str());
    assert_eq!(queue(&qo.status(), "main"), (25, 0, 0));

    // Seven jobs of 190 KiB: ten would pass SQS's 1 MiB batch payload, so they go five and
    // two, and all arrive.
    let big: String = (1..=7)
        .map(|i| {
            format!(
                "{{\"path\":\"/big/{i}\",\"body\":\"{}\"}}\n",
                "z".repeat(190 * 1024)
            )
        })
        .collect();
    let out = qo.ok_with(&["send", "-"], Some(&big));
    assert_eq!(out, format!("sent 7 job(s) to {}\n", vars["QUEUE_URL"]));
    assert_eq!(queue(&qo.status(), "main"), (32, 0, 0));
}

#[tokio::test]
async fn controls_change_what_status_shows() {
    let Some(moto) = require(MotoServer::start().await, "moto server") else {
        return;
    };
    let mut qo = Qo::new(Some(&moto.endpoint));
    qo.setup("t3");

    let out = qo.ok(&["pause"]);
    assert!(out.starts_with("paused:"), "{out}");
    let s = qo.status();
    assert_eq!(s["paused"], true);
    assert_eq!(s["updated_by"], "qo:tester");
    assert!(qo.ok(&["status"]).contains("paused        yes"));
    qo.ok(&["resume"]);
    assert_eq!(qo.status()["paused"], false);

    let out = qo.json(&["circuit", "open"]);
    assert_eq!(out["circuit"]["phase"], "open");
    let s = qo.status();
    assert_eq!(s["circuit"]["phase"], "open");
    assert_eq!(s["circuit"]["epoch"], 1);
    assert_eq!(s["circuit"]["forced"], true);
    assert!(
        qo.ok(&["status"])
            .contains("circuit       open (forced), epoch 1")
    );
    qo.ok(&["circuit", "close"]);
    let s = qo.status();
    assert_eq!(s["circuit"]["phase"], "closed");
    assert_eq!(s["circuit"]["epoch"], 2);

    assert_eq!(qo.status()["quota"]["spec"], "10/s");
    qo.ok(&["quota", "set", "5/s"]);
    let s = qo.status();
    assert_eq!(s["quota"]["spec"], "5/s");
    assert_eq!(s["quota"]["overridden"], true);
    assert_eq!(s["quota"]["tiers"][0]["limit"], 5);
    let err = qo.fails(&["quota", "set", "5/fortnight"], None);
    assert!(err.contains("`fortnight`"), "{err}");
    assert_eq!(qo.status()["quota"]["spec"], "5/s");

    qo.ok(&["quota", "clear"]);
    let s = qo.status();
    assert_eq!(s["quota"]["spec"], "10/s");
    assert_eq!(s["quota"]["overridden"], false);
    // The deployed quota comes from QUOTA_SPEC (or --quota).
    qo.env.insert("QUOTA_SPEC".into(), "20/s,1000/h".into());
    assert_eq!(qo.status()["quota"]["spec"], "20/s,1000/h");
    assert_eq!(
        qo.json(&["status", "--quota", "7/s"])["quota"]["spec"],
        "7/s"
    );
}

#[tokio::test]
async fn redrive_counts_then_moves_the_dead_letters() {
    let Some(moto) = require(MotoServer::start().await, "moto server") else {
        return;
    };
    let mut qo = Qo::new(Some(&moto.endpoint));
    let vars = qo.setup("t4");
    let sqs = set_up_stack(&moto.endpoint, &vars).await.queue();
    for i in 1..=2 {
        sqs.dead_letter(DeadLetter {
            body: format!("{{\"path\":\"/dead/{i}\"}}"),
            reason: Reason::FinalStatus {
                status: 404,
                excerpt: String::new(),
            },
            origin: Origin {
                message_id: format!("m-{i}"),
                attempt: 3,
                ..Origin::default()
            },
        })
        .await
        .expect("dead-letter");
    }
    let s = qo.status();
    assert_eq!(s["dead_letters"], 2);

    let out = qo.ok(&["redrive", "--dry-run"]);
    assert_eq!(
        out,
        "dead-letter queue: 2 message(s)\ndry run: nothing moved\n"
    );
    let s = qo.status();
    assert_eq!(queue(&s, "dlq"), (2, 0, 0));
    assert_eq!(queue(&s, "main"), (0, 0, 0));

    let r = qo.json(&["redrive", "--max", "1"]);
    assert_eq!(
        (r["dead"].as_u64(), r["moved"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(r["dry_run"], false);
    let s = qo.status();
    assert_eq!(queue(&s, "dlq").0, 1);
    assert_eq!(queue(&s, "main").0, 1);

    let out = qo.ok(&["redrive"]);
    assert!(out.contains("moved 1 to the job queue"), "{out}");
    let s = qo.status();
    assert_eq!(queue(&s, "dlq"), (0, 0, 0));
    assert_eq!(queue(&s, "main"), (2, 0, 0));
    assert_eq!(s["dead_letters"], 0);
}

#[tokio::test]
async fn status_shows_usage_and_the_lease() {
    let Some(moto) = require(MotoServer::start().await, "moto server") else {
        return;
    };
    let mut qo = Qo::new(Some(&moto.endpoint));
    let vars = qo.setup("t5");
    let spec: QuotaSpec = "10/s,1000/h".parse().expect("spec");
    qo.env.insert("QUOTA_SPEC".into(), spec.to_string());

    let store = set_up_stack(&moto.endpoint, &vars).await.store();
    let t = now();
    let mut pacer = Pacer::new(spec, PacingPolicy::default());
    for i in 0..3 {
        let _ = pacer.take_first_from(t.plus(Duration::from_millis(100 * i)));
    }
    save_record(&store, RecordKey::Quota, pacer.state(), 0, None)
        .await
        .expect("save quota");
    let lease = store
        .take("orch-test", t, Duration::from_secs(60))
        .await
        .expect("lease");

    let s = qo.status();
    let tiers = s["quota"]["tiers"].as_array().expect("tiers");
    assert_eq!(tiers.len(), 2, "{s}");
    assert_eq!(tiers[1]["tier"], "1000/h");
    assert_eq!(tiers[1]["used"], 3);
    assert_eq!(tiers[1]["limit"], 1000);
    assert!(tiers[1]["resets_at"].is_string(), "{s}");
    assert_eq!(s["lease"]["owner"], "orch-test");
    assert_eq!(s["lease"]["token"], lease.token);
    assert_eq!(s["lease"]["live"], true);
    assert_eq!(s["lease"]["expires_at"], lease.expires_at.to_rfc3339());
    let text = qo.ok(&["status"]);
    assert!(text.contains("held by orch-test"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == ["1000/h", "3/1000"]),
        "{text}"
    );
}

#[tokio::test]
async fn a_stack_s_outputs_select_the_target() {
    let Some(moto) = require(MotoServer::start().await, "moto server") else {
        return;
    };
    let qo = Qo::new(Some(&moto.endpoint));
    let config = local_config(&SdkSettings::default(), &moto.endpoint).await;
    let cfn = aws_sdk_cloudformation::Client::new(&config);
    let template = serde_json::json!({
        "Resources": {
            "Dlq": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "st-dlq"}},
            "Jobs": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "st-jobs"}},
            "State": {"Type": "AWS::DynamoDB::Table", "Properties": {
                "TableName": "st-state",
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}]
            }}
        },
        "Outputs": {
            "JobQueueUrl": {"Value": {"Ref": "Jobs"}},
            "DeadLetterQueueUrl": {"Value": {"Ref": "Dlq"}},
            "StateTableName": {"Value": {"Ref": "State"}}
        }
    });
    cfn.create_stack()
        .stack_name("st")
        .template_body(template.to_string())
        .send()
        .await
        .expect("create stack");
    let partial = serde_json::json!({
        "Resources": {"Jobs": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "old-jobs"}}},
        "Outputs": {"JobQueueUrl": {"Value": {"Ref": "Jobs"}}}
    });
    cfn.create_stack()
        .stack_name("old")
        .template_body(partial.to_string())
        .send()
        .await
        .expect("create stack");

    let s = qo.json(&["status", "--stack", "st"]);
    assert_eq!(s["table"], "st-state");
    let urls: Vec<&str> = s["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| q["url"].as_str().expect("url"))
        .collect();
    assert_eq!(urls.len(), 2, "no retry queue in this stack: {urls:?}");
    assert!(
        urls[0].ends_with("/st-jobs") && urls[1].ends_with("/st-dlq"),
        "{urls:?}"
    );
    qo.ok(&["pause", "--stack", "st"]);
    assert_eq!(qo.json(&["status", "--stack", "st"])["paused"], true);
    qo.ok(&["send", jobs_file().to_str().expect("path"), "--stack", "st"]);
    assert_eq!(queue(&qo.json(&["status", "--stack", "st"]), "main").0, 20);

    let err = qo.fails(&["status", "--stack", "nope"], None);
    assert!(err.contains("stack `nope` not found"), "{err}");
    let err = qo.fails(&["status", "--stack", "old"], None);
    assert!(
        err.contains("stack `old` has no output `StateTableName`"),
        "{err}"
    );
    let err = qo.fails(&["status", "--stack", "st", "--table", "x"], None);
    assert!(err.contains("--stack"), "{err}");
}

/// Errors that need no AWS at all: they come before any call.
#[test]
fn errors_name_what_is_wrong_before_any_call() {
    let qo = Qo::new(Some("http://127.0.0.1:9"));
    let err = qo.fails(&["status"], None);
    assert!(
        err.contains("no state table: give --table T (or set TABLE_NAME), or --stack NAME"),
        "{err}"
    );
    let err = qo.fails(
        &["redrive", "--table", "t", "--queue-url", "http://q"],
        None,
    );
    assert!(err.contains("--dlq-url URL (or set DLQ_URL)"), "{err}");
    let err = qo.fails(&["quota", "set", "5/fortnight", "--table", "t"], None);
    assert!(err.contains("unknown period `fortnight`"), "{err}");
    let err = qo.fails(
        &["send", "-", "--table", "t"],
        Some("{\"path\":\"/ok\"}\n{\"pth\":\"/x\"}\n"),
    );
    assert!(err.contains("line 2: malformed job"), "{err}");
    let err = qo.fails(&["send", "/nonexistent/jobs.jsonl"], None);
    assert!(err.contains("cannot read /nonexistent/jobs.jsonl"), "{err}");
    let err = qo.fails(&["setup", "--prefix", "no spaces"], None);
    assert!(err.contains("--prefix \"no spaces\" is invalid"), "{err}");
}

/// The operator controls end to end, over the real adapters: an orchestrator runs
/// against moto (SQS, DynamoDB; the worker is an in-memory stand-in that accepts every event)
/// while `qo pause` and `qo resume` run as a user runs them. Dispatch stops within about a
/// second of the pause (the loop re-reads the control record every second) and restarts after
/// the resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_a_running_orchestrator_and_resume_restarts_it() {
    let _one = crate::ONE_AT_A_TIME.lock().await;
    let Some(moto) = require(MotoServer::start().await, "moto server") else {
        return;
    };
    let mut qo = Qo::new(Some(&moto.endpoint));
    let vars = qo.setup("t7");
    let jobs: String = (0..150)
        .map(|i| format!("{{\"path\":\"/p/{i}\"}}\n"))
        .collect();
    qo.ok_with(&["send", "-"], Some(&jobs));

    let stack = set_up_stack(&moto.endpoint, &vars).await;
    let (store, queue) = (stack.store(), stack.queue());
    let clock = Arc::new(TokioClock::system());
    let invoker = LocalInvoker::new(clock.clone(), |_event: WorkerEvent| async {});
    let dispatched: Arc<Mutex<Vec<Timestamp>>> = Arc::default();
    let observer = {
        let dispatched = dispatched.clone();
        move |o: Observation| {
            if let Observation::Dispatched { .. } = o {
                dispatched.lock().expect("dispatched").push(now());
            }
        }
    };
    let mut orchestrator = OrchestratorConfig::with_quota("10/s".parse().expect("quota"));
    orchestrator.idle_exit = None;
    let ports = Ports {
        queue: &queue,
        store: &store,
        invoker: &invoker,
        clock: clock.as_ref(),
        observer: &observer,
    };
    let deadline = now().plus(Duration::from_secs(16));

    // `qo` blocks: run it on the blocking pool so the loop keeps going meanwhile.
    let qo_env = qo.env.clone();
    let operator = async move {
        let at = |args: &'static [&'static str]| {
            let qo = Qo {
                env: qo_env.clone(),
            };
            async move {
                tokio::task::spawn_blocking(move || qo.ok(args))
                    .await
                    .expect("qo");
                now()
            }
        };
        tokio::time::sleep(Duration::from_secs(4)).await;
        let paused = at(&["pause"]).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let resumed = at(&["resume"]).await;
        (paused, resumed)
    };
    let (report, (paused, resumed)) = tokio::join!(run(ports, &orchestrator, deadline), operator);
    let report = report.expect("run");
    let times = dispatched.lock().expect("dispatched").clone();
    assert_eq!(report.dispatched as usize, times.len());

    let before = times.iter().filter(|t| **t < paused).count();
    let last_before_resume = times.iter().filter(|t| **t < resumed).max().copied();
    let first_after = times.iter().find(|t| **t >= resumed).copied();
    let stopped_after = last_before_resume.map(|t| t.since(paused));
    let restarted_after = first_after.map(|t| t.since(resumed));
    let signed_ms = |t: Timestamp, from: Timestamp| {
        (t.as_micros() as i64 - from.as_micros() as i64) as f64 / 1000.0
    };
    eprintln!(
        "dispatched {} ({before} before the pause); the last before the resume at {:?} ms from \
         `qo pause` returning; the first after it {:?} ms after `qo resume` returned",
        times.len(),
        last_before_resume.map(|t| signed_ms(t, paused)),
        first_after.map(|t| signed_ms(t, resumed)),
    );
    assert!(
        before >= 10,
        "the run dispatched before the pause: {before}"
    );
    // The loop re-reads the control record every second (after renewing its lease): a second,
    // plus those round trips to moto on a busy machine.
    let stopped_after = stopped_after.expect("dispatches before the resume");
    assert!(
        stopped_after <= Duration::from_millis(1500),
        "a dispatch {stopped_after:?} after the pause"
    );
    let restarted_after = restarted_after.expect("dispatch after the resume");
    assert!(
        restarted_after <= Duration::from_millis(2500),
        "dispatch restarted {restarted_after:?} after the resume"
    );
    let s = qo.status();
    assert_eq!(s["paused"], false, "{s}");
}
