//! The simulator over real HTTP on loopback, in real time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qo_core::{Timestamp, TokioClock};
use qo_sim::{CallKind, SimConfig, SimError, SimServer, SimStats, max_in_window};
use reqwest::StatusCode;
use serde_json::Value;

fn config(spec: &str) -> SimConfig {
    SimConfig::new(spec.parse().expect("spec"))
}

async fn get(c: &reqwest::Client, url: String) -> reqwest::Response {
    c.get(url).send().await.expect("request")
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("retry-after")
        .expect("Retry-After on a 429")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("integer seconds")
}

#[tokio::test]
async fn a_burst_gets_exactly_the_limit() {
    let sim = SimServer::start(config("20/s")).await.expect("start");
    let c = reqwest::Client::new();
    let calls = (0..30).map(|i| get(&c, format!("{}/items/{i}", sim.url())));
    let answers = futures::future::join_all(calls).await;

    let ok = answers
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    let throttled: Vec<&reqwest::Response> = answers
        .iter()
        .filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    let records = sim.records();
    let spread = records.last().expect("records").at - records[0].at;
    assert!(
        spread < Duration::from_secs(1),
        "burst too slow to test: {spread:?}"
    );
    assert_eq!(ok, 20);
    assert_eq!(throttled.len(), 10);
    for r in throttled {
        // The window frees up within the second, so the rounded-up wait is exactly 1.
        assert_eq!(retry_after(r), 1);
    }
    // The first 20 arrivals were accepted, the rest refused.
    let statuses: Vec<u16> = records.iter().map(|r| r.status).collect();
    assert_eq!(statuses[..20], [200; 20]);
    assert_eq!(statuses[20..], [429; 10]);

    let s = sim.stats();
    assert_eq!(
        (s.calls, s.accepted, s.throttled, s.faulted),
        (30, 20, 10, 0)
    );
    assert_eq!(s.max_for("20/s"), Some(20));
    assert_eq!(sim.accepted_times().len(), 20);

    // After the Retry-After, the window accepts again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = get(&c, format!("{}/again", sim.url())).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(sim.stats().max_for("20/s"), Some(20));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_client_paced_under_the_limit_is_never_throttled() {
    let sim = SimServer::start(config("20/s")).await.expect("start");
    let c = reqwest::Client::new();
    // 50 ms is the limit's exact pace, where the window is exactly full and scheduling jitter
    // alone would decide; 52 ms leaves 40 ms of jitter per window. (The exact edge is tested
    // on synthetic times in `enforce` and `window`.)
    let mut tick = tokio::time::interval(Duration::from_millis(52));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut statuses = Vec::new();
    for i in 0..39 {
        tick.tick().await;
        statuses.push(get(&c, format!("{}/paced/{i}", sim.url())).await.status());
    }
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let s = sim.stats();
    assert_eq!((s.accepted, s.throttled), (39, 0));
    let max = s.max_for("20/s").expect("tier");
    assert!((19..=20).contains(&max), "{max}");
    assert_eq!(
        max_in_window(&sim.accepted_times(), Duration::from_secs(1)) as u64,
        max
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn outage_answers_503_then_recovers() {
    let sim = SimServer::start(SimConfig {
        outage: Some(Duration::ZERO..Duration::from_millis(600)),
        ..config("10/s")
    })
    .await
    .expect("start");
    let c = reqwest::Client::new();
    assert_eq!(get(&c, format!("{}/x", sim.url())).await.status(), 503);
    assert_eq!(get(&c, format!("{}/health", sim.url())).await.status(), 503);
    // The stats path is not part of the outage.
    assert_eq!(
        get(&c, format!("{}/_sim/stats", sim.url())).await.status(),
        200
    );

    tokio::time::sleep(Duration::from_millis(700)).await;
    let h = get(&c, format!("{}/health", sim.url())).await;
    assert_eq!(h.status(), 200);
    let body: Value = h.json().await.expect("json");
    assert_eq!(body, serde_json::json!({"status": "ok"}));
    assert_eq!(get(&c, format!("{}/x", sim.url())).await.status(), 200);

    let s = sim.stats();
    assert_eq!(
        (s.calls, s.accepted, s.faulted, s.health_checks),
        (2, 1, 1, 2)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn fail_rate_one_fails_every_call_and_uses_no_quota() {
    let sim = SimServer::start(SimConfig {
        fail_rate: 1.0,
        ..config("3/s")
    })
    .await
    .expect("start");
    let c = reqwest::Client::new();
    for i in 0..10 {
        assert_eq!(get(&c, format!("{}/f/{i}", sim.url())).await.status(), 500);
    }
    let s = sim.stats();
    assert_eq!(
        (s.calls, s.accepted, s.throttled, s.faulted),
        (10, 0, 0, 10)
    );
    assert_eq!(s.max_for("3/s"), Some(0));
    // Health checks are not subject to the fail rate.
    assert_eq!(get(&c, format!("{}/health", sim.url())).await.status(), 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_follow_the_seed() {
    async fn pattern(seed: u64) -> Vec<u16> {
        let sim = SimServer::start(SimConfig {
            fail_rate: 0.5,
            seed,
            ..config("1000/s")
        })
        .await
        .expect("start");
        let c = reqwest::Client::new();
        let mut v = Vec::new();
        for _ in 0..40 {
            v.push(get(&c, format!("{}/s", sim.url())).await.status().as_u16());
        }
        v
    }
    let a = pattern(7).await;
    assert_eq!(a, pattern(7).await);
    assert_ne!(a, pattern(8).await);
    let failed = a.iter().filter(|&&s| s == 500).count();
    assert!(
        (5..=35).contains(&failed),
        "{failed} of 40 at fail_rate 0.5"
    );
    assert!(a.iter().all(|&s| s == 200 || s == 500));
}

#[tokio::test]
async fn sim_status_and_stats_paths_are_not_api_calls() {
    let sim = SimServer::start(config("1/s")).await.expect("start");
    let c = reqwest::Client::new();
    let r = get(&c, format!("{}/_sim/status/404", sim.url())).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.expect("json body");
    assert_eq!(body["status"], 404);
    for _ in 0..3 {
        assert_eq!(
            get(&c, format!("{}/_sim/status/503", sim.url()))
                .await
                .status(),
            503
        );
    }
    assert_eq!(
        get(&c, format!("{}/_sim/status/abc", sim.url()))
            .await
            .status(),
        400
    );
    assert_eq!(
        get(&c, format!("{}/_sim/status/99", sim.url()))
            .await
            .status(),
        400
    );
    assert_eq!(
        get(&c, format!("{}/_sim/nope", sim.url())).await.status(),
        404
    );
    // None of that touched the quota: the one call per second is still free.
    assert_eq!(get(&c, format!("{}/real", sim.url())).await.status(), 200);
    assert_eq!(get(&c, format!("{}/real", sim.url())).await.status(), 429);

    let over_http: SimStats = get(&c, format!("{}/_sim/stats", sim.url()))
        .await
        .json()
        .await
        .expect("stats json");
    let s = sim.stats();
    assert_eq!(over_http, s);
    assert_eq!((s.calls, s.accepted, s.throttled, s.faulted), (2, 1, 1, 0));
    assert_eq!(s.max_in_any_window, vec![("1/s".to_string(), 1)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn accepted_calls_echo_the_request() {
    let sim = SimServer::start(config("10/s")).await.expect("start");
    let c = reqwest::Client::new();
    let first: Value = get(&c, format!("{}/a/b?x=1&y=2", sim.url()))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/a/b");
    assert_eq!(first["query"], "x=1&y=2");
    assert_eq!(first["counter"], 1);
    let r = c
        .post(format!("{}/upload", sim.url()))
        .body(vec![b'z'; 1234])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    let second: Value = r.json().await.expect("json");
    assert_eq!(second["method"], "POST");
    assert_eq!(second["body_len"], 1234);
    assert_eq!(second["counter"], 2);

    let rec = sim.records();
    assert_eq!(rec.len(), 2);
    assert_eq!(
        (rec[1].method.as_str(), rec[1].path.as_str()),
        ("POST", "/upload")
    );
    assert_eq!((rec[1].kind, rec[1].status), (CallKind::Api, 200));
    assert!(rec[0].at <= rec[1].at);
    sim.shutdown().await;
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let sim = SimServer::start(SimConfig {
        api_key: Some("s3cret".into()),
        ..config("10/s")
    })
    .await
    .expect("start");
    let c = reqwest::Client::new();
    let url = format!("{}/k", sim.url());
    assert_eq!(get(&c, url.clone()).await.status(), 401);
    let wrong = c.get(&url).bearer_auth("guess").send().await.expect("req");
    assert_eq!(wrong.status(), 401);
    let right = c.get(&url).bearer_auth("s3cret").send().await.expect("req");
    assert_eq!(right.status(), 200);
    // The health path needs no key.
    assert_eq!(get(&c, format!("{}/health", sim.url())).await.status(), 200);
    let s = sim.stats();
    assert_eq!(
        (s.calls, s.accepted, s.unauthorized, s.health_checks),
        (3, 1, 2, 1)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn latency_delays_the_answer_not_the_arrival() {
    let sim = SimServer::start(SimConfig {
        latency: Duration::from_millis(300)..=Duration::from_millis(300),
        ..config("1/s")
    })
    .await
    .expect("start");
    let c = reqwest::Client::new();
    let t0 = Instant::now();
    let (a, b) = tokio::join!(
        get(&c, format!("{}/one", sim.url())),
        get(&c, format!("{}/two", sim.url()))
    );
    let elapsed = t0.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    // Both were decided on arrival, before either slept: one accepted, one throttled.
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429]);
    // And concurrently: the pair took about one latency, not two.
    assert!(elapsed < Duration::from_millis(600), "{elapsed:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn calendar_day_resets_at_utc_midnight() {
    // A clock that reads 0.6 s before a UTC midnight when the server starts.
    let midnight = Timestamp::from_secs(20_100 * 86_400);
    let clock = TokioClock::starting_at(midnight.minus(Duration::from_millis(600)));
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let sim = SimServer::start_with_clock(addr, config("3/day@calendar"), Arc::new(clock))
        .await
        .expect("start");
    let c = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(get(&c, format!("{}/d", sim.url())).await.status(), 200);
    }
    let r = get(&c, format!("{}/d", sim.url())).await;
    assert_eq!(r.status(), 429);
    assert_eq!(retry_after(&r), 1);

    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(get(&c, format!("{}/d", sim.url())).await.status(), 200);
    let s = sim.stats();
    assert_eq!((s.accepted, s.throttled), (4, 1));
    assert_eq!(s.max_for("3/day@calendar"), Some(3));
    sim.shutdown().await;
}

#[tokio::test]
async fn start_errors_name_the_problem() {
    let sim = SimServer::start(config("1/s")).await.expect("start");
    let taken = sim.addr();
    match SimServer::start_on(taken, config("1/s")).await {
        Err(SimError::Bind { addr, .. }) => assert_eq!(addr, taken),
        other => panic!("expected a bind error, got {other:?}"),
    }
    let e = SimServer::start(SimConfig {
        fail_rate: -0.1,
        ..config("1/s")
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("`fail_rate` = `-0.1`"), "{e}");
    assert!(sim.url().starts_with("http://127.0.0.1:"));
    sim.shutdown().await;
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let sim = SimServer::start(config("1/s")).await.expect("start");
    let url = format!("{}/health", sim.url());
    drop(sim);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = reqwest::Client::new();
    assert!(c.get(url).send().await.is_err());
}
