//! Time as the core sees it: a UTC [`Timestamp`] in microseconds and the [`Clock`] port.
//!
//! Logic never reads the system clock directly: it is handed a `now`, or a [`Clock`]. The
//! [`TokioClock`] follows tokio's clock, so under `tokio::time::pause()` a day of pacing runs in
//! milliseconds and deterministically, and in a normal runtime it follows real time.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A point in time: microseconds since the UNIX epoch, UTC.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The UNIX epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// From microseconds since the epoch.
    pub const fn from_micros(us: u64) -> Self {
        Timestamp(us)
    }

    /// From milliseconds since the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms.saturating_mul(1000))
    }

    /// From whole seconds since the epoch.
    pub const fn from_secs(s: u64) -> Self {
        Timestamp(s.saturating_mul(1_000_000))
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Milliseconds since the epoch (truncated).
    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    /// Whole seconds since the epoch (truncated).
    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000_000
    }

    /// The current system time. Only adapters and `main`s call this; logic takes a [`Clock`].
    pub fn from_system(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_micros(d)))
    }

    /// `self - d`, saturating at the epoch.
    pub fn minus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_micros(d)))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// Reads RFC 3339 text (as [`Timestamp::to_rfc3339`] writes it); `None` when it is not.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
        let micros = u64::try_from(t.timestamp_micros()).ok()?;
        Some(Timestamp(micros))
    }

    /// RFC 3339 text, for logs and reports.
    pub fn to_rfc3339(self) -> String {
        let secs = i64::try_from(self.0 / 1_000_000).unwrap_or(i64::MAX);
        let nanos = u32::try_from((self.0 % 1_000_000) * 1000).unwrap_or(0);
        match chrono::DateTime::from_timestamp(secs, nanos) {
            Some(dt) => dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            None => format!("{}us", self.0),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Microseconds in a duration, saturating.
pub fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The clock port: the current time, and a way to wait for a later one.
#[async_trait]
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
    /// Waits until `t` (returns at once if `t` is not in the future).
    async fn sleep_until(&self, t: Timestamp);
    /// Waits for `d`.
    async fn sleep(&self, d: Duration) {
        let t = self.now().plus(d);
        self.sleep_until(t).await;
    }
}

#[async_trait]
impl<T: Clock + ?Sized> Clock for std::sync::Arc<T> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
    async fn sleep_until(&self, t: Timestamp) {
        (**self).sleep_until(t).await
    }
}

/// A clock that follows tokio's time, anchored to a UTC start.
///
/// In a normal runtime it advances with real time; under `tokio::time::pause()` it is a virtual
/// clock that jumps forward whenever every task is asleep.
#[derive(Clone, Debug)]
pub struct TokioClock {
    anchor: Timestamp,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads the system time once, now, and follows tokio's time from there.
    pub fn system() -> Self {
        Self::starting_at(Timestamp::from_system(SystemTime::now()))
    }

    /// A clock that reads `anchor` now and follows tokio's time from there.
    pub fn starting_at(anchor: Timestamp) -> Self {
        TokioClock {
            anchor,
            start: tokio::time::Instant::now(),
        }
    }
}

#[async_trait]
impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.anchor.plus(self.start.elapsed())
    }

    async fn sleep_until(&self, t: Timestamp) {
        let at = self.start + t.since(self.anchor);
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_millis(1_000);
        assert_eq!(t.plus(Duration::from_millis(5)).as_millis(), 1_005);
        assert_eq!(t.minus(Duration::from_secs(10)), Timestamp::EPOCH);
        assert_eq!(t.since(Timestamp::from_millis(2_000)), Duration::ZERO);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(
            Timestamp::from_secs(86_400).to_rfc3339(),
            "1970-01-02T00:00:00.000Z"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn paused_clock_jumps() {
        let c = TokioClock::starting_at(Timestamp::from_secs(100));
        c.sleep(Duration::from_secs(3600)).await;
        assert_eq!(c.now().as_secs(), 3700);
    }
}
