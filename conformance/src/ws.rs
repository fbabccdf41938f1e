//! The runner's own WebSocket client (RFC 6455), written for testing:
//! every byte it sends is under the caller's control (masking, opcodes,
//! reserved bits, fragmentation, Close payloads), it answers nothing on its
//! own, and it reports how a connection ended (a clean EOF or a TCP reset).
//!
//! The frame codec ([`parse_frame`], [`encode_frame`]) is public so that a
//! test can build a WebSocket-aware proxy from it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};

/// Opcode of a continuation frame.
pub const OP_CONT: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a Ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a Pong frame.
pub const OP_PONG: u8 = 0xa;

/// The GUID of RFC 6455 §1.3.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest handshake response head read, in bytes.
const MAX_HANDSHAKE_HEAD: usize = 16 * 1024;

/// Largest body of a refused handshake read, in bytes.
const MAX_REFUSAL_BODY: usize = 64 * 1024;

/// How long to wait for the body of a refused handshake.
const REFUSAL_BODY_WAIT: Duration = Duration::from_secs(2);

/// Bytes requested from the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// Anything a WebSocket can run over: TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where to connect, from a `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `wss`.
    pub tls: bool,
    /// Host name or address (brackets removed for IPv6).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// The `Host` header value.
    pub authority: String,
}

impl Target {
    /// Parses `ws://host[:port]/path` or `wss://…`.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else {
            return Err(format!("{url}: not a ws:// or wss:// URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url}: no host, or credentials in the URL"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let (h, p) = h
                .split_once(']')
                .ok_or_else(|| format!("{url}: bad IPv6 literal"))?;
            let port = match p.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{url}: bad port"))?,
                None => default_port,
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| format!("{url}: bad port"))?,
                ),
                None => (authority.to_owned(), default_port),
            }
        };
        Ok(Target {
            tls,
            host,
            port,
            path: path.to_owned(),
            authority: authority.to_owned(),
        })
    }
}

/// What to put in the opening handshake.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    /// The `Sec-WebSocket-Protocol` header value, if any.
    pub protocols: Option<String>,
    /// The `Origin` header value, if any.
    pub origin: Option<String>,
    /// Further headers.
    pub headers: Vec<(String, String)>,
    /// `SO_RCVBUF` for the socket, set before connecting (a small one makes
    /// a slow reader's backlog pile up at the server instead of here).
    pub recv_buffer: Option<u32>,
}

/// The server's answer to the opening handshake.
#[derive(Debug, Clone)]
pub struct HandshakeReply {
    /// The HTTP status.
    pub status: u16,
    /// The headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body of a refusal (empty for 101).
    pub body: Vec<u8>,
}

impl HandshakeReply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One received message, reassembled from its fragments, or a control
/// frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// A binary message.
    Binary(Vec<u8>),
    /// A text message (its payload, not checked for UTF-8).
    Text(Vec<u8>),
    /// A Ping and its payload.
    Ping(Vec<u8>),
    /// A Pong and its payload.
    Pong(Vec<u8>),
    /// A Close frame: its status code (absent for an empty payload) and the
    /// raw reason bytes.
    Close(Option<u16>, Vec<u8>),
}

/// How reading ended.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the TCP connection cleanly (FIN).
    Eof,
    /// The connection was reset (RST): data in flight may have been lost.
    Reset,
    /// Another I/O error.
    Io(io::Error),
    /// The peer broke RFC 6455 (e.g. a masked server frame).
    Protocol(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Eof => f.write_str("connection closed (EOF)"),
            ReadError::Reset => f.write_str("connection reset (RST)"),
            ReadError::Io(e) => write!(f, "I/O error: {e}"),
            ReadError::Protocol(p) => write!(f, "WebSocket protocol violation: {p}"),
        }
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// TCP or TLS failed.
    #[error("connect: {0}")]
    Io(#[from] io::Error),
    /// The response is not HTTP, or a 101 without a valid accept key.
    #[error("handshake: {0}")]
    Handshake(String),
}

/// One WebSocket frame as parsed, payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// FIN bit.
    pub fin: bool,
    /// RSV1–3 as the low three bits.
    pub rsv: u8,
    /// Opcode.
    pub opcode: u8,
    /// Whether the frame was masked.
    pub masked: bool,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
}

/// Parses one frame at the start of `buf`. Returns `Ok(None)` if more bytes
/// are needed, else the frame and the bytes it took. A payload longer than
/// `max_payload` is an error (so that a header cannot make the reader
/// buffer without bound).
pub fn parse_frame(buf: &[u8], max_payload: u64) -> Result<Option<(RawFrame, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = (buf[0] >> 4) & 0x7;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let mut at = 2usize;
    let len = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            at = 4;
            u64::from(u16::from_be_bytes([buf[2], buf[3]]))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            at = 10;
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if len > max_payload {
        return Err(format!(
            "frame payload of {len} bytes exceeds {max_payload}"
        ));
    }
    let mut key = [0u8; 4];
    if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        key.copy_from_slice(&buf[at..at + 4]);
        at += 4;
    }
    // len <= max_payload, which the caller keeps within memory.
    #[allow(clippy::cast_possible_truncation)]
    let len = len as usize;
    if buf.len() < at + len {
        return Ok(None);
    }
    let mut payload = buf[at..at + len].to_vec();
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok(Some((
        RawFrame {
            fin,
            rsv,
            opcode,
            masked,
            payload,
        },
        at + len,
    )))
}

/// Encodes a frame; `mask` is the masking key (client frames) or `None`
/// (server frames, or a deliberately unmasked client frame).
pub fn encode_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | ((rsv & 0x7) << 4) | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    // Each branch's range check makes the narrowing exact.
    #[allow(clippy::cast_possible_truncation)]
    match payload.len() {
        n @ 0..=125 => out.push(m | n as u8),
        n @ 126..=0xffff => {
            out.push(m | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend(key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// The Close payload: a status code and reason bytes.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Connects and performs the opening handshake.
///
/// Returns the reply and, for a valid `101`, the connection's two halves.
pub async fn connect(
    target: &Target,
    hs: &Handshake,
) -> Result<(HandshakeReply, Option<(WsReader, WsWriter)>), ConnectError> {
    let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host has no address"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(n) = hs.recv_buffer {
        socket.set_recv_buffer_size(n)?;
    }
    let tcp: TcpStream = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut io: Box<dyn Io> = if target.tls {
        Box::new(tls_connect(tcp, target.host.clone()).await?)
    } else {
        Box::new(tcp)
    };
    let key = STANDARD.encode(rand::random::<[u8; 16]>());
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        target.path, target.authority
    );
    if let Some(p) = &hs.protocols {
        req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    if let Some(o) = &hs.origin {
        req.push_str(&format!("Origin: {o}\r\n"));
    }
    for (n, v) in &hs.headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes()).await?;
    io.flush().await?;

    let mut buf = Vec::with_capacity(1024);
    let head_len = loop {
        if let Some(i) = find_head_end(&buf) {
            break i;
        }
        if buf.len() > MAX_HANDSHAKE_HEAD {
            return Err(ConnectError::Handshake("response head too long".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(ConnectError::Handshake(
                "connection closed during the handshake".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(ConnectError::Handshake("not an HTTP response".into())),
    }
    let status = resp.code.unwrap_or(0);
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect();
    let rest = buf[head_len..].to_vec();
    let mut reply = HandshakeReply {
        status,
        headers,
        body: Vec::new(),
    };
    if status != 101 {
        reply.body = read_body(&mut io, &reply, rest).await;
        return Ok((reply, None));
    }
    let want = STANDARD.encode(Sha1::digest(format!("{key}{WS_GUID}").as_bytes()));
    if reply.header("sec-websocket-accept") != Some(want.as_str()) {
        return Err(ConnectError::Handshake(
            "101 without the right Sec-WebSocket-Accept".into(),
        ));
    }
    let (r, w) = tokio::io::split(io);
    Ok((
        reply,
        Some((
            WsReader {
                r,
                buf: rest,
                scratch: vec![0; READ_CHUNK].into_boxed_slice(),
                frag: None,
                max_message: 64 * 1024 * 1024,
            },
            WsWriter { w },
        )),
    ))
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

async fn read_body(io: &mut Box<dyn Io>, reply: &HandshakeReply, mut body: Vec<u8>) -> Vec<u8> {
    let want = reply
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(MAX_REFUSAL_BODY)
        .min(MAX_REFUSAL_BODY);
    let fill = async {
        while body.len() < want {
            let mut chunk = [0u8; 4096];
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    };
    // A body that never completes is reported as far as it came.
    let _ = tokio::time::timeout(REFUSAL_BODY_WAIT, fill).await;
    body.truncate(want);
    body
}

async fn tls_connect(
    tcp: TcpStream,
    host: String,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use tokio_rustls::rustls;
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The reading half: returns whole messages and control frames.
pub struct WsReader {
    r: ReadHalf<Box<dyn Io>>,
    buf: Vec<u8>,
    scratch: Box<[u8]>,
    frag: Option<(u8, Vec<u8>)>,
    max_message: u64,
}

impl std::fmt::Debug for WsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsReader")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl WsReader {
    /// Reads the next message or control frame. Fragments are reassembled;
    /// a control frame between fragments is returned as it comes. Cancel
    /// safe: a read dropped by a timeout loses nothing.
    pub async fn read(&mut self) -> Result<Msg, ReadError> {
        loop {
            let frame = self.read_frame().await?;
            if frame.masked {
                return Err(ReadError::Protocol("the server masked a frame".into()));
            }
            if frame.rsv != 0 {
                return Err(ReadError::Protocol(format!(
                    "reserved bits {:#x} set without an extension",
                    frame.rsv
                )));
            }
            match frame.opcode {
                OP_PING => return Ok(Msg::Ping(frame.payload)),
                OP_PONG => return Ok(Msg::Pong(frame.payload)),
                OP_CLOSE => {
                    let p = frame.payload;
                    return Ok(if p.len() >= 2 {
                        Msg::Close(Some(u16::from_be_bytes([p[0], p[1]])), p[2..].to_vec())
                    } else {
                        Msg::Close(None, Vec::new())
                    });
                }
                OP_TEXT | OP_BINARY => {
                    if self.frag.is_some() {
                        return Err(ReadError::Protocol(
                            "a new message began inside a fragmented one".into(),
                        ));
                    }
                    if frame.fin {
                        return Ok(data(frame.opcode, frame.payload));
                    }
                    self.frag = Some((frame.opcode, frame.payload));
                }
                OP_CONT => {
                    let Some((op, mut acc)) = self.frag.take() else {
                        return Err(ReadError::Protocol("continuation without a message".into()));
                    };
                    acc.extend_from_slice(&frame.payload);
                    if acc.len() as u64 > self.max_message {
                        return Err(ReadError::Protocol("message too large".into()));
                    }
                    if frame.fin {
                        return Ok(data(op, acc));
                    }
                    self.frag = Some((op, acc));
                }
                op => return Err(ReadError::Protocol(format!("unknown opcode {op:#x}"))),
            }
        }
    }

    async fn read_frame(&mut self) -> Result<RawFrame, ReadError> {
        loop {
            match parse_frame(&self.buf, self.max_message) {
                Ok(Some((frame, used))) => {
                    self.buf.drain(..used);
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(e) => return Err(ReadError::Protocol(e)),
            }
            // Read into scratch space, so that a read cancelled by a
            // timeout leaves the buffer as it was.
            let n = self.r.read(&mut self.scratch).await.map_err(io_error)?;
            if n == 0 {
                return Err(ReadError::Eof);
            }
            self.buf.extend_from_slice(&self.scratch[..n]);
        }
    }

    /// Reads and discards until the connection ends; returns how it ended.
    pub async fn drain(&mut self) -> ReadError {
        loop {
            self.buf.clear();
            let mut chunk = [0u8; 8192];
            match self.r.read(&mut chunk).await {
                Ok(0) => return ReadError::Eof,
                Ok(_) => {}
                Err(e) => return io_error(e),
            }
        }
    }
}

fn data(opcode: u8, payload: Vec<u8>) -> Msg {
    if opcode == OP_TEXT {
        Msg::Text(payload)
    } else {
        Msg::Binary(payload)
    }
}

fn io_error(e: io::Error) -> ReadError {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => ReadError::Reset,
        io::ErrorKind::UnexpectedEof => ReadError::Eof,
        _ => ReadError::Io(e),
    }
}

/// The writing half.
pub struct WsWriter {
    w: WriteHalf<Box<dyn Io>>,
}

impl std::fmt::Debug for WsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsWriter").finish_non_exhaustive()
    }
}

impl WsWriter {
    /// Sends one masked, unfragmented frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.frame(true, 0, opcode, true, payload).await
    }

    /// Sends one frame with full control over its header.
    pub async fn frame(
        &mut self,
        fin: bool,
        rsv: u8,
        opcode: u8,
        masked: bool,
        payload: &[u8],
    ) -> io::Result<()> {
        let mask = masked.then(rand::random::<[u8; 4]>);
        self.raw(&encode_frame(fin, rsv, opcode, mask, payload))
            .await
    }

    /// Sends a binary message.
    pub async fn binary(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send(OP_BINARY, payload).await
    }

    /// Sends a Close frame with `code` and `reason`.
    pub async fn close(&mut self, code: u16, reason: &[u8]) -> io::Result<()> {
        self.send(OP_CLOSE, &close_payload(code, reason)).await
    }

    /// Sends bytes as they are.
    pub async fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes).await?;
        self.w.flush().await
    }

    /// Shuts down the sending direction (TCP FIN).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.w.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = Target::parse("ws://127.0.0.1:7700/v1/ws").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (false, "127.0.0.1", 7700, "/v1/ws")
        );
        let t = Target::parse("wss://[::1]/v1/ws").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "::1", 443));
        assert!(Target::parse("http://x/").is_err());
        assert!(Target::parse("ws://user:pw@x/").is_err());
    }

    #[test]
    fn frames_round_trip_masked_and_not() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![7u8; len];
            for mask in [None, Some([1, 2, 3, 4])] {
                let bytes = encode_frame(true, 0, OP_BINARY, mask, &payload);
                let (f, used) = parse_frame(&bytes, 1 << 20).unwrap().unwrap();
                assert_eq!(used, bytes.len());
                assert_eq!(f.payload, payload);
                assert_eq!(f.masked, mask.is_some());
                assert!(
                    parse_frame(&bytes[..bytes.len() - 1], 1 << 20)
                        .unwrap()
                        .is_none()
                        || len == 0
                );
            }
        }
        assert!(parse_frame(&encode_frame(true, 0, OP_BINARY, None, &[0; 200]), 100).is_err());
    }
}
