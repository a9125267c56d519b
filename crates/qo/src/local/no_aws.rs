//! `qo local --aws-endpoint URL` in a `qo` built without the `aws` feature: refused with the
//! command that builds it in.

use std::sync::Arc;

use qo_core::TokioClock;
use qo_sim::SimServer;

use super::LocalArgs;
use crate::report::Collector;

/// Refuses: this build has no AWS adapters.
pub(super) async fn run(
    _args: LocalArgs,
    _clock: Arc<TokioClock>,
    _collector: Arc<Collector>,
    _sim: Option<SimServer>,
    _api_url: String,
    endpoint: String,
) -> Result<(), Box<dyn std::error::Error>> {
    Err(crate::without_aws("local --aws-endpoint", &endpoint).into())
}
