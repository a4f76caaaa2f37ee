//! Masking of sensitive values in Snowflake results, in place on the result bytes. Pure: no
//! I/O, no gzip (the proxy inflates first), no allocation per row (callers lend a [`Scratch`]).
//!
//! # Using it (the proxy's side)
//! ```text
//! let masker = Masker::new(&policy.masking)?;            // once per policy load
//! let profile = masker.profile("agents").unwrap();       // per identity group
//! let mut scratch = Scratch::default();                  // one per core, reused
//!
//! // Any result body, after inflating gzip (chunks may be raw gzip: chunk::detect says so):
//! let masked = masker.mask(profile, &mut body, plan.as_ref(), &mut scratch)?;
//! // body is masked, same length. masked.report counts values masked by rule kind.
//! // masked.format says what the bytes were (dispatch is on the bytes, not on what the
//! // client asked for: a client switching result formats cannot switch masking off).
//! // masked.plan is the result's ColumnPlan: carry plan.encode() (sealed) in the rewritten
//! // chunk URLs and SQL API handles; chunks and partitions have no row type and need it.
//! // masked.envelope (query answers) lists chunks[] with their url byte ranges, qrmk and
//! // chunkHeaders (decoded, for fetching chunks upstream) and their member ranges:
//! let client_body = rebuild_envelope(&body, &envelope, &gateway_urls, Some(&own_headers))?;
//!                                                                         // qrmk/chunkHeaders gone
//! ```
//! [`Masker::mask`] accepts: query answers and result polls (`data.rowtype` with
//! `data.rowset` or `data.rowsetBase64`), SQL API results (`resultSetMetaData.rowType` and
//! `data`), SQL API partitions (`{"data":[...]}`, plan required), JSON chunks (rows without
//! enclosing brackets, plan required) and Arrow chunks (IPC streams; the plan is advised, else
//! one is made from the schema with unknown tables). JSON objects without rows (errors,
//! progress answers) pass untouched but for their `message`, masked as text (an error may quote
//! the value that failed; under a profile with column rules its quoted parts are masked too). Gzip is refused ([`MaskError::Compressed`]); anything
//! else unrecognised is refused, never passed on.
//!
//! # The policy file
//! ```toml
//! [masking.profiles.agents.detectors]      # every detector is on unless switched off
//! mask = { style = "full" }                # the mask for detected text (default full)
//! card = { mask = { style = "keep_last", keep = 4 } }
//! jwt = false                              # card email ssn iban aws_access_key gcp_api_key
//!                                          # github_token slack_token jwt pem_private_key
//! [masking.profiles.agents.dictionary]
//! words = ["Project Falcon", "ACME-7731"]  # 3 to 256 bytes each
//! case_insensitive = false                 # true forces an automaton instead of Teddy
//! mask = { style = "token", token = "[SECRET]" }
//!
//! # Column rules name the answer's columns, not the data's flow: `SELECT ssn AS x` or
//! # `UPPER(ssn)` is a column no rule names (detectors still scan it; ARCHITECTURE.md).
//! [[masking.profiles.agents.columns]]      # first match wins; masks every value
//! name = "*SSN*"                           # glob over the column name, case-insensitive
//! table = "*"                              # glob over the table (default "*"); with dots
//!                                          # over schema.table or database.schema.table
//! mask = { style = "null" }
//!
//! [[masking.profiles.agents.columns]]
//! name = "AMOUNT"
//! table = "ORDERS"
//! mask = { style = "type_valid" }
//! ```
//! Styles: `full` (`*` per byte), `keep_last` (`keep` trailing characters in clear, at most
//! half of the value's or match's characters, so it always masks at least half), `token`
//! (1 to 64 printable ASCII bytes, no `"` or `\`), `type_valid`, `null`.
//!
//! # What a mask writes
//! Values are what they decode to: JSON escapes are decoded before detection (`\u0040` is an
//! `@`), and a mask never splits an escape. Lengths are in bytes of the decoded UTF-8 text.
//! A value holding a percent escape (`%` and two hex digits) or a JSON backslash escape (`\n`,
//! `\u0040`: a VARIANT's text, a document kept in a string) is searched by the detectors and
//! the dictionary in its decoded form too (`q%3Dcard%3D4111…`, `ada%40example.com`,
//! `Jos%C3%A9`, `paid\n4111…`), and what they find there masks the bytes it came from,
//! escapes whole; decoded again while escapes remain, up to three times (a URL in another's
//! parameter is encoded twice). Form encoding writes a space as `+`: the value and each decoded form are read with
//! `+` as a space too (but a `+` first in them) by the detectors whose matches may hold a space
//! (card, SSN, IBAN, PEM key) and by the dictionary when a word holds one
//! (`card=4111+1111+1111+1111`, `name=Grace+Hopper`); the e-mail detector reads `+` as written
//! (`ada+tag@example.com`).
//! - Text columns (TEXT, VARIANT and kin, and unknown types): a column rule masks the whole
//!   value; detectors and the dictionary mask the text they match. `full` writes one `*` per
//!   byte, `keep_last` keeps the last characters, `token` writes the token: exactly in JSON
//!   (the value shrinks), padded with spaces in Arrow (text there cannot shrink in place); a
//!   token longer than what it replaces falls back to `full`. `type_valid` is `full` for text.
//!   VARIANT/OBJECT/ARRAY text must still parse, so a column rule there writes a type-valid
//!   value whatever its style: the same kind of JSON value, empty (`{}`, `[]`, else `null`, or
//!   `0` under four bytes); so does a detector's or word's mask that breaks it.
//! - Other columns: every style but `null` writes a type-valid value. JSON: digits become `0`
//!   keeping the shape (`-12.50` → `000.00`, epoch seconds stay epoch-shaped; a TIMESTAMP_TZ
//!   keeps its offset), BOOLEAN becomes `"0"` (false for Python, Go, Java and JavaScript
//!   readers; JSON leaves no room for `"false"` in `"true"`), BINARY becomes `0`s. Arrow:
//!   values become zero (0, 0.0, the epoch; a TIMESTAMP_TZ struct keeps its `timezone`),
//!   booleans false, binary zero bytes.
//! - `null` writes NULL where the column is nullable: JSON `null` padded with spaces (a value
//!   under two characters has no room: it gets the type-valid mask), Arrow a cleared validity
//!   bit with the node's null count fixed (without a validity buffer: the type-valid mask).
//!   Content matches with the `null` style null the whole value.
//! - Detectors and the dictionary scan text columns; the card detector also checks FIXED
//!   scale-0 numbers (a 13 to 19 digit Luhn-valid number is masked whole, type-valid).
//!
//! The masked body always has the length of the original: a JSON string that shrinks moves
//! its closing quote left and pads with spaces (JSON allows whitespace between tokens);
//! `rowsetBase64` is decoded, masked and re-encoded to the same length; Arrow buffers are
//! overwritten where they lie. Chunk `uncompressedSize` figures stay exact.
//!
//! # How it is fast
//! JSON rows are found on bit maps of the body's quotes and backslashes (`scan`, 64 bytes to
//! a word, over a 16 KiB window): a row of the usual shape (strings without escapes, and
//! `null`s; single commas) has its cells' quotes taken off the map one after another, then
//! each column gets only the work decided for it once per walk: nothing, a column rule, the
//! card check of a number, or a text scan. Other rows are walked byte by byte (eight at a
//! time, SWAR); both ways give the same bytes (tested differentially). A text value of up to
//! 64 bytes is read as one window whose byte classes (`simd`, sixteen bytes at a time) say
//! which detectors can fire; a card that is the whole value and an e-mail address around the
//! value's only `@` are found with bit scans and masked straight away. Arrow text values go
//! through the same window. The hot loops are also compiled for x86-64-v3 CPUs and chosen at
//! run time. Dictionary words and the detectors' literal anchors (`AKIA`, `eyJ`, `-----BEGIN`...) share
//! one searcher run across the whole rows region: the packed Teddy searcher when the set fits
//! it (see [`Masker::searcher_kind`]), else an Aho-Corasick DFA. Search is leftmost-longest and
//! restarts one byte after each match, with shorter patterns at the same place derived from a
//! prefix table, so overlapping words and anchors are all found.
//!
//! # Failing closed
//! Malformed or unexpected input is an error (upstream's fault, see [`MaskError::fault`]):
//! rows whose width differs from the row type, duplicate envelope keys, unknown SQL API
//! formats, compressed or dictionary-encoded Arrow, unions, views, big-endian streams. A body
//! that failed may be partly masked and must not be forwarded.

mod arrow;
pub mod chunk;
pub mod detect;
mod json;
pub mod plan;
mod rules;
pub(crate) mod scan;
mod simd;
pub mod spec;
mod text;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{OnceLock, PoisonError, RwLock};

pub use detect::DetectorKind;
pub use json::{rebuild_envelope, statement_handles};
pub use plan::{Column, ColumnPlan, PlannedColumn, ValueType};
pub use rules::{MaskConfigError, SearcherKind};
pub use spec::MaskingSpec;

/// What an answer is for, as far as table-scoped column rules care. A query's column whose
/// row type names no table is computed, or read through something that hides its table
/// (`RESULT_SCAN`, a set operation, a table function): no one can tell it does not come from
/// a rule's table, so the rule masks it. The columns of a `SHOW` or `DESCRIBE` answer come
/// from no table at all (their names are the command's: `name`, `comment`...), and a
/// table-scoped rule leaves them alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnswerOf {
    /// Anything but metadata commands: the default.
    #[default]
    Query,
    /// Only `SHOW` and `DESCRIBE` statements.
    Metadata,
}

use json::MaskCtx;
use rules::{Profile, RuleKind};

/// Whose fault a masking error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The upstream answer is malformed or not understood.
    Upstream,
    /// The caller passed the wrong thing (compressed bytes, no plan, a stale plan).
    Caller,
    /// The agent asked for what masking cannot cover (a stage's files), and the policy let it.
    Agent,
}

/// Why a body was not masked. The body may be partly masked: never forward it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    /// The body is gzip: the caller must inflate it first.
    #[error("the body is gzip-compressed: inflate it before masking")]
    Compressed,
    /// The body is not a result this masker understands.
    #[error("the body is not a result this masker understands ({what}); refused")]
    Unrecognized {
        /// What was found.
        what: &'static str,
    },
    /// Malformed JSON.
    #[error("malformed JSON result at byte {offset}: {what}")]
    Json {
        /// Where.
        offset: usize,
        /// What was expected or found.
        what: &'static str,
    },
    /// A malformed or unsupported Arrow IPC stream.
    #[error("malformed or unsupported Arrow stream at byte {offset}: {what}")]
    Arrow {
        /// Where.
        offset: usize,
        /// What was found.
        what: &'static str,
    },
    /// Rows and row type disagree.
    #[error("rows have {found} values where the row type has {expected} columns")]
    ColumnCount {
        /// Columns in the row type or plan.
        expected: usize,
        /// Values found.
        found: usize,
    },
    /// The body has no row type and no plan was given.
    #[error("the body has no row type: the caller must pass the result's column plan")]
    ColumnsRequired,
    /// The plan was made for another spec (before a reload) or another profile.
    #[error("the column plan was made for another masking spec or profile")]
    PlanMismatch,
    /// The bytes are not an encoded plan.
    #[error("the column plan is not one this masker encoded")]
    BadPlan,
    /// A size, count or depth is over its limit.
    #[error("{what} is over its limit")]
    Limit {
        /// What is counted.
        what: &'static str,
    },
    /// The answer hands its client a stage's credentials, keys or presigned URLs (`GET`,
    /// `PUT`): the files would move between the client and the cloud, unmasked. Refused.
    #[error("the answer gives direct access to a stage, whose files would bypass masking")]
    StageAccess,
    /// `rebuild_envelope` was given a different number of URLs than there are chunks.
    #[error("the number of chunk URLs does not match the answer's chunks")]
    ChunkUrlCount,
    /// `rebuild_envelope` was given a body other than the one its envelope was read from.
    #[error("the body is not the one the envelope was read from")]
    EnvelopeMismatch,
}

impl MaskError {
    pub(crate) fn upstream_json(offset: usize, what: &'static str) -> MaskError {
        MaskError::Json { offset, what }
    }

    /// Whose fault the error is.
    pub fn fault(&self) -> Fault {
        match self {
            MaskError::Compressed
            | MaskError::ColumnsRequired
            | MaskError::PlanMismatch
            | MaskError::BadPlan
            | MaskError::ChunkUrlCount
            | MaskError::EnvelopeMismatch => Fault::Caller,
            MaskError::Unrecognized { .. }
            | MaskError::Json { .. }
            | MaskError::Arrow { .. }
            | MaskError::ColumnCount { .. }
            | MaskError::Limit { .. } => Fault::Upstream,
            MaskError::StageAccess => Fault::Agent,
        }
    }
}

/// What one call masked, for the recording and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskReport {
    /// Rows walked.
    pub rows: u64,
    /// Values changed by any rule.
    pub values_masked: u64,
    /// Values masked by a column rule.
    pub by_column_rule: u64,
    /// Values in which the dictionary masked something.
    pub by_dictionary: u64,
    /// Values in which each detector masked something, by [`DetectorKind::index`].
    pub by_detector: [u64; DetectorKind::COUNT],
}

impl MaskReport {
    /// Counts one value masked by `kinds`. One kind (the usual case) costs one branch on it;
    /// several go through [`MaskReport::count_many`].
    #[inline(always)]
    pub(crate) fn count(&mut self, kinds: u32) {
        if !kinds.is_power_of_two() {
            self.count_many(kinds, 1);
            return;
        }
        self.values_masked += 1;
        if kinds == RuleKind::Column.bit() {
            self.by_column_rule += 1;
        } else if kinds == RuleKind::Dictionary.bit() {
            self.by_dictionary += 1;
        } else {
            self.by_detector[(kinds.trailing_zeros() - RuleKind::FIRST_DETECTOR_BIT) as usize] += 1;
        }
    }

    #[inline]
    pub(crate) fn count_many(&mut self, kinds: u32, values: u64) {
        if kinds == 0 || values == 0 {
            return;
        }
        self.values_masked += values;
        if kinds & RuleKind::Column.bit() != 0 {
            self.by_column_rule += values;
        }
        if kinds & RuleKind::Dictionary.bit() != 0 {
            self.by_dictionary += values;
        }
        let mut detectors = kinds >> RuleKind::FIRST_DETECTOR_BIT;
        while detectors != 0 {
            self.by_detector[detectors.trailing_zeros() as usize] += values;
            detectors &= detectors - 1;
        }
    }

    /// The counts by rule kind, named for metrics: `column`, `dictionary`, `detector.card`...
    pub fn by_kind(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        const NAMES: [&str; DetectorKind::COUNT] = [
            "detector.card",
            "detector.email",
            "detector.ssn",
            "detector.iban",
            "detector.aws_access_key",
            "detector.gcp_api_key",
            "detector.github_token",
            "detector.slack_token",
            "detector.jwt",
            "detector.pem_private_key",
        ];
        [("column", self.by_column_rule), ("dictionary", self.by_dictionary)]
            .into_iter()
            .chain(NAMES.iter().zip(self.by_detector).map(|(name, n)| (*name, n)))
    }

    /// Adds another report's counts (a result's chunks into its total).
    pub fn add(&mut self, other: &MaskReport) {
        self.rows += other.rows;
        self.values_masked += other.values_masked;
        self.by_column_rule += other.by_column_rule;
        self.by_dictionary += other.by_dictionary;
        for (mine, theirs) in self.by_detector.iter_mut().zip(other.by_detector) {
            *mine += theirs;
        }
    }
}

/// What a body turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFormat {
    /// Empty or whitespace.
    Empty,
    /// A JSON object without rows (an error, a progress answer, a login...).
    NoRows,
    /// A query answer or result poll with JSON `rowset`.
    QueryJson,
    /// A query answer or result poll with Arrow `rowsetBase64`.
    QueryArrow,
    /// A SQL API result (`resultSetMetaData` and `data`).
    SqlApi,
    /// A SQL API partition (`data` only).
    SqlApiPartition,
    /// A JSON chunk.
    JsonChunk,
    /// An Arrow chunk (IPC stream).
    ArrowChunk,
}

/// A chunk listed in a query answer.
#[derive(Clone, PartialEq, Eq)]
pub struct ChunkRef {
    /// The presigned URL, decoded (a secret: never log it).
    pub url: String,
    /// The URL's string token in the body, quotes included.
    pub url_range: Range<usize>,
    /// `rowCount`.
    pub row_count: Option<u64>,
    /// `uncompressedSize`.
    pub uncompressed_size: Option<u64>,
    /// `compressedSize`.
    pub compressed_size: Option<u64>,
}

impl fmt::Debug for ChunkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkRef")
            .field("url", &"<redacted>")
            .field("url_range", &self.url_range)
            .field("row_count", &self.row_count)
            .field("uncompressed_size", &self.uncompressed_size)
            .field("compressed_size", &self.compressed_size)
            .finish()
    }
}

/// What the proxy needs from a query answer's `data`: chunks to rewrite and fetch, the keys
/// to fetch them with (and strip), and the counts to keep consistent.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `queryResultFormat` (`json`, `arrow`).
    pub query_result_format: Option<String>,
    /// `total`.
    pub total: Option<u64>,
    /// `returned`.
    pub returned: Option<u64>,
    /// `chunks[]`, in order.
    pub chunks: Vec<ChunkRef>,
    /// `qrmk`, decoded (a secret: the SSE-C key for chunk fetches).
    pub qrmk: Option<String>,
    /// The `"qrmk":"…"` member's bytes.
    pub qrmk_member: Option<Range<usize>>,
    /// `chunkHeaders`, decoded (secrets: headers for chunk fetches).
    pub chunk_headers: Vec<(String, String)>,
    /// The `"chunkHeaders":{…}` member's bytes.
    pub chunk_headers_member: Option<Range<usize>>,
    pub(crate) body_len: usize,
    pub(crate) data_object: Range<usize>,
    pub(crate) data_members: Vec<Range<usize>>,
}

impl Envelope {
    /// Rows in the chunks, per their `rowCount`s (the first chunk, inline, holds `total` minus these).
    pub fn chunk_rows(&self) -> u64 {
        self.chunks.iter().filter_map(|c| c.row_count).sum()
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("query_result_format", &self.query_result_format)
            .field("total", &self.total)
            .field("returned", &self.returned)
            .field("chunks", &self.chunks)
            .field("qrmk", &self.qrmk.as_ref().map(|_| "<redacted>"))
            .field("qrmk_member", &self.qrmk_member)
            .field("chunk_headers", &self.chunk_headers.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("chunk_headers_member", &self.chunk_headers_member)
            .finish_non_exhaustive()
    }
}

/// The outcome of [`Masker::mask`].
#[derive(Debug, Clone)]
pub struct Masked {
    /// What the body was.
    pub format: ResultFormat,
    /// What was masked.
    pub report: MaskReport,
    /// For query answers: chunks, keys, counts.
    pub envelope: Option<Envelope>,
    /// The plan used (made from the row type, or the one given): carry it to the chunks.
    pub plan: Option<ColumnPlan>,
}

/// Reusable buffers lent to each call, so masking allocates nothing per row. Keep one per core.
#[derive(Default)]
pub struct Scratch {
    pub(crate) spans: Vec<text::Span>,
    pub(crate) views: text::Views,
    pub(crate) decoded: Vec<u8>,
    pub(crate) raw_of: Vec<u32>,
    pub(crate) repls: Vec<json::Repl>,
    pub(crate) base64: Vec<u8>,
    pub(crate) preview: Vec<u8>,
    pub(crate) arrow: arrow::ArrowScratch,
    pub(crate) map: scan::StructureMap,
    /// A row's cells on the walker's fast path: opening and closing quote (`NULL_CELL` for null).
    pub(crate) cells: Vec<(usize, usize)>,
    /// Every JSON row through the byte walk (see [`Scratch::byte_walk_only`]).
    pub(crate) byte_walk_only: bool,
}

impl Scratch {
    /// A scratch with which JSON rows are all masked by the byte walk, never by the fast path
    /// over the structure map: the same results, slower. For differential tests and fuzzing,
    /// which compare the two.
    #[doc(hidden)]
    pub fn byte_walk_only() -> Scratch {
        Scratch { byte_walk_only: true, ..Scratch::default() }
    }
}

impl fmt::Debug for Scratch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scratch").finish_non_exhaustive()
    }
}

/// A profile of a [`Masker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProfileId(u16);

/// The compiled masking spec, shared by every core: its profiles, and the profiles merged for
/// identities several apply to, compiled when first asked for.
pub struct Masker {
    profiles: Vec<Profile>,
    spec: MaskingSpec,
    fingerprint: u64,
    /// Merged profiles by slot (`ProfileId` past `profiles`), each set once.
    merged: Box<[OnceLock<Merged>]>,
    /// Merged profiles' slots by set name ([`Masker::set_name`]).
    merged_slots: RwLock<HashMap<String, usize>>,
}

/// A merged profile and what its plans are made for (the set, so a plan of one set never
/// passes for another's on any instance, whatever slot each gave it).
struct Merged {
    profile: Profile,
    fingerprint: u64,
}

/// The most merged profiles a masker keeps (each a distinct set of profiles some identity
/// has); past it, an answer for a new set is withheld.
pub const MERGED_PROFILES_MAX: usize = 256;

/// The profile id in plans of merged profiles (their fingerprint names the set).
const MERGED_PLAN_PROFILE: u16 = u16::MAX;

/// Joins the names of a set of profiles (profile names hold no control character).
const SET_SEPARATOR: char = '\n';

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for profile in &self.profiles {
            list.entry(&(&profile.name, profile.columns.len(), profile.dictionary.kind().name()));
        }
        list.finish()
    }
}

impl Masker {
    /// Checks and compiles a spec (globs, detectors, the dictionary searcher) once.
    pub fn new(spec: &MaskingSpec) -> Result<Masker, MaskConfigError> {
        let profiles = rules::compile(spec)?;
        let fingerprint = fingerprint_of(format!("{spec:?}").as_bytes());
        Ok(Masker {
            profiles,
            spec: spec.clone(),
            fingerprint,
            merged: (0..MERGED_PROFILES_MAX).map(|_| OnceLock::new()).collect(),
            merged_slots: RwLock::new(HashMap::new()),
        })
    }

    /// The name that stands for masking with every profile in `names` (a set: order and
    /// repeats do not matter): one name as it is, several joined. [`Masker::profile`] takes it.
    pub fn set_name(names: &[String]) -> String {
        let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        sorted.join(&SET_SEPARATOR.to_string())
    }

    /// The profile with this name, or for a [set name](Masker::set_name) the profiles merged
    /// (`rules::compile_merged`: masking as much as each, at least as strongly), compiled the
    /// first time. `None` for an unknown name, or a new set past [`MERGED_PROFILES_MAX`].
    pub fn profile(&self, name: &str) -> Option<ProfileId> {
        if let Some(at) = self.profiles.iter().position(|p| p.name == name) {
            return Some(ProfileId(at as u16));
        }
        if !name.contains(SET_SEPARATOR) {
            return None;
        }
        let known = self.merged_slots.read().unwrap_or_else(PoisonError::into_inner).get(name).copied();
        let slot = match known {
            Some(slot) => slot,
            None => self.merge(name)?,
        };
        Some(ProfileId((self.profiles.len() + slot) as u16))
    }

    /// Compiles the merged profile of a set name into a free slot (none past the last: no
    /// compile for a set that could not be kept).
    fn merge(&self, name: &str) -> Option<usize> {
        if self.merged_slots.read().unwrap_or_else(PoisonError::into_inner).len() >= self.merged.len() {
            return None;
        }
        let specs: Option<Vec<&spec::ProfileSpec>> =
            name.split(SET_SEPARATOR).map(|member| self.spec.profiles.get(member)).collect();
        let profile = rules::compile_merged(name, &specs?).ok()?;
        let mut slots = self.merged_slots.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(&slot) = slots.get(name) {
            return Some(slot);
        }
        let slot = slots.len();
        let fingerprint = fingerprint_of(format!("{}\n{name}", self.fingerprint).as_bytes());
        self.merged.get(slot)?.set(Merged { profile, fingerprint }).ok()?;
        slots.insert(name.to_owned(), slot);
        Some(slot)
    }

    /// The profiles' names, in id order.
    pub fn profile_names(&self) -> impl Iterator<Item = &str> {
        self.profiles.iter().map(|p| p.name.as_str())
    }

    fn compiled(&self, profile: ProfileId) -> &Profile {
        self.ctx(profile, AnswerOf::Query).profile
    }

    /// Which searcher a profile's dictionary and detector anchors run on.
    pub fn searcher_kind(&self, profile: ProfileId) -> SearcherKind {
        self.compiled(profile).dictionary.kind()
    }

    /// A profile's plan for a result's columns (from its row type).
    pub fn plan(&self, profile: ProfileId, columns: &[Column]) -> ColumnPlan {
        self.ctx(profile, AnswerOf::Query).plan(columns)
    }

    fn ctx(&self, profile: ProfileId, answer_of: AnswerOf) -> MaskCtx<'_> {
        let at = usize::from(profile.0);
        match self.profiles.get(at) {
            Some(own) => MaskCtx { profile: own, profile_id: profile.0, fingerprint: self.fingerprint, answer_of },
            None => {
                // Ids past the spec's own profiles are handed out only once their slot is set.
                let merged = self.merged[at - self.profiles.len()].get().expect("a merged profile's slot is set");
                MaskCtx {
                    profile: &merged.profile,
                    profile_id: MERGED_PLAN_PROFILE,
                    fingerprint: merged.fingerprint,
                    answer_of,
                }
            }
        }
    }

    /// Masks a result body in place, whatever it is (see the module docs); the length never
    /// changes. `plan` is the result's plan, required for JSON chunks and SQL API partitions,
    /// advised for Arrow chunks, ignored where the body carries its row type.
    pub fn mask(
        &self,
        profile: ProfileId,
        body: &mut [u8],
        plan: Option<&ColumnPlan>,
        scratch: &mut Scratch,
    ) -> Result<Masked, MaskError> {
        self.mask_answer_of(profile, body, plan, scratch, AnswerOf::Query)
    }

    /// [`Masker::mask`] of an answer to `answer_of`: where it carries its row type, the plan
    /// made from it reads an empty `table` as [`AnswerOf`] says.
    pub fn mask_answer_of(
        &self,
        profile: ProfileId,
        body: &mut [u8],
        plan: Option<&ColumnPlan>,
        scratch: &mut Scratch,
        answer_of: AnswerOf,
    ) -> Result<Masked, MaskError> {
        // Offsets inside values (escapes decoded, percent escapes) are kept in 32 bits.
        if u32::try_from(body.len()).is_err() {
            return Err(MaskError::Limit { what: "a result body of 4 GiB or more" });
        }
        let ctx = self.ctx(profile, answer_of);
        let mut report = MaskReport::default();
        let original_len = body.len();
        let (format, envelope, plan) = match chunk::detect(body) {
            chunk::ChunkKind::Empty => (ResultFormat::Empty, None, plan.cloned()),
            chunk::ChunkKind::Gzip => return Err(MaskError::Compressed),
            chunk::ChunkKind::Unknown => return Err(MaskError::Unrecognized { what: "not JSON nor Arrow" }),
            chunk::ChunkKind::Arrow => {
                if let Some(plan) = plan {
                    ctx_check(&ctx, plan)?;
                }
                let used = arrow::mask_stream(&ctx, body, plan, scratch, &mut report)?;
                (ResultFormat::ArrowChunk, None, Some(used))
            }
            chunk::ChunkKind::JsonRows => {
                let plan = plan.ok_or(MaskError::ColumnsRequired)?;
                json::mask_chunk(&ctx, body, plan, scratch, &mut report)?;
                (ResultFormat::JsonChunk, None, Some(plan.clone()))
            }
            chunk::ChunkKind::JsonObject => {
                let start = body.iter().position(|&b| b == b'{').unwrap_or(0);
                let outcome = json::mask_object(&ctx, body, start, plan, scratch, &mut report)?;
                (outcome.format, outcome.envelope, outcome.plan)
            }
        };
        debug_assert_eq!(body.len(), original_len);
        Ok(Masked { format, report, envelope, plan })
    }
}

/// The first eight bytes of a BLAKE3 digest.
fn fingerprint_of(bytes: &[u8]) -> u64 {
    let digest = blake3::hash(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

fn ctx_check(ctx: &MaskCtx<'_>, plan: &ColumnPlan) -> Result<(), MaskError> {
    if plan.fingerprint != ctx.fingerprint || plan.profile != ctx.profile_id {
        return Err(MaskError::PlanMismatch);
    }
    Ok(())
}
