//! The approvals ledger: statements parked for review, the reviewers' decisions, and the
//! hand-over of an approved statement to run exactly once. Pure: time is an input
//! (`now_unix_ms`), nothing here does I/O or reads a clock.
//!
//! A parked statement is keyed by (agent `sub`, Snowflake session id, the driver's
//! `requestId`): a driver retry with the same `requestId` finds the same item, never a new
//! one, and a retry with different text under the same `requestId` is refused. Each item gets
//! a synthetic query id (a UUID v4, as drivers require) for the `getResultUrl` the driver
//! polls; polls and the hand-over are bound to the agent's `sub` and session, so another agent
//! learns nothing from a guessed id. An item not decided before its timeout is denied.
//!
//! Life of an item: `Pending` → (`approve` × N) `Approved` → `take_approved` `Running` →
//! `finish` `Finished`; or `Pending` or `Approved` → `deny` `Denied` (a reviewer may take an
//! approval back until the statement is taken to run); or `Pending` or `Approved` → `withdraw`
//! `Withdrawn` (the agent cancelled it); or `Pending` → timeout `TimedOut`, and `Approved` →
//! `TimedOut` when the approval is not taken within the review's timeout (the agent went away:
//! the statement does not run hours later); or `Pending` or `Approved` → `void_session`
//! `Voided` (a statement that may change the session ran in it meanwhile: the review covered
//! the session as it was). Decided items stay for
//! [`LedgerLimits::retention`] so late polls get their answer, then are purged by
//! [`Ledger::expire`]; an approved item is never purged, it times out (and is recorded so).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;

use super::rules::{ReviewRequirement, Subject};

/// Bounds on the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerLimits {
    /// Undecided or running items one `sub` may have.
    pub pending_per_subject_max: usize,
    /// Items in the ledger, decided ones included.
    pub items_max: usize,
    /// Bytes held, all items together: each item's key, groups, rule name, statement text,
    /// bindings, settings, context, reviewers' reasons, and its payload while it is kept.
    pub stored_bytes_max: usize,
    /// The same, for one `sub`'s items (decided ones included, until purged): one agent
    /// parking a few statements with large bindings must not fill the ledger for every other.
    /// Half the total by default.
    pub stored_bytes_per_subject_max: usize,
    /// How long a decided item stays for polls.
    pub retention: Duration,
    /// Longest reviewer reason kept, in bytes.
    pub reason_bytes_max: usize,
}

impl Default for LedgerLimits {
    fn default() -> LedgerLimits {
        LedgerLimits {
            pending_per_subject_max: 16,
            items_max: 4096,
            stored_bytes_max: 64 << 20,
            stored_bytes_per_subject_max: 32 << 20,
            retention: Duration::from_secs(15 * 60),
            reason_bytes_max: 1000,
        }
    }
}

/// The longest driver `requestId` the ledger keys by (drivers send a UUID, 36 bytes).
pub const REQUEST_ID_BYTES_MAX: usize = 64;

/// What identifies a statement across driver retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RequestKey {
    /// The agent.
    pub sub: String,
    /// Snowflake's session id.
    pub session_id: i64,
    /// The driver's `requestId`.
    pub request_id: String,
}

/// A statement to park.
#[derive(Debug, Clone)]
pub struct ParkRequest<P> {
    /// Its retry identity.
    pub key: RequestKey,
    /// The agent's groups (shown to reviewers).
    pub agent_groups: Vec<String>,
    /// The exact statement text.
    pub statement_text: String,
    /// The bindings, raw JSON as the driver sent them.
    pub bindings: Option<String>,
    /// Where and how it would run, shown to reviewers: the Snowflake role, and what the request
    /// sets besides the text (a SQL API body's database, schema, warehouse and timeout).
    pub settings: BTreeMap<String, String>,
    /// The agent's context header (prompt or trace id), capped by the caller.
    pub agent_context: Option<String>,
    /// What approval needs.
    pub requirement: ReviewRequirement,
    /// The rule that sent it to review.
    pub rule_name: Option<String>,
    /// What the proxy needs to run it later (the rewritten request body, say). Handed back
    /// once, by [`Ledger::take_approved`]; dropped when the statement is denied or times out.
    pub payload: P,
    /// The payload's size, counted against [`LedgerLimits::stored_bytes_max`] while it is held.
    pub payload_bytes: usize,
}

/// One reviewer's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewDecision {
    /// The reviewer's `sub`.
    pub reviewer: String,
    /// Their reason.
    pub reason: String,
    /// When.
    pub at_unix_ms: u64,
}

impl PollState {
    /// The state's name, without its details (a denial's reason is free text).
    pub fn name(&self) -> &'static str {
        match self {
            PollState::Pending { .. } => "pending",
            PollState::Approved => "approved",
            PollState::Running => "running",
            PollState::Finished { .. } => "finished",
            PollState::Denied { .. } => "denied",
            PollState::TimedOut => "timed out",
            PollState::Withdrawn => "withdrawn",
            PollState::Voided => "voided",
        }
    }
}

/// What a driver's poll (or a retry) learns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum PollState {
    /// Waiting for reviewers.
    Pending {
        /// Approvals so far.
        approvals: u32,
        /// Approvals needed.
        approvals_required: u32,
        /// When it times out.
        expires_at_unix_ms: u64,
    },
    /// Approved: the proxy should [`Ledger::take_approved`] it and run it.
    Approved,
    /// Handed to the proxy and running.
    Running,
    /// Ran; the result is Snowflake's query `upstream_query_id`.
    Finished {
        /// Snowflake's query id, when the run produced one.
        upstream_query_id: Option<String>,
    },
    /// A reviewer denied it.
    Denied {
        /// The reviewer's reason.
        reason: String,
    },
    /// Nobody decided in time, or the approval was not taken in time: not run.
    TimedOut,
    /// The agent cancelled it before it ran.
    Withdrawn,
    /// Its session changed before it ran (a `USE`, `SET`...): not run.
    Voided,
}

/// A pending statement as reviewers see it (the admin API's list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingView {
    /// The synthetic query id (reviewers approve by it).
    pub query_id: String,
    /// The agent.
    pub sub: String,
    /// The agent's groups.
    pub groups: Vec<String>,
    /// Snowflake's session id.
    pub session_id: i64,
    /// The driver's `requestId`.
    pub request_id: String,
    /// The exact statement text.
    pub statement_text: String,
    /// The bindings, raw JSON as the driver sent them: part of what is approved.
    pub bindings: Option<String>,
    /// Where and how it would run: the Snowflake role, and for the SQL API the body's
    /// database, schema, warehouse and timeout when it sets them.
    pub settings: BTreeMap<String, String>,
    /// BLAKE3 of the text and bindings, hex: what an approval is bound to.
    pub statement_hash: String,
    /// The agent's context.
    pub agent_context: Option<String>,
    /// The rule that sent it to review.
    pub rule_name: Option<String>,
    /// When it was parked.
    pub created_at_unix_ms: u64,
    /// How long it has waited.
    pub age_ms: u64,
    /// When it times out.
    pub expires_at_unix_ms: u64,
    /// Approvals needed.
    pub approvals_required: u32,
    /// Who may decide.
    pub reviewer_groups: Vec<String>,
    /// Approvals so far.
    pub approvals: Vec<ReviewDecision>,
}

/// An approved statement handed over to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedStatement<P> {
    /// The synthetic query id.
    pub query_id: String,
    /// The exact text that was approved.
    pub statement_text: String,
    /// The exact bindings that were approved.
    pub bindings: Option<String>,
    /// BLAKE3 of both, hex.
    pub statement_hash: String,
    /// The approvals.
    pub approvals: Vec<ReviewDecision>,
    /// What was parked with it.
    pub payload: P,
}

/// The result of parking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// The synthetic query id for `getResultUrl`.
    pub query_id: String,
    /// Its state now.
    pub state: PollState,
    /// Whether this call created it (false: a retry of a parked statement).
    pub created: bool,
}

/// A ledger operation refused. Whose fault each is, is said in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// No such item for this caller (also when it belongs to another agent or session).
    #[error("no parked statement with this id for this caller")]
    NotFound,
    /// The item is not waiting for a decision.
    #[error("the parked statement is no longer waiting for a decision (it is {0})")]
    NotPending(&'static str),
    /// The reviewer is in none of the reviewer groups.
    #[error("the reviewer is not in a reviewer group for this statement")]
    NotAReviewer,
    /// The reviewer is the agent that sent the statement.
    #[error("an agent cannot review its own statement")]
    SelfReview,
    /// The reviewer already approved it.
    #[error("the reviewer already approved this statement")]
    AlreadyApproved,
    /// The reason is empty or too long.
    #[error("the reason must be 1 to {0} bytes")]
    BadReason(usize),
    /// The driver reused a `requestId` for a different statement.
    #[error("the agent reused a requestId for a different statement")]
    RequestIdReused,
    /// The agent has too many statements waiting.
    #[error("the agent has too many statements waiting for review")]
    TooManyPending,
    /// The agent's items hold too many bytes, or are too many (decided ones included, until
    /// purged).
    #[error("the agent's statements held for review are too many or too large together")]
    SubjectFull,
    /// The ledger is full (the gateway's limit).
    #[error("the gateway holds too many parked statements")]
    Full,
    /// The item is not approved (yet, or any more).
    #[error("the parked statement is not approved and ready to run (it is {0})")]
    NotApproved(&'static str),
    /// The driver's `requestId` is longer than any driver's.
    #[error("the agent's requestId is longer than {REQUEST_ID_BYTES_MAX} bytes")]
    BadRequestId,
}

#[derive(Debug, Clone)]
struct Item<P> {
    query_id: String,
    key: RequestKey,
    agent_groups: Vec<String>,
    statement_text: String,
    bindings: Option<String>,
    settings: BTreeMap<String, String>,
    statement_hash: String,
    agent_context: Option<String>,
    requirement: ReviewRequirement,
    rule_name: Option<String>,
    created_at_unix_ms: u64,
    approvals: Vec<ReviewDecision>,
    state: State,
    decided_at_unix_ms: Option<u64>,
    /// When it was approved: its approval lapses a review timeout later, however often it is
    /// taken to run and handed back.
    approved_at_unix_ms: Option<u64>,
    /// How it ended while it was running (withdrawn, voided): if it is handed back unsent
    /// ([`Ledger::unrun`]), it ends so instead of being approved again.
    ended_while_running: Option<State>,
    payload: Option<P>,
    payload_bytes: usize,
    /// What the item holds: its key (twice, with the index's), groups, rule name, text,
    /// bindings, settings, context, the reviewers' names and reasons, and the payload while it
    /// is kept.
    weight_bytes: usize,
    /// Where the recording of an outcome no request of the agent's carries (a timeout, a void)
    /// stands, whichever call caused or noticed it: a poll, a listing, a decision, another
    /// statement of the session, or [`Ledger::expire`] itself.
    outcome_report: OutcomeReport,
}

/// Where the recording of an item's unrequested outcome stands. An item is purged only once
/// that outcome, if it had one, is on record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutcomeReport {
    /// No such outcome, or its record was taken.
    Settled,
    /// Timed out or voided; [`Ledger::expire`] returns it next.
    Due,
    /// Returned by [`Ledger::expire`]; the caller is recording it ([`Ledger::outcome_recorded`]).
    Recording,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Pending,
    Approved,
    Running,
    Finished { upstream_query_id: Option<String> },
    Denied { reason: String },
    TimedOut,
    Withdrawn,
    Voided,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Running => "running",
            State::Finished { .. } => "finished",
            State::Denied { .. } => "denied",
            State::TimedOut => "timed out",
            State::Withdrawn => "withdrawn",
            State::Voided => "voided",
        }
    }

    fn is_live(&self) -> bool {
        matches!(self, State::Pending | State::Approved | State::Running)
    }
}

impl<P> Item<P> {
    fn expires_at_unix_ms(&self) -> u64 {
        let timeout_ms = u64::try_from(self.requirement.timeout.as_millis()).unwrap_or(u64::MAX);
        self.created_at_unix_ms.saturating_add(timeout_ms)
    }

    /// Applies the timeouts: a pending item past its review's timeout, and an approved one not
    /// taken within that long of its approval (or of its hand-back), time out.
    fn tick(&mut self, now_unix_ms: u64) -> bool {
        let due = match self.state {
            State::Pending => self.expires_at_unix_ms(),
            State::Approved => {
                let timeout_ms = u64::try_from(self.requirement.timeout.as_millis()).unwrap_or(u64::MAX);
                self.approved_at_unix_ms.unwrap_or(self.created_at_unix_ms).saturating_add(timeout_ms)
            }
            _ => return false,
        };
        if now_unix_ms < due {
            return false;
        }
        self.state = State::TimedOut;
        self.decided_at_unix_ms = Some(due);
        self.outcome_report = OutcomeReport::Due;
        self.take_payload();
        true
    }

    /// Ends a statement that has not run (`Pending` or `Approved`) in `state`; `false` when it
    /// is past that (running, or decided). A running one ends so if it comes back unsent.
    fn end_unrun(&mut self, state: State, now_unix_ms: u64) -> bool {
        if self.state == State::Running && self.ended_while_running.is_none() {
            self.ended_while_running = Some(state);
            return false;
        }
        if !matches!(self.state, State::Pending | State::Approved) {
            return false;
        }
        self.end(state, now_unix_ms);
        self.take_payload();
        true
    }

    /// Sets the state a statement that never ran ends in; a void is then due for the recording.
    fn end(&mut self, state: State, now_unix_ms: u64) {
        if state == State::Voided {
            self.outcome_report = OutcomeReport::Due;
        }
        self.state = state;
        self.decided_at_unix_ms = Some(now_unix_ms);
    }

    /// Takes the payload out (to run it, or because it never will run); it no longer counts.
    fn take_payload(&mut self) -> Option<P> {
        let payload = self.payload.take()?;
        self.weight_bytes -= self.payload_bytes;
        Some(payload)
    }

    fn poll_state(&self) -> PollState {
        match &self.state {
            State::Pending => PollState::Pending {
                approvals: u32::try_from(self.approvals.len()).unwrap_or(u32::MAX),
                approvals_required: self.requirement.approvals,
                expires_at_unix_ms: self.expires_at_unix_ms(),
            },
            State::Approved => PollState::Approved,
            State::Running => PollState::Running,
            State::Finished { upstream_query_id } => {
                PollState::Finished { upstream_query_id: upstream_query_id.clone() }
            }
            State::Denied { reason } => PollState::Denied { reason: reason.clone() },
            State::TimedOut => PollState::TimedOut,
            State::Withdrawn => PollState::Withdrawn,
            State::Voided => PollState::Voided,
        }
    }
}

/// A statement's hash: BLAKE3 over the length-prefixed text and bindings, hex.
pub fn statement_hash(statement_text: &str, bindings: Option<&str>) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(statement_text.len() as u64).to_le_bytes());
    hasher.update(statement_text.as_bytes());
    match bindings {
        Some(bindings) => {
            hasher.update(&[1]);
            hasher.update(&(bindings.len() as u64).to_le_bytes());
            hasher.update(bindings.as_bytes());
        }
        None => {
            hasher.update(&[0]);
        }
    }
    hasher.finalize().to_hex().to_string()
}

/// An outcome no request of the agent's carries, which [`Ledger::expire`] hands out for the
/// recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The item.
    pub query_id: String,
    /// Its retry identity.
    pub key: RequestKey,
    /// How it ended.
    pub kind: OutcomeKind,
}

/// How a parked statement ended without a request of its agent's saying so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Its review, or its approval, ran out of time.
    TimedOut,
    /// Another statement ran in its session first ([`Ledger::void_session`]).
    Voided,
}

impl OutcomeKind {
    /// The recording event's name.
    pub fn event_name(self) -> &'static str {
        match self {
            OutcomeKind::TimedOut => "review_timeout",
            OutcomeKind::Voided => "review_voided",
        }
    }

    /// The outcome's name in the event's detail.
    pub fn name(self) -> &'static str {
        match self {
            OutcomeKind::TimedOut => "timed_out",
            OutcomeKind::Voided => "voided",
        }
    }
}

/// What one `sub`'s items hold ([`Ledger::held_by`]).
#[derive(Debug, Default)]
struct Held {
    /// Items, decided ones included (until purged).
    items: usize,
    /// Of those, undecided or running.
    live: usize,
    /// Their weight in bytes.
    bytes: usize,
}

/// The ledger. One per gateway process (the proxy shares it behind a lock).
#[derive(Debug)]
pub struct Ledger<P> {
    limits: LedgerLimits,
    items: HashMap<String, Item<P>>,
    by_key: HashMap<RequestKey, String>,
}

impl<P> Ledger<P> {
    /// An empty ledger.
    pub fn new(limits: LedgerLimits) -> Ledger<P> {
        Ledger { limits, items: HashMap::new(), by_key: HashMap::new() }
    }

    /// Locks a shared ledger. A panic while holding the lock leaves the ledger consistent
    /// (every method completes its change before returning), so a poisoned lock is still used:
    /// refusing would leave statements parked that nobody can decide, and a reviewer's decision
    /// already on record without its outcome.
    pub fn lock(shared: &Mutex<Ledger<P>>) -> MutexGuard<'_, Ledger<P>> {
        shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Items held (decided ones included).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the ledger holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Parks a statement, or finds it again when the key was parked before.
    pub fn park(&mut self, request: ParkRequest<P>, now_unix_ms: u64) -> Result<Parked, LedgerError> {
        if request.key.request_id.len() > REQUEST_ID_BYTES_MAX {
            return Err(LedgerError::BadRequestId);
        }
        let hash = statement_hash(&request.statement_text, request.bindings.as_deref());
        if let Some(query_id) = self.by_key.get(&request.key).cloned()
            && let Some(item) = self.items.get_mut(&query_id)
        {
            if item.statement_hash != hash {
                return Err(LedgerError::RequestIdReused);
            }
            item.tick(now_unix_ms);
            return Ok(Parked { query_id, state: item.poll_state(), created: false });
        }
        let held = self.held_by(&request.key.sub);
        if held.live >= self.limits.pending_per_subject_max {
            return Err(LedgerError::TooManyPending);
        }
        // Everything the item holds counts: the key twice (the item's, and the index's).
        let weight_bytes = 2 * (request.key.sub.len() + request.key.request_id.len())
            + request.agent_groups.iter().map(String::len).sum::<usize>()
            + request.rule_name.as_ref().map_or(0, String::len)
            + request.statement_text.len()
            + request.bindings.as_ref().map_or(0, String::len)
            + request.settings.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + request.agent_context.as_ref().map_or(0, String::len)
            + request.payload_bytes;
        if held.bytes + weight_bytes > self.limits.stored_bytes_per_subject_max {
            return Err(LedgerError::SubjectFull);
        }
        // Decided items stay for the retention: one agent parking and withdrawing (or voiding)
        // over and over must not fill the ledger's items for every other either.
        if held.items >= self.items_per_subject_max() {
            self.purge(now_unix_ms);
            if self.held_by(&request.key.sub).items >= self.items_per_subject_max() {
                return Err(LedgerError::SubjectFull);
            }
        }
        if self.items.len() >= self.limits.items_max
            || self.stored_bytes() + weight_bytes > self.limits.stored_bytes_max
        {
            self.purge(now_unix_ms);
            if self.items.len() >= self.limits.items_max
                || self.stored_bytes() + weight_bytes > self.limits.stored_bytes_max
            {
                return Err(LedgerError::Full);
            }
        }
        let query_id = uuid::Uuid::new_v4().hyphenated().to_string();
        let item = Item {
            query_id: query_id.clone(),
            key: request.key.clone(),
            agent_groups: request.agent_groups,
            statement_text: request.statement_text,
            bindings: request.bindings,
            settings: request.settings,
            statement_hash: hash,
            agent_context: request.agent_context,
            requirement: request.requirement,
            rule_name: request.rule_name,
            created_at_unix_ms: now_unix_ms,
            approvals: Vec::new(),
            state: State::Pending,
            decided_at_unix_ms: None,
            approved_at_unix_ms: None,
            ended_while_running: None,
            outcome_report: OutcomeReport::Settled,
            payload: Some(request.payload),
            payload_bytes: request.payload_bytes,
            weight_bytes,
        };
        let state = item.poll_state();
        self.by_key.insert(request.key, query_id.clone());
        self.items.insert(query_id.clone(), item);
        Ok(Parked { query_id, state, created: true })
    }

    /// What `sub`'s items hold, in one pass over the ledger.
    fn held_by(&self, sub: &str) -> Held {
        let mut held = Held::default();
        for item in self.items.values().filter(|item| item.key.sub == sub) {
            held.items += 1;
            held.live += usize::from(item.state.is_live());
            held.bytes += item.weight_bytes;
        }
        held
    }

    /// Items one `sub` may have, decided ones included: half of `items_max`, as its bytes are
    /// held to half the total by default, but never fewer than it may have undecided.
    fn items_per_subject_max(&self) -> usize {
        (self.limits.items_max / 2).max(self.limits.pending_per_subject_max)
    }

    /// Bytes the items hold (at most `items_max` items, so counting is cheap next to a park).
    fn stored_bytes(&self) -> usize {
        self.items.values().map(|item| item.weight_bytes).sum()
    }

    fn owned_item(&mut self, query_id: &str, sub: &str, session_id: i64) -> Result<&mut Item<P>, LedgerError> {
        match self.items.get_mut(query_id) {
            Some(item) if item.key.sub == sub && item.key.session_id == session_id => Ok(item),
            _ => Err(LedgerError::NotFound),
        }
    }

    /// The state the agent's poll of `query_id` sees.
    pub fn poll(
        &mut self,
        query_id: &str,
        sub: &str,
        session_id: i64,
        now_unix_ms: u64,
    ) -> Result<PollState, LedgerError> {
        let item = self.owned_item(query_id, sub, session_id)?;
        item.tick(now_unix_ms);
        Ok(item.poll_state())
    }

    /// Statements waiting for a decision, oldest first.
    pub fn list_pending(&mut self, now_unix_ms: u64) -> Vec<PendingView> {
        let mut pending: Vec<PendingView> = self
            .items
            .values_mut()
            .filter_map(|item| {
                item.tick(now_unix_ms);
                (item.state == State::Pending).then(|| PendingView {
                    query_id: item.query_id.clone(),
                    sub: item.key.sub.clone(),
                    groups: item.agent_groups.clone(),
                    session_id: item.key.session_id,
                    request_id: item.key.request_id.clone(),
                    statement_text: item.statement_text.clone(),
                    bindings: item.bindings.clone(),
                    settings: item.settings.clone(),
                    statement_hash: item.statement_hash.clone(),
                    agent_context: item.agent_context.clone(),
                    rule_name: item.rule_name.clone(),
                    created_at_unix_ms: item.created_at_unix_ms,
                    age_ms: now_unix_ms.saturating_sub(item.created_at_unix_ms),
                    expires_at_unix_ms: item.expires_at_unix_ms(),
                    approvals_required: item.requirement.approvals,
                    reviewer_groups: item.requirement.reviewer_groups.clone(),
                    approvals: item.approvals.clone(),
                })
            })
            .collect();
        pending.sort_by(|a, b| (a.created_at_unix_ms, &a.query_id).cmp(&(b.created_at_unix_ms, &b.query_id)));
        pending
    }

    /// The item a reviewer may decide: pending, or also approved (`or_approved`, to deny it).
    fn reviewable(
        &mut self,
        query_id: &str,
        reviewer: &Subject,
        reason: &str,
        now_unix_ms: u64,
        or_approved: bool,
    ) -> Result<&mut Item<P>, LedgerError> {
        let reason_bytes_max = self.limits.reason_bytes_max;
        let item = self.items.get_mut(query_id).ok_or(LedgerError::NotFound)?;
        item.tick(now_unix_ms);
        // Who may not decide is told so before anything of the statement's state.
        if reviewer.sub == item.key.sub {
            return Err(LedgerError::SelfReview);
        }
        if !reviewer.groups.iter().any(|g| item.requirement.reviewer_groups.contains(g)) {
            return Err(LedgerError::NotAReviewer);
        }
        if !(item.state == State::Pending || or_approved && item.state == State::Approved) {
            return Err(LedgerError::NotPending(item.state.name()));
        }
        if reason.trim().is_empty() || reason.len() > reason_bytes_max {
            return Err(LedgerError::BadReason(reason_bytes_max));
        }
        Ok(item)
    }

    /// Records `reviewer`'s approval; with enough approvals the statement is approved.
    pub fn approve(
        &mut self,
        query_id: &str,
        reviewer: &Subject,
        reason: &str,
        now_unix_ms: u64,
    ) -> Result<PollState, LedgerError> {
        let item = self.reviewable(query_id, reviewer, reason, now_unix_ms, false)?;
        if item.approvals.iter().any(|a| a.reviewer == reviewer.sub) {
            return Err(LedgerError::AlreadyApproved);
        }
        item.weight_bytes += reviewer.sub.len() + reason.len();
        item.approvals.push(ReviewDecision {
            reviewer: reviewer.sub.clone(),
            reason: reason.to_owned(),
            at_unix_ms: now_unix_ms,
        });
        if item.approvals.len() >= item.requirement.approvals as usize {
            item.state = State::Approved;
            item.decided_at_unix_ms = Some(now_unix_ms);
            item.approved_at_unix_ms = Some(now_unix_ms);
        }
        Ok(item.poll_state())
    }

    /// Records `reviewer`'s denial: one denial denies the statement, pending or approved (an
    /// approval is taken back until the statement is taken to run).
    pub fn deny(
        &mut self,
        query_id: &str,
        reviewer: &Subject,
        reason: &str,
        now_unix_ms: u64,
    ) -> Result<PollState, LedgerError> {
        let item = self.reviewable(query_id, reviewer, reason, now_unix_ms, true)?;
        item.weight_bytes += reason.len();
        item.end_unrun(State::Denied { reason: reason.to_owned() }, now_unix_ms);
        Ok(item.poll_state())
    }

    /// The agent cancels its statement (the driver's abort, by the statement's id): pending or
    /// approved, it will not run. Returns the state after: `Withdrawn`, or what it was when it
    /// was past that (running, or decided).
    pub fn withdraw(
        &mut self,
        query_id: &str,
        sub: &str,
        session_id: i64,
        now_unix_ms: u64,
    ) -> Result<PollState, LedgerError> {
        let item = self.owned_item(query_id, sub, session_id)?;
        item.tick(now_unix_ms);
        item.end_unrun(State::Withdrawn, now_unix_ms);
        Ok(item.poll_state())
    }

    /// A statement runs in `session_id` of `sub` (it may change the session): the session's
    /// statements not yet run, but `running` (the approved statement that is this one), are
    /// voided (reviewed as the session was, they would run in another). Returns how many.
    pub fn void_session(&mut self, sub: &str, session_id: i64, running: Option<&str>, now_unix_ms: u64) -> usize {
        let mut voided = 0;
        for item in self.items.values_mut() {
            if item.key.session_id == session_id && item.key.sub == sub && running != Some(item.query_id.as_str()) {
                item.tick(now_unix_ms);
                voided += usize::from(item.end_unrun(State::Voided, now_unix_ms));
            }
        }
        voided
    }

    /// [`Ledger::withdraw`] by the driver's `requestId` (the abort that names the request);
    /// `None` when no statement of this agent and session was parked under it. Returns the
    /// statement's id with its state.
    pub fn withdraw_request(&mut self, key: &RequestKey, now_unix_ms: u64) -> Option<(String, PollState)> {
        let query_id = self.by_key.get(key)?.clone();
        let state = self.withdraw(&query_id, &key.sub, key.session_id, now_unix_ms).ok()?;
        Some((query_id, state))
    }

    /// Hands an approved statement to the proxy to run, exactly once, and only to the agent
    /// and session it was parked for.
    pub fn take_approved(
        &mut self,
        query_id: &str,
        sub: &str,
        session_id: i64,
        now_unix_ms: u64,
    ) -> Result<ApprovedStatement<P>, LedgerError> {
        let item = self.owned_item(query_id, sub, session_id)?;
        item.tick(now_unix_ms);
        if item.state != State::Approved {
            return Err(LedgerError::NotApproved(item.state.name()));
        }
        let Some(payload) = item.take_payload() else { return Err(LedgerError::NotApproved("running")) };
        item.state = State::Running;
        // Retention of a running item counts from the hand-over.
        item.decided_at_unix_ms = Some(now_unix_ms);
        Ok(ApprovedStatement {
            query_id: item.query_id.clone(),
            statement_text: item.statement_text.clone(),
            bindings: item.bindings.clone(),
            statement_hash: item.statement_hash.clone(),
            approvals: item.approvals.clone(),
            payload,
        })
    }

    /// Hands back a statement taken to run that was never sent (its request could not be
    /// recorded, say): it is approved again, for the next poll to run, unless it was withdrawn
    /// or voided while it was out (it then ends so, and the payload is dropped).
    pub fn unrun(&mut self, query_id: &str, payload: P, now_unix_ms: u64) -> Result<(), LedgerError> {
        let item = self.items.get_mut(query_id).ok_or(LedgerError::NotFound)?;
        if item.state != State::Running || item.payload.is_some() {
            return Err(LedgerError::NotApproved(item.state.name()));
        }
        if let Some(ended) = item.ended_while_running.take() {
            item.end(ended, now_unix_ms);
            return Ok(());
        }
        item.state = State::Approved;
        item.payload = Some(payload);
        item.weight_bytes += item.payload_bytes;
        Ok(())
    }

    /// Records that the running statement finished (with Snowflake's query id, if any).
    pub fn finish(
        &mut self,
        query_id: &str,
        upstream_query_id: Option<String>,
        now_unix_ms: u64,
    ) -> Result<(), LedgerError> {
        let item = self.items.get_mut(query_id).ok_or(LedgerError::NotFound)?;
        if item.state != State::Running {
            return Err(LedgerError::NotPending(item.state.name()));
        }
        item.state = State::Finished { upstream_query_id };
        item.decided_at_unix_ms = Some(now_unix_ms);
        Ok(())
    }

    /// Times out pending items and approvals not taken in time, and purges items decided
    /// longer than the retention ago (running items included: their run is on record).
    /// Returns the outcomes to record (timeouts and voids): those since the last call,
    /// whichever call caused or noticed them, and those the recording could not take before.
    /// The caller tells [`Ledger::outcome_recorded`] how each went; until then no other call
    /// returns it.
    pub fn expire(&mut self, now_unix_ms: u64) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for item in self.items.values_mut() {
            item.tick(now_unix_ms);
            if item.outcome_report == OutcomeReport::Due {
                let kind = if item.state == State::Voided { OutcomeKind::Voided } else { OutcomeKind::TimedOut };
                item.outcome_report = OutcomeReport::Recording;
                outcomes.push(Outcome { query_id: item.query_id.clone(), key: item.key.clone(), kind });
            }
        }
        self.purge(now_unix_ms);
        outcomes.sort_by(|a, b| a.query_id.cmp(&b.query_id));
        outcomes
    }

    /// Whether the recording took the outcome [`Ledger::expire`] returned for `query_id`: if
    /// not, the next `expire` returns it again (an outcome is never dropped because the disk
    /// or the queue was briefly full).
    pub fn outcome_recorded(&mut self, query_id: &str, recorded: bool) {
        if let Some(item) = self.items.get_mut(query_id)
            && item.outcome_report == OutcomeReport::Recording
        {
            item.outcome_report = if recorded { OutcomeReport::Settled } else { OutcomeReport::Due };
        }
    }

    /// Times out pending items and purges items decided longer than the retention ago, but
    /// not one whose timeout is not on record yet.
    fn purge(&mut self, now_unix_ms: u64) {
        let retention_ms = u64::try_from(self.limits.retention.as_millis()).unwrap_or(u64::MAX);
        let mut purge = Vec::new();
        for item in self.items.values_mut() {
            item.tick(now_unix_ms);
            // An approved item lapses by its timeout instead (above), which is recorded.
            if let Some(decided) = item.decided_at_unix_ms
                && item.state != State::Approved
                && now_unix_ms.saturating_sub(decided) >= retention_ms
                && item.outcome_report == OutcomeReport::Settled
            {
                purge.push(item.query_id.clone());
            }
        }
        for query_id in purge {
            if let Some(item) = self.items.remove(&query_id) {
                self.by_key.remove(&item.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn requirement(approvals: u32) -> ReviewRequirement {
        ReviewRequirement { approvals, reviewer_groups: vec!["dba".into()], timeout: Duration::from_secs(60) }
    }

    fn request(request_id: &str, text: &str) -> ParkRequest<&'static str> {
        ParkRequest {
            key: RequestKey { sub: "agent".into(), session_id: 7, request_id: request_id.into() },
            agent_groups: vec!["analysts".into()],
            statement_text: text.into(),
            bindings: None,
            settings: BTreeMap::new(),
            agent_context: Some("trace-1".into()),
            requirement: requirement(2),
            rule_name: Some("writes need review".into()),
            payload: "body",
            payload_bytes: 4,
        }
    }

    fn reviewer(sub: &str) -> Subject {
        Subject { sub: sub.into(), groups: vec!["dba".into()] }
    }

    /// [`request`], approved by one reviewer.
    fn one_approval(request_id: &str, text: &str) -> ParkRequest<&'static str> {
        ParkRequest { requirement: requirement(1), ..request(request_id, text) }
    }

    /// What an item of [`request`] holds besides its text, context and payload, with a
    /// one-byte `requestId`: the key twice, the agent's groups and the rule's name.
    const HELD: usize = 2 * ("agent".len() + 1) + "analysts".len() + "writes need review".len();

    #[test]
    fn retries_find_the_same_item_and_ids_are_uuid_v4() {
        let mut ledger = Ledger::new(LedgerLimits::default());
        let first = ledger.park(request("r1", "delete from t where id = 1"), T0).unwrap();
        assert!(first.created);
        let id = uuid::Uuid::parse_str(&first.query_id).unwrap();
        assert_eq!(id.get_version_num(), 4);
        assert!(crate::session::is_query_id(&first.query_id));
        let retry = ledger.park(request("r1", "delete from t where id = 1"), T0 + 5_000).unwrap();
        assert_eq!((retry.query_id.as_str(), retry.created), (first.query_id.as_str(), false));
        assert_eq!(ledger.park(request("r1", "delete from t"), T0).unwrap_err(), LedgerError::RequestIdReused);
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn approvals_need_distinct_reviewers_from_reviewer_groups() {
        let mut ledger = Ledger::new(LedgerLimits::default());
        let id = ledger.park(request("r1", "update t set a = 1 where id = 2"), T0).unwrap().query_id;
        let agent = Subject { sub: "agent".into(), groups: vec!["dba".into()] };
        assert_eq!(ledger.approve(&id, &agent, "ok", T0).unwrap_err(), LedgerError::SelfReview);
        let outsider = Subject { sub: "eve".into(), groups: vec!["analysts".into()] };
        assert_eq!(ledger.approve(&id, &outsider, "ok", T0).unwrap_err(), LedgerError::NotAReviewer);
        assert_eq!(ledger.approve(&id, &reviewer("alice"), " ", T0).unwrap_err(), LedgerError::BadReason(1000));
        let state = ledger.approve(&id, &reviewer("alice"), "looks right", T0 + 1).unwrap();
        assert!(matches!(state, PollState::Pending { approvals: 1, approvals_required: 2, .. }));
        assert_eq!(ledger.approve(&id, &reviewer("alice"), "again", T0 + 2).unwrap_err(), LedgerError::AlreadyApproved);
        assert_eq!(ledger.take_approved(&id, "agent", 7, T0 + 2).unwrap_err(), LedgerError::NotApproved("pending"));
        assert_eq!(ledger.approve(&id, &reviewer("bob"), "fine", T0 + 3).unwrap(), PollState::Approved);
        assert_eq!(
            ledger.approve(&id, &reviewer("carol"), "late", T0 + 4).unwrap_err(),
            LedgerError::NotPending("approved")
        );
        // Someone who may not decide learns nothing of where the statement stands.
        assert_eq!(ledger.approve(&id, &outsider, "ok", T0 + 5).unwrap_err(), LedgerError::NotAReviewer);
        assert_eq!(ledger.deny(&id, &agent, "no", T0 + 5).unwrap_err(), LedgerError::SelfReview);
    }

    #[test]
    fn the_approved_statement_is_handed_over_once_to_its_agent_only() {
        let mut ledger = Ledger::new(LedgerLimits::default());
        let req = one_approval("r1", "merge into t using s on t.id = s.id when matched then delete");
        let id = ledger.park(req, T0).unwrap().query_id;
        ledger.approve(&id, &reviewer("alice"), "ok", T0 + 10).unwrap();
        assert_eq!(ledger.poll(&id, "other-agent", 7, T0 + 11).unwrap_err(), LedgerError::NotFound);
        assert_eq!(ledger.take_approved(&id, "agent", 8, T0 + 11).unwrap_err(), LedgerError::NotFound);
        let approved = ledger.take_approved(&id, "agent", 7, T0 + 11).unwrap();
        assert_eq!(approved.payload, "body");
        assert_eq!(approved.statement_hash, statement_hash(&approved.statement_text, None));
        assert_eq!(ledger.take_approved(&id, "agent", 7, T0 + 12).unwrap_err(), LedgerError::NotApproved("running"));
        assert_eq!(ledger.poll(&id, "agent", 7, T0 + 12).unwrap(), PollState::Running);
        ledger.finish(&id, Some("01b2-upstream".into()), T0 + 20).unwrap();
        assert_eq!(
            ledger.poll(&id, "agent", 7, T0 + 21).unwrap(),
            PollState::Finished { upstream_query_id: Some("01b2-upstream".into()) }
        );
    }

    #[test]
    fn denial_and_timeout_deny() {
        let mut ledger = Ledger::new(LedgerLimits::default());
        let denied = ledger.park(request("r1", "insert into t values (1)"), T0).unwrap().query_id;
        ledger.deny(&denied, &reviewer("alice"), "not today", T0 + 5).unwrap();
        assert_eq!(ledger.poll(&denied, "agent", 7, T0 + 6).unwrap(), PollState::Denied { reason: "not today".into() });
        let slow = ledger.park(request("r2", "insert into t values (2)"), T0).unwrap().query_id;
        assert!(matches!(ledger.poll(&slow, "agent", 7, T0 + 59_999).unwrap(), PollState::Pending { .. }));
        assert_eq!(ledger.poll(&slow, "agent", 7, T0 + 60_000).unwrap(), PollState::TimedOut);
        assert_eq!(
            ledger.approve(&slow, &reviewer("alice"), "too late", T0 + 60_001).unwrap_err(),
            LedgerError::NotPending("timed out")
        );
        // The retry of a timed-out statement gets the same answer.
        let retry = ledger.park(request("r2", "insert into t values (2)"), T0 + 70_000).unwrap();
        assert_eq!(retry.state, PollState::TimedOut);
        assert!(ledger.list_pending(T0 + 70_000).is_empty());
    }

    #[test]
    fn expiry_reports_timeouts_and_purges_after_retention() {
        let limits = LedgerLimits { retention: Duration::from_secs(10), ..LedgerLimits::default() };
        let mut ledger = Ledger::new(limits);
        let id = ledger.park(request("r1", "insert into t values (1)"), T0).unwrap().query_id;
        assert!(ledger.expire(T0 + 59_000).is_empty());
        let expired = ledger.expire(T0 + 60_000);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].query_id, id);
        ledger.outcome_recorded(&id, true);
        assert_eq!(ledger.len(), 1);
        assert!(ledger.expire(T0 + 69_999).is_empty());
        assert_eq!(ledger.len(), 1);
        ledger.expire(T0 + 70_000);
        assert!(ledger.is_empty());
        // Once purged, the key is free again.
        assert!(ledger.park(request("r1", "insert into t values (1)"), T0 + 80_000).unwrap().created);
    }

    #[test]
    fn a_timeout_noticed_by_any_call_is_reported_once_and_kept_until_reported() {
        let limits = LedgerLimits { retention: Duration::from_secs(10), items_max: 2, ..LedgerLimits::default() };
        let mut ledger = Ledger::new(limits);
        let polled = ledger.park(request("r1", "insert into t values (1)"), T0).unwrap().query_id;
        let listed = ledger.park(request("r2", "insert into t values (2)"), T0).unwrap().query_id;
        // The agent's poll and a reviewer's listing notice the timeouts first.
        assert_eq!(ledger.poll(&polled, "agent", 7, T0 + 60_000).unwrap(), PollState::TimedOut);
        assert!(ledger.list_pending(T0 + 60_000).is_empty());
        // A full ledger making room past the retention keeps what is not reported yet.
        assert_eq!(ledger.park(request("r3", "insert into t values (3)"), T0 + 80_000).unwrap_err(), LedgerError::Full);
        let expired: Vec<String> = ledger.expire(T0 + 80_000).into_iter().map(|e| e.query_id).collect();
        let mut both = vec![polled, listed];
        both.sort();
        assert_eq!(expired, both);
        assert!(ledger.expire(T0 + 80_001).is_empty(), "each timeout is reported once");
        // Purged only once on record.
        assert_eq!(ledger.park(request("r3", "insert into t values (3)"), T0 + 80_002).unwrap_err(), LedgerError::Full);
        for id in &both {
            ledger.outcome_recorded(id, true);
        }
        assert!(ledger.park(request("r3", "insert into t values (3)"), T0 + 80_002).unwrap().created);
    }

    #[test]
    fn a_timeout_the_recording_could_not_take_is_returned_again_and_kept_until_taken() {
        let limits = LedgerLimits { retention: Duration::from_secs(10), ..LedgerLimits::default() };
        let mut ledger = Ledger::new(limits);
        let id = ledger.park(request("r1", "insert into t values (1)"), T0).unwrap().query_id;
        let ids = |expired: Vec<Outcome>| expired.into_iter().map(|e| e.query_id).collect::<Vec<_>>();
        assert_eq!(ids(ledger.expire(T0 + 60_000)), std::slice::from_ref(&id));
        // While one caller records it, no other is handed it.
        assert!(ledger.expire(T0 + 60_001).is_empty());
        // The recording refused it (queue full, disk failing): the next call returns it again,
        // and retention does not purge it meanwhile.
        ledger.outcome_recorded(&id, false);
        assert_eq!(ids(ledger.expire(T0 + 90_000)), std::slice::from_ref(&id));
        assert_eq!(ledger.len(), 1);
        ledger.outcome_recorded(&id, false);
        assert_eq!(ids(ledger.expire(T0 + 91_000)), std::slice::from_ref(&id));
        ledger.outcome_recorded(&id, true);
        assert!(ledger.expire(T0 + 92_000).is_empty());
        assert!(ledger.is_empty());
        // A late word on a purged item changes nothing.
        ledger.outcome_recorded(&id, false);
        assert!(ledger.expire(T0 + 93_000).is_empty());
    }

    /// A void is an outcome no request of the agent's carries, recorded like a timeout: handed
    /// out once, again if the recording refused it, and the item kept until it is on record.
    /// A withdrawal is not (the agent's abort is its record), nor a void of what then ran.
    #[test]
    fn voids_are_handed_out_for_the_recording_like_timeouts() {
        let limits = LedgerLimits { retention: Duration::from_secs(10), ..LedgerLimits::default() };
        let mut ledger = Ledger::new(limits);
        let voided = ledger.park(request("r1", "insert into t values (1)"), T0).unwrap().query_id;
        let withdrawn = ledger.park(request("r2", "insert into t values (2)"), T0).unwrap().query_id;
        let mut req = one_approval("r3", "delete from t where id = 3");
        let back = ledger.park(req.clone(), T0).unwrap().query_id;
        req.key.request_id = "r4".into();
        let ran = ledger.park(req, T0).unwrap().query_id;
        for id in [&back, &ran] {
            ledger.approve(id, &reviewer("alice"), "ok", T0 + 1).unwrap();
        }
        let taken_back = ledger.take_approved(&back, "agent", 7, T0 + 2).unwrap();
        ledger.take_approved(&ran, "agent", 7, T0 + 2).unwrap();
        ledger.withdraw(&withdrawn, "agent", 7, T0 + 3).unwrap();
        // Voids the pending one; the two running ones end so only if they come back unsent.
        assert_eq!(ledger.void_session("agent", 7, None, T0 + 4), 1);
        ledger.finish(&ran, None, T0 + 5).unwrap();
        let kinds = |outcomes: Vec<Outcome>| outcomes.into_iter().map(|o| (o.query_id, o.kind)).collect::<Vec<_>>();
        assert_eq!(kinds(ledger.expire(T0 + 6)), [(voided.clone(), OutcomeKind::Voided)]);
        ledger.unrun(&back, taken_back.payload, T0 + 7).unwrap();
        assert_eq!(ledger.poll(&back, "agent", 7, T0 + 8).unwrap(), PollState::Voided);
        assert_eq!(kinds(ledger.expire(T0 + 9)), [(back.clone(), OutcomeKind::Voided)]);
        ledger.outcome_recorded(&back, true);
        ledger.outcome_recorded(&voided, false);
        // Past the retention, only the void not on record yet is kept, and handed out again.
        assert_eq!(kinds(ledger.expire(T0 + 20_000)), [(voided.clone(), OutcomeKind::Voided)]);
        assert_eq!(ledger.len(), 1);
        ledger.outcome_recorded(&voided, true);
        assert!(ledger.expire(T0 + 20_001).is_empty());
        assert!(ledger.is_empty());
        assert_eq!((OutcomeKind::Voided.event_name(), OutcomeKind::Voided.name()), ("review_voided", "voided"));
        assert_eq!((OutcomeKind::TimedOut.event_name(), OutcomeKind::TimedOut.name()), ("review_timeout", "timed_out"));
    }

    #[test]
    fn caps_per_agent_and_in_total() {
        let limits = LedgerLimits { pending_per_subject_max: 2, items_max: 3, ..LedgerLimits::default() };
        let mut ledger = Ledger::new(limits);
        ledger.park(request("a", "select 1"), T0).unwrap();
        ledger.park(request("b", "select 2"), T0).unwrap();
        assert_eq!(ledger.park(request("c", "select 3"), T0).unwrap_err(), LedgerError::TooManyPending);
        let mut other = request("d", "select 4");
        other.key.sub = "agent-2".into();
        ledger.park(other.clone(), T0).unwrap();
        other.key.request_id = "e".into();
        assert_eq!(ledger.park(other, T0).unwrap_err(), LedgerError::Full);
        let limits = LedgerLimits { stored_bytes_max: 10, ..LedgerLimits::default() };
        let mut small = Ledger::new(limits);
        assert_eq!(small.park(request("a", "select 'long enough'"), T0).unwrap_err(), LedgerError::Full);
    }

    #[test]
    fn one_agent_cannot_fill_the_ledger_for_the_others() {
        // Each item: 7 bytes of text, 7 of context, what it holds besides, a 100-byte payload
        // while it is held.
        const ITEM: usize = 7 + 7 + HELD + 100;
        let limits = LedgerLimits { stored_bytes_per_subject_max: 2 * ITEM, ..LedgerLimits::default() };
        let mut ledger = Ledger::new(limits);
        let big = |id: &str| ParkRequest { payload_bytes: 100, ..request(id, "select1") };
        ledger.park(big("a"), T0).unwrap();
        let denied = ledger.park(big("b"), T0).unwrap().query_id;
        assert_eq!(ledger.park(big("c"), T0).unwrap_err(), LedgerError::SubjectFull);
        // Another agent still parks.
        let mut other = big("c");
        other.key.sub = "agent-2".into();
        ledger.park(other, T0).unwrap();
        // A denial frees the agent's payload bytes (100, less the reason's 2); its text stays
        // until purged.
        ledger.deny(&denied, &reviewer("alice"), "no", T0 + 1).unwrap();
        let fits = ParkRequest { payload_bytes: 100 - 2 - 14 - HELD, ..request("c", "select1") };
        assert_eq!(
            ledger.park(ParkRequest { payload_bytes: fits.payload_bytes + 1, ..fits.clone() }, T0 + 2).unwrap_err(),
            LedgerError::SubjectFull
        );
        ledger.park(fits, T0 + 2).unwrap();
    }

    /// Parking and withdrawing over and over, one agent fills at most half the ledger's items
    /// (decided ones stay for the retention); the others still park, and once its items are
    /// past the retention it parks again.
    #[test]
    fn one_agent_cannot_fill_the_ledgers_items_by_withdrawing() {
        let limits = LedgerLimits { items_max: 8, pending_per_subject_max: 2, ..LedgerLimits::default() };
        let mut ledger = Ledger::new(limits);
        for n in 0..4 {
            let id = ledger.park(request(&format!("r{n}"), "insert into t values (1)"), T0 + n).unwrap().query_id;
            ledger.withdraw(&id, "agent", 7, T0 + n).unwrap();
        }
        assert_eq!(
            ledger.park(request("r4", "insert into t values (1)"), T0 + 5).unwrap_err(),
            LedgerError::SubjectFull
        );
        let mut other = request("r4", "insert into t values (1)");
        other.key.sub = "agent-2".into();
        ledger.park(other, T0 + 5).unwrap();
        let past_retention = T0 + 3 + 15 * 60 * 1000;
        assert!(ledger.park(request("r4", "insert into t values (1)"), past_retention).unwrap().created);
    }

    #[test]
    fn payloads_count_until_the_statement_runs_or_never_will() {
        // Each item: 7 bytes of text, 7 of context, what it holds besides, a 100-byte payload
        // while it is held; and the reviewers' names and reasons ("no", "alice" "ok", "bob"
        // "ok": 14 bytes).
        const SMALL: usize = 7 + 7 + HELD;
        const ITEM: usize = SMALL + 100;
        const REVIEWS: usize = 2 + 7 + 5;
        let limits = LedgerLimits { stored_bytes_max: 2 * ITEM + 2 * SMALL + REVIEWS, ..LedgerLimits::default() };
        let mut ledger = Ledger::new(limits);
        let big = |id: &str| ParkRequest { payload_bytes: 100, ..request(id, "select1") };
        let denied = ledger.park(big("a"), T0).unwrap().query_id;
        let approved = ledger.park(big("b"), T0).unwrap().query_id;
        assert_eq!(ledger.park(big("c"), T0).unwrap_err(), LedgerError::Full, "payloads must count");
        // A denied statement never runs: its payload goes, and makes room.
        ledger.deny(&denied, &reviewer("alice"), "no", T0 + 1).unwrap();
        let timed_out = ledger.park(big("c"), T0 + 2).unwrap().query_id;
        assert_eq!(ledger.park(big("d"), T0 + 2).unwrap_err(), LedgerError::Full);
        // So does a timed-out one's.
        ledger.approve(&approved, &reviewer("alice"), "ok", T0 + 3).unwrap();
        ledger.approve(&approved, &reviewer("bob"), "ok", T0 + 3).unwrap();
        assert_eq!(ledger.poll(&timed_out, "agent", 7, T0 + 2 + 60_000).unwrap(), PollState::TimedOut);
        ledger.park(big("d"), T0 + 2 + 60_000).unwrap();
        // And a run one's, once handed over to run.
        assert_eq!(ledger.stored_bytes(), 2 * SMALL + 2 * ITEM + REVIEWS);
        // (Approved at T0 + 3, its approval lapses at T0 + 60_003.)
        assert_eq!(ledger.take_approved(&approved, "agent", 7, T0 + 60_002).unwrap().payload, "body");
        assert_eq!(ledger.stored_bytes(), 3 * SMALL + ITEM + REVIEWS);
        // Handed back unsent, it is approved again and counts again, and runs once more only.
        ledger.unrun(&approved, "body", T0 + 60_002).unwrap();
        assert_eq!(ledger.poll(&approved, "agent", 7, T0 + 60_002).unwrap(), PollState::Approved);
        assert_eq!(ledger.stored_bytes(), 2 * SMALL + 2 * ITEM + REVIEWS);
        assert_eq!(ledger.take_approved(&approved, "agent", 7, T0 + 60_002).unwrap().payload, "body");
        assert!(ledger.take_approved(&approved, "agent", 7, T0 + 60_002).is_err());
        assert!(ledger.unrun(&denied, "body", T0 + 60_002).is_err(), "only a running statement is handed back");
    }

    #[test]
    fn list_pending_shows_what_reviewers_need() {
        let mut ledger = Ledger::new(LedgerLimits::default());
        let settings = BTreeMap::from([("role".to_owned(), "ANALYST".to_owned()), ("database".into(), "PROD".into())]);
        let first = ParkRequest {
            bindings: Some(r#"{"1":{"type":"FIXED","value":"1"}}"#.into()),
            settings: settings.clone(),
            ..request("r1", "insert into t values (?)")
        };
        let first = ledger.park(first, T0).unwrap().query_id;
        // What is shown is held, and counts against the store's bound.
        let shown = r#"{"1":{"type":"FIXED","value":"1"}}"#.len() + "roleANALYSTdatabasePROD".len();
        let held = HELD + 2; // a two-byte requestId, held twice
        assert_eq!(ledger.stored_bytes(), "insert into t values (?)".len() + "trace-1".len() + shown + held + 4);
        ledger.park(request("r2", "insert into t values (2)"), T0 + 1_000).unwrap();
        ledger.approve(&first, &reviewer("alice"), "ok", T0 + 2_000).unwrap();
        let pending = ledger.list_pending(T0 + 3_000);
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].query_id, first);
        assert_eq!(pending[0].age_ms, 3_000);
        assert_eq!(pending[0].agent_context.as_deref(), Some("trace-1"));
        assert_eq!(pending[0].bindings.as_deref(), Some(r#"{"1":{"type":"FIXED","value":"1"}}"#));
        assert_eq!(pending[0].settings, settings);
        assert_eq!(pending[0].approvals.len(), 1);
        assert_eq!(pending[1].statement_text, "insert into t values (2)");
        assert_ne!(statement_hash("a", Some("b")), statement_hash("ab", None));
        assert_ne!(statement_hash("a", None), statement_hash("a", Some("")));
    }

    #[test]
    fn an_approval_not_taken_in_time_lapses_and_is_reported() {
        let limits = LedgerLimits { retention: Duration::from_secs(10), ..LedgerLimits::default() };
        let mut ledger = Ledger::new(limits);
        let req = one_approval("r1", "delete from t where id = 1");
        let id = ledger.park(req, T0).unwrap().query_id;
        ledger.approve(&id, &reviewer("alice"), "ok", T0 + 59_000).unwrap();
        // Past the retention, an approved item is not purged: it lapses by the review's timeout,
        // counted from the approval.
        assert!(ledger.expire(T0 + 59_000 + 30_000).is_empty());
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger.poll(&id, "agent", 7, T0 + 59_000 + 59_999).unwrap(), PollState::Approved);
        let expired = ledger.expire(T0 + 59_000 + 60_000);
        assert_eq!(expired.iter().map(|e| e.query_id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
        assert_eq!(
            ledger.take_approved(&id, "agent", 7, T0 + 59_000 + 60_001).unwrap_err(),
            LedgerError::NotApproved("timed out")
        );
        assert_eq!(ledger.poll(&id, "agent", 7, T0 + 59_000 + 60_001).unwrap(), PollState::TimedOut);
        ledger.outcome_recorded(&id, true);
        ledger.expire(T0 + 59_000 + 70_000);
        assert!(ledger.is_empty());
    }

    #[test]
    fn a_reviewer_takes_an_approval_back_until_it_runs() {
        let mut ledger = Ledger::new(LedgerLimits::default());
        let mut req = one_approval("r1", "delete from t where id = 1");
        let id = ledger.park(req.clone(), T0).unwrap().query_id;
        ledger.approve(&id, &reviewer("alice"), "ok", T0 + 1).unwrap();
        let denied = ledger.deny(&id, &reviewer("bob"), "wrong table", T0 + 2).unwrap();
        assert_eq!(denied, PollState::Denied { reason: "wrong table".into() });
        assert_eq!(ledger.take_approved(&id, "agent", 7, T0 + 3).unwrap_err(), LedgerError::NotApproved("denied"));
        // Once taken to run, it is too late.
        req.key.request_id = "r2".into();
        let id = ledger.park(req, T0).unwrap().query_id;
        ledger.approve(&id, &reviewer("alice"), "ok", T0 + 1).unwrap();
        ledger.take_approved(&id, "agent", 7, T0 + 2).unwrap();
        assert_eq!(ledger.deny(&id, &reviewer("bob"), "late", T0 + 3).unwrap_err(), LedgerError::NotPending("running"));
    }

    #[test]
    fn the_agent_withdraws_what_has_not_run() {
        let mut ledger = Ledger::new(LedgerLimits::default());
        let mut req = one_approval("r1", "delete from t where id = 1");
        let pending = ledger.park(req.clone(), T0).unwrap().query_id;
        // Only its agent and session.
        assert_eq!(ledger.withdraw(&pending, "other", 7, T0 + 1).unwrap_err(), LedgerError::NotFound);
        assert_eq!(ledger.withdraw(&pending, "agent", 8, T0 + 1).unwrap_err(), LedgerError::NotFound);
        assert_eq!(ledger.withdraw(&pending, "agent", 7, T0 + 1).unwrap(), PollState::Withdrawn);
        assert_eq!(
            ledger.approve(&pending, &reviewer("alice"), "ok", T0 + 2).unwrap_err(),
            LedgerError::NotPending("withdrawn")
        );
        assert!(ledger.list_pending(T0 + 2).is_empty());
        // Approved, by the driver's requestId: it never runs, and frees the agent's slot.
        req.key.request_id = "r2".into();
        let approved = ledger.park(req.clone(), T0).unwrap().query_id;
        ledger.approve(&approved, &reviewer("alice"), "ok", T0 + 1).unwrap();
        assert_eq!(ledger.withdraw_request(&req.key, T0 + 2), Some((approved.clone(), PollState::Withdrawn)));
        assert_eq!(
            ledger.take_approved(&approved, "agent", 7, T0 + 3).unwrap_err(),
            LedgerError::NotApproved("withdrawn")
        );
        assert_eq!(ledger.poll(&approved, "agent", 7, T0 + 3).unwrap(), PollState::Withdrawn);
        let mut other_session = req.key.clone();
        other_session.session_id = 8;
        assert_eq!(ledger.withdraw_request(&other_session, T0 + 3), None);
        // Running: too late, the state says so.
        req.key.request_id = "r3".into();
        let running = ledger.park(req, T0).unwrap().query_id;
        ledger.approve(&running, &reviewer("alice"), "ok", T0 + 1).unwrap();
        ledger.take_approved(&running, "agent", 7, T0 + 2).unwrap();
        assert_eq!(ledger.withdraw(&running, "agent", 7, T0 + 3).unwrap(), PollState::Running);
    }

    #[test]
    fn what_the_agent_sends_counts_and_long_request_ids_are_refused() {
        let long = request(&"x".repeat(REQUEST_ID_BYTES_MAX + 1), "select 1");
        let mut ledger = Ledger::new(LedgerLimits::default());
        assert_eq!(ledger.park(long, T0).unwrap_err(), LedgerError::BadRequestId);
        let longest = request(&"x".repeat(REQUEST_ID_BYTES_MAX), "select 1");
        let weight = 2 * ("agent".len() + REQUEST_ID_BYTES_MAX) + "analysts".len() + "writes need review".len();
        let fits = "select 1".len() + "trace-1".len() + 4 + weight;
        let mut ledger = Ledger::new(LedgerLimits { stored_bytes_max: fits - 1, ..LedgerLimits::default() });
        assert_eq!(ledger.park(longest.clone(), T0).unwrap_err(), LedgerError::Full);
        let mut ledger = Ledger::new(LedgerLimits { stored_bytes_max: fits, ..LedgerLimits::default() });
        ledger.park(longest, T0).unwrap();
    }

    #[test]
    fn a_change_of_the_session_voids_what_it_parked() {
        let mut ledger = Ledger::new(LedgerLimits::default());
        let mut req = one_approval("r1", "delete from t where id = $id");
        let approved = ledger.park(req.clone(), T0).unwrap().query_id;
        ledger.approve(&approved, &reviewer("alice"), "ok", T0 + 1).unwrap();
        req.key.request_id = "r2".into();
        let pending = ledger.park(req.clone(), T0).unwrap().query_id;
        req.key.request_id = "r3".into();
        req.key.session_id = 8;
        let other_session = ledger.park(req, T0).unwrap().query_id;
        // Another agent's session of the same number is not this one.
        assert_eq!(ledger.void_session("agent-2", 7, None, T0 + 2), 0);
        assert_eq!(ledger.void_session("agent", 7, None, T0 + 2), 2);
        assert_eq!(
            ledger.take_approved(&approved, "agent", 7, T0 + 3).unwrap_err(),
            LedgerError::NotApproved("voided")
        );
        assert_eq!(ledger.poll(&pending, "agent", 7, T0 + 3).unwrap(), PollState::Voided);
        assert!(matches!(ledger.poll(&other_session, "agent", 8, T0 + 3).unwrap(), PollState::Pending { .. }));
        assert_eq!(ledger.list_pending(T0 + 3).len(), 1);
        assert_eq!(ledger.void_session("agent", 7, None, T0 + 4), 0, "voided once");
    }

    /// Withdrawn or voided while it was out to run, a statement handed back unsent ends so: it
    /// is not approved again. Its own run does not void it; a run that happened stays finished.
    #[test]
    fn what_ends_while_running_ends_for_good_if_it_comes_back() {
        let mut ledger = Ledger::new(LedgerLimits::default());
        let mut req = one_approval("r1", "delete from t where id = 1");
        for (n, end) in ["withdraw", "void", "void itself"].into_iter().enumerate() {
            req.key.request_id = format!("r{n}");
            let id = ledger.park(req.clone(), T0).unwrap().query_id;
            ledger.approve(&id, &reviewer("alice"), "ok", T0 + 1).unwrap();
            let taken = ledger.take_approved(&id, "agent", 7, T0 + 2).unwrap();
            match end {
                "withdraw" => assert_eq!(ledger.withdraw(&id, "agent", 7, T0 + 3).unwrap(), PollState::Running),
                "void" => assert_eq!(ledger.void_session("agent", 7, None, T0 + 3), 0),
                _ => assert_eq!(ledger.void_session("agent", 7, Some(&id), T0 + 3), 0),
            }
            ledger.unrun(&id, taken.payload, T0 + 3).unwrap();
            let expected = match end {
                "withdraw" => PollState::Withdrawn,
                "void" => PollState::Voided,
                _ => PollState::Approved,
            };
            assert_eq!(ledger.poll(&id, "agent", 7, T0 + 4).unwrap(), expected, "{end}");
        }
        // One that ran is finished, whatever came meanwhile.
        req.key.request_id = "ran".into();
        let id = ledger.park(req, T0).unwrap().query_id;
        ledger.approve(&id, &reviewer("alice"), "ok", T0 + 1).unwrap();
        ledger.take_approved(&id, "agent", 7, T0 + 2).unwrap();
        ledger.withdraw(&id, "agent", 7, T0 + 3).unwrap();
        ledger.finish(&id, Some("01-up".into()), T0 + 4).unwrap();
        assert_eq!(
            ledger.poll(&id, "agent", 7, T0 + 5).unwrap(),
            PollState::Finished { upstream_query_id: Some("01-up".into()) }
        );
    }

    /// An approval lapses a timeout after it was given, however often the statement is taken
    /// to run and handed back meanwhile.
    #[test]
    fn hand_backs_do_not_extend_an_approval() {
        let mut ledger = Ledger::new(LedgerLimits::default());
        let req = one_approval("r1", "delete from t where id = 1");
        let id = ledger.park(req, T0).unwrap().query_id;
        ledger.approve(&id, &reviewer("alice"), "ok", T0 + 1_000).unwrap();
        let taken = ledger.take_approved(&id, "agent", 7, T0 + 50_000).unwrap();
        ledger.unrun(&id, taken.payload, T0 + 50_000).unwrap();
        assert_eq!(ledger.poll(&id, "agent", 7, T0 + 60_999).unwrap(), PollState::Approved);
        assert_eq!(ledger.poll(&id, "agent", 7, T0 + 61_000).unwrap(), PollState::TimedOut);
    }
}
