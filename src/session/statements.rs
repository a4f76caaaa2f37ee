//! Which identity each SQL API statement handle belongs to, and the column plans its later
//! partitions are masked by: a book bounded in entries and age, shared by the cores. Pure (the
//! caller passes the clock); the proxy keeps it behind a mutex.
//!
//! Every SQL API call goes upstream as the gateway's one Snowflake user, so Snowflake cannot
//! tell agents apart: without this book, any agent holding a handle could read another's
//! results, under its own (perhaps weaker) masking. And a later partition (`?partition=N`,
//! `N > 0`) carries no `resultSetMetaData`, so it can only be masked by the plan made from
//! partition 0's row type, kept here. A handle the book does not hold (never issued through
//! this gateway, evicted, expired, or issued before a restart) is refused: the book fails
//! closed.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::mask::ColumnPlan;

/// How many handles the book holds and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookLimits {
    /// Handles held at most; the oldest goes first when a new one comes.
    pub statements_max: usize,
    /// How long after its submit a handle is honoured.
    pub ttl: Duration,
}

/// The plans a statement's rows are masked by, one per masking profile (by name).
pub type Plans = Vec<(String, ColumnPlan)>;

struct Statement {
    sub: String,
    issued: Instant,
    plans: Plans,
}

/// Why a handle was refused. The agent is told only that the handle is not one it may use
/// (whether it exists for someone else is not its business); the log says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandleRefused {
    /// The book has no such handle (never issued here, evicted, expired, or before a restart).
    #[error("unknown statement handle")]
    Unknown,
    /// The handle was issued to another identity.
    #[error("statement handle of another identity")]
    NotYours,
}

/// The book of SQL API statement handles.
pub struct StatementBook {
    statements: HashMap<String, Statement>,
    /// Handles in the order they were issued: the oldest are dropped first.
    order: VecDeque<(String, Instant)>,
    limits: BookLimits,
}

impl StatementBook {
    /// An empty book.
    pub fn new(limits: BookLimits) -> StatementBook {
        StatementBook { statements: HashMap::new(), order: VecDeque::new(), limits }
    }

    /// How many handles the book holds (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    /// Whether the book holds no handle.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Records that `handle` was issued to `sub`. A handle already held keeps its first owner
    /// (returns `false` when that is another identity).
    pub fn issue(&mut self, handle: &str, sub: &str, now: Instant) -> bool {
        self.drop_expired(now);
        if let Some(held) = self.statements.get(handle) {
            return held.sub == sub;
        }
        while self.statements.len() >= self.limits.statements_max.max(1) {
            let Some((oldest, _)) = self.order.pop_front() else { break };
            self.statements.remove(&oldest);
        }
        self.statements.insert(handle.to_owned(), Statement { sub: sub.to_owned(), issued: now, plans: Vec::new() });
        self.order.push_back((handle.to_owned(), now));
        true
    }

    /// The plans kept for `handle`, if `sub` may use it.
    pub fn plans(&self, handle: &str, sub: &str, now: Instant) -> Result<&[(String, ColumnPlan)], HandleRefused> {
        let held = self.statements.get(handle).ok_or(HandleRefused::Unknown)?;
        if now.saturating_duration_since(held.issued) > self.limits.ttl {
            return Err(HandleRefused::Unknown);
        }
        if held.sub != sub {
            return Err(HandleRefused::NotYours);
        }
        Ok(&held.plans)
    }

    /// Keeps the plans made from `handle`'s row type, for its later partitions (ignored
    /// unless `sub` may use the handle).
    pub fn keep_plans(&mut self, handle: &str, sub: &str, plans: Plans, now: Instant) {
        if self.plans(handle, sub, now).is_err() || plans.is_empty() {
            return;
        }
        if let Some(held) = self.statements.get_mut(handle) {
            held.plans = plans;
        }
    }

    fn drop_expired(&mut self, now: Instant) {
        while let Some((handle, issued)) = self.order.front() {
            if now.saturating_duration_since(*issued) <= self.limits.ttl {
                break;
            }
            self.statements.remove(handle);
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::{Column, Masker, MaskingSpec};

    const A: &str = "01b2c3d4-0000-4000-8000-00000000000a";
    const B: &str = "01b2c3d4-0000-4000-8000-00000000000b";
    const C: &str = "01b2c3d4-0000-4000-8000-00000000000c";

    fn book(statements_max: usize, ttl_secs: u64) -> StatementBook {
        StatementBook::new(BookLimits { statements_max, ttl: Duration::from_secs(ttl_secs) })
    }

    fn plans() -> Plans {
        let spec: MaskingSpec = toml::from_str("[profiles.p.detectors]\ncard = true\n").expect("a masking spec");
        let masker = Masker::new(&spec).expect("compiles");
        let profile = masker.profile("p").expect("profile p");
        let name = Column { name: "NAME".into(), table: None, type_name: "text".into(), scale: None, nullable: true };
        vec![("p".into(), masker.plan(profile, &[name]))]
    }

    #[test]
    fn a_handle_is_for_the_identity_it_was_issued_to() {
        let now = Instant::now();
        let mut book = book(8, 60);
        assert!(book.issue(A, "alice", now));
        assert_eq!(book.plans(A, "alice", now).map(<[_]>::len), Ok(0));
        assert_eq!(book.plans(A, "mallory", now).err(), Some(HandleRefused::NotYours));
        assert_eq!(book.plans(B, "alice", now).err(), Some(HandleRefused::Unknown));
        // A second issue never changes the owner.
        assert!(!book.issue(A, "mallory", now));
        assert_eq!(book.plans(A, "mallory", now).err(), Some(HandleRefused::NotYours));
        assert!(book.issue(A, "alice", now));
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn plans_are_kept_for_the_owner_only() {
        let now = Instant::now();
        let mut book = book(8, 60);
        book.issue(A, "alice", now);
        book.keep_plans(A, "mallory", plans(), now);
        assert!(book.plans(A, "alice", now).unwrap().is_empty());
        book.keep_plans(A, "alice", plans(), now);
        assert_eq!(book.plans(A, "alice", now).unwrap()[0].0, "p");
        // Plans for a handle the book does not hold go nowhere.
        book.keep_plans(B, "alice", plans(), now);
        assert!(book.plans(B, "alice", now).is_err());
    }

    #[test]
    fn the_oldest_handle_goes_first_and_old_ones_expire() {
        let start = Instant::now();
        let mut book = book(2, 10);
        book.issue(A, "alice", start);
        book.issue(B, "alice", start + Duration::from_secs(1));
        book.issue(C, "alice", start + Duration::from_secs(2));
        assert_eq!(book.len(), 2);
        let now = start + Duration::from_secs(2);
        assert_eq!(book.plans(A, "alice", now).err(), Some(HandleRefused::Unknown));
        assert!(book.plans(B, "alice", now).is_ok());
        // B is honoured for ten seconds after its issue, and not after.
        assert!(book.plans(B, "alice", start + Duration::from_secs(11)).is_ok());
        assert_eq!(book.plans(B, "alice", start + Duration::from_secs(12)).err(), Some(HandleRefused::Unknown));
        // Expired handles are dropped when the next one is issued.
        book.issue(A, "bob", start + Duration::from_secs(13));
        assert_eq!(book.len(), 1);
        assert!(book.plans(A, "bob", start + Duration::from_secs(13)).is_ok());
    }
}
