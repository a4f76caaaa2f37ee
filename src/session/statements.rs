//! Which identity each statement id belongs to (driver query ids, SQL API statement handles),
//! and the column plans a SQL API statement's later partitions are masked by: one book per
//! core, of the ids that core answered, bounded in entries and in idle time. Pure (the caller
//! passes the clock); the proxy keeps each book behind a mutex that its core writes and any
//! core may read.
//!
//! Every statement goes upstream as the gateway's one Snowflake user, so Snowflake cannot tell
//! agents apart: without these books, an agent holding another's query id or handle could read
//! that result (`/queries/<id>/result`, `/api/v2/statements/<handle>`), which its own policy
//! might never have allowed it to run. And a SQL API partition after the first carries no row
//! type, so it can only be masked by the plan made from partition 0's, kept here. An id no book
//! holds (never answered through this gateway, evicted, idle too long, or from before a
//! restart) is refused: the books fail closed.
//!
//! Entries are compact (the id as 128 bits, the owner as a keyed 64-bit hash of its `sub`, the
//! last use in seconds), about 60 bytes each with the eviction order. Plans are kept only up to
//! [`PLAN_COLUMNS_MAX`] columns a book; past it, a statement's later partitions are withheld.

/// The most plan columns (over every profile's plan of every statement) a book keeps.
pub const PLAN_COLUMNS_MAX: usize = 1 << 20;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mask::ColumnPlan;

/// How many ids a book holds and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookLimits {
    /// Ids held at most (per core); the least recently used goes first when a new one comes.
    pub ids_max: usize,
    /// How long an id is honoured after its last use (its answer, a poll, a partition).
    pub idle_ttl: Duration,
}

/// The plans a statement's rows are masked by, one per masking profile (by name).
pub type Plans = Vec<(String, ColumnPlan)>;

/// Why an id was refused. The agent is told only that the id is not one it may use (whether it
/// exists for someone else is not its business); the log says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdRefused {
    /// No such id (never answered here, evicted, idle too long, from before a restart).
    #[error("unknown statement id")]
    Unknown,
    /// The id was answered to another identity.
    #[error("statement id of another identity")]
    NotYours,
}

/// A Snowflake query id or statement handle (a UUID) as 128 bits; `None` for anything else.
pub fn id_key(id: &str) -> Option<u128> {
    if !super::is_query_id(id) {
        return None;
    }
    id.bytes().filter(|&b| b != b'-').try_fold(0u128, |key, b| Some(key << 4 | u128::from((b as char).to_digit(16)?)))
}

#[derive(Clone, Copy)]
struct Owner {
    /// Keyed hash of the owner's `sub`.
    tag: u64,
    /// Last use, in seconds since the book's epoch.
    used: u32,
}

/// One core's book of statement ids.
pub struct StatementBook {
    owners: HashMap<u128, Owner>,
    plans: HashMap<u128, Arc<Plans>>,
    /// Columns in `plans`, over every plan.
    plan_columns: usize,
    /// Ids by last use, oldest first; an entry whose time is not its id's `used` is stale (the id
    /// was used again, or dropped) and is skipped.
    order: VecDeque<(u128, u32)>,
    tags: RandomState,
    epoch: Instant,
    limits: BookLimits,
}

impl StatementBook {
    /// An empty book; `now` is its epoch.
    pub fn new(limits: BookLimits, now: Instant) -> StatementBook {
        StatementBook {
            owners: HashMap::new(),
            plans: HashMap::new(),
            plan_columns: 0,
            order: VecDeque::new(),
            tags: RandomState::new(),
            epoch: now,
            limits,
        }
    }

    /// How many ids the book holds (idle ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether the book holds no id.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    fn seconds(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    fn idle(&self, used: u32, now: u32) -> bool {
        u64::from(now.saturating_sub(used)) > self.limits.idle_ttl.as_secs()
    }

    /// Records that `id` was answered to `sub`. An id already held keeps its first owner
    /// (returns `false` when that is another identity, or when `id` is not a UUID).
    pub fn issue(&mut self, id: &str, sub: &str, now: Instant) -> bool {
        let Some(key) = id_key(id) else { return false };
        let now = self.seconds(now);
        self.drop_idle(now);
        let tag = self.tags.hash_one(sub);
        if let Some(held) = self.owners.get(&key).copied() {
            if held.tag != tag {
                return false;
            }
            self.touch(key, now);
            return true;
        }
        while self.owners.len() >= self.limits.ids_max.max(1) {
            let Some((oldest, used)) = self.order.pop_front() else { break };
            if self.owners.get(&oldest).is_some_and(|o| o.used == used) {
                self.remove(oldest);
            }
        }
        self.owners.insert(key, Owner { tag, used: now });
        self.order.push_back((key, now));
        self.compact();
        true
    }

    /// Whether `sub` may use `id`; a use keeps the id from going idle.
    pub fn check(&mut self, id: &str, sub: &str, now: Instant) -> Result<(), IdRefused> {
        let key = id_key(id).ok_or(IdRefused::Unknown)?;
        let now = self.seconds(now);
        let held = self.owners.get(&key).copied().ok_or(IdRefused::Unknown)?;
        if self.idle(held.used, now) {
            return Err(IdRefused::Unknown);
        }
        if held.tag != self.tags.hash_one(sub) {
            return Err(IdRefused::NotYours);
        }
        self.touch(key, now);
        Ok(())
    }

    /// The plans kept for `id` (check first that the agent may use it).
    pub fn plans(&self, id: &str) -> Option<Arc<Plans>> {
        id_key(id).and_then(|key| self.plans.get(&key)).cloned()
    }

    /// Keeps the plans made from `id`'s row type, for its later partitions (ignored unless
    /// `sub` may use the id); `false` when they would take the book past
    /// [`PLAN_COLUMNS_MAX`] columns, and are not kept.
    pub fn keep_plans(&mut self, id: &str, sub: &str, plans: Plans, now: Instant) -> bool {
        let Some(key) = id_key(id) else { return false };
        if plans.is_empty() || self.check(id, sub, now).is_err() {
            return false;
        }
        let columns = plan_columns(&plans);
        let replaced = self.plans.get(&key).map_or(0, |old| plan_columns(old));
        if self.plan_columns - replaced + columns > PLAN_COLUMNS_MAX {
            return false;
        }
        self.plan_columns = self.plan_columns - replaced + columns;
        self.plans.insert(key, Arc::new(plans));
        true
    }

    fn touch(&mut self, key: u128, now: u32) {
        // Only forward: a caller's clock read before another's never moves a use back.
        if let Some(owner) = self.owners.get_mut(&key)
            && now > owner.used
        {
            owner.used = now;
            self.order.push_back((key, now));
            self.compact();
        }
    }

    fn remove(&mut self, key: u128) {
        self.owners.remove(&key);
        if let Some(plans) = self.plans.remove(&key) {
            self.plan_columns -= plan_columns(&plans);
        }
    }

    fn drop_idle(&mut self, now: u32) {
        while let Some(&(key, used)) = self.order.front() {
            if !self.idle(used, now) {
                break;
            }
            self.order.pop_front();
            if self.owners.get(&key).is_some_and(|o| o.used == used) {
                self.remove(key);
            }
        }
    }

    /// Drops stale order entries once they outnumber the live ones (ids used again and again
    /// leave one behind per use), so the order stays within twice the ids held.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.owners.len().max(16) {
            let owners = &self.owners;
            self.order.retain(|(key, used)| owners.get(key).is_some_and(|o| o.used == *used));
        }
    }
}

fn plan_columns(plans: &Plans) -> usize {
    plans.iter().map(|(_, plan)| plan.columns().len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::{Column, Masker, MaskingSpec};

    const A: &str = "01b2c3d4-0000-4000-8000-00000000000a";
    const B: &str = "01b2c3d4-0000-4000-8000-00000000000b";
    const C: &str = "01b2c3d4-0000-4000-8000-00000000000c";

    fn book(ids_max: usize, idle_secs: u64, now: Instant) -> StatementBook {
        StatementBook::new(BookLimits { ids_max, idle_ttl: Duration::from_secs(idle_secs) }, now)
    }

    fn plans() -> Plans {
        let spec: MaskingSpec = toml::from_str("[profiles.p.detectors]\ncard = true\n").expect("a masking spec");
        let masker = Masker::new(&spec).expect("compiles");
        let profile = masker.profile("p").expect("profile p");
        let name = Column { name: "NAME".into(), table: None, type_name: "text".into(), scale: None, nullable: true };
        vec![("p".into(), masker.plan(profile, &[name]))]
    }

    fn secs(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn ids_are_uuids_read_as_128_bits() {
        assert_eq!(id_key(A), Some(0x01b2c3d4_0000_4000_8000_00000000000a));
        assert_eq!(id_key(&A.to_uppercase()), id_key(A));
        for not_an_id in ["", "01b2c3d4-0000-4000-8000-00000000000", "01b2c3d4x0000-4000-8000-00000000000a", "../x"] {
            assert_eq!(id_key(not_an_id), None, "{not_an_id}");
        }
    }

    #[test]
    fn an_id_is_for_the_identity_it_was_answered_to() {
        let now = Instant::now();
        let mut book = book(8, 60, now);
        assert!(book.issue(A, "alice", now));
        assert_eq!(book.check(A, "alice", now), Ok(()));
        assert_eq!(book.check(A, "mallory", now), Err(IdRefused::NotYours));
        assert_eq!(book.check(B, "alice", now), Err(IdRefused::Unknown));
        assert_eq!(book.check("not-an-id", "alice", now), Err(IdRefused::Unknown));
        // A second answer never changes the owner.
        assert!(!book.issue(A, "mallory", now));
        assert_eq!(book.check(A, "mallory", now), Err(IdRefused::NotYours));
        assert!(book.issue(A, "alice", now));
        assert!(!book.issue("not-an-id", "alice", now));
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn plans_are_kept_for_the_owner_only() {
        let now = Instant::now();
        let mut book = book(8, 60, now);
        book.issue(A, "alice", now);
        assert!(!book.keep_plans(A, "mallory", plans(), now));
        assert!(book.plans(A).is_none());
        assert!(book.keep_plans(A, "alice", plans(), now));
        assert_eq!(book.plans(A).unwrap()[0].0, "p");
        assert_eq!(book.plan_columns, 1);
        // Plans for an id the book does not hold go nowhere.
        assert!(!book.keep_plans(B, "alice", plans(), now));
        assert!(book.plans(B).is_none());
        // Kept plans count against the book's column budget until their id goes.
        book.issue(B, "alice", now);
        book.plan_columns = PLAN_COLUMNS_MAX;
        assert!(!book.keep_plans(B, "alice", plans(), now), "past the budget");
        assert!(book.keep_plans(A, "alice", plans(), now), "replacing takes no more room");
        book.plan_columns = 1;
    }

    #[test]
    fn the_least_recently_used_id_goes_first_and_idle_ones_expire() {
        let start = Instant::now();
        let mut book = book(2, 10, start);
        book.issue(A, "alice", start);
        book.issue(B, "alice", secs(start, 1));
        book.keep_plans(A, "alice", plans(), secs(start, 2));
        // A was used after B: B goes when C comes, and A's plans stay.
        book.issue(C, "alice", secs(start, 3));
        assert_eq!(book.len(), 2);
        assert_eq!(book.check(B, "alice", secs(start, 3)), Err(IdRefused::Unknown));
        assert_eq!(book.plans(A).map(|p| p.len()), Some(1));
        // C is honoured ten seconds after its last use, and not after.
        assert_eq!(book.check(C, "alice", secs(start, 13)), Ok(()));
        assert_eq!(book.check(C, "alice", secs(start, 23)), Ok(()));
        assert_eq!(book.check(C, "alice", secs(start, 34)), Err(IdRefused::Unknown));
        // Idle ids are dropped, plans with them, when the next one is issued.
        book.issue(B, "bob", secs(start, 40));
        assert_eq!(book.len(), 1);
        assert!(book.plans(A).is_none());
        assert_eq!(book.plan_columns, 0);
        assert_eq!(book.check(B, "bob", secs(start, 40)), Ok(()));
    }

    /// The book as a list in order of last use (a use in the same second as the last one does
    /// not reorder), every id kept until evicted or idle.
    #[derive(Default)]
    struct Model {
        ids: Vec<(usize, usize, u64)>,
    }

    impl Model {
        fn issue(&mut self, id: usize, sub: usize, now: u64, max: usize, ttl: u64) -> bool {
            self.ids.retain(|&(_, _, used)| now - used <= ttl);
            if let Some(at) = self.ids.iter().position(|e| e.0 == id) {
                if self.ids[at].1 != sub {
                    return false;
                }
                self.touch(at, now);
                return true;
            }
            while self.ids.len() >= max {
                self.ids.remove(0);
            }
            self.ids.push((id, sub, now));
            true
        }

        fn check(&mut self, id: usize, sub: usize, now: u64, ttl: u64) -> Result<(), IdRefused> {
            let at = self.ids.iter().position(|e| e.0 == id).ok_or(IdRefused::Unknown)?;
            if now - self.ids[at].2 > ttl {
                return Err(IdRefused::Unknown);
            }
            if self.ids[at].1 != sub {
                return Err(IdRefused::NotYours);
            }
            self.touch(at, now);
            Ok(())
        }

        fn touch(&mut self, at: usize, now: u64) {
            if self.ids[at].2 != now {
                let mut entry = self.ids.remove(at);
                entry.2 = now;
                self.ids.push(entry);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_book_answers_as_a_simple_list_does(
            ops in proptest::collection::vec((proptest::bool::ANY, 0usize..6, 0usize..3, 0u64..4), 1..200),
            max in 1usize..5,
            ttl in 0u64..6,
        ) {
            let ids: Vec<String> = (0..6).map(|i| format!("01b2c3d4-0000-4000-8000-{i:012x}")).collect();
            let start = Instant::now();
            let mut book = book(max, ttl, start);
            let mut model = Model::default();
            let mut now = 0;
            for (issue, id, sub, step) in ops {
                now += step;
                let sub_name = format!("agent-{sub}");
                if issue {
                    let ours = book.issue(&ids[id], &sub_name, secs(start, now));
                    proptest::prop_assert_eq!(ours, model.issue(id, sub, now, max, ttl));
                } else {
                    let ours = book.check(&ids[id], &sub_name, secs(start, now));
                    proptest::prop_assert_eq!(ours, model.check(id, sub, now, ttl));
                }
                proptest::prop_assert!(book.len() <= max);
            }
        }
    }

    #[test]
    fn the_order_stays_bounded_under_repeated_use() {
        let start = Instant::now();
        let mut book = book(4, 1_000_000, start);
        book.issue(A, "alice", start);
        for s in 1..10_000 {
            assert_eq!(book.check(A, "alice", secs(start, s)), Ok(()));
        }
        assert!(book.order.len() <= 33, "{} order entries for one id", book.order.len());
    }
}
