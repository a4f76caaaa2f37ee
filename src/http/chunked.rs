//! An incremental decoder for `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1). No I/O.
//!
//! Strict where peers disagree: chunk sizes are 1 to 16 hex digits with no sign, prefix or
//! padding; extensions must be `;token[=token|quoted-string]`; every line ends in CRLF; the
//! trailer section is skipped but capped. The decoder never buffers more than one line.

use bytes::{Buf, BytesMut};

/// Longest chunk-size line (size, extensions, CRLF) the decoder accepts.
pub const CHUNK_LINE_BYTES_MAX: usize = 1024;
/// Largest trailer section the decoder skips.
pub const TRAILER_BYTES_MAX: usize = 8 * 1024;

/// Why a chunked body was refused. All are the sender's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    /// The chunk-size line is not valid.
    #[error("invalid chunk size line")]
    BadSize,
    /// The chunk extension is not valid.
    #[error("invalid chunk extension")]
    BadExtension,
    /// A chunk's data is not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    BadTerminator,
    /// The trailer section is malformed or too large.
    #[error("invalid or oversized trailer section")]
    BadTrailer,
    /// The decoded body is larger than the limit.
    #[error("chunked body larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body takes more bytes on the wire, framing included (size lines, extensions,
    /// CRLFs, trailers), than its limit allows ([`wire_limit`]).
    #[error("chunked body takes more than {limit} bytes on the wire (its chunk framing)")]
    FramingTooLarge {
        /// The limit on the wire.
        limit: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a chunk-size line.
    Size,
    /// Inside chunk data, with this many bytes left.
    Data(u64),
    /// Waiting for the CRLF after chunk data.
    DataEnd,
    /// Inside the trailer section, having consumed this many bytes of it.
    Trailer(usize),
    /// The last chunk and trailers have been read.
    Done,
}

/// Decodes a chunked body incrementally: feed it the bytes read so far, it moves decoded
/// data into `out` and leaves undecoded bytes in `input`.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    decoded: usize,
    limit: usize,
    /// Bytes consumed off the wire: data and framing (size lines, extensions, CRLFs,
    /// trailers), counted against [`wire_limit`], so that framing cannot make a body cost
    /// many times its cap to read.
    wire: usize,
    wire_limit: usize,
}

/// The most bytes a chunked body of at most `limit` decoded bytes may take on the wire: room
/// for framing of an eighth of the data (a 4 KiB chunk's is 8 bytes) and 64 KiB besides, so
/// that ordinary chunking never comes near it, while one-byte chunks with a kilobyte of
/// extension each do.
pub fn wire_limit(limit: usize) -> usize {
    limit.saturating_add(limit / 8).saturating_add(64 * 1024)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_size_line(line: &[u8]) -> Result<u64, ChunkedError> {
    let digits_end = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
    if digits_end == 0 || digits_end > 16 {
        return Err(ChunkedError::BadSize);
    }
    let size = line[..digits_end].iter().try_fold(0u64, |acc, &d| {
        let v = (d as char).to_digit(16).unwrap_or(0) as u64;
        acc.checked_mul(16).map(|a| a + v)
    });
    let size = size.ok_or(ChunkedError::BadSize)?;
    check_extensions(&line[digits_end..])?;
    Ok(size)
}

/// `*( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`, with BWS limited to SP and HTAB.
fn check_extensions(mut rest: &[u8]) -> Result<(), ChunkedError> {
    let skip_ws = |s: &mut &[u8]| {
        while let [b' ' | b'\t', tail @ ..] = *s {
            *s = tail;
        }
    };
    let token = |s: &mut &[u8]| -> bool {
        let n = s.iter().position(|&b| !is_tchar(b)).unwrap_or(s.len());
        *s = &s[n..];
        n > 0
    };
    loop {
        if rest.is_empty() {
            return Ok(());
        }
        // Whitespace is allowed only before a `;` (BWS), never trailing on its own.
        skip_ws(&mut rest);
        let [b';', tail @ ..] = rest else { return Err(ChunkedError::BadExtension) };
        rest = tail;
        skip_ws(&mut rest);
        if !token(&mut rest) {
            return Err(ChunkedError::BadExtension);
        }
        skip_ws(&mut rest);
        if let [b'=', tail @ ..] = rest {
            rest = tail;
            skip_ws(&mut rest);
            if let [b'"', tail @ ..] = rest {
                rest = tail;
                loop {
                    match rest {
                        [b'"', tail @ ..] => {
                            rest = tail;
                            break;
                        }
                        [b'\\', c, tail @ ..] if *c != b'\r' && *c != b'\n' && *c != 0 => rest = tail,
                        [c, tail @ ..] if *c == b'\t' || (*c >= 0x20 && *c != 0x7f) => rest = tail,
                        _ => return Err(ChunkedError::BadExtension),
                    }
                }
            } else if !token(&mut rest) {
                return Err(ChunkedError::BadExtension);
            }
        }
    }
}

/// Finds a CRLF-terminated line of at most `max` bytes (CRLF included) at the start of `buf`;
/// a bare CR or LF, or a longer line, is an error.
fn find_line(buf: &[u8], max: usize) -> Result<Option<usize>, ()> {
    let window = &buf[..buf.len().min(max)];
    match memchr::memchr2(b'\r', b'\n', window) {
        // The CR is the line's last byte but one: its LF would be the `max + 1`-th.
        Some(i) if i + 2 > max => Err(()),
        Some(i) if window.get(i) == Some(&b'\r') => match buf.get(i + 1) {
            Some(b'\n') => Ok(Some(i)),
            Some(_) => Err(()),
            None => Ok(None),
        },
        Some(_) => Err(()),
        None if buf.len() >= max => Err(()),
        None => Ok(None),
    }
}

impl ChunkedDecoder {
    /// A decoder that refuses bodies larger than `limit` decoded bytes, or taking more than
    /// [`wire_limit`]`(limit)` bytes on the wire.
    pub fn new(limit: usize) -> ChunkedDecoder {
        ChunkedDecoder { state: State::Size, decoded: 0, limit, wire: 0, wire_limit: wire_limit(limit) }
    }

    /// Counts `n` bytes consumed off the wire against the wire limit.
    fn consume(&mut self, input: &mut BytesMut, n: usize) -> Result<(), ChunkedError> {
        input.advance(n);
        self.wire += n;
        if self.wire > self.wire_limit {
            return Err(ChunkedError::FramingTooLarge { limit: self.wire_limit });
        }
        Ok(())
    }

    /// Whether the final chunk and the trailer section have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much of `input` as possible into `out`. Returns `Ok(true)` once the body is
    /// complete; bytes after the body stay in `input` (a pipelined next message).
    pub fn decode(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<bool, ChunkedError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(end) = find_line(input, CHUNK_LINE_BYTES_MAX).map_err(|()| ChunkedError::BadSize)? else {
                        return Ok(false);
                    };
                    let size = parse_size_line(&input[..end])?;
                    self.consume(input, end + 2)?;
                    if size > (self.limit - self.decoded) as u64 {
                        return Err(ChunkedError::TooLarge { limit: self.limit });
                    }
                    self.state = if size == 0 { State::Trailer(0) } else { State::Data(size) };
                }
                State::Data(left) => {
                    if input.is_empty() {
                        return Ok(false);
                    }
                    let n = (left as usize).min(input.len());
                    if out.capacity() - out.len() < n {
                        // Grown by doubling, `out` could reach twice the limit. Once it would
                        // pass half of what it may still come to hold, it moves (once) into a
                        // buffer of exactly that.
                        let most = out.len() + (self.limit - self.decoded);
                        if out.capacity().saturating_mul(2) > most {
                            let mut exact = BytesMut::with_capacity(most);
                            exact.extend_from_slice(out);
                            *out = exact;
                        }
                    }
                    out.extend_from_slice(&input[..n]);
                    self.consume(input, n)?;
                    self.decoded += n;
                    self.state = if n as u64 == left { State::DataEnd } else { State::Data(left - n as u64) };
                }
                State::DataEnd => {
                    if input.len() < 2 {
                        return Ok(false);
                    }
                    if &input[..2] != b"\r\n" {
                        return Err(ChunkedError::BadTerminator);
                    }
                    self.consume(input, 2)?;
                    self.state = State::Size;
                }
                State::Trailer(consumed) => {
                    let room = TRAILER_BYTES_MAX - consumed;
                    let Some(end) =
                        find_line(input, room.min(CHUNK_LINE_BYTES_MAX * 8)).map_err(|()| ChunkedError::BadTrailer)?
                    else {
                        return Ok(false);
                    };
                    let line_empty = end == 0;
                    if !line_empty && !input[..end].contains(&b':') {
                        return Err(ChunkedError::BadTrailer);
                    }
                    self.consume(input, end + 2)?;
                    if line_empty {
                        self.state = State::Done;
                        return Ok(true);
                    }
                    let consumed = consumed + end + 2;
                    if consumed >= TRAILER_BYTES_MAX {
                        return Err(ChunkedError::BadTrailer);
                    }
                    self.state = State::Trailer(consumed);
                }
                State::Done => return Ok(true),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(wire: &[u8], limit: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkedError> {
        let mut dec = ChunkedDecoder::new(limit);
        let mut input = BytesMut::from(wire);
        let mut out = BytesMut::new();
        let done = dec.decode(&mut input, &mut out)?;
        assert!(done, "body incomplete");
        Ok((out.to_vec(), input.to_vec()))
    }

    /// Feeds the wire one byte at a time, as a slow peer would.
    fn decode_bytewise(wire: &[u8], limit: usize) -> Result<Vec<u8>, ChunkedError> {
        let mut dec = ChunkedDecoder::new(limit);
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        for &b in wire {
            input.extend_from_slice(&[b]);
            if dec.decode(&mut input, &mut out)? {
                return Ok(out.to_vec());
            }
        }
        panic!("body incomplete")
    }

    #[test]
    fn the_decoded_body_never_holds_more_than_its_limit() {
        let limit = 100_000;
        let mut wire = Vec::new();
        for _ in 0..100 {
            wire.extend_from_slice(b"3e8\r\n");
            wire.extend_from_slice(&[b'x'; 1000]);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let mut dec = ChunkedDecoder::new(limit);
        let (mut input, mut out) = (BytesMut::new(), BytesMut::new());
        // A few chunks at a time, as reads bring them; doubling would have ended at 128,000.
        let mut done = false;
        for piece in wire.chunks(3000) {
            input.extend_from_slice(piece);
            done = dec.decode(&mut input, &mut out).unwrap();
            assert!(out.capacity() <= limit, "{} bytes held for a body of at most {limit}", out.capacity());
        }
        assert!(done);
        assert_eq!(out.len(), limit);
    }

    #[test]
    fn decodes_chunks_and_keeps_pipelined_bytes() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (body, rest) = decode_all(wire, 1024).unwrap();
        assert_eq!(body, b"hello, world");
        assert_eq!(rest, b"NEXT");
        assert_eq!(decode_bytewise(wire, 1024).unwrap(), b"hello, world");
    }

    #[test]
    fn rejects_malformed_sizes_and_extensions() {
        let cases: [&[u8]; 12] = [
            b"\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5;\r\nhello\r\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"ffffffffffffffff\r\n",
        ];
        for case in cases {
            let r = decode_all(case, 1 << 20);
            assert!(r.is_err(), "{:?} was accepted", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn enforces_the_decoded_limit() {
        assert_eq!(decode_all(b"5\r\nhello\r\n0\r\n\r\n", 4), Err(ChunkedError::TooLarge { limit: 4 }));
    }

    /// The wire is capped too, framing included: chunks of one byte with a kilobyte of
    /// extension each would otherwise cost a thousand times the cap to read. Ordinary framing
    /// (4 KiB chunks, 8 bytes each) stays far inside it.
    #[test]
    fn framing_counts_against_a_wire_limit() {
        let ext = "x".repeat(1000);
        let chunk = format!("1;{ext}\r\nX\r\n");
        let wire: Vec<u8> = chunk.repeat(100).into_bytes().into_iter().chain(*b"0\r\n\r\n").collect();
        let refused = ChunkedError::FramingTooLarge { limit: wire_limit(4096) };
        assert_eq!(decode_all(&wire, 4096), Err(refused.clone()));
        assert_eq!(decode_bytewise(&wire, 4096), Err(refused));
        // Refused once past the wire limit, not after reading it all.
        let mut dec = ChunkedDecoder::new(4096);
        let mut input = BytesMut::from(&wire[..]);
        assert!(dec.decode(&mut input, &mut BytesMut::new()).is_err());
        let consumed = wire.len() - input.len();
        assert!(consumed <= wire_limit(4096) + chunk.len(), "{consumed} bytes consumed");
        // A body of exactly its limit in 4 KiB chunks decodes: the data is what is capped.
        let data = vec![b'a'; 1 << 20];
        let mut chunked = Vec::new();
        for piece in data.chunks(4096) {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(decode_all(&chunked, data.len()).unwrap().0, data);
        assert_eq!(decode_all(&chunked, data.len() - 1), Err(ChunkedError::TooLarge { limit: data.len() - 1 }));
    }

    /// A size line of `CHUNK_LINE_BYTES_MAX` bytes, CRLF included, is read; one byte more is not,
    /// however the bytes arrive.
    #[test]
    fn size_lines_are_capped_at_their_limit_crlf_included() {
        let line = |len: usize| format!("1;{}\r\n", "x".repeat(len - 4));
        let wire = |len: usize| format!("{}X\r\n0\r\n\r\n", line(len)).into_bytes();
        assert_eq!(line(CHUNK_LINE_BYTES_MAX).len(), CHUNK_LINE_BYTES_MAX);
        assert_eq!(decode_all(&wire(CHUNK_LINE_BYTES_MAX), 16).unwrap().0, b"X");
        assert_eq!(decode_bytewise(&wire(CHUNK_LINE_BYTES_MAX), 16).unwrap(), b"X");
        assert_eq!(decode_all(&wire(CHUNK_LINE_BYTES_MAX + 1), 16), Err(ChunkedError::BadSize));
        assert_eq!(decode_bytewise(&wire(CHUNK_LINE_BYTES_MAX + 1), 16), Err(ChunkedError::BadSize));
    }

    #[test]
    fn quoted_extensions_and_whitespace() {
        let (body, _) = decode_all(b"3 ; a = \"x;y\"\r\nabc\r\n0\r\n\r\n", 16).unwrap();
        assert_eq!(body, b"abc");
    }
}
