//! What classification produces: statement kinds, the objects a statement touches, and the
//! limits classification runs under. Plain data, no logic beyond naming and display.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// What a statement (or a part of it) does. The `snake_case` name is what rules list.
///
/// Some kinds exist only to be stricter than their neighbours: `delete_all` and `update_all`
/// (no `WHERE`, or a `WHERE` that names no column), `create_or_replace` (it destroys what it
/// replaces), `alter_session_sensitive` (a parameter the gateway's policy depends on) and
/// `execute_immediate_dynamic` (text the gateway cannot see). A rule naming `delete` does not
/// cover `delete_all`. `delete_all` and `update_all` catch a missing or constant `WHERE` only:
/// `WHERE id = id` names a column and is a `delete`, so a policy gates `delete` and `update`
/// too where every row matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `SELECT`, `WITH … SELECT`, `VALUES`; also every table a statement reads.
    Select,
    /// `INSERT` (single or multi-table).
    Insert,
    /// `UPDATE … WHERE` naming a column.
    Update,
    /// `UPDATE` without a `WHERE` (or with a constant one).
    UpdateAll,
    /// `DELETE … WHERE` naming a column.
    Delete,
    /// `DELETE` without a `WHERE` (or with a constant one); also `INSERT OVERWRITE`'s target.
    DeleteAll,
    /// `MERGE`.
    Merge,
    /// `CREATE` (including `IF NOT EXISTS`).
    Create,
    /// `CREATE OR REPLACE` and `CREATE OR ALTER`.
    CreateOrReplace,
    /// `ALTER` (other than `ALTER SESSION`) and `COMMENT ON`.
    Alter,
    /// `DROP`.
    Drop,
    /// `UNDROP`.
    Undrop,
    /// `TRUNCATE`.
    Truncate,
    /// `GRANT`.
    Grant,
    /// `REVOKE`.
    Revoke,
    /// `COPY INTO <table>` (loading).
    CopyIntoTable,
    /// `COPY INTO @stage` or `COPY INTO 's3://…'` (unloading: data leaves the tables).
    CopyIntoLocation,
    /// `GET` (download from a stage).
    Get,
    /// `PUT` (upload to a stage).
    Put,
    /// `LIST` / `LS` a stage.
    List,
    /// `REMOVE` / `RM` files from a stage.
    Remove,
    /// `USE ROLE`.
    UseRole,
    /// `USE SECONDARY ROLES`.
    UseSecondaryRoles,
    /// `USE WAREHOUSE`.
    UseWarehouse,
    /// `USE DATABASE` (or `USE <database>`).
    UseDatabase,
    /// `USE SCHEMA` (or `USE <database>.<schema>`).
    UseSchema,
    /// `ALTER SESSION SET|UNSET` of a parameter the policy does not depend on.
    AlterSession,
    /// `ALTER SESSION SET|UNSET` of a policy-sensitive parameter (see [`super::parameters`]).
    AlterSessionSensitive,
    /// `SET` of session variables.
    SetVariable,
    /// `UNSET` of session variables.
    UnsetVariable,
    /// `CALL` of a stored procedure, or `EXECUTE TASK`: it runs whatever the procedure holds.
    Call,
    /// `EXECUTE IMMEDIATE` of a literal or `$$` block; the inner text is classified too.
    ExecuteImmediate,
    /// `EXECUTE IMMEDIATE` of a variable or an expression: text the gateway cannot see.
    ExecuteImmediateDynamic,
    /// An anonymous Snowflake Scripting block (`BEGIN … END`, `DECLARE … BEGIN … END`).
    ScriptingBlock,
    /// A call to a `SYSTEM$` function, anywhere in a statement.
    SystemFunction,
    /// `SHOW`.
    Show,
    /// `DESCRIBE` / `DESC`.
    Describe,
    /// `EXPLAIN` (the tables named are its objects; nothing runs).
    Explain,
    /// `BEGIN [TRANSACTION]`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`.
    Commit,
    /// `ROLLBACK`.
    Rollback,
    /// Anything the classifier could not read with certainty. Denied unless a rule names it.
    Unknown,
}

impl Kind {
    /// Every kind, in declaration order (for documentation and validation).
    pub const ALL: [Kind; 42] = [
        Kind::Select,
        Kind::Insert,
        Kind::Update,
        Kind::UpdateAll,
        Kind::Delete,
        Kind::DeleteAll,
        Kind::Merge,
        Kind::Create,
        Kind::CreateOrReplace,
        Kind::Alter,
        Kind::Drop,
        Kind::Undrop,
        Kind::Truncate,
        Kind::Grant,
        Kind::Revoke,
        Kind::CopyIntoTable,
        Kind::CopyIntoLocation,
        Kind::Get,
        Kind::Put,
        Kind::List,
        Kind::Remove,
        Kind::UseRole,
        Kind::UseSecondaryRoles,
        Kind::UseWarehouse,
        Kind::UseDatabase,
        Kind::UseSchema,
        Kind::AlterSession,
        Kind::AlterSessionSensitive,
        Kind::SetVariable,
        Kind::UnsetVariable,
        Kind::Call,
        Kind::ExecuteImmediate,
        Kind::ExecuteImmediateDynamic,
        Kind::ScriptingBlock,
        Kind::SystemFunction,
        Kind::Show,
        Kind::Describe,
        Kind::Explain,
        Kind::Begin,
        Kind::Commit,
        Kind::Rollback,
        Kind::Unknown,
    ];

    /// The `snake_case` name rules use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Select => "select",
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::UpdateAll => "update_all",
            Kind::Delete => "delete",
            Kind::DeleteAll => "delete_all",
            Kind::Merge => "merge",
            Kind::Create => "create",
            Kind::CreateOrReplace => "create_or_replace",
            Kind::Alter => "alter",
            Kind::Drop => "drop",
            Kind::Undrop => "undrop",
            Kind::Truncate => "truncate",
            Kind::Grant => "grant",
            Kind::Revoke => "revoke",
            Kind::CopyIntoTable => "copy_into_table",
            Kind::CopyIntoLocation => "copy_into_location",
            Kind::Get => "get",
            Kind::Put => "put",
            Kind::List => "list",
            Kind::Remove => "remove",
            Kind::UseRole => "use_role",
            Kind::UseSecondaryRoles => "use_secondary_roles",
            Kind::UseWarehouse => "use_warehouse",
            Kind::UseDatabase => "use_database",
            Kind::UseSchema => "use_schema",
            Kind::AlterSession => "alter_session",
            Kind::AlterSessionSensitive => "alter_session_sensitive",
            Kind::SetVariable => "set_variable",
            Kind::UnsetVariable => "unset_variable",
            Kind::Call => "call",
            Kind::ExecuteImmediate => "execute_immediate",
            Kind::ExecuteImmediateDynamic => "execute_immediate_dynamic",
            Kind::ScriptingBlock => "scripting_block",
            Kind::SystemFunction => "system_function",
            Kind::Show => "show",
            Kind::Describe => "describe",
            Kind::Explain => "explain",
            Kind::Begin => "begin",
            Kind::Commit => "commit",
            Kind::Rollback => "rollback",
            Kind::Unknown => "unknown",
        }
    }

    /// The kind named `name` (exact `snake_case`).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of an object a statement touches. The `snake_case` name is what rules list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectType {
    /// Tables of every flavour (external, dynamic, hybrid, iceberg, event, temporary).
    Table,
    /// Views, secure and materialized views.
    View,
    /// A schema.
    Schema,
    /// A database.
    Database,
    /// A warehouse.
    Warehouse,
    /// An account role (or application role).
    Role,
    /// A database role.
    DatabaseRole,
    /// A user.
    User,
    /// A named, user (`@~`) or table (`@%t`) stage.
    Stage,
    /// An external location given as a URL (`'s3://bucket/path'`).
    Location,
    /// A file format.
    FileFormat,
    /// A sequence.
    Sequence,
    /// A stream.
    Stream,
    /// A task.
    Task,
    /// A pipe.
    Pipe,
    /// A function (UDF, external function, `SYSTEM$` function).
    Function,
    /// A stored procedure.
    Procedure,
    /// An integration (storage, API, notification, security, external access, catalog).
    Integration,
    /// A share.
    Share,
    /// A tag.
    Tag,
    /// A policy (masking, row access, network, password, session, authentication...).
    Policy,
    /// A secret.
    Secret,
    /// An alert.
    Alert,
    /// The account.
    Account,
    /// A session parameter (`ALTER SESSION SET <parameter>`).
    Parameter,
    /// A session variable (`SET <variable>`).
    Variable,
    /// A previous query's result (`RESULT_SCAN`).
    QueryResult,
    /// Any other object type.
    Other,
}

impl ObjectType {
    /// Every object type, in declaration order.
    pub const ALL: [ObjectType; 28] = [
        ObjectType::Table,
        ObjectType::View,
        ObjectType::Schema,
        ObjectType::Database,
        ObjectType::Warehouse,
        ObjectType::Role,
        ObjectType::DatabaseRole,
        ObjectType::User,
        ObjectType::Stage,
        ObjectType::Location,
        ObjectType::FileFormat,
        ObjectType::Sequence,
        ObjectType::Stream,
        ObjectType::Task,
        ObjectType::Pipe,
        ObjectType::Function,
        ObjectType::Procedure,
        ObjectType::Integration,
        ObjectType::Share,
        ObjectType::Tag,
        ObjectType::Policy,
        ObjectType::Secret,
        ObjectType::Alert,
        ObjectType::Account,
        ObjectType::Parameter,
        ObjectType::Variable,
        ObjectType::QueryResult,
        ObjectType::Other,
    ];

    /// The `snake_case` name rules use.
    pub fn name(self) -> &'static str {
        match self {
            ObjectType::Table => "table",
            ObjectType::View => "view",
            ObjectType::Schema => "schema",
            ObjectType::Database => "database",
            ObjectType::Warehouse => "warehouse",
            ObjectType::Role => "role",
            ObjectType::DatabaseRole => "database_role",
            ObjectType::User => "user",
            ObjectType::Stage => "stage",
            ObjectType::Location => "location",
            ObjectType::FileFormat => "file_format",
            ObjectType::Sequence => "sequence",
            ObjectType::Stream => "stream",
            ObjectType::Task => "task",
            ObjectType::Pipe => "pipe",
            ObjectType::Function => "function",
            ObjectType::Procedure => "procedure",
            ObjectType::Integration => "integration",
            ObjectType::Share => "share",
            ObjectType::Tag => "tag",
            ObjectType::Policy => "policy",
            ObjectType::Secret => "secret",
            ObjectType::Alert => "alert",
            ObjectType::Account => "account",
            ObjectType::Parameter => "parameter",
            ObjectType::Variable => "variable",
            ObjectType::QueryResult => "query_result",
            ObjectType::Other => "other",
        }
    }

    /// The object type named `name` (exact `snake_case`).
    pub fn from_name(name: &str) -> Option<ObjectType> {
        ObjectType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// How many name parts a fully qualified name of this type has (`db.schema.table` is 3),
    /// or `None` for names that are not qualified (parameters, variables, URLs, query ids).
    pub fn qualified_parts(self) -> Option<usize> {
        match self {
            ObjectType::Database
            | ObjectType::Warehouse
            | ObjectType::Role
            | ObjectType::User
            | ObjectType::Integration
            | ObjectType::Share
            | ObjectType::Account => Some(1),
            ObjectType::Schema | ObjectType::DatabaseRole => Some(2),
            ObjectType::Table
            | ObjectType::View
            | ObjectType::Stage
            | ObjectType::FileFormat
            | ObjectType::Sequence
            | ObjectType::Stream
            | ObjectType::Task
            | ObjectType::Pipe
            | ObjectType::Function
            | ObjectType::Procedure
            | ObjectType::Tag
            | ObjectType::Policy
            | ObjectType::Secret
            | ObjectType::Alert => Some(3),
            ObjectType::Location
            | ObjectType::Parameter
            | ObjectType::Variable
            | ObjectType::QueryResult
            | ObjectType::Other => None,
        }
    }
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of an object as written in the statement, normalised the way Snowflake resolves
/// identifiers: unquoted parts upper-cased, quoted parts kept byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectName {
    /// A (possibly partial) dotted name; `db..t` is stored as `DB.PUBLIC.T`. The user stage
    /// `@~` is the single part `~`; a table stage `@%t` has a last part starting with `%`.
    Parts(Vec<String>),
    /// A flat name that is never qualified: a URL, a parameter, a variable, a query id.
    Flat(String),
    /// A name only known when the statement runs (`IDENTIFIER($v)`, `TABLE(?)`,
    /// `LAST_QUERY_ID()`): rules treat it as the worst case.
    Dynamic,
}

impl ObjectName {
    /// A dotted name from already-normalised parts.
    pub fn parts<I: IntoIterator<Item = S>, S: Into<String>>(parts: I) -> ObjectName {
        ObjectName::Parts(parts.into_iter().map(Into::into).collect())
    }
}

/// Whether `part` needs double quotes to read back as itself.
fn part_needs_quotes(part: &str) -> bool {
    let body = part.strip_prefix('%').unwrap_or(part);
    if part == "~" {
        return false;
    }
    let mut chars = body.chars();
    match chars.next() {
        Some(c) if c.is_ascii_uppercase() || c == '_' => {}
        _ => return true,
    }
    !chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '$')
}

/// Writes one name part as Snowflake would read it back: bare when it is a plain upper-case
/// identifier, otherwise double-quoted with `""` for a quote.
pub fn write_part(out: &mut String, part: &str) {
    if part_needs_quotes(part) {
        out.push('"');
        for c in part.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(part);
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectName::Parts(parts) => {
                let mut out = String::new();
                for (idx, part) in parts.iter().enumerate() {
                    if idx > 0 {
                        out.push('.');
                    }
                    write_part(&mut out, part);
                }
                f.write_str(&out)
            }
            ObjectName::Flat(name) => f.write_str(name),
            ObjectName::Dynamic => f.write_str("<dynamic>"),
        }
    }
}

impl Serialize for ObjectName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ObjectName::Dynamic => serializer.serialize_none(),
            other => serializer.collect_str(other),
        }
    }
}

/// An object a statement touches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectRef {
    /// What it is.
    pub object_type: ObjectType,
    /// Its name.
    pub name: ObjectName,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.object_type, self.name)
    }
}

/// One thing a statement does: a kind, and the object it does it to (if any). A statement
/// that reads two tables has two `select` actions; rules decide each action, and the
/// statement gets the most restrictive verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Action {
    /// What is done.
    pub kind: Kind,
    /// To what.
    pub object: Option<ObjectRef>,
}

impl Action {
    /// An action on no particular object.
    pub fn bare(kind: Kind) -> Action {
        Action { kind, object: None }
    }

    /// An action on an object.
    pub fn on(kind: Kind, object_type: ObjectType, name: ObjectName) -> Action {
        Action { kind, object: Some(ObjectRef { object_type, name }) }
    }
}

/// One top-level statement of a request, classified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassifiedStatement {
    /// Where it is in the request text, in bytes, from its first to its last token (comments
    /// and whitespace around it and the `;` excluded).
    pub byte_range: Range<usize>,
    /// What the statement is, by its leading keywords.
    pub kind: Kind,
    /// Everything it does, its own kind included (deduplicated, in order of appearance).
    pub actions: Vec<Action>,
    /// Why the statement (or a part of it) is [`Kind::Unknown`]: a fixed phrase, never input.
    pub unknown_reason: Option<&'static str>,
}

/// Why a whole request was refused before any statement was classified. These are not
/// decided by rules: they are always denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The text is longer than [`Limits::text_bytes_max`].
    #[error("the statement text is larger than the gateway accepts")]
    TooLarge,
    /// More tokens than [`Limits::tokens_max`].
    #[error("the statement text has more tokens than the gateway accepts")]
    TooManyTokens,
    /// Parentheses, brackets or braces nested deeper than [`Limits::nesting_depth_max`].
    #[error("the statement text nests deeper than the gateway accepts")]
    TooDeep,
    /// More top-level statements than [`Limits::statements_max`].
    #[error("the request holds more statements than the gateway accepts")]
    TooManyStatements,
    /// The text does not tokenize (an unterminated string, comment or quoted identifier).
    #[error("the statement text does not tokenize (unterminated string, comment or identifier)")]
    Unlexable,
    /// A character outside strings, quoted identifiers and comments that Snowflake and the
    /// gateway might read differently: NUL, non-ASCII letters or spaces, zero-width characters.
    #[error("the statement text holds a character the gateway refuses outside strings (NUL, non-ASCII, zero-width)")]
    ForbiddenCharacter,
    /// A construct Snowflake lexes differently from the tokenizer: a tagged `$tag$` string, a
    /// line comment holding a carriage return or another line separator.
    #[error("the statement text holds a construct Snowflake could read differently ($tag$ string, CR in a comment)")]
    AmbiguousLexing,
    /// Snowflake's flow operator `->>`, which runs a second statement on the first one's
    /// result: two statements the split would read as one.
    #[error("the statement text uses the flow operator ->>, which chains statements; send each statement on its own")]
    FlowOperator,
    /// No statement at all (empty, or only comments).
    #[error("the request holds no statement")]
    Empty,
}

/// A classified request: its statements, or the reason it was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Classified {
    /// The top-level statements, in order. Empty when `refusal` is set.
    pub statements: Vec<ClassifiedStatement>,
    /// Set when the request was refused before classification.
    pub refusal: Option<Refusal>,
}

impl Classified {
    /// A request refused as a whole.
    pub fn refused(refusal: Refusal) -> Classified {
        Classified { statements: Vec::new(), refusal: Some(refusal) }
    }

    /// How many top-level statements the request holds: the value the gateway pins upstream
    /// as `MULTI_STATEMENT_COUNT` (Snowflake refuses the request if its own count differs).
    pub fn statement_count(&self) -> usize {
        self.statements.len()
    }

    /// Whether any statement (or part) could not be classified.
    pub fn has_unknown(&self) -> bool {
        self.refusal.is_some() || self.statements.iter().any(|s| s.actions.iter().any(|a| a.kind == Kind::Unknown))
    }
}

/// The limits classification runs under. Every one is checked before the parser runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest statement text, in bytes (Snowflake's own limit is 1 MB).
    pub text_bytes_max: usize,
    /// Most tokens (whitespace and comments included) in one request.
    pub tokens_max: usize,
    /// Deepest nesting of `(`, `[` and `{`.
    pub nesting_depth_max: usize,
    /// Most top-level statements in one request (the policy's per-subject limit is lower).
    pub statements_max: usize,
    /// Deepest nesting of `EXECUTE IMMEDIATE` inside `EXECUTE IMMEDIATE` (or blocks), and of
    /// the statements tasks, alerts and pipes run inside one another.
    pub execute_immediate_depth_max: usize,
    /// sqlparser's recursion limit.
    pub parser_recursion_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            text_bytes_max: 1 << 20,
            tokens_max: 200_000,
            nesting_depth_max: 64,
            statements_max: 100,
            execute_immediate_depth_max: 3,
            parser_recursion_max: 256,
        }
    }
}
