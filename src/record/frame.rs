//! What one record holds ([`Frame`]: a request, a response or an event) and its canonical
//! byte encoding inside a batch. Pure: no I/O, no clock; the writer and the reader both call
//! into this file, so a record that encodes always decodes to an equal frame, and a body that
//! decodes always re-encodes to the very same bytes (the decoder rejects every non-canonical
//! form).
//!
//! Bodies travel as [`Bytes`] handles to the buffers the proxy forwarded: handing a frame to
//! the recorder copies no body.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::limits;
use super::recorder::TicketShared;

/// Who sent a request, as the gateway established it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    /// The agent's `sub`, once known.
    pub sub: Option<String>,
    /// The Snowflake role the gateway used for it.
    pub role: Option<String>,
    /// The agent's groups (from its token).
    pub groups: Vec<String>,
}

/// What the gateway decided about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forwarded upstream.
    Allowed,
    /// Refused by a policy rule.
    Blocked {
        /// The rule's name.
        rule: String,
    },
    /// Parked for a human decision (not forwarded yet).
    Parked {
        /// The rule that parked it.
        rule: String,
    },
    /// Parked, then approved and forwarded.
    Approved {
        /// The rule that parked it.
        rule: String,
        /// Who approved it.
        approver: String,
    },
    /// Refused by the gateway for a reason other than policy (authentication, limits, an
    /// unavailable recorder), with the Snowflake-shaped code it answered.
    Refused {
        /// The code answered.
        code: String,
    },
}

impl Decision {
    /// The decision's name, as `snowgate-tools` prints and filters it.
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Blocked { .. } => "blocked",
            Decision::Parked { .. } => "parked",
            Decision::Approved { .. } => "approved",
            Decision::Refused { .. } => "refused",
        }
    }
}

/// The request half of an exchange: everything known before the statement goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFrame {
    /// When the request was complete at the gateway, in Unix microseconds.
    pub time_unix_us: u64,
    /// The endpoint (`query-request`, `login`...).
    pub endpoint: Cow<'static, str>,
    /// Who sent it.
    pub principal: Principal,
    /// Snowflake's session id.
    pub session_id: Option<i64>,
    /// The driver's `requestId`.
    pub request_id: Option<String>,
    /// The query id, when the request names one (result polls, chunk downloads).
    pub query_id: Option<String>,
    /// The statement.
    pub statement: Option<String>,
    /// The bindings (raw JSON).
    pub bindings: Option<String>,
    /// The agent's `X-Agent-Context` header, capped by the proxy.
    pub agent_context: Option<String>,
    /// The `QUERY_TAG` the driver set.
    pub query_tag: Option<String>,
    /// What the gateway decided.
    pub decision: Decision,
    /// The request body as forwarded (after any rewrite); never a credential.
    pub body: Bytes,
}

/// The response half of an exchange: the answer the agent received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFrame {
    /// When the answer was complete, in Unix microseconds.
    pub time_unix_us: u64,
    /// The endpoint.
    pub endpoint: Cow<'static, str>,
    /// The request record this answers ([`super::Ticket::link`]).
    pub request: Option<RequestLink>,
    /// Snowflake's query id.
    pub query_id: Option<String>,
    /// HTTP status answered.
    pub status: u16,
    /// Snowflake `code` answered.
    pub code: Option<String>,
    /// Snowflake `success` answered.
    pub success: Option<bool>,
    /// Rows in the result.
    pub rows: Option<u64>,
    /// Time spent waiting on upstream, in microseconds.
    pub upstream_us: u64,
    /// Time from the request head to the answer, in microseconds.
    pub total_us: u64,
    /// The response body as sent to the agent (after masking).
    pub body: Bytes,
}

/// Something that happened to the gateway or its recorder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The gateway started.
    GatewayStart,
    /// The gateway stopped.
    GatewayStop,
    /// The recorder sealed a segment and opened the next (written by the recorder).
    SegmentRotated,
    /// Recovery truncated a torn tail or sealed an unsealed segment (written by the recorder).
    RecoveryPerformed,
    /// The recorder could not write; `detail` says why and how many records were lost
    /// (written by the recorder once writing works again).
    RecorderError,
    /// Any other event, by name.
    Other(String),
}

impl EventKind {
    /// The event's name on disk and in exports.
    pub fn name(&self) -> &str {
        match self {
            EventKind::GatewayStart => "gateway_start",
            EventKind::GatewayStop => "gateway_stop",
            EventKind::SegmentRotated => "segment_rotated",
            EventKind::RecoveryPerformed => "recovery_performed",
            EventKind::RecorderError => "recorder_error",
            EventKind::Other(name) => name,
        }
    }

    fn from_name(name: &str) -> EventKind {
        match name {
            "gateway_start" => EventKind::GatewayStart,
            "gateway_stop" => EventKind::GatewayStop,
            "segment_rotated" => EventKind::SegmentRotated,
            "recovery_performed" => EventKind::RecoveryPerformed,
            "recorder_error" => EventKind::RecorderError,
            other => EventKind::Other(other.to_owned()),
        }
    }

    /// Whether the recorder itself writes this kind (never submitted by the gateway).
    pub fn is_recorder_internal(&self) -> bool {
        matches!(self, EventKind::SegmentRotated | EventKind::RecoveryPerformed | EventKind::RecorderError)
    }
}

/// An event record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFrame {
    /// When it happened, in Unix microseconds.
    pub time_unix_us: u64,
    /// What happened.
    pub kind: EventKind,
    /// A sentence about it; never a payload or a secret.
    pub detail: String,
}

/// A value for a `name=value` field of an event's detail: as it is when it is one word, else
/// quoted with Rust's escapes, so that no value (an identity with a space and an `=`, say) can
/// pass for another field.
pub fn detail_value(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c.is_control() || c == '=' || c == '"') {
        return std::borrow::Cow::Borrowed(value);
    }
    std::borrow::Cow::Owned(format!("{value:?}"))
}

/// One record's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A request, recorded before it goes upstream.
    Request(RequestFrame),
    /// The answer to a request.
    Response(ResponseFrame),
    /// A gateway or recorder event.
    Event(EventFrame),
}

impl Frame {
    /// When the frame's moment happened, in Unix microseconds.
    pub fn time_unix_us(&self) -> u64 {
        match self {
            Frame::Request(r) => r.time_unix_us,
            Frame::Response(r) => r.time_unix_us,
            Frame::Event(e) => e.time_unix_us,
        }
    }

    /// The record kind's name (`request`, `response`, `event`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Request(_) => "request",
            Frame::Response(_) => "response",
            Frame::Event(_) => "event",
        }
    }

    /// The endpoint, for requests and responses.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Frame::Request(r) => Some(&r.endpoint),
            Frame::Response(r) => Some(&r.endpoint),
            Frame::Event(_) => None,
        }
    }

    /// The query id, when the frame carries one.
    pub fn query_id(&self) -> Option<&str> {
        match self {
            Frame::Request(r) => r.query_id.as_deref(),
            Frame::Response(r) => r.query_id.as_deref(),
            Frame::Event(_) => None,
        }
    }

    /// The body, for requests and responses.
    pub fn body(&self) -> Option<&Bytes> {
        match self {
            Frame::Request(r) => Some(&r.body),
            Frame::Response(r) => Some(&r.body),
            Frame::Event(_) => None,
        }
    }

    /// An upper bound of the encoded size, used for batching; cheap (no encoding).
    pub fn encoded_len_estimate(&self) -> usize {
        let strings = |values: &[Option<&str>]| values.iter().map(|v| v.map_or(0, |s| s.len() + 11)).sum::<usize>();
        RECORD_PREFIX_BYTES
            + BODY_HEADER_BYTES
            + match self {
                Frame::Request(r) => {
                    strings(&[
                        Some(&r.endpoint),
                        r.principal.sub.as_deref(),
                        r.principal.role.as_deref(),
                        r.request_id.as_deref(),
                        r.query_id.as_deref(),
                        r.statement.as_deref(),
                        r.bindings.as_deref(),
                        r.agent_context.as_deref(),
                        r.query_tag.as_deref(),
                    ]) + r.principal.groups.iter().map(|g| g.len() + 11).sum::<usize>()
                        + 64
                        + r.body.len()
                        + 11
                }
                Frame::Response(r) => {
                    strings(&[Some(&r.endpoint), r.query_id.as_deref(), r.code.as_deref()]) + 96 + r.body.len() + 11
                }
                Frame::Event(e) => strings(&[Some(e.kind.name()), Some(&e.detail)]),
            }
    }

    /// Appends the frame's canonical record body, as record `record_index`, to `out` (what the
    /// writer stores, less the `len | crc` prefix, and before any credential scrubbing). A
    /// response's link must be resolved (it is once its request was written, or read back).
    pub fn encode_body(&self, record_index: u64, out: &mut Vec<u8>) {
        let request_record = match self {
            Frame::Response(r) => r.request.as_ref().and_then(RequestLink::record_index),
            _ => None,
        };
        encode_body(self, record_index, request_record, out);
    }

    /// Checks the frame against the format's limits; the recorder refuses frames that fail.
    pub fn check_limits(&self) -> Result<(), LimitExceeded> {
        let short = |field: &'static str, value: Option<&str>| match value {
            Some(v) if v.len() > limits::SHORT_FIELD_BYTES_MAX => Err(LimitExceeded { field }),
            _ => Ok(()),
        };
        let capped = |field: &'static str, len: usize, max: usize| {
            if len > max { Err(LimitExceeded { field }) } else { Ok(()) }
        };
        match self {
            Frame::Request(r) => {
                short("endpoint", Some(&r.endpoint))?;
                short("sub", r.principal.sub.as_deref())?;
                short("role", r.principal.role.as_deref())?;
                capped("groups", r.principal.groups.len(), limits::GROUPS_MAX)?;
                for group in &r.principal.groups {
                    short("group", Some(group))?;
                }
                short("request_id", r.request_id.as_deref())?;
                short("query_id", r.query_id.as_deref())?;
                short("query_tag", r.query_tag.as_deref())?;
                capped("statement", r.statement.as_ref().map_or(0, String::len), limits::STATEMENT_BYTES_MAX)?;
                capped("bindings", r.bindings.as_ref().map_or(0, String::len), limits::BINDINGS_BYTES_MAX)?;
                capped(
                    "agent_context",
                    r.agent_context.as_ref().map_or(0, String::len),
                    limits::AGENT_CONTEXT_BYTES_MAX,
                )?;
                match &r.decision {
                    Decision::Allowed => {}
                    Decision::Blocked { rule } | Decision::Parked { rule } => short("rule", Some(rule))?,
                    Decision::Approved { rule, approver } => {
                        short("rule", Some(rule))?;
                        short("approver", Some(approver))?;
                    }
                    Decision::Refused { code } => short("code", Some(code))?,
                }
                capped("body", r.body.len(), limits::BODY_BYTES_MAX)
            }
            Frame::Response(r) => {
                short("endpoint", Some(&r.endpoint))?;
                short("query_id", r.query_id.as_deref())?;
                short("code", r.code.as_deref())?;
                capped("body", r.body.len(), limits::BODY_BYTES_MAX)
            }
            Frame::Event(e) => {
                short("event", Some(e.kind.name()))?;
                capped("detail", e.detail.len(), limits::EVENT_DETAIL_BYTES_MAX)
            }
        }
    }
}

/// A frame field is over the format's limit; the frame was refused, not truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the frame's {field} is larger than the recording format allows")]
pub struct LimitExceeded {
    /// The field.
    pub field: &'static str,
}

/// A response's link to its request record.
///
/// When the gateway builds a response frame, the link holds the request's ticket: the
/// recorder thread wrote the request first (one queue, in order), so it reads the request's
/// record index from there. When a response is read back, the link holds that index.
#[derive(Clone)]
pub struct RequestLink(LinkInner);

#[derive(Clone)]
enum LinkInner {
    Ticket(Arc<TicketShared>),
    Index(u64),
}

impl RequestLink {
    /// A link to the request record `record_index` (as read back).
    pub fn to_record(record_index: u64) -> RequestLink {
        RequestLink(LinkInner::Index(record_index))
    }

    pub(super) fn from_ticket(ticket: Arc<TicketShared>) -> RequestLink {
        RequestLink(LinkInner::Ticket(ticket))
    }

    /// Whether the request's record will never be written (a read-back link never is).
    pub fn lost(&self) -> bool {
        match &self.0 {
            LinkInner::Index(_) => false,
            LinkInner::Ticket(ticket) => ticket.failed(),
        }
    }

    /// The request's record index, once the request is written.
    pub fn record_index(&self) -> Option<u64> {
        match &self.0 {
            LinkInner::Index(index) => Some(*index),
            LinkInner::Ticket(ticket) => match ticket.record_index.load(Ordering::Acquire) {
                u64::MAX => None,
                index => Some(index),
            },
        }
    }
}

impl std::fmt::Debug for RequestLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestLink({:?})", self.record_index())
    }
}

impl PartialEq for RequestLink {
    fn eq(&self, other: &RequestLink) -> bool {
        self.record_index() == other.record_index()
    }
}

impl Eq for RequestLink {}

// ---------------------------------------------------------------------------------------
// Encoding. The layout is specified in `record/mod.rs`; the constants here are its names.

/// `len u32 | crc32c u32` before each record body.
pub(super) const RECORD_PREFIX_BYTES: usize = 8;
/// `record_index u64 | kind u8 | time_unix_us u64` at the start of each body.
pub(super) const BODY_HEADER_BYTES: usize = 17;

const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const KIND_EVENT: u8 = 3;

mod tag {
    pub const ENDPOINT: u8 = 1;
    pub const SUB: u8 = 2;
    pub const ROLE: u8 = 3;
    pub const GROUP: u8 = 4;
    pub const SESSION_ID: u8 = 5;
    pub const REQUEST_ID: u8 = 6;
    pub const QUERY_ID: u8 = 7;
    pub const STATEMENT: u8 = 8;
    pub const BINDINGS: u8 = 9;
    pub const AGENT_CONTEXT: u8 = 10;
    pub const QUERY_TAG: u8 = 11;
    pub const DECISION: u8 = 12;
    pub const DECISION_RULE: u8 = 13;
    pub const DECISION_APPROVER: u8 = 14;
    pub const DECISION_CODE: u8 = 15;
    pub const BODY: u8 = 16;
    pub const REQUEST_RECORD: u8 = 20;
    pub const STATUS: u8 = 21;
    pub const CODE: u8 = 22;
    pub const SUCCESS: u8 = 23;
    pub const ROWS: u8 = 24;
    pub const UPSTREAM_US: u8 = 25;
    pub const TOTAL_US: u8 = 26;
    pub const EVENT: u8 = 30;
    pub const DETAIL: u8 = 31;
}

/// Every field name of the format, by tag, for documentation and the credential-name test.
pub const FIELD_NAMES: &[(u8, &str)] = &[
    (tag::ENDPOINT, "endpoint"),
    (tag::SUB, "sub"),
    (tag::ROLE, "role"),
    (tag::GROUP, "group"),
    (tag::SESSION_ID, "session_id"),
    (tag::REQUEST_ID, "request_id"),
    (tag::QUERY_ID, "query_id"),
    (tag::STATEMENT, "statement"),
    (tag::BINDINGS, "bindings"),
    (tag::AGENT_CONTEXT, "agent_context"),
    (tag::QUERY_TAG, "query_tag"),
    (tag::DECISION, "decision"),
    (tag::DECISION_RULE, "decision_rule"),
    (tag::DECISION_APPROVER, "decision_approver"),
    (tag::DECISION_CODE, "decision_code"),
    (tag::BODY, "body"),
    (tag::REQUEST_RECORD, "request_record"),
    (tag::STATUS, "status"),
    (tag::CODE, "code"),
    (tag::SUCCESS, "success"),
    (tag::ROWS, "rows"),
    (tag::UPSTREAM_US, "upstream_us"),
    (tag::TOTAL_US, "total_us"),
    (tag::EVENT, "event"),
    (tag::DETAIL, "detail"),
];

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(mut value: u64) -> usize {
    let mut n = 1;
    while value >= 0x80 {
        value >>= 7;
        n += 1;
    }
    n
}

fn put_bytes(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn put_str(out: &mut Vec<u8>, tag: u8, value: Option<&str>) {
    if let Some(value) = value {
        put_bytes(out, tag, value.as_bytes());
    }
}

fn put_uint(out: &mut Vec<u8>, tag: u8, value: u64) {
    out.push(tag);
    out.push(varint_len(value) as u8);
    put_varint(out, value);
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Appends the canonical body of `frame` as record `record_index` to `out` (without the
/// `len | crc` prefix). The response link must already be resolved into `request_record`.
pub(super) fn encode_body(frame: &Frame, record_index: u64, request_record: Option<u64>, out: &mut Vec<u8>) {
    out.extend_from_slice(&record_index.to_le_bytes());
    match frame {
        Frame::Request(r) => {
            out.push(KIND_REQUEST);
            out.extend_from_slice(&r.time_unix_us.to_le_bytes());
            put_str(out, tag::ENDPOINT, Some(&r.endpoint));
            put_str(out, tag::SUB, r.principal.sub.as_deref());
            put_str(out, tag::ROLE, r.principal.role.as_deref());
            for group in &r.principal.groups {
                put_str(out, tag::GROUP, Some(group));
            }
            if let Some(session_id) = r.session_id {
                put_uint(out, tag::SESSION_ID, zigzag(session_id));
            }
            put_str(out, tag::REQUEST_ID, r.request_id.as_deref());
            put_str(out, tag::QUERY_ID, r.query_id.as_deref());
            put_str(out, tag::STATEMENT, r.statement.as_deref());
            put_str(out, tag::BINDINGS, r.bindings.as_deref());
            put_str(out, tag::AGENT_CONTEXT, r.agent_context.as_deref());
            put_str(out, tag::QUERY_TAG, r.query_tag.as_deref());
            let (kind, rule, approver, code) = match &r.decision {
                Decision::Allowed => (0, None, None, None),
                Decision::Blocked { rule } => (1, Some(rule), None, None),
                Decision::Parked { rule } => (2, Some(rule), None, None),
                Decision::Approved { rule, approver } => (3, Some(rule), Some(approver), None),
                Decision::Refused { code } => (4, None, None, Some(code)),
            };
            put_uint(out, tag::DECISION, kind);
            put_str(out, tag::DECISION_RULE, rule.map(String::as_str));
            put_str(out, tag::DECISION_APPROVER, approver.map(String::as_str));
            put_str(out, tag::DECISION_CODE, code.map(String::as_str));
            if !r.body.is_empty() {
                put_bytes(out, tag::BODY, &r.body);
            }
        }
        Frame::Response(r) => {
            out.push(KIND_RESPONSE);
            out.extend_from_slice(&r.time_unix_us.to_le_bytes());
            put_str(out, tag::ENDPOINT, Some(&r.endpoint));
            put_str(out, tag::QUERY_ID, r.query_id.as_deref());
            if !r.body.is_empty() {
                put_bytes(out, tag::BODY, &r.body);
            }
            if let Some(index) = request_record {
                put_uint(out, tag::REQUEST_RECORD, index);
            }
            put_uint(out, tag::STATUS, u64::from(r.status));
            put_str(out, tag::CODE, r.code.as_deref());
            if let Some(success) = r.success {
                put_uint(out, tag::SUCCESS, u64::from(success));
            }
            if let Some(rows) = r.rows {
                put_uint(out, tag::ROWS, rows);
            }
            put_uint(out, tag::UPSTREAM_US, r.upstream_us);
            put_uint(out, tag::TOTAL_US, r.total_us);
        }
        Frame::Event(e) => {
            out.push(KIND_EVENT);
            out.extend_from_slice(&e.time_unix_us.to_le_bytes());
            put_str(out, tag::EVENT, Some(e.kind.name()));
            put_str(out, tag::DETAIL, Some(&e.detail));
        }
    }
}

/// Why a record body does not decode. The CRC matched, so this is a writer bug or a
/// deliberate edit (a record changed and its CRC recomputed), never a torn write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is shorter than its fixed header.
    #[error("the record body is shorter than its header")]
    Short,
    /// The record kind byte is unknown.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// A field tag is unknown for this kind, repeated, or out of order.
    #[error("field tag {0} is unknown, repeated or out of order")]
    BadTag(u8),
    /// A length or integer runs past the body or is not minimally encoded.
    #[error("a length or integer is malformed")]
    BadVarint,
    /// A text field is not UTF-8.
    #[error("a text field is not UTF-8")]
    NotUtf8,
    /// A field's value is out of range (a status over 65535, a boolean over 1...).
    #[error("field tag {0} holds an out-of-range value")]
    BadValue(u8),
    /// A required field is missing.
    #[error("required field tag {0} is missing")]
    Missing(u8),
    /// A field is over the format's limit.
    #[error("a field is over the format's limit")]
    TooLarge,
}

/// A decoded record: its index, and the frame (response links resolved to indexes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBody {
    /// The record's index in its core's chain.
    pub record_index: u64,
    /// The content.
    pub frame: Frame,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for shift_idx in 0..10 {
            let byte = *self.bytes.get(self.at).ok_or(DecodeError::BadVarint)?;
            self.at += 1;
            let bits = u64::from(byte & 0x7f);
            if shift_idx == 9 && bits > 1 {
                return Err(DecodeError::BadVarint);
            }
            value |= bits << (7 * shift_idx);
            if byte & 0x80 == 0 {
                // Canonical: no trailing zero groups (only `0` itself is one byte of zero).
                if byte == 0 && shift_idx > 0 {
                    return Err(DecodeError::BadVarint);
                }
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint)
    }

    /// The next field: its tag and value, or `None` at the end.
    fn field(&mut self) -> Result<Option<(u8, &'a [u8])>, DecodeError> {
        let Some(&tag) = self.bytes.get(self.at) else {
            return Ok(None);
        };
        self.at += 1;
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::BadVarint)?;
        let end = self.at.checked_add(len).filter(|&end| end <= self.bytes.len()).ok_or(DecodeError::BadVarint)?;
        let value = &self.bytes[self.at..end];
        self.at = end;
        Ok(Some((tag, value)))
    }
}

fn uint_value(tag: u8, value: &[u8]) -> Result<u64, DecodeError> {
    let mut cursor = Cursor { bytes: value, at: 0 };
    let parsed = cursor.varint()?;
    if cursor.at != value.len() {
        return Err(DecodeError::BadValue(tag));
    }
    Ok(parsed)
}

fn text(value: &[u8], max: usize) -> Result<String, DecodeError> {
    if value.len() > max {
        return Err(DecodeError::TooLarge);
    }
    std::str::from_utf8(value).map(str::to_owned).map_err(|_| DecodeError::NotUtf8)
}

fn short_text(value: &[u8]) -> Result<String, DecodeError> {
    text(value, limits::SHORT_FIELD_BYTES_MAX)
}

/// Decodes a canonical record body. `source` is the decompressed batch the body lies in, so
/// bodies are sliced out of it without a copy.
pub(super) fn decode_body(source: &Bytes, start: usize, end: usize) -> Result<DecodedBody, DecodeError> {
    let body = &source[start..end];
    if body.len() < BODY_HEADER_BYTES {
        return Err(DecodeError::Short);
    }
    let record_index = u64::from_le_bytes(body[0..8].try_into().expect("eight bytes"));
    let kind = body[8];
    let time_unix_us = u64::from_le_bytes(body[9..17].try_into().expect("eight bytes"));
    let mut cursor = Cursor { bytes: body, at: BODY_HEADER_BYTES };
    let slice_body = |value: &[u8]| -> Result<Bytes, DecodeError> {
        if value.is_empty() || value.len() > limits::BODY_BYTES_MAX {
            // An empty body is written by omitting the field: a present empty one is not canonical.
            return Err(DecodeError::BadValue(tag::BODY));
        }
        let offset = value.as_ptr() as usize - source.as_ptr() as usize;
        Ok(source.slice(offset..offset + value.len()))
    };
    // Fields come in ascending tag order, each at most once, except groups (consecutive).
    let mut last_tag = 0u8;
    let mut ordered = |tag: u8| -> Result<(), DecodeError> {
        if tag < last_tag || (tag == last_tag && tag != tag::GROUP) {
            return Err(DecodeError::BadTag(tag));
        }
        last_tag = tag;
        Ok(())
    };
    let frame = match kind {
        KIND_REQUEST => {
            let mut r = RequestFrame {
                time_unix_us,
                endpoint: Cow::Borrowed(""),
                principal: Principal::default(),
                session_id: None,
                request_id: None,
                query_id: None,
                statement: None,
                bindings: None,
                agent_context: None,
                query_tag: None,
                decision: Decision::Allowed,
                body: Bytes::new(),
            };
            let (mut endpoint, mut decision) = (None, None);
            let (mut rule, mut approver, mut code) = (None, None, None);
            while let Some((field_tag, value)) = cursor.field()? {
                ordered(field_tag)?;
                match field_tag {
                    tag::ENDPOINT => endpoint = Some(short_text(value)?),
                    tag::SUB => r.principal.sub = Some(short_text(value)?),
                    tag::ROLE => r.principal.role = Some(short_text(value)?),
                    tag::GROUP => {
                        if r.principal.groups.len() >= limits::GROUPS_MAX {
                            return Err(DecodeError::TooLarge);
                        }
                        r.principal.groups.push(short_text(value)?);
                    }
                    tag::SESSION_ID => r.session_id = Some(unzigzag(uint_value(field_tag, value)?)),
                    tag::REQUEST_ID => r.request_id = Some(short_text(value)?),
                    tag::QUERY_ID => r.query_id = Some(short_text(value)?),
                    tag::STATEMENT => r.statement = Some(text(value, limits::STATEMENT_BYTES_MAX)?),
                    tag::BINDINGS => r.bindings = Some(text(value, limits::BINDINGS_BYTES_MAX)?),
                    tag::AGENT_CONTEXT => r.agent_context = Some(text(value, limits::AGENT_CONTEXT_BYTES_MAX)?),
                    tag::QUERY_TAG => r.query_tag = Some(short_text(value)?),
                    tag::DECISION => decision = Some(uint_value(field_tag, value)?),
                    tag::DECISION_RULE => rule = Some(short_text(value)?),
                    tag::DECISION_APPROVER => approver = Some(short_text(value)?),
                    tag::DECISION_CODE => code = Some(short_text(value)?),
                    tag::BODY => r.body = slice_body(value)?,
                    other => return Err(DecodeError::BadTag(other)),
                }
            }
            r.endpoint = Cow::Owned(endpoint.ok_or(DecodeError::Missing(tag::ENDPOINT))?);
            r.decision = match (decision.ok_or(DecodeError::Missing(tag::DECISION))?, rule, approver, code) {
                (0, None, None, None) => Decision::Allowed,
                (1, Some(rule), None, None) => Decision::Blocked { rule },
                (2, Some(rule), None, None) => Decision::Parked { rule },
                (3, Some(rule), Some(approver), None) => Decision::Approved { rule, approver },
                (4, None, None, Some(code)) => Decision::Refused { code },
                _ => return Err(DecodeError::BadValue(tag::DECISION)),
            };
            Frame::Request(r)
        }
        KIND_RESPONSE => {
            let mut r = ResponseFrame {
                time_unix_us,
                endpoint: Cow::Borrowed(""),
                request: None,
                query_id: None,
                status: 0,
                code: None,
                success: None,
                rows: None,
                upstream_us: 0,
                total_us: 0,
                body: Bytes::new(),
            };
            let (mut endpoint, mut status, mut upstream_us, mut total_us) = (None, None, None, None);
            while let Some((field_tag, value)) = cursor.field()? {
                ordered(field_tag)?;
                match field_tag {
                    tag::ENDPOINT => endpoint = Some(short_text(value)?),
                    tag::QUERY_ID => r.query_id = Some(short_text(value)?),
                    tag::BODY => r.body = slice_body(value)?,
                    tag::REQUEST_RECORD => r.request = Some(RequestLink::to_record(uint_value(field_tag, value)?)),
                    tag::STATUS => {
                        let value = uint_value(field_tag, value)?;
                        status = Some(u16::try_from(value).map_err(|_| DecodeError::BadValue(field_tag))?);
                    }
                    tag::CODE => r.code = Some(short_text(value)?),
                    tag::SUCCESS => {
                        r.success = Some(match uint_value(field_tag, value)? {
                            0 => false,
                            1 => true,
                            _ => return Err(DecodeError::BadValue(field_tag)),
                        })
                    }
                    tag::ROWS => r.rows = Some(uint_value(field_tag, value)?),
                    tag::UPSTREAM_US => upstream_us = Some(uint_value(field_tag, value)?),
                    tag::TOTAL_US => total_us = Some(uint_value(field_tag, value)?),
                    other => return Err(DecodeError::BadTag(other)),
                }
            }
            r.endpoint = Cow::Owned(endpoint.ok_or(DecodeError::Missing(tag::ENDPOINT))?);
            r.status = status.ok_or(DecodeError::Missing(tag::STATUS))?;
            r.upstream_us = upstream_us.ok_or(DecodeError::Missing(tag::UPSTREAM_US))?;
            r.total_us = total_us.ok_or(DecodeError::Missing(tag::TOTAL_US))?;
            Frame::Response(r)
        }
        KIND_EVENT => {
            let (mut event, mut detail) = (None, None);
            while let Some((field_tag, value)) = cursor.field()? {
                ordered(field_tag)?;
                match field_tag {
                    tag::EVENT => event = Some(short_text(value)?),
                    tag::DETAIL => detail = Some(text(value, limits::EVENT_DETAIL_BYTES_MAX)?),
                    other => return Err(DecodeError::BadTag(other)),
                }
            }
            Frame::Event(EventFrame {
                time_unix_us,
                kind: EventKind::from_name(&event.ok_or(DecodeError::Missing(tag::EVENT))?),
                detail: detail.ok_or(DecodeError::Missing(tag::DETAIL))?,
            })
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(DecodedBody { record_index, frame })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_values_cannot_pass_for_another_field() {
        assert_eq!(detail_value("dba-1"), "dba-1");
        assert_eq!(detail_value("a query_id=X decision=deny"), r#""a query_id=X decision=deny""#);
        assert_eq!(detail_value("x\"y"), r#""x\"y""#);
        assert_eq!(detail_value("tab\there"), r#""tab\there""#);
        assert_eq!(detail_value(""), r#""""#);
    }

    pub(crate) fn request(sql: &str) -> Frame {
        Frame::Request(RequestFrame {
            time_unix_us: 1_700_000_000_000_000,
            endpoint: Cow::Borrowed("query-request"),
            principal: Principal {
                sub: Some("agent-7".into()),
                role: Some("ANALYST".into()),
                groups: vec!["analysts".into(), "ops".into()],
            },
            session_id: Some(-42),
            request_id: Some("6d2b8a56-3d0a-4a51-8f3c-2d9c1f0e7b44".into()),
            query_id: None,
            statement: Some(sql.into()),
            bindings: Some(r#"{"1":{"type":"TEXT","value":"x"}}"#.into()),
            agent_context: Some("trace=abc".into()),
            query_tag: Some("nightly".into()),
            decision: Decision::Approved { rule: "writes".into(), approver: "alice".into() },
            body: Bytes::from(format!(r#"{{"sqlText":"{sql}"}}"#)),
        })
    }

    fn round_trip(frame: &Frame, request_record: Option<u64>) -> (Vec<u8>, DecodedBody) {
        let mut body = Vec::new();
        encode_body(frame, 77, request_record, &mut body);
        let source = Bytes::from(body.clone());
        let decoded = decode_body(&source, 0, source.len()).unwrap();
        (body, decoded)
    }

    #[test]
    fn request_round_trips() {
        let frame = request("select 1");
        let (_, decoded) = round_trip(&frame, None);
        assert_eq!(decoded.record_index, 77);
        assert_eq!(decoded.frame, frame);
    }

    #[test]
    fn response_round_trips_with_its_link() {
        let frame = Frame::Response(ResponseFrame {
            time_unix_us: 5,
            endpoint: Cow::Borrowed("query-request"),
            request: None,
            query_id: Some("01b2".into()),
            status: 200,
            code: None,
            success: Some(true),
            rows: Some(3),
            upstream_us: 10,
            total_us: 20,
            body: Bytes::from_static(b"{\"success\":true}"),
        });
        let (_, decoded) = round_trip(&frame, Some(76));
        let Frame::Response(read) = decoded.frame else { panic!("not a response") };
        assert_eq!(read.request.as_ref().and_then(RequestLink::record_index), Some(76));
        assert_eq!(read.rows, Some(3));
        assert_eq!(read.body, Bytes::from_static(b"{\"success\":true}"));
    }

    #[test]
    fn every_decision_round_trips() {
        for decision in [
            Decision::Allowed,
            Decision::Blocked { rule: "r".into() },
            Decision::Parked { rule: "p".into() },
            Decision::Approved { rule: "a".into(), approver: "bob".into() },
            Decision::Refused { code: "390100".into() },
        ] {
            let Frame::Request(mut r) = request("x") else { unreachable!() };
            r.decision = decision;
            r.body = Bytes::new();
            let frame = Frame::Request(r);
            assert_eq!(round_trip(&frame, None).1.frame, frame);
        }
    }

    #[test]
    fn event_kinds_round_trip_by_name() {
        for kind in [EventKind::GatewayStart, EventKind::RecorderError, EventKind::Other("custom".into())] {
            let frame = Frame::Event(EventFrame { time_unix_us: 9, kind, detail: "why".into() });
            assert_eq!(round_trip(&frame, None).1.frame, frame);
        }
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        let (body, _) = round_trip(&request("select 1"), None);
        // Fields swapped out of order.
        let mut swapped = body[..BODY_HEADER_BYTES].to_vec();
        put_str(&mut swapped, tag::SUB, Some("a"));
        put_str(&mut swapped, tag::ENDPOINT, Some("login"));
        put_uint(&mut swapped, tag::DECISION, 0);
        let source = Bytes::from(swapped);
        assert_eq!(decode_body(&source, 0, source.len()), Err(DecodeError::BadTag(tag::ENDPOINT)));
        // A two-byte varint for zero.
        let mut padded = body[..BODY_HEADER_BYTES].to_vec();
        put_str(&mut padded, tag::ENDPOINT, Some("login"));
        padded.extend_from_slice(&[tag::DECISION, 2, 0x80, 0x00]);
        let source = Bytes::from(padded);
        assert_eq!(decode_body(&source, 0, source.len()), Err(DecodeError::BadVarint));
        // A decision kind with a field that kind does not have.
        let mut mixed = body[..BODY_HEADER_BYTES].to_vec();
        put_str(&mut mixed, tag::ENDPOINT, Some("login"));
        put_uint(&mut mixed, tag::DECISION, 0);
        put_str(&mut mixed, tag::DECISION_RULE, Some("r"));
        let source = Bytes::from(mixed);
        assert_eq!(decode_body(&source, 0, source.len()), Err(DecodeError::BadValue(tag::DECISION)));
    }

    #[test]
    fn no_field_is_named_like_a_credential() {
        for (_, name) in FIELD_NAMES {
            for word in ["password", "token", "secret", "key", "credential", "passcode", "authorization"] {
                assert!(!name.contains(word), "field {name} is named like a credential");
            }
        }
    }

    #[test]
    fn limits_refuse_rather_than_truncate() {
        let Frame::Request(mut r) = request("x") else { unreachable!() };
        r.agent_context = Some("a".repeat(limits::AGENT_CONTEXT_BYTES_MAX + 1));
        assert_eq!(Frame::Request(r).check_limits(), Err(LimitExceeded { field: "agent_context" }));
        assert_eq!(request("x").check_limits(), Ok(()));
    }

    #[test]
    fn the_estimate_bounds_the_encoding() {
        let frame = request("select * from t where a = 1");
        let mut body = Vec::new();
        encode_body(&frame, u64::MAX, None, &mut body);
        assert!(body.len() + RECORD_PREFIX_BYTES <= frame.encoded_len_estimate());
    }
}
