//! The API's window as an execution environment sees it: read from each answer's rate-limit
//! headers ([`crate::ratelimit`]) and, after a success, reported to the control record only
//! when few calls are left ([`is_low`]) or the limit changed, at most once per
//! `API_WINDOW_REPORT_MS`: in normal operation a success writes no shared state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use qo_core::ports::{RecordKey, RecordStore, update_record};
use qo_core::{ApiWindow, Control, Observation, Observer, Timestamp};
use tracing::{debug, warn};

use crate::http::ApiResponse;
use crate::ratelimit::RateLimitHeaders;

/// What one execution environment read and reported of the API's windows.
#[derive(Debug, Default)]
pub(crate) struct WindowReports {
    /// When this environment last wrote the API's window after a success.
    reported_at: Mutex<Option<Timestamp>>,
    /// The limit the API's headers gave on this environment's last answer (0: none yet): a
    /// change is reported even with calls left, so the pace can follow a limit that came back.
    seen_limit: AtomicU64,
    /// Whether a malformed rate-limit header was logged already (once per environment).
    warned_malformed: AtomicBool,
}

impl WindowReports {
    /// The API's window from the answer's rate-limit headers, observed for the metrics. A
    /// malformed header is logged once per execution environment and read as absent.
    pub(crate) fn read(
        &self,
        headers: &RateLimitHeaders,
        response: &ApiResponse,
        now: Timestamp,
        observer: &dyn Observer,
    ) -> Option<ApiWindow> {
        if response.rate_headers.is_empty() {
            return None;
        }
        match headers.read(&response.rate_headers, now) {
            Ok(Some(w)) => {
                observer.observe(Observation::ApiRemaining {
                    remaining: w.remaining,
                    limit: w.limit,
                });
                Some(w)
            }
            Ok(None) => None,
            Err(e) => {
                if !self.warned_malformed.swap(true, Ordering::Relaxed) {
                    warn!(error = %e, "ignoring the API's rate-limit headers (logged once)");
                }
                None
            }
        }
    }

    /// After a success: writes the API's window to the control record only when few calls
    /// are left ([`is_low`]) or its limit differs from the one this environment's previous
    /// answer gave, and at most once per `every` in this execution environment, and only over
    /// an older observation. A failed write is logged, not returned: the job is done, and the
    /// next low answer reports again.
    pub(crate) async fn report_low<S: RecordStore>(
        &self,
        store: &S,
        every: Duration,
        window: ApiWindow,
        now: Timestamp,
    ) {
        let limit = window.limit.unwrap_or(0);
        let before = self.seen_limit.load(Ordering::Relaxed);
        let changed = before != 0 && limit != 0 && before != limit;
        if !changed {
            self.seen_limit.store(limit, Ordering::Relaxed);
        }
        if !is_low(&window) && !changed {
            return;
        }
        {
            let mut last = self
                .reported_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| now < t.plus(every)) {
                // A change of the limit stays unseen until it is reported.
                return;
            }
            *last = Some(now);
        }
        self.seen_limit.store(limit, Ordering::Relaxed);
        let written = update_record::<Control, _>(store, RecordKey::Control, |c| {
            window.supersedes(c.api_window.as_ref()).then(|| Control {
                api_window: Some(window),
                ..c.clone()
            })
        })
        .await;
        match written {
            Ok(_) => debug!(
                remaining = window.remaining,
                limit = ?window.limit,
                "reported the API's low window"
            ),
            Err(e) => warn!(error = %e, "could not report the API's window"),
        }
    }
}

/// Whether the API's window is nearly used up: at most a fifth of its limit left (at least
/// 1), or, with no limit known, at most 1. Only then does a success report it.
pub fn is_low(w: &ApiWindow) -> bool {
    match w.limit {
        Some(limit) => w.remaining <= (limit / 5).max(1),
        None => w.remaining <= 1,
    }
}
