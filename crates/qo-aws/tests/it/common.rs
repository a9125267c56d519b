//! Shared test setup: a private moto server and an SDK configuration pointed at it.

use std::time::Duration;

use aws_config::SdkConfig;
use qo_aws::{SdkSettings, local_config};
use qo_testkit::{MotoServer, require};

/// Short timeouts: moto answers in milliseconds.
pub fn settings() -> SdkSettings {
    SdkSettings {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
        max_attempts: 2,
    }
}

/// A moto server of this test's own and a configuration for it ([`local_config`] with
/// [`settings`]); `None` (skip) when moto is not installed outside CI.
pub async fn moto() -> Option<(MotoServer, SdkConfig)> {
    let moto = require(MotoServer::start().await, "moto server")?;
    let config = local_config(&settings(), &moto.endpoint).await;
    Some((moto, config))
}
