//! HTTP/1.1 message framing for both sides of the proxy: request and response heads (on
//! httparse), body framing rules, the chunked decoder and head serialisation. No I/O.
//!
//! The rules are strict on purpose, because a gateway that frames a message differently from
//! its peer can be smuggled past (RFC 9112 §6.3, the http-garden trophies):
//! - a message with both `Content-Length` and `Transfer-Encoding` is rejected;
//! - `Transfer-Encoding` must be exactly `chunked`, once;
//! - `Content-Length` must be 1 to 18 ASCII digits and appear once;
//! - obs-fold, bare CR or LF, NUL and spaces before the colon are rejected (requests);
//! - chunk sizes are 1 to 16 hex digits, extensions are tokens, and trailers are capped;
//! - an `Upgrade` request is rejected: the gateway never switches protocols.
//!
//! Every rejection says whose fault it is through [`HeadError`] and maps to one status code.

pub mod chunked;
pub mod gzip;

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt::Write as _;
use std::ops::Range;

pub use chunked::{ChunkedDecoder, ChunkedError};

/// The most header fields a message may carry.
pub const HEADERS_MAX: usize = 64;

/// Size limits applied to every message; all of them are flags or config keys.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request or response head, in bytes (431 beyond it).
    pub head_bytes_max: usize,
    /// Largest body as framed on the wire, in bytes (413 beyond it).
    pub body_bytes_max: usize,
    /// Largest body after gunzip, in bytes (413 beyond it).
    pub decompressed_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_bytes_max: 16 * 1024,
            body_bytes_max: 64 * 1024 * 1024,
            decompressed_bytes_max: 256 * 1024 * 1024,
        }
    }
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    Empty,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// A response body that runs until the peer closes (no length, no chunking).
    UntilClose,
}

/// Why a head was refused. Each variant maps to one status code and one line of log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head is longer than the limit, or has too many fields.
    #[error("the message head is larger than {limit} bytes or has too many fields")]
    TooLarge {
        /// The limit that was crossed.
        limit: usize,
    },
    /// httparse refused the syntax.
    #[error("malformed message head: {0}")]
    Syntax(&'static str),
    /// The head parsed but its framing is ambiguous or forbidden.
    #[error("forbidden framing: {0}")]
    Framing(&'static str),
    /// The declared body is larger than the limit.
    #[error("declared body of {declared} bytes is larger than {limit} bytes")]
    BodyTooLarge {
        /// What Content-Length said.
        declared: u64,
        /// The limit.
        limit: usize,
    },
}

impl HeadError {
    /// The status code a server answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge { .. } => 431,
            HeadError::BodyTooLarge { .. } => 413,
            HeadError::Syntax(_) | HeadError::Framing(_) => 400,
        }
    }
}

/// One header field, as ranges into the head's bytes (no copy, no allocation per field).
#[derive(Debug, Clone)]
struct Field {
    name: Range<usize>,
    value: Range<usize>,
}

/// The header fields of a parsed head, borrowed from the head's own bytes.
#[derive(Debug, Clone)]
pub struct Headers {
    bytes: Bytes,
    fields: Vec<Field>,
}

impl Headers {
    fn name_of(&self, field: &Field) -> &[u8] {
        &self.bytes[field.name.clone()]
    }

    /// All fields in order, as `(name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|f| (&self.bytes[f.name.clone()], &self.bytes[f.value.clone()]))
    }

    /// The value of the first field with this (case-insensitive) name.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| self.name_of(f).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| &self.bytes[f.value.clone()])
    }

    /// The value of the first field with this name, if it is valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// How many fields carry this name.
    pub fn count(&self, name: &str) -> usize {
        self.fields.iter().filter(|f| self.name_of(f).eq_ignore_ascii_case(name.as_bytes())).count()
    }

    /// Whether a comma-separated field (such as `Connection`) lists this token.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.lists(name.as_bytes(), token.as_bytes())
    }

    fn lists(&self, name: &[u8], token: &[u8]) -> bool {
        self.fields
            .iter()
            .filter(|f| self.name_of(f).eq_ignore_ascii_case(name))
            .flat_map(|f| self.bytes[f.value.clone()].split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    }

    /// Whether a field named `name` describes this hop only: hop-by-hop by its name
    /// ([`is_hop_by_hop`]) or listed in a `Connection` field (RFC 9110 §7.6.1).
    pub fn is_hop_field(&self, name: &[u8]) -> bool {
        is_hop_by_hop(name) || self.lists(b"connection", name)
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The method, as sent (`GET`, `POST`...).
    pub method: Method,
    /// The request target in origin form (`/path?query`).
    pub target: String,
    /// HTTP/1.0 (0) or HTTP/1.1 (1).
    pub minor_version: u8,
    /// The header fields.
    pub headers: Headers,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// Whether the client asked to close the connection after this exchange.
    pub close: bool,
    /// Length of the head on the wire, including the blank line.
    pub head_len: usize,
}

impl RequestHead {
    /// The path part of the target, without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query part of the target, without `?`, or "".
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }
}

/// The methods the gateway routes. Anything else is refused at the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// HEAD
    Head,
}

impl Method {
    fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            _ => return None,
        })
    }

    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
        }
    }
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The header fields.
    pub headers: Headers,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// Whether the connection must not be reused after this response.
    pub close: bool,
    /// Length of the head on the wire.
    pub head_len: usize,
}

fn httparse_error(e: httparse::Error) -> HeadError {
    HeadError::Syntax(match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => return HeadError::TooLarge { limit: HEADERS_MAX },
        httparse::Error::Version => "invalid HTTP version",
    })
}

/// Rejects a bare LF (an LF not preceded by CR) or a NUL anywhere in the head. httparse
/// tolerates bare LF line endings, which a peer may frame differently.
fn check_line_endings(head: &[u8]) -> Result<(), HeadError> {
    if memchr::memchr(0, head).is_some() {
        return Err(HeadError::Syntax("NUL byte in head"));
    }
    for lf in memchr::memchr_iter(b'\n', head) {
        if lf == 0 || head[lf - 1] != b'\r' {
            return Err(HeadError::Syntax("bare LF in head"));
        }
    }
    Ok(())
}

/// Whether `name` spells a framing or connection field with `_` for `-` (`Transfer_Encoding`).
/// Some servers normalise underscores, so such a field would frame the message differently
/// there than here; it is refused rather than forwarded.
fn disguises_a_framing_field(name: &[u8]) -> bool {
    const FRAMING: [&[u8]; 6] =
        [b"transfer-encoding", b"content-length", b"host", b"connection", b"upgrade", b"expect"];
    name.contains(&b'_')
        && FRAMING.iter().any(|field| {
            field.len() == name.len()
                && field.iter().zip(name).all(|(&f, &n)| f == n.to_ascii_lowercase() || (f == b'-' && n == b'_'))
        })
}

/// Parses `Content-Length`: 1 to 18 ASCII digits, nothing else (no sign, no `0x`, no list).
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Works out the body framing from the fields, applying the strict rules above.
fn framing_of(headers: &Headers, body_bytes_max: usize) -> Result<Option<BodyFraming>, HeadError> {
    let n_te = headers.count("transfer-encoding");
    let n_cl = headers.count("content-length");
    if n_te > 0 && n_cl > 0 {
        return Err(HeadError::Framing("both Content-Length and Transfer-Encoding"));
    }
    if n_te > 1 {
        return Err(HeadError::Framing("more than one Transfer-Encoding"));
    }
    if n_cl > 1 {
        return Err(HeadError::Framing("more than one Content-Length"));
    }
    if n_te == 1 {
        let te = headers.get("transfer-encoding").unwrap_or_default();
        if !te.eq_ignore_ascii_case(b"chunked") {
            return Err(HeadError::Framing("Transfer-Encoding other than exactly chunked"));
        }
        return Ok(Some(BodyFraming::Chunked));
    }
    if n_cl == 1 {
        let cl = headers.get("content-length").unwrap_or_default();
        let n = parse_content_length(cl).ok_or(HeadError::Framing("invalid Content-Length"))?;
        if n > body_bytes_max as u64 {
            return Err(HeadError::BodyTooLarge { declared: n, limit: body_bytes_max });
        }
        return Ok(Some(if n == 0 { BodyFraming::Empty } else { BodyFraming::Length(n) }));
    }
    Ok(None)
}

fn collect_fields(buf: &[u8], parsed: &[httparse::Header<'_>]) -> Vec<Field> {
    let base = buf.as_ptr() as usize;
    parsed
        .iter()
        .map(|h| {
            // httparse returns sub-slices of `buf`; their offsets are recovered by address.
            let name_start = h.name.as_ptr() as usize - base;
            let value_start = h.value.as_ptr() as usize - base;
            Field { name: name_start..name_start + h.name.len(), value: value_start..value_start + h.value.len() }
        })
        .collect()
}

/// Whether a header field may be written as it is: its name a token (RFC 9110, 5.6.2), its
/// value without control characters but horizontal tab.
pub fn is_field(name: &[u8], value: &[u8]) -> bool {
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    !name.is_empty() && name.iter().all(tchar) && value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// When a head that is still arriving is worth parsing again. httparse reads a head from its
/// first byte each time, so parsing after every read would cost a peer that sends its head a
/// byte at a time (a 16 KiB head in 16,384 segments) the square of its size in scanning. The
/// bytes are parsed when they first arrive (so garbage, a TLS hello on a plain port, say, is
/// refused at once), again each time they have doubled, and when a line ends the head (an
/// empty line after some content: CRLF CRLF, or the bare LFs the parser refuses by name);
/// each byte is looked at once here, so a head costs linear time however it is cut.
#[derive(Debug, Default)]
pub struct HeadScan {
    /// Bytes already looked at for the head's end.
    scanned: usize,
    /// Whether a byte other than CR or LF was seen (empty lines before a request line are
    /// skipped by the parser, so they end nothing).
    content: bool,
    /// The buffer's length at the last parse (0: never parsed).
    parsed_len: usize,
}

impl HeadScan {
    /// Whether `buf` (the head's bytes so far, growing between calls) should be parsed now.
    pub fn worth_parsing(&mut self, buf: &[u8]) -> bool {
        let from = self.scanned;
        self.scanned = buf.len();
        let ends = self.ends_in(buf, from);
        let parse = ends || self.parsed_len == 0 || buf.len() >= self.parsed_len.saturating_mul(2);
        if parse && !buf.is_empty() {
            self.parsed_len = buf.len();
        }
        parse && !buf.is_empty()
    }

    /// Whether an empty line ending the head ends in `buf[from..]`.
    fn ends_in(&mut self, buf: &[u8], from: usize) -> bool {
        let mut at = from;
        if !self.content {
            match buf[from..].iter().position(|&b| b != b'\r' && b != b'\n') {
                Some(i) => {
                    self.content = true;
                    at = from + i;
                }
                None => return false,
            }
        }
        // A line feed that follows a line feed, with or without a CR between, at or after
        // `at` (the bytes before `from` were looked at already, and ended nothing).
        memchr::memchr_iter(b'\n', &buf[at..]).any(|i| {
            let i = at + i;
            (i >= 1 && buf[i - 1] == b'\n') || (i >= 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n')
        })
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)` means more bytes are needed. The
/// head's bytes are copied into the result; the caller drops the first `head_len` bytes of
/// `buf` itself, keeping the body and any pipelined message after it.
pub fn parse_request_head(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut storage);
    let status = req.parse(buf).map_err(httparse_error)?;
    let head_len = match status {
        httparse::Status::Partial => {
            if buf.len() > limits.head_bytes_max {
                return Err(HeadError::TooLarge { limit: limits.head_bytes_max });
            }
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    if head_len > limits.head_bytes_max {
        return Err(HeadError::TooLarge { limit: limits.head_bytes_max });
    }
    check_line_endings(&buf[..head_len])?;
    let method_str = req.method.unwrap_or_default();
    let method = Method::parse(method_str).ok_or(HeadError::Syntax("unsupported method"))?;
    // No driver sends HEAD, and its answer must have no body: refused (and the connection
    // closed) rather than answered with one the agent would read as its next answer.
    if method == Method::Head {
        return Err(HeadError::Syntax("unsupported method"));
    }
    let target = req.path.unwrap_or_default();
    if !target.starts_with('/') {
        return Err(HeadError::Syntax("request target is not in origin form"));
    }
    let target = target.to_owned();
    let minor_version = req.version.unwrap_or(1);
    let fields = collect_fields(buf, req.headers);
    let headers = Headers { bytes: Bytes::copy_from_slice(&buf[..head_len]), fields };

    if headers.count("upgrade") > 0 {
        return Err(HeadError::Framing("protocol upgrade requested"));
    }
    if headers.iter().any(|(name, _)| disguises_a_framing_field(name)) {
        return Err(HeadError::Framing("a header name disguises a framing field with underscores"));
    }
    if headers.count("host") > 1 {
        return Err(HeadError::Framing("more than one Host"));
    }
    if minor_version == 0 && headers.count("transfer-encoding") > 0 {
        return Err(HeadError::Framing("Transfer-Encoding in HTTP/1.0"));
    }
    let framing = framing_of(&headers, limits.body_bytes_max)?.unwrap_or(BodyFraming::Empty);
    let close = if minor_version == 0 {
        !headers.has_token("connection", "keep-alive")
    } else {
        headers.has_token("connection", "close")
    };
    Ok(Some(RequestHead { method, target, minor_version, headers, framing, close, head_len }))
}

/// Parses a response head at the start of `buf`, for a request made with `request_method`.
/// `Ok(None)` means more bytes are needed. Interim 1xx responses are returned like others; the
/// caller skips them.
pub fn parse_response_head(
    buf: &[u8],
    request_method: Method,
    limits: &Limits,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut res = httparse::Response::new(&mut storage);
    let status = res.parse(buf).map_err(httparse_error)?;
    let head_len = match status {
        httparse::Status::Partial => {
            if buf.len() > limits.head_bytes_max {
                return Err(HeadError::TooLarge { limit: limits.head_bytes_max });
            }
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    if head_len > limits.head_bytes_max {
        return Err(HeadError::TooLarge { limit: limits.head_bytes_max });
    }
    check_line_endings(&buf[..head_len])?;
    let code = res.code.unwrap_or(0);
    // The gateway never asks to switch protocols: what follows would not be HTTP.
    if code == 101 {
        return Err(HeadError::Syntax("a 101 Switching Protocols answer nobody asked for"));
    }
    let minor_version = res.version.unwrap_or(1);
    let fields = collect_fields(buf, res.headers);
    let headers = Headers { bytes: Bytes::copy_from_slice(&buf[..head_len]), fields };
    let declared = framing_of(&headers, limits.body_bytes_max)?;
    let no_body = request_method == Method::Head || (100..200).contains(&code) || code == 204 || code == 304;
    let framing = match declared {
        _ if no_body => BodyFraming::Empty,
        Some(f) => f,
        None => BodyFraming::UntilClose,
    };
    // An HTTP/1.0 answer with Transfer-Encoding is framed faultily (RFC 9112, 6.1): read as
    // declared, then the connection is not used again.
    let close = framing == BodyFraming::UntilClose
        || if minor_version == 0 {
            !headers.has_token("connection", "keep-alive") || headers.count("transfer-encoding") > 0
        } else {
            headers.has_token("connection", "close")
        };
    Ok(Some(ResponseHead { status: code, headers, framing, close, head_len }))
}

/// Fields that describe one hop and are never forwarded (RFC 9110 §7.6.1), plus the framing
/// fields the gateway always recomputes.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// The reason phrase for the status codes the gateway writes itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Builds a message head: a start line, then fields, then the blank line.
#[derive(Debug)]
pub struct HeadWriter {
    buf: BytesMut,
}

impl HeadWriter {
    /// Starts a request head.
    pub fn request(method: Method, target: &str) -> HeadWriter {
        let mut buf = BytesMut::with_capacity(512);
        buf.put_slice(method.as_str().as_bytes());
        buf.put_u8(b' ');
        buf.put_slice(target.as_bytes());
        buf.put_slice(b" HTTP/1.1\r\n");
        HeadWriter { buf }
    }

    /// Starts a response head.
    pub fn response(status: u16) -> HeadWriter {
        let mut buf = BytesMut::with_capacity(256);
        // Writing into a BytesMut cannot fail.
        let _ = write!(buf, "HTTP/1.1 {status} {}\r\n", reason(status));
        HeadWriter { buf }
    }

    /// Adds a field. Names and values come from parsed heads, from constants, or from an
    /// upstream answer's `chunkHeaders` checked by [`is_field`]; so they hold no CR or LF,
    /// which is asserted in debug builds.
    pub fn field(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        debug_assert!(is_field(name, value));
        self.buf.put_slice(name);
        self.buf.put_slice(b": ");
        self.buf.put_slice(value);
        self.buf.put_slice(b"\r\n");
        self
    }

    /// Adds `Content-Length`.
    pub fn content_length(&mut self, n: usize) -> &mut Self {
        // Writing into a BytesMut cannot fail.
        let _ = write!(self.buf, "content-length: {n}\r\n");
        self
    }

    /// Ends the head and returns its bytes.
    pub fn finish(mut self) -> BytesMut {
        self.buf.put_slice(b"\r\n");
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request_head(raw.as_bytes(), &Limits::default())
    }

    fn res(raw: &str) -> Result<Option<ResponseHead>, HeadError> {
        parse_response_head(raw.as_bytes(), Method::Get, &Limits::default())
    }

    /// HEAD's answer has no body, which the gateway's answers (a 404's JSON) always have: the
    /// agent would read that body as the start of its next answer.
    #[test]
    fn odd_upstream_answers_are_refused_or_end_their_connection() {
        assert!(matches!(res("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"), Err(HeadError::Syntax(_))));
        let head =
            res("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap().unwrap();
        assert!(head.close, "an HTTP/1.0 answer with Transfer-Encoding ends its connection");
        let head = res("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi").unwrap().unwrap();
        assert!(!head.close);
        assert_eq!(res("HTTP/1.1 100 Continue\r\n\r\n").unwrap().unwrap().framing, BodyFraming::Empty);
    }

    /// Feeds `bytes` to a [`HeadScan`] in pieces of `step` bytes, parsing when it says so, as
    /// the connection's head reader does; returns how many parses it took and what the last
    /// one found.
    fn scan_in_pieces(bytes: &[u8], step: usize) -> (usize, Result<Option<RequestHead>, HeadError>) {
        let (mut scan, mut parses, mut last) = (HeadScan::default(), 0, Ok(None));
        for end in (step..bytes.len() + step).step_by(step).map(|e| e.min(bytes.len())) {
            if scan.worth_parsing(&bytes[..end]) {
                parses += 1;
                last = parse_request_head(&bytes[..end], &Limits::default());
                if !matches!(last, Ok(None)) {
                    break;
                }
            }
        }
        (parses, last)
    }

    /// A head sent a byte at a time is parsed a few times, not once a byte (httparse starts
    /// from the first byte each time: a 16 KiB head would cost 134 MB of scanning), and still
    /// as soon as its empty line arrives, however it is cut.
    #[test]
    fn a_head_arriving_a_byte_at_a_time_is_parsed_a_few_times() {
        let mut head = String::from("POST /queries/v1/query-request HTTP/1.1\r\nHost: gw\r\n");
        for i in 0..40 {
            head.push_str(&format!("X-Padding-{i}: {}\r\n", "a".repeat(360)));
        }
        head.push_str("\r\n");
        for step in [1, 2, 3, 7, 100, 4096, head.len()] {
            let (parses, last) = scan_in_pieces(head.as_bytes(), step);
            let parsed = last.expect("a valid head").expect("a complete head");
            assert_eq!(parsed.head_len, head.len(), "cut every {step} bytes");
            assert!(parses <= 16, "cut every {step} bytes: {parses} parses");
        }
        // Empty lines before the request line end nothing (the parser skips them).
        let (parses, last) = scan_in_pieces("\r\n".repeat(4000).as_bytes(), 1);
        assert!(matches!(last, Ok(None)) && parses <= 16, "{parses} parses");
        // A head ending in bare line feeds is parsed (and refused by name) when they arrive,
        // as is garbage at once, a TLS hello on a plain port say.
        let (_, last) = scan_in_pieces(b"GET / HTTP/1.1\nHost: gw\n\n", 1);
        assert!(matches!(last, Err(HeadError::Syntax(_))), "{last:?}");
        let (parses, last) = scan_in_pieces(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 64);
        assert!(last.is_err() && parses == 1, "{parses} parses: {last:?}");
    }

    #[test]
    fn fields_a_connection_field_names_are_hop_fields() {
        let head = res("HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Foo\r\nconnection: x-bar\r\nX-Foo: 1\r\n\
                        X-Bar: 2\r\nX-Baz: 3\r\ncontent-length: 0\r\n\r\n")
        .unwrap()
        .unwrap();
        for hop in ["x-foo", "X-BAR", "keep-alive", "transfer-encoding"] {
            assert!(head.headers.is_hop_field(hop.as_bytes()), "{hop}");
        }
        assert!(!head.headers.is_hop_field(b"x-baz"));
        assert!(!head.headers.is_hop_field(b"x-fo"));
    }

    #[test]
    fn head_requests_are_refused_at_the_head() {
        assert!(matches!(req("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"), Err(HeadError::Syntax("unsupported method"))));
        assert!(matches!(req("TRACE / HTTP/1.1\r\nHost: x\r\n\r\n"), Err(HeadError::Syntax("unsupported method"))));
        assert!(req("GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().is_some());
    }

    #[test]
    fn fields_to_write_are_tokens_and_text() {
        assert!(is_field(b"x-amz-server-side-encryption-customer-key", b"abc+/== \t"));
        assert!(!is_field(b"", b"v"));
        assert!(!is_field(b"x y", b"v"));
        assert!(!is_field(b"x:y", b"v"));
        assert!(!is_field(b"x", b"k\r\nHost: evil"));
        assert!(!is_field(b"x", b"k\nHost: evil"));
        assert!(!is_field(b"x", b"k\0"));
        assert!(!is_field(b"x\r\nHost", b"v"));
    }

    #[test]
    fn parses_a_simple_post() {
        let head =
            req("POST /queries/v1/query-request?requestId=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap()
                .unwrap();
        assert_eq!(head.method, Method::Post);
        assert_eq!(head.path(), "/queries/v1/query-request");
        assert_eq!(head.query(), "requestId=1");
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert!(!head.close);
        assert_eq!(head.headers.get_str("HOST"), Some("x"));
    }

    #[test]
    fn partial_head_needs_more() {
        assert!(req("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn rejects_ambiguous_framing() {
        let cases = [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: ,chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent_length: 5\r\n\r\n",
        ];
        for case in cases {
            let err = req(case).expect_err(case);
            assert_eq!(err.status(), 400, "{case}: {err}");
        }
    }

    #[test]
    fn rejects_bad_syntax() {
        let cases = [
            "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            "GET / HTTP/1.1\nHost: x\n\n",
            "GET / HTTP/1.1\r\nHost: x\rY: z\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\0\r\n\r\n",
            "GET http://evil/ HTTP/1.1\r\n\r\n",
            "BREW / HTTP/1.1\r\n\r\n",
        ];
        for case in cases {
            let err = req(case).expect_err(case);
            assert_eq!(err.status(), 400, "{case:?}: {err}");
        }
    }

    #[test]
    fn oversize_head_is_431_and_oversize_body_is_413() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert_eq!(req(&big).unwrap_err().status(), 431);
        let partial_big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(20_000));
        assert_eq!(req(&partial_big).unwrap_err().status(), 431);
        let many: String = (0..100).map(|i| format!("X{i}: 1\r\n")).collect();
        assert_eq!(req(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err().status(), 431);
        let huge = "POST / HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n";
        assert_eq!(req(huge).unwrap_err().status(), 413);
    }

    #[test]
    fn connection_close_and_http10() {
        assert!(req("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap().close);
        assert!(req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().close);
        assert!(!req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap().unwrap().close);
    }

    #[test]
    fn response_framing() {
        let r = res("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap().unwrap();
        assert_eq!((r.status, r.framing, r.close), (200, BodyFraming::Length(2), false));
        let r = res("HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((r.framing, r.close), (BodyFraming::UntilClose, true));
        let r = res("HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.framing, BodyFraming::Empty);
        let both = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(res(both).is_err());
    }

    #[test]
    fn writes_heads() {
        let mut w = HeadWriter::response(200);
        w.field(b"content-type", b"application/json").content_length(2);
        assert_eq!(&w.finish()[..], b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n");
    }

    #[test]
    fn content_length_digits_only() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"123"), Some(123));
        assert_eq!(parse_content_length(b"1_0"), None);
        assert_eq!(parse_content_length(b" 1"), None);
        assert_eq!(parse_content_length(b"9999999999999999999"), None);
    }
}
