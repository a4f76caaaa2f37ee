//! Statement policy: classification of SQL, the rules that allow, deny or send it for review,
//! the approvals ledger, and the check of a query request's session parameters. Pure, except
//! [`worker`], which runs classification on its own threads; the proxy does all network I/O.
//!
//! # How the proxy uses it
//!
//! ```text
//! query-request ─▶ worker::ClassifierPool::classify(sqlText)        (off the core, bounded queue)
//!              ─▶ Policy::decide_in(&Subject, &Namespace, &Classified) ─▶ Verdict
//!   deny   ─▶ Snowflake-shaped error (HTTP 200, success:false) with Verdict::agent_message(),
//!             recorded with Verdict::decided_by
//!   allow  ─▶ parameters::plan_query_parameters(parameters, classified.statement_count())
//!             (pins MULTI_STATEMENT_COUNT, refuses sensitive parameters) ─▶ upstream,
//!             results masked with every Verdict::masking_profiles entry
//!   review ─▶ approvals::Ledger::park(ParkRequest { key: (sub, session, requestId), … })
//!             ─▶ code 333333 (333334 for asyncExec) with getResultUrl = /queries/<query_id>/result
//!             polls ─▶ Ledger::poll; Approved ─▶ Ledger::take_approved ─▶ run ─▶ Ledger::finish
//!             admin API ─▶ Ledger::list_pending, Ledger::approve, Ledger::deny
//!             a timer ─▶ Ledger::expire(now) (timeouts, purge)
//! ```
//!
//! Classification ([`classify`]) splits the text into top-level statements with sqlparser's
//! Snowflake tokenizer (see [`lexer`] for what is refused as ambiguous), then reads each: its
//! [`Kind`] and every [`Action`] it performs (a kind and the object it touches, names
//! normalised as Snowflake resolves them). Limits ([`Limits`]) are checked before parsing;
//! what cannot be read is [`Kind::Unknown`], which only a rule naming `unknown` can allow.
//! `EXECUTE IMMEDIATE` of a variable is [`Kind::ExecuteImmediateDynamic`] and stored procedure
//! calls are [`Kind::Call`]: they are treated as what they can hide, and rules decide them.
//!
//! The session's current database and schema ([`Namespace`]) qualify partial names. The proxy
//! should keep it from the login answer's `sessionInfo` and each answer's
//! `finalDatabaseName` / `finalSchemaName`; without it, partial names are the worst case.
//!
//! # The `[policy]` table
//!
//! Rules are data, in the policy file (`deny_unknown_fields` throughout). Rules are tried in
//! order for each action; the first match decides. A rule matches when the subject is in one
//! of its `groups` (`"*"`: anyone), the action's kind is in `kinds` (`"*"`: every kind but
//! `unknown`), and the object filters hold: `object_types` (see [`ObjectType`]) and `objects`
//! (globs over canonical names, `.` separated, `*` within a part, `**` across parts; a pattern
//! with `://` matches external URLs). An `allow` rule with object filters covers an action
//! only if everything it touches is in scope (matched exactly, every possible reading of a
//! partial name); a `deny` or `review` rule fires if anything it touches could be in scope
//! (matched without regard to case; a name only known at run time always could). A review
//! rule that fires only for a name known at run time alone sends the action for review
//! unless a later rule (or the default) denies it.
//!
//! ```toml
//! [policy]
//! max_statements_per_request = 1            # upstream MULTI_STATEMENT_COUNT follows the count
//! max_statements_by_group = { etl = 20 }
//! default = { action = "deny", message = "Not allowed by the data access policy." }
//! limits = { text_bytes_max = 1048576, nesting_depth_max = 64 }   # optional
//!
//! [[policy.rules]]
//! name = "no destruction"
//! groups = ["*"]
//! kinds = ["drop", "truncate", "delete_all", "update_all", "create_or_replace", "undrop"]
//! action = "deny"
//! message = "Destructive statements are blocked for agents."
//!
//! [[policy.rules]]
//! name = "no exfiltration or privilege changes"
//! groups = ["*"]
//! kinds = ["copy_into_location", "get", "put", "grant", "revoke", "use_role",
//!          "use_secondary_roles", "alter_session_sensitive", "execute_immediate_dynamic",
//!          "system_function", "unknown"]
//! action = "deny"
//! message = "This statement could move data or rights out of policy."
//!
//! [[policy.rules]]
//! name = "writes to the sandbox need a DBA"
//! groups = ["agents"]
//! kinds = ["insert", "update", "delete", "merge", "call"]
//! objects = ["SANDBOX.**"]
//! action = "review"
//! approvals = 1
//! reviewer_groups = ["dba"]
//! timeout_secs = 900
//! message = "Waiting for a DBA to approve this write."
//!
//! [[policy.rules]]
//! name = "analysts read analytics, masked"
//! groups = ["analysts"]
//! kinds = ["select", "show", "describe", "explain", "use_warehouse"]
//! objects = ["ANALYTICS.**", "SNOWFLAKE_SAMPLE_DATA.**"]
//! action = "allow"
//! masking_profile = "standard"
//! ```
//!
//! Kinds, by name: `select insert update update_all delete delete_all merge create
//! create_or_replace alter drop undrop truncate grant revoke copy_into_table
//! copy_into_location get put list remove use_role use_secondary_roles use_warehouse
//! use_database use_schema alter_session alter_session_sensitive set_variable unset_variable
//! call execute_immediate execute_immediate_dynamic scripting_block system_function show
//! describe explain begin commit rollback unknown` (see [`Kind`]).

pub mod approvals;
pub mod classify;
pub mod lexer;
pub mod model;
pub mod names;
pub mod parameters;
pub mod result_scan;
pub mod rules;
pub mod worker;

pub use classify::classify;
pub use model::{Action, Classified, ClassifiedStatement, Kind, Limits, ObjectName, ObjectRef, ObjectType, Refusal};
pub use names::Namespace;
pub use rules::{
    ActionName, DecidedBy, Policy, PolicyError, PolicySpec, ReviewRequirement, RuleSpec, StatementVerdict, Subject,
    Verdict, VerdictAction,
};
