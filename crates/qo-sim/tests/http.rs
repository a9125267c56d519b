//! The simulator over real HTTP on loopback, in real time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qo_core::{Timestamp, TokioClock};
use qo_sim::{CallKind, HeaderScheme, SimConfig, SimError, SimServer, SimStats, max_in_window};
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

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} on a {}", r.status()))
        .to_str()
        .expect("ascii")
        .to_string()
}

#[tokio::test]
async fn x_ratelimit_headers_on_2xx_and_429() {
    let sim = SimServer::start(SimConfig {
        headers: HeaderScheme::XRateLimit,
        ..config("3/s")
    })
    .await
    .expect("start");
    let c = reqwest::Client::new();
    let mut seen = Vec::new();
    for i in 0..4 {
        let r = get(&c, format!("{}/h/{i}", sim.url())).await;
        seen.push((
            r.status().as_u16(),
            header(&r, "x-ratelimit-limit"),
            header(&r, "x-ratelimit-remaining"),
            header(&r, "x-ratelimit-reset"),
        ));
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(retry_after(&r), 1);
        }
    }
    let s = |v: &str| v.to_string();
    assert_eq!(
        seen,
        [
            (200, s("3"), s("2"), s("1")),
            (200, s("3"), s("1"), s("1")),
            (200, s("3"), s("0"), s("1")),
            (429, s("3"), s("0"), s("1")),
        ]
    );
    // The records keep what the headers said.
    let remaining: Vec<Option<u64>> = sim.records().iter().map(|r| r.remaining).collect();
    assert_eq!(remaining, [Some(2), Some(1), Some(0), Some(0)]);
    // Not on the simulator's own paths, nor without a scheme.
    let r = get(&c, format!("{}/_sim/status/200", sim.url())).await;
    assert!(r.headers().get("x-ratelimit-limit").is_none());
    let plain = SimServer::start(config("3/s")).await.expect("start");
    let r = get(&c, format!("{}/p", plain.url())).await;
    assert!(r.headers().get("x-ratelimit-limit").is_none());
    assert!(r.headers().get("ratelimit").is_none());
    assert_eq!(plain.records()[0].remaining, None);
    plain.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn ietf_headers_on_2xx_and_429() {
    let sim = SimServer::start(SimConfig {
        headers: HeaderScheme::Ietf,
        ..config("2/s,100/min")
    })
    .await
    .expect("start");
    let c = reqwest::Client::new();
    // 100/min (1.67/s) is the tightest pacing tier; 2/s throttles the third call.
    let mut seen = Vec::new();
    for i in 0..3 {
        let r = get(&c, format!("{}/i/{i}", sim.url())).await;
        seen.push((
            r.status().as_u16(),
            header(&r, "ratelimit-policy"),
            header(&r, "ratelimit"),
        ));
    }
    let policy = r#""default";q=100;w=60"#.to_string();
    assert_eq!(
        seen,
        [
            (200, policy.clone(), r#""default";r=99;t=60"#.to_string()),
            (200, policy.clone(), r#""default";r=98;t=60"#.to_string()),
            (429, policy, r#""default";r=98;t=60"#.to_string()),
        ]
    );
    assert!(header_present_429_retry_after(
        &get(&c, format!("{}/i/x", sim.url())).await
    ));
    sim.shutdown().await;
}

fn header_present_429_retry_after(r: &reqwest::Response) -> bool {
    r.status() == StatusCode::TOO_MANY_REQUESTS && r.headers().get("retry-after").is_some()
}

#[tokio::test]
async fn a_limit_schedule_is_enforced_instead_of_the_quota() {
    let sim = SimServer::start(SimConfig {
        limit: Some("2/s;4/s@1".parse().expect("schedule")),
        headers: HeaderScheme::XRateLimit,
        ..config("20/s")
    })
    .await
    .expect("start");
    let c = reqwest::Client::new();
    let mut first = Vec::new();
    for i in 0..3 {
        first.push(
            get(&c, format!("{}/a/{i}", sim.url()))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(first, [200, 200, 429]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut second = Vec::new();
    let mut limits = Vec::new();
    for i in 0..5 {
        let r = get(&c, format!("{}/b/{i}", sim.url())).await;
        second.push(r.status().as_u16());
        limits.push(header(&r, "x-ratelimit-limit"));
    }
    assert_eq!(second, [200, 200, 200, 200, 429]);
    assert!(limits.iter().all(|l| l == "4"), "{limits:?}");
    let s = sim.stats();
    assert_eq!((s.accepted, s.throttled), (6, 2));
    // Our calls against the quota we were given, and the limit in force, segment by segment.
    assert_eq!(s.max_for("20/s"), Some(4));
    type Segment = (u64, String, Vec<(String, u64)>);
    let segments: Vec<Segment> = s
        .max_in_force
        .iter()
        .map(|f| (f.from_ms, f.spec.clone(), f.max_in_any_window.clone()))
        .collect();
    assert_eq!(
        segments,
        [
            (0, "2/s".to_string(), vec![("2/s".to_string(), 2)]),
            (1_000, "4/s".to_string(), vec![("4/s".to_string(), 4)]),
        ]
    );
    assert_eq!(sim.limit().to_string(), "2/s;4/s@1");
    sim.shutdown().await;
}

#[tokio::test]
async fn another_client_on_the_key_uses_part_of_the_limit() {
    let sim = SimServer::start(SimConfig {
        other_client_rate_per_s: 5.0,
        headers: HeaderScheme::XRateLimit,
        ..config("20/s")
    })
    .await
    .expect("start");
    let c = reqwest::Client::new();
    // By 1.1 s the other client called at 0.2, 0.4, 0.6, 0.8 and 1.0 s.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = get(&c, format!("{}/o", sim.url())).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining"), "14");
    // A burst gets what is left of the window: 14 more would be 20 with the other five.
    let calls = (0..20).map(|i| get(&c, format!("{}/o/{i}", sim.url())));
    let ok = futures::future::join_all(calls)
        .await
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert!((13..=14).contains(&ok), "{ok}");
    let s = sim.stats();
    assert!(s.other_accepted >= 5, "{s:?}");
    assert_eq!(s.max_in_force_for("20/s"), Some(20));
    assert!(s.max_for("20/s").expect("tier") <= 15, "{s:?}");
    sim.shutdown().await;
}

/// A leaky bucket without `Retry-After`, as nginx `limit_req` answers: a burst gets the
/// bucket's capacity (burst + 1), the rest 429s that say nothing of when to come back.
#[tokio::test]
async fn a_gcra_limiter_without_retry_after_takes_its_burst_and_says_nothing() {
    let sim = SimServer::start(SimConfig {
        limiter: qo_sim::Limiter::Gcra { burst: 2 },
        retry_after: false,
        ..config("15/s")
    })
    .await
    .expect("start");
    let c = reqwest::Client::new();
    let calls = (0..6).map(|i| get(&c, format!("{}/items/{i}", sim.url())));
    let answers = futures::future::join_all(calls).await;
    let spread = {
        let r = sim.records();
        r.last().expect("records").at - r[0].at
    };
    assert!(
        spread < Duration::from_millis(60),
        "burst too slow to test: {spread:?}"
    );
    let ok = answers
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert_eq!(ok, 3, "a burst of 2 takes 3 at once");
    for r in answers.iter().filter(|r| r.status() != StatusCode::OK) {
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(r.headers().get("retry-after").is_none());
    }
    sim.shutdown().await;
}
