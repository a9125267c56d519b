//! Operator controls and the API's back-off: the `control` record.

use serde::{Deserialize, Serialize};

use crate::quota::QuotaSpec;
use crate::time::Timestamp;

/// The control record: written by operators (`qo pause`, `qo quota set`) and by the worker (the
/// API's Retry-After); read by the running orchestrator at least every second.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// Dispatch nothing while true.
    #[serde(default)]
    pub paused: bool,
    /// A quota that replaces the configured one, without a redeploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
    /// The API answered 429: no call before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until: Option<Timestamp>,
    /// Who changed it last, for status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// When it changed last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Timestamp>,
}
