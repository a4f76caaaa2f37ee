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
    /// The body takes more bytes on the wire (data and framing) than the limit.
    #[error("chunked body larger than {limit} bytes")]
    TooLarge {
        /// The limit.
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
    /// Bytes consumed off the wire: data and framing (size lines, extensions, CRLFs,
    /// trailers), all counted against the limit, so that framing cannot make a body cost
    /// more than its cap to read.
    wire: usize,
    limit: usize,
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

/// Finds a CRLF-terminated line at the start of `buf`; a bare CR or LF is an error.
fn find_line(buf: &[u8], max: usize) -> Result<Option<usize>, ()> {
    let window = &buf[..buf.len().min(max)];
    match memchr::memchr2(b'\r', b'\n', window) {
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
    /// A decoder that refuses bodies taking more than `limit` bytes on the wire, framing
    /// included (so no more than `limit` decoded bytes either).
    pub fn new(limit: usize) -> ChunkedDecoder {
        ChunkedDecoder { state: State::Size, wire: 0, limit }
    }

    /// Counts `n` bytes consumed off the wire against the limit.
    fn consume(&mut self, input: &mut BytesMut, n: usize) -> Result<(), ChunkedError> {
        input.advance(n);
        self.wire += n;
        if self.wire > self.limit {
            return Err(ChunkedError::TooLarge { limit: self.limit });
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
                    if size > (self.limit - self.wire) as u64 {
                        return Err(ChunkedError::TooLarge { limit: self.limit });
                    }
                    self.state = if size == 0 { State::Trailer(0) } else { State::Data(size) };
                }
                State::Data(left) => {
                    if input.is_empty() {
                        return Ok(false);
                    }
                    let n = (left as usize).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    self.consume(input, n)?;
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

    /// The limit counts the wire, framing included: chunks of one byte with a kilobyte of
    /// extension each would otherwise cost a thousand times the cap to read.
    #[test]
    fn framing_counts_against_the_limit() {
        let ext = "x".repeat(1000);
        let wire: Vec<u8> =
            (0..10).flat_map(|_| format!("1;{ext}\r\nX\r\n").into_bytes()).chain(*b"0\r\n\r\n").collect();
        assert_eq!(decode_all(&wire, 4096), Err(ChunkedError::TooLarge { limit: 4096 }));
        assert_eq!(decode_bytewise(&wire, 4096), Err(ChunkedError::TooLarge { limit: 4096 }));
        // Refused once past the cap, not after reading it all.
        let mut dec = ChunkedDecoder::new(4096);
        let mut input = BytesMut::from(&wire[..]);
        assert!(dec.decode(&mut input, &mut BytesMut::new()).is_err());
        assert!(wire.len() - input.len() <= 4096 + 1100, "{} bytes consumed", wire.len() - input.len());
        // Under a cap the whole wire fits in, the body decodes.
        assert_eq!(decode_all(&wire, wire.len()).unwrap().0, b"XXXXXXXXXX");
        // The framing of a body exactly at the cap: data and CRLFs count.
        assert_eq!(decode_all(b"5\r\nhello\r\n0\r\n\r\n", 15).unwrap().0, b"hello");
        assert_eq!(decode_all(b"5\r\nhello\r\n0\r\n\r\n", 14), Err(ChunkedError::TooLarge { limit: 14 }));
    }

    #[test]
    fn quoted_extensions_and_whitespace() {
        let (body, _) = decode_all(b"3 ; a = \"x;y\"\r\nabc\r\n0\r\n\r\n", 64).unwrap();
        assert_eq!(body, b"abc");
    }
}
