//! Byte streams (plain TCP or TLS, either side) and a buffered connection that reads whole
//! HTTP messages off them under size limits and deadlines. Every wait here has a deadline.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::http::{
    self, BodyFraming, ChunkedDecoder, ChunkedError, HeadError, HeadScan, Limits, Method, RequestHead, ResponseHead,
};

/// A TCP stream, in clear or under TLS, as either side of the proxy sees it.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS terminated by the gateway (downstream).
    ServerTls(Box<monoio_rustls::ServerTlsStream<TcpStream>>),
    /// TLS originated by the gateway (upstream).
    ClientTls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

impl AsyncReadRent for Stream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::ServerTls(s) => s.read(buf).await,
            Stream::ClientTls(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.readv(buf).await,
            Stream::ServerTls(s) => s.readv(buf).await,
            Stream::ClientTls(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for Stream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.write(buf).await,
            Stream::ServerTls(s) => s.write(buf).await,
            Stream::ClientTls(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.writev(buf).await,
            Stream::ServerTls(s) => s.writev(buf).await,
            Stream::ClientTls(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush().await,
            Stream::ServerTls(s) => s.flush().await,
            Stream::ClientTls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::ServerTls(s) => s.shutdown().await,
            Stream::ClientTls(s) => s.shutdown().await,
        }
    }
}

/// Why a message could not be read. Whose fault it is decides what is answered.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed before a complete message.
    #[error("the peer closed the connection mid-message")]
    Closed,
    /// A deadline passed.
    #[error("timed out waiting for the peer")]
    Timeout,
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// The head broke a framing rule or a limit.
    #[error(transparent)]
    Head(#[from] HeadError),
    /// The chunked body is malformed or too large.
    #[error(transparent)]
    Chunked(#[from] ChunkedError),
    /// The body is larger than the limit.
    #[error("body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
}

impl ReadError {
    /// The status a server answers this with, if it answers at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            ReadError::Head(e) => Some(e.status()),
            ReadError::Chunked(ChunkedError::TooLarge { .. } | ChunkedError::FramingTooLarge { .. })
            | ReadError::BodyTooLarge { .. } => Some(413),
            ReadError::Chunked(_) => Some(400),
            ReadError::Timeout => Some(408),
            ReadError::Closed | ReadError::Io(_) => None,
        }
    }
}

/// A stream with its read buffer: bytes read past one message stay for the next.
pub struct Conn {
    /// The stream.
    stream: Stream,
    buf: BytesMut,
    read_size: usize,
    /// Bytes read off the wire so far.
    pub bytes_read: u64,
    /// The stream's socket, for [`Conn::peer_sent_more`] (TLS streams do not lend it).
    socket: RawFd,
    /// A read on a TLS stream was abandoned mid-flight (at its deadline, or for a drain).
    /// monoio-rustls lends its read buffer to the read's future, and its next read would panic
    /// the core's thread: later reads fail at once (writes are still safe).
    read_abandoned: bool,
    /// The same for a write (or a shutdown): later reads and writes fail at once (a TLS read
    /// may write an alert).
    write_abandoned: bool,
}

impl Conn {
    /// Wraps a stream whose own TCP socket is `socket` (read off the `TcpStream` before it is
    /// wrapped: TLS streams do not lend it); `read_size` is how much is asked of each read.
    pub fn new(stream: Stream, socket: RawFd, read_size: usize) -> Conn {
        Conn {
            stream,
            buf: BytesMut::with_capacity(read_size),
            read_size,
            bytes_read: 0,
            socket,
            read_abandoned: false,
            write_abandoned: false,
        }
    }

    /// Whether the peer sent anything (bytes, or its end) that was not read yet, looked at
    /// without reading it: an idle upstream connection holding bytes nobody asked for would
    /// answer the next request, perhaps another agent's, with them.
    pub fn peer_sent_more(&self) -> bool {
        // A stream whose read or write was abandoned is not reused either.
        if !self.buf.is_empty() || self.read_abandoned || self.write_abandoned {
            return true;
        }
        // SAFETY: `self.socket` is the descriptor of `self.stream`'s own socket (`Conn::new`'s
        // contract; each caller reads it off the TcpStream it wraps), which `self` owns and
        // keeps open for as long as this borrow lives (this call).
        #[allow(unsafe_code)]
        let socket = unsafe { BorrowedFd::borrow_raw(self.socket) };
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(&socket).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            // Bytes, the peer's end, or an error: not a connection to send a request on.
            _ => true,
        }
    }

    /// Reads and drops what the peer sends until it closes, `bytes_max` bytes were read, or
    /// `deadline` passes (whichever is first); for a connection that will not be read again.
    pub async fn discard_until_closed(&mut self, bytes_max: u64, deadline: Instant) {
        let mut discarded = self.buf.len() as u64;
        self.buf.clear();
        while discarded < bytes_max {
            match self.fill(deadline).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n as u64,
            }
            self.buf.clear();
        }
    }

    /// Whether bytes of a next message are already buffered.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads once into the buffer; `Ok(0)` at end of stream.
    async fn fill(&mut self, deadline: Instant) -> Result<usize, ReadError> {
        if self.read_abandoned || self.write_abandoned {
            return Err(ReadError::Timeout);
        }
        self.buf.reserve(self.read_size);
        let buf = std::mem::take(&mut self.buf);
        let start = buf.len();
        let end = buf.capacity();
        let slice = buf.slice_mut(start..end);
        let (result, slice) = match monoio::time::timeout_at(deadline, self.stream.read(slice)).await {
            Ok(r) => r,
            Err(_) => {
                self.read_abandoned = self.lends_buffers();
                return Err(ReadError::Timeout);
            }
        };
        self.buf = slice.into_inner();
        let n = result?;
        self.bytes_read += n as u64;
        Ok(n)
    }

    /// Waits up to `idle` for the first byte of a next message. `Ok(false)` when the peer
    /// closed cleanly between messages.
    pub async fn wait_for_message(&mut self, idle: Duration) -> Result<bool, ReadError> {
        if !self.buf.is_empty() {
            return Ok(true);
        }
        match self.fill(Instant::now() + idle).await {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Reads a request head; the message must be complete by `deadline`.
    pub async fn read_request_head(&mut self, limits: &Limits, deadline: Instant) -> Result<RequestHead, ReadError> {
        let mut scan = HeadScan::default();
        loop {
            if scan.worth_parsing(&self.buf)
                && let Some(head) = http::parse_request_head(&self.buf, limits)?
            {
                let _ = self.buf.split_to(head.head_len);
                return Ok(head);
            }
            if self.buf.len() > limits.head_bytes_max {
                return Err(HeadError::TooLarge { limit: limits.head_bytes_max }.into());
            }
            if self.fill(deadline).await? == 0 {
                return Err(ReadError::Closed);
            }
        }
    }

    /// Reads a response head for a request made with `method`, skipping interim 1xx answers.
    pub async fn read_response_head(
        &mut self,
        method: Method,
        limits: &Limits,
        deadline: Instant,
    ) -> Result<ResponseHead, ReadError> {
        let mut scan = HeadScan::default();
        loop {
            if scan.worth_parsing(&self.buf)
                && let Some(head) = http::parse_response_head(&self.buf, method, limits)?
            {
                let _ = self.buf.split_to(head.head_len);
                if (100..200).contains(&head.status) {
                    scan = HeadScan::default();
                    continue;
                }
                return Ok(head);
            }
            if self.buf.len() > limits.head_bytes_max {
                return Err(HeadError::TooLarge { limit: limits.head_bytes_max }.into());
            }
            if self.fill(deadline).await? == 0 {
                return Err(ReadError::Closed);
            }
        }
    }

    /// Reads a whole body framed as `framing`, at most `limit` bytes, by `deadline`, reserving
    /// at most `reserve_max` bytes before they arrive.
    pub async fn read_body(
        &mut self,
        framing: BodyFraming,
        limit: usize,
        reserve_max: usize,
        deadline: Instant,
    ) -> Result<Bytes, ReadError> {
        match framing {
            BodyFraming::Empty => Ok(Bytes::new()),
            BodyFraming::Length(n) => {
                let n = usize::try_from(n).map_err(|_| ReadError::BodyTooLarge { limit })?;
                if n > limit {
                    return Err(ReadError::BodyTooLarge { limit });
                }
                // One reservation, so each read asks for all that is left; capped, so that an
                // agent's head alone cannot make the gateway hold its declared length (a larger
                // body grows as its bytes arrive).
                self.buf.reserve(n.saturating_sub(self.buf.len()).min(reserve_max));
                while self.buf.len() < n {
                    if self.fill(deadline).await? == 0 {
                        return Err(ReadError::Closed);
                    }
                }
                Ok(self.buf.split_to(n).freeze())
            }
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new(limit);
                let mut body = BytesMut::new();
                loop {
                    if decoder.decode(&mut self.buf, &mut body)? {
                        return Ok(body.freeze());
                    }
                    if self.fill(deadline).await? == 0 {
                        return Err(ReadError::Closed);
                    }
                }
            }
            BodyFraming::UntilClose => loop {
                let n = self.fill(deadline).await?;
                if self.buf.len() > limit {
                    return Err(ReadError::BodyTooLarge { limit });
                }
                if n == 0 {
                    return Ok(std::mem::take(&mut self.buf).freeze());
                }
            },
        }
    }

    /// Writes a head and a body, as one write when the body is small.
    pub async fn write_message(&mut self, mut head: BytesMut, body: Bytes, deadline: Instant) -> io::Result<()> {
        const COALESCE_BYTES_MAX: usize = 16 * 1024;
        if self.write_abandoned {
            return Err(abandoned());
        }
        let write = async {
            if body.len() <= COALESCE_BYTES_MAX {
                head.extend_from_slice(&body);
                let (result, _) = self.stream.write_all(head).await;
                result?;
            } else {
                let (result, _) = self.stream.write_all(head).await;
                result?;
                let (result, _) = self.stream.write_all(body).await;
                result?;
            }
            self.stream.flush().await
        };
        match monoio::time::timeout_at(deadline, write).await {
            Ok(r) => r,
            Err(_) => {
                self.write_abandoned = self.lends_buffers();
                Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"))
            }
        }
    }

    /// Whether the stream lends its buffers to pending I/O (TLS: monoio-rustls), so that a
    /// dropped read or write leaves it unusable. A plain TCP stream's next I/O is safe.
    fn lends_buffers(&self) -> bool {
        !matches!(self.stream, Stream::Plain(_))
    }

    /// Notes that a read future on the stream was dropped before it finished.
    pub fn read_was_abandoned(&mut self) {
        self.read_abandoned = self.lends_buffers();
    }

    /// Ends our side of the stream (a TLS close_notify first) by `deadline`; nothing when an
    /// earlier write on it was abandoned.
    pub async fn shutdown(&mut self, deadline: Instant) -> io::Result<()> {
        if self.write_abandoned {
            return Err(abandoned());
        }
        match monoio::time::timeout_at(deadline, self.stream.shutdown()).await {
            Ok(r) => r,
            Err(_) => {
                self.write_abandoned = self.lends_buffers();
                Err(io::Error::new(io::ErrorKind::TimedOut, "shutdown timed out"))
            }
        }
    }
}

fn abandoned() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "an earlier write on this connection was abandoned")
}
