//! The sessions agents logged out of, refused until every token and chunk URL issued for them
//! has expired. Pure (the caller passes the clock); the proxy keeps one behind a mutex.
//!
//! Sealed tokens carry their claims and are checked by their seal alone, so a session token
//! opens as well after its agent logged out as before. What goes to Snowflake fails there (the
//! session is gone), but the gateway answers some requests itself: a chunk URL is served from
//! cloud storage by its sealed grant, for up to its TTL (an hour by default) and past the
//! session token's expiry, and a parked statement is polled in the approvals ledger; a master
//! token outlives both and would renew a session that Snowflake did not end (a logout that
//! failed upstream). A logout enters its session here until the identity's end, when nothing
//! of it opens any more, and every path that opens a token or a grant looks here.
//!
//! Bounded: at most [`LoggedOut::new`]'s `entries_max` sessions. When full, what has expired
//! goes first, then the entering identity's own session that ends soonest, then anyone's.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

/// The most sessions a gateway keeps refusing after their logouts (about 100 bytes each): a
/// logout a second for over a day, longer than an identity lasts at the default `session_max`
/// (12 hours); past that the soonest to end are forgotten first.
pub const ENTRIES_MAX: usize = 100_000;

/// The sessions logged out of, each until when it is refused (Unix milliseconds).
#[derive(Debug)]
pub struct LoggedOut {
    /// By (a keyed hash of the `sub`, Snowflake session id): looked up on every session
    /// request, without building a key.
    until: HashMap<(u64, i64), u64>,
    tags: RandomState,
    entries_max: usize,
}

impl LoggedOut {
    /// An empty set holding at most `entries_max` sessions (at least one).
    pub fn new(entries_max: usize) -> LoggedOut {
        LoggedOut { until: HashMap::new(), tags: RandomState::new(), entries_max: entries_max.max(1) }
    }

    /// Refuses `sub`'s session `session_id` until `until_unix_ms`. When the set is full of
    /// sessions still refused, `sub`'s own that ends soonest makes room (so one identity
    /// logging out of session after session forgets its own, not the others'), or failing
    /// one, the soonest to end of all.
    pub fn enter(&mut self, sub: &str, session_id: i64, until_unix_ms: u64, now_unix_ms: u64) {
        if until_unix_ms <= now_unix_ms {
            return;
        }
        let tag = self.tags.hash_one(sub);
        let key = (tag, session_id);
        if !self.until.contains_key(&key) && self.until.len() >= self.entries_max {
            self.until.retain(|_, until| *until > now_unix_ms);
            if self.until.len() >= self.entries_max {
                let soonest = |own: bool| {
                    self.until
                        .iter()
                        .filter(|((t, _), _)| !own || *t == tag)
                        .min_by_key(|(_, until)| **until)
                        .map(|(key, _)| *key)
                };
                if let Some(gone) = soonest(true).or_else(|| soonest(false)) {
                    self.until.remove(&gone);
                }
            }
        }
        let entry = self.until.entry(key).or_insert(until_unix_ms);
        *entry = (*entry).max(until_unix_ms);
    }

    /// Whether `sub`'s session `session_id` was logged out of (and is still refused).
    pub fn contains(&self, sub: &str, session_id: i64, now_unix_ms: u64) -> bool {
        !self.until.is_empty()
            && self.until.get(&(self.tags.hash_one(sub), session_id)).is_some_and(|until| *until > now_unix_ms)
    }

    /// Sessions held (expired ones included until they are purged).
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_refused_until_its_time_and_for_its_identity_only() {
        let mut out = LoggedOut::new(8);
        out.enter("agent", 7, 2_000, 1_000);
        assert!(out.contains("agent", 7, 1_999));
        assert!(!out.contains("agent", 7, 2_000), "past its time");
        assert!(!out.contains("agent", 8, 1_500), "another session");
        assert!(!out.contains("other", 7, 1_500), "another identity's session of that id");
        // Entered again with an earlier end: the later one holds.
        out.enter("agent", 7, 1_500, 1_000);
        assert!(out.contains("agent", 7, 1_999));
        // Nothing to refuse past its end.
        out.enter("agent", 9, 1_000, 1_000);
        assert!(!out.contains("agent", 9, 999) && out.len() == 1);
    }

    /// One identity logging out of session after session makes room from its own.
    #[test]
    fn when_full_an_identity_forgets_its_own_sessions_first() {
        let mut out = LoggedOut::new(3);
        out.enter("alice", 1, 2_000, 1_000);
        out.enter("mallory", 1, 9_000, 1_000);
        out.enter("mallory", 2, 9_500, 1_000);
        for id in 3..50 {
            out.enter("mallory", id, 10_000 + id as u64, 1_000);
        }
        assert_eq!(out.len(), 3);
        assert!(out.contains("alice", 1, 1_500), "alice's logout is still honoured");
        assert!(out.contains("mallory", 49, 1_500));
    }

    #[test]
    fn when_full_the_expired_go_first_then_the_soonest_to_end() {
        let mut out = LoggedOut::new(3);
        out.enter("a", 1, 1_100, 1_000);
        out.enter("a", 2, 5_000, 1_000);
        out.enter("a", 3, 4_000, 1_000);
        // At 1,200 session 1 has expired: it makes room.
        out.enter("a", 4, 6_000, 1_200);
        assert_eq!(out.len(), 3);
        assert!(out.contains("a", 2, 1_200) && out.contains("a", 3, 1_200) && out.contains("a", 4, 1_200));
        // None has: session 3, the soonest to end, goes.
        out.enter("a", 5, 7_000, 1_300);
        assert_eq!(out.len(), 3);
        assert!(!out.contains("a", 3, 1_300));
        assert!(out.contains("a", 2, 1_300) && out.contains("a", 4, 1_300) && out.contains("a", 5, 1_300));
    }
}
