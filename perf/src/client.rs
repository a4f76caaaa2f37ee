//! A minimal blocking HTTP/1.1 client on a std `TcpStream`, for tests and scripts that talk
//! to the double (or through the gateway) without an HTTP stack. One connection, kept
//! alive; framing via snowgate's `http` module.

use anyhow::{Context, anyhow, bail};
use bytes::{Buf, Bytes, BytesMut};
use serde_json::Value;
use snowgate::http::gzip::{gunzip_capped, gzip};
use snowgate::http::{BodyFraming, ChunkedDecoder, Limits, Method, parse_response_head};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a read may block before the client gives up, so a broken test fails instead
/// of hanging.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A response, with its body de-chunked and, when `Content-Encoding: gzip`, gunzipped.
#[derive(Debug, Clone)]
pub struct ClientResponse {
    /// The status code.
    pub status: u16,
    /// The header fields, as `(name, value)`.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Bytes,
    /// Whether the body arrived gzip-compressed.
    pub was_gzip: bool,
    /// Whether the server will close the connection after this response.
    pub close: bool,
}

impl ClientResponse {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("the response body is not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The value of the first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One keep-alive connection.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    host: String,
    buf: BytesMut,
    limits: Limits,
}

impl Client {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client { stream, host: addr.to_string(), buf: BytesMut::new(), limits: Limits::default() })
    }

    /// Sends one request with `Host` and `Content-Length` added, and reads the response.
    pub fn request(
        &mut self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<ClientResponse> {
        let mut raw = format!("{} {target} HTTP/1.1\r\nhost: {}\r\n", method.as_str(), self.host);
        for (name, value) in headers {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == Method::Post {
            raw.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        raw.push_str("\r\n");
        let mut wire = raw.into_bytes();
        wire.extend_from_slice(body);
        self.send_raw(&wire)?;
        self.read_response(method)
    }

    /// POSTs `body` as JSON, gzip-compressed (with `Content-Encoding: gzip`) when `gzipped`,
    /// as the Python and Node drivers do.
    pub fn post_json(
        &mut self,
        target: &str,
        headers: &[(&str, &str)],
        body: &Value,
        gzipped: bool,
    ) -> anyhow::Result<ClientResponse> {
        let plain = body.to_string().into_bytes();
        let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json"), ("accept", "application/json")];
        all.extend_from_slice(headers);
        if gzipped {
            all.push(("content-encoding", "gzip"));
            self.request(Method::Post, target, &all, &gzip(&plain))
        } else {
            self.request(Method::Post, target, &all, &plain)
        }
    }

    /// GETs `target`.
    pub fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> anyhow::Result<ClientResponse> {
        self.request(Method::Get, target, headers, b"")
    }

    /// Writes raw bytes (a hand-made request, perhaps chunked or malformed).
    pub fn send_raw(&mut self, wire: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(wire).context("writing the request")
    }

    fn fill(&mut self) -> anyhow::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).context("reading the response")?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one response to a request made with `method`, skipping interim 1xx responses.
    pub fn read_response(&mut self, method: Method) -> anyhow::Result<ClientResponse> {
        loop {
            let head = loop {
                if let Some(head) = parse_response_head(&self.buf, method, &self.limits)? {
                    break head;
                }
                if self.fill()? == 0 {
                    bail!("the connection closed before a response head");
                }
            };
            self.buf.advance(head.head_len);
            if (100..200).contains(&head.status) {
                continue;
            }
            let wire_body = match head.framing {
                BodyFraming::Empty => BytesMut::new(),
                BodyFraming::Length(n) => {
                    let n = usize::try_from(n)?;
                    while self.buf.len() < n {
                        if self.fill()? == 0 {
                            bail!("the connection closed inside a body");
                        }
                    }
                    self.buf.split_to(n)
                }
                BodyFraming::Chunked => {
                    let mut decoder = ChunkedDecoder::new(self.limits.body_bytes_max);
                    let mut out = BytesMut::new();
                    while !decoder.decode(&mut self.buf, &mut out)? {
                        if self.fill()? == 0 {
                            bail!("the connection closed inside a chunked body");
                        }
                    }
                    out
                }
                BodyFraming::UntilClose => {
                    while self.fill()? > 0 {}
                    std::mem::take(&mut self.buf)
                }
            };
            let headers: Vec<(String, String)> = head
                .headers
                .iter()
                .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), String::from_utf8_lossy(v).into_owned()))
                .collect();
            let was_gzip = head.headers.get_str("content-encoding").is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
            let body: Bytes = if was_gzip {
                gunzip_capped(&wire_body, self.limits.decompressed_bytes_max)
                    .map_err(|e| anyhow!("bad gzip body: {e}"))?
                    .into()
            } else {
                wire_body.freeze()
            };
            return Ok(ClientResponse { status: head.status, headers, body, was_gzip, close: head.close });
        }
    }
}
