//! The API's window as an execution environment sees it: read from each answer's rate-limit
//! headers ([`crate::ratelimit`]) and, after a success, reported to the control record only
//! when its calls run ahead of an even spend of the window ([`runs_ahead`]) or its limit
//! changed, at most once per `API_WINDOW_REPORT_MS`. A pace that sits at the API's limit
//! spends each window evenly and writes no shared state; calls that run ahead (another
//! client on the key, a limit that fell) are what the orchestrator needs to hear of.

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
    /// The window on this environment's last answer, and the window's length learned from
    /// two in a row across a reset (for an API that does not say it).
    resets: Mutex<(Option<ApiWindow>, Option<Duration>)>,
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
        // A window that resets before the next report could be written has changed before
        // the orchestrator reads it (a sliding log at its limit: none left, room again in a
        // tenth of a second): not worth a write.
        let length = self.length_of(&window);
        let lasting = window.reset_at > now.plus(every);
        let worth = changed || (lasting && runs_ahead(&window, length));
        if !worth {
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

impl WindowReports {
    /// The window's length: what the API says, else what two answers across a reset told
    /// (more calls left than before, and the reset moved on by at least a second: by the
    /// window's length when the API sends the reset as a time, about it when it sends whole
    /// seconds from now).
    fn length_of(&self, w: &ApiWindow) -> Option<Duration> {
        let mut resets = self.resets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(before) = resets.0
            && w.remaining > before.remaining
            && w.reset_at.since(before.reset_at) >= Duration::from_secs(1)
        {
            resets.1 = Some(w.reset_at.since(before.reset_at));
        }
        resets.0 = Some(*w);
        w.window_s.map(Duration::from_secs).or(resets.1)
    }
}

/// Whether the window's calls run ahead of an even spend: fewer left than the part of the
/// limit the time left to the reset would hold, by more than a tenth of the limit (at least
/// 1). A pace at the API's limit spends the window evenly and is never ahead; another
/// client's calls, or a limit that fell under the pace, put it ahead. Without the window's
/// length (the API does not say it, and no reset was seen yet), [`is_low`].
pub fn runs_ahead(w: &ApiWindow, length: Option<Duration>) -> bool {
    let (Some(limit), Some(length)) = (w.limit, length.filter(|l| !l.is_zero())) else {
        return is_low(w);
    };
    let left = w.reset_at.since(w.observed_at).min(length);
    let even = limit as f64 * left.as_secs_f64() / length.as_secs_f64();
    let slack = (limit as f64 / 10.0).max(1.0);
    (w.remaining as f64) + slack < even
}

/// Whether the API's window is nearly used up: at most a fifth of its limit left (at least
/// 1), or, with no limit known, at most 1. A success reports it when the window's length is
/// unknown ([`runs_ahead`]).
pub fn is_low(w: &ApiWindow) -> bool {
    match w.limit {
        Some(limit) => w.remaining <= (limit / 5).max(1),
        None => w.remaining <= 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timestamp = Timestamp::from_secs(1_700_000_000);

    /// A 100-a-minute window observed `at` seconds into it with `remaining` left.
    fn window(at: u64, remaining: u64, said: bool) -> ApiWindow {
        ApiWindow {
            limit: Some(100),
            window_s: said.then_some(60),
            remaining,
            reset_at: T.plus(Duration::from_secs(60)),
            observed_at: T.plus(Duration::from_secs(at)),
        }
    }

    #[test]
    fn an_even_spend_is_not_ahead_and_a_faster_one_is() {
        let minute = Some(Duration::from_secs(60));
        // A pace at the limit: 30 s in, half left; in the last second, one left. Neither is
        // reported, where the old rule reported the last fifth of every window.
        assert!(!runs_ahead(&window(30, 50, true), minute));
        assert!(!runs_ahead(&window(59, 1, true), minute));
        assert!(is_low(&window(59, 1, true)));
        // Another client took a third: 30 s in, 17 left of the 50 an even spend leaves.
        assert!(runs_ahead(&window(30, 17, true), minute));
        // Within a tenth of the limit of even: not ahead.
        assert!(!runs_ahead(&window(30, 41, true), minute));
        // No length known: the old rule.
        assert!(runs_ahead(&window(59, 1, false), None));
        assert!(!runs_ahead(&window(30, 50, false), None));
    }

    #[test]
    fn the_length_is_learned_across_a_reset() {
        let r = WindowReports::default();
        assert_eq!(r.length_of(&window(50, 10, false)), None);
        let mut next = window(61, 99, false);
        next.reset_at = next.reset_at.plus(Duration::from_secs(60));
        assert_eq!(r.length_of(&next), Some(Duration::from_secs(60)));
        // Within one window the reset stays, and so does the length.
        let mut later = next;
        later.remaining = 90;
        later.observed_at = later.observed_at.plus(Duration::from_secs(5));
        assert_eq!(r.length_of(&later), Some(Duration::from_secs(60)));
        // The API's own word wins.
        assert_eq!(
            r.length_of(&window(5, 90, true)),
            Some(Duration::from_secs(60))
        );
    }
}
