//! What the API told the worker, kept in the control record for the pacer: the 429s counted
//! ([`Throttles`]) and the window its rate-limit headers reported ([`ApiWindow`]).

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// The 429s the worker has counted, so the orchestrator can tell a new one from one it has
/// already reacted to, and which of its slots the API refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttles {
    /// 429s answered since the record was created; it only grows.
    pub count: u64,
    /// When the latest 429 was answered.
    pub last_at: Timestamp,
    /// The slot (`slot_at`) of the call the latest 429 answered.
    pub last_slot: Timestamp,
    /// The slots of the latest [`Throttles::RECENT`] 429s, oldest first.
    #[serde(default)]
    pub recent_slots: Vec<Timestamp>,
}

impl Throttles {
    /// How many throttled slots the record keeps.
    pub const RECENT: usize = 32;

    /// The counter after one more 429, answered at `at` for the call of slot `slot`.
    pub fn record(previous: Option<&Throttles>, at: Timestamp, slot: Timestamp) -> Throttles {
        let mut next = previous.cloned().unwrap_or(Throttles {
            count: 0,
            last_at: at,
            last_slot: slot,
            recent_slots: Vec::new(),
        });
        next.count = next.count.saturating_add(1);
        next.last_at = next.last_at.max(at);
        next.last_slot = next.last_slot.max(slot);
        let pos = next.recent_slots.partition_point(|s| *s <= slot);
        next.recent_slots.insert(pos, slot);
        if next.recent_slots.len() > Self::RECENT {
            let excess = next.recent_slots.len() - Self::RECENT;
            next.recent_slots.drain(..excess);
        }
        next
    }

    /// The earliest throttled slot at or after `from` (any, when `None`).
    pub fn first_slot_from(&self, from: Option<Timestamp>) -> Option<Timestamp> {
        let keep = |s: &Timestamp| from.is_none_or(|f| *s >= f);
        self.recent_slots
            .iter()
            .copied()
            .find(keep)
            .or_else(|| Some(self.last_slot).filter(keep))
    }
}

/// The API's rate-limit headers as the worker read them (`X-RateLimit-Limit` / `-Remaining` /
/// `-Reset`, or the IETF `RateLimit-Policy` / `RateLimit` fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiWindow {
    /// The window's limit, when the API says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The window's length in seconds, when the API says it (the IETF policy's `w`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_s: Option<u64>,
    /// Calls left in the current window.
    pub remaining: u64,
    /// When the window resets (its remaining count back to the limit).
    pub reset_at: Timestamp,
    /// When the answer that carried it arrived.
    pub observed_at: Timestamp,
}

impl ApiWindow {
    /// Whether this observation should replace `stored`: it was observed later (an older or
    /// equally old one never overwrites what is there).
    pub fn supersedes(&self, stored: Option<&ApiWindow>) -> bool {
        stored.is_none_or(|s| self.observed_at > s.observed_at)
    }
}
