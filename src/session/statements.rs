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
//! Entries are compact (the id as 128 bits, the owner as a keyed 64-bit hash of its [`Owner`], the
//! last use in seconds, its places in two lists), about 90 bytes each with the index. Plans are kept only
//! up to [`PLAN_COLUMNS_MAX`] columns a book, and [`PLAN_COLUMNS_PER_IDENTITY_MAX`] an
//! identity; past either, a statement's later partitions are withheld.
//!
//! One identity holds at most `ids_per_identity_max` ids of a book: past that, its own least
//! recently used go first, so an agent running statements fast churns its own ids, not the
//! others'. When the book is full, the least recently used id of all goes.

/// The most plan columns (over every profile's plan of every statement) a book keeps.
pub const PLAN_COLUMNS_MAX: usize = 1 << 20;

/// The most plan columns one identity's statements hold in a book: an eighth of it, so that
/// one agent running wide results fast spends its own share, and the others' later
/// partitions are still masked (withheld only once eight identities each hold theirs).
pub const PLAN_COLUMNS_PER_IDENTITY_MAX: usize = PLAN_COLUMNS_MAX / 8;

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::mask::ColumnPlan;

/// Whom a statement id belongs to: the identity as it ran the statement, its `sub` and its
/// groups (in any order). Policy and masking follow the groups, so a token of the same `sub`
/// with other groups (a group taken away since, a second token) does not use the first's ids:
/// it could read, unmasked or unallowed, what its own policy would not give it.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// The identity.
    pub sub: &'a str,
    /// Its groups.
    pub groups: &'a [String],
}

impl Hash for Owner<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.sub.hash(state);
        let mut groups: Vec<&str> = self.groups.iter().map(String::as_str).collect();
        groups.sort_unstable();
        groups.dedup();
        groups.hash(state);
    }
}

/// How many ids a book holds and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookLimits {
    /// Ids held at most (per core); the least recently used goes first when a new one comes.
    pub ids_max: usize,
    /// Ids one identity holds at most (per core); its own least recently used go first.
    pub ids_per_identity_max: usize,
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

/// No node.
const NIL: u32 = u32::MAX;

/// One id: its owner, last use, and its places in two lists by last use (all ids, and its
/// owner's), oldest first.
struct Node {
    key: u128,
    /// Keyed hash of the owner ([`Owner`]).
    tag: u64,
    /// Last use, in seconds since the book's epoch.
    used: u32,
    /// Neighbours in the list of all ids, and in the owner's.
    all: Links,
    owner: Links,
}

#[derive(Clone, Copy)]
struct Links {
    prev: u32,
    next: u32,
}

/// A list's oldest and newest nodes.
#[derive(Clone, Copy)]
struct Ends {
    head: u32,
    tail: u32,
}

impl Default for Ends {
    fn default() -> Ends {
        Ends { head: NIL, tail: NIL }
    }
}

/// Which of a node's two lists.
#[derive(Clone, Copy)]
enum List {
    All,
    Owner,
}

/// One identity's ids: how many, its list, and the plan columns they hold.
#[derive(Default)]
struct Held {
    count: usize,
    ends: Ends,
    plan_columns: usize,
}

/// One core's book of statement ids: nodes in a slab, each in two intrusive lists by last use,
/// so a use, an eviction and a removal are O(1) and nothing is ever swept.
pub struct StatementBook {
    slots: HashMap<u128, u32>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    all: Ends,
    held: HashMap<u64, Held>,
    plans: HashMap<u128, Arc<Plans>>,
    /// Columns in `plans`, over every plan.
    plan_columns: usize,
    tags: RandomState,
    epoch: Instant,
    limits: BookLimits,
}

impl StatementBook {
    /// An empty book; `now` is its epoch.
    pub fn new(limits: BookLimits, now: Instant) -> StatementBook {
        StatementBook {
            slots: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            all: Ends::default(),
            held: HashMap::new(),
            plans: HashMap::new(),
            plan_columns: 0,
            tags: RandomState::new(),
            epoch: now,
            limits,
        }
    }

    /// How many ids the book holds (idle ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the book holds no id.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn seconds(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    fn idle(&self, used: u32, now: u32) -> bool {
        u64::from(now.saturating_sub(used)) > self.limits.idle_ttl.as_secs()
    }

    /// Records that `id` was answered to `sub`. An id already held keeps its first owner
    /// (returns `false` when that is another identity, or when `id` is not a UUID).
    pub fn issue<O: Hash + ?Sized>(&mut self, id: &str, sub: &O, now: Instant) -> bool {
        let Some(key) = id_key(id) else { return false };
        let now = self.seconds(now);
        self.drop_idle(now);
        let tag = self.tags.hash_one(sub);
        if let Some(&at) = self.slots.get(&key) {
            if self.nodes[at as usize].tag != tag {
                return false;
            }
            self.touch(at, now);
            return true;
        }
        // The identity's own least recently used go first once it holds its share, then (the
        // book full) the least recently used of all.
        let share = self.limits.ids_per_identity_max.max(1);
        while let Some(held) = self.held.get(&tag)
            && held.count >= share
            && held.ends.head != NIL
        {
            self.remove(held.ends.head);
        }
        // Node indexes are u32 (NIL excluded).
        let ids_max = self.limits.ids_max.clamp(1, NIL as usize - 1);
        while self.slots.len() >= ids_max && self.all.head != NIL {
            self.remove(self.all.head);
        }
        let node =
            Node { key, tag, used: now, all: Links { prev: NIL, next: NIL }, owner: Links { prev: NIL, next: NIL } };
        let at = match self.free.pop() {
            Some(at) => {
                self.nodes[at as usize] = node;
                at
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.slots.insert(key, at);
        self.held.entry(tag).or_default().count += 1;
        self.push_back(List::All, at);
        self.push_back(List::Owner, at);
        true
    }

    /// Whether `sub` may use `id`; a use keeps the id from going idle.
    pub fn check<O: Hash + ?Sized>(&mut self, id: &str, sub: &O, now: Instant) -> Result<(), IdRefused> {
        let key = id_key(id).ok_or(IdRefused::Unknown)?;
        let now = self.seconds(now);
        let at = *self.slots.get(&key).ok_or(IdRefused::Unknown)?;
        let node = &self.nodes[at as usize];
        if self.idle(node.used, now) {
            return Err(IdRefused::Unknown);
        }
        if node.tag != self.tags.hash_one(sub) {
            return Err(IdRefused::NotYours);
        }
        self.touch(at, now);
        Ok(())
    }

    /// The plans kept for `id` (check first that the agent may use it).
    pub fn plans(&self, id: &str) -> Option<Arc<Plans>> {
        id_key(id).and_then(|key| self.plans.get(&key)).cloned()
    }

    /// Keeps the plans made from `id`'s row type, for its later partitions (ignored unless
    /// `sub` may use the id); `false` when they would take the book past
    /// [`PLAN_COLUMNS_MAX`] columns, or `sub`'s statements past
    /// [`PLAN_COLUMNS_PER_IDENTITY_MAX`], and are not kept.
    pub fn keep_plans<O: Hash + ?Sized>(&mut self, id: &str, sub: &O, plans: Plans, now: Instant) -> bool {
        let Some(key) = id_key(id) else { return false };
        if plans.is_empty() || self.check(id, sub, now).is_err() {
            return false;
        }
        let tag = self.tags.hash_one(sub);
        let columns = plan_columns(&plans);
        let replaced = self.plans.get(&key).map_or(0, |old| plan_columns(old));
        let Some(held) = self.held.get_mut(&tag) else { return false };
        if held.plan_columns - replaced + columns > PLAN_COLUMNS_PER_IDENTITY_MAX
            || self.plan_columns - replaced + columns > PLAN_COLUMNS_MAX
        {
            return false;
        }
        held.plan_columns = held.plan_columns - replaced + columns;
        self.plan_columns = self.plan_columns - replaced + columns;
        self.plans.insert(key, Arc::new(plans));
        true
    }

    fn touch(&mut self, at: u32, now: u32) {
        // Only forward: a caller's clock read before another's never moves a use back.
        if now > self.nodes[at as usize].used {
            self.nodes[at as usize].used = now;
            for list in [List::All, List::Owner] {
                self.unlink(list, at);
                self.push_back(list, at);
            }
        }
    }

    fn remove(&mut self, at: u32) {
        self.unlink(List::All, at);
        self.unlink(List::Owner, at);
        let Node { key, tag, .. } = self.nodes[at as usize];
        let freed = self.plans.remove(&key).map_or(0, |plans| plan_columns(&plans));
        self.plan_columns -= freed;
        if let Some(held) = self.held.get_mut(&tag) {
            held.count -= 1;
            held.plan_columns -= freed;
            if held.count == 0 {
                self.held.remove(&tag);
            }
        }
        self.slots.remove(&key);
        self.free.push(at);
    }

    fn drop_idle(&mut self, now: u32) {
        while self.all.head != NIL && self.idle(self.nodes[self.all.head as usize].used, now) {
            self.remove(self.all.head);
        }
    }

    fn links(&mut self, list: List, at: u32) -> &mut Links {
        let node = &mut self.nodes[at as usize];
        match list {
            List::All => &mut node.all,
            List::Owner => &mut node.owner,
        }
    }

    fn ends(&mut self, list: List, at: u32) -> &mut Ends {
        match list {
            List::All => &mut self.all,
            List::Owner => {
                let tag = self.nodes[at as usize].tag;
                &mut self.held.get_mut(&tag).expect("a held node's owner has a list").ends
            }
        }
    }

    fn push_back(&mut self, list: List, at: u32) {
        let tail = self.ends(list, at).tail;
        *self.links(list, at) = Links { prev: tail, next: NIL };
        if tail == NIL {
            self.ends(list, at).head = at;
        } else {
            self.links(list, tail).next = at;
        }
        self.ends(list, at).tail = at;
    }

    fn unlink(&mut self, list: List, at: u32) {
        let Links { prev, next } = *self.links(list, at);
        if prev == NIL {
            self.ends(list, at).head = next;
        } else {
            self.links(list, prev).next = next;
        }
        if next == NIL {
            self.ends(list, at).tail = prev;
        } else {
            self.links(list, next).prev = prev;
        }
        *self.links(list, at) = Links { prev: NIL, next: NIL };
    }
}

fn plan_columns(plans: &Plans) -> usize {
    plans.iter().map(|(_, plan)| plan.columns().len()).sum()
}

/// Every core's book: a core enters the ids it answered in its own and looks in all of them
/// (an agent's connections may be on any core). A book behind a poisoned lock stays usable:
/// every change to one is a few map operations that leave it consistent. The clock is read
/// under each book's lock, so a book's clock never goes back.
pub struct StatementBooks {
    books: Vec<Mutex<StatementBook>>,
}

impl StatementBooks {
    /// One empty book for each of `cores` cores (at least one).
    pub fn new(cores: usize, limits: BookLimits) -> StatementBooks {
        let now = Instant::now();
        StatementBooks { books: (0..cores.max(1)).map(|_| Mutex::new(StatementBook::new(limits, now))).collect() }
    }

    fn book(&self, core: usize) -> MutexGuard<'_, StatementBook> {
        self.books[core % self.books.len()].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `core` answered statements `ids` to `sub`; `false` when another identity
    /// holds one of them in any book (what came before it is entered). Ids not shaped like
    /// Snowflake's are passed over (no request could name them). An id another core's book
    /// holds for `sub` already stays there alone: plans are kept in the first book that holds
    /// a statement, and a second entry without them, looked in first by its own core, would
    /// withhold the statement's later partitions there (an async submit answered on one core
    /// and polled to its rows on another).
    pub fn issue(&self, core: usize, ids: &[String], sub: Owner<'_>) -> bool {
        let mut ids: Vec<&String> = ids.iter().filter(|id| id_key(id).is_some()).collect();
        if ids.is_empty() {
            return true;
        }
        let books = self.books.len();
        for at in (0..books).filter(|&at| at != core % books) {
            let mut book = self.book(at);
            let now = Instant::now();
            let mut refused = false;
            ids.retain(|id| match book.check(id, &sub, now) {
                Ok(()) => false,
                Err(IdRefused::NotYours) => {
                    refused = true;
                    true
                }
                Err(IdRefused::Unknown) => true,
            });
            if refused {
                return false;
            }
        }
        let mut book = self.book(core);
        let now = Instant::now();
        ids.into_iter().all(|id| book.issue(id, &sub, now))
    }

    /// The book that holds statement `id` for `sub` (a use, which keeps the id from going
    /// idle): `core`'s own first, then the others'.
    fn holder(&self, core: usize, id: &str, sub: Owner<'_>) -> Result<MutexGuard<'_, StatementBook>, IdRefused> {
        let books = self.books.len();
        for at in (0..books).map(|i| (core + i) % books) {
            let mut book = self.book(at);
            match book.check(id, &sub, Instant::now()) {
                Ok(()) => return Ok(book),
                Err(IdRefused::NotYours) => return Err(IdRefused::NotYours),
                Err(IdRefused::Unknown) => {}
            }
        }
        Err(IdRefused::Unknown)
    }

    /// Whether `sub` may use statement `id`, with the plans kept for it.
    pub fn statement_for(&self, core: usize, id: &str, sub: Owner<'_>) -> Result<Option<Arc<Plans>>, IdRefused> {
        self.holder(core, id, sub).map(|book| book.plans(id))
    }

    /// Keeps the plans made from statement `id`'s row type in the book that holds it; `false`
    /// when that book's plan budget is spent. (An id no book holds for `sub` has nothing to
    /// keep them with: `true`, its partitions are refused by id.)
    pub fn keep_plans(&self, core: usize, id: &str, sub: Owner<'_>, plans: Plans) -> bool {
        match self.holder(core, id, sub) {
            Ok(mut book) => book.keep_plans(id, &sub, plans, Instant::now()),
            Err(_) => true,
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

    fn book(ids_max: usize, idle_secs: u64, now: Instant) -> StatementBook {
        book_shared(ids_max, ids_max, idle_secs, now)
    }

    fn book_shared(ids_max: usize, ids_per_identity_max: usize, idle_secs: u64, now: Instant) -> StatementBook {
        let idle_ttl = Duration::from_secs(idle_secs);
        StatementBook::new(BookLimits { ids_max, ids_per_identity_max, idle_ttl }, now)
    }

    fn plans() -> Plans {
        let spec: MaskingSpec = toml::from_str("[profiles.p.detectors]\ncard = true\n").expect("a masking spec");
        let masker = Masker::new(&spec).expect("compiles");
        let profile = masker.profile("p").expect("profile p");
        let name = Column {
            name: "NAME".into(),
            table: None,
            schema: None,
            database: None,
            type_name: "text".into(),
            scale: None,
            nullable: true,
        };
        vec![("p".into(), masker.plan(profile, &[name]))]
    }

    fn secs(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    /// An async SQL API submit answered on core 0, polled to its rows on core 1, its next
    /// partition fetched on core 0: the plans kept from the rows are found there. Entered
    /// again in core 1's book, the handle had its plans kept there while core 0 found its
    /// own entry, without them, first (and withheld the partition).
    #[test]
    fn a_statement_answered_on_two_cores_has_its_plans_wherever_it_is_asked_for() {
        let limits = BookLimits { ids_max: 8, ids_per_identity_max: 8, idle_ttl: Duration::from_secs(60) };
        let books = StatementBooks::new(2, limits);
        let handle = [A.to_owned()];
        let analysts = ["analysts".to_owned(), "readers".to_owned()];
        let agent = Owner { sub: "agent", groups: &analysts };
        assert!(books.issue(0, &handle, agent));
        assert!(books.issue(1, &handle, agent));
        assert!(books.keep_plans(1, A, agent, plans()));
        // The same groups in another order (and repeated) are the same owner.
        let reordered = ["readers".to_owned(), "analysts".to_owned(), "readers".to_owned()];
        for core in [0, 1] {
            let kept = books.statement_for(core, A, Owner { sub: "agent", groups: &reordered });
            assert_eq!(kept.expect("the agent's statement").as_deref(), Some(&plans()), "asked on core {core}");
        }
        // Another identity, or the same `sub` with other groups (whose policy and masking
        // differ), is refused on either core, and cannot enter the handle as its own.
        let ops = ["ops".to_owned()];
        for other in [Owner { sub: "other", groups: &analysts }, Owner { sub: "agent", groups: &ops }] {
            for core in [0, 1] {
                assert_eq!(books.statement_for(core, A, other), Err(IdRefused::NotYours), "{other:?}");
                assert!(!books.issue(core, &handle, other));
            }
        }
        assert_eq!(books.statement_for(0, B, agent), Err(IdRefused::Unknown));
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

    /// One identity keeping plans for statement after statement spends its own share of the
    /// book's plan budget, not the others': their later partitions are still masked. Its
    /// share comes back as its ids go.
    #[test]
    fn one_identity_cannot_spend_the_others_plan_budget() {
        let now = Instant::now();
        let mut book = book(1 << 16, 60, now);
        let wide: Plans = {
            let (name, plan) = plans().remove(0);
            let columns: Vec<ColumnPlan> = vec![plan; PLAN_COLUMNS_PER_IDENTITY_MAX / 4];
            columns.into_iter().map(|p| (name.clone(), p)).collect()
        };
        let id = |n: u32| format!("01b2c3d4-0000-4000-8000-{n:012x}");
        let mut kept = 0;
        for n in 0..8 {
            assert!(book.issue(&id(n), "mallory", now));
            kept += usize::from(book.keep_plans(&id(n), "mallory", wide.clone(), now));
        }
        assert_eq!(kept, 4, "mallory keeps plans up to her share and no further");
        assert!(book.issue(A, "alice", now));
        assert!(book.keep_plans(A, "alice", plans(), now), "alice's statement is masked as ever");
        assert_eq!(book.plan_columns, PLAN_COLUMNS_PER_IDENTITY_MAX + 1);
        // Mallory's first statement goes: her share has room again.
        book.remove(book.slots[&id_key(&id(0)).unwrap()]);
        assert!(book.keep_plans(&id(7), "mallory", wide.clone(), now));
        assert_eq!(book.plan_columns, PLAN_COLUMNS_PER_IDENTITY_MAX + 1);
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

    #[test]
    fn an_identity_past_its_share_churns_its_own_ids_not_the_others() {
        let start = Instant::now();
        let mut book = book_shared(6, 3, 600, start);
        let id = |n: u64| format!("01b2c3d4-0000-4000-8000-{n:012x}");
        book.issue(&id(100), "bob", start);
        book.issue(&id(101), "carol", start);
        for n in 0..50 {
            assert!(book.issue(&id(n), "mallory", secs(start, 1 + n)));
            assert!(book.len() <= 5, "{} ids", book.len());
        }
        // Bob's and Carol's ids, older than all of Mallory's, are still theirs.
        assert_eq!(book.check(&id(100), "bob", secs(start, 60)), Ok(()));
        assert_eq!(book.check(&id(101), "carol", secs(start, 60)), Ok(()));
        // Mallory keeps her three most recent.
        assert_eq!(book.check(&id(49), "mallory", secs(start, 60)), Ok(()));
        assert_eq!(book.check(&id(47), "mallory", secs(start, 60)), Ok(()));
        assert_eq!(book.check(&id(46), "mallory", secs(start, 60)), Err(IdRefused::Unknown));
        // A full book still evicts the least recently used of all.
        book.issue(&id(200), "dave", secs(start, 61));
        book.issue(&id(201), "dave", secs(start, 62));
        assert_eq!(book.len(), 6);
        assert_eq!(book.check(&id(48), "mallory", secs(start, 63)), Err(IdRefused::Unknown));
        assert_eq!(book.check(&id(100), "bob", secs(start, 63)), Ok(()));
        assert!(book.nodes.len() <= 6, "{} nodes", book.nodes.len());
    }

    /// The book as a list in order of last use (a use in the same second as the last one does
    /// not reorder), every id kept until evicted or idle.
    #[derive(Default)]
    struct Model {
        ids: Vec<(usize, usize, u64)>,
    }

    impl Model {
        fn issue(&mut self, id: usize, sub: usize, now: u64, max: (usize, usize), ttl: u64) -> bool {
            self.ids.retain(|&(_, _, used)| now - used <= ttl);
            if let Some(at) = self.ids.iter().position(|e| e.0 == id) {
                if self.ids[at].1 != sub {
                    return false;
                }
                self.touch(at, now);
                return true;
            }
            let (max, per_identity) = max;
            while self.ids.iter().filter(|e| e.1 == sub).count() >= per_identity {
                let oldest = self.ids.iter().position(|e| e.1 == sub).expect("counted above");
                self.ids.remove(oldest);
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
            per_identity in 1usize..5,
            ttl in 0u64..6,
        ) {
            let ids: Vec<String> = (0..6).map(|i| format!("01b2c3d4-0000-4000-8000-{i:012x}")).collect();
            let start = Instant::now();
            let mut book = book_shared(max, per_identity, ttl, start);
            let mut model = Model::default();
            let mut now = 0;
            for (issue, id, sub, step) in ops {
                now += step;
                let sub_name = format!("agent-{sub}");
                if issue {
                    let ours = book.issue(&ids[id], &sub_name, secs(start, now));
                    proptest::prop_assert_eq!(ours, model.issue(id, sub, now, (max, per_identity), ttl));
                } else {
                    let ours = book.check(&ids[id], &sub_name, secs(start, now));
                    proptest::prop_assert_eq!(ours, model.check(id, sub, now, ttl));
                }
                proptest::prop_assert!(book.len() <= max);
            }
        }
    }

    #[test]
    fn memory_stays_with_the_ids_held_under_any_use() {
        let start = Instant::now();
        let mut book = book_shared(4, 2, 1_000_000, start);
        book.issue(A, "alice", start);
        for s in 1..10_000 {
            assert_eq!(book.check(A, "alice", secs(start, s)), Ok(()));
        }
        assert_eq!(book.nodes.len(), 1, "repeated use must not grow the book");
        // Churn past the share and past the book: nodes are reused, never more than the ids.
        for n in 0..10_000u64 {
            let id = format!("01b2c3d4-0000-4000-8000-{n:012x}");
            book.issue(&id, if n % 3 == 0 { "bob" } else { "carol" }, secs(start, 10_000 + n));
        }
        assert_eq!(book.len(), 4);
        assert!(book.nodes.len() <= 4 && book.free.len() + book.len() == book.nodes.len());
        assert_eq!(book.held.values().map(|h| h.count).sum::<usize>(), 4);
    }
}
