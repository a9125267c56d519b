//! Starts the local services through qo-testkit and checks that they answer.
//! Without the tools (no `bash tests/setup.sh` yet) the tests skip, except in CI where they fail.

use qo_testkit::{MotoServer, http_get_status, require};

#[tokio::test]
async fn moto_server_starts_answers_and_stops() {
    let Some(moto) = require(MotoServer::start().await, "moto server") else {
        return;
    };
    assert!(moto.endpoint.starts_with("http://127.0.0.1:"));
    assert_eq!(moto.endpoint, format!("http://127.0.0.1:{}", moto.port()));
    let status = http_get_status(&format!("{}/moto-api/", moto.endpoint))
        .await
        .expect("GET /moto-api/");
    assert_eq!(status, 200);
    assert!(moto.log_path().is_file());

    let probe = format!("{}/moto-api/", moto.endpoint);
    drop(moto);
    assert!(
        http_get_status(&probe).await.is_err(),
        "moto still answers after drop"
    );
}

#[tokio::test]
async fn two_moto_servers_run_side_by_side() {
    let (a, b) = tokio::join!(MotoServer::start(), MotoServer::start());
    let (Some(a), Some(b)) = (require(a, "moto server"), require(b, "moto server")) else {
        return;
    };
    assert_ne!(a.port(), b.port());
    for m in [&a, &b] {
        let status = http_get_status(&format!("{}/moto-api/", m.endpoint))
            .await
            .expect("GET /moto-api/");
        assert_eq!(status, 200);
    }
}
